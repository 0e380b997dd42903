// Losses to a scalar: fused cross-entropy (label smoothing, row mask), the mean squared and
// absolute errors, and the unit-normalised feature distance of the perceptual loss, each with its
// backward rule. See kernels/loss.wgsl.

import { gpu } from "../../gpu/device.ts";
import { forcedVariant } from "../../gpu/autotune.ts";
import { defineKernel } from "../../gpu/pipelines.ts";
import { f32bits, grid1d } from "../../gpu/recorder.ts";
import { record, Tensor } from "../tensor.ts";
import { addScalar, div, mulScalar, sqrt, square, sub } from "./elementwise.ts";
import { MAX_LOOP, reduceRaw, sum } from "./reduce.ts";
import source from "../../../kernels/loss.wgsl" with { type: "text" };

const WG = 256;
/** The pair losses sum in up to this many interleaved pieces, then reduce the pieces. */
const MAX_PIECES = 4096;
const MIN_PIECE = 64;
/** Columns per invocation of the cross-entropy gradient (RUN in loss.wgsl). */
const CE_GRAD_RUN = 16;

const kernel = (entry: string, bindings: ("read" | "write")[], params = true) =>
  defineKernel({ name: `loss_${entry}`, source, entry, bindings, params });

const kernels = {
  ceRows: kernel("ce_rows", ["read", "read", "read", "write", "write"]),
  ceFinish: kernel("ce_finish", ["read", "write"], false),
  ceFinishAccuracy: kernel("ce_finish_accuracy", ["read", "write", "write"], false),
  ceGrad: kernel("ce_grad", ["read", "read", "read", "read", "read", "read", "write"]),
  pairPartial: kernel("pair_partial", ["read", "read", "write"]),
  pairGrad: kernel("pair_grad", ["read", "read", "read", "write"]),
  unitDistance: kernel("unit_distance", ["read", "read", "write"]),
  unitDistanceGrad: kernel("unit_distance_grad", ["read", "read", "read", "write"]),
};

const shapeOf = (t: Tensor) => `[${t.shape.join(",")}]`;

export interface CrossEntropyOptions {
  /** f32 [N]: each row's weight in the mean (1 keeps the row, 0 drops it). */
  mask?: Tensor;
  /** ε: the target distribution is (1 − ε)·onehot + ε/K, as in PyTorch. */
  labelSmoothing?: number;
}

/**
 * Mean cross-entropy of logits [N, K] against class indices targets i32 [N], over the rows whose
 * mask is 1 (all rows without a mask); 0 when no row counts. A target outside [0, K) (e.g. −100,
 * PyTorch's ignore_index) drops its row like a mask of 0: it adds nothing to the loss, the count or
 * the gradient.
 */
export function crossEntropy(
  logits: Tensor,
  targets: Tensor,
  options: CrossEntropyOptions = {},
): Tensor {
  return crossEntropyOp("crossEntropy", logits, targets, options, false).loss;
}

/**
 * crossEntropy and, from the same row pass (no autograd), the accuracy: the share of the rows that
 * count (weighted by the mask) whose argmax, the first index of the largest logit, is the target;
 * 0 when no row counts. Three dispatches where the loss and a separate argmax, compare and mean
 * take eleven.
 */
export function crossEntropyAccuracy(
  logits: Tensor,
  targets: Tensor,
  options: CrossEntropyOptions = {},
): { loss: Tensor; accuracy: Tensor } {
  const { loss, accuracy } = crossEntropyOp(
    "crossEntropyAccuracy",
    logits,
    targets,
    options,
    true,
  );
  return { loss, accuracy: accuracy! };
}

