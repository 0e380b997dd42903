// Statistics of the report's claims: mean ± standard deviation over seeds, the paired difference of
// two arms on the same held-out images with a 95% interval that covers both held-out sampling
// (bootstrap over images) and training randomness (spread across seeds), and the verdict each
// claim gets. The method and its justification are in docs/statistics.md.

import { Rng } from "../tensor/init.ts";

/** What the interval says about a claim. */
export type Verdict = "holds" | "does not hold" | "cannot tell";

/** One entry of report.json's `claims[]`. */
export interface Claim {
  name: string;
  /** What was compared, e.g. "linear-probe top-1 (fraction)". */
  metric: string;
  /** Mean over seeds of (candidate − baseline), in the metric's units. */
  difference: number;
  ci95: [number, number];
  verdict: Verdict;
  seeds: number;
  /** Held-out images per seed (the same images for every seed). */
  images: number;
}

/** Per-image outcomes of the two arms of one seed, image i of each array being the same image. */
export interface PairedOutcomes {
  /** The arm the claim says is worse (e.g. λ = 0, training from scratch). */
  baseline: ArrayLike<number>;
  /** The arm the claim says is better. */
  candidate: ArrayLike<number>;
}

/** One seed's paired difference and its bootstrap (percentile) interval over held-out images. */
export interface SeedDifference {
  difference: number;
  ci95: [number, number];
}

/** The paired difference over all seeds, its interval, and how the interval was made. */
export interface PairedEstimate {
  difference: number;
  ci95: [number, number];
  seeds: number;
  images: number;
  perSeed: SeedDifference[];
  /** Variance of `difference` over bootstrap draws of the held-out images (one draw for all seeds). */
  imageVariance: number;
  /** Variance of `difference` from the spread of the seed differences (s²/S); null with one seed. */
  seedVariance: number | null;
  /** The part of `imageVariance` the seed spread does not already hold; null with one seed. */
  sharedImageVariance: number | null;
}

export interface BootstrapOptions {
  /** Bootstrap resamples (default 2000). */
  resamples?: number;
  /** Seed of the resampling stream: equal seeds give equal results. */
  seed: number;
  /** Names the comparison in error messages. */
  label?: string;
}

const MIN_RESAMPLES = 200;
/** The 97.5% quantile of the standard normal. */
const NORMAL_975 = 1.959963984540054;

function fail(label: string, what: string): never {
  throw new Error(`peco: ${label}: ${what}`);
}

// ---- mean ± standard deviation over seeds ---------------------------------------------------

/** Mean and sample standard deviation (n − 1); `sd` is null for a single value. */
export function meanSd(
  values: ArrayLike<number>,
  label = "mean ± sd",
): { mean: number; sd: number | null; n: number } {
  const n = values.length;
  if (n === 0) fail(label, "no values");
  checkFinite(values, label, "values");
  let sum = 0;
  for (let i = 0; i < n; i++) sum += values[i];
  const mean = sum / n;
  if (n === 1) return { mean, sd: null, n };
  let squares = 0;
  for (let i = 0; i < n; i++) squares += (values[i] - mean) ** 2;
  return { mean, sd: Math.sqrt(squares / (n - 1)), n };
}

/** "71.3 ± 0.8" (or "71.3" for a single seed), with `digits` decimals. */
export function formatMeanSd(stat: { mean: number; sd: number | null }, digits = 1): string {
  const mean = stat.mean.toFixed(digits);
  return stat.sd === null ? mean : `${mean} ± ${stat.sd.toFixed(digits)}`;
}

function checkFinite(values: ArrayLike<number>, label: string, what: string): void {
  for (let i = 0; i < values.length; i++) {
    if (!Number.isFinite(values[i])) {
      fail(label, `${what}[${i}] is ${values[i]}, not a finite number`);
    }
  }
}

// ---- the paired bootstrap -------------------------------------------------------------------

/**
 * The paired difference candidate − baseline over seeds and held-out images, with its 95% interval.
 *
 * Every seed must be evaluated on the same held-out images in the same order. One bootstrap
 * replicate draws n images with replacement and uses that draw for every seed (the image sample is
 * shared, so its noise is shared too); it yields each seed's resampled difference and their mean.
 * With one seed the interval is the percentile interval of those replicates. With two or more,
 * the variance of the mean difference is the spread of the seed differences (s²/S) plus what the
 * shared image draw adds beyond it (bootstrap variance less the residual noise s² already holds),
 * and the interval's half-width adds in quadrature t(S − 1)·√(seed part) and 1.96·√(image part)
 * (docs/statistics.md).
 */
