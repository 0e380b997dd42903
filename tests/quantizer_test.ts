import { assertClose, kernelsRan, prod, randArray, rng } from "./util.ts";
import {
  deepStrictEqual as assertEquals,
  ok as assert,
  throws as assertThrows,
} from "node:assert/strict";
import {
  add,
  backward,
  mul,
  readAll,
  sum,
  type Tensor,
  tensor,
  tidy,
  zeros,
} from "../lib/tensor/mod.ts";
import { type EmaCodebook, emaCodebookStep, restartDeadCodes } from "../lib/tensor/ops/ema.ts";
import {
  codeHistogram,
  CodeUsage,
  distinctCodes,
  type QuantizerConfig,
  usageMetrics,
  VectorQuantizer,
} from "../lib/models/quantizer.ts";

// z [B, D, h, w] with odd sizes and a size-1 dim; K = 7 codes.
const B = 2, D = 3, H = 3, W = 5, K = 7;
const ZSHAPE = [B, D, H, W];
const N = B * H * W;

/** Rows [N, D] of z [B, D, h, w] in (b, y, x) order. */
function rowsOf(z: number[], [b, d, h, w]: number[]): number[][] {
  const rows: number[][] = [];
  for (let bi = 0; bi < b; bi++) {
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        rows.push(Array.from({ length: d }, (_, c) => z[((bi * d + c) * h + y) * w + x]));
      }
    }
  }
  return rows;
}

/** Rows [N, D] back to the layout [B, D, h, w]. */
function fromRows(rows: number[][], [b, d, h, w]: number[]): number[] {
  const out = new Array(b * d * h * w);
  rows.forEach((r, i) => {
    const bi = Math.floor(i / (h * w));
    const p = i % (h * w);
    r.forEach((v, c) => (out[(bi * d + c) * h * w + p] = v));
  });
  return out;
}

const dist2 = (a: number[], b: number[]) => a.reduce((s, v, i) => s + (v - b[i]) ** 2, 0);

function nearestRef(rows: number[][], codes: number[][]): number[] {
  return rows.map((r) => {
    let best = 0;
    for (let k = 1; k < codes.length; k++) if (dist2(r, codes[k]) < dist2(r, codes[best])) best = k;
    return best;
  });
}

const chunk = (flat: ArrayLike<number>, d: number) =>
  Array.from({ length: flat.length / d }, (_, i) => Array.from(flat).slice(i * d, i * d + d));

/** A quantizer with the given codebook (and EMA statistics) loaded. */
function quantizer(
  config: Partial<QuantizerConfig>,
  state: { weight: number[]; clusterSize?: number[]; embedAvg?: number[] },
): VectorQuantizer {
  const q = new VectorQuantizer({ codebookSize: K, codeDim: D, init: "random", ...config });
  const entries = new Map<string, Tensor>([["embedding.weight", tensor(state.weight, [K, D])]]);
  if (state.clusterSize) entries.set("embedding.cluster_size", tensor(state.clusterSize, [K]));
  if (state.embedAvg) entries.set("embedding.embed_avg", tensor(state.embedAvg, [K, D]));
  q.loadStateDict(entries, { strict: false });
  for (const t of entries.values()) t.dispose();
  return q;
}

const zData = randArray(prod(ZSHAPE), 21, -1.5, 1.5);
const codeData = randArray(K * D, 22, -1.2, 1.2);

Deno.test("quantizer: parameter names follow taming (EMA and plain)", () => {
  const ema = new VectorQuantizer({ codebookSize: K, codeDim: D });
  assertEquals([...ema.stateDict().keys()].sort(), [
    "embedding.cluster_size",
    "embedding.embed_avg",
    "embedding.weight",
    "initted",
  ]);
  assertEquals(ema.parameters().length, 0);
  const plain = new VectorQuantizer({ codebookSize: K, codeDim: D, kind: "plain" });
  assertEquals([...plain.namedParameters().keys()], ["embedding.weight"]);
  assertEquals([...plain.stateDict().keys()].sort(), ["embedding.weight", "initted"]);
  ema.dispose();
  plain.dispose();
});

