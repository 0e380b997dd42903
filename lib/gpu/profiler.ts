// Per-kernel GPU time from timestamp queries. In profiling mode (initGpu({ profile: true })) the
// recorder gives every dispatch its own compute pass whose begin and end timestamps land in a query
// set; each submit resolves the set into a readback buffer, and `collect` maps those and sums the
// time by kernel name. One pass per dispatch adds a little overhead per dispatch, so read the
// table's shares, not its absolute total, as the profile of a normal run. On lavapipe the timestamps can
// miss work (bench/main.ts prints the share of a case's wall time they do not cover; README,
// "Profiling", has the figures): where they disagree with the wall clock, trust the wall clock.

/** Timestamps per batch: two per dispatch; the recorder submits when the set is full. */
const QUERIES = 4096;

export interface KernelTime {
  name: string;
  dispatches: number;
  ms: number;
}

export class KernelProfiler {
  private readonly querySet: GPUQuerySet;
  private readonly resolveBuffer: GPUBuffer;
  /** Kernel names of the current batch, one per pair of timestamps. */
  private names: string[] = [];
  /** Resolved batches waiting to be read. */
  private pending: { buffer: GPUBuffer; names: string[] }[] = [];
  private readonly totals = new Map<string, { dispatches: number; ns: number }>();

  constructor(private readonly device: GPUDevice) {
    this.querySet = device.createQuerySet({ type: "timestamp", count: QUERIES });
    this.resolveBuffer = device.createBuffer({
      label: "profiler resolve",
      size: QUERIES * 8,
      usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
    });
  }

  /** Whether the query set has no room for another dispatch (the recorder submits first). */
  get full(): boolean {
    return 2 * this.names.length >= QUERIES;
  }

  /** The timestamp writes of the pass that will hold kernel `name`'s dispatch. */
  timestampWrites(name: string): GPUComputePassTimestampWrites {
    const at = 2 * this.names.length;
    this.names.push(name);
    return { querySet: this.querySet, beginningOfPassWriteIndex: at, endOfPassWriteIndex: at + 1 };
  }

  /** Records the batch's resolve and readback copy at the end of `encoder` (before its submit). */
  resolve(encoder: GPUCommandEncoder): void {
    if (this.names.length === 0) return;
    const bytes = this.names.length * 16;
    const buffer = this.device.createBuffer({
      label: "profiler readback",
      size: bytes,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    encoder.resolveQuerySet(this.querySet, 0, 2 * this.names.length, this.resolveBuffer, 0);
    encoder.copyBufferToBuffer(this.resolveBuffer, 0, buffer, 0, bytes);
    this.pending.push({ buffer, names: this.names });
    this.names = [];
  }

  /** Reads every submitted batch into the totals (call after the recorder's sync). */
  async collect(): Promise<void> {
    const batches = this.pending;
    this.pending = [];
    for (const { buffer, names } of batches) {
      await buffer.mapAsync(GPUMapMode.READ);
      const stamps = new BigUint64Array(buffer.getMappedRange());
      names.forEach((name, i) => {
        const ns = Number(stamps[2 * i + 1] - stamps[2 * i]);
        const total = this.totals.get(name) ?? { dispatches: 0, ns: 0 };
        total.dispatches++;
        total.ns += ns;
        this.totals.set(name, total);
      });
      buffer.unmap();
      buffer.destroy();
    }
  }

  /**
   * Forgets the totals (e.g. after warm-up steps), batches submitted but not yet collected included:
   * they are read first, or the next collect would bill them to what follows.
   */
  async reset(): Promise<void> {
    await this.collect();
    this.totals.clear();
  }

  /** Time per kernel name, most expensive first. */
  table(): KernelTime[] {
    return [...this.totals].map(([name, t]) => ({
      name,
      dispatches: t.dispatches,
      ms: t.ns / 1e6,
    })).sort((a, b) => b.ms - a.ms);
  }
}