export function pairedBootstrap(
  seeds: PairedOutcomes[],
  options: BootstrapOptions,
): PairedEstimate {
  const label = options.label ?? "paired bootstrap";
  const resamples = options.resamples ?? 2000;
  if (!Number.isInteger(resamples) || resamples < MIN_RESAMPLES) {
    fail(label, `resamples must be an integer ≥ ${MIN_RESAMPLES}, got ${resamples}`);
  }
  if (!Number.isSafeInteger(options.seed)) fail(label, `seed ${options.seed} is not an integer`);
  const differences = perImageDifferences(seeds, label);
  const S = seeds.length;
  const n = differences.length / S;
  const replicates = resampleImages(differences, S, resamples, new Rng(options.seed));

  const seedMeans = new Float64Array(S);
  for (let i = 0; i < n; i++) {
    for (let s = 0; s < S; s++) seedMeans[s] += differences[i * S + s];
  }
  for (let s = 0; s < S; s++) seedMeans[s] /= n;
  const difference = mean(seedMeans);

  const perSeed: SeedDifference[] = [];
  for (let s = 0; s < S; s++) {
    perSeed.push({
      difference: seedMeans[s],
      ci95: percentileInterval(replicates.perSeed.subarray(s * resamples, (s + 1) * resamples)),
    });
  }
  const imageVariance = sampleVariance(replicates.joint);
  const base = { difference, seeds: S, images: n, perSeed, imageVariance };
  if (S === 1) {
    return {
      ...base,
      ci95: percentileInterval(replicates.joint),
      seedVariance: null,
      sharedImageVariance: null,
    };
  }

  const { seedVariance, sharedImageVariance } = varianceComponents(
    differences,
    seedMeans,
    imageVariance,
  );
  // Each part's 95% half-width with its own quantile, added in quadrature: the seed part rests on
  // S − 1 degrees of freedom (Student's t), the shared-image part on n images (normal).
  const seedHalf = studentTQuantile(0.975, S - 1) * Math.sqrt(seedVariance);
  const imageHalf = NORMAL_975 * Math.sqrt(sharedImageVariance);
  const half = Math.hypot(seedHalf, imageHalf);
  return {
    ...base,
    ci95: [difference - half, difference + half],
    seedVariance,
    sharedImageVariance,
  };
}

/** Image-major (image i, seed s at i·S + s) differences candidate − baseline, after input checks. */
function perImageDifferences(seeds: PairedOutcomes[], label: string): Float64Array {
  if (seeds.length === 0) fail(label, "no seeds");
  const S = seeds.length;
  const n = seeds[0].baseline.length;
  seeds.forEach(({ baseline, candidate }, s) => {
    if (baseline.length !== candidate.length) {
      fail(
        label,
        `seed ${s}: candidate has ${candidate.length} values, baseline ${baseline.length}; ` +
          "the arms must be scored on the same images",
      );
    }
    if (baseline.length !== n) {
      fail(
        label,
        `seed ${s} has ${baseline.length} images, seed 0 has ${n}; ` +
          "every seed must be scored on the same held-out images",
      );
    }
    checkFinite(baseline, label, `seed ${s} baseline`);
    checkFinite(candidate, label, `seed ${s} candidate`);
  });
  if (n < 2) fail(label, `${n} held-out image(s); a bootstrap needs at least 2`);
  const differences = new Float64Array(n * S);
  for (let s = 0; s < S; s++) {
    const { baseline, candidate } = seeds[s];
    for (let i = 0; i < n; i++) differences[i * S + s] = candidate[i] - baseline[i];
  }
  return differences;
}

/**
 * `resamples` bootstrap replicates over images, one image draw shared by all seeds: each seed's
 * mean difference (seed-major, seed s at s·resamples + r) and the mean over seeds.
 */
function resampleImages(
  differences: Float64Array,
  S: number,
  resamples: number,
  rng: Rng,
): { perSeed: Float64Array; joint: Float64Array } {
  const n = differences.length / S;
  // An index from one 32-bit word by multiplication: the bias is below n / 2³² (2e-6 at n = 10⁴),
  // far under the bootstrap's own Monte Carlo error, and it needs one draw per index.
  const scale = n / 4294967296;
  const perSeed = new Float64Array(S * resamples);
  const joint = new Float64Array(resamples);
  const sums = new Float64Array(S);
  for (let r = 0; r < resamples; r++) {
    if (S === 1) {
      let sum = 0;
      for (let k = 0; k < n; k++) sum += differences[Math.floor(rng.next() * scale)];
      sums[0] = sum;
    } else {
      sums.fill(0);
      for (let k = 0; k < n; k++) {
        const row = Math.floor(rng.next() * scale) * S;
        for (let s = 0; s < S; s++) sums[s] += differences[row + s];
      }
    }
    let total = 0;
    for (let s = 0; s < S; s++) {
      perSeed[s * resamples + r] = sums[s] / n;
      total += sums[s];
    }
    joint[r] = total / (S * n);
  }
  return { perSeed, joint };
}

