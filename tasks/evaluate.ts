// `deno task evaluate`: the paper's claims, measured on the user's data (docs/paper-to-code.md;
// Table 4, §3) — fine-tuning from the MIM-pretrained ViT vs from scratch with the same budget and
// seed, linear probes of the frozen ViT (last and best block), codeword semantics of each tokenizer
// (a linear probe on average-pooled codewords; classification of its reconstructions by a
// classifier trained on real images), reconstruction PSNR / SSIM — plus figures and a report.
//
//   deno task evaluate --shards runs/shard --export runs/export,runs/export-l0 \
//     --pretrain runs/pretrain,runs/pretrain-l0 --labels "λ=1,λ=0" \
//     --curves runs/perceptual,runs/tokenizer --out runs/evaluate
//
// Arms: --export is a comma list of export-codebook folders (the first arm is the main one, whose
// numbers fill report.json's top-level keys); --pretrain lists the pretrain folder of each arm in
// the same order (it may be shorter: later arms have none); --labels names the arms. Every arm's
// tokenizer gets the codeword and reconstruction measures; every arm with a pretrain folder gets
// fine-tuning, linear probes and the masked-prediction figure; fine-tuning from scratch runs once,
// with the main pretrained arm's architecture, budget and seed. All measures use the held-out "val"
// split. Everything is checked before any work (folders, manifests, files, that each export and
// pretrain run was made from these shards and each pretrain run from its arm's export).
//
// Writes into --out: report.json, report.md and report.html (one self-contained page: the same
// tables with the charts inline), figures/*.svg (charts: curves of every stage given and of the
// fine-tuning runs, code frequencies, probes per block, the arms compared), figures/*.png (Figure 3
// patches copied from each export, Figure 2/5 per pretrained arm) and manifest.json last. Least
// privilege: reads only --shards, the export, pretrain and --curves folders and --out; writes only
// --out.

import { basename, join, resolve } from "node:path";
import { adapterInfo, flush, initGpu } from "../lib/tensor/engine.ts";
import { failOnProblems } from "../lib/cli/problems.ts";
import { type MetricRecord, METRICS_FILE, readMetrics } from "../lib/cli/metrics.ts";
import { type StageAccess } from "../lib/cli/permissions.ts";
import { stageMain } from "../lib/cli/stage_main.ts";
import { Progress } from "../lib/cli/progress.ts";
import {
  beginStage,
  failer,
  finishStage,
  MANIFEST_FILE,
  type StageResult,
  type StageRun,
} from "../lib/cli/stage.ts";
import { augmentViews, identityAugmentations, uploadPixels } from "../lib/data/augment.ts";
import { Loader, shardSource } from "../lib/data/loader.ts";
import { MaskingGenerator } from "../lib/data/masking.ts";
import { openShards, type ShardSet, type SplitReader } from "../lib/data/shards.ts";
import { writeFileAtomic } from "../lib/io/atomic.ts";
import { sha256Hex } from "../lib/io/hash.ts";
import { encodePng } from "../lib/io/png.ts";
import {
  type Measurement,
  measurement,
  REQUIRED_REPORT_KEYS,
  type RunRef,
  writeReport,
} from "../lib/io/report.ts";
import {
  barChart,
  type Chart,
  codeFrequencyChart,
  finetuneCharts,
  probeChart,
  stageCurveCharts,
  writeChart,
  type WrittenChart,
} from "../lib/report/charts.ts";
import { type Block, fileReader, fixed, pct, toHtml, toMarkdown } from "../lib/report/document.ts";
import { greyPatches, type GridLayout, imageAt, imageGrid } from "../lib/report/images.ts";
import {
  Beit,
  BEIT_MODEL_FILE,
  BeitClassifier,
  type BeitConfig,
  type BeitImageSpec,
  readBeitMeta,
  resolveBeitConfig,
} from "../lib/models/beit.ts";
import { Tokenizer, TOKENIZER_FILE } from "../lib/models/tokenizer.ts";
import { Rng } from "../lib/tensor/init.ts";
import {
  add,
  affine,
  argmax,
  clamp,
  mean,
  mul,
  noGrad,
  readAll,
  slice,
  type Tensor,
  tensor,
  tidy,
} from "../lib/tensor/mod.ts";
import {
  type BatchStream,
  ConvClassifier,
  type CurvePoint,
  type EvalSet,
  finetune,
  type FinetuneConfig,
} from "../lib/train/finetune.ts";
import { extractFeatures, trainLinearProbe } from "../lib/train/probe.ts";
import { meanPsnr, perImageMse } from "../lib/train/psnr.ts";
import { ssimPerImage } from "../lib/train/ssim.ts";
import {
  type ArmPaths,
  armPaths,
  checkEvaluateData,
  checkEvaluateLabels,
  checkEvaluateOptions,
  evaluateCommand,
  type EvaluateOptions,
  finetuneWarmup,
  maskRatios,
  nonEmpty,
} from "../lib/stages/evaluate_options.ts";

const STAGE = "evaluate";
const FIGURES = "figures";
/** The real-image classifier's input: (x/255 − 0.5) / 0.5. */
const HALF = { mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5] };

export { evaluateCommand, type EvaluateOptions };

export type EvaluateResult = StageResult;

const fail: (what: string) => never = failer(STAGE);

/** Checks the options (usage errors, exit 2): every problem at once; the arms' folders. */
function checkOptions(o: EvaluateOptions): ArmPaths[] {
  failOnProblems(checkEvaluateOptions(o));
  return armPaths(o);
}

/** The paths the sandboxed stage may read and write. */
export function evaluateAccess(o: EvaluateOptions): StageAccess {
  const out = resolve(o.out);
  const read = [resolve(o.shards), out, ...nonEmpty(o.curves).map((c) => resolve(c))];
  for (const arm of armPaths(o)) {
    read.push(arm.export);
    if (arm.pretrain) read.push(arm.pretrain);
  }
  return { read, write: [out] };
}

// ---- inputs ---------------------------------------------------------------------------------

interface StageFolder {
  dir: string;
  sha256: string;
  manifest: {
    stage: string;
    config?: Record<string, unknown>;
    inputs?: Record<string, { dir?: string; sha256?: string }>;
    summary?: Record<string, unknown>;
  };
}

/** A finished stage folder: its manifest.json and the manifest's sha256 (as beginStage hashes it). */
async function stageFolder(option: string, dir: string, stage?: string): Promise<StageFolder> {
  let bytes: Uint8Array;
  try {
    if (!(await Deno.stat(dir)).isDirectory) fail(`${option} ${dir} is not a folder`);
    bytes = await Deno.readFile(join(dir, MANIFEST_FILE));
  } catch (error) {
    if ((error as Error).message.startsWith("peco:")) throw error;
    if (error instanceof Deno.errors.NotFound) {
      fail(`${option} ${dir}: no ${MANIFEST_FILE} (missing, or an unfinished stage)`);
    }
    fail(`${option} ${dir}: cannot read ${MANIFEST_FILE} (${(error as Error).message})`);
  }
  let manifest: StageFolder["manifest"];
  try {
    manifest = JSON.parse(new TextDecoder().decode(bytes));
  } catch (error) {
    return fail(`${option} ${join(dir, MANIFEST_FILE)} is not JSON (${(error as Error).message})`);
  }
  if (typeof manifest?.stage !== "string") {
    fail(`${option} ${join(dir, MANIFEST_FILE)} is not a stage manifest (no "stage")`);
  }
  if (stage && manifest.stage !== stage) {
    fail(`${option} ${dir} holds a ${manifest.stage} run, not ${stage}`);
  }
  return { dir, sha256: sha256Hex(bytes), manifest };
}

