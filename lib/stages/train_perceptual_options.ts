// The train-perceptual stage's options (tasks/train_perceptual.ts) and their full check, shared
// by the stage's start and the pipeline's up-front check (lib/cli/pipeline.ts).

import { resolve } from "node:path";
import type { Parsed } from "../cli/args.ts";
import { type Problem, Problems } from "../cli/problems.ts";
import { FORCE_OPTION } from "../cli/stage.ts";

export const trainPerceptualCommand = {
  usage: "deno task train-perceptual",
  summary: "Trains the built-in perceptual network (small CNN, MoCo v3, no labels) on a shard " +
    "folder's train split\nand reports a k-NN accuracy of its frozen features on the held-out " +
    "split. Runs sandboxed: reads --shards and --out, writes only --out.",
  options: {
    shards: { type: "string", help: "shard folder (deno task shard) with train and val splits" },
    out: { type: "string", default: "runs/perceptual", help: "output folder" },
    steps: { type: "number", default: 120, help: "training steps" },
    size: {
      type: "number",
      help: "render views at size×size (default: half the side for square images up to 32 px, " +
        "else native)",
    },
    batch: { type: "number", default: 64, help: "images per step (each seen in two views)" },
    lr: { type: "number", default: 2e-3, help: "peak learning rate (AdamW, warmup + cosine)" },
    "weight-decay": { type: "number", default: 1e-4, help: "AdamW weight decay" },
    tau: { type: "number", default: 0.2, help: "InfoNCE temperature" },
    momentum: { type: "number", default: 0.99, help: "base EMA momentum (cosine schedule to 1)" },
    "crop-min": {
      type: "number",
      default: 0.3,
      help: "smallest crop area (fraction of the image)",
    },
    flip: { type: "number", default: 0.5, help: "probability of a horizontal flip" },
    jitter: { type: "number", default: 0.4, help: "brightness and contrast jitter strength" },
    seed: { type: "number", default: 0, help: "random seed" },
    "log-every": { type: "number", default: 10, help: "read the loss back every N steps" },
    "ckpt-every": {
      type: "number",
      default: 50,
      help: "checkpoint every N steps (a multiple of --log-every)",
    },
    "stop-at": {
      type: "number",
      help: "stop after the checkpoint at this step, as if killed (tests resuming)",
    },
    "knn-train": { type: "number", default: 5000, help: "train images in the k-NN memory bank" },
    "knn-val": { type: "number", default: 1000, help: "held-out images classified by k-NN" },
    force: { type: "boolean", help: FORCE_OPTION.help },
    quiet: { type: "boolean", help: "no progress bar" },
  },
} as const;

export type TrainPerceptualOptions = Parsed<typeof trainPerceptualCommand.options>;

/** The network's smallest input side (its strided convolutions need at least this). */
export const MIN_VIEW_SIZE = 8;

/** Every problem of the options (the stage fails on them before reading anything). */
export function checkTrainPerceptualOptions(o: TrainPerceptualOptions): Problem[] {
  const p = new Problems();
  if (!o.shards) p.add("shards", "--shards is required (a folder made by deno task shard)");
  p.integer("size", o.size, MIN_VIEW_SIZE);
  p.integer("stop-at", o["stop-at"]);
  for (
    const name of ["steps", "batch", "log-every", "ckpt-every", "knn-train", "knn-val"] as const
  ) {
    p.integer(name, o[name]);
  }
  if (o.batch < 2) p.add("batch", `--batch must be ≥ 2 (contrastive), got ${o.batch}`);
  p.checkpointInterval(o["log-every"], o["ckpt-every"]);
  p.positive("lr", o.lr);
  p.positive("tau", o.tau);
  p.within("weight-decay", o["weight-decay"], 0, 1);
  p.within("momentum", o.momentum, 0, 1);
  p.within("crop-min", o["crop-min"], 0.01, 1);
  p.within("flip", o.flip, 0, 1);
  p.within("jitter", o.jitter, 0, 1);
  p.integer("seed", o.seed, 0);
  if (o.shards) {
    const shards = resolve(o.shards), out = resolve(o.out);
    if (shards === out || out.startsWith(shards + "/") || shards.startsWith(out + "/")) {
      p.add(["out", "shards"], `--out ${out} and --shards ${shards} must not contain one another`);
    }
  }
  return p.list;
}

/**
 * The rules between the options and the shards' images (the stage applies them to the shards it
 * opens, the pipeline to what the shard stage's options imply; a null count is not known yet).
 */
export function checkTrainPerceptualImages(
  o: TrainPerceptualOptions,
  images: { height: number; width: number; train: number | null },
): Problem[] {
  const p = new Problems();
  if (images.height < MIN_VIEW_SIZE || images.width < MIN_VIEW_SIZE) {
    p.add(
      [],
      `images ${images.height}×${images.width} are smaller than ${MIN_VIEW_SIZE}×${MIN_VIEW_SIZE}`,
    );
  }
  if (images.train !== null && images.train < o.batch) {
    p.add("batch", `the train split has ${images.train} images, fewer than --batch ${o.batch}`);
  }
  return p.list;
}
