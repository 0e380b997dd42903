// Batched matrix multiply and the linear layer, with their backward rules. Transposed operands are
// read in place by the kernel (override constants), so neither forward nor backward copies a
// transpose. The kernel variant (register blocks of several sizes, or shared-memory tiles) comes
// from the autotuner: a tuned winner when `tuneMatmul` ran for the shape class, else a default.

import { gpu } from "../../gpu/device.ts";
import { defineKernel } from "../../gpu/pipelines.ts";
import { chooseVariant, tune, type TuneResult, type Variant } from "../../gpu/autotune.ts";
import { record, type Shape, Tensor } from "../tensor.ts";
import { reduceRaw } from "./reduce.ts";
import { zeros } from "./creation.ts";
import source from "../../../kernels/matmul.wgsl" with { type: "text" };

const BINDINGS: ("read" | "write")[] = ["read", "read", "read", "read", "read", "write"];

const kernels = {
  reg: defineKernel({ name: "matmul_reg", source, entry: "matmul_reg", bindings: BINDINGS }),
  tiled: defineKernel({ name: "matmul_tiled", source, entry: "matmul_tiled", bindings: BINDINGS }),
};

/** Register variant: each invocation holds a tm × tn block of C; tiled: 64 × 64 shared tiles. */
export type MatmulConfig = { kind: "reg"; tm: number; tn: number } | { kind: "tiled" };

const reg = (tm: number, tn: number): Variant<MatmulConfig> => ({
  name: `reg${tm}x${tn}`,
  config: { kind: "reg", tm, tn },
});

/** Every variant; `forceVariant("matmul", name)` selects one by name. */
export const MATMUL_VARIANTS: readonly Variant<MatmulConfig>[] = [
  reg(4, 4),
  reg(8, 8),
  reg(16, 16),
  reg(32, 32),
  reg(32, 16),
  reg(16, 32),
  { name: "tiled64", config: { kind: "tiled" } },
];
const byName = (name: string) => MATMUL_VARIANTS.find((v) => v.name === name)!;

/** Invocations per workgroup of the register variant (8 × 8: one SIMD row of lavapipe per y). */
const REG_WG = 8;
const TILE = 64;
const MAX_GROUPS = 65535;

/** One batched product C[z] = op(A[z]) · op(B[z]) (+ bias), as the kernel sees it. */
interface Problem {
  M: number;
  N: number;
  K: number;
  batch: number;
  transA: boolean;
  transB: boolean;
  /** Elements between the batch's matrices; 0 for an operand shared by the batch. */
  strideA: number;
  strideB: number;
}

function vecFlags(p: Problem): { vecA: boolean; vecB: boolean } {
  // vec4 loads run along an operand's contiguous dim, which must then be a multiple of 4.
  return { vecA: p.transA && p.M % 4 === 0, vecB: !p.transB && p.N % 4 === 0 };
}

/** Shape class for tuning: trans/vec layout, batched or not, and sizes rounded to powers of 2. */
function shapeClass(p: Problem): string {
  const { vecA, vecB } = vecFlags(p);
  const log = (x: number) => Math.round(Math.log2(Math.max(1, x)));
  const flags = [p.transA, p.transB, vecA, vecB].map(Number).join("");
  return `${flags}|m${log(p.M)}n${log(p.N)}k${log(p.K)}|b${p.batch > 1 ? 1 : 0}`;
}

/**
 * Register variants from most to least promising on a software adapter (lavapipe), by a cost model
 * of what bounds them there: storage loads and stores, each a per-lane loop costing about the same,
 * i.e. lanes·(K·(tm + tn) + tm·tn) with vec4 loads at 0.8 per value, spread over
 * min(workgroups, cores) threads. Blocks within 5% of the best rank smallest first (faster to
 * compile).
 */