for (const kind of ["ema", "plain"] as const) {
  Deno.test(`quantizer ${kind}: forward matches float64 (codes, z_q, commitment, loss)`, async () => {
    const q = quantizer({ kind }, { weight: codeData });
    q.eval();
    const z = tensor(zData, ZSHAPE);
    const out = q.forward(z);
    const [zq, indices, commitment, loss] = await Promise.all([
      out.zq.toArray(),
      out.indices.toArray(),
      out.commitment.item(),
      out.loss.item(),
    ]);
    const rows = rowsOf(zData, ZSHAPE);
    const codes = chunk(codeData, D);
    const idx = nearestRef(rows, codes);
    assertEquals(out.indices.shape, [B, H, W]);
    assertEquals(out.zq.shape, ZSHAPE);
    assertEquals(indices, idx);
    assertClose(zq, fromRows(idx.map((k) => codes[k]), ZSHAPE), { what: "z_q" });
    const mse = rows.reduce((s, r, i) => s + dist2(r, codes[idx[i]]), 0) / prod(ZSHAPE);
    assertClose([commitment], [mse], { what: "commitment" });
    assertClose([loss], [kind === "ema" ? 0.25 * mse : 1.25 * mse], { what: "loss" });
    // Eval mode never touches the codebook.
    assertClose(await q.codebook.toArray(), codeData.map(Math.fround), {
      atol: 0,
      rtol: 0,
      what: "codebook",
    });
    z.dispose();
    q.dispose();
  });

  Deno.test(`quantizer ${kind}: straight-through gradient of z, codebook gradient`, async () => {
    const beta = 0.3;
    const q = quantizer({ kind, beta }, { weight: codeData });
    q.eval();
    const z = tensor(zData, ZSHAPE);
    z.requiresGrad = true;
    const w = randArray(prod(ZSHAPE), 23);
    tidy(() => {
      const out = q.forward(z);
      backward(add(sum(mul(out.zq, tensor(w, ZSHAPE))), out.loss));
    });
    const rows = rowsOf(zData, ZSHAPE);
    const codes = chunk(codeData, D);
    const idx = nearestRef(rows, codes);
    const zq = fromRows(idx.map((k) => codes[k]), ZSHAPE);
    const n = prod(ZSHAPE);
    // d/dz [Σ w·z_q_st + β·mean((z − sg z_q)²)] = w + 2β (z − z_q) / n.
    const gz = zData.map((v, i) => w[i] + (2 * beta * (v - zq[i])) / n);
    assertClose(await z.grad!.toArray(), gz, { atol: 1e-6, what: "grad z" });
    if (kind === "plain") {
      // d/de_k mean((z_q − sg z)²) = Σ_{rows of k} 2 (e_k − z_row) / n; the STE term adds nothing.
      const ge = new Array(K * D).fill(0);
      rows.forEach((r, i) =>
        r.forEach((v, c) => (ge[idx[i] * D + c] += (2 * (codes[idx[i]][c] - v)) / n))
      );
      assert(ge.some((v) => v !== 0));
      assertClose(await q.codebook.grad!.toArray(), ge, { atol: 1e-6, what: "grad codebook" });
    } else {
      assertEquals(q.codebook.grad, null);
    }
    z.grad?.dispose();
    z.dispose();
    q.dispose();
  });
}

/** float64 EMA step (docs/paper-to-code.md) from the assignment of `rows` under the old codes. */
function emaRef(
  rows: number[][],
  idx: number[],
  state: { clusterSize: number[]; embedAvg: number[] },
  decay: number,
  eps: number,
) {
  const counts = new Array(K).fill(0);
  const sums = new Array(K * D).fill(0);
  rows.forEach((r, i) => {
    counts[idx[i]]++;
    r.forEach((v, c) => (sums[idx[i] * D + c] += v));
  });
  const n = state.clusterSize.map((v, k) => decay * v + (1 - decay) * counts[k]);
  const m = state.embedAvg.map((v, j) => decay * v + (1 - decay) * sums[j]);
  const total = n.reduce((a, b) => a + b, 0);
  const smoothed = n.map((v) => ((v + eps) / (total + K * eps)) * total);
  const e = m.map((v, j) => v / smoothed[Math.floor(j / D)]);
  return { n, m, e, counts };
}

const emaState = {
  clusterSize: randArray(K, 24, 0.5, 3),
  embedAvg: randArray(K * D, 25, -2, 2),
};

