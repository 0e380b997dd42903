// Parameter initialisers: a seeded host PRNG with derivable streams, and the PyTorch initialisers
// (normal, uniform, trunc_normal_, kaiming_*, xavier_*) drawing on the host and uploading f32
// tensors. Initialisation runs once per run, so host sampling keeps it simple and bit-identical on
// every adapter.

import { type Shape, Tensor } from "./tensor.ts";
import { tensor } from "./ops/creation.ts";

export { ones, zeros } from "./ops/creation.ts";

// ---- PRNG -----------------------------------------------------------------------------------

/** splitmix32 step: turns any 32-bit state into a well-mixed word (seeds xoshiro, hashes labels). */
function splitmix32(state: number): number {
  let z = (state + 0x9e3779b9) | 0;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return (z ^ (z >>> 16)) >>> 0;
}

/** Mixes a string into a 32-bit key (FNV-1a over UTF-16 code units, then splitmix32). */
function mixLabel(key: number, label: string): number {
  let h = (0x811c9dc5 ^ key) >>> 0;
  for (let i = 0; i < label.length; i++) h = Math.imul(h ^ label.charCodeAt(i), 0x01000193);
  return splitmix32(h);
}

/**
 * xoshiro128** seeded from a 32-bit key. `fork(label)` derives an independent stream from the key
 * and the label only — not from how many numbers were drawn — so adding draws to one stream never
 * changes another (e.g. `rng.fork("encoder")`, `rng.fork("blocks.3")`).
 */
export class Rng {
  /** The 32-bit key this stream was made from. */
  readonly key: number;
  private s = new Uint32Array(4);
  private spare: number | null = null;

  /** `seed`: any safe integer (both halves of a 53-bit seed matter). */
  constructor(seed: number) {
    if (!Number.isSafeInteger(seed)) throw new Error(`peco: Rng: seed ${seed} is not an integer`);
    const high = Math.floor(seed / 2 ** 32);
    this.key = splitmix32(splitmix32(seed >>> 0) ^ high);
    let x = this.key;
    for (let i = 0; i < 4; i++) this.s[i] = x = splitmix32(x);
    if (this.s.every((v) => v === 0)) this.s[0] = 1; // xoshiro's one forbidden state
  }

  /** A deterministic independent stream for `label`. */
  fork(label: string): Rng {
    return new Rng(mixLabel(this.key, label));
  }

  /** The next 32 random bits as an unsigned integer. */
  next(): number {
    const s = this.s;
    const result = Math.imul(rotl(Math.imul(s[1], 5), 7), 9) >>> 0;
    const t = s[1] << 9;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return result;
  }

  /** Uniform in [0, 1) with 53 random bits. */
  float(): number {
    return ((this.next() >>> 5) * 67108864 + (this.next() >>> 6)) / 9007199254740992;
  }

  /** Uniform in [lo, hi). */
  uniform(lo = 0, hi = 1): number {
    return lo + (hi - lo) * this.float();
  }

  /** Standard normal (Box–Muller; the second value of each pair is kept for the next call). */
  normal(): number {
    if (this.spare !== null) {
      const v = this.spare;
      this.spare = null;
      return v;
    }
    const r = Math.sqrt(-2 * Math.log(1 - this.float())); // 1 - u ∈ (0, 1]: no log(0)
    const theta = 2 * Math.PI * this.float();
    this.spare = r * Math.sin(theta);
    return r * Math.cos(theta);
  }

  /** An integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.float() * n);
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

// ---- normal distribution helpers (float64) --------------------------------------------------

/**
 * erfc with relative error < 1.2e-7 everywhere, tails included (Numerical Recipes' Chebyshev
 * fit): enough for f32 samples, and keeps far-tail probabilities meaningful.
 */
function erfc(x: number): number {
  const z = Math.abs(x);
  const t = 1 / (1 + 0.5 * z);
  const r = t * Math.exp(
    -z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +
                  t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 +
                                  t * (-0.82215223 + t * 0.17087277)))))))),
  );
  return x >= 0 ? r : 2 - r;
}

/** Standard normal CDF Φ. */
export function normalCdf(x: number): number {
  return 0.5 * erfc(-x / Math.SQRT2);
}

