// Shape and index ops. reshape is a free view; permute, transpose, slice, concat and pad all move
// data through one strided-copy kernel; gather, scatterAddRows and embedding select and accumulate
// rows by an i32 index list (deterministic without float atomics: a CSR plan built by a stable
// counting sort); cast converts between dtypes.
//
// Out-of-range indices: an index outside [0, len) names no row. gather and embedding read zeros
// for it (and send it no gradient); scatterAddRows drops its source row. The GPU never reads or
// writes out of bounds, and no index is checked on the host (that would need a readback).

import { gpu } from "../../gpu/device.ts";
import { defineKernel } from "../../gpu/pipelines.ts";
import { type BufferSlice, f32bits, grid1d } from "../../gpu/recorder.ts";
import { type DType, record, type Shape, Tensor } from "../tensor.ts";
import { full, zeros } from "./creation.ts";
import { WG } from "./kernels.ts";
import source from "../../../kernels/shape.wgsl" with { type: "text" };

const kernels = {
  copy: defineKernel({
    name: "shape_copy",
    source,
    entry: "strided_copy",
    bindings: ["read", "write"],
  }),
  concat4: defineKernel({
    name: "shape_concat4",
    source,
    entry: "concat4",
    bindings: ["read", "read", "read", "read", "write"],
  }),
  placeAxis: defineKernel({
    name: "shape_place_axis",
    source,
    entry: "place_axis",
    bindings: ["read", "write"],
  }),
  cast: defineKernel({
    name: "shape_cast",
    source,
    entry: "cast_values",
    bindings: ["read", "write"],
  }),
  gather: defineKernel({
    name: "shape_gather",
    source,
    entry: "gather",
    bindings: ["read", "read", "write"],
  }),
  indexHist: defineKernel({
    name: "shape_index_hist",
    source,
    entry: "index_hist",
    bindings: ["read", "write"],
  }),
  indexScan: defineKernel({
    name: "shape_index_scan",
    source,
    entry: "index_scan",
    bindings: ["write", "write"],
  }),
  indexPlace: defineKernel({
    name: "shape_index_place",
    source,
    entry: "index_place",
    bindings: ["read", "write", "write"],
  }),
  scatterRows: defineKernel({
    name: "shape_scatter_rows",
    source,
    entry: "scatter_rows",
    bindings: ["read", "read", "read", "write"],
  }),
};

/** Most dims a copy box may keep after merging (the kernel's params hold 6). */
const MAX_RANK = 6;
/**
 * Loop iterations a kernel invocation may run, all its loops together. lavapipe (llvmpipe) ends an
 * invocation's loops after 65535 iterations in total, silently (its LP_MAX_TGSI_LOOP_ITERATIONS
 * limiter); kernels with data-sized loops split their work to stay below this margin.
 */
export const MAX_LOOP_ITERATIONS = 32_000;
/** Invocations of kernels/shape.wgsl's one-workgroup scan. */
const SCAN_WG = 256;
const DTYPE_CODE: Record<DType, number> = { f32: 0, i32: 1, u32: 2 };

// ---- helpers ------------------------------------------------------------------------------------

const prod = (dims: readonly number[]) => dims.reduce((a, b) => a * b, 1);
const fmt = (shape: Shape) => `[${shape.join(",")}]`;

/** Row-major strides of a contiguous tensor. */
function stridesOf(shape: Shape): number[] {
  const strides = new Array(shape.length);
  let stride = 1;
  for (let k = shape.length - 1; k >= 0; k--) {
    strides[k] = stride;
    stride *= shape[k];
  }
  return strides;
}

/** A normalised axis (negative counts from the end), or an error naming the op and the tensor. */
function axisOf(op: string, x: Tensor, axis: number): number {
  const a = axis < 0 ? axis + x.rank : axis;
  if (!Number.isInteger(axis) || a < 0 || a >= x.rank) {
    throw new Error(`peco: ${op}: axis ${axis} out of range for ${x.describe()}`);
  }
  return a;
}

