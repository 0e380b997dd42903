// A pool of module Workers that may read given paths and nothing else, for the CPU-heavy parts of
// the data path (decoding in the shard stage, shard reads and checks in the loader).
//
//   const pool = new WorkerPool<Req, Res>({ module: workerUrl, workers: 4, read: [input],
//                                          name: "decode" });
//   const res = await pool.run(req);     // any worker; replies may come back in any order
//   pool.close();
//
//   // w.ts (the worker module):
//   serveRequests<Req, Res>(async (req) => ({ reply: res, transfer: [res.buffer] }));
//
// Workers start when there is work for them (at most `workers`), and each holds at most two
// requests at a time. Least privilege: a worker may read the paths given and, while its modules
// load, the project's module folder (Deno checks read access to each local module a Worker
// loads; the stage's access must include `moduleReadPaths()`); `serveRequests` gives that up
// before the first request, and no worker may write, use the network, env, run, ffi or sys.
// Per-Worker permissions need `--unstable-worker-options` (deno.json "unstable";
// tools/compile.ts for the binary).

import { dirname } from "node:path";

/** The folder holding every module a pool worker loads (lib/), when modules are local files. */
export function moduleReadPaths(): string[] {
  return import.meta.dirname ? [dirname(import.meta.dirname)] : [];
}

/** Default worker count: the cores Deno reports (1 when it cannot tell). */
export function defaultWorkers(): number {
  return Math.max(1, navigator.hardwareConcurrency || 1);
}

export interface WorkerPoolOptions {
  /** The worker's module (it calls `serveRequests`). */
  module: URL;
  workers: number;
  /** Files or folders the workers may read. */
  read: string[];
  /** For messages and worker names. */
  name: string;
}

interface Envelope<T> {
  id: number;
  /** Absent in a ping (`warm`), which is answered without calling the handler. */
  body?: T;
}

interface ReplyEnvelope<T> {
  id: number;
  body?: T;
  /** An exception the handler threw (its message or stack). */
  error?: string;
}

interface Pending<Req, Res> {
  id: number;
  request: Req;
  transfer: Transferable[];
  resolve(reply: Res): void;
  reject(error: Error): void;
}

const PER_WORKER = 2;

export class WorkerPool<Req, Res> {
  private readonly workers: Worker[] = [];
  private readonly busy: number[] = [];
  private readonly queue: Pending<Req, Res>[] = [];
  private readonly inFlight = new Map<number, { pending: Pending<Req, Res>; worker: number }>();
  private nextId = 0;
  private failure: Error | null = null;

  constructor(readonly options: WorkerPoolOptions) {
    const { workers, name } = options;
    if (!Number.isSafeInteger(workers) || workers < 1) {
      throw new Error(
        `peco: ${name} workers: the count must be a positive integer, got ${workers}`,
      );
    }
  }

  /** Workers started so far (at most `options.workers`). */
  get started(): number {
    return this.workers.length;
  }

  /** Runs one request on a worker. Rejects when the handler threw or the pool failed/closed. */
  run(request: Req, transfer: Transferable[] = []): Promise<Res> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise<Res>((resolve, reject) => {
      this.queue.push({ id: this.nextId++, request, transfer, resolve, reject });
      this.dispatch();
    });
  }

  /**
   * Starts every worker and waits until each has loaded its modules and answers (so that timing
   * or a first batch does not include start-up).
   */
  async warm(): Promise<void> {
    while (this.workers.length < this.options.workers) this.spawn();
    await Promise.all(this.workers.map((worker) =>
      new Promise<void>((resolve, reject) => {
        const id = this.nextId++;
        const pending: Pending<Req, Res> = {
          id,
          request: undefined as Req,
          transfer: [],
          resolve: () => resolve(),
          reject,
        };
        const w = this.workers.indexOf(worker);
        this.busy[w]++;
        this.inFlight.set(id, { pending, worker: w });
        worker.postMessage({ id } satisfies Envelope<Req>);
      })
    ));
  }

  /** Stops the workers; requests still queued or in flight are rejected. */
  close(): void {
    this.fail(new Error(`peco: ${this.options.name} workers: closed`));
  }

  private spawn(): void {
    const w = this.workers.length;
    const worker = new Worker(this.options.module.href, {
      type: "module",
      name: `peco ${this.options.name} worker ${w}`,
      deno: {
        permissions: {
          read: [...this.options.read, ...moduleReadPaths()],
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
    worker.onmessage = (event: MessageEvent<ReplyEnvelope<Res>>) => this.settle(w, event.data);
    worker.onerror = (event) => {
      event.preventDefault();
      this.fail(new Error(`peco: ${this.options.name} worker ${w} failed: ${event.message}`));
    };
    this.workers.push(worker);
    this.busy.push(0);
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
      this.inFlight.set(pending.id, { pending, worker: w });
      const envelope: Envelope<Req> = { id: pending.id, body: pending.request };
      this.workers[w].postMessage(envelope, pending.transfer);
    }
  }

  private settle(w: number, reply: ReplyEnvelope<Res>): void {
    const entry = this.inFlight.get(reply.id);
    if (!entry) return;
    this.inFlight.delete(reply.id);
    this.busy[w]--;
    if (reply.error !== undefined) entry.pending.reject(new Error(reply.error));
    else entry.pending.resolve(reply.body!);
    this.dispatch();
  }

  private fail(error: Error): void {
    this.failure ??= error;
    for (const worker of this.workers) worker.terminate();
    this.workers.length = 0; // none is started again: run() rejects from now on
    this.busy.length = 0;
    for (const { pending } of this.inFlight.values()) pending.reject(error);
    for (const pending of this.queue.splice(0)) pending.reject(error);
    this.inFlight.clear();
  }
}

/**
 * The worker side: gives up read access to the module folder (every static import has loaded by
 * the time a module's body runs), then answers each request with `handle`. An exception becomes
 * the rejection of the caller's `run`, with its message (the handler should turn expected
 * failures into replies).
 */
export async function serveRequests<Req, Res>(
  handle: (request: Req) => Promise<{ reply: Res; transfer?: Transferable[] }>,
): Promise<void> {
  // The handler is set at once (a message must not find none); requests wait for the revocation.
  const revoked = Promise.all(
    moduleReadPaths().map((path) => Deno.permissions.revoke({ name: "read", path })),
  );
  // deno-lint-ignore no-explicit-any
  const scope = globalThis as any;
  scope.onmessage = async ({ data: { id, body } }: MessageEvent<Envelope<Req>>) => {
    await revoked; // no request is served before
    if (body === undefined) return scope.postMessage({ id } satisfies ReplyEnvelope<Res>);
    try {
      const { reply, transfer = [] } = await handle(body);
      scope.postMessage({ id, body: reply } satisfies ReplyEnvelope<Res>, transfer);
    } catch (error) {
      const text = error instanceof Error ? error.message : String(error);
      scope.postMessage({ id, error: text } satisfies ReplyEnvelope<Res>);
    }
  };
  await revoked;
}
