// VGG16 as LPIPS uses it: torchvision's `features` stack (state-dict names features.N.weight/bias,
// N the index in torchvision's nn.Sequential of conv / ReLU / max-pool layers), LPIPS's input
// scaling layer, and the five taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3. The classifier is
// not built (its weights are ignored when loading).

import { Module } from "../../nn/module.ts";
import { Conv2d } from "../../nn/layers.ts";
import { Rng } from "../../tensor/init.ts";
import { relu } from "../../tensor/ops/elementwise.ts";
import { maxPool2d } from "../../tensor/ops/pool.ts";
import type { Tensor } from "../../tensor/tensor.ts";
import { type ChannelAffine, checkImages, lpipsScaling, type PerceptualNet } from "./net.ts";

export interface Vgg16Config {
  /** Output channels of the five stages (VGG16: 64, 128, 256, 512, 512). */
  widths: number[];
}

export const VGG16_DEFAULT: Vgg16Config = { widths: [64, 128, 256, 512, 512] };
/** 3×3 convolutions per stage; a 2×2 max-pool sits between stages. */
const CONVS = [2, 2, 3, 3, 3];
/** The smallest input side: four 2× max-pools before relu5_3 leave it at least 1 pixel. */
export const VGG16_MIN_SIZE = 16;

export const VGG16_TAPS = ["relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3"];

/** torchvision's `features` Sequential; only the convolutions hold weights. */
class VggFeatures extends Module {
  /** Per stage, its convolutions (registered under their torchvision index). */
  readonly stages: Conv2d[][] = [];

  constructor(widths: number[], rng: Rng) {
    super();
    let index = 0;
    let channels = 3;
    widths.forEach((width, s) => {
      if (s > 0) index++; // the max-pool before this stage
      const convs: Conv2d[] = [];
      for (let k = 0; k < CONVS[s]; k++) {
        const conv = new Conv2d(channels, width, 3, rng.fork(`${index}`), { padding: 1 });
        convs.push(this.child(String(index), conv));
        index += 2; // conv, ReLU
        channels = width;
      }
      this.stages.push(convs);
    });
  }
}

export class Vgg16 extends Module implements PerceptualNet {
  readonly kind = "vgg16";
  readonly stack: VggFeatures;
  readonly #scaling: ChannelAffine;

  constructor(readonly config: Vgg16Config = VGG16_DEFAULT, rng = new Rng(0)) {
    super();
    if (config.widths.length !== CONVS.length) {
      throw new Error(
        `peco: vgg16: widths must list ${CONVS.length} stages, got [${config.widths}]`,
      );
    }
    this.stack = this.child("features", new VggFeatures(config.widths, rng));
    this.#scaling = lpipsScaling();
  }

  /** Four 2×2 max-pools: sides of at least VGG16_MIN_SIZE pixels. */
  checkInputSize(h: number, w: number): void {
    if (!(h >= VGG16_MIN_SIZE && w >= VGG16_MIN_SIZE)) {
      throw new Error(
        `peco: vgg16: ${h}×${w} images are too small (sides of ${VGG16_MIN_SIZE} or more)`,
      );
    }
  }

  /** x [N, 3, H, W] in [−1, 1] (H, W ≥ 16) → relu1_2 … relu5_3. */
  features(x: Tensor): Tensor[] {
    checkImages(this.kind, x, VGG16_MIN_SIZE);
    let h = this.#scaling.apply(x);
    const taps: Tensor[] = [];
    this.stack.stages.forEach((convs, s) => {
      if (s > 0) h = maxPool2d(h, 2, 2);
      for (const conv of convs) h = relu(conv.forward(h));
      taps.push(h);
    });
    return taps;
  }

  override dispose(): void {
    super.dispose();
    this.#scaling.dispose();
  }
}