function requireIndices(op: string, indices: Tensor, rank1: boolean): void {
  if (indices.dtype !== "i32") {
    throw new Error(`peco: ${op}: indices must be i32, got ${indices.describe()}`);
  }
  if (rank1 && indices.rank !== 1) {
    throw new Error(`peco: ${op}: indices must have rank 1, got ${indices.describe()}`);
  }
}

function requireF32(op: string, x: Tensor): void {
  if (x.dtype !== "f32") throw new Error(`peco: ${op}: needs f32, got ${x.describe()}`);
}

/**
 * A box of `dims` read with strides `from` and written with strides `to`, folded for the copy
 * kernel: size-1 dims dropped and neighbours contiguous on both sides merged, so boxes of any rank
 * that fold to at most 6 dims work and each element decodes as few coordinates as possible.
 * Folded before the output is allocated, so a box that does not fit throws without leaking.
 */
interface Box {
  n: number;
  dims: number[];
  from: number[];
  to: number[];
}

function foldBox(op: string, dims: Shape, from: readonly number[], to: readonly number[]): Box {
  const box: Box = { n: prod(dims), dims: [], from: [], to: [] };
  dims.forEach((size, k) => {
    if (size === 1) return;
    const last = box.dims.length - 1;
    if (last >= 0 && box.from[last] === from[k] * size && box.to[last] === to[k] * size) {
      box.dims[last] *= size;
      box.from[last] = from[k];
      box.to[last] = to[k];
    } else {
      box.dims.push(size);
      box.from.push(from[k]);
      box.to.push(to[k]);
    }
  });
  if (box.dims.length > MAX_RANK && box.n > 0) {
    throw new Error(
      `peco: ${op}: a copy of box ${fmt(dims)} needs ${box.dims.length} dims (at most ${MAX_RANK})`,
    );
  }
  return box;
}

/**
 * Elements of the innermost dim per invocation (the RUN of kernels/shape.wgsl): up to 8 on CPUs,
 * where each invocation's index decode is costly; 1 on GPUs, where neighbouring invocations should
 * touch neighbouring words.
 */
function runOf(innermost: number): number {
  return gpu().info.software ? [8, 4, 2, 1].find((r) => innermost % r === 0)! : 1;
}

/** Copies a folded box between buffers (any dtype: 32-bit words), starting at the offsets. */
function copyBox(
  box: Box,
  from: GPUBuffer | BufferSlice,
  fromOffset: number,
  to: GPUBuffer | BufferSlice,
  toOffset: number,
) {
  if (box.n === 0) return;
  const lead = (values: number[], fill: number) => [
    ...new Array(MAX_RANK - values.length).fill(fill),
    ...values,
  ];
  const run = runOf(box.dims[box.dims.length - 1] ?? 1);
  gpu().recorder.dispatch(kernels.copy, {
    buffers: [from, to],
    params: [
      box.n,
      fromOffset,
      toOffset,
      ...lead(box.dims, 1),
      ...lead(box.from, 0),
      ...lead(box.to, 0),
    ],
    constants: { RANK: box.dims.length, RUN: run },
    workgroups: grid1d(box.n / run, WG),
  });
}

const offsetOf = (starts: readonly number[], strides: readonly number[]) =>
  starts.reduce((acc, s, k) => acc + s * strides[k], 0);

/** The box of `x` of `shape` that starts at `starts` (slice forward, pad backward). */
function crop(op: string, x: Tensor, starts: readonly number[], shape: Shape): Tensor {
  const strides = stridesOf(x.shape);
  const box = foldBox(op, shape, strides, stridesOf(shape));
  const out = new Tensor(shape, x.dtype);
  copyBox(box, x.binding, offsetOf(starts, strides), out.binding, 0);
  return out;
}

/**
 * x placed at `starts` in a tensor of `shape` full of `value` (pad forward, slice backward): one
 * dispatch when only one axis differs, else a fill and a copy.
 */
