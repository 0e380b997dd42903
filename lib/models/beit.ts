// BEiT's vision transformer (docs/paper-to-code.md; BEiT's modeling_pretrain.py and
// modeling_finetune.py) with BEiT's PyTorch parameter names, so its state dicts read like the
// original's:
//
//   cls_token, mask_token, pos_embed (absolute position embeddings only),
//   patch_embed.proj.{weight,bias}, rel_pos_bias.relative_position_bias_table (shared by blocks),
//   blocks.N.{norm1, attn.qkv.weight, attn.q_bias, attn.v_bias, attn.proj, gamma_1, gamma_2,
//   norm2, mlp.fc1, mlp.fc2}, norm, lm_head                       (Beit: masked image modelling)
//   … the same backbone without mask_token and norm, plus fc_norm, head    (BeitClassifier)
//
// Pre-norm blocks: x + drop_path(γ₁·attn(norm1(x))), then x + drop_path(γ₂·mlp(norm2(x))); the
// attention adds the shared relative position bias to its scores. A masked patch's embedding is
// replaced by the mask token before [CLS] is prepended (and before absolute positions are added).
// The relative position index is computed, not saved (BEiT saves it as a buffer; loading skips it).
//
// Initialisation as BEiT's pretraining model: Linear weights, the tokens and pos_embed
// trunc-normal(0.02) truncated at ±0.02 (its trunc_normal_ with a = −std, b = std), biases 0,
// LayerNorm 1/0, the patch projection with PyTorch's Conv2d default, the relative position table 0,
// layer scale γ = layerScaleInit, and each block's attn.proj / mlp.fc2 weights divided by
// √(2·layer_id) (layer_id = block index + 1). The classifier's head is trunc-normal(0.02) scaled by
// 0.001 (BEiT's init_scale), fc_norm 1/0.

import { join } from "node:path";
import { Module } from "../nn/module.ts";
import { Conv2d, LayerNorm, Linear } from "../nn/layers.ts";
import { Mlp } from "../nn/blocks.ts";
import { copyValues, keep, noGrad, type Tensor } from "../tensor/tensor.ts";
import { Rng, truncNormal } from "../tensor/init.ts";
import { full, tensor, zeros } from "../tensor/ops/creation.ts";
import { add, mul, mulScalar } from "../tensor/ops/elementwise.ts";
import { mean } from "../tensor/ops/reduce.ts";
import { selfAttention } from "../tensor/ops/attention.ts";
import { residualScaled } from "../tensor/ops/residual.ts";
import { linear } from "../tensor/ops/matmul.ts";
import { tokenEmbed } from "../tensor/ops/token_embed.ts";
import { dropPath } from "../tensor/ops/random.ts";
import { concat, embedding, gather, permute, reshape, slice } from "../tensor/ops/shape.ts";
import { readSafetensors, type TensorRecord } from "../io/safetensors.ts";

export interface BeitConfig {
  imageSize: number;
  patchSize: number;
  inChannels: number;
  dim: number;
  depth: number;
  heads: number;
  mlpRatio: number;
  /** Codebook size K: the MIM head's classes. */
  vocabSize: number;
  /** A relative position bias shared by all blocks; false = absolute position embeddings. */
  relPosBias: boolean;
  /** Layer scale γ initial value; 0 = no layer scale. */
  layerScaleInit: number;
  /** Stochastic depth rate of the last block (linear from 0 at the first). */
  dropPath: number;
  /** Learnable q and v biases (BEiT's q_bias, v_bias; k has none). */
  qkvBias: boolean;
}

export type BeitPresetName = "mnist" | "tiny" | "small" | "base";
export type BeitArchitecture = Omit<BeitConfig, "imageSize" | "inChannels" | "vocabSize">;

const BEIT_COMMON = {
  patchSize: 16,
  mlpRatio: 4,
  relPosBias: true,
  layerScaleInit: 0.1,
  dropPath: 0.1,
  qkvBias: true,
} as const;

/**
 * BEiT's sizes (patch 16) and one for the MNIST default: 28×28 images with patch 4 give the 7×7
 * grid of the mnist tokenizer; width 64, 4 blocks of 4 heads: a training step of 32 images costs
 * ~1.7 s of CPU on lavapipe (width 96: 3.3 s), so a few hundred steps fit in minutes.
 */
