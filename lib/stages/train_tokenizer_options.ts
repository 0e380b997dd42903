// The train-tokenizer stage's options (tasks/train_tokenizer.ts) and their full check, shared by
// the stage's start and the pipeline's up-front check (lib/cli/pipeline.ts).

import { resolve } from "node:path";
import type { Parsed } from "../cli/args.ts";
import { type Problem, Problems } from "../cli/problems.ts";
import { trainingRunOptions } from "../cli/stage.ts";
import { PERCEPTUAL_KINDS, VGG16_MIN_SIZE, VIT_B_DEFAULT } from "../models/perceptual/mod.ts";
import { TOKENIZER_PRESET_NAMES, tokenizerPreset } from "../models/tokenizer_config.ts";
import { downsampleFactor } from "../models/vqvae.ts";

export const PERCEPTUAL_CHOICES = ["none", "builtin", ...PERCEPTUAL_KINDS] as const;

export const trainTokenizerCommand = {
  usage: "deno task train-tokenizer",
  summary: "Trains the perceptual tokenizer (VQ-VAE, EMA codebook) on shards into --out.\n" +
    "Runs sandboxed: reads only the shards, the perceptual network and --out; writes only --out.",
  options: {
    shards: { type: "string", default: "runs/shard", help: "shard folder (deno task shard)" },
    out: { type: "string", default: "runs/tokenizer", help: "output folder" },
    preset: {
      type: "string",
      default: "mnist",
      choices: TOKENIZER_PRESET_NAMES,
      help: "architecture and training defaults",
    },
    perceptual: {
      type: "string",
      default: "builtin",
      choices: PERCEPTUAL_CHOICES,
      help: "perceptual network (builtin: the train-perceptual stage's; as the pipeline)",
    },
    "perceptual-weights": {
      type: "string",
      help: "safetensors state dict of --perceptual vgg16|resnet50|vit-b",
    },
    "perceptual-prefix": {
      type: "string",
      help: "load only the weights under this name prefix (MoCo v3: module.base_encoder.)",
    },
    "perceptual-dir": {
      type: "string",
      default: "runs/perceptual",
      help: "train-perceptual output folder (builtin)",
    },
    lambda: { type: "number", default: 1, help: "weight λ of the perceptual loss" },
    "pixel-loss": { type: "string", choices: ["l1", "l2"], help: "pixel loss (default: preset)" },
    quantizer: {
      type: "string",
      choices: ["ema", "plain"],
      help: "codebook by EMA updates, or by the codebook loss (plain; default: preset)",
    },
    "disc-weight": {
      type: "number",
      help:
        "adversarial weight, times taming's adaptive weight; 0 = off (paper: 0.4; default: preset)",
    },
    "disc-start": {
      type: "number",
      help: "step at which the discriminator and its term start (default: preset)",
    },
    steps: { type: "number", help: "training steps (default: preset)" },
    batch: { type: "number", help: "batch size (default: preset)" },
    lr: { type: "number", help: "peak learning rate (default: preset)" },
    warmup: { type: "number", help: "warmup steps (default: preset, capped at steps/2)" },
    seed: { type: "number", default: 0, help: "random seed" },
    limit: { type: "number", help: "train on the first N training images only (tests)" },
    "eval-images": {
      type: "number",
      default: 256,
      help: "held-out images for codebook usage and perplexity",
    },
    "psnr-images": { type: "number", default: 64, help: "fixed held-out batch for PSNR" },
    ...trainingRunOptions(60, 120, "checkpoint + grid"),
  },
} as const;

export type TrainTokenizerOptions = Parsed<typeof trainTokenizerCommand.options>;

