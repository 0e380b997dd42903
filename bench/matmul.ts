// Matrix-multiply benchmarks: square sizes and the ViT-B projection shapes (197 tokens × batch 8).
// Each case first tunes its shape class (the candidates' timings come back in the result, so the
// variants are compared within one run), then times the tuned winner.

import process from "node:process";
import { type BenchCase, type BenchResult, gflops, timeSteps } from "./harness.ts";
import { gpu } from "../lib/gpu/device.ts";
import { defineKernel } from "../lib/gpu/pipelines.ts";
import {
  defaultMatmulVariant,
  full,
  matmul,
  type MatmulOptions,
  Tensor,
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

/**
 * The FMA ceiling of the adapter for a matmul-shaped kernel: every invocation keeps an 8 × 8 block
 * of accumulators (the block size that runs fastest on lavapipe) and updates it K times from values
 * it computes itself, with no memory loads at all. No matmul kernel can beat this rate, since it
 * also has to load operands; on lavapipe it shows how close the texture kernels are to what the
 * driver's code generator allows.
 */
const CEILING_K = 1024;
const CEILING_WORKGROUPS = 64;
const ceilingKernel = defineKernel({
  name: "bench_fma_ceiling",
  params: false,
  bindings: ["write"],
  source: /* wgsl */ `
@group(0) @binding(0) var<storage, read_write> out: array<vec4f>;
@compute @workgroup_size(8, 8)
fn main(@builtin(local_invocation_id) lid: vec3u, @builtin(global_invocation_id) gid: vec3u) {
  ${[0, 1, 2, 3, 4, 5, 6, 7].map((r) => `var a${r} = f32(lid.x + ${r}u);`).join(" ")}
  var b0 = vec4f(f32(lid.y), 1.0, 2.0, 3.0);
  var b1 = vec4f(f32(lid.y), 4.0, 5.0, 6.0);
  ${
    [0, 1, 2, 3, 4, 5, 6, 7].map((r) => `var c${r}0 = vec4f(0.0); var c${r}1 = vec4f(0.0);`).join(
      "\n  ",
    )
  }
  for (var k = 0u; k < ${CEILING_K}u; k++) {
    ${
    [0, 1, 2, 3, 4, 5, 6, 7].map((r) =>
      `c${r}0 = fma(vec4f(a${r}), b0, c${r}0); c${r}1 = fma(vec4f(a${r}), b1, c${r}1); a${r} += 0.5;`
    ).join("\n    ")
  }
    b0 += vec4f(0.25);
    b1 += vec4f(0.25);
  }
  out[gid.x + gid.y * ${8 * CEILING_WORKGROUPS}u] = ${
    [0, 1, 2, 3, 4, 5, 6, 7].map((r) => `c${r}0 + c${r}1`).join(" + ")
  };
}`,
});

cases.push({
  name: "fma ceiling: 8×8 block per invocation, no loads",
  async run(): Promise<BenchResult> {
    const lanes = 64 * CEILING_WORKGROUPS;
    const out = new Tensor([lanes * 4], "f32");
    try {
      const flops = 2 * lanes * CEILING_K * 64;
      const step = () => {
        gpu().recorder.dispatch(ceilingKernel, {
          buffers: [out.buffer],
          workgroups: [CEILING_WORKGROUPS, 1],
        });
      };
      // Many dispatches per round: one sync costs ~10 ms of polling on lavapipe.
      const ms = await timeSteps(step, { warmup: 2, minIters: 40, minMs: 500, perRound: 20 });
      return { name: this.name, ms, gflops: gflops(flops, ms) };
    } finally {
      out.dispose();
    }
  },
});
