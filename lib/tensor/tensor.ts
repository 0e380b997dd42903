// Tensor: a shape, a dtype and a pooled GPU buffer, plus the autograd node that made it.
// Memory is managed by scopes (`tidy`): every tensor created inside a scope is released when the
// scope ends, except the tensors it returns and those marked with `keep` (parameters, gradients,
// optimizer state).

import { gpu } from "../gpu/device.ts";
import type { BufferSlice } from "../gpu/recorder.ts";

export type DType = "f32" | "i32" | "u32";
export type Shape = readonly number[];

/**
 * A buffer shared by several storages (parameters packed into one buffer, see flat.ts): goes back
 * to the pool when its last holder releases it.
 */
export class SharedBuffer {
  private refs = 1;
  private constructor(readonly buffer: GPUBuffer, readonly bytes: number) {}

  /** A pooled buffer of `bytes` (its contents are whatever the pool had: fill it). */
  static allocate(bytes: number, label: string): SharedBuffer {
    return new SharedBuffer(gpu().pool.acquire(bytes, label), bytes);
  }

  /** A tensor over `shape` at `byteOffset` of this buffer (256-byte aligned for a binding). */
  view(byteOffset: number, shape: Shape, dtype: DType = "f32"): Tensor {
    const size = shape.reduce((a, b) => a * b, 1);
    if (byteOffset % 4 !== 0 || byteOffset + 4 * size > this.bytes) {
      throw new Error(`peco: view [${shape}] at byte ${byteOffset} of a ${this.bytes}-byte buffer`);
    }
    const storage = new Storage(this.buffer, 4 * size);
    storage.refs = 0;
    storage.offset = byteOffset;
    storage.shared = this;
    this.retain();
    return new Tensor(shape, dtype, storage);
  }

  retain(): void {
    this.refs++;
  }

  release(): void {
    if (--this.refs === 0) gpu().pool.release(this.buffer);
  }
}

/**
 * The bytes of a tensor and its views (reshape, detach): a pooled buffer of its own, a range at
 * `offset` of a SharedBuffer, or a range of another storage (`parent`: a slice that is a view).
 * Freed when the last view goes. A parameter's storage may move into a shared buffer
 * (`relocate`): its views follow.
 */
class Storage {
  refs = 1;
  offset = 0;
  shared: SharedBuffer | null = null;
  parent: Storage | null = null;
  /** Storages that are ranges of this one (they hold a reference to it). */
  ranges = 0;
  constructor(public buffer: GPUBuffer, readonly bytes: number) {}

  release(): void {
    if (this.parent) {
      this.parent.ranges--;
      if (--this.parent.refs === 0) this.parent.release();
    } else if (this.shared) this.shared.release();
    else gpu().pool.release(this.buffer);
  }
}

/** Backward rule of the op that produced a tensor: gradient of the output → one per input. */
export interface Node {
  readonly op: string;
  readonly inputs: readonly Tensor[];
  /**
   * Which inputs required a gradient when the op ran: backward follows only those, so a module
   * frozen for one forward pass (its weights' requiresGrad cleared, then restored) gets no gradient
   * from it even if backward runs after the restore.
   */
  readonly needsGrad: readonly boolean[];
  /**
   * With `accumulates`, backward gets `prior`: each input's gradient summed so far from the ops
   * that consumed it later in the forward pass (null if none, or if the input appears twice), and
   * returns each input's total, prior included (null: no contribution, the prior stands). A fused
   * kernel then adds the prior as it writes, where a separate addition would take a dispatch.
   */
  readonly accumulates?: boolean;
  readonly backward: (
    grad: Tensor,
    prior: readonly (Tensor | null)[],
  ) => readonly (Tensor | null)[];
}

let nextTensorId = 1;

export class Tensor {
  readonly id = nextTensorId++;
  readonly size: number;
  requiresGrad = false;
  grad: Tensor | null = null;
  /**
   * Where backward writes this leaf's gradient, when set: a kept view of a flat gradient buffer
   * (see flat.ts), so that optimizers and clipping treat all gradients as one range.
   */
  gradHome: Tensor | null = null;
  node: Node | null = null;
  /** Survives scopes (parameters, gradients, optimizer state): released only by `dispose`. */
  kept = false;
  name = "";
  private storage: Storage | null;

  constructor(readonly shape: Shape, readonly dtype: DType, storage?: Storage) {
    for (const d of shape) {
      if (!Number.isInteger(d) || d < 0) throw new Error(`peco: invalid shape [${shape}]`);
    }
    this.size = shape.reduce((a, b) => a * b, 1);
    if (storage) {
      storage.refs++;
      this.storage = storage;
    } else {
      const bytes = this.size * 4;
      this.storage = new Storage(gpu().pool.acquire(bytes, `${dtype}[${shape}]`), bytes);
    }
    track(this);
  }

