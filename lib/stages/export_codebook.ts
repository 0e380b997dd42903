// The export-codebook stage's work (tasks/export_codebook.ts wires options and inputs to it):
// tokenising every split of a shard set into token shards, and the codebook's report —
// codebook.json, the code-frequency chart, the patches-per-code figures (the paper's Figure 3) and
// codebook.md.

import { join } from "node:path";
import { adapterInfo } from "../tensor/engine.ts";
import type { Tensor } from "../tensor/tensor.ts";
import { Progress } from "../cli/progress.ts";
import type { StageRun } from "../cli/stage.ts";
import type { ShardSet, SplitReader } from "../data/shards.ts";
import {
  openTokenShards,
  TOKEN_MANIFEST_FILE,
  TokenShardWriter,
  type TokenSplitManifest,
  writeTokenManifest,
} from "../data/token_shards.ts";
import { writeFileAtomic, writeJsonAtomic } from "../io/atomic.ts";
import { sha256File } from "../io/hash.ts";
import { distinctCodes } from "../models/quantizer.ts";
import { type Tokenizer, TOKENIZER_FILE } from "../models/tokenizer.ts";
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

export const TOKENS_DIR = "tokens";
const FIGURES_DIR = "figures";

export interface ExportSettings {
  /** Images per tokenised batch. */
  batch: number;
  /** Images per token shard file. */
  perShard: number;
  /** Images tokenised per split (null: all). */
  limit: number | null;
  patches: { codes: number; perCode: number; margin: number };
  seed: number;
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
  config: ExportSettings,
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
  config: ExportSettings,
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