Deno.test("quantizer ema: one training step quantizes with the old codebook, then updates it", async () => {
  const decay = 0.9, eps = 0.05;
  const q = quantizer({ decay, eps, deadCodeThreshold: 0 }, { weight: codeData, ...emaState });
  const z = tensor(zData, ZSHAPE);
  const out = q.forward(z);
  const [indices, zq, weight, clusterSize, embedAvg] = await Promise.all(
    [out.indices, out.zq, q.codebook, q.embedding.clusterSize!, q.embedding.embedAvg!].map((t) =>
      t.toArray()
    ),
  );
  const rows = rowsOf(zData, ZSHAPE);
  const codes = chunk(codeData, D);
  const idx = nearestRef(rows, codes);
  assertEquals(indices, idx);
  assertClose(zq, fromRows(idx.map((k) => codes[k]), ZSHAPE), { what: "z_q (old codebook)" });
  const ref = emaRef(rows, idx, emaState, decay, eps);
  assertClose(clusterSize, ref.n, { what: "cluster_size" });
  assertClose(embedAvg, ref.m, { what: "embed_avg" });
  assertClose(weight, ref.e, { what: "codebook" });
  // The smoothing is visible at this ε: e_k = m_k / N_k would fail the comparison above.
  const unsmoothed = ref.m.map((v, j) => v / ref.n[Math.floor(j / D)]);
  assert(unsmoothed.some((v, j) => Math.abs(v - ref.e[j]) > 1e-3 * (1 + Math.abs(v))));
  assertEquals(q.steps, 1);
  z.dispose();
  q.dispose();
});

Deno.test("quantizer ema: the update and the restart run as three in-place kernels", async () => {
  const q = quantizer({ decay: 0.9, eps: 1e-5, deadCodeThreshold: 1 }, {
    weight: codeData,
    clusterSize: [0.5, 3, 0.2, 2, 1.05, 0, 4],
    embedAvg: emaState.embedAvg,
  });
  const z = tensor(zData, ZSHAPE);
  const ran = await kernelsRan(() => tidy(() => void q.forward(z)), "ema_");
  assertEquals(ran, ["ema_stats", "ema_codes", "ema_restart"]);
  const state = q.embedding as unknown as EmaCodebook;
  assertThrows(
    () => tidy(() => emaCodebookStep(state, zeros([K + 1]), zeros([K, D]), 0.9, 1e-5)),
    /peco: emaCodebookStep: counts tensor<f32>\[8\] and sums .* do not fit K = 7/,
  );
  assertThrows(
    () =>
      tidy(() =>
        restartDeadCodes(state, {
          rows: zeros([5, D + 1]),
          draws: zeros([K]),
          noise: zeros([K, D]),
          sumSquares: zeros([1]),
          jitter: 1e-3,
          floor: 1e-6,
        }, 1)
      ),
    /peco: restartDeadCodes: rows tensor<f32>\[5,\d+\], draws .* do not fit K = 7/,
  );
  z.dispose();
  q.dispose();
});

/**
 * True when `code` is a row of `rows` moved by the seeding / restart jitter: within 1e-2 of it
 * (the jitter is 1e-3 of the rows' RMS per element), but not equal to it.
 */
function nearARow(rows: number[][], code: number[]): boolean {
  return rows.some((r) => dist2(r, code) < 1e-4) &&
    !rows.some((r) => r.every((v, c) => Math.fround(v) === code[c]));
}

/** The clustered data set: 3 well separated clusters in D = 3, 9 + 11 + 7 rows shuffled. */
function clusteredRows(): { rows: number[][]; label: number[] } {
  const centers = [[4, 0, 0], [0, 4, -1], [-3, -3, 3]];
  const r = rng(31);
  const label = [...new Array(9).fill(0), ...new Array(11).fill(1), ...new Array(7).fill(2)];
  for (let i = label.length - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [label[i], label[j]] = [label[j], label[i]];
  }
  const rows = label.map((l) => centers[l].map((c) => c + (r() - 0.5) * 0.6));
  return { rows, label };
}

