import { assertClose, assertThrows, checkGrad, prod, randArray, runOp } from "./util.ts";
import * as T from "../lib/tensor/mod.ts";
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";
import { gpu } from "../lib/gpu/device.ts";

/** Asserts that fn throws an Error whose message contains `text`. */

// ---- float64 references -------------------------------------------------------------------------

function strides(shape: readonly number[]): number[] {
  const s = new Array(shape.length).fill(1);
  for (let k = shape.length - 2; k >= 0; k--) s[k] = s[k + 1] * shape[k + 1];
  return s;
}

function coords(i: number, shape: readonly number[]): number[] {
  const c = new Array(shape.length);
  for (let k = shape.length - 1; k >= 0; k--) {
    c[k] = i % shape[k];
    i = Math.floor(i / shape[k]);
  }
  return c;
}

/** Builds an output of `shape` element by element from a function of its coordinates. */
function build(shape: readonly number[], f: (c: number[]) => number): number[] {
  return Array.from({ length: prod([...shape]) }, (_, i) => f(coords(i, shape)));
}

const at = (data: number[], shape: readonly number[], c: number[]) =>
  data[c.reduce((acc, v, k) => acc + v * strides(shape)[k], 0)];

function permuteRef(x: number[], shape: number[], dims: number[]): number[] {
  return build(dims.map((d) => shape[d]), (c) => {
    const src = new Array(shape.length);
    dims.forEach((d, k) => (src[d] = c[k]));
    return at(x, shape, src);
  });
}

function sliceRef(x: number[], shape: number[], axis: number, s: number, e: number): number[] {
  const out = shape.map((d, k) => (k === axis ? e - s : d));
  return build(out, (c) => at(x, shape, c.map((v, k) => (k === axis ? v + s : v))));
}

function concatRef(xs: number[][], shapes: number[][], axis: number): number[] {
  const out = shapes[0].map((d, k) => (k === axis ? shapes.reduce((a, s) => a + s[axis], 0) : d));
  return build(out, (c) => {
    let pos = c[axis];
    for (let i = 0; i < xs.length; i++) {
      if (pos < shapes[i][axis]) {
        return at(xs[i], shapes[i], c.map((v, k) => (k === axis ? pos : v)));
      }
      pos -= shapes[i][axis];
    }
    throw new Error("unreachable");
  });
}

/** pads aligned to the last dims, as the op documents. */
function padRef(x: number[], shape: number[], pads: [number, number][], value: number): number[] {
  const lead = shape.length - pads.length;
  const before = shape.map((_, k) => (k < lead ? 0 : pads[k - lead][0]));
  const out = shape.map((d, k) => (k < lead ? d : d + pads[k - lead][0] + pads[k - lead][1]));
  return build(out, (c) => {
    const src = c.map((v, k) => v - before[k]);
    return src.every((v, k) => v >= 0 && v < shape[k]) ? at(x, shape, src) : value;
  });
}

/** Index select with zeros for out-of-range indices. */
function gatherRef(x: number[], shape: number[], idx: number[], axis: number): number[] {
  const out = shape.map((d, k) => (k === axis ? idx.length : d));
  return build(out, (c) => {
    const row = idx[c[axis]];
    if (row < 0 || row >= shape[axis]) return 0;
    return at(x, shape, c.map((v, k) => (k === axis ? row : v)));
  });
}

/** Rows of src [M, ...rest] summed into [rows, ...rest]; out-of-range indices dropped. */
function scatterRef(src: number[], shape: number[], idx: number[], rows: number): number[] {
  const inner = prod(shape.slice(1));
  const out = new Array(rows * inner).fill(0);
  idx.forEach((row, m) => {
    if (row < 0 || row >= rows) return;
    for (let c = 0; c < inner; c++) out[row * inner + c] += src[m * inner + c];
  });
  return out;
}

/** Test data rounded to f32, so data movement must reproduce it exactly. */
const input = (shape: number[], seed: number) => ({
  data: randArray(prod(shape), seed).map(Math.fround),
  shape,
});

