// The recorder's model-FLOP counter (lib/tensor/ops/flops.ts): every op that multiplies counts
// 2 FLOPs per multiply-add of its mathematical product, forward and backward, whatever kernels,
// padding or lowering compute it. Each case's expected count is worked out here from the shapes.

import { deepStrictEqual as assertEquals } from "node:assert/strict";
import "./util.ts";
import * as T from "../lib/tensor/mod.ts";
import { gpu } from "../lib/gpu/device.ts";
import { forceVariant } from "../lib/gpu/autotune.ts";
import { type ConvLowering, setConvLowering } from "../lib/tensor/ops/conv.ts";

/** Model FLOPs that fn records. */
function flopsOf(fn: () => void): number {
  const before = gpu().recorder.flops;
  fn();
  return gpu().recorder.flops - before;
}

/**
 * The FLOPs op's forward and its backward record on fresh inputs of `shapes` (each requiring a
 * gradient unless listed in `frozen`).
 */
function forwardBackwardFlops(
  shapes: number[][],
  op: (...inputs: T.Tensor[]) => T.Tensor,
  frozen: number[] = [],
): { forward: number; backward: number } {
  return T.tidy(() => {
    const inputs = shapes.map((shape, i) => {
      const t = T.normal(shape, 3 + i);
      t.requiresGrad = !frozen.includes(i);
      return t;
    });
    let out: T.Tensor | null = null;
    const forward = flopsOf(() => out = op(...inputs));
    const backward = flopsOf(() => T.backward(T.sum(out!)));
    return { forward, backward };
  });
}

/** Runs fn with `op` forced to `variant` (null: the default choice). */
function withVariant<R>(op: string, variant: string | null, fn: () => R): R {
  forceVariant(op, variant);
  try {
    return fn();
  } finally {
    forceVariant(op, null);
  }
}

Deno.test("flops: matmul counts 2·M·N·K forward and 4·M·N·K backward (odd shapes, trans, batch)", () => {
  const [M, N, K] = [7, 5, 3];
  const cases: { a: number[]; b: number[]; options: T.MatmulOptions; batch: number }[] = [
    { a: [M, K], b: [K, N], options: {}, batch: 1 },
    { a: [K, M], b: [N, K], options: { transA: true, transB: true }, batch: 1 },
    { a: [3, M, K], b: [3, K, N], options: {}, batch: 3 },
    // b shared by a's batch: its gradient sums over the batch, the products are still 3.
    { a: [2, 3, M, K], b: [K, N], options: {}, batch: 6 },
    { a: [M, K], b: [3, N, K], options: { transB: true }, batch: 3 },
  ];
  for (const c of cases) {
    const got = forwardBackwardFlops([c.a, c.b], (a, b) => T.matmul(a, b, c.options));
    const product = 2 * c.batch * M * N * K;
    assertEquals(got, { forward: product, backward: 2 * product }, JSON.stringify(c));
  }
  // Only a's gradient: one product backward.
  const one = forwardBackwardFlops([[M, K], [K, N]], (a, b) => T.matmul(a, b), [1]);
  assertEquals(one, { forward: 2 * M * N * K, backward: 2 * M * N * K });
});

Deno.test("flops: linear counts 2·rows·out·in forward, twice that backward, bias sums not counted", () => {
  const [rows, inF, outF] = [2 * 7, 13, 5];
  const expected = { forward: 2 * rows * outF * inF, backward: 4 * rows * outF * inF };
  for (const sums of [null, "separate"]) {
    const got = withVariant(
      "matmulRowSums",
      sums,
      () =>
        forwardBackwardFlops([[2, 7, inF], [outF, inF], [outF]], (x, w, b) => T.linear(x, w, b)),
    );
    assertEquals(got, expected, `row sums ${sums ?? "fused"}`);
  }
  const noBias = forwardBackwardFlops([[2, 7, inF], [outF, inF]], (x, w) => T.linear(x, w, null));
  assertEquals(noBias, expected);
});

Deno.test("flops: mlpGelu counts its two products forward and four backward (fused and composed)", () => {
  const [rows, inF, hidden, outF] = [9, 6, 11, 5];
  const forward = 2 * rows * hidden * inF + 2 * rows * outF * hidden;
  for (const variant of ["fused", "composed"]) {
    const got = withVariant("mlpGelu", variant, () =>
      forwardBackwardFlops(
        [[3, 3, inF], [hidden, inF], [hidden], [outF, hidden], [outF]],
        (x, w1, b1, w2, b2) => T.mlpGelu(x, w1, b1, w2, b2),
      ));
    assertEquals(got, { forward, backward: 2 * forward }, variant);
  }
});

interface ConvCase {
  xs: [number, number, number, number];
  ws: [number, number, number, number];
  stride: number;
  pad: [number, number, number, number]; // top, bottom, left, right
}