  get rank(): number {
    return this.shape.length;
  }

  /** The tensor's own GPU buffer; for a tensor inside a shared buffer use `binding`. */
  get buffer(): GPUBuffer {
    const storage = this.live();
    if (storage.offset !== 0) {
      throw new Error(
        `peco: tensor ${this.describe()} lives at byte ${storage.offset} of a shared buffer: ` +
          "bind it with .binding, copy it with .gpuBuffer and .byteOffset",
      );
    }
    return storage.buffer;
  }

  /** What a kernel binds: the buffer, or the tensor's byte range of a shared buffer. */
  get binding(): GPUBuffer | BufferSlice {
    const storage = this.live();
    if (storage.offset === 0) return storage.buffer;
    return { buffer: storage.buffer, offset: storage.offset, size: Math.max(4, storage.bytes) };
  }

  /** The GPU buffer that holds the values, from `byteOffset` on (for copies). */
  get gpuBuffer(): GPUBuffer {
    return this.live().buffer;
  }

  get byteOffset(): number {
    return this.live().offset;
  }

  /** Whether this tensor and `other` are views of the same storage. */
  sharesStorage(other: Tensor): boolean {
    return this.storage !== null && this.storage === other.storage;
  }

  /**
   * Moves the values to `offset` (256-byte aligned) of `target` (copied in stream order); every
   * view of this storage follows. The old buffer goes back to the pool.
   */
  relocate(target: SharedBuffer, offset: number): void {
    const storage = this.live();
    if (storage.ranges > 0 || storage.parent) {
      throw new Error(`peco: cannot move ${this.describe()}: it is, or has, a range view`);
    }
    if (storage.bytes > 0) {
      gpu().recorder.copy(storage.buffer, storage.offset, target.buffer, offset, storage.bytes);
    }
    target.retain();
    storage.release();
    storage.buffer = target.buffer;
    storage.offset = offset;
    storage.shared = target;
  }

  private live(): Storage {
    if (!this.storage) throw new Error(`peco: tensor ${this.describe()} used after dispose`);
    return this.storage;
  }

  get disposed(): boolean {
    return this.storage === null;
  }

  describe(): string {
    return `${this.name || "tensor"}<${this.dtype}>[${this.shape.join(",")}]`;
  }

  /** A tensor of another shape over the same buffer (no copy, no autograd: see ops.reshape). */
  view(shape: Shape): Tensor {
    const size = shape.reduce((a, b) => a * b, 1);
    if (size !== this.size) {
      throw new Error(`peco: cannot view ${this.describe()} as [${shape.join(",")}]`);
    }
    return new Tensor(shape, this.dtype, this.storage!);
  }

  /**
   * `shape` over this tensor's elements from `start` on, without a copy (no autograd: see
   * ops.slice). A kernel can bind it only when its byte offset in the buffer is a multiple of 256.
   */
  range(start: number, shape: Shape): Tensor {
    const parent = this.live();
    const size = shape.reduce((a, b) => a * b, 1);
    if (!Number.isInteger(start) || start < 0 || start + size > this.size) {
      throw new Error(`peco: range [${shape}] from ${start} does not fit ${this.describe()}`);
    }
    const storage = new Storage(parent.buffer, 4 * size);
    storage.refs = 0;
    storage.offset = parent.offset + 4 * start;
    storage.parent = parent;
    parent.refs++;
    parent.ranges++;
    return new Tensor(shape, this.dtype, storage);
  }

  /** The same values, cut from the autograd graph. */
  detach(): Tensor {
    return this.view(this.shape);
  }

  dispose(): void {
    if (!this.storage) return;
    if (--this.storage.refs === 0) this.storage.release();
    this.storage = null;
    this.node = null;
  }

  /** Reads the values back (one submit + map: not for hot loops). */
  async read(): Promise<Float32Array | Int32Array | Uint32Array> {
    const [bytes] = await gpu().recorder.readMany([byteRange(this)]);
    return typedArray(this.dtype, bytes);
  }

  /** Reads the values back as float64 (for tests and host-side math). */
  async toArray(): Promise<number[]> {
    return Array.from(await this.read());
  }

  /** Reads a one-element tensor. */
  async item(): Promise<number> {
    if (this.size !== 1) throw new Error(`peco: item() on ${this.describe()}`);
    return (await this.read())[0];
  }
}

