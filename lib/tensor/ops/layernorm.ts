// Fused layer normalisation (kernels/layernorm.wgsl): one dispatch forward (statistics and output
// together), one for dx and one or two for the weight and bias gradients; the general normalisation
// kernels of norm.ts take five to eight dispatches for the same work.

import { gpu } from "../../gpu/device.ts";
import { defineKernel } from "../../gpu/pipelines.ts";
import { f32bits, grid1d } from "../../gpu/recorder.ts";
import { record, Tensor } from "../tensor.ts";
import { MAX_LOOP } from "./reduce.ts";
import source from "../../../kernels/layernorm.wgsl" with { type: "text" };

const WG = 64;
/** On GPUs, rows per piece of the weight/bias gradient aim for about this many invocations. */
const TARGET_INVOCATIONS = 4096;
const MIN_PIECE_ROWS = 64;

const kernels = {
  forward: defineKernel({
    name: "layernorm_forward",
    source,
    entry: "forward",
    bindings: ["read", "read", "read", "write", "write", "write"],
  }),
  gradInput: defineKernel({
    name: "layernorm_grad_input",
    source,
    entry: "grad_input",
    bindings: ["read", "read", "read", "read", "read", "write"],
  }),
  gradParams: defineKernel({
    name: "layernorm_grad_params",
    source,
    entry: "grad_params",
    bindings: ["read", "read", "read", "read", "write", "write"],
  }),
  gradParamsMerge: defineKernel({
    name: "layernorm_grad_params_merge",
    source,
    entry: "grad_params_merge",
    bindings: ["read", "write", "write"],
  }),
};

/** Whether a row of `d` fits one invocation's loops (lavapipe ends longer loops). */
export function fusedLayerNormFits(d: number): boolean {
  return d >= 1 && d <= MAX_LOOP;
}

/**
 * Rows per piece of the weight/bias gradient: all rows in one piece on software adapters (one
 * dispatch, and the cores are few), else enough pieces to fill a GPU; never above MAX_LOOP.
 */
function pieceRows(rows: number, d: number): number {
  const wanted = gpu().info.software
    ? rows
    : Math.max(MIN_PIECE_ROWS, Math.ceil((rows * d) / TARGET_INVOCATIONS));
  return Math.max(1, Math.min(rows, wanted, MAX_LOOP));
}

/**
 * y = (x − mean) · rstd · weight + bias over the last dim of x [rows, d] (x viewed so), with its
 * backward rule. The caller has checked shapes and dtypes.
 */
export function fusedLayerNorm(
  op: string,
  x: Tensor,
  weight: Tensor | null,
  bias: Tensor | null,
  eps: number,
): Tensor {
  const d = x.shape[x.rank - 1];
  const rows = x.size / Math.max(1, d);
  const out = new Tensor(x.shape, "f32");
  const mean = new Tensor([rows], "f32");
  const rstd = new Tensor([rows], "f32");
  const recorder = gpu().recorder;
  const params = [rows, d, f32bits(eps), f32bits(1 / d)];
  const constants = { HAS_W: weight ? 1 : 0, HAS_B: bias ? 1 : 0 };
  recorder.dispatch(kernels.forward, {
    buffers: [
      x.binding,
      (weight ?? x).binding,
      (bias ?? x).binding,
      out.binding,
      mean.binding,
      rstd.binding,
    ],
    params,
    constants,
    workgroups: grid1d(rows, WG),
  });
  const inputs = [x, weight, bias].filter((t): t is Tensor => t != null);
  return record(op, out, inputs, (dy) => {
    let gx: Tensor | null = null;
    if (x.requiresGrad) {
      gx = new Tensor(x.shape, "f32");
      recorder.dispatch(kernels.gradInput, {
        buffers: [
          x.binding,
          (weight ?? x).binding,
          mean.binding,
          rstd.binding,
          dy.binding,
          gx.binding,
        ],
        params,
        constants: { HAS_W: weight ? 1 : 0 },
        workgroups: grid1d(rows, WG),
      });
    }
    const [gw, gb] = weight?.requiresGrad || bias?.requiresGrad
      ? paramGrads(x, mean, rstd, dy, rows, d)
      : [null, null];
    const grads: (Tensor | null)[] = [gx];
    if (weight) grads.push(weight.requiresGrad ? gw : null);
    if (bias) grads.push(bias.requiresGrad ? gb : null);
    return grads;
  });
}

/** Σ_rows dy · xhat and Σ_rows dy per column: the weight and bias gradients [d]. */
function paramGrads(
  x: Tensor,
  mean: Tensor,
  rstd: Tensor,
  dy: Tensor,
  rows: number,
  d: number,
): [Tensor, Tensor] {
  const recorder = gpu().recorder;
  const piece = pieceRows(rows, d);
  const pieces = Math.ceil(rows / piece);
  const gw = new Tensor([d], "f32");
  const gb = new Tensor([d], "f32");
  const columns = [rows, d, piece, pieces];
  const partials = pieces > 1 ? new Tensor([pieces * d * 2], "f32") : null;
  recorder.dispatch(kernels.gradParams, {
    buffers: [
      x.binding,
      mean.binding,
      rstd.binding,
      dy.binding,
      (partials ?? gw).binding,
      gb.binding,
    ],
    params: columns,
    constants: { PIECES: partials ? 1 : 0 },
    workgroups: grid1d(pieces * d, WG),
  });
  if (partials) {
    recorder.dispatch(kernels.gradParamsMerge, {
      buffers: [partials.binding, gw.binding, gb.binding],
      params: columns,
      workgroups: grid1d(d, WG),
    });
    partials.dispose();
  }
  return [gw, gb];
}
