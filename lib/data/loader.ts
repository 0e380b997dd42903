// The streaming loader: seeded shuffling across shards, bounded memory, host-side prefetch, and
// the hand-over to the GPU (packed uint8 upload, augmentation kernels, masks).
//
// Shuffling with bounded memory: each epoch permutes the chunk (shard) order with a stream derived
// from seed and epoch, cuts that order into windows of `window` chunks, and permutes the records of
// each window together. Only the current window and the next one (read ahead) are held, so memory
// is bounded by 2·window chunks whatever the data set's size, while every batch mixes records of
// `window` shards. Batches run on across window and epoch boundaries without a pause.
//
// Everything random about a batch (its records, augmentation draws and masks) derives from the
// seed, the epoch and the batch's step, never from timing: prefetch depth and read speed do not
// change what a run sees, and a resumed run sees what the uninterrupted one would have.

import { Rng } from "../tensor/init.ts";
import { tensor } from "../tensor/ops/creation.ts";
import type { Tensor } from "../tensor/tensor.ts";
import {
  type AugmentConfig,
  augmentViews,
  identityAugmentations,
  type ImageAug,
  sampleAugmentations,
  uploadPixels,
  type ViewSpec,
} from "./augment.ts";
import { type MaskingGenerator, maskTensor } from "./masking.ts";
import type { SplitReader } from "./shards.ts";

/** One chunk of records: pixels [count, C, H, W] uint8, labels [count] (−1 when unlabelled). */
export interface RecordChunk {
  pixels: Uint8Array;
  labels: Int32Array;
}

/** Fixed-size uint8 images stored in chunks (shards) that are read whole, one at a time. */
export interface RecordSource {
  readonly channels: number;
  readonly height: number;
  readonly width: number;
  /** Records in each chunk, in storage order. */
  readonly chunkSizes: readonly number[];
  readChunk(index: number): Promise<RecordChunk>;
}

/** A source over arrays already in memory, cut into chunks of `chunkSize` (tests, benchmarks). */
export function memorySource(
  pixels: Uint8Array,
  labels: Int32Array,
  { channels, height, width, chunkSize }: {
    channels: number;
    height: number;
    width: number;
    chunkSize: number;
  },
): RecordSource {
  const record = channels * height * width;
  if (pixels.length !== labels.length * record || !(chunkSize >= 1)) {
    throw new Error(
      `peco: memorySource: ${pixels.length} bytes for ${labels.length} records of ` +
        `[${channels},${height},${width}] in chunks of ${chunkSize}`,
    );
  }
  const chunkSizes: number[] = [];
  for (let start = 0; start < labels.length; start += chunkSize) {
    chunkSizes.push(Math.min(chunkSize, labels.length - start));
  }
  return {
    channels,
    height,
    width,
    chunkSizes,
    readChunk(index: number) {
      const start = index * chunkSize;
      const end = start + chunkSizes[index];
      return Promise.resolve({
        pixels: pixels.subarray(start * record, end * record),
        labels: labels.subarray(start, end),
      });
    },
  };
}

/** A split of a shard folder (lib/data/shards.ts) as a source: one chunk per shard, verified. */
export function shardSource(split: SplitReader): RecordSource {
  return {
    channels: split.channels,
    height: split.height,
    width: split.width,
    chunkSizes: split.shards.map((s) => s.count),
    readChunk: (index) => split.readShard(index),
  };
}

/**
 * Runs an async iterator up to `depth` items ahead of its consumer (a bounded queue): the
 * producer works (reads, copies, draws) while the consumer's step runs.
 */
export async function* prefetch<T>(source: AsyncIterator<T>, depth: number): AsyncGenerator<T> {
  const queue: Promise<IteratorResult<T>>[] = [];
  const request = () => {
    const next = source.next();
    // Marked handled: a failure surfaces when its turn comes, not as an unhandled rejection.
    next.catch(() => {});
    queue.push(next);
  };
  try {
    while (true) {
      while (queue.length <= depth) request();
      const result = await queue.shift()!;
      if (result.done) return;
      yield result.value;
    }
  } finally {
    await source.return?.();
  }
}

