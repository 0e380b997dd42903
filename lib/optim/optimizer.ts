// The optimizer base: parameter groups, per-parameter state that lives for the run, the step loop
// that hands every parameter with a gradient to the subclass's fused kernel, and state for
// checkpoints. The host counts steps itself, so a step never reads anything back.
//
// The parameters are packed into one buffer group after group (ParamArena), their gradients and
// state tensors into buffers of the same layout, so that a group whose parameters all have fresh
// gradients and equal step counts is updated by one dispatch over its range, whatever the number of
// tensors. Any other group (some parameter without a gradient, a gradient set by hand, parameters
// at different step counts) falls back to one dispatch per parameter; both give the same values.
// A buffer holds at most what one binding may (the adapter's maxStorageBufferBindingSize: 128 MiB
// on lavapipe): larger models take several arenas, a group one dispatch per arena it spans; a
// tensor larger than that stays unpacked.

import { gpu } from "../gpu/device.ts";
import { zeroGrad } from "../tensor/autograd.ts";
import {
  ARENA_ALIGN,
  type ArenaBuffer,
  arenaOf,
  type ArenaRange,
  ParamArena,
} from "../tensor/param_arena.ts";
import { zeros } from "../tensor/ops/creation.ts";
import { copyValues, keep, Tensor } from "../tensor/tensor.ts";

export interface ParamGroupSpec {
  params: readonly Tensor[];
  /** Multiplies the optimizer's lr for this group (layer-wise lr decay); default 1. */
  lrScale?: number;
  /** Default: the optimizer's weightDecay. */
  weightDecay?: number;
  name?: string;
}

export interface ParamGroup {
  readonly name: string;
  readonly params: readonly Tensor[];
  lrScale: number;
  weightDecay: number;
}

/** A parameter's state: its own step count (as in PyTorch) and its state tensors (kept). */
export interface ParamState {
  step: number;
  readonly slots: Tensor[];
}

/** What a checkpoint stores. Parameters are numbered in group order, as in PyTorch. */
export interface OptimizerState {
  /** Steps taken by each parameter that has state, by parameter index. */
  steps: Record<string, number>;
  /** State tensors keyed `${index}.${slot}` (e.g. "3.exp_avg"): the live tensors, not copies. */
  tensors: Record<string, Tensor>;
}

/** A group's parameters that one arena holds, and their range there. */
interface Part {
  readonly arena: ParamArena;
  readonly range: ArenaRange;
  readonly params: readonly Tensor[];
}

export function checkNonNegative(kind: string, name: string, value: number): void {
  if (!(value >= 0) || !Number.isFinite(value)) {
    throw new Error(`peco: ${kind}: ${name} must be a finite number ≥ 0, got ${value}`);
  }
}

export abstract class Optimizer {
  /** Base learning rate; set it from a schedule before each step. Group lr = lr · lrScale. */
  lr: number;
  readonly groups: ParamGroup[];
  /** Calls of `step()` so far. */
  steps = 0;
  /**
   * Largest buffer an arena may take, in bytes; null: the adapter's storage-binding limit. Tests
   * lower it to exercise several arenas.
   */
  static maxPackBytes: number | null = null;
  private readonly states = new Map<Tensor, ParamState>();
  /** Where the parameters, their gradients and (once created) their state tensors live. */
  private readonly arenas: ParamArena[] = [];
  /** Per group: its packed parts (a range of one arena each); unpacked parameters are in none. */
  private readonly parts: Part[][];
  /** Per arena: one buffer per slot name, created on the first step. */
  private readonly slotBuffers = new Map<ParamArena, ArenaBuffer[]>();
  /** State tensors of unpacked parameters (the arenas own the others). */
  private readonly ownSlots: Tensor[] = [];

  /** Names of the state tensors each parameter gets (PyTorch's names). */
  protected abstract readonly slotNames: readonly string[];
  /** Records the fused update of one parameter; `state.step` already counts this step. */
  protected abstract update(
    p: Tensor,
    grad: Tensor,
    state: ParamState,
    lr: number,
    weightDecay: number,
  ): void;

