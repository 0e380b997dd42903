// Attention benchmarks at ViT-B/16 size: batch 2, 197 tokens, 12 heads of 64. The forward counts
// 4·B·H·T²·D flops (q·kᵀ and p·v); forward + backward counts 3× that (4 more products of the same
// size in backward). The forward case also times one plain matmul of the same FLOPs (a cube of
// side ∛(flops / 2)) in alternating rounds, so `vs_matmul` compares like with like on a busy host.

import { type BenchCase, type BenchResult, gflops, timeSteps } from "./harness.ts";
import { timeWithCpu } from "./matmul.ts";
import {
  attention,
  backward,
  full,
  keep,
  matmul,
  matmulVariant,
  normal,
  ones,
  type Tensor,
  tuneMatmul,
  zeroGrad,
} from "../lib/tensor/mod.ts";

const [B, H, T, D] = [2, 12, 197, 64];
const FWD_FLOPS = 4 * B * H * T * T * D;

function inputs(requiresGrad: boolean): Tensor[] {
  return [0.01, -0.02, 0.03].map((v) => {
    const t = full([B, H, T, D], v);
    t.requiresGrad = requiresGrad;
    return t;
  });
}

/** Tunes the two forward products (batched over B·H) and names the variants they run. */
async function tuneAndName(): Promise<Record<string, string>> {
  await tuneMatmul(T, T, D, { transB: true, batch: B * H });
  await tuneMatmul(T, D, T, { batch: B * H });
  return {
    scores_variant: matmulVariant([B, H, T, D], [B, H, T, D], { transB: true }),
    values_variant: matmulVariant([B, H, T, T], [B, H, T, D]),
  };
}

function attentionCase(name: string, withBackward: boolean): BenchCase {
  return {
    name,
    slow: true,
    async run(): Promise<BenchResult> {
      const variants = await tuneAndName();
      const [q, k, v] = inputs(withBackward);
      const seed = ones([B, H, T, D]);
      try {
        const timing = await timeWithCpu(() => {
          const out = attention(q, k, v);
          if (withBackward) {
            zeroGrad([q, k, v]);
            backward(out, seed);
          }
        }, FWD_FLOPS * (withBackward ? 3 : 1));
        return {
          name,
          ...timing,
          ...variants,
          ...(withBackward ? {} : await versusMatmul(q, k, v)),
        };
      } finally {
        zeroGrad([q, k, v]);
        for (const t of [q, k, v, seed]) t.dispose();
      }
    },
  };
}

/**
 * Best-of-rounds rates of the attention forward and of a square matmul of equal FLOPs, timed in
 * alternation (the host is shared and noisy).
 */
async function versusMatmul(q: Tensor, k: Tensor, v: Tensor): Promise<Record<string, number>> {
  const side = Math.round(Math.cbrt(FWD_FLOPS / 2));
  await tuneMatmul(side, side, side);
  const a = keep(normal([side, side], 1));
  const b = keep(normal([side, side], 2));
  let attentionMs = Infinity, matmulMs = Infinity;
  try {
    for (let round = 0; round < 3; round++) {
      const options = { warmup: round === 0 ? 2 : 0, minIters: 2, minMs: 300 };
      attentionMs = Math.min(attentionMs, await timeSteps(() => attention(q, k, v), options));
      matmulMs = Math.min(matmulMs, await timeSteps(() => matmul(a, b), options));
    }
  } finally {
    a.dispose();
    b.dispose();
  }
  const rate = gflops(FWD_FLOPS, attentionMs);
  const matmulRate = gflops(2 * side ** 3, matmulMs);
  return {
    best_ms: attentionMs,
    matmul_side: side,
    matmul_equal_flops_gflops: matmulRate,
    vs_matmul: rate / matmulRate,
  };
}

export const cases: BenchCase[] = [
  attentionCase(`attention fwd B=${B} T=${T} H=${H} D=${D}`, false),
  attentionCase(`attention fwd+bwd B=${B} T=${T} H=${H} D=${D}`, true),
];
