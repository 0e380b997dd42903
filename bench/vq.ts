// Vector-quantisation ops at the tokenizer's per-step size: nearest code search and the per-code
// statistics of its assignment (rows per second).

import { type BenchCase, gflops, timeSteps } from "./harness.ts";
import { codeStats, keep, nearestCode, normal } from "../lib/tensor/mod.ts";

const N = 16384;
const K = 1024;
const D = 64;

export const cases: BenchCase[] = [
  {
    name: `vq nearestCode N=${N} K=${K} D=${D}`,
    async run() {
      const z = keep(normal([N, D], 1));
      const codebook = keep(normal([K, D], 2));
      const ms = await timeSteps(() => nearestCode(z, codebook), { warmup: 1, minIters: 3 });
      z.dispose();
      codebook.dispose();
      // The search is a [N, D] × [D, K] product: 2·N·K·D flops.
      return {
        name: this.name,
        ms,
        items_per_s: N / (ms / 1e3),
        gflops: gflops(2 * N * K * D, ms),
      };
    },
  },
  {
    name: `vq codeStats N=${N} K=${K} D=${D}`,
    async run() {
      const z = keep(normal([N, D], 3));
      const codebook = keep(normal([K, D], 4));
      // A realistic assignment: the nearest codes of z.
      const indices = keep(nearestCode(z, codebook).indices);
      // Several calls per GPU sync: one sync costs about as much as a call here.
      const ms = await timeSteps(() => codeStats(indices, z, K), { perRound: 8 });
      for (const t of [z, codebook, indices]) t.dispose();
      return { name: this.name, ms, items_per_s: N / (ms / 1e3) };
    },
  },
];
