// ResNet-50 with torchvision's names (conv1, bn1, layer1.0.conv1 … layer4.2.bn3, downsample.0/1;
// bottlenecks with the stride on conv2, "v1.5"), BatchNorm in eval mode with its running
// statistics, ImageNet input normalisation, and the output of each of the four stages as features.
// The classifier `fc` is not built (its weights are ignored when loading).

import { Module } from "../../nn/module.ts";
import { BatchNorm2d, Conv2d } from "../../nn/layers.ts";
import { Rng } from "../../tensor/init.ts";
import { add, relu } from "../../tensor/ops/elementwise.ts";
import { maxPool2d } from "../../tensor/ops/pool.ts";
import type { Tensor } from "../../tensor/tensor.ts";
import { type ChannelAffine, checkImages, imagenetScaling, type PerceptualNet } from "./net.ts";

export interface ResNet50Config {
  /** Channels of the stem and bottleneck width of stage 1 (64); stage k has width·2^(k−1). */
  width: number;
  /** Bottlenecks per stage (ResNet-50: 3, 4, 6, 3). */
  blocks: number[];
}

export const RESNET50_DEFAULT: ResNet50Config = { width: 64, blocks: [3, 4, 6, 3] };
const EXPANSION = 4;

/** Convolution without bias + BatchNorm, torchvision's pairing. */
function conv(cin: number, cout: number, k: number, rng: Rng, stride = 1): Conv2d {
  return new Conv2d(cin, cout, k, rng, { stride, padding: (k - 1) / 2, bias: false });
}

/** Sequential(conv1×1 at stride, BatchNorm): named downsample.0 and downsample.1. */
class Downsample extends Module {
  readonly conv: Conv2d;
  readonly bn: BatchNorm2d;

  constructor(cin: number, cout: number, stride: number, rng: Rng) {
    super();
    this.conv = this.child("0", conv(cin, cout, 1, rng, stride));
    this.bn = this.child("1", new BatchNorm2d(cout));
  }

  forward(x: Tensor): Tensor {
    return this.bn.forward(this.conv.forward(x));
  }
}

class Bottleneck extends Module {
  readonly conv1: Conv2d;
  readonly bn1: BatchNorm2d;
  readonly conv2: Conv2d;
  readonly bn2: BatchNorm2d;
  readonly conv3: Conv2d;
  readonly bn3: BatchNorm2d;
  readonly downsample: Downsample | null;

  constructor(cin: number, width: number, stride: number, rng: Rng) {
    super();
    const cout = width * EXPANSION;
    this.conv1 = this.child("conv1", conv(cin, width, 1, rng.fork("conv1")));
    this.bn1 = this.child("bn1", new BatchNorm2d(width));
    this.conv2 = this.child("conv2", conv(width, width, 3, rng.fork("conv2"), stride));
    this.bn2 = this.child("bn2", new BatchNorm2d(width));
    this.conv3 = this.child("conv3", conv(width, cout, 1, rng.fork("conv3")));
    this.bn3 = this.child("bn3", new BatchNorm2d(cout));
    this.downsample = stride !== 1 || cin !== cout
      ? this.child("downsample", new Downsample(cin, cout, stride, rng.fork("downsample")))
      : null;
  }

  forward(x: Tensor): Tensor {
    let h = relu(this.bn1.forward(this.conv1.forward(x)));
    h = relu(this.bn2.forward(this.conv2.forward(h)));
    h = this.bn3.forward(this.conv3.forward(h));
    return relu(add(h, this.downsample ? this.downsample.forward(x) : x));
  }
}

export class ResNet50 extends Module implements PerceptualNet {
  readonly kind = "resnet50";
  readonly conv1: Conv2d;
  readonly bn1: BatchNorm2d;
  readonly stages: Bottleneck[][] = [];
  readonly #scaling: ChannelAffine;

  constructor(readonly config: ResNet50Config = RESNET50_DEFAULT, rng = new Rng(0)) {
    super();
    const { width, blocks } = config;
    if (blocks.length !== 4 || blocks.some((b) => !Number.isInteger(b) || b < 1)) {
      throw new Error(`peco: resnet50: blocks must be 4 positive counts, got [${blocks}]`);
    }
    this.conv1 = this.child(
      "conv1",
      new Conv2d(3, width, 7, rng.fork("conv1"), { stride: 2, padding: 3, bias: false }),
    );
    this.bn1 = this.child("bn1", new BatchNorm2d(width));
    let cin = width;
    blocks.forEach((count, s) => {
      const w = width * 2 ** s;
      const layer: Bottleneck[] = [];
      for (let b = 0; b < count; b++) {
        const stride = s > 0 && b === 0 ? 2 : 1;
        layer.push(new Bottleneck(cin, w, stride, rng.fork(`layer${s + 1}.${b}`)));
        cin = w * EXPANSION;
      }
      this.child(`layer${s + 1}`, layer);
      this.stages.push(layer);
    });
    this.#scaling = imagenetScaling();
  }

  /** Any size: padded convolutions and pools keep every stage at least 1×1. */
  checkInputSize(h: number, w: number): void {
    if (!(h >= 1 && w >= 1)) throw new Error(`peco: resnet50: ${h}×${w} images are empty`);
  }

  /** x [N, 3, H, W] in [−1, 1] → the outputs of layer1 … layer4 (at H/4 … H/32). */
  features(x: Tensor): Tensor[] {
    checkImages(this.kind, x);
    let h = relu(this.bn1.forward(this.conv1.forward(this.#scaling.apply(x))));
    h = maxPool2d(h, 3, 2, 1);
    const taps: Tensor[] = [];
    for (const layer of this.stages) {
      for (const block of layer) h = block.forward(h);
      taps.push(h);
    }
    return taps;
  }

  override dispose(): void {
    super.dispose();
    this.#scaling.dispose();
  }
}