/** Every problem of the options (the stage fails on them before reading anything). */
export function checkTrainTokenizerOptions(o: TrainTokenizerOptions): Problem[] {
  const p = new Problems();
  for (const name of ["steps", "batch", "limit", "eval-images", "psnr-images"] as const) {
    p.integer(name, o[name]);
  }
  for (const name of ["log-every", "ckpt-every", "stop-at"] as const) p.integer(name, o[name]);
  p.integer("disc-start", o["disc-start"], 0);
  const dw = o["disc-weight"];
  if (dw !== undefined && !(dw >= 0 && Number.isFinite(dw))) {
    p.add("disc-weight", `--disc-weight must be ≥ 0, got ${dw}`);
  }
  p.integer("warmup", o.warmup, 0);
  p.integer("seed", o.seed, 0);
  p.checkpointInterval(o["log-every"], o["ckpt-every"]);
  if (!(o.lambda >= 0)) p.add("lambda", `--lambda must be ≥ 0, got ${o.lambda}`);
  p.positive("lr", o.lr);
  const external = (PERCEPTUAL_KINDS as readonly string[]).includes(o.perceptual);
  if (external && !o["perceptual-weights"]) {
    p.add(
      ["perceptual", "perceptual-weights"],
      `--perceptual ${o.perceptual} needs --perceptual-weights FILE`,
    );
  }
  for (const name of ["perceptual-weights", "perceptual-prefix"] as const) {
    if (!external && o[name] !== undefined) {
      p.add([name, "perceptual"], `--${name} is only for --perceptual vgg16|resnet50|vit-b`);
    }
  }
  return p.list;
}

/** The side of the token grid for images of `size` (the preset's downsample factor). */
export function tokenGridSide(o: TrainTokenizerOptions, size: number): number {
  return size / downsampleFactor(tokenizerPreset(o.preset).model);
}

/**
 * The rules between the options and the shards' images (the stage applies them to the shards it
 * opens, the pipeline to what the shard stage's options imply).
 */
export function checkTrainTokenizerImages(
  o: TrainTokenizerOptions,
  image: { height: number; width: number },
): Problem[] {
  const p = new Problems();
  const factor = downsampleFactor(tokenizerPreset(o.preset).model);
  const { height, width } = image;
  if (height !== width || height % factor !== 0) {
    p.add(
      "preset",
      `images are ${height}×${width}; the "${o.preset}" preset needs square images whose side ` +
        `is divisible by its downsample factor ${factor}`,
    );
  }
  if (o.perceptual === "vgg16" && Math.min(height, width) < VGG16_MIN_SIZE) {
    p.add(
      "perceptual",
      `--perceptual vgg16 needs images of at least ${VGG16_MIN_SIZE}×${VGG16_MIN_SIZE}, ` +
        `the shards hold ${height}×${width}`,
    );
  }
  // The ViT-B runs at any size its patches tile (its position embedding is resampled); the
  // stage checks again against the patch of the loaded file.
  const patch = VIT_B_DEFAULT.patchSize;
  if (o.perceptual === "vit-b" && (height % patch !== 0 || width % patch !== 0)) {
    p.add(
      "perceptual",
      `--perceptual vit-b needs image sides that are multiples of its ${patch}-pixel patch, ` +
        `the shards hold ${height}×${width}`,
    );
  }
  return p.list;
}

/** The rule between the options and the number of training images (null: not known yet). */
export function checkTrainTokenizerData(o: TrainTokenizerOptions, train: number | null): Problem[] {
  const p = new Problems();
  const batch = o.batch ?? tokenizerPreset(o.preset).train.batch;
  const images = train === null ? null : Math.min(train, o.limit ?? Infinity);
  p.batchFits("batch", batch, images, o.batch === undefined);
  return p.list;
}

/**
 * The files the options name that exist before any stage runs (--perceptual-weights): each must
 * be a readable file. The stage checks it at its start, the pipeline before the first stage.
 */
export function checkTrainTokenizerFiles(o: TrainTokenizerOptions): Problem[] {
  const p = new Problems();
  const weights = o["perceptual-weights"];
  if (weights !== undefined) {
    const path = resolve(weights);
    try {
      if (!Deno.statSync(path).isFile) {
        p.add("perceptual-weights", `--perceptual-weights ${path} is not a file`);
      }
    } catch (error) {
      p.add(
        "perceptual-weights",
        `--perceptual-weights ${path}: cannot read (${(error as Error).message})`,
      );
    }
  }
  return p.list;
}
