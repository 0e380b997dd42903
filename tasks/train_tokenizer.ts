// `deno task train-tokenizer`: trains the perceptual tokenizer (docs/paper-to-code.md; paper
// eq. 5): a VQ-VAE with an EMA quantizer, loss = pixel (L1 or L2) + λ·perceptual + β·commitment.
//
//   deno task train-tokenizer --shards runs/shard --out runs/tokenizer
//   deno task train-tokenizer --shards runs/shard --out runs/tok-vgg --perceptual vgg16 \
//     --perceptual-weights vgg16.safetensors --lambda 1
//   deno task train-tokenizer --shards runs/photos --out runs/tok-moco --perceptual vit-b \
//     --perceptual-weights moco_v3.safetensors --perceptual-prefix module.base_encoder.
//
// Everything is checked before training starts: the shards manifest, the image size against the
// downsample factor and the perceptual network's input, the perceptual weights (names and shapes;
// lib/models/perceptual/load.ts). The output folder (--out) holds
// checkpoint.safetensors (atomic, every --ckpt-every steps and at the end), metrics.jsonl (every
// --log-every steps: each loss term, held-out PSNR, codebook usage and perplexity, lr, images/s,
// peak GPU memory), grids/step_NNNNNN.png (held-out input | reconstruction, at every checkpoint)
// and manifest.json (lib/cli/stage.ts: skip when up to date, resume when interrupted).
//
// Options for ablations: `--quantizer plain` (codebook learned by the codebook loss instead of EMA
// updates) and the adversarial term of paper Table 10 (`--disc-weight 0.4 --disc-start STEP`): a
// patch discriminator (lib/models/discriminator.ts, hinge loss, its own Adam) trained from
// --disc-start on, its state in the checkpoint; the generator's term is weighted adaptively as in
// taming's VQGAN (lib/train/adversarial.ts). The step itself is lib/train/tokenizer_step.ts. An up-to-date output folder is recognised before
// the GPU is opened, so a skipped stage costs only reading the manifests.
//
// Least privilege (lib/cli/permissions.ts): started with --allow-read and --allow-run=deno, the
// task re-runs itself reading only its inputs and --out and writing only --out.

import { join, resolve } from "node:path";
import { adapterInfo, flush, initGpu, peakGpuBytes } from "../lib/tensor/engine.ts";
import { failOnProblems } from "../lib/cli/problems.ts";
import { MetricsWriter } from "../lib/cli/metrics.ts";
import { METRICS_FILE, readStepMeans } from "../lib/cli/metrics.ts";
import { type StageAccess } from "../lib/cli/permissions.ts";
import { stageMain } from "../lib/cli/stage_main.ts";
import { Progress } from "../lib/cli/progress.ts";
import {
  beginStage,
  failer,
  finishStage,
  MANIFEST_FILE,
  stageFingerprint,
  type StageResult,
} from "../lib/cli/stage.ts";
import { openShards, type ShardSet, type SplitReader } from "../lib/data/shards.ts";
import { Loader } from "../lib/data/loader.ts";
import { moduleReadPaths, trainingSource } from "../lib/data/shard_reads.ts";
import { pixelsToFloat, uploadPixels, type ViewSpec } from "../lib/data/augment.ts";
import { CheckpointGuard, type CheckpointMeta, loadCheckpoint } from "../lib/train/checkpoint.ts";
import { type TrainingState } from "../lib/train/checkpoint.ts";
import { sha256File, sha256Hex } from "../lib/io/hash.ts";
import { writeImageGrid } from "../lib/io/png.ts";
import {
  loadPerceptualNet,
  PERCEPTUAL_KINDS,
  type PerceptualKind,
  type PerceptualModule,
  summarizeNames,
} from "../lib/models/perceptual/mod.ts";
import { loadBuiltinPerceptual } from "../lib/models/moco.ts";
import { discriminatorLayersFor, PatchDiscriminator } from "../lib/models/discriminator.ts";
import { CodeUsage, distinctCodes, type QuantizerKind } from "../lib/models/quantizer.ts";
import { type TokenizerPreset, tokenizerPreset } from "../lib/models/tokenizer_config.ts";
import { resolveVqVaeConfig, VqVae } from "../lib/models/vqvae.ts";
import { Adam, warmupCosine } from "../lib/optim/mod.ts";
import { noGrad, readAll, type Tensor, tidy } from "../lib/tensor/mod.ts";
import { meanPsnr, perImageMse } from "../lib/train/psnr.ts";
import {
  tokenizerStep,
  type TokenizerStepContext,
  tokenizerStepTerms,
} from "../lib/train/tokenizer_step.ts";
import {
  checkTrainTokenizerData,
  checkTrainTokenizerFiles,
  checkTrainTokenizerImages,
  checkTrainTokenizerOptions,
  trainTokenizerCommand,
  type TrainTokenizerOptions,
} from "../lib/stages/train_tokenizer_options.ts";

