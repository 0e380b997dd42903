// The export-codebook stage's options (tasks/export_codebook.ts) and their full check, shared by
// the stage's start and the pipeline's up-front check (lib/cli/pipeline.ts).

import type { Parsed } from "../cli/args.ts";
import { type Problem, Problems } from "../cli/problems.ts";
import { FORCE_OPTION } from "../cli/stage.ts";

export const exportCodebookCommand = {
  usage: "deno task export-codebook",
  summary: "Exports a trained tokenizer (one safetensors file), tokenises the shards into token\n" +
    "shards, and reports codebook usage with patches per code. Runs sandboxed: reads only the\n" +
    "tokenizer run, the shards and --out; writes only --out.",
  options: {
    tokenizer: {
      type: "string",
      default: "runs/tokenizer",
      help: "train-tokenizer output folder",
    },
    shards: { type: "string", default: "runs/shard", help: "shard folder to tokenise" },
    out: { type: "string", default: "runs/export", help: "output folder" },
    "patches-codes": {
      type: "number",
      default: 16,
      help: "codes shown as patch grids (half most frequent, half random used codes)",
    },
    "patches-per-code": { type: "number", default: 25, help: "patches per code grid" },
    "patch-margin": {
      type: "number",
      help: "pixels of context around a token's cell (default: half the downsample factor)",
    },
    batch: { type: "number", default: 64, help: "images per tokenisation batch" },
    "per-shard": { type: "number", default: 10000, help: "records per token shard" },
    limit: { type: "number", help: "tokenise only the first N images of each split (quick looks)" },
    seed: { type: "number", default: 0, help: "seed of the random codes and patches" },
    quiet: { type: "boolean", help: "no progress bar" },
    force: { type: "boolean", help: FORCE_OPTION.help },
  },
} as const;

export type ExportCodebookOptions = Parsed<typeof exportCodebookCommand.options>;

/** Every problem of the options (the stage fails on them before reading anything). */
export function checkExportCodebookOptions(o: ExportCodebookOptions): Problem[] {
  const p = new Problems();
  p.integer("patches-codes", o["patches-codes"], 0);
  p.integer("patches-per-code", o["patches-per-code"], 1);
  p.integer("patch-margin", o["patch-margin"], 0);
  p.integer("batch", o.batch, 1);
  p.integer("limit", o.limit, 1);
  p.integer("per-shard", o["per-shard"], 1);
  p.integer("seed", o.seed, 0);
  return p.list;
}
