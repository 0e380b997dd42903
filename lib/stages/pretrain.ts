// The pretrain stage's work (tasks/pretrain.ts is its command line): its inputs opened and checked,
// its config resolved, and its training — BEiT's masked image modelling over the tokenizer's codes
// (lib/train/mim.ts) — run by the training loop (lib/train/loop.ts) with a fixed held-out set.

import { join, resolve } from "node:path";
import { adapterInfo, initGpu } from "../tensor/engine.ts";
import { failer, MANIFEST_FILE, type StageRun } from "../cli/stage.ts";
import { type TrainingOptions, type TrainingOutcome, trainStage } from "../cli/training.ts";
import { openTokenShards, type TokenSplit } from "../data/token_shards.ts";
import { Loader } from "../data/loader.ts";
import { type ClosableRecordSource, trainingSource } from "../data/shard_reads.ts";
import { hostImageViews, type ViewSpec } from "../data/augment.ts";
import { sha256File } from "../io/hash.ts";
import {
  Beit,
  BEIT_MODEL_FILE,
  type BeitConfig,
  type BeitImageSpec,
  type BeitPresetName,
  saveBeit,
} from "../models/beit.ts";
import { Tokenizer, TOKENIZER_FILE } from "../models/tokenizer.ts";
import { CodeUsage } from "../models/quantizer.ts";
import { AdamW, paramGroups, warmupCosine } from "../optim/mod.ts";
import { Rng } from "../tensor/init.ts";
import { readAll, tensor } from "../tensor/mod.ts";
import type { TrainingState } from "../train/checkpoint.ts";
import {
  checkPretrainData,
  checkPretrainTokenCounts,
  type PretrainOptions,
  resolvePretrainGeometry,
} from "./pretrain_options.ts";
import { openStageShards } from "./stage_shards.ts";
import {
  augmentConfig,
  type AugmentMode,
  HeldOutSet,
  maskedPositions,
  maskingGenerator,
  type MaskSpec,
  MIM_STEP_TERMS,
  mimStep,
  mostFrequent,
  PRETRAIN_TRAIN_PRESETS,
  type PretrainTrainConfig,
} from "../train/mim.ts";

export const PRETRAIN_STAGE = "pretrain";
const STAGE = PRETRAIN_STAGE;
const TOKENS_DIR = "tokens";
/** The ViT's input normalisation: [0, 1] → [−1, 1] per channel (as the tokenizer's). */
const SIGNED_NORM = 0.5;

/** The resolved, fingerprinted config of a run. */
export interface PretrainConfig {
  preset: BeitPresetName;
  model: BeitConfig;
  /** How the ViT's input is made from the shard images. */
  image: BeitImageSpec;
  train: PretrainTrainConfig;
  mask: MaskSpec;
  /** Targets from the export folder's token shards (true) or the tokenizer on the GPU. */
  tokens: boolean;
  seed: number;
  limit: number | null;
  eval: { images: number; logEvery: number; ckptEvery: number };
}

const fail = failer(STAGE);

