// `deno task pretrain`: BEiT-style masked image modelling over the perceptual codes (paper §3.3,
// eq. 7; docs/paper-to-code.md). A ViT sees block-masked images (the mask token replaces masked
// patch embeddings) and learns to predict, at the masked patches, the codes the tokenizer gives the
// same crop.
//
//   deno task pretrain --shards runs/shard --tokenizer runs/export --out runs/pretrain
//   deno task pretrain --shards runs/shard --tokenizer runs/export --tokens   (precomputed codes)
//
// Per step: a batch of shard images, one crop box per image rendered twice (the ViT view at the
// model's size and the tokenizer view at the tokenizer's size and normalisation), the tokenizer's
// codes of the tokenizer view on the GPU without autograd (or, with --tokens and no augmentation,
// the export folder's token shards), BEiT's block masks with the budget scaled to the grid, the
// cross-entropy at masked positions, AdamW β (0.9, 0.98), weight decay 0.05 (none on 1-D
// parameters, biases, cls/mask/pos tokens and the relative position table), warmup + cosine,
// gradient clipping 3.0.
//
// Everything is checked before training: the shard folder, the export folder's tokenizer (its grid
// must equal the ViT's patch grid, its channels the images'), the token shards (made from these
// shards: their source manifest hash must equal the --shards manifest's). The output folder (--out)
// holds checkpoint.safetensors (atomic, every --ckpt-every steps and at the end), metrics.jsonl
// (every --log-every steps: loss, masked-token accuracy of the training batches, held-out masked
// loss and accuracy on a fixed seeded masked set, the accuracy of always predicting the most
// frequent training code on that set, lr, images/s, peak GPU memory), model.safetensors (the final
// weights with BEiT's names; config and input normalisation in its metadata) and manifest.json
// (lib/cli/stage.ts: skip when up to date, resume when interrupted).
//
// Least privilege (lib/cli/permissions.ts): started with --allow-read and --allow-run=deno, the
// task re-runs itself reading only the two input folders and --out and writing only --out.

import { join, resolve } from "node:path";
import { adapterInfo, flush, initGpu, peakGpuBytes } from "../lib/tensor/engine.ts";
import { failOnProblems } from "../lib/cli/problems.ts";
import { METRICS_FILE, MetricsWriter, readStepMeans } from "../lib/cli/metrics.ts";
import { type StageAccess } from "../lib/cli/permissions.ts";
import { stageMain } from "../lib/cli/stage_main.ts";
import { Progress } from "../lib/cli/progress.ts";
import {
  beginStage,
  failer,
  finishStage,
  MANIFEST_FILE,
  type StageResult,
} from "../lib/cli/stage.ts";
import { openShards, type ShardSet } from "../lib/data/shards.ts";
import { openTokenShards, type TokenSplit } from "../lib/data/token_shards.ts";
import { Loader } from "../lib/data/loader.ts";
import {
  type ClosableRecordSource,
  moduleReadPaths,
  trainingSource,
} from "../lib/data/shard_reads.ts";
import {
  augmentViews,
  identityAugmentations,
  uploadPixels,
  type ViewSpec,
} from "../lib/data/augment.ts";
import {
  CheckpointGuard,
  type CheckpointMeta,
  loadCheckpoint,
  type TrainingState,
} from "../lib/train/checkpoint.ts";
import { sha256File } from "../lib/io/hash.ts";
import {
  Beit,
  BEIT_MODEL_FILE,
  type BeitConfig,
  type BeitImageSpec,
  type BeitPresetName,
  saveBeit,
} from "../lib/models/beit.ts";
import { Tokenizer, TOKENIZER_FILE } from "../lib/models/tokenizer.ts";
import { AdamW, clipGradNorm, paramGroups, warmupCosine } from "../lib/optim/mod.ts";
import { Rng } from "../lib/tensor/init.ts";
import { backward, readAll, type Tensor, tensor, tidy } from "../lib/tensor/mod.ts";
import {
  checkPretrainData,
  checkPretrainOptions,
  checkPretrainTokenCounts,
  pretrainCommand,
  type PretrainOptions,
  resolvePretrainGeometry,
} from "../lib/stages/pretrain_options.ts";
import {
  augmentConfig,
  type AugmentMode,
  CodeHistogram,
  HeldOutSet,
  maskedPositions,
  maskingGenerator,
  type MaskSpec,
  mimLoss,
  mostFrequent,
  PRETRAIN_TRAIN_PRESETS,
  type PretrainTrainConfig,
} from "../lib/train/mim.ts";

