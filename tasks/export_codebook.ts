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
import { adapterInfo, initGpu, peakGpuBytes } from "../lib/tensor/engine.ts";
import { failOnProblems } from "../lib/cli/problems.ts";
import { type StageAccess } from "../lib/cli/permissions.ts";
import { stageMain } from "../lib/cli/stage_main.ts";
import { Progress } from "../lib/cli/progress.ts";
import {
  beginStage,
  failer,
  finishStage,
  readStageManifest,
  type StageManifest,
  type StageResult,
  type StageRun,
} from "../lib/cli/stage.ts";
import { openShards, type ShardSet, type SplitReader } from "../lib/data/shards.ts";
import {
  openTokenShards,
  TOKEN_MANIFEST_FILE,
  TokenShardWriter,
  type TokenSplitManifest,
  writeTokenManifest,
} from "../lib/data/token_shards.ts";
import { writeFileAtomic, writeJsonAtomic } from "../lib/io/atomic.ts";
import { CHECKPOINT_FILE } from "../lib/train/checkpoint.ts";
import { distinctCodes } from "../lib/models/quantizer.ts";
import {
  codebookMarkdown,
  type CodeFigure,
  codeStats,
  countCodes,
  cropPatch,
  type Patch,
  PatchSampler,
  rankCodes,
  selectCodes,
  writeCodeFrequencyChart,
  writePatchGrid,
  writePatchOverview,
} from "../lib/report/codebook.ts";
import { sha256File } from "../lib/io/hash.ts";
import { loadTrainedVqVae, Tokenizer, TOKENIZER_FILE } from "../lib/models/tokenizer.ts";
import { type ResolvedVqVaeConfig, resolveVqVaeConfig } from "../lib/models/vqvae.ts";
import type { Tensor } from "../lib/tensor/tensor.ts";
import {
  checkExportCodebookOptions,
  exportCodebookCommand,
  type ExportCodebookOptions,
} from "../lib/stages/export_codebook_options.ts";

const STAGE = "export-codebook";
/**
 * The mean and the std of train-tokenizer's input normalisation, (x/255 − 0.5) / 0.5: pixels mapped
 * to [−1, 1].
 */
