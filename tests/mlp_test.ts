import { assertClose, checkGrad, prod, randArray, runOp } from "./util.ts";
import * as T from "../lib/tensor/mod.ts";
import { throws } from "node:assert/strict";
import { forceVariant } from "../lib/gpu/autotune.ts";

/** float64 erf (Abramowitz & Stegun 7.1.26, as the kernels) and exact-form GELU. */
function erf(v: number): number {
  const a = Math.abs(v);
  const t = 1 / (1 + 0.3275911 * a);
  const poly = t *
    (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
  return Math.sign(v) * (1 - poly * Math.exp(-a * a));
}
const gelu = (v: number) => 0.5 * v * (1 + erf(v / Math.SQRT2));

/** float64 x·Wᵀ + b over rows of x [rows, in]; w [out, in]. */
function linearRef(x: number[], w: number[], b: number[] | null, inF: number, outF: number) {
  const rows = x.length / inF;
  const out: number[] = [];
  for (let r = 0; r < rows; r++) {
    for (let o = 0; o < outF; o++) {
      let acc = b ? b[o] : 0;
      for (let i = 0; i < inF; i++) acc += x[r * inF + i] * w[o * inF + i];
      out.push(acc);
    }
  }
  return out;
}

// [rows..., in] → hidden → out, odd sizes; with and without biases.
const cases = [
  { x: [3, 5, 6], hidden: 13, out: 7, bias: true },
  { x: [4, 9], hidden: 20, out: 5, bias: false },
];

for (const c of cases) {
  const inF = c.x[c.x.length - 1];
  const inputs = [
    { data: randArray(prod(c.x), 1, -2, 2), shape: c.x },
    { data: randArray(c.hidden * inF, 2, -0.6, 0.6), shape: [c.hidden, inF] },
    { data: randArray(c.out * c.hidden, 3, -0.6, 0.6), shape: [c.out, c.hidden] },
    ...(c.bias
      ? [
        { data: randArray(c.hidden, 4, -0.5, 0.5), shape: [c.hidden] },
        { data: randArray(c.out, 5, -0.5, 0.5), shape: [c.out] },
      ]
      : []),
  ];
  const ref = (x: number[], w1: number[], w2: number[], b1?: number[], b2?: number[]) => {
    const h = linearRef(x, w1, b1 ?? null, inF, c.hidden).map(gelu);
    return linearRef(h, w2, b2 ?? null, c.hidden, c.out);
  };
  const op = (x: T.Tensor, w1: T.Tensor, w2: T.Tensor, b1?: T.Tensor, b2?: T.Tensor) =>
    T.mlpGelu(x, w1, b1 ?? null, w2, b2 ?? null);
  for (const variant of ["fused", "composed"]) {
    for (const kernels of ["tex8x8", "tex16x16", "tex24x24", "reg4x4"]) {
      Deno.test(
        `mlpGelu [${c.x}] → ${c.hidden} → ${c.out}${c.bias ? " with biases" : ""} (${variant}, ` +
          `matmul ${kernels}): forward and backward`,
        async () => {
          forceVariant("mlpGelu", variant);
          forceVariant("matmul", kernels);
          try {
            const out = await runOp(op, inputs);
            assertClose(out.shape, [...c.x.slice(0, -1), c.out], { what: "shape" });
            assertClose(
              out.data,
              ref(...(inputs.map((i) => i.data) as [number[], number[], number[]])),
              {
                what: "mlpGelu",
              },
            );
            await checkGrad(op, ref as (...xs: number[][]) => number[], inputs);
            // Only the input's gradient, then only the second layer's.
            await checkGrad(op, ref as (...xs: number[][]) => number[], inputs, { which: [0] });
            await checkGrad(op, ref as (...xs: number[][]) => number[], inputs, { which: [2] });
            if (c.bias) {
              // Biases without their weights (their own reductions), then with the row sums
              // of the weight gradients' pass switched off.
              await checkGrad(op, ref as (...xs: number[][]) => number[], inputs, {
                which: [3, 4],
              });
              forceVariant("matmulRowSums", "separate");
              await checkGrad(op, ref as (...xs: number[][]) => number[], inputs);
            }
          } finally {
            forceVariant("mlpGelu", null);
            forceVariant("matmul", null);
            forceVariant("matmulRowSums", null);
          }
        },
      );
    }
  }
}

Deno.test("mlpGelu rejects layers that do not chain, in one line", () => {
  T.tidy(() => {
    throws(
      () => T.mlpGelu(T.zeros([2, 4]), T.zeros([8, 4]), null, T.zeros([3, 7]), null),
      /peco: mlpGelu: x tensor<f32>\[2,4\], fc1 tensor<f32>\[8,4\] \+ none, fc2 tensor<f32>\[3,7\] \+ none do not chain/,
    );
  });
});
