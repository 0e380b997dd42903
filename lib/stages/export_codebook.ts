// The export-codebook stage's work (tasks/export_codebook.ts is its command line): its inputs
// opened and checked (the train-tokenizer run's manifest, model config and checkpoint against the
// shards), its config resolved, and the export — the portable tokenizer file, every split of the
// shards tokenised into token shards, and the codebook's report: codebook.json, the code-frequency
// chart, the patches-per-code figures (the paper's Figure 3) and codebook.md.

import { join, resolve } from "node:path";
import { adapterInfo, peakGpuBytes } from "../tensor/engine.ts";
import type { Tensor } from "../tensor/tensor.ts";
import { Progress } from "../cli/progress.ts";
import { failer, readStageManifest, type StageManifest, type StageRun } from "../cli/stage.ts";
import { signedUnitNorm } from "../data/augment.ts";
import type { ShardSet, SplitReader } from "../data/shards.ts";
import {
  openTokenShards,
  TOKEN_MANIFEST_FILE,
  TokenShardWriter,
  type TokenSplitManifest,
  writeTokenManifest,
} from "../data/token_shards.ts";
import { writeFileAtomic, writeJsonAtomic } from "../io/atomic.ts";
import { reason } from "../io/errors.ts";
import { sha256File } from "../io/hash.ts";
import { distinctCodes } from "../models/quantizer.ts";
import { loadTrainedVqVae, Tokenizer, TOKENIZER_FILE } from "../models/tokenizer.ts";
import { type ResolvedVqVaeConfig, resolveVqVaeConfig } from "../models/vqvae.ts";
import { CHECKPOINT_FILE } from "../train/checkpoint.ts";
import type { ExportCodebookOptions } from "./export_codebook_options.ts";
import { openStageShards } from "./stage_shards.ts";
import {
  codebookMarkdown,
  type CodeFigure,
  countCodes,
  cropPatch,
  histogramStats,
  type Patch,
  PatchSampler,
  rankCodes,
  selectCodes,
  writeCodeFrequencyChart,
  writePatchGrid,
  writePatchOverview,
} from "../report/codebook.ts";

export const EXPORT_CODEBOOK_STAGE = "export-codebook";
const STAGE = EXPORT_CODEBOOK_STAGE;
export const TOKENS_DIR = "tokens";
const FIGURES_DIR = "figures";

const fail: (what: string) => never = failer(STAGE);

/** The resolved, fingerprinted options of a run (no paths, no display switches). */
export interface ExportCodebookConfig {
  /** Images per tokenised batch. */
  batch: number;
  /** Images per token shard file. */
  perShard: number;
  /** Images tokenised per split (null: all). */
  limit: number | null;
  patches: { codes: number; perCode: number; margin: number };
  seed: number;
}

/** The tokenizer run's manifest and model config, and the shards; checked against each other. */
export async function openExportCodebookInputs(o: ExportCodebookOptions) {
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
    return fail(`--tokenizer ${join(dir, "manifest.json")}: config.model: ${reason(error)}`);
  }
  const entry = run.files[CHECKPOINT_FILE];
  if (!entry) fail(`--tokenizer ${dir}: its manifest lists no ${CHECKPOINT_FILE}`);
  const shards = await openStageShards(STAGE, o.shards, {
    splits: ["train"],
    check: ({ manifest: { image } }) =>
      image.channels !== model.inChannels || image.height !== model.imageSize ||
        image.width !== model.imageSize
        ? [{
          options: ["shards", "tokenizer"],
          message: `images are ${image.channels}×${image.height}×${image.width}, the tokenizer ` +
            `takes ${model.inChannels}×${model.imageSize}×${model.imageSize}`,
        }]
        : [],
  });
  return { dir, run, model, checkpoint: { path: join(dir, CHECKPOINT_FILE), ...entry }, shards };
}

export type ExportCodebookInputs = Awaited<ReturnType<typeof openExportCodebookInputs>>;

