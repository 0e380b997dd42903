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
// A killed run resumes from its checkpoint when rerun with the same options and gives the same
// result as an uninterrupted run; a NaN/Inf loss stops the run, keeping the last good checkpoint.
// Least privilege as tasks/shard.ts: reads the shards and --out, writes only --out.

import { join, resolve } from "node:path";
import { adapterInfo, flush, fmtBytes, initGpu, peakGpuBytes } from "../lib/tensor/engine.ts";
import { failOnProblems } from "../lib/cli/problems.ts";
import { type StageAccess } from "../lib/cli/permissions.ts";
import { stageMain } from "../lib/cli/stage_main.ts";
import { Progress } from "../lib/cli/progress.ts";
import { METRICS_FILE, MetricsWriter } from "../lib/cli/metrics.ts";
import { beginStage, finishStage, type StageRun } from "../lib/cli/stage.ts";
import {
  type AugmentConfig,
  augmentViews,
  sampleAugmentations,
  uploadPixels,
} from "../lib/data/augment.ts";
import { Loader, shardSource } from "../lib/data/loader.ts";
import { moduleReadPaths, workerShardSource } from "../lib/data/shard_reads.ts";
import { openShards, type SplitReader } from "../lib/data/shards.ts";
import { CheckpointGuard, loadCheckpoint, type TrainingState } from "../lib/train/checkpoint.ts";
import {
  ENCODER_FILE,
  MOCO_ENCODER_DEFAULT,
  MOCO_HEAD_DEFAULT,
  type MocoEncoder,
  type MocoEncoderConfig,
  type MocoHeadConfig,
  MocoV3,
  momentumAt,
  normalizeRows,
  saveEncoder,
} from "../lib/models/moco.ts";
import { AdamW, warmupCosine } from "../lib/optim/mod.ts";
import { Rng } from "../lib/tensor/init.ts";
import { backward, concat, noGrad, readAll, type Tensor, tidy } from "../lib/tensor/mod.ts";
import {
  checkTrainPerceptualImages,
  checkTrainPerceptualOptions,
  trainPerceptualCommand,
  type TrainPerceptualOptions,
} from "../lib/stages/train_perceptual_options.ts";

export const STAGE = "train-perceptual";

export { trainPerceptualCommand, type TrainPerceptualOptions };

/** The resolved configuration (the stage fingerprint hashes it). */
export interface TrainPerceptualConfig {
  steps: number;
  /** Size of the training and k-NN views (0: automatic, see viewSize). */
  size: number;
  batch: number;
  lr: number;
  weightDecay: number;
  warmupSteps: number;
  tau: number;
  momentum: number;
  augment: Required<Pick<AugmentConfig, "scale" | "flip" | "brightness" | "contrast">>;
  seed: number;
  logEvery: number;
  ckptEvery: number;
  knn: { k: number; temperature: number; train: number; val: number };
  encoder: MocoEncoderConfig;
  head: MocoHeadConfig;
}

const KNN_K = 20;
const KNN_TEMPERATURE = 0.07;

/** Checks the options and resolves paths and config (no file is opened). */
export function resolveOptions(
  o: TrainPerceptualOptions,
): { shards: string; out: string; config: TrainPerceptualConfig } {
  failOnProblems(checkTrainPerceptualOptions(o));
  const shards = resolve(o.shards!);
  const out = resolve(o.out);
  return {
    shards,
    out,
    config: {
      steps: o.steps,
      size: o.size ?? 0,
      batch: o.batch,
      lr: o.lr,
      weightDecay: o["weight-decay"],
      warmupSteps: Math.ceil(o.steps / 10),
      tau: o.tau,
      momentum: o.momentum,
      augment: {
        scale: [o["crop-min"], 1],
        flip: o.flip,
        brightness: o.jitter,
        contrast: o.jitter,
      },
      seed: o.seed,
      logEvery: o["log-every"],
      ckptEvery: o["ckpt-every"],
      knn: { k: KNN_K, temperature: KNN_TEMPERATURE, train: o["knn-train"], val: o["knn-val"] },
      encoder: MOCO_ENCODER_DEFAULT,
      head: MOCO_HEAD_DEFAULT,
    },
  };
}

/**
 * What the stage needs: read the shards and its output folder, write its output folder; and read
 * the modules of its shard-reading Workers while they load (lib/io/worker_pool.ts).
 */
