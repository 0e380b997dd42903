// The optimizer kernels of kernels/optim.wgsl.

import { defineKernel } from "../gpu/pipelines.ts";
import optim from "../../kernels/optim.wgsl" with { type: "text" };

/** Workgroup size of every optim kernel (the WGSL default of the WG override). */
export const WG = 256;
/** Gradient elements per partial sum of squares (one workgroup each). */
export const CHUNK = WG * 16;

export const optimKernels = {
  /** Adam / AdamW (DECOUPLED): param, grad, exp_avg, exp_avg_sq. */
  adam: defineKernel({
    name: "optim_adam",
    source: optim,
    entry: "adam",
    bindings: ["write", "read", "write", "write"],
  }),
  /** SGD with optional momentum buffer (MOMENTUM, NESTEROV): param, grad, buffer. */
  sgd: defineKernel({
    name: "optim_sgd",
    source: optim,
    entry: "sgd",
    bindings: ["write", "read", "write"],
  }),
  /** Σ g² per chunk of one gradient into slots of a partials buffer. */
  sumSquares: defineKernel({
    name: "optim_sum_squares",
    source: optim,
    entry: "sum_squares",
    bindings: ["read", "write"],
  }),
  /** partials → norm and clip scale (one workgroup). */
  clipScale: defineKernel({
    name: "optim_clip_scale",
    source: optim,
    entry: "clip_scale",
    bindings: ["read", "write", "write"],
  }),
  /** grad ← grad · scale[0] in place. */
  scaleGrad: defineKernel({
    name: "optim_scale_grad",
    source: optim,
    entry: "scale_grad",
    bindings: ["write", "read"],
  }),
};