/**
 * The two parts of the mean difference's variance, in a crossed layout (seeds × the same images, one
 * value per cell; E[MS_residual] = σ²_residual):
 * - between seeds, s²_seeds/S from the S seed differences: training randomness plus each seed's own
 *   image-level noise (σ²_seed/S + σ²_residual/(S·n));
 * - shared by seeds, the bootstrap's image variance less MS_residual/(S·n), the residual noise it
 *   also holds and the seed spread already counts (leaving σ²_image/n, what the shared image draw
 *   adds); floored at 0.
 */
function varianceComponents(
  differences: Float64Array,
  seedMeans: Float64Array,
  imageVariance: number,
): { seedVariance: number; sharedImageVariance: number } {
  const S = seedMeans.length;
  const n = differences.length / S;
  const grand = mean(seedMeans);
  let seedSquares = 0;
  for (let s = 0; s < S; s++) seedSquares += (seedMeans[s] - grand) ** 2;
  const seedVariance = seedSquares / (S - 1) / S;
  let residualSquares = 0;
  for (let i = 0; i < n; i++) {
    let imageMean = 0;
    for (let s = 0; s < S; s++) imageMean += differences[i * S + s];
    imageMean /= S;
    for (let s = 0; s < S; s++) {
      residualSquares += (differences[i * S + s] - seedMeans[s] - imageMean + grand) ** 2;
    }
  }
  const residualTerm = residualSquares / ((S - 1) * (n - 1)) / (S * n);
  const sharedImageVariance = Math.max(0, imageVariance - residualTerm);
  return { seedVariance, sharedImageVariance };
}

function mean(values: Float64Array): number {
  let sum = 0;
  for (let i = 0; i < values.length; i++) sum += values[i];
  return sum / values.length;
}

function sampleVariance(values: Float64Array): number {
  const m = mean(values);
  let squares = 0;
  for (let i = 0; i < values.length; i++) squares += (values[i] - m) ** 2;
  return squares / (values.length - 1);
}

/** The 2.5% and 97.5% quantiles (linear interpolation between order statistics). */
function percentileInterval(replicates: Float64Array): [number, number] {
  const sorted = replicates.slice().sort();
  const at = (p: number) => {
    const h = (sorted.length - 1) * p;
    const lo = Math.floor(h);
    const hi = Math.min(lo + 1, sorted.length - 1);
    return sorted[lo] + (h - lo) * (sorted[hi] - sorted[lo]);
  };
  return [at(0.025), at(0.975)];
}

// ---- verdicts and claims --------------------------------------------------------------------

/**
 * "holds" when the interval lies wholly on the claimed side of 0 (above for `better: "higher"`),
 * "does not hold" when it lies wholly on the other side, "cannot tell" when it contains 0.
 */
export function verdict(
  ci95: readonly [number, number],
  better: "higher" | "lower" = "higher",
): Verdict {
  const [lo, hi] = ci95;
  if (Number.isNaN(lo) || Number.isNaN(hi) || lo > hi) {
    throw new Error(`peco: verdict: interval [${lo}, ${hi}] is not an interval`);
  }
  const above = lo > 0;
  const below = hi < 0;
  if (!above && !below) return "cannot tell";
  return above === (better === "higher") ? "holds" : "does not hold";
}

export interface ClaimInput {
  name: string;
  metric: string;
  /** One entry per seed: the two arms' per-image outcomes on the same held-out images. */
  seeds: PairedOutcomes[];
  /** Whether the claim says the candidate's metric is higher (accuracy) or lower (a loss). */
  better?: "higher" | "lower";
  resamples?: number;
  /** Report-wide seed; each claim draws from its own stream derived from it and the claim name. */
  seed: number;
}

/** A `claims[]` entry: the paired bootstrap of `input.seeds` and its verdict. */
export function pairedClaim(input: ClaimInput): Claim {
  const estimate = pairedBootstrap(input.seeds, {
    resamples: input.resamples,
    seed: new Rng(input.seed).fork(input.name).key,
    label: `claim "${input.name}"`,
  });
  return {
    name: input.name,
    metric: input.metric,
    difference: estimate.difference,
    ci95: estimate.ci95,
    verdict: verdict(estimate.ci95, input.better),
    seeds: estimate.seeds,
    images: estimate.images,
  };
}