async function requireFile(option: string, path: string): Promise<void> {
  const ok = await Deno.stat(path).then((s) => s.isFile, () => false);
  if (!ok) fail(`${option}: ${path} is missing`);
}

/** The codebook statistics an export wrote (usage, perplexity per split; Figure 3 files). */
interface CodebookJson {
  codebookSize: number;
  splits: Record<string, { usage: number; perplexity: number }>;
  patches?: {
    split?: string;
    codes?: { code: number; file: string; kind?: string; occurrences?: number }[];
  };
  /** The histogram of codes per split. */
  counts?: Record<string, number[]>;
}

interface Arm extends ArmPaths {
  index: number;
  /** A file-name-safe id: "1-lambda_1". */
  slug: string;
  exportRun: StageFolder;
  codebook: CodebookJson;
  pretrainRun: StageFolder | null;
  vit: { config: BeitConfig; image: BeitImageSpec } | null;
}

interface Inputs {
  shards: ShardSet;
  shardsRef: RunRef;
  classes: number;
  arms: Arm[];
  curves: StageFolder[];
}

function slugOf(label: string, index: number): string {
  const ascii = label.replace(/λ/g, "lambda").normalize("NFKD").replace(/[^A-Za-z0-9.]+/g, "_")
    .replace(/^_+|_+$/g, "");
  return `${index + 1}${ascii ? `-${ascii}` : ""}`;
}

/** That `run` was made from the shards of this evaluation (when it records its shards input). */
function checkShardsInput(option: string, run: StageFolder, shards: RunRef): void {
  const recorded = run.manifest.inputs?.shards?.sha256;
  if (recorded !== undefined && recorded !== shards.sha256) {
    fail(
      `${option} ${run.dir} was made from other shards (manifest sha256 ${
        recorded.slice(0, 12)
      }…) than --shards ${shards.dir} (${shards.sha256.slice(0, 12)}…)`,
    );
  }
}

/** The ViT of a pretrain folder: its config and input images, from model.safetensors' metadata. */
async function pretrainVit(run: StageFolder) {
  const file = join(run.dir, BEIT_MODEL_FILE);
  await requireFile("--pretrain", file);
  try {
    const meta = await readBeitMeta(file);
    return { config: resolveBeitConfig(meta.config), image: meta.image };
  } catch (error) {
    // Older files: the config in the manifest, inputs normalised as the tokenizer's.
    const model = (run.manifest.config as { model?: BeitConfig } | undefined)?.model;
    if (!model) {
      return fail(`--pretrain ${file}: ${(error as Error).message.replace(/^peco: /, "")}`);
    }
    return { config: resolveBeitConfig(model), image: null };
  }
}

async function openArm(paths: ArmPaths, index: number, shards: ShardSet, shardsRef: RunRef) {
  const exportRun = await stageFolder("--export", paths.export, "export-codebook");
  checkShardsInput("--export", exportRun, shardsRef);
  await requireFile("--export", join(paths.export, TOKENIZER_FILE));
  let codebook: CodebookJson;
  try {
    codebook = JSON.parse(await Deno.readTextFile(join(paths.export, "codebook.json")));
  } catch (error) {
    return fail(`--export ${paths.export}/codebook.json: ${(error as Error).message}`);
  }
  if (!codebook?.splits || !Object.keys(codebook.splits).length) {
    fail(`--export ${paths.export}/codebook.json has no per-split statistics`);
  }
  let pretrainRun: StageFolder | null = null;
  let vit: Arm["vit"] = null;
  if (paths.pretrain) {
    pretrainRun = await stageFolder("--pretrain", paths.pretrain, "pretrain");
    checkShardsInput("--pretrain", pretrainRun, shardsRef);
    // The pretrain run's targets must be this arm's tokens.
    const used = Object.values(pretrainRun.manifest.inputs ?? {}).map((i) => i.sha256);
    const fromExport = Object.entries(pretrainRun.manifest.inputs ?? {})
      .some(([k, i]) => k !== "shards" && i.sha256 === exportRun.sha256);
    if (used.length > 1 && !fromExport) {
      fail(
        `--pretrain ${paths.pretrain} was not trained on the tokens of --export ${paths.export} ` +
          `(arm "${paths.label}")`,
      );
    }
    const spec = await pretrainVit(pretrainRun);
    const { channels, height, width } = shards.manifest.image;
    vit = {
      config: spec.config,
      image: spec.image ?? { channels, size: spec.config.imageSize, mean: [], std: [] },
    };
    if (spec.config.inChannels !== channels || height !== width) {
      fail(
        `--pretrain ${paths.pretrain}: the ViT takes ${spec.config.inChannels}-channel images, ` +
          `the shards hold [${channels},${height},${width}]`,
      );
    }
  }
  return {
    ...paths,
    index,
    slug: slugOf(paths.label, index),
    exportRun,
    codebook,
    pretrainRun,
    vit,
  };
}

/** Opens and checks every input; nothing is computed or written before this returns. */
async function openInputs(o: EvaluateOptions, paths: ArmPaths[]): Promise<Inputs> {
  let shards: ShardSet;
  const dir = resolve(o.shards);
  try {
    shards = await openShards(dir);
  } catch (error) {
    return fail(`--shards: ${(error as Error).message.replace(/^peco: /, "")}`);
  }
  for (const split of ["train", "val"]) {
    if (!shards.splits[split]?.count) fail(`--shards ${dir} has no "${split}" images`);
  }
  const data = checkEvaluateData(o, shards.splits.train.count);
  if (data.length) fail(`--shards ${dir}: ${data[0].message}`);
  const labels = checkEvaluateLabels(shards.manifest.labelled, shards.manifest.classes.length);
  if (labels.length) fail(`--shards ${dir}: ${labels[0].message}`);
  const shardsRef = await stageFolder("--shards", dir, "shard");
  const arms: Arm[] = [];
  for (const [i, p] of paths.entries()) arms.push(await openArm(p, i, shards, shardsRef));
  const curves: StageFolder[] = [];
  for (const c of nonEmpty(o.curves)) curves.push(await stageFolder("--curves", resolve(c)));
  // The pretrain folders are plotted too; each folder once.
  for (const a of arms) {
    if (a.pretrainRun && !curves.some((c) => c.dir === a.pretrainRun!.dir)) {
      curves.push(a.pretrainRun);
    }
  }
  return {
    shards,
    shardsRef: { dir: shardsRef.dir, sha256: shardsRef.sha256 },
    classes: shards.manifest.classes.length,
    arms,
    curves,
  };
}

// ---- config ---------------------------------------------------------------------------------

/** The resolved, fingerprinted config (paths are not part of it: the inputs' hashes are). */
function resolveConfig(o: EvaluateOptions, inputs: Inputs) {
  const evalImages = Math.min(o["eval-images"], inputs.shards.splits.val.count);
  return {
    arms: inputs.arms.map((a) => ({ label: a.label, pretrained: a.pretrainRun !== null })),
    seed: o.seed,
    evalImages,
    finetune: {
      steps: o["finetune-steps"],
      batch: o["finetune-batch"],
      lr: o["finetune-lr"],
      warmupSteps: finetuneWarmup(o),
      layerDecay: o["layer-decay"],
      labelSmoothing: o["label-smoothing"],
      dropPath: o["drop-path"],
      weightDecay: o["weight-decay"],
      betas: [0.9, 0.999] as [number, number],
    },
    probe: {
      trainImages: Math.min(o["probe-train"], inputs.shards.splits.train.count),
      epochs: o["probe-epochs"],
      batch: o["probe-batch"],
      lr: o["probe-lr"],
      weightDecay: 1e-4,
      /** Share of the probe's training images held back to choose the best ViT block. */
      selectFraction: 0.2,
    },
    classifier: {
      steps: o["classifier-steps"],
      batch: o["classifier-batch"],
      lr: 2e-3,
      width: o["classifier-width"],
    },
    figure: { images: Math.min(o["figure-images"], evalImages), maskRatios: maskRatios(o) },
    batch: o.batch,
  };
}

