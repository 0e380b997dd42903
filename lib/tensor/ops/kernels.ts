// The elementwise and reduction kernels that the core ops share.

import { gpu } from "../../gpu/device.ts";
import { defineKernel } from "../../gpu/pipelines.ts";
import elementwiseWgsl from "../../../kernels/elementwise.wgsl" with { type: "text" };
import gelu from "../../../kernels/gelu.wgsl" with { type: "text" };
import reduce from "../../../kernels/reduce.wgsl" with { type: "text" };

export const WG = 256;

/**
 * Invocations per workgroup for kernels whose invocations each walk a long loop (a statistics
 * group, a row, a channel): on a software adapter a workgroup runs on one CPU thread, so 64 such
 * rows in one workgroup of 64 left the other cores idle (fused norm: 44 → 26 ms per MNIST tokenizer
 * step at 8); there a workgroup is one vector of invocations (AdapterInfo.simdLanes), on GPUs 64.
 */
export function rowWorkgroup(): number {
  const info = gpu().info;
  return info.software ? info.simdLanes : 64;
}

/** GELU and its derivative in WGSL (kernels/gelu.wgsl), for sources that apply it. */
export const GELU_WGSL = gelu;
const elementwise = gelu + elementwiseWgsl;

export const elementwiseKernels = {
  unary: defineKernel({
    name: "unary",
    source: elementwise,
    entry: "unary",
    bindings: ["read", "write"],
  }),
  unaryGrad: defineKernel({
    name: "unary_grad",
    source: elementwise,
    entry: "unary_grad",
    bindings: ["read", "read", "read", "write"],
  }),
  binary: defineKernel({
    name: "binary",
    source: elementwise,
    entry: "binary",
    bindings: ["read", "read", "write"],
  }),
  unary4: defineKernel({
    name: "unary_v4",
    source: elementwise,
    entry: "unary4",
    bindings: ["read", "write"],
  }),
  unaryGrad4: defineKernel({
    name: "unary_grad_v4",
    source: elementwise,
    entry: "unary_grad4",
    bindings: ["read", "read", "read", "write"],
  }),
  binary4: defineKernel({
    name: "binary_v4",
    source: elementwise,
    entry: "binary4",
    bindings: ["read", "read", "write"],
  }),
  axpy: defineKernel({
    name: "axpy",
    source: elementwise,
    entry: "axpy",
    bindings: ["read", "write"],
  }),
  fill: defineKernel({ name: "fill", source: elementwise, entry: "fill", bindings: ["write"] }),
};

export const reduceKernels = {
  /** One invocation per output, serial over the reduced axis. */
  serial: defineKernel({
    name: "reduce_serial",
    source: reduce,
    entry: "reduce_serial",
    bindings: ["read", "write"],
  }),
  /** [outer, len, inner] → [len], summed over outer and inner: one invocation per output. */
  outerInner: defineKernel({
    name: "reduce_sum_outer_inner",
    source: reduce,
    entry: "sum_outer_inner",
    bindings: ["read", "write"],
  }),
  /** One workgroup per output, tree reduction in shared memory: long axes, few outputs. */
  workgroup: defineKernel({
    name: "reduce_workgroup",
    source: reduce,
    entry: "reduce_workgroup",
    bindings: ["read", "write"],
  }),
};