export function trainPerceptualAccess(o: TrainPerceptualOptions): StageAccess {
  const { shards, out } = resolveOptions(o);
  return { read: [shards, out, ...moduleReadPaths()], write: [out] };
}

function fail(what: string): never {
  throw new Error(`peco: ${STAGE}: ${what}`);
}

/** The train and val splits, checked before any training starts. */
async function openData(dir: string, o: TrainPerceptualOptions) {
  const set = await openShards(dir);
  const { train, val } = set.splits;
  if (!train || !val) {
    fail(`${dir} needs a train and a val split, has ${Object.keys(set.splits).join(", ")}`);
  }
  if (train.channels !== 1 && train.channels !== 3) {
    fail(`${dir}: images have ${train.channels} channels, need 1 or 3`);
  }
  const images = { height: train.height, width: train.width, train: train.count };
  const problems = checkTrainPerceptualImages(o, images);
  if (problems.length) fail(`${dir}: ${problems[0].message}`);
  return { set, train, val, labelled: set.manifest.labelled !== false };
}

/**
 * The views' size. Small square images (side ≤ 32, even) train at half their side by default
 * (28² → 14²): on a software GPU the step time grows with the pixels, and more steps beat more
 * pixels for MNIST. The tokenizer runs the network on its images average-pooled to this size
 * (the manifest's summary.viewSize), the scale the features were trained at.
 */
function viewSize(config: TrainPerceptualConfig, split: SplitReader): [number, number] {
  if (config.size) return [config.size, config.size];
  const { height: h, width: w } = split;
  return h === w && h <= 32 && h % 2 === 0 ? [h / 2, h / 2] : [h, w];
}

/** A view [N, C, h, w] (already in [−1, 1]) as the encoder's [N, 3, h, w]: grey repeated. */
function toEncoderInput(view: Tensor): Tensor {
  return view.shape[1] === 1 ? concat([view, view, view], 1) : view;
}

/** View normalisation mapping [0, 1] to [−1, 1], the range of PerceptualNet inputs. */
const TO_SIGNED = (channels: number) => ({
  mean: Array(channels).fill(0.5),
  std: Array(channels).fill(0.5),
});

/** Unit-length embeddings [n, dim] of up to `limit` images of a split (storage order). */
export async function embedSplit(
  encoder: MocoEncoder,
  split: SplitReader,
  limit: number,
  [h, w]: [number, number],
): Promise<{ features: Float32Array; labels: Int32Array; n: number; dim: number }> {
  const n = Math.min(limit, split.count);
  const dim = encoder.dim;
  const features = new Float32Array(n * dim);
  const labels = new Int32Array(n);
  const loader = new Loader(shardSource(split), {
    batchSize: 250,
    seed: 0,
    shuffle: false,
    dropLast: false,
  });
  const C = split.channels;
  let done = 0;
  for await (const batch of loader.epoch(0)) {
    const take = Math.min(batch.n, n - done);
    const emb = noGrad(() =>
      tidy(() => {
        const views = loader.toGpu(batch, [{ height: h, width: w, ...TO_SIGNED(C) }]);
        return normalizeRows(encoder.embed(toEncoderInput(views.views[0])));
      })
    );
    const [values] = await readAll([emb]);
    emb.dispose();
    features.set(values.subarray(0, take * dim), done * dim);
    labels.set(batch.labels.subarray(0, take), done);
    done += take;
    if (done >= n) break;
  }
  return { features, labels, n, dim };
}

/**
 * k-NN accuracy with cosine similarity and votes weighted by exp(s / T) (the usual monitor of
 * self-supervised features, Wu et al. 2018): the fraction of queries whose top class is right.
 */