// ---- views and copies ---------------------------------------------------------------------------

Deno.test("reshape: infers -1, is a view, passes the gradient back", async () => {
  const x = input([3, 5, 7], 1);
  const out = await runOp((t) => T.reshape(t, [5, -1]), [x]);
  assertEquals(out.shape, [5, 21]);
  assertClose(out.data, x.data);
  await checkGrad((t) => T.reshape(t, [7, 1, -1]), (d) => d, [x]);
  const t = T.tensor(x.data, x.shape);
  assertThrows(() => T.reshape(t, [-1, -1]), "peco: reshape: cannot reshape");
  assertThrows(() => T.reshape(t, [4, -1]), "[3,5,7] to [4,-1]");
  assertThrows(() => T.reshape(t, [3, 5, 8]), "reshape");
  t.dispose();
});

Deno.test("permute [2,3,5,7] by [3,1,0,2]: forward and backward", async () => {
  const x = input([2, 3, 5, 7], 2);
  const dims = [3, 1, 0, 2];
  const out = await runOp((t) => T.permute(t, dims), [x]);
  assertEquals(out.shape, [7, 3, 2, 5]);
  assertClose(out.data, permuteRef(x.data, x.shape, dims), { atol: 0, rtol: 0 });
  await checkGrad((t) => T.permute(t, dims), (d) => permuteRef(d, x.shape, dims), [x]);
});

Deno.test("permute: negative dims, size-1 moves (a view) and integer tensors", async () => {
  const x = input([3, 1, 5], 3);
  const moved = await runOp((t) => T.permute(t, [1, 0, -1]), [x]);
  assertEquals(moved.shape, [1, 3, 5]);
  assertClose(moved.data, x.data, { atol: 0, rtol: 0 });
  await checkGrad((t) => T.permute(t, [1, 0, 2]), (d) => d, [x]);
  const values = [-5, 7, 2147483647, -2147483648, 0, 9];
  const ints = T.tensor(values, [2, 3], "i32");
  const swapped = T.transpose(ints, 0, 1);
  assertEquals(swapped.dtype, "i32");
  assertEquals(await swapped.toArray(), permuteRef(values, [2, 3], [1, 0]));
  ints.dispose();
  swapped.dispose();
});

Deno.test("permute [3,8,5] by [2,0,1]: a strided innermost dim of 8", async () => {
  // On lavapipe each invocation copies a run of 8 here, reading with stride 5.
  const x = input([3, 8, 5], 7);
  const dims = [2, 0, 1];
  const out = await runOp((t) => T.permute(t, dims), [x]);
  assertEquals(out.shape, [5, 3, 8]);
  assertEquals(out.data, permuteRef(x.data, x.shape, dims));
  await checkGrad((t) => T.permute(t, dims), (d) => permuteRef(d, x.shape, dims), [x]);
});

Deno.test("transpose of the outer and inner dims of [3,1,5,2]: forward and backward", async () => {
  const x = input([3, 1, 5, 2], 4);
  const ref = (d: number[]) => permuteRef(d, x.shape, [3, 1, 2, 0]);
  const out = await runOp((t) => T.transpose(t, 0, -1), [x]);
  assertEquals(out.shape, [2, 1, 5, 3]);
  assertClose(out.data, ref(x.data), { atol: 0, rtol: 0 });
  await checkGrad((t) => T.transpose(t, -1, 0), ref, [x]);
});

