// The train-tokenizer stage's work (tasks/train_tokenizer.ts is its command line): its inputs
// opened and checked (shards, the perceptual network and its weights), its config resolved, and its
// training — the step of lib/train/tokenizer_step.ts (pixel + λ·perceptual + quantizer loss, and
// the adversarial term when asked) — run by the training loop (lib/train/loop.ts), evaluated on a
// fixed held-out set (PSNR, codebook usage, perplexity) at each log step, with an image grid
// (held-out input | reconstruction) at each checkpoint.

import { join, resolve } from "node:path";
import { adapterInfo } from "../tensor/engine.ts";
import { failer, MANIFEST_FILE, reason, stageFingerprint, type StageRun } from "../cli/stage.ts";
import { type TrainingOptions, type TrainingOutcome, trainStage } from "../cli/training.ts";
import type { ShardSet, SplitReader } from "../data/shards.ts";
import { Loader } from "../data/loader.ts";
import { trainingSource } from "../data/shard_reads.ts";
import { hostImageViews, type ViewSpec } from "../data/augment.ts";
import type { TrainingState } from "../train/checkpoint.ts";
import { sha256File, sha256Hex } from "../io/hash.ts";
import { writeImageGrid } from "../io/png.ts";
import {
  loadPerceptualNet,
  PERCEPTUAL_KINDS,
  type PerceptualKind,
  type PerceptualModule,
  summarizeNames,
} from "../models/perceptual/mod.ts";
import { loadBuiltinPerceptual } from "../models/moco.ts";
import { discriminatorLayersFor, PatchDiscriminator } from "../models/discriminator.ts";
import { CodeUsage, distinctCodes, type QuantizerKind } from "../models/quantizer.ts";
import { presetVqVaeConfig, type TokenizerPreset } from "../models/tokenizer_config.ts";
import { resolveVqVaeConfig, VqVae } from "../models/vqvae.ts";
import { Adam, warmupCosine } from "../optim/mod.ts";
import { noGrad, readAll, type Tensor, tidy } from "../tensor/mod.ts";
import { meanPsnr, perImageMse } from "../train/psnr.ts";
import { tokenizerStep, tokenizerStepTerms } from "../train/tokenizer_step.ts";
import {
  checkTrainTokenizerData,
  checkTrainTokenizerFiles,
  checkTrainTokenizerImages,
  type TrainTokenizerOptions,
} from "./train_tokenizer_options.ts";
import { openStageShards } from "./stage_shards.ts";

export const TRAIN_TOKENIZER_STAGE = "train-tokenizer";
const STAGE = TRAIN_TOKENIZER_STAGE;
/** Images in [−1, 1]: (x/255 − 0.5) / 0.5 per channel. */
const SIGNED = [0.5, 0.5, 0.5];

/** The resolved, fingerprinted config of a run (no paths of outputs, no test-only switches). */
export interface TrainTokenizerConfig {
  preset: string;
  model: ReturnType<typeof resolveVqVaeConfig>;
  train: TokenizerPreset["train"];
  seed: number;
  limit: number | null;
  perceptual: {
    kind: string;
    lambda: number;
    weights: { sha256: string; bytes: number } | null;
    /** The name prefix the weights were loaded from (--perceptual-prefix). */
    prefix?: string;
    /** The loss sees both images average-pooled by this factor (the builtin net's view size). */
    pool?: number;
  };
  /** The adversarial term (absent when off). */
  disc?: { weight: number; start: number; channels: number; layers: number };
  eval: { images: number; psnrImages: number; logEvery: number; ckptEvery: number };
}

const fail = failer(STAGE);

/** Opens the shards and checks that the preset's architecture fits their images. */
export async function openTokenizerShards(o: TrainTokenizerOptions) {
  const shards = await openStageShards(STAGE, o.shards, {
    splits: ["train", "val"],
    check: ({ manifest, splits }) => [
      ...checkTrainTokenizerImages(o, manifest.image),
      ...checkTrainTokenizerData(o, splits.train.count),
    ],
  });
  const { channels, height } = shards.manifest.image;
  return { shards, image: { channels, size: height } };
}

/** sha256 and size of --perceptual-weights (no GPU needed: it is part of the fingerprint). */
export async function perceptualWeights(o: TrainTokenizerOptions) {
  if (!(PERCEPTUAL_KINDS as readonly string[]).includes(o.perceptual)) return null;
  const path = resolve(o["perceptual-weights"]!);
  const problems = checkTrainTokenizerFiles(o);
  if (problems.length) fail(problems[0].message);
  try {
    return await sha256File(path);
  } catch (error) {
    return fail(`--perceptual-weights ${path}: cannot read (${(error as Error).message})`);
  }
}

