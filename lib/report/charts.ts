// The report's charts as Vega-Lite specs (training curves by kind of metric, fine-tuning curves,
// sorted code frequencies, linear probe per block, arm comparisons as bars), rendered headless to
// SVG by vega (no canvas, no native code, no network or environment access: the data are inline).
//
// Metrics are charted by kind, never mixed on one axis: losses; fractions (accuracies, usage,
// shares, SSIM); PSNR in dB; perplexity; the discriminator's signed logits and adaptive weight.
// Ids and counts that a stage logs beside them (the most frequent code's id, distinct codes, image
// counts) and bookkeeping (lr, throughput, memory) are not curves.

import { join } from "node:path";
import * as vega from "vega";
import { compile, type TopLevelSpec } from "vega-lite";
import { type MetricRecord, series } from "../cli/metrics.ts";
import { writeFileAtomic } from "../io/atomic.ts";

export type ChartSpec = TopLevelSpec;

/** A chart: a stable id (file name and HTML anchor), its title and its Vega-Lite spec. */
export interface Chart {
  id: string;
  title: string;
  spec: ChartSpec;
}

const WIDTH = 360;
/** Points per line up to which each point is marked. */
const MARKED_POINTS = 60;
const HEIGHT = 220;

// ---- kinds of metrics -----------------------------------------------------------------------

/** Logged keys that are bookkeeping, ids or counts, never a curve. */
const NOT_CURVES = new RegExp(
  "^(step|epoch|lr|momentum|images_per_s|peak_gpu_bytes|grad_norm|seconds|time|wall_s|" +
    "train_seconds)$|(^|_)(code|codes|id|ids)$|(^|_)(images|patches|count|tokens)$",
);

export type MetricKind = "loss" | "fraction" | "psnr" | "perplexity" | "adversarial";

const KIND_TITLES: Record<MetricKind, { title: string; axis: string }> = {
  loss: { title: "losses", axis: "loss" },
  fraction: { title: "accuracies and usage", axis: "fraction" },
  psnr: { title: "reconstruction PSNR", axis: "PSNR (dB)" },
  perplexity: { title: "codebook perplexity", axis: "perplexity" },
  adversarial: { title: "discriminator logits and adaptive weight", axis: "value" },
};

/** The kind of a logged key, or null when it is not a curve (bookkeeping, an id, a count). */
export function metricKind(key: string): MetricKind | null {
  if (NOT_CURVES.test(key)) return null;
  if (/acc|usage|share|ssim/i.test(key)) return "fraction";
  if (/psnr/i.test(key)) return "psnr";
  if (/perplexity/i.test(key)) return "perplexity";
  // The discriminator's mean logits and the adaptive weight: signed, not losses.
  if (/^(logits_real|logits_fake|d_weight)$/.test(key)) return "adversarial";
  return "loss";
}

/** Held-out keys ("eval_loss", "val_acc") and the train metric they sit beside. */
function splitOf(key: string): { metric: string; split: "train" | "held-out" } {
  const m = /^(eval|val|test)_(.+)$/.exec(key);
  return m ? { metric: m[2], split: "held-out" } : { metric: key, split: "train" };
}

export interface CurveGroup {
  kind: MetricKind;
  keys: string[];
  logY: boolean;
}

/**
 * The numeric keys of `records` grouped by kind (losses, fractions, PSNR, perplexity, the
 * discriminator's logits and weight, in that order); a group of losses whose values are all
 * positive and span more than a decade gets a log axis.
 */
export function curveGroups(records: readonly MetricRecord[]): CurveGroup[] {
  const keys: string[] = [];
  for (const r of records) {
    for (const [k, v] of Object.entries(r)) {
      if (typeof v === "number" && metricKind(k) && !keys.includes(k)) keys.push(k);
    }
  }
  const groups: CurveGroup[] = [];
  for (const kind of Object.keys(KIND_TITLES) as MetricKind[]) {
    const members = keys.filter((k) => metricKind(k) === kind);
    if (!members.length) continue;
    const values = members.flatMap((k) => series(records as MetricRecord[], k).y)
      .filter(Number.isFinite);
    groups.push({ kind, keys: members, logY: kind === "loss" && spansDecades(values, 1) });
  }
  return groups;
}

/** That every value is positive and max/min exceeds 10^decades. */
function spansDecades(values: readonly number[], decades: number): boolean {
  if (!values.length || values.some((v) => !(v > 0))) return false;
  return Math.max(...values) / Math.min(...values) > 10 ** decades;
}

// ---- chart builders -------------------------------------------------------------------------

