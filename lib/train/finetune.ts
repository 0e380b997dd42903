// Fine-tuning a classifier (paper §4.1, docs/paper-to-code.md; BEiT's run_class_finetuning): AdamW
// with no weight decay on 1-D parameters, biases and tokens, layer-wise lr decay through parameter
// groups, label-smoothed cross-entropy, linear warmup then cosine to a floor, gradient clipping.
// Stochastic depth (drop path) lives in the model: it is active in training mode, which this loop
// sets; a model with a `dropSeed` (lib/models/beit.ts) gets one per step, derived from the seed and
// the step, so two runs with one seed drop the same samples. Losses are read back only at log
// steps; held-out top-1 is measured at eval steps and at the end. With `checkpoint`, the run keeps
// an atomic checkpoint (model, AdamW, curve) and a rerun resumes from it: every random draw derives
// from (seed, step) and the batch stream restarts at the step, so the resumed run ends where the
// uninterrupted one does.

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
import { CheckpointGuard, loadCheckpoint, readCheckpointMeta } from "./checkpoint.ts";

const fail: (what: string) => never = failer("finetune");

/** A classifier: inputs → logits [N, classes]; `dropSeed` seeds its stochastic depth if it has any. */
export interface ClassifierModel extends Module {
  forward(x: Tensor): Tensor;
  dropSeed?: number;
}

/** Training batches: prepared on the host (async), then uploaded inside the step's scope. */
export interface BatchStream<T> {
  next(): Promise<T>;
  upload(batch: T): { x: Tensor; labels: Tensor };
  /** Makes the next batch the one of optimizer step `step` (0-based): what resuming needs. */
  startAt?(step: number): void;
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
}

export interface CurvePoint {
  step: number;
  loss?: number;
  lr?: number;
  val_acc?: number;
}

export interface FinetuneResult {
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

/**
 * Fine-tunes `model` on `train` batches for `config.steps` steps and returns its held-out top-1 on
 * `val` with the loss / lr / accuracy curve. `onLog` sees every logged point as it is made
 * (metrics files, progress bars). With `checkpoint`, a checkpoint of this run at its path is
 * resumed (the stream must offer `startAt`) and a new one is written every `checkpoint.every` steps.
 */
export async function finetune<T>(
  model: ClassifierModel,
  data: { train: BatchStream<T>; val: EvalSet },
  config: FinetuneConfig,
  { layers, onLog, checkpoint }: {
    layers?: LayerIds;
    onLog?: (point: CurvePoint) => void | Promise<void>;
    checkpoint?: FinetuneCheckpoint;
  } = {},
): Promise<FinetuneResult> {
  checkConfig(config, layers);
  const { steps, logEvery = 10, evalEvery = 0, evalBatch = 64, labelSmoothing = 0 } = config;
  if (checkpoint && (!(checkpoint.every > 0) || checkpoint.every % logEvery !== 0)) {
    fail(`checkpoint every ${checkpoint.every} steps must be a multiple of logEvery ${logEvery}`);
  }
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
  let pending: Tensor[] = [];
  try {
    const state = { modules: { model }, optimizers: { optim: optimizer } };
    const resumed = checkpoint ? await resumeFrom(checkpoint, state, data.train) : null;
    const first = resumed?.step ?? 0;
    const curve: CurvePoint[] = resumed?.curve ?? [];
    const guard = checkpoint
      ? new CheckpointGuard(checkpoint.stage, checkpoint.path, resumed ? first : null)
      : null;
    let finalOutcomes: Uint8Array = new Uint8Array(0);
    model.train();
    for (let step = first; step < steps; step++) {
      const host = await data.train.next();
      optimizer.lr = schedule(step);
      if ("dropSeed" in model) model.dropSeed = dropSeed(config.seed ?? 0, step);
      pending.push(tidy(() => {
        const { x, labels } = data.train.upload(host);
        const loss = crossEntropy(model.forward(x), labels, { labelSmoothing });
        backward(loss);
        if (config.clipNorm !== undefined) clipGradNorm(model.parameters(), config.clipNorm);
        optimizer.step();
        optimizer.zeroGrad();
        return loss.detach();
      }));
      const done = step + 1;
      const point: CurvePoint = { step: done };
      if (done % logEvery === 0 || done === steps) {
        const values = await readAll(pending);
        pending.forEach((t) => t.dispose());
        const loss = values.reduce((s, v) => s + v[0], 0) / values.length;
        pending = [];
        if (!Number.isFinite(loss)) {
          fail(
            `the training loss is ${loss} at step ${done}` +
              (guard ? `; last good checkpoint: ${guard.describeLastGood()}` : ""),
          );
        }
        guard?.check(done, { loss });
        Object.assign(point, { loss, lr: optimizer.lr });
      } else flush();
      if (done === steps || (evalEvery > 0 && done % evalEvery === 0)) {
        finalOutcomes = await classifierOutcomes(model, data.val, evalBatch);
        point.val_acc = fractionOf(finalOutcomes);
      }
      if (Object.keys(point).length > 1) {
        curve.push(point);
        await onLog?.(point);
      }
      if (guard && checkpoint && done < steps && done % checkpoint.every === 0) {
        await guard.save(state, {
          stage: checkpoint.stage,
          fingerprint: checkpoint.fingerprint,
          step: done,
          epoch: 0,
          seed: config.seed ?? 0,
          config,
          metrics: { run: checkpoint.run, curve },
        });
      }
    }
    return {
      accuracy: curve.at(-1)!.val_acc!,
      outcomes: finalOutcomes,
      resumedFrom: first,
      curve,
      seconds: (performance.now() - started) / 1000,
    };
  } finally {
    pending.forEach((t) => t.dispose());
    optimizer.dispose();
  }
}

/**
 * The step and curve of this run's checkpoint at `checkpoint.path` after restoring it into
 * `state`, with the stream moved to that step; null when there is none of this run.
 */
async function resumeFrom<T>(
  checkpoint: FinetuneCheckpoint,
  state: Parameters<typeof loadCheckpoint>[1],
  train: BatchStream<T>,
): Promise<{ step: number; curve: CurvePoint[] } | null> {
  const exists = await Deno.stat(checkpoint.path).then((s) => s.isFile, () => false);
  if (!exists) return null;
  const meta = await readCheckpointMeta(checkpoint.path);
  if (
    meta.stage !== checkpoint.stage || meta.fingerprint !== checkpoint.fingerprint ||
    meta.metrics?.run !== checkpoint.run
  ) return null; // another run's: this one starts afresh (and replaces it at its first save)
  const startAt = train.startAt?.bind(train);
  if (!startAt) fail(`resuming ${checkpoint.run} needs a batch stream that can start later`);
  await loadCheckpoint(checkpoint.path, state);
  startAt(meta.step);
  return { step: meta.step, curve: (meta.metrics?.curve ?? []) as CurvePoint[] };
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
