// The evaluate stage's options (tasks/evaluate.ts) and their full check, shared by the stage's
// start and the pipeline's up-front check (lib/cli/pipeline.ts).

import { basename, resolve } from "node:path";
import type { Parsed } from "../cli/args.ts";
import { type Problem, Problems } from "../cli/problems.ts";
import { FORCE_OPTION } from "../cli/stage.ts";

/**
 * Fine-tuning's default warmup: this many steps, or this fraction of the steps when that is less
 * (a short run keeps a short warmup instead of refusing the default).
 */
export const FINETUNE_WARMUP = { steps: 15, fraction: 0.1 };

export const evaluateCommand = {
  usage: "deno task evaluate",
  summary:
    "Measures fine-tuning, linear probes, codeword semantics and reconstruction quality of\n" +
    "tokenizer / pretrain runs on the held-out split; writes figures, report.md and report.json.\n" +
    "Runs sandboxed: reads only the shards, the export / pretrain / curves folders and --out;\n" +
    "writes only --out.",
  options: {
    shards: { type: "string", default: "runs/shard", help: "shard folder (deno task shard)" },
    export: {
      type: "string",
      default: "runs/export",
      help: "export-codebook folder(s), comma-separated, one per arm (the first is the main arm)",
    },
    pretrain: {
      type: "string",
      default: "runs/pretrain",
      help: 'pretrain folder(s) of the arms in the same order ("" for none)',
    },
    labels: {
      type: "string",
      help: "arm names, comma-separated (default: the export folder names)",
    },
    "arm-seeds": {
      type: "string",
      help:
        "seed of each arm, comma-separated in --export order (default: --seed for every arm); arms sharing a label are one arm's seeds",
    },
    curves: {
      type: "string",
      default: "",
      help: "more stage folders whose metrics.jsonl to plot, comma-separated",
    },
    out: { type: "string", default: "runs/evaluate", help: "output folder" },
    "finetune-steps": { type: "number", default: 150, help: "fine-tuning steps (both runs)" },
    "finetune-batch": { type: "number", default: 32, help: "fine-tuning batch size" },
    "finetune-lr": { type: "number", default: 2e-3, help: "fine-tuning peak lr (the head's)" },
    "finetune-ckpt-every": {
      type: "number",
      default: 50,
      help: "fine-tuning checkpoint every N steps (a multiple of 10; a rerun resumes there)",
    },
    "stop-at": {
      type: "number",
      help: "stop after the first fine-tuning checkpoint at or after this step, as if killed, " +
        "before the report (tests resuming)",
    },
    "finetune-warmup": {
      type: "number",
      help: `fine-tuning warmup steps (default: ${FINETUNE_WARMUP.steps}, or a tenth of ` +
        `--finetune-steps when that is less)`,
    },
    "layer-decay": {
      type: "number",
      default: 0.75,
      help: "layer-wise lr decay of fine-tuning (the pretrained runs'; the scratch runs' too " +
        "unless --scratch-layer-decay)",
    },
    "scratch-layer-decay": {
      type: "number",
      help: "layer-wise lr decay of the fine-tuning from scratch (default: --layer-decay; 1: none)",
    },
    "label-smoothing": { type: "number", default: 0.1, help: "fine-tuning label smoothing" },
    "drop-path": { type: "number", default: 0.1, help: "fine-tuning stochastic depth rate" },
    "weight-decay": { type: "number", default: 0.05, help: "fine-tuning AdamW weight decay" },
    "probe-train": { type: "number", default: 1500, help: "training images of every linear probe" },
    "probe-epochs": { type: "number", default: 60, help: "linear probe epochs" },
    "probe-batch": { type: "number", default: 256, help: "linear probe mini-batch" },
    "probe-lr": { type: "number", default: 1e-2, help: "linear probe peak lr" },
    "eval-images": {
      type: "number",
      default: 5000,
      help: "held-out images of every measure (probes, PSNR/SSIM, top-1); at most the val split",
    },
    smoke: {
      type: "boolean",
      help: "a smoke run: the report says at its top that its budgets support no claim",
    },
    "classifier-steps": {
      type: "number",
      default: 300,
      help: "training steps of the real-image classifier",
    },
    "classifier-batch": { type: "number", default: 32, help: "its batch size" },
    "classifier-width": {
      type: "number",
      default: 16,
      help: "its width (channels of its first stage)",
    },
    "figure-images": { type: "number", default: 4, help: "images in the masked-prediction figure" },
    "mask-ratios": { type: "string", default: "0.1,0.4,0.6", help: "mask ratios of that figure" },
    batch: { type: "number", default: 100, help: "images per inference batch" },
    seed: { type: "number", default: 0, help: "random seed of every measure" },
    quiet: { type: "boolean", help: "no progress bars" },
    force: { type: "boolean", help: FORCE_OPTION.help },
  },
} as const;