  constructor(
    readonly kind: string,
    params: readonly Tensor[] | readonly ParamGroupSpec[],
    lr: number,
    weightDecay: number,
  ) {
    checkNonNegative(kind, "lr", lr);
    checkNonNegative(kind, "weightDecay", weightDecay);
    this.lr = lr;
    const specs: readonly ParamGroupSpec[] = params.length && params[0] instanceof Tensor
      ? [{ params: params as readonly Tensor[] }]
      : params as readonly ParamGroupSpec[];
    const seen = new Set<Tensor>();
    this.groups = specs.map((spec, i) => {
      const group: ParamGroup = {
        name: spec.name ?? `group${i}`,
        params: [...spec.params],
        lrScale: spec.lrScale ?? 1,
        weightDecay: spec.weightDecay ?? weightDecay,
      };
      checkNonNegative(kind, `lrScale of ${group.name}`, group.lrScale);
      checkNonNegative(kind, `weightDecay of ${group.name}`, group.weightDecay);
      for (const p of group.params) {
        if (!(p instanceof Tensor)) {
          throw new Error(`peco: ${kind}: ${group.name} holds a non-tensor`);
        }
        if (p.dtype !== "f32") {
          throw new Error(`peco: ${kind}: parameter ${p.describe()} is not f32`);
        }
        if (seen.has(p)) {
          throw new Error(`peco: ${kind}: parameter ${p.describe()} is in two groups`);
        }
        seen.add(p);
      }
      return group;
    });
    if (seen.size === 0) throw new Error(`peco: ${kind}: no parameters to optimise`);
    this.parts = this.pack();
  }

  /** Packs the groups' parameters into arenas of at most maxPackBytes, in group order. */
  private pack(): Part[][] {
    const limits = gpu().limits;
    const maxBytes = Optimizer.maxPackBytes ??
      Math.min(limits.maxStorageBufferBindingSize, limits.maxBufferSize);
    const maxFloats = Math.floor(maxBytes / 4 / ARENA_ALIGN) * ARENA_ALIGN;
    const parts: Part[][] = this.groups.map(() => []);
    let pending: { group: number; params: Tensor[] }[] = [];
    let floats = 0;
    const flush = () => {
      const filled = pending.filter((e) => e.params.length > 0);
      if (filled.length) {
        const arena = new ParamArena(filled.map((e) => e.params));
        this.arenas.push(arena);
        filled.forEach((e, i) => parts[e.group].push({ arena, range: arena.groups[i], ...e }));
      }
      pending = [];
      floats = 0;
    };
    this.groups.forEach((group, g) => {
      let current = { group: g, params: [] as Tensor[] };
      pending.push(current);
      for (const p of group.params) {
        const size = Math.ceil(Math.max(1, p.size) / ARENA_ALIGN) * ARENA_ALIGN;
        if (size > maxFloats) continue; // too large for any arena: updated on its own
        if (floats + size > maxFloats) {
          flush();
          current = { group: g, params: [] };
          pending.push(current);
        }
        current.params.push(p);
        floats += size;
      }
    });
    flush();
    return parts;
  }

  /** Every parameter, in group order. */
  get params(): Tensor[] {
    return this.groups.flatMap((g) => g.params);
  }

  /**
   * Updates every parameter that has a gradient (others are left alone and their step counts do
   * not advance): one dispatch per parameter, no readback, no allocation after the first step.
   */
  step(): void {
    checkNonNegative(this.kind, "lr", this.lr);
    this.groups.forEach((group, g) => {
      const lr = this.lr * group.lrScale;
      const done = new Set<Tensor>();
      for (const part of this.parts[g]) {
        if (!this.updatesAsOne(part)) continue;
        this.updateRange(part, lr, group.weightDecay);
        for (const p of part.params) done.add(p);
      }
      for (const p of group.params) {
        if (done.has(p)) continue;
        const grad = p.grad;
        if (!grad) continue;
        if (grad.size !== p.size || grad.dtype !== "f32") {
          throw new Error(
            `peco: ${this.kind}.step: gradient ${grad.describe()} does not match parameter ` +
              p.describe(),
          );
        }
        const state = this.stateOf(p);
        state.step++;
        this.update(p, grad, state, lr, group.weightDecay);
      }
    });
    this.steps++;
  }

