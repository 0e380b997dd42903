import { assertClose, assertThrows, checkGrad, prod, randArray } from "./util.ts";
import * as T from "../lib/tensor/mod.ts";
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";

/** Asserts that fn throws an Error whose message contains every one of `texts`. */

// ---- the counter-based hash of kernels/random.wgsl, in exact integer arithmetic ----------------

function pcg(v: number): number {
  const state = (Math.imul(v, 747796405) + 2891336453) >>> 0;
  const word = Math.imul(((state >>> ((state >>> 28) + 4)) ^ state) >>> 0, 277803737) >>> 0;
  return ((word >>> 22) ^ word) >>> 0;
}

function randomU32(seed: number, i: number): number {
  return pcg((pcg(seed) ^ pcg((i ^ 0x9e3779b9) >>> 0)) >>> 0);
}

const unit = (h: number) => (h >>> 8) / 16777216;

/** float64 references of the generators and of the drop mask (1 keep, 0 drop). */
const uniformRef = (n: number, seed: number, lo: number, hi: number) =>
  Array.from({ length: n }, (_, i) => lo + (hi - lo) * unit(randomU32(seed, i)));

function normalRef(n: number, seed: number, mean: number, std: number): number[] {
  return Array.from({ length: n }, (_, i) => {
    const pair = i >>> 1;
    const u1 = 1 - unit(randomU32(seed, 2 * pair));
    const u2 = unit(randomU32(seed, 2 * pair + 1));
    const angle = 2 * Math.PI * u2;
    return mean + std * Math.sqrt(-2 * Math.log(u1)) * (i & 1 ? Math.sin(angle) : Math.cos(angle));
  });
}

function keepMask(n: number, group: number, p: number, seed: number): number[] {
  const threshold = Math.min(0xffffffff, Math.round(p * 2 ** 32));
  return Array.from(
    { length: n },
    (_, i) => randomU32(seed, Math.floor(i / group)) >= threshold ? 1 : 0,
  );
}

const dropRef = (x: number[], mask: number[], p: number) =>
  x.map((v, i) => (mask[i] ? v / (1 - p) : 0));

function meanStd(values: ArrayLike<number>): [number, number] {
  let s = 0;
  for (let i = 0; i < values.length; i++) s += values[i];
  const mean = s / values.length;
  let v = 0;
  for (let i = 0; i < values.length; i++) v += (values[i] - mean) ** 2;
  return [mean, Math.sqrt(v / values.length)];
}

async function values(t: T.Tensor): Promise<number[]> {
  const out = await t.toArray();
  t.dispose();
  return out;
}

// ---- generators ---------------------------------------------------------------------------------

Deno.test("uniform matches the hash reference, fills [lo, hi) evenly, and is seeded", async () => {
  const shape = [3, 1, 7];
  assertClose(await values(T.uniform(shape, 17, -2, 3)), uniformRef(prod(shape), 17, -2, 3), {
    atol: 1e-6,
    what: "uniform",
  });
  const n = 10_001;
  const u = await values(T.uniform([n], 5, -1, 3));
  assert(u.every((v) => v >= -1 && v < 3), "uniform values out of [lo, hi)");
  const [mean, std] = meanStd(u);
  assert(Math.abs(mean - 1) < 0.05, `uniform mean ${mean}, expected 1`);
  assert(
    Math.abs(std - 4 / Math.sqrt(12)) < 0.05,
    `uniform std ${std}, expected ${4 / Math.sqrt(12)}`,
  );
  // Each tenth of the range gets about a tenth of the values.
  const bins = new Array(10).fill(0);
  for (const v of u) bins[Math.floor((v + 1) / 0.4)]++;
  assert(bins.every((c) => Math.abs(c - n / 10) < 0.15 * (n / 10)), `uneven bins ${bins}`);
  assertEquals(await values(T.uniform([n], 5, -1, 3)), u, "same seed, same values");
  const other = await values(T.uniform([n], 6, -1, 3));
  assert(other.filter((v, i) => v === u[i]).length < 10, "seeds 5 and 6 gave the same values");
});

Deno.test("normal matches the Box-Muller reference and has the asked moments", async () => {
  const shape = [5, 3];
  assertClose(await values(T.normal(shape, 3, 0.5, 2)), normalRef(prod(shape), 3, 0.5, 2), {
    atol: 2e-4,
    rtol: 1e-4,
    what: "normal",
  });
  const n = 10_000;
  const g = await values(T.normal([n], 11, -1, 0.5));
  const [mean, std] = meanStd(g);
  assert(Math.abs(mean + 1) < 0.02, `normal mean ${mean}, expected -1`);
  assert(Math.abs(std - 0.5) < 0.02, `normal std ${std}, expected 0.5`);
  // The cosine and sine halves of a pair are uncorrelated.
  let cross = 0;
  for (let i = 0; i < n; i += 2) cross += (g[i] + 1) * (g[i + 1] + 1);
  const corr = cross / (n / 2) / (std * std);
  assert(Math.abs(corr) < 0.05, `pair correlation ${corr}`);
  const fraction = g.filter((v) => Math.abs(v + 1) < 0.5).length / n;
  assert(Math.abs(fraction - 0.6827) < 0.02, `${fraction} within one std, expected 0.6827`);
});

