// The evaluate stage's report (report.md and report.html, from the same blocks): the claims with
// their intervals and verdicts, every figure of every arm as mean ± sd over its seeds, the paper's
// tables (Table 4 codeword semantics, Table 1 fine-tuning, linear probes), the figures (masked
// prediction, code frequencies, Figure 3 patches, training curves) and the runs it read. The
// stage (lib/stages/evaluate.ts) measures; this module only writes what a person looks at.

import { basename, join } from "node:path";
import { type MetricRecord, METRICS_FILE, readMetrics } from "../cli/metrics.ts";
import { writeFileAtomic } from "../io/atomic.ts";
import type { Measurement, RunRef } from "../io/report.ts";
import type { OutcomeRecord } from "../eval/outcomes.ts";
import type { ClaimOf } from "../eval/claims.ts";
import type { VitProbes } from "../eval/probes.ts";
import { describeClaim, formatMeanSd, meanSd } from "../eval/stats.ts";
import type { CurvePoint } from "../train/finetune.ts";
import {
  barChart,
  type Chart,
  codeFrequencyChart,
  probeChart,
  stageCurveCharts,
  writeChart,
  type WrittenChart,
} from "./charts.ts";
import { type Block, fixed, pct } from "./document.ts";
import type { MaskFigure } from "./masked_prediction.ts";

/** The folder of the report's figures, inside the stage's folder. */
export const FIGURES = "figures";

/** The codebook statistics an export wrote (usage, perplexity per split; Figure 3 files). */
export interface ExportCodebook {
  codebookSize: number;
  splits: Record<string, { usage: number; perplexity: number }>;
  patches?: {
    split?: string;
    codes?: { code: number; file: string; kind?: string; occurrences?: number }[];
  };
  /** The histogram of codes per split. */
  counts?: Record<string, number[]>;
}

export interface ExportFigures {
  histogram: WrittenChart | null;
  /** Figure 3: a grid of patches per code. */
  patches: { code: number; kind?: string; occurrences?: number; file: string }[];
  patchSplit: string;
}

/** One arm and seed, measured. */
export interface ArmReport {
  label: string;
  seed: number;
  /** The perceptual weight its tokenizer was trained with (null: not recorded). */
  lambda: number | null;
  export: RunRef;
  pretrain: RunRef | null;
  metrics: Record<string, Measurement>;
  figures: ExportFigures;
  maskFigure?: MaskFigure;
  vitProbe?: VitProbes;
  finetuneCurve?: CurvePoint[];
}

/** How a kind of run serves the seeds: one for every seed, one per seed, or some of each. */
export type Sharing = "shared" | "per seed" | "partly shared";

/** Which of the runs an evaluation read serve every seed and which each seed has its own of. */
export interface SeedSharing {
  seeds: number[];
  runs: { what: string; sharing: Sharing; dirs: string[] }[];
}

export interface StageCurves {
  dir: string;
  stage: string;
  charts: WrittenChart[];
  note?: string;
}

export interface EvaluateReport {
  shards: {
    dir: string;
    sha256: string;
    train: number;
    val: number;
    image: { channels: number; height: number; width: number };
  };
  classes: number;
  evalImages: number;
  probe: { trainImages: number; selectFraction: number };
  finetune: {
    steps: number;
    batch: number;
    lr: number;
    layerDecay: number;
    /** The runs from scratch's layer decay where it differs from `layerDecay`. */
    scratchLayerDecay?: number;
    labelSmoothing: number;
    dropPath: number;
    warmupSteps: number;
  };
  maskRatios: readonly number[];
  arms: ArmReport[];
  /** Fine-tuning from scratch, one run per seed: its held-out top-1 and its curve. */
  scratch: { seed: number; accuracy: number; curve?: CurvePoint[] }[];
  /** The classifier trained on real images: its held-out top-1, steps and seed. */
  classifier: { accuracy: number; steps: number; seed: number };
  claims: ClaimOf[];
  /** Claims left out, and why. */
  claimNotes: string[];
  /** Per arm and seed (in --export order), the perceptual network's k-NN accuracy or why not. */
  perceptualKnn: {
    label: string;
    seed: number;
    accuracy: number | null;
    dir: string | null;
    note: string;
  }[];
  /** Per-image 0/1 outcomes of every accuracy of every arm and seed. */
  outcomes: OutcomeRecord[];
  /** With several seeds: which runs serve every seed and which are each seed's own. */
  seedSharing: SeedSharing | null;
  /** A smoke run: its budgets support no claim, and the report says so first. */
  smoke: boolean;
  curves: StageCurves[];
  finetuneCharts: WrittenChart[];
  /** The stage's resolved config, as report.json records it. */
  config: unknown;
}