Deno.test("permute of rank 7: merges contiguous dims, rejects a box that needs 7", async () => {
  const shape = [2, 3, 2, 3, 2, 3, 2];
  const x = input(shape, 5);
  const dims = [0, 1, 2, 3, 4, 6, 5];
  const out = await runOp((t) => T.permute(t, dims), [x]);
  assertClose(out.data, permuteRef(x.data, shape, dims), { atol: 0, rtol: 0 });
  const t = T.tensor(x.data, shape);
  assertThrows(() => T.permute(t, [6, 5, 4, 3, 2, 1, 0]), "peco: permute: a copy of box");
  assertThrows(() => T.permute(t, [0, 1, 2]), "peco: permute: [0,1,2] is not a permutation");
  assertThrows(() => T.permute(t, [0, 0, 1, 2, 3, 4, 5]), "not a permutation");
  assertThrows(() => T.transpose(t, 0, 7), "peco: transpose: axis 7 out of range for tensor<f32>");
  t.dispose();
});

Deno.test("slice with start > 0 along each axis of [3,7,5]: forward and backward", async () => {
  const x = input([3, 7, 5], 6);
  const cases: [number, number, number, number, number][] = [
    // axis, start, end, resolved start, resolved end
    [1, 2, 6, 2, 6],
    [0, 1, 3, 1, 3],
    [-1, -4, -1, 1, 4],
    [2, 4, 5, 4, 5],
  ];
  for (const [axis, start, end, s, e] of cases) {
    const a = axis < 0 ? axis + 3 : axis;
    const ref = (d: number[]) => sliceRef(d, x.shape, a, s, e);
    const out = await runOp((t) => T.slice(t, axis, start, end), [x]);
    assertEquals(out.shape, x.shape.map((d, k) => (k === a ? e - s : d)));
    assertClose(out.data, ref(x.data), { atol: 0, rtol: 0, what: `slice ${axis} ${start}:${end}` });
    await checkGrad((t) => T.slice(t, axis, start, end), ref, [x]);
  }
  const t = T.tensor(x.data, x.shape);
  const empty = T.slice(t, 1, 3, 3);
  assertEquals(empty.shape, [3, 0, 5]);
  assertThrows(() => T.slice(t, 1, 2, 8), "peco: slice: [2, 8) is out of range for axis 1 of");
  assertThrows(() => T.slice(t, 1, 5, 2), "[3,7,5]");
  assertThrows(() => T.slice(t, 3, 0, 1), "peco: slice: axis 3 out of range");
  t.dispose();
  empty.dispose();
});

Deno.test("slice of a contiguous run at a 256-byte boundary is a view: no dispatch", async () => {
  // [3, 1, 64, 3]: each slice along axis 0 is 192 floats (768 bytes) into the buffer.
  const x = input([3, 1, 64, 3], 7);
  const ref = (d: number[]) => sliceRef(d, x.shape, 0, 1, 3);
  const t = T.tensor(x.data, x.shape);
  const before = gpu().recorder.dispatches;
  const view = T.slice(t, 0, 1, 3);
  // And a slice of the view, along its (size-1) axis 1 then axis 2 at 32 floats: not aligned.
  const inner = T.slice(T.slice(view, 0, 1, 2), 2, 32, 64);
  assertEquals(gpu().recorder.dispatches - before, 1);
  assertClose(await view.toArray(), ref(x.data), { atol: 0, rtol: 0 });
  const innerRef = sliceRef(
    sliceRef(ref(x.data), [2, 1, 64, 3], 0, 1, 2),
    [1, 1, 64, 3],
    2,
    32,
    64,
  );
  assertClose(await inner.toArray(), innerRef, { atol: 0, rtol: 0 });
  // Bound by kernels at its offset; the source outlives its views' disposal order.
  const doubled = T.mulScalar(view, 2);
  t.dispose();
  assertClose(await doubled.toArray(), ref(x.data).map((v) => 2 * v), { atol: 0, rtol: 0 });
  [view, inner, doubled].forEach((v) => v.dispose());
  await checkGrad((v) => T.slice(v, 0, 1, 3), ref, [x]);
});

