// A residual branch added with a layer scale, x + h · gamma (gamma per channel of the last dim), as
// one op: one dispatch forward where mul and add take two (the first a broadcast), and one (two
// when the rows are split into pieces) backward for dh and gamma's gradient, where the composed ops
// take a broadcast multiply, a multiply and a reduction. dx is the output gradient itself. On a
// software adapter the backward walks all rows of a channel in one invocation (one dispatch; the
// cores are few, as fused_norm.ts's weight gradients do), elsewhere pieces of rows and a sum.

import { forcedVariant } from "../../gpu/autotune.ts";
import { gpu } from "../../gpu/device.ts";
import { defineKernel } from "../../gpu/pipelines.ts";
import { grid1d } from "../../gpu/recorder.ts";
import { record, Tensor } from "../tensor.ts";
import { MAX_LOOP, reduceRaw } from "./reduce_raw.ts";
import source from "../../../kernels/residual.wgsl" with { type: "text" };

const WG = 64;

const kernels = {
  forward: defineKernel({
    name: "residual_scaled",
    source,
    entry: "forward",
    bindings: ["read", "read", "read", "write"],
  }),
  backward: defineKernel({
    name: "residual_scaled_grad",
    source,
    entry: "backward",
    bindings: ["read", "read", "read", "write", "write"],
  }),
};

/**
 * Invocations the backward aims for: a few SIMD rows per core on a software adapter (each
 * invocation walks its piece of rows serially), enough to fill a GPU otherwise.
 */
const targetInvocations = () => (gpu().info.software ? 512 : 8192);

/**
 * Rows one invocation walks at most in the one-piece backward (lavapipe silently ends an
 * invocation's loops past a budget of iterations: see fused_norm.ts).
 */
const MAX_WHOLE_ROWS = 10_000;

/**
 * Rows per piece of the backward: all rows in one piece (no partial sums to add) on a software
 * adapter where they fit MAX_WHOLE_ROWS, else pieces aiming at targetInvocations.
 * `forceVariant("residualScaledGrad", "whole" | "pieces")` picks one (tests run both).
 */
function pieceRowsFor(rows: number, c: number): number {
  const forced = forcedVariant("residualScaledGrad");
  const whole = forced ? forced === "whole" : gpu().info.software;
  if (whole && rows <= MAX_WHOLE_ROWS) return Math.max(1, rows);
  return Math.max(
    1,
    Math.min(MAX_LOOP, Math.ceil(rows / Math.max(1, Math.floor(targetInvocations() / c)))),
  );
}

/** x + h · gamma: x and h of one shape [..., C], gamma [C]. */
export function residualScaled(x: Tensor, h: Tensor, gamma: Tensor): Tensor {
  const c = x.shape[x.rank - 1];
  const same = x.rank === h.rank && x.shape.every((d, i) => d === h.shape[i]);
  if (!same || gamma.rank !== 1 || gamma.size !== c || x.rank < 1) {
    throw new Error(
      `peco: residualScaled: x ${x.describe()} and h ${h.describe()} must match and gamma ` +
        `${gamma.describe()} must be [${c}]`,
    );
  }
  for (const t of [x, h, gamma]) {
    if (t.dtype !== "f32") throw new Error(`peco: residualScaled: needs f32, got ${t.describe()}`);
  }
  const rows = x.size / Math.max(1, c);
  const out = new Tensor(x.shape, "f32");
  if (out.size > 0) {
    gpu().recorder.dispatch(kernels.forward, {
      buffers: [x.binding, h.binding, gamma.binding, out.binding],
      params: [x.size, c, rows, 0, 0],
      workgroups: grid1d(x.size, WG),
    });
  }
  return record("residualScaled", out, [x, h, gamma], (g) => {
    const pieceRows = pieceRowsFor(rows, c);
    const pieces = Math.max(1, Math.ceil(rows / pieceRows));
    const dh = new Tensor(h.shape, "f32");
    const partials = new Tensor([pieces, c], "f32");
    if (out.size > 0) {
      gpu().recorder.dispatch(kernels.backward, {
        buffers: [g.binding, h.binding, gamma.binding, dh.binding, partials.binding],
        params: [x.size, c, rows, pieceRows, pieces],
        workgroups: grid1d(pieces * c, WG),
      });
    }
    let dGamma: Tensor | null = null;
    if (gamma.requiresGrad) {
      dGamma = pieces > 1 ? reduceRaw(partials, 0, "sum") : partials.view([c]);
    }
    if (pieces > 1 || !dGamma) partials.dispose();
    return [x.requiresGrad ? g : null, h.requiresGrad ? dh : null, dGamma];
  });
}
