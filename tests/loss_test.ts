import { assertClose, checkGrad, kernelsRan, prod, randArray, runOp } from "./util.ts";
import { forceVariant } from "../lib/gpu/autotune.ts";
import * as T from "../lib/tensor/mod.ts";
import assert from "node:assert/strict";

// ---- cross-entropy ---------------------------------------------------------------------------

interface CeCase {
  mask?: number[];
  labelSmoothing?: number;
}

/** float64 reference: mean over counted rows of −Σ_k q_k log softmax(z)_k; 0 when none counts. */
function ceRef(z: number[], targets: number[], k: number, { mask, labelSmoothing = 0 }: CeCase) {
  let total = 0;
  let count = 0;
  targets.forEach((t, r) => {
    const w = t < 0 || t >= k ? 0 : mask ? mask[r] : 1;
    if (w === 0) return;
    const row = z.slice(r * k, (r + 1) * k);
    const top = Math.max(...row);
    const lse = top + Math.log(row.reduce((a, v) => a + Math.exp(v - top), 0));
    let loss = 0;
    row.forEach((v, j) => {
      const q = (j === t ? 1 - labelSmoothing : 0) + labelSmoothing / k;
      loss -= q * (v - lse);
    });
    total += w * loss;
    count += w;
  });
  return [count > 0 ? total / count : 0];
}

const N = 7;
const K = 11;
const targets = [3, 0, 10, 7, 3, 5, 1];

function ceOp(t: number[], options: CeCase) {
  return (z: T.Tensor) =>
    T.crossEntropy(z, T.tensor(t, [t.length], "i32"), {
      labelSmoothing: options.labelSmoothing,
      mask: options.mask ? T.tensor(options.mask, [options.mask.length]) : undefined,
    });
}

const ceCases: [string, CeCase][] = [
  ["plain", {}],
  ["mask", { mask: [1, 0, 1, 1, 0, 0, 1] }],
  ["label smoothing 0.1", { labelSmoothing: 0.1 }],
  ["mask and label smoothing 0.25", { mask: [0, 1, 1, 0, 1, 1, 1], labelSmoothing: 0.25 }],
];

for (const [name, options] of ceCases) {
  Deno.test(`crossEntropy N=7 K=11 ${name}: forward and backward`, async () => {
    const z = randArray(N * K, 7, -3, 3);
    const out = await runOp(ceOp(targets, options), [{ data: z, shape: [N, K] }]);
    assert.deepEqual(out.shape, []);
    assertClose(out.data, ceRef(z, targets, K, options), { atol: 1e-5, what: name });
    await checkGrad(ceOp(targets, options), (zs) => ceRef(zs, targets, K, options), [
      { data: z, shape: [N, K] },
    ]);
  });
}

Deno.test("crossEntropy K=37 (rows longer than one gradient run of 16)", async () => {
  const k = 37;
  const t = [36, 0, 17];
  const options = { mask: [1, 0.5, 1], labelSmoothing: 0.05 };
  const z = randArray(3 * k, 16, -3, 3);
  const out = await runOp(ceOp(t, options), [{ data: z, shape: [3, k] }]);
  assertClose(out.data, ceRef(z, t, k, options), { atol: 1e-5 });
  await checkGrad(ceOp(t, options), (zs) => ceRef(zs, t, k, options), [{ data: z, shape: [3, k] }]);
});

Deno.test("crossEntropy with every row masked out is 0 with a zero gradient, not NaN", async () => {
  const z = randArray(N * K, 8);
  const options = { mask: new Array(N).fill(0), labelSmoothing: 0.1 };
  const op = ceOp(targets, options);
  const zt = T.tensor(z, [N, K]);
  zt.requiresGrad = true;
  const loss = op(zt);
  T.backward(loss);
  assert.equal(await loss.item(), 0);
  assertClose(await zt.grad!.toArray(), new Array(N * K).fill(0), { atol: 0, what: "gradient" });
  zt.grad!.dispose();
  [zt, loss].forEach((t) => t.dispose());
});