/** One line per claim: `name: metric +2.10 [0.40, 3.80] (3 seeds × 5000 images): holds`. */
export function describeClaim(claim: Claim, scale = 1, digits = 2): string {
  const signed = (v: number) => `${v * scale >= 0 ? "+" : ""}${(v * scale).toFixed(digits)}`;
  const [lo, hi] = claim.ci95;
  return `${claim.name}: ${claim.metric} ${signed(claim.difference)} ` +
    `[${signed(lo)}, ${signed(hi)}] (${claim.seeds} seed${claim.seeds === 1 ? "" : "s"} × ` +
    `${claim.images} images): ${claim.verdict}`;
}

// ---- Student's t quantile -------------------------------------------------------------------

/**
 * The p quantile (p in (0.5, 1)) of Student's t with `df` > 0 degrees of freedom (any real df), by
 * bisection on the CDF; df above 10⁶ is taken as 10⁶ (within 3e-6
 * of the normal quantile).
 */
export function studentTQuantile(p: number, df: number): number {
  if (!(p > 0.5 && p < 1)) throw new Error(`peco: t quantile: p must be in (0.5, 1), got ${p}`);
  if (!(df > 0)) throw new Error(`peco: t quantile: df must be > 0, got ${df}`);
  const nu = Math.min(df, 1e6);
  const tail = 1 - p;
  let lo = 0;
  let hi = 1;
  while (studentTUpperTail(hi, nu) > tail) hi *= 2;
  for (let i = 0; i < 200 && hi - lo > 1e-13 * hi; i++) {
    const mid = (lo + hi) / 2;
    if (studentTUpperTail(mid, nu) > tail) lo = mid;
    else hi = mid;
  }
  return (lo + hi) / 2;
}

/** P(T > t) for t ≥ 0: ½·I_{ν/(ν+t²)}(ν/2, ½). */
function studentTUpperTail(t: number, nu: number): number {
  return 0.5 * regularizedBeta(nu / (nu + t * t), nu / 2, 0.5);
}

/** I_x(a, b), the regularized incomplete beta function (continued fraction, modified Lentz). */
function regularizedBeta(x: number, a: number, b: number): number {
  if (x <= 0) return 0;
  if (x >= 1) return 1;
  const front = Math.exp(
    logGamma(a + b) - logGamma(a) - logGamma(b) + a * Math.log(x) + b * Math.log1p(-x),
  );
  // The fraction converges fast for x < (a + 1)/(a + b + 2); otherwise use I_x(a,b) = 1 − I_{1−x}(b,a).
  if (x < (a + 1) / (a + b + 2)) return (front * betaFraction(x, a, b)) / a;
  return 1 - (front * betaFraction(1 - x, b, a)) / b;
}

function betaFraction(x: number, a: number, b: number): number {
  const tiny = 1e-300;
  let c = 1;
  let d = 1 - ((a + b) * x) / (a + 1);
  if (Math.abs(d) < tiny) d = tiny;
  d = 1 / d;
  let result = d;
  for (let m = 1; m <= 10000; m++) {
    const m2 = 2 * m;
    const even = (m * (b - m) * x) / ((a + m2 - 1) * (a + m2));
    d = 1 + even * d;
    if (Math.abs(d) < tiny) d = tiny;
    c = 1 + even / c;
    if (Math.abs(c) < tiny) c = tiny;
    d = 1 / d;
    result *= d * c;
    const odd = (-(a + m) * (a + b + m) * x) / ((a + m2) * (a + m2 + 1));
    d = 1 + odd * d;
    if (Math.abs(d) < tiny) d = tiny;
    c = 1 + odd / c;
    if (Math.abs(c) < tiny) c = tiny;
    d = 1 / d;
    const step = d * c;
    result *= step;
    if (Math.abs(step - 1) < 1e-15) return result;
  }
  return result;
}

/** ln Γ(x) for x > 0 (Lanczos, g = 7, 9 terms; relative error ~1e-15). */
function logGamma(x: number): number {
  if (x < 0.5) return Math.log(Math.PI / Math.sin(Math.PI * x)) - logGamma(1 - x);
  const coefficients = [
    0.99999999999980993,
    676.5203681218851,
    -1259.1392167224028,
    771.32342877765313,
    -176.61502916214059,
    12.507343278686905,
    -0.13857109526572012,
    9.9843695780195716e-6,
    1.5056327351493116e-7,
  ];
  const z = x - 1;
  let sum = coefficients[0];
  for (let i = 1; i < 9; i++) sum += coefficients[i] / (z + i);
  const t = z + 7.5;
  return 0.5 * Math.log(2 * Math.PI) + (z + 0.5) * Math.log(t) - t + Math.log(sum);
}
