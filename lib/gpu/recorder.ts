// Records every dispatch of a step into one command encoder and one compute pass, and submits once
// (at `flush`, or when the host must read something back). Each dispatch's small params struct is
// appended to a uniform arena that is uploaded with a single writeBuffer per submit and bound with a
// dynamic offset, so bind groups depend on buffers only and are reused from step to step.

import { bufferIds, textureViewIds } from "./pool.ts";
import {
  type Constants,
  isTextureBinding,
  type Kernel,
  MAX_PARAMS_BYTES,
  type PipelineCache,
} from "./pipelines.ts";
import type { KernelProfiler } from "./profiler.ts";

/** What the recorder needs of the device (lib/gpu/device.ts's Gpu, which owns the recorder). */
export interface RecorderHost {
  readonly device: GPUDevice;
  /** The limits the device was created with (the adapter's own). */
  readonly limits: Record<string, number>;
  readonly pipelines: PipelineCache;
  readonly profiler: KernelProfiler | null;
  /** Throws the first error the device reported since the last call (out of memory, loss). */
  throwIfFailed(): void;
}

const ARENA_BYTES = 1 << 20;
const MAX_BIND_GROUPS = 50_000;

/** A byte range of a buffer, for a binding that must not see the whole buffer. */
export interface BufferSlice {
  buffer: GPUBuffer;
  offset: number;
  size: number;
}

export interface DispatchOptions {
  /**
   * One per kernel binding: a buffer or a BufferSlice (a "uniform" binding takes a slice within
   * maxUniformBufferBindingSize), or a texture view for "texture"/"storage-texture".
   */
  buffers: (GPUBuffer | BufferSlice | GPUTextureView)[];
  /** The params struct as 4-byte words; floats go in as `f32bits(x)`. */
  params?: ArrayLike<number>;
  constants?: Constants;
  workgroups: [number, number?, number?];
}

const f32View = new Float32Array(1);
const u32View = new Uint32Array(f32View.buffer);
/** The bit pattern of an f32, for a float field of a params struct. */
export function f32bits(value: number): number {
  f32View[0] = value;
  return u32View[0];
}

/** Workgroup counts for n invocations of a 1-D kernel, spread over y above 65535 groups. */
export function grid1d(n: number, workgroupSize: number): [number, number] {
  const groups = Math.max(1, Math.ceil(n / workgroupSize));
  if (groups <= 65535) return [groups, 1];
  const y = Math.ceil(groups / 65535);
  return [Math.ceil(groups / y), y];
}

const isSlice = (r: GPUBuffer | BufferSlice | GPUTextureView): r is BufferSlice =>
  "buffer" in r && "offset" in r;

export class Recorder {
  /** Name of the last kernel recorded, for error messages. */
  lastLabel = "(none)";
  dispatches = 0;
  submits = 0;
  /** Bind groups created (a steady training step creates none: they are cached by resource). */
  bindGroupsCreated = 0;
  /**
   * Model FLOPs of the work recorded so far: the ops that multiply matrices add 2 per multiply-add
   * of their mathematical product (lib/tensor/ops/flops.ts), read like `dispatches`.
   */
  flops = 0;
  /** Nesting depth of `withoutFlops`: while above 0, addFlops counts nothing. */
  private flopsMuted = 0;
  private encoder: GPUCommandEncoder | null = null;
  private pass: GPUComputePassEncoder | null = null;
  private arena: GPUBuffer;
  private arenaWords = new Uint32Array(ARENA_BYTES / 4);
  private arenaUsed = 0;
  private readonly slot: number;
  private bindGroups = new Map<string, GPUBindGroup>();
  /** Upload buffers of the unsubmitted work, destroyed once it is submitted. */
  private staging: GPUBuffer[] = [];

