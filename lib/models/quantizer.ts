// Vector quantizer of the tokenizer (docs/paper-to-code.md): nearest code per spatial position,
// straight-through estimator, commitment loss, and a codebook learned either by EMA updates
// (default: decay γ, Laplace smoothing, k-means initialisation, dead-code restart) or by gradient
// through a codebook loss (the "plain" VQ-VAE quantizer, for ablations). Codes seeded or restarted
// from encoder outputs are perturbed slightly (`jitter`), so that no two codes are ever equal.
//
// Every codebook update runs on the GPU inside the step; the host never reads anything back
// except `restore()` after a checkpoint load (one read of the `initted` flag). The state dict
// follows taming-transformers' EMAVectorQuantizer: `embedding.weight` (the codebook e [K, D]),
// `embedding.cluster_size` (N_k [K]) and `embedding.embed_avg` (m_k [K, D]), plus `initted`.

import { Module } from "../nn/module.ts";
import { normal, Rng, uniform as hostUniform } from "../tensor/init.ts";
import { full, ones, tensor, zeros } from "../tensor/ops/creation.ts";
import {
  add,
  addScalar,
  affine,
  axpyInPlace,
  clamp,
  copy,
  div,
  exp,
  log,
  mul,
  mulScalar,
  neg,
  sqrt,
  square,
  sub,
} from "../tensor/ops/elementwise.ts";
import { mseLoss } from "../tensor/ops/loss.ts";
import { mean, sum } from "../tensor/ops/reduce.ts";
import { normal as gpuNormal, uniform } from "../tensor/ops/random.ts";
import { embedding, gather, permute, reshape, scatterAddRows } from "../tensor/ops/shape.ts";
import { codeStats, MAX_CODES, nearestCode } from "../tensor/ops/vq.ts";
import { emaCodebookStep, restartDeadCodes as restartCodes } from "../tensor/ops/ema.ts";
import { copyValues, keep, noGrad, type Tensor, tidy } from "../tensor/tensor.ts";

export type QuantizerKind = "ema" | "plain";
export type CodebookInit = "kmeans" | "random";

export interface QuantizerConfig {
  /** K: number of codes. */
  codebookSize: number;
  /** D: dimension of a code (channels of z). */
  codeDim: number;
  /** "ema" (codebook by EMA updates) or "plain" (codebook by gradient of the codebook loss). */
  kind?: QuantizerKind;
  /** Commitment weight β. */
  beta?: number;
  /** EMA decay γ. */
  decay?: number;
  /** Laplace smoothing ε. */
  eps?: number;
  /** "kmeans": Lloyd's algorithm on the first training batch; "random": as initialised. */
  init?: CodebookInit;
  kmeansIters?: number;
  /** EMA only: codes whose N_k falls below this are restarted (0 turns restarts off). */
  deadCodeThreshold?: number;
  /** EMA only: check for dead codes every this many training steps. */
  deadCodeEvery?: number;
  /** Seed of the initial codebook, the k-means seeding and the restart draws. */
  seed?: number;
}

export type ResolvedQuantizerConfig = Required<QuantizerConfig>;

export const QUANTIZER_DEFAULTS = {
  kind: "ema",
  beta: 0.25,
  decay: 0.99,
  eps: 1e-5,
  init: "kmeans",
  kmeansIters: 10,
  deadCodeThreshold: 1,
  deadCodeEvery: 1,
  seed: 0,
} as const;

/** Fills in the defaults and checks every field; throws one error listing all problems. */
export function resolveQuantizerConfig(config: QuantizerConfig): ResolvedQuantizerConfig {
  const c = { ...QUANTIZER_DEFAULTS, ...config };
  const problems: string[] = [];
  const int = (name: keyof QuantizerConfig, lo: number, hi = Number.MAX_SAFE_INTEGER) => {
    const v = c[name] as number;
    if (!Number.isInteger(v) || v < lo || v > hi) {
      problems.push(`${name} must be an integer in [${lo}, ${hi}], got ${v}`);
    }
  };
  const real = (name: keyof QuantizerConfig, ok: (v: number) => boolean, what: string) => {
    const v = c[name] as number;
    if (typeof v !== "number" || !Number.isFinite(v) || !ok(v)) {
      problems.push(`${name} must be ${what}, got ${v}`);
    }
  };
  int("codebookSize", 1, MAX_CODES);
  int("codeDim", 1);
  int("kmeansIters", 0);
  int("deadCodeEvery", 1);
  int("seed", 0);
  real("beta", (v) => v >= 0, "≥ 0");
  real("decay", (v) => v >= 0 && v < 1, "in [0, 1)");
  real("eps", (v) => v > 0, "> 0");
  real("deadCodeThreshold", (v) => v >= 0, "≥ 0");
  if (c.kind !== "ema" && c.kind !== "plain") {
    problems.push(`kind must be "ema" or "plain", got ${JSON.stringify(c.kind)}`);
  }
  if (c.init !== "kmeans" && c.init !== "random") {
    problems.push(`init must be "kmeans" or "random", got ${JSON.stringify(c.init)}`);
  }
  if (problems.length) throw new Error(`peco: VectorQuantizer config: ${problems.join("; ")}`);
  return c as ResolvedQuantizerConfig;
}

