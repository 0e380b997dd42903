import { assertClose, checkGrad, prod, randArray, runOp } from "./util.ts";
import * as T from "../lib/tensor/mod.ts";
import assert from "node:assert/strict";
import { gpu } from "../lib/gpu/device.ts";
import { forceVariant } from "../lib/gpu/autotune.ts";

/** How a float64 reference groups [N, C, S]: `groups` channel groups, or per channel (batch). */
type Grouping = { groups: number } | { batch: true };

/** Statistics group of element (n, c) and the number of groups. */
function statsGroup(g: Grouping, [, c]: number[]): { of: (n: number, ch: number) => number } {
  if ("batch" in g) return { of: (_n, ch) => ch };
  const cg = c / g.groups;
  return { of: (n, ch) => n * g.groups + Math.floor(ch / cg) };
}

/** float64 mean and biased variance per statistics group. */
function statsRef(
  x: number[],
  dims: number[],
  g: Grouping,
): { mean: number[]; variance: number[] } {
  const [n, c, s] = dims;
  const group = statsGroup(g, dims);
  const sums = new Map<number, number[]>();
  for (let i = 0; i < n; i++) {
    for (let ch = 0; ch < c; ch++) {
      const k = group.of(i, ch);
      if (!sums.has(k)) sums.set(k, []);
      for (let j = 0; j < s; j++) sums.get(k)!.push(x[(i * c + ch) * s + j]);
    }
  }
  const mean: number[] = [];
  const variance: number[] = [];
  for (const [k, v] of sums) {
    const m = v.reduce((a, b) => a + b, 0) / v.length;
    mean[k] = m;
    variance[k] = v.reduce((a, b) => a + (b - m) ** 2, 0) / v.length;
  }
  return { mean, variance };
}

/** float64 normalisation of x viewed as [N, C, S] (stats given, or taken from x). */
function normRef(
  x: number[],
  dims: number[],
  g: Grouping,
  w: number[] | null,
  b: number[] | null,
  eps = 1e-5,
  stats = statsRef(x, dims, g),
): number[] {
  const [n, c, s] = dims;
  const group = statsGroup(g, dims);
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    for (let ch = 0; ch < c; ch++) {
      const k = group.of(i, ch);
      const r = 1 / Math.sqrt(stats.variance[k] + eps);
      for (let j = 0; j < s; j++) {
        const v = (x[(i * c + ch) * s + j] - stats.mean[k]) * r;
        out.push(v * (w ? w[ch] : 1) + (b ? b[ch] : 0));
      }
    }
  }
  return out;
}

const input = (data: number[], shape: number[]) => ({ data, shape });

/** Forward against float64 and backward by finite differences, with and without affine. */
async function checkNorm(
  shape: number[],
  dims: number[],
  g: Grouping,
  op: (x: T.Tensor, w: T.Tensor | null, b: T.Tensor | null) => T.Tensor,
  seed: number,
) {
  const c = dims[1];
  const x = randArray(prod(shape), seed, -2, 2);
  const w = randArray(c, seed + 1, 0.5, 1.5);
  const b = randArray(c, seed + 2);
  const out = await runOp(op, [input(x, shape), input(w, [c]), input(b, [c])]);
  assertClose(out.data, normRef(x, dims, g, w, b), { atol: 2e-5, rtol: 1e-4, what: "forward" });
  assertClose(out.shape, shape, { what: "shape" });
  const plain = await runOp((t) => op(t, null, null), [input(x, shape)]);
  assertClose(plain.data, normRef(x, dims, g, null, null), { atol: 2e-5, what: "no affine" });
  await checkGrad(op, (xs, ws, bs) => normRef(xs, dims, g, ws, bs), [
    input(x, shape),
    input(w, [c]),
    input(b, [c]),
  ]);
  await checkGrad((t) => op(t, null, null), (xs) => normRef(xs, dims, g, null, null), [
    input(x, shape),
  ]);
}