  constructor(private gpu: RecorderHost) {
    this.arena = gpu.device.createBuffer({
      label: "params arena",
      size: ARENA_BYTES,
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    });
    const align = gpu.limits.minUniformBufferOffsetAlignment ?? 256;
    this.slot = Math.ceil(MAX_PARAMS_BYTES / align) * align;
  }

  dispatch(kernel: Kernel, options: DispatchOptions): void {
    const { buffers, params, constants, workgroups } = options;
    if (buffers.length !== kernel.bindings.length) {
      throw new Error(
        `peco: kernel ${kernel.name} takes ${kernel.bindings.length} buffers, got ${buffers.length}`,
      );
    }
    const compiled = this.gpu.pipelines.get(kernel, constants);
    const profiler = this.gpu.profiler;
    if (this.arenaUsed + this.slot > ARENA_BYTES || profiler?.full) this.flush();
    // Profiling: every dispatch in a pass of its own, between two timestamps.
    if (profiler) this.endPass();
    const pass = this.beginPass(profiler?.timestampWrites(kernel.name));
    pass.setPipeline(compiled.pipeline);
    let key = compiled.layoutKey;
    for (let i = 0; i < buffers.length; i++) {
      const resource = buffers[i];
      if (isTextureBinding(kernel.bindings[i])) {
        key += ":t" + textureViewIds.get(resource as GPUTextureView);
      } else if (isSlice(resource)) {
        key += `:${bufferIds.get(resource.buffer)}@${resource.offset}+${resource.size}`;
      } else {
        key += ":" + bufferIds.get(resource as GPUBuffer);
      }
    }
    let group = this.bindGroups.get(key);
    if (!group) {
      const entries: GPUBindGroupEntry[] = buffers.map((resource, binding) => ({
        binding,
        resource: isTextureBinding(kernel.bindings[binding])
          ? resource as GPUTextureView
          : isSlice(resource)
          ? resource
          : { buffer: resource as GPUBuffer },
      }));
      if (kernel.params) {
        entries.push({
          binding: buffers.length,
          resource: { buffer: this.arena, offset: 0, size: MAX_PARAMS_BYTES },
        });
      }
      group = this.gpu.device.createBindGroup({ layout: compiled.layout, entries });
      this.bindGroupsCreated++;
      if (this.bindGroups.size >= MAX_BIND_GROUPS) this.bindGroups.clear();
      this.bindGroups.set(key, group);
    }
    if (kernel.params) {
      const offset = this.arenaUsed;
      const words = params ?? [];
      if (words.length * 4 > MAX_PARAMS_BYTES) {
        throw new Error(`peco: kernel ${kernel.name} params exceed ${MAX_PARAMS_BYTES} bytes`);
      }
      this.arenaWords.set(words, offset / 4);
      this.arenaUsed += this.slot;
      pass.setBindGroup(0, group, [offset]);
    } else {
      pass.setBindGroup(0, group);
    }
    const [x, y = 1, z = 1] = workgroups;
    pass.dispatchWorkgroups(x, y, z);
    if (profiler) this.endPass();
    this.lastLabel = kernel.name;
    this.dispatches++;
  }

  /** Adds n model FLOPs to `flops` (unless muted by `withoutFlops`). */
  addFlops(n: number): void {
    if (this.flopsMuted === 0) this.flops += n;
  }

  /**
   * Runs fn with addFlops muted: for an op that counts its own model FLOPs and computes them
   * through ops that would count theirs (a convolution's padded, dilated or strided products).
   */
  withoutFlops<T>(fn: () => T): T {
    this.flopsMuted++;
    try {
      return fn();
    } finally {
      this.flopsMuted--;
    }
  }

  /** Copies between buffers (ends the current compute pass). */
  copy(src: GPUBuffer, srcOffset: number, dst: GPUBuffer, dstOffset: number, bytes: number): void {
    this.endPass();
    this.ensureEncoder().copyBufferToBuffer(src, srcOffset, dst, dstOffset, bytes);
  }