function crossEntropyOp(
  op: string,
  logits: Tensor,
  targets: Tensor,
  { mask, labelSmoothing = 0 }: CrossEntropyOptions,
  withAccuracy: boolean,
): { loss: Tensor; accuracy: Tensor | null } {
  if (logits.dtype !== "f32" || logits.rank !== 2) {
    throw new Error(`peco: ${op}: logits must be f32 [N, K], got ${logits.describe()}`);
  }
  const [n, k] = logits.shape;
  const rowsOf = `[${n}] for logits ${shapeOf(logits)}`;
  if (targets.dtype !== "i32" || targets.rank !== 1 || targets.shape[0] !== n) {
    throw new Error(`peco: ${op}: targets must be i32 ${rowsOf}, got ${targets.describe()}`);
  }
  if (mask && (mask.dtype !== "f32" || mask.rank !== 1 || mask.shape[0] !== n)) {
    throw new Error(`peco: ${op}: mask must be f32 ${rowsOf}, got ${mask.describe()}`);
  }
  if (!(labelSmoothing >= 0 && labelSmoothing <= 1)) {
    throw new Error(`peco: ${op}: labelSmoothing ${labelSmoothing} is not in [0, 1]`);
  }
  // One invocation loops over a row: lavapipe silently ends loops longer than 65535.
  if (k < 1 || k > MAX_LOOP) {
    throw new Error(`peco: ${op}: logits ${shapeOf(logits)} need 1 to ${MAX_LOOP} classes`);
  }
  const recorder = gpu().recorder;
  const params = [n, k, f32bits(labelSmoothing)];
  // rows: [weighted loss per row; weight per row; weighted hit per row] → sums [Σ w·loss, Σ w,
  // Σ w·hit] → the mean (and the accuracy).
  const rows = new Tensor([3, n], "f32");
  const lse = new Tensor([n], "f32");
  recorder.dispatch(kernels.ceRows, {
    buffers: [logits.binding, targets.binding, (mask ?? logits).binding, rows.binding, lse.binding],
    params,
    constants: { HAS_MASK: mask ? 1 : 0 },
    workgroups: grid1d(n, WG),
  });
  const sums = reduceRaw(rows, 1, "sum");
  const out = new Tensor([], "f32");
  const accuracy = withAccuracy ? new Tensor([], "f32") : null;
  recorder.dispatch(accuracy ? kernels.ceFinishAccuracy : kernels.ceFinish, {
    buffers: accuracy ? [sums.binding, out.binding, accuracy.binding] : [sums.binding, out.binding],
    workgroups: [1],
  });
  const loss = record(op, out, [logits], (g) => {
    const dz = new Tensor(logits.shape, "f32");
    gpu().recorder.dispatch(kernels.ceGrad, {
      buffers: [
        logits.binding,
        targets.binding,
        rows.binding,
        lse.binding,
        sums.binding,
        g.binding,
        dz.binding,
      ],
      params,
      workgroups: grid1d(n * Math.ceil(k / CE_GRAD_RUN), WG),
    });
    return [dz];
  });
  return { loss, accuracy };
}

/** mean((a − b)²) over all elements; a and b of the same shape. */
export function mseLoss(a: Tensor, b: Tensor): Tensor {
  return pairLoss("mseLoss", 0, a, b);
}

/** mean(|a − b|) over all elements; a and b of the same shape. */
export function l1Loss(a: Tensor, b: Tensor): Tensor {
  return pairLoss("l1Loss", 1, a, b);
}

function pairLoss(op: string, code: number, a: Tensor, b: Tensor): Tensor {
  if (a.dtype !== "f32" || b.dtype !== "f32") {
    throw new Error(`peco: ${op}: needs f32 inputs, got ${a.describe()} and ${b.describe()}`);
  }
  if (a.rank !== b.rank || a.shape.some((d, i) => d !== b.shape[i])) {
    throw new Error(`peco: ${op}: shapes ${shapeOf(a)} and ${shapeOf(b)} differ`);
  }
  const n = a.size;
  // Each piece loops n / pieces times: below MAX_LOOP (lavapipe silently ends longer loops).
  const pieces = Math.max(
    1,
    Math.min(MAX_PIECES, Math.floor(n / MIN_PIECE)),
    Math.ceil(n / MAX_LOOP),
  );
  const parts = new Tensor([pieces], "f32");
  gpu().recorder.dispatch(kernels.pairPartial, {
    buffers: [a.binding, b.binding, parts.binding],
    params: [n, pieces, 0],
    constants: { OP: code },
    workgroups: grid1d(pieces, WG),
  });
  const out = reduceRaw(parts, 0, "sum", 1 / n);
  parts.dispose();
  return record(op, out, [a, b], (g) => {
    const grad = (x: Tensor, scale: number) => {
      if (!x.requiresGrad) return null;
      const dx = new Tensor(x.shape, "f32");
      gpu().recorder.dispatch(kernels.pairGrad, {
        buffers: [a.binding, b.binding, g.binding, dx.binding],
        params: [n, 0, f32bits(scale)],
        constants: { OP: code },
        workgroups: grid1d(n, WG),
      });
      return dx;
    };
    return [grad(a, 1 / n), grad(b, -1 / n)];
  });
}