// ---- layerNorm -------------------------------------------------------------------------------

const ln = (x: T.Tensor, w: T.Tensor | null, b: T.Tensor | null) => T.layerNorm(x, w, b);

Deno.test("layerNorm [3,5,7]: forward and backward", async () => {
  await checkNorm([3, 5, 7], [15, 7, 1], { groups: 1 }, ln, 1);
});

Deno.test("layerNorm [1,9] and [2,301] (a row split into several pieces)", async () => {
  await checkNorm([1, 9], [1, 9, 1], { groups: 1 }, ln, 2);
  await checkNorm([2, 301], [2, 301, 1], { groups: 1 }, ln, 3);
});

Deno.test("fused norms add x's (and a weight's) prior gradient in backward, forced on and off", async () => {
  const shape = [3, 5, 7];
  const dims = [15, 7, 1];
  const x = randArray(prod(shape), 41, -2, 2);
  const w = randArray(7, 42, 0.5, 1.5);
  const b = randArray(7, 43);
  const inputs = [input(x, shape), input(w, [7]), input(b, [7])];
  const lnRef = (xs: number[], ws: number[], bs: number[]) =>
    normRef(xs, dims, { groups: 1 }, ws, bs);
  // x also feeds a later op (its gradient reaches x first, then the norm's adds to it), as a
  // residual stream's x + f(norm(x)); then x feeds it directly; then the weight is used twice.
  const cases: [string, (x: T.Tensor, w: T.Tensor, b: T.Tensor) => T.Tensor, typeof lnRef][] = [
    [
      "x, then x²",
      (t, wt, bt) => T.add(T.layerNorm(t, wt, bt), T.mul(t, t)),
      (xs, ws, bs) => lnRef(xs, ws, bs).map((v, i) => v + xs[i] * xs[i]),
    ],
    [
      "x, then x",
      (t, wt, bt) => T.add(T.layerNorm(t, wt, bt), t),
      (xs, ws, bs) => lnRef(xs, ws, bs).map((v, i) => v + xs[i]),
    ],
    [
      "weight twice",
      (t, wt, bt) => T.add(T.layerNorm(t, wt, bt), T.mul(wt, wt)),
      (xs, ws, bs) => lnRef(xs, ws, bs).map((v, i) => v + ws[i % 7] * ws[i % 7]),
    ],
    [
      "groupNorm + silu, then x",
      (t, wt, bt) => {
        const r = T.reshape(t, [3, 7, 5]);
        return T.add(T.groupNorm(r, 7, wt, bt, 1e-5, "silu"), r);
      },
      (xs, ws, bs) =>
        normRef(xs, [3, 7, 5], { groups: 7 }, ws, bs).map((v, i) => silu64(v) + xs[i]),
    ],
  ];
  const backwardDispatches = async (op: (typeof cases)[number][1]) => {
    const ts = inputs.map((i) => {
      const t = T.tensor(i.data, i.shape);
      t.requiresGrad = true;
      return t;
    });
    const count = T.tidy(() => {
      const out = T.sum(op(ts[0], ts[1], ts[2]));
      const start = gpu().recorder.dispatches;
      T.backward(out);
      return gpu().recorder.dispatches - start;
    });
    const grads = await Promise.all(ts.map((t) => t.grad!.toArray()));
    ts.forEach((t) => {
      t.grad?.dispose();
      t.dispose();
    });
    return { count, grads };
  };
  try {
    for (const [what, op, ref] of cases) {
      for (const mode of ["fused", "add"]) {
        forceVariant("gradAccumulate", mode === "add" ? "add" : null);
        await checkGrad(op, ref, inputs);
      }
      forceVariant("gradAccumulate", "add");
      const added = await backwardDispatches(op);
      forceVariant("gradAccumulate", null);
      const fused = await backwardDispatches(op);
      // A weight's prior is added by an addition still (only dx's sum is in a kernel).
      const saved = what === "weight twice" ? 0 : 1;
      assert.equal(fused.count, added.count - saved, `${what}: ${saved} addition(s) less`);
      fused.grads.forEach((g, i) => assertClose(g, added.grads[i], { atol: 1e-6, what }));
    }
  } finally {
    forceVariant("gradAccumulate", null);
  }
});