/** Checks Lloyd's fixed point: e_k = mean of its rows, N_k = their count, m_k = e_k·N_k. */
async function checkKmeansState(q: VectorQuantizer, rows: number[][]) {
  const [weight, clusterSize, embedAvg] = await Promise.all(
    [q.codebook, q.embedding.clusterSize!, q.embedding.embedAvg!].map((t) => t.toArray()),
  );
  const codes = chunk(weight, D);
  const idx = nearestRef(rows, codes);
  const counts = new Array(K).fill(0);
  idx.forEach((k) => counts[k]++);
  assertEquals(clusterSize, counts);
  for (let k = 0; k < K; k++) {
    const members = rows.filter((_, i) => idx[i] === k);
    if (members.length === 0) {
      // An empty cluster keeps its centroid: its seed, a row of the data plus the jitter.
      assert(nearARow(rows, codes[k]), `empty code ${k} is not a seed row`);
      continue;
    }
    const centroid = codes[k].map((_, c) => members.reduce((s, r) => s + r[c], 0) / members.length);
    assertClose(codes[k], centroid, { what: `centroid ${k}` });
  }
  assertClose(embedAvg, weight.map((v, j) => v * counts[Math.floor(j / D)]), { what: "embed_avg" });
  return { idx, counts };
}

Deno.test("quantizer: k-means initialisation recovers well separated clusters", async () => {
  const { rows, label } = clusteredRows();
  const q = new VectorQuantizer({ codebookSize: K, codeDim: D, seed: 5 });
  assert(!q.initialized);
  const t = tensor(rows.flat(), [rows.length, D]);
  q.kmeansInit(t);
  const { idx } = await checkKmeansState(q, rows);
  // Every code holds rows of one cluster only (so no two clusters were merged).
  for (let k = 0; k < K; k++) {
    const labels = new Set(label.filter((_, i) => idx[i] === k));
    assert(labels.size <= 1, `code ${k} mixes clusters ${[...labels]}`);
  }
  assert(q.initialized);
  assertEquals(await q.initted.toArray(), [1]);
  t.dispose();
  q.dispose();
});

Deno.test("quantizer: k-means with fewer rows than codes keeps empty centroids", async () => {
  const rows = chunk(randArray(5 * D, 32, -2, 2), D);
  const q = new VectorQuantizer({ codebookSize: K, codeDim: D, seed: 3 });
  const t = tensor(rows.flat(), [5, D]);
  q.kmeansInit(t);
  const { counts } = await checkKmeansState(q, rows);
  assert(counts.includes(0), "with 5 rows and 7 codes some code must be empty");
  assertEquals(counts.reduce((a, b) => a + b, 0), 5);
  t.dispose();
  q.dispose();
});

Deno.test("quantizer: the first training forward runs k-means, restore() reads the flag", async () => {
  const { rows } = clusteredRows();
  const q = new VectorQuantizer({ codebookSize: K, codeDim: D, seed: 5, deadCodeThreshold: 0 });
  // The 27 rows as z [1, D, 3, 9].
  const shape = [1, D, 3, 9];
  const z = tensor(fromRows(rows, shape), shape);
  const out = q.forward(z);
  assert(q.initialized);
  const indices = await out.indices.toArray();
  const weight = chunk(await q.codebook.toArray(), D);
  // After k-means the EMA step moves each code only by the smoothing: still its rows' mean.
  indices.forEach((k, i) => assert(dist2(rows[i], weight[k]) < 0.5));
  const fresh = new VectorQuantizer({ codebookSize: K, codeDim: D });
  fresh.loadStateDict(q.stateDict());
  assert(!fresh.initialized);
  await fresh.restore();
  assert(fresh.initialized);
  z.dispose();
  q.dispose();
  fresh.dispose();
});

