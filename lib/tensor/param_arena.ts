// Parameters packed into one GPU buffer, their gradients into another, so that an optimizer, the
// global gradient norm and clipping each run as one dispatch over a range instead of one per
// tensor. Every parameter keeps its Tensor (ops bind its byte range: Tensor.binding); it moves to a
// 256-byte-aligned offset (the storage-binding offset alignment), parameter groups lie one after
// another, and the gaps between tensors are zeros that every update leaves at zero. Backward writes
// a parameter's gradient straight into its range of the gradient buffer (Tensor.gradHome), with a
// buffer copy rather than a dispatch; nothing is zero-filled per step.

import { fillInPlace } from "./ops/creation.ts";
import { keep, SharedBuffer, type Tensor } from "./tensor.ts";

/** Floats per alignment step: 256 bytes, WebGPU's minStorageBufferOffsetAlignment default. */
export const ARENA_ALIGN = 64;

const align = (floats: number) => Math.ceil(floats / ARENA_ALIGN) * ARENA_ALIGN;

/** A contiguous range of the arena, in floats. */
export interface ArenaRange {
  readonly start: number;
  readonly floats: number;
}

const arenas = new WeakMap<Tensor, ParamArena>();

/** The arena a parameter lives in, if it was packed. */
export function arenaOf(p: Tensor): ParamArena | undefined {
  return arenas.get(p);
}

/** One of an arena's buffers: laid out like the parameters, zero-filled at creation. */
export class ArenaBuffer {
  /** A kept view per parameter, in the arena's `params` order. */
  readonly views: readonly Tensor[];

  constructor(private readonly shared: SharedBuffer, private readonly arena: ParamArena) {
    this.views = arena.params.map((p) => keep(shared.view(4 * arena.offsetOf(p), p.shape)));
  }

  /** The range `r` (default: all of it) as a flat [floats] tensor, for one dispatch over it. */
  range(r: ArenaRange = this.arena.whole): Tensor {
    return this.shared.view(4 * r.start, [r.floats]);
  }

  /** Releases the views and the buffer (tensors still viewing it keep it alive). */
  dispose(): void {
    for (const v of this.views) v.dispose();
    this.shared.release();
  }
}

export class ParamArena {
  /** Every parameter, group after group. */
  readonly params: readonly Tensor[];
  /** One range per group given to the constructor, covering its parameters and their gaps. */
  readonly groups: readonly ArenaRange[];
  /** Total floats of each of the arena's buffers. */
  readonly floats: number;
  /** The parameters' values (each parameter's storage now lies here). */
  readonly values: SharedBuffer;
  /** The gradients: `gradHome` of every parameter. */
  readonly grads: ArenaBuffer;
  private readonly offsets = new Map<Tensor, number>();
  private readonly indices = new Map<Tensor, number>();
  private readonly extra: ArenaBuffer[] = [];
  private disposed = false;

  /** Packs `groups` of f32 parameters (each parameter in one group only). */
  constructor(groups: readonly (readonly Tensor[])[]) {
    const ranges: ArenaRange[] = [];
    const params: Tensor[] = [];
    let floats = 0;
    for (const group of groups) {
      const start = floats;
      for (const p of group) {
        if (p.dtype !== "f32") throw new Error(`peco: ParamArena: ${p.describe()} is not f32`);
        if (this.offsets.has(p)) {
          throw new Error(`peco: ParamArena: ${p.describe()} is listed twice`);
        }
        this.offsets.set(p, floats);
        this.indices.set(p, params.length);
        params.push(p);
        floats += align(Math.max(1, p.size));
      }
      ranges.push({ start, floats: floats - start });
    }
    this.params = params;
    this.groups = ranges;
    this.floats = Math.max(ARENA_ALIGN, floats);
    this.values = this.zeroBuffer("parameters");
    this.grads = new ArenaBuffer(this.zeroBuffer("gradients"), this);
    params.forEach((p, i) => {
      arenas.get(p)?.forget(p);
      p.relocate(this.values, 4 * this.offsets.get(p)!);
      const home = this.grads.views[i];
      home.name = `${p.name || "param"}.grad`;
      p.gradHome = home;
      arenas.set(p, this);
    });
    // The arena holds the values through the parameters' storages only.
    this.values.release();
  }

  /** Position of a parameter in `params`. */
  indexOf(p: Tensor): number {
    const index = this.indices.get(p);
    if (index === undefined) throw new Error(`peco: ParamArena: ${p.describe()} is not packed`);
    return index;
  }

  /** Float offset of a parameter in the arena's buffers. */
  offsetOf(p: Tensor): number {
    const offset = this.offsets.get(p);
    if (offset === undefined) throw new Error(`peco: ParamArena: ${p.describe()} is not packed`);
    return offset;
  }

  /** A new zero-filled buffer laid out like the parameters (optimizer state), freed with the arena. */
  newBuffer(label: string): ArenaBuffer {
    const buffer = new ArenaBuffer(this.zeroBuffer(label), this);
    this.extra.push(buffer);
    return buffer;
  }

  /** The range `r` (default: all) of the parameters' values as a flat [floats] tensor. */
  valuesRange(r: ArenaRange = this.whole): Tensor {
    return this.values.view(4 * r.start, [r.floats]);
  }

  /** The whole arena as one range. */
  get whole(): ArenaRange {
    return { start: 0, floats: this.floats };
  }

  /**
   * Whether every parameter in `params` has its gradient in the arena's gradient buffer (written by
   * backward since the last zeroGrad), so that a range of that buffer holds exactly their gradients.
   */
  gradsAtHome(params: readonly Tensor[] = this.params): boolean {
    return params.every((p) =>
      arenas.get(p) === this && p.grad !== null && p.gradHome !== null &&
      p.grad.sharesStorage(p.gradHome)
    );
  }

  /** Releases the arena's buffers (parameters keep their values; gradients still set stay valid). */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const p of this.params) this.forget(p);
    this.grads.dispose();
    for (const buffer of this.extra) buffer.dispose();
  }

  /** Stops routing p's gradient here (p moved to another arena, or this one is disposed). */
  private forget(p: Tensor): void {
    if (arenas.get(p) !== this) return;
    arenas.delete(p);
    p.gradHome = null;
  }

  private zeroBuffer(label: string): SharedBuffer {
    const shared = SharedBuffer.allocate(4 * this.floats, label);
    const whole = shared.view(0, [this.floats]);
    fillInPlace(whole, 0);
    whole.dispose();
    return shared;
  }
}
