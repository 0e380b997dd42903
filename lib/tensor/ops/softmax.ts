// Softmax and log-softmax along any axis (numerically stable), each with its backward rule.

import { gpu } from "../../gpu/device.ts";
import { type BufferSlice, f32bits, grid1d } from "../../gpu/recorder.ts";
import { defineKernel } from "../../gpu/pipelines.ts";
import { chooseVariant, type Variant } from "../../gpu/autotune.ts";
import { record, Tensor } from "../tensor.ts";
import { fitsFlat, FLAT_WGSL, withFlatTexture } from "./flat.ts";
import wgsl from "../../../kernels/softmax.wgsl" with { type: "text" };

// softmax_rows_tex reads through flat.ts's WGSL helpers.
const source = wgsl + FLAT_WGSL;

const WG = 256;

const kernels = {
  rows: defineKernel({
    name: "softmax_rows",
    source,
    entry: "softmax_rows",
    bindings: ["read", "write"],
  }),
  wg: defineKernel({
    name: "softmax_wg",
    source,
    entry: "softmax_wg",
    bindings: ["read", "write"],
  }),
  rowsTex: defineKernel({
    name: "softmax_rows_tex",
    source,
    entry: "softmax_rows_tex",
    bindings: ["texture", "write"],
  }),
  gradRows: defineKernel({
    name: "softmax_grad_rows",
    source,
    entry: "softmax_grad_rows",
    bindings: ["read", "read", "write"],
  }),
  gradWg: defineKernel({
    name: "softmax_grad_wg",
    source,
    entry: "softmax_grad_wg",
    bindings: ["read", "read", "write"],
  }),
};

/** "rows": one invocation per row; "workgroup": one workgroup per row. */
export const SOFTMAX_VARIANTS: readonly Variant<"rows" | "workgroup">[] = [
  { name: "rows", config: "rows" },
  { name: "workgroup", config: "workgroup" },
];

/** Rows at least this long get a workgroup each on GPUs (on lavapipe barriers cost too much). */
const WORKGROUP_MIN_LEN = 128;

function perWorkgroup(len: number): boolean {
  const fallback = SOFTMAX_VARIANTS[!gpu().info.software && len >= WORKGROUP_MIN_LEN ? 1 : 0];
  return chooseVariant("softmax", "", SOFTMAX_VARIANTS, fallback).config === "workgroup";
}

/** A softmax over `axis` of x as the kernels see it: rows of `len`, `inner` apart. */
interface SoftmaxRows {
  params: number[];
  constants: Record<string, number>;
  len: number;
  inner: number;
  rows: number;
}

function softmaxRows(
  op: string,
  x: Tensor,
  axis: number,
  log: boolean,
  scale: number,
): SoftmaxRows {
  if (x.dtype !== "f32") throw new Error(`peco: ${op}: needs f32, got ${x.describe()}`);
  const a = axis < 0 ? axis + x.rank : axis;
  if (!Number.isInteger(a) || a < 0 || a >= x.rank) {
    throw new Error(`peco: ${op}: axis ${axis} out of range for ${x.describe()}`);
  }
  const outer = x.shape.slice(0, a).reduce((p, d) => p * d, 1);
  const len = x.shape[a];
  const inner = x.shape.slice(a + 1).reduce((p, d) => p * d, 1);
  return {
    params: [outer, len, inner, f32bits(scale)],
    constants: { LOG: Number(log) },
    len,
    inner,
    rows: outer * inner,
  };
}

function launchRows(
  r: SoftmaxRows,
  kRows: typeof kernels.rows,
  kWg: typeof kernels.wg,
  buffers: (GPUBuffer | BufferSlice)[],
): void {
  if (r.rows * r.len === 0) return;
  const wg = perWorkgroup(r.len);
  gpu().recorder.dispatch(wg ? kWg : kRows, {
    buffers,
    params: r.params,
    constants: r.constants,
    workgroups: wg ? grid1d(r.rows, 1) : grid1d(r.rows, WG),
  });
}

/** (log-)softmax of x · scale along `axis`, without autograd. */
export function softmaxForward(x: Tensor, axis: number, log: boolean, scale: number): Tensor {
  const r = softmaxRows(log ? "logSoftmax" : "softmax", x, axis, log, scale);
  const out = new Tensor(x.shape, "f32");
  if (
    x.size > 0 && r.inner === 1 && gpu().info.software && fitsFlat(x.size) && !perWorkgroup(r.len)
  ) {
    // Contiguous rows on a software adapter: x is read from a flat texture (a memcpy away).
    withFlatTexture(x, "softmax input", (view) =>
      gpu().recorder.dispatch(kernels.rowsTex, {
        buffers: [view, out.binding],
        params: r.params,
        constants: r.constants,
        workgroups: grid1d(r.rows, WG),
      }));
  } else {
    launchRows(r, kernels.rows, kernels.wg, [x.binding, out.binding]);
  }
  return out;
}

/** The gradient of x for `softmaxForward`'s output `out` and its gradient g (no autograd). */
export function softmaxBackward(
  out: Tensor,
  g: Tensor,
  axis: number,
  log: boolean,
  scale: number,
): Tensor {
  const r = softmaxRows(log ? "logSoftmax" : "softmax", out, axis, log, scale);
  const gx = new Tensor(out.shape, "f32");
  launchRows(r, kernels.gradRows, kernels.gradWg, [out.binding, g.binding, gx.binding]);
  return gx;
}

function softmaxOp(op: string, x: Tensor, axis: number, log: boolean, scale: number): Tensor {
  softmaxRows(op, x, axis, log, scale);
  const out = softmaxForward(x, axis, log, scale);
  return record(op, out, [x], (g) => [softmaxBackward(out, g, axis, log, scale)]);
}

/** exp(x − max) / Σ exp(x − max) along `axis`, of x · scale (one pass, no scaled copy). */
export function softmax(x: Tensor, axis = -1, scale = 1): Tensor {
  return softmaxOp("softmax", x, axis, false, scale);
}

/** x − max − log Σ exp(x − max) along `axis`, of x · scale. */
export function logSoftmax(x: Tensor, axis = -1, scale = 1): Tensor {
  return softmaxOp("logSoftmax", x, axis, true, scale);
}
