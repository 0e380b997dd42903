// What a codebook learned, for the export-codebook stage: per-split code statistics (usage,
// perplexity, dead codes, top codes), the sorted code-frequency chart, and the paper's Figure 3 —
// for a sample of codes, the image patches (receptive-field crops) where that code occurs — plus
// the codebook.md that links it all. Host-side only: the ids come from the token shards.
//
// A code at grid cell (i, j) of an image stands for the patch [i·f, (i+1)·f) × [j·f, (j+1)·f),
// f the downsample factor; crops show that cell enlarged by a margin of context on every side,
// with the cell itself outlined.

import { writeFileAtomic } from "../io/atomic.ts";
import { encodePng } from "../io/png.ts";
import { Rng } from "../tensor/init.ts";
import { codeFrequencyChart, renderSvg } from "./charts.ts";
import { imageGrid } from "./images.ts";

// ---- statistics -----------------------------------------------------------------------------

/** Adds the ids' histogram to `counts` (length K); ids must be in [0, K). */
export function countCodes(ids: ArrayLike<number>, counts: Float64Array): void {
  const k = counts.length;
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i];
    if (!(id >= 0 && id < k)) throw new Error(`peco: countCodes: id ${id} is not in [0, ${k})`);
    counts[id]++;
  }
}

export interface HistogramStats {
  tokens: number;
  /** Codes that occur at least once. */
  used: number;
  /** used / K. */
  usage: number;
  /** K − used. */
  dead: number;
  /** exp(H(p)) of the code distribution p (natural log): the effective number of codes. */
  perplexity: number;
  /** H(p) in bits. */
  entropyBits: number;
}

/** Usage, dead codes and perplexity of a histogram. */
export function histogramStats(counts: ArrayLike<number>): HistogramStats {
  let tokens = 0, used = 0;
  for (let i = 0; i < counts.length; i++) {
    tokens += counts[i];
    if (counts[i] > 0) used++;
  }
  let h = 0;
  for (let i = 0; i < counts.length; i++) {
    if (counts[i] > 0) {
      const p = counts[i] / tokens;
      h -= p * Math.log(p);
    }
  }
  return {
    tokens,
    used,
    usage: used / counts.length,
    dead: counts.length - used,
    perplexity: tokens > 0 ? Math.exp(h) : 0,
    entropyBits: h / Math.LN2,
  };
}

/** Code ids by decreasing count (ties: smaller id first), zero counts left out. */
export function rankCodes(counts: ArrayLike<number>): number[] {
  const ids = Array.from({ length: counts.length }, (_, i) => i).filter((i) => counts[i] > 0);
  return ids.sort((a, b) => counts[b] - counts[a] || a - b);
}

/**
 * The codes shown in the patch figures: the `top` most frequent, then `random` others drawn
 * (seeded) from the remaining used codes.
 */
export function selectCodes(
  counts: ArrayLike<number>,
  { top, random, seed }: { top: number; random: number; seed: number },
): { top: number[]; random: number[] } {
  const ranked = rankCodes(counts);
  const head = ranked.slice(0, top);
  const rest = ranked.slice(top);
  const rng = new Rng(seed).fork("codebook-report.codes");
  for (let i = 0; i < Math.min(random, rest.length); i++) {
    const j = i + rng.int(rest.length - i);
    [rest[i], rest[j]] = [rest[j], rest[i]];
  }
  return { top: head, random: rest.slice(0, random).sort((a, b) => a - b) };
}

// ---- patch sampling -------------------------------------------------------------------------

/** Where a code occurs: an image (index in its split) and a grid cell. */
export interface Occurrence {
  image: number;
  row: number;
  col: number;
}

/**
 * Keeps, per selected code, a uniform random sample of at most `perCode` of its occurrences
 * (reservoir sampling, seeded): one pass over the ids of a split, in order.
 */
export class PatchSampler {
  readonly samples = new Map<number, Occurrence[]>();
  private readonly seen = new Map<number, number>();
  private readonly rng: Rng;

  constructor(
    codes: readonly number[],
    readonly perCode: number,
    readonly grid: readonly [number, number],
    seed: number,
  ) {
    for (const c of codes) {
      this.samples.set(c, []);
      this.seen.set(c, 0);
    }
    this.rng = new Rng(seed).fork("codebook-report.patches");
  }