function rankedRegVariants(p: Problem): Variant<MatmulConfig>[] {
  const { vecA, vecB } = vecFlags(p);
  const cores = Math.max(1, navigator.hardwareConcurrency || 1);
  const scored: { v: Variant<MatmulConfig>; cost: number; area: number }[] = [];
  for (const v of MATMUL_VARIANTS) {
    if (v.config.kind !== "reg") continue;
    const { tm, tn } = v.config;
    const lanes = p.batch * Math.ceil(p.M / tm) * Math.ceil(p.N / tn);
    const groups = p.batch * Math.ceil(p.M / (tm * REG_WG)) * Math.ceil(p.N / (tn * REG_WG));
    const perLane = p.K * (tm * (vecA ? 0.8 : 1) + tn * (vecB ? 0.8 : 1)) + tm * tn;
    scored.push({ v, cost: (lanes * perLane) / Math.min(groups, cores), area: tm * tn });
  }
  scored.sort((x, y) => x.cost - y.cost);
  const near = scored.filter((s) => s.cost <= scored[0].cost * 1.05).sort((x, y) =>
    x.area - y.area
  );
  const rest = scored.filter((s) => s.cost > scored[0].cost * 1.05);
  return [...near, ...rest].map((s) => s.v);
}

/**
 * Default variant without tuning. Software adapters: the best register variant of the cost model.
 * GPUs: 64 × 64 shared-memory tiles once C fills a few tiles, else small register blocks.
 */
function defaultVariant(p: Problem): Variant<MatmulConfig> {
  if (!gpu().info.software) {
    return p.M * p.N * p.batch >= 4 * TILE * TILE ? byName("tiled64") : byName("reg4x4");
  }
  return rankedRegVariants(p)[0];
}

function variantFor(p: Problem): Variant<MatmulConfig> {
  return chooseVariant("matmul", shapeClass(p), MATMUL_VARIANTS, defaultVariant(p));
}

/** Records the kernel launch(es) of one problem into `out` (no autograd). */
function launch(
  a: Tensor,
  b: Tensor,
  bias: Tensor | null,
  out: Tensor,
  p: Problem,
  variant = variantFor(p),
): void {
  if (out.size === 0) return;
  const { vecA, vecB } = vecFlags(p);
  const cfg = variant.config;
  const constants: Record<string, number> = {
    TRANS_A: Number(p.transA),
    TRANS_B: Number(p.transB),
    BIAS: Number(bias !== null),
  };
  let gx: number, gy: number;
  if (cfg.kind === "tiled") {
    gx = Math.ceil(p.N / TILE);
    gy = Math.ceil(p.M / TILE);
  } else {
    Object.assign(constants, {
      TM: cfg.tm,
      TN4: cfg.tn / 4,
      VEC_A: Number(vecA),
      VEC_B: Number(vecB),
    });
    gx = Math.ceil(p.N / (cfg.tn * REG_WG));
    gy = Math.ceil(p.M / (cfg.tm * REG_WG));
  }
  if (gx > MAX_GROUPS || gy > MAX_GROUPS) {
    throw new Error(`peco: matmul: ${p.M}×${p.N} output is too large for one dispatch`);
  }
  const buffers = [a.buffer, a.buffer, b.buffer, b.buffer, (bias ?? b).buffer, out.buffer];
  for (let z0 = 0; z0 < p.batch; z0 += MAX_GROUPS) {
    const gz = Math.min(MAX_GROUPS, p.batch - z0);
    gpu().recorder.dispatch(cfg.kind === "tiled" ? kernels.tiled : kernels.reg, {
      buffers,
      params: [p.M, p.N, p.K, p.strideA, p.strideB, z0],
      constants,
      workgroups: [gx, gy, gz],
    });
  }
}

export interface MatmulOptions {
  /** a is stored as [..., K, M]. */
  transA?: boolean;
  /** b is stored as [..., N, K]. */
  transB?: boolean;
}

/** What `plan` needs of an operand: tensors, or bare shapes for `matmulVariant`. */
interface Operand {
  readonly shape: Shape;
  readonly dtype: string;
}

const describe = (t: Operand) => `[${t.shape.join(",")}]`;