  /**
   * Whether a part can take one dispatch over its arena range: every parameter's gradient was
   * written into the arena by backward and every parameter is at the same step.
   */
  private updatesAsOne({ arena, params }: Part): boolean {
    if (params.length === 0 || !arena.gradsAtHome(params)) return false;
    const step = this.states.get(params[0])?.step ?? 0;
    return params.every((p) => (this.states.get(p)?.step ?? 0) === step);
  }

  /** The fused update of a part: its range of the parameter, gradient and state buffers. */
  private updateRange({ arena, range, params }: Part, lr: number, wd: number): void {
    let step = 0;
    for (const p of params) step = ++this.stateOf(p).step;
    const value = arena.valuesRange(range);
    const grad = arena.grads.range(range);
    const slots = this.slotBuffers.get(arena)!.map((b) => b.range(range));
    this.update(value, grad, { step, slots }, lr, wd);
    for (const t of [value, grad, ...slots]) t.dispose();
  }

  /** Releases the gradients of all parameters. */
  zeroGrad(): void {
    zeroGrad(this.params);
  }

  /** The optimizer state for a checkpoint (live tensors: read or save them before the next step). */
  stateDict(): OptimizerState {
    const out: OptimizerState = { steps: {}, tensors: {} };
    this.params.forEach((p, i) => {
      const state = this.states.get(p);
      if (!state) return;
      out.steps[i] = state.step;
      state.slots.forEach((t, k) => (out.tensors[`${i}.${this.slotNames[k]}`] = t));
    });
    return out;
  }

  /** Restores state saved by `stateDict` (copied on the GPU in stream order). */
  loadStateDict(saved: OptimizerState): void {
    const params = this.params;
    for (const key of Object.keys(saved.tensors)) {
      const [index, slot] = key.split(".");
      if (!(index in saved.steps) || !this.slotNames.includes(slot)) {
        throw new Error(`peco: ${this.kind}.loadStateDict: unexpected state tensor "${key}"`);
      }
    }
    for (const [index, step] of Object.entries(saved.steps)) {
      const p = params[Number(index)];
      if (!p || !Number.isInteger(step) || step < 0) {
        throw new Error(
          `peco: ${this.kind}.loadStateDict: bad entry ${index}: ${step} for ${params.length} parameters`,
        );
      }
      const state = this.stateOf(p);
      this.slotNames.forEach((name, k) => {
        const src = saved.tensors[`${index}.${name}`];
        const dst = state.slots[k];
        if (!src || src.size !== dst.size || src.dtype !== "f32") {
          throw new Error(
            `peco: ${this.kind}.loadStateDict: state "${index}.${name}" is ` +
              `${src ? src.describe() : "missing"}, parameter is ${p.describe()}`,
          );
        }
        copyValues(dst, src);
      });
      state.step = step;
    }
  }

  /** Releases all state tensors and the packed gradients (parameters keep their values). */
  dispose(): void {
    this.states.clear();
    this.slotBuffers.clear();
    for (const arena of this.arenas) arena.dispose();
    for (const t of this.ownSlots) t.dispose();
  }

  private stateOf(p: Tensor): ParamState {
    let state = this.states.get(p);
    if (!state) {
      // State tensors are zero-filled: views of arena buffers laid out like the parameters, or
      // tensors of their own for an unpacked parameter.
      const arena = this.arenas.find((a) => arenaOf(p) === a);
      let buffers = arena ? this.slotBuffers.get(arena) : undefined;
      if (arena && !buffers) {
        buffers = this.slotNames.map((name) => arena.newBuffer(name));
        this.slotBuffers.set(arena, buffers);
      }
      const slots = this.slotNames.map((name, k) => {
        const t = buffers ? buffers[k].views[arena!.indexOf(p)] : keep(zeros(p.shape));
        if (!buffers) this.ownSlots.push(t);
        t.name = `${p.name || "param"}.${name}`;
        return t;
      });
      state = { step: 0, slots };
      this.states.set(p, state);
    }
    return state;
  }
}