Deno.test("concat of 3 tensors of different sizes along axis 1: forward and backward", async () => {
  const shapes = [[2, 1, 3, 5], [2, 4, 3, 5], [2, 2, 3, 5]];
  const xs = shapes.map((s, i) => input(s, 10 + i));
  const ref = (...ds: number[][]) => concatRef(ds, shapes, 1);
  const out = await runOp((...ts) => T.concat(ts, 1), xs);
  assertEquals(out.shape, [2, 7, 3, 5]);
  assertClose(out.data, ref(...xs.map((x) => x.data)), { atol: 0, rtol: 0 });
  await checkGrad((...ts) => T.concat(ts, 1), ref, xs);
  // The last axis (each piece is strided in the output) and only one input needing a gradient.
  const last = [[3, 2], [3, 1], [3, 4]].map((s, i) => input(s, 20 + i));
  const lastRef = (...ds: number[][]) => concatRef(ds, last.map((x) => x.shape), 1);
  const joined = await runOp((...ts) => T.concat(ts, -1), last);
  assertClose(joined.data, lastRef(...last.map((x) => x.data)), { atol: 0, rtol: 0 });
  await checkGrad((...ts) => T.concat(ts, 1), lastRef, last, { which: [1] });
});

Deno.test("concat backward: parts on 256-byte boundaries of the gradient are views of it", async () => {
  // Parts start at floats 0, 64 and 128 (256-byte multiples: views) and 71 (a copy).
  const shapes = [[64], [7], [57], [64]];
  const xs = shapes.map((s, i) => input(s, 30 + i));
  const ref = (...ds: number[][]) => concatRef(ds, shapes, 0);
  await checkGrad((...ts) => T.concat(ts, 0), ref, xs);
});

Deno.test("concat: up to 4 tensors in one dispatch, 5 by copies; integers keep their bits", async () => {
  const shapes = [[2, 3], [2, 1], [2, 4], [2, 2], [2, 5]];
  const xs = shapes.map((s, i) => input(s, 50 + i));
  for (const count of [4, 5]) {
    const part = xs.slice(0, count);
    const ref = (...ds: number[][]) => concatRef(ds, part.map((x) => x.shape), 1);
    const ts = part.map((x) => T.tensor(x.data, x.shape));
    const before = gpu().recorder.dispatches;
    const out = T.concat(ts, 1);
    assertEquals(gpu().recorder.dispatches - before, count <= 4 ? 1 : count);
    assertClose(await out.toArray(), ref(...part.map((x) => x.data)), { atol: 0, rtol: 0 });
    await checkGrad((...vs) => T.concat(vs, 1), ref, part);
    [...ts, out].forEach((t) => t.dispose());
  }
  const ints = [T.tensor([1, -2], [2], "i32"), T.tensor([2147483647, -2147483648], [2], "i32")];
  const joined = T.concat(ints, 0);
  assertEquals(await joined.toArray(), [1, -2, 2147483647, -2147483648]);
  [...ints, joined].forEach((t) => t.dispose());
});

Deno.test("concat rejects mismatched shapes, dtypes and axes", () => {
  const a = T.zeros([2, 3, 5]);
  const b = T.zeros([2, 4, 4]);
  const c = T.zeros([2, 3, 5], "i32");
  assertThrows(() => T.concat([a, b], 1), "peco: concat: tensor<f32>[2,4,4] does not match");
  assertThrows(() => T.concat([a, c], 0), "tensor<i32>[2,3,5] does not match tensor<f32>[2,3,5]");
  assertThrows(
    () => T.concat([a, a], 3),
    "peco: concat: axis 3 out of range for tensor<f32>[2,3,5]",
  );
  assertThrows(() => T.concat([a, T.zeros([2, 3])], 1), "does not match");
  assertThrows(() => T.concat([], 0), "peco: concat: no tensors");
  for (const t of [a, b, c]) t.dispose();
});

