// The pretrain stage's options (tasks/pretrain.ts) and their full check, shared by the stage's
// start and the pipeline's up-front check (lib/cli/pipeline.ts): the options alone, then the rules
// that involve the inputs (the ViT against the images and the tokenizer's grid, the mask budget
// against the patch grid, the token shards against the images used), which the stage applies to
// its inputs and the pipeline to what the earlier stages' options imply.

import type { Parsed } from "../cli/args.ts";
import { type Problem, Problems } from "../cli/problems.ts";
import { trainingRunOptions } from "../cli/stage.ts";
import {
  BEIT_PRESET_NAMES,
  type BeitConfig,
  type BeitPresetName,
  resolveBeitConfig,
} from "../models/beit.ts";
import { AUGMENT_MODES, type MaskSpec, maskSpec, PRETRAIN_TRAIN_PRESETS } from "../train/mim.ts";

export const pretrainCommand = {
  usage: "deno task pretrain",
  summary: "BEiT-style masked image modelling of the tokenizer's codes (a ViT) into --out.\n" +
    "Runs sandboxed: reads only --shards, --tokenizer and --out; writes only --out.",
  options: {
    shards: { type: "string", default: "runs/shard", help: "shard folder (deno task shard)" },
    tokenizer: {
      type: "string",
      default: "runs/export",
      help: "export-codebook folder (tokenizer.safetensors, tokens/)",
    },
    out: { type: "string", default: "runs/pretrain", help: "output folder" },
    preset: {
      type: "string",
      default: "mnist",
      choices: BEIT_PRESET_NAMES,
      help: "ViT size and training defaults (mnist, tiny, small, base)",
    },
    "image-size": { type: "number", help: "ViT input side (default: the shards' image size)" },
    "patch-size": { type: "number", help: "patch side (default: preset)" },
    dim: { type: "number", help: "width (default: preset)" },
    depth: { type: "number", help: "blocks (default: preset)" },
    heads: { type: "number", help: "attention heads (default: preset)" },
    pos: {
      type: "string",
      choices: ["abs", "rel"],
      help: "position encoding: abs (learned embeddings) or rel (BEiT's shared relative bias); " +
        "default: preset (mnist abs, others rel)",
    },
    "drop-path": { type: "number", help: "stochastic depth rate (default: preset)" },
    steps: { type: "number", help: "training steps (default: preset)" },
    batch: { type: "number", help: "batch size (default: preset)" },
    lr: { type: "number", help: "peak learning rate (default: preset)" },
    warmup: { type: "number", help: "warmup steps (default: preset, capped at steps/2)" },
    augment: {
      type: "string",
      choices: AUGMENT_MODES,
      help: "crop/flip/jitter shared by both views: none, crop (mild), beit (default: preset)",
    },
    "mask-ratio": {
      type: "number",
      help: "share of patches masked per image (default BEiT's 75/196)",
    },
    "mask-patches": { type: "number", help: "patches masked per image (instead of --mask-ratio)" },
    "min-block": {
      type: "number",
      help: "smallest mask block (default BEiT's 16/196 of the grid)",
    },
    tokens: {
      type: "boolean",
      help: "use the export folder's token shards instead of running the tokenizer " +
        "(only with --augment none)",
    },
    seed: { type: "number", default: 0, help: "random seed" },
    limit: { type: "number", help: "train on the first N training images only (tests)" },
    "eval-images": {
      type: "number",
      default: 256,
      help: "held-out images of the fixed masked evaluation set",
    },
    ...trainingRunOptions(50, 200),
  },
} as const;

export type PretrainOptions = Parsed<typeof pretrainCommand.options>;

/** Every problem of the options alone (the stage fails on them before reading anything). */
export function checkPretrainOptions(o: PretrainOptions): Problem[] {
  const p = new Problems();
  for (
    const name of [
      "steps",
      "batch",
      "limit",
      "eval-images",
      "log-every",
      "ckpt-every",
      "stop-at",
      "image-size",
      "patch-size",
      "dim",
      "depth",
      "heads",
      "mask-patches",
      "min-block",
    ] as const
  ) p.integer(name, o[name]);
  p.integer("warmup", o.warmup, 0);
  p.integer("seed", o.seed, 0);
  p.checkpointInterval(o["log-every"], o["ckpt-every"]);
  p.positive("lr", o.lr);
  if (o["mask-ratio"] !== undefined && o["mask-patches"] !== undefined) {
    p.add(["mask-ratio", "mask-patches"], "give --mask-ratio or --mask-patches, not both");
  }
  p.within("mask-ratio", o["mask-ratio"], 0, 1, "both");
  p.within("drop-path", o["drop-path"], 0, 1, "hi");
  const augment = o.augment ?? PRETRAIN_TRAIN_PRESETS[o.preset as BeitPresetName].augment;
  if (o.tokens && augment !== "none") {
    p.add(
      ["tokens", "augment"],
      `--tokens holds the codes of the stored images only: it needs --augment none ` +
        `(got ${augment}${o.augment ? "" : ", the preset's default"})`,
    );
  }
  return p.list;
}

