// Elementwise ops: unary maps, scalar maps and broadcasting binary ops, each with its backward rule.

import { gpu } from "../../gpu/device.ts";
import { forcedVariant } from "../../gpu/autotune.ts";
import { f32bits, grid1d } from "../../gpu/recorder.ts";
import { record, type Shape, Tensor } from "../tensor.ts";
import { elementwiseKernels, WG } from "./kernels.ts";
import { sumTo } from "./reduce_raw.ts";

/** Unary op codes of kernels/elementwise.wgsl (`unary_f` / `unary_df`). */
const UNARY = {
  copy: 0,
  neg: 1,
  exp: 2,
  log: 3,
  sqrt: 4,
  rsqrt: 5,
  relu: 6,
  gelu: 7,
  silu: 8,
  sigmoid: 9,
  tanh: 10,
  abs: 11,
  affine: 12,
  pow: 13,
  square: 14,
  reciprocal: 15,
  clamp: 16,
} as const;
type UnaryName = keyof typeof UNARY;

function requireF32(op: string, ...ts: Tensor[]): void {
  for (const t of ts) {
    if (t.dtype !== "f32") throw new Error(`peco: ${op} needs f32, got ${t.describe()}`);
  }
}

/**
 * Whether an elementwise op over n values runs four a lane (the _v4 kernels: one vec4 load and store
 * per operand): n a multiple of 4, unless `forceVariant("elementwise", "scalar")` (tests compare).
 */
function fourALane(n: number): boolean {
  return n % 4 === 0 && forcedVariant("elementwise") !== "scalar";
}

function unary(name: UnaryName, x: Tensor, a = 0, b = 0): Tensor {
  requireF32(name, x);
  const out = new Tensor(x.shape, "f32");
  const constants = { OP: UNARY[name] };
  const v4 = fourALane(x.size);
  const n = v4 ? x.size / 4 : x.size;
  const params = [n, f32bits(a), f32bits(b), 0];
  gpu().recorder.dispatch(v4 ? elementwiseKernels.unary4 : elementwiseKernels.unary, {
    buffers: [x.binding, out.binding],
    params,
    constants,
    workgroups: grid1d(n, WG),
  });
  return record(name, out, [x], (g) => {
    const gx = new Tensor(x.shape, "f32");
    gpu().recorder.dispatch(v4 ? elementwiseKernels.unaryGrad4 : elementwiseKernels.unaryGrad, {
      buffers: [x.binding, out.binding, g.binding, gx.binding],
      params,
      constants,
      workgroups: grid1d(n, WG),
    });
    return [gx];
  });
}

/** A copy with its own buffer (autograd passes the gradient through). */
export const copy = (x: Tensor) => unary("copy", x);
export const neg = (x: Tensor) => unary("neg", x);
export const exp = (x: Tensor) => unary("exp", x);
export const log = (x: Tensor) => unary("log", x);
export const sqrt = (x: Tensor) => unary("sqrt", x);
export const rsqrt = (x: Tensor) => unary("rsqrt", x);
export const relu = (x: Tensor) => unary("relu", x);
/** GELU with the exact erf form (PyTorch's nn.GELU default). */
export const gelu = (x: Tensor) => unary("gelu", x);
/** SiLU / swish: x·sigmoid(x). */
export const silu = (x: Tensor) => unary("silu", x);
export const sigmoid = (x: Tensor) => unary("sigmoid", x);
export const tanh = (x: Tensor) => unary("tanh", x);
export const abs = (x: Tensor) => unary("abs", x);
export const square = (x: Tensor) => unary("square", x);
export const reciprocal = (x: Tensor) => unary("reciprocal", x);
/** x·scale + shift. */
export const affine = (x: Tensor, scale: number, shift: number) => unary("affine", x, scale, shift);
export const mulScalar = (x: Tensor, s: number) => unary("affine", x, s, 0);
export const addScalar = (x: Tensor, s: number) => unary("affine", x, 1, s);
export const powScalar = (x: Tensor, p: number) => unary("pow", x, p);
export const clamp = (x: Tensor, lo: number, hi: number) => unary("clamp", x, lo, hi);

