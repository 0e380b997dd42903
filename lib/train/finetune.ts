// Fine-tuning a classifier (paper §4.1, docs/paper-to-code.md; BEiT's run_class_finetuning): AdamW
// with no weight decay on 1-D parameters, biases and tokens, layer-wise lr decay through parameter
// groups, label-smoothed cross-entropy, linear warmup then cosine to a floor, gradient clipping.
// Stochastic depth (drop path) lives in the model: it is active in training mode, which this
// module sets; a model with a `dropSeed` (lib/models/beit.ts) gets one per step, derived from the
// seed and the step, so two runs with one seed drop the same samples. The run is the training
// loop's (lib/train/loop.ts): the fine-tuning step is its `step`, held-out top-1 its `evaluate`,
// the model and its AdamW its state; the loop reads losses at log steps, stops at a NaN naming the
// last good checkpoint and, given a checkpoint path, keeps an atomic checkpoint (which also carries
// the run's name and curve) that a rerun resumes, ending where the uninterrupted run does; with
// `stopAt` it stops after its first checkpoint at or after that step, as if killed (the loop's
// `stopAt`: the evaluate stage's --stop-at).

import { failer } from "../io/errors.ts";
import { Conv2d, Linear } from "../nn/layers.ts";
import { flush } from "../tensor/engine.ts";
import { Module } from "../nn/module.ts";
import type { Rng } from "../tensor/init.ts";
import { relu } from "../tensor/ops/elementwise.ts";
import { AdamW, clipGradNorm, paramGroups, warmupCosine } from "../optim/mod.ts";
import { backward } from "../tensor/autograd.ts";
import { crossEntropy } from "../tensor/ops/loss.ts";
import { argmax } from "../tensor/ops/reduce_index.ts";
import { reshape } from "../tensor/ops/shape.ts";
import { noGrad, readAll, type Tensor, tidy } from "../tensor/tensor.ts";
import { readCheckpointMeta } from "./checkpoint.ts";
import {
  type LoopBatch,
  type LoopData,
  type LoopRecord,
  recordSinks,
  type TrainingLoop,
  trainLoop,
} from "./loop.ts";

const fail: (what: string) => never = failer("finetune");

/** A classifier: inputs → logits [N, classes]; `dropSeed` seeds its stochastic depth if it has any. */
export interface ClassifierModel extends Module {
  forward(x: Tensor): Tensor;
  dropSeed?: number;
}

/**
 * Training batches by step (the loop's data: host batches, prefetched, restartable at a step) and
 * their upload, made inside the step's scope.
 */
export interface FinetuneData<B extends LoopBatch> extends LoopData<B> {
  upload(batch: B): { x: Tensor; labels: Tensor };
}

/** A held-out set: `inputs(from, to)` gives the model's inputs of items [from, to). */
export interface EvalSet {
  count: number;
  labels: Int32Array;
  inputs(from: number, to: number): Tensor;
}

export interface FinetuneConfig {
  steps: number;
  /** Peak lr (after warmup) for the head; layer i gets lr · layerDecay^(L+1−i). */
  lr: number;
  minLr?: number;
  warmupSteps: number;
  weightDecay: number;
  betas?: [number, number];
  /** Layer-wise lr decay factor (needs `layers`); omitted or 1: none. */
  layerDecay?: number;
  labelSmoothing?: number;
  /** Maximum global gradient norm; omitted: no clipping. */
  clipNorm?: number;
  /** Read the loss every N steps (one sync each). */
  logEvery?: number;
  /** Measure held-out top-1 every N steps (0: only at the end). */
  evalEvery?: number;
  /** Batch size of held-out evaluation. */
  evalBatch?: number;
  /** Seeds the model's drop-path draws (with the step). */
  seed?: number;
}

/** Layer ids for layer-wise lr decay: 0 embeddings … L+1 head. */
export interface LayerIds {
  numLayers: number;
  layerId(name: string): number;
}

