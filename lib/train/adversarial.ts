// The tokenizer's adversarial term as taming-transformers' VQGAN weighs it: the generator's loss
// −mean D(x̂) through a frozen discriminator, scaled by an adaptive weight
//   d = clamp(‖∇_L rec‖ / (‖∇_L gan‖ + 1e-4), 0, 1e4) · discWeight
// where ∇_L is the gradient at the decoder's last layer L (its conv_out weight), rec the
// reconstruction loss (pixel + λ·perceptual) and gan the generator's loss: the adversarial
// gradient at L is rescaled to the size of the reconstruction's, whatever the two losses' scales.
// Everything stays on the GPU: d is a scalar tensor, never read back inside the step.

import { backward } from "../tensor/autograd.ts";
import {
  add,
  addScalar,
  clamp,
  div,
  mul,
  mulScalar,
  sqrt,
  square,
} from "../tensor/ops/elementwise.ts";
import { sum } from "../tensor/ops/reduce.ts";
import { copyValues, keep, noGrad, Tensor } from "../tensor/tensor.ts";
import type { Module } from "../nn/module.ts";
import { generatorAdversarialLoss } from "../models/discriminator.ts";

/** taming's guard against a vanishing adversarial gradient, and the weight's upper clamp. */
const GRAD_EPS = 1e-4;
const MAX_WEIGHT = 1e4;

/** Runs `fn` with the module's parameters frozen (no weight gradients recorded). */
export function frozen<T>(module: Module, fn: () => T): T {
  const params = module.parameters();
  const before = params.map((p) => p.requiresGrad);
  params.forEach((p) => p.requiresGrad = false);
  try {
    return fn();
  } finally {
    params.forEach((p, i) => p.requiresGrad = before[i]);
  }
}

/**
 * The generator's adversarial loss −mean D(x̂): gradients reach x̂ (and the generator behind it)
 * through the discriminator, whose own weights receive none.
 */
export function adversarialTerm(disc: Module & { forward(x: Tensor): Tensor }, xhat: Tensor) {
  return frozen(disc, () => generatorAdversarialLoss(disc.forward(xhat)));
}

/** ‖g‖₂ as a scalar tensor. */
function l2(g: Tensor): Tensor {
  return sqrt(sum(square(g)));
}

/** clamp(‖recGrad‖ / (‖ganGrad‖ + 1e-4), 0, 1e4) · weight, a scalar tensor without gradient. */
export function adaptiveWeight(recGrad: Tensor, ganGrad: Tensor, weight: number): Tensor {
  return noGrad(() => {
    const ratio = div(l2(recGrad), addScalar(l2(ganGrad), GRAD_EPS));
    return mulScalar(clamp(ratio, 0, MAX_WEIGHT), weight);
  });
}

/**
 * Backpropagates rec + d·gan into `params` with d = adaptiveWeight at `lastLayer` (one of
 * `params`): two backward passes, rec's gradients set aside while gan's accumulate, then each
 * parameter's gradient becomes g_rec + d·g_gan (in the gradient's own storage). Returns d.
 * `rec` may hold terms that do not reach the last layer (the quantizer's loss): only its gradient
 * at L enters d, as in taming.
 */
export function backwardWithAdaptiveWeight(
  rec: Tensor,
  gan: Tensor,
  params: Tensor[],
  lastLayer: Tensor,
  weight: number,
): Tensor {
  const at = params.indexOf(lastLayer);
  if (at < 0) {
    throw new Error(`peco: backwardWithAdaptiveWeight: the last layer is not a parameter`);
  }
  backward(rec);
  const recGrads = params.map((p) => {
    const g = p.grad;
    p.grad = null;
    if (!g || !p.gradHome || !g.sharesStorage(p.gradHome)) return g;
    // A packed parameter's gradient lives in its gradient home, which the next backward writes
    // again: rec's gradient is set aside as a private copy.
    const own = keep(new Tensor(g.shape, "f32"));
    copyValues(own, g);
    g.dispose();
    return own;
  });
  backward(gan);
  const recAt = recGrads[at];
  const ganAt = lastLayer.grad;
  if (!recAt || !ganAt) {
    recGrads.forEach((g) => g?.dispose());
    throw new Error(
      `peco: backwardWithAdaptiveWeight: ${!recAt ? "the reconstruction" : "the adversarial"} ` +
        `loss does not reach the last layer ${lastLayer.describe()}`,
    );
  }
  const d = adaptiveWeight(recAt, ganAt, weight);
  params.forEach((p, i) => {
    const r = recGrads[i];
    const g = p.grad;
    if (!g) {
      p.grad = r;
      return;
    }
    // Written back into g's storage, so a packed gradient stays in its home (one optimizer
    // dispatch for all parameters).
    const total = noGrad(() => (r ? add(r, mul(g, d)) : mul(g, d)));
    copyValues(g, total);
    total.dispose();
    r?.dispose();
  });
  return d;
}
