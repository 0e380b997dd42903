// The perceptual loss (docs/paper-to-code.md; paper eq. 4, LPIPS-style normalisation): for each
// tapped feature map, unit-normalise every spatial position across channels, take the squared
// difference, sum it over channels and average it over positions and the batch; sum over taps. λ is
// applied by the caller. The network is frozen: its target features run without a tape and its
// weights need no gradient, so only the reconstruction receives one.

import { add, addScalar, div, mulScalar, sqrt, square, sub } from "../../tensor/ops/elementwise.ts";
import { sum } from "../../tensor/ops/reduce.ts";
import { noGrad, type Tensor } from "../../tensor/tensor.ts";
import type { PerceptualNet } from "./net.ts";

/** Added to the norm, as LPIPS does. */
const NORM_EPS = 1e-10;
/**
 * Added under the square root: an all-zero position (common after a ReLU in a narrow network)
 * would otherwise get 0·∞ = NaN from the root's gradient. It changes no norm above ~1e-10.
 */
const ROOT_EPS = 1e-20;

/** f / (sqrt(Σ_c f²) + 1e-10) at every position of f [N, C, ...]. */
export function unitNormalize(f: Tensor): Tensor {
  const norm = sqrt(addScalar(sum(square(f), 1, true), ROOT_EPS));
  return div(f, addScalar(norm, NORM_EPS));
}

/** One tap: Σ_c (f̂ − ĝ)², averaged over the batch and the positions. */
export function tapDistance(f: Tensor, g: Tensor): Tensor {
  if (f.rank < 2 || f.shape.length !== g.shape.length || f.shape.some((d, i) => d !== g.shape[i])) {
    throw new Error(
      `peco: perceptualLoss: feature maps ${f.describe()} and ${g.describe()} differ in shape`,
    );
  }
  const positions = f.size / f.shape[1];
  return mulScalar(sum(square(sub(unitNormalize(f), unitNormalize(g)))), 1 / positions);
}

/**
 * Perceptual distance between images x (the target, no gradient) and xhat (the reconstruction),
 * both [N, 3, H, W] in [−1, 1]: a scalar, Σ over the taps of `net`.
 */
export function perceptualLoss(net: PerceptualNet, x: Tensor, xhat: Tensor): Tensor {
  if (x.shape.length !== xhat.shape.length || x.shape.some((d, i) => d !== xhat.shape[i])) {
    throw new Error(
      `peco: perceptualLoss: x ${x.describe()} and xhat ${xhat.describe()} differ in shape`,
    );
  }
  const target = noGrad(() => net.features(x));
  const pred = net.features(xhat);
  if (pred.length !== target.length || pred.length === 0) {
    throw new Error(
      `peco: perceptualLoss: ${net.kind} gave ${pred.length} and ${target.length} taps`,
    );
  }
  let total = tapDistance(pred[0], target[0]);
  for (let i = 1; i < pred.length; i++) total = add(total, tapDistance(pred[i], target[i]));
  return total;
}
