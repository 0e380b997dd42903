import { assertClose, assertThrows, checkGrad, prod, randArray, runOp } from "./util.ts";
import * as T from "../lib/tensor/mod.ts";
import { deepStrictEqual as assertEquals } from "node:assert/strict";

/** Asserts that fn throws an Error whose message contains `text`. */

/** float64 reference: for x viewed as [outer, len, inner], the extreme value and first index. */
function argRef(x: number[], shape: number[], axis: number, mode: "max" | "min") {
  const outer = prod(shape.slice(0, axis));
  const len = shape[axis];
  const inner = prod(shape.slice(axis + 1));
  const values: number[] = [];
  const indices: number[] = [];
  for (let o = 0; o < outer; o++) {
    for (let i = 0; i < inner; i++) {
      let at = 0;
      for (let k = 1; k < len; k++) {
        const v = x[(o * len + k) * inner + i];
        const best = x[(o * len + at) * inner + i];
        if (mode === "max" ? v > best : v < best) at = k;
      }
      indices.push(at);
      values.push(x[(o * len + at) * inner + i]);
    }
  }
  return { values, indices };
}

const ops = { max: T.max, min: T.min };
const argOps = { max: T.argmax, min: T.argmin };

for (const mode of ["max", "min"] as const) {
  Deno.test(`${mode} and arg${mode} over each axis of [3,5,7]: values, indices, grad`, async () => {
    const shape = [3, 5, 7];
    const data = randArray(prod(shape), mode === "max" ? 1 : 2).map(Math.fround);
    for (const axis of [0, 1, 2, -1]) {
      const a = axis < 0 ? axis + 3 : axis;
      const ref = argRef(data, shape, a, mode);
      const out = await runOp((t) => ops[mode](t, axis), [{ data, shape }]);
      assertEquals(out.shape, shape.filter((_, k) => k !== a));
      assertEquals(out.data, ref.values);
      const kept = await runOp((t) => ops[mode](t, axis, true), [{ data, shape }]);
      assertEquals(kept.shape, shape.map((d, k) => (k === a ? 1 : d)));
      const x = T.tensor(data, shape);
      const arg = argOps[mode](x, axis);
      assertEquals(arg.dtype, "i32");
      assertEquals(await arg.toArray(), ref.indices);
      x.dispose();
      arg.dispose();
      await checkGrad((t) => ops[mode](t, axis), (d) => argRef(d, shape, a, mode).values, [{
        data,
        shape,
      }]);
    }
  });
}

Deno.test("argmax/argmin take the first index on ties; max sends the gradient there", async () => {
  // Rows of [4, 6]: ties at the extreme in various places, and an all-equal row.
  const data = [
    [1, 5, 2, 5, 0, 5],
    [-3, -3, 7, 7, -3, 1],
    [2, 2, 2, 2, 2, 2],
    [0, -1, 4, 9, 9, -1],
  ];
  const x = T.tensor(data.flat(), [4, 6]);
  const amax = T.argmax(x, 1);
  const amin = T.argmin(x, 1);
  assertEquals(await amax.toArray(), [1, 2, 0, 3]);
  assertEquals(await amin.toArray(), [4, 0, 0, 1]);
  // Along axis 0 of the same data (strided reads): columns.
  const colMax = T.argmax(x, 0, true);
  assertEquals(colMax.shape, [1, 6]);
  assertEquals(await colMax.toArray(), [2, 0, 1, 3, 3, 0]);
  x.requiresGrad = true;
  T.tidy(() => T.backward(T.sum(T.max(x, 1))));
  const grad = await x.grad!.toArray();
  const expected = data.map((row, r) => row.map((_, k) => (k === [1, 2, 0, 3][r] ? 1 : 0))).flat();
  assertEquals(grad, expected);
  for (const t of [x, amax, amin, colMax, x.grad!]) t.dispose();
});

Deno.test("long axes keep the first index on ties (the workgroup kernel on GPUs)", async () => {
  const len = 1001;
  const data = randArray(2 * len, 3).map(Math.fround);
  // Row 0: the maximum 5 at 260 and 100 (first: 100, though invocation 260 % 256 = 4 holds 260
  // and is the lower of the tree's pair); row 1: minimum -5 at 999 and 257.
  data[260] = data[100] = 5;
  data[len + 999] = data[len + 257] = -5;
  const x = T.tensor(data, [2, len]);
  const values = T.max(x, 1);
  const amax = T.argmax(x, 1);
  const amin = T.argmin(x, 1);
  assertEquals(await amax.toArray(), argRef(data, [2, len], 1, "max").indices);
  assertEquals((await amax.toArray())[0], 100);
  assertEquals((await amin.toArray())[1], 257);
  assertEquals(await amin.toArray(), argRef(data, [2, len], 1, "min").indices);
  assertClose(await values.toArray(), argRef(data, [2, len], 1, "max").values, { atol: 0 });
  // Finite differences need a unique minimum: break the tie for the gradient check.
  const untied = data.map((v, i) => (i === len + 999 ? -4.5 : v));
  await checkGrad((t) => T.min(t, 1), (d) => argRef(d, [2, len], 1, "min").values, [{
    data: untied,
    shape: [2, len],
  }]);
  for (const t of [x, values, amax, amin]) t.dispose();
});

Deno.test("an axis longer than lavapipe's loop limit (70001) is reduced in full", async () => {
  // lavapipe ends an invocation's loops after 65535 iterations: the maximum sits beyond that.
  const len = 70001;
  const data = randArray(len, 4).map(Math.fround);
  data[69990] = 3;
  data[12] = -3;
  const x = T.tensor(data, [1, len, 1]);
  assertEquals(await T.argmax(x, 1).toArray(), [69990]);
  assertEquals(await T.argmin(x, -2).toArray(), [12]);
  assertEquals(await T.max(x, 1).toArray(), [3]);
  x.dispose();
});

Deno.test("max backward works when only the values survived the forward's scope", async () => {
  const data = [3, 1, 4, 1, 5, 9, 2, 6, 5];
  const x = T.tensor(data, [3, 3]);
  x.requiresGrad = true;
  // The saved indices are released with the inner scope: backward recomputes them.
  const m = T.tidy(() => T.max(x, 0));
  T.tidy(() => T.backward(T.sum(m)));
  assertEquals(await x.grad!.toArray(), [1, 0, 0, 0, 0, 1, 0, 1, 0]);
  for (const t of [x, m, x.grad!]) t.dispose();
});

Deno.test("rank 1 reduces to a scalar; bad input throws naming the op and shape", async () => {
  const x = T.tensor([0.5, -2, 7, 7], [4]);
  const m = T.min(x, 0);
  assertEquals(m.shape, []);
  assertEquals(await m.toArray(), [-2]);
  assertEquals(await T.argmax(x, 0).toArray(), [2]);
  assertThrows(() => T.max(x, 1), "peco: max: axis 1 out of range for tensor<f32>[4]");
  assertThrows(() => T.argmin(x, -2), "peco: argmin: axis -2 out of range for tensor<f32>[4]");
  const ints = T.zeros([3], "i32");
  assertThrows(() => T.argmax(ints, 0), "peco: argmax: needs f32, got tensor<i32>[3]");
  const empty = T.zeros([2, 0]);
  assertThrows(() => T.min(empty, 1), "peco: min: axis 1 of tensor<f32>[2,0] is empty");
  const none = T.max(empty, 0);
  assertEquals(none.shape, [0]);
  for (const t of [x, m, ints, empty, none]) t.dispose();
});
