// Matrix-multiply benchmarks: square sizes and the ViT-B projection shapes (197 tokens × batch 8).
// Each case first tunes its shape class (the candidates' timings come back in the result, so the
// variants are compared within one run), then times the tuned winner.

import process from "node:process";
import { type BenchCase, type BenchResult, fmaCeiling, gflops, timeSteps } from "./harness.ts";
import { gpu } from "../lib/gpu/device.ts";
import {
  defaultMatmulVariant,
  full,
  matmul,
  type MatmulOptions,
  tidy,
  tuneMatmul,
} from "../lib/tensor/mod.ts";

/**
 * `timeSteps` plus the process CPU time per step. On lavapipe the "GPU" is this machine's cores,
 * shared with whatever else runs: `gflops_cpu` (flops per CPU-second × cores) estimates the speed on
 * an otherwise idle machine, while `gflops` is what the wall clock saw.
 */
export async function timeWithCpu(
  step: () => void,
  flops: number,
): Promise<{ ms: number; gflops: number; cpu_ms: number; gflops_cpu: number }> {
  // One untimed call first: pipelines that compile on first use must not count as CPU time.
  tidy(step);
  await gpu().recorder.sync();
  let calls = 0;
  const before = process.cpuUsage();
  const ms = await timeSteps(() => {
    calls++;
    step();
  }, { warmup: 1, minIters: 2 });
  const used = process.cpuUsage(before);
  const cpuMs = (used.user + used.system) / 1000 / calls;
  const cores = navigator.hardwareConcurrency || 1;
  return { ms, gflops: gflops(flops, ms), cpu_ms: cpuMs, gflops_cpu: gflops(flops, cpuMs / cores) };
}

function matmulCase(
  name: string,
  M: number,
  N: number,
  K: number,
  options: MatmulOptions = {},
  slow = false,
): BenchCase {
  return {
    name,
    slow,
    async run(): Promise<BenchResult> {
      const aShape = options.transA ? [K, M] : [M, K];
      const bShape = options.transB ? [N, K] : [K, N];
      const tuned = await tuneMatmul(M, N, K, options);
      const a = full(aShape, 0.5);
      const b = full(bShape, -0.25);
      try {
        const timing = await timeWithCpu(() => matmul(a, b, options), 2 * M * N * K);
        return {
          name,
          ...timing,
          variant: tuned.winner,
          default_variant: defaultMatmulVariant(aShape, bShape, options),
          // Best wall / CPU milliseconds of each tuning candidate (the winner has the best score).
          candidates: Object.fromEntries(
            tuned.timings.map((
              t,
            ) => [t.name, { wall_ms: +t.wallMs.toFixed(1), cpu_ms: +t.cpuMs.toFixed(1) }]),
          ),
        };
      } finally {
        a.dispose();
        b.dispose();
      }
    },
  };
}

const ROWS = 197 * 8;

export const cases: BenchCase[] = [
  matmulCase("matmul 256³", 256, 256, 256),
  matmulCase("matmul 512³", 512, 512, 512),
  matmulCase("matmul 1024³", 1024, 1024, 1024, {}, true),
  // qkv projection of ViT-B: Y[1576×2304] = X[1576×768]·Wᵀ, and its two backward products.
  matmulCase(
    "matmul vit fwd Y = X·Wᵀ 1576×768·(2304×768)ᵀ",
    ROWS,
    2304,
    768,
    { transB: true },
    true,
  ),
  matmulCase("matmul vit bwd dX = dY·W 1576×2304·2304×768", ROWS, 768, 2304, {}, true),
  matmulCase(
    "matmul vit bwd dW = Xᵀ·dY (1576×768)ᵀ·1576×2304",
    768,
    2304,
    ROWS,
    { transA: true },
    true,
  ),
];

cases.push({
  name: "fma ceiling: 8×8 block per invocation, no loads",
  async run(): Promise<BenchResult> {
    const { ms, gflops } = await fmaCeiling();
    return { name: this.name, ms, gflops };
  },
});