export interface LoaderOptions {
  batchSize: number;
  seed: number;
  /** Shuffle records each epoch (default true); false reads in storage order. */
  shuffle?: boolean;
  /** Chunks shuffled together (default 4); memory holds at most twice this many. */
  window?: number;
  /** Batches prepared ahead of the consumer (default 2). */
  prefetch?: number;
  /** Drop each epoch's last partial batch (default true: every batch has batchSize images). */
  dropLast?: boolean;
  /** Draw random-resized-crop, flip and jitter per image (default: no augmentation). */
  augment?: AugmentConfig | false;
  /** Draw a block-wise mask per image. */
  masking?: MaskingGenerator;
}

/** A batch prepared on the host. */
export interface HostBatch {
  epoch: number;
  /** Index of the batch within its epoch. */
  step: number;
  n: number;
  /** Global record numbers (storage order) of the images. */
  records: Uint32Array;
  /** [n, C, H, W] uint8. */
  pixels: Uint8Array;
  labels: Int32Array;
  augs: ImageAug[];
  /** [n, patches] 0/1, when the loader masks. */
  masks: Uint8Array | null;
}

/** A batch on the GPU. Tensors are scope-tracked; `dispose` releases them outside a scope. */
export interface GpuBatch {
  epoch: number;
  step: number;
  n: number;
  /** One f32 [n, C, h, w] tensor per requested view. */
  views: Tensor[];
  /** i32 [n]. */
  labels: Tensor;
  /** f32 [n, patches] of 0/1, when the loader masks. */
  masks: Tensor | null;
  dispose(): void;
}

export interface LoaderStats {
  chunkReads: number;
  /** Largest number of records held in loaded chunks at once. */
  peakResidentRecords: number;
  batchesPrepared: number;
}

/** A window of an epoch's plan: records [from, to) of it are served, at epoch position start. */
interface PlannedWindow {
  epoch: number;
  chunks: number[];
  records: Uint32Array;
  start: number;
  from: number;
  to: number;
  /** Records of the epoch that are served (dropLast cuts the partial batch). */
  limit: number;
}

interface OpenWindow extends PlannedWindow {
  reads: Promise<RecordChunk>[];
}

export interface StreamStart {
  epoch?: number;
  /** First batch of the first epoch (resuming). */
  step?: number;
  /** Epochs to stream (default: without end). */
  epochs?: number;
}

export class Loader {
  readonly count: number;
  readonly batchSize: number;
  readonly stepsPerEpoch: number;
  readonly stats: LoaderStats = { chunkReads: 0, peakResidentRecords: 0, batchesPrepared: 0 };
  private readonly chunkStarts: number[] = [];
  private readonly recordBytes: number;
  private readonly options: Required<Omit<LoaderOptions, "masking" | "augment">>;
  private readonly rng: Rng;
  private readonly augment: AugmentConfig | false;
  private readonly masking: MaskingGenerator | null;
  /** Records of the chunks currently held (loaded and not yet released). */
  private resident = 0;

  constructor(readonly source: RecordSource, options: LoaderOptions) {
    const { batchSize, seed } = options;
    this.options = {
      batchSize,
      seed,
      shuffle: options.shuffle ?? true,
      window: options.window ?? 4,
      prefetch: options.prefetch ?? 2,
      dropLast: options.dropLast ?? true,
    };
    this.augment = options.augment ?? false;
    this.masking = options.masking ?? null;
    let count = 0;
    for (const size of source.chunkSizes) {
      this.chunkStarts.push(count);
      count += size;
    }
    this.count = count;
    this.batchSize = batchSize;
    this.recordBytes = source.channels * source.height * source.width;
    const { window, prefetch: depth, dropLast } = this.options;
    if (!Number.isInteger(batchSize) || batchSize < 1) {
      throw new Error(`peco: loader: batch size ${batchSize} must be a positive integer`);
    }
    if (!Number.isInteger(window) || window < 1 || !Number.isInteger(depth) || depth < 0) {
      throw new Error(`peco: loader: window ${window} must be ≥ 1 and prefetch ${depth} ≥ 0`);
    }
    this.stepsPerEpoch = dropLast ? Math.floor(count / batchSize) : Math.ceil(count / batchSize);
    if (this.stepsPerEpoch === 0) {
      throw new Error(
        `peco: loader: ${count} records make no batch of ${batchSize}` +
          (dropLast ? " (dropLast: use a smaller batch)" : ""),
      );
    }
    this.rng = new Rng(seed);
  }