type EvaluateConfig = ReturnType<typeof resolveConfig>;

// ---- images -----------------------------------------------------------------------------------

/** Host images of one split: the first n records, uint8 [n, C, H, W] with labels. */
interface HostSet {
  n: number;
  pixels: Uint8Array;
  labels: Int32Array;
  channels: number;
  size: number;
}

async function readSet(split: SplitReader, n: number): Promise<HostSet> {
  const b = await split.readRange(0, n);
  return { n, pixels: b.pixels, labels: b.labels, channels: split.channels, size: split.height };
}

interface ImageSpec {
  size: number;
  mean: readonly number[];
  std: readonly number[];
}

/** Images [from, to) of a host set as f32 [n, C, size, size], normalised as `spec`. */
function gpuImages(set: HostSet, from: number, to: number, spec: ImageSpec): Tensor {
  const bytes = set.channels * set.size * set.size;
  const n = to - from;
  const upload = uploadPixels(
    set.pixels.subarray(from * bytes, to * bytes),
    n,
    set.channels,
    set.size,
    set.size,
  );
  const [x] = augmentViews(upload, identityAugmentations(n, set.size, set.size), [{
    height: spec.size,
    width: spec.size,
    mean: spec.mean.slice(0, set.channels),
    std: spec.std.slice(0, set.channels),
  }]);
  upload.pixels.dispose();
  return x;
}

/** x normalised as (v − mean)/std per channel → v·std + mean, then mapped by (· − m2)/s2. */
function renormalise(x: Tensor, from: ImageSpec, to: ImageSpec | null, clampUnit = true): Tensor {
  const c = x.shape[1];
  const perChannel = (f: (k: number) => number) =>
    tensor(Array.from({ length: c }, (_, k) => f(k)), [1, c, 1, 1]);
  const uniform = (v: readonly number[]) => v.slice(0, c).every((s) => s === v[0]);
  let unit: Tensor;
  if (uniform(from.std) && uniform(from.mean)) unit = affine(x, from.std[0], from.mean[0]);
  else unit = add(mul(x, perChannel((k) => from.std[k])), perChannel((k) => from.mean[k]));
  if (clampUnit) unit = clamp(unit, 0, 1);
  if (!to) return unit;
  if (uniform(to.std) && uniform(to.mean)) {
    return affine(unit, 1 / to.std[0], -to.mean[0] / to.std[0]);
  }
  return mul(add(unit, perChannel((k) => -to.mean[k])), perChannel((k) => 1 / to.std[k]));
}

function evalSetOf(set: HostSet, count: number, spec: ImageSpec): EvalSet {
  return {
    count,
    labels: set.labels.subarray(0, count),
    inputs: (from, to) => gpuImages(set, from, to, spec),
  };
}

/** Training batches of the train split (seeded order, no augmentation) for a classifier. */
function trainStream(
  shards: ShardSet,
  batch: number,
  seed: number,
  spec: ImageSpec,
): { stream: BatchStream<unknown>; close: () => Promise<void> } {
  const loader = new Loader(shardSource(shards.splits.train), { batchSize: batch, seed });
  const batches = loader.batches();
  const view = [{
    height: spec.size,
    width: spec.size,
    mean: spec.mean.slice(0, loader.source.channels),
    std: spec.std.slice(0, loader.source.channels),
  }];
  return {
    stream: {
      next: async () => (await batches.next()).value!,
      upload: (b) => {
        const g = loader.toGpu(b as Parameters<typeof loader.toGpu>[0], view);
        return { x: g.views[0], labels: g.labels };
      },
    },
    close: async () => void await batches.return(undefined),
  };
}

// ---- measurements ---------------------------------------------------------------------------

type Log = (line: string) => void;

/** A progress bar for one measurement and its one-line result. */
class Measure {
  private readonly bar: Progress;
  private readonly started = performance.now();
  constructor(
    readonly label: string,
    total: number,
    unit: string,
    quiet: boolean | undefined,
    private readonly log: Log,
  ) {
    this.bar = new Progress({ label, total, unit, quiet });
  }
  update(done: number, metrics: Record<string, number | string> = {}): void {
    this.bar.update(done, metrics);
  }
  /** Ends the bar and logs the result line; returns the seconds taken. */
  done(result: string): number {
    const seconds = (performance.now() - this.started) / 1000;
    this.bar.finish();
    this.log(`${STAGE}: ${this.label}: ${result} (${seconds.toFixed(1)} s)`);
    return seconds;
  }
}

interface Context {
  o: EvaluateOptions;
  config: EvaluateConfig;
  inputs: Inputs;
  run: StageRun;
  log: Log;
  val: HostSet;
  probeTrain: HostSet;
  seconds: Record<string, number>;
}

function seedFor(seed: number, label: string): number {
  return new Rng(seed).fork(label).key;
}

/** The real-image classifier (ConvClassifier) trained once; its top-1 on real held-out images. */
async function trainRealClassifier(ctx: Context) {
  const { config, inputs } = ctx;
  const c = config.classifier;
  const spec = { size: ctx.val.size, ...HALF };
  const model = new ConvClassifier(
    ctx.val.channels,
    ctx.val.size,
    inputs.classes,
    new Rng(seedFor(config.seed, "classifier")),
    c.width,
  );
  const m = new Measure("real-image classifier", c.steps, "step", ctx.o.quiet, ctx.log);
  const { stream, close } = trainStream(inputs.shards, c.batch, config.seed, spec);
  try {
    const result = await finetune(model, {
      train: stream,
      val: evalSetOf(ctx.val, config.evalImages, spec),
    }, {
      steps: c.steps,
      lr: c.lr,
      warmupSteps: Math.min(20, Math.floor(c.steps / 4)),
      weightDecay: 0.01,
      logEvery: 10,
      evalBatch: config.batch,
    }, { onLog: (p) => m.update(p.step, p.loss !== undefined ? { loss: p.loss } : {}) });
    ctx.seconds.classifier = m.done(
      `top-1 ${pct(result.accuracy)}% on ${config.evalImages} real val images`,
    );
    return { model, accuracy: result.accuracy, spec };
  } catch (error) {
    model.dispose();
    throw error;
  } finally {
    await close();
  }
}

interface TokenizerMeasures {
  psnr: number;
  ssim: number;
  reconAcc: number;
  codewordAcc: number;
  codewordTrainAcc: number;
}

