// Structural similarity (Wang, Bovik, Sheikh & Simoncelli 2004, "Image quality assessment: from
// error visibility to structural similarity"): local means, variances and covariance under an
// 11×11 Gaussian window of σ = 1.5 (normalised to sum 1), C1 = (0.01·L)², C2 = (0.03·L)² for pixel
// values spanning L, the SSIM map over the "valid" window positions (the paper's MATLAB code,
// filter2 'valid'), averaged per channel and image. Moments are Gaussian-weighted population
// moments (no n/(n−1) correction), as in the paper.
//
// On the GPU with existing ops: the five maps a, b, a², b², ab are stacked along the batch and
// filtered by one separable pair of convolutions (a 1×k then a k×1 kernel); the rest is
// elementwise. Images smaller than the window use the largest odd window that fits (same σ,
// renormalised), so small test images and 28×28 MNIST digits work alike.

import { conv2d } from "../tensor/ops/conv.ts";
import { tensor } from "../tensor/ops/creation.ts";
import { add, addScalar, div, mul, mulScalar, square, sub } from "../tensor/ops/elementwise.ts";
import { mean } from "../tensor/ops/reduce.ts";
import { concat, slice } from "../tensor/ops/shape.ts";
import { noGrad, readAll, type Tensor, tidy } from "../tensor/tensor.ts";

export const SSIM_WINDOW = 11;
export const SSIM_SIGMA = 1.5;
export const SSIM_K1 = 0.01;
export const SSIM_K2 = 0.03;

export interface SsimOptions {
  /** Peak-to-peak range L of the pixel values (1 for [0, 1] images, 2 for [−1, 1]). */
  dataRange?: number;
  /** Window side (odd; default 11) and Gaussian σ (default 1.5). */
  window?: number;
  sigma?: number;
}

/** The 1-D Gaussian window of `size` taps (odd), normalised to sum 1; the 2-D one is its outer product. */
export function gaussianWindow(size: number, sigma: number): number[] {
  if (!Number.isInteger(size) || size < 1 || size % 2 === 0 || !(sigma > 0)) {
    throw new Error(`peco: ssim: window ${size} must be an odd integer ≥ 1 and σ ${sigma} > 0`);
  }
  const half = (size - 1) / 2;
  const w = Array.from({ length: size }, (_, i) => Math.exp(-((i - half) ** 2) / (2 * sigma ** 2)));
  const total = w.reduce((a, b) => a + b, 0);
  return w.map((v) => v / total);
}

/** The window side used for h×w images: `window`, or the largest odd side that fits. */
export function ssimWindowSize(h: number, w: number, window = SSIM_WINDOW): number {
  const fit = Math.min(window, h, w);
  return fit % 2 === 1 ? fit : fit - 1;
}

/**
 * SSIM of each image pair of a and b, f32 [N, C, H, W] → f32 [N] (the mean over channels and
 * valid window positions). No gradient.
 */
export function ssimPerImage(a: Tensor, b: Tensor, options: SsimOptions = {}): Tensor {
  const { dataRange = 1, window = SSIM_WINDOW, sigma = SSIM_SIGMA } = options;
  const same = a.rank === 4 && b.rank === 4 && a.shape.every((d, i) => d === b.shape[i]);
  if (!same || a.dtype !== "f32" || b.dtype !== "f32") {
    throw new Error(
      `peco: ssim: images must be f32 [N, C, H, W] of one shape, got ${a.describe()} and ` +
        b.describe(),
    );
  }
  if (!(dataRange > 0)) throw new Error(`peco: ssim: dataRange must be > 0, got ${dataRange}`);
  const [n, c, h, w] = a.shape;
  const k = ssimWindowSize(h, w, window);
  const taps = gaussianWindow(k, sigma);
  const c1 = (SSIM_K1 * dataRange) ** 2;
  const c2 = (SSIM_K2 * dataRange) ** 2;
  const planes = n * c;
  return noGrad(() =>
    tidy(() => {
      // [5·N·C, 1, H, W]: a, b, a², b², ab as single-channel planes, filtered in one go.
      const maps = concat([a, b, square(a), square(b), mul(a, b)], 0).view([5 * planes, 1, h, w]);
      const rows = conv2d(maps, tensor(taps, [1, 1, 1, k]), null);
      const filtered = conv2d(rows, tensor(taps, [1, 1, k, 1]), null);
      const ho = h - k + 1, wo = w - k + 1;
      const m = filtered.view([5, planes * ho * wo]);
      const [muA, muB, eAA, eBB, eAB] = [0, 1, 2, 3, 4].map((i) => slice(m, 0, i, i + 1));
      const muAB = mul(muA, muB);
      const muAA = square(muA);
      const muBB = square(muB);
      const varA = sub(eAA, muAA);
      const varB = sub(eBB, muBB);
      const cov = sub(eAB, muAB);
      const num = mul(addScalar(mulScalar(muAB, 2), c1), addScalar(mulScalar(cov, 2), c2));
      const den = mul(addScalar(add(muAA, muBB), c1), addScalar(add(varA, varB), c2));
      return mean(div(num, den).view([n, c * ho * wo]), 1);
    })
  );
}

/** Mean SSIM over images, read back (one sync). */
export async function meanSsim(a: Tensor, b: Tensor, options: SsimOptions = {}): Promise<number> {
  const per = ssimPerImage(a, b, options);
  const [values] = await readAll([per]);
  per.dispose();
  return values.reduce((s, v) => s + v, 0) / values.length;
}
