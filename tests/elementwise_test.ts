import { assertClose, checkGrad, kernelsRan, prod, randArray, runOp } from "./util.ts";
import * as T from "../lib/tensor/mod.ts";
import assert from "node:assert/strict";
import { gpu } from "../lib/gpu/device.ts";

const erf = (x: number) => {
  // float64 erf by series/continued fraction is overkill here: use a high-order expansion.
  const t = 1 / (1 + 0.5 * Math.abs(x));
  const y = 1 - t * Math.exp(
        -x * x - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +
                      t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 +
                                      t * (-0.82215223 + t * 0.17087277)))))))),
      );
  return x >= 0 ? y : -y;
};
const sig = (x: number) => 1 / (1 + Math.exp(-x));

const unaryCases: [string, (x: T.Tensor) => T.Tensor, (x: number) => number, [number, number]][] = [
  ["neg", T.neg, (x) => -x, [-2, 2]],
  ["exp", T.exp, Math.exp, [-2, 2]],
  ["log", T.log, Math.log, [0.2, 3]],
  ["sqrt", T.sqrt, Math.sqrt, [0.2, 3]],
  ["rsqrt", T.rsqrt, (x) => 1 / Math.sqrt(x), [0.2, 3]],
  ["relu", T.relu, (x) => Math.max(x, 0), [-2, 2]],
  ["gelu", T.gelu, (x) => 0.5 * x * (1 + erf(x / Math.SQRT2)), [-3, 3]],
  ["silu", T.silu, (x) => x * sig(x), [-3, 3]],
  ["sigmoid", T.sigmoid, sig, [-3, 3]],
  ["tanh", T.tanh, Math.tanh, [-2, 2]],
  ["abs", T.abs, Math.abs, [-2, 2]],
  ["square", T.square, (x) => x * x, [-2, 2]],
  ["reciprocal", T.reciprocal, (x) => 1 / x, [0.3, 2]],
  ["affine", (x) => T.affine(x, 1.5, -0.25), (x) => 1.5 * x - 0.25, [-2, 2]],
  ["powScalar 3", (x) => T.powScalar(x, 3), (x) => x ** 3, [-2, 2]],
  ["powScalar 0.5", (x) => T.powScalar(x, 0.5), (x) => x ** 0.5, [0.2, 2]],
  ["clamp", (x) => T.clamp(x, -0.5, 0.7), (x) => Math.min(Math.max(x, -0.5), 0.7), [-2, 2]],
];

// Four values a lane where the size is a multiple of 4 ([3, 4, 5]), one elsewhere ([3, 7, 5]).
for (const [name, op, ref, [lo, hi]] of unaryCases) {
  for (const shape of [[3, 7, 5], [3, 4, 5]]) {
    const v4 = prod(shape) % 4 === 0;
    Deno.test(`unary ${name} [${shape}]${v4 ? " (vec4)" : ""}: forward matches float64 and backward matches finite differences`, async () => {
      const ran = await kernelsRan(() => checkUnary(op, ref, shape, lo, hi, name));
      const expected = v4 ? ["unary_v4", "unary_grad_v4"] : ["unary", "unary_grad"];
      for (const kernel of expected) {
        assert.ok(ran.includes(kernel), `${kernel} did not run (${[...new Set(ran)].join(", ")})`);
      }
    });
  }
}

async function checkUnary(
  op: (x: T.Tensor) => T.Tensor,
  ref: (x: number) => number,
  shape: number[],
  lo: number,
  hi: number,
  name: string,
): Promise<void> {
  let data = randArray(prod(shape), 11, lo, hi);
  // Keep kinks (relu, abs, clamp) away from the finite-difference step.
  data = data.map((
    v,
  ) => (Math.abs(v) < 0.01 || Math.abs(v + 0.5) < 0.01 || Math.abs(v - 0.7) < 0.01 ? v + 0.05 : v));
  const out = await runOp(op, [{ data, shape }]);
  assertClose(out.data, data.map(ref), { atol: 2e-6, rtol: 2e-5, what: name });
  await checkGrad(op, (x) => x.map(ref), [{ data, shape }]);
}

const binaryCases: [
  string,
  (a: T.Tensor, b: T.Tensor) => T.Tensor,
  (a: number, b: number) => number,
][] = [
  ["add", T.add, (a, b) => a + b],
  ["sub", T.sub, (a, b) => a - b],
  ["mul", T.mul, (a, b) => a * b],
  ["div", T.div, (a, b) => a / b],
  ["maximum", T.maximum, Math.max],
  ["minimum", T.minimum, Math.min],
];

