// ViT-B/16 with timm / MoCo v3 names (patch_embed.proj, cls_token, pos_embed, blocks.N.norm1,
// attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2, norm), pre-norm blocks with LayerNorm eps 1e-6,
// ImageNet input normalisation; features = the patch tokens (cls dropped) after the tapped blocks
// (ViT-B: 3, 6, 9, 12), laid out on the patch grid as [N, dim, H/p, W/p]. The classifier `head`
// (or MoCo's projection head) is not built: its weights are ignored when loading.
//
// Any input whose sides are multiples of the patch runs: at another grid than the checkpoint's
// (224² → 14×14), the patch positions' embeddings are resampled bicubically as timm does, the class
// token's kept (pos_embed.ts).

import { Module } from "../../nn/module.ts";
import { Conv2d, LayerNorm } from "../../nn/layers.ts";
import { Mlp, SelfAttention } from "../../nn/blocks.ts";
import { Rng } from "../../tensor/init.ts";
import { zeros } from "../../tensor/ops/creation.ts";
import { add, broadcastTo } from "../../tensor/ops/elementwise.ts";
import { matmul } from "../../tensor/ops/matmul.ts";
import { concat, permute, reshape, slice } from "../../tensor/ops/shape.ts";
import { tensor } from "../../tensor/ops/creation.ts";
import { keep, type Tensor } from "../../tensor/tensor.ts";
import { gridResizeMatrix } from "./pos_embed.ts";
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
  /** Resampling matrices of the patch positions, per input grid "h×w" (kept, built once). */
  readonly #resize = new Map<string, Tensor>();

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

  /** Throws unless H×W images fit: both sides multiples of the patch. */
  checkInputSize(h: number, w: number): void {
    const p = this.config.patchSize;
    if (!(h >= p && w >= p && h % p === 0 && w % p === 0)) {
      throw new Error(
        `peco: vit-b: ${h}×${w} images do not split into ${p}×${p} patches (sides must be ` +
          `multiples of ${p})`,
      );
    }
  }

  /**
   * The position embedding [1, 1 + gh·gw, dim] for a gh×gw patch grid: the checkpoint's own at its
   * grid, else its patch part resampled (bicubic, antialiased, as timm) with the class token's kept.
   */
  positionEmbedding(gh: number, gw: number): Tensor {
    const g = this.grid;
    if (gh === g && gw === g) return this.posEmbed;
    const key = `${gh}×${gw}`;
    let m = this.#resize.get(key);
    if (!m) {
      m = keep(tensor(gridResizeMatrix([g, g], [gh, gw]), [gh * gw, g * g]));
      this.#resize.set(key, m);
    }
    const dim = this.config.dim;
    const patches = reshape(slice(this.posEmbed, 1, 1, 1 + g * g), [g * g, dim]);
    const resized = reshape(matmul(m, patches), [1, gh * gw, dim]);
    return concat([slice(this.posEmbed, 1, 0, 1), resized], 1);
  }

  /** x [N, 3, H, W] in [−1, 1], H and W multiples of the patch → [N, dim, H/p, W/p] per tap. */
  features(x: Tensor): Tensor[] {
    const [n, h, w] = checkImages(this.kind, x);
    this.checkInputSize(h, w);
    const { patchSize: p, dim, taps } = this.config;
    const [gh, gw] = [h / p, w / p];
    const patches = this.patchEmbed.proj.forward(this.#scaling.apply(x)); // [N, dim, gh, gw]
    const tokens = permute(reshape(patches, [n, dim, gh * gw]), [0, 2, 1]);
    const cls = broadcastTo(this.clsToken, [n, 1, dim]);
    let t = add(concat([cls, tokens], 1), this.positionEmbedding(gh, gw));
    const out: Tensor[] = [];
    const last = Math.max(...taps);
    for (let i = 0; i < last; i++) {
      t = this.blocks[i].forward(t);
      if (taps.includes(i + 1)) {
        const grid = permute(slice(t, 1, 1, 1 + gh * gw), [0, 2, 1]);
        out.push(reshape(grid, [n, dim, gh, gw]));
      }
    }
    return out;
  }

  override dispose(): void {
    super.dispose();
    this.#scaling.dispose();
    this.#resize.forEach((m) => m.dispose());
    this.#resize.clear();
  }
}