/** A y encoding's scale and axis: log, [0, 1] in percent, or fitted to the data. */
function yScale({ logY = false, fraction = false }: { logY?: boolean; fraction?: boolean }) {
  if (logY) return { scale: { type: "log" } };
  if (fraction) return { scale: { domain: [0, 1] }, axis: { format: ".0%" } };
  return { scale: { zero: false } };
}

export interface LinePoint {
  x: number;
  y: number;
  /** The line's name in the legend. */
  series: string;
  /** "train" or "held-out" (dashed), when the chart has both. */
  split?: string;
}

/** Lines of (x, y) points, a line (with its points marked) and a legend entry per series. */
export function lineChart(
  id: string,
  title: string,
  points: readonly LinePoint[],
  { xTitle, yTitle, logY = false, fraction = false, integerX = false }: {
    xTitle: string;
    yTitle: string;
    logY?: boolean;
    /** Values in [0, 1]: the axis spans [0, 1], in percent. */
    fraction?: boolean;
    /** x is a count (step, rank, block): integer ticks only. */
    integerX?: boolean;
  },
): Chart {
  const finite = points.filter((p) =>
    Number.isFinite(p.x) && Number.isFinite(p.y) && (!logY || p.y > 0)
  );
  const splits = new Set(finite.map((p) => p.split).filter((s) => s));
  // Each point marked while a line has few; beyond, the line alone (thousands of symbols of a
  // code-frequency chart would only weigh the page down).
  const lines = new Set(finite.map((p) => `${p.series} ${p.split ?? ""}`)).size;
  const marked = finite.length <= MARKED_POINTS * Math.max(1, lines);
  const spec = {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    title,
    width: WIDTH,
    height: HEIGHT,
    data: { values: finite.map((p) => ({ ...p })) },
    mark: { type: "line", point: marked ? { size: 18 } : false, strokeWidth: 1.5 },
    encoding: {
      x: {
        field: "x",
        type: "quantitative",
        title: xTitle,
        ...(integerX ? { axis: { tickMinStep: 1, format: "d" } } : {}),
      },
      y: {
        field: "y",
        type: "quantitative",
        title: yTitle,
        ...yScale({ logY, fraction }),
      },
      color: { field: "series", type: "nominal", title: "series", sort: null },
      ...(splits.size > 1
        ? {
          strokeDash: {
            field: "split",
            type: "nominal",
            title: "split",
            sort: null,
            // Dashes, not the points' circles, show which line is which split.
            legend: {
              symbolType: "stroke",
              symbolStrokeWidth: 1.5,
              symbolSize: 400,
              encode: { symbols: { update: { stroke: { value: "#555" } } } },
            },
          },
        }
        : {}),
      // One line per series and split.
      detail: { field: "split", type: "nominal" },
      tooltip: [
        { field: "series", title: "series" },
        { field: "x", title: xTitle },
        { field: "y", title: yTitle, format: ".4~g" },
      ],
    },
  } as ChartSpec;
  return { id, title, spec };
}

/**
 * A stage's training curves from its metrics.jsonl: one chart per kind of metric, each a line
 * per metric, held-out values dashed beside their train metric.
 */
export function stageCurveCharts(
  records: readonly MetricRecord[],
  idPrefix: string,
  title: string,
): Chart[] {
  return curveGroups(records).map((g) => {
    const points = g.keys.flatMap((key) => {
      const { metric, split } = splitOf(key);
      const s = series(records as MetricRecord[], key);
      return s.x.map((x, i) => ({ x, y: s.y[i], series: metric, split }));
    });
    return lineChart(`${idPrefix}_${g.kind}`, `${title}: ${KIND_TITLES[g.kind].title}`, points, {
      xTitle: "step",
      yTitle: KIND_TITLES[g.kind].axis + (g.logY ? " (log)" : ""),
      logY: g.logY,
      fraction: g.kind === "fraction",
      integerX: true,
    });
  });
}

/** A fine-tuning run's logged points (step, training loss, held-out top-1 where evaluated). */
export interface FinetuneRun {
  label: string;
  curve: readonly { step: number; loss?: number; val_acc?: number }[];
}

/** Fine-tuning curves of every run (pretrained arms, scratch): loss, then held-out top-1. */
export function finetuneCharts(runs: readonly FinetuneRun[]): Chart[] {
  const pick = (key: "loss" | "val_acc") =>
    runs.flatMap((r) =>
      r.curve.filter((p) => p[key] !== undefined)
        .map((p) => ({ x: p.step, y: p[key]!, series: r.label }))
    );
  return [
    lineChart("finetune_loss", "Fine-tuning: training loss", pick("loss"), {
      xTitle: "step",
      yTitle: "loss",
      integerX: true,
    }),
    lineChart("finetune_accuracy", "Fine-tuning: held-out top-1 by step", pick("val_acc"), {
      xTitle: "step",
      yTitle: "top-1 accuracy",
      fraction: true,
      integerX: true,
    }),
  ];
}