/** Reconstruction PSNR / SSIM / classification, and the codeword linear probe, of one tokenizer. */
async function measureTokenizer(
  ctx: Context,
  arm: Arm,
  tok: Tokenizer,
  classifier: { model: ConvClassifier; spec: ImageSpec },
): Promise<TokenizerMeasures> {
  const { config } = ctx;
  const spec = tok.info.image;
  const n = config.evalImages;
  const batch = config.batch;
  const m = new Measure(`tokenizer ${arm.label}: reconstructions`, n, "img", ctx.o.quiet, ctx.log);
  const pending: Tensor[] = [];
  const mses: Tensor[] = [];
  const ssims: Tensor[] = [];
  classifier.model.eval();
  try {
    for (let from = 0; from < n; from += batch) {
      const to = Math.min(n, from + batch);
      const [mse, ssim, pred] = noGrad(() =>
        tidy(() => {
          const x = gpuImages(ctx.val, from, to, spec);
          const xhat = tok.decode(tok.encode(x));
          const [a, b] = [renormalise(x, spec, null), renormalise(xhat, spec, null)];
          const logits = classifier.model.forward(renormalise(xhat, spec, classifier.spec));
          return [perImageMse(b, a), ssimPerImage(b, a, { dataRange: 1 }), argmax(logits, 1)];
        })
      );
      mses.push(mse);
      ssims.push(ssim);
      pending.push(pred);
      flush();
      m.update(to);
    }
    const values = await readAll([...mses, ...ssims, ...pending]);
    const k = mses.length;
    const mseAll = values.slice(0, k).flatMap((v) => [...v]);
    const ssimAll = values.slice(k, 2 * k).flatMap((v) => [...v]);
    let correct = 0, at = 0;
    for (const v of values.slice(2 * k)) {
      for (const p of new Int32Array(v.buffer, v.byteOffset, v.length)) {
        correct += p === ctx.val.labels[at++] ? 1 : 0;
      }
    }
    const psnr = meanPsnr(mseAll, 1);
    const ssim = ssimAll.reduce((s, v) => s + v, 0) / ssimAll.length;
    const reconAcc = correct / n;
    ctx.seconds[`tokenizer ${arm.label} reconstructions`] = m.done(
      `PSNR ${psnr.toFixed(2)} dB, SSIM ${ssim.toFixed(4)}, reconstructions classified ` +
        `${pct(reconAcc)}% on ${n} val images`,
    );
    const probe = await codewordProbe(ctx, arm, tok);
    return {
      psnr,
      ssim,
      reconAcc,
      codewordAcc: probe.accuracy,
      codewordTrainAcc: probe.trainAccuracy,
    };
  } finally {
    [...mses, ...ssims, ...pending].forEach((t) => t.dispose());
  }
}

/** Paper Table 4: a linear probe on each image's average-pooled quantized codewords. */
async function codewordProbe(ctx: Context, arm: Arm, tok: Tokenizer) {
  const { config } = ctx;
  const spec = tok.info.image;
  const nTrain = config.probe.trainImages, nVal = config.evalImages;
  const m = new Measure(
    `tokenizer ${arm.label}: codeword probe`,
    nTrain + nVal,
    "img",
    ctx.o.quiet,
    ctx.log,
  );
  const pooled = (set: HostSet, offset: number) => (from: number, to: number) => {
    const ids = tok.encode(gpuImages(set, from, to, spec));
    m.update(offset + to);
    return mean(tok.codewords(ids), 1);
  };
  const [train] = extractFeatures(nTrain, config.batch, pooled(ctx.probeTrain, 0));
  const [val] = extractFeatures(nVal, config.batch, pooled(ctx.val, nTrain));
  try {
    const result = await trainLinearProbe(
      { features: train, labels: ctx.probeTrain.labels.subarray(0, nTrain) },
      { features: val, labels: ctx.val.labels.subarray(0, nVal) },
      ctx.inputs.classes,
      { ...probeOptions(config), seed: seedFor(config.seed, "codeword probe") },
    );
    ctx.seconds[`tokenizer ${arm.label} codeword probe`] = m.done(
      `codeword linear probe top-1 ${pct(result.accuracy)}% (train ${pct(result.trainAccuracy)}%)`,
    );
    return result;
  } finally {
    train.dispose();
    val.dispose();
  }
}

function probeOptions(config: EvaluateConfig) {
  const p = config.probe;
  return { epochs: p.epochs, batchSize: p.batch, lr: p.lr, weightDecay: p.weightDecay };
}

function vitSpec(arm: Arm, tok: { image: ImageSpec }): ImageSpec {
  const image = arm.vit!.image;
  // A model file without an image spec: inputs normalised as the tokenizer's.
  return image.mean.length ? image : { ...tok.image, size: arm.vit!.config.imageSize };
}

async function loadBeit(arm: Arm, seed: number): Promise<Beit> {
  const model = new Beit(arm.vit!.config, seed, "mim");
  try {
    await model.loadSafetensors(join(arm.pretrainRun!.dir, BEIT_MODEL_FILE));
  } catch (error) {
    model.dispose();
    fail(`--pretrain ${arm.pretrainRun!.dir}: ${(error as Error).message.replace(/^peco: /, "")}`);
  }
  return model.eval();
}

/** Linear probes of the frozen ViT on mean-pooled patch tokens of every block. */
async function vitProbe(ctx: Context, arm: Arm, beit: Beit, spec: ImageSpec) {
  const { config } = ctx;
  const nTrain = config.probe.trainImages, nVal = config.evalImages;
  const depth = arm.vit!.config.depth;
  const m = new Measure(
    `ViT ${arm.label}: linear probes`,
    nTrain + nVal + depth,
    "item",
    ctx.o.quiet,
    ctx.log,
  );
  const blockFeatures = (set: HostSet, offset: number) => (from: number, to: number) => {
    const { blocks } = beit.features(gpuImages(set, from, to, spec), null, { allBlocks: true });
    m.update(offset + to);
    return blocks!.map((b) => mean(slice(b, 1, 1, b.shape[1]), 1));
  };
  const train = extractFeatures(nTrain, config.batch, blockFeatures(ctx.probeTrain, 0));
  const val = extractFeatures(nVal, config.batch, blockFeatures(ctx.val, nTrain));
  // The best block is chosen on training images held back from the probe, not on val.
  const fit = Math.round(nTrain * (1 - config.probe.selectFraction));
  const labels = ctx.probeTrain.labels;
  const perBlock: { block: number; select: number; val: number }[] = [];
  try {
    for (let i = 0; i < depth; i++) {
      const [fitF, selF] = noGrad(() => [
        slice(train[i], 0, 0, fit),
        slice(train[i], 0, fit, nTrain),
      ]);
      try {
        const seed = seedFor(config.seed, `vit probe ${i}`);
        const options = { ...probeOptions(config), seed };
        const fitSet = { features: fitF, labels: labels.subarray(0, fit) };
        const sel = await trainLinearProbe(
          fitSet,
          { features: selF, labels: labels.subarray(fit, nTrain) },
          ctx.inputs.classes,
          options,
        );
        const onVal = await trainLinearProbe(
          fitSet,
          { features: val[i], labels: ctx.val.labels.subarray(0, nVal) },
          ctx.inputs.classes,
          options,
        );
        perBlock.push({ block: i + 1, select: sel.accuracy, val: onVal.accuracy });
      } finally {
        fitF.dispose();
        selF.dispose();
      }
      m.update(nTrain + nVal + i + 1);
    }
  } finally {
    [...train, ...val].forEach((t) => t.dispose());
  }
  const best = perBlock.reduce((b, p) => (p.select > b.select ? p : b), perBlock[0]);
  const last = perBlock[depth - 1];
  ctx.seconds[`vit ${arm.label} probes`] = m.done(
    `linear probe top-1 last block ${pct(last.val)}%, best block ${best.block} ${pct(best.val)}%`,
  );
  return { last: last.val, best, perBlock };
}

/**
 * Paper Figure 2/5: per image, original | tokenizer reconstruction | per mask ratio: masked
 * (greyed patches) and the decoding of predicted codes at masked positions with the tokenizer's
 * codes elsewhere.
 */