Deno.test("pad asymmetric on the last dims and on all dims: forward and backward", async () => {
  const x = input([2, 3, 5], 30);
  const lastTwo: [number, number][] = [[1, 2], [0, 3]];
  const ref = (d: number[]) => padRef(d, x.shape, lastTwo, 0.5);
  const out = await runOp((t) => T.pad(t, lastTwo, 0.5), [x]);
  assertEquals(out.shape, [2, 6, 8]);
  assertClose(out.data, ref(x.data), { atol: 0, rtol: 0 });
  await checkGrad((t) => T.pad(t, lastTwo, 0.5), ref, [x]);
  const all: [number, number][] = [[2, 0], [0, 0], [1, 1]];
  const allRef = (d: number[]) => padRef(d, x.shape, all, 0);
  const padded = await runOp((t) => T.pad(t, all), [x]);
  assertEquals(padded.shape, [4, 3, 7]);
  assertClose(padded.data, allRef(x.data), { atol: 0, rtol: 0 });
  await checkGrad((t) => T.pad(t, all), allRef, [x]);
});

Deno.test("pad along one inner axis: one dispatch, forward and backward", async () => {
  const x = input([2, 3, 5], 31);
  const middle: [number, number][] = [[2, 1], [0, 0]];
  const ref = (d: number[]) => padRef(d, x.shape, middle, -1.5);
  const t = T.tensor(x.data, x.shape);
  const before = gpu().recorder.dispatches;
  const padded = T.pad(t, middle, -1.5);
  assertEquals(gpu().recorder.dispatches - before, 1);
  assertEquals(padded.shape, [2, 6, 5]);
  assertClose(await padded.toArray(), ref(x.data), { atol: 0, rtol: 0 });
  await checkGrad((v) => T.pad(v, middle, -1.5), ref, [x]);
  [t, padded].forEach((v) => v.dispose());
});

Deno.test("pad keeps integer values and rejects bad pads", async () => {
  const ints = T.tensor([1, -2, 3], [3], "i32");
  const padded = T.pad(ints, [[1, 2]], -7);
  assertEquals(await padded.toArray(), [-7, 1, -2, 3, -7, -7]);
  assertThrows(() => T.pad(ints, [[1, -1]]), "peco: pad: pads [[1,-1]] do not fit tensor<i32>[3]");
  assertThrows(() => T.pad(ints, [[0, 0], [1, 1]]), "do not fit");
  assertThrows(() => T.pad(ints, [[0.5, 1]]), "do not fit");
  ints.dispose();
  padded.dispose();
});

// ---- index ops ----------------------------------------------------------------------------------

Deno.test("gather with repeated indices along axes 0, 1 and 2: forward and backward", async () => {
  const x = input([5, 7, 3], 40);
  const cases: [number, number[]][] = [
    [1, [4, 0, 4, 6, 4]],
    [0, [2, 2, 0, 4, 1, 2, 3]],
    [2, [2, 2, 2]],
    [1, [5]],
  ];
  for (const [axis, idx] of cases) {
    const indices = T.tensor(idx, [idx.length], "i32");
    const ref = (d: number[]) => gatherRef(d, x.shape, idx, axis);
    const out = await runOp((t) => T.gather(t, indices, axis), [x]);
    assertEquals(out.shape, x.shape.map((d, k) => (k === axis ? idx.length : d)));
    assertClose(out.data, ref(x.data), { atol: 0, rtol: 0, what: `gather axis ${axis}` });
    await checkGrad((t) => T.gather(t, indices, axis), ref, [x]);
    indices.dispose();
  }
});

Deno.test("gather: out-of-range indices read zeros, get no gradient, no GPU fault", async () => {
  // Rows of 8: on lavapipe one invocation handles a whole row (a run of 8).
  const x = input([4, 8], 41);
  const idx = [-1, 3, 4, 1000000, -2147483648, 0];
  const indices = T.tensor(idx, [idx.length], "i32");
  const ref = (d: number[]) => gatherRef(d, x.shape, idx, 0);
  const out = await runOp((t) => T.gather(t, indices, 0), [x]);
  assertEquals(out.data, ref(x.data));
  assertEquals(out.data.slice(0, 8), new Array(8).fill(0));
  assertEquals(out.data.slice(16, 40), new Array(24).fill(0));
  await checkGrad((t) => T.gather(t, indices, 0), ref, [x]);
  indices.dispose();
});