/** Opens and checks every input; nothing is trained or written before this passes. */
export async function openPretrainInputs(o: PretrainOptions) {
  const shards = await openStageShards(STAGE, o.shards, {
    splits: ["train", "val"],
    check: ({ splits }) => checkPretrainData(o, splits.train.count),
  });
  const exportDir = resolve(o.tokenizer);
  try {
    await Deno.stat(join(exportDir, MANIFEST_FILE));
  } catch (error) {
    fail(
      error instanceof Deno.errors.NotFound
        ? `--tokenizer ${exportDir} has no ${MANIFEST_FILE} (not a finished export-codebook folder)`
        : `--tokenizer ${exportDir}: cannot read ${MANIFEST_FILE} (${(error as Error).message})`,
    );
  }
  const { channels, height, width } = shards.manifest.image;
  if (height !== width) fail(`--shards ${shards.dir}: images are ${height}×${width}, not square`);
  let tokenizer: Tokenizer | null = null;
  let tokenGrid: [number, number];
  let codebookSize: number;
  let tokenizerImage: { channels: number; size: number; mean: number[]; std: number[] } | null =
    null;
  let trainTokens: TokenSplit | null = null;
  let valTokens: TokenSplit | null = null;
  if (o.tokens) {
    const dir = join(exportDir, TOKENS_DIR);
    let set;
    try {
      set = await openTokenShards(dir);
    } catch (error) {
      return fail("--tokenizer", error);
    }
    const shardsHash = (await sha256File(join(shards.dir, MANIFEST_FILE))).sha256;
    if (set.manifest.source.shardsManifestSha256 !== shardsHash) {
      fail(
        `token shards ${dir} were made from another data set: their source shards manifest ` +
          `sha256 ${set.manifest.source.shardsManifestSha256.slice(0, 12)}… ≠ --shards ` +
          `${join(shards.dir, MANIFEST_FILE)} ${shardsHash.slice(0, 12)}…`,
      );
    }
    // Token shards hold the first images of each split (all of them, or export's --limit):
    // enough for the training images used (--limit) and the held-out set.
    const problems = checkPretrainTokenCounts(
      o,
      { train: shards.splits.train.count, val: shards.splits.val.count },
      { train: set.splits.train?.count ?? 0, val: set.splits.val?.count ?? 0 },
    );
    if (problems.length) fail(`token shards ${dir}: ${problems[0].message}`);
    trainTokens = set.splits.train;
    valTokens = set.splits.val;
    tokenGrid = [...set.manifest.grid];
    codebookSize = set.manifest.codebookSize;
  } else {
    const path = join(exportDir, TOKENIZER_FILE);
    try {
      await Deno.stat(path);
    } catch (error) {
      fail(
        error instanceof Deno.errors.NotFound
          ? `--tokenizer ${exportDir} has no ${TOKENIZER_FILE}`
          : `--tokenizer ${exportDir}: cannot read ${TOKENIZER_FILE} (${(error as Error).message})`,
      );
    }
    await initGpu();
    try {
      tokenizer = await Tokenizer.load(path);
    } catch (error) {
      return fail("--tokenizer", error);
    }
    tokenGrid = [...tokenizer.info.grid];
    codebookSize = tokenizer.info.codebookSize;
    tokenizerImage = tokenizer.info.image;
    if (tokenizerImage.channels !== channels) {
      tokenizer.dispose();
      fail(
        `tokenizer ${path} takes ${tokenizerImage.channels}-channel images, --shards holds ` +
          `${channels}-channel images`,
      );
    }
  }
  return {
    shards,
    image: { channels, size: height },
    exportDir,
    tokenizer,
    tokenizerImage,
    trainTokens,
    valTokens,
    tokenGrid,
    codebookSize,
  };
}

/** The opened inputs of a run (the tokenizer is on the GPU unless --tokens). */
export type OpenedPretrainInputs = Awaited<ReturnType<typeof openPretrainInputs>>;

/** The run's config from the preset, the command line and the inputs; the grids must agree. */
export function resolvePretrainConfig(
  o: PretrainOptions,
  inputs: OpenedPretrainInputs,
): PretrainConfig {
  const preset = o.preset as BeitPresetName;
  const defaults = PRETRAIN_TRAIN_PRESETS[preset];
  const { geometry, problems } = resolvePretrainGeometry(o, {
    imageSize: inputs.image.size,
    channels: inputs.image.channels,
    tokenGrid: inputs.tokenGrid,
    vocabSize: inputs.codebookSize,
  });
  if (!geometry) return fail(`${problems[0].message} (--tokenizer ${inputs.exportDir})`);
  const { model, mask } = geometry;
  const imageSize = model.imageSize;
  const steps = o.steps ?? defaults.steps;
  const train: PretrainTrainConfig = {
    ...defaults,
    steps,
    batch: o.batch ?? defaults.batch,
    lr: o.lr ?? defaults.lr,
    warmupSteps: Math.min(o.warmup ?? defaults.warmupSteps, Math.floor(steps / 2)),
    augment: (o.augment as AugmentMode | undefined) ?? defaults.augment,
  };
  const c = inputs.image.channels;
  return {
    preset,
    model,
    image: {
      channels: c,
      size: imageSize,
      mean: new Array(c).fill(SIGNED_NORM),
      std: new Array(c).fill(SIGNED_NORM),
    },
    train,
    mask,
    tokens: o.tokens ?? false,
    seed: o.seed,
    limit: o.limit ?? null,
    eval: { images: o["eval-images"], logEvery: o["log-every"], ckptEvery: o["ckpt-every"] },
  };
}