export const BEIT_PRESETS: Record<BeitPresetName, BeitArchitecture> = {
  mnist: {
    patchSize: 4,
    dim: 64,
    depth: 4,
    heads: 4,
    mlpRatio: 4,
    // Absolute positions: on 28² digits a patch's code depends strongly on where it is, and
    // a masked token learns its place from an embedding far sooner than from a relative bias
    // (held-out masked accuracy after 75 steps: 3.1% vs 0.5% with the bias, baseline 0.6%).
    relPosBias: false,
    layerScaleInit: 0.1,
    dropPath: 0,
    qkvBias: true,
  },
  tiny: { ...BEIT_COMMON, dim: 192, depth: 12, heads: 3 },
  small: { ...BEIT_COMMON, dim: 384, depth: 12, heads: 6 },
  base: { ...BEIT_COMMON, dim: 768, depth: 12, heads: 12 },
};

export const BEIT_PRESET_NAMES = Object.keys(BEIT_PRESETS) as BeitPresetName[];

/** Final and block LayerNorms use eps 1e-6, as BEiT. */
const LN_EPS = 1e-6;
const INIT_STD = 0.02;
/** BEiT fine-tuning's init_scale for the classifier head. */
const HEAD_INIT_SCALE = 0.001;

function configError(what: string): never {
  throw new Error(`peco: beit config: ${what}`);
}

/**
 * A complete config from a preset (default "base" when none is named) and explicit fields, which
 * win. Every field is checked; errors name the field and the rule.
 */
export function resolveBeitConfig(
  c: Partial<BeitConfig> & {
    preset?: BeitPresetName;
    imageSize: number;
    inChannels: number;
    vocabSize: number;
  },
): BeitConfig {
  const { preset, ...fields } = c;
  if (preset !== undefined && !(preset in BEIT_PRESETS)) {
    configError(`unknown preset "${preset}" (${BEIT_PRESET_NAMES.join(", ")})`);
  }
  const defined = Object.fromEntries(
    Object.entries(fields).filter(([, v]) => v !== undefined),
  ) as Partial<BeitConfig>;
  const config = { ...BEIT_PRESETS[preset ?? "base"], ...defined } as BeitConfig;
  const known = new Set([
    "imageSize",
    "patchSize",
    "inChannels",
    "dim",
    "depth",
    "heads",
    "mlpRatio",
    "vocabSize",
    "relPosBias",
    "layerScaleInit",
    "dropPath",
    "qkvBias",
  ]);
  for (const key of Object.keys(config)) if (!known.has(key)) configError(`unknown key "${key}"`);
  const positiveInt = (name: keyof BeitConfig) => {
    const v = config[name] as number;
    if (!Number.isInteger(v) || v < 1) configError(`${name} must be an integer ≥ 1, got ${v}`);
  };
  for (const name of ["imageSize", "patchSize", "dim", "depth", "heads", "vocabSize"] as const) {
    positiveInt(name);
  }
  if (config.inChannels !== 1 && config.inChannels !== 3) {
    configError(`inChannels must be 1 or 3, got ${config.inChannels}`);
  }
  if (config.imageSize % config.patchSize !== 0) {
    configError(
      `imageSize ${config.imageSize} is not a multiple of patchSize ${config.patchSize}`,
    );
  }
  if (config.dim % config.heads !== 0) {
    configError(`dim ${config.dim} is not divisible by heads ${config.heads}`);
  }
  const hidden = config.dim * config.mlpRatio;
  if (!(config.mlpRatio > 0) || !Number.isInteger(hidden)) {
    configError(
      `mlpRatio ${config.mlpRatio} must make an integer hidden width (dim ${config.dim})`,
    );
  }
  if (!(config.layerScaleInit >= 0)) {
    configError(`layerScaleInit must be ≥ 0 (0 = none), got ${config.layerScaleInit}`);
  }
  if (!(config.dropPath >= 0 && config.dropPath < 1)) {
    configError(`dropPath must be in [0, 1), got ${config.dropPath}`);
  }
  if (typeof config.relPosBias !== "boolean" || typeof config.qkvBias !== "boolean") {
    configError(`relPosBias and qkvBias must be booleans`);
  }
  return config;
}