function embed(op: string, x: Tensor, starts: readonly number[], shape: Shape, value: number) {
  const strides = stridesOf(shape);
  const box = foldBox(op, x.shape, stridesOf(x.shape), strides);
  const axes = shape.flatMap((d, k) => (d !== x.shape[k] ? [k] : []));
  if (axes.length === 1) return placeAxis(x, axes[0], starts[axes[0]], shape, value);
  const out = full(shape, value, x.dtype);
  copyBox(box, x.binding, 0, out.binding, offsetOf(starts, strides));
  return out;
}

/** x placed at `start` along `axis` of a tensor of `shape` (x's shape elsewhere), `value` around. */
function placeAxis(x: Tensor, axis: number, start: number, shape: Shape, value: number): Tensor {
  const out = new Tensor(shape, x.dtype);
  const inner = prod(shape.slice(axis + 1));
  const bits = x.dtype === "f32" ? f32bits(value) : value >>> 0;
  gpu().recorder.dispatch(kernels.placeAxis, {
    buffers: [x.binding, out.binding],
    params: [out.size, shape[axis], inner, start, x.shape[axis], bits],
    workgroups: grid1d(out.size, WG),
  });
  return out;
}

// ---- views and copies ---------------------------------------------------------------------------

/** The same values under another shape (a free view); one dim may be -1 (inferred). */
export function reshape(x: Tensor, shape: readonly number[]): Tensor {
  const wild = shape.filter((d) => d === -1).length;
  const bad = shape.some((d) => !Number.isInteger(d) || d < -1);
  const known = prod(shape.filter((d) => d !== -1));
  const inferred = wild === 1 && known > 0 ? x.size / known : NaN;
  const resolved = shape.map((d) => (d === -1 ? inferred : d));
  if (bad || wild > 1 || (wild === 1 && !Number.isInteger(inferred)) || prod(resolved) !== x.size) {
    throw new Error(`peco: reshape: cannot reshape ${x.describe()} to ${fmt(shape)}`);
  }
  return record("reshape", x.view(resolved), [x], (g) => [g.view(x.shape)]);
}

/** Reorders the dims: output dim k is input dim `dims[k]`. */
export function permute(x: Tensor, dims: readonly number[]): Tensor {
  const axes = dims.map((d) => axisOf("permute", x, d));
  if (axes.length !== x.rank || new Set(axes).size !== axes.length) {
    throw new Error(
      `peco: permute: ${fmt(dims)} is not a permutation of the dims of ${x.describe()}`,
    );
  }
  const shape = axes.map((a) => x.shape[a]);
  const inverse = axes.map((_, k) => axes.indexOf(k));
  // Moving only size-1 dims leaves the memory order unchanged: a view.
  const moved = axes.filter((a) => x.shape[a] !== 1);
  if (moved.every((a, k) => k === 0 || moved[k - 1] < a)) {
    return record("permute", x.view(shape), [x], (g) => [g.view(x.shape)]);
  }
  const strides = stridesOf(x.shape);
  const box = foldBox("permute", shape, axes.map((a) => strides[a]), stridesOf(shape));
  const out = new Tensor(shape, x.dtype);
  copyBox(box, x.binding, 0, out.binding, 0);
  return record("permute", out, [x], (g) => [permute(g, inverse)]);
}

/** Swaps two dims. */
export function transpose(x: Tensor, d0: number, d1: number): Tensor {
  const a = axisOf("transpose", x, d0);
  const b = axisOf("transpose", x, d1);
  const dims = x.shape.map((_, k) => (k === a ? b : k === b ? a : k));
  return permute(x, dims);
}

/** Elements [start, end) along `axis` (negative start/end count from the end, as in Python). */
export function slice(x: Tensor, axis: number, start: number, end: number): Tensor {
  const a = axisOf("slice", x, axis);
  const len = x.shape[a];
  const s = start < 0 ? start + len : start;
  const e = end < 0 ? end + len : end;
  if (!Number.isInteger(s) || !Number.isInteger(e) || s < 0 || e < s || e > len) {
    throw new Error(
      `peco: slice: [${start}, ${end}) is out of range for axis ${axis} of ${x.describe()}`,
    );
  }
  const starts = x.shape.map((_, k) => (k === a ? s : 0));
  const shape = x.shape.map((d, k) => (k === a ? e - s : d));
  const out = sliceView(x, a, s, shape) ?? crop("slice", x, starts, shape);
  return record("slice", out, [x], (g) => [embed("slice", g, starts, x.shape, 0)]);
}

