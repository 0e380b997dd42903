// The tokenizer's VQ-VAE: taming-transformers' Encoder/Decoder (diffusionmodules/model.py) with
// its parameter names, so taming checkpoints map onto ours name for name:
//   encoder.conv_in, encoder.down.{i}.block.{j}, encoder.down.{i}.attn.{j},
//   encoder.down.{i}.downsample.conv, encoder.mid.{block_1, attn_1, block_2}, encoder.norm_out,
//   encoder.conv_out; decoder.conv_in, decoder.mid.*, decoder.up.{i}.block.{j} (numResBlocks + 1
//   per level), decoder.up.{i}.upsample.conv, decoder.norm_out, decoder.conv_out;
//   quant_conv, post_quant_conv (1×1 to / from the code dimension) and quantize.* (quantizer.ts).
// Level i works at resolution imageSize / 2^i; the encoder halves it after every level but the
// last, so the downsample factor is 2^(levels − 1).

import { Module, type ModuleList } from "../nn/module.ts";
import { Conv2d } from "../nn/layers.ts";
import type { GroupNorm } from "../nn/layers.ts";
import { ConvAttnBlock, normalize, ResnetBlock } from "../nn/blocks.ts";
import { Rng } from "../tensor/init.ts";
import { upsampleNearest2d } from "../tensor/ops/conv.ts";
import type { Tensor } from "../tensor/tensor.ts";
import {
  type QuantizerConfig,
  type QuantizerOutput,
  resolveQuantizerConfig,
  VectorQuantizer,
} from "./quantizer.ts";

export interface VqVaeConfig {
  /** Side of the (square) training images; must be divisible by the downsample factor. */
  imageSize: number;
  inChannels?: number;
  /** Channels of the reconstruction (default: inChannels). */
  outChannels?: number;
  /** Base width: level i has channels · channelMult[i]. */
  channels?: number;
  /** One entry per level; downsample factor = 2^(length − 1): 3 → 4×, 4 → 8×, 5 → 16×. */
  channelMult?: number[];
  /** Residual blocks per encoder level (the decoder has one more, as in taming). */
  numResBlocks?: number;
  /** Resolutions whose levels add an attention block after each residual block (taming's
   * attn_resolutions); the middle blocks at the lowest resolution always have one. */
  attnResolutions?: number[];
  /** GroupNorm groups (32 at full width; a width below it uses one group per channel). */
  groups?: number;
  /** Encoder output / decoder input channels (taming's z_channels; default: codeDim). */
  zChannels?: number;
  /** D: code dimension (taming's embed_dim). */
  codeDim?: number;
  /** K: codebook size. */
  codebookSize?: number;
  /** Quantizer options (kind, β, decay, ε, init, dead-code restart, seed). */
  quantizer?: Omit<QuantizerConfig, "codebookSize" | "codeDim">;
}

export type ResolvedVqVaeConfig = Required<VqVaeConfig>;

/** Paper-scale defaults: 224² → 14×14 tokens (16×), width 64 doubling per level up to 512. */
export const VQVAE_DEFAULTS = {
  inChannels: 3,
  channels: 64,
  channelMult: [1, 2, 4, 8, 8],
  numResBlocks: 2,
  attnResolutions: [] as number[],
  groups: 32,
  codeDim: 256,
  codebookSize: 8192,
  quantizer: {},
} as const;

/** 2^(levels − 1). */
export function downsampleFactor(config: Pick<VqVaeConfig, "channelMult">): number {
  return 2 ** ((config.channelMult ?? VQVAE_DEFAULTS.channelMult).length - 1);
}

