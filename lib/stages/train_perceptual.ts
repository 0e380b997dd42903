// The train-perceptual stage's work (tasks/train_perceptual.ts is its command line): its options
// resolved to a config, its shards opened and checked, and its training — MoCo v3 (the step of
// lib/train/moco.ts) run by the training loop (lib/train/loop.ts) — then the encoder saved and the
// k-NN accuracy of its frozen features measured on the held-out split (the only use of labels).

import { join, resolve } from "node:path";
import { adapterInfo } from "../tensor/engine.ts";
import { failOnProblems } from "../cli/problems.ts";
import type { StageRun } from "../cli/stage.ts";
import { type TrainingOptions, type TrainingOutcome, trainStage } from "../cli/training.ts";
import type { AugmentConfig } from "../data/augment.ts";
import { Loader } from "../data/loader.ts";
import { workerShardSource } from "../data/shard_reads.ts";
import type { SplitReader } from "../data/shards.ts";
import {
  ENCODER_FILE,
  MOCO_ENCODER_DEFAULT,
  MOCO_HEAD_DEFAULT,
  type MocoEncoderConfig,
  type MocoHeadConfig,
  MocoV3,
  momentumAt,
  saveEncoder,
} from "../models/moco.ts";
import { AdamW, warmupCosine } from "../optim/mod.ts";
import { Rng } from "../tensor/init.ts";
import type { TrainingState } from "../train/checkpoint.ts";
import { embedSplit, knnAccuracy, MOCO_STEP_TERMS, mocoStep, signedView } from "../train/moco.ts";
import {
  checkTrainPerceptualImages,
  checkTrainPerceptualOptions,
  type TrainPerceptualOptions,
} from "./train_perceptual_options.ts";
import { openStageShards } from "./stage_shards.ts";

export const TRAIN_PERCEPTUAL_STAGE = "train-perceptual";
const STAGE = TRAIN_PERCEPTUAL_STAGE;

/** The resolved configuration (the stage fingerprint hashes it). */
export interface TrainPerceptualConfig {
  steps: number;
  /** Size of the training and k-NN views (0: automatic, see viewSize). */
  size: number;
  batch: number;
  lr: number;
  weightDecay: number;
  warmupSteps: number;
  tau: number;
  momentum: number;
  augment: Required<Pick<AugmentConfig, "scale" | "flip" | "brightness" | "contrast">>;
  seed: number;
  logEvery: number;
  ckptEvery: number;
  knn: { k: number; temperature: number; train: number; val: number };
  encoder: MocoEncoderConfig;
  head: MocoHeadConfig;
}

const KNN_K = 20;
const KNN_TEMPERATURE = 0.07;

/** Checks the options and resolves paths and config (no file is opened). */
export function resolvePerceptualOptions(
  o: TrainPerceptualOptions,
): { shards: string; out: string; config: TrainPerceptualConfig } {
  failOnProblems(checkTrainPerceptualOptions(o));
  const shards = resolve(o.shards!);
  const out = resolve(o.out);
  return {
    shards,
    out,
    config: {
      steps: o.steps,
      size: o.size ?? 0,
      batch: o.batch,
      lr: o.lr,
      weightDecay: o["weight-decay"],
      warmupSteps: Math.ceil(o.steps / 10),
      tau: o.tau,
      momentum: o.momentum,
      augment: {
        scale: [o["crop-min"], 1],
        flip: o.flip,
        brightness: o.jitter,
        contrast: o.jitter,
      },
      seed: o.seed,
      logEvery: o["log-every"],
      ckptEvery: o["ckpt-every"],
      knn: { k: KNN_K, temperature: KNN_TEMPERATURE, train: o["knn-train"], val: o["knn-val"] },
      encoder: MOCO_ENCODER_DEFAULT,
      head: MOCO_HEAD_DEFAULT,
    },
  };
}

/** The train and val splits, checked before any training starts. */
export async function openPerceptualData(dir: string, o: TrainPerceptualOptions) {
  const set = await openStageShards(STAGE, dir, {
    splits: ["train", "val"],
    check: ({ splits: { train } }) =>
      train.channels !== 1 && train.channels !== 3
        ? [{ options: ["shards"], message: `images have ${train.channels} channels, need 1 or 3` }]
        : checkTrainPerceptualImages(o, {
          height: train.height,
          width: train.width,
          train: train.count,
        }),
  });
  const { train, val } = set.splits;
  return { set, train, val, labelled: set.manifest.labelled !== false };
}

