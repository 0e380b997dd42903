// GPU buffers recycled by size class. Intermediates of a step go back here at the end of the step
// and serve the next one, so a steady training loop allocates nothing after its first step.

import { GpuError } from "./device.ts";

const USAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
const MIN_CLASS = 256;

/** Size class of a request: powers of two up to 1 MiB, then steps of 1/8 of the power of two. */
export function sizeClass(bytes: number): number {
  const n = Math.max(MIN_CLASS, bytes);
  const pow = 2 ** Math.ceil(Math.log2(n));
  if (pow <= 1 << 20) return pow;
  const step = pow / 16;
  return Math.ceil(n / step) * step;
}

export interface PoolStats {
  /** Bytes handed out and not yet released. */
  inUse: number;
  peakInUse: number;
  /** Bytes of all GPU buffers the pool holds (in use + cached). */
  allocated: number;
  peakAllocated: number;
  buffers: number;
}

let nextBufferId = 1;
/** Stable small ids for buffers: bind-group cache keys. */
export const bufferIds = new WeakMap<GPUBuffer, number>();

export class BufferPool {
  private free = new Map<number, GPUBuffer[]>();
  private sizes = new WeakMap<GPUBuffer, number>();
  readonly stats: PoolStats = {
    inUse: 0,
    peakInUse: 0,
    allocated: 0,
    peakAllocated: 0,
    buffers: 0,
  };

  constructor(
    private device: GPUDevice,
    private maxBufferSize: number,
    private maxBindingSize: number,
    private report: (error: GpuError) => void,
  ) {}

  acquire(bytes: number, label = "tensor"): GPUBuffer {
    if (bytes > this.maxBindingSize) {
      throw new GpuError(
        `GPU out of memory: ${label} needs ${
          fmtBytes(bytes)
        }, above the adapter's largest storage ` +
          `binding ${fmtBytes(this.maxBindingSize)} (${this.describe()})`,
      );
    }
    const size = Math.min(sizeClass(bytes), Math.max(bytes, this.maxBindingSize));
    let buffer = this.free.get(size)?.pop();
    if (!buffer) {
      if (size > this.maxBufferSize) {
        throw new GpuError(
          `GPU out of memory: ${label} needs ${
            fmtBytes(bytes)
          }, above the adapter's maxBufferSize ` +
            `${fmtBytes(this.maxBufferSize)} (${this.describe()})`,
        );
      }
      buffer = this.allocate(size, label);
    }
    this.stats.inUse += size;
    this.stats.peakInUse = Math.max(this.stats.peakInUse, this.stats.inUse);
    return buffer;
  }

  release(buffer: GPUBuffer): void {
    const size = this.sizes.get(buffer);
    if (size === undefined) throw new GpuError("peco: released a buffer the pool does not own");
    this.stats.inUse -= size;
    let list = this.free.get(size);
    if (!list) this.free.set(size, list = []);
    list.push(buffer);
  }

  /** Destroys cached free buffers (e.g. between stages). */
  trim(): void {
    for (const [size, list] of this.free) {
      for (const buffer of list) {
        buffer.destroy();
        this.stats.allocated -= size;
        this.stats.buffers--;
      }
    }
    this.free.clear();
  }

  resetPeak(): void {
    this.stats.peakInUse = this.stats.inUse;
    this.stats.peakAllocated = this.stats.allocated;
  }

  describe(): string {
    const s = this.stats;
    return `pool: ${fmtBytes(s.inUse)} in use, peak ${fmtBytes(s.peakInUse)}, ` +
      `${fmtBytes(s.allocated)} allocated in ${s.buffers} buffers`;
  }

  private allocate(size: number, label: string): GPUBuffer {
    this.device.pushErrorScope("out-of-memory");
    const buffer = this.device.createBuffer({ size, usage: USAGE, label });
    const context = `${label} (${fmtBytes(size)}) with ${this.describe()}`;
    this.device.popErrorScope().then((error) => {
      if (error) {
        this.report(new GpuError(`GPU out of memory allocating ${context}: ${error.message}`));
      }
    });
    this.sizes.set(buffer, size);
    bufferIds.set(buffer, nextBufferId++);
    this.stats.allocated += size;
    this.stats.peakAllocated = Math.max(this.stats.peakAllocated, this.stats.allocated);
    this.stats.buffers++;
    return buffer;
  }
}

export function fmtBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1 << 20) return `${(bytes / 1024).toFixed(1)} KiB`;
  if (bytes < 1 << 30) return `${(bytes / (1 << 20)).toFixed(1)} MiB`;
  return `${(bytes / (1 << 30)).toFixed(2)} GiB`;
}