const convCases: ConvCase[] = [
  { xs: [2, 3, 7, 5], ws: [5, 3, 3, 3], stride: 1, pad: [1, 1, 1, 1] },
  { xs: [2, 3, 7, 5], ws: [5, 3, 3, 3], stride: 2, pad: [1, 1, 1, 1] },
  { xs: [3, 2, 9, 11], ws: [3, 2, 7, 7], stride: 2, pad: [3, 3, 3, 3] },
  { xs: [2, 3, 7, 5], ws: [5, 3, 3, 3], stride: 2, pad: [0, 1, 0, 1] },
  { xs: [1, 3, 8, 12], ws: [7, 3, 4, 4], stride: 4, pad: [0, 0, 0, 0] },
  { xs: [2, 3, 7, 5], ws: [5, 3, 1, 1], stride: 1, pad: [0, 0, 0, 0] },
  { xs: [2, 3, 7, 5], ws: [5, 3, 1, 1], stride: 2, pad: [0, 0, 0, 0] },
];

/** 2·N·O·C·kh·kw·Hout·Wout, Hout and Wout from the padded size, kernel and stride. */
function convFlops({ xs: [n, c, h, w], ws: [o, , kh, kw], stride, pad }: ConvCase): number {
  const hout = Math.floor((h + pad[0] + pad[1] - kh) / stride) + 1;
  const wout = Math.floor((w + pad[2] + pad[3] - kw) / stride) + 1;
  return 2 * n * o * c * kh * kw * hout * wout;
}

for (const lowering of ["im2col", "direct"] as ConvLowering[]) {
  Deno.test(`flops: conv2d (${lowering}) counts 2·N·O·C·kh·kw·Hout·Wout per pass`, () => {
    const previous = setConvLowering(lowering);
    try {
      for (const tc of convCases) {
        const padding = { top: tc.pad[0], bottom: tc.pad[1], left: tc.pad[2], right: tc.pad[3] };
        const conv = (x: T.Tensor, w: T.Tensor, b?: T.Tensor) =>
          T.conv2d(x, w, b ?? null, { stride: tc.stride, padding });
        const what = JSON.stringify(tc);
        const expected = convFlops(tc);
        // Input and weight gradients: one convolution's FLOPs each; the bias gradient a sum.
        for (const inputGrad of [null, "direct"]) {
          const both = withVariant(
            "conv2dInputGrad",
            inputGrad,
            () => forwardBackwardFlops([tc.xs, tc.ws, [tc.ws[0]]], conv),
          );
          assertEquals(both, { forward: expected, backward: 2 * expected }, what);
        }
        const weightOnly = forwardBackwardFlops([tc.xs, tc.ws], conv, [0]);
        assertEquals(weightOnly, { forward: expected, backward: expected }, what);
        const inputOnly = forwardBackwardFlops([tc.xs, tc.ws], conv, [1]);
        assertEquals(inputOnly, { forward: expected, backward: expected }, what);
      }
    } finally {
      setConvLowering(previous);
    }
  });
}

Deno.test("flops: attention counts q·kᵀ and p·v forward, their four products backward", () => {
  const [B, H, T_, S, D, Dv] = [2, 3, 5, 7, 4, 6];
  const forward = 2 * B * H * T_ * S * D + 2 * B * H * T_ * S * Dv;
  const shapes = [[B, H, T_, D], [B, H, S, D], [B, H, S, Dv]];
  const plain = forwardBackwardFlops(shapes, (q, k, v) => T.attention(q, k, v));
  assertEquals(plain, { forward, backward: 2 * forward });
  // A bias (added, not multiplied) changes nothing.
  const biased = forwardBackwardFlops(
    [...shapes, [H, T_, S]],
    (q, k, v, bias) => T.attention(q, k, v, { bias }),
  );
  assertEquals(biased, { forward, backward: 2 * forward });
});

Deno.test("flops: attentionPacked and selfAttention count the same in every variant", () => {
  // [B, H, T, D] = [2, 2, 5, 16]: every variant runs as named (see attention_test.ts).
  const [B, H, T_, D] = [2, 2, 5, 16];
  const forward = 4 * B * H * T_ * T_ * D;
  for (const variant of ["fused", "packed", "composed"]) {
    const packed = withVariant(
      "attentionPacked",
      variant,
      () => forwardBackwardFlops([[3, B, H, T_, D]], (qkv) => T.attentionPacked(qkv)),
    );
    assertEquals(packed, { forward, backward: 2 * forward }, `attentionPacked ${variant}`);
    const tokens = withVariant(
      "attentionPacked",
      variant,
      () => forwardBackwardFlops([[B, T_, 3, H, D]], (qkv) => T.selfAttention(qkv)),
    );
    assertEquals(tokens, { forward, backward: 2 * forward }, `selfAttention ${variant}`);
  }
});

Deno.test("flops: nearestCode counts the scores' product 2·N·K·D; elementwise ops count nothing", () => {
  const [n, k, d] = [13, 9, 6];
  T.tidy(() => {
    const z = T.normal([n, d], 1);
    const codebook = T.normal([k, d], 2);
    assertEquals(flopsOf(() => T.nearestCode(z, codebook)), 2 * n * k * d);
    assertEquals(flopsOf(() => T.softmax(T.add(T.mul(z, z), z), -1)), 0);
  });
});