// ---- initialisation helpers -----------------------------------------------------------------

/** Overwrites a parameter's values with those of `values` (same size; recorded in order). */
function assign(param: Tensor, values: Tensor): void {
  copyValues(param, values);
  values.dispose();
}

/** BEiT pretraining's trunc_normal_(std) (truncated at ±std), times `scale`. */
function beitNormal(shape: readonly number[], rng: Rng, scale = 1): Tensor {
  const t = truncNormal(shape, INIT_STD, rng, -INIT_STD, INIT_STD);
  if (scale === 1) return t;
  const scaled = noGrad(() => mulScalar(t, scale));
  t.dispose();
  return scaled;
}

/** BEiT's _init_weights for a Linear: trunc-normal weight (times `scale`), zero bias. */
function initLinear(l: Linear, rng: Rng, scale = 1): void {
  assign(l.weight, beitNormal(l.weight.shape, rng, scale));
  if (l.bias) assign(l.bias, zeros(l.bias.shape));
}

// ---- relative position bias -----------------------------------------------------------------

/**
 * Layer ids of a BEiT-named ViT with `numLayers` blocks (BEiT's get_num_layer_for_vit): cls/mask
 * tokens, pos_embed and patch_embed.* → 0; blocks.k.* → k+1; everything else (rel_pos_bias, norm,
 * head) → L+1.
 */
export function vitLayerId(numLayers: number): (name: string) => number {
  return (name) => {
    if (["cls_token", "mask_token", "pos_embed"].includes(name)) return 0;
    if (name.startsWith("patch_embed")) return 0;
    const block = /^blocks\.(\d+)\./.exec(name);
    if (block) return Number(block[1]) + 1;
    return numLayers + 1;
  };
}

/**
 * BEiT's relative_position_index for an h×w grid with [CLS]: [(T+1)·(T+1)] row-major, T = h·w.
 * Patch pairs index (Δrow + h − 1)·(2w − 1) + (Δcol + w − 1); cls→patch, patch→cls and cls→cls
 * take the table's last three entries R−3, R−2, R−1, R = (2h−1)(2w−1) + 3.
 */
export function relativePositionIndex(h: number, w: number): Int32Array {
  const t = h * w;
  const n = t + 1;
  const r = (2 * h - 1) * (2 * w - 1) + 3;
  const index = new Int32Array(n * n);
  for (let i = 0; i < t; i++) {
    for (let j = 0; j < t; j++) {
      const dr = Math.floor(i / w) - Math.floor(j / w) + h - 1;
      const dc = (i % w) - (j % w) + w - 1;
      index[(i + 1) * n + j + 1] = dr * (2 * w - 1) + dc;
    }
  }
  for (let j = 1; j < n; j++) index[j] = r - 3; // [CLS] attends to a patch
  for (let i = 1; i < n; i++) index[i * n] = r - 2; // a patch attends to [CLS]
  index[0] = r - 1;
  return index;
}

/** The relative position bias shared by every block: a table [R, heads], zero-initialised. */
export class RelativePositionBias extends Module {
  readonly table: Tensor;
  readonly #index: Tensor;

  constructor(readonly grid: [number, number], readonly heads: number) {
    super();
    const [h, w] = grid;
    const r = (2 * h - 1) * (2 * w - 1) + 3;
    this.table = this.param("relative_position_bias_table", zeros([r, heads]));
    const n = h * w + 1;
    this.#index = keep(tensor(relativePositionIndex(h, w), [n * n], "i32"));
  }