export function knnAccuracy(
  bank: { features: Float32Array; labels: Int32Array; n: number; dim: number },
  query: { features: Float32Array; labels: Int32Array; n: number },
  k: number,
  temperature: number,
): number {
  const { dim } = bank;
  const classes = Math.max(...bank.labels, ...query.labels) + 1;
  const sims = new Float32Array(bank.n);
  let correct = 0;
  for (let q = 0; q < query.n; q++) {
    const qf = query.features.subarray(q * dim, (q + 1) * dim);
    for (let b = 0; b < bank.n; b++) {
      let s = 0;
      for (let d = 0; d < dim; d++) s += qf[d] * bank.features[b * dim + d];
      sims[b] = s;
    }
    // Top-k by partial selection over indices (k is small).
    const top: number[] = [];
    for (let b = 0; b < bank.n; b++) {
      if (top.length < k) {
        top.push(b);
        top.sort((x, y) => sims[y] - sims[x]);
      } else if (sims[b] > sims[top[k - 1]]) {
        top[k - 1] = b;
        top.sort((x, y) => sims[y] - sims[x]);
      }
    }
    const votes = new Float64Array(classes);
    for (const b of top) votes[bank.labels[b]] += Math.exp(sims[b] / temperature);
    let best = 0;
    for (let c = 1; c < classes; c++) if (votes[c] > votes[best]) best = c;
    if (best === query.labels[q]) correct++;
  }
  return correct / query.n;
}

export interface TrainPerceptualResult {
  status: "fresh" | "resume" | "skip";
  out: string;
  summary: Record<string, unknown>;
}

export interface RunHooks {
  log?: (line: string) => void;
  /** Tests: stop (as if killed) after this many steps, leaving the checkpoint behind. */
  stopAfter?: number;
}

/** Runs the stage; throws one-line `peco: train-perceptual: …` Errors (or UsageError). */
export async function runTrainPerceptual(
  o: TrainPerceptualOptions,
  hooks: RunHooks = {},
): Promise<TrainPerceptualResult> {
  const log = hooks.log ?? ((line: string) => console.error(line));
  const { shards, out, config } = resolveOptions(o);
  const data = await openData(shards, o);
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
  const summary = await train(run, config, data, o.quiet ?? false, log, hooks.stopAfter);
  if (summary === null) return { status: run.status, out, summary: {} };
  await finishStage(run, { summary });
  return { status: run.status, out, summary };
}

