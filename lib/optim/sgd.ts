// SGD with PyTorch semantics: d = g + wd·p; with momentum the buffer starts as d and then becomes
// momentum·buf + (1 − dampening)·d; the step follows buf, or d + momentum·buf with nesterov.

import { gpu } from "../gpu/device.ts";
import { f32bits, grid1d } from "../gpu/recorder.ts";
import { empty } from "../tensor/ops/creation.ts";
import { keep, type Tensor } from "../tensor/tensor.ts";
import { lanesFor, optimKernels, WG } from "./kernels.ts";
import { checkNonNegative, Optimizer, type ParamGroupSpec, type ParamState } from "./optimizer.ts";

export interface SgdOptions {
  lr?: number;
  momentum?: number;
  dampening?: number;
  nesterov?: boolean;
  weightDecay?: number;
}

export class SGD extends Optimizer {
  readonly momentum: number;
  readonly dampening: number;
  readonly nesterov: boolean;
  protected readonly slotNames: readonly string[];
  /** Bound in place of a momentum buffer when there is none (the kernel never touches it). */
  private unused: Tensor | null = null;

  constructor(params: readonly Tensor[] | readonly ParamGroupSpec[], options: SgdOptions = {}) {
    super("SGD", params, options.lr ?? 1e-3, options.weightDecay ?? 0);
    this.momentum = options.momentum ?? 0;
    this.dampening = options.dampening ?? 0;
    this.nesterov = options.nesterov ?? false;
    checkNonNegative("SGD", "momentum", this.momentum);
    checkNonNegative("SGD", "dampening", this.dampening);
    if (this.nesterov && (this.momentum === 0 || this.dampening !== 0)) {
      throw new Error(
        `peco: SGD: nesterov needs momentum > 0 and dampening 0, got momentum ${this.momentum}, ` +
          `dampening ${this.dampening}`,
      );
    }
    this.slotNames = this.momentum > 0 ? ["momentum_buffer"] : [];
  }

  protected update(p: Tensor, grad: Tensor, state: ParamState, lr: number, wd: number): void {
    const hasMomentum = this.momentum > 0;
    // The unused buffer holds one vec4: the smallest binding either kernel set takes.
    const buffer = hasMomentum ? state.slots[0] : (this.unused ??= keep(empty([4])));
    const { lanes, count } = lanesFor(p.size);
    gpu().recorder.dispatch(optimKernels[lanes].sgd, {
      buffers: [p.binding, grad.binding, buffer.binding],
      params: [
        count,
        f32bits(lr),
        f32bits(wd),
        f32bits(this.momentum),
        f32bits(1 - this.dampening),
        state.step === 1 ? 1 : 0,
      ],
      constants: { MOMENTUM: hasMomentum ? 1 : 0, NESTEROV: this.nesterov ? 1 : 0 },
      workgroups: grid1d(count, WG),
    });
  }

  override dispose(): void {
    super.dispose();
    this.unused?.dispose();
    this.unused = null;
  }
}