async function maskFigure(
  ctx: Context,
  arm: Arm,
  beit: Beit,
  tok: Tokenizer,
  spec: ImageSpec,
): Promise<MaskFigure> {
  const { config } = ctx;
  const f = config.figure.images;
  const [gh, gw] = beit.grid;
  const t = gh * gw;
  if (tok.info.grid[0] !== gh || tok.info.grid[1] !== gw) {
    fail(
      `arm "${arm.label}": the ViT's patch grid ${gh}×${gw} differs from the tokenizer's ` +
        `${tok.info.grid.join("×")}`,
    );
  }
  const rng = new Rng(seedFor(config.seed, "mask figure"));
  const unit = (x: Tensor) => renormalise(x, tok.info.image, null);
  const [ids, original, recon] = noGrad(() =>
    tidy(() => {
      const x = gpuImages(ctx.val, 0, f, tok.info.image);
      const ids = tok.encode(x);
      return [ids, unit(x), unit(tok.decode(ids))];
    })
  );
  const [idsHost, origHost, reconHost] = await readAll([ids, original, recon]);
  const codes = new Int32Array(idsHost.buffer, idsHost.byteOffset, idsHost.length);
  const shape = original.shape;
  [original, recon].forEach((x) => x.dispose());
  const columns: { masked: Float32Array; predicted: Float32Array }[] = [];
  const maskedAcc: Record<string, number> = {};
  try {
    for (const ratio of config.figure.maskRatios) {
      const gen = new MaskingGenerator({
        height: gh,
        width: gw,
        budget: Math.max(1, Math.round(ratio * t)),
        minBlock: Math.max(1, Math.round((16 / 196) * t)),
      });
      const masks = gen.generateBatch(rng.fork(`ratio ${ratio}`), f);
      const where = [...masks.keys()].filter((i) => masks[i] === 1);
      const pred = noGrad(() =>
        tidy(() => {
          const x = gpuImages(ctx.val, 0, f, spec);
          const mask = tensor(Float32Array.from(masks), [f, t]);
          const logits = beit.mimLogits(x, mask, tensor(where, [where.length], "i32"));
          return argmax(logits, 1);
        })
      );
      const [predHost] = await readAll([pred]);
      pred.dispose();
      const predicted = Int32Array.from(codes);
      const p = new Int32Array(predHost.buffer, predHost.byteOffset, predHost.length);
      let hits = 0;
      where.forEach((pos, j) => {
        hits += p[j] === codes[pos] ? 1 : 0;
        predicted[pos] = p[j];
      });
      maskedAcc[String(ratio)] = where.length ? hits / where.length : 0;
      const decoded = noGrad(() => tidy(() => unit(tok.decode(tensor(predicted, [f, t], "i32")))));
      const [decodedHost] = await readAll([decoded]);
      decoded.dispose();
      const grey = greyPatches(
        { data: origHost, shape },
        masks,
        tok.downsampleFactor,
        0.5,
      );
      columns.push({ masked: grey.data as Float32Array, predicted: decodedHost });
    }
  } finally {
    ids.dispose();
  }
  const host = (data: Float32Array) => ({ data, shape });
  const rows = Array.from({ length: f }, (_, i) => [
    imageAt(host(origHost), i),
    imageAt(host(reconHost), i),
    ...columns.flatMap((c) => [imageAt(host(c.masked), i), imageAt(host(c.predicted), i)]),
  ]);
  const headings = [
    "original",
    "tokenizer",
    ...config.figure.maskRatios.flatMap((r) => [
      `masked ${Math.round(100 * r)}%`,
      `predicted ${Math.round(100 * r)}%`,
    ]),
  ];
  const scale = Math.max(1, Math.ceil(60 / shape[3]));
  const file = `${FIGURES}/masked_prediction_${arm.slug}.png`;
  const grid = imageGrid(rows, { scale });
  await writeFileAtomic(join(ctx.run.out, file), encodePng(grid.image));
  return { file, columns: headings, layout: grid.layout, maskedAcc };
}

interface MaskFigure {
  file: string;
  /** Column headings, left to right. */
  columns: string[];
  layout: GridLayout;
  maskedAcc: Record<string, number>;
}

/** Fine-tunes a BeitClassifier (pretrained or from scratch) with the shared budget and seed. */
async function fineTuneRun(
  ctx: Context,
  label: string,
  vit: { config: BeitConfig },
  spec: ImageSpec,
  weights: string | null,
) {
  const { config, inputs } = ctx;
  const ft = config.finetune;
  const seed = seedFor(config.seed, "finetune");
  const model = new BeitClassifier({ ...vit.config, dropPath: ft.dropPath }, inputs.classes, seed);
  const m = new Measure(`fine-tune ${label}`, ft.steps, "step", ctx.o.quiet, ctx.log);
  const { stream, close } = trainStream(inputs.shards, ft.batch, seed, spec);
  try {
    if (weights) {
      try {
        await model.loadPretrained(weights);
      } catch (error) {
        fail(`${label}: ${(error as Error).message.replace(/^peco: /, "")}`);
      }
    }
    const run: FinetuneConfig = {
      steps: ft.steps,
      lr: ft.lr,
      warmupSteps: ft.warmupSteps,
      weightDecay: ft.weightDecay,
      betas: ft.betas,
      layerDecay: ft.layerDecay,
      labelSmoothing: ft.labelSmoothing,
      logEvery: 10,
      evalEvery: Math.max(1, Math.floor(ft.steps / 2)),
      evalBatch: config.batch,
      seed,
    };
    const result = await finetune(
      model,
      {
        train: stream,
        val: evalSetOf(ctx.val, config.evalImages, spec),
      },
      run,
      {
        layers: { numLayers: vit.config.depth, layerId: (n) => model.layerId(n) },
        onLog: (p) => m.update(p.step, p.loss !== undefined ? { loss: p.loss } : {}),
      },
    );
    ctx.seconds[`finetune ${label}`] = m.done(
      `top-1 ${pct(result.accuracy)}% on ${config.evalImages} val images`,
    );
    return result;
  } finally {
    await close();
    model.dispose();
  }
}

// ---- curves ---------------------------------------------------------------------------------

interface StageCurves {
  dir: string;
  stage: string;
  charts: WrittenChart[];
  note?: string;
}

/** Writes a chart as figures/<id>.svg. */
function saveChart(ctx: Context, chart: Chart): Promise<WrittenChart> {
  return writeChart(ctx.run.out, `${FIGURES}/${chart.id}.svg`, chart);
}

/** The curve charts of each stage folder with a metrics.jsonl; the others are listed as such. */
async function stageCurveFigures(ctx: Context): Promise<StageCurves[]> {
  const out: StageCurves[] = [];
  for (const [i, folder] of ctx.inputs.curves.entries()) {
    const stage = folder.manifest.stage;
    let records: MetricRecord[];
    try {
      records = await readMetrics(join(folder.dir, METRICS_FILE));
    } catch {
      out.push({ dir: folder.dir, stage, charts: [], note: `no ${METRICS_FILE}` });
      ctx.log(`${STAGE}: curves: ${folder.dir} (${stage}) has no ${METRICS_FILE}; no chart`);
      continue;
    }
    const charts = stageCurveCharts(records, `curves_${i + 1}_${stage}`, stage);
    if (!charts.length) {
      out.push({ dir: folder.dir, stage, charts: [], note: "no numeric curves" });
      continue;
    }
    const written: WrittenChart[] = [];
    for (const chart of charts) written.push(await saveChart(ctx, chart));
    out.push({ dir: folder.dir, stage, charts: written });
  }
  return out;
}

/**
 * The export's code-frequency chart (from the counts in its codebook.json) and its Figure 3 patch
 * grids, copied into figures/export_<arm>/.
 */