async function train(
  run: StageRun,
  config: TrainPerceptualConfig,
  data: Awaited<ReturnType<typeof openData>>,
  quiet: boolean,
  log: (line: string) => void,
  stopAfter?: number,
): Promise<Record<string, unknown> | null> {
  const { steps, batch, seed, tau } = config;
  const rng = new Rng(seed);
  const model = new MocoV3(config.encoder, config.head, rng.fork("model"));
  const optimizer = new AdamW(model.trainableParameters(), {
    lr: config.lr,
    weightDecay: config.weightDecay,
  });
  const schedule = warmupCosine({
    baseLr: config.lr,
    warmupSteps: config.warmupSteps,
    totalSteps: steps,
  });
  const state: TrainingState = { modules: { model }, optimizers: { optim: optimizer } };
  const guard = new CheckpointGuard(STAGE, run.checkpoint, run.resumeFrom?.step ?? null);
  const meta = run.resumeFrom ? await loadCheckpoint(run.checkpoint, state) : null;
  const first = meta?.step ?? 0;
  const metrics = await MetricsWriter.open(join(run.out, METRICS_FILE), meta ? first : null);
  const carried = (meta?.metrics ?? {}) as { trainSeconds?: number; loss?: number };
  let trainSeconds = carried.trainSeconds ?? 0;
  let loss = carried.loss ?? NaN;

  const { train } = data;
  const { channels: C, height: H, width: W } = train;
  // Shards read and checked by Workers, one per core (lib/data/shard_reads.ts).
  const source = workerShardSource(train);
  const loader = new Loader(source, { batchSize: batch, seed });
  const [vh, vw] = viewSize(config, train);
  const view = { height: vh, width: vw, ...TO_SIGNED(C) };
  log(
    `${STAGE}: adapter ${adapterInfo().description}; ${model.baseEncoder.numParameters()} base ` +
      `parameters; ${steps} steps of ${batch} images ${H}×${W} (two ${vh}×${vw} views each)` +
      (first ? `; resuming at step ${first}` : ""),
  );
  const progress = new Progress({ label: STAGE, total: steps, unit: "step", quiet });
  const stream = loader.batches({
    epoch: Math.floor(first / loader.stepsPerEpoch),
    step: first % loader.stepsPerEpoch,
  });
  let windowStart = performance.now();
  let windowSteps = 0;
  let step = first;
  // Every step's loss, read back together at the next log step: a NaN at any step stops the run.
  let pending: Tensor[] = [];
  try {
    for await (const host of stream) {
      if (step >= steps || step === stopAfter) break;
      const augRng = rng.fork(`augment ${step}`);
      const augs = [0, 1].map((v) =>
        sampleAugmentations(augRng.fork(`view ${v}`), host.n, H, W, config.augment)
      );
      optimizer.lr = schedule(step);
      const m = momentumAt(step, steps, config.momentum);
      const logged = tidy(() => {
        const upload = uploadPixels(host.pixels, host.n, C, H, W);
        const [x1, x2] = augs.map((a) => toEncoderInput(augmentViews(upload, a, [view])[0]));
        const l = model.loss(x1, x2, tau);
        backward(l);
        optimizer.step();
        optimizer.zeroGrad();
        model.updateMomentum(m);
        return l;
      });
      pending.push(logged);
      step++;
      windowSteps++;
      const logNow = step % config.logEvery === 0 || step === steps;
      if (logNow) {
        const values = await readAll(pending);
        pending.forEach((t) => t.dispose());
        pending = [];
        values.forEach((v, i) => guard.check(step - values.length + i + 1, { loss: v[0] }));
        const l = values[values.length - 1][0];
        loss = l;
        const now = performance.now();
        const seconds = (now - windowStart) / 1000;
        trainSeconds += seconds;
        await metrics.write({
          step,
          loss: l,
          lr: optimizer.lr,
          momentum: m,
          images_per_s: windowSteps * batch / seconds,
          peak_gpu_bytes: peakGpuBytes(),
        });
        progress.update(step, { loss: l, lr: optimizer.lr });
        if (step % config.ckptEvery === 0 || step === steps) {
          await guard.save(state, {
            stage: STAGE,
            fingerprint: run.fingerprint,
            step,
            epoch: Math.floor(step / loader.stepsPerEpoch),
            seed,
            config,
            metrics: { trainSeconds, loss },
          });
        }
        windowStart = performance.now();
        windowSteps = 0;
      } else {
        flush();
      }
    }
  } finally {
    pending.forEach((t) => t.dispose());
    await stream.return(undefined);
    source.close();
    metrics.close();
  }
  if (step < steps) {
    model.dispose();
    optimizer.dispose();
    return null; // stopped early (tests): the checkpoint stays for a resume
  }
  progress.finish({ loss });

  const encoder = model.baseEncoder.backbone;
  await saveEncoder(encoder, join(run.out, ENCODER_FILE));
  encoder.eval();
  let knn: number | null = null;
  if (data.labelled) {
    const bank = await embedSplit(encoder, data.train, config.knn.train, [vh, vw]);
    const query = await embedSplit(encoder, data.val, config.knn.val, [vh, vw]);
    knn = knnAccuracy(bank, query, config.knn.k, config.knn.temperature);
    log(
      `${STAGE}: k-NN (k=${config.knn.k}, cosine) accuracy on ${query.n} held-out images ` +
        `with a bank of ${bank.n}: ${(100 * knn).toFixed(1)}%`,
    );
  } else log(`${STAGE}: the shards carry no labels; k-NN evaluation skipped`);
  const peak = peakGpuBytes();
  model.dispose();
  optimizer.dispose();
  return {
    steps,
    finalLoss: loss,
    trainSeconds,
    imagesPerSecond: steps * batch / Math.max(trainSeconds, 1e-9),
    peakGpuBytes: peak,
    peakGpu: fmtBytes(peak),
    knnAccuracy: knn,
    knnK: config.knn.k,
    encoder: ENCODER_FILE,
    encoderConfig: config.encoder,
    viewSize: [vh, vw],
  };
}

// ---- command line ---------------------------------------------------------------------------

if (import.meta.main) {
  await stageMain(import.meta.url, trainPerceptualCommand, {
    access: trainPerceptualAccess,
    run: (options) => runTrainPerceptual(options),
    describe: ({ status, out, summary }) => {
      const knn = summary.knnAccuracy;
      return `${STAGE}: ${status === "skip" ? "up to date" : "done"}: ${
        join(out, ENCODER_FILE)
      }; ` +
        `k-NN accuracy ${typeof knn === "number" ? `${(100 * knn).toFixed(1)}%` : "n/a"}; ` +
        `training ${Number(summary.trainSeconds ?? 0).toFixed(1)} s`;
    },
  });
}