/** Checks shapes and works out the problem: batch dims equal, or one operand of rank 2 (shared). */
function plan(op: string, a: Operand, b: Operand, transA: boolean, transB: boolean) {
  for (const t of [a, b]) {
    if (t.dtype !== "f32") {
      throw new Error(`peco: ${op}: needs f32 tensors, got ${t.dtype}${describe(t)}`);
    }
    if (t.shape.length < 2) {
      throw new Error(
        `peco: ${op}: operands need rank >= 2, got ${describe(a)} and ${describe(b)}`,
      );
    }
  }
  const [ar, ac] = a.shape.slice(-2);
  const [br, bc] = b.shape.slice(-2);
  const [M, K] = transA ? [ac, ar] : [ar, ac];
  const [Kb, N] = transB ? [bc, br] : [br, bc];
  if (K !== Kb) {
    throw new Error(
      `peco: ${op}: inner dimensions differ: a ${describe(a)}${transA ? "ᵀ" : ""} has K=${K}, ` +
        `b ${describe(b)}${transB ? "ᵀ" : ""} has K=${Kb}`,
    );
  }
  const batchA = a.shape.slice(0, -2);
  const batchB = b.shape.slice(0, -2);
  const sameBatch = batchA.length === batchB.length && batchA.every((d, i) => d === batchB[i]);
  if (!sameBatch && batchA.length > 0 && batchB.length > 0) {
    throw new Error(
      `peco: ${op}: batch dimensions of a ${describe(a)} and b ${describe(b)} differ ` +
        `(they must match, or one operand must be rank 2)`,
    );
  }
  const batchShape = batchA.length ? batchA : batchB;
  const batch = batchShape.reduce((x, y) => x * y, 1);
  const problem: Problem = {
    M,
    N,
    K,
    batch,
    transA,
    transB,
    strideA: batchA.length ? M * K : 0,
    strideB: batchB.length ? K * N : 0,
  };
  return { problem, outShape: [...batchShape, M, N] };
}

/** op(a) · op(b) without autograd. */
function product(a: Tensor, b: Tensor, transA: boolean, transB: boolean): Tensor {
  const { problem, outShape } = plan("matmul", a, b, transA, transB);
  const out = new Tensor(outShape, "f32");
  launch(a, b, null, out, problem);
  return out;
}

/** Sums a batched gradient [...batch, R, C] over its batch dims to `shape` [R, C]. */
function sumBatch(g: Tensor, shape: Shape): Tensor {
  if (g.rank === shape.length) return g;
  const inner = shape[0] * shape[1];
  return reduceRaw(g.view([g.size / inner, inner]), 0, "sum").view(shape);
}

/** a shared by the batch stacked into its rows: [...batch, M, K] → [batch·M, K] (a free view). */
const stackRows = (t: Tensor) => t.view([t.size / t.shape[t.rank - 1], t.shape[t.rank - 1]]);

/**
 * Batched matrix product op(a) · op(b): a [...batch, M, K] (or [..., K, M] with transA), b
 * [...batch, K, N] (or [..., N, K] with transB) → [...batch, M, N]. Either operand may be rank 2
 * and shared by the other's batch.
 */
export function matmul(a: Tensor, b: Tensor, options: MatmulOptions = {}): Tensor {
  const transA = options.transA ?? false;
  const transB = options.transB ?? false;
  const out = product(a, b, transA, transB);
  return record("matmul", out, [a, b], (g) => {
    // C = op(A)·op(B): dop(A) = dC·op(B)ᵀ and dop(B) = op(A)ᵀ·dC, each written so that the
    // kernel reads every operand in place through its trans flags.
    let ga: Tensor | null = null;
    let gb: Tensor | null = null;
    if (a.requiresGrad) {
      ga = transA ? product(b, g, transB, true) : product(g, b, false, !transB);
      ga = sumBatch(ga, a.shape);
    }
    if (b.requiresGrad) {
      if (b.rank === 2 && a.rank > 2 && !transA) {
        // Shared b: the batch sum folds into one product over the stacked rows of a and dC.
        const [a2, g2] = [stackRows(a), stackRows(g)];
        gb = transB ? product(g2, a2, true, false) : product(a2, g2, true, false);
      } else {
        gb = transB ? product(g, a, true, transA) : product(a, g, !transA, false);
        gb = sumBatch(gb, b.shape);
      }
    }
    return [ga?.view(a.shape) ?? null, gb?.view(b.shape) ?? null];
  });
}

