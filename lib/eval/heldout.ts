// The images every measurement of the evaluate stage uses: the first n held-out ("val") images,
// read once to the host and uploaded in chunks, normalised as the model being measured expects;
// and seeded, unaugmented training batches for the classifiers trained on the way. Every arm and
// every seed is scored on the same held-out images in the same order, so their per-image outcomes
// pair up (docs/statistics.md).

import { hostImageViews } from "../data/augment.ts";
import { type HostBatch, Loader, type RecordSource, shardSource } from "../data/loader.ts";
import type { ShardSet, SplitReader } from "../data/shards.ts";
import { add, affine, clamp, mul, type Tensor, tensor } from "../tensor/mod.ts";
import type { EvalSet, FinetuneData } from "../train/finetune.ts";

/** Host images of one split: the first n records, uint8 [n, C, H, W] with labels. */
export interface HostSet {
  n: number;
  pixels: Uint8Array;
  labels: Int32Array;
  channels: number;
  size: number;
}

/** A model's input images: side length and per-channel normalisation (x/255 − mean) / std. */
export interface ImageSpec {
  size: number;
  mean: readonly number[];
  std: readonly number[];
}

/** The first `n` records of a split. */
export async function readSet(split: SplitReader, n: number): Promise<HostSet> {
  const b = await split.readRange(0, n);
  return { n, pixels: b.pixels, labels: b.labels, channels: split.channels, size: split.height };
}

/** Images [from, to) of a host set as f32 [n, C, size, size], normalised as `spec`. */
export function gpuImages(set: HostSet, from: number, to: number, spec: ImageSpec): Tensor {
  const [x] = hostImageViews(set.pixels, [set.channels, set.size, set.size], from, to, [{
    height: spec.size,
    width: spec.size,
    mean: spec.mean.slice(0, set.channels),
    std: spec.std.slice(0, set.channels),
  }]);
  return x;
}

/**
 * x normalised as `from` → pixels in [0, 1] (clamped unless `clampUnit` is false) → normalised as
 * `to` (null: left in [0, 1]).
 */
export function renormalise(
  x: Tensor,
  from: ImageSpec,
  to: ImageSpec | null,
  clampUnit = true,
): Tensor {
  const c = x.shape[1];
  const perChannel = (f: (k: number) => number) =>
    tensor(Array.from({ length: c }, (_, k) => f(k)), [1, c, 1, 1]);
  const uniform = (v: readonly number[]) => v.slice(0, c).every((s) => s === v[0]);
  let unit: Tensor;
  if (uniform(from.std) && uniform(from.mean)) unit = affine(x, from.std[0], from.mean[0]);
  else unit = add(mul(x, perChannel((k) => from.std[k])), perChannel((k) => from.mean[k]));
  if (clampUnit) unit = clamp(unit, 0, 1);
  if (!to) return unit;
  if (uniform(to.std) && uniform(to.mean)) {
    return affine(unit, 1 / to.std[0], -to.mean[0] / to.std[0]);
  }
  return mul(add(unit, perChannel((k) => -to.mean[k])), perChannel((k) => 1 / to.std[k]));
}

/** The first `count` images of a host set as a classifier's held-out set. */
export function evalSetOf(set: HostSet, count: number, spec: ImageSpec): EvalSet {
  return {
    count,
    labels: set.labels.subarray(0, count),
    inputs: (from, to) => gpuImages(set, from, to, spec),
  };
}

/**
 * Training batches of the train split (seeded order, no augmentation) for a classifier, by step:
 * a resumed fine-tuning run sees the batches the uninterrupted one saw.
 */
export function trainStream(
  shards: ShardSet,
  batch: number,
  seed: number,
  spec: ImageSpec,
): FinetuneData<HostBatch> {
  return recordStream(shardSource(shards.splits.train), batch, seed, spec);
}

/** As trainStream, over any record source (e.g. images in memory). */
export function recordStream(
  source: RecordSource,
  batch: number,
  seed: number,
  spec: ImageSpec,
): FinetuneData<HostBatch> {
  const loader = new Loader(source, { batchSize: batch, seed });
  const view = [{
    height: spec.size,
    width: spec.size,
    mean: spec.mean.slice(0, loader.source.channels),
    std: spec.std.slice(0, loader.source.channels),
  }];
  return {
    stepsPerEpoch: loader.stepsPerEpoch,
    batches: (at) => loader.batches(at),
    upload: (b) => {
      const g = loader.toGpu(b, view);
      return { x: g.views[0], labels: g.labels };
    },
  };
}

/** How a measurement reports progress: items done so far, and metrics to show beside them. */
export type OnProgress = (done: number, metrics?: Record<string, number>) => void;