/** Binary op codes of kernels/elementwise.wgsl (`binary_f`). */
const BINARY = { add: 0, sub: 1, mul: 2, div: 3, maximum: 4, minimum: 5, first: 6 } as const;
const MAX_RANK = 6;

/** NumPy broadcasting of two shapes. */
export function broadcastShapes(a: Shape, b: Shape): number[] {
  const rank = Math.max(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i < rank; i++) {
    const da = a[a.length - rank + i] ?? 1;
    const db = b[b.length - rank + i] ?? 1;
    if (da !== db && da !== 1 && db !== 1) {
      throw new Error(`peco: shapes [${a.join(",")}] and [${b.join(",")}] do not broadcast`);
    }
    out.push(da === 1 ? db : da);
  }
  return out;
}

/** Strides of `shape` (same rank as `out`) read through broadcast to `out`: 0 on broadcast dims. */
function broadcastStrides(shape: Shape, out: Shape): number[] {
  const strides = new Array(shape.length).fill(0);
  let stride = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    strides[i] = shape[i] === 1 && out[i] !== 1 ? 0 : stride;
    stride *= shape[i];
  }
  return strides;
}

/**
 * A broadcast as the kernel walks it: the output's dims with size-1 dims dropped and neighbours
 * merged wherever both operands run contiguously (or both broadcast) across them, so a bias added
 * along the last dim of [B, T, C] is a rank-2 walk. Each dim costs the kernel a division and a
 * remainder per element — on a CPU driver that is most of a broadcast's time.
 */
export function broadcastWalk(
  a: Shape,
  b: Shape,
  shape: Shape,
): { dims: number[]; sa: number[]; sb: number[] } {
  const keep = shape.map((_, i) => i).filter((i) => shape[i] !== 1);
  const pad = (s: Shape) => {
    const full = [...new Array(shape.length - s.length).fill(1), ...s];
    return keep.map((i) => full[i]);
  };
  const dims = keep.map((i) => shape[i]);
  const [sa, sb] = [broadcastStrides(pad(a), dims), broadcastStrides(pad(b), dims)];
  // Merge dim k into dim k + 1 (inner) where each operand's stride over k is its stride over
  // k + 1 times the inner size (true for both a broadcast, 0 = 0, and a contiguous run).
  for (let k = dims.length - 2; k >= 0; k--) {
    const inner = dims[k + 1];
    if (sa[k] === sa[k + 1] * inner && sb[k] === sb[k + 1] * inner) {
      dims.splice(k, 2, dims[k] * inner);
      sa.splice(k, 1);
      sb.splice(k, 1);
    }
  }
  return { dims, sa, sb };
}

/** One binary kernel launch (no autograd); the kernel's loop runs over the walk's RANK dims. */
function binaryDispatch(op: keyof typeof BINARY, a: Tensor, b: Tensor, shape: number[]): Tensor {
  const out = new Tensor(shape, "f32");
  const same = a.size === out.size && b.size === out.size;
  let params: number[];
  let rank = 1; // (unused by the same-shape path)
  if (same) {
    params = [out.size, 0];
  } else {
    const { dims, sa, sb } = broadcastWalk(a.shape, b.shape, shape);
    if (dims.length > MAX_RANK) {
      throw new Error(`peco: ${op} broadcasts over more than ${MAX_RANK} dims`);
    }
    rank = dims.length;
    const front = (xs: number[], fill: number) => [
      ...new Array(MAX_RANK - xs.length).fill(fill),
      ...xs,
    ];
    params = [out.size, rank, ...front(dims, 1), ...front(sa, 0), ...front(sb, 0)];
  }
  if (same && fourALane(out.size)) {
    gpu().recorder.dispatch(elementwiseKernels.binary4, {
      buffers: [a.binding, b.binding, out.binding],
      params: [out.size / 4, 0],
      constants: { OP: BINARY[op] },
      workgroups: grid1d(out.size / 4, WG),
    });
    return out;
  }
  gpu().recorder.dispatch(elementwiseKernels.binary, {
    buffers: [a.binding, b.binding, out.binding],
    params,
    constants: { OP: BINARY[op], BROADCAST: same ? 0 : 1, RANK: rank },
    workgroups: grid1d(out.size, WG),
  });
  return out;
}

