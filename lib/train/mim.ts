// Masked image modelling for the `pretrain` stage (docs/paper-to-code.md; paper eq. 7): the
// training presets, the mask budget scaled to the grid, the masked positions of a batch, the MIM
// loss and masked-token accuracy on the GPU, the training step (the stage and bench/pretrain.ts
// share it), the histogram of the targets (for the baseline of
// always predicting the most frequent code) and a fixed held-out set evaluated without readback
// until its numbers are wanted.

import type { AugmentConfig } from "../data/augment.ts";
import { MaskingGenerator } from "../data/masking.ts";
import type { Beit, BeitPresetName } from "../models/beit.ts";
import type { CodeUsage } from "../models/quantizer.ts";
import type { AdamW } from "../optim/adam.ts";
import { clipGradNorm } from "../optim/clip.ts";
import { backward } from "../tensor/autograd.ts";
import { tensor } from "../tensor/ops/creation.ts";
import { crossEntropyAccuracy } from "../tensor/ops/loss.ts";
import { gather } from "../tensor/ops/shape.ts";
import { keep, noGrad, readAll, type Tensor, tidy } from "../tensor/tensor.ts";

export type AugmentMode = "none" | "crop" | "beit";
export const AUGMENT_MODES: readonly AugmentMode[] = ["none", "crop", "beit"];

/**
 * What each mode draws per image (one crop box for the ViT and the tokenizer view). "crop": a
 * milder random resized crop without flips or colour jitter (digits are not mirror-symmetric);
 * "beit": BEiT's crop [0.08, 1], flip and jitter 0.4.
 */
export function augmentConfig(mode: AugmentMode): AugmentConfig | false {
  if (mode === "none") return false;
  if (mode === "crop") {
    return {
      scale: [0.5, 1],
      ratio: [3 / 4, 4 / 3],
      flip: 0,
      brightness: 0,
      contrast: 0,
      saturation: 0,
    };
  }
  return {};
}

export interface PretrainTrainConfig {
  steps: number;
  batch: number;
  /** Peak learning rate of AdamW. */
  lr: number;
  betas: [number, number];
  weightDecay: number;
  /** Linear warmup steps, then a cosine decay to 0 at `steps`. */
  warmupSteps: number;
  /** Maximum global gradient norm. */
  clipNorm: number;
  augment: AugmentMode;
}

const BEIT_TRAIN = {
  betas: [0.9, 0.98] as [number, number],
  weightDecay: 0.05,
  clipNorm: 3,
};

/**
 * Training defaults per model preset. "mnist" fits 10 minutes on lavapipe (2 cores); the others
 * are BEiT's recipe (batch 2048 and lr 1.5e-3 scale down linearly to a GPU host's batch 256).
 */
export const PRETRAIN_TRAIN_PRESETS: Record<BeitPresetName, PretrainTrainConfig> = {
  // lr 2e-3: on MNIST tokens it lowers the held-out MIM loss at every step against 1e-3 (5.04 vs
  // 5.25 at step 150) and its 600-step model fine-tunes to 37% vs 27% from scratch in 150 steps.
  mnist: { ...BEIT_TRAIN, steps: 300, batch: 32, lr: 2e-3, warmupSteps: 20, augment: "none" },
  tiny: {
    ...BEIT_TRAIN,
    steps: 100_000,
    batch: 256,
    lr: 1.5e-3,
    warmupSteps: 5000,
    augment: "beit",
  },
  small: {
    ...BEIT_TRAIN,
    steps: 100_000,
    batch: 256,
    lr: 1.5e-3,
    warmupSteps: 5000,
    augment: "beit",
  },
  base: {
    ...BEIT_TRAIN,
    steps: 100_000,
    batch: 256,
    lr: 1.5e-3,
    warmupSteps: 5000,
    augment: "beit",
  },
};

// ---- masks ----------------------------------------------------------------------------------

/** BEiT's numbers on its 14×14 grid. */
const BEIT_PATCHES = 196;
const BEIT_BUDGET = 75;
const BEIT_MIN_BLOCK = 16;

export interface MaskSpec {
  /** Patches masked per image (at most: the generator may stop short). */
  budget: number;
  minBlock: number;
}

