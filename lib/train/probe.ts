// Linear probes (BEiT §3.3 / paper Table 4): frozen features → a linear classifier. Features are
// extracted once, under noGrad, into one GPU tensor [N, D]; the classifier (standardised features,
// one Linear layer) is trained on the GPU with AdamW, full-batch or in seeded mini-batches, under a
// cosine lr schedule. Only the per-epoch losses and the final predictions are read back.

import { flush } from "../tensor/engine.ts";
import { Linear } from "../nn/layers.ts";
import { AdamW, warmupCosine } from "../optim/mod.ts";
import { Rng } from "../tensor/init.ts";
import { tensor } from "../tensor/ops/creation.ts";
import { addScalar, div, sqrt, square, sub } from "../tensor/ops/elementwise.ts";
import { crossEntropy } from "../tensor/ops/loss.ts";
import { mean } from "../tensor/ops/reduce.ts";
import { argmax } from "../tensor/ops/reduce_index.ts";
import { gather } from "../tensor/ops/shape.ts";
import { backward } from "../tensor/autograd.ts";
import { copyInto, keep, noGrad, readAll, Tensor, tidy } from "../tensor/tensor.ts";
import { failer } from "../io/errors.ts";

const fail: (what: string) => never = failer("probe");

/**
 * Runs `fn(from, to)` on consecutive chunks of `count` items (under noGrad, each in its own scope)
 * and copies its f32 [to − from, ...] outputs into one kept tensor [count, ...]. `fn` may return
 * several tensors (e.g. one per ViT block): one output each. The recorder is flushed after each
 * chunk so a long extraction never builds one huge command buffer.
 */
export function extractFeatures(
  count: number,
  chunk: number,
  fn: (from: number, to: number) => Tensor | Tensor[],
  onChunk?: (done: number) => void,
): Tensor[] {
  if (!Number.isInteger(count) || count < 1 || !Number.isInteger(chunk) || chunk < 1) {
    fail(`extractFeatures needs integers count ≥ 1 and chunk ≥ 1, got ${count} and ${chunk}`);
  }
  let outs: Tensor[] | null = null;
  try {
    for (let from = 0; from < count; from += chunk) {
      const to = Math.min(count, from + chunk);
      const got = noGrad(() => tidy(() => [fn(from, to)].flat()));
      try {
        if (!outs) {
          outs = got.map((t) => keep(new Tensor([count, ...t.shape.slice(1)], "f32")));
        }
        got.forEach((t, i) => {
          const row = outs![i].size / count;
          if (t.dtype !== "f32" || t.shape[0] !== to - from || t.size !== row * (to - from)) {
            fail(
              `feature chunk ${t.describe()} [${from}, ${to}) does not fit ` +
                outs![i].describe(),
            );
          }
          copyInto(outs![i], t, from * row);
        });
      } finally {
        got.forEach((t) => t.dispose());
      }
      flush();
      onChunk?.(to);
    }
  } catch (error) {
    (outs as Tensor[] | null)?.forEach((t) => t.dispose());
    throw error;
  }
  return outs!;
}

/** Features with their labels: f32 [N, D] and host labels (class indices ≥ 0). */
export interface LabelledFeatures {
  features: Tensor;
  labels: Int32Array;
}

export interface ProbeOptions {
  /** Passes over the training features. */
  epochs: number;
  /** Mini-batch size; 0 (or ≥ N) trains full-batch. */
  batchSize?: number;
  /** Peak lr of AdamW (cosine to 0 after a short warmup). */
  lr?: number;
  weightDecay?: number;
  seed?: number;
  /** Standardise each feature by the training set's mean and std first (default true). */
  standardize?: boolean;
}

export interface ProbeResult {
  /** Top-1 on the held-out features. */
  accuracy: number;
  /** Per held-out item, 1 where the probe's top-1 is its label, else 0 (in the features' order). */
  outcomes: Uint8Array;
  /** Top-1 on the training features (after training). */
  trainAccuracy: number;
  /** Mean training loss of each epoch. */
  losses: number[];
}

function checkSet(what: string, set: LabelledFeatures, classes: number): void {
  const { features: f, labels } = set;
  if (f.dtype !== "f32" || f.rank !== 2 || f.shape[0] !== labels.length || labels.length === 0) {
    fail(`${what} features ${f.describe()} must be f32 [N, D] with N = ${labels.length} labels`);
  }
  const bad = labels.findIndex((l) => !(l >= 0 && l < classes));
  if (bad >= 0) fail(`${what} label ${labels[bad]} at ${bad} is not a class in [0, ${classes})`);
}

/**
 * Per row of `features`, 1 where the top-1 of `predict(x)` logits is its label, else 0 (chunks of
 * rows).
 */