/**
 * A slice that is one contiguous run of x (every dim before the axis is 1) starting on a 256-byte
 * boundary of its buffer (the storage-binding offset alignment) needs no copy: a view of that
 * range. Otherwise null.
 */
function sliceView(x: Tensor, axis: number, start: number, shape: Shape): Tensor | null {
  if (prod(shape) === 0 || !x.shape.slice(0, axis).every((d) => d === 1)) return null;
  const first = start * prod(x.shape.slice(axis + 1));
  return (x.byteOffset + 4 * first) % 256 === 0 ? x.range(first, shape) : null;
}

/** Joins tensors along `axis`; all other dims (and the dtype) must match. */
export function concat(xs: readonly Tensor[], axis: number): Tensor {
  if (xs.length === 0) throw new Error("peco: concat: no tensors to join");
  const first = xs[0];
  const a = axisOf("concat", first, axis);
  for (const t of xs) {
    const same = t.rank === first.rank && t.dtype === first.dtype &&
      t.shape.every((d, k) => k === a || d === first.shape[k]);
    if (!same) {
      throw new Error(
        `peco: concat: ${t.describe()} does not match ${first.describe()} outside axis ${axis}`,
      );
    }
  }
  const starts = xs.map((_, i) => xs.slice(0, i).reduce((acc, t) => acc + t.shape[a], 0));
  const total = starts[xs.length - 1] + xs[xs.length - 1].shape[a];
  const shape = first.shape.map((d, k) => (k === a ? total : d));
  const strides = stridesOf(shape);
  let out: Tensor;
  if (xs.length <= CONCAT_INPUTS) {
    out = concatInOnePass(xs, a, starts, shape);
  } else {
    const boxes = xs.map((t) => foldBox("concat", t.shape, stridesOf(t.shape), strides));
    out = new Tensor(shape, first.dtype);
    xs.forEach((t, i) => copyBox(boxes[i], t.binding, 0, out.binding, starts[i] * strides[a]));
  }
  return record("concat", out, xs, (g) =>
    xs.map((t, i) => {
      if (!t.requiresGrad) return null;
      // A part that is a contiguous, aligned run of g (e.g. the q and v biases joined along their
      // only axis) is a view of it, no copy.
      return sliceView(g, a, starts[i], t.shape) ??
        crop("concat", g, shape.map((_, k) => (k === a ? starts[i] : 0)), t.shape);
    }));
}

/** Inputs that concat joins in one dispatch (the kernel's bindings); more take a copy each. */
const CONCAT_INPUTS = 4;

/** xs (at most CONCAT_INPUTS, checked alike) joined along axis `a` by one kernel pass. */
function concatInOnePass(
  xs: readonly Tensor[],
  a: number,
  starts: readonly number[],
  shape: Shape,
): Tensor {
  const out = new Tensor(shape, xs[0].dtype);
  const total = shape[a];
  const inner = prod(shape.slice(a + 1));
  const pick = (k: number) => xs[k] ?? xs[0];
  const startOf = (k: number) => (k < xs.length ? starts[k] : total);
  gpu().recorder.dispatch(kernels.concat4, {
    buffers: [0, 1, 2, 3].map((k) => pick(k).binding).concat(out.binding),
    params: [
      out.size,
      total,
      inner,
      startOf(1),
      startOf(2),
      startOf(3),
      ...[0, 1, 2, 3].map((k) => (k < xs.length ? xs[k].shape[a] : 0)),
    ],
    workgroups: grid1d(out.size, WG),
  });
  return out;
}