const TOKENIZER_MEAN_STD = 0.5;
const TOKENS_DIR = "tokens";
const FIGURES_DIR = "figures";

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
    return fail(`--tokenizer: ${(error as Error).message.replace(/^peco: stage: /, "")}`);
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
        (error as Error).message.replace(/^peco: /, ""),
    );
  }
  const entry = run.files[CHECKPOINT_FILE];
  if (!entry) fail(`--tokenizer ${dir}: its manifest lists no ${CHECKPOINT_FILE}`);
  let shards: ShardSet;
  try {
    shards = await openShards(resolve(o.shards));
  } catch (error) {
    return fail(`--shards: ${(error as Error).message.replace(/^peco: /, "")}`);
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
export interface ExportCodebookConfig {
  batch: number;
  perShard: number;
  /** Images tokenised per split (null: all). */
  limit: number | null;
  patches: { codes: number; perCode: number; margin: number };
  seed: number;
}

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
    fail(`--tokenizer: ${(error as Error).message.replace(/^peco: /, "")}`)
  );
  const trained = inputs.run.config as Record<string, Record<string, unknown>>;
  const channels = inputs.model.inChannels;
  const tokenizer = Tokenizer.fromModel(model, {
    image: {
      channels,
      size: inputs.model.imageSize,
      mean: new Array(channels).fill(TOKENIZER_MEAN_STD),
      std: new Array(channels).fill(TOKENIZER_MEAN_STD),
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
    const tokenized = await tokenizeSplits(o, config, tokenizer, shards, run, log);
    const report = await writeReport(config, tokenizer, shards, run, tokenized);
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

/**
 * Tokenises every split into token shards, two batches in flight (the next batch is encoded while
 * the previous one's ids are read back and written), counting codes per split on the way.
 */
async function tokenizeSplits(
  o: ExportCodebookOptions,
  config: ExportCodebookConfig,
  tokenizer: Tokenizer,
  shards: ShardSet,
  run: StageRun,
  log: (line: string) => void,
) {
  const dir = join(run.out, TOKENS_DIR);
  await Deno.mkdir(dir, { recursive: true });
  const geometry = { grid: tokenizer.info.grid, codebookSize: tokenizer.info.codebookSize };
  const names = Object.keys(shards.splits).filter((s) => shards.splits[s].count > 0);
  const size = (s: string) => Math.min(shards.splits[s].count, config.limit ?? Infinity);
  const total = names.reduce((n, s) => n + size(s), 0);
  log(
    `${STAGE}: ${adapterInfo().description}; tokenising ${total} images (${
      names.join(", ")
    }) into ` +
      `${geometry.grid.join("×")} tokens, K = ${geometry.codebookSize}`,
  );
  const progress = new Progress({ label: "tokenize", total, unit: "img", quiet: o.quiet });
  const counts: Record<string, Float64Array> = {};
  const splits: Record<string, TokenSplitManifest> = {};
  let done = 0;
  const started = performance.now();
  for (const name of names) {
    const writer = new TokenShardWriter(dir, name, geometry, config.perShard);
    const hist = counts[name] = new Float64Array(geometry.codebookSize);
    let pending: { ids: Tensor; labels: Int32Array; read: Promise<Int32Array> } | null = null;
    const drain = async () => {
      if (!pending) return;
      const ids = await pending.read;
      pending.ids.dispose();
      countCodes(ids, hist);
      await writer.add(ids, pending.labels);
      done += pending.labels.length;
      progress.update(done);
      pending = null;
    };
    let left = size(name);
    for await (const whole of shards.splits[name].chunks(config.batch)) {
      if (left === 0) break;
      const n = Math.min(left, whole.count);
      left -= n;
      const chunk = {
        pixels: whole.pixels.subarray(0, n * shards.splits[name].recordBytes),
        count: n,
        labels: whole.labels.subarray(0, n),
      };
      const ids = tokenizer.encodePixels(chunk.pixels, chunk.count);
      // Reading submits this batch now; the previous one is written while it runs.
      const next = { ids, labels: chunk.labels.slice(), read: ids.read() as Promise<Int32Array> };
      await drain();
      pending = next;
    }
    await drain();
    splits[name] = await writer.finish();
  }
  const seconds = (performance.now() - started) / 1000;
  progress.finish({ "img/s": (total / seconds).toFixed(1) });
  await writeTokenManifest(dir, {
    geometry,
    perShard: config.perShard,
    source: {
      shardsManifestSha256: run.inputs.shards.sha256,
      shardsDir: shards.dir,
      tokenizerSha256: (await sha256File(join(run.out, TOKENIZER_FILE))).sha256,
    },
    splits,
  });
  return {
    counts,
    images: total,
    seconds,
    sizes: Object.fromEntries(names.map((n) => [n, size(n)])),
  };
}

/** codebook.json, the figures and codebook.md; returns the summary numbers. */
async function writeReport(
  config: ExportCodebookConfig,
  tokenizer: Tokenizer,
  shards: ShardSet,
  run: StageRun,
  { counts, sizes }: { counts: Record<string, Float64Array>; sizes: Record<string, number> },
) {
  const { grid, codebookSize: k } = tokenizer.info;
  const f = tokenizer.downsampleFactor;
  const names = Object.keys(counts);
  const stats = Object.fromEntries(names.map((n) => [n, {
    images: sizes[n],
    ...codeStats(counts[n]),
  }]));
  let deadEverywhere = 0;
  for (let c = 0; c < k; c++) if (names.every((n) => counts[n][c] === 0)) deadEverywhere++;
  // Codes equal to a lower-index code can never be chosen: usage counts only distinct ones.
  const distinct = distinctCodes(await tokenizer.codebook().read(), tokenizer.info.config.codeDim);
  const topCodes = rankCodes(counts.train).slice(0, 20).map((code) => ({
    code,
    counts: Object.fromEntries(names.map((n) => [n, counts[n][code]])),
  }));
  await Deno.mkdir(join(run.out, FIGURES_DIR), { recursive: true });
  const histogramFile = `${FIGURES_DIR}/code_histogram.svg`;
  await writeCodeFrequencyChart(join(run.out, histogramFile), counts);

  // Figure 3: patches of held-out images per code.
  const patchSplit = names.includes("val") ? "val" : "train";
  const p = config.patches;
  const selected = selectCodes(counts[patchSplit], {
    top: Math.ceil(p.codes / 2),
    random: Math.floor(p.codes / 2),
    seed: config.seed,
  });
  const codes = [...selected.top, ...selected.random];
  const sampler = new PatchSampler(codes, p.perCode, grid, config.seed);
  const tokens = await openTokenShards(join(run.out, TOKENS_DIR));
  const reader = tokens.splits[patchSplit];
  for (let from = 0; from < reader.count; from += 4096) {
    const to = Math.min(reader.count, from + 4096);
    sampler.add((await reader.read(from, to)).ids, from);
  }
  const images = await imagePixels(shards.splits[patchSplit], sampler.images());
  const image = { channels: tokenizer.info.image.channels, size: tokenizer.info.image.size };
  const crop = f + 2 * p.margin;
  const zoom = Math.max(1, Math.ceil(32 / crop));
  const figures: CodeFigure[] = [];
  const rows: { label: string; patches: Patch[] }[] = [];
  for (const code of codes) {
    const list = sampler.samples.get(code)!;
    const patches = list.map((at) =>
      cropPatch(images.get(at.image)!, image, at, f, p.margin, zoom)
    );
    const kind = selected.top.includes(code) ? "top" : "random";
    const file = `${FIGURES_DIR}/patches_code_${code}.png`;
    await writePatchGrid(join(run.out, file), patches, Math.ceil(Math.sqrt(p.perCode)));
    figures.push({
      code,
      kind,
      file,
      occurrences: counts[patchSplit][code],
      patches: patches.length,
    });
    rows.push({ label: `${code}`, patches });
  }
  const overview = `${FIGURES_DIR}/patches_overview.png`;
  const overviewRows = rows.some((r) => r.patches.length)
    ? await writePatchOverview(join(run.out, overview), rows, Math.min(10, p.perCode))
    : [];

  const json = {
    codebookSize: k,
    grid,
    downsampleFactor: f,
    distinctCodes: distinct,
    splits: stats,
    deadEverywhere,
    topCodes,
    patches: { split: patchSplit, margin: p.margin, codes: figures },
    counts: Object.fromEntries(names.map((n) => [n, Array.from(counts[n])])),
  };
  await writeJsonAtomic(join(run.out, "codebook.json"), json);
  const t = tokenizer.info;
  const md = codebookMarkdown({
    codebookSize: k,
    grid,
    downsampleFactor: f,
    distinctCodes: distinct,
    splits: stats,
    deadEverywhere,
    topCodes: topCodes.slice(0, 10),
    patchSplit,
    patchMargin: p.margin,
    histogram: histogramFile,
    overview: overviewRows.length ? overview : "(none)",
    overviewRows,
    codes: figures,
    about: {
      tokenizer: `[${TOKENIZER_FILE}](${TOKENIZER_FILE}) (${t.image.channels}×${t.image.size}² ` +
        `input, normalised (x/255 − ${t.image.mean[0]}) / ${t.image.std[0]})`,
      "token shards": `[${TOKENS_DIR}/](${TOKENS_DIR}/${TOKEN_MANIFEST_FILE})`,
      statistics: `[codebook.json](codebook.json)`,
      "trained by": `train-tokenizer run ${run.inputs.tokenizer.dir} ` +
        `(${t.provenance.steps} steps, preset ${t.provenance.preset}, λ = ${t.provenance.lambda})`,
    },
  });
  await writeFileAtomic(join(run.out, "codebook.md"), md);
  const summaryOf = (n: string) => ({
    usage: stats[n].usage,
    perplexity: stats[n].perplexity,
    dead: stats[n].dead,
  });
  return {
    codebook_size: k,
    distinct_codes: distinct,
    grid,
    splits: Object.fromEntries(names.map((n) => [n, summaryOf(n)])),
    dead_everywhere: deadEverywhere,
    patch_codes: codes,
  };
}

/** The pixels of the given images of a split, by index. */
async function imagePixels(
  split: SplitReader,
  indices: number[],
): Promise<Map<number, Uint8Array>> {
  const out = new Map<number, Uint8Array>();
  for (const i of indices) out.set(i, (await split.read(i)).pixels);
  return out;
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
