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
// taming's VQGAN (lib/train/adversarial.ts). The work is in lib/stages/train_tokenizer.ts, the
// step in lib/train/tokenizer_step.ts. An up-to-date output folder is recognised before the GPU is
// opened, so a skipped stage costs only reading the manifests.
//
// Least privilege (lib/cli/permissions.ts): started with --allow-read and --allow-run=deno, the
// task re-runs itself reading only its inputs and --out and writing only --out.

import { resolve } from "node:path";
import { initGpu } from "../lib/tensor/engine.ts";
import { failOnProblems } from "../lib/cli/problems.ts";
import { type StageAccess } from "../lib/cli/permissions.ts";
import { stageMain } from "../lib/cli/stage_main.ts";
import { beginStage, failer, finishStage, type StageResult } from "../lib/cli/stage.ts";
import { moduleReadPaths } from "../lib/data/shard_reads.ts";
import { tokenizerPreset } from "../lib/models/tokenizer_config.ts";
import {
  checkTrainTokenizerOptions,
  trainTokenizerCommand,
  type TrainTokenizerOptions,
} from "../lib/stages/train_tokenizer_options.ts";
import {
  openPerceptual,
  openTokenizerShards,
  perceptualPool,
  perceptualWeights,
  resolveTokenizerConfig,
  tokenizerUpToDate,
  TRAIN_TOKENIZER_STAGE as STAGE,
  trainTokenizer,
  type TrainTokenizerConfig,
} from "../lib/stages/train_tokenizer.ts";

export { trainTokenizerCommand, type TrainTokenizerConfig, type TrainTokenizerOptions };

export type TrainTokenizerResult = StageResult;

const fail = failer(STAGE);

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

export async function runTrainTokenizer(
  o: TrainTokenizerOptions,
  { log = (line: string) => console.error(line) } = {},
): Promise<TrainTokenizerResult> {
  checkOptions(o);
  const preset = tokenizerPreset(o.preset);
  // Every input is checked before anything is trained or written.
  const { shards, image } = await openTokenizerShards(o);
  const weights = await perceptualWeights(o);
  const pool = await perceptualPool(o, image.size);
  const config = resolveTokenizerConfig(o, preset, image, weights, pool);
  const inputs: Record<string, string> = { shards: shards.dir };
  if (o.perceptual === "builtin") inputs.perceptual = resolve(o["perceptual-dir"]);
  const stage = { name: STAGE, out: o.out, config, inputs, force: o.force ?? false, log };
  if (!stage.force && await tokenizerUpToDate(o.out, config, inputs)) {
    const run = await beginStage(stage);
    if (run.status === "skip") {
      return { status: "skip", out: run.out, summary: run.manifest.summary };
    }
    fail(`${run.out} changed while it was checked; run again`);
  }
  await initGpu();
  const net = await openPerceptual(o, image.size, pool, log);
  try {
    const run = await beginStage(stage);
    if (run.status === "skip") {
      return { status: "skip", out: run.out, summary: run.manifest.summary };
    }
    const { status, summary } = await trainTokenizer(run, config, shards, net, {
      quiet: o.quiet,
      stopAt: o["stop-at"],
      log,
    });
    if (status === "done") await finishStage(run, { summary });
    return { status, out: run.out, summary };
  } finally {
    net?.dispose();
  }
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