/** Code ids of records (global numbers in storage order) from token shards held in memory. */
function tokenLookup(ids: Uint32Array, tokens: number) {
  return (records: Uint32Array): Int32Array => {
    const out = new Int32Array(records.length * tokens);
    records.forEach((r, i) => out.set(ids.subarray(r * tokens, (r + 1) * tokens), i * tokens));
    return out;
  };
}

/**
 * Trains the ViT in `run` (resuming its checkpoint) and writes model.safetensors: the summary of a
 * finished run, or status "stopped" (--stop-at).
 */
export async function trainPretrain(
  run: StageRun,
  config: PretrainConfig,
  inputs: OpenedPretrainInputs,
  { quiet = false, stopAt, log }: TrainingOptions,
): Promise<TrainingOutcome> {
  const { train, model: modelConfig, seed } = config;
  const { shards, tokenizer } = inputs;
  const model = new Beit(modelConfig, seed);
  const groups = paramGroups(model.namedParameters(), { weightDecay: train.weightDecay });
  const optimizer = new AdamW(groups, {
    lr: train.lr,
    betas: train.betas,
    weightDecay: train.weightDecay,
  });
  const histogram = new CodeUsage(modelConfig.vocabSize);
  const state: TrainingState = {
    modules: { model },
    optimizers: { optim: optimizer },
    tensors: { stats: { code_counts: histogram.counts } },
  };
  let heldOut: HeldOutSet | null = null;
  let source: ClosableRecordSource | null = null;
  try {
    const grid = model.grid;
    const tokensPerImage = grid[0] * grid[1];
    const masking = maskingGenerator(grid, config.mask);
    source = await trainingSource(shards.splits.train, config.limit);
    const augment = augmentConfig(train.augment);
    const loader = new Loader(source, { batchSize: train.batch, seed, augment, masking });
    const views: ViewSpec[] = [{
      height: modelConfig.imageSize,
      width: modelConfig.imageSize,
      mean: config.image.mean,
      std: config.image.std,
    }];
    if (tokenizer) {
      const ti = tokenizer.info.image;
      views.push({ height: ti.size, width: ti.size, mean: ti.mean, std: ti.std });
    }
    const trainIds = inputs.trainTokens
      ? (await inputs.trainTokens.read(
        0,
        Math.min(config.limit ?? Infinity, inputs.trainTokens.count),
      )).ids
      : null;
    const lookup = trainIds ? tokenLookup(trainIds, tokensPerImage) : null;
    const evalSet = heldOut = await buildHeldOut(config, inputs, views, masking, tokensPerImage);
    log(
      `${STAGE}: ${adapterInfo().description}; BEiT ${model.numParameters()} parameters ` +
        `(dim ${modelConfig.dim}, depth ${modelConfig.depth}, heads ${modelConfig.heads}), ` +
        `${modelConfig.imageSize}² → ${grid.join("×")} patches, K = ${modelConfig.vocabSize}, ` +
        `mask ${config.mask.budget} patches (min block ${config.mask.minBlock}), targets from ${
          lookup ? "token shards" : "the tokenizer"
        }; ${train.steps} steps of ${train.batch}; held-out ${evalSet.images} images` +
        (run.resumeFrom ? `; resuming at step ${run.resumeFrom.step}` : ""),
    );
    const dropRng = new Rng(seed).fork("drop path");
    const stepContext = { model, optimizer, clipNorm: train.clipNorm, histogram };
    model.train();
    const result = await trainStage(run, {
      stage: STAGE,
      steps: train.steps,
      seed,
      config,
      logEvery: config.eval.logEvery,
      ckptEvery: config.eval.ckptEvery,
      stopAt,
      state,
      data: loader,
      lr: {
        schedule: warmupCosine({
          baseLr: train.lr,
          warmupSteps: train.warmupSteps,
          totalSteps: train.steps,
        }),
        optimizers: [optimizer],
      },
      terms: MIM_STEP_TERMS,
      step(batch, step) {
        const positions = maskedPositions(batch.masks!);
        if (positions.length === 0) {
          fail(`step ${step}: the masks of the batch cover no patch (check --min-block)`);
        }
        model.dropSeed = dropRng.fork(`step ${step}`).next();
        const gb = loader.toGpu(batch, views);
        const codes = lookup
          ? tensor(lookup(batch.records), [batch.n, tokensPerImage], "i32")
          : tokenizer!.encode(gb.views[1]);
        const maskedIndex = tensor(positions, [positions.length], "i32");
        return mimStep(stepContext, gb.views[0], gb.masks!, maskedIndex, codes);
      },
      async evaluate() {
        const ev = await evalSet.evaluate(model);
        const [counts] = await readAll([histogram.counts]);
        const top = mostFrequent(counts);
        return {
          eval_loss: ev.loss,
          eval_accuracy: ev.accuracy,
          baseline_accuracy: evalSet.baseline(top.code),
          top_code: top.code,
          top_code_share: top.share,
        };
      },
      shown: (r) => ({
        loss: r.loss,
        acc: r.accuracy.toFixed(3),
        "held-out acc": r.eval_accuracy.toFixed(3),
        baseline: r.baseline_accuracy.toFixed(3),
      }),
    }, { quiet, log });
    if (result.status === "stopped") {
      return { status: "stopped", summary: { step: result.step, ...result.last } };
    }
    await saveBeit(model, join(run.out, BEIT_MODEL_FILE), config.image, {
      "peco.stage": STAGE,
      "peco.fingerprint": run.fingerprint,
    });
    const { last } = result;
    return {
      status: "done",
      summary: {
        loss: last.loss,
        accuracy: last.accuracy,
        eval_loss: last.eval_loss,
        eval_accuracy: last.eval_accuracy,
        baseline_accuracy: last.baseline_accuracy,
        ln_k: Math.log(modelConfig.vocabSize),
        parameters: model.numParameters(),
        eval_images: evalSet.images,
        eval_masked_patches: evalSet.maskedPatches,
        ...result.summary,
      },
    };
  } finally {
    source?.close();
    heldOut?.dispose();
    histogram.dispose();
    model.dispose();
    optimizer.dispose();
  }
}

