// Scaled dot-product attention, composed from batched matmul, an optional broadcast bias add and
// softmax, so autograd flows through the composition (to q, k, v and the bias). The scale is
// folded into the softmax (no pass of its own); with a bias, which must stay unscaled, it is applied
// to q ([T, D] per head) rather than to the scores ([T, S]): fewer elements when S > D.
// No fused kernel: on lavapipe the two products dominate, and they already run as batched matmuls
// over B·H without copies (kᵀ is read in place).

import type { Tensor } from "../tensor.ts";
import { add, broadcastShapes, mulScalar } from "./elementwise.ts";
import { matmul } from "./matmul.ts";
import { softmax } from "./softmax.ts";

export interface AttentionOptions {
  /** Added to the scores; broadcastable to [B, H, T, S] (e.g. [H, T, S] or a [B, 1, 1, S] mask). */
  bias?: Tensor;
  /** Multiplies q·kᵀ; D^-0.5 by default. */
  scale?: number;
}

/** softmax(q·kᵀ·scale + bias)·v: q [B,H,T,D], k [B,H,S,D], v [B,H,S,Dv] → [B,H,T,Dv]. */
export function attention(q: Tensor, k: Tensor, v: Tensor, options: AttentionOptions = {}): Tensor {
  const shapes = `q [${q.shape}], k [${k.shape}], v [${v.shape}]`;
  if (q.rank !== 4 || k.rank !== 4 || v.rank !== 4) {
    throw new Error(`peco: attention: q, k and v must be [B, H, len, D], got ${shapes}`);
  }
  const [B, H, T, D] = q.shape;
  const S = k.shape[2];
  const sameHeads = (t: Tensor) => t.shape[0] === B && t.shape[1] === H && t.shape[2] === S;
  if (!sameHeads(k) || !sameHeads(v) || k.shape[3] !== D) {
    throw new Error(`peco: attention: shapes do not match: ${shapes}`);
  }
  const { bias, scale = 1 / Math.sqrt(D) } = options;
  if (bias) {
    const target = [B, H, T, S];
    let fits = false;
    try {
      const shape = broadcastShapes(bias.shape, target);
      fits = shape.length === 4 && shape.every((d, i) => d === target[i]);
    } catch {
      // Shapes that do not broadcast at all: reported below with the op's name.
    }
    if (!fits) {
      throw new Error(
        `peco: attention: bias [${bias.shape}] does not broadcast to scores [${target}]`,
      );
    }
  }
  if (!bias) return matmul(softmax(matmul(q, k, { transB: true }), -1, scale), v);
  const scores = matmul(scale === 1 ? q : mulScalar(q, scale), k, { transB: true });
  return matmul(softmax(add(scores, bias), -1), v);
}
