// GPU buffers recycled by size class. Intermediates of a step go back here at the end of the step
// and serve the next one, so a steady training loop allocates nothing after its first step.

import { GpuError } from "./errors.ts";

// UNIFORM too, so that an op may bind a range of a tensor as var<uniform> (conv2d's weights).
const USAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_SRC |
  GPUBufferUsage.COPY_DST;
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
  /** Textures the pool holds (in use + cached); their bytes count in the fields above. */
  textures: number;
}

let nextBufferId = 1;
/** Stable small ids for buffers: bind-group cache keys. */
export const bufferIds = new WeakMap<GPUBuffer, number>();
/** Stable small ids for the views of pooled textures: bind-group cache keys. */
export const textureViewIds = new WeakMap<GPUTextureView, number>();

// Filled by a compute pass (storage writes) or straight from a buffer (copies).
const TEXTURE_USAGE = GPUTextureUsage.TEXTURE_BINDING | GPUTextureUsage.STORAGE_BINDING |
  GPUTextureUsage.COPY_DST;

/** A pooled rgba32float texture (16 bytes a texel) with its one view. */
export interface PooledTexture {
  readonly texture: GPUTexture;
  readonly view: GPUTextureView;
  readonly width: number;
  readonly height: number;
  readonly bytes: number;
}

/**
 * Puts `item` into a free list kept in descending id order, so that pop() hands out the free one
 * made first. Which buffer an op gets then depends only on which are free, not on the order they
 * were released in: a training step gets the same buffers as the step before, and the recorder's
 * bind groups (cached by buffer) are reused rather than created again. Last-in first-out lists
 * permuted the buffers from step to step, and the MNIST tokenizer step created 320 bind groups for
 * its 626 dispatches, every step.
 */
function insertByAge<T>(list: T[], item: T, id: (t: T) => number): void {
  const key = id(item);
  let i = list.length;
  while (i > 0 && id(list[i - 1]) < key) i--;
  list.splice(i, 0, item);
}

const bufferId = (buffer: GPUBuffer) => bufferIds.get(buffer)!;
const textureId = (tex: PooledTexture) => textureViewIds.get(tex.view)!;

export class BufferPool {
  private free = new Map<number, GPUBuffer[]>();
  private sizes = new WeakMap<GPUBuffer, number>();
  readonly stats: PoolStats = {
    inUse: 0,
    peakInUse: 0,
    allocated: 0,
    peakAllocated: 0,
    buffers: 0,
    textures: 0,
  };
  private freeTextures = new Map<string, PooledTexture[]>();

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
    insertByAge(list, buffer, bufferId);
  }

  /**
   * An rgba32float texture of width × height texels (sampled and storage-writable), reused by
   * size. Textures are temporaries of one op: acquire and release them inside the op's call (the
   * recorder orders the work that reuses one).
   */
  acquireTexture(width: number, height: number, label = "texture"): PooledTexture {
    const key = `${width}x${height}`;
    let tex = this.freeTextures.get(key)?.pop();
    if (!tex) {
      const bytes = width * height * 16;
      this.device.pushErrorScope("out-of-memory");
      const texture = this.device.createTexture({
        label,
        size: [width, height],
        format: "rgba32float",
        usage: TEXTURE_USAGE,
      });
      const context = `${label} (${fmtBytes(bytes)}) with ${this.describe()}`;
      this.device.popErrorScope().then((error) => {
        if (error) {
          this.report(new GpuError(`GPU out of memory allocating ${context}: ${error.message}`));
        }
      });
      const view = texture.createView();
      textureViewIds.set(view, nextBufferId++);
      tex = { texture, view, width, height, bytes };
      this.stats.allocated += bytes;
      this.stats.peakAllocated = Math.max(this.stats.peakAllocated, this.stats.allocated);
      this.stats.textures++;
    }
    this.stats.inUse += tex.bytes;
    this.stats.peakInUse = Math.max(this.stats.peakInUse, this.stats.inUse);
    return tex;
  }

  releaseTexture(tex: PooledTexture): void {
    this.stats.inUse -= tex.bytes;
    const key = `${tex.width}x${tex.height}`;
    let list = this.freeTextures.get(key);
    if (!list) this.freeTextures.set(key, list = []);
    insertByAge(list, tex, textureId);
  }

  /** Destroys cached free buffers and textures (e.g. between stages). */
  trim(): void {
    for (const list of this.freeTextures.values()) {
      for (const tex of list) {
        tex.texture.destroy();
        this.stats.allocated -= tex.bytes;
        this.stats.textures--;
      }
    }
    this.freeTextures.clear();
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