// ---- unit-normalised feature distance ----------------------------------------------------------

/** A feature vector's norm is sqrt(Σ x² + UNIT_ROOT_EPS) + UNIT_NORM_EPS: LPIPS adds 1e-10. */
export const UNIT_NORM_EPS = 1e-10;
/**
 * Added under the square root: an all-zero position (common after a ReLU in a narrow network)
 * would otherwise get 0·∞ = NaN from the root's gradient. It changes no norm above ~1e-10.
 */
export const UNIT_ROOT_EPS = 1e-20;
/**
 * The fused kernels loop three times over a position's channels, within lavapipe's budget of loop
 * iterations per invocation (see MAX_GROUP in fused_norm.ts); wider features take the composite.
 */
export const UNIT_MAX_CHANNELS = 10_000;

/** x / (sqrt(Σ_c x² + UNIT_ROOT_EPS) + UNIT_NORM_EPS) at every position of x [N, C, ...]. */
export function unitNormalize(x: Tensor): Tensor {
  const norm = sqrt(addScalar(sum(square(x), 1, true), UNIT_ROOT_EPS));
  return div(x, addScalar(norm, UNIT_NORM_EPS));
}

/**
 * One tap of the perceptual loss (docs/paper-to-code.md): f and g [N, C, ...] are N × (positions)
 * feature vectors of C channels; each is divided by its norm (unitNormalize) and the squared
 * distance Σ_c (f̂ − ĝ)² is averaged over the batch and the positions. One dispatch and a sum
 * forward, one per input that needs a gradient backward; the same as a chain of ~16 elementwise
 * and reduction ops (`forceVariant("unitDistance", "composite")` runs that chain: tests compare).
 */
export function unitDistance(f: Tensor, g: Tensor): Tensor {
  if (f.dtype !== "f32" || g.dtype !== "f32" || f.rank < 2 || f.size === 0) {
    throw new Error(
      `peco: unitDistance: needs non-empty f32 [N, C, ...] inputs, got ${f.describe()} and ${g.describe()}`,
    );
  }
  if (f.rank !== g.rank || f.shape.some((d, i) => d !== g.shape[i])) {
    throw new Error(`peco: unitDistance: shapes ${shapeOf(f)} and ${shapeOf(g)} differ`);
  }
  const c = f.shape[1];
  const positions = f.size / c;
  if (forcedVariant("unitDistance") === "composite" || c > UNIT_MAX_CHANNELS) {
    return mulScalar(sum(square(sub(unitNormalize(f), unitNormalize(g)))), 1 / positions);
  }
  const s = f.size / (f.shape[0] * c);
  const params = [
    positions,
    c,
    s,
    f32bits(1 / positions),
    f32bits(UNIT_NORM_EPS),
    f32bits(UNIT_ROOT_EPS),
  ];
  const rows = new Tensor([positions], "f32");
  gpu().recorder.dispatch(kernels.unitDistance, {
    buffers: [f.binding, g.binding, rows.binding],
    params,
    workgroups: grid1d(positions, WG),
  });
  const out = reduceRaw(rows, 0, "sum", 1 / positions);
  rows.dispose();
  return record("unitDistance", out, [f, g], (dy) => {
    // The distance is symmetric in f and g: g's gradient is f's with the two swapped.
    const grad = (a: Tensor, b: Tensor) => {
      if (!a.requiresGrad) return null;
      const da = new Tensor(a.shape, "f32");
      gpu().recorder.dispatch(kernels.unitDistanceGrad, {
        buffers: [a.binding, b.binding, dy.binding, da.binding],
        params,
        workgroups: grid1d(positions, WG),
      });
      return da;
    };
    return [grad(f, g), grad(g, f)];
  });
}