/** The notice at the top of a smoke run's report. */
export const SMOKE_NOTICE = "**This is a smoke run: its budgets are far too small to support any " +
  "claim.** The models barely train; the numbers below show that every measurement runs end to " +
  "end, not what PeCo does. Run `deno task demo` (or `deno task experiment`) for results.";

/** Writes a chart as figures/<id>.svg under `out`. */
export function saveChart(out: string, chart: Chart): Promise<WrittenChart> {
  return writeChart(out, `${FIGURES}/${chart.id}.svg`, chart);
}

/** The curve charts of each stage folder with a metrics.jsonl; the others are listed as such. */
export async function stageCurveFigures(
  out: string,
  folders: readonly { dir: string; stage: string }[],
  log: (line: string) => void,
): Promise<StageCurves[]> {
  const result: StageCurves[] = [];
  for (const [i, { dir, stage }] of folders.entries()) {
    let records: MetricRecord[];
    try {
      records = await readMetrics(join(dir, METRICS_FILE));
    } catch {
      result.push({ dir, stage, charts: [], note: `no ${METRICS_FILE}` });
      log(`evaluate: curves: ${dir} (${stage}) has no ${METRICS_FILE}; no chart`);
      continue;
    }
    const charts = stageCurveCharts(records, `curves_${i + 1}_${stage}`, stage);
    if (!charts.length) {
      result.push({ dir, stage, charts: [], note: "no numeric curves" });
      continue;
    }
    const written: WrittenChart[] = [];
    for (const chart of charts) written.push(await saveChart(out, chart));
    result.push({ dir, stage, charts: written });
  }
  return result;
}

/**
 * An export's code-frequency chart (from the counts in its codebook.json) and its Figure 3 patch
 * grids, copied into figures/export_<slug>/.
 */