Deno.test("layerNorm stays accurate on rows with a large mean (1000 + noise)", async () => {
  for (const shape of [[4, 7], [3, 517]]) {
    const [rows, d] = shape;
    // The reference sees the f32 values the GPU sees.
    const x = randArray(rows * d, 4, 999, 1001).map(Math.fround);
    const out = await runOp((t) => T.layerNorm(t, null, null), [input(x, shape)]);
    assertClose(out.data, normRef(x, [rows, d, 1], { groups: 1 }, null, null), {
      atol: 2e-4,
      what: `offset rows [${shape}]`,
    });
  }
});

Deno.test("layerNorm with eps: tiny variance is damped as in the reference", async () => {
  const x = randArray(15, 5, -1e-3, 1e-3);
  const out = await runOp((t) => T.layerNorm(t, null, null, 1e-4), [input(x, [3, 5])]);
  assertClose(out.data, normRef(x, [3, 5, 1], { groups: 1 }, null, null, 1e-4), { atol: 1e-4 });
});

/** Weight and bias gradients of a norm over [N, C, S] for the seed gradient `dy`, in float64. */
function affineGradsRef(xhat: number[], dy: number[], [n, c, s]: number[]): number[][] {
  const gw = new Array(c).fill(0);
  const gb = new Array(c).fill(0);
  for (let i = 0; i < n * c * s; i++) {
    const ch = Math.floor(i / s) % c;
    gw[ch] += dy[i] * xhat[i];
    gb[ch] += dy[i];
  }
  return [gw, gb];
}

/**
 * Runs `op` (x, weight, bias → y) forward and backward with seeded inputs of `shape` and C channels
 * and checks y against `forward` (float64 of x, w, b) and the weight and bias gradients against
 * the groupNorm-style sums over each channel's elements of `dz` · xhat and `dz`, where
 * dz(z, dy) is the gradient reaching the normalised z (dy itself without an activation). Returns the
 * dispatches of the forward.
 */
async function checkAffineGrads(
  shape: number[],
  dims: number[],
  groups: number,
  seed: number,
  op: (x: T.Tensor, w: T.Tensor, b: T.Tensor) => T.Tensor,
  activation: (z: number) => number = (z) => z,
  dz: (z: number, dy: number) => number = (_z, dy) => dy,
): Promise<number> {
  const c = dims[1];
  const x = randArray(prod(shape), seed, -2, 2);
  const w = randArray(c, seed + 1, 0.5, 1.5);
  const b = randArray(c, seed + 2);
  const dy = randArray(prod(shape), seed + 3);
  const [xt, wt, bt] = [T.tensor(x, shape), T.tensor(w, [c]), T.tensor(b, [c])];
  for (const t of [xt, wt, bt]) t.requiresGrad = true;
  const before = gpu().recorder.dispatches;
  const y = op(xt, wt, bt);
  const dispatches = gpu().recorder.dispatches - before;
  T.backward(y, T.tensor(dy, shape));
  const got = await T.readAll([y, wt.grad!, bt.grad!]);
  const z = normRef(x, dims, { groups }, w, b);
  assertClose(Array.from(got[0]), z.map(activation), { atol: 2e-5, rtol: 1e-4, what: "forward" });
  const xhat = normRef(x, dims, { groups }, null, null);
  const [gw, gb] = affineGradsRef(xhat, z.map((v, i) => dz(v, dy[i])), dims);
  assertClose(Array.from(got[1]), gw, { atol: 2e-3, rtol: 1e-4, what: "weight grad" });
  assertClose(Array.from(got[2]), gb, { atol: 2e-3, rtol: 1e-4, what: "bias grad" });
  for (const t of [xt, wt, bt]) T.zeroGrad([t]), t.dispose();
  y.dispose();
  return dispatches;
}