function binary(
  op: keyof typeof BINARY,
  a: Tensor,
  b: Tensor,
  backward: (g: Tensor, out: Tensor) => [Tensor | null, Tensor | null],
): Tensor {
  requireF32(op, a, b);
  const shape = broadcastShapes(a.shape, b.shape);
  const out = binaryDispatch(op, a, b, shape);
  return record(op, out, [a, b], (g) => {
    const [ga, gb] = backward(g, out);
    return [
      ga && a.requiresGrad ? sumTo(ga, a.shape) : null,
      gb && b.requiresGrad ? sumTo(gb, b.shape) : null,
    ];
  });
}

/** x repeated along its size-1 (or missing leading) dims to `shape`. */
export function broadcastTo(x: Tensor, shape: Shape): Tensor {
  requireF32("broadcastTo", x);
  const target = broadcastShapes(x.shape, shape);
  if (target.length !== shape.length || target.some((d, i) => d !== shape[i])) {
    throw new Error(`peco: cannot broadcast ${x.describe()} to [${shape.join(",")}]`);
  }
  const out = binaryDispatch("first", x, x, target);
  return record("broadcastTo", out, [x], (g) => [sumTo(g, x.shape)]);
}

export function add(a: Tensor, b: Tensor): Tensor {
  return binary("add", a, b, (g) => [g, g]);
}

export function sub(a: Tensor, b: Tensor): Tensor {
  return binary("sub", a, b, (g) => [g, b.requiresGrad ? neg(g) : null]);
}

export function mul(a: Tensor, b: Tensor): Tensor {
  return binary("mul", a, b, (g) => [
    a.requiresGrad ? mul(g, b) : null,
    b.requiresGrad ? mul(g, a) : null,
  ]);
}

export function div(a: Tensor, b: Tensor): Tensor {
  return binary("div", a, b, (g, out) => [
    a.requiresGrad ? div(g, b) : null,
    b.requiresGrad ? neg(div(mul(g, out), b)) : null,
  ]);
}

/** Elementwise maximum; the gradient goes to `a` where a ≥ b, else to `b`. */
export function maximum(a: Tensor, b: Tensor): Tensor {
  return binary("maximum", a, b, (g, out) => selectGrad(g, a, out));
}

/** Elementwise minimum; the gradient goes to `a` where a ≤ b, else to `b`. */
export function minimum(a: Tensor, b: Tensor): Tensor {
  return binary("minimum", a, b, (g, out) => selectGrad(g, a, out));
}

/** Routes g to whichever input equals the output (to `a` on ties). */
function selectGrad(g: Tensor, a: Tensor, out: Tensor): [Tensor, Tensor] {
  // mask = 1 where a == out: |a − out| mapped through clamp(1 − k·|d|, 0, 1) with a huge k.
  const isA = clamp(affine(abs(sub(a, out)), -1e30, 1), 0, 1);
  const ga = mul(g, isA);
  return [ga, sub(g, ga)];
}

/** y ← y + a·x in place (no autograd): gradient accumulation and running averages. */
export function axpyInPlace(y: Tensor, x: Tensor, a = 1): void {
  if (y.size !== x.size) {
    throw new Error(`peco: axpy of ${x.describe()} into ${y.describe()}: sizes differ`);
  }
  gpu().recorder.dispatch(elementwiseKernels.axpy, {
    buffers: [x.binding, y.binding],
    params: [x.size, f32bits(a)],
    workgroups: grid1d(x.size, WG),
  });
}
