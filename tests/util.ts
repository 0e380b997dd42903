// Test helpers: float64 references, finite differences, and GPU set-up for tests.

import { gpu, initGpu } from "../lib/gpu/device.ts";
import { backward, type Tensor, tensor, tidy } from "../lib/tensor/mod.ts";
import { mul, sum } from "../lib/tensor/mod.ts";

await initGpu();

/** A seeded generator for test data (mulberry32). */
export function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** n uniform values in [lo, hi). */
export function randArray(n: number, seed: number, lo = -1, hi = 1): number[] {
  const r = rng(seed);
  return Array.from({ length: n }, () => lo + (hi - lo) * r());
}

export function prod(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Asserts |actual − expected| ≤ atol + rtol·|expected| elementwise, naming the worst index. */
export function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  { atol = 1e-5, rtol = 1e-4, what = "values" } = {},
): void {
  if (actual.length !== expected.length) {
    throw new Error(`${what}: length ${actual.length} != expected ${expected.length}`);
  }
  let worst = -1;
  let worstExcess = 0;
  for (let i = 0; i < actual.length; i++) {
    const a = actual[i];
    const e = expected[i];
    const excess = Math.abs(a - e) - (atol + rtol * Math.abs(e));
    if (!(excess <= 0) && (worst < 0 || !(excess <= worstExcess))) {
      worst = i;
      worstExcess = excess;
      if (Number.isNaN(excess)) break;
    }
  }
  if (worst >= 0) {
    throw new Error(
      `${what}: mismatch at ${worst}: got ${actual[worst]}, expected ${expected[worst]} ` +
        `(atol ${atol}, rtol ${rtol})`,
    );
  }
}

/**
 * Checks the GPU backward rule of `op` against central finite differences of its float64
 * reference `ref` (which the forward test already matched): the loss is Σ w·op(inputs) with fixed
 * random weights w, so every output element contributes.
 */
export async function checkGrad(
  op: (...inputs: Tensor[]) => Tensor,
  ref: (...inputs: number[][]) => number[],
  inputs: { data: number[]; shape: number[] }[],
  { eps = 1e-4, atol = 2e-4, rtol = 2e-3, which }: {
    eps?: number;
    atol?: number;
    rtol?: number;
    which?: number[];
  } = {},
): Promise<void> {
  const outLen = ref(...inputs.map((i) => i.data)).length;
  const w = randArray(outLen, 999);
  const check = which ?? inputs.map((_, i) => i);
  const grads = await (async () => {
    const ts = inputs.map((i) => tensor(i.data, i.shape));
    check.forEach((k) => (ts[k].requiresGrad = true));
    tidy(() => {
      const out = op(...ts);
      const loss = sum(mul(out, tensor(w, out.shape)));
      backward(loss);
    });
    const result = [];
    for (const k of check) result.push(await ts[k].grad!.toArray());
    for (const t of ts) {
      t.grad?.dispose();
      t.dispose();
    }
    return result;
  })();
  const lossRef = (xs: number[][]) => ref(...xs).reduce((acc, v, i) => acc + v * w[i], 0);
  check.forEach((k, j) => {
    const numeric = inputs[k].data.map((_, idx) => {
      const plus = inputs.map((i) => [...i.data]);
      const minus = inputs.map((i) => [...i.data]);
      plus[k][idx] += eps;
      minus[k][idx] -= eps;
      return (lossRef(plus) - lossRef(minus)) / (2 * eps);
    });
    assertClose(grads[j], numeric, { atol, rtol, what: `gradient of input ${k}` });
  });
}

/** Runs op on uploaded inputs and returns its output values and shape. */
export async function runOp(
  op: (...inputs: Tensor[]) => Tensor,
  inputs: { data: number[]; shape: number[] }[],
): Promise<{ data: number[]; shape: readonly number[] }> {
  const ts = inputs.map((i) => tensor(i.data, i.shape));
  const out = op(...ts);
  const data = await out.toArray();
  const shape = out.shape;
  out.dispose();
  ts.forEach((t) => t.dispose());
  return { data, shape };
}

/** Throws `message` unless `cond` holds. */
export function assert(cond: boolean, message: string): void {
  if (!cond) throw new Error(message);
}

function matchError(error: unknown, patterns: (string | RegExp)[]): void {
  const message = error instanceof Error ? error.message : String(error);
  const fits = (p: string | RegExp) =>
    typeof p === "string" ? message.includes(p) : p.test(message);
  if (!patterns.every(fits)) {
    throw new Error(`error "${message}" does not match ${patterns.map(String).join(" and ")}`);
  }
}

/** Asserts that `fn` throws an error whose message contains (string) or matches (RegExp) each pattern. */
export function assertThrows(fn: () => unknown, ...patterns: (string | RegExp)[]): void {
  try {
    fn();
  } catch (error) {
    return matchError(error, patterns);
  }
  throw new Error(`expected an error matching ${patterns.map(String).join(" and ")}, got none`);
}

/** assertThrows for a promise-returning `fn`. */
export async function assertRejects(
  fn: () => Promise<unknown>,
  ...patterns: (string | RegExp)[]
): Promise<void> {
  try {
    await fn();
  } catch (error) {
    return matchError(error, patterns);
  }
  throw new Error(`expected an error matching ${patterns.map(String).join(" and ")}, got none`);
}

/**
 * The names of the kernels `fn` dispatches (whose names include `part`), in order: tests assert
 * which variant ran, so that a switch that is ignored fails them.
 */
export async function kernelsRan(fn: () => unknown, part = ""): Promise<string[]> {
  const recorder = gpu().recorder;
  const dispatch = recorder.dispatch.bind(recorder);
  const ran: string[] = [];
  recorder.dispatch = (kernel, options) => {
    if (kernel.name.includes(part)) ran.push(kernel.name);
    dispatch(kernel, options);
  };
  try {
    await fn();
  } finally {
    recorder.dispatch = dispatch;
  }
  return ran;
}
