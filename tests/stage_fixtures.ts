// Tiny inputs shared by the stage tests: MNIST shards written by the real shard stage, and an
// untrained tokenizer small enough to run in a test.

import { join } from "node:path";
import { parseOptions } from "../lib/cli/args.ts";
import { Tokenizer } from "../lib/models/tokenizer.ts";
import { resolveVqVaeConfig, VqVae } from "../lib/models/vqvae.ts";
import { runShard, shardCommand } from "../tasks/shard.ts";

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
export function tinyTokenizer(codebookSize: number, seed = 3): Tokenizer {
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
    provenance: { test: true },
  });
}
