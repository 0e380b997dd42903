// The training loop every training stage runs (train-perceptual, train-tokenizer, pretrain) and
// fine-tuning (lib/train/finetune.ts). A stage supplies what differs — its data, its step, its
// held-out evaluation, the state its checkpoint holds — and the loop does what is the same for all
// of them:
//
// - resume: the checkpoint of an interrupted run (lib/train/checkpoint.ts) is loaded into the
//   state and the data resumes at the next step, so a resumed run equals an uninterrupted one bit
//   for bit (host randomness is drawn from (seed, step), never from a stream's position);
// - pending readbacks: each step's scalars stay on the GPU until the next log step and are read
//   then, all at once (one readback per log interval, not per step); the steps in between are
//   submitted (flushed) one by one;
// - NaN/Inf: every step's scalars are checked, and the first bad one stops the run with an error
//   naming the step and the last good checkpoint (CheckpointGuard), which is never overwritten;
// - metrics: one record per log step, every name snake_case: `step`, the mean of each term over the
//   interval, the stage's held-out numbers, `lr`, `images_per_s` and `peak_gpu_bytes`; with
//   `evalEvery`, the held-out numbers come at their own steps instead (a record of their own there
//   when it is not a log step);
// - atomic checkpoints every `ckptEvery` steps and at the end, carrying the last record, the
//   training seconds and what the stage asks to carry across a resume (a run without a checkpoint
//   file, e.g. a short classifier's, keeps none);
// - `stopAt`: stop after the first checkpoint at or after that step, as if killed (status
//   "stopped", no manifest: rerunning resumes);
// - the progress bar with its ETA and the run's common summary numbers.
//
// The loop knows nothing of files other than the checkpoint: its metrics and progress go to the
// sinks it is given (lib/cli/training.ts gives it metrics.jsonl and the terminal's bar).

import { flush, peakGpuBytes } from "../tensor/engine.ts";
import { readAll, type Tensor, tidy } from "../tensor/tensor.ts";
import type { Optimizer } from "../optim/optimizer.ts";
import {
  CheckpointGuard,
  type CheckpointMeta,
  loadCheckpoint,
  type TrainingState,
} from "./checkpoint.ts";

/** A batch of the stage's data: the loop only counts its images. */
export interface LoopBatch {
  n: number;
}

/** Where the data of each step comes from (lib/data/loader.ts's Loader is one). */
export interface LoopData<B extends LoopBatch> {
  stepsPerEpoch: number;
  /** The batches from step `step` of epoch `epoch` on. */
  batches(at: { epoch: number; step: number }): AsyncGenerator<B>;
}

/** The run the loop trains in (a StageRun of lib/cli/stage.ts is one). */
export interface LoopRun {
  /** The checkpoint file; null: the run keeps none (it starts afresh when rerun). */
  checkpoint: string | null;
  /** The stage fingerprint: a checkpoint only resumes the same run. */
  fingerprint: string;
  /** The checkpoint to resume from, or null for a fresh run. */
  resumeFrom: { step: number } | null;
}

/** One logged record: the step and named numbers. */
export type LoopRecord = { step: number } & Record<string, number>;

/** Where the loop's records and progress go. */
export interface LoopSinks {
  /** Opens the metrics for a run resuming after `resumeStep` (null: a fresh run). */
  openMetrics(resumeStep: number | null): Promise<{
    write(record: LoopRecord): Promise<void>;
    close(): void;
  }>;
  /** A progress display starting at step `first`. */
  progress(first: number): {
    update(done: number, shown: Record<string, number | string>): void;
    finish(shown: Record<string, number | string>): void;
  };
  log(line: string): void;
}

/** Sinks of a run whose records only go to `onRecord` (a run inside a stage, e.g. fine-tuning). */
export function recordSinks(onRecord: (record: LoopRecord) => void | Promise<void>): LoopSinks {
  return {
    openMetrics: () =>
      Promise.resolve({ write: async (record) => await onRecord(record), close: () => {} }),
    progress: () => ({ update: () => {}, finish: () => {} }),
    log: () => {},
  };
}