/** Standard normal quantile Φ⁻¹(p) (Acklam's rational approximation, relative error < 1.2e-9). */
export function normalQuantile(p: number): number {
  if (p <= 0) return -Infinity;
  if (p >= 1) return Infinity;
  const a = [
    -39.69683028665376,
    220.9460984245205,
    -275.9285104469687,
    138.357751867269,
    -30.66479806614716,
    2.506628277459239,
  ];
  const b = [
    -54.47609879822406,
    161.5858368580409,
    -155.6989798598866,
    66.80131188771972,
    -13.28068155288572,
  ];
  const c = [
    -0.007784894002430293,
    -0.3223964580411365,
    -2.400758277161838,
    -2.549732539343734,
    4.374664141464968,
    2.938163982698783,
  ];
  const d = [0.007784695709041462, 0.3224671290700398, 2.445134137142996, 3.754408661907416];
  const tail = (q: number) =>
    (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
    ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  if (p < 0.02425) return tail(Math.sqrt(-2 * Math.log(p)));
  if (p > 1 - 0.02425) return -tail(Math.sqrt(-2 * Math.log(1 - p)));
  const q = p - 0.5;
  const r = q * q;
  return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
    (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
}

// ---- fans and gains -------------------------------------------------------------------------

/** PyTorch's fans: weight [out, in, ...kernel] → in·k and out·k (k = product of kernel dims). */
export function fans(shape: Shape): { fanIn: number; fanOut: number } {
  if (shape.length < 2) {
    throw new Error(`peco: fans of shape [${shape.join(",")}]: need at least 2 dimensions`);
  }
  const receptive = shape.slice(2).reduce((a, b) => a * b, 1);
  return { fanIn: shape[1] * receptive, fanOut: shape[0] * receptive };
}

export type Nonlinearity = "linear" | "conv" | "sigmoid" | "tanh" | "relu" | "leaky_relu" | "selu";

/** PyTorch's calculate_gain (`a`: the leaky_relu negative slope). */
export function gain(nonlinearity: Nonlinearity, a = 0.01): number {
  switch (nonlinearity) {
    case "linear":
    case "conv":
    case "sigmoid":
      return 1;
    case "tanh":
      return 5 / 3;
    case "relu":
      return Math.SQRT2;
    case "leaky_relu":
      return Math.sqrt(2 / (1 + a * a));
    case "selu":
      return 3 / 4;
  }
}

// ---- initialisers ---------------------------------------------------------------------------

function sample(shape: Shape, draw: () => number): Tensor {
  const size = shape.reduce((a, b) => a * b, 1);
  const data = new Float32Array(size);
  for (let i = 0; i < size; i++) data[i] = draw();
  return tensor(data, shape);
}

/** N(mean, std²) values. */
export function normal(shape: Shape, std: number, rng: Rng, mean = 0): Tensor {
  return sample(shape, () => mean + std * rng.normal());
}

/** U[lo, hi) values. */
export function uniform(shape: Shape, lo: number, hi: number, rng: Rng): Tensor {
  return sample(shape, () => rng.uniform(lo, hi));
}

/**
 * PyTorch trunc_normal_: N(mean, std²) restricted to the absolute bounds [a, b], by inverting the
 * CDF on [Φ(α), Φ(β)]. Bounds above the mean are mirrored below it, where Φ keeps its precision.
 */
export function truncNormal(
  shape: Shape,
  std: number,
  rng: Rng,
  a = -2 * std,
  b = 2 * std,
  mean = 0,
): Tensor {
  if (!(a < b) || !(std > 0)) {
    throw new Error(`peco: truncNormal: needs a < b and std > 0 (a ${a}, b ${b}, std ${std})`);
  }
  const mirror = a > mean;
  const lo = mirror ? (mean - b) / std : (a - mean) / std;
  const hi = mirror ? (mean - a) / std : (b - mean) / std;
  const pLo = normalCdf(lo);
  const pHi = normalCdf(hi);
  return sample(shape, () => {
    const z = normalQuantile(pLo + (pHi - pLo) * rng.float());
    // The clamp catches ±∞ (p at 0 or 1) and float64 rounding at the bounds.
    return Math.min(Math.max(mean + std * (mirror ? -z : z), a), b);
  });
}

export interface KaimingOptions {
  /** Negative slope of leaky_relu (PyTorch's `a`). */
  a?: number;
  mode?: "fan_in" | "fan_out";
  nonlinearity?: Nonlinearity;
}

/** PyTorch kaiming_*: std = gain / √fan, with PyTorch's defaults (a 0, fan_in, leaky_relu). */
function kaimingStd(
  shape: Shape,
  { a = 0, mode = "fan_in", nonlinearity = "leaky_relu" }: KaimingOptions,
): number {
  const { fanIn, fanOut } = fans(shape);
  return gain(nonlinearity, a) / Math.sqrt(mode === "fan_in" ? fanIn : fanOut);
}

/** U(−bound, bound) with bound = √3 · gain / √fan. */
export function kaimingUniform(shape: Shape, rng: Rng, options: KaimingOptions = {}): Tensor {
  const bound = Math.sqrt(3) * kaimingStd(shape, options);
  return uniform(shape, -bound, bound, rng);
}

/** N(0, (gain / √fan)²). */
export function kaimingNormal(shape: Shape, rng: Rng, options: KaimingOptions = {}): Tensor {
  return normal(shape, kaimingStd(shape, options), rng);
}

function xavierStd(shape: Shape, gainValue: number): number {
  const { fanIn, fanOut } = fans(shape);
  return gainValue * Math.sqrt(2 / (fanIn + fanOut));
}

/** U(−bound, bound) with bound = gain · √(6 / (fan_in + fan_out)). */
export function xavierUniform(shape: Shape, rng: Rng, gainValue = 1): Tensor {
  const bound = Math.sqrt(3) * xavierStd(shape, gainValue);
  return uniform(shape, -bound, bound, rng);
}

/** N(0, gain² · 2 / (fan_in + fan_out)). */
export function xavierNormal(shape: Shape, rng: Rng, gainValue = 1): Tensor {
  return normal(shape, xavierStd(shape, gainValue), rng);
}
