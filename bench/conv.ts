// Convolution at a VQ-VAE ResBlock's size: 3×3, N=16, 64 → 64 channels, 32×32, padding 1.
// Forward alone, and forward + backward (input and weight gradients: three convolutions' worth).
// The forward case also times the matmul of the same FLOPs (the convolution's GEMM shape,
// [O, C·9] · [C·9, N·H·W]) in the same run, so `vs_matmul` compares like with like on a busy host.
// Each case also times the implicit-GEMM path ("direct") and the im2col lowering in the same run:
// on software adapters the default ("auto") runs large convolutions as window products (the input
// packed into a texture the matmul reads its windows from) and the weight gradient through im2col.

import { type BenchCase, gflops, timeSteps } from "./harness.ts";
import {
  backward,
  conv2d,
  keep,
  matmul,
  mul,
  normal,
  sum,
  type Tensor,
  zeroGrad,
} from "../lib/tensor/mod.ts";
import { type ConvLowering, setConvLowering } from "../lib/tensor/ops/conv.ts";

function lowered<R>(mode: ConvLowering, fn: () => R): R {
  const previous = setConvLowering(mode);
  try {
    return fn();
  } finally {
    setConvLowering(previous);
  }
}

const N = 16, C = 64, O = 64, H = 32, W = 32, K = 3;
const FORWARD_FLOPS = 2 * N * O * C * K * K * H * W;
const shape = `3x3 N=${N} C=${C}->${O} ${H}x${W} pad 1`;

function inputs(): { x: Tensor; w: Tensor; b: Tensor; seed: Tensor } {
  return {
    x: keep(normal([N, C, H, W], 1)),
    w: keep(normal([O, C, K, K], 2, 0, 0.05)),
    b: keep(normal([O], 3)),
    seed: keep(normal([N, O, H, W], 4)),
  };
}

function release(ts: Record<string, Tensor>): void {
  for (const t of Object.values(ts)) {
    t.grad?.dispose();
    t.dispose();
  }
}

export const cases: BenchCase[] = [
  {
    name: `conv2d forward ${shape}`,
    async run() {
      const t = inputs();
      const a = keep(normal([O, C * K * K], 5));
      const b = keep(normal([C * K * K, N * H * W], 6));
      // Alternate the two and keep each one's best round: the host is shared and noisy.
      let ms = Infinity, matmulMs = Infinity, directMs = Infinity, im2colMs = Infinity;
      const conv = () => conv2d(t.x, t.w, t.b, { padding: 1 });
      for (let round = 0; round < 3; round++) {
        const options = { warmup: round === 0 ? 2 : 0, minIters: 2, minMs: 300 };
        ms = Math.min(ms, await timeSteps(conv, options));
        matmulMs = Math.min(matmulMs, await timeSteps(() => matmul(a, b), options));
        directMs = Math.min(directMs, await timeSteps(() => lowered("direct", conv), options));
        im2colMs = Math.min(im2colMs, await timeSteps(() => lowered("im2col", conv), options));
      }
      release({ ...t, a, b });
      const rate = gflops(FORWARD_FLOPS, ms);
      const matmulRate = gflops(FORWARD_FLOPS, matmulMs);
      return {
        name: this.name,
        ms,
        gflops: rate,
        matmul_equal_flops_gflops: matmulRate,
        vs_matmul: rate / matmulRate,
        direct_gflops: gflops(FORWARD_FLOPS, directMs),
        im2col_gflops: gflops(FORWARD_FLOPS, im2colMs),
      };
    },
  },
  {
    name: `conv2d forward+backward ${shape}`,
    async run() {
      const t = inputs();
      for (const p of [t.x, t.w, t.b]) p.requiresGrad = true;
      const step = () => {
        // The loss Σ seed·y seeds backward with a fixed, dense output gradient.
        backward(sum(mul(conv2d(t.x, t.w, t.b, { padding: 1 }), t.seed)));
        zeroGrad([t.x, t.w, t.b]);
      };
      let ms = Infinity, directMs = Infinity, im2colMs = Infinity;
      for (let round = 0; round < 2; round++) {
        const options = { warmup: round === 0 ? 1 : 0 };
        ms = Math.min(ms, await timeSteps(step, options));
        directMs = Math.min(directMs, await timeSteps(() => lowered("direct", step), options));
        im2colMs = Math.min(im2colMs, await timeSteps(() => lowered("im2col", step), options));
      }
      release(t);
      return {
        name: this.name,
        ms,
        gflops: gflops(3 * FORWARD_FLOPS, ms),
        direct_gflops: gflops(3 * FORWARD_FLOPS, directMs),
        im2col_gflops: gflops(3 * FORWARD_FLOPS, im2colMs),
      };
    },
  },
];
