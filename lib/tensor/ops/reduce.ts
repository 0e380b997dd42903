// Differentiable reductions over one axis (sum, mean); their kernels and the tape-free reductions
// (max, min, sumTo, which undoes a broadcast in backward) are in reduce_raw.ts.

import { record, type Shape, type Tensor } from "../tensor.ts";
import { broadcastTo, mulScalar } from "./elementwise.ts";
import { normAxis, reduceRaw } from "./reduce_raw.ts";

export {
  MAX_LOOP,
  normAxis,
  reduceRaw,
  sumOuterInner,
  sumTo,
  useWorkgroupReduction,
} from "./reduce_raw.ts";

function keepDims(x: Tensor, t: Tensor, axis: number, keepdim: boolean): Tensor {
  if (!keepdim) return t;
  const shape = [...x.shape];
  shape[axis] = 1;
  return t.view(shape);
}

/** Sum over one axis (or all axes when axis is undefined). */
export function sum(x: Tensor, axis?: number, keepdim = false): Tensor {
  if (axis === undefined) return sum(reshapeRaw(x, [x.size]), 0, false);
  const a = normAxis(axis, x.rank);
  const out = keepDims(x, reduceRaw(x, a, "sum"), a, keepdim);
  return record("sum", out, [x], (g) => [expandAlong(g, x.shape, a)]);
}

/** Mean over one axis (or all axes when axis is undefined). */
export function mean(x: Tensor, axis?: number, keepdim = false): Tensor {
  if (axis === undefined) return mean(reshapeRaw(x, [x.size]), 0, false);
  const a = normAxis(axis, x.rank);
  const n = x.shape[a];
  const out = keepDims(x, reduceRaw(x, a, "sum", 1 / n), a, keepdim);
  return record("mean", out, [x], (g) => [mulScalar(expandAlong(g, x.shape, a), 1 / n)]);
}

function reshapeRaw(x: Tensor, shape: Shape): Tensor {
  const v = x.view(shape);
  return record("reshape", v, [x], (g) => [g.view(x.shape)]);
}

/** g reduced over `axis` → broadcast back along it to `shape`. */
function expandAlong(g: Tensor, shape: Shape, axis: number): Tensor {
  const s = [...shape];
  s[axis] = 1;
  return broadcastTo(g.view(s), shape);
}