Deno.test("gather selects integer rows bit-exactly", async () => {
  const x = T.tensor([10, -11, 12, 2147483647, -2147483648, 15], [3, 2], "i32");
  const indices = T.tensor([2, 0, 2], [3], "i32");
  const out = T.gather(x, indices, 0);
  assertEquals(out.dtype, "i32");
  assertEquals(await out.toArray(), [-2147483648, 15, 10, -11, -2147483648, 15]);
  for (const t of [x, indices, out]) t.dispose();
});

Deno.test("index ops reject wrong index dtypes and ranks with the op and shapes", () => {
  const x = T.zeros([4, 3]);
  const f = T.zeros([2]);
  const u = T.zeros([2], "u32");
  const i2 = T.zeros([2, 1], "i32");
  const i = T.zeros([2], "i32");
  assertThrows(() => T.gather(x, f, 0), "peco: gather: indices must be i32, got tensor<f32>[2]");
  assertThrows(() => T.gather(x, u, 0), "indices must be i32, got tensor<u32>[2]");
  assertThrows(
    () => T.gather(x, i2, 0),
    "peco: gather: indices must have rank 1, got tensor<i32>[2,1]",
  );
  assertThrows(() => T.gather(x, i, 2), "peco: gather: axis 2 out of range for tensor<f32>[4,3]");
  assertThrows(() => T.scatterAddRows(x, f, 3), "peco: scatterAddRows: indices must be i32");
  assertThrows(() => T.scatterAddRows(x, i, 3), "src tensor<f32>[4,3] and indices tensor<i32>[2]");
  assertThrows(() => T.scatterAddRows(T.zeros([2], "i32"), i, 3), "scatterAddRows: needs f32");
  assertThrows(() => T.embedding(x, f), "peco: embedding: indices must be i32, got tensor<f32>[2]");
  assertThrows(() => T.embedding(T.zeros([12]), i), "peco: embedding: weight must be [V, D]");
  for (const t of [x, f, u, i2, i]) t.dispose();
});

Deno.test("scatterAddRows, repeated and out-of-range indices: forward and backward", async () => {
  const src = input([9, 2, 3], 50);
  const idx = [3, 0, 3, -1, 4, 3, 9, 0, 1];
  const rows = 6; // rows 2 and 5 receive nothing; -1 and 9 are out of range (6 rows: 9 is)
  const indices = T.tensor(idx, [idx.length], "i32");
  const ref = (d: number[]) => scatterRef(d, src.shape, idx, rows);
  const out = await runOp((t) => T.scatterAddRows(t, indices, rows), [src]);
  assertEquals(out.shape, [rows, 2, 3]);
  assertClose(out.data, ref(src.data), { atol: 1e-6, rtol: 1e-6 });
  await checkGrad((t) => T.scatterAddRows(t, indices, rows), ref, [src]);
  indices.dispose();
});

/** float32 sums of src [M, inner] rows into [rows, inner] in ascending source order. */
function scatterF32(src: number[], inner: number, idx: number[], rows: number): number[] {
  const out = new Float32Array(rows * inner);
  idx.forEach((row, m) => {
    if (row < 0 || row >= rows) return;
    for (let c = 0; c < inner; c++) {
      out[row * inner + c] = Math.fround(out[row * inner + c] + src[m * inner + c]);
    }
  });
  return Array.from(out);
}