Deno.test("layerNorm: one dispatch forward; weight and bias gradients over 32003 rows (pieces)", async () => {
  // Rows above the loop limit: the weight/bias gradients merge pieces of rows on every adapter.
  const dispatches = await checkAffineGrads([32003, 3], [32003, 3, 1], 1, 8, T.layerNorm);
  assert.equal(dispatches, 1);
});

Deno.test("layerNorm rows of 10000 (fused kernels) and 10001 (general kernels)", async () => {
  for (const d of [10000, 10001]) {
    const x = randArray(2 * d, d, -2, 2);
    const out = await runOp((t) => T.layerNorm(t, null, null), [input(x, [2, d])]);
    assertClose(out.data, normRef(x, [2, d, 1], { groups: 1 }, null, null), {
      atol: 5e-5,
      what: `rows of ${d}`,
    });
  }
});

Deno.test("groupNorm [12,4,50,60] groups=2: weight and bias gradients merged from pieces", async () => {
  await checkAffineGrads(
    [12, 4, 50, 60],
    [12, 4, 3000],
    2,
    21,
    (x, w, b) => T.groupNorm(x, 2, w, b),
  );
});

const silu64 = (z: number) => z / (1 + Math.exp(-z));
/** dy · silu'(z). */
const siluGrad64 = (z: number, dy: number) => {
  const s = 1 / (1 + Math.exp(-z));
  return dy * s * (1 + z * (1 - s));
};
const relu64 = (z: number) => Math.max(z, 0);
const reluGrad64 = (z: number, dy: number) => z > 0 ? dy : 0;
const activations = [
  { name: "silu", act: silu64, grad: siluGrad64 },
  { name: "relu", act: relu64, grad: reluGrad64 },
] as const;

for (const { name, act, grad } of activations) {
  Deno.test(`groupNorm + ${name} [2,6,5,3] groups=3: forward matches float64, backward finite differences`, async () => {
    const shape = [2, 6, 5, 3];
    const dims = [2, 6, 15];
    const x = randArray(prod(shape), 31, -2, 2);
    const w = randArray(6, 32, 0.5, 1.5);
    const b = randArray(6, 33);
    const ref = (xs: number[], ws: number[], bs: number[]) =>
      normRef(xs, dims, { groups: 3 }, ws, bs).map(act);
    const op = (t: T.Tensor, wt: T.Tensor, bt: T.Tensor) => T.groupNorm(t, 3, wt, bt, 1e-5, name);
    const inputs = [input(x, shape), input(w, [6]), input(b, [6])];
    const before = gpu().recorder.dispatches;
    const out = await runOp(op, inputs);
    // One dispatch forward (runOp's uploads are copies, not dispatches).
    assert.equal(gpu().recorder.dispatches - before, 1);
    assertClose(out.data, ref(x, w, b), { atol: 2e-5, rtol: 1e-4, what: "forward" });
    await checkGrad(op, ref, inputs);
  });

  Deno.test(`groupNorm + ${name}: gradients merged from pieces; past the fused limit it is ${name}(groupNorm)`, async () => {
    // [40, 2, 30, 30], one group: S = 900, so the weight/bias gradients take 4 pieces of samples;
    // dz = dy · act'(z).
    const op = (x: T.Tensor, w: T.Tensor, b: T.Tensor) => T.groupNorm(x, 1, w, b, 1e-5, name);
    await checkAffineGrads([40, 2, 30, 30], [40, 2, 900], 1, 41, op, act, grad);
    // A group of 2 · 5050 elements: the general kernels and a separate activation, the same values.
    const big = randArray(2 * 5050, 45, -2, 2);
    const out = await runOp((t) => T.groupNorm(t, 1, null, null, 1e-5, name), [
      input(big, [1, 2, 5050]),
    ]);
    const bigRef = normRef(big, [1, 2, 5050], { groups: 1 }, null, null).map(act);
    assertClose(out.data, bigRef, { atol: 2e-5, rtol: 1e-4, what: "past the fused limit" });
  });
}