export type EvaluateOptions = Parsed<typeof evaluateCommand.options>;

/** The fine-tuning warmup of the options: --finetune-warmup, else the default for the steps. */
export function finetuneWarmup(o: EvaluateOptions): number {
  return o["finetune-warmup"] ??
    Math.min(FINETUNE_WARMUP.steps, Math.floor(o["finetune-steps"] * FINETUNE_WARMUP.fraction));
}

/**
 * The layer-wise lr decay of fine-tuning from scratch: --scratch-layer-decay, else --layer-decay.
 * BEiT decays the lr layer by layer only for pretrained models; a ViT from scratch must learn its
 * embeddings and first blocks from nothing (README "Fine-tuning budgets").
 */
export function scratchLayerDecay(o: EvaluateOptions): number {
  return o["scratch-layer-decay"] ?? o["layer-decay"];
}

/** A comma list, entries trimmed ("" → [""]). */
export function list(value: string | undefined): string[] {
  return (value ?? "").split(",").map((s) => s.trim());
}

export function nonEmpty(value: string | undefined): string[] {
  return list(value).filter((s) => s !== "");
}

export interface ArmPaths {
  label: string;
  /** The arm's seed: arms sharing a label are one arm's replicates, one per seed. */
  seed: number;
  export: string;
  pretrain: string | null;
}

/** The label of the runs trained from scratch: no arm may have it. */
export const SCRATCH_LABEL = "scratch";

/** The arms of the command line (export i with pretrain i, if any, and label i), or problems. */
function parseArms(o: EvaluateOptions): { arms: ArmPaths[]; problems: Problem[] } {
  const p = new Problems();
  const exports = list(o.export);
  if (exports.some((e) => e === "")) p.add("export", `--export has an empty entry: "${o.export}"`);
  const pretrains = o.pretrain.trim() === "" ? [] : list(o.pretrain);
  if (pretrains.length > exports.length) {
    p.add(
      ["pretrain", "export"],
      `--pretrain lists ${pretrains.length} folders for ${exports.length} --export arm(s)`,
    );
  }
  const labels = o.labels === undefined ? exports.map((e) => basename(resolve(e))) : list(o.labels);
  if (labels.length !== exports.length) {
    p.add(
      ["labels", "export"],
      `--labels names ${labels.length} arm(s) but --export lists ${exports.length}`,
    );
  } else if (labels.some((l) => l === "" || l === SCRATCH_LABEL)) {
    p.add(
      "labels",
      `--labels must be non-empty and not "${SCRATCH_LABEL}" (the runs from scratch), got ` +
        `"${labels.join(",")}"`,
    );
  }
  const seeds = o["arm-seeds"] === undefined
    ? exports.map(() => o.seed)
    : list(o["arm-seeds"]).map((s) => s === "" ? NaN : Number(s));
  if (seeds.length !== exports.length) {
    p.add(
      ["arm-seeds", "export"],
      `--arm-seeds lists ${seeds.length} seed(s) but --export lists ${exports.length} arm(s)`,
    );
  } else if (seeds.some((s) => !Number.isInteger(s) || s < 0)) {
    p.add("arm-seeds", `--arm-seeds must be integers ≥ 0, got "${o["arm-seeds"]}"`);
  } else if (labels.length === exports.length) {
    const seen = new Set<string>();
    const twice: string[] = [];
    labels.forEach((label, i) => {
      const key = JSON.stringify([label, seeds[i]]);
      if (seen.has(key)) twice.push(`arm "${label}" has seed ${seeds[i]} twice`);
      seen.add(key);
    });
    if (twice.length) {
      p.add(
        ["arm-seeds", "labels"],
        `--arm-seeds: arms sharing a label are replicates of one arm and need distinct seeds, ` +
          `but ${twice.join(", ")}`,
      );
    }
  }
  const arms = exports.map((e, i) => ({
    label: labels[i],
    seed: seeds[i],
    export: resolve(e),
    pretrain: pretrains[i] ? resolve(pretrains[i]) : null,
  }));
  return { arms, problems: p.list };
}

