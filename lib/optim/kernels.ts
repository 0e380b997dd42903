// The optimizer kernels of kernels/optim.wgsl.

import { forcedVariant } from "../gpu/autotune.ts";
import { defineKernel } from "../gpu/pipelines.ts";
import optim from "../../kernels/optim.wgsl" with { type: "text" };

/** Workgroup size of every optim kernel (the WGSL default of the WG override). */
export const WG = 256;
/** Gradient elements per partial sum of squares (one workgroup each). */
export const CHUNK = WG * 16;

/** The element type V of kernels/optim.wgsl and its sum of squares: one float, or four. */
const HEADERS = {
  scalar: "alias V = f32;\nfn sq(v: V) -> f32 { return v * v; }\n",
  vec4: "alias V = vec4f;\nfn sq(v: V) -> f32 { return dot(v, v); }\n",
};
export type Lanes = keyof typeof HEADERS;

/**
 * Values a lane for a tensor of n elements: four where n is a multiple of 4 (every arena of
 * parameters is), unless `forceVariant("optimLanes", "scalar")` (tests compare the two).
 */
export function lanesFor(n: number): { lanes: Lanes; count: number } {
  return n % 4 === 0 && forcedVariant("optimLanes") !== "scalar"
    ? { lanes: "vec4", count: n / 4 }
    : { lanes: "scalar", count: n };
}

const kernelSet = (lanes: Lanes) => {
  const source = HEADERS[lanes] + optim;
  const suffix = lanes === "vec4" ? "_v4" : "";
  return {
    /** Adam / AdamW (DECOUPLED): param, grad, exp_avg, exp_avg_sq. */
    adam: defineKernel({
      name: `optim_adam${suffix}`,
      source,
      entry: "adam",
      bindings: ["write", "read", "write", "write"],
    }),
    /** SGD with optional momentum buffer (MOMENTUM, NESTEROV): param, grad, buffer. */
    sgd: defineKernel({
      name: `optim_sgd${suffix}`,
      source,
      entry: "sgd",
      bindings: ["write", "read", "write"],
    }),
    /** Σ g² per chunk of one gradient into slots of a partials buffer. */
    sumSquares: defineKernel({
      name: `optim_sum_squares${suffix}`,
      source,
      entry: "sum_squares",
      bindings: ["read", "write"],
    }),
    /** partials → norm and clip scale (one workgroup). */
    clipScale: defineKernel({
      name: `optim_clip_scale${suffix}`,
      source,
      entry: "clip_scale",
      bindings: ["read", "write", "write"],
    }),
    /** grad ← grad · scale[0] in place. */
    scaleGrad: defineKernel({
      name: `optim_scale_grad${suffix}`,
      source,
      entry: "scale_grad",
      bindings: ["write", "read"],
    }),
  };
};

/** The optimizer kernels by values a lane (lanesFor). */
export const optimKernels = { scalar: kernelSet("scalar"), vec4: kernelSet("vec4") };