Deno.test("quantizer: dead-code restart replaces exactly the codes with N_k below threshold", async () => {
  // Threshold 2: N_k = 2 stays live, and m_k = 2·e_k tells m from e.
  const clusterSize = [0.5, 3, 0.2, 2, 1.0, 0, 4];
  const dead = clusterSize.map((v) => v < 2);
  const q = quantizer({ deadCodeThreshold: 2 }, {
    weight: codeData,
    clusterSize,
    embedAvg: emaState.embedAvg,
  });
  const rows = rowsOf(zData, ZSHAPE);
  const t = tensor(rows.flat(), [N, D]);
  const before = await Promise.all(
    [q.codebook, q.embedding.embedAvg!].map((x) => x.read().then((a) => Array.from(a))),
  );
  q.restartDeadCodes(t);
  const [weight, n, m] =
    (await readAll([q.codebook, q.embedding.clusterSize!, q.embedding.embedAvg!]))
      .map((a) => Array.from(a));
  const f32 = (v: number) => Math.fround(v);
  for (let k = 0; k < K; k++) {
    const code = weight.slice(k * D, k * D + D);
    if (dead[k]) {
      assert(nearARow(rows, code), `code ${k}: not a row of z plus the jitter`);
      assertEquals(n[k], 2);
      assertEquals(m.slice(k * D, k * D + D), code.map((v) => 2 * v));
    } else {
      assertEquals(code, before[0].slice(k * D, k * D + D), `live code ${k} changed`);
      assertEquals(n[k], f32(clusterSize[k]));
      assertEquals(m.slice(k * D, k * D + D), before[1].slice(k * D, k * D + D));
    }
  }
  t.dispose();
  q.dispose();
});

Deno.test("quantizer ema: a training step restarts the codes left dead by the update", async () => {
  const decay = 0.9, eps = 1e-5;
  const clusterSize = [0.5, 3, 0.2, 2, 1.05, 0, 4];
  const q = quantizer({ decay, eps, deadCodeThreshold: 1 }, {
    weight: codeData,
    clusterSize,
    embedAvg: emaState.embedAvg,
  });
  const z = tensor(zData, ZSHAPE);
  q.forward(z);
  const [weight, n] = (await readAll([q.codebook, q.embedding.clusterSize!])).map((a) =>
    Array.from(a)
  );
  const rows = rowsOf(zData, ZSHAPE);
  const ref = emaRef(
    rows,
    nearestRef(rows, chunk(codeData, D)),
    {
      clusterSize,
      embedAvg: emaState.embedAvg,
    },
    decay,
    eps,
  );
  const dead = ref.n.map((v) => v < 1);
  assert(dead.some((d) => d) && dead.some((d) => !d), "the case must have dead and live codes");
  for (let k = 0; k < K; k++) {
    const code = weight.slice(k * D, k * D + D);
    if (dead[k]) {
      assert(nearARow(rows, code), `code ${k}`);
      assertEquals(n[k], 1);
    } else {
      assertClose(code, ref.e.slice(k * D, k * D + D), { what: `live code ${k}` });
      assertClose([n[k]], [ref.n[k]], { what: `N_${k}` });
    }
  }
  z.dispose();
  q.dispose();
});

Deno.test("quantizer ema: seeds and restarts never make two codes equal", async () => {
  // A batch of 6 rows holding only 2 distinct vectors (one of them all zero), K = 7: the k-means
  // seeds and every restart draw copies of the same two vectors. Without the jitter the codebook
  // ends with at most 2 distinct rows of 7.
  const k = 7, d = 3;
  const vectors = [[0, 0, 0], [0.5, -1, 2]];
  const rows = [0, 1, 0, 0, 1, 0].map((i) => vectors[i]);
  const shape = [1, d, 2, 3];
  const z = tensor(fromRows(rows, shape), shape);
  const q = new VectorQuantizer({ codebookSize: k, codeDim: d, decay: 0.5, deadCodeThreshold: 1 });
  try {
    for (let step = 1; step <= 4; step++) {
      tidy(() => {
        q.forward(z);
      });
      const codebook = await q.codebook.toArray();
      assertEquals(distinctCodes(codebook, d), k, `distinct codes after step ${step}`);
      // Restarted codes stay next to the vectors they were drawn from.
      chunk(codebook, d).forEach((code, i) =>
        assert(vectors.some((v) => dist2(v, code) < 1e-4), `code ${i} ${code}`)
      );
    }
    const n = await q.embedding.clusterSize!.toArray();
    assert(n.some((v) => v === 1), "some codes were restarted at the last step");
  } finally {
    z.dispose();
    q.dispose();
  }
});

Deno.test("distinctCodes counts rows equal by value", () => {
  assertEquals(distinctCodes([1, 2, 0, 0, 1, 2, -0, 0, 3, 4], 2), 3);
  assertEquals(distinctCodes([1, 2, 1, 2.5], 2), 2);
  assertEquals(distinctCodes([], 4), 0);
  assertThrows(() => distinctCodes([1, 2, 3], 2), /distinctCodes: 3 values are not rows of 2/);
});

