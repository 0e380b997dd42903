// ViT-B/16 with timm / MoCo v3 names (patch_embed.proj, cls_token, pos_embed, blocks.N.norm1,
// attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2, norm), pre-norm blocks with LayerNorm eps 1e-6,
// ImageNet input normalisation; features = the patch tokens (cls dropped) after the tapped blocks
// (ViT-B: 3, 6, 9, 12), laid out on the patch grid as [N, dim, H/p, W/p]. The classifier `head`
// (or MoCo's projection head) is not built: its weights are ignored when loading.

import { Module } from "../../nn/module.ts";
import { Conv2d, LayerNorm } from "../../nn/layers.ts";
import { Mlp, SelfAttention } from "../../nn/blocks.ts";
import { Rng } from "../../tensor/init.ts";
import { zeros } from "../../tensor/ops/creation.ts";
import { add, broadcastTo } from "../../tensor/ops/elementwise.ts";
import { concat, permute, reshape, slice } from "../../tensor/ops/shape.ts";
import type { Tensor } from "../../tensor/tensor.ts";
import { type ChannelAffine, checkImages, imagenetScaling, type PerceptualNet } from "./net.ts";

export interface VitConfig {
  /** Input side the position embedding is made for (224). */
  imageSize: number;
  patchSize: number;
  dim: number;
  depth: number;
  heads: number;
  mlpRatio: number;
  /** 1-based indices of the blocks whose outputs are the features (ViT-B: 3, 6, 9, 12). */
  taps: number[];
}

export const VIT_B_DEFAULT: VitConfig = {
  imageSize: 224,
  patchSize: 16,
  dim: 768,
  depth: 12,
  heads: 12,
  mlpRatio: 4,
  taps: [3, 6, 9, 12],
};

const LN_EPS = 1e-6;

class PatchEmbed extends Module {
  readonly proj: Conv2d;

  constructor(patch: number, dim: number, rng: Rng) {
    super();
    this.proj = this.child("proj", new Conv2d(3, dim, patch, rng, { stride: patch }));
  }
}

/** x + attn(norm1(x)), then x + mlp(norm2(x)). */
class Block extends Module {
  readonly norm1: LayerNorm;
  readonly attn: SelfAttention;
  readonly norm2: LayerNorm;
  readonly mlp: Mlp;

  constructor(dim: number, heads: number, mlpRatio: number, rng: Rng) {
    super();
    this.norm1 = this.child("norm1", new LayerNorm(dim, LN_EPS));
    this.attn = this.child("attn", new SelfAttention(dim, heads, rng.fork("attn")));
    this.norm2 = this.child("norm2", new LayerNorm(dim, LN_EPS));
    this.mlp = this.child("mlp", new Mlp(dim, dim * mlpRatio, rng.fork("mlp")));
  }

  forward(x: Tensor): Tensor {
    const h = add(x, this.attn.forward(this.norm1.forward(x)));
    return add(h, this.mlp.forward(this.norm2.forward(h)));
  }
}

export class VitB extends Module implements PerceptualNet {
  readonly kind = "vit-b";
  readonly grid: number;
  readonly clsToken: Tensor;
  readonly posEmbed: Tensor;
  readonly patchEmbed: PatchEmbed;
  readonly blocks: Block[];
  readonly norm: LayerNorm;
  readonly #scaling: ChannelAffine;

  constructor(readonly config: VitConfig = VIT_B_DEFAULT, rng = new Rng(0)) {
    super();
    const { imageSize, patchSize, dim, depth, heads, mlpRatio, taps } = config;
    if (imageSize % patchSize !== 0) {
      throw new Error(
        `peco: vit-b: image size ${imageSize} is not a multiple of patch ${patchSize}`,
      );
    }
    if (!taps.length || taps.some((t) => !Number.isInteger(t) || t < 1 || t > depth)) {
      throw new Error(`peco: vit-b: taps [${taps}] must be block numbers in 1..${depth}`);
    }
    this.grid = imageSize / patchSize;
    this.clsToken = this.param("cls_token", zeros([1, 1, dim]));
    this.posEmbed = this.param("pos_embed", zeros([1, 1 + this.grid ** 2, dim]));
    this.patchEmbed = this.child("patch_embed", new PatchEmbed(patchSize, dim, rng.fork("patch")));
    this.blocks = [];
    for (let i = 0; i < depth; i++) {
      this.blocks.push(new Block(dim, heads, mlpRatio, rng.fork(`blocks.${i}`)));
    }
    this.child("blocks", this.blocks);
    // Loaded with the checkpoint; the features are taken before it.
    this.norm = this.child("norm", new LayerNorm(dim, LN_EPS));
    this.#scaling = imagenetScaling();
  }

  /** x [N, 3, S, S] in [−1, 1], S = config.imageSize → [N, dim, S/p, S/p] per tapped block. */
  features(x: Tensor): Tensor[] {
    const [n, h, w] = checkImages(this.kind, x);
    const { imageSize, dim, taps } = this.config;
    if (h !== imageSize || w !== imageSize) {
      throw new Error(
        `peco: vit-b: input ${x.describe()} must be ${imageSize}×${imageSize}, the size its ` +
          `position embedding holds`,
      );
    }
    const g = this.grid;
    const patches = this.patchEmbed.proj.forward(this.#scaling.apply(x)); // [N, dim, g, g]
    const tokens = permute(reshape(patches, [n, dim, g * g]), [0, 2, 1]);
    const cls = broadcastTo(this.clsToken, [n, 1, dim]);
    let t = add(concat([cls, tokens], 1), this.posEmbed);
    const out: Tensor[] = [];
    const last = Math.max(...taps);
    for (let i = 0; i < last; i++) {
      t = this.blocks[i].forward(t);
      if (taps.includes(i + 1)) {
        const grid = permute(slice(t, 1, 1, 1 + g * g), [0, 2, 1]);
        out.push(reshape(grid, [n, dim, g, g]));
      }
    }
    return out;
  }

  override dispose(): void {
    super.dispose();
    this.#scaling.dispose();
  }
}