Deno.test("fused groupNorm: channels of whole vec4s take the vec4 kernels, forced on and off", async () => {
  // S = 12 (a multiple of 4) with SiLU, a residual use of x (its prior gradient added in dx) and
  // three groups; then S = 400 over 40 samples (weight/bias gradients merged from pieces).
  const shape = [2, 6, 4, 3];
  const dims = [2, 6, 12];
  const x = randArray(prod(shape), 81, -2, 2);
  const w = randArray(6, 82, 0.5, 1.5);
  const b = randArray(6, 83);
  const ref = (xs: number[], ws: number[], bs: number[]) =>
    normRef(xs, dims, { groups: 3 }, ws, bs).map((v, i) => silu64(v) + xs[i]);
  const op = (t: T.Tensor, wt: T.Tensor, bt: T.Tensor) =>
    T.add(T.groupNorm(t, 3, wt, bt, 1e-5, "silu"), t);
  const inputs = [input(x, shape), input(w, [6]), input(b, [6])];
  try {
    for (const mode of ["vec4", "scalar"]) {
      forceVariant("fusedNorm", mode === "scalar" ? "scalar" : null);
      const kernel = T.tidy(() => {
        T.groupNorm(T.tensor(x, shape), 3, null, null, 1e-5, "silu");
        return gpu().recorder.lastLabel;
      });
      assert.equal(kernel, mode === "vec4" ? "fused_norm_forward_v4" : "fused_norm_forward");
      const out = await runOp(op, inputs);
      assertClose(out.data, ref(x, w, b), { atol: 2e-5, rtol: 1e-4, what: `${mode} forward` });
      await checkGrad(op, ref, inputs);
      const plain = (t: T.Tensor, wt: T.Tensor | null, bt: T.Tensor | null) =>
        T.groupNorm(t, 2, wt, bt);
      await checkNorm([3, 4, 2, 4], [3, 4, 8], { groups: 2 }, plain, 84);
      const pieces = (t: T.Tensor, wt: T.Tensor, bt: T.Tensor) =>
        T.groupNorm(t, 1, wt, bt, 1e-5, "silu");
      await checkAffineGrads([40, 2, 20, 20], [40, 2, 400], 1, 85, pieces, silu64, siluGrad64);
    }
  } finally {
    forceVariant("fusedNorm", null);
  }
});

// ---- groupNorm -------------------------------------------------------------------------------

for (const groups of [3, 1]) {
  Deno.test(`groupNorm N=2 C=6 groups=${groups}, 5x3: forward and backward`, async () => {
    const op = (x: T.Tensor, w: T.Tensor | null, b: T.Tensor | null) =>
      T.groupNorm(x, groups, w, b);
    await checkNorm([2, 6, 5, 3], [2, 6, 15], { groups }, op, 10 + groups);
  });
}

Deno.test("groupNorm [2,4,13,11] groups=2 (pieces cross channel runs), [1,3] rank 2", async () => {
  const op2 = (x: T.Tensor, w: T.Tensor | null, b: T.Tensor | null) => T.groupNorm(x, 2, w, b);
  await checkNorm([2, 4, 13, 11], [2, 4, 143], { groups: 2 }, op2, 20);
  const op3 = (x: T.Tensor, w: T.Tensor | null, b: T.Tensor | null) => T.groupNorm(x, 3, w, b);
  await checkNorm([1, 3], [1, 3, 1], { groups: 3 }, op3, 21);
});

// ---- batchNorm -------------------------------------------------------------------------------

const bnTrain = (x: T.Tensor, w: T.Tensor | null, b: T.Tensor | null) =>
  T.batchNorm(x, w, b, null, null, { training: true });