/** x [..., in] · weightᵀ (+ bias): weight [out, in], bias [out] → [..., out] (PyTorch Linear). */
export function linear(x: Tensor, weight: Tensor, bias: Tensor | null): Tensor {
  if (weight.rank !== 2 || x.rank < 1 || x.shape[x.rank - 1] !== weight.shape[1]) {
    throw new Error(
      `peco: linear: weight ${describe(weight)} does not match input ${describe(x)} ` +
        `(weight must be [out, in] with in = the input's last dim)`,
    );
  }
  const [outF, inF] = weight.shape;
  if (bias && (bias.rank !== 1 || bias.shape[0] !== outF || bias.dtype !== "f32")) {
    throw new Error(`peco: linear: bias ${bias.describe()} must be f32 [${outF}]`);
  }
  const rows = x.size / inF;
  const { problem } = plan("linear", { shape: [rows, inF], dtype: x.dtype }, weight, false, true);
  const out = new Tensor([...x.shape.slice(0, -1), outF], "f32");
  launch(x, weight, bias, out, problem);
  const inputs = bias ? [x, weight, bias] : [x, weight];
  return record("linear", out, inputs, (g) => {
    const flat = (t: Tensor) => t.view([rows, t.shape[t.rank - 1]]);
    const g2 = flat(g);
    return [
      x.requiresGrad ? product(g2, weight, false, false).view(x.shape) : null,
      weight.requiresGrad ? product(g2, flat(x), true, false) : null,
      bias?.requiresGrad ? reduceRaw(g2, 0, "sum") : null,
    ];
  });
}

/** The variant `matmul(a, b, options)` would run now (for benchmarks and reports). */
export function matmulVariant(a: Shape, b: Shape, options: MatmulOptions = {}): string {
  const [sa, sb] = [{ shape: a, dtype: "f32" }, { shape: b, dtype: "f32" }];
  const { problem } = plan("matmul", sa, sb, !!options.transA, !!options.transB);
  return variantFor(problem).name;
}

/**
 * Times candidate variants on an [M, K] · [K, N] problem (batch `batch`, stored as the trans flags
 * say) and makes the fastest the choice for its shape class in this process. Candidates default to
 * the 3 best register variants of the cost model on software adapters (shared-memory tiles are
 * slow there, and timing every block size on big shapes takes minutes), and to all variants on GPUs.
 */
export async function tuneMatmul(
  M: number,
  N: number,
  K: number,
  { transA = false, transB = false, batch = 1, candidates, iters = 2 }: MatmulOptions & {
    batch?: number;
    candidates?: string[];
    iters?: number;
  } = {},
): Promise<TuneResult> {
  const aShape = [...(batch > 1 ? [batch] : []), ...(transA ? [K, M] : [M, K])];
  const bShape = [...(batch > 1 ? [batch] : []), ...(transB ? [N, K] : [K, N])];
  const a = zeros(aShape);
  const b = zeros(bShape);
  const { problem, outShape } = plan("matmul", a, b, transA, transB);
  const out = new Tensor(outShape, "f32");
  const pool = candidates
    ? candidates.map((name) => {
      const v = MATMUL_VARIANTS.find((c) => c.name === name);
      if (!v) throw new Error(`peco: tuneMatmul: no variant "${name}"`);
      return v;
    })
    : gpu().info.software
    ? rankedRegVariants(problem).slice(0, 3)
    : MATMUL_VARIANTS;
  try {
    const run = (v: Variant<MatmulConfig>) => launch(a, b, null, out, problem, v);
    return await tune("matmul", shapeClass(problem), pool, run, { iters });
  } finally {
    // Released here, not by a scope: the caller need not run this inside tidy().
    await gpu().recorder.sync();
    for (const t of [a, b, out]) t.dispose();
  }
}

/** The variant matmul runs for this problem without tuning (for benchmark reports). */
export function defaultMatmulVariant(a: Shape, b: Shape, options: MatmulOptions = {}): string {
  const [sa, sb] = [{ shape: a, dtype: "f32" }, { shape: b, dtype: "f32" }];
  return defaultVariant(plan("matmul", sa, sb, !!options.transA, !!options.transB).problem).name;
}
