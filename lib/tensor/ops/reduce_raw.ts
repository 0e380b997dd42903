// Reductions without autograd: the kernel launches behind sum and mean (reduce.ts), max/min over
// one axis, the conv bias gradient's Σ over outer and inner axes, and `sumTo`, which undoes a
// broadcast in backward. Kept apart from reduce.ts so that elementwise ops (whose backward needs
// sumTo) and the differentiable reductions (whose backward needs broadcastTo) import no cycle.

import { gpu } from "../../gpu/device.ts";
import { f32bits, grid1d } from "../../gpu/recorder.ts";
import { type Shape, Tensor } from "../tensor.ts";
import { reduceKernels, WG } from "./kernels.ts";

const REDUCE = { sum: 0, max: 1, min: 2 } as const;
/** On GPUs, below this many outputs with at least this long an axis, one workgroup reduces each. */
const WORKGROUP_MAX_OUTPUTS = 4096;
const WORKGROUP_MIN_LEN = 512;

/**
 * Whether a reduction of `len` values into each of `outputs` outputs takes the one-workgroup-per-
 * output kernel (shared memory, barriers) rather than one invocation per output. Axes longer than
 * one invocation may loop (`maxLoop`) always do. On software adapters nothing else does: there the
 * barriers cost more than the serial loop (measured on lavapipe: the bias gradient [608, 512] → [512]
 * 55 ms against 4–7 ms, argmax over [608, 512] rows alike).
 */
export function useWorkgroupReduction(len: number, outputs: number, maxLoop: number): boolean {
  if (len > maxLoop) return true;
  if (gpu().info.software) return false;
  return len >= WORKGROUP_MIN_LEN && outputs <= WORKGROUP_MAX_OUTPUTS;
}

export function normAxis(axis: number, rank: number): number {
  const a = axis < 0 ? axis + rank : axis;
  if (a < 0 || a >= Math.max(rank, 1)) {
    throw new Error(`peco: axis ${axis} out of range for rank ${rank}`);
  }
  return a;
}

/** lavapipe ends loops after 65535 iterations per invocation: stay well below. */
export const MAX_LOOP = 32_000;

/** Raw reduction kernel launch: x viewed as [outer, len, inner] → [outer, inner]. */
export function reduceRaw(
  x: Tensor,
  axis: number,
  op: keyof typeof REDUCE,
  scale = 1,
): Tensor {
  const a = normAxis(axis, x.rank);
  const outer = x.shape.slice(0, a).reduce((p, d) => p * d, 1);
  const len = x.shape[a] ?? 1;
  const inner = x.shape.slice(a + 1).reduce((p, d) => p * d, 1);
  const shape = [...x.shape.slice(0, a), ...x.shape.slice(a + 1)];
  const outputs = outer * inner;
  const useWorkgroup = useWorkgroupReduction(len, outputs, MAX_LOOP);
  if (!useWorkgroup) {
    const out = new Tensor(shape, "f32");
    gpu().recorder.dispatch(reduceKernels.serial, {
      buffers: [x.binding, out.binding],
      params: [outer, len, inner, f32bits(scale), len],
      constants: { OP: REDUCE[op] },
      workgroups: grid1d(outputs, WG),
    });
    return out;
  }
  // Each invocation of a workgroup loops seg / WG times.
  const seg = Math.min(len, MAX_LOOP * WG);
  const parts = Math.ceil(len / seg);
  const out = new Tensor(parts === 1 ? shape : [outer, parts, inner], "f32");
  const [gx, gy] = grid1d(outputs, 1);
  gpu().recorder.dispatch(reduceKernels.workgroup, {
    buffers: [x.binding, out.binding],
    params: [outer, len, inner, f32bits(parts === 1 ? scale : 1), seg],
    constants: { OP: REDUCE[op] },
    workgroups: [gx, gy, parts],
  });
  if (parts === 1) return out;
  const total = reduceRaw(out, 1, op, scale);
  out.dispose();
  return total.view(shape);
}

/**
 * Loop iterations one invocation may run in all (lavapipe silently ends an invocation's loops past
 * a budget shared by all of them; see fused_norm.ts).
 */
const MAX_ITERATIONS = 10_000;

/**
 * Σ over the first and last axes of x viewed as [outer, len, inner] → [len] (no autograd): one
 * dispatch when an output's elements fit one invocation's loops, else two reductions.
 */
export function sumOuterInner(x: Tensor, outer: number, len: number, inner: number): Tensor {
  if (outer * len * inner !== x.size) {
    throw new Error(`peco: sumOuterInner: ${x.describe()} is not [${outer}, ${len}, ${inner}]`);
  }
  if (outer * (inner + 1) > MAX_ITERATIONS) {
    return reduceRaw(reduceRaw(x.view([outer, len, inner]), 2, "sum"), 0, "sum");
  }
  const out = new Tensor([len], "f32");
  gpu().recorder.dispatch(reduceKernels.outerInner, {
    buffers: [x.binding, out.binding],
    params: [outer, len, inner, f32bits(1), 0],
    workgroups: grid1d(len, WG),
  });
  return out;
}

/** Sums a broadcast gradient back to `shape` (inverse of NumPy broadcasting). */
export function sumTo(g: Tensor, shape: Shape): Tensor {
  if (g.shape.length === shape.length && g.shape.every((d, i) => d === shape[i])) return g;
  let t = g;
  // Leading dims that broadcasting added, one at a time: merging them into one long axis picks the
  // shared-memory kernel, which on lavapipe costs more than two short serial passes (measured on
  // [32, 50, 64] → [64]: 5–7 ms against 2–3 ms).
  while (t.rank > shape.length) t = reduceRaw(t, 0, "sum");
  for (let i = 0; i < shape.length; i++) {
    if (shape[i] === 1 && t.shape[i] !== 1) {
      const s = [...t.shape];
      s[i] = 1;
      t = reduceRaw(t, i, "sum").view(s);
    }
  }
  return t.view(shape);
}