Deno.test("crossEntropy: a target outside [0, K) drops its row (no crash, no NaN)", async () => {
  const bad = [3, -100, 10, 11, 3, 5, 2147483647];
  const z = randArray(N * K, 9, -3, 3);
  const options = { labelSmoothing: 0.1 };
  const out = await runOp(ceOp(bad, options), [{ data: z, shape: [N, K] }]);
  const kept = ceRef(z, bad, K, options);
  // The same as the loss of the rows with valid targets alone.
  const valid = [0, 2, 4, 5];
  const alone = ceRef(
    valid.flatMap((r) => z.slice(r * K, (r + 1) * K)),
    valid.map((r) => bad[r]),
    K,
    options,
  );
  assertClose(kept, alone, { what: "reference" });
  assertClose(out.data, kept, { atol: 1e-5, what: "loss" });
  // Dropped rows get a zero gradient (checkGrad's finite differences confirm it on all rows).
  await checkGrad(ceOp(bad, options), (zs) => ceRef(zs, bad, K, options), [
    { data: z, shape: [N, K] },
  ]);
});

Deno.test("crossEntropy is stable for large logits and a single row or class", async () => {
  const z = randArray(N * K, 10, -3, 3).map((v, i) => v + (i % 3 === 0 ? 5000 : -5000));
  const out = await runOp(ceOp(targets, {}), [{ data: z.map(Math.fround), shape: [N, K] }]);
  assertClose(out.data, ceRef(z.map(Math.fround), targets, K, {}), { atol: 1e-3, rtol: 1e-5 });
  const one = await runOp(ceOp([2], {}), [{ data: [0.5, -1, 2], shape: [1, 3] }]);
  assertClose(one.data, ceRef([0.5, -1, 2], [2], 3, {}), { what: "one row" });
  const single = await runOp(ceOp([0, 0], { labelSmoothing: 0.2 }), [{
    data: [3, -2],
    shape: [2, 1],
  }]);
  assertClose(single.data, [0], { what: "one class" });
});

Deno.test("crossEntropy over many rows (workgroup reduction of the row sums)", async () => {
  const n = 1031;
  const k = 5;
  const t = Array.from({ length: n }, (_, i) => (i * 7) % k);
  const mask = Array.from({ length: n }, (_, i) => (i % 3 === 0 ? 0 : 1));
  const z = randArray(n * k, 11, -2, 2);
  const out = await runOp(ceOp(t, { mask }), [{ data: z, shape: [n, k] }]);
  assertClose(out.data, ceRef(z, t, k, { mask }), { atol: 1e-5 });
});

/** float64 reference of the accuracy: Σ w·[first argmax = t] / Σ w over valid rows; 0 if none. */
function accuracyRef(z: number[], t: number[], k: number, mask?: number[]): number {
  let hits = 0;
  let count = 0;
  t.forEach((target, r) => {
    const w = target >= 0 && target < k ? (mask ? mask[r] : 1) : 0;
    const row = z.slice(r * k, (r + 1) * k);
    const at = row.indexOf(Math.max(...row));
    hits += at === target ? w : 0;
    count += w;
  });
  return count > 0 ? hits / count : 0;
}

