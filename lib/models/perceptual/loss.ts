// The perceptual loss (docs/paper-to-code.md; paper eq. 4, LPIPS-style normalisation): for each
// tapped feature map, unit-normalise every spatial position across channels, take the squared
// difference, sum it over channels and average it over positions and the batch; sum over taps. λ is
// applied by the caller. The network is frozen: its target features run without a tape and its
// weights need no gradient, so only the reconstruction receives one.

import { add } from "../../tensor/ops/elementwise.ts";
import { unitDistance } from "../../tensor/ops/loss.ts";
import { noGrad, type Tensor } from "../../tensor/tensor.ts";
import type { PerceptualNet } from "./net.ts";

/** One tap: Σ_c (f̂ − ĝ)² of the unit-normalised features, averaged over the batch and positions. */
export function tapDistance(f: Tensor, g: Tensor): Tensor {
  if (f.rank < 2 || f.shape.length !== g.shape.length || f.shape.some((d, i) => d !== g.shape[i])) {
    throw new Error(
      `peco: perceptualLoss: feature maps ${f.describe()} and ${g.describe()} differ in shape`,
    );
  }
  return unitDistance(f, g);
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
