// manifest.json of a shard folder: its types and a validating parser. The manifest is written last
// (atomically), so a folder with a valid manifest is a finished run; readers trust nothing else.

import { join } from "node:path";

/** One shard file of a split. `bytes` and `sha256` are checked by the reader before use. */
export interface ShardEntry {
  /** File name inside the shard folder, e.g. "train-00003.shard". */
  file: string;
  /** Records in the shard (every shard of a split holds `perShard` except the last). */
  count: number;
  bytes: number;
  sha256: string;
}

export interface SplitManifest {
  count: number;
  /** Records per class, aligned with `classes` (empty when unlabelled). */
  classCounts: number[];
  shards: ShardEntry[];
}

/** An input that was not ingested, and why (a file, or a folder ending in "/"). */
export interface Rejection {
  file: string;
  reason: string;
}

export interface ShardManifest {
  stage: "shard";
  format: { magic: string; version: number; headerBytes: number };
  image: { channels: number; height: number; width: number };
  /** Class names; label i means classes[i]. Empty when the input is unlabelled (labels −1). */
  classes: string[];
  labelled: boolean;
  /** "train" and, when present, "val". */
  splits: Record<string, SplitManifest>;
  counts: { images: number; rejected: number; rejectedByReason: Record<string, number> };
  rejected: Rejection[];
  /** What was read: kind, paths, sizes, fingerprints (see lib/data/sources.ts). */
  inputs: Record<string, unknown>;
  /** The fully resolved configuration of the run. */
  config: Record<string, unknown>;
  /** sha256 of config + input fingerprint: equal keys mean the same run (up to date, resumable). */
  key: string;
  deno: { deno: string; v8: string; typescript: string };
}

export const MANIFEST_FILE = "manifest.json";

function fail(where: string, what: string): never {
  throw new Error(`peco: shards: ${where}: ${what}`);
}

const isCount = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;

/** A well-formed shard entry: a plain file name (no folders), counts, and a sha256 hex digest. */
export function isShardEntry(s: unknown): s is ShardEntry {
  const e = s as ShardEntry;
  return typeof e === "object" && e !== null && typeof e.file === "string" &&
    !e.file.includes("/") && !e.file.includes("\\") && isCount(e.count) && isCount(e.bytes) &&
    typeof e.sha256 === "string" && /^[0-9a-f]{64}$/.test(e.sha256);
}

/** Checks the fields readers rely on; throws one line naming the manifest and the bad field. */
export function validateManifest(value: unknown, where: string): ShardManifest {
  if (typeof value !== "object" || value === null) fail(where, "not a JSON object");
  const m = value as ShardManifest;
  if (m.stage !== "shard") fail(where, `stage is ${JSON.stringify(m.stage)}, expected "shard"`);
  const img = m.image;
  if (
    !img || !(img.channels === 1 || img.channels === 3) || !isCount(img.height) ||
    !isCount(img.width) || img.height < 1 || img.width < 1
  ) fail(where, `bad image description ${JSON.stringify(img)}`);
  if (!Array.isArray(m.classes) || m.classes.some((c) => typeof c !== "string")) {
    fail(where, "classes must be a list of names");
  }
  if (typeof m.splits !== "object" || m.splits === null) fail(where, "splits missing");
  for (const [name, split] of Object.entries(m.splits)) {
    if (!split || !isCount(split.count) || !Array.isArray(split.shards)) {
      fail(where, `split "${name}" malformed`);
    }
    let total = 0;
    for (const s of split.shards) {
      if (!isShardEntry(s)) {
        fail(where, `split "${name}" has a malformed shard entry ${JSON.stringify(s)}`);
      }
      total += s.count;
    }
    if (total !== split.count) {
      fail(where, `split "${name}" counts ${split.count} records but its shards hold ${total}`);
    }
  }
  return m;
}

/** Reads and validates `<dir>/manifest.json`. */
export async function readManifest(dir: string): Promise<ShardManifest> {
  const path = join(dir, MANIFEST_FILE);
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) {
      fail(dir, `no ${MANIFEST_FILE} (not a shard folder, or an unfinished run)`);
    }
    throw error;
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    fail(path, `invalid JSON (${(error as Error).message})`);
  }
  return validateManifest(json, path);
}
