import assert from "node:assert/strict";
import { assertClose } from "./util.ts";
import * as init from "../lib/tensor/init.ts";
import { Rng } from "../lib/tensor/init.ts";
import type { Tensor } from "../lib/tensor/mod.ts";

/** Reads a tensor's values and releases it. */
async function values(t: Tensor): Promise<number[]> {
  const v = await t.toArray();
  t.dispose();
  return v;
}

function stats(xs: number[]): { mean: number; std: number; min: number; max: number } {
  const mean = xs.reduce((a, b) => a + b, 0) / xs.length;
  const variance = xs.reduce((a, b) => a + (b - mean) ** 2, 0) / xs.length;
  return { mean, std: Math.sqrt(variance), min: Math.min(...xs), max: Math.max(...xs) };
}

/** Asserts sample mean and std of n values within statistical tolerance of the expected ones. */
function assertStats(xs: number[], mean: number, std: number, what: string): void {
  const s = stats(xs);
  const meanTol = 5 * std / Math.sqrt(xs.length);
  assert.ok(
    Math.abs(s.mean - mean) <= meanTol,
    `${what}: mean ${s.mean}, expected ${mean} ± ${meanTol}`,
  );
  assert.ok(Math.abs(s.std / std - 1) <= 0.04, `${what}: std ${s.std}, expected ${std}`);
}

// float64 reference for the normal distribution by Simpson integration of the density (independent
// of the erfc approximation the library uses).
const pdf = (x: number) => Math.exp(-x * x / 2) / Math.sqrt(2 * Math.PI);
function integrate(f: (x: number) => number, a: number, b: number, n = 2000): number {
  const h = (b - a) / n;
  let s = f(a) + f(b);
  for (let i = 1; i < n; i++) s += (i % 2 ? 4 : 2) * f(a + i * h);
  return s * h / 3;
}
/** Mean and std of N(0, 1) truncated to [α, β]. */
function truncatedMoments(alpha: number, beta: number): { mean: number; std: number } {
  const z = integrate(pdf, alpha, beta);
  const mean = integrate((x) => x * pdf(x), alpha, beta) / z;
  const second = integrate((x) => x * x * pdf(x), alpha, beta) / z;
  return { mean, std: Math.sqrt(second - mean * mean) };
}

// ---- PRNG -----------------------------------------------------------------------------------

Deno.test("Rng: same seed same stream, different seeds (both halves) different", () => {
  const draw = (r: Rng) => Array.from({ length: 8 }, () => r.next());
  assert.deepEqual(draw(new Rng(42)), draw(new Rng(42)));
  assert.notDeepEqual(draw(new Rng(42)), draw(new Rng(43)));
  assert.notDeepEqual(draw(new Rng(1)), draw(new Rng(1 + 2 ** 32)));
  for (const v of draw(new Rng(7))) assert.ok(Number.isInteger(v) && v >= 0 && v < 2 ** 32);
  assert.throws(() => new Rng(0.5), /peco: Rng: seed 0.5 is not an integer/);
});

Deno.test("Rng.fork: deterministic per label, independent of draws, distinct across labels", () => {
  const a = new Rng(5);
  const before = a.fork("encoder").next();
  for (let i = 0; i < 10; i++) a.next();
  assert.equal(a.fork("encoder").next(), before, "draws on the parent do not change a fork");
  assert.equal(
    new Rng(5).fork("encoder").fork("blocks.0").float(),
    a.fork("encoder").fork("blocks.0").float(),
  );
  const firsts = new Set(["a", "b", "blocks.0", "blocks.1", ""].map((l) => a.fork(l).next()));
  assert.equal(firsts.size, 5);
  assert.notEqual(new Rng(6).fork("encoder").next(), before);
});

Deno.test("Rng: uniform bits, floats in [0, 1), normal N(0, 1) on 10k samples", () => {
  const r = new Rng(123);
  const n = 10000;
  const bitCounts = new Array(32).fill(0);
  for (let i = 0; i < n; i++) {
    const v = r.next();
    for (let b = 0; b < 32; b++) bitCounts[b] += (v >>> b) & 1;
  }
  for (const c of bitCounts) assert.ok(Math.abs(c / n - 0.5) < 0.025, `bit frequency ${c / n}`);
  const floats = Array.from({ length: n }, () => r.float());
  assert.ok(floats.every((x) => x >= 0 && x < 1));
  assertStats(floats, 0.5, Math.sqrt(1 / 12), "float");
  const u = Array.from({ length: n }, () => r.uniform(-3, 5));
  assert.ok(u.every((x) => x >= -3 && x < 5));
  assertStats(u, 1, 8 / Math.sqrt(12), "uniform");
  const g = Array.from({ length: n }, () => r.normal());
  assertStats(g, 0, 1, "normal");
  // Tails: about 4.55% beyond 2σ.
  const beyond = g.filter((x) => Math.abs(x) > 2).length / n;
  assert.ok(Math.abs(beyond - 0.0455) < 0.01, `P(|z| > 2) = ${beyond}`);
  const ints = Array.from({ length: 1000 }, () => r.int(7));
  assert.deepEqual([...new Set(ints)].sort(), [0, 1, 2, 3, 4, 5, 6]);
});