/**
 * The mask budget for a grid: `patches` if given, else round(ratio·T) with BEiT's ratio 75/196 by
 * default (at least 1); the minimum block BEiT's 16/196 of the grid (at least 1) unless given.
 * Errors name the option.
 */
export function maskSpec(
  grid: [number, number],
  { ratio, patches, minBlock }: { ratio?: number; patches?: number; minBlock?: number } = {},
): MaskSpec {
  const t = grid[0] * grid[1];
  if (ratio !== undefined && !(ratio > 0 && ratio < 1)) {
    throw new Error(`peco: mask: --mask-ratio must be in (0, 1), got ${ratio}`);
  }
  const budget = patches ?? Math.max(1, Math.round((ratio ?? BEIT_BUDGET / BEIT_PATCHES) * t));
  if (!Number.isInteger(budget) || budget < 1 || budget >= t) {
    throw new Error(
      `peco: mask: --mask-patches must be an integer in [1, ${t - 1}] for a ${grid[0]}×${
        grid[1]
      } grid, got ${budget}`,
    );
  }
  const block = minBlock ?? Math.max(1, Math.round((BEIT_MIN_BLOCK / BEIT_PATCHES) * t));
  if (!Number.isInteger(block) || block < 1 || block > budget) {
    throw new Error(
      `peco: mask: --min-block must be an integer in [1, ${budget}] (the budget), got ${block}`,
    );
  }
  return { budget, minBlock: block };
}

export function maskingGenerator(grid: [number, number], spec: MaskSpec): MaskingGenerator {
  return new MaskingGenerator({
    height: grid[0],
    width: grid[1],
    budget: spec.budget,
    minBlock: spec.minBlock,
  });
}

/** Row numbers of the masked patches in the flattened [n·T] grid of a batch's masks (0/1). */
export function maskedPositions(masks: Uint8Array): Int32Array {
  let m = 0;
  for (const v of masks) m += v ? 1 : 0;
  const out = new Int32Array(m);
  let k = 0;
  masks.forEach((v, i) => {
    if (v) out[k++] = i;
  });
  return out;
}

// ---- loss and metrics -----------------------------------------------------------------------

export interface MimOutput {
  /** Mean cross-entropy over the masked patches (scalar, with autograd). */
  loss: Tensor;
  /** Masked-token accuracy (scalar). */
  accuracy: Tensor;
  /** The targets at the masked positions, i32 [M]. */
  targets: Tensor;
}

/**
 * The MIM objective of one batch: x [N, C, H, W], masks f32 [N, T], maskedIndex i32 [M] (rows of
 * [N·T]), codes i32 [N, T] (or [N·T]) from the tokenizer → loss and accuracy at masked positions.
 */
export function mimLoss(
  model: Beit,
  x: Tensor,
  masks: Tensor,
  maskedIndex: Tensor,
  codes: Tensor,
): MimOutput {
  const targets = gather(codes.view([codes.size]), maskedIndex, 0);
  const logits = model.mimLogits(x, masks, maskedIndex);
  // The masked-token accuracy comes from the loss's own pass over the rows.
  const { loss, accuracy } = crossEntropyAccuracy(logits, targets);
  return { loss, accuracy, targets };
}

/** The names of the scalars mimStep returns, in order. */
export const MIM_STEP_TERMS = ["loss", "accuracy", "grad_norm"] as const;

/** What one MIM training step needs. */
export interface MimStepContext {
  model: Beit;
  optimizer: AdamW;
  /** Maximum global gradient norm (PretrainTrainConfig.clipNorm). */
  clipNorm: number;
  /** Counts the targets (the most-frequent-code baseline), when given. */
  histogram?: CodeUsage;
}

/**
 * One training step (call it inside `tidy`): the MIM loss of the batch (as mimLoss), backward,
 * gradient clipping, AdamW. Returns the scalars named by MIM_STEP_TERMS (the gradient norm is the
 * one before clipping).
 */