export async function exportFigures(
  out: string,
  arm: { slug: string; label: string; exportDir: string; codebook: ExportCodebook },
): Promise<ExportFigures> {
  const dir = `${FIGURES}/export_${arm.slug}`;
  const copy = async (name: string) => {
    const src = join(arm.exportDir, "figures", name);
    const ok = await Deno.stat(src).then((s) => s.isFile, () => false);
    if (!ok) return null;
    await Deno.mkdir(join(out, dir), { recursive: true });
    await writeFileAtomic(join(out, dir, name), await Deno.readFile(src));
    return `${dir}/${name}`;
  };
  const counts = arm.codebook.counts;
  const histogram = counts && Object.keys(counts).length
    ? await saveChart(
      out,
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

const heading = (level: 1 | 2 | 3, text: string): Block => ({ kind: "heading", level, text });
const text = (text: string): Block => ({ kind: "text", text });
const chart = (c: WrittenChart): Block => ({ kind: "chart", ...c });

/** The figures of the mean ± sd table: report.json key, column heading, percent or not. */
const FIGURES_TABLE: [string, string, "pct" | number][] = [
  ["codewords.linear_probe_acc", "Codeword probe (%)", "pct"],
  ["reconstruction.classifier_acc", "Reconstructions classified (%)", "pct"],
  ["tokenizer.psnr", "PSNR (dB)", 2],
  ["tokenizer.ssim", "SSIM", 4],
  ["tokenizer.usage", "Usage", 3],
  ["tokenizer.perplexity", "Perplexity", 1],
  ["linear_probe.acc", "ViT probe, last block (%)", "pct"],
  ["linear_probe.best_acc", "ViT probe, best block (%)", "pct"],
  ["finetune.pretrained_acc", "Fine-tuned (%)", "pct"],
];

/** The arms' labels in report order, each once. */
function labelsOf(arms: readonly ArmReport[]): string[] {
  return [...new Set(arms.map((a) => a.label))];
}

/** "71.3 ± 0.8 (3)" of a figure over the seeds of one label; "–" when none was measured. */
function overSeeds(values: number[], kind: "pct" | number): string {
  if (!values.length) return "–";
  const scale = kind === "pct" ? 100 : 1;
  const digits = kind === "pct" ? 1 : kind;
  const stat = meanSd(values.map((v) => v * scale));
  return formatMeanSd(stat, digits) + (values.length > 1 ? ` (${values.length})` : "");
}

/** The claims section: one line per claim and the notes of those left out. */
function claimBlocks(r: EvaluateReport): Block[] {
  const blocks: Block[] = [heading(2, "Claims")];
  if (r.smoke) {
    blocks.push(text("A smoke run: the lines below are printed only to show the format."));
  }
  blocks.push(
    text(
      "Each claim is the paired difference of two arms (candidate − baseline) on the same " +
        "held-out images and seeds, in points of top-1, with a 95% interval from a bootstrap over " +
        "the images combined with the spread across seeds (docs/statistics.md). It holds when " +
        "the interval lies above 0, does not hold when it lies below, and cannot be told at this " +
        "budget when it contains 0.",
    ),
  );
  if (r.claims.length) {
    blocks.push({
      kind: "table",
      header: ["Claim", "Verdict", "Difference (points)", "95% interval", "Seeds × images"],
      rows: r.claims.map((c) => [
        c.statement,
        verdictWords(c.verdict),
        signed(c.difference),
        `[${signed(c.ci95[0])}, ${signed(c.ci95[1])}]`,
        `${c.seeds} × ${c.images}`,
      ]),
      align: ["l", "l", "r", "r", "r"],
    });
    for (const c of r.claims) blocks.push(text(`\`${describeClaim(c, 100, 1)}\``));
  }
  for (const note of r.claimNotes) blocks.push(text(`${note}.`));
  // Beside claim (1): the k-NN accuracy of the perceptual network behind each λ > 0 arm, once.
  const knn = r.perceptualKnn.filter((p, i) =>
    (r.arms[i]?.lambda ?? 0) > 0 && r.perceptualKnn.findIndex((q) => q.label === p.label) === i
  );
  const semantic = r.claims.some((c) => c.name.startsWith("semantic codes"));
  if (semantic || knn.length) {
    blocks.push(
      text(
        "Claim (1) rests on the perceptual network: " + (knn.length
          ? knn.map((p) =>
            p.accuracy === null
              ? `${p.label}: k-NN accuracy unknown (${p.note})`
              : `${p.label}: k-NN top-1 ${pct(p.accuracy)}% (${p.note})`
          ).join("; ")
          : "no arm has λ > 0") +
          ".",
      ),
    );
  }
  return blocks;
}

/** With several seeds: what they share (randomness the intervals do not cover) and what not. */
function seedSharingBlocks(r: EvaluateReport): Block[] {
  const sharing = r.seedSharing;
  if (!sharing) return [];
  const list = (kind: Sharing) =>
    sharing.runs.filter((x) => x.sharing === kind).map((x) =>
      `${x.what} (${x.dirs.length === 1 ? `\`${x.dirs[0]}\`` : `${x.dirs.length} folders`})`
    );
  const shared = [...list("shared"), `the classifier of real images (seed ${r.classifier.seed})`];
  const own = [
    ...sharing.runs.filter((x) => x.sharing === "per seed").map((x) => x.what),
    "the probes' and fine-tuning's initialisation, batch order and drop-path draws",
    ...(r.scratch.length ? ["fine-tuning from scratch"] : []),
  ];
  const partly = list("partly shared");
  return [
    heading(2, "Seeds: what is shared"),
    text(
      `Seeds ${sharing.seeds.join(", ")}. Shared by every seed (their randomness is not in the ` +
        `intervals): ${shared.join("; ")}. Each seed's own: ${own.join("; ")}.` +
        (partly.length ? ` Shared by some seeds only: ${partly.join("; ")}.` : ""),
    ),
  ];
}

function verdictWords(v: ClaimOf["verdict"]): string {
  return v === "cannot tell" ? "cannot tell at this budget" : v;
}

function signed(v: number): string {
  const p = 100 * v;
  return `${p >= 0 ? "+" : ""}${p.toFixed(1)}`;
}