/** Fills in the defaults and validates; one error lists every problem. */
export function resolveVqVaeConfig(config: VqVaeConfig): ResolvedVqVaeConfig {
  const codeDim = config.codeDim ?? VQVAE_DEFAULTS.codeDim;
  const inChannels = config.inChannels ?? VQVAE_DEFAULTS.inChannels;
  const c: ResolvedVqVaeConfig = {
    ...VQVAE_DEFAULTS,
    outChannels: inChannels,
    zChannels: codeDim,
    ...config,
    channelMult: [...(config.channelMult ?? VQVAE_DEFAULTS.channelMult)],
    attnResolutions: [...(config.attnResolutions ?? [])],
    quantizer: { ...(config.quantizer ?? {}) },
  };
  const problems: string[] = [];
  const positive = (name: string, v: unknown) => {
    if (!Number.isInteger(v) || (v as number) < 1) {
      problems.push(`${name} must be a positive integer, got ${v}`);
      return false;
    }
    return true;
  };
  for (
    const name of [
      "imageSize",
      "inChannels",
      "outChannels",
      "channels",
      "numResBlocks",
      "groups",
      "zChannels",
      "codeDim",
      "codebookSize",
    ] as const
  ) positive(name, c[name]);
  if (!Array.isArray(c.channelMult) || c.channelMult.length === 0) {
    problems.push(`channelMult must list at least one level`);
  } else {
    c.channelMult.forEach((m, i) => positive(`channelMult[${i}]`, m));
  }
  if (problems.length === 0) {
    const factor = downsampleFactor(c);
    if (c.imageSize % factor !== 0) {
      problems.push(
        `imageSize ${c.imageSize} is not divisible by the downsample factor ${factor} ` +
          `(${c.channelMult.length} levels in channelMult [${c.channelMult}])`,
      );
    }
    const resolutions = c.channelMult.map((_, i) => c.imageSize / 2 ** i);
    for (const r of c.attnResolutions) {
      if (!resolutions.includes(r)) {
        problems.push(
          `attnResolutions: ${r} is not a level resolution (${resolutions.join(", ")})`,
        );
      }
    }
    const widths = new Set([c.channels, ...c.channelMult.map((m) => m * c.channels)]);
    for (const width of widths) {
      const g = Math.min(c.groups, width);
      if (width % g !== 0) {
        problems.push(`width ${width} is not divisible into ${g} GroupNorm groups`);
      }
    }
  }
  if (problems.length) throw new Error(`peco: VqVae config: ${problems.join("; ")}`);
  // The quantizer's options fail here too, before any weights are allocated.
  resolveQuantizerConfig({ ...c.quantizer, codebookSize: c.codebookSize, codeDim: c.codeDim });
  return c;
}

/** Stride-2 3×3 conv padded only at the right and bottom (taming's asymmetric padding). */
class Downsample extends Module {
  readonly conv: Conv2d;

  constructor(channels: number, rng: Rng) {
    super();
    this.conv = this.child(
      "conv",
      new Conv2d(channels, channels, 3, rng, {
        stride: 2,
        padding: { top: 0, bottom: 1, left: 0, right: 1 },
      }),
    );
  }

  forward(x: Tensor): Tensor {
    return this.conv.forward(x);
  }
}

/** Nearest-neighbour ×2 then a 3×3 conv. */
class Upsample extends Module {
  readonly conv: Conv2d;

  constructor(channels: number, rng: Rng) {
    super();
    this.conv = this.child("conv", new Conv2d(channels, channels, 3, rng, { padding: 1 }));
  }

  forward(x: Tensor): Tensor {
    return this.conv.forward(upsampleNearest2d(x, 2));
  }
}

/**
 * One resolution level: residual blocks (each followed by attention when the level has it),
 * then an optional resampling module registered as `downsample` or `upsample`.
 */
class Level extends Module {
  readonly block: ModuleList<ResnetBlock>;
  readonly attn: ModuleList<ConvAttnBlock>;
  readonly resample: Downsample | Upsample | null = null;

  constructor(
    inChannels: number,
    outChannels: number,
    blocks: number,
    withAttn: boolean,
    resample: "downsample" | "upsample" | null,
    groups: number,
    rng: Rng,
  ) {
    super();
    const resBlocks: ResnetBlock[] = [];
    const attnBlocks: ConvAttnBlock[] = [];
    for (let j = 0; j < blocks; j++) {
      const cin = j === 0 ? inChannels : outChannels;
      resBlocks.push(new ResnetBlock(cin, outChannels, rng.fork(`block.${j}`), groups));
      if (withAttn) attnBlocks.push(new ConvAttnBlock(outChannels, rng.fork(`attn.${j}`), groups));
    }
    this.block = this.child("block", resBlocks);
    this.attn = this.child("attn", attnBlocks);
    if (resample === "downsample") {
      this.resample = this.child("downsample", new Downsample(outChannels, rng.fork(resample)));
    } else if (resample === "upsample") {
      this.resample = this.child("upsample", new Upsample(outChannels, rng.fork(resample)));
    }
  }