/** What the rules between the options and the inputs need to know of the inputs. */
export interface PretrainInputs {
  /** The shards' image side and channels. */
  imageSize: number;
  channels: number;
  /** The tokenizer's token grid and codebook size. */
  tokenGrid: readonly [number, number];
  vocabSize: number;
}

export interface PretrainGeometry {
  model: BeitConfig;
  /** The ViT's patch grid side (= the token grid's). */
  grid: number;
  mask: MaskSpec;
}

/**
 * The ViT and the mask budget for these inputs, or every problem: the ViT's config (patch size
 * dividing the image size, width divisible by the heads, …), its patch grid against the
 * tokenizer's token grid, --tokens against --image-size, the mask budget against the grid.
 */
export function resolvePretrainGeometry(
  o: PretrainOptions,
  inputs: PretrainInputs,
): { geometry: PretrainGeometry | null; problems: Problem[] } {
  const p = new Problems();
  const imageSize = o["image-size"] ?? inputs.imageSize;
  let model: BeitConfig | null = null;
  p.catching(["image-size", "patch-size", "dim", "heads", "depth", "drop-path"], () => {
    model = resolveBeitConfig({
      preset: o.preset as BeitPresetName,
      imageSize,
      inChannels: inputs.channels,
      vocabSize: inputs.vocabSize,
      patchSize: o["patch-size"],
      dim: o.dim,
      depth: o.depth,
      heads: o.heads,
      dropPath: o["drop-path"],
      relPosBias: o.pos === undefined ? undefined : o.pos === "rel",
    });
  }, /^peco: /);
  if (o.tokens && imageSize !== inputs.imageSize) {
    p.add(
      ["image-size", "tokens"],
      `--tokens: the token shards hold codes of ${inputs.imageSize}² images; --image-size ` +
        `${imageSize} would crop differently`,
    );
  }
  if (model === null) return { geometry: null, problems: p.list };
  const vit: BeitConfig = model;
  const grid = imageSize / vit.patchSize;
  const [th, tw] = inputs.tokenGrid;
  if (th !== grid || tw !== grid) {
    p.add(
      ["patch-size", "image-size"],
      `the tokenizer's token grid ${th}×${tw} ≠ the ViT's patch grid ${grid}×${grid} (image ` +
        `${imageSize}, patch ${vit.patchSize}): choose --image-size / --patch-size so that ` +
        `image/patch = ${th}`,
    );
  }
  let mask: MaskSpec | null = null;
  const maskOptions = o["min-block"] !== undefined
    ? ["min-block", "mask-patches", "mask-ratio"]
    : ["mask-patches", "mask-ratio", "min-block"];
  p.catching(maskOptions, () => {
    mask = maskSpec([grid, grid], {
      ratio: o["mask-ratio"],
      patches: o["mask-patches"],
      minBlock: o["min-block"],
    });
  }, /^peco: mask: /);
  return {
    geometry: p.list.length ? null : { model: vit, grid, mask: mask! },
    problems: p.list,
  };
}

/**
 * With --tokens, the records the run reads from the token shards (the first --limit training
 * images and the first --eval-images held-out ones) must be there: export-codebook writes the
 * first images of each split (all, or its --limit). Counts not known yet are null.
 */
export function checkPretrainTokenCounts(
  o: PretrainOptions,
  shards: { train: number | null; val: number | null },
  tokens: { train: number | null; val: number | null },
): Problem[] {
  const p = new Problems();
  if (!o.tokens) return p.list;
  const needed = {
    train: Math.min(o.limit ?? Infinity, shards.train ?? Infinity),
    val: Math.min(o["eval-images"], shards.val ?? Infinity),
  };
  for (const split of ["train", "val"] as const) {
    const have = tokens[split];
    if (have === null || !(needed[split] > have)) continue;
    const of = shards[split] === null ? "" : ` of the shards' ${shards[split]}`;
    p.add(
      split === "train" ? ["limit", "tokens"] : ["eval-images", "tokens"],
      `the token shards' split "${split}" holds ${have} records, the run needs the first ` +
        `${Number.isFinite(needed[split]) ? needed[split] : "all"}${of}` +
        (split === "train" && o.limit === undefined ? " (or pass --limit)" : ""),
    );
  }
  return p.list;
}

/** The rule between the options and the number of training images (null: not known yet). */
export function checkPretrainData(o: PretrainOptions, train: number | null): Problem[] {
  const p = new Problems();
  const batch = o.batch ?? PRETRAIN_TRAIN_PRESETS[o.preset as BeitPresetName].batch;
  const images = train === null ? null : Math.min(train, o.limit ?? Infinity);
  p.batchFits("batch", batch, images, o.batch === undefined);
  return p.list;
}