const STAGE = "train-tokenizer";
/** Images in [−1, 1]: (x/255 − 0.5) / 0.5 per channel. */
const HALF = [0.5, 0.5, 0.5];

export { trainTokenizerCommand, type TrainTokenizerOptions };

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

export type TrainTokenizerResult = StageResult;

const fail: (what: string) => never = failer(STAGE);

/** Checks the options (usage errors, exit 2): every problem at once. */
function checkOptions(o: TrainTokenizerOptions): void {
  failOnProblems(checkTrainTokenizerOptions(o));
}

/** The paths the sandboxed stage may read and write. */
export function trainTokenizerAccess(o: TrainTokenizerOptions): StageAccess {
  const out = resolve(o.out);
  const read = [resolve(o.shards), out];
  if (o["perceptual-weights"]) read.push(resolve(o["perceptual-weights"]));
  if (o.perceptual === "builtin") read.push(resolve(o["perceptual-dir"]));
  // (And the modules of the shard-reading Workers, while they load: lib/io/worker_pool.ts.)
  return { read: [...read, ...moduleReadPaths()], write: [out] };
}

/** Opens the shards and checks that the preset's architecture fits their images. */
async function openInputs(o: TrainTokenizerOptions) {
  let shards: ShardSet;
  try {
    shards = await openShards(resolve(o.shards));
  } catch (error) {
    return fail(`--shards: ${(error as Error).message.replace(/^peco: /, "")}`);
  }
  const { channels, height, width } = shards.manifest.image;
  for (const split of ["train", "val"]) {
    if (!shards.splits[split]?.count) fail(`--shards ${shards.dir} has no "${split}" images`);
  }
  const problems = [
    ...checkTrainTokenizerImages(o, { height, width }),
    ...checkTrainTokenizerData(o, shards.splits.train.count),
  ];
  if (problems.length) fail(`--shards ${shards.dir}: ${problems[0].message}`);
  return { shards, image: { channels, size: height } };
}

