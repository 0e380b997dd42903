// Module: the base of every layer and model. It registers parameters, buffers and submodules under
// PyTorch's dotted names ("blocks.0.attn.qkv.weight"), so a state dict saved by PyTorch in
// safetensors loads directly and ours loads in PyTorch.

import { zeroGrad } from "../tensor/autograd.ts";
import { copyValues, keep, Tensor, uploadValues } from "../tensor/tensor.ts";
import { reason } from "../io/errors.ts";
import {
  fromGpuAll,
  int64ToInt32,
  readSafetensors,
  type TensorRecord,
  writeSafetensors,
} from "../io/safetensors.ts";

/** A state-dict value: a GPU tensor, or a host record (e.g. from readSafetensors). */
export type StateEntry = Tensor | TensorRecord;
export type StateEntries =
  | Map<string, StateEntry>
  | Iterable<[string, StateEntry]>
  | Record<string, StateEntry>;

export interface LoadOptions {
  /** When true (the default), missing and unexpected names are errors too, not just mismatches. */
  strict?: boolean;
  /** Where the entries come from (a file name), for the error message. */
  source?: string;
}

export interface LoadResult {
  missing: string[];
  unexpected: string[];
}

type Kind = "param" | "buffer";

/** Which record dtypes load into a tensor of each dtype. */
const LOADS_FROM: Record<Tensor["dtype"], string[]> = {
  f32: ["F32", "F16", "BF16"],
  i32: ["I32", "I64"],
  u32: ["U32"],
};

export class Module {
  /** Training mode (dropout, batch statistics); set for the whole tree by train()/eval(). */
  training = true;
  readonly #params = new Map<string, Tensor>();
  readonly #buffers = new Map<string, Tensor>();
  readonly #children = new Map<string, Module>();

