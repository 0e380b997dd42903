// `deno task export-codebook`: turns a train-tokenizer run into what users take away — a portable
// tokenizer file, the data set as token shards, and a report on what the codebook learned.
//
//   deno task export-codebook --tokenizer runs/tokenizer --shards runs/shard --out runs/export
//
// Reads the train-tokenizer folder (manifest.json: the VQ-VAE config; checkpoint.safetensors: the
// weights, checked against the manifest's sha256) and a shard folder of the same image geometry.
// Writes into --out: tokenizer.safetensors (lib/models/tokenizer.ts), tokens/ (token shards of
// every split, the shard images as stored — centre crops — with their labels, and their own
// manifest.json; lib/data/token_shards.ts), codebook.json (usage, perplexity, dead codes per
// split, top codes, full histograms), figures/code_histogram.svg (sorted code frequencies),
// figures/patches_code_<id>.png (paper Figure 3: held-out patches per code, for the most frequent
// codes and a seeded sample of other used codes), figures/patches_overview.png, codebook.md, and
// manifest.json last (lib/cli/stage.ts). An interrupted run starts again cleanly; a finished one
// with the same inputs and options is skipped.
//
// Least privilege (lib/cli/permissions.ts): reads only the two input folders and --out, writes
// only --out.

import { join, resolve } from "node:path";
import { initGpu, peakGpuBytes } from "../lib/tensor/engine.ts";
import { failOnProblems } from "../lib/cli/problems.ts";
import { type StageAccess } from "../lib/cli/permissions.ts";
import { stageMain } from "../lib/cli/stage_main.ts";
import {
  beginStage,
  failer,
  finishStage,
  readStageManifest,
  type StageManifest,
  type StageResult,
  type StageRun,
} from "../lib/cli/stage.ts";
import { signedUnitNorm } from "../lib/data/augment.ts";
import { openShards, type ShardSet } from "../lib/data/shards.ts";
import { reason } from "../lib/io/errors.ts";
import { sha256File } from "../lib/io/hash.ts";
import { CHECKPOINT_FILE } from "../lib/train/checkpoint.ts";
import { loadTrainedVqVae, Tokenizer, TOKENIZER_FILE } from "../lib/models/tokenizer.ts";
import { type ResolvedVqVaeConfig, resolveVqVaeConfig } from "../lib/models/vqvae.ts";
import {
  type ExportSettings,
  tokenizeSplits,
  writeCodebookReport,
} from "../lib/stages/export_codebook.ts";
import {
  checkExportCodebookOptions,
  exportCodebookCommand,
  type ExportCodebookOptions,
} from "../lib/stages/export_codebook_options.ts";

const STAGE = "export-codebook";

export { exportCodebookCommand, type ExportCodebookOptions };

export type ExportCodebookResult = StageResult;

const fail: (what: string) => never = failer(STAGE);

function checkOptions(o: ExportCodebookOptions): void {
  failOnProblems(checkExportCodebookOptions(o));
}

/** The paths the sandboxed stage may read and write. */
export function exportCodebookAccess(o: ExportCodebookOptions): StageAccess {
  const out = resolve(o.out);
  return { read: [resolve(o.tokenizer), resolve(o.shards), out], write: [out] };
}

/** The tokenizer run's manifest and model config, and the shards; checked against each other. */
async function openInputs(o: ExportCodebookOptions) {
  const dir = resolve(o.tokenizer);
  let run: StageManifest;
  try {
    run = await readStageManifest(dir);
  } catch (error) {
    return fail(`--tokenizer: ${reason(error).replace(/^stage: /, "")}`);
  }
  if (run.stage !== "train-tokenizer") {
    fail(`--tokenizer ${dir} holds a ${run.stage} run, not a train-tokenizer run`);
  }
  const trained = run.config as Record<string, unknown> | null;
  let model: ResolvedVqVaeConfig;
  try {
    model = resolveVqVaeConfig(trained?.model as ResolvedVqVaeConfig);
  } catch (error) {
    return fail(
      `--tokenizer ${join(dir, "manifest.json")}: config.model: ` +
        reason(error),
    );
  }
  const entry = run.files[CHECKPOINT_FILE];
  if (!entry) fail(`--tokenizer ${dir}: its manifest lists no ${CHECKPOINT_FILE}`);
  let shards: ShardSet;
  try {
    shards = await openShards(resolve(o.shards));
  } catch (error) {
    return fail(`--shards: ${reason(error)}`);
  }
  const { channels, height, width } = shards.manifest.image;
  if (channels !== model.inChannels || height !== model.imageSize || width !== model.imageSize) {
    fail(
      `--shards ${shards.dir}: images are ${channels}×${height}×${width}, the tokenizer takes ` +
        `${model.inChannels}×${model.imageSize}×${model.imageSize}`,
    );
  }
  const splits = Object.keys(shards.splits).filter((s) => shards.splits[s].count > 0);
  if (!splits.includes("train")) fail(`--shards ${shards.dir} has no "train" images`);
  return { dir, run, model, checkpoint: { path: join(dir, CHECKPOINT_FILE), ...entry }, shards };
}