  /** Ids [n, h·w] of images first, first + 1, … */
  add(ids: ArrayLike<number>, first: number): void {
    const [h, w] = this.grid;
    const t = h * w;
    for (let i = 0; i < ids.length; i++) {
      const list = this.samples.get(ids[i]);
      if (!list) continue;
      const seen = this.seen.get(ids[i])! + 1;
      this.seen.set(ids[i], seen);
      const cell = i % t;
      const at = { image: first + Math.floor(i / t), row: Math.floor(cell / w), col: cell % w };
      if (list.length < this.perCode) list.push(at);
      else {
        const j = this.rng.int(seen);
        if (j < this.perCode) list[j] = at;
      }
    }
  }

  /** Every image index some sample needs, sorted. */
  images(): number[] {
    const set = new Set<number>();
    for (const list of this.samples.values()) for (const o of list) set.add(o.image);
    return [...set].sort((a, b) => a - b);
  }
}

/** A patch crop as an RGB image [3, side·zoom, side·zoom] (planar bytes). */
export interface Patch {
  pixels: Uint8Array;
  side: number;
}

const MID_GREY = 128;
const CELL_OUTLINE = [230, 40, 40] as const;

/**
 * The crop of image `pixels` [C, S, S] around cell (row, col) of a downsample-`f` grid, with
 * `margin` pixels of context (mid-grey outside the image), zoomed `zoom`× (nearest) and the cell
 * outlined: RGB [3, (f + 2·margin)·zoom, same].
 */
export function cropPatch(
  pixels: Uint8Array,
  image: { channels: number; size: number },
  at: { row: number; col: number },
  f: number,
  margin: number,
  zoom: number,
): Patch {
  const { channels: c, size: s } = image;
  const crop = f + 2 * margin;
  const side = crop * zoom;
  const out = new Uint8Array(3 * side * side);
  const plane = side * side;
  const y0 = at.row * f - margin, x0 = at.col * f - margin;
  for (let y = 0; y < side; y++) {
    const sy = y0 + Math.floor(y / zoom);
    for (let x = 0; x < side; x++) {
      const sx = x0 + Math.floor(x / zoom);
      const inside = sy >= 0 && sy < s && sx >= 0 && sx < s;
      for (let k = 0; k < 3; k++) {
        const src = Math.min(k, c - 1);
        out[k * plane + y * side + x] = inside ? pixels[(src * s + sy) * s + sx] : MID_GREY;
      }
    }
  }
  // The cell itself: a one-pixel outline just outside [margin·zoom, (margin + f)·zoom).
  if (margin > 0) {
    const a = margin * zoom - 1, b = (margin + f) * zoom;
    for (let t = a; t <= b; t++) {
      for (const [x, y] of [[t, a], [t, b], [a, t], [b, t]]) {
        if (x < 0 || y < 0 || x >= side || y >= side) continue;
        for (let k = 0; k < 3; k++) out[k * plane + y * side + x] = CELL_OUTLINE[k];
      }
    }
  }
  return { pixels: out, side };
}

const GAP = 2;

/** A patch as the planar RGB image it is. */
function patchImage(p: Patch) {
  return { pixels: p.pixels, channels: 3, height: p.side, width: p.side };
}

/** One code's patches in a grid of `cols` columns (PNG; its title is the report's text). */
export async function writePatchGrid(
  path: string,
  patches: readonly Patch[],
  cols: number,
): Promise<void> {
  if (patches.length === 0) throw new Error(`peco: writePatchGrid: ${path}: no patches`);
  const rows: ReturnType<typeof patchImage>[][] = [];
  patches.forEach((p, i) => {
    if (i % cols === 0) rows.push([]);
    rows.at(-1)!.push(patchImage(p));
  });
  await writeFileAtomic(path, encodePng(imageGrid(rows, { gap: GAP }).image));
}

/**
 * One row per code, up to `perRow` of its patches (PNG); returns the codes' labels in row order
 * (codes without patches are left out), which the report prints beside it.
 */
export async function writePatchOverview(
  path: string,
  rows: readonly { label: string; patches: readonly Patch[] }[],
  perRow: number,
): Promise<string[]> {
  const shown = rows.filter((r) => r.patches.length > 0);
  if (shown.length === 0) throw new Error(`peco: writePatchOverview: ${path}: no patches`);
  const grid = imageGrid(shown.map((r) => r.patches.slice(0, perRow).map(patchImage)), {
    gap: GAP,
  });
  await writeFileAtomic(path, encodePng(grid.image));
  return shown.map((r) => r.label);
}

// ---- code frequency chart -------------------------------------------------------------------

