import { assertClose, checkGrad, prod, randArray, runOp } from "./util.ts";
import * as T from "../lib/tensor/mod.ts";
import { forceVariant } from "../lib/gpu/autotune.ts";
import { throws } from "node:assert/strict";

/** float64 (log-)softmax of x [shape] along `axis`. */
function softmaxRef(x: number[], shape: number[], axis: number, log: boolean): number[] {
  const a = axis < 0 ? axis + shape.length : axis;
  const outer = prod(shape.slice(0, a));
  const len = shape[a];
  const inner = prod(shape.slice(a + 1));
  const out = new Array<number>(x.length);
  for (let o = 0; o < outer; o++) {
    for (let i = 0; i < inner; i++) {
      const at = (j: number) => (o * len + j) * inner + i;
      let max = -Infinity;
      for (let j = 0; j < len; j++) max = Math.max(max, x[at(j)]);
      let sum = 0;
      for (let j = 0; j < len; j++) sum += Math.exp(x[at(j)] - max);
      for (let j = 0; j < len; j++) {
        out[at(j)] = log ? x[at(j)] - max - Math.log(sum) : Math.exp(x[at(j)] - max) / sum;
      }
    }
  }
  return out;
}

const OPS: [string, (x: T.Tensor, axis?: number) => T.Tensor, boolean][] = [
  ["softmax", T.softmax, false],
  ["logSoftmax", T.logSoftmax, true],
];

async function checkForward(shape: number[], axis: number, values: number[], what = "") {
  // The reference sees the f32 values the GPU sees (at |x| ~ 1000 rounding alone moves x by 3e-5).
  const data = Array.from(Float32Array.from(values));
  for (const [name, op, log] of OPS) {
    const out = await runOp((t) => op(t, axis), [{ data, shape }]);
    const label = `${name} ${what} [${shape}] axis ${axis}`;
    assertClose(out.shape, shape, { what: `${label} shape` });
    assertClose(out.data, softmaxRef(data, shape, axis, log), {
      atol: 2e-6,
      rtol: 1e-5,
      what: label,
    });
  }
}

Deno.test("softmax/logSoftmax forward: every axis of [3,5,7], a size-1 axis, default axis", async () => {
  const shape = [3, 5, 7];
  const data = randArray(prod(shape), 1, -3, 3);
  for (const axis of [0, 1, 2, -1, -3]) await checkForward(shape, axis, data);
  await checkForward([4, 1, 3], 1, randArray(12, 2), "size-1 axis");
  // Contiguous rows and a size that is whole texels: read from a texture on software adapters.
  await checkForward([3, 4, 13], -1, randArray(156, 4, -3, 3), "texture-read rows");
  const out = await runOp((t) => T.softmax(t), [{ data, shape }]);
  assertClose(out.data, softmaxRef(data, shape, -1, false), { what: "default axis" });
});

Deno.test("softmax/logSoftmax are stable for large magnitudes", async () => {
  const shape = [3, 9];
  const base = randArray(prod(shape), 3, -5, 5);
  await checkForward(shape, -1, base.map((v) => v + 1000), "shifted +1000");
  await checkForward(shape, -1, base.map((v) => v * 40 - 2000), "spread, -2000");
});

Deno.test("softmax/logSoftmax: both kernel variants, rows longer than a workgroup", async () => {
  try {
    for (const variant of T.SOFTMAX_VARIANTS) {
      forceVariant("softmax", variant.name);
      await checkForward([2, 301], -1, randArray(602, 4, -4, 4), variant.name);
      await checkForward([3, 5, 7], 1, randArray(105, 5, -4, 4), variant.name);
      const shape = [3, 7];
      const data = randArray(21, 6);
      for (const [, op, log] of OPS) {
        await checkGrad((t) => op(t, 0), (d) => softmaxRef(d, shape, 0, log), [{ data, shape }]);
      }
    }
  } finally {
    forceVariant("softmax", null);
  }
});

Deno.test("softmax/logSoftmax backward matches finite differences (last and middle axis)", async () => {
  const shape = [2, 3, 5];
  const data = randArray(prod(shape), 7, -2, 2);
  for (const [, op, log] of OPS) {
    for (const axis of [-1, 1]) {
      await checkGrad((t) => op(t, axis), (d) => softmaxRef(d, shape, axis, log), [{
        data,
        shape,
      }]);
    }
  }
});

Deno.test("softmax/logSoftmax of x · scale: forward and backward, both kernel variants", async () => {
  const shape = [4, 9];
  const data = randArray(prod(shape), 31);
  const scaled = (d: number[]) => d.map((v) => v * 0.37);
  try {
    for (const variant of ["rows", "workgroup"]) {
      forceVariant("softmax", variant);
      for (const [name, , log] of OPS) {
        const scaledOp = (t: T.Tensor, axis?: number) =>
          (log ? T.logSoftmax : T.softmax)(t, axis, 0.37);
        const out = await runOp((t) => scaledOp(t, -1), [{ data, shape }]);
        assertClose(out.data, softmaxRef(scaled(data), shape, -1, log), {
          atol: 1e-6,
          what: `${name} ${variant} scale 0.37`,
        });
        await checkGrad((t) => scaledOp(t, -1), (d) => softmaxRef(scaled(d), shape, -1, log), [{
          data,
          shape,
        }]);
      }
    }
  } finally {
    forceVariant("softmax", null);
  }
});

Deno.test("softmax/logSoftmax reject bad input with clear errors", () => {
  T.tidy(() => {
    throws(() => T.softmax(T.zeros([2, 3], "i32")), /peco: softmax: needs f32, got .*i32.*\[2,3\]/);
    throws(
      () => T.logSoftmax(T.zeros([2, 3]), 2),
      /peco: logSoftmax: axis 2 out of range for .*\[2,3\]/,
    );
    throws(() => T.softmax(T.zeros([2, 3]), -3), /peco: softmax: axis -3 out of range/);
  });
});
