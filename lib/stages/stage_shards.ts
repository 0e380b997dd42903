// Opening a stage's --shards, shared by every stage that reads shards, so a bad shard folder reads
// the same in each: "peco: <stage>: --shards: <why it cannot be opened>", a missing split
// "--shards <dir> has no "<split>" images", and a stage's own data problem "--shards <dir>: <what>".

import { resolve } from "node:path";
import { failer } from "../cli/stage.ts";
import type { Problem } from "../cli/problems.ts";
import { openShards, type ShardSet } from "../data/shards.ts";

export interface StageShardsOptions {
  /** Splits that must hold images. */
  splits?: readonly string[];
  /** The stage's checks of the opened shards; the first problem fails the stage. */
  check?: (shards: ShardSet) => Problem[];
}

/** Opens --shards for `stage` and checks them; throws the stage's one-line error on a problem. */
export async function openStageShards(
  stage: string,
  path: string,
  { splits = [], check }: StageShardsOptions = {},
): Promise<ShardSet> {
  const fail = failer(stage);
  let shards: ShardSet;
  try {
    shards = await openShards(resolve(path));
  } catch (error) {
    return fail("--shards", error);
  }
  for (const split of splits) {
    if (!shards.splits[split]?.count) fail(`--shards ${shards.dir} has no "${split}" images`);
  }
  const problems = check?.(shards) ?? [];
  if (problems.length) fail(`--shards ${shards.dir}: ${problems[0].message}`);
  return shards;
}