/** The run's config from the options and the tokenizer's downsample factor. */
export function resolveExportCodebookConfig(
  o: ExportCodebookOptions,
  inputs: ExportCodebookInputs,
): ExportCodebookConfig {
  const f = 2 ** (inputs.model.channelMult.length - 1);
  return {
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
}

/**
 * The export into the begun run's folder: the tokenizer file (from the checkpoint the tokenizer run
 * finished with, checked against its manifest), the token shards and the codebook report; returns
 * the summary.
 */
export async function exportCodebook(
  run: StageRun,
  config: ExportCodebookConfig,
  inputs: ExportCodebookInputs,
  { log, quiet = false }: { log: (line: string) => void; quiet?: boolean },
): Promise<Record<string, unknown>> {
  const started = performance.now();
  const { checkpoint, shards } = inputs;
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
    const tokenized = await tokenizeSplits(config, tokenizer, shards, run, { log, quiet });
    const report = await writeCodebookReport(config, tokenizer, shards, run, tokenized);
    return {
      ...report,
      images: tokenized.images,
      tokenize_seconds: tokenized.seconds,
      tokenize_images_per_s: tokenized.images / tokenized.seconds,
      export_seconds: (performance.now() - started) / 1000,
      peak_gpu_bytes: peakGpuBytes(),
    };
  } finally {
    tokenizer.dispose();
  }
}

/** Per-split code counts of a tokenisation, and how long it took. */
export interface Tokenized {
  counts: Record<string, Float64Array>;
  images: number;
  seconds: number;
  sizes: Record<string, number>;
}

/**
 * Tokenises every split into token shards, two batches in flight (the next batch is encoded while
 * the previous one's ids are read back and written), counting codes per split on the way.
 */
export async function tokenizeSplits(
  config: ExportCodebookConfig,
  tokenizer: Tokenizer,
  shards: ShardSet,
  run: StageRun,
  { log, quiet = false }: { log: (line: string) => void; quiet?: boolean },
): Promise<Tokenized> {
  const dir = join(run.out, TOKENS_DIR);
  await Deno.mkdir(dir, { recursive: true });
  const geometry = { grid: tokenizer.info.grid, codebookSize: tokenizer.info.codebookSize };
  const names = Object.keys(shards.splits).filter((s) => shards.splits[s].count > 0);
  const size = (s: string) => Math.min(shards.splits[s].count, config.limit ?? Infinity);
  const total = names.reduce((n, s) => n + size(s), 0);
  log(
    `export-codebook: ${adapterInfo().description}; tokenising ${total} images (${
      names.join(", ")
    }) into ` +
      `${geometry.grid.join("×")} tokens, K = ${geometry.codebookSize}`,
  );
  const progress = new Progress({ label: "tokenize", total, unit: "img", quiet });
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
export async function writeCodebookReport(
  config: ExportCodebookConfig,
  tokenizer: Tokenizer,
  shards: ShardSet,
  run: StageRun,
  { counts, sizes }: Pick<Tokenized, "counts" | "sizes">,
) {
  const { grid, codebookSize: k } = tokenizer.info;
  const f = tokenizer.downsampleFactor;
  const names = Object.keys(counts);
  const stats = Object.fromEntries(names.map((n) => [n, {
    images: sizes[n],
    ...histogramStats(counts[n]),
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

  // What codebook.json and codebook.md both state.
  const shared = {
    codebookSize: k,
    grid,
    downsampleFactor: f,
    distinctCodes: distinct,
    splits: stats,
    deadEverywhere,
  };
  const json = {
    ...shared,
    topCodes,
    patches: { split: patchSplit, margin: p.margin, codes: figures },
    counts: Object.fromEntries(names.map((n) => [n, Array.from(counts[n])])),
  };
  await writeJsonAtomic(join(run.out, "codebook.json"), json);
  const t = tokenizer.info;
  const md = codebookMarkdown({
    ...shared,
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
