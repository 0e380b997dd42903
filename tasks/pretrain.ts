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

import { resolve } from "node:path";
import { initGpu } from "../lib/tensor/engine.ts";
import { failOnProblems } from "../lib/cli/problems.ts";
import { type StageAccess } from "../lib/cli/permissions.ts";
import { stageMain } from "../lib/cli/stage_main.ts";
import { beginStage, finishStage, type StageResult } from "../lib/cli/stage.ts";
import { moduleReadPaths } from "../lib/data/shard_reads.ts";
import {
  checkPretrainOptions,
  pretrainCommand,
  type PretrainOptions,
} from "../lib/stages/pretrain_options.ts";
import {
  openPretrainInputs,
  PRETRAIN_STAGE as STAGE,
  type PretrainConfig,
  resolvePretrainConfig,
  trainPretrain,
} from "../lib/stages/pretrain.ts";

export { pretrainCommand, type PretrainConfig, type PretrainOptions };

export type PretrainResult = StageResult;

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

export async function runPretrain(
  o: PretrainOptions,
  { log = (line: string) => console.error(line) } = {},
): Promise<PretrainResult> {
  checkOptions(o);
  const inputs = await openPretrainInputs(o);
  try {
    const config = resolvePretrainConfig(o, inputs);
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
    const { status, summary } = await trainPretrain(run, config, inputs, {
      quiet: o.quiet,
      stopAt: o["stop-at"],
      log,
    });
    if (status === "done") await finishStage(run, { summary });
    return { status, out: run.out, summary };
  } finally {
    inputs.tokenizer?.dispose();
  }
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