async function topOne(
  features: Tensor,
  labels: Int32Array,
  predict: (x: Tensor) => Tensor,
  chunk = 4096,
): Promise<Uint8Array> {
  const n = labels.length;
  const preds: Tensor[] = [];
  for (let from = 0; from < n; from += chunk) {
    const to = Math.min(n, from + chunk);
    preds.push(noGrad(() =>
      tidy(() => {
        const idx = tensor(
          Array.from({ length: to - from }, (_, i) => from + i),
          [to - from],
          "i32",
        );
        return argmax(predict(from === 0 && to === n ? features : gather(features, idx)), 1);
      })
    ));
  }
  const values = await readAll(preds);
  preds.forEach((t) => t.dispose());
  const outcomes = new Uint8Array(n);
  let at = 0;
  // argmax gives i32: reinterpret the bytes read as f32.
  for (const v of values) {
    const ints = new Int32Array(v.buffer, v.byteOffset, v.length);
    for (let i = 0; i < ints.length; i++, at++) outcomes[at] = ints[i] === labels[at] ? 1 : 0;
  }
  return outcomes;
}

/** The share of 1s in 0/1 outcomes. */
export function fractionCorrect(outcomes: Uint8Array): number {
  let correct = 0;
  for (const o of outcomes) correct += o;
  return correct / outcomes.length;
}

/** The ids of mini-batch b of an epoch's permutation. */
function batchIds(order: Uint32Array, b: number, size: number): Int32Array {
  return Int32Array.from(order.subarray(b * size, Math.min(order.length, (b + 1) * size)));
}

/**
 * Trains a linear classifier on `train` features and returns its top-1 on `val`. Deterministic for
 * a seed: the initialisation and the mini-batch order derive from it.
 */
export async function trainLinearProbe(
  train: LabelledFeatures,
  val: LabelledFeatures,
  classes: number,
  options: ProbeOptions,
): Promise<ProbeResult> {
  const { epochs, lr = 1e-2, weightDecay = 1e-4, seed = 0, standardize = true } = options;
  if (!Number.isInteger(classes) || classes < 2) fail(`classes must be an integer ≥ 2`);
  checkSet("train", train, classes);
  checkSet("val", val, classes);
  if (!Number.isInteger(epochs) || epochs < 1) fail(`epochs must be an integer ≥ 1, got ${epochs}`);
  const [n, d] = train.features.shape;
  if (val.features.shape[1] !== d) {
    fail(`val features ${val.features.describe()} have another width than train's [${n},${d}]`);
  }
  const batch = options.batchSize && options.batchSize < n ? options.batchSize : n;
  const stepsPerEpoch = Math.ceil(n / batch);
  const total = epochs * stepsPerEpoch;
  const schedule = warmupCosine({
    baseLr: lr,
    warmupSteps: Math.min(Math.floor(total / 10), 50),
    totalSteps: total,
  });
  const rng = new Rng(seed);

  // Standardised copies (the probe's own input), or the features themselves.
  const [xs, xv] = standardize
    ? noGrad(() =>
      tidy(() => {
        const mu = mean(train.features, 0, true);
        const sd = addScalar(sqrt(mean(square(sub(train.features, mu)), 0, true)), 1e-6);
        return [div(sub(train.features, mu), sd), div(sub(val.features, mu), sd)].map(keep);
      })
    )
    : [train.features, val.features];
  const head = new Linear(d, classes, rng.fork("head"));
  const optimizer = new AdamW(head.parameters(), { lr, weightDecay });
  const fullLabels = batch === n ? keep(tensor(train.labels, [n], "i32")) : null;
  const losses: number[] = [];
  try {
    let step = 0;
    for (let epoch = 0; epoch < epochs; epoch++) {
      const order = new Uint32Array(n).map((_, i) => i);
      if (batch < n) shuffle(order, rng.fork(`epoch ${epoch}`));
      const epochLosses: Tensor[] = [];
      for (let b = 0; b < stepsPerEpoch; b++, step++) {
        optimizer.lr = schedule(step);
        epochLosses.push(tidy(() => {
          let x = xs, y = fullLabels!;
          if (batch < n) {
            const ids = batchIds(order, b, batch);
            x = gather(xs, tensor(ids, [ids.length], "i32"));
            y = tensor(ids.map((i) => train.labels[i]), [ids.length], "i32");
          }
          const loss = crossEntropy(head.forward(x), y);
          backward(loss);
          optimizer.step();
          optimizer.zeroGrad();
          return loss.detach();
        }));
        flush();
      }
      const values = await readAll(epochLosses);
      epochLosses.forEach((t) => t.dispose());
      const avg = values.reduce((s, v) => s + v[0], 0) / values.length;
      if (!Number.isFinite(avg)) fail(`the training loss is ${avg} at epoch ${epoch + 1}`);
      losses.push(avg);
    }
    head.eval();
    const predict = (x: Tensor) => head.forward(x);
    const outcomes = await topOne(xv, val.labels, predict);
    return {
      accuracy: fractionCorrect(outcomes),
      outcomes,
      trainAccuracy: fractionCorrect(await topOne(xs, train.labels, predict)),
      losses,
    };
  } finally {
    if (standardize) (xs.dispose(), xv.dispose());
    fullLabels?.dispose();
    head.dispose();
    optimizer.dispose();
  }
}

/** Fisher–Yates with a seeded stream. */
function shuffle(values: Uint32Array, rng: Rng): void {
  for (let i = values.length - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [values[i], values[j]] = [values[j], values[i]];
  }
}