export interface QuantizerOutput {
  /** z_q with the straight-through estimator [B, D, h, w]: value z_q, gradient passed to z. */
  zq: Tensor;
  /** The quantizer's loss term: β·commitment (EMA), codebook + β·commitment (plain). */
  loss: Tensor;
  /** ||sg(z_q) − z||² averaged over all elements (unweighted, for logging). */
  commitment: Tensor;
  /** Code of each position, i32 [B, h, w]. */
  indices: Tensor;
}

/**
 * a where mask is 1, b where it is 0 (mask broadcasts), exactly: mask·a + (1 − mask)·b adds an
 * exact zero, where b + mask·(a − b) would round.
 */
function blend(mask: Tensor, a: Tensor, b: Tensor): Tensor {
  return add(mul(mask, a), mul(affine(mask, -1, 1), b));
}

/** 1 where v > 0, else 0 (v ≥ 0 in all uses: counts). */
function positive(v: Tensor): Tensor {
  return clamp(mulScalar(v, 1e30), 0, 1);
}

/** Copies src's values into dst's buffer, in order with the recorded work (in-place update). */
function assign(dst: Tensor, src: Tensor): void {
  if (dst.size !== src.size) {
    throw new Error(`peco: assign ${src.describe()} into ${dst.describe()}: sizes differ`);
  }
  copyValues(dst, src);
}

/** z [B, D, h, w] → rows [B·h·w, D] (a copy, no gradient). */
function toRows(z: Tensor): Tensor {
  const [b, d, h, w] = z.shape;
  return permute(z.detach(), [0, 2, 3, 1]).view([b * h * w, d]);
}

/**
 * `count` row indices in [0, n) for seeding: distinct (a partial Fisher–Yates shuffle) when
 * n ≥ count, else drawn with replacement.
 */
function sampleRows(n: number, count: number, rng: Rng): number[] {
  if (n < count) return Array.from({ length: count }, () => rng.int(n));
  const pool = Array.from({ length: n }, (_, i) => i);
  for (let i = 0; i < count; i++) {
    const j = i + rng.int(n - i);
    [pool[i], pool[j]] = [pool[j], pool[i]];
  }
  return pool.slice(0, count);
}

/** Size of the perturbation of a seeded or restarted code, relative to the rows' RMS. */
const JITTER = 1e-3;
/** Its floor, for rows that are all (nearly) zero. */
const JITTER_FLOOR = 1e-6;

/**
 * samples + JITTER·rms(rows)·N(0, 1) per element. Codes seeded or restarted from encoder outputs
 * would otherwise copy them bit for bit, and a batch holds identical vectors (blank background
 * patches) and, drawn with replacement, the same row twice: of two identical codes only the lower
 * index can ever be chosen (ties go to the lowest index), so the other is dead by construction.
 * The perturbation, with a distinct random value per element, makes every new code distinct.
 */
function jitter(samples: Tensor, rows: Tensor, seed: number): Tensor {
  const rms = sqrt(mean(square(rows)));
  const scale = addScalar(mulScalar(rms, JITTER), JITTER_FLOOR);
  return add(samples, mul(gpuNormal(samples.shape, seed), scale));
}

/** The embedding's parameters and EMA statistics, under taming's `quantize.embedding.*` names. */
class CodebookState extends Module {
  readonly weight: Tensor;
  readonly clusterSize: Tensor | null;
  readonly embedAvg: Tensor | null;

