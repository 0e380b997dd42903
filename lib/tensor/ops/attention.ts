// Scaled dot-product attention, composed from batched matmul, an optional broadcast bias add and
// softmax, so autograd flows through the composition (to q, k, v and the bias). The scale is
// folded into the softmax (no pass of its own); with a bias, which must stay unscaled, it is applied
// to q ([T, D] per head) rather than to the scores ([T, S]): fewer elements when S > D.
// No fused kernel: on lavapipe the two products dominate, and they already run as batched matmuls
// over B·H without copies (kᵀ is read in place).
//
// `attentionPacked` takes q, k and v packed in one tensor (a fused qkv projection's output) and
// reads them as views of it; its backward writes dq, dk and dv straight into the three parts of one
// gradient tensor. Composed from three slices instead, autograd would place each slice's gradient
// into a zero tensor of the packed size and add the three: three full-size writes and two full-size
// additions more per call.

import { chooseVariant, type Variant } from "../../gpu/autotune.ts";
import { gpu } from "../../gpu/device.ts";
import {
  FUSED_ATTENTION_DEFAULT_MAX_T,
  fusedAttention,
  fusedAttentionFits,
} from "./attention_fused.ts";
import { record, Tensor } from "../tensor.ts";
import { add, broadcastShapes, mulScalar } from "./elementwise.ts";
import { matmul, matmulInto } from "./matmul.ts";
import { permute, reshape, slice } from "./shape.ts";
import { softmax, softmaxBackward, softmaxForward } from "./softmax.ts";

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

/**
 * "fused": attention_fused.ts's three kernels (software adapters' default for short sequences); "packed":
 * q, k, v as views and one gradient tensor (see the note at the top); "composed": three slices and
 * `attention`.
 */
export const PACKED_ATTENTION_VARIANTS: readonly Variant<"fused" | "packed" | "composed">[] = [
  { name: "fused", config: "fused" },
  { name: "packed", config: "packed" },
  { name: "composed", config: "composed" },
];

/**
 * softmax(q·kᵀ·scale + bias)·v with q, k and v packed as qkv [3, B, H, T, D] (self-attention: the
 * keys are the queries' positions) → [B, H, T, D]. Without a bias: the fused kernels on software
 * adapters where they fit and T ≤ FUSED_ATTENTION_DEFAULT_MAX_T, else packed when each part starts
 * on a 256-byte boundary (a view a kernel can bind); otherwise, with a bias, or when forced
 * (`forceVariant("attentionPacked", name)`), as `attention` of three slices. A forced variant that
 * cannot run the shape falls back in that order.
 */
export function attentionPacked(qkv: Tensor, options: AttentionOptions = {}): Tensor {
  if (qkv.rank !== 5 || qkv.shape[0] !== 3) {
    throw new Error(`peco: attentionPacked: qkv must be [3, B, H, T, D], got [${qkv.shape}]`);
  }
  const [, B, H, T, D] = qkv.shape;
  const n = B * H * T * D;
  const aligned = qkv.byteOffset % 256 === 0 && (4 * n) % 256 === 0;
  const fits = !options.bias && qkv.dtype === "f32" && fusedAttentionFits(T, D, qkv.size);
  const fallback = PACKED_ATTENTION_VARIANTS[
    fits && gpu().info.software && T <= FUSED_ATTENTION_DEFAULT_MAX_T
      ? 0
      : aligned && !options.bias
      ? 1
      : 2
  ];
  const chosen = chooseVariant("attentionPacked", "", PACKED_ATTENTION_VARIANTS, fallback).config;
  const { scale = 1 / Math.sqrt(D) } = options;
  if (chosen === "fused" && fits) return fusedAttention(qkv, scale);
  if (chosen === "composed" || !aligned || options.bias) {
    const part = (i: number) => reshape(slice(qkv, 0, i, i + 1), [B, H, T, D]);
    return attention(part(0), part(1), part(2), options);
  }
  if (qkv.dtype !== "f32") {
    throw new Error(`peco: attentionPacked: needs f32, got ${qkv.describe()}`);
  }
  const head = [B, H, T, D];
  const parts = (t: Tensor) => [0, 1, 2].map((i) => t.range(i * n, head));
  const [q, k, v] = parts(qkv);
  const scores = new Tensor([B, H, T, T], "f32");
  matmulInto(q, k, scores, { transB: true });
  const probs = softmaxForward(scores, -1, false, scale);
  scores.dispose();
  const out = new Tensor(head, "f32");
  matmulInto(probs, v, out);
  return record("attentionPacked", out, [qkv], (g) => {
    const grad = new Tensor(qkv.shape, "f32");
    const [dq, dk, dv] = parts(grad);
    const dProbs = new Tensor([B, H, T, T], "f32");
    matmulInto(g, v, dProbs, { transB: true });
    const dScores = softmaxBackward(probs, dProbs, -1, false, scale);
    dProbs.dispose();
    matmulInto(dScores, k, dq);
    matmulInto(dScores, q, dk, { transA: true });
    matmulInto(probs, g, dv, { transA: true });
    dScores.dispose();
    for (const t of [dq, dk, dv]) t.dispose();
    return [grad];
  });
}

/**
 * Self-attention of a qkv projection's output as it is, [B, T, 3, H, D] → [B, T, H, D] (the output
 * projection's input as it is). The fused kernels read and write these layouts directly, so where
 * they run (as in `attentionPacked`, whose variant switch this shares) no permuting copy does;
 * otherwise qkv is permuted to [3, B, H, T, D] for `attentionPacked` and the output back.
 */
export function selfAttention(qkv: Tensor, options: AttentionOptions = {}): Tensor {
  if (qkv.rank !== 5 || qkv.shape[2] !== 3) {
    throw new Error(`peco: selfAttention: qkv must be [B, T, 3, H, D], got [${qkv.shape}]`);
  }
  const [, T, , , D] = qkv.shape;
  const fits = !options.bias && qkv.dtype === "f32" && fusedAttentionFits(T, D, qkv.size);
  const fallback = PACKED_ATTENTION_VARIANTS[
    fits && gpu().info.software && T <= FUSED_ATTENTION_DEFAULT_MAX_T ? 0 : 1
  ];
  const chosen = chooseVariant("attentionPacked", "", PACKED_ATTENTION_VARIANTS, fallback).config;
  if (chosen === "fused" && fits) {
    return fusedAttention(qkv, options.scale ?? 1 / Math.sqrt(D), "tokens");
  }
  return permute(attentionPacked(permute(qkv, [2, 0, 3, 1, 4]), options), [0, 2, 1, 3]);
}
