// Tiny inputs shared by the stage tests: MNIST shards written by the real shard stage, an untrained
// tokenizer small enough to run in a test and an export-codebook folder holding it, and a child
// process's exit code and output.

import { join } from "node:path";
import { parseOptions } from "../lib/cli/args.ts";
import { beginStage, finishStage } from "../lib/cli/stage.ts";
import { openShards } from "../lib/data/shards.ts";
import { writeJsonAtomic } from "../lib/io/atomic.ts";
import { countCodes, histogramStats } from "../lib/report/codebook.ts";
import { Tokenizer, TOKENIZER_FILE } from "../lib/models/tokenizer.ts";
import { resolveVqVaeConfig, VqVae } from "../lib/models/vqvae.ts";
import { type BeitConfig, resolveBeitConfig } from "../lib/models/beit.ts";
import { runShard, shardCommand } from "../tasks/shard.ts";

/** A ViT small enough for a fine-tuning test in seconds: MNIST 28², 2 blocks of width 16, 16 codes. */
export function tinyVit(): BeitConfig {
  return resolveBeitConfig({
    preset: "mnist",
    imageSize: 28,
    inChannels: 1,
    vocabSize: 16,
    dim: 16,
    depth: 2,
    heads: 2,
  });
}

/** Runs the shard stage on the first `limit` MNIST images per split into root/name (+ flags). */
export async function mnistShards(
  root: string,
  name: string,
  limit: number,
  flags: string[] = [],
): Promise<string> {
  const out = join(root, name);
  const o = parseOptions(shardCommand, [
    "--input",
    "mnist",
    "--out",
    out,
    "--limit",
    String(limit),
    "--quiet",
    ...flags,
  ])!;
  await runShard(o, { log: () => {} });
  return out;
}

/** An untrained 28² → 7×7 tokenizer with K codes (4 channels, code dim 4), seeded. */
export function tinyTokenizer(
  codebookSize: number,
  seed = 3,
  provenance: Record<string, unknown> = { test: true },
): Tokenizer {
  const config = resolveVqVaeConfig({
    imageSize: 28,
    inChannels: 1,
    channels: 4,
    channelMult: [1, 1, 1],
    numResBlocks: 1,
    groups: 2,
    codeDim: 4,
    codebookSize,
    quantizer: { init: "random" },
  });
  return Tokenizer.fromModel(new VqVae(config, seed), {
    image: { channels: 1, size: 28, mean: [0.5], std: [0.5] },
    provenance,
  });
}

/**
 * An export-codebook folder root/name through the real writers (a full export run costs minutes
 * of shader compiles here): a tiny untrained tokenizer (28² → 7×7 codes, K = `codebookSize`) saved
 * as the export saves it, codebook.json with the statistics of its codes, the code histogram, and
 * the stage manifest (beginStage/finishStage with the shards as input). `lambda` is recorded in the
 * tokenizer's provenance as train-tokenizer's perceptual weight (absent: none recorded);
 * `tokenizer`, a stage folder recorded as the export's tokenizer input.
 */
export async function tinyExport(
  root: string,
  name: string,
  shardDir: string,
  codebookSize: number,
  { lambda, seed = 3, tokenizer }: { lambda?: number; seed?: number; tokenizer?: string } = {},
): Promise<string> {
  const out = join(root, name);
  const run = await beginStage({
    name: "export-codebook",
    out,
    config: { test: name, lambda, seed },
    inputs: { shards: shardDir, ...(tokenizer ? { tokenizer } : {}) },
    log: () => {},
  });
  if (run.status === "skip") return out;
  const tok = tinyTokenizer(
    codebookSize,
    seed,
    lambda === undefined ? { test: true } : { test: true, lambda },
  );
  await tok.save(join(out, TOKENIZER_FILE));
  const set = await openShards(shardDir);
  const counts: Record<string, Float64Array> = {};
  for (const split of ["train", "val"]) {
    const b = await set.splits[split].readRange(0, set.splits[split].count);
    const ids = tok.encodePixels(b.pixels, b.count);
    countCodes(await ids.read(), counts[split] = new Float64Array(codebookSize));
    ids.dispose();
  }
  tok.dispose();
  const splits = Object.fromEntries(Object.entries(counts).map(([k, c]) => [k, histogramStats(c)]));
  await writeJsonAtomic(join(out, "codebook.json"), {
    codebookSize,
    grid: [7, 7],
    splits,
    counts: Object.fromEntries(Object.entries(counts).map(([k, c]) => [k, Array.from(c)])),
  });
  await finishStage(run, { summary: {} });
  return out;
}

/** Runs a command to its end: its exit code and its stdout + stderr as text. */
export async function commandOutput(
  command: Deno.Command,
): Promise<{ code: number; text: string }> {
  const { code, stdout, stderr } = await command.output();
  const d = new TextDecoder();
  return { code, text: d.decode(stdout) + d.decode(stderr) };
}

/**
 * Registers a test that removes a test file's temporary folder: call it after the file's last
 * test (tests run in the order they are registered).
 */
export function removeAfterLastTest(label: string, dir: string): void {
  Deno.test(`${label}: cleanup`, async () => await Deno.remove(dir, { recursive: true }));
}