/** Where and how often a fine-tuning run keeps its checkpoint, and which run it is. */
export interface FinetuneCheckpoint {
  /** The checkpoint file (one per folder: it holds the run named by `run`). */
  path: string;
  /** Save every N steps: a multiple of `logEvery`, whose losses are checked first. */
  every: number;
  /** The stage and its fingerprint (lib/cli/stage.ts): only the same stage run resumes. */
  stage: string;
  fingerprint: string;
  /** The run's name within the stage: a checkpoint of another run at `path` is not resumed. */
  run: string;
  /** Stop after the first checkpoint at or after this step, as if killed (--stop-at). */
  stopAt?: number;
}

export interface CurvePoint {
  step: number;
  loss?: number;
  lr?: number;
  val_acc?: number;
}

export interface FinetuneResult {
  status: "done";
  /** Held-out top-1 after the last step. */
  accuracy: number;
  /** Per held-out item, 1 where the final model's top-1 is its label, else 0. */
  outcomes: Uint8Array;
  /** The step the run resumed from (0: it started afresh). */
  resumedFrom: number;
  /** Logged points (loss and lr at log steps; val_acc at eval steps), by step. */
  curve: CurvePoint[];
  seconds: number;
}

/** A run stopped after a checkpoint (`checkpoint.stopAt`): nothing evaluated; a rerun resumes. */
export interface FinetuneStopped {
  status: "stopped";
  /** The step of the checkpoint it stopped after. */
  step: number;
  /** The step the run resumed from (0: it started afresh). */
  resumedFrom: number;
}

/** What `finetune` is told besides the model, data and config. */
export interface FinetuneHooks {
  layers?: LayerIds;
  onLog?: (record: LoopRecord) => void | Promise<void>;
  checkpoint?: FinetuneCheckpoint;
}

/** Top-1 of `model` on `set`, evaluated in eval mode in chunks of `batch` (one readback). */
export async function evaluateClassifier(
  model: ClassifierModel,
  set: EvalSet,
  batch = 64,
): Promise<number> {
  return fractionOf(await classifierOutcomes(model, set, batch));
}

function fractionOf(outcomes: Uint8Array): number {
  let correct = 0;
  for (const o of outcomes) correct += o;
  return correct / outcomes.length;
}

/** Per item of `set`, 1 where `model`'s top-1 (eval mode) is its label, else 0. */
export async function classifierOutcomes(
  model: ClassifierModel,
  set: EvalSet,
  batch = 64,
): Promise<Uint8Array> {
  const wasTraining = model.training;
  model.eval();
  const preds: Tensor[] = [];
  try {
    for (let from = 0; from < set.count; from += batch) {
      const to = Math.min(set.count, from + batch);
      preds.push(noGrad(() => tidy(() => argmax(model.forward(set.inputs(from, to)), 1))));
      flush();
    }
    const values = await readAll(preds);
    const outcomes = new Uint8Array(set.count);
    let at = 0;
    for (const v of values) {
      const ints = new Int32Array(v.buffer, v.byteOffset, v.length);
      for (let i = 0; i < ints.length; i++, at++) outcomes[at] = ints[i] === set.labels[at] ? 1 : 0;
    }
    return outcomes;
  } finally {
    preds.forEach((t) => t.dispose());
    model.train(wasTraining);
  }
}

/** A well-spread 32-bit seed per (run seed, step): blocks add small offsets to it. */
function dropSeed(seed: number, step: number): number {
  return (Math.imul(seed + 1, 0x85ebca6b) ^ Math.imul(step + 1, 0x9e3779b1)) >>> 0;
}

function checkConfig(c: FinetuneConfig, layers: LayerIds | undefined): void {
  const ints = { steps: c.steps, warmupSteps: c.warmupSteps } as Record<string, number>;
  for (const [name, v] of Object.entries(ints)) {
    if (!Number.isInteger(v) || v < 0) fail(`${name} must be an integer ≥ 0, got ${v}`);
  }
  if (c.steps < 1 || c.warmupSteps >= c.steps) {
    fail(`steps ${c.steps} must be ≥ 1 and exceed warmupSteps ${c.warmupSteps}`);
  }
  if (!(c.lr > 0)) fail(`lr must be > 0, got ${c.lr}`);
  if (c.layerDecay !== undefined && c.layerDecay !== 1 && !layers) {
    fail(`layerDecay ${c.layerDecay} needs the model's layer ids`);
  }
}