/**
 * The fixed held-out set: the first --eval-images val images, whole (no augmentation) at each
 * view's size, masks from a seeded stream, and their targets (tokenizer codes or token shards).
 */
async function buildHeldOut(
  config: PretrainConfig,
  inputs: OpenedPretrainInputs,
  views: ViewSpec[],
  masking: ReturnType<typeof maskingGenerator>,
  tokensPerImage: number,
): Promise<HeldOutSet> {
  const val = inputs.shards.splits.val;
  const count = Math.min(config.eval.images, val.count);
  const b = await val.readRange(0, count);
  const ids = inputs.valTokens ? (await inputs.valTokens.read(0, count)).ids : null;
  const rng = new Rng(config.seed).fork("held-out masks");
  const { channels: c, height: h, width: w } = val;
  const chunks = [];
  for (let from = 0; from < count; from += config.train.batch) {
    const n = Math.min(count, from + config.train.batch) - from;
    const [x, tokView] = hostImageViews(b.pixels, [c, h, w], from, from + n, views);
    const codes = ids
      ? tensor(ids.subarray(from * tokensPerImage, (from + n) * tokensPerImage), [
        n,
        tokensPerImage,
      ], "i32")
      : inputs.tokenizer!.encode(tokView);
    tokView?.dispose();
    chunks.push({ x, masks: masking.generateBatch(rng.fork(`chunk ${from}`), n), codes });
  }
  return await HeldOutSet.build(chunks);
}
