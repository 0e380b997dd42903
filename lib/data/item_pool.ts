// Loading shard items (read, decode, resize) in a pool of Workers, one per core by default, with
// results handed back in input order so that the shards are the same bytes whatever the number
// of workers.
//
//   const pool = new ItemPool({ workers: 4, read: inputReadPaths(spec) });
//   for await (const r of pool.loadAll(items, options)) { r.pixels ?? r.reason }
//   pool.close();
//
// Memory is bounded: `loadAll` keeps at most `window` items in flight (default 4 per worker) and
// each worker holds at most two requests. Least privilege: each Worker may read the paths given
// (the input) and, while its modules load, their folder (`workerReadPaths`); nothing else — no
// write, net, env, run, ffi or sys; the main thread writes. This needs
// `--unstable-worker-options` (deno.json "unstable"; tools/compile.ts for the binary). IDX items
// (already in memory, next to no work each) are loaded on the main thread.

import { ImageDecodeError } from "./decode.ts";
import type { ItemReply, ItemRequest } from "./item_worker.ts";
import { type Item, loadItem, type LoadOptions } from "./sources.ts";

/** The worker's module. */
export const ITEM_WORKER_URL = new URL("./item_worker.ts", import.meta.url);

/**
 * What a pool's workers read besides the input: the folder of their modules (this one), which
 * Deno checks when a Worker loads a local module, and which each worker gives up once its modules
 * are loaded (lib/data/item_worker.ts). The stage's access must include it.
 */
export function workerReadPaths(): string[] {
  return import.meta.dirname ? [import.meta.dirname] : [];
}

/** Default worker count: the cores Deno reports (1 when it cannot tell). */
export function defaultWorkers(): number {
  return Math.max(1, navigator.hardwareConcurrency || 1);
}

/** One loaded item: its pixels, or the reason it was rejected (an ImageDecodeError's message). */
export type Loaded = { pixels: Uint8Array; reason?: undefined } | {
  pixels?: undefined;
  reason: string;
};

export interface ItemPoolOptions {
  workers: number;
  /** Files or folders the workers may read (the input). */
  read: string[];
}

interface Pending {
  request: ItemRequest;
  resolve(loaded: Loaded): void;
  reject(error: Error): void;
}

const PER_WORKER = 2;

export class ItemPool {
  private readonly workers: Worker[] = [];
  private readonly busy: number[] = [];
  private readonly queue: Pending[] = [];
  private readonly inFlight = new Map<number, { pending: Pending; worker: number }>();
  private nextId = 0;
  private failure: Error | null = null;

  constructor(readonly options: ItemPoolOptions) {
    const { workers } = options;
    if (!Number.isSafeInteger(workers) || workers < 1) {
      throw new Error(`peco: item pool: workers must be a positive integer, got ${workers}`);
    }
  }

  /** Starts worker number `this.workers.length` (workers start when there is work for them). */
  private spawn(): void {
    const w = this.workers.length;
    const worker = new Worker(ITEM_WORKER_URL.href, {
      type: "module",
      name: `peco item worker ${w}`,
      deno: {
        permissions: {
          read: [...this.options.read, ...workerReadPaths()],
          write: false,
          net: false,
          env: false,
          run: false,
          ffi: false,
          sys: false,
          import: false,
        },
      },
    } as WorkerOptions);
    worker.onmessage = (event: MessageEvent<ItemReply>) => this.settle(w, event.data);
    worker.onerror = (event) => {
      event.preventDefault();
      this.fail(new Error(`peco: item pool: worker ${w} failed: ${event.message}`));
    };
    this.workers.push(worker);
    this.busy.push(0);
  }

  /** Workers started so far (at most `options.workers`). */
  get started(): number {
    return this.workers.length;
  }

  /** Loads one item (IDX items here, file items in a worker). */
  load(item: Item, options: LoadOptions): Promise<Loaded> {
    if (this.failure) return Promise.reject(this.failure);
    if (item.kind !== "file") return loadHere(item, options);
    const request = { id: this.nextId++, path: item.path, name: item.rel, options };
    return new Promise<Loaded>((resolve, reject) => {
      this.queue.push({ request, resolve, reject });
      this.dispatch();
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

  /** Stops the workers; requests still queued or in flight are rejected. */
  close(): void {
    this.fail(new Error("peco: item pool: closed"));
  }

  private dispatch(): void {
    while (this.queue.length) {
      let w = 0;
      for (let k = 1; k < this.busy.length; k++) if (this.busy[k] < this.busy[w]) w = k;
      if (
        !this.workers.length || (this.busy[w] > 0 && this.workers.length < this.options.workers)
      ) {
        this.spawn();
        w = this.workers.length - 1;
      }
      if (this.busy[w] >= PER_WORKER) return;
      const pending = this.queue.shift()!;
      this.busy[w]++;
      this.inFlight.set(pending.request.id, { pending, worker: w });
      this.workers[w].postMessage(pending.request);
    }
  }

  private settle(w: number, reply: ItemReply): void {
    const entry = this.inFlight.get(reply.id);
    if (!entry) return;
    this.inFlight.delete(reply.id);
    this.busy[w]--;
    if (reply.error !== undefined) {
      entry.pending.reject(new Error(`peco: shard: ${reply.error}`));
    } else if (reply.pixels) entry.pending.resolve({ pixels: reply.pixels });
    else entry.pending.resolve({ reason: reply.reason! });
    this.dispatch();
  }

  private fail(error: Error): void {
    this.failure ??= error;
    for (const worker of this.workers) worker.terminate();
    this.workers.length = 0; // none is started again after a failure: load() rejects first
    this.busy.length = 0;
    for (const { pending } of this.inFlight.values()) pending.reject(error);
    for (const pending of this.queue.splice(0)) pending.reject(error);
    this.inFlight.clear();
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
