// Adam and AdamW with PyTorch semantics: bias-corrected moments, eps added outside the square root;
// Adam adds L2 decay wd·p to the gradient, AdamW decays the parameter: p ← p − lr·wd·p.
// One fused dispatch per parameter updates p, exp_avg and exp_avg_sq in place.

import { gpu } from "../gpu/device.ts";
import { f32bits, grid1d } from "../gpu/recorder.ts";
import type { Tensor } from "../tensor/tensor.ts";
import { lanesFor, optimKernels, WG } from "./kernels.ts";
import { checkNonNegative, Optimizer, type ParamGroupSpec, type ParamState } from "./optimizer.ts";

export interface AdamOptions {
  lr?: number;
  betas?: [number, number];
  eps?: number;
  /** Default for groups that set none: 0 for Adam, 0.01 for AdamW (PyTorch's defaults). */
  weightDecay?: number;
}

export class Adam extends Optimizer {
  readonly betas: [number, number];
  readonly eps: number;
  protected readonly slotNames = ["exp_avg", "exp_avg_sq"] as const;

  constructor(
    params: readonly Tensor[] | readonly ParamGroupSpec[],
    options: AdamOptions = {},
    /** Decoupled weight decay: true for AdamW. */
    protected readonly decoupled = false,
  ) {
    const kind = decoupled ? "AdamW" : "Adam";
    super(kind, params, options.lr ?? 1e-3, options.weightDecay ?? (decoupled ? 0.01 : 0));
    this.betas = options.betas ?? [0.9, 0.999];
    this.eps = options.eps ?? 1e-8;
    for (const beta of this.betas) {
      if (!(beta >= 0 && beta < 1)) {
        throw new Error(`peco: ${kind}: betas must lie in [0, 1), got [${this.betas}]`);
      }
    }
    checkNonNegative(kind, "eps", this.eps);
  }

  protected update(p: Tensor, grad: Tensor, state: ParamState, lr: number, wd: number): void {
    const [beta1, beta2] = this.betas;
    // Bias corrections in float64 on the host, from the host's step count.
    const bc1 = 1 - beta1 ** state.step;
    const bc2 = 1 - beta2 ** state.step;
    const [expAvg, expAvgSq] = state.slots;
    const { lanes, count } = lanesFor(p.size);
    gpu().recorder.dispatch(optimKernels[lanes].adam, {
      buffers: [p.binding, grad.binding, expAvg.binding, expAvgSq.binding],
      params: [
        count,
        f32bits(wd),
        f32bits(1 - lr * wd),
        f32bits(beta1),
        f32bits(beta2),
        f32bits(1 - beta1),
        f32bits(1 - beta2),
        f32bits(this.eps),
        f32bits(lr / bc1),
        f32bits(Math.sqrt(bc2)),
      ],
      constants: { DECOUPLED: this.decoupled ? 1 : 0 },
      workgroups: grid1d(count, WG),
    });
  }
}

/** Adam with decoupled weight decay (Loshchilov & Hutter), PyTorch's torch.optim.AdamW. */
export class AdamW extends Adam {
  constructor(params: readonly Tensor[] | readonly ParamGroupSpec[], options: AdamOptions = {}) {
    super(params, options, true);
  }
}