export function typedArray(
  dtype: DType,
  bytes: ArrayBuffer,
): Float32Array | Int32Array | Uint32Array {
  if (dtype === "f32") return new Float32Array(bytes);
  if (dtype === "i32") return new Int32Array(bytes);
  return new Uint32Array(bytes);
}

/**
 * Copies src's values into dst (same number of elements), in stream order with the recorded work:
 * a buffer copy, no dispatch. Either may live in a shared buffer.
 */
export function copyValues(dst: Tensor, src: Tensor): void {
  if (dst.size !== src.size) {
    throw new Error(`peco: copy ${src.describe()} into ${dst.describe()}: sizes differ`);
  }
  if (dst.sharesStorage(src)) return;
  copyInto(dst, src, 0);
}

/** Copies src's values into dst's elements [at, at + src.size) (a buffer copy, no dispatch). */
export function copyInto(dst: Tensor, src: Tensor, at: number): void {
  if (!Number.isInteger(at) || at < 0 || at + src.size > dst.size) {
    throw new Error(`peco: copy ${src.describe()} into ${dst.describe()} at ${at}: out of range`);
  }
  if (src.size === 0) return;
  const to = dst.byteOffset + at * 4;
  gpu().recorder.copy(src.gpuBuffer, src.byteOffset, dst.gpuBuffer, to, src.size * 4);
}

/** Uploads host values into dst, in stream order with the recorded work. */
export function uploadValues(dst: Tensor, data: ArrayBufferView): void {
  if (dst.size > 0) gpu().recorder.upload(dst.gpuBuffer, data, dst.byteOffset);
}

/** A tensor's bytes as a range of its GPU buffer (for readMany). */
export function byteRange(t: Tensor): { buffer: GPUBuffer; offset: number; bytes: number } {
  return { buffer: t.gpuBuffer, offset: t.byteOffset, bytes: t.size * 4 };
}

/** Reads several tensors with a single submit and map (e.g. all logged scalars of a step). */
export async function readAll(tensors: Tensor[]): Promise<Float32Array[]> {
  const buffers = await gpu().recorder.readMany(
    tensors.map(byteRange),
  );
  return buffers.map((b) => new Float32Array(b));
}

// ---- scopes ---------------------------------------------------------------------------------

const scopes: Tensor[][] = [];

function track(t: Tensor): void {
  scopes[scopes.length - 1]?.push(t);
}

/** Marks tensors to survive every scope (until disposed explicitly). */
export function keep<T extends Tensor>(t: T): T {
  t.kept = true;
  return t;
}

/** Runs fn; releases every tensor it created except those returned (anywhere in the result). */
export function tidy<T>(fn: () => T): T {
  scopes.push([]);
  let result: T;
  try {
    result = fn();
  } catch (error) {
    endScope(new Set());
    throw error;
  }
  if (result instanceof Promise) throw new Error("peco: tidy() takes a synchronous function");
  endScope(collect(result));
  return result;
}

function endScope(returned: Set<Tensor>): void {
  const created = scopes.pop()!;
  const parent = scopes[scopes.length - 1];
  for (const t of created) {
    if (returned.has(t)) parent?.push(t);
    else if (!t.kept) t.dispose();
  }
}

function collect(value: unknown, found = new Set<Tensor>()): Set<Tensor> {
  if (value instanceof Tensor) found.add(value);
  else if (Array.isArray(value)) { for (const v of value) collect(v, found); }
  else if (value && typeof value === "object" && !(ArrayBuffer.isView(value))) {
    for (const v of Object.values(value)) collect(v, found);
  }
  return found;
}

// ---- gradient mode --------------------------------------------------------------------------

let gradEnabled = true;

export function isGradEnabled(): boolean {
  return gradEnabled;
}

/** Runs fn without recording autograd nodes. */
export function noGrad<T>(fn: () => T): T {
  const previous = gradEnabled;
  gradEnabled = false;
  try {
    return fn();
  } finally {
    gradEnabled = previous;
  }
}

/**
 * Attaches a backward rule to `out` when gradients are on and an input needs one. Every op calls
 * this right after its forward kernel, so an op's forward and backward stand side by side.
 */
export function record(
  op: string,
  out: Tensor,
  inputs: readonly Tensor[],
  backward: (grad: Tensor, prior: readonly (Tensor | null)[]) => readonly (Tensor | null)[],
  { accumulates = false }: { accumulates?: boolean } = {},
): Tensor {
  if (gradEnabled && inputs.some((t) => t.requiresGrad)) {
    out.requiresGrad = true;
    out.node = {
      op,
      inputs,
      needsGrad: inputs.map((t) => t.requiresGrad),
      accumulates,
      backward,
    };
  }
  return out;
}