/** What a stage gives the loop. */
export interface TrainingLoop<B extends LoopBatch> {
  /** The stage's name, for messages and the checkpoint. */
  stage: string;
  steps: number;
  seed: number;
  /** The resolved config, recorded in the checkpoint. */
  config: unknown;
  logEvery: number;
  /** A multiple of logEvery. */
  ckptEvery: number;
  /** Stop after the first checkpoint at or after this step (tests of resuming). */
  stopAt?: number;
  /** What the checkpoint saves and restores (modules, optimizers, extra tensors). */
  state: TrainingState;
  /** Called after a checkpoint was loaded into `state` (e.g. derived state to rebuild). */
  restored?(meta: CheckpointMeta): Promise<void> | void;
  /** What else the checkpoint carries (its `carried`, read back in `restored`). */
  carry?(): Record<string, unknown>;
  data: LoopData<B>;
  /** The learning rate of each step, set on every optimizer before the step. */
  lr: { schedule(step: number): number; optimizers: Optimizer[] };
  /** The names of the scalars `step` returns, in order. */
  terms: readonly string[];
  /** Records one step on `batch` (called inside `tidy`): its scalars, named by `terms`. */
  step(batch: B, step: number): Tensor[];
  /** Held-out numbers (and others) logged at each log step after `step` steps. */
  evaluate?(step: number): Promise<Record<string, number>>;
  /** Evaluate every N steps and after the last instead of at each log step. */
  evalEvery?: number;
  /** Called after each checkpoint (e.g. an image grid). */
  checkpointed?(step: number): Promise<void>;
  /** What the progress bar shows of a record. */
  shown?(record: LoopRecord): Record<string, number | string>;
}

export interface LoopResult {
  status: "done" | "stopped";
  /** Steps done. */
  step: number;
  /** The last logged record, without its step (carried across a resume). */
  last: Record<string, number>;
  /** The numbers every stage's summary has. */
  summary: {
    steps: number;
    train_seconds: number;
    images_per_s: number;
    peak_gpu_bytes: number;
  };
}

/** The keys of the training seconds and images in a checkpoint's metrics (carried, not logged). */
const TRAIN_SECONDS = "train_seconds";
const TRAIN_IMAGES = "train_images";

/**
 * Trains `spec.steps` steps in `run` (resuming its checkpoint), writing records and checkpoints;
 * throws on a NaN/Inf with the last good checkpoint named.
 */