/**
 * Pads with `value`: `pads[k] = [before, after]` (non-negative) in dim order. With fewer entries
 * than the rank they apply to the LAST dims, e.g. `pad(x [N,C,H,W], [[1, 2], [0, 3]])` pads H by
 * 1 above and 2 below and W by 3 on the right.
 */
export function pad(x: Tensor, pads: readonly (readonly [number, number])[], value = 0): Tensor {
  const lead = x.rank - pads.length;
  const bad = pads.some((p) => p.length !== 2 || p.some((v) => !Number.isInteger(v) || v < 0));
  if (lead < 0 || bad) {
    throw new Error(
      `peco: pad: pads ${JSON.stringify(pads)} do not fit ${x.describe()} ` +
        `(at most one non-negative [before, after] pair per dim)`,
    );
  }
  const before = x.shape.map((_, k) => (k < lead ? 0 : pads[k - lead][0]));
  const shape = x.shape.map((d, k) => (k < lead ? d : d + pads[k - lead][0] + pads[k - lead][1]));
  const out = embed("pad", x, before, shape, value);
  return record("pad", out, [x], (g) => [crop("pad", g, before, x.shape)]);
}

// ---- index ops ----------------------------------------------------------------------------------

/** out [outer, m, inner] = x [outer, len, inner] at rows `indices` of the middle dim. */
function gatherRaw(x: Tensor, indices: Tensor, len: number, inner: number, out: Tensor): Tensor {
  const run = runOf(inner);
  gpu().recorder.dispatch(kernels.gather, {
    buffers: [x.binding, indices.binding, out.binding],
    params: [out.size, indices.size, len, inner],
    constants: { RUN: run },
    workgroups: grid1d(out.size / run, WG),
  });
  return out;
}

/**
 * Blocks of the index plan (kernels/shape.wgsl): enough for some parallelism, each short enough
 * for the loop limit, and few enough that the scan of hist [rows, blocks] fits it too.
 */
function planBlocks(op: string, m: number, rows: number): number {
  const fewest = Math.ceil(m / MAX_LOOP_ITERATIONS);
  const most = Math.floor((SCAN_WG * MAX_LOOP_ITERATIONS) / Math.max(rows, 1));
  const blocks = Math.max(fewest, Math.min(64, Math.ceil(m / 256), most), 1);
  if (blocks > most) {
    throw new Error(
      `peco: ${op}: ${m} indices into ${rows} rows is beyond one scatter plan ` +
        `(rows · ⌈indices / ${MAX_LOOP_ITERATIONS}⌉ must stay ≤ ${SCAN_WG * MAX_LOOP_ITERATIONS})`,
    );
  }
  return blocks;
}

/**
 * out [outer, rows, inner] = Σ over m with indices[m] = row of src [outer, m, inner], summed in
 * ascending m (deterministic). Builds the CSR plan of kernels/shape.wgsl (a stable counting sort
 * by row: fill, hist, scan, place), then sums each row's list, in passes for very long lists.
 */
function scatterRaw(
  op: string,
  src: Tensor,
  indices: Tensor,
  rows: number,
  inner: number,
  shape: Shape,
): Tensor {
  const recorder = gpu().recorder;
  const m = indices.size;
  const blocks = planBlocks(op, m, rows);
  const plan = [m, rows, blocks, Math.ceil(m / blocks)];
  const hist = zeros([rows * blocks], "u32");
  const offsets = new Tensor([rows + 1], "u32");
  const order = new Tensor([m], "u32");
  recorder.dispatch(kernels.indexHist, {
    buffers: [indices.binding, hist.binding],
    params: plan,
    workgroups: grid1d(blocks, WG),
  });
  recorder.dispatch(kernels.indexScan, {
    buffers: [hist.binding, offsets.binding],
    params: plan,
    workgroups: [1],
  });
  recorder.dispatch(kernels.indexPlace, {
    buffers: [indices.binding, hist.binding, order.binding],
    params: plan,
    workgroups: grid1d(blocks, WG),
  });
  const out = new Tensor(shape, "f32");
  const run = runOf(inner);
  // Each pass sums at most MAX_LOOP_ITERATIONS entries of every row's list.
  for (let skip = 0; skip === 0 || skip < m; skip += MAX_LOOP_ITERATIONS) {
    recorder.dispatch(kernels.scatterRows, {
      buffers: [src.binding, offsets.binding, order.binding, out.binding],
      params: [out.size, rows, m, inner, skip, MAX_LOOP_ITERATIONS],
      constants: { RUN: run },
      workgroups: grid1d(out.size / run, WG),
    });
  }
  // Work runs in recording order, so the plan's buffers may go back to the pool now.
  for (const t of [hist, offsets, order]) t.dispose();
  return out;
}