/** The report's blocks: report.md and report.html are both written from them. */
export async function reportBlocks(out: string, r: EvaluateReport): Promise<Block[]> {
  const v = (a: ArmReport, k: string) => a.metrics[k]?.value ?? null;
  const labels = labelsOf(r.arms);
  const seedsOf = (label: string) => r.arms.filter((a) => a.label === label);
  const replicated = labels.some((l) => seedsOf(l).length > 1) || r.scratch.length > 1;
  /** The arm's name in per-run tables: its label, with its seed when a label has several. */
  const name = (a: { label: string; seed: number }) =>
    replicated ? `${a.label} (seed ${a.seed})` : a.label;
  const s = r.shards;
  /** A bar per arm label of one measure, a point per seed (charts of the arm comparison). */
  const armBars = (key: string, title: string, yTitle: string, fraction = false) =>
    barChart(
      `arms_${key.replace(/\W+/g, "_")}`,
      title,
      labels.map((label) => ({
        group: label,
        values: seedsOf(label).map((a) => v(a, key)).filter((x) => x !== null) as number[],
      })),
      { yTitle, fraction },
    );
  const seedList = [...new Set([...r.arms.map((a) => a.seed), ...r.scratch.map((x) => x.seed)])];
  const blocks: Block[] = [heading(1, "PeCo evaluation")];
  if (r.smoke) blocks.push(text(SMOKE_NOTICE));
  blocks.push(
    text(
      `Data: \`${s.dir}\` — ${s.train} train / ${s.val} ` +
        `val images [${s.image.channels}, ${s.image.height}, ${s.image.width}], ` +
        `${r.classes} classes. Every number is measured on the first ${r.evalImages} ` +
        `held-out (val) images, the same for every arm and seed; probes train on the first ` +
        `${r.probe.trainImages} train images. Seed${seedList.length > 1 ? "s" : ""} ` +
        `${seedList.join(", ")}.`,
    ),
    ...claimBlocks(r),
    ...seedSharingBlocks(r),
    heading(2, "Every figure, mean ± sd over seeds"),
    text(
      "One row per arm; with several seeds a cell is the mean ± sample standard deviation over " +
        "them and (n) the number of seeds. Fine-tuning from scratch is its own row.",
    ),
    {
      kind: "table",
      header: ["Arm", "λ", "Seeds", ...FIGURES_TABLE.map(([, h]) => h)],
      rows: [
        ...labels.map((label) => {
          const arms = seedsOf(label);
          return [
            label,
            arms[0].lambda ?? "–",
            arms.map((a) => a.seed).join(", "),
            ...FIGURES_TABLE.map(([key, , kind]) =>
              overSeeds(arms.map((a) => v(a, key)).filter((x) => x !== null) as number[], kind)
            ),
          ];
        }),
        ...(r.scratch.length
          ? [[
            "ViT from scratch",
            "–",
            r.scratch.map((x) => x.seed).join(", "),
            ...FIGURES_TABLE.map(([key]) =>
              key === "finetune.pretrained_acc"
                ? overSeeds(r.scratch.map((x) => x.accuracy), "pct")
                : "–"
            ),
          ]]
          : []),
      ],
    },
    heading(2, "Codeword semantics (paper Table 4)"),
    text(
      "Linear probe: a linear classifier on each image's average-pooled quantized codewords. " +
        "Reconstructions: the tokenizer's reconstructions classified by a classifier trained on " +
        `real images (${
          pct(r.classifier.accuracy)
        }% on real val images). PSNR and SSIM on [0, 1] ` +
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
        ...r.arms.map((a) => [
          name(a),
          pct(v(a, "codewords.linear_probe_acc")),
          pct(v(a, "reconstruction.classifier_acc")),
          fixed(v(a, "tokenizer.psnr")),
          fixed(v(a, "tokenizer.ssim"), 4),
          fixed(v(a, "tokenizer.usage"), 3),
          fixed(v(a, "tokenizer.perplexity"), 1),
        ]),
        ["real images", "–", pct(r.classifier.accuracy), "–", "–", "–", "–"],
      ],
    },
  );
  if (r.arms.length > 1) {
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
    ) blocks.push(chart(await saveChart(out, c)));
  }
  const pretrained = r.arms.filter((a) => a.pretrain);
  if (!pretrained.length) {
    blocks.push(text("Fine-tuning and ViT probes: not measured (no arm has a --pretrain folder)."));
  } else {
    const f = r.finetune;
    const scratchDecay = f.scratchLayerDecay ?? f.layerDecay;
    const decay = scratchDecay === f.layerDecay
      ? `layer decay ${f.layerDecay}`
      : `layer decay ${f.layerDecay} (from scratch: ${scratchDecay})`;
    blocks.push(
      heading(2, "Fine-tuning (paper Table 1)"),
      text(
        `Same budget for every row, each with its arm's seed: ${f.steps} steps of ${f.batch} ` +
          `images, AdamW peak lr ${f.lr}, ${decay}, label smoothing ` +
          `${f.labelSmoothing}, drop path ${f.dropPath}, warmup ${f.warmupSteps} + cosine. ` +
          "Top-1 on the val images.",
      ),
      {
        kind: "table",
        header: ["Method", "Pre-training", "Top-1 (%)"],
        rows: [
          ...r.scratch.map((x) => [
            replicated ? `ViT from scratch (seed ${x.seed})` : "ViT from scratch",
            "none (random init)",
            pct(x.accuracy),
          ]),
          ...pretrained.map((a) => [
            `PeCo-style MIM (${name(a)})`,
            `\`${a.pretrain!.dir}\``,
            pct(v(a, "finetune.pretrained_acc")),
          ]),
        ],
        align: ["l", "l", "r"],
      },
    );
    const pretrainedLabels = labelsOf(pretrained);
    const top1 = barChart("finetune_top1", "Fine-tuning top-1: pretrained vs scratch", [
      { group: "scratch", values: r.scratch.map((x) => x.accuracy) },
      ...pretrainedLabels.map((label) => ({
        group: label,
        values: pretrained.filter((a) => a.label === label)
          .map((a) => v(a, "finetune.pretrained_acc")).filter((x) => x !== null) as number[],
      })),
    ], { yTitle: "held-out top-1 accuracy", fraction: true });
    blocks.push(chart(await saveChart(out, top1)), ...r.finetuneCharts.map(chart));
    blocks.push(
      heading(2, "Frozen ViT: linear probes and masked prediction"),
      text(
        "Mean-pooled patch tokens of each block → standardised → linear classifier. The best " +
          `block is chosen on ${Math.round(100 * r.probe.selectFraction)}% of the probe's ` +
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
          ...r.maskRatios.map((m) => `Masked acc. at ${Math.round(100 * m)}% (%)`),
        ],
        rows: pretrained.map((a) => [
          name(a),
          pct(v(a, "linear_probe.acc")),
          a.vitProbe?.best.block ?? null,
          pct(v(a, "linear_probe.best_acc")),
          pct(v(a, "pretrain.masked_acc")),
          ...r.maskRatios.map((m) => pct(a.maskFigure?.maskedAcc[String(m)])),
        ]),
      },
      text("Per block (val top-1, %):"),
      {
        kind: "table",
        header: ["Arm", ...pretrained[0].vitProbe!.perBlock.map((p) => `block ${p.block}`)],
        rows: pretrained.map((a) => [name(a), ...a.vitProbe!.perBlock.map((p) => pct(p.val))]),
      },
      chart(
        await saveChart(
          out,
          probeChart(pretrained.map((a) => ({ label: name(a), perBlock: a.vitProbe!.perBlock }))),
        ),
      ),
    );
  }
  blocks.push(heading(2, "Figures"));
  for (const a of r.arms) {
    blocks.push(heading(3, name(a)));
    if (a.maskFigure) {
      blocks.push({
        kind: "grid",
        file: a.maskFigure.file,
        alt: `masked prediction ${name(a)}`,
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
  for (const c of r.curves) {
    if (c.charts.length) blocks.push(text(`${c.stage} (\`${c.dir}\`):`), ...c.charts.map(chart));
    else blocks.push(text(`${c.stage} (\`${c.dir}\`): ${c.note}.`));
  }
  blocks.push(heading(2, "Runs"), {
    kind: "table",
    header: ["Input", "Folder", "manifest sha256"],
    rows: [
      ["shards", `\`${s.dir}\``, s.sha256.slice(0, 16)],
      ...r.arms.flatMap((a) => [
        [`export (${name(a)})`, `\`${a.export.dir}\``, a.export.sha256.slice(0, 16)],
        ...(a.pretrain
          ? [[`pretrain (${name(a)})`, `\`${a.pretrain.dir}\``, a.pretrain.sha256.slice(0, 16)]]
          : []),
      ]),
    ],
    align: ["l", "l", "l"],
  });
  return blocks;
}