/**
 * Loads and checks the perceptual network (null for none), and that images of `size` pooled by
 * `pool` fit it; logs what an external file held (architecture, names set aside).
 */
export async function openPerceptual(
  o: TrainTokenizerOptions,
  size: number,
  pool: number,
  log: (line: string) => void,
): Promise<PerceptualModule | null> {
  if (o.perceptual === "none") return null;
  let net: PerceptualModule;
  if (o.perceptual === "builtin") {
    // The train-perceptual stage's folder is also a stage input: its manifest hash is part of the
    // fingerprint, so a retrained network makes this run out of date.
    try {
      net = await loadBuiltinPerceptual(resolve(o["perceptual-dir"]));
    } catch (error) {
      return fail("--perceptual-dir", error);
    }
  } else {
    const path = resolve(o["perceptual-weights"]!);
    const prefix = o["perceptual-prefix"] ?? "";
    try {
      const loaded = await loadPerceptualNet(o.perceptual as PerceptualKind, path, { prefix });
      net = loaded.net;
      log(
        `${STAGE}: --perceptual ${o.perceptual}: ${JSON.stringify(loaded.config)} from ${path}` +
          (loaded.ignored.length
            ? `; set aside ${loaded.ignored.length}: ${summarizeNames(loaded.ignored, prefix)}`
            : ""),
      );
    } catch (error) {
      return fail("--perceptual-weights", error);
    }
  }
  try {
    net.checkInputSize?.(size / pool, size / pool);
  } catch (error) {
    net.dispose();
    return fail(
      `--perceptual ${o.perceptual}: ${reason(error)} ` +
        `(the --shards images${pool > 1 ? ` pooled by ${pool}` : ""})`,
    );
  }
  return net;
}

/**
 * The builtin network was trained on views of a given size (train-perceptual's summary): the loss
 * runs on images average-pooled to it when the image size is a multiple (28² → 14²), which also
 * quarters its cost. External networks see the images as they are.
 */
export async function perceptualPool(o: TrainTokenizerOptions, imageSize: number): Promise<number> {
  if (o.perceptual !== "builtin") return 1;
  try {
    const manifest = JSON.parse(
      await Deno.readTextFile(join(resolve(o["perceptual-dir"]), MANIFEST_FILE)),
    );
    // (view_size; a folder written before the summaries' names were unified has viewSize.)
    const summary = manifest?.summary;
    const view = (summary?.view_size ?? summary?.viewSize)?.[0];
    if (Number.isInteger(view) && view > 0 && view < imageSize && imageSize % view === 0) {
      return imageSize / view;
    }
  } catch {
    // No readable manifest: beginStage reports the input as missing.
  }
  return 1;
}

/** The run's config from the preset, the command line and the shards' image geometry. */
export function resolveTokenizerConfig(
  o: TrainTokenizerOptions,
  preset: TokenizerPreset,
  image: { channels: number; size: number },
  weights: { sha256: string; bytes: number } | null,
  pool: number,
): TrainTokenizerConfig {
  const steps = o.steps ?? preset.train.steps;
  const train = {
    ...preset.train,
    steps,
    batch: o.batch ?? preset.train.batch,
    lr: o.lr ?? preset.train.lr,
    warmupSteps: Math.min(o.warmup ?? preset.train.warmupSteps, Math.floor(steps / 2)),
    pixelLoss: (o["pixel-loss"] as "l1" | "l2" | undefined) ?? preset.train.pixelLoss,
    discWeight: o["disc-weight"] ?? preset.train.discWeight,
    discStart: o["disc-start"] ?? preset.train.discStart,
  };
  const model = resolveVqVaeConfig(
    presetVqVaeConfig(preset, image, {
      kind: o.quantizer as QuantizerKind | undefined,
      seed: o.seed,
    }),
  );
  const lambda = o.perceptual === "none" ? 0 : o.lambda;
  const disc = train.discWeight > 0
    ? {
      weight: train.discWeight,
      start: train.discStart,
      channels: train.discChannels,
      layers: discriminatorLayersFor(image.size),
    }
    : undefined;
  return {
    preset: o.preset,
    model,
    train,
    seed: o.seed,
    limit: o.limit ?? null,
    perceptual: {
      kind: o.perceptual,
      lambda,
      weights,
      ...(o["perceptual-prefix"] ? { prefix: o["perceptual-prefix"] } : {}),
      ...(pool > 1 ? { pool } : {}),
    },
    disc,
    eval: {
      images: o["eval-images"],
      psnrImages: o["psnr-images"],
      logEvery: o["log-every"],
      ckptEvery: o["ckpt-every"],
    },
  };
}