Deno.test("scatterAddRows sums a heavy row in index order, bit-identically per run", async () => {
  // 301 sources (2 plan blocks), 250 of them into row 1.
  const m = 301;
  const idx = Array.from({ length: m }, (_, i) => (i % 6 === 5 ? (i * 7) % 5 : 1));
  const src = { data: randArray(m * 3, 51, -100, 100).map(Math.fround), shape: [m, 3] };
  const indices = T.tensor(idx, [m], "i32");
  const runs: number[][] = [];
  for (let r = 0; r < 3; r++) {
    runs.push((await runOp((t) => T.scatterAddRows(t, indices, 5), [src])).data);
  }
  assertClose(runs[0], scatterRef(src.data, src.shape, idx, 5), { atol: 1e-3, rtol: 1e-5 });
  // Summing in ascending source order in float32 reproduces the kernel exactly.
  assertEquals(runs[0], scatterF32(src.data, 3, idx, 5));
  assertEquals(runs[1], runs[0]);
  assertEquals(runs[2], runs[0]);
  indices.dispose();
});

Deno.test("scatterAddRows: a 70001-long list (past lavapipe's loop limit) is exact", async () => {
  // lavapipe ends an invocation's loops after 65535 iterations: the plan uses 64 blocks and the
  // sum 3 passes. Row 1 gets 67130 sources, rows 0 and 2 the rest; -1 every 1000th is dropped.
  // Rows of 8 also check that the run loop (8 per invocation on lavapipe) is not counted.
  const m = 70001;
  const idx = Array.from(
    { length: m },
    (_, i) => (i % 1000 === 7 ? -1 : i % 50 === 0 ? 0 : i % 50 === 1 ? 2 : 1),
  );
  const src = { data: randArray(m * 8, 52, -10, 10).map(Math.fround), shape: [m, 8] };
  const indices = T.tensor(idx, [m], "i32");
  const out = await runOp((t) => T.scatterAddRows(t, indices, 3), [src]);
  assertEquals(idx.filter((i) => i === 1).length, 67130);
  assertEquals(out.data, scatterF32(src.data, 8, idx, 3));
  assertClose(out.data, scatterRef(src.data, src.shape, idx, 3), { atol: 1e-2, rtol: 1e-5 });
  indices.dispose();
});

Deno.test("embedding: ids of any shape, zero rows out of range, gradient into weight", async () => {
  const weight = input([7, 3], 60);
  const ids = [[4, 0, 4], [6, 7, -3]];
  const flat = ids.flat();
  const idsT = T.tensor(flat, [2, 3], "i32");
  const ref = (d: number[]) => gatherRef(d, weight.shape, flat, 0);
  const out = await runOp((w) => T.embedding(w, idsT), [weight]);
  assertEquals(out.shape, [2, 3, 3]);
  assertClose(out.data, ref(weight.data), { atol: 0, rtol: 0 });
  assertEquals(out.data.slice(12), [0, 0, 0, 0, 0, 0]);
  await checkGrad((w) => T.embedding(w, idsT), ref, [weight]);
  idsT.dispose();
});

Deno.test("cast converts values between f32, i32 and u32", async () => {
  const f = T.tensor([2.7, -2.7, 0, 1e6, -0.5], [5]);
  const toI = T.cast(f, "i32");
  assertEquals(toI.dtype, "i32");
  assertEquals(await toI.toArray(), [2, -2, 0, 1000000, 0]);
  const fPos = T.tensor([3.9, 4000000000, 0.2], [3]);
  assertEquals(await T.cast(fPos, "u32").toArray(), [3, 4000000000, 0]);
  const i = T.tensor([-3, 16777217, 5], [3], "i32");
  assertEquals(await T.cast(i, "f32").toArray(), [-3, 16777216, 5]);
  assertEquals(await T.cast(i, "u32").toArray(), [4294967293, 16777217, 5]);
  const u = T.tensor([4000000000, 7], [2], "u32");
  assertEquals(await T.cast(u, "f32").toArray(), [4000000000, 7]);
  assertEquals(await T.cast(u, "i32").toArray(), [4000000000 - 4294967296, 7]);
  assert(T.cast(f, "f32") === f, "a cast to the same dtype returns its input");
  assertThrows(() => T.cast(f, "f64" as T.DType), 'peco: cast: unknown dtype "f64"');
  for (const t of [f, toI, fPos, i, u]) t.dispose();
});