  constructor(c: ResolvedQuantizerConfig, rng: Rng) {
    super();
    const k = c.codebookSize;
    const d = c.codeDim;
    if (c.kind === "plain") {
      // taming's VectorQuantizer: U(−1/K, 1/K).
      this.weight = this.param("weight", hostUniform([k, d], -1 / k, 1 / k, rng));
      this.clusterSize = null;
      this.embedAvg = null;
    } else {
      // Consistent EMA state: N_k = 1, m_k = e_k (e_k = m_k / N_k before smoothing).
      this.weight = this.buffer("weight", normal([k, d], 1, rng));
      this.clusterSize = this.buffer("cluster_size", ones([k]));
      this.embedAvg = this.buffer("embed_avg", copy(this.weight));
    }
  }
}

export class VectorQuantizer extends Module {
  readonly config: ResolvedQuantizerConfig;
  readonly embedding: CodebookState;
  /** 1 once the codebook is initialised from data (k-means), as a buffer so checkpoints keep it. */
  readonly initted: Tensor;
  /** Host copy of `initted` (see restore()). */
  initialized: boolean;
  /** Training steps taken (EMA updates); seeds the restart draws. Restore it on resume. */
  steps = 0;
  private readonly rng: Rng;

  constructor(config: QuantizerConfig) {
    super();
    this.config = resolveQuantizerConfig(config);
    this.rng = new Rng(this.config.seed).fork("quantizer");
    this.embedding = this.child("embedding", new CodebookState(this.config, this.rng.fork("init")));
    this.initialized = this.config.init !== "kmeans";
    this.initted = this.buffer("initted", full([1], this.initialized ? 1 : 0, "i32"));
  }

  get codebook(): Tensor {
    return this.embedding.weight;
  }

  get isEma(): boolean {
    return this.config.kind === "ema";
  }

  /** Reads the `initted` flag after a checkpoint load (one readback, at resume only). */
  async restore(): Promise<void> {
    this.initialized = (await this.initted.item()) !== 0;
  }

  /**
   * Quantizes z [B, D, h, w]. In training mode the first call initialises the codebook (k-means)
   * and, with EMA, every call updates the codebook after quantizing with the one before the
   * update, then restarts dead codes every `deadCodeEvery` steps.
   */
  forward(z: Tensor): QuantizerOutput {
    const { codeDim, beta } = this.config;
    this.checkZ(z);
    const [b, , h, w] = z.shape;
    const rows = toRows(z);
    if (this.training && !this.initialized) this.kmeansInit(rows);
    const { indices, distances } = nearestCode(rows, this.codebook);
    distances.dispose();
    // The codebook rows gathered now: later in-place updates do not reach them.
    const zqRows = reshape(embedding(this.codebook, indices), [b, h, w, codeDim]);
    const zq = permute(zqRows, [0, 3, 1, 2]);
    const commitment = mseLoss(zq.detach(), z);
    let loss = mulScalar(commitment, beta);
    if (!this.isEma) loss = add(mseLoss(zq, z.detach()), loss);
    // Straight-through: z + sg(z_q − z) has z_q's value and passes the gradient to z unchanged.
    const zqSt = add(z, sub(zq.detach(), z.detach()));
    if (this.training && this.isEma) {
      this.emaUpdate(indices, rows);
      this.steps++;
      if (this.config.deadCodeThreshold > 0 && this.steps % this.config.deadCodeEvery === 0) {
        this.restartDeadCodes(rows);
      }
    }
    rows.dispose();
    return { zq: zqSt, loss, commitment, indices: indices.view([b, h, w]) };
  }

  /** The code of each position of z [B, D, h, w] → i32 [B, h, w] (no loss, no update). */
  encodeIndices(z: Tensor): Tensor {
    this.checkZ(z);
    const [b, , h, w] = z.shape;
    const rows = toRows(z);
    const { indices, distances } = nearestCode(rows, this.codebook);
    rows.dispose();
    distances.dispose();
    return indices.view([b, h, w]);
  }

  /** The codes of `indices` i32 [B, h, w] as z_q [B, D, h, w] (decoding token grids). */
  lookup(indices: Tensor): Tensor {
    if (indices.dtype !== "i32" || indices.rank !== 3) {
      throw new Error(
        `peco: VectorQuantizer.lookup: indices must be i32 [B, h, w], got ${indices.describe()}`,
      );
    }
    const [b, h, w] = indices.shape;
    const rows = noGrad(() => embedding(this.codebook, indices.view([b * h * w])));
    return permute(rows.view([b, h, w, this.config.codeDim]), [0, 3, 1, 2]);
  }