/** The fixed held-out images: the first `count` of the val split, uploaded once per use. */
async function heldOutImages(val: SplitReader, count: number) {
  const b = await val.readRange(0, Math.min(count, val.count));
  const { channels, height, width } = val;
  return {
    n: b.count,
    /** Images [from, to) as f32 [n, C, H, W] in [−1, 1]. */
    images(from: number, to: number): Tensor {
      const signed = { mean: SIGNED.slice(0, channels), std: SIGNED.slice(0, channels) };
      return hostImageViews(b.pixels, [channels, height, width], from, to, [{
        height,
        width,
        ...signed,
      }])[0];
    },
  };
}

/**
 * True when --out holds a finished run of exactly this config and inputs: decided from the
 * manifests alone, so that a skipped stage never opens the GPU (beginStage then confirms it).
 */
export async function tokenizerUpToDate(
  out: string,
  config: unknown,
  inputs: Record<string, string>,
) {
  try {
    const hashes: Record<string, string> = {};
    for (const [key, dir] of Object.entries(inputs)) {
      hashes[key] = sha256Hex(await Deno.readFile(join(resolve(dir), MANIFEST_FILE)));
    }
    const manifest = JSON.parse(await Deno.readTextFile(join(resolve(out), MANIFEST_FILE)));
    return manifest?.stage === STAGE &&
      manifest?.fingerprint === stageFingerprint(STAGE, config, hashes);
  } catch {
    return false; // missing or unreadable: beginStage gives the verdict
  }
}

/**
 * Trains the tokenizer in `run` (resuming its checkpoint): the summary of a finished run, or
 * status "stopped" (--stop-at).
 */
export async function trainTokenizer(
  run: StageRun,
  config: TrainTokenizerConfig,
  shards: ShardSet,
  net: PerceptualModule | null,
  { quiet = false, stopAt, log }: TrainingOptions,
): Promise<TrainingOutcome> {
  const { train, model: modelConfig, seed } = config;
  const lambda = config.perceptual.lambda;
  const model = new VqVae(modelConfig, seed);
  const optimizer = new Adam(model.parameters(), { lr: train.lr, betas: train.betas });
  const state: TrainingState = { modules: { model }, optimizers: { optim: optimizer } };
  // The adversarial term: a patch discriminator with its own Adam, both in the checkpoint.
  const adv = config.disc;
  const disc = adv
    ? new PatchDiscriminator({
      inChannels: modelConfig.inChannels,
      channels: adv.channels,
      layers: adv.layers,
    }, seed)
    : null;
  const discOptimizer = disc
    ? new Adam(disc.parameters(), { lr: train.lr, betas: train.betas })
    : null;
  if (disc && discOptimizer) {
    state.modules!.disc = disc;
    state.optimizers!.optim_disc = discOptimizer;
  }
  const source = await trainingSource(shards.splits.train, config.limit);
  try {
    const loader = new Loader(source, { batchSize: train.batch, seed });
    const evalSet = await heldOutImages(shards.splits.val, config.eval.images);
    const psnrCount = Math.min(config.eval.psnrImages, evalSet.n);
    const view: ViewSpec[] = [{
      height: modelConfig.imageSize,
      width: modelConfig.imageSize,
      mean: SIGNED.slice(0, modelConfig.inChannels),
      std: SIGNED.slice(0, modelConfig.inChannels),
    }];
    log(
      `${STAGE}: ${adapterInfo().description}; VQ-VAE ${model.numParameters()} parameters, ` +
        `${modelConfig.imageSize}² → ${model.tokenGrid.join("×")} tokens, ` +
        `K = ${modelConfig.codebookSize}; perceptual ${config.perceptual.kind} (λ = ${lambda}); ` +
        `${train.steps} steps of ${train.batch}` +
        (run.resumeFrom ? `; resuming at step ${run.resumeFrom.step}` : ""),
    );
    const stepContext = {
      model,
      optimizer,
      train,
      perceptual: net && lambda > 0 ? { net, lambda, pool: config.perceptual.pool ?? 1 } : null,
      adversarial: disc && discOptimizer && adv
        ? { disc, optimizer: discOptimizer, weight: adv.weight, start: adv.start }
        : null,
    };
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
      async restored(meta) {
        await model.quantize.restore();
        model.quantize.steps = meta.step; // seeds the dead-code restarts
      },
      data: loader,
      lr: {
        schedule: warmupCosine({
          baseLr: train.lr,
          warmupSteps: train.warmupSteps,
          totalSteps: train.steps,
        }),
        optimizers: discOptimizer ? [optimizer, discOptimizer] : [optimizer],
      },
      terms: tokenizerStepTerms(disc !== null),
      step: (batch, step) => tokenizerStep(stepContext, loader.toGpu(batch, view).views[0], step),
      async evaluate() {
        const ev = await evaluateTokenizer(model, evalSet, train.batch, psnrCount);
        return {
          psnr: ev.psnr,
          usage: ev.usage,
          perplexity: ev.perplexity,
          distinct_codes: ev.distinctCodes,
        };
      },
      checkpointed: (step) => writeGrid(model, evalSet, run.out, step),
      shown: (r) => ({
        loss: r.loss,
        psnr: r.psnr.toFixed(2),
        usage: r.usage.toFixed(3),
        ppl: r.perplexity.toFixed(1),
      }),
    }, { label: "tokenizer", quiet, log });
    const { last } = result;
    if (result.status === "stopped") {
      return { status: "stopped", summary: { step: result.step, ...last } };
    }
    return {
      status: "done",
      summary: {
        psnr: last.psnr,
        usage: last.usage,
        perplexity: last.perplexity,
        codes_used: Math.round(last.usage * modelConfig.codebookSize),
        distinct_codes: last.distinct_codes,
        loss: last.loss,
        pixel: last.pixel,
        perceptual: last.perceptual,
        commitment: last.commitment,
        ...(disc ? { g_adv: last.g_adv, d_weight: last.d_weight, d_loss: last.d_loss } : {}),
        eval_images: evalSet.n,
        psnr_images: psnrCount,
        ...result.summary,
      },
    };
  } finally {
    source.close();
    model.dispose();
    optimizer.dispose();
    disc?.dispose();
    discOptimizer?.dispose();
  }
}