  forward(x: Tensor): Tensor {
    let h = x;
    for (let j = 0; j < this.block.length; j++) {
      h = this.block.at(j).forward(h);
      if (this.attn.length) h = this.attn.at(j).forward(h);
    }
    return this.resample ? this.resample.forward(h) : h;
  }
}

/** ResBlock → attention → ResBlock at the lowest resolution. */
class Mid extends Module {
  readonly block1: ResnetBlock;
  readonly attn1: ConvAttnBlock;
  readonly block2: ResnetBlock;

  constructor(channels: number, groups: number, rng: Rng) {
    super();
    this.block1 = this.child(
      "block_1",
      new ResnetBlock(channels, channels, rng.fork("block_1"), groups),
    );
    this.attn1 = this.child("attn_1", new ConvAttnBlock(channels, rng.fork("attn_1"), groups));
    this.block2 = this.child(
      "block_2",
      new ResnetBlock(channels, channels, rng.fork("block_2"), groups),
    );
  }

  forward(x: Tensor): Tensor {
    return this.block2.forward(this.attn1.forward(this.block1.forward(x)));
  }
}

/** x [B, inChannels, H, W] → [B, zChannels, H/f, W/f]. */
export class Encoder extends Module {
  readonly convIn: Conv2d;
  readonly down: ModuleList<Level>;
  readonly mid: Mid;
  readonly normOut: GroupNorm;
  readonly convOut: Conv2d;

  constructor(readonly config: ResolvedVqVaeConfig, rng: Rng) {
    super();
    const { channels: ch, channelMult: mult, numResBlocks, groups, imageSize } = config;
    this.convIn = this.child(
      "conv_in",
      new Conv2d(config.inChannels, ch, 3, rng.fork("conv_in"), { padding: 1 }),
    );
    const levels: Level[] = [];
    let blockIn = ch;
    for (let i = 0; i < mult.length; i++) {
      const blockOut = ch * mult[i];
      const attn = config.attnResolutions.includes(imageSize / 2 ** i);
      const resample = i < mult.length - 1 ? "downsample" : null;
      levels.push(
        new Level(blockIn, blockOut, numResBlocks, attn, resample, groups, rng.fork(`down.${i}`)),
      );
      blockIn = blockOut;
    }
    this.down = this.child("down", levels);
    this.mid = this.child("mid", new Mid(blockIn, groups, rng.fork("mid")));
    this.normOut = this.child("norm_out", normalize(blockIn, groups));
    this.convOut = this.child(
      "conv_out",
      new Conv2d(blockIn, config.zChannels, 3, rng.fork("conv_out"), { padding: 1 }),
    );
  }

  forward(x: Tensor): Tensor {
    let h = this.convIn.forward(x);
    for (const level of this.down) h = level.forward(h);
    h = this.mid.forward(h);
    return this.convOut.forward(this.normOut.forwardSilu(h));
  }
}

/** [B, zChannels, h, w] → [B, outChannels, h·f, w·f]; mirrors the encoder. */
export class Decoder extends Module {
  readonly convIn: Conv2d;
  readonly mid: Mid;
  readonly up: ModuleList<Level>;
  readonly normOut: GroupNorm;
  readonly convOut: Conv2d;

  constructor(readonly config: ResolvedVqVaeConfig, rng: Rng) {
    super();
    const { channels: ch, channelMult: mult, numResBlocks, groups, imageSize } = config;
    const top = ch * mult[mult.length - 1];
    this.convIn = this.child(
      "conv_in",
      new Conv2d(config.zChannels, top, 3, rng.fork("conv_in"), { padding: 1 }),
    );
    this.mid = this.child("mid", new Mid(top, groups, rng.fork("mid")));
    // up.{i} works at level i's resolution; the forward pass runs them from the last to up.0.
    const levels: Level[] = [];
    for (let i = 0; i < mult.length; i++) {
      const blockIn = i === mult.length - 1 ? top : ch * mult[i + 1];
      const attn = config.attnResolutions.includes(imageSize / 2 ** i);
      const resample = i > 0 ? "upsample" : null;
      levels.push(
        new Level(
          blockIn,
          ch * mult[i],
          numResBlocks + 1,
          attn,
          resample,
          groups,
          rng.fork(`up.${i}`),
        ),
      );
    }
    this.up = this.child("up", levels);
    this.normOut = this.child("norm_out", normalize(ch * mult[0], groups));
    this.convOut = this.child(
      "conv_out",
      new Conv2d(ch * mult[0], config.outChannels, 3, rng.fork("conv_out"), { padding: 1 }),
    );
  }