/** float64 broadcasting reference. */
function broadcastRef(
  a: number[],
  as: number[],
  b: number[],
  bs: number[],
  f: (x: number, y: number) => number,
): { data: number[]; shape: number[] } {
  const rank = Math.max(as.length, bs.length);
  const pa = [...Array(rank - as.length).fill(1), ...as];
  const pb = [...Array(rank - bs.length).fill(1), ...bs];
  const shape = pa.map((d, i) => Math.max(d, pb[i]));
  const n = prod(shape);
  const data: number[] = [];
  for (let i = 0; i < n; i++) {
    let rest = i;
    let ia = 0, ib = 0, sa = 1, sb = 1;
    for (let k = rank - 1; k >= 0; k--) {
      const c = rest % shape[k];
      rest = Math.floor(rest / shape[k]);
      ia += (pa[k] === 1 ? 0 : c) * sa;
      ib += (pb[k] === 1 ? 0 : c) * sb;
      sa *= pa[k];
      sb *= pb[k];
    }
    data.push(f(a[ia], b[ib]));
  }
  return { data, shape };
}

const shapePairs: [number[], number[]][] = [
  [[5, 3], [5, 3]],
  [[4, 6], [4, 6]], // same shape, a multiple of 4: four values a lane (binary_v4)
  [[4, 1, 3], [5, 1]],
  [[2, 3, 1, 5], [3, 7, 1]],
  [[7], []],
  [[1, 6], [5, 1]],
  // Walks that merge dims (a row vector over [B, T, C]; a column block) and a rank-7 broadcast
  // that merges down to the kernel's 6.
  [[3, 4, 5], [5]],
  [[2, 3, 4, 5], [2, 3, 1, 1]],
  [[2, 2, 2, 2, 2, 2, 2], [2, 2, 1, 1, 2, 2, 2]],
];

for (const [name, op, f] of binaryCases) {
  for (const [as, bs] of shapePairs) {
    Deno.test(`binary ${name} [${as}]·[${bs}]: forward and backward`, async () => {
      const v4 = as.join() === bs.join() && prod(as) % 4 === 0;
      const ran = await kernelsRan(() => checkBinary(op, f, as, bs, name));
      assert.ok(ran.includes(v4 ? "binary_v4" : "binary"), `ran ${[...new Set(ran)].join(", ")}`);
    });
  }
}

async function checkBinary(
  op: (a: T.Tensor, b: T.Tensor) => T.Tensor,
  f: (a: number, b: number) => number,
  as: number[],
  bs: number[],
  name: string,
): Promise<void> {
  const a = randArray(prod(as), 3, -2, 2);
  const b = randArray(prod(bs), 4, 0.5, 2).map((v, i) => (i % 2 ? -v : v));
  const out = await runOp(op, [{ data: a, shape: as }, { data: b, shape: bs }]);
  const ref = broadcastRef(a, as, b, bs, f);
  assertClose(out.data, ref.data, { atol: 1e-6, rtol: 1e-5, what: name });
  assertClose(out.shape, ref.shape, { what: "shape" });
  await checkGrad(op, (x, y) => broadcastRef(x, as, y, bs, f).data, [
    { data: a, shape: as },
    { data: b, shape: bs },
  ]);
}

Deno.test("broadcastWalk merges dims both operands run across alike", () => {
  assert.deepEqual(T.broadcastWalk([32, 50, 64], [64], [32, 50, 64]), {
    dims: [1600, 64],
    sa: [64, 1],
    sb: [0, 1],
  });
  assert.deepEqual(T.broadcastWalk([4, 1, 3], [5, 1], [4, 5, 3]), {
    dims: [4, 5, 3],
    sa: [3, 0, 1],
    sb: [0, 1, 0],
  });
  assert.deepEqual(
    T.broadcastWalk([2, 2, 2, 2, 2, 2, 2], [2, 2, 1, 1, 2, 2, 2], [2, 2, 2, 2, 2, 2, 2]),
    {
      dims: [4, 4, 8],
      sa: [32, 8, 1],
      sb: [8, 0, 1],
    },
  );
});

