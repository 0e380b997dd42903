// `deno task train-perceptual`: trains the built-in perceptual network (lib/models/moco.ts)
// self-supervised with MoCo v3 on a shard folder's train split, no labels used.
//
//   deno task train-perceptual --shards /tmp/mnist-shards --out runs/perceptual
//
// Each step draws two independent augmentations (random resized crop, flip, brightness/contrast
// jitter) of the same batch of images from streams of (seed, step), renders both views on the GPU
// (grey images repeated to 3 channels, scaled to [−1, 1]) and minimises the symmetric InfoNCE loss;
// then the momentum encoder follows the base one. Output folder (--out): checkpoint.safetensors
// (atomic, every --ckpt-every steps and at the end), metrics.jsonl, encoder.safetensors (the
// backbone with its config: `--perceptual builtin` of the tokenizer) and manifest.json, whose
// summary records a k-NN (k = 20, cosine, similarity-weighted votes) accuracy of the frozen
// features on the held-out split, the only use of labels, as a sanity check.
//
// A killed (or --stop-at) run resumes from its checkpoint when rerun with the same options and gives the same
// result as an uninterrupted run; a NaN/Inf loss stops the run, keeping the last good checkpoint.
// Least privilege as tasks/shard.ts: reads the shards and --out, writes only --out. The work is in
// lib/stages/train_perceptual.ts, the step and the k-NN monitor in lib/train/moco.ts.

import { join } from "node:path";
import { initGpu } from "../lib/tensor/engine.ts";
import { type StageAccess } from "../lib/cli/permissions.ts";
import { stageMain } from "../lib/cli/stage_main.ts";
import { beginStage, finishStage, type StageResult } from "../lib/cli/stage.ts";
import { moduleReadPaths } from "../lib/data/shard_reads.ts";
import { ENCODER_FILE } from "../lib/models/moco.ts";
import {
  trainPerceptualCommand,
  type TrainPerceptualOptions,
} from "../lib/stages/train_perceptual_options.ts";
import {
  openPerceptualData,
  resolvePerceptualOptions,
  TRAIN_PERCEPTUAL_STAGE as STAGE,
  trainPerceptual,
  type TrainPerceptualConfig,
} from "../lib/stages/train_perceptual.ts";

export { STAGE, trainPerceptualCommand, type TrainPerceptualConfig, type TrainPerceptualOptions };

export type TrainPerceptualResult = StageResult;

/**
 * What the stage needs: read the shards and its output folder, write its output folder; and read
 * the modules of its shard-reading Workers while they load (lib/io/worker_pool.ts).
 */
export function trainPerceptualAccess(o: TrainPerceptualOptions): StageAccess {
  const { shards, out } = resolvePerceptualOptions(o);
  return { read: [shards, out, ...moduleReadPaths()], write: [out] };
}

/** Runs the stage; throws one-line `peco: train-perceptual: …` Errors (or UsageError). */
export async function runTrainPerceptual(
  o: TrainPerceptualOptions,
  { log = (line: string) => console.error(line) } = {},
): Promise<TrainPerceptualResult> {
  const { shards, out, config } = resolvePerceptualOptions(o);
  const data = await openPerceptualData(shards, o);
  const run = await beginStage({
    name: STAGE,
    out,
    config,
    inputs: { shards },
    force: o.force ?? false,
    log,
  });
  if (run.status === "skip") return { status: "skip", out, summary: run.manifest.summary };
  await initGpu();
  const { status, summary } = await trainPerceptual(run, config, data, {
    quiet: o.quiet,
    stopAt: o["stop-at"],
    log,
  });
  if (status === "done") await finishStage(run, { summary });
  return { status, out, summary };
}

// ---- command line ---------------------------------------------------------------------------

if (import.meta.main) {
  await stageMain(import.meta.url, trainPerceptualCommand, {
    access: trainPerceptualAccess,
    run: (options) => runTrainPerceptual(options),
    describe: ({ status, out, summary }) => {
      if (status === "stopped") {
        return `${STAGE}: stopped after the checkpoint at step ${summary.step} in ${out}`;
      }
      const knn = summary.knn_accuracy;
      return `${STAGE}: ${status === "skip" ? "up to date" : "done"}: ${
        join(out, ENCODER_FILE)
      }; ` +
        `k-NN accuracy ${typeof knn === "number" ? `${(100 * knn).toFixed(1)}%` : "n/a"}; ` +
        `training ${Number(summary.train_seconds ?? 0).toFixed(1)} s`;
    },
  });
}