  /** The bias added to every block's attention scores: [heads, T+1, T+1]. */
  forward(): Tensor {
    const n = this.grid[0] * this.grid[1] + 1;
    const rows = reshape(embedding(this.table, this.#index), [n, n, this.heads]);
    return permute(rows, [2, 0, 1]);
  }

  override dispose(): void {
    super.dispose();
    this.#index.dispose();
  }
}

// ---- blocks ---------------------------------------------------------------------------------

class PatchEmbed extends Module {
  readonly proj: Conv2d;

  constructor(inChannels: number, patch: number, dim: number, rng: Rng) {
    super();
    this.proj = this.child("proj", new Conv2d(inChannels, dim, patch, rng, { stride: patch }));
  }

  /** [N, C, H, W] → tokens [N, T, dim] in row-major grid order. */
  forward(x: Tensor): Tensor {
    return permute(this.channelsFirst(x), [0, 2, 1]);
  }

  /** [N, C, H, W] → patch features [N, dim, T] (the convolution's own layout, no copy). */
  channelsFirst(x: Tensor): Tensor {
    const p = this.proj.forward(x);
    const [n, d, h, w] = p.shape;
    return reshape(p, [n, d, h * w]);
  }
}

/** Multi-head self-attention with BEiT's qkv (no bias) + q_bias and v_bias (k gets none). */
export class BeitAttention extends Module {
  readonly qkv: Linear;
  readonly qBias: Tensor | null;
  readonly vBias: Tensor | null;
  readonly proj: Linear;
  readonly headDim: number;
  readonly #kBias: Tensor | null;

  constructor(readonly dim: number, readonly heads: number, qkvBias: boolean, rng: Rng) {
    super();
    this.headDim = dim / heads;
    this.qkv = this.child("qkv", new Linear(dim, 3 * dim, rng.fork("qkv"), false));
    this.qBias = qkvBias ? this.param("q_bias", zeros([dim])) : null;
    this.vBias = qkvBias ? this.param("v_bias", zeros([dim])) : null;
    // k's bias: always zero, not a parameter (kept, so that no step fills it again).
    this.#kBias = qkvBias ? keep(zeros([dim])) : null;
    this.proj = this.child("proj", new Linear(dim, dim, rng.fork("proj")));
  }

  /** x [B, T, C]; `bias` broadcastable to [B, heads, T, T] (the relative position bias). */
  forward(x: Tensor, bias?: Tensor): Tensor {
    const [b, t, c] = x.shape;
    const qkvBias = this.qBias && this.vBias
      ? concat([this.qBias, this.#kBias!, this.vBias], 0)
      : null;
    // [B, T, 3·C] seen as [B, T, 3, heads, headDim]; the output [B, T, heads, headDim] as [B, T, C].
    const qkv = reshape(linear(x, this.qkv.weight, qkvBias), [b, t, 3, this.heads, this.headDim]);
    const out = selfAttention(qkv, { bias });
    return this.proj.forward(reshape(out, [b, t, c]));
  }

  override dispose(): void {
    super.dispose();
    this.#kBias?.dispose();
  }
}

export class BeitBlock extends Module {
  readonly norm1: LayerNorm;
  readonly attn: BeitAttention;
  readonly norm2: LayerNorm;
  readonly mlp: Mlp;
  readonly gamma1: Tensor | null;
  readonly gamma2: Tensor | null;

  constructor(config: BeitConfig, readonly dropRate: number, layerId: number, rng: Rng) {
    super();
    const { dim, heads, mlpRatio, qkvBias, layerScaleInit } = config;
    this.norm1 = this.child("norm1", new LayerNorm(dim, LN_EPS));
    this.attn = this.child("attn", new BeitAttention(dim, heads, qkvBias, rng.fork("attn")));
    this.norm2 = this.child("norm2", new LayerNorm(dim, LN_EPS));
    this.mlp = this.child("mlp", new Mlp(dim, dim * mlpRatio, rng.fork("mlp")));
    this.gamma1 = layerScaleInit > 0 ? this.param("gamma_1", full([dim], layerScaleInit)) : null;
    this.gamma2 = layerScaleInit > 0 ? this.param("gamma_2", full([dim], layerScaleInit)) : null;
    const rescale = 1 / Math.sqrt(2 * layerId);
    const init = rng.fork("init");
    initLinear(this.attn.qkv, init.fork("qkv"));
    initLinear(this.attn.proj, init.fork("proj"), rescale);
    initLinear(this.mlp.fc1, init.fork("fc1"));
    initLinear(this.mlp.fc2, init.fork("fc2"), rescale);
  }

  /** `seed`: drop-path seed of this step and block (used only in training with a rate > 0). */
  forward(x: Tensor, bias: Tensor | undefined, seed: number): Tensor {
    const dropping = this.training && this.dropRate > 0;
    // x + drop_path(h · gamma); without drop path, one fused op for the scale and the add.
    const residual = (x: Tensor, h: Tensor, gamma: Tensor | null, k: number) => {
      if (gamma && !dropping) return residualScaled(x, h, gamma);
      const scaled = gamma ? mul(h, gamma) : h;
      return add(x, dropping ? dropPath(scaled, this.dropRate, (seed + k) >>> 0) : scaled);
    };
    const h = residual(x, this.attn.forward(this.norm1.forward(x), bias), this.gamma1, 0);
    return residual(h, this.mlp.forward(this.norm2.forward(h)), this.gamma2, 1);
  }
}

// ---- the backbone ---------------------------------------------------------------------------

export interface FeatureOptions {
  /** Also return every block's output (before the final norm). */
  allBlocks?: boolean;
}

/** What Beit and BeitClassifier share: embeddings, position information and the blocks. */
export class BeitBackbone extends Module {
  readonly clsToken: Tensor;
  readonly maskToken: Tensor | null;
  readonly posEmbed: Tensor | null;
  readonly patchEmbed: PatchEmbed;
  readonly relPosBias: RelativePositionBias | null;
  readonly blocks: BeitBlock[];
  /**
   * Seed of the drop-path draws of the next forward pass: set it per training step (e.g. from the
   * run's seed and the step) so a resumed run drops what the uninterrupted one did.
   */
  dropSeed = 0;

  constructor(readonly config: BeitConfig, seed: number, { maskToken }: { maskToken: boolean }) {
    super();
    const c = resolveBeitConfig(config);
    this.config = c;
    const rng = new Rng(seed);
    const [h, w] = [c.imageSize / c.patchSize, c.imageSize / c.patchSize];
    const tokens = h * w;
    this.clsToken = this.param("cls_token", beitNormal([1, 1, c.dim], rng.fork("cls_token")));
    this.maskToken = maskToken
      ? this.param("mask_token", beitNormal([1, 1, c.dim], rng.fork("mask_token")))
      : null;
    this.posEmbed = c.relPosBias
      ? null
      : this.param("pos_embed", beitNormal([1, 1 + tokens, c.dim], rng.fork("pos_embed")));
    this.patchEmbed = this.child(
      "patch_embed",
      new PatchEmbed(c.inChannels, c.patchSize, c.dim, rng.fork("patch_embed")),
    );
    this.relPosBias = c.relPosBias
      ? this.child("rel_pos_bias", new RelativePositionBias([h, w], c.heads))
      : null;
    this.blocks = [];
    for (let i = 0; i < c.depth; i++) {
      const rate = c.depth > 1 ? (c.dropPath * i) / (c.depth - 1) : 0;
      this.blocks.push(new BeitBlock(c, rate, i + 1, rng.fork(`blocks.${i}`)));
    }
    this.child("blocks", this.blocks);
  }

  /** The patch grid (rows, columns). */
  get grid(): [number, number] {
    const g = this.config.imageSize / this.config.patchSize;
    return [g, g];
  }

  /** Patches per image. */
  get numPatches(): number {
    const [h, w] = this.grid;
    return h * w;
  }

  protected checkInput(op: string, x: Tensor, mask: Tensor | null): void {
    const { inChannels: c, imageSize: s } = this.config;
    if (
      x.dtype !== "f32" || x.rank !== 4 || x.shape[1] !== c || x.shape[2] !== s || x.shape[3] !== s
    ) {
      throw new Error(`peco: ${op}: images must be f32 [N, ${c}, ${s}, ${s}], got ${x.describe()}`);
    }
    if (mask) {
      const t = this.numPatches;
      if (
        mask.dtype !== "f32" || mask.rank !== 2 || mask.shape[0] !== x.shape[0] ||
        mask.shape[1] !== t
      ) {
        throw new Error(
          `peco: ${op}: mask must be f32 [${x.shape[0]}, ${t}] for images ${x.describe()}, ` +
            `got ${mask.describe()}`,
        );
      }
      if (!this.maskToken) throw new Error(`peco: ${op}: this model has no mask token`);
    }
  }

  /** Embeddings → blocks: the last block's output [N, 1+T, D] and, if asked, every block's. */
  protected encode(x: Tensor, mask: Tensor | null, allBlocks: boolean) {
    // [CLS], then the patches (BEiT: x·(1 − w) + mask_token·w with w = mask per patch), plus the
    // position embeddings, in one op.
    let h = tokenEmbed(
      this.patchEmbed.channelsFirst(x),
      this.clsToken,
      this.posEmbed,
      mask ? { mask, token: this.maskToken! } : null,
    );
    const bias = this.relPosBias?.forward();
    const blocks: Tensor[] = [];
    this.blocks.forEach((block, i) => {
      h = block.forward(h, bias, (this.dropSeed + 2 * i) >>> 0);
      if (allBlocks) blocks.push(h);
    });
    return { last: h, blocks: allBlocks ? blocks : undefined };
  }

  /** Layer id for layer-wise lr decay: 0 embeddings, k+1 block k, depth+1 the rest (head). */
  layerId(name: string): number {
    return vitLayerId(this.config.depth)(name);
  }
}

// ---- masked image modelling -----------------------------------------------------------------

export class Beit extends BeitBackbone {
  readonly norm: LayerNorm;
  readonly lmHead: Linear | null;

  constructor(config: BeitConfig, seed: number, head: "mim" | "none" = "mim") {
    super(config, seed, { maskToken: true });
    const rng = new Rng(seed).fork("heads");
    this.norm = this.child("norm", new LayerNorm(this.config.dim, LN_EPS));
    this.lmHead = head === "mim"
      ? this.child("lm_head", new Linear(this.config.dim, this.config.vocabSize, rng.fork("lm")))
      : null;
    if (this.lmHead) initLinear(this.lmHead, rng.fork("lm_head init"));
  }

  /**
   * Token features: x [N, C, H, W] normalised; mask f32 [N, T] (1 = masked → mask token) or null.
   * tokens: [N, 1+T, D] after the final norm; blocks: each block's [N, 1+T, D] before it.
   */
  features(
    x: Tensor,
    mask: Tensor | null,
    opts: FeatureOptions = {},
  ): { tokens: Tensor; blocks?: Tensor[] } {
    this.checkInput("Beit.features", x, mask);
    const { last, blocks } = this.encode(x, mask, opts.allBlocks ?? false);
    return { tokens: this.norm.forward(last), blocks };
  }

  /**
   * MIM logits at the masked positions: maskedIndex i32 [M] indexes rows of the flattened [N·T]
   * patch tokens ([CLS] excluded) → [M, K].
   */
  mimLogits(x: Tensor, mask: Tensor, maskedIndex: Tensor): Tensor {
    if (!this.lmHead) throw new Error("peco: Beit.mimLogits: this model has no lm_head");
    if (maskedIndex.dtype !== "i32" || maskedIndex.rank !== 1) {
      throw new Error(
        `peco: Beit.mimLogits: maskedIndex must be i32 [M], got ${maskedIndex.describe()}`,
      );
    }
    const { tokens } = this.features(x, mask);
    const [n, , d] = tokens.shape;
    const patches = reshape(slice(tokens, 1, 1, tokens.shape[1]), [n * this.numPatches, d]);
    return this.lmHead.forward(gather(patches, maskedIndex, 0));
  }
}

// ---- fine-tuning ----------------------------------------------------------------------------

/** Tensors of a pretrain checkpoint/export that the classifier does not use. */
const NOT_BACKBONE = /^(lm_head\.|mask_token$|norm\.|rel_pos_bias\.relative_position_index$)/;

export class BeitClassifier extends BeitBackbone {
  readonly fcNorm: LayerNorm;
  readonly head: Linear;

  constructor(config: BeitConfig, readonly numClasses: number, seed: number) {
    super(config, seed, { maskToken: false });
    if (!Number.isInteger(numClasses) || numClasses < 1) {
      throw new Error(`peco: BeitClassifier: numClasses must be an integer ≥ 1, got ${numClasses}`);
    }
    const rng = new Rng(seed).fork("classifier");
    this.fcNorm = this.child("fc_norm", new LayerNorm(this.config.dim, LN_EPS));
    this.head = this.child("head", new Linear(this.config.dim, numClasses, rng.fork("head")));
    initLinear(this.head, rng.fork("head init"), HEAD_INIT_SCALE);
  }

  /** x [N, C, H, W] normalised → logits [N, numClasses] (mean of patch tokens → fc_norm → head). */
  forward(x: Tensor): Tensor {
    this.checkInput("BeitClassifier.forward", x, null);
    const { last } = this.encode(x, null, false);
    const pooled = mean(slice(last, 1, 1, last.shape[1]), 1);
    return this.head.forward(this.fcNorm.forward(pooled));
  }

  /**
   * Loads the backbone from a pretrain checkpoint (names under "model.") or a model export
   * (plain BEiT names). lm_head, mask_token and the final norm are skipped; every backbone tensor
   * must be present with its shape (errors name the file and the tensors).
   */
  async loadPretrained(path: string): Promise<{ loaded: string[]; skipped: string[] }> {
    const { tensors } = await readSafetensors(path);
    const fromCheckpoint = [...tensors.keys()].some((k) => k.startsWith("model."));
    const entries = new Map<string, TensorRecord>();
    const skipped: string[] = [];
    for (const [name, r] of tensors) {
      if (fromCheckpoint && !name.startsWith("model.")) continue; // optimizer state
      const key = fromCheckpoint ? name.slice("model.".length) : name;
      if (NOT_BACKBONE.test(key)) skipped.push(key);
      else entries.set(key, r);
    }
    const own = [...this.stateDict().keys()].filter((k) => !/^(fc_norm|head)\./.test(k));
    const missing = own.filter((k) => !entries.has(k));
    const unexpected = [...entries.keys()].filter((k) => !own.includes(k));
    if (missing.length || unexpected.length) {
      const list = (xs: string[]) => xs.slice(0, 6).join(", ") + (xs.length > 6 ? ", …" : "");
      throw new Error(
        `peco: BeitClassifier.loadPretrained ${path}: ` +
          [
            missing.length ? `${missing.length} backbone tensors missing (${list(missing)})` : "",
            unexpected.length ? `${unexpected.length} unexpected (${list(unexpected)})` : "",
          ].filter(Boolean).join(", ") +
          " — is it a BEiT of this config?",
      );
    }
    this.loadStateDict(entries, { strict: false, source: path });
    return { loaded: own, skipped };
  }
}

// ---- model files ----------------------------------------------------------------------------

/** The metadata key of a model export holding {config, image} as JSON. */
export const BEIT_META_KEY = "peco.beit";
export const BEIT_MODEL_FILE = "model.safetensors";

/** How the ViT's input images are made: (x/255 − mean)/std at `size`×`size`. */
export interface BeitImageSpec {
  channels: number;
  size: number;
  mean: number[];
  std: number[];
}

export interface BeitFileMeta {
  config: BeitConfig;
  image: BeitImageSpec;
}

/** Writes a model's weights with BEiT names (atomic) and its config + image spec as metadata. */
export async function saveBeit(
  model: BeitBackbone,
  path: string,
  image: BeitImageSpec,
  extra: Record<string, string> = {},
): Promise<void> {
  const meta: BeitFileMeta = { config: model.config, image };
  await model.saveSafetensors(path, { ...extra, [BEIT_META_KEY]: JSON.stringify(meta) });
}

/** Reads the config and image spec of a model export (a file, or a folder holding model.safetensors). */
export async function readBeitMeta(path: string): Promise<BeitFileMeta> {
  let file = path;
  try {
    if ((await Deno.stat(path)).isDirectory) file = join(path, BEIT_MODEL_FILE);
  } catch {
    // Reported by the read below.
  }
  const { metadata } = await readSafetensors(file);
  const text = metadata[BEIT_META_KEY];
  if (text === undefined) throw new Error(`peco: beit: ${file} has no "${BEIT_META_KEY}" metadata`);
  let meta: BeitFileMeta;
  try {
    meta = JSON.parse(text);
  } catch (error) {
    throw new Error(`peco: beit: ${file}: metadata is not JSON (${(error as Error).message})`);
  }
  return { config: resolveBeitConfig(meta.config), image: meta.image };
}