export function mimStep(
  c: MimStepContext,
  x: Tensor,
  masks: Tensor,
  maskedIndex: Tensor,
  codes: Tensor,
): Tensor[] {
  const out = mimLoss(c.model, x, masks, maskedIndex, codes);
  backward(out.loss);
  const norm = clipGradNorm(c.model.parameters(), c.clipNorm);
  c.optimizer.step();
  c.optimizer.zeroGrad();
  c.histogram?.add(out.targets);
  return [out.loss, out.accuracy, norm];
}

/** The most frequent code of a histogram and its share of the counts. */
export function mostFrequent(counts: ArrayLike<number>): { code: number; share: number } {
  let code = 0;
  let total = 0;
  for (let k = 0; k < counts.length; k++) {
    total += counts[k];
    if (counts[k] > counts[code]) code = k;
  }
  return { code, share: total > 0 ? counts[code] / total : 0 };
}

// ---- the held-out set -----------------------------------------------------------------------

interface EvalChunk {
  x: Tensor;
  masks: Tensor;
  maskedIndex: Tensor;
  targets: Tensor;
  m: number;
}

/**
 * A fixed held-out set: images, seeded masks and their target codes, prepared once and kept on
 * the GPU; `evaluate` gives the mean masked loss and accuracy, `baseline` the accuracy of always
 * predicting one code.
 */
export class HeldOutSet {
  private constructor(
    private readonly chunks: EvalChunk[],
    /** Every chunk's targets, in order (host copy for baselines). */
    readonly targets: Int32Array,
  ) {}

  /** Chunks of {x, masks (host 0/1), codes i32 [n, T]} → the set (takes ownership of x and codes). */
  static async build(
    chunks: { x: Tensor; masks: Uint8Array; codes: Tensor }[],
  ): Promise<HeldOutSet> {
    const ready: EvalChunk[] = chunks.map(({ x, masks, codes }) => {
      const [n] = x.shape;
      const t = masks.length / n;
      const positions = maskedPositions(masks);
      const maskTensor = keep(tensor(Float32Array.from(masks), [n, t]));
      const maskedIndex = keep(tensor(positions, [positions.length], "i32"));
      const targets = keep(
        noGrad(() => tidy(() => gather(codes.view([codes.size]), maskedIndex, 0))),
      );
      codes.dispose();
      return { x: keep(x), masks: maskTensor, maskedIndex, targets, m: positions.length };
    });
    const values = await readAll(ready.map((c) => c.targets));
    const all = new Int32Array(ready.reduce((s, c) => s + c.m, 0));
    let at = 0;
    values.forEach((v) => {
      const ids = new Int32Array(v.buffer, v.byteOffset, v.length);
      all.set(ids, at);
      at += ids.length;
    });
    return new HeldOutSet(ready, all);
  }

  get images(): number {
    return this.chunks.reduce((s, c) => s + c.x.shape[0], 0);
  }

  get maskedPatches(): number {
    return this.targets.length;
  }

  /** Mean masked loss and accuracy of `model` (eval mode, no autograd; one readback). */
  async evaluate(model: Beit): Promise<{ loss: number; accuracy: number }> {
    const wasTraining = model.training;
    model.eval();
    const results: Tensor[] = [];
    try {
      for (const c of this.chunks) {
        results.push(
          ...noGrad(() =>
            tidy(() => {
              const logits = model.mimLogits(c.x, c.masks, c.maskedIndex);
              const { loss, accuracy } = crossEntropyAccuracy(logits, c.targets);
              return [loss, accuracy];
            })
          ),
        );
      }
      const values = await readAll(results);
      let loss = 0, accuracy = 0;
      this.chunks.forEach((c, i) => {
        loss += values[2 * i][0] * c.m;
        accuracy += values[2 * i + 1][0] * c.m;
      });
      return { loss: loss / this.maskedPatches, accuracy: accuracy / this.maskedPatches };
    } finally {
      results.forEach((t) => t.dispose());
      if (wasTraining) model.train();
    }
  }

  /** Accuracy of predicting `code` at every held-out masked patch. */
  baseline(code: number): number {
    let hits = 0;
    for (const t of this.targets) hits += t === code ? 1 : 0;
    return hits / Math.max(1, this.targets.length);
  }

  dispose(): void {
    for (const c of this.chunks) {
      for (const t of [c.x, c.masks, c.maskedIndex, c.targets]) t.dispose();
    }
  }
}
