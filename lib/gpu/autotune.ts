// Kernel-variant autotuner. An op with several kernel variants (block sizes, shared memory or not)
// asks `chooseVariant` which one to run for a shape class. The answer is, in order:
//   1. a variant forced with `forceVariant` (tests exercise every variant this way);
//   2. the winner of an earlier `tune` call for this adapter, op and shape class;
//   3. the op's own default (a per-adapter table: ops key it on `gpu().info.software`).
// Only `tune` runs kernels to time them (a few GPU-synced iterations per candidate, so it costs the
// compile time of every candidate): benchmarks and explicit calls tune, ordinary runs and tests use
// the defaults. Winners live in memory for the life of the process.
//
// Scores are the best of a few separately synced runs. On a software adapter (lavapipe) the score is
// the CPU time the process spent, not wall time: the "GPU" is this machine's cores, which other
// processes may share, and CPU time is what a variant actually costs there.

import process from "node:process";
import { gpu } from "./device.ts";

export interface Variant<C> {
  /** Unique among the op's variants; the key of forced and tuned choices. */
  readonly name: string;
  readonly config: C;
}

export interface TuneTiming {
  name: string;
  /** The score: best milliseconds per run (CPU time on software adapters, else wall time). */
  ms: number;
  /** Best wall-clock milliseconds per run, GPU work included. */
  wallMs: number;
  /** Best process CPU milliseconds per run. */
  cpuMs: number;
}

export interface TuneResult {
  op: string;
  shapeClass: string;
  winner: string;
  timings: TuneTiming[];
}

const winners = new Map<string, string>();
const forced = new Map<string, string>();

/** Identifies the adapter, so winners found on one never steer another. */
export function adapterKey(): string {
  const info = gpu().info;
  return [info.vendor, info.architecture, info.device, info.description].join("/");
}

function tableKey(op: string, shapeClass: string): string {
  return `${adapterKey()}|${op}|${shapeClass}`;
}

/** Makes `op` run the named variant for every shape (null: back to tuned/default choices). */
export function forceVariant(op: string, name: string | null): void {
  if (name === null) forced.delete(op);
  else forced.set(op, name);
}

/** The forced variant of `op`, if any. */
export function forcedVariant(op: string): string | undefined {
  return forced.get(op);
}

/** The variant to run: forced, else tuned for this shape class, else `fallback`. */
export function chooseVariant<C>(
  op: string,
  shapeClass: string,
  candidates: readonly Variant<C>[],
  fallback: Variant<C>,
): Variant<C> {
  const name = forced.get(op) ?? winners.get(tableKey(op, shapeClass));
  if (name === undefined) return fallback;
  const found = candidates.find((c) => c.name === name);
  if (!found) {
    throw new Error(
      `peco: ${op}: no variant "${name}" (have ${candidates.map((c) => c.name).join(", ")})`,
    );
  }
  return found;
}

/**
 * Times each candidate with `run` (which records its dispatches without allocating) and remembers
 * the fastest for this adapter, op and shape class. Each candidate first runs `warmup` times
 * untimed (pipeline compilation happens there), then `iters` times, each run synced on its own.
 */
export async function tune<C>(
  op: string,
  shapeClass: string,
  candidates: readonly Variant<C>[],
  run: (variant: Variant<C>) => void,
  { warmup = 1, iters = 3 } = {},
): Promise<TuneResult> {
  if (candidates.length === 0) throw new Error(`peco: ${op}: nothing to tune`);
  const recorder = gpu().recorder;
  const software = gpu().info.software;
  const cpuNow = () => {
    const usage = process.cpuUsage();
    return (usage.user + usage.system) / 1000;
  };
  const timings: TuneTiming[] = [];
  for (const candidate of candidates) {
    for (let i = 0; i < warmup; i++) run(candidate);
    await recorder.sync();
    let wallMs = Infinity;
    let cpuMs = Infinity;
    for (let i = 0; i < iters; i++) {
      const [wall0, cpu0] = [performance.now(), cpuNow()];
      run(candidate);
      await recorder.sync();
      wallMs = Math.min(wallMs, performance.now() - wall0);
      cpuMs = Math.min(cpuMs, cpuNow() - cpu0);
    }
    timings.push({ name: candidate.name, ms: software ? cpuMs : wallMs, wallMs, cpuMs });
  }
  const best = timings.reduce((a, b) => (b.ms < a.ms ? b : a));
  winners.set(tableKey(op, shapeClass), best.name);
  return { op, shapeClass, winner: best.name, timings };
}

/** Tuned winners of this process, keyed "op|shapeClass" (for reports and manifests). */
export function tunedWinners(): Record<string, string> {
  const prefix = adapterKey() + "|";
  const out: Record<string, string> = {};
  for (const [key, name] of winners) {
    if (key.startsWith(prefix)) out[key.slice(prefix.length)] = name;
  }
  return out;
}

/** Forgets every tuned winner (tests). */
export function clearTuned(): void {
  winners.clear();
}
