// A training stage's run of the loop (lib/train/loop.ts): its records go to metrics.jsonl in the
// stage's folder, its progress to the terminal's bar, its messages to the stage's log.

import { join } from "node:path";
import {
  type LoopBatch,
  type LoopResult,
  type LoopSinks,
  type TrainingLoop,
  trainLoop,
} from "../train/loop.ts";
import { METRICS_FILE, MetricsWriter } from "./metrics.ts";
import { Progress } from "./progress.ts";
import type { StageRun } from "./stage.ts";

/** How a stage's training runs: no progress bar, stop after a checkpoint (--stop-at), its log. */
export interface TrainingOptions {
  quiet?: boolean;
  stopAt?: number;
  log: (line: string) => void;
}

/** What a stage's training gives back: a finished run's summary, or the last record when stopped. */
export interface TrainingOutcome {
  status: "done" | "stopped";
  summary: Record<string, unknown>;
}

/** Where a stage's loop writes: metrics.jsonl in `run.out`, a progress bar labelled `label`. */
export function stageSinks(
  run: { out: string },
  { label, total, quiet = false, log }: {
    label: string;
    total: number;
    quiet?: boolean;
    log: (line: string) => void;
  },
): LoopSinks {
  return {
    openMetrics: (resumeStep) => MetricsWriter.open(join(run.out, METRICS_FILE), resumeStep),
    progress: (first) => new Progress({ label, total, unit: "step", quiet, first }),
    log,
  };
}

/** Runs the loop of a stage in its folder (resuming its checkpoint). */
export function trainStage<B extends LoopBatch>(
  run: StageRun,
  spec: TrainingLoop<B>,
  options: { label?: string; quiet?: boolean; log: (line: string) => void },
): Promise<LoopResult> {
  const sinks = stageSinks(run, {
    label: options.label ?? spec.stage,
    total: spec.steps,
    quiet: options.quiet,
    log: options.log,
  });
  return trainLoop(spec, run, sinks);
}
