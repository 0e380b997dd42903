// One training step of the perceptual tokenizer (the train-tokenizer stage and
// bench/tokenizer.ts share it): the VQ-VAE's loss pixel + λ·perceptual + quantizer loss, and from
// `start` on the adversarial term with taming's adaptive weight (adversarial.ts), backward,
// clipping and Adam, then the discriminator's own step (hinge loss, its own Adam).

import type { PatchDiscriminator } from "../models/discriminator.ts";
import { hingeDiscriminatorLoss } from "../models/discriminator.ts";
import type { PerceptualModule } from "../models/perceptual/net.ts";
import { perceptualLoss } from "../models/perceptual/loss.ts";
import type { TokenizerTrainConfig } from "../models/tokenizer_config.ts";
import type { VqVae } from "../models/vqvae.ts";
import type { Adam } from "../optim/adam.ts";
import { clipGradNorm } from "../optim/clip.ts";
import { backward } from "../tensor/autograd.ts";
import { add, mul, mulScalar } from "../tensor/ops/elementwise.ts";
import { l1Loss, mseLoss } from "../tensor/ops/loss.ts";
import { avgPool2d } from "../tensor/ops/conv.ts";
import { mean } from "../tensor/ops/reduce.ts";
import { concat } from "../tensor/ops/shape.ts";
import type { Tensor } from "../tensor/tensor.ts";
import { adversarialTerm, backwardWithAdaptiveWeight } from "./adversarial.ts";

/** What one training step needs. */
export interface TokenizerStepContext {
  model: VqVae;
  optimizer: Adam;
  train: Pick<TokenizerTrainConfig, "pixelLoss" | "clipNorm">;
  perceptual: { net: PerceptualModule; lambda: number; pool: number } | null;
  /** The adversarial term: `weight` is taming's disc_weight, the term starts at step `start`. */
  adversarial: { disc: PatchDiscriminator; optimizer: Adam; weight: number; start: number } | null;
}

/** The names of the scalars tokenizerStep returns, in order. */
export function tokenizerStepTerms(adversarial: boolean): string[] {
  return [
    "loss",
    "pixel",
    "commitment",
    "perceptual",
    "grad_norm",
    // The adversarial terms: the generator's −mean D(x̂), its adaptive weight d (0 before the
    // start), the discriminator's hinge loss and its mean logits on real and reconstructed images.
    ...(adversarial ? ["g_adv", "d_weight", "d_loss", "logits_real", "logits_fake"] : []),
  ];
}

/** The perceptual network's input: grey repeated to RGB, average-pooled by `pool`. */
export function perceptualInput(x: Tensor, pool: number): Tensor {
  const y = x.shape[1] === 3 ? x : concat([x, x, x], 1);
  return pool > 1 ? avgPool2d(y, pool) : y;
}

/**
 * One training step on images x [B, C, H, W] in [−1, 1] (call it inside `tidy`). Returns the
 * scalars named by tokenizerStepTerms; the loss is rec + quantizer loss (+ d·g_adv from `start`).
 */
export function tokenizerStep(c: TokenizerStepContext, x: Tensor, step: number): Tensor[] {
  const { model, optimizer, perceptual: p, adversarial: a } = c;
  const out = model.forward(x);
  const xhat = out.reconstruction;
  const pixel = c.train.pixelLoss === "l1" ? l1Loss(xhat, x) : mseLoss(xhat, x);
  const zero = () => mulScalar(pixel.detach(), 0);
  let rec = pixel;
  let percep = zero();
  if (p) {
    percep = perceptualLoss(p.net, perceptualInput(x, p.pool), perceptualInput(xhat, p.pool));
    rec = add(rec, mulScalar(percep, p.lambda));
  }
  const base = add(rec, out.loss);
  const advOn = a !== null && step >= a.start;
  let gAdv = zero();
  let dWeight = zero();
  if (advOn) {
    gAdv = adversarialTerm(a.disc, xhat);
    const last = model.decoder.convOut.weight;
    dWeight = backwardWithAdaptiveWeight(base, gAdv, model.parameters(), last, a.weight);
  } else {
    backward(base);
  }
  const loss = advOn ? add(base.detach(), mul(gAdv.detach(), dWeight)) : base;
  const norm = clipGradNorm(model.parameters(), c.train.clipNorm);
  optimizer.step();
  optimizer.zeroGrad();
  const terms = [loss, pixel, out.commitment, percep, norm];
  if (!a) return terms;
  if (!advOn) return [...terms, gAdv, dWeight, zero(), zero(), zero()];
  // The discriminator's step (hinge loss) on the real images and the detached x̂.
  const real = a.disc.forward(x);
  const fake = a.disc.forward(xhat.detach());
  const dLoss = hingeDiscriminatorLoss(real, fake);
  backward(dLoss);
  a.optimizer.step();
  a.optimizer.zeroGrad();
  return [...terms, gAdv.detach(), dWeight, dLoss, mean(real.detach()), mean(fake.detach())];
}