Deno.test("batchNorm train N=3 C=5 4x3: forward and backward", async () => {
  await checkNorm([3, 5, 4, 3], [3, 5, 12], { batch: true }, bnTrain, 30);
});

Deno.test("batchNorm train [5,3,9,7] (several pieces per channel) and [7,2]", async () => {
  await checkNorm([5, 3, 9, 7], [5, 3, 63], { batch: true }, bnTrain, 31);
  await checkNorm([7, 2], [7, 2, 1], { batch: true }, bnTrain, 32);
});

Deno.test("batchNorm train with large channel means stays accurate", async () => {
  const shape = [5, 3, 9, 7];
  const x = randArray(prod(shape), 33, -1, 1).map((v, i) =>
    Math.fround(v + 1000 * (1 + Math.floor(i / 63) % 3))
  );
  const out = await runOp((t) => bnTrain(t, null, null), [input(x, shape)]);
  assertClose(out.data, normRef(x, [5, 3, 63], { batch: true }, null, null), { atol: 5e-4 });
});

Deno.test("batchNorm train updates running statistics in place (PyTorch semantics)", async () => {
  const shape = [3, 5, 4, 3];
  const dims = [3, 5, 12];
  const x = randArray(prod(shape), 40, -2, 3);
  const rm0 = randArray(5, 41);
  const rv0 = randArray(5, 42, 0.5, 2);
  const w = randArray(5, 43, 0.5, 1.5);
  const b = randArray(5, 44);
  const momentum = 0.3;
  const [xt, wt, bt] = [T.tensor(x, shape), T.tensor(w), T.tensor(b)];
  const [rm, rv] = [T.tensor(rm0), T.tensor(rv0)];
  const y = T.batchNorm(xt, wt, bt, rm, rv, { training: true, momentum });
  const stats = statsRef(x, dims, { batch: true });
  const count = 3 * 12;
  assertClose(await y.toArray(), normRef(x, dims, { batch: true }, w, b), { atol: 2e-5 });
  assertClose(
    await rm.toArray(),
    rm0.map((r, c) => (1 - momentum) * r + momentum * stats.mean[c]),
    {
      what: "running mean",
    },
  );
  assertClose(
    await rv.toArray(),
    rv0.map((r, c) => (1 - momentum) * r + momentum * stats.variance[c] * count / (count - 1)),
    { what: "running var (unbiased)" },
  );
  // Default momentum 0.1 on a second step from the updated values.
  const rm1 = await rm.toArray();
  T.batchNorm(xt, wt, bt, rm, rv, { training: true }).dispose();
  assertClose(await rm.toArray(), rm1.map((r, c) => 0.9 * r + 0.1 * stats.mean[c]), {
    what: "second step",
  });
  [xt, wt, bt, rm, rv, y].forEach((t) => t.dispose());
});

Deno.test("batchNorm eval uses the running statistics: forward and backward", async () => {
  const shape = [3, 5, 4, 3];
  const dims = [3, 5, 12];
  const x = randArray(prod(shape), 50, -2, 2);
  const rm = randArray(5, 51);
  const rv = randArray(5, 52, 0.5, 2);
  const w = randArray(5, 53, 0.5, 1.5);
  const b = randArray(5, 54);
  const stats = { mean: rm, variance: rv };
  const [m, v] = [T.tensor(rm), T.tensor(rv)];
  const op = (xs: T.Tensor, ws: T.Tensor, bs: T.Tensor) =>
    T.batchNorm(xs, ws, bs, m, v, { training: false, eps: 1e-3 });
  const ref = (xs: number[], ws: number[], bs: number[]) =>
    normRef(xs, dims, { batch: true }, ws, bs, 1e-3, stats);
  const out = await runOp(op, [input(x, shape), input(w, [5]), input(b, [5])]);
  assertClose(out.data, ref(x, w, b), { atol: 2e-5, what: "eval forward" });
  await checkGrad(op, ref, [input(x, shape), input(w, [5]), input(b, [5])]);
  // Eval leaves the running statistics alone.
  assertClose(await m.toArray(), rm, { what: "running mean after eval" });
  assertClose(await v.toArray(), rv, { what: "running var after eval" });
  m.dispose();
  v.dispose();
});

