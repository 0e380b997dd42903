import { assertClose, checkGrad, prod, randArray, runOp } from "./util.ts";
import * as T from "../lib/tensor/mod.ts";
import { forceVariant } from "../lib/gpu/autotune.ts";
import { throws } from "node:assert/strict";

/** float64 x + h · gamma, gamma over the last dim. */
function residualRef(x: number[], h: number[], gamma: number[]): number[] {
  return x.map((v, i) => v + h[i] * gamma[i % gamma.length]);
}

// [3, 5, 7]: 15 rows of 7 channels, split into one piece per row with pieces forced; [2, 520]:
// more channels than the backward's target invocations, so one piece; [4]: a single row. Each
// with the backward's variants forced: all rows in one piece, and pieces of rows summed after.
for (
  const [shape, grad] of [[3, 5, 7], [2, 520], [4]].flatMap((s) =>
    ["whole", "pieces"].map((v) => [s, v] as const)
  )
) {
  const c = shape[shape.length - 1];
  const x = { data: randArray(prod(shape), 1, -2, 2), shape };
  const h = { data: randArray(prod(shape), 2, -2, 2), shape };
  const gamma = { data: randArray(c, 3, -1, 1), shape: [c] };
  Deno.test(`residualScaled [${shape}] (${grad}): forward and backward, as the composed ops`, async () => {
    forceVariant("residualScaledGrad", grad);
    try {
      const ref = residualRef(x.data, h.data, gamma.data);
      const fused = await runOp((a, b, g) => T.residualScaled(a, b, g), [x, h, gamma]);
      assertClose(fused.data, ref, { what: "residualScaled" });
      assertClose(fused.shape, shape, { what: "shape" });
      const composed = await runOp((a, b, g) => T.add(a, T.mul(b, g)), [x, h, gamma]);
      assertClose(composed.data, ref, { what: "add(x, mul(h, gamma))" });
      await checkGrad((a, b, g) => T.residualScaled(a, b, g), residualRef, [x, h, gamma]);
      // Gradients wanted for some inputs only (a frozen gamma, a constant x).
      await checkGrad((a, b, g) => T.residualScaled(a, b, g), residualRef, [x, h, gamma], {
        which: [1],
      });
      await checkGrad((a, b, g) => T.residualScaled(a, b, g), residualRef, [x, h, gamma], {
        which: [0, 2],
      });
    } finally {
      forceVariant("residualScaledGrad", null);
    }
  });
}

Deno.test("residualScaled rejects mismatched shapes with one clear line", () => {
  T.tidy(() => {
    throws(
      () => T.residualScaled(T.zeros([2, 3]), T.zeros([3, 2]), T.zeros([3])),
      /peco: residualScaled: x tensor<f32>\[2,3\] and h tensor<f32>\[3,2\] must match/,
    );
    throws(
      () => T.residualScaled(T.zeros([2, 3]), T.zeros([2, 3]), T.zeros([2])),
      /gamma tensor<f32>\[2\] must be \[3\]/,
    );
  });
});