  forward(z: Tensor): Tensor {
    let h = this.mid.forward(this.convIn.forward(z));
    for (let i = this.up.length - 1; i >= 0; i--) h = this.up.at(i).forward(h);
    return this.convOut.forward(this.normOut.forwardSilu(h));
  }
}

export interface VqVaeOutput extends QuantizerOutput {
  /** x̂ [B, outChannels, H, W]. */
  reconstruction: Tensor;
  /** z_e [B, D, h, w]: the encoder output before quantization. */
  z: Tensor;
}

/** Encoder → quant_conv → quantize → post_quant_conv → decoder (taming's VQModel layout). */
export class VqVae extends Module {
  readonly config: ResolvedVqVaeConfig;
  readonly encoder: Encoder;
  readonly decoder: Decoder;
  readonly quantize: VectorQuantizer;
  readonly quantConv: Conv2d;
  readonly postQuantConv: Conv2d;

  constructor(config: VqVaeConfig, seed = 0) {
    super();
    this.config = resolveVqVaeConfig(config);
    const c = this.config;
    const rng = new Rng(seed).fork("vqvae");
    this.encoder = this.child("encoder", new Encoder(c, rng.fork("encoder")));
    this.decoder = this.child("decoder", new Decoder(c, rng.fork("decoder")));
    this.quantize = this.child(
      "quantize",
      new VectorQuantizer({
        seed,
        ...c.quantizer,
        codebookSize: c.codebookSize,
        codeDim: c.codeDim,
      }),
    );
    this.quantConv = this.child(
      "quant_conv",
      new Conv2d(c.zChannels, c.codeDim, 1, rng.fork("quant_conv")),
    );
    this.postQuantConv = this.child(
      "post_quant_conv",
      new Conv2d(c.codeDim, c.zChannels, 1, rng.fork("post_quant_conv")),
    );
  }

  get downsampleFactor(): number {
    return downsampleFactor(this.config);
  }

  /** The token grid [h, w] of an image of the configured size. */
  get tokenGrid(): [number, number] {
    const side = this.config.imageSize / this.downsampleFactor;
    return [side, side];
  }

  /** x [B, inChannels, H, W] (H, W divisible by the downsample factor) → z_e [B, D, h, w]. */
  encode(x: Tensor): Tensor {
    const f = this.downsampleFactor;
    const { inChannels } = this.config;
    if (
      x.dtype !== "f32" || x.rank !== 4 || x.shape[1] !== inChannels || x.shape[2] % f !== 0 ||
      x.shape[3] % f !== 0 || x.shape[2] === 0 || x.shape[3] === 0
    ) {
      throw new Error(
        `peco: VqVae.encode: x must be f32 [B, ${inChannels}, H, W] with H and W divisible by ` +
          `the downsample factor ${f}, got ${x.describe()}`,
      );
    }
    return this.quantConv.forward(this.encoder.forward(x));
  }

  /** z_q [B, D, h, w] → x̂ [B, outChannels, h·f, w·f]. */
  decode(zq: Tensor): Tensor {
    const { codeDim } = this.config;
    if (zq.dtype !== "f32" || zq.rank !== 4 || zq.shape[1] !== codeDim) {
      throw new Error(
        `peco: VqVae.decode: z_q must be f32 [B, ${codeDim}, h, w], got ${zq.describe()}`,
      );
    }
    return this.decoder.forward(this.postQuantConv.forward(zq));
  }

  /** Encode, quantize (updating an EMA codebook in training mode), decode. */
  forward(x: Tensor): VqVaeOutput {
    const z = this.encode(x);
    const q = this.quantize.forward(z);
    return { ...q, z, reconstruction: this.decode(q.zq) };
  }

  /** Token ids i32 [B, h, w] of images x (no codebook update). */
  encodeIndices(x: Tensor): Tensor {
    return this.quantize.encodeIndices(this.encode(x));
  }

  /** Images from token ids i32 [B, h, w]. */
  decodeIndices(indices: Tensor): Tensor {
    return this.decode(this.quantize.lookup(indices));
  }
}
