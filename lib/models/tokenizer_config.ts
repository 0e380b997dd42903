// Presets of the `train-tokenizer` stage: the VQ-VAE architecture (lib/models/vqvae.ts) and the
// training hyper-parameters, by name. A preset's image size comes from the shards; the command line
// overrides the training fields. The "mnist" preset is sized for lavapipe on a 2-core machine
// (conv and matmul run at only a few GFLOP/s there): 28×28 at 4× downsample → a 7×7 token grid,
// widths 16/32/32, one residual block per level, attention only in the middle blocks at 7×7 (49
// tokens: cheap), K = 512 codes of dimension 32. Measured there: ~0.15–0.2 s per training image
// (the 28×28 convolutions dominate), so the default trains 240 steps of 8 images (~6 minutes).

import type { QuantizerKind } from "./quantizer.ts";
import type { VqVaeConfig } from "./vqvae.ts";

export type PixelLoss = "l1" | "l2";

export interface TokenizerTrainConfig {
  steps: number;
  batch: number;
  /** Peak learning rate of Adam β = (0.5, 0.95) (paper §3.4). */
  lr: number;
  betas: [number, number];
  /** Linear warmup steps, then a cosine decay to 0 at `steps`. */
  warmupSteps: number;
  /** Gradient clipping: maximum global L2 norm. */
  clipNorm: number;
  pixelLoss: PixelLoss;
  /** Weight of the adversarial term (paper Table 10: 0.4); 0 turns the discriminator off. */
  discWeight: number;
  /** First step of the adversarial term (and of the discriminator's training). */
  discStart: number;
  /** Width of the patch discriminator's first conv (taming's ndf). */
  discChannels: number;
}

export interface TokenizerPreset {
  /** The architecture, without the image size (taken from the shards). */
  model: Omit<VqVaeConfig, "imageSize" | "inChannels">;
  train: TokenizerTrainConfig;
}

export const TOKENIZER_PRESETS = {
  mnist: {
    model: {
      channels: 16,
      channelMult: [1, 2, 2],
      numResBlocks: 1,
      attnResolutions: [],
      groups: 8,
      codeDim: 32,
      codebookSize: 512,
      quantizer: { kind: "ema", beta: 0.25, decay: 0.95, init: "kmeans", deadCodeThreshold: 1 },
    },
    train: {
      steps: 240,
      batch: 8,
      lr: 3e-3,
      betas: [0.5, 0.95],
      warmupSteps: 10,
      clipNorm: 1,
      pixelLoss: "l2",
      discWeight: 0,
      discStart: 90,
      discChannels: 16,
    },
  },
  /** The paper's tokenizer (docs/paper-to-code.md): 224² → 14×14 tokens, K = 8192; GPU hosts. */
  paper: {
    model: {
      channels: 64,
      channelMult: [1, 1, 2, 2, 4],
      numResBlocks: 2,
      attnResolutions: [14],
      groups: 32,
      codeDim: 256,
      codebookSize: 8192,
      quantizer: { kind: "ema", beta: 0.25, decay: 0.99, init: "kmeans", deadCodeThreshold: 1 },
    },
    train: {
      steps: 100_000,
      batch: 128,
      lr: 5e-5,
      betas: [0.5, 0.95],
      warmupSteps: 5000,
      clipNorm: 1,
      pixelLoss: "l1",
      discWeight: 0.4,
      discStart: 50_000,
      discChannels: 64,
    },
  },
} as const satisfies Record<string, TokenizerPreset>;

export type TokenizerPresetName = keyof typeof TOKENIZER_PRESETS;
export const TOKENIZER_PRESET_NAMES = Object.keys(TOKENIZER_PRESETS) as TokenizerPresetName[];

/** A deep, mutable copy of a preset (presets themselves are frozen literals). */
export function tokenizerPreset(name: string): TokenizerPreset {
  if (!(name in TOKENIZER_PRESETS)) {
    throw new Error(
      `peco: tokenizer preset "${name}" is unknown (${TOKENIZER_PRESET_NAMES.join(", ")})`,
    );
  }
  return structuredClone(TOKENIZER_PRESETS[name as TokenizerPresetName]) as TokenizerPreset;
}

/**
 * The VQ-VAE a preset makes for square images of `image.size` with `image.channels`: the quantizer
 * of the kind given, else the preset's, else EMA, seeded with `seed` when given. The stage's config
 * and the benchmark's model come from here.
 */
export function presetVqVaeConfig(
  preset: TokenizerPreset,
  image: { channels: number; size: number },
  quantizer: { kind?: QuantizerKind; seed?: number } = {},
): VqVaeConfig {
  return {
    ...preset.model,
    imageSize: image.size,
    inChannels: image.channels,
    quantizer: {
      ...preset.model.quantizer,
      kind: quantizer.kind ?? preset.model.quantizer?.kind ?? "ema",
      ...(quantizer.seed === undefined ? {} : { seed: quantizer.seed }),
    },
  };
}