/** The curve's point of a loop record: the loss and lr of a log step, the accuracy of an eval step. */
function curvePoint(record: LoopRecord): CurvePoint {
  const point: CurvePoint = { step: record.step };
  if (record.loss !== undefined) Object.assign(point, { loss: record.loss, lr: record.lr });
  if (record.val_acc !== undefined) point.val_acc = record.val_acc;
  return point;
}

/**
 * Fine-tunes `model` on `train` batches for `config.steps` steps on the training loop
 * (lib/train/loop.ts) and returns its held-out top-1 on `val` with the loss / lr / accuracy curve.
 * `onLog` sees every record as the loop makes it (progress bars). With `checkpoint`, a checkpoint
 * of this run at its path is resumed and a new one is written every `checkpoint.every` steps and
 * after the last.
 */
export function finetune<B extends LoopBatch>(
  model: ClassifierModel,
  data: { train: FinetuneData<B>; val: EvalSet },
  config: FinetuneConfig,
  hooks?: FinetuneHooks & { checkpoint?: FinetuneCheckpoint & { stopAt?: undefined } },
): Promise<FinetuneResult>;
/** With `checkpoint.stopAt`, the run may stop after a checkpoint instead: status "stopped". */
export function finetune<B extends LoopBatch>(
  model: ClassifierModel,
  data: { train: FinetuneData<B>; val: EvalSet },
  config: FinetuneConfig,
  hooks: FinetuneHooks,
): Promise<FinetuneResult | FinetuneStopped>;
export async function finetune<B extends LoopBatch>(
  model: ClassifierModel,
  data: { train: FinetuneData<B>; val: EvalSet },
  config: FinetuneConfig,
  { layers, onLog, checkpoint }: FinetuneHooks = {},
): Promise<FinetuneResult | FinetuneStopped> {
  checkConfig(config, layers);
  const { steps, logEvery = 10, evalEvery = 0, evalBatch = 64, labelSmoothing = 0 } = config;
  if (checkpoint && (!(checkpoint.every > 0) || checkpoint.every % logEvery !== 0)) {
    fail(`checkpoint every ${checkpoint.every} steps must be a multiple of logEvery ${logEvery}`);
  }
  const seed = config.seed ?? 0;
  const decay = config.layerDecay !== undefined && config.layerDecay !== 1;
  const groups = paramGroups(model.namedParameters(), {
    weightDecay: config.weightDecay,
    ...(decay ? { layerDecay: config.layerDecay, ...layers } : {}),
  });
  const optimizer = new AdamW(groups, { lr: config.lr, betas: config.betas ?? [0.9, 0.999] });
  const schedule = warmupCosine({
    baseLr: config.lr,
    warmupSteps: config.warmupSteps,
    totalSteps: steps,
    minLr: Math.min(config.minLr ?? 0, config.lr),
  });
  const started = performance.now();
  let curve: CurvePoint[] = [];
  let outcomes: Uint8Array | null = null;
  const loop: TrainingLoop<B> = {
    stage: checkpoint?.stage ?? "finetune",
    steps,
    seed,
    config,
    logEvery,
    ckptEvery: checkpoint?.every ?? steps,
    stopAt: checkpoint?.stopAt,
    state: { modules: { model }, optimizers: { optim: optimizer } },
    restored: (meta) => void (curve = (meta.carried?.curve ?? []) as CurvePoint[]),
    carry: () => ({ run: checkpoint?.run, curve }),
    data: data.train,
    lr: { schedule, optimizers: [optimizer] },
    terms: ["loss"],
    step: (batch, step) => {
      if ("dropSeed" in model) model.dropSeed = dropSeed(seed, step);
      const { x, labels } = data.train.upload(batch);
      const loss = crossEntropy(model.forward(x), labels, { labelSmoothing });
      backward(loss);
      if (config.clipNorm !== undefined) clipGradNorm(model.parameters(), config.clipNorm);
      optimizer.step();
      optimizer.zeroGrad();
      return [loss.detach()];
    },
    evaluate: async () => {
      outcomes = await classifierOutcomes(model, data.val, evalBatch);
      return { val_acc: fractionOf(outcomes) };
    },
    evalEvery: evalEvery > 0 ? evalEvery : steps,
  };
  // The records become the curve (carried in the checkpoint); nothing is drawn or written here.
  const sinks = recordSinks(async (record) => {
    curve.push(curvePoint(record));
    await onLog?.(record);
  });
  try {
    const resumeStep = checkpoint ? await resumableStep(checkpoint) : null;
    model.train();
    const ran = await trainLoop(loop, {
      checkpoint: checkpoint?.path ?? null,
      fingerprint: checkpoint?.fingerprint ?? "",
      resumeFrom: resumeStep === null ? null : { step: resumeStep },
    }, sinks);
    if (ran.status === "stopped") {
      return { status: "stopped", step: ran.step, resumedFrom: resumeStep ?? 0 };
    }
    // Resumed from its last checkpoint, a finished run evaluated nothing this time.
    const final = outcomes ?? await classifierOutcomes(model, data.val, evalBatch);
    return {
      status: "done",
      accuracy: fractionOf(final),
      outcomes: final,
      resumedFrom: resumeStep ?? 0,
      curve,
      seconds: (performance.now() - started) / 1000,
    };
  } finally {
    optimizer.dispose();
  }
}