Deno.test("normalCdf and normalQuantile match float64 integration and invert each other", () => {
  for (const x of [-6, -3.3, -1, -0.2, 0, 0.7, 2.5, 5]) {
    const ref = x < 0 ? integrate(pdf, -40, x, 20000) : 1 - integrate(pdf, x, 40, 20000);
    assert.ok(
      Math.abs(init.normalCdf(x) - ref) <= 2e-7 * Math.min(ref, 1 - ref) + 1e-15,
      `Φ(${x})`,
    );
  }
  for (const p of [1e-20, 1e-6, 0.01, 0.3, 0.5, 0.8, 0.999]) {
    const x = init.normalQuantile(p);
    assert.ok(Math.abs(init.normalCdf(x) / p - 1) < 1e-6, `Φ(Φ⁻¹(${p}))`);
  }
});

// ---- initialisers ---------------------------------------------------------------------------

const SHAPE = [101, 99]; // 9999 values: statistics within tolerance, odd sizes

Deno.test("same seed gives the same tensors; another seed different ones", async () => {
  const makers: [string, (rng: Rng) => Tensor][] = [
    ["normal", (r) => init.normal([7, 3], 0.1, r)],
    ["uniform", (r) => init.uniform([5], -1, 2, r)],
    ["truncNormal", (r) => init.truncNormal([3, 1, 5], 0.02, r)],
    ["kaimingUniform", (r) => init.kaimingUniform([5, 3, 3, 1], r)],
    ["kaimingNormal", (r) => init.kaimingNormal([5, 3], r, { mode: "fan_out" })],
    ["xavierUniform", (r) => init.xavierUniform([3, 7], r)],
    ["xavierNormal", (r) => init.xavierNormal([3, 7], r, 2)],
  ];
  for (const [name, make] of makers) {
    const a = await values(make(new Rng(9).fork(name)));
    const b = await values(make(new Rng(9).fork(name)));
    const c = await values(make(new Rng(10).fork(name)));
    assert.deepEqual(a, b, `${name}: same seed`);
    assert.notDeepEqual(a, c, `${name}: other seed`);
    assert.ok(a.every(Number.isFinite), name);
  }
});

Deno.test("normal and uniform: f32 tensors of the shape with the requested statistics", async () => {
  const t = init.normal(SHAPE, 0.5, new Rng(1), 0.3);
  assert.equal(t.dtype, "f32");
  assert.deepEqual(t.shape, SHAPE);
  assertStats(await values(t), 0.3, 0.5, "normal");
  const u = await values(init.uniform(SHAPE, -0.2, 0.6, new Rng(2)));
  const s = stats(u);
  assert.ok(s.min >= Math.fround(-0.2) && s.max <= Math.fround(0.6), `range [${s.min}, ${s.max}]`);
  assert.ok(s.min < -0.19 && s.max > 0.59, "fills the range");
  assertStats(u, 0.2, 0.8 / Math.sqrt(12), "uniform");
});