async function exportFigures(ctx: Context, arm: Arm): Promise<ExportFigures> {
  const dir = `${FIGURES}/export_${arm.slug}`;
  const copy = async (name: string) => {
    const src = join(arm.export, "figures", name);
    const ok = await Deno.stat(src).then((s) => s.isFile, () => false);
    if (!ok) return null;
    await Deno.mkdir(join(ctx.run.out, dir), { recursive: true });
    await writeFileAtomic(join(ctx.run.out, dir, name), await Deno.readFile(src));
    return `${dir}/${name}`;
  };
  const counts = arm.codebook.counts;
  const histogram = counts && Object.keys(counts).length
    ? await saveChart(
      ctx,
      codeFrequencyChart(`code_frequency_${arm.slug}`, `Code frequency: ${arm.label}`, counts),
    )
    : null;
  const patches: ExportFigures["patches"] = [];
  for (const c of arm.codebook.patches?.codes ?? []) {
    const got = await copy(basename(c.file));
    if (got) patches.push({ ...c, file: got });
  }
  return { histogram, patches, patchSplit: arm.codebook.patches?.split ?? "val" };
}

interface ExportFigures {
  histogram: WrittenChart | null;
  /** Figure 3: a grid of patches per code. */
  patches: { code: number; kind?: string; occurrences?: number; file: string }[];
  patchSplit: string;
}

// ---- masked-token accuracy of the pretrain run ------------------------------------------------

/** The pretrain run's masked-token accuracy: its summary, else the last logged value. */
async function pretrainMaskedAcc(
  run: StageFolder,
): Promise<{ value: number | null; split: string; key: string }> {
  const summary = run.manifest.summary ?? {};
  // The held-out masked accuracy first (pretrain's eval_accuracy), then training-batch accuracy.
  const keys = ["eval_accuracy", "val_masked_acc", "masked_acc", "accuracy"];
  const splitOf = (key: string) => (/^(eval|val)_/.test(key) ? "val" : "train");
  for (const key of keys) {
    const v = summary[key];
    if (typeof v === "number" && Number.isFinite(v)) {
      return { value: v, split: splitOf(key), key: `summary.${key}` };
    }
  }
  try {
    const records = await readMetrics(join(run.dir, METRICS_FILE));
    for (const key of keys) {
      const last = records.filter((r) => typeof r[key] === "number").at(-1);
      if (last) {
        return {
          value: last[key] as number,
          split: splitOf(key),
          key: `${METRICS_FILE}:${key}@${last.step}`,
        };
      }
    }
  } catch {
    // No metrics: reported as not measured.
  }
  return { value: null, split: "train", key: "none" };
}

// ---- the stage --------------------------------------------------------------------------------

export async function runEvaluate(
  o: EvaluateOptions,
  { log = (line: string) => console.error(line) }: { log?: Log } = {},
): Promise<EvaluateResult> {
  const paths = checkOptions(o);
  // Every input is checked before anything is computed or written.
  const inputs = await openInputs(o, paths);
  await initGpu();
  const config = resolveConfig(o, inputs);
  const stageInputs: Record<string, string> = { shards: inputs.shards.dir };
  for (const a of inputs.arms) {
    stageInputs[`export.${a.index + 1}`] = a.export;
    if (a.pretrainRun) stageInputs[`pretrain.${a.index + 1}`] = a.pretrainRun.dir;
  }
  inputs.curves.forEach((c, i) => stageInputs[`curves.${i + 1}`] ??= c.dir);
  const run = await beginStage({
    name: STAGE,
    out: o.out,
    config,
    inputs: stageInputs,
    force: o.force ?? false,
    log,
  });
  if (run.status === "skip") return { status: "skip", out: run.out, summary: run.manifest.summary };
  const summary = await evaluate(o, config, inputs, run, log);
  await finishStage(run, { summary });
  return { status: "done", out: run.out, summary };
}

interface ArmResult {
  label: string;
  slug: string;
  export: RunRef;
  pretrain: RunRef | null;
  metrics: Record<string, Measurement>;
  figures: ExportFigures;
  maskFigure?: MaskFigure;
  vitProbe?: Awaited<ReturnType<typeof vitProbe>>;
  finetuneCurve?: CurvePoint[];
  maskedPrediction?: Record<string, number>;
  /** The ViT's input images (pretrained arms). */
  vitImage?: ImageSpec;
}

