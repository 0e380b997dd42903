// Arg reductions over one axis: max and min (values, with the gradient routed to the first arg
// position) and argmax / argmin (i32 indices, the first one on ties). NaN values are skipped by the
// comparisons unless one is the first element (unlike PyTorch, which propagates them).

import { gpu } from "../../gpu/device.ts";
import { defineKernel } from "../../gpu/pipelines.ts";
import { grid1d } from "../../gpu/recorder.ts";
import { record, Tensor } from "../tensor.ts";
import { WG } from "./kernels.ts";
import { MAX_LOOP_ITERATIONS } from "./shape.ts";
import { useWorkgroupReduction } from "./reduce.ts";
import source from "../../../kernels/reduce_index.wgsl" with { type: "text" };

const kernels = {
  /** One invocation per output, serial over the axis. */
  serial: defineKernel({
    name: "reduce_index_serial",
    source,
    entry: "arg_serial",
    bindings: ["read", "write", "write"],
  }),
  /** One workgroup per output: long axes, few outputs. */
  workgroup: defineKernel({
    name: "reduce_index_workgroup",
    source,
    entry: "arg_workgroup",
    bindings: ["read", "write", "write"],
  }),
  grad: defineKernel({
    name: "reduce_index_grad",
    source,
    entry: "arg_grad",
    bindings: ["read", "read", "write"],
  }),
};

const OPS = { max: 0, min: 1 } as const;
type Extreme = keyof typeof OPS;

interface ArgResult {
  values: Tensor;
  indices: Tensor;
  /** [outer, len, inner] of x around the axis. */
  dims: [number, number, number];
}

function argReduce(
  op: string,
  mode: Extreme,
  x: Tensor,
  axis: number,
  keepdim: boolean,
): ArgResult {
  if (x.dtype !== "f32") throw new Error(`peco: ${op}: needs f32, got ${x.describe()}`);
  const a = axis < 0 ? axis + x.rank : axis;
  if (!Number.isInteger(axis) || a < 0 || a >= x.rank) {
    throw new Error(`peco: ${op}: axis ${axis} out of range for ${x.describe()}`);
  }
  const len = x.shape[a];
  if (len === 0) throw new Error(`peco: ${op}: axis ${axis} of ${x.describe()} is empty`);
  const outer = x.shape.slice(0, a).reduce((p, d) => p * d, 1);
  const inner = x.shape.slice(a + 1).reduce((p, d) => p * d, 1);
  const shape = keepdim
    ? x.shape.map((d, k) => (k === a ? 1 : d))
    : [...x.shape.slice(0, a), ...x.shape.slice(a + 1)];
  const outputs = outer * inner;
  // Axes longer than the loop limit (see MAX_LOOP_ITERATIONS) always take the workgroup kernel.
  const wide = useWorkgroupReduction(len, outputs, MAX_LOOP_ITERATIONS);
  if (wide && Math.ceil(len / WG) > MAX_LOOP_ITERATIONS) {
    throw new Error(`peco: ${op}: axis ${axis} of ${x.describe()} is longer than one kernel loops`);
  }
  const values = new Tensor(shape, "f32");
  const indices = new Tensor(shape, "i32");
  if (outputs > 0) {
    gpu().recorder.dispatch(wide ? kernels.workgroup : kernels.serial, {
      buffers: [x.binding, values.binding, indices.binding],
      params: [outer, len, inner],
      constants: { OP: OPS[mode] },
      workgroups: wide ? grid1d(outputs, 1) : grid1d(outputs, WG),
    });
  }
  return { values, indices, dims: [outer, len, inner] };
}

function extreme(mode: Extreme, x: Tensor, axis: number, keepdim: boolean): Tensor {
  const { values, indices, dims } = argReduce(mode, mode, x, axis, keepdim);
  return record(mode, values, [x], (g) => {
    // The saved indices die with the forward's scope when only the values were returned from it:
    // then they are recomputed from x (which the graph keeps).
    const arg = indices.disposed ? argOnly(mode, mode, x, axis, keepdim) : indices;
    const gx = new Tensor(x.shape, "f32");
    gpu().recorder.dispatch(kernels.grad, {
      buffers: [g.binding, arg.binding, gx.binding],
      params: dims,
      workgroups: grid1d(x.size, WG),
    });
    return [gx];
  });
}

function argOnly(op: string, mode: Extreme, x: Tensor, axis: number, keepdim: boolean): Tensor {
  const { values, indices } = argReduce(op, mode, x, axis, keepdim);
  values.dispose();
  return indices;
}

/** Largest value along `axis`; the gradient goes to the first position that holds it. */
export function max(x: Tensor, axis: number, keepdim = false): Tensor {
  return extreme("max", x, axis, keepdim);
}

/** Smallest value along `axis`; the gradient goes to the first position that holds it. */
export function min(x: Tensor, axis: number, keepdim = false): Tensor {
  return extreme("min", x, axis, keepdim);
}

/** i32 index of the largest value along `axis` (the first one on ties). */
export function argmax(x: Tensor, axis: number, keepdim = false): Tensor {
  return argOnly("argmax", "max", x, axis, keepdim);
}

/** i32 index of the smallest value along `axis` (the first one on ties). */
export function argmin(x: Tensor, axis: number, keepdim = false): Tensor {
  return argOnly("argmin", "min", x, axis, keepdim);
}