// ---- the vec4 kernels -------------------------------------------------------------------------

Deno.test("aligned shapes take the vec4 kernels: forward and backward", async () => {
  // The odd shapes above take the one-element kernels; these take the four-element ones:
  // S % 4 == 0, or S == 1 with consecutive channels (and statistics groups for batchNorm).
  await checkNorm([3, 8], [3, 8, 1], { groups: 1 }, ln, 60);
  const gn = (groups: number) => (x: T.Tensor, w: T.Tensor | null, b: T.Tensor | null) =>
    T.groupNorm(x, groups, w, b);
  await checkNorm([3, 8], [3, 8, 1], { groups: 2 }, gn(2), 61);
  await checkNorm([2, 6, 4, 2], [2, 6, 8], { groups: 3 }, gn(3), 62);
  await checkNorm([7, 4], [7, 4, 1], { batch: true }, bnTrain, 63);
  const rm = randArray(8, 64);
  const rv = randArray(8, 65, 0.5, 2);
  const [m, v] = [T.tensor(rm), T.tensor(rv)];
  const bnEval = (xs: T.Tensor, ws: T.Tensor, bs: T.Tensor) =>
    T.batchNorm(xs, ws, bs, m, v, { training: false });
  const x = randArray(40, 66);
  const w = randArray(8, 67);
  const b = randArray(8, 68);
  const ref = (xs: number[], ws: number[], bs: number[]) =>
    normRef(xs, [5, 8, 1], { batch: true }, ws, bs, 1e-5, { mean: rm, variance: rv });
  const inputs = [input(x, [5, 8]), input(w, [8]), input(b, [8])];
  assertClose((await runOp(bnEval, inputs)).data, ref(x, w, b), { atol: 2e-5, what: "eval" });
  await checkGrad(bnEval, ref, inputs);
  m.dispose();
  v.dispose();
});

// ---- bad input -------------------------------------------------------------------------------

Deno.test("norms reject bad input with errors naming the op and shapes", () => {
  T.tidy(() => {
    const x = T.zeros([2, 6, 3]);
    assert.throws(
      () => T.layerNorm(x, T.zeros([4]), null),
      /peco: layerNorm: weight \[4\] does not match 3 channels of x \[2,6,3\]/,
    );
    assert.throws(() => T.layerNorm(x, null, T.zeros([3, 1])), /layerNorm: bias \[3,1\]/);
    assert.throws(
      () => T.groupNorm(x, 4, null, null),
      /peco: groupNorm: 6 channels of x \[2,6,3\] do not split into 4 groups/,
    );
    assert.throws(() => T.groupNorm(x, 3, T.zeros([3]), null), /groupNorm: weight \[3\]/);
    assert.throws(() => T.groupNorm(T.zeros([6]), 3, null, null), /groupNorm: x \[6\] must be/);
    assert.throws(
      () => T.batchNorm(x, null, null, T.zeros([6]), T.zeros([5]), { training: true }),
      /peco: batchNorm: runningVar \[5\] does not match 6 channels of x \[2,6,3\]/,
    );
    assert.throws(
      () => T.batchNorm(x, null, null, null, null, { training: false }),
      /batchNorm: eval mode needs runningMean and runningVar/,
    );
    assert.throws(
      () => T.batchNorm(T.zeros([1, 6]), null, null, null, null, { training: true }),
      /batchNorm: training needs more than 1 value per channel/,
    );
    assert.throws(
      () => T.layerNorm(T.zeros([2, 3], "i32"), null, null),
      /peco: layerNorm: x must be f32/,
    );
  });
});