// Odd shapes; rows with ties (the first index wins), a masked row, an ignored target (−100).
for (const [n, k, mask] of [[7, 11, undefined], [13, 37, true], [1031, 5, true]] as const) {
  Deno.test(`crossEntropyAccuracy N=${n} K=${k}${mask ? " mask" : ""}: loss as crossEntropy, accuracy as argmax`, async () => {
    const t = Array.from({ length: n }, (_, i) => (i * 7) % k);
    t[n - 1] = -100;
    const z = randArray(n * k, 21, -2, 2);
    // Row 0: its target ties with an earlier index (not a hit); row 1: hit at a tie of later ones.
    z[t[0]] = z[t[0] + 1] = 5;
    if (t[0] > 0) z[0] = 5;
    z[k + t[1]] = 6;
    z[k + ((t[1] + 1) % k)] = 6;
    // Rows 2..: some hits forced so the accuracy is neither 0 nor 1.
    for (let r = 2; r < n; r += 3) z[r * k + t[r]] = 9;
    const m = mask ? Array.from({ length: n }, (_, i) => (i % 4 === 1 ? 0 : 1)) : undefined;
    const opts = { labelSmoothing: 0.1, mask: m };
    const ts = [T.tensor(z, [n, k]), T.tensor(t, [n], "i32"), ...(m ? [T.tensor(m, [n])] : [])];
    const { loss, accuracy } = T.crossEntropyAccuracy(ts[0], ts[1], { ...opts, mask: ts[2] });
    const [l, a] = [await loss.toArray(), await accuracy.toArray()];
    assertClose(l, ceRef(z, t, k, opts), { atol: 1e-5, what: "loss" });
    const want = accuracyRef(z, t, k, m);
    assert.ok(want > 0 && want < 1);
    assertClose(a, [want], { atol: 1e-6, what: "accuracy" });
    [loss, accuracy, ...ts].forEach((x) => x.dispose());
    // Its loss has crossEntropy's gradient.
    const op = (zz: T.Tensor) =>
      T.crossEntropyAccuracy(zz, T.tensor(t, [n], "i32"), {
        labelSmoothing: 0.1,
        mask: m ? T.tensor(m, [n]) : undefined,
      }).loss;
    if (n < 100) await checkGrad(op, (zs) => ceRef(zs, t, k, opts), [{ data: z, shape: [n, k] }]);
  });
}

Deno.test("crossEntropyAccuracy with every row masked out is 0 and 0", async () => {
  const z = T.tensor(randArray(6, 3), [2, 3]);
  const t = T.tensor([1, 2], [2], "i32");
  const mask = T.tensor([0, 0], [2]);
  const { loss, accuracy } = T.crossEntropyAccuracy(z, t, { mask });
  assert.deepEqual([...await loss.toArray(), ...await accuracy.toArray()], [0, 0]);
  [z, t, mask, loss, accuracy].forEach((x) => x.dispose());
});

// ---- mse and l1 ------------------------------------------------------------------------------

const pairCases: [string, (a: T.Tensor, b: T.Tensor) => T.Tensor, (d: number) => number][] = [
  ["mseLoss", T.mseLoss, (d) => d * d],
  ["l1Loss", T.l1Loss, Math.abs],
];

const pairRef = (f: (d: number) => number) => (a: number[], b: number[]) => [
  a.reduce((acc, v, i) => acc + f(v - b[i]), 0) / a.length,
];

for (const [name, op, f] of pairCases) {
  Deno.test(`${name} [3,5,7]: forward and backward to both inputs`, async () => {
    const shape = [3, 5, 7];
    const a = randArray(prod(shape), 12, -2, 2);
    // Keep a − b away from 0, where |·| has its kink.
    const b = randArray(prod(shape), 13, 0.05, 1).map((v, i) => a[i] + (i % 2 ? v : -v));
    const inputs = [{ data: a, shape }, { data: b, shape }];
    const out = await runOp(op, inputs);
    assert.deepEqual(out.shape, []);
    assertClose(out.data, pairRef(f)(a, b), { atol: 1e-6, what: name });
    await checkGrad(op, pairRef(f), inputs);
  });

  Deno.test(`${name} on 40001 elements and on [1]`, async () => {
    for (const shape of [[40001], [1]]) {
      const a = randArray(prod(shape), 14);
      const b = randArray(prod(shape), 15);
      const out = await runOp(op, [{ data: a, shape }, { data: b, shape }]);
      assertClose(out.data, pairRef(f)(a, b), { atol: 1e-6, rtol: 1e-5, what: `[${shape}]` });
    }
  });
}

// ---- unit-normalised feature distance (the perceptual loss's taps) ------------------------------

/** float64: Σ over positions of Σ_c (f/‖f‖ − g/‖g‖)², ‖x‖ = sqrt(Σ x² + 1e-20) + 1e-10, ÷ positions. */
function unitDistanceRef(f: number[], g: number[], [n, c, ...rest]: number[]): number[] {
  const s = prod(rest);
  const norm = (v: number[], first: number) => {
    let sq = 0;
    for (let k = 0; k < c; k++) sq += v[first + k * s] ** 2;
    return Math.sqrt(sq + 1e-20) + 1e-10;
  };
  let total = 0;
  for (let p = 0; p < n * s; p++) {
    const first = Math.floor(p / s) * c * s + (p % s);
    const [nf, ng] = [norm(f, first), norm(g, first)];
    for (let k = 0; k < c; k++) total += (f[first + k * s] / nf - g[first + k * s] / ng) ** 2;
  }
  return [total / (n * s)];
}