Deno.test("quantizer: lookup turns indices back into z_q", async () => {
  const q = quantizer({}, { weight: codeData });
  q.eval();
  const z = tensor(zData, ZSHAPE);
  const out = q.forward(z);
  const back = q.lookup(out.indices);
  assertEquals(back.shape, ZSHAPE);
  // z_q_st = z + (z_q − z) rounds; the lookup is the codebook rows exactly.
  assertClose(await back.toArray(), await out.zq.toArray(), { atol: 1e-6, what: "lookup" });
  const codes = chunk(codeData.map(Math.fround), D);
  const idx = await out.indices.toArray();
  assertClose(await back.toArray(), fromRows(idx.map((k) => codes[k]), ZSHAPE), {
    atol: 0,
    rtol: 0,
    what: "lookup rows",
  });
  z.dispose();
  q.dispose();
});

Deno.test("quantizer: code histogram, perplexity and usage on the GPU", async () => {
  const r = rng(41);
  // Codes 0..4 only (usage 5/7), skewed.
  const ids = Array.from({ length: 37 }, () => Math.floor(r() ** 2 * 5));
  const idsT = tensor(ids, [37], "i32");
  const counts = new Array(K).fill(0);
  ids.forEach((k) => counts[k]++);
  const hist = codeHistogram(idsT, K);
  assertEquals(await hist.toArray(), counts);
  const p = counts.map((c) => c / ids.length);
  const entropy = -p.reduce((s, v) => s + (v > 0 ? v * Math.log(v) : 0), 0);
  const { perplexity, usage } = usageMetrics(hist);
  const [pp, u] = await readAll([perplexity, usage]);
  assertClose(pp, [Math.exp(entropy)], { what: "perplexity" });
  assertClose(u, [5 / K], { what: "usage" });
  // Accumulated over two batches, then reset.
  const acc = new CodeUsage(K);
  acc.add(idsT);
  acc.add(idsT.view([1, 37, 1]));
  assertEquals(await acc.counts.toArray(), counts.map((c) => 2 * c));
  const m = acc.metrics();
  assertClose(await m.perplexity.toArray(), [Math.exp(entropy)], { what: "perplexity x2" });
  acc.reset();
  assertEquals(await acc.counts.toArray(), new Array(K).fill(0));
  acc.dispose();
  idsT.dispose();
});

Deno.test("quantizer: bad configs and inputs give clear errors", () => {
  const bad: [Partial<QuantizerConfig>, RegExp][] = [
    [{ codebookSize: 0 }, /codebookSize/],
    [{ codeDim: 2.5 }, /codeDim/],
    [{ decay: 1 }, /decay must be in \[0, 1\)/],
    [{ eps: 0 }, /eps/],
    [{ beta: -1 }, /beta/],
    [{ kind: "gumbel" as "ema" }, /kind must be "ema" or "plain"/],
    [{ init: "zeros" as "kmeans" }, /init/],
    [{ deadCodeEvery: 0 }, /deadCodeEvery/],
  ];
  for (const [config, message] of bad) {
    assertThrows(
      () => new VectorQuantizer({ codebookSize: K, codeDim: D, ...config }),
      (e: Error) => /^peco: VectorQuantizer config: /.test(e.message) && message.test(e.message),
    );
  }
  const q = new VectorQuantizer({ codebookSize: K, codeDim: D, kind: "plain" });
  const z = tensor(new Array(2 * 4 * 3).fill(0), [2, 4, 3, 1]);
  assertThrows(
    () => q.forward(z),
    /peco: VectorQuantizer: z must be f32 \[B, 3, h, w\], got .*\[2,4,3,1\]/,
  );
  assertThrows(() => q.forward(z.view([2, 4, 3])), /VectorQuantizer: z must be/);
  assertThrows(() => q.lookup(z), /VectorQuantizer.lookup: indices must be i32/);
  assertThrows(() => q.restartDeadCodes(z.view([6, 4])), /only the EMA quantizer/);
  assertThrows(() => codeHistogram(z, K), /codeHistogram needs i32/);
  z.dispose();
  q.dispose();
});
