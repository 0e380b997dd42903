// Loading shard items (read, decode, resize) in a pool of Workers (lib/io/worker_pool.ts), one
// per core by default, with results handed back in input order so that the shards are the same
// bytes whatever the number of workers.
//
//   const pool = new ItemPool({ workers: 4, read: inputReadPaths(spec) });
//   for await (const r of pool.loadAll(items, options)) { r.pixels ?? r.reason }
//   pool.close();
//
// Memory is bounded: `loadAll` keeps at most `window` items in flight (default 4 per worker).
// The workers may read the input only; the main thread writes. IDX items (already in memory, next
// to no work each) are loaded on the main thread.

import { ImageDecodeError } from "./decode.ts";
import type { ItemReply, ItemRequest } from "./item_worker.ts";
import { type Item, loadItem, type LoadOptions } from "./sources.ts";
import { WorkerPool } from "../io/worker_pool.ts";

export { defaultWorkers, moduleReadPaths } from "../io/worker_pool.ts";

/** The worker's module. */
export const ITEM_WORKER_URL = new URL("./item_worker.ts", import.meta.url);

/** One loaded item: its pixels, or the reason it was rejected (an ImageDecodeError's message). */
export type Loaded = ItemReply;

export interface ItemPoolOptions {
  workers: number;
  /** Files or folders the workers may read (the input). */
  read: string[];
}

export class ItemPool {
  private readonly pool: WorkerPool<ItemRequest, ItemReply>;

  constructor(readonly options: ItemPoolOptions) {
    this.pool = new WorkerPool({ ...options, module: ITEM_WORKER_URL, name: "decoding" });
  }

  /** Workers started so far (at most `options.workers`). */
  get started(): number {
    return this.pool.started;
  }

  /** Loads one item (IDX items here, file items in a worker). */
  load(item: Item, options: LoadOptions): Promise<Loaded> {
    if (item.kind !== "file") return loadHere(item, options);
    return this.pool.run({ path: item.path, options }).catch((error: Error) => {
      throw new Error(`peco: shard: ${item.rel}: ${error.message}`);
    });
  }

  /**
   * Loads `items` in order, keeping at most `window` of them in flight. Stopping the iteration
   * early (break, throw) leaves nothing running that is still awaited; close the pool after.
   */
  async *loadAll(
    items: Iterable<Item>,
    options: LoadOptions,
    window = 4 * this.options.workers,
  ): AsyncGenerator<Loaded> {
    const ahead: Promise<Loaded>[] = [];
    const iterator = items[Symbol.iterator]();
    let done = false;
    const fill = () => {
      while (!done && ahead.length < window) {
        const next = iterator.next();
        if (next.done) done = true;
        else {
          const loading = this.load(next.value, options);
          loading.catch(() => {}); // awaited in order below; not an unhandled rejection meanwhile
          ahead.push(loading);
        }
      }
    };
    fill();
    while (ahead.length) {
      const loaded = await ahead.shift()!;
      fill();
      yield loaded;
    }
  }

  /** Stops the workers; loads still queued or in flight are rejected. */
  close(): void {
    this.pool.close();
  }
}

async function loadHere(item: Item, options: LoadOptions): Promise<Loaded> {
  try {
    return { pixels: await loadItem(item, options) };
  } catch (error) {
    if (error instanceof ImageDecodeError) return { reason: error.message };
    throw error;
  }
}
