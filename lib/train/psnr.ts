// Reconstruction quality: per-image mean squared error on the GPU, PSNR on the host.

import { square, sub } from "../tensor/ops/elementwise.ts";
import { mean } from "../tensor/ops/reduce.ts";
import { noGrad, type Tensor, tidy } from "../tensor/tensor.ts";

/** Mean squared error of each image of a and b [N, ...] → f32 [N] (no gradient). */
export function perImageMse(a: Tensor, b: Tensor): Tensor {
  if (a.rank < 2 || a.rank !== b.rank || a.shape.some((d, i) => d !== b.shape[i])) {
    throw new Error(`peco: perImageMse: ${a.describe()} and ${b.describe()} differ in shape`);
  }
  const n = a.shape[0];
  return noGrad(() => tidy(() => mean(square(sub(a, b)).view([n, a.size / n]), 1)));
}

/**
 * PSNR in dB of one image from its MSE, for pixel values spanning `range` (peak-to-peak; 2 for
 * images in [−1, 1], 1 for [0, 1]): 10·log10(range² / mse). A perfect copy gives Infinity.
 */
export function psnr(mse: number, range = 1): number {
  if (!(mse >= 0)) throw new Error(`peco: psnr: mse must be ≥ 0, got ${mse}`);
  return 10 * Math.log10((range * range) / mse);
}

/** Mean PSNR over images (each capped at `cap` dB so one perfect copy cannot make it infinite). */
export function meanPsnr(mses: ArrayLike<number>, range = 1, cap = 100): number {
  if (mses.length === 0) throw new Error(`peco: meanPsnr: no images`);
  let total = 0;
  for (let i = 0; i < mses.length; i++) total += Math.min(cap, psnr(mses[i], range));
  return total / mses.length;
}