/**
 * Index select along `axis`: out has x's shape with dim `axis` replaced by indices.size, and
 * out[..., m, ...] = x[..., indices[m], ...]. An out-of-range index reads zeros. Backward
 * scatter-adds the gradient (repeated indices accumulate, deterministically).
 */
export function gather(x: Tensor, indices: Tensor, axis = 0): Tensor {
  requireIndices("gather", indices, true);
  const a = axisOf("gather", x, axis);
  const len = x.shape[a];
  const inner = prod(x.shape.slice(a + 1));
  const shape = x.shape.map((d, k) => (k === a ? indices.size : d));
  const out = gatherRaw(x, indices, len, inner, new Tensor(shape, x.dtype));
  return record("gather", out, [x], (g) => [scatterRaw("gather", g, indices, len, inner, x.shape)]);
}

/**
 * out[row] = Σ src[m] over the m with indices[m] = row (rows with no index are 0; out-of-range
 * indices are dropped). Deterministic; backward is a gather.
 */
export function scatterAddRows(src: Tensor, indices: Tensor, rows: number): Tensor {
  requireF32("scatterAddRows", src);
  requireIndices("scatterAddRows", indices, true);
  if (src.rank < 1 || indices.size !== src.shape[0] || !Number.isInteger(rows) || rows < 0) {
    throw new Error(
      `peco: scatterAddRows: src ${src.describe()} and indices ${indices.describe()} ` +
        `into ${rows} rows: need src [M, ...] with M = indices.size and an integer rows ≥ 0`,
    );
  }
  const rest = src.shape.slice(1);
  const out = scatterRaw("scatterAddRows", src, indices, rows, prod(rest), [rows, ...rest]);
  return record("scatterAddRows", out, [src], (g) => [gather(g, indices, 0)]);
}

/** Rows of `weight` [V, D] for each id: [...ids.shape, D]; an out-of-range id gives a zero row. */
export function embedding(weight: Tensor, ids: Tensor): Tensor {
  requireIndices("embedding", ids, false);
  if (weight.rank !== 2) {
    throw new Error(`peco: embedding: weight must be [V, D], got ${weight.describe()}`);
  }
  const [vocab, dim] = weight.shape;
  const out = gatherRaw(weight, ids, vocab, dim, new Tensor([...ids.shape, dim], weight.dtype));
  return record("embedding", out, [weight], (g) => [
    scatterRaw("embedding", g, ids, vocab, dim, weight.shape),
  ]);
}

/**
 * Converts values between f32, i32 and u32 (no gradient): f32 → int truncates toward zero (values
 * must fit the target type); i32 ↔ u32 keeps the bits. Casting to the same dtype returns x.
 */
export function cast(x: Tensor, dtype: DType): Tensor {
  if (!(dtype in DTYPE_CODE)) throw new Error(`peco: cast: unknown dtype "${dtype}"`);
  if (dtype === x.dtype) return x;
  const out = new Tensor(x.shape, dtype);
  if (x.size > 0) {
    gpu().recorder.dispatch(kernels.cast, {
      buffers: [x.binding, out.binding],
      params: [x.size],
      constants: { FROM: DTYPE_CODE[x.dtype], TO: DTYPE_CODE[dtype] },
      workgroups: grid1d(x.size, WG),
    });
  }
  return out;
}