/** The step of this run's checkpoint at `checkpoint.path`, or null when it holds no such run. */
async function resumableStep(checkpoint: FinetuneCheckpoint): Promise<number | null> {
  const exists = await Deno.stat(checkpoint.path).then((s) => s.isFile, () => false);
  if (!exists) return null;
  const meta = await readCheckpointMeta(checkpoint.path);
  if (
    meta.stage !== checkpoint.stage || meta.fingerprint !== checkpoint.fingerprint ||
    meta.carried?.run !== checkpoint.run
  ) return null; // another run's: this one starts afresh (and replaces it at its first save)
  return meta.step;
}

// ---- a small reference classifier -------------------------------------------------------------

/**
 * A small LeNet-like convolutional classifier: two stride-2 3×3 convolutions with ReLU (S → S/2 →
 * S/4, ⌈⌉), flattened, then a linear head. Cheap enough on lavapipe to train for a few hundred
 * steps in seconds; the evaluate stage's "classifier trained on real images" (paper Table 4).
 */
export class ConvClassifier extends Module {
  readonly conv1: Conv2d;
  readonly conv2: Conv2d;
  readonly head: Linear;

  constructor(channels: number, size: number, classes: number, rng: Rng, width = 16) {
    super();
    const pad = { top: 1, bottom: 1, left: 1, right: 1 };
    this.conv1 = this.child(
      "conv1",
      new Conv2d(channels, width, 3, rng.fork("conv1"), {
        stride: 2,
        padding: pad,
      }),
    );
    this.conv2 = this.child(
      "conv2",
      new Conv2d(width, 2 * width, 3, rng.fork("conv2"), {
        stride: 2,
        padding: pad,
      }),
    );
    const half = (s: number) => Math.floor((s - 1) / 2) + 1; // a stride-2 3×3 conv, padding 1
    const side = half(half(size));
    this.head = this.child("head", new Linear(2 * width * side * side, classes, rng.fork("head")));
  }

  /** x [N, C, S, S] → logits [N, classes]. */
  forward(x: Tensor): Tensor {
    const h = relu(this.conv2.forward(relu(this.conv1.forward(x))));
    return this.head.forward(reshape(h, [h.shape[0], -1]));
  }
}
