// The tokenizer's optional adversarial term (paper Table 10): a patch discriminator with the layout
// and parameter names of taming-transformers' NLayerDiscriminator (pix2pix's PatchGAN), so taming
// checkpoints map onto it name for name:
//   main.0  conv 4×4 stride 2 (bias) → main.1 LeakyReLU(0.2)
//   for n = 1 … layers − 1: conv 4×4 stride 2 (no bias), BatchNorm, LeakyReLU(0.2)
//   then conv 4×4 stride 1 (no bias), BatchNorm, LeakyReLU(0.2), and a final conv 4×4 stride 1
//   (bias) to one channel: a map of real/fake logits, one per overlapping patch.
// Width doubles per layer up to 8× `channels`. Initialisation as taming's weights_init: conv
// weights N(0, 0.02), BatchNorm weights N(1, 0.02) and biases 0 (conv biases: PyTorch's default).
// The losses are taming's hinge losses: the discriminator minimises
// ½·(mean relu(1 − D(x)) + mean relu(1 + D(x̂))); the generator adds −weight·mean D(x̂).

import { Module } from "../nn/module.ts";
import { BatchNorm2d } from "../nn/layers.ts";
import { normal, Rng, uniform } from "../tensor/init.ts";
import { conv2d } from "../tensor/ops/conv.ts";
import { add, addScalar, maximum, mulScalar, neg, relu } from "../tensor/ops/elementwise.ts";
import { mean } from "../tensor/ops/reduce.ts";
import { type Tensor, uploadValues } from "../tensor/tensor.ts";

export interface DiscriminatorConfig {
  /** Image channels. */
  inChannels: number;
  /** Width of the first conv (taming's ndf). */
  channels: number;
  /** Stride-2 convs (taming's n_layers). */
  layers: number;
}

/** Side of the logit map for a `size`² image: size / 2^layers − 2 (4×4 convs, padding 1). */
export function discriminatorOutputSize(size: number, layers: number): number {
  let s = size;
  for (let i = 0; i < layers; i++) s = Math.floor((s + 2 - 4) / 2) + 1;
  return s - 2;
}

/**
 * The discriminator sized for the image: the most stride-2 layers, up to taming's 3, that still
 * leave every patch map at least 6² before the two stride-1 convs (28² → 2 layers, 5×5 logits;
 * 224² → 3 layers, 26×26 logits).
 */
export function discriminatorLayersFor(size: number): number {
  let layers = 1;
  while (layers < 3 && size / 2 ** (layers + 1) >= 6) layers++;
  return layers;
}

function checkConfig(c: DiscriminatorConfig): void {
  const ok = [c.inChannels, c.channels, c.layers].every((v) => Number.isInteger(v) && v >= 1);
  if (!ok) {
    throw new Error(
      `peco: PatchDiscriminator: config ${JSON.stringify(c)} needs positive integer ` +
        `inChannels, channels and layers`,
    );
  }
}

/** A 4×4 conv, padding 1, weights N(0, 0.02) (taming's weights_init). */
class PatchConv extends Module {
  readonly weight: Tensor;
  readonly bias: Tensor | null;

  constructor(cin: number, cout: number, readonly stride: number, bias: boolean, rng: Rng) {
    super();
    this.weight = this.param("weight", normal([cout, cin, 4, 4], 0.02, rng.fork("weight")));
    const bound = 1 / Math.sqrt(cin * 16);
    this.bias = bias ? this.param("bias", uniform([cout], -bound, bound, rng.fork("bias"))) : null;
  }

  forward(x: Tensor): Tensor {
    return conv2d(x, this.weight, this.bias, { stride: this.stride, padding: 1 });
  }
}

/** LeakyReLU(0.2) = max(x, 0.2·x); no parameters (an index of `main`, as in nn.Sequential). */
class LeakyRelu extends Module {
  forward(x: Tensor): Tensor {
    return maximum(x, mulScalar(x, 0.2));
  }
}

/** BatchNorm with taming's N(1, 0.02) weights. */
function batchNorm(channels: number, rng: Rng): BatchNorm2d {
  const bn = new BatchNorm2d(channels);
  const r = rng.fork("bn");
  const w = Float32Array.from({ length: channels }, () => 1 + 0.02 * r.normal());
  uploadValues(bn.weight, w);
  return bn;
}

type Layer = PatchConv | BatchNorm2d | LeakyRelu;

export class PatchDiscriminator extends Module {
  readonly main: Layer[];

  constructor(readonly config: DiscriminatorConfig, seed = 0) {
    super();
    checkConfig(config);
    const rng = new Rng(seed).fork("discriminator");
    const { inChannels, channels: ndf, layers } = config;
    const seq: Layer[] = [
      new PatchConv(inChannels, ndf, 2, true, rng.fork("0")),
      new LeakyRelu(),
    ];
    let mult = 1;
    for (let n = 1; n <= layers; n++) {
      const prev = mult;
      mult = Math.min(2 ** n, 8);
      // The last of these keeps the resolution (stride 1), as in taming.
      const stride = n < layers ? 2 : 1;
      const at = String(seq.length);
      seq.push(new PatchConv(ndf * prev, ndf * mult, stride, false, rng.fork(at)));
      seq.push(batchNorm(ndf * mult, rng.fork(`${at}.bn`)));
      seq.push(new LeakyRelu());
    }
    seq.push(new PatchConv(ndf * mult, 1, 1, true, rng.fork(String(seq.length))));
    this.main = [...this.child("main", seq)];
  }

  /** Images [N, C, H, W] → patch logits [N, 1, h, w]. */
  forward(x: Tensor): Tensor {
    const { inChannels } = this.config;
    if (x.dtype !== "f32" || x.rank !== 4 || x.shape[1] !== inChannels) {
      throw new Error(
        `peco: PatchDiscriminator: x must be f32 [N, ${inChannels}, H, W], got ${x.describe()}`,
      );
    }
    if (discriminatorOutputSize(Math.min(x.shape[2], x.shape[3]), this.config.layers) < 1) {
      throw new Error(
        `peco: PatchDiscriminator: ${x.shape[2]}×${x.shape[3]} images are too small for ` +
          `${this.config.layers} stride-2 layers`,
      );
    }
    for (const layer of this.main) x = layer.forward(x);
    return x;
  }
}

/** The discriminator's hinge loss: ½·(mean relu(1 − real) + mean relu(1 + fake)). */
export function hingeDiscriminatorLoss(logitsReal: Tensor, logitsFake: Tensor): Tensor {
  const real = mean(relu(addScalar(neg(logitsReal), 1)));
  const fake = mean(relu(addScalar(logitsFake, 1)));
  return mulScalar(add(real, fake), 0.5);
}

/** The generator's adversarial loss: −mean D(x̂). */
export function generatorAdversarialLoss(logitsFake: Tensor): Tensor {
  return neg(mean(logitsFake));
}