  /** The chunk order of an epoch: a seeded permutation, or storage order without shuffling. */
  chunkOrder(epoch: number): number[] {
    const order = this.source.chunkSizes.map((_, i) => i);
    if (this.options.shuffle) shuffleInPlace(order, this.rng.fork(`chunks ${epoch}`));
    return order;
  }

  /** The windows of an epoch: chunk lists and the shuffled global record numbers of each. */
  private windows(epoch: number): { chunks: number[]; records: Uint32Array }[] {
    const order = this.chunkOrder(epoch);
    const out = [];
    for (let w = 0; w * this.options.window < order.length; w++) {
      const chunks = order.slice(w * this.options.window, (w + 1) * this.options.window);
      const records: number[] = [];
      for (const c of chunks) {
        for (let i = 0; i < this.source.chunkSizes[c]; i++) records.push(this.chunkStarts[c] + i);
      }
      if (this.options.shuffle) shuffleInPlace(records, this.rng.fork(`records ${epoch} ${w}`));
      out.push({ chunks, records: Uint32Array.from(records) });
    }
    return out;
  }

  /** Every record number of an epoch in the order it is served (before dropLast). */
  order(epoch: number): Uint32Array {
    const windows = this.windows(epoch);
    const out = new Uint32Array(this.count);
    let at = 0;
    for (const w of windows) {
      out.set(w.records, at);
      at += w.records.length;
    }
    return out;
  }

  /** The batches of one epoch, prefetched. */
  epoch(epoch: number): AsyncGenerator<HostBatch> {
    return this.batches({ epoch, epochs: 1 });
  }

  /** Batches across epochs (without end by default), prefetched across epoch boundaries. */
  batches(start: StreamStart = {}): AsyncGenerator<HostBatch> {
    return prefetch(this.produce(start), this.options.prefetch);
  }

  /**
   * The windows to serve, epoch after epoch: each with the range of its records to serve (the
   * start of a resumed epoch and the records dropLast leaves out are cut).
   */
  private *plan(
    { epoch: first = 0, step = 0, epochs = Infinity }: StreamStart,
  ): Generator<PlannedWindow> {
    const limit = Math.min(this.count, this.stepsPerEpoch * this.batchSize);
    for (let epoch = first; epoch < first + epochs; epoch++) {
      const skip = epoch === first ? step * this.batchSize : 0;
      let start = 0;
      for (const { chunks, records } of this.windows(epoch)) {
        const end = start + records.length;
        if (end > skip && start < limit) {
          const from = Math.max(skip - start, 0);
          yield { epoch, chunks, records, start, from, to: Math.min(limit, end) - start, limit };
        }
        start = end;
      }
    }
  }

  /**
   * Serves the planned windows: the next window's chunks are read while the current one is served
   * (across epoch boundaries too), and a window's chunks are dropped once it is served.
   */
  private async *produce(start: StreamStart): AsyncGenerator<HostBatch> {
    const plan = this.plan(start);
    const open = (): OpenWindow | null => {
      const next = plan.next();
      return next.done
        ? null
        : { ...next.value, reads: next.value.chunks.map((c) => this.read(c)) };
    };
    let current = open();
    let ahead = open();
    let batch: HostBatch | null = null;
    let filled = 0;
    try {
      while (current) {
        const loaded = await Promise.all(current.reads);
        const data = new Map(current.chunks.map((c, i) => [c, loaded[i]]));
        for (let i = current.from; i < current.to; i++) {
          const position = current.start + i;
          batch ??= this.newBatch(
            current.epoch,
            Math.floor(position / this.batchSize),
            Math.min(this.batchSize, current.limit - position),
          );
          const record = current.records[i];
          const chunk = this.chunkOf(record);
          this.copyRecord(data.get(chunk)!, record - this.chunkStarts[chunk], batch, filled);
          batch.records[filled++] = record;
          if (filled === batch.n) {
            yield this.finish(batch);
            batch = null;
            filled = 0;
          }
        }
        this.release(current);
        current = ahead;
        ahead = open();
      }
    } finally {
      if (current) this.release(current);
      if (ahead) this.release(ahead);
    }
  }