Deno.test("sum and mean over axes: forward and backward", async () => {
  const shape = [3, 5, 7];
  const x = randArray(prod(shape), 5);
  const sumRef = (d: number[], axis: number, scale = 1) => {
    const outer = prod(shape.slice(0, axis)),
      len = shape[axis],
      inner = prod(shape.slice(axis + 1));
    const out: number[] = [];
    for (let o = 0; o < outer; o++) {
      for (let i = 0; i < inner; i++) {
        let s = 0;
        for (let k = 0; k < len; k++) s += d[(o * len + k) * inner + i];
        out.push(s * scale);
      }
    }
    return out;
  };
  for (const axis of [0, 1, 2]) {
    const s = await runOp((t) => T.sum(t, axis), [{ data: x, shape }]);
    assertClose(s.data, sumRef(x, axis), { what: `sum axis ${axis}` });
    const m = await runOp((t) => T.mean(t, axis, true), [{ data: x, shape }]);
    assertClose(m.data, sumRef(x, axis, 1 / shape[axis]), { what: `mean axis ${axis}` });
    await checkGrad((t) => T.mean(t, axis), (d) => sumRef(d, axis, 1 / shape[axis]), [{
      data: x,
      shape,
    }]);
  }
  const total = await runOp((t) => T.sum(t), [{ data: x, shape }]);
  assertClose(total.data, [x.reduce((a, b) => a + b, 0)], { atol: 1e-4 });
});

Deno.test("long-axis reduction stays exact (the workgroup kernel on GPUs)", async () => {
  const n = 3001;
  const x = randArray(2 * n, 8);
  const out = await runOp((t) => T.sum(t, 1), [{ data: x, shape: [2, n] }]);
  const ref = [0, 1].map((r) => x.slice(r * n, (r + 1) * n).reduce((a, b) => a + b, 0));
  assertClose(out.data, ref, { atol: 1e-3, what: "row sums" });
});

Deno.test("broadcastTo and its backward (sumTo)", async () => {
  const x = randArray(6, 2);
  const out = await runOp((t) => T.broadcastTo(t, [4, 2, 3]), [{ data: x, shape: [2, 3] }]);
  assertClose(out.data, [...x, ...x, ...x, ...x]);
  await checkGrad((t) => T.broadcastTo(t, [4, 2, 3]), (d) => [...d, ...d, ...d, ...d], [
    { data: x, shape: [2, 3] },
  ]);
});

Deno.test("sumOuterInner: one dispatch, and two reductions past the loop budget", async () => {
  for (const [outer, len, inner] of [[3, 5, 7], [2, 3, 5003]]) {
    const x = randArray(outer * len * inner, outer + inner);
    const ref = Array.from({ length: len }, (_, k) => {
      let s = 0;
      for (let o = 0; o < outer; o++) {
        for (let i = 0; i < inner; i++) s += x[(o * len + k) * inner + i];
      }
      return s;
    });
    const t = T.tensor(x, [outer, len, inner]);
    const before = gpu().recorder.dispatches;
    const out = T.sumOuterInner(t, outer, len, inner);
    assert.equal(gpu().recorder.dispatches - before, outer * (inner + 1) > 10_000 ? 2 : 1);
    assertClose(await out.toArray(), ref, {
      atol: 1e-3,
      rtol: 1e-5,
      what: `[${outer},${len},${inner}]`,
    });
    [t, out].forEach((v) => v.dispose());
  }
  assert.throws(
    () => T.sumOuterInner(T.zeros([6]), 2, 2, 2),
    /sumOuterInner: .* is not \[2, 2, 2\]/,
  );
});

Deno.test("fill and integer tensors keep exact bits", async () => {
  const t = T.full([5], -7, "i32");
  assertClose(await t.toArray(), [-7, -7, -7, -7, -7]);
  const u = T.tensor([1, 2, 4000000000], [3], "u32");
  assertClose(await u.toArray(), [1, 2, 4000000000]);
  t.dispose();
  u.dispose();
});

Deno.test("reductions longer than lavapipe's loop limit (65535 per invocation) stay exact", async () => {
  // 9M values: more than one workgroup segment (256 × 32000), so partial sums are reduced again.
  const n = 9_000_001;
  const ones = T.full([n], 1);
  const total = T.sum(ones);
  assertClose([await total.item()], [n], { atol: 0, rtol: 1e-6, what: "sum of ones" });
  // A 70001-long middle axis.
  const x = T.full([2, 70001, 3], 0.5);
  const rows = T.sum(x, 1);
  assertClose(await rows.toArray(), new Array(6).fill(35000.5), { atol: 0.05, what: "sums" });
  [ones, total, x, rows].forEach((t) => t.dispose());
});