  /**
   * One EMA step from the assignment of `rows` [N, D] (docs/paper-to-code.md):
   *   N_k ← γ N_k + (1−γ) n_k,  m_k ← γ m_k + (1−γ) s_k,
   *   Ñ_k = (N_k + ε) / (Σ_j N_j + K ε) · Σ_j N_j,  e_k = m_k / Ñ_k.
   */
  emaUpdate(indices: Tensor, rows: Tensor): void {
    const { codebookSize: k, decay, eps } = this.config;
    const state = this.emaState("emaUpdate");
    noGrad(() =>
      tidy(() => {
        const { counts, sums } = codeStats(indices, rows, k);
        emaCodebookStep(state, counts, sums, decay, eps);
      })
    );
  }

  /**
   * Replaces every code whose N_k < deadCodeThreshold by a row of `rows` [N, D] (the current
   * batch's encoder outputs) drawn at random on the GPU plus a small perturbation (`jitter`: no
   * two codes end up identical), and resets its statistics to N_k = threshold, m_k = e_k·N_k.
   * Live codes keep their values bit for bit.
   */
  restartDeadCodes(rows: Tensor): void {
    const { codebookSize: k, codeDim: d, deadCodeThreshold: threshold } = this.config;
    const state = this.emaState("restartDeadCodes");
    const n = rows.shape[0];
    if (n === 0) return;
    // A fresh seed per step, derived on the host from the step count only: deterministic.
    const draw = this.rng.fork(`restart.${this.steps}`);
    const seed = draw.next();
    const noiseSeed = draw.next();
    noGrad(() =>
      tidy(() => {
        const draws = uniform([k], seed, 0, n);
        const noise = gpuNormal([k, d], noiseSeed);
        const sumSquares = sum(square(rows));
        const r = { rows, draws, noise, sumSquares, jitter: JITTER, floor: JITTER_FLOOR };
        restartCodes(state, r, threshold);
      })
    );
  }

  /**
   * k-means initialisation from `rows` [N, D]: seeds with K random rows (perturbed by `jitter`,
   * so that identical rows give distinct seeds), runs `kmeansIters`
   * Lloyd iterations (an empty cluster keeps its centroid), then sets e_k = centroid,
   * N_k = size of cluster k in the last assignment, m_k = centroid·N_k.
   */
  kmeansInit(rows: Tensor): void {
    const { codebookSize: k, kmeansIters } = this.config;
    const n = rows.shape[0];
    if (n === 0) throw new Error(`peco: VectorQuantizer.kmeansInit: no vectors to cluster`);
    const draw = this.rng.fork("kmeans");
    const seedRows = sampleRows(n, k, draw);
    const noiseSeed = draw.next();
    noGrad(() =>
      tidy(() => {
        let centroids = jitter(gather(rows, tensor(seedRows, [k], "i32")), rows, noiseSeed);
        let counts: Tensor | null = null;
        for (let it = 0; it < kmeansIters; it++) {
          const step = lloydStep(rows, centroids, k);
          centroids.dispose();
          counts?.dispose();
          ({ centroids, counts } = step);
        }
        counts ??= codeStats(nearestCode(rows, centroids).indices, rows, k).counts;
        assign(this.embedding.weight, centroids);
        if (this.isEma) {
          const state = this.emaState("kmeansInit");
          assign(state.clusterSize, counts);
          assign(state.embedAvg, mul(centroids, counts.view([k, 1])));
        }
        assign(this.initted, full([1], 1, "i32"));
      })
    );
    this.initialized = true;
  }

  private checkZ(z: Tensor): void {
    const { codeDim } = this.config;
    if (z.dtype !== "f32" || z.rank !== 4 || z.shape[1] !== codeDim) {
      throw new Error(
        `peco: VectorQuantizer: z must be f32 [B, ${codeDim}, h, w], got ${z.describe()}`,
      );
    }
  }

  private emaState(op: string): { weight: Tensor; clusterSize: Tensor; embedAvg: Tensor } {
    const { weight, clusterSize, embedAvg } = this.embedding;
    if (!clusterSize || !embedAvg) {
      throw new Error(`peco: VectorQuantizer.${op}: only the EMA quantizer keeps EMA statistics`);
    }
    return { weight, clusterSize, embedAvg };
  }
}

