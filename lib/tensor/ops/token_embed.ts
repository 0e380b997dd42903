// The input sequence of a ViT from its patch features, as one op (kernels/token_embed.wgsl): the
// [CLS] token in front, masked patches replaced by the mask token (BEiT, docs/paper-to-code.md),
// position embeddings added. One dispatch forward and three backward where the composed ops (a
// permute of the patch features, the mask's affine, two multiplies and an add, a broadcast, a
// concat and the position add; in backward two crops, two multiplies, the permute back and four
// reductions) take seventeen.

import { chooseVariant, type Variant } from "../../gpu/autotune.ts";
import { gpu } from "../../gpu/device.ts";
import { defineKernel } from "../../gpu/pipelines.ts";
import { grid1d } from "../../gpu/recorder.ts";
import { record, Tensor } from "../tensor.ts";
import { add, affine, broadcastTo, mul } from "./elementwise.ts";
import { concat, permute, reshape } from "./shape.ts";
import source from "../../../kernels/token_embed.wgsl" with { type: "text" };

const WG = 64;

const kernels = {
  forward: defineKernel({
    name: "token_embed",
    source,
    entry: "forward",
    bindings: ["read", "read", "read", "read", "read", "write"],
  }),
  backward: defineKernel({
    name: "token_embed_grad",
    source,
    entry: "backward",
    bindings: ["read", "read", "write"],
  }),
  backwardToken: defineKernel({
    name: "token_embed_grad_token",
    source,
    entry: "backward_token",
    bindings: ["read", "read", "write", "write", "write"],
  }),
  backwardParams: defineKernel({
    name: "token_embed_grad_params",
    source,
    entry: "backward_params",
    bindings: ["read", "read", "write", "write", "write"],
  }),
};

/**
 * Loop iterations one backward invocation may run (the mask token's gradient loops over N·T):
 * lavapipe silently ends an invocation's loops past a budget (see fused_norm.ts). Larger batches
 * take the composed ops.
 */
const MAX_ITERATIONS = 10_000;

/** "fused": the two kernels; "composed": permute, mask mixing, concat and add as separate ops. */
export const TOKEN_EMBED_VARIANTS: readonly Variant<"fused" | "composed">[] = [
  { name: "fused", config: "fused" },
  { name: "composed", config: "composed" },
];

/** BEiT's masked input: a 0/1 mask f32 [N, T] (1 = masked) and the token that replaces a patch. */
export interface TokenMask {
  mask: Tensor;
  token: Tensor;
}

/**
 * The token sequence h [N, 1+T, D] from patch features p [N, D, T] (channels first, as a patch
 * convolution gives them): h[n, 0] = cls + pos[0], h[n, 1+t] = p[n, :, t]·(1 − w[n, t]) +
 * token·w[n, t] + pos[1+t] with `masked` (w = 0 without), pos [.., 1+T, D] or null; cls and
 * token hold D values ([1, 1, D] as BEiT stores them). `forceVariant("tokenEmbed", name)` picks
 * the kernels or the composed ops.
 */
export function tokenEmbed(
  p: Tensor,
  cls: Tensor,
  pos: Tensor | null,
  masked: TokenMask | null,
): Tensor {
  const [n, d, t] = p.shape;
  const bad = (what: string) => {
    throw new Error(`peco: tokenEmbed: ${what} (patch features ${p.describe()})`);
  };
  if (p.rank !== 3 || p.dtype !== "f32") bad("patch features must be f32 [N, D, T]");
  if (cls.size !== d || cls.dtype !== "f32") bad(`cls ${cls.describe()} must hold ${d} f32`);
  if (pos && (pos.size !== (t + 1) * d || pos.dtype !== "f32")) {
    bad(`pos ${pos.describe()} must hold [${t + 1}, ${d}] f32`);
  }
  if (masked) {
    const { mask, token } = masked;
    if (mask.size !== n * t || mask.dtype !== "f32") {
      bad(`mask ${mask.describe()} must be [${n}, ${t}] f32`);
    }
    if (token.size !== d || token.dtype !== "f32") {
      bad(`mask token ${token.describe()} must hold ${d} f32`);
    }
  }
  const fits = n * t <= MAX_ITERATIONS;
  const fallback = TOKEN_EMBED_VARIANTS[fits ? 0 : 1];
  const variant = chooseVariant("tokenEmbed", "", TOKEN_EMBED_VARIANTS, fallback).config;
  if (variant === "composed" || !fits) return composed(p, cls, pos, masked);
  const out = new Tensor([n, t + 1, d], "f32");
  const dims = [n, d, t];
  const constants = { HAS_MASK: masked ? 1 : 0, HAS_POS: pos ? 1 : 0 };
  if (out.size > 0) {
    gpu().recorder.dispatch(kernels.forward, {
      buffers: [
        p.binding,
        cls.binding,
        (pos ?? cls).binding,
        (masked?.mask ?? cls).binding,
        (masked?.token ?? cls).binding,
        out.binding,
      ],
      params: dims,
      constants,
      workgroups: grid1d(out.size, WG),
    });
  }
  const inputs = [p, cls, ...(pos ? [pos] : []), ...(masked ? [masked.token] : [])];
  return record("tokenEmbed", out, inputs, (g) => {
    const recorder = gpu().recorder;
    const mask = (masked?.mask ?? g).binding;
    let dp: Tensor | null = null;
    if (p.requiresGrad) {
      dp = new Tensor(p.shape, "f32");
      if (dp.size > 0) {
        recorder.dispatch(kernels.backward, {
          buffers: [g.binding, mask, dp.binding],
          params: dims,
          constants,
          workgroups: grid1d(dp.size, WG),
        });
      }
    }
    // The parameters' gradients, all computed (a dispatch for the [CLS] token and the position
    // embeddings, one for the mask token); a dummy where there is no parameter (bindings must not
    // alias).
    const dcls = new Tensor(cls.shape, "f32");
    const dpos = new Tensor(pos ? pos.shape : [1], "f32");
    const dtoken = new Tensor(masked ? masked.token.shape : [1], "f32");
    const buffers = [g.binding, mask, dcls.binding, dpos.binding, dtoken.binding];
    const total = d + (pos ? (t + 1) * d : 0);
    if (total > 0) {
      recorder.dispatch(kernels.backwardParams, {
        buffers,
        params: dims,
        constants,
        workgroups: grid1d(total, WG),
      });
    }
    if (masked && d > 0) {
      recorder.dispatch(kernels.backwardToken, {
        buffers,
        params: dims,
        constants,
        workgroups: grid1d(d, WG),
      });
    }
    if (!pos) dpos.dispose();
    if (!masked) dtoken.dispose();
    const grads = [dp, dcls, ...(pos ? [dpos] : []), ...(masked ? [dtoken] : [])];
    return grads.map((gi, i) => {
      if (!gi || inputs[i].requiresGrad) return gi;
      gi.dispose();
      return null;
    });
  });
}

/** The same from the general ops (the fused kernels' reference and their fallback). */
function composed(p: Tensor, cls: Tensor, pos: Tensor | null, masked: TokenMask | null): Tensor {
  const [n, d, t] = p.shape;
  let tokens = permute(p, [0, 2, 1]); // [N, T, D]
  if (masked) {
    const w = masked.mask.view([n, t, 1]);
    tokens = add(mul(tokens, affine(w, -1, 1)), mul(reshape(masked.token, [1, 1, d]), w));
  }
  const h = concat([broadcastTo(reshape(cls, [1, 1, d]), [n, 1, d]), tokens], 1);
  return pos ? add(h, reshape(pos, [1, t + 1, d])) : h;
}