type HeldOutImages = Awaited<ReturnType<typeof heldOutImages>>;

/** Held-out PSNR (dB, [0, 1] pixels) of the first `psnrCount` images, codebook usage, perplexity. */
async function evaluateTokenizer(
  model: VqVae,
  evalSet: HeldOutImages,
  batch: number,
  psnrCount: number,
) {
  model.eval();
  const { codebookSize, codeDim } = model.config;
  const usage = new CodeUsage(codebookSize);
  const mses: Tensor[] = [];
  try {
    for (let from = 0; from < evalSet.n; from += batch) {
      const to = Math.min(evalSet.n, from + batch);
      const mse = noGrad(() =>
        tidy(() => {
          const x = evalSet.images(from, to);
          const indices = model.encodeIndices(x);
          usage.add(indices);
          // The PSNR batch's per-image errors (the last chunk's extra images are cut below).
          return from < psnrCount ? perImageMse(model.decodeIndices(indices), x) : null;
        })
      );
      if (mse) mses.push(mse);
    }
    const { perplexity, usage: used } = usage.metrics();
    const values = await readAll([perplexity, used, model.quantize.codebook, ...mses]);
    perplexity.dispose();
    used.dispose();
    const all = values.slice(3).flatMap((v) => [...v]).slice(0, psnrCount);
    // Pixels span 2 in [−1, 1]: the PSNR is that of [0, 1] images.
    return {
      psnr: meanPsnr(all, 2),
      usage: values[1][0],
      perplexity: values[0][0],
      distinctCodes: distinctCodes(values[2], codeDim),
    };
  } finally {
    mses.forEach((x) => x.dispose());
    usage.dispose();
    model.train();
  }
}

/** grids/step_NNNNNN.png in `out`: up to 16 held-out images | their reconstructions. */
async function writeGrid(model: VqVae, evalSet: HeldOutImages, out: string, step: number) {
  const count = Math.min(16, evalSet.n);
  const [x, xhat] = noGrad(() =>
    tidy(() => {
      model.eval();
      const x = evalSet.images(0, count);
      return [x, model.decodeIndices(model.encodeIndices(x))];
    })
  );
  model.train();
  const name = `grids/step_${String(step).padStart(6, "0")}.png`;
  await Deno.mkdir(join(out, "grids"), { recursive: true });
  await writeImageGrid(join(out, name), [x, xhat], { range: [-1, 1] });
  x.dispose();
  xhat.dispose();
}