async function evaluate(
  o: EvaluateOptions,
  config: EvaluateConfig,
  inputs: Inputs,
  run: StageRun,
  log: Log,
): Promise<Record<string, unknown>> {
  const started = performance.now();
  const { shards } = inputs;
  const ref = (f: StageFolder): RunRef => ({ dir: f.dir, sha256: f.sha256 });
  const val = await readSet(shards.splits.val, config.evalImages);
  const probeTrain = await readSet(shards.splits.train, config.probe.trainImages);
  await Deno.mkdir(join(run.out, FIGURES), { recursive: true });
  const ctx: Context = { o, config, inputs, run, log, val, probeTrain, seconds: {} };
  log(
    `${STAGE}: ${adapterInfo().description}; ${inputs.arms.length} arm(s) ` +
      `(${inputs.arms.map((a) => a.label).join(", ")}), ${config.evalImages} val images, ` +
      `${inputs.classes} classes`,
  );

  // Codeword semantics and reconstructions: every arm's tokenizer.
  const classifier = await trainRealClassifier(ctx);
  const arms: ArmResult[] = [];
  try {
    for (const arm of inputs.arms) {
      const tok = await Tokenizer.load(join(arm.export, TOKENIZER_FILE)).catch((error) =>
        fail(`--export ${arm.export}: ${(error as Error).message.replace(/^peco: /, "")}`)
      );
      try {
        const { channels, height } = shards.manifest.image;
        if (tok.info.image.channels !== channels || tok.info.image.size !== height) {
          fail(
            `--export ${arm.export}: the tokenizer takes ${tok.info.image.channels}×` +
              `${tok.info.image.size}² images, the shards hold ${channels}×${height}²`,
          );
        }
        const t = await measureTokenizer(ctx, arm, tok, classifier);
        const split = arm.codebook.splits.val ? "val" : Object.keys(arm.codebook.splits)[0];
        const stats = arm.codebook.splits[split];
        const exportRef = ref(arm.exportRun);
        const result: ArmResult = {
          label: arm.label,
          slug: arm.slug,
          export: exportRef,
          pretrain: arm.pretrainRun ? ref(arm.pretrainRun) : null,
          metrics: {
            "tokenizer.psnr": measurement(t.psnr, "val", exportRef, { images: config.evalImages }),
            "tokenizer.ssim": measurement(t.ssim, "val", exportRef, { images: config.evalImages }),
            "tokenizer.usage": measurement(stats.usage, split, exportRef, {
              from: "codebook.json",
            }),
            "tokenizer.perplexity": measurement(stats.perplexity, split, exportRef, {
              from: "codebook.json",
            }),
            "codewords.linear_probe_acc": measurement(t.codewordAcc, "val", exportRef, {
              train_images: config.probe.trainImages,
              train_acc: t.codewordTrainAcc,
            }),
            "reconstruction.classifier_acc": measurement(t.reconAcc, "val", exportRef, {
              real_image_acc: classifier.accuracy,
            }),
          },
          figures: await exportFigures(ctx, arm),
        };
        if (arm.pretrainRun) {
          const spec = vitSpec(arm, tok.info);
          result.vitImage = spec;
          const beit = await loadBeit(arm, seedFor(config.seed, "beit"));
          try {
            const fig = await maskFigure(ctx, arm, beit, tok, spec);
            result.maskFigure = fig;
            result.maskedPrediction = fig.maskedAcc;
            result.vitProbe = await vitProbe(ctx, arm, beit, spec);
          } finally {
            beit.dispose();
          }
          const pr = ref(arm.pretrainRun);
          const masked = await pretrainMaskedAcc(arm.pretrainRun);
          result.metrics["pretrain.masked_acc"] = measurement(masked.value, masked.split, pr, {
            from: masked.key,
          });
          result.metrics["linear_probe.acc"] = measurement(result.vitProbe.last, "val", pr, {
            block: arm.vit!.config.depth,
          });
          result.metrics["linear_probe.best_acc"] = measurement(
            result.vitProbe.best.val,
            "val",
            pr,
            {
              block: result.vitProbe.best.block,
              chosen_on: `${
                Math.round(100 * config.probe.selectFraction)
              }% of the probe's train images`,
            },
          );
        }
        arms.push(result);
      } finally {
        tok.dispose();
      }
    }
  } finally {
    classifier.model.dispose();
  }

  // Fine-tuning: every pretrained arm, then once from scratch with the main architecture.
  const finetuneRuns: { label: string; curve: CurvePoint[] }[] = [];
  const main = inputs.arms.find((a) => a.pretrainRun);
  let scratch: Awaited<ReturnType<typeof fineTuneRun>> | null = null;
  let scratchSpec: ImageSpec | null = null;
  for (const arm of inputs.arms) {
    if (!arm.pretrainRun) continue;
    const spec = arms[arm.index].vitImage!;
    scratchSpec ??= spec;
    const r = await fineTuneRun(
      ctx,
      `pretrained ${arm.label}`,
      arm.vit!,
      spec,
      join(arm.pretrainRun.dir, BEIT_MODEL_FILE),
    );
    const result = arms[arm.index];
    result.metrics["finetune.pretrained_acc"] = measurement(
      r.accuracy,
      "val",
      ref(arm.pretrainRun),
      {
        steps: config.finetune.steps,
      },
    );
    result.finetuneCurve = r.curve;
    finetuneRuns.push({ label: arm.label, curve: r.curve });
  }
  if (main) {
    scratch = await fineTuneRun(ctx, "from scratch", main.vit!, scratchSpec!, null);
    finetuneRuns.push({ label: "scratch", curve: scratch.curve });
    for (const a of arms) {
      if (!a.pretrain) continue;
      a.metrics["finetune.scratch_acc"] = measurement(scratch.accuracy, "val", a.pretrain, {
        steps: config.finetune.steps,
        note: "random initialisation, the architecture of this pretrain run",
      });
    }
  }

  // Charts of every stage's curves and of fine-tuning.
  const curves = await stageCurveFigures(ctx);
  const finetune: WrittenChart[] = [];
  if (finetuneRuns.length) {
    for (const chart of finetuneCharts(finetuneRuns)) finetune.push(await saveChart(ctx, chart));
  }

  // report.json: the main arm's measurements at the top level.
  const first = arms[0];
  const json: Record<string, unknown> = {};
  for (const key of REQUIRED_REPORT_KEYS) {
    json[key] = first.metrics[key] ??
      measurement(null, "val", first.pretrain ?? first.export, {
        note: "not measured: the main arm has no pretrain folder",
      });
  }
  for (const [key, m] of Object.entries(first.metrics)) json[key] ??= m;
  json["classifier.real_acc"] = measurement(classifier.accuracy, "val", inputs.shardsRef, {
    steps: config.classifier.steps,
  });
  json.arms = arms.map((a) => ({
    label: a.label,
    export: a.export,
    pretrain: a.pretrain,
    metrics: a.metrics,
    figures: {
      masked_prediction: a.maskFigure?.file,
      code_histogram: a.figures.histogram?.file,
      patches: a.figures.patches.map((p) => p.file),
    },
    vit_probe_blocks: a.vitProbe?.perBlock,
    masked_prediction_acc: a.maskedPrediction,
    finetune_curve: a.finetuneCurve,
  }));
  json.finetune_scratch_curve = scratch?.curve ?? null;
  json.figures = {
    curves: curves.map((c) => ({
      dir: c.dir,
      stage: c.stage,
      files: c.charts.map((x) => x.file),
      note: c.note,
    })),
    finetune: finetune.map((c) => c.file),
  };
  json.config = config;
  json.shards = inputs.shardsRef;
  const blocks = await reportBlocks(ctx, arms, {
    classifierAcc: classifier.accuracy,
    scratch: scratch?.accuracy ?? null,
    curves,
    finetune,
  });
  await writeReport(run.out, {
    json,
    markdown: toMarkdown(blocks),
    html: await toHtml("PeCo evaluation", blocks, fileReader(run.out)),
  });
  const seconds = (performance.now() - started) / 1000;
  log(`${STAGE}: all measurements in ${seconds.toFixed(0)} s`);
  const value = (k: string) => (first.metrics[k]?.value ?? null);
  return {
    arms: arms.map((a) => a.label),
    psnr: value("tokenizer.psnr"),
    ssim: value("tokenizer.ssim"),
    codeword_probe_acc: value("codewords.linear_probe_acc"),
    reconstruction_acc: value("reconstruction.classifier_acc"),
    real_image_acc: classifier.accuracy,
    linear_probe_acc: value("linear_probe.acc"),
    finetune_pretrained_acc: value("finetune.pretrained_acc"),
    finetune_scratch_acc: scratch?.accuracy ?? null,
    seconds,
    measurement_seconds: ctx.seconds,
  };
}

// ---- report.md and report.html ----------------------------------------------------------------

