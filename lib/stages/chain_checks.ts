// The rules between a stage's options and its inputs, checked by the pipeline before any stage
// runs (tasks/pipeline.ts). The inputs do not exist yet, so each rule is applied to what the
// earlier stages' options imply: the shard options give the image size and channels (--size,
// --channels, MNIST's or a folder's defaults) and, for MNIST, the images per split; a tokenizer's
// preset gives its token grid. Files the options name that exist already (a perceptual network's
// weights) are checked as they are. Each rule is the very function the stage applies to its real
// inputs at its start (lib/stages/*_options.ts). A rule whose inputs the options do not imply
// (an image folder's number of images, an IDX file's size) is listed as deferred: the stage
// checks it when it starts.

import { resolve } from "node:path";
import type { PreparedStep, StepProblem } from "../cli/pipeline.ts";
import type { Problem } from "../cli/problems.ts";
import { tokenizerPreset } from "../models/tokenizer_config.ts";
import { shardCounts, shardGeometry, shardLabels, type ShardOptions } from "./shard_options.ts";
import {
  checkTrainPerceptualImages,
  type TrainPerceptualOptions,
} from "./train_perceptual_options.ts";
import {
  checkTrainTokenizerData,
  checkTrainTokenizerFiles,
  checkTrainTokenizerImages,
  tokenGridSide,
  type TrainTokenizerOptions,
} from "./train_tokenizer_options.ts";
import type { ExportCodebookOptions } from "./export_codebook_options.ts";
import {
  checkPretrainData,
  checkPretrainTokenCounts,
  type PretrainOptions,
  resolvePretrainGeometry,
} from "./pretrain_options.ts";
import {
  checkEvaluateData,
  checkEvaluateLabels,
  type EvaluateOptions,
} from "./evaluate_options.ts";

export interface ImpliedCheck {
  problems: StepProblem[];
  /** One line per rule left to the stage's start, naming the step and why. */
  deferred: string[];
}

/**
 * Applies the input rules of every step to what the earlier steps' options imply (`known`: the
 * problems the stages' own checks found).
 */
export function checkImpliedInputs(steps: PreparedStep[], known: StepProblem[]): ImpliedCheck {
  const problems: StepProblem[] = [];
  const deferred: string[] = [];
  // Steps with problems of their own are checked too (every problem at once), but a rule that
  // repeats one of their problems is not listed twice.
  const seen = new Set(known.map((k) => `${k.step.id}\n${k.problem.message}`));
  const shard = steps.find((s) => s.stage === "shard");
  if (!shard) return { problems, deferred };
  const shardOptions = shard.options as ShardOptions;
  const { size, channels } = shardGeometry(shardOptions);
  const counts = shardCounts(shardOptions);
  const implied = `as the shard options imply: ${size ?? "?"}×${size ?? "?"} images, ` +
    `${channels} channel${channels > 1 ? "s" : ""}` +
    (counts.train === null ? "" : `, ${counts.train} training images`);
  const report = (step: PreparedStep, found: Problem[], note = implied) => {
    for (const problem of found) {
      if (seen.has(`${step.id}\n${problem.message}`)) continue;
      const message = note ? `${problem.message} (${note})` : problem.message;
      problems.push({ step, problem: { ...problem, message } });
    }
  };
  const later = (step: PreparedStep, rule: string, until: string) =>
    deferred.push(`${step.id}: ${rule} (${until})`);
  const noSize = "the image size is known once shard has read the input";
  const noCount = "the number of images is known once shard has read the input";
  const noClasses = "a folder's classes are known once shard has read it";
  const byOut = (dir: unknown) => steps.find((s) => s.out === resolve(String(dir)));

  for (const step of steps) {
    try {
      checkStep(step);
    } catch {
      // Options the stage's own check refuses may throw here: those problems are listed already.
    }
  }
  return { problems, deferred };

  function checkStep(step: PreparedStep): void {
    if (step.stage === "train-perceptual") {
      const o = step.options as TrainPerceptualOptions;
      if (size === null) later(step, "images of at least 8×8", noSize);
      if (counts.train === null) later(step, "--batch vs the training images", noCount);
      if (size !== null) {
        const images = { height: size, width: size, train: counts.train };
        report(step, checkTrainPerceptualImages(o, images));
      }
    } else if (step.stage === "train-tokenizer") {
      const o = step.options as TrainTokenizerOptions;
      report(step, checkTrainTokenizerFiles(o), ""); // files that exist already: checked as they are
      if (size === null) later(step, "the image size vs the preset's downsample factor", noSize);
      else report(step, checkTrainTokenizerImages(o, { height: size, width: size }));
      if (counts.train === null) later(step, "--batch vs the training images", noCount);
      else report(step, checkTrainTokenizerData(o, counts.train));
    } else if (step.stage === "pretrain") {
      const o = step.options as PretrainOptions;
      const exported = byOut(step.args.tokenizer);
      const tokenizer = exported && byOut(exported.args.tokenizer);
      if (counts.train === null) later(step, "--batch vs the training images", noCount);
      else report(step, checkPretrainData(o, counts.train));
      if (size === null) {
        later(step, "the ViT's patch grid vs the tokenizer's token grid; the mask budget", noSize);
      } else if (tokenizer && steps.includes(tokenizer)) {
        const t = tokenizer.options as TrainTokenizerOptions;
        const grid = tokenGridSide(t, size);
        if (Number.isInteger(grid)) {
          const { problems: found } = resolvePretrainGeometry(o, {
            imageSize: size,
            channels,
            tokenGrid: [grid, grid],
            vocabSize: tokenizerPreset(t.preset).model.codebookSize ?? 1,
          });
          report(
            step,
            found,
            `${implied}; the ${t.preset} tokenizer preset makes ${grid}×${grid} tokens`,
          );
        }
      }
      if (o.tokens && exported && steps.includes(exported)) {
        const limit = (exported.options as ExportCodebookOptions).limit ?? Infinity;
        const tokens = {
          train: counts.train === null ? null : Math.min(counts.train, limit),
          val: counts.val === null ? null : Math.min(counts.val, limit),
        };
        if (counts.train === null && limit !== Infinity) {
          later(step, "--tokens: the token shards' records vs the images used", noCount);
        } else {
          report(
            step,
            checkPretrainTokenCounts(o, counts, tokens),
            `export-codebook's --limit ${limit === Infinity ? "(none)" : limit}`,
          );
        }
      }
    } else if (step.stage === "evaluate") {
      const o = step.options as EvaluateOptions;
      const labels = shardLabels(shardOptions);
      if (labels === null) later(step, "labelled shards with ≥ 2 classes", noClasses);
      else {
        const found = checkEvaluateLabels(labels.labelled, labels.classes);
        report(step, found, `the shard stage's --input ${shardOptions.input}`);
      }
      if (counts.train === null) {
        later(step, "the fine-tuning and classifier batches vs the training images", noCount);
      } else report(step, checkEvaluateData(o, counts.train));
    }
  }
}