  /**
   * Copies rows of rgba32float texels from a buffer into a texture from its row `originY`, column 0
   * (ends the current compute pass): `height` rows of `width` texels, `bytesPerRow` apart from
   * `srcOffset`.
   */
  copyToTexture(
    src: GPUBuffer,
    srcOffset: number,
    bytesPerRow: number,
    dst: GPUTexture,
    width: number,
    height: number,
    originY = 0,
  ): void {
    this.endPass();
    this.ensureEncoder().copyBufferToTexture(
      { buffer: src, offset: srcOffset, bytesPerRow },
      { texture: dst, origin: [0, originY] },
      [width, height],
    );
  }

  /** Records a host → GPU copy in order with the work recorded so far. */
  upload(dst: GPUBuffer, data: ArrayBufferView, dstOffset = 0): void {
    const bytes = Math.ceil(data.byteLength / 4) * 4;
    const staging = this.gpu.device.createBuffer({
      label: "upload",
      size: Math.max(4, bytes),
      usage: GPUBufferUsage.COPY_SRC,
      mappedAtCreation: true,
    });
    new Uint8Array(staging.getMappedRange()).set(
      new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
    );
    staging.unmap();
    this.copy(staging, 0, dst, dstOffset, bytes);
    this.staging.push(staging);
  }

  /** Submits everything recorded so far. */
  flush(): void {
    this.gpu.throwIfFailed();
    if (!this.encoder) return;
    this.endPass();
    if (this.arenaUsed > 0) {
      this.gpu.device.queue.writeBuffer(this.arena, 0, this.arenaWords, 0, this.arenaUsed / 4);
      this.arenaUsed = 0;
    }
    this.gpu.profiler?.resolve(this.encoder);
    this.gpu.device.queue.submit([this.encoder.finish()]);
    this.encoder = null;
    for (const buffer of this.staging) buffer.destroy();
    this.staging = [];
    this.submits++;
  }

  /**
   * Reads several buffer ranges back with one staging buffer, one submit and one mapAsync (each
   * mapAsync costs milliseconds: call this at log intervals, not every step).
   */
  async readMany(
    ranges: { buffer: GPUBuffer; bytes: number; offset?: number }[],
  ): Promise<ArrayBuffer[]> {
    const offsets: number[] = [];
    let total = 0;
    for (const range of ranges) {
      offsets.push(total);
      total += Math.ceil(range.bytes / 4) * 4;
    }
    const staging = this.gpu.device.createBuffer({
      label: "readback",
      size: Math.max(4, total),
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    ranges.forEach((range, i) => {
      const bytes = Math.ceil(range.bytes / 4) * 4;
      if (bytes > 0) this.copy(range.buffer, range.offset ?? 0, staging, offsets[i], bytes);
    });
    this.flush();
    try {
      await staging.mapAsync(GPUMapMode.READ);
    } catch (error) {
      this.gpu.throwIfFailed();
      throw error;
    }
    this.gpu.throwIfFailed();
    const mapped = staging.getMappedRange();
    const out = ranges.map((range, i) => mapped.slice(offsets[i], offsets[i] + range.bytes));
    staging.unmap();
    staging.destroy();
    return out;
  }

  /** Waits until the GPU has finished all submitted work (for benchmarks). */
  async sync(): Promise<void> {
    this.flush();
    await this.gpu.device.queue.onSubmittedWorkDone();
    this.gpu.throwIfFailed();
  }

  private ensureEncoder(): GPUCommandEncoder {
    return this.encoder ??= this.gpu.device.createCommandEncoder({ label: "step" });
  }

  private beginPass(timestampWrites?: GPUComputePassTimestampWrites): GPUComputePassEncoder {
    return this.pass ??= this.ensureEncoder().beginComputePass(
      timestampWrites ? { timestampWrites } : undefined,
    );
  }

  private endPass(): void {
    this.pass?.end();
    this.pass = null;
  }
}