/** The resolved, fingerprinted options of a run (no paths, no display switches). */
export type ExportCodebookConfig = ExportSettings;

export async function runExportCodebook(
  o: ExportCodebookOptions,
  { log = (line: string) => console.error(line) } = {},
): Promise<ExportCodebookResult> {
  checkOptions(o);
  const inputs = await openInputs(o);
  await initGpu();
  const f = 2 ** (inputs.model.channelMult.length - 1);
  const config: ExportCodebookConfig = {
    batch: o.batch,
    perShard: o["per-shard"],
    limit: o.limit ?? null,
    patches: {
      codes: o["patches-codes"],
      perCode: o["patches-per-code"],
      margin: o["patch-margin"] ?? Math.floor(f / 2),
    },
    seed: o.seed,
  };
  const run = await beginStage({
    name: STAGE,
    out: o.out,
    config,
    inputs: { tokenizer: inputs.dir, shards: inputs.shards.dir },
    force: o.force ?? false,
    log,
  });
  if (run.status === "skip") return { status: "skip", out: run.out, summary: run.manifest.summary };
  return await exportRun(o, config, inputs, run, log);
}

async function exportRun(
  o: ExportCodebookOptions,
  config: ExportCodebookConfig,
  inputs: Awaited<ReturnType<typeof openInputs>>,
  run: StageRun,
  log: (line: string) => void,
): Promise<ExportCodebookResult> {
  const started = performance.now();
  const { checkpoint, shards } = inputs;
  // The checkpoint must be the one the run finished with.
  const actual = await sha256File(checkpoint.path).catch((error) =>
    fail(`--tokenizer: cannot read ${checkpoint.path} (${(error as Error).message})`)
  );
  if (actual.sha256 !== checkpoint.sha256 || actual.bytes !== checkpoint.bytes) {
    fail(`--tokenizer: ${checkpoint.path} differs from its manifest (sha256 or size)`);
  }
  const model = await loadTrainedVqVae(checkpoint.path, inputs.model).catch((error) =>
    fail(`--tokenizer: ${reason(error)}`)
  );
  const trained = inputs.run.config as Record<string, Record<string, unknown>>;
  const channels = inputs.model.inChannels;
  const tokenizer = Tokenizer.fromModel(model, {
    image: {
      channels,
      size: inputs.model.imageSize,
      // The train-tokenizer stage's input normalisation.
      ...signedUnitNorm(channels),
    },
    provenance: {
      stage: inputs.run.stage,
      manifestSha256: run.inputs.tokenizer.sha256,
      fingerprint: inputs.run.fingerprint,
      checkpointSha256: checkpoint.sha256,
      preset: trained.preset ?? null,
      steps: trained.train?.steps ?? null,
      seed: trained.seed ?? null,
      pixelLoss: trained.train?.pixelLoss ?? null,
      lambda: trained.perceptual?.lambda ?? null,
      perceptual: trained.perceptual ?? null,
      trainingShardsManifestSha256:
        (inputs.run.inputs?.shards as { sha256?: string } | undefined)?.sha256 ?? null,
      metrics: inputs.run.summary ?? {},
    },
  });
  try {
    await tokenizer.save(join(run.out, TOKENIZER_FILE));
    const tokenized = await tokenizeSplits(config, tokenizer, shards, run, { log, quiet: o.quiet });
    const report = await writeCodebookReport(config, tokenizer, shards, run, tokenized);
    const seconds = (performance.now() - started) / 1000;
    const summary = {
      ...report,
      images: tokenized.images,
      tokenize_seconds: tokenized.seconds,
      tokenize_images_per_s: tokenized.images / tokenized.seconds,
      export_seconds: seconds,
      peak_gpu_bytes: peakGpuBytes(),
    };
    await finishStage(run, { summary });
    return { status: "done", out: run.out, summary };
  } finally {
    tokenizer.dispose();
  }
}

// ---- command line ---------------------------------------------------------------------------

if (import.meta.main) {
  await stageMain(import.meta.url, exportCodebookCommand, {
    check: checkOptions,
    access: exportCodebookAccess,
    run: (options) => runExportCodebook(options),
    describe: ({ status, out, summary }) => {
      const splits = summary.splits as Record<string, { usage: number; perplexity: number }>;
      const text = Object.entries(splits).map(([n, s]) =>
        `${n} usage ${s.usage.toFixed(3)} perplexity ${s.perplexity.toFixed(1)}`
      ).join(", ");
      return `${STAGE}: ${status}: ${text}; dead codes ${summary.dead_everywhere} in ${out}`;
    },
  });
}