/** The sorted code frequencies (rank → share of tokens) of each split as an SVG chart. */
export async function writeCodeFrequencyChart(
  path: string,
  countsBySplit: Record<string, ArrayLike<number>>,
): Promise<void> {
  const chart = codeFrequencyChart("code_frequency", "Code frequency, sorted", countsBySplit);
  await writeFileAtomic(path, await renderSvg(chart));
}

// ---- codebook.md ----------------------------------------------------------------------------

export interface CodeFigure {
  code: number;
  /** "top": among the most frequent; "random": a random used code. */
  kind: "top" | "random";
  /** Path relative to the report. */
  file: string;
  /** Occurrences in the split the patches come from, and patches shown. */
  occurrences: number;
  patches: number;
}

export interface CodebookSummary {
  codebookSize: number;
  /** Codebook rows not equal to a lower-index row (distinctCodes). */
  distinctCodes: number;
  grid: [number, number];
  downsampleFactor: number;
  /** Statistics per split, with its image count. */
  splits: Record<string, HistogramStats & { images: number }>;
  /** Codes used in no split. */
  deadEverywhere: number;
  /** The most frequent codes (by the first split): id and count per split. */
  topCodes: { code: number; counts: Record<string, number> }[];
  /** Where the patches come from (the held-out split). */
  patchSplit: string;
  patchMargin: number;
  histogram: string;
  overview: string;
  /** The overview's rows, top to bottom: code labels. */
  overviewRows: string[];
  codes: CodeFigure[];
  /** Facts about the tokenizer and the run, shown as a list. */
  about: Record<string, string>;
}

const pct = (v: number) => `${(100 * v).toFixed(1)} %`;

/** The markdown report linking the statistics and figures. */
export function codebookMarkdown(s: CodebookSummary): string {
  const splits = Object.keys(s.splits);
  const lines = [
    `# Codebook`,
    ``,
    ...Object.entries(s.about).map(([k, v]) => `- ${k}: ${v}`),
    `- codebook: K = ${s.codebookSize}; token grid ${s.grid.join("×")} ` +
    `(each token covers a ${s.downsampleFactor}×${s.downsampleFactor} pixel cell)`,
    ``,
    `## Usage`,
    ``,
    `| split | images | tokens | codes used | usage | dead codes | perplexity | entropy (bits) |`,
    `|---|---:|---:|---:|---:|---:|---:|---:|`,
    ...splits.map((name) => {
      const t = s.splits[name];
      return `| ${name} | ${t.images} | ${t.tokens} | ${t.used} | ${pct(t.usage)} | ${t.dead} | ` +
        `${t.perplexity.toFixed(1)} | ${t.entropyBits.toFixed(2)} |`;
    }),
    ``,
    `Codes used in no split: ${s.deadEverywhere} of ${s.codebookSize}. Distinct codebook rows: ` +
    `${s.distinctCodes} of ${s.codebookSize} (a row equal to a lower-index one can never be ` +
    `chosen). Perplexity is exp of the ` +
    `entropy of the code distribution: the number of equally used codes it is worth.`,
    ``,
    `![sorted code frequencies](${s.histogram})`,
    ``,
    `Code frequencies sorted by rank: [${s.histogram}](${s.histogram}).`,
    ``,
    `### Most frequent codes`,
    ``,
    `| code | ${splits.map((n) => `${n} count | ${n} share`).join(" | ")} |`,
    `|---:|${splits.map(() => "---:|---:").join("|")}|`,
    ...s.topCodes.map(({ code, counts }) =>
      `| ${code} | ${
        splits.map((n) => `${counts[n] ?? 0} | ${pct((counts[n] ?? 0) / s.splits[n].tokens)}`)
          .join(" | ")
      } |`
    ),
    ``,
    `## What the codes look like`,
    ``,
    `For each code below, random ${s.patchSplit} images where it occurs, cropped around the ` +
    `token's cell (outlined in red) with ${s.patchMargin} pixels of context (the paper's ` +
    `Figure 3). Overview, one row per code: [${s.overview}](${s.overview}).`,
    ``,
    `![patches per code](${s.overview})`,
    ``,
    `Rows of the overview, top to bottom: codes ${s.overviewRows.join(", ")}.`,
    ``,
    `| code | kind | ${s.patchSplit} occurrences | patches | figure |`,
    `|---:|---|---:|---:|---|`,
    ...s.codes.map((c) =>
      `| ${c.code} | ${c.kind === "top" ? "most frequent" : "random"} | ${c.occurrences} | ` +
      `${c.patches} | [${c.file}](${c.file}) |`
    ),
    ``,
  ];
  return lines.join("\n");
}