/** sha256 and size of --perceptual-weights (no GPU needed: it is part of the fingerprint). */
async function perceptualWeights(o: TrainTokenizerOptions) {
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
async function openPerceptual(
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
      return fail(`--perceptual-dir: ${(error as Error).message.replace(/^peco: /, "")}`);
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
      return fail(`--perceptual-weights: ${(error as Error).message.replace(/^peco: /, "")}`);
    }
  }
  try {
    net.checkInputSize?.(size / pool, size / pool);
  } catch (error) {
    net.dispose();
    return fail(
      `--perceptual ${o.perceptual}: ${(error as Error).message.replace(/^peco: /, "")} ` +
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
async function perceptualPool(o: TrainTokenizerOptions, imageSize: number): Promise<number> {
  if (o.perceptual !== "builtin") return 1;
  try {
    const manifest = JSON.parse(
      await Deno.readTextFile(join(resolve(o["perceptual-dir"]), MANIFEST_FILE)),
    );
    const view = manifest?.summary?.viewSize?.[0];
    if (Number.isInteger(view) && view > 0 && view < imageSize && imageSize % view === 0) {
      return imageSize / view;
    }
  } catch {
    // No readable manifest: beginStage reports the input as missing.
  }
  return 1;
}

/** The run's config from the preset, the command line and the shards' image geometry. */
function resolveConfig(
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
  const kind = (o.quantizer as QuantizerKind | undefined) ?? preset.model.quantizer?.kind ?? "ema";
  const model = resolveVqVaeConfig({
    ...preset.model,
    imageSize: image.size,
    inChannels: image.channels,
    quantizer: { ...preset.model.quantizer, kind, seed: o.seed },
  });
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
async function heldOut(val: SplitReader, count: number) {
  const b = await val.readRange(0, Math.min(count, val.count));
  const { channels, height, width } = val;
  return {
    n: b.count,
    /** Images [from, to) as f32 [n, C, H, W] in [−1, 1]. */
    images(from: number, to: number): Tensor {
      const bytes = channels * height * width;
      const upload = uploadPixels(
        b.pixels.subarray(from * bytes, to * bytes),
        to - from,
        channels,
        height,
        width,
      );
      const x = pixelsToFloat(upload, {
        mean: HALF.slice(0, channels),
        std: HALF.slice(0, channels),
      });
      upload.pixels.dispose();
      return x;
    },
  };
}

/**
 * True when --out holds a finished run of exactly this config and inputs: decided from the
 * manifests alone, so that a skipped stage never opens the GPU (beginStage then confirms it).
 */
async function upToDate(out: string, config: unknown, inputs: Record<string, string>) {
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

export async function runTrainTokenizer(
  o: TrainTokenizerOptions,
  { log = (line: string) => console.error(line) } = {},
): Promise<TrainTokenizerResult> {
  checkOptions(o);
  const preset = tokenizerPreset(o.preset);
  // Every input is checked before anything is trained or written.
  const { shards, image } = await openInputs(o);
  const weights = await perceptualWeights(o);
  const pool = await perceptualPool(o, image.size);
  const config = resolveConfig(o, preset, image, weights, pool);
  const inputs: Record<string, string> = { shards: shards.dir };
  if (o.perceptual === "builtin") inputs.perceptual = resolve(o["perceptual-dir"]);
  const stage = { name: STAGE, out: o.out, config, inputs, force: o.force ?? false, log };
  if (!stage.force && await upToDate(o.out, config, inputs)) {
    const run = await beginStage(stage);
    if (run.status === "skip") {
      return { status: "skip", out: run.out, summary: run.manifest.summary };
    }
    throw new Error(`peco: ${STAGE}: ${run.out} changed while it was checked; run again`);
  }
  await initGpu();
  const net = await openPerceptual(o, image.size, pool, log);
  try {
    const run = await beginStage(stage);
    if (run.status === "skip") {
      return { status: "skip", out: run.out, summary: run.manifest.summary };
    }
    return await train(o, config, shards, net, run, log);
  } finally {
    net?.dispose();
  }
}

async function train(
  o: TrainTokenizerOptions,
  config: TrainTokenizerConfig,
  shards: ShardSet,
  net: PerceptualModule | null,
  run: Awaited<ReturnType<typeof beginStage>> & { status: "fresh" | "resume" },
  log: (line: string) => void,
): Promise<TrainTokenizerResult> {
  const { train: t, model: m, seed } = config;
  const lambda = config.perceptual.lambda;
  const model = new VqVae(m, seed);
  const optimizer = new Adam(model.parameters(), { lr: t.lr, betas: t.betas });
  const schedule = warmupCosine({ baseLr: t.lr, warmupSteps: t.warmupSteps, totalSteps: t.steps });
  const state: TrainingState = { modules: { model }, optimizers: { optim: optimizer } };
  // The adversarial term: a patch discriminator with its own Adam, both in the checkpoint.
  const adv = config.disc;
  const disc = adv
    ? new PatchDiscriminator({
      inChannels: m.inChannels,
      channels: adv.channels,
      layers: adv.layers,
    }, seed)
    : null;
  const discOptimizer = disc ? new Adam(disc.parameters(), { lr: t.lr, betas: t.betas }) : null;
  if (disc && discOptimizer) {
    state.modules!.disc = disc;
    state.optimizers!.optim_disc = discOptimizer;
  }
  let meta: CheckpointMeta | null = null;
  if (run.resumeFrom) {
    meta = await loadCheckpoint(run.checkpoint, state);
    await model.quantize.restore();
    model.quantize.steps = meta.step; // seeds the dead-code restarts
  }
  const first = meta?.step ?? 0;
  const guard = new CheckpointGuard(STAGE, run.checkpoint, meta?.step ?? null);
  const metrics = await MetricsWriter.open(join(run.out, METRICS_FILE), meta ? first : null);
  const source = await trainingSource(shards.splits.train, config.limit);
  const loader = new Loader(source, { batchSize: t.batch, seed });
  const evalSet = await heldOut(shards.splits.val, config.eval.images);
  const psnrCount = Math.min(config.eval.psnrImages, evalSet.n);
  const view: ViewSpec[] = [{
    height: m.imageSize,
    width: m.imageSize,
    mean: HALF.slice(0, m.inChannels),
    std: HALF.slice(0, m.inChannels),
  }];
  log(
    `${STAGE}: ${adapterInfo().description}; VQ-VAE ${model.numParameters()} parameters, ` +
      `${m.imageSize}² → ${model.tokenGrid.join("×")} tokens, K = ${m.codebookSize}; ` +
      `perceptual ${config.perceptual.kind} (λ = ${lambda}); steps ${first}→${t.steps}, batch ${t.batch}`,
  );

  /** Held-out PSNR (dB, [0, 1] pixels), codebook usage and perplexity. */
  const evaluate = async () => {
    model.eval();
    const usage = new CodeUsage(m.codebookSize);
    const mses: Tensor[] = [];
    try {
      for (let from = 0; from < evalSet.n; from += t.batch) {
        const to = Math.min(evalSet.n, from + t.batch);
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
        distinctCodes: distinctCodes(values[2], m.codeDim),
      };
    } finally {
      mses.forEach((x) => x.dispose());
      usage.dispose();
      model.train();
    }
  };

  const writeGrid = async (step: number) => {
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
    await Deno.mkdir(join(run.out, "grids"), { recursive: true });
    await writeImageGrid(join(run.out, name), [x, xhat], { range: [-1, 1] });
    x.dispose();
    xhat.dispose();
  };

  const progress = new Progress({
    label: "tokenizer",
    total: t.steps,
    unit: "step",
    quiet: o.quiet,
  });
  const stream = loader.batches({
    epoch: Math.floor(first / loader.stepsPerEpoch),
    step: first % loader.stepsPerEpoch,
  });
  const termNames = tokenizerStepTerms(disc !== null);
  const ctx: TokenizerStepContext = {
    model,
    optimizer,
    train: t,
    perceptual: net && lambda > 0 ? { net, lambda, pool: config.perceptual.pool ?? 1 } : null,
    adversarial: disc && discOptimizer && adv
      ? { disc, optimizer: discOptimizer, weight: adv.weight, start: adv.start }
      : null,
  };
  let pending: Tensor[][] = [];
  let last: Record<string, number> = {};
  const started = performance.now();
  let intervalStart = started;
  let intervalImages = 0;
  model.train();
  try {
    for (let step = first; step < t.steps; step++) {
      const batch = (await stream.next()).value!;
      optimizer.lr = schedule(step);
      if (discOptimizer) discOptimizer.lr = optimizer.lr;
      pending.push(tidy(() => tokenizerStep(ctx, loader.toGpu(batch, view).views[0], step)));
      intervalImages += batch.n;
      const done = step + 1;
      const logNow = done % config.eval.logEvery === 0 || done === t.steps;
      if (!logNow) {
        flush();
        continue;
      }
      // Every step's losses since the last log are read: a NaN at any of them stops the run.
      const means = await readStepMeans(pending, termNames);
      pending = [];
      guard.check(done, means);
      const seconds = (performance.now() - intervalStart) / 1000;
      const ev = await evaluate();
      last = {
        ...means,
        psnr: ev.psnr,
        usage: ev.usage,
        perplexity: ev.perplexity,
        distinct_codes: ev.distinctCodes,
        lr: optimizer.lr,
        images_per_s: intervalImages / seconds,
        peak_gpu_bytes: peakGpuBytes(),
      };
      await metrics.write({ step: done, ...last });
      progress.update(done, {
        loss: means.loss,
        psnr: ev.psnr.toFixed(2),
        usage: ev.usage.toFixed(3),
        ppl: ev.perplexity.toFixed(1),
      });
      const ckptNow = done % config.eval.ckptEvery === 0 || done === t.steps;
      if (ckptNow) {
        await guard.save(state, {
          stage: STAGE,
          fingerprint: run.fingerprint,
          step: done,
          epoch: Math.floor(done / loader.stepsPerEpoch),
          seed,
          config,
          metrics: last,
        });
        await writeGrid(done);
        if (o["stop-at"] !== undefined && done >= o["stop-at"] && done < t.steps) {
          log(`${STAGE}: stopped after the checkpoint at step ${done} (--stop-at)`);
          return { status: "stopped", out: run.out, summary: last };
        }
      }
      intervalStart = performance.now();
      intervalImages = 0;
    }
  } finally {
    pending.forEach((ts) => ts.forEach((x) => x.dispose()));
    await stream.return(undefined);
    source.close();
    metrics.close();
    model.dispose();
    optimizer.dispose();
    disc?.dispose();
    discOptimizer?.dispose();
  }
  progress.finish({ psnr: last.psnr?.toFixed(2) ?? "", usage: last.usage?.toFixed(3) ?? "" });
  const summary = {
    steps: t.steps,
    psnr: last.psnr,
    usage: last.usage,
    perplexity: last.perplexity,
    codes_used: Math.round(last.usage * m.codebookSize),
    distinct_codes: last.distinct_codes,
    loss: last.loss,
    pixel: last.pixel,
    perceptual: last.perceptual,
    commitment: last.commitment,
    ...(disc ? { g_adv: last.g_adv, d_weight: last.d_weight, d_loss: last.d_loss } : {}),
    peak_gpu_bytes: peakGpuBytes(),
    eval_images: evalSet.n,
    psnr_images: psnrCount,
    /** Wall time of this process's training (after a resume: of the resumed part only). */
    train_seconds: (performance.now() - started) / 1000,
  };
  await finishStage(run, { summary });
  return { status: "done", out: run.out, summary };
}

// ---- command line ---------------------------------------------------------------------------

if (import.meta.main) {
  await stageMain(import.meta.url, trainTokenizerCommand, {
    check: checkOptions,
    access: trainTokenizerAccess,
    run: (options) => runTrainTokenizer(options),
    describe: ({ status, out, summary }) => {
      const f = (v: unknown, d = 2) => typeof v === "number" ? v.toFixed(d) : String(v);
      return `${STAGE}: ${status}: held-out PSNR ${f(summary.psnr)} dB, codebook usage ` +
        `${f(summary.usage, 3)}, perplexity ${f(summary.perplexity, 1)} in ${out}`;
    },
  });
}
