// Fine-tuning inside the evaluate stage (paper Table 1): a BeitClassifier, from a pretrain run's
// weights or from random initialisation, fine-tuned with the stage's shared budget (but for the
// layer-wise lr decay, which a run from scratch may have its own of) and the arm's seed, scored on
// the held-out images. A run keeps its checkpoint in the stage's folder (one file,
// replaced atomically, naming the run it holds) and, once finished, its result in
// `finetune/<run>.json`: a rerun of an interrupted stage skips finished runs and resumes the one
// the checkpoint holds, ending with the figures an uninterrupted run gives. With the stage's
// `stopAt` (--stop-at) a run stops after its first checkpoint at or after that step, as if killed,
// and leaves no result: the rerun resumes it.

import { join } from "node:path";
import type { ShardSet } from "../data/shards.ts";
import { writeJsonAtomic } from "../io/atomic.ts";
import { failer, reason } from "../io/errors.ts";
import { BeitClassifier, type BeitConfig } from "../models/beit.ts";
import { type CurvePoint, finetune, type FinetuneCheckpoint } from "../train/finetune.ts";
import {
  evalSetOf,
  type HostSet,
  type ImageSpec,
  type OnProgress,
  trainStream,
} from "./heldout.ts";
import { decodeOutcomes, encodeOutcomes } from "./outcomes.ts";
import { seedFor } from "./seeds.ts";

/** The folder of finished runs' results, inside the stage's folder. */
export const FINETUNE_RESULTS = "finetune";

export interface FinetuneBudget {
  steps: number;
  batch: number;
  lr: number;
  warmupSteps: number;
  /** Layer-wise lr decay of the runs from pretrained weights (and from scratch, by default). */
  layerDecay: number;
  /** Layer-wise lr decay of the runs from random initialisation; absent: `layerDecay`. */
  scratchLayerDecay?: number;
  labelSmoothing: number;
  dropPath: number;
  weightDecay: number;
  betas: [number, number];
  /** Checkpoint every N steps (a multiple of the log interval, 10). */
  checkpointEvery: number;
}

/** The layer-wise lr decay of a run of `budget`: pretrained (weights given) or from scratch. */
export function runLayerDecay(budget: FinetuneBudget, pretrained: boolean): number {
  return pretrained ? budget.layerDecay : budget.scratchLayerDecay ?? budget.layerDecay;
}

/** Steps between logged losses. */
const LOG_EVERY = 10;

export interface FinetuneRunResult {
  status: "done";
  accuracy: number;
  outcomes: Uint8Array;
  curve: CurvePoint[];
  /** Where the run came from this time: run, resumed at a step, or read back finished. */
  provenance: "run" | { resumedFrom: number } | "finished before";
}

/** A run stopped after a checkpoint (`FinetuneStage.stopAt`): no result; a rerun resumes it. */
export interface FinetuneRunStopped {
  status: "stopped";
  /** The step of the checkpoint it stopped after. */
  step: number;
  /** Where the run came from this time: run, or resumed at a step. */
  provenance: "run" | { resumedFrom: number };
}

export interface FinetuneRunSpec {
  /** The run's name, unique in the stage: "pretrained-1-lambda_1-seed-0", "scratch-seed-0". */
  name: string;
  vit: BeitConfig;
  spec: ImageSpec;
  /** The pretrained weights (a pretrain run's model file), or null: from scratch. */
  weights: string | null;
  /** The arm's seed: the head's initialisation, the batch order, the drop-path draws. */
  seed: number;
}

/** The stage's folder and fingerprint: where checkpoints and results go, which run they belong to. */
export interface FinetuneStage {
  name: string;
  out: string;
  fingerprint: string;
  checkpoint: string;
  /** Stop each run after its first checkpoint at or after this step, as if killed (--stop-at). */
  stopAt?: number;
}

/**
 * Fine-tunes one run (or reads back its finished result) and returns its held-out outcomes, or
 * status "stopped" when `stage.stopAt` stopped it after a checkpoint.
 */
export async function finetuneRun(
  run: FinetuneRunSpec,
  data: { shards: ShardSet; val: HostSet; evalImages: number; classes: number; evalBatch: number },
  budget: FinetuneBudget,
  stage: FinetuneStage,
  onProgress?: OnProgress,
): Promise<FinetuneRunResult | FinetuneRunStopped> {
  const fail: (what: string) => never = failer(`${stage.name}: fine-tune ${run.name}`);
  const resultFile = join(stage.out, FINETUNE_RESULTS, `${run.name}.json`);
  const finished = await readResult(resultFile, data.evalImages);
  if (finished) return finished;
  const seed = seedFor(run.seed, "finetune");
  const model = new BeitClassifier({ ...run.vit, dropPath: budget.dropPath }, data.classes, seed);
  try {
    if (run.weights) {
      try {
        await model.loadPretrained(run.weights);
      } catch (error) {
        fail(reason(error));
      }
    }
    const checkpoint: FinetuneCheckpoint = {
      path: stage.checkpoint,
      every: budget.checkpointEvery,
      stage: stage.name,
      fingerprint: stage.fingerprint,
      run: run.name,
      stopAt: stage.stopAt,
    };
    const result = await finetune(
      model,
      {
        train: trainStream(data.shards, budget.batch, seed, run.spec),
        val: evalSetOf(data.val, data.evalImages, run.spec),
      },
      {
        steps: budget.steps,
        lr: budget.lr,
        warmupSteps: budget.warmupSteps,
        weightDecay: budget.weightDecay,
        betas: budget.betas,
        layerDecay: runLayerDecay(budget, run.weights !== null),
        labelSmoothing: budget.labelSmoothing,
        logEvery: LOG_EVERY,
        evalEvery: Math.max(1, Math.floor(budget.steps / 2)),
        evalBatch: data.evalBatch,
        seed,
      },
      {
        layers: { numLayers: run.vit.depth, layerId: (n) => model.layerId(n) },
        onLog: (r) => onProgress?.(r.step, r.loss !== undefined ? { loss: r.loss } : {}),
        checkpoint,
      },
    );
    const provenance = result.resumedFrom ? { resumedFrom: result.resumedFrom } : "run" as const;
    if (result.status === "stopped") return { status: "stopped", step: result.step, provenance };
    await Deno.mkdir(join(stage.out, FINETUNE_RESULTS), { recursive: true });
    await writeJsonAtomic(resultFile, {
      run: run.name,
      accuracy: result.accuracy,
      outcomes: encodeOutcomes(result.outcomes),
      curve: result.curve,
    });
    return {
      status: "done",
      accuracy: result.accuracy,
      outcomes: result.outcomes,
      curve: result.curve,
      provenance,
    };
  } finally {
    model.dispose();
  }
}

/** The result of a run finished before an interruption, or null (none, or not of these images). */
async function readResult(path: string, images: number): Promise<FinetuneRunResult | null> {
  let saved: { accuracy?: unknown; outcomes?: unknown; curve?: unknown };
  try {
    saved = JSON.parse(await Deno.readTextFile(path));
  } catch {
    return null; // none yet (a stage folder is resumed only with its own fingerprint)
  }
  if (
    typeof saved.accuracy !== "number" || typeof saved.outcomes !== "string" ||
    saved.outcomes.length !== images || !Array.isArray(saved.curve)
  ) return null;
  const outcomes = Uint8Array.from(decodeOutcomes(saved.outcomes, path));
  return {
    status: "done",
    accuracy: saved.accuracy,
    outcomes,
    curve: saved.curve as CurvePoint[],
    provenance: "finished before",
  };
}

export { LOG_EVERY as FINETUNE_LOG_EVERY };
