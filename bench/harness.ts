// Benchmark plumbing: each bench file exports `cases`; main.ts runs them and prints a table or,
// with --json, one JSON object per line ({name, ms, gflops | items_per_s, ...}).

import process from "node:process";
import { gpu } from "../lib/gpu/device.ts";
import { defineKernel } from "../lib/gpu/pipelines.ts";
import { Tensor, tidy } from "../lib/tensor/mod.ts";

export interface BenchResult {
  name: string;
  /** Milliseconds per iteration (GPU work included: timed between GPU syncs). */
  ms: number;
  gflops?: number;
  items_per_s?: number;
  [extra: string]: unknown;
}

export interface BenchCase {
  name: string;
  /** Heavier cases skipped by `--quick`. */
  slow?: boolean;
  run(): Promise<BenchResult>;
}

/** What `measureSteps` found: milliseconds, GPU dispatches and model FLOPs per call of the step. */
export interface StepMeasure {
  ms: number;
  /** Compute dispatches recorded per step (exact: the recorder's counter, not the profiler). */
  dispatches: number;
  /**
   * Process CPU time per step (user + system). On a software adapter the "GPU" runs in this
   * process, so on a shared, busy host this is steadier than `ms`.
   */
  cpu_ms: number;
  /** Model GFLOP per step: the products' multiply-adds × 2 (lib/tensor/ops/flops.ts). */
  gflop: number;
  /** Achieved model GFLOP/s: gflop per second of step (wall) time. */
  gflops: number;
  /** gflops ÷ ceiling_gflops: the step's share of the adapter's FMA ceiling. */
  efficiency: number;
  /** The adapter's FMA ceiling (GFLOP/s), measured in this process (see fmaCeiling). */
  ceiling_gflops: number;
}

/** Per call of a step: wall ms, dispatches, CPU ms and model FLOPs. */
interface StepCounts {
  ms: number;
  dispatches: number;
  cpu_ms: number;
  flops: number;
}

/**
 * Runs `step` (recorded in a scope and submitted) `warmup` untimed times, then in rounds until
 * `minMs` has passed (at least `minIters`), one GPU sync per round; returns its figures per call.
 */
async function countSteps(
  step: () => void,
  { warmup = 2, minIters = 3, minMs = 500, perRound = 1 } = {},
): Promise<StepCounts> {
  const recorder = gpu().recorder;
  // What a step returns (its losses) is released with its scope, as a training loop releases it
  // once read: kept, it would hold buffers the next step could otherwise reuse as it is.
  const once = () => tidy(() => void step());
  for (let i = 0; i < warmup; i++) once();
  await recorder.sync();
  let iters = 0;
  const [firstDispatch, firstFlops] = [recorder.dispatches, recorder.flops];
  const cpuBefore = process.cpuUsage();
  const start = performance.now();
  while (iters < minIters || performance.now() - start < minMs) {
    for (let i = 0; i < perRound; i++) {
      once();
      recorder.flush();
      iters++;
    }
    await recorder.sync();
  }
  const ms = (performance.now() - start) / iters;
  const cpu = process.cpuUsage(cpuBefore);
  return {
    ms,
    dispatches: (recorder.dispatches - firstDispatch) / iters,
    cpu_ms: (cpu.user + cpu.system) / 1000 / iters,
    flops: (recorder.flops - firstFlops) / iters,
  };
}

/**
 * Milliseconds, dispatches and model FLOPs per call of `step` (see countSteps), and the step's
 * efficiency against the adapter's FMA ceiling (measured once per process, after the step).
 */
export async function measureSteps(
  step: () => void,
  options: { warmup?: number; minIters?: number; minMs?: number; perRound?: number } = {},
): Promise<StepMeasure> {
  const { ms, dispatches, cpu_ms, flops } = await countSteps(step, options);
  const ceiling = (await fmaCeiling()).gflops;
  const rate = gflops(flops, ms);
  return {
    ms,
    dispatches,
    cpu_ms,
    gflop: flops / 1e9,
    gflops: rate,
    efficiency: rate / ceiling,
    ceiling_gflops: ceiling,
  };
}

