// What every perceptual network shares: the `PerceptualNet` interface the loss runs on, freezing,
// input checks and the fixed per-channel input scalings (LPIPS for VGG, ImageNet for the others).

import type { Module } from "../../nn/module.ts";
import { tensor } from "../../tensor/ops/creation.ts";
import { add, mul } from "../../tensor/ops/elementwise.ts";
import { keep, type Tensor } from "../../tensor/tensor.ts";

/** A frozen feature network: images [N, 3, H, W] in [−1, 1] → its tapped feature maps. */
export interface PerceptualNet {
  /** "vgg16", "resnet50", "vit-b", … (for messages and manifests). */
  readonly kind: string;
  /** Tapped activations, each [N, C, h, w] (ViT patch tokens laid out on their grid). */
  features(x: Tensor): Tensor[];
  /** Throws a one-line error unless H×W images fit the network (checked before training). */
  checkInputSize?(h: number, w: number): void;
}

export type PerceptualModule = Module & PerceptualNet;

/**
 * Freezes a network in place: eval mode (BatchNorm uses its running statistics) and no parameter
 * requires a gradient, so ops record no backward work for the weights; gradients still flow to the
 * input.
 */
export function freeze<M extends Module>(net: M): M {
  net.eval();
  for (const p of net.parameters()) p.requiresGrad = false;
  return net;
}

/** Checks x is an f32 batch of 3-channel images of at least `min`×`min` pixels. */
export function checkImages(op: string, x: Tensor, min = 1): [number, number, number] {
  const [n, c, h, w] = x.shape;
  if (x.dtype !== "f32" || x.rank !== 4 || c !== 3 || h < min || w < min) {
    throw new Error(
      `peco: ${op}: input must be f32 [N, 3, H, W] with H, W ≥ ${min}, got ${x.describe()}`,
    );
  }
  return [n, h, w];
}

/** x·scale[c] + shift[c] per RGB channel, with the constants uploaded once (kept). */
export class ChannelAffine {
  readonly scale: Tensor;
  readonly shift: Tensor;

  constructor(scale: readonly number[], shift: readonly number[]) {
    this.scale = keep(tensor(scale, [1, 3, 1, 1]));
    this.shift = keep(tensor(shift, [1, 3, 1, 1]));
  }

  apply(x: Tensor): Tensor {
    return add(mul(x, this.scale), this.shift);
  }

  dispose(): void {
    this.scale.dispose();
    this.shift.dispose();
  }
}

/** LPIPS's scaling layer: x' = (x − shift) / scale for x in [−1, 1] (docs/paper-to-code.md). */
export const LPIPS_SHIFT = [-0.030, -0.088, -0.188];
export const LPIPS_SCALE = [0.458, 0.448, 0.450];

export function lpipsScaling(): ChannelAffine {
  return new ChannelAffine(
    LPIPS_SCALE.map((s) => 1 / s),
    LPIPS_SHIFT.map((m, c) => -m / LPIPS_SCALE[c]),
  );
}

/** ImageNet normalisation of x in [−1, 1]: ((x + 1) / 2 − mean) / std (torchvision, timm, MoCo). */
export const IMAGENET_MEAN = [0.485, 0.456, 0.406];
export const IMAGENET_STD = [0.229, 0.224, 0.225];

export function imagenetScaling(): ChannelAffine {
  return new ChannelAffine(
    IMAGENET_STD.map((s) => 0.5 / s),
    IMAGENET_MEAN.map((m, c) => (0.5 - m) / IMAGENET_STD[c]),
  );
}