const STAGE = "pretrain";
const TOKENS_DIR = "tokens";
/** The ViT's input normalisation: [0, 1] → [−1, 1] per channel (as the tokenizer's). */
const HALF = 0.5;

export { pretrainCommand, type PretrainOptions };

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

export type PretrainResult = StageResult;

const fail: (what: string) => never = failer(STAGE);

/** Checks the options (usage errors, exit 2): every problem at once. */
function checkOptions(o: PretrainOptions): void {
  failOnProblems(checkPretrainOptions(o));
}

/** The paths the sandboxed stage may read and write. */
export function pretrainAccess(o: PretrainOptions): StageAccess {
  const out = resolve(o.out);
  // (And the modules of the shard-reading Workers, while they load: lib/io/worker_pool.ts.)
  return {
    read: [resolve(o.shards), resolve(o.tokenizer), out, ...moduleReadPaths()],
    write: [out],
  };
}

const message = (error: unknown) => (error as Error).message.replace(/^peco: /, "");

/** Opens and checks every input; nothing is trained or written before this passes. */
async function openInputs(o: PretrainOptions) {
  let shards: ShardSet;
  try {
    shards = await openShards(resolve(o.shards));
  } catch (error) {
    return fail(`--shards: ${message(error)}`);
  }
  for (const split of ["train", "val"]) {
    if (!shards.splits[split]?.count) fail(`--shards ${shards.dir} has no "${split}" images`);
  }
  const data = checkPretrainData(o, shards.splits.train.count);
  if (data.length) fail(`--shards ${shards.dir}: ${data[0].message}`);
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
      return fail(`--tokenizer: ${message(error)}`);
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
      return fail(`--tokenizer: ${message(error)}`);
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

type Inputs = Awaited<ReturnType<typeof openInputs>>;

/** The run's config from the preset, the command line and the inputs; the grids must agree. */
function resolveConfig(o: PretrainOptions, inputs: Inputs): PretrainConfig {
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
      mean: new Array(c).fill(HALF),
      std: new Array(c).fill(HALF),
    },
    train,
    mask,
    tokens: o.tokens ?? false,
    seed: o.seed,
    limit: o.limit ?? null,
    eval: { images: o["eval-images"], logEvery: o["log-every"], ckptEvery: o["ckpt-every"] },
  };
}

export async function runPretrain(
  o: PretrainOptions,
  { log = (line: string) => console.error(line) } = {},
): Promise<PretrainResult> {
  checkOptions(o);
  const inputs = await openInputs(o);
  try {
    const config = resolveConfig(o, inputs);
    await initGpu();
    const run = await beginStage({
      name: STAGE,
      out: o.out,
      config,
      inputs: { shards: inputs.shards.dir, export: inputs.exportDir },
      force: o.force ?? false,
      log,
    });
    if (run.status === "skip") {
      return { status: "skip", out: run.out, summary: run.manifest.summary };
    }
    return await train(o, config, inputs, run, log);
  } finally {
    inputs.tokenizer?.dispose();
  }
}

/** Code ids of records (global numbers in storage order) from token shards held in memory. */
function tokenLookup(ids: Uint32Array, tokens: number) {
  return (records: Uint32Array): Int32Array => {
    const out = new Int32Array(records.length * tokens);
    records.forEach((r, i) => out.set(ids.subarray(r * tokens, (r + 1) * tokens), i * tokens));
    return out;
  };
}