/**
 * The views' size. Small square images (side ≤ 32, even) train at half their side by default
 * (28² → 14²): on a software GPU the step time grows with the pixels, and more steps beat more
 * pixels for MNIST. The tokenizer runs the network on its images average-pooled to this size
 * (the manifest's summary.view_size), the scale the features were trained at.
 */
export function viewSize(config: TrainPerceptualConfig, split: SplitReader): [number, number] {
  if (config.size) return [config.size, config.size];
  const { height: h, width: w } = split;
  return h === w && h <= 32 && h % 2 === 0 ? [h / 2, h / 2] : [h, w];
}

/** The opened shards of a run. */
export type PerceptualData = Awaited<ReturnType<typeof openPerceptualData>>;

/**
 * Trains the network in `run` (resuming its checkpoint), saves the encoder and measures its k-NN
 * accuracy: the summary of a finished run, or status "stopped" (--stop-at).
 */
export async function trainPerceptual(
  run: StageRun,
  config: TrainPerceptualConfig,
  data: PerceptualData,
  { quiet = false, stopAt, log }: TrainingOptions,
): Promise<TrainingOutcome> {
  const { steps, batch, seed } = config;
  const rng = new Rng(seed);
  const model = new MocoV3(config.encoder, config.head, rng.fork("model"));
  const optimizer = new AdamW(model.trainableParameters(), {
    lr: config.lr,
    weightDecay: config.weightDecay,
  });
  const { train } = data;
  const { channels, height, width } = train;
  // Shards read and checked by Workers, one per core (lib/data/shard_reads.ts).
  const source = workerShardSource(train);
  try {
    const loader = new Loader(source, { batchSize: batch, seed });
    const [vh, vw] = viewSize(config, train);
    log(
      `${STAGE}: adapter ${adapterInfo().description}; ${model.baseEncoder.numParameters()} base ` +
        `parameters; ${steps} steps of ${batch} images ${height}×${width} (two ${vh}×${vw} ` +
        `views each)` + (run.resumeFrom ? `; resuming at step ${run.resumeFrom.step}` : ""),
    );
    const stepContext = {
      model,
      optimizer,
      tau: config.tau,
      momentum: config.momentum,
      steps,
      rng,
      augment: config.augment,
      image: { channels, height, width },
      view: signedView(vh, vw, channels),
    };
    const state: TrainingState = { modules: { model }, optimizers: { optim: optimizer } };
    const result = await trainStage(run, {
      stage: STAGE,
      steps,
      seed,
      config,
      logEvery: config.logEvery,
      ckptEvery: config.ckptEvery,
      stopAt,
      state,
      data: loader,
      lr: {
        schedule: warmupCosine({
          baseLr: config.lr,
          warmupSteps: config.warmupSteps,
          totalSteps: steps,
        }),
        optimizers: [optimizer],
      },
      terms: MOCO_STEP_TERMS,
      step: (host, step) => mocoStep(stepContext, host.pixels, host.n, step),
      // The momentum of the interval's last step (no held-out numbers during training).
      evaluate: (done) =>
        Promise.resolve({ momentum: momentumAt(done - 1, steps, config.momentum) }),
      shown: (r) => ({ loss: r.loss, lr: r.lr }),
    }, { quiet, log });
    if (result.status === "stopped") {
      return { status: "stopped", summary: { step: result.step, ...result.last } };
    }

    const encoder = model.baseEncoder.backbone;
    await saveEncoder(encoder, join(run.out, ENCODER_FILE));
    encoder.eval();
    let knn: number | null = null;
    if (data.labelled) {
      const bank = await embedSplit(encoder, data.train, config.knn.train, [vh, vw]);
      const query = await embedSplit(encoder, data.val, config.knn.val, [vh, vw]);
      knn = knnAccuracy(bank, query, config.knn.k, config.knn.temperature);
      log(
        `${STAGE}: k-NN (k=${config.knn.k}, cosine) accuracy on ${query.n} held-out images ` +
          `with a bank of ${bank.n}: ${(100 * knn).toFixed(1)}%`,
      );
    } else log(`${STAGE}: the shards carry no labels; k-NN evaluation skipped`);
    return {
      status: "done",
      summary: {
        loss: result.last.loss,
        knn_accuracy: knn,
        knn_k: config.knn.k,
        encoder: ENCODER_FILE,
        encoder_config: config.encoder,
        view_size: [vh, vw],
        ...result.summary,
      },
    };
  } finally {
    source.close();
    model.dispose();
    optimizer.dispose();
  }
}