/** One Lloyd iteration: assign rows to the nearest centroid, move each centroid to its mean. */
function lloydStep(rows: Tensor, centroids: Tensor, k: number) {
  return tidy(() => {
    const { indices } = nearestCode(rows, centroids);
    const { counts, sums } = codeStats(indices, rows, k);
    const means = div(sums, clamp(counts, 1, 3.4e38).view([k, 1]));
    return { centroids: blend(positive(counts).view([k, 1]), means, centroids), counts };
  });
}

// ---- codebook usage metrics -----------------------------------------------------------------

/** Histogram of code ids: indices i32 (any shape) → f32 [K] counts. */
export function codeHistogram(indices: Tensor, k: number): Tensor {
  if (indices.dtype !== "i32") {
    throw new Error(`peco: codeHistogram needs i32 indices, got ${indices.describe()}`);
  }
  return noGrad(() =>
    tidy(() => scatterAddRows(ones([indices.size]), indices.view([indices.size]), k))
  );
}

/**
 * Perplexity exp(H(p)) of the distribution p = counts / Σ counts, and usage = (codes with a
 * non-zero count) / K, as GPU scalars (read them at log intervals with readAll).
 */
export function usageMetrics(counts: Tensor): { perplexity: Tensor; usage: Tensor } {
  if (counts.dtype !== "f32" || counts.rank !== 1) {
    throw new Error(`peco: usageMetrics needs f32 counts [K], got ${counts.describe()}`);
  }
  return noGrad(() =>
    tidy(() => {
      const total = sum(counts);
      const p = div(counts, clamp(total, 1e-30, 3.4e38));
      // p·log p with 0·log 0 = 0: the clamp keeps log finite where p = 0.
      const entropy = neg(sum(mul(p, log(clamp(p, 1e-30, 1)))));
      return { perplexity: exp(entropy), usage: mean(positive(counts)) };
    })
  );
}

/**
 * A histogram of code ids on the GPU (f32 [K], kept), added to batch after batch with no readback:
 * the tokenizer's codebook usage over a held-out split, the MIM targets' code frequencies.
 */
export class CodeUsage {
  readonly counts: Tensor;

  constructor(readonly codebookSize: number) {
    this.counts = keep(zeros([codebookSize]));
    this.counts.name = "code_counts";
  }

  /** Counts indices i32 (any shape, possibly empty). */
  add(indices: Tensor): void {
    if (indices.size === 0) return;
    tidy(() => axpyInPlace(this.counts, codeHistogram(indices, this.codebookSize)));
  }

  reset(): void {
    tidy(() => assign(this.counts, zeros([this.codebookSize])));
  }

  metrics(): { perplexity: Tensor; usage: Tensor } {
    return usageMetrics(this.counts);
  }

  dispose(): void {
    this.counts.dispose();
  }
}

/**
 * The codebook's distinct rows (codebook f32 [K·D] read from the GPU, D per row): K when no two
 * codes are equal. Of two equal codes only the lower index can ever be chosen (the nearest-code
 * search breaks ties towards it), so K − distinct codes are dead by construction. Equality is by
 * value (−0 equals +0).
 */
export function distinctCodes(codebook: ArrayLike<number>, dim: number): number {
  const k = codebook.length / dim;
  if (!Number.isInteger(k) || dim < 1) {
    throw new Error(`peco: distinctCodes: ${codebook.length} values are not rows of ${dim}`);
  }
  const bits = new Uint32Array(1);
  const f = new Float32Array(bits.buffer);
  const buckets = new Map<number, number[]>();
  const same = (a: number, b: number) => {
    for (let c = 0; c < dim; c++) if (codebook[a * dim + c] !== codebook[b * dim + c]) return false;
    return true;
  };
  let distinct = 0;
  for (let row = 0; row < k; row++) {
    let hash = 0x811c9dc5; // FNV-1a over the rows' f32 bit patterns, zeros made positive
    for (let c = 0; c < dim; c++) {
      f[0] = codebook[row * dim + c] + 0;
      hash = Math.imul(hash ^ bits[0], 0x01000193) >>> 0;
    }
    const bucket = buckets.get(hash) ?? [];
    if (!bucket.some((other) => same(other, row))) distinct++;
    bucket.push(row);
    buckets.set(hash, bucket);
  }
  return distinct;
}
