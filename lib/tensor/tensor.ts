// Tensor: a shape, a dtype and a pooled GPU buffer, plus the autograd node that made it.
// Memory is managed by scopes (`tidy`): every tensor created inside a scope is released when the
// scope ends, except the tensors it returns and those marked with `keep` (parameters, gradients,
// optimizer state).

import { gpu } from "../gpu/device.ts";

export type DType = "f32" | "i32" | "u32";
export type Shape = readonly number[];

/** A GPU buffer shared by a tensor and its views (reshape, detach); freed when the last goes. */
class Storage {
  refs = 1;
  constructor(readonly buffer: GPUBuffer, readonly bytes: number) {}
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
  readonly backward: (grad: Tensor) => readonly (Tensor | null)[];
}

let nextTensorId = 1;

export class Tensor {
  readonly id = nextTensorId++;
  readonly size: number;
  requiresGrad = false;
  grad: Tensor | null = null;
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

  get buffer(): GPUBuffer {
    if (!this.storage) throw new Error(`peco: tensor ${this.describe()} used after dispose`);
    return this.storage.buffer;
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

  /** The same values, cut from the autograd graph. */
  detach(): Tensor {
    return this.view(this.shape);
  }

  dispose(): void {
    if (!this.storage) return;
    if (--this.storage.refs === 0) gpu().pool.release(this.storage.buffer);
    this.storage = null;
    this.node = null;
  }

  /** Reads the values back (one submit + map: not for hot loops). */
  async read(): Promise<Float32Array | Int32Array | Uint32Array> {
    const [bytes] = await gpu().recorder.readMany([{ buffer: this.buffer, bytes: this.size * 4 }]);
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

/** Reads several tensors with a single submit and map (e.g. all logged scalars of a step). */
export async function readAll(tensors: Tensor[]): Promise<Float32Array[]> {
  const buffers = await gpu().recorder.readMany(
    tensors.map((t) => ({ buffer: t.buffer, bytes: t.size * 4 })),
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
  backward: (grad: Tensor) => readonly (Tensor | null)[],
): Tensor {
  if (gradEnabled && inputs.some((t) => t.requiresGrad)) {
    out.requiresGrad = true;
    out.node = { op, inputs, needsGrad: inputs.map((t) => t.requiresGrad), backward };
  }
  return out;
}