/** Milliseconds per call of `step` (see countSteps). */
export async function timeSteps(
  step: () => void,
  options: { warmup?: number; minIters?: number; minMs?: number; perRound?: number } = {},
): Promise<number> {
  return (await countSteps(step, options)).ms;
}

export function gflops(flops: number, ms: number): number {
  return flops / (ms * 1e6);
}

/**
 * CPU time (ms, user + system) of the whole process (every thread, Workers included) and of the
 * calling (main) thread alone (node:process threadCpuUsage, 10 ms resolution here; null where it
 * is missing). With Workers, the main thread's share per item bounds the rate more workers can
 * reach, and the total per item shows what parallel work costs: figures that hold on a busy
 * machine, where wall time does not.
 */
export function cpuTimes(): { process: number; main: number | null } {
  const { user, system } = process.cpuUsage();
  const thread = (process as { threadCpuUsage?: () => { user: number; system: number } })
    .threadCpuUsage?.();
  return {
    process: (user + system) / 1000,
    main: thread ? (thread.user + thread.system) / 1000 : null,
  };
}

/**
 * The FMA ceiling of the adapter for a matmul-shaped kernel: every invocation keeps an 8 × 8 block
 * of accumulators (the block size that runs fastest on lavapipe) and updates it K times from values
 * it computes itself, with no memory loads at all, CEILING_UNROLL updates per loop iteration.
 * lavapipe pays a fixed cost per iteration of a loop that carries values (measured on one machine:
 * one update per iteration 20.5 GFLOP/s, 4 → 33, 8 → 38, 16 the same as 8), and the texture
 * matmuls do 4 k (tm·tn·4 FMAs) per iteration: with one update per iteration the "ceiling" was
 * below what the 24 × 24 kernels reach. No matmul kernel can beat this rate, since it also has to
 * load operands; on lavapipe it shows how close the kernels are to what the driver's code
 * generator allows.
 */
const CEILING_K = 1024;
const CEILING_UNROLL = 8;
const CEILING_WORKGROUPS = 64;
/** Rounds of 20 dispatches the ceiling is the fastest of. */
const CEILING_ROUNDS = 6;
/** One update of the ceiling kernel's block: 16 vec4 FMAs (64 FMAs per lane). */
const ceilingUpdate =
  [0, 1, 2, 3, 4, 5, 6, 7].map((r) =>
    `c${r}0 = fma(vec4f(a${r}), b0, c${r}0); c${r}1 = fma(vec4f(a${r}), b1, c${r}1); a${r} += 0.5;`
  ).join(" ") + " b0 += vec4f(0.25); b1 += vec4f(0.25);";
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
  for (var k = 0u; k < ${CEILING_K / CEILING_UNROLL}u; k++) {
    ${Array.from({ length: CEILING_UNROLL }, () => ceilingUpdate).join("\n    ")}
  }
  out[gid.x + gid.y * ${8 * CEILING_WORKGROUPS}u] = ${
    [0, 1, 2, 3, 4, 5, 6, 7].map((r) => `c${r}0 + c${r}1`).join(" + ")
  };
}`,
});

let ceiling: Promise<{ ms: number; gflops: number }> | null = null;

/**
 * Milliseconds per dispatch of the FMA ceiling kernel and its GFLOP/s, measured on the first call
 * in this process and cached: the "fma ceiling" case prints it, and every training step divides its
 * achieved rate by it (`efficiency`).
 */
export function fmaCeiling(): Promise<{ ms: number; gflops: number }> {
  return ceiling ??= (async () => {
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
      // Many dispatches per round: one sync costs ~10 ms of polling on lavapipe. The fastest of
      // several rounds, not their mean: a ceiling is the best case, and measured right after a
      // training step one mean read 43 GFLOP/s where the same process's rounds alone read ~90
      // (whatever else was running then halved the step's `efficiency`).
      let ms = Infinity;
      for (let round = 0; round < CEILING_ROUNDS; round++) {
        const roundMs = await timeSteps(step, {
          warmup: round === 0 ? 2 : 0,
          minIters: 20,
          minMs: 0,
          perRound: 20,
        });
        ms = Math.min(ms, roundMs);
      }
      return { ms, gflops: gflops(flops, ms) };
    } finally {
      out.dispose();
    }
  })();
}