export async function trainLoop<B extends LoopBatch>(
  spec: TrainingLoop<B>,
  run: LoopRun,
  sinks: LoopSinks,
): Promise<LoopResult> {
  const { steps, stage } = spec;
  let meta: CheckpointMeta | null = null;
  if (run.resumeFrom) {
    if (run.checkpoint === null) throw new Error(`peco: ${stage}: resuming needs a checkpoint`);
    meta = await loadCheckpoint(run.checkpoint, spec.state);
    await spec.restored?.(meta);
  }
  const first = meta?.step ?? 0;
  const carried = { ...(meta?.metrics ?? {}) } as Record<string, number>;
  let trainSeconds = carried[TRAIN_SECONDS] ?? 0;
  let images = carried[TRAIN_IMAGES] ?? 0;
  delete carried[TRAIN_SECONDS];
  delete carried[TRAIN_IMAGES];
  let last: Record<string, number> = carried;
  const guard = new CheckpointGuard(stage, run.checkpoint ?? "", meta ? first : null);
  const metrics = await sinks.openMetrics(meta ? first : null);
  const progress = sinks.progress(first);
  const { stepsPerEpoch } = spec.data;
  const stream = spec.data.batches({
    epoch: Math.floor(first / stepsPerEpoch),
    step: first % stepsPerEpoch,
  });
  let pending: Tensor[][] = [];
  let intervalStart = performance.now();
  let intervalImages = 0;
  /** Whether the held-out numbers are measured after `done` steps (at log steps by default). */
  const evaluatesAt = (done: number, logStep: boolean) =>
    spec.evaluate !== undefined &&
    (spec.evalEvery === undefined ? logStep : done % spec.evalEvery === 0 || done === steps);
  /** The held-out numbers after `done` steps (not counted as training time). */
  const evaluate = async (done: number) => {
    const started = performance.now();
    const evaluated = await spec.evaluate!(done);
    intervalStart += performance.now() - started;
    return evaluated;
  };
  const result = (status: LoopResult["status"], step: number): LoopResult => ({
    status,
    step,
    last,
    summary: {
      steps,
      train_seconds: trainSeconds,
      images_per_s: images / Math.max(trainSeconds, 1e-9),
      peak_gpu_bytes: peakGpuBytes(),
    },
  });
  try {
    for (let step = first; step < steps; step++) {
      const next = await stream.next();
      if (next.done) throw new Error(`peco: ${stage}: the data ended at step ${step}`);
      const batch = next.value;
      const lr = spec.lr.schedule(step);
      for (const optimizer of spec.lr.optimizers) optimizer.lr = lr;
      pending.push(tidy(() => spec.step(batch, step)));
      intervalImages += batch.n;
      const done = step + 1;
      if (!(done % spec.logEvery === 0 || done === steps)) {
        flush();
        if (evaluatesAt(done, false)) {
          await metrics.write({ step: done, ...(await evaluate(done)) });
        }
        continue;
      }
      const interval = pending;
      pending = []; // readChecked disposes them, even when it throws
      const means = await readChecked(interval, spec.terms, done, guard);
      const seconds = (performance.now() - intervalStart) / 1000;
      trainSeconds += seconds;
      images += intervalImages;
      const evaluated = evaluatesAt(done, true) ? await evaluate(done) : {};
      last = {
        ...means,
        ...evaluated,
        lr,
        images_per_s: intervalImages / seconds,
        peak_gpu_bytes: peakGpuBytes(),
      };
      const record: LoopRecord = { step: done, ...last };
      await metrics.write(record);
      progress.update(done, spec.shown?.(record) ?? { loss: last.loss });
      if (run.checkpoint !== null && (done % spec.ckptEvery === 0 || done === steps)) {
        await guard.save(spec.state, {
          stage,
          fingerprint: run.fingerprint,
          step: done,
          epoch: Math.floor(done / stepsPerEpoch),
          seed: spec.seed,
          config: spec.config,
          metrics: { ...last, [TRAIN_SECONDS]: trainSeconds, [TRAIN_IMAGES]: images },
          ...(spec.carry ? { carried: spec.carry() } : {}),
        });
        await spec.checkpointed?.(done);
        if (spec.stopAt !== undefined && done >= spec.stopAt && done < steps) {
          sinks.log(`${stage}: stopped after the checkpoint at step ${done} (--stop-at)`);
          return result("stopped", done);
        }
      }
      intervalStart = performance.now();
      intervalImages = 0;
    }
  } finally {
    pending.forEach((ts) => ts.forEach((t) => t.dispose()));
    await stream.return(undefined);
    metrics.close();
  }
  const end = result("done", steps);
  progress.finish(spec.shown?.({ step: steps, ...last }) ?? { loss: last.loss });
  return end;
}

/**
 * Reads the scalars of every step since the last log (`pending[i][term]`, the steps ending at
 * `done`) in one readback and disposes them; checks each step's values, so that a NaN/Inf stops
 * the run naming the step it appeared at; returns each term's mean over the steps.
 */
async function readChecked(
  pending: Tensor[][],
  terms: readonly string[],
  done: number,
  guard: CheckpointGuard,
): Promise<Record<string, number>> {
  let values: Float32Array[];
  try {
    values = await readAll(pending.flat());
  } finally {
    pending.forEach((ts) => ts.forEach((t) => t.dispose()));
  }
  const n = pending.length;
  for (let j = 0; j < n; j++) {
    const step = done - n + 1 + j;
    guard.check(
      step,
      Object.fromEntries(terms.map((name, i) => [name, values[j * terms.length + i][0]])),
    );
  }
  const means: Record<string, number> = {};
  terms.forEach((name, i) => {
    let s = 0;
    for (let j = 0; j < n; j++) s += values[j * terms.length + i][0];
    means[name] = s / n;
  });
  return means;
}