async function train(
  o: PretrainOptions,
  config: PretrainConfig,
  inputs: Inputs,
  run: Awaited<ReturnType<typeof beginStage>> & { status: "fresh" | "resume" },
  log: (line: string) => void,
): Promise<PretrainResult> {
  const { train: t, model: m, seed } = config;
  const { shards, tokenizer } = inputs;
  const model = new Beit(m, seed);
  const groups = paramGroups(model.namedParameters(), { weightDecay: t.weightDecay });
  const optimizer = new AdamW(groups, { lr: t.lr, betas: t.betas, weightDecay: t.weightDecay });
  const schedule = warmupCosine({ baseLr: t.lr, warmupSteps: t.warmupSteps, totalSteps: t.steps });
  const histogram = new CodeHistogram(m.vocabSize);
  const state: TrainingState = {
    modules: { model },
    optimizers: { optim: optimizer },
    tensors: { stats: { code_counts: histogram.counts } },
  };
  let heldOut: HeldOutSet | null = null;
  const stream = { current: null as AsyncGenerator<unknown> | null };
  const metrics = { current: null as MetricsWriter | null };
  let source: ClosableRecordSource | null = null;
  try {
    let meta: CheckpointMeta | null = null;
    if (run.resumeFrom) meta = await loadCheckpoint(run.checkpoint, state);
    const first = meta?.step ?? 0;
    const guard = new CheckpointGuard(STAGE, run.checkpoint, meta?.step ?? null);
    metrics.current = await MetricsWriter.open(join(run.out, METRICS_FILE), meta ? first : null);
    const grid = model.grid;
    const tokensPerImage = grid[0] * grid[1];
    const masking = maskingGenerator(grid, config.mask);
    source = await trainingSource(shards.splits.train, config.limit);
    const augment = augmentConfig(t.augment);
    const loader = new Loader(source, { batchSize: t.batch, seed, augment, masking });
    const vitView: ViewSpec = {
      height: m.imageSize,
      width: m.imageSize,
      mean: config.image.mean,
      std: config.image.std,
    };
    const views: ViewSpec[] = [vitView];
    if (tokenizer) {
      const ti = tokenizer.info.image;
      views.push({ height: ti.size, width: ti.size, mean: ti.mean, std: ti.std });
    }
    const lookup = inputs.trainTokens
      ? tokenLookup(
        (await inputs.trainTokens.read(
          0,
          Math.min(config.limit ?? Infinity, inputs.trainTokens.count),
        ))
          .ids,
        tokensPerImage,
      )
      : null;
    heldOut = await buildHeldOut(config, inputs, views, masking, tokensPerImage);
    log(
      `${STAGE}: ${adapterInfo().description}; BEiT ${model.numParameters()} parameters ` +
        `(dim ${m.dim}, depth ${m.depth}, heads ${m.heads}), ${m.imageSize}² → ` +
        `${grid.join("×")} patches, K = ${m.vocabSize}, mask ${config.mask.budget} patches ` +
        `(min block ${config.mask.minBlock}), targets from ${
          lookup ? "token shards" : "the tokenizer"
        }; ` +
        `steps ${first}→${t.steps}, batch ${t.batch}; held-out ${heldOut.images} images`,
    );

    const progress = new Progress({ label: STAGE, total: t.steps, unit: "step", quiet: o.quiet });
    const batches = loader.batches({
      epoch: Math.floor(first / loader.stepsPerEpoch),
      step: first % loader.stepsPerEpoch,
    });
    stream.current = batches;
    const dropRng = new Rng(seed).fork("drop path");
    const termNames = ["loss", "accuracy", "grad_norm"] as const;
    let pending: Tensor[][] = [];
    let last: Record<string, number> = {};
    const started = performance.now();
    let intervalStart = started;
    let intervalImages = 0;
    model.train();
    for (let step = first; step < t.steps; step++) {
      const batch = (await batches.next()).value!;
      const positions = maskedPositions(batch.masks!);
      if (positions.length === 0) {
        fail(`step ${step}: the masks of the batch cover no patch (check --min-block)`);
      }
      optimizer.lr = schedule(step);
      model.dropSeed = dropRng.fork(`step ${step}`).next();
      pending.push(tidy(() => {
        const gb = loader.toGpu(batch, views);
        const codes = lookup
          ? tensor(lookup(batch.records), [batch.n, tokensPerImage], "i32")
          : tokenizer!.encode(gb.views[1]);
        const maskedIndex = tensor(positions, [positions.length], "i32");
        const out = mimLoss(model, gb.views[0], gb.masks!, maskedIndex, codes);
        backward(out.loss);
        const norm = clipGradNorm(model.parameters(), t.clipNorm);
        optimizer.step();
        optimizer.zeroGrad();
        histogram.add(out.targets);
        return [out.loss, out.accuracy, norm];
      }));
      intervalImages += batch.n;
      const done = step + 1;
      if (!(done % config.eval.logEvery === 0 || done === t.steps)) {
        flush();
        continue;
      }
      // Every step's numbers since the last log are read: a NaN at any of them stops the run.
      const means = await readStepMeans(pending, termNames);
      pending = [];
      guard.check(done, { loss: means.loss, grad_norm: means.grad_norm });
      const seconds = (performance.now() - intervalStart) / 1000;
      const ev = await heldOut.evaluate(model);
      const [counts] = await readAll([histogram.counts]);
      const top = mostFrequent(counts);
      last = {
        loss: means.loss,
        accuracy: means.accuracy,
        grad_norm: means.grad_norm,
        eval_loss: ev.loss,
        eval_accuracy: ev.accuracy,
        baseline_accuracy: heldOut.baseline(top.code),
        top_code: top.code,
        top_code_share: top.share,
        lr: optimizer.lr,
        images_per_s: intervalImages / seconds,
        peak_gpu_bytes: peakGpuBytes(),
      };
      await metrics.current.write({ step: done, ...last });
      progress.update(done, {
        loss: means.loss,
        acc: means.accuracy.toFixed(3),
        "held-out acc": ev.accuracy.toFixed(3),
        baseline: last.baseline_accuracy.toFixed(3),
      });
      if (done % config.eval.ckptEvery === 0 || done === t.steps) {
        await guard.save(state, {
          stage: STAGE,
          fingerprint: run.fingerprint,
          step: done,
          epoch: Math.floor(done / loader.stepsPerEpoch),
          seed,
          config,
          metrics: last,
        });
        if (o["stop-at"] !== undefined && done >= o["stop-at"] && done < t.steps) {
          log(`${STAGE}: stopped after the checkpoint at step ${done} (--stop-at)`);
          return { status: "stopped", out: run.out, summary: last };
        }
      }
      intervalStart = performance.now();
      intervalImages = 0;
    }
    pending.forEach((ts) => ts.forEach((x) => x.dispose()));
    progress.finish({
      "held-out acc": last.eval_accuracy?.toFixed(3) ?? "",
      baseline: last.baseline_accuracy?.toFixed(3) ?? "",
    });
    await saveBeit(model, join(run.out, BEIT_MODEL_FILE), config.image, {
      "peco.stage": STAGE,
      "peco.fingerprint": run.fingerprint,
    });
    const summary = {
      steps: t.steps,
      loss: last.loss,
      accuracy: last.accuracy,
      eval_loss: last.eval_loss,
      eval_accuracy: last.eval_accuracy,
      baseline_accuracy: last.baseline_accuracy,
      ln_k: Math.log(m.vocabSize),
      parameters: model.numParameters(),
      peak_gpu_bytes: peakGpuBytes(),
      eval_images: heldOut.images,
      eval_masked_patches: heldOut.maskedPatches,
      /** Wall time of this process's training (after a resume: of the resumed part only). */
      train_seconds: (performance.now() - started) / 1000,
    };
    await finishStage(run, { summary });
    return { status: "done", out: run.out, summary };
  } finally {
    await stream.current?.return(undefined);
    source?.close();
    metrics.current?.close();
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
  inputs: Inputs,
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
    const [x, tokView] = tidy(() => {
      const upload = uploadPixels(
        b.pixels.subarray(from * c * h * w, (from + n) * c * h * w),
        n,
        c,
        h,
        w,
      );
      return augmentViews(upload, identityAugmentations(n, h, w), views);
    });
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

// ---- command line ---------------------------------------------------------------------------

if (import.meta.main) {
  await stageMain(import.meta.url, pretrainCommand, {
    check: checkOptions,
    access: pretrainAccess,
    run: (options) => runPretrain(options),
    describe: ({ status, out, summary }) => {
      const f = (v: unknown, d = 3) => typeof v === "number" ? v.toFixed(d) : String(v);
      return `${STAGE}: ${status}: loss ${f(summary.loss)} (ln K = ${
        f(summary.ln_k)
      }), held-out masked ` +
        `accuracy ${f(summary.eval_accuracy)} vs most-frequent-code baseline ` +
        `${f(summary.baseline_accuracy)} in ${out}`;
    },
  });
}
