// Benchmark plumbing: each bench file exports `cases`; main.ts runs them and prints a table or,
// with --json, one JSON object per line ({name, ms, gflops | items_per_s, ...}).

import process from "node:process";
import { gpu } from "../lib/gpu/device.ts";
import { tidy } from "../lib/tensor/mod.ts";

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

/** What `measureSteps` found: milliseconds and GPU dispatches per call of the step. */
export interface StepMeasure {
  ms: number;
  /** Compute dispatches recorded per step (exact: the recorder's counter, not the profiler). */
  dispatches: number;
  /**
   * Process CPU time per step (user + system). On a software adapter the "GPU" runs in this
   * process, so on a shared, busy host this is steadier than `ms`.
   */
  cpu_ms: number;
}

/**
 * Milliseconds and dispatches per call of `step` (recorded in a scope and submitted): `warmup`
 * untimed calls, then calls in rounds until `minMs` has passed (at least `minIters`), one GPU sync
 * per round.
 */
export async function measureSteps(
  step: () => void,
  { warmup = 2, minIters = 3, minMs = 500, perRound = 1 } = {},
): Promise<StepMeasure> {
  const recorder = gpu().recorder;
  for (let i = 0; i < warmup; i++) tidy(step);
  await recorder.sync();
  let iters = 0;
  const firstDispatch = recorder.dispatches;
  const cpuBefore = process.cpuUsage();
  const start = performance.now();
  while (iters < minIters || performance.now() - start < minMs) {
    for (let i = 0; i < perRound; i++) {
      tidy(step);
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
  };
}

/** Milliseconds per call of `step` (see measureSteps). */
export async function timeSteps(
  step: () => void,
  options: { warmup?: number; minIters?: number; minMs?: number; perRound?: number } = {},
): Promise<number> {
  return (await measureSteps(step, options)).ms;
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
