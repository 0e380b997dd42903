// The transformer MLP, fc2(gelu(fc1(x))), as one op whose GELU runs in the matmuls' stores: fc1's
// kernel stores gelu(u) and keeps the pre-activation u; in backward, the kernel of fc2's input
// gradient stores (g·W2) · gelu'(u), the gradient of u itself. The composed ops take a GELU
// dispatch forward and its gradient's backward, each a full pass over the hidden activations.

import { chooseVariant, type Variant } from "../../gpu/autotune.ts";
import { record, Tensor } from "../tensor.ts";
import { gelu } from "./elementwise.ts";
import { linear, matmulEpilogueInto, matmulInto, matmulRowSumsInto } from "./matmul.ts";
import { reduceRaw } from "./reduce_raw.ts";

/**
 * A layer's weight gradient dᵀ·input [out, in] and bias gradient Σ_rows d [out] (each null unless
 * wanted), from one texture-kernel pass where both are (matmulRowSumsInto).
 */
function weightAndBiasGrads(
  d: Tensor,
  input: Tensor,
  w: Tensor,
  b: Tensor | null,
): [Tensor | null, Tensor | null] {
  const wantB = b?.requiresGrad ?? false;
  if (w.requiresGrad && wantB) {
    const [dw, db] = [new Tensor(w.shape, "f32"), new Tensor(b!.shape, "f32")];
    matmulRowSumsInto(d, input, dw, db, { transA: true });
    return [dw, db];
  }
  let dw: Tensor | null = null;
  if (w.requiresGrad) {
    dw = new Tensor(w.shape, "f32");
    matmulInto(d, input, dw, { transA: true });
  }
  return [dw, wantB ? reduceRaw(d, 0, "sum") : null];
}

/** "fused": the GELU in the matmul epilogues; "composed": linear, gelu, linear. */
export const MLP_VARIANTS: readonly Variant<"fused" | "composed">[] = [
  { name: "fused", config: "fused" },
  { name: "composed", config: "composed" },
];

/**
 * fc2(gelu(fc1(x))): x [..., in], w1 [hidden, in], b1 [hidden] or null, w2 [out, hidden], b2 [out]
 * or null → [..., out], with its backward rule. `forceVariant("mlpGelu", "composed")` runs the
 * three ops instead.
 */
export function mlpGelu(
  x: Tensor,
  w1: Tensor,
  b1: Tensor | null,
  w2: Tensor,
  b2: Tensor | null,
): Tensor {
  const inF = x.shape[x.rank - 1];
  const [hidden, outF] = [w1.shape[0], w2.shape[0]];
  const ok = x.rank >= 1 && w1.rank === 2 && w2.rank === 2 && w1.shape[1] === inF &&
    w2.shape[1] === hidden && (!b1 || b1.size === hidden) && (!b2 || b2.size === outF);
  if (!ok) {
    const d = (t: Tensor | null) => t?.describe() ?? "none";
    throw new Error(
      `peco: mlpGelu: x ${d(x)}, fc1 ${d(w1)} + ${d(b1)}, fc2 ${d(w2)} + ${d(b2)} do not chain ` +
        "(weights are [out, in], biases [out])",
    );
  }
  const variant = chooseVariant("mlpGelu", "", MLP_VARIANTS, MLP_VARIANTS[0]).config;
  if (variant === "composed") return linear(gelu(linear(x, w1, b1)), w2, b2);
  for (const t of [x, w1, b1, w2, b2]) {
    if (t && t.dtype !== "f32") throw new Error(`peco: mlpGelu: needs f32, got ${t.describe()}`);
  }
  const rows = x.size / inF;
  const x2 = x.view([rows, inF]);
  const u = new Tensor([rows, hidden], "f32");
  const y = new Tensor([rows, hidden], "f32");
  matmulEpilogueInto(x2, w1, b1, y, { kind: "gelu", aux: u }, { transB: true });
  const out = new Tensor([...x.shape.slice(0, -1), outF], "f32");
  matmulEpilogueInto(y, w2, b2, out.view([rows, outF]), null, { transB: true });
  const inputs = [x, w1, b1, w2, b2].filter((t): t is Tensor => t !== null);
  return record("mlpGelu", out, inputs, (g) => {
    const g2 = g.view([rows, outF]);
    const [dw2, db2] = weightAndBiasGrads(g2, y, w2, b2);
    let dx: Tensor | null = null, dw1: Tensor | null = null, db1: Tensor | null = null;
    if (x.requiresGrad || w1.requiresGrad || b1?.requiresGrad) {
      const du = new Tensor([rows, hidden], "f32");
      matmulEpilogueInto(g2, w2, null, du, { kind: "geluGrad", aux: u });
      [dw1, db1] = weightAndBiasGrads(du, x2, w1, b1);
      if (x.requiresGrad) {
        dx = new Tensor(x.shape, "f32");
        matmulInto(du, w1, dx.view([rows, inF]));
      }
    }
    const grads: (Tensor | null)[] = [dx, dw1];
    if (b1) grads.push(db1);
    grads.push(dw2);
    if (b2) grads.push(db2);
    return grads;
  });
}
