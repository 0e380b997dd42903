// The loader's shard reads in Workers: a RecordSource (lib/data/loader.ts) over a split whose
// chunks are read and checked — sha256 on the first read of each shard, the header on every read
// — by a pool of Workers (lib/io/worker_pool.ts) that may read the shard folder only. Reading and
// hashing are the host side's main cost per image (bench/loader.ts); the loader already reads a
// window of shards and the next one concurrently, so with workers those reads run on as many
// cores. What a run sees does not change: the same chunks, the same checks, the same batches.
//
//   const source = workerShardSource(splits.train, { workers: 2 });
//   const loader = new Loader(source, { batchSize, seed });
//   …
//   source.close(); // stops the workers

import { defaultWorkers, moduleReadPaths, WorkerPool } from "../io/worker_pool.ts";
import { memorySource, type RecordSource } from "./loader.ts";
import type { ShardReadRequest } from "./shard_read_worker.ts";
import type { ShardFileReader, SplitReader } from "./shards.ts";

export { defaultWorkers, moduleReadPaths };

/** The worker's module. */
export const SHARD_READ_WORKER_URL = new URL("./shard_read_worker.ts", import.meta.url);

export interface ClosableRecordSource extends RecordSource {
  /** Starts every worker now (else they start with the first reads). */
  warm(): Promise<void>;
  /** Stops the workers (reads still pending are rejected). */
  close(): void;
}

/** `split` as a RecordSource whose shard files are read and checked by `workers` Workers. */
export function workerShardSource(
  split: SplitReader,
  { workers = defaultWorkers() }: { workers?: number } = {},
): ClosableRecordSource {
  const pool = new WorkerPool<ShardReadRequest, Uint8Array>({
    module: SHARD_READ_WORKER_URL,
    workers,
    read: [split.dir],
    name: "shard read",
  });
  const read: ShardFileReader = (path, entry, geometry, verify) =>
    pool.run({ path, entry, geometry, verify });
  return {
    channels: split.channels,
    height: split.height,
    width: split.width,
    chunkSizes: split.shards.map((s) => s.count),
    readChunk: (index) => split.readShardWith(index, read),
    warm: () => pool.warm(),
    close: () => pool.close(),
  };
}

/**
 * A training stage's records: the whole split (shards read by Workers, as above), or its first
 * `limit` images held in memory (small runs and tests; `close` then does nothing).
 */
export async function trainingSource(
  split: SplitReader,
  limit: number | null,
): Promise<ClosableRecordSource> {
  if (limit === null || limit >= split.count) return workerShardSource(split);
  const b = await split.readRange(0, limit);
  const { channels, height, width } = split;
  const source = memorySource(b.pixels, b.labels, { channels, height, width, chunkSize: limit });
  return { ...source, warm: () => Promise.resolve(), close: () => {} };
}
