// The classifier trained on real images (paper Table 4, second measure): a small ConvClassifier
// trained once on the train split, then used as a fixed instrument to classify every tokenizer's
// reconstructions. It is not an arm's measurement: one classifier (one seed) scores every arm, so
// their reconstruction accuracies differ only by the reconstructions.

import type { ShardSet } from "../data/shards.ts";
import { Rng } from "../tensor/init.ts";
import { ConvClassifier, finetune } from "../train/finetune.ts";
import {
  evalSetOf,
  type HostSet,
  type ImageSpec,
  type OnProgress,
  trainStream,
} from "./heldout.ts";
import { seedFor } from "./seeds.ts";

/** The classifier's input normalisation: (x/255 − 0.5) / 0.5, pixels mapped to [−1, 1]. */
export const CLASSIFIER_INPUT = { mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5] } as const;

export interface RealClassifierConfig {
  steps: number;
  batch: number;
  lr: number;
  width: number;
}

export interface RealClassifier {
  model: ConvClassifier;
  /** Its input images. */
  spec: ImageSpec;
  /** Top-1 on the real held-out images. */
  accuracy: number;
  outcomes: Uint8Array;
}

/** Trains the classifier on `shards`' train split; scores it on the first `evalImages` of `val`. */
export async function trainRealClassifier(
  data: { shards: ShardSet; val: HostSet; evalImages: number; classes: number },
  config: RealClassifierConfig,
  seed: number,
  { evalBatch, onProgress }: { evalBatch: number; onProgress?: OnProgress },
): Promise<RealClassifier> {
  const { val } = data;
  const spec: ImageSpec = { size: val.size, ...CLASSIFIER_INPUT };
  const model = new ConvClassifier(
    val.channels,
    val.size,
    data.classes,
    new Rng(seedFor(seed, "classifier")),
    config.width,
  );
  try {
    const result = await finetune(model, {
      train: trainStream(data.shards, config.batch, seed, spec),
      val: evalSetOf(val, data.evalImages, spec),
    }, {
      steps: config.steps,
      lr: config.lr,
      warmupSteps: Math.min(20, Math.floor(config.steps / 4)),
      weightDecay: 0.01,
      logEvery: 10,
      evalBatch,
    }, { onLog: (r) => onProgress?.(r.step, r.loss !== undefined ? { loss: r.loss } : {}) });
    return { model, spec, accuracy: result.accuracy, outcomes: result.outcomes };
  } catch (error) {
    model.dispose();
    throw error;
  }
}