/** The report's blocks: report.md and report.html are both written from them. */
async function reportBlocks(
  ctx: Context,
  arms: ArmResult[],
  extra: {
    classifierAcc: number;
    scratch: number | null;
    curves: StageCurves[];
    finetune: WrittenChart[];
  },
): Promise<Block[]> {
  const { config, inputs } = ctx;
  const v = (a: ArmResult, k: string) => a.metrics[k]?.value ?? null;
  const s = inputs.shards.manifest;
  const heading = (level: 1 | 2 | 3, text: string): Block => ({ kind: "heading", level, text });
  const text = (text: string): Block => ({ kind: "text", text });
  const chart = (c: WrittenChart): Block => ({ kind: "chart", ...c });
  /** A bar per arm of one measure (charts of the arm comparison). */
  const armBars = (key: string, title: string, yTitle: string, fraction = false) =>
    barChart(
      `arms_${key.replace(/\W+/g, "_")}`,
      title,
      arms.map((a) => ({ group: a.label, values: [v(a, key)].filter((x) => x !== null) })),
      { yTitle, fraction },
    );
  const blocks: Block[] = [
    heading(1, "PeCo evaluation"),
    text(
      `Data: \`${inputs.shards.dir}\` — ${s.splits.train.count} train / ${s.splits.val.count} ` +
        `val images [${s.image.channels}, ${s.image.height}, ${s.image.width}], ` +
        `${inputs.classes} classes. Every number is measured on the first ${config.evalImages} ` +
        `held-out (val) images; probes train on the first ${config.probe.trainImages} train ` +
        `images. Seed ${config.seed}.`,
    ),
    heading(2, "Codeword semantics (paper Table 4)"),
    text(
      "Linear probe: a linear classifier on each image's average-pooled quantized codewords. " +
        "Reconstructions: the tokenizer's reconstructions classified by a classifier trained on " +
        `real images (${pct(extra.classifierAcc)}% on real val images). PSNR and SSIM on [0, 1] ` +
        "pixels; usage and perplexity from the export's codebook statistics.",
    ),
    {
      kind: "table",
      header: [
        "Tokenizer",
        "Linear probe on codewords (%)",
        "Classification of reconstructions (%)",
        "PSNR (dB)",
        "SSIM",
        "Codebook usage",
        "Perplexity",
      ],
      rows: [
        ...arms.map((a) => [
          a.label,
          pct(v(a, "codewords.linear_probe_acc")),
          pct(v(a, "reconstruction.classifier_acc")),
          fixed(v(a, "tokenizer.psnr")),
          fixed(v(a, "tokenizer.ssim"), 4),
          fixed(v(a, "tokenizer.usage"), 3),
          fixed(v(a, "tokenizer.perplexity"), 1),
        ]),
        ["real images", "–", pct(extra.classifierAcc), "–", "–", "–", "–"],
      ],
    },
  ];
  if (arms.length > 1) {
    // The arms side by side (the λ comparison of `deno task experiment`).
    for (
      const c of [
        armBars("codewords.linear_probe_acc", "Linear probe on codewords", "top-1 accuracy", true),
        armBars(
          "reconstruction.classifier_acc",
          "Classification of reconstructions",
          "accuracy",
          true,
        ),
        armBars("tokenizer.psnr", "Reconstruction PSNR", "PSNR (dB)"),
        armBars("tokenizer.perplexity", "Codebook perplexity", "perplexity"),
      ]
    ) blocks.push(chart(await saveChart(ctx, c)));
  }
  const pretrained = arms.filter((a) => a.pretrain);
  if (!pretrained.length) {
    blocks.push(text("Fine-tuning and ViT probes: not measured (no arm has a --pretrain folder)."));
  } else {
    const f = config.finetune;
    blocks.push(
      heading(2, "Fine-tuning (paper Table 1)"),
      text(
        `Same budget and seed for every row: ${f.steps} steps of ${f.batch} images, AdamW peak ` +
          `lr ${f.lr}, layer decay ${f.layerDecay}, label smoothing ${f.labelSmoothing}, drop ` +
          `path ${f.dropPath}, warmup ${f.warmupSteps} + cosine. Top-1 on the val images.`,
      ),
      {
        kind: "table",
        header: ["Method", "Pre-training", "Top-1 (%)"],
        rows: [
          ["ViT from scratch", "none (random init)", pct(extra.scratch)],
          ...pretrained.map((a) => [
            `PeCo-style MIM (${a.label})`,
            `\`${a.pretrain!.dir}\``,
            pct(v(a, "finetune.pretrained_acc")),
          ]),
        ],
        align: ["l", "l", "r"],
      },
    );
    const top1 = barChart("finetune_top1", "Fine-tuning top-1: pretrained vs scratch", [
      { group: "scratch", values: extra.scratch === null ? [] : [extra.scratch] },
      ...pretrained.map((a) => ({
        group: a.label,
        values: [v(a, "finetune.pretrained_acc")].filter((x) => x !== null),
      })),
    ], { yTitle: "held-out top-1 accuracy", fraction: true });
    blocks.push(chart(await saveChart(ctx, top1)), ...extra.finetune.map(chart));
    blocks.push(
      heading(2, "Frozen ViT: linear probes and masked prediction"),
      text(
        "Mean-pooled patch tokens of each block → standardised → linear classifier. The best " +
          `block is chosen on ${Math.round(100 * config.probe.selectFraction)}% of the probe's ` +
          "training images held back from it.",
      ),
      {
        kind: "table",
        header: [
          "Arm",
          "Last block (%)",
          "Best block",
          "Best block (%)",
          "Masked-token acc. of pretraining (%)",
          ...config.figure.maskRatios.map((r) => `Masked acc. at ${Math.round(100 * r)}% (%)`),
        ],
        rows: pretrained.map((a) => [
          a.label,
          pct(v(a, "linear_probe.acc")),
          a.vitProbe?.best.block ?? null,
          pct(v(a, "linear_probe.best_acc")),
          pct(v(a, "pretrain.masked_acc")),
          ...config.figure.maskRatios.map((r) => pct(a.maskedPrediction?.[String(r)])),
        ]),
      },
      text("Per block (val top-1, %):"),
      {
        kind: "table",
        header: ["Arm", ...pretrained[0].vitProbe!.perBlock.map((p) => `block ${p.block}`)],
        rows: pretrained.map((a) => [a.label, ...a.vitProbe!.perBlock.map((p) => pct(p.val))]),
      },
      chart(
        await saveChart(
          ctx,
          probeChart(pretrained.map((a) => ({ label: a.label, perBlock: a.vitProbe!.perBlock }))),
        ),
      ),
    );
  }
  blocks.push(heading(2, "Figures"));
  for (const a of arms) {
    blocks.push(heading(3, a.label));
    if (a.maskFigure) {
      blocks.push({
        kind: "grid",
        file: a.maskFigure.file,
        alt: `masked prediction ${a.label}`,
        columns: a.maskFigure.columns,
        layout: a.maskFigure.layout,
        caption: "Paper Figure 2/5, one val image per row: original, tokenizer reconstruction, " +
          "then per mask ratio the masked input (grey patches) and the image decoded from the " +
          "ViT's predicted codes at masked positions.",
      });
    }
    if (a.figures.histogram) blocks.push(chart(a.figures.histogram));
    if (a.figures.patches.length) {
      blocks.push(
        text(
          `Paper Figure 3 — for each code, random ${a.figures.patchSplit} images where it occurs, ` +
            "cropped around the token's cell (outlined in red):",
        ),
        {
          kind: "gallery",
          items: a.figures.patches.map((p) => ({
            file: p.file,
            alt: `patches of code ${p.code}`,
            caption: `code ${p.code} (${p.kind === "top" ? "most frequent" : p.kind ?? "–"}, ` +
              `${p.occurrences ?? "–"} occurrences)`,
          })),
        },
      );
    }
  }
  blocks.push(heading(3, "Training curves"));
  for (const c of extra.curves) {
    if (c.charts.length) blocks.push(text(`${c.stage} (\`${c.dir}\`):`), ...c.charts.map(chart));
    else blocks.push(text(`${c.stage} (\`${c.dir}\`): ${c.note}.`));
  }
  blocks.push(heading(2, "Runs"), {
    kind: "table",
    header: ["Input", "Folder", "manifest sha256"],
    rows: [
      ["shards", `\`${inputs.shardsRef.dir}\``, inputs.shardsRef.sha256.slice(0, 16)],
      ...arms.flatMap((a) => [
        [`export (${a.label})`, `\`${a.export.dir}\``, a.export.sha256.slice(0, 16)],
        ...(a.pretrain
          ? [[`pretrain (${a.label})`, `\`${a.pretrain.dir}\``, a.pretrain.sha256.slice(0, 16)]]
          : []),
      ]),
    ],
    align: ["l", "l", "l"],
  });
  return blocks;
}

// ---- command line -----------------------------------------------------------------------------

if (import.meta.main) {
  await stageMain(import.meta.url, evaluateCommand, {
    check: checkOptions,
    access: evaluateAccess,
    run: (options) => runEvaluate(options),
    describe: ({ status, out, summary }) => {
      const p = (v: unknown) => typeof v === "number" ? `${pct(v)}%` : "–";
      return `${STAGE}: ${status}: fine-tuning pretrained ` +
        `${p(summary.finetune_pretrained_acc)} vs scratch ${p(summary.finetune_scratch_acc)}; ` +
        `codeword probe ${p(summary.codeword_probe_acc)}; ` +
        `PSNR ${fixed(summary.psnr as number)} dB in ${out}`;
    },
  });
}