for (const variant of ["fused", "composite"]) {
  Deno.test(`unitDistance (${variant}): float64 value and finite-difference gradients on odd shapes`, async () => {
    forceVariant("unitDistance", variant === "composite" ? "composite" : null);
    try {
      for (const shape of [[3, 5, 7], [2, 6, 3, 5], [4, 9], [2, 3, 300]]) {
        const f = randArray(prod(shape), 31);
        const g = randArray(prod(shape), 32);
        // An all-zero position in both (as after a ReLU): it adds 0 and gets a 0 gradient, not NaN.
        const s = prod(shape.slice(2));
        for (let k = 0; k < shape[1]; k++) f[k * s] = g[k * s] = 0;
        const inputs = [{ data: f, shape }, { data: g, shape }];
        const what = `[${shape}] ${variant}`;
        const out = await runOp(T.unitDistance, inputs);
        assert.deepEqual(out.shape, [], what);
        assertClose(out.data, unitDistanceRef(f, g, shape), { rtol: 1e-5, atol: 1e-6, what });
        if (prod(shape) > 400) continue; // the finite differences of the small shapes suffice
        const ref = (a: number[], b: number[]) => unitDistanceRef(a, b, shape);
        await checkGrad(T.unitDistance, ref, inputs);
        await checkGrad(T.unitDistance, ref, inputs, { which: [0] });
        await checkGrad(T.unitDistance, ref, inputs, { which: [1] });
      }
    } finally {
      forceVariant("unitDistance", null);
    }
  });
}

Deno.test("unitDistance: one kernel forward (and a sum), one per input with a gradient backward", async () => {
  const shape = [2, 5, 3, 3];
  const [f, g] = [T.tensor(randArray(90, 33), shape), T.tensor(randArray(90, 34), shape)];
  f.requiresGrad = true;
  const ran = await kernelsRan(() => T.tidy(() => T.backward(T.unitDistance(f, g))), "unit");
  assert.deepEqual(ran, ["loss_unit_distance", "loss_unit_distance_grad"]);
  assert.ok(g.grad === null);
  [f, g, f.grad!].forEach((t) => t.dispose());
});

// ---- bad input -------------------------------------------------------------------------------

Deno.test("losses reject bad input with errors naming the op and shapes", () => {
  T.tidy(() => {
    const z = T.zeros([7, 11]);
    assert.throws(
      () => T.crossEntropy(z, T.zeros([7])),
      /peco: crossEntropy: targets must be i32 \[7\] for logits \[7,11\], got tensor<f32>\[7\]/,
    );
    assert.throws(
      () => T.crossEntropy(z, T.zeros([6], "i32")),
      /crossEntropy: targets must be i32 \[7\]/,
    );
    assert.throws(
      () => T.crossEntropy(T.zeros([7]), T.zeros([7], "i32")),
      /crossEntropy: logits must be f32 \[N, K\]/,
    );
    assert.throws(
      () => T.crossEntropy(z, T.zeros([7], "i32"), { mask: T.zeros([7], "i32") }),
      /crossEntropy: mask must be f32 \[7\]/,
    );
    assert.throws(
      () => T.crossEntropy(z, T.zeros([7], "i32"), { labelSmoothing: 1.5 }),
      /crossEntropy: labelSmoothing 1.5 is not in \[0, 1\]/,
    );
    assert.throws(
      () => T.crossEntropy(T.zeros([1, 32001]), T.zeros([1], "i32")),
      /peco: crossEntropy: logits \[1,32001\] need 1 to 32000 classes/,
    );
    assert.throws(
      () => T.mseLoss(z, T.zeros([11, 7])),
      /peco: mseLoss: shapes \[7,11\] and \[11,7\] differ/,
    );
    assert.throws(() => T.l1Loss(z, T.zeros([7, 11], "i32")), /peco: l1Loss: needs f32 inputs/);
  });
});