/** The arms of checked options. */
export function armPaths(o: EvaluateOptions): ArmPaths[] {
  return parseArms(o).arms;
}

/** The mask ratios of the masked-prediction figure (NaN where an entry is not a number). */
export function maskRatios(o: EvaluateOptions): number[] {
  return list(o["mask-ratios"]).map(Number);
}

/** Every problem of the options (the stage fails on them before reading anything). */
export function checkEvaluateOptions(o: EvaluateOptions): Problem[] {
  const p = new Problems();
  const ints: [string, number | undefined, number][] = [
    ["finetune-steps", o["finetune-steps"], 2],
    ["finetune-batch", o["finetune-batch"], 1],
    ["finetune-warmup", o["finetune-warmup"], 0],
    ["finetune-ckpt-every", o["finetune-ckpt-every"], 10],
    ["stop-at", o["stop-at"], 1],
    ["probe-train", o["probe-train"], 10],
    ["probe-epochs", o["probe-epochs"], 1],
    ["probe-batch", o["probe-batch"], 1],
    ["eval-images", o["eval-images"], 1],
    ["classifier-steps", o["classifier-steps"], 2],
    ["classifier-batch", o["classifier-batch"], 1],
    ["classifier-width", o["classifier-width"], 2],
    ["figure-images", o["figure-images"], 1],
    ["batch", o.batch, 1],
    ["seed", o.seed, 0],
  ];
  for (const [name, v, min] of ints) p.integer(name, v, min);
  const warmup = finetuneWarmup(o);
  if (warmup >= o["finetune-steps"]) {
    p.add(
      ["finetune-warmup", "finetune-steps"],
      `--finetune-warmup ${warmup} must be below --finetune-steps ${o["finetune-steps"]}`,
    );
  }
  if (o["finetune-ckpt-every"] % 10 !== 0) {
    p.add(
      "finetune-ckpt-every",
      `--finetune-ckpt-every must be a multiple of 10 (the log interval), got ` +
        `${o["finetune-ckpt-every"]}`,
    );
  }
  p.within("finetune-lr", o["finetune-lr"], 0, Infinity, "lo");
  p.within("probe-lr", o["probe-lr"], 0, Infinity, "lo");
  p.within("layer-decay", o["layer-decay"], 0, 1, "lo");
  p.within("scratch-layer-decay", o["scratch-layer-decay"], 0, 1, "lo");
  for (const name of ["label-smoothing", "drop-path", "weight-decay"] as const) {
    p.within(name, o[name], 0, 1, "hi");
  }
  const ratios = maskRatios(o);
  if (!ratios.length || ratios.some((r) => !(r > 0 && r < 1))) {
    p.add("mask-ratios", `--mask-ratios must be numbers in (0, 1), got "${o["mask-ratios"]}"`);
  }
  p.list.push(...parseArms(o).problems);
  return p.list;
}

/** The rules between the options and the number of training images (null: not known yet). */
export function checkEvaluateData(o: EvaluateOptions, train: number | null): Problem[] {
  const p = new Problems();
  p.batchFits("finetune-batch", o["finetune-batch"], train);
  p.batchFits("classifier-batch", o["classifier-batch"], train);
  return p.list;
}

/**
 * Every measure classifies: the shards must carry labels of at least two classes (`classes`:
 * null when only the shards tell).
 */
export function checkEvaluateLabels(labelled: boolean, classes: number | null): Problem[] {
  const p = new Problems();
  if (!labelled || (classes !== null && classes < 2)) {
    p.add([], "the shards are not labelled with ≥ 2 classes: nothing to classify");
  }
  return p.list;
}