Deno.test("truncNormal: PyTorch semantics (absolute bounds), bounds respected, moments exact", async () => {
  const cases: [string, number, number, number, number][] = [
    // [what, mean, std, a, b]
    ["default ±2std", 0, 0.02, -0.04, 0.04],
    ["asymmetric", 0.5, 1, -0.5, 2.5],
    ["one-sided above the mean (mirrored)", 0, 1, 1, 3],
    ["far tail", 0, 1, 5, 6],
    ["below the mean", 0, 2, -7, -3],
  ];
  for (const [what, mean, std, a, b] of cases) {
    const t = what === "default ±2std"
      ? init.truncNormal(SHAPE, std, new Rng(3)) // the default bounds are ±2 std
      : init.truncNormal(SHAPE, std, new Rng(3), a, b, mean);
    const xs = await values(t);
    const s = stats(xs);
    assert.ok(s.min >= Math.fround(a) && s.max <= Math.fround(b), `${what}: [${s.min}, ${s.max}]`);
    const ref = truncatedMoments((a - mean) / std, (b - mean) / std);
    assertStats(xs, mean + std * ref.mean, std * ref.std, what);
    // Shape of the distribution: the fraction below the midpoint of [a, b].
    const mid = (a + b) / 2;
    const pMid = integrate(pdf, (a - mean) / std, (mid - mean) / std) /
      integrate(pdf, (a - mean) / std, (b - mean) / std);
    const frac = xs.filter((x) => x < mid).length / xs.length;
    assert.ok(Math.abs(frac - pMid) < 0.02, `${what}: P(x < mid) ${frac}, expected ${pMid}`);
  }
  assert.throws(() => init.truncNormal([2], 1, new Rng(1), 1, 1), /peco: truncNormal: needs a < b/);
  assert.throws(
    () => init.truncNormal([2], 0, new Rng(1)),
    /peco: truncNormal: needs a < b and std > 0/,
  );
});

Deno.test("fans and gains follow PyTorch", () => {
  assert.deepEqual(init.fans([7, 5]), { fanIn: 5, fanOut: 7 });
  assert.deepEqual(init.fans([8, 3, 5, 1]), { fanIn: 15, fanOut: 40 });
  assert.throws(() => init.fans([5]), /peco: fans of shape \[5\]: need at least 2 dimensions/);
  assertClose(
    [
      init.gain("linear"),
      init.gain("conv"),
      init.gain("tanh"),
      init.gain("relu"),
      init.gain("selu"),
    ],
    [1, 1, 5 / 3, Math.SQRT2, 0.75],
    { atol: 1e-12 },
  );
  assertClose([init.gain("leaky_relu"), init.gain("leaky_relu", Math.sqrt(5))], [
    Math.sqrt(2 / 1.0001),
    Math.sqrt(1 / 3),
  ], { atol: 1e-12 });
});

Deno.test("kaiming and xavier: bounds and standard deviations from fans and gain", async () => {
  const conv = [65, 13, 3, 3]; // fan_in 117, fan_out 585, 7605 values
  const fanIn = 13 * 9, fanOut = 65 * 9;
  // kaiming_uniform_ default: leaky_relu with a = 0 → gain √2, bound √(6 / fan_in).
  let bound = Math.sqrt(6 / fanIn);
  let xs = await values(init.kaimingUniform(conv, new Rng(4)));
  let s = stats(xs);
  assert.ok(s.min >= -bound && s.max <= bound && s.max > 0.98 * bound, `[${s.min}, ${s.max}]`);
  assertStats(xs, 0, bound / Math.sqrt(3), "kaimingUniform");
  // nn.Linear's init: a = √5 → bound 1 / √fan_in.
  bound = 1 / Math.sqrt(fanIn);
  s = stats(await values(init.kaimingUniform(conv, new Rng(5), { a: Math.sqrt(5) })));
  assert.ok(s.min >= -bound && s.max <= bound && s.max > 0.98 * bound, `linear init ${s.max}`);
  // kaiming_normal_, fan_out, relu.
  xs = await values(
    init.kaimingNormal(conv, new Rng(6), { mode: "fan_out", nonlinearity: "relu" }),
  );
  assertStats(xs, 0, Math.SQRT2 / Math.sqrt(fanOut), "kaimingNormal");
  // xavier: bound gain·√(6 / (fan_in + fan_out)).
  const lin = [97, 103];
  bound = 0.5 * Math.sqrt(6 / 200);
  xs = await values(init.xavierUniform(lin, new Rng(7), 0.5));
  s = stats(xs);
  assert.ok(
    s.min >= -bound && s.max <= bound && s.max > 0.98 * bound,
    `xavier [${s.min}, ${s.max}]`,
  );
  assertStats(xs, 0, bound / Math.sqrt(3), "xavierUniform");
  xs = await values(init.xavierNormal(lin, new Rng(8)));
  assertStats(xs, 0, Math.sqrt(2 / 200), "xavierNormal");
  assert.throws(() => init.kaimingUniform([4], new Rng(1)), /need at least 2 dimensions/);
});

Deno.test("zeros and ones are available from init", async () => {
  assert.deepEqual(await values(init.zeros([2, 1, 3])), [0, 0, 0, 0, 0, 0]);
  assert.deepEqual(await values(init.ones([3])), [1, 1, 1]);
});