// ---- dropout and drop-path ----------------------------------------------------------------------

Deno.test("dropout: forward matches the reference mask, statistics, seeds, p = 0 and p = 1", async () => {
  const shape = [4, 1, 9];
  const x = randArray(prod(shape), 1, 0.5, 2);
  const p = 0.3;
  const xt = T.tensor(x, shape);
  const out = await values(T.dropout(xt, p, 42));
  assertClose(out, dropRef(x, keepMask(x.length, 1, p, 42), p), { atol: 1e-6, what: "dropout" });

  const n = 10_000;
  const ones = T.ones([n]);
  for (const q of [0.1, 0.5, 0.9]) {
    const y = await values(T.dropout(ones, q, 7));
    const dropped = y.filter((v) => v === 0).length / n;
    assert(Math.abs(dropped - q) < 0.02, `p=${q}: dropped ${dropped}`);
    assert(y.every((v) => v === 0 || Math.abs(v - 1 / (1 - q)) < 1e-5), "survivors not scaled");
  }
  const a = await values(T.dropout(ones, 0.5, 123));
  assertEquals(await values(T.dropout(ones, 0.5, 123)), a, "same seed, same mask");
  const b = await values(T.dropout(ones, 0.5, 124));
  const differ = a.filter((v, i) => v !== b[i]).length / n;
  assert(differ > 0.4 && differ < 0.6, `seeds 123 and 124 masks differ in ${differ} of places`);

  assert(T.dropout(xt, 0, 1) === xt, "p = 0 returns x itself");
  assert((await values(T.dropout(xt, 1, 1))).every((v) => v === 0), "p = 1 zeroes everything");
  xt.dispose();
  ones.dispose();
});

Deno.test("dropout backward applies the same mask to the gradient", async () => {
  const shape = [3, 7];
  const x = randArray(prod(shape), 2);
  const mask = keepMask(x.length, 1, 0.4, 9);
  await checkGrad((t) => T.dropout(t, 0.4, 9), (d) => dropRef(d, mask, 0.4), [{ data: x, shape }]);
});

Deno.test("dropPath drops whole samples, scales survivors, and backpropagates the same mask", async () => {
  const shape = [13, 3, 1, 5];
  const group = 15;
  const x = randArray(prod(shape), 3);
  const p = 0.5;
  const mask = keepMask(x.length, group, p, 77);
  const out = await values(T.dropPath(T.tensor(x, shape), p, 77));
  assertClose(out, dropRef(x, mask, p), { atol: 1e-6, what: "dropPath" });
  // Samples are kept or dropped as a whole, and both happen.
  const kept = Array.from({ length: 13 }, (_, s) => mask[s * group]);
  for (let s = 0; s < 13; s++) {
    const sample = out.slice(s * group, (s + 1) * group);
    assert(sample.every((v, j) => (kept[s] ? v === Math.fround(x[s * group + j] * 2) : v === 0)));
  }
  assert(kept.includes(0) && kept.includes(1), `mask ${kept} drops all or none`);
  await checkGrad((t) => T.dropPath(t, p, 77), (d) => dropRef(d, mask, p), [{ data: x, shape }]);

  // About p of 10k samples are dropped.
  const n = 10_000;
  const y = await values(T.dropPath(T.ones([n, 1]), 0.25, 5));
  const dropped = y.filter((v) => v === 0).length / n;
  assert(Math.abs(dropped - 0.25) < 0.02, `dropped ${dropped} of samples, expected 0.25`);
});

Deno.test("random ops reject bad input with clear errors", () => {
  const i = T.zeros([4], "i32");
  const x = T.ones([4]);
  assertThrows(() => T.dropout(i, 0.5, 1), "dropout:", "f32", "<i32>[4]");
  assertThrows(() => T.dropout(x, 1.5, 1), "dropout", "p must be in [0, 1]");
  assertThrows(() => T.dropout(x, Number.NaN, 1), "dropout", "p must be in [0, 1]");
  assertThrows(() => T.dropPath(x, 0.5, -1), "dropPath", "seed");
  assertThrows(() => T.dropPath(T.scalar(1), 0.5, 1), "dropPath", "batch dim");
  assertThrows(() => T.uniform([3], 2 ** 32), "uniform", "seed");
  assertThrows(() => T.normal([3], 0.5), "normal", "seed");
  i.dispose();
  x.dispose();
});