/** Linear-probe accuracy of each block of the frozen ViT, a line per arm. */
export function probeChart(
  arms: readonly { label: string; perBlock: readonly { block: number; val: number }[] }[],
): Chart {
  const points = arms.flatMap((a) =>
    a.perBlock.map((p) => ({ x: p.block, y: p.val, series: a.label }))
  );
  return lineChart("probe_per_block", "Linear probe per block (frozen ViT)", points, {
    xTitle: "block",
    yTitle: "held-out top-1 accuracy",
    fraction: true,
    integerX: true,
  });
}

/** Sorted code frequencies (rank → share of tokens) per split; log y beyond two decades. */
export function codeFrequencyChart(
  id: string,
  title: string,
  countsBySplit: Record<string, ArrayLike<number>>,
): Chart {
  const points: LinePoint[] = [];
  for (const [split, counts] of Object.entries(countsBySplit)) {
    const sorted = Array.from(counts).filter((c) => c > 0).sort((a, b) => b - a);
    const total = sorted.reduce((a, b) => a + b, 0);
    sorted.forEach((c, i) => points.push({ x: i + 1, y: c / total, series: split }));
  }
  const logY = spansDecades(points.map((p) => p.y), 2);
  return lineChart(id, title, points, {
    xTitle: "code rank",
    yTitle: `share of tokens${logY ? " (log)" : ""}`,
    logY,
    integerX: true,
  });
}

export interface Bar {
  /** The bar's category (an arm, a method). */
  group: string;
  /** One value per seed (several: the bar is their mean and each seed is a point). */
  values: readonly number[];
}

/**
 * Bars of one measure per group (the mean of its values), with each value drawn as a point where
 * a group has several (seeds).
 */
export function barChart(
  id: string,
  title: string,
  bars: readonly Bar[],
  { yTitle, xTitle = "", fraction = false }: {
    yTitle: string;
    xTitle?: string;
    /** Values in [0, 1] (accuracies): the axis spans [0, 1], in percent. */
    fraction?: boolean;
  },
): Chart {
  const kept = bars.map((b) => ({ ...b, values: b.values.filter(Number.isFinite) }))
    .filter((b) => b.values.length);
  const means = kept.map((b) => ({
    group: b.group,
    value: b.values.reduce((a, v) => a + v, 0) / b.values.length,
    seeds: b.values.length,
  }));
  const seeds = kept.filter((b) => b.values.length > 1)
    .flatMap((b) => b.values.map((value, seed) => ({ group: b.group, value, seed })));
  const x = { field: "group", type: "nominal", title: xTitle, sort: null, axis: { labelAngle: 0 } };
  const bar = {
    data: { values: means },
    mark: { type: "bar", width: { band: 0.6 } },
    encoding: {
      x,
      y: {
        field: "value",
        type: "quantitative",
        title: yTitle,
        ...(fraction ? yScale({ fraction }) : {}),
      },
      color: { field: "group", type: "nominal", legend: null, sort: null },
      tooltip: [
        { field: "group", title: xTitle || "group" },
        { field: "value", title: yTitle, format: ".4~g" },
        { field: "seeds", title: "seeds" },
      ],
    },
  };
  const points = {
    data: { values: seeds },
    mark: { type: "point", filled: true, color: "black", size: 30 },
    encoding: { x, y: { field: "value", type: "quantitative" } },
  };
  const spec = {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    title,
    width: Math.max(120, 70 * means.length),
    height: HEIGHT,
    layer: seeds.length ? [bar, points] : [bar],
  } as ChartSpec;
  return { id, title, spec };
}

// ---- rendering ------------------------------------------------------------------------------

/** The chart as a standalone SVG document (vega's headless SVG renderer). */
export async function renderSvg(chart: Chart): Promise<string> {
  let runtime: vega.Spec;
  try {
    runtime = compile(chart.spec).spec;
  } catch (error) {
    throw new Error(`peco: chart "${chart.id}": ${(error as Error).message}`);
  }
  // "none": no renderer attached to a DOM; toSVG renders the scenegraph to a string.
  const view = new vega.View(vega.parse(runtime), { renderer: "none", logLevel: vega.Error });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

/** A chart written to a file of the report folder, with its SVG text for the HTML page. */
export interface WrittenChart {
  id: string;
  title: string;
  /** Path from the report folder. */
  file: string;
  svg: string;
}

/** Renders the chart and writes it as `file` (an .svg path from `dir`), atomically. */
export async function writeChart(dir: string, file: string, chart: Chart): Promise<WrittenChart> {
  const svg = await renderSvg(chart);
  await writeFileAtomic(join(dir, file), svg);
  return { id: chart.id, title: chart.title, file, svg };
}