  #claim(name: string, what: string): void {
    if (!/^[^.]+$/.test(name)) {
      throw new Error(`peco: ${this.constructor.name}.${what}: invalid name "${name}"`);
    }
    if (this.#params.has(name) || this.#buffers.has(name) || this.#children.has(name)) {
      throw new Error(`peco: ${this.constructor.name}.${what}: "${name}" is already registered`);
    }
  }

  /** Registers a trainable f32 parameter (kept across scopes, requiresGrad = true). */
  param(name: string, t: Tensor): Tensor {
    this.#claim(name, "param");
    if (t.dtype !== "f32") {
      throw new Error(
        `peco: ${this.constructor.name}.param: "${name}" must be f32, got ${t.describe()}`,
      );
    }
    keep(t);
    t.requiresGrad = true;
    t.name ||= name;
    this.#params.set(name, t);
    return t;
  }

  /** Registers non-trainable state (e.g. running_mean): saved and loaded, never optimised. */
  buffer(name: string, t: Tensor): Tensor {
    this.#claim(name, "buffer");
    keep(t);
    t.requiresGrad = false;
    t.name ||= name;
    this.#buffers.set(name, t);
    return t;
  }

  /** Registers a submodule; an array becomes a ModuleList (names "name.0", "name.1", …). */
  child<M extends Module>(name: string, module: M): M;
  child<M extends Module>(name: string, modules: M[]): ModuleList<M>;
  child<M extends Module>(name: string, module: M | M[]): M | ModuleList<M> {
    this.#claim(name, "child");
    const registered = Array.isArray(module) ? new ModuleList(module) : module;
    this.#children.set(name, registered);
    return registered;
  }

  /** Own parameters and buffers, then each child's, with dotted names (PyTorch's order). */
  *#state(prefix = ""): Generator<[string, Tensor, Kind]> {
    for (const [name, t] of this.#params) yield [prefix + name, t, "param"];
    for (const [name, t] of this.#buffers) yield [prefix + name, t, "buffer"];
    for (const [name, m] of this.#children) yield* m.#state(`${prefix}${name}.`);
  }

  /** This module and every submodule, with dotted names ("" for this one). */
  *namedModules(prefix = ""): Generator<[string, Module]> {
    yield [prefix, this];
    for (const [name, m] of this.#children) {
      yield* m.namedModules(prefix ? `${prefix}.${name}` : name);
    }
  }

  /** Trainable parameters by dotted name; a tensor registered twice (tied weights) once. */
  namedParameters(): Map<string, Tensor> {
    const out = new Map<string, Tensor>();
    const seen = new Set<Tensor>();
    for (const [name, t, kind] of this.#state()) {
      if (kind === "param" && !seen.has(t)) {
        seen.add(t);
        out.set(name, t);
      }
    }
    return out;
  }

  parameters(): Tensor[] {
    return [...this.namedParameters().values()];
  }

  namedBuffers(): Map<string, Tensor> {
    const out = new Map<string, Tensor>();
    for (const [name, t, kind] of this.#state()) if (kind === "buffer") out.set(name, t);
    return out;
  }

  /** Parameters and buffers by dotted name: what a checkpoint holds. */
  stateDict(): Map<string, Tensor> {
    const out = new Map<string, Tensor>();
    for (const [name, t] of this.#state()) out.set(name, t);
    return out;
  }

  /** Number of trainable values. */
  numParameters(): number {
    return this.parameters().reduce((n, t) => n + t.size, 0);
  }

  /**
   * Copies `entries` into the parameters and buffers (in place: optimizers keep their references).
   * Everything is checked first: one error lists every missing, unexpected and mismatched name,
   * and nothing is written unless all is well. Shape or dtype mismatches are errors even when not
   * strict.
   */
  loadStateDict(entries: StateEntries, { strict = true, source }: LoadOptions = {}): LoadResult {
    const given = new Map<string, StateEntry>(
      Symbol.iterator in entries
        ? entries as Iterable<[string, StateEntry]>
        : Object.entries(entries),
    );
    const own = this.stateDict();
    const missing: string[] = [];
    const mismatched: string[] = [];
    const writes: (() => void)[] = [];
    for (const [name, target] of own) {
      const entry = given.get(name);
      if (!entry) {
        missing.push(name);
        continue;
      }
      const problem = mismatch(target, entry);
      if (problem) {
        mismatched.push(`${name}: ${problem}`);
        continue;
      }
      try {
        writes.push(copyInto(target, entry, name));
      } catch (error) {
        // An I64 value that does not fit in i32: "<name>: I64 value … does not fit in i32".
        mismatched.push(reason(error));
      }
    }
    const unexpected = [...given.keys()].filter((name) => !own.has(name));
    if (mismatched.length || (strict && (missing.length || unexpected.length))) {
      const parts: string[] = [];
      const list = (label: string, items: string[]) => {
        if (items.length) parts.push(`${items.length} ${label} [${items.join("; ")}]`);
      };
      list("missing", missing.map((name) => `${name} ${describeEntry(own.get(name)!)}`));
      list("unexpected", unexpected.map((name) => `${name} ${describeEntry(given.get(name)!)}`));
      list("mismatched", mismatched);
      const from = source ? ` from ${source}` : "";
      throw new Error(`peco: ${this.constructor.name}.loadStateDict${from}: ${parts.join(", ")}`);
    }
    for (const write of writes) write();
    return { missing, unexpected };
  }

  /** Writes the state dict as a safetensors file (atomically), with string metadata. */
  async saveSafetensors(
    path: string,
    metadata: Record<string, string> = {},
    options: { floatDtype?: "F32" | "F16" | "BF16" } = {},
  ): Promise<void> {
    await writeSafetensors(path, await fromGpuAll(this.stateDict(), options), metadata);
  }

  /** Loads a safetensors state dict (see loadStateDict); returns the file's metadata too. */
  async loadSafetensors(
    path: string,
    { strict = true }: { strict?: boolean } = {},
  ): Promise<LoadResult & { metadata: Record<string, string> }> {
    const { tensors, metadata } = await readSafetensors(path);
    return { ...this.loadStateDict(tensors, { strict, source: path }), metadata };
  }

  /** Sets training mode on this module and every submodule. */
  train(mode = true): this {
    for (const [, m] of this.namedModules()) m.training = mode;
    return this;
  }

  eval(): this {
    return this.train(false);
  }

  /** Releases the gradients of every parameter. */
  zeroGrad(): void {
    zeroGrad(this.parameters());
  }

  /** Releases every parameter, gradient and buffer of the tree. */
  dispose(): void {
    for (const [, t] of this.#state()) {
      t.grad?.dispose();
      t.grad = null;
      t.dispose();
    }
  }
}

/** Submodules named "0", "1", … (PyTorch's nn.ModuleList). */
export class ModuleList<M extends Module = Module> extends Module implements Iterable<M> {
  readonly #items: M[] = [];

  constructor(modules: Iterable<M> = []) {
    super();
    for (const m of modules) this.push(m);
  }

  push(module: M): M {
    this.child(String(this.#items.length), module);
    this.#items.push(module);
    return module;
  }

  get length(): number {
    return this.#items.length;
  }

  at(i: number): M {
    const m = this.#items.at(i);
    if (!m) throw new Error(`peco: ModuleList: index ${i} out of range (length ${this.length})`);
    return m;
  }

  [Symbol.iterator](): Iterator<M> {
    return this.#items[Symbol.iterator]();
  }
}

function describeEntry(entry: StateEntry): string {
  return `${entry.dtype}[${entry.shape}]`;
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/** Why `entry` cannot load into `target`, or null. */
function mismatch(target: Tensor, entry: StateEntry): string | null {
  const ok = entry instanceof Tensor
    ? entry.dtype === target.dtype
    : LOADS_FROM[target.dtype].includes(entry.dtype);
  if (ok && sameShape(target.shape, entry.shape)) return null;
  return `module ${target.dtype}[${target.shape}], state dict ${describeEntry(entry)}`;
}

/** Checks the values (I64 must fit in i32) and returns the recorded copy to run later. */
function copyInto(target: Tensor, entry: StateEntry, name: string): () => void {
  if (entry instanceof Tensor) {
    return () => copyValues(target, entry);
  }
  const data = entry.data instanceof BigInt64Array ? int64ToInt32(entry.data, name) : entry.data;
  return () => uploadValues(target, data);
}