  /** Reads and checks chunk c; counted resident from when it lands until its window is released. */
  private read(c: number): Promise<RecordChunk> {
    const pending = this.readChecked(c);
    // Marked handled: a failed read ahead surfaces when its window is served, not as an unhandled
    // rejection while an earlier window is still being served.
    pending.catch(() => {});
    return pending;
  }

  private async readChecked(c: number): Promise<RecordChunk> {
    const chunk = await this.source.readChunk(c);
    const size = this.source.chunkSizes[c];
    const { channels: C, height: H, width: W } = this.source;
    if (chunk.pixels.length !== size * this.recordBytes || chunk.labels.length !== size) {
      throw new Error(
        `peco: loader: chunk ${c} gave ${chunk.pixels.length} pixel bytes and ` +
          `${chunk.labels.length} labels, expected ${size} records of [${C},${H},${W}]`,
      );
    }
    this.stats.chunkReads++;
    this.resident += size;
    this.stats.peakResidentRecords = Math.max(this.stats.peakResidentRecords, this.resident);
    return chunk;
  }

  private release(window: OpenWindow): void {
    window.chunks.forEach((c, i) => {
      // A read still in flight is subtracted when it lands (it was not counted yet).
      window.reads[i].then(() => (this.resident -= this.source.chunkSizes[c]), () => {});
    });
  }

  private chunkOf(record: number): number {
    const starts = this.chunkStarts;
    let lo = 0, hi = starts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (starts[mid] <= record) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  private newBatch(epoch: number, step: number, n: number): HostBatch {
    return {
      epoch,
      step,
      n,
      records: new Uint32Array(n),
      pixels: new Uint8Array(n * this.recordBytes),
      labels: new Int32Array(n),
      augs: [],
      masks: null,
    };
  }

  private copyRecord(chunk: RecordChunk, offset: number, batch: HostBatch, slot: number): void {
    const bytes = this.recordBytes;
    batch.pixels.set(chunk.pixels.subarray(offset * bytes, (offset + 1) * bytes), slot * bytes);
    batch.labels[slot] = chunk.labels[offset];
  }

  /** Draws the batch's augmentations and masks from streams of (seed, epoch, step). */
  private finish(batch: HostBatch): HostBatch {
    const { height: H, width: W } = this.source;
    const rng = this.rng.fork(`batch ${batch.epoch} ${batch.step}`);
    batch.augs = this.augment
      ? sampleAugmentations(rng.fork("augment"), batch.n, H, W, this.augment)
      : identityAugmentations(batch.n, H, W);
    batch.masks = this.masking?.generateBatch(rng.fork("mask"), batch.n) ?? null;
    this.stats.batchesPrepared++;
    return batch;
  }

  /**
   * Uploads a host batch (uint8, packed 4 per word) and renders its views on the GPU, with labels
   * and masks. Recorded in stream order; call inside the step's scope or dispose the result.
   */
  toGpu(batch: HostBatch, views: readonly ViewSpec[]): GpuBatch {
    const { channels: C, height: H, width: W } = this.source;
    const upload = uploadPixels(batch.pixels, batch.n, C, H, W);
    const rendered = augmentViews(upload, batch.augs, views);
    upload.pixels.dispose();
    const labels = tensor(batch.labels, [batch.n], "i32");
    const masks = batch.masks && this.masking
      ? maskTensor(batch.masks, batch.n, this.masking.patches)
      : null;
    return {
      epoch: batch.epoch,
      step: batch.step,
      n: batch.n,
      views: rendered,
      labels,
      masks,
      dispose() {
        for (const t of [...rendered, labels, masks]) t?.dispose();
      },
    };
  }
}

/** Fisher–Yates with a seeded stream. */
function shuffleInPlace(values: number[], rng: Rng): void {
  for (let i = values.length - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [values[i], values[j]] = [values[j], values[i]];
  }
}
