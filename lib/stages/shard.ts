// The shard stage's work (run by tasks/shard.ts, the thin entry, and by bench/shard.ts): ingests an
// image folder, MNIST or an IDX pair into verified shards.
//
// Output (--out): shards (format in lib/data/shards.ts) and manifest.json, written last and
// atomically; a folder without manifest.json is unfinished and no reader accepts it.
//
// Interruption and reruns: every shard is written under a temporary name and renamed when
// complete; after each shard the journal .shard-journal.json (atomic) records the shards done
// with their sha256, the position reached in each split and the rejections so far. Rerunning the
// same command (same config and unchanged input listing) verifies the journalled shards and
// resumes after the last one; if one fails verification the run restarts cleanly. A folder that
// holds a finished run with the same config is reported up to date and left alone; one holding
// a different run (manifest or journal with another key) or foreign files is refused with a
// one-line error before anything is written.

import { join } from "node:path";
import { UsageError } from "../cli/args.ts";
import { failOnProblems } from "../cli/problems.ts";
import type { StageAccess } from "../cli/permissions.ts";
import { Progress } from "../cli/progress.ts";
import { TEMP_PREFIX, writeJsonAtomic } from "../io/atomic.ts";
import { sha256File, sha256Hex } from "../io/hash.ts";
import { defaultWorkers, ItemPool, moduleReadPaths } from "../data/item_pool.ts";
import { type ResizePolicy } from "../data/resize.ts";
import {
  MANIFEST_FILE,
  openShards,
  type Rejection,
  SHARD_HEADER_BYTES,
  SHARD_MAGIC,
  SHARD_VERSION,
  type ShardEntry,
  type ShardManifest,
  ShardWriter,
  validateManifest,
} from "../data/shards.ts";
import {
  inputReadPaths,
  type InputSpec,
  type Item,
  itemName,
  openSource,
  planSplits,
  type Source,
  type SplitName,
  SPLITS,
} from "../data/sources.ts";
import {
  checkShardOptions,
  shardCommand,
  type ShardOptions,
  shardPaths,
  VAL_FRACTION_WITH_VAL,
} from "./shard_options.ts";
import { failer } from "../io/errors.ts";

export { shardCommand, type ShardOptions };

/** The run's resolved configuration (recorded in the manifest). */
export interface ShardConfig {
  input: string;
  spec: InputSpec;
  out: string;
  size: number;
  resize: ResizePolicy;
  channels: 1 | 3;
  valFraction: number;
  perShard: number;
  limit: number | null;
  seed: number;
  strict: boolean;
  maxPixels: number;
}

export interface ShardResult {
  status: "written" | "resumed" | "up to date";
  out: string;
  manifest: ShardManifest;
}

const JOURNAL_FILE = ".shard-journal.json";
const OUR_FILE = new RegExp(
  `^(?:(?:${SPLITS.join("|")})-\\d{5}\\.shard|${JOURNAL_FILE}|${
    MANIFEST_FILE.replace(".", "\\.")
  }|${TEMP_PREFIX.replace(".", "\\.")}.*)$`,
);

const fail: (what: string) => never = failer("shard");

/** Validates options and resolves paths; the launcher and the stage share it. */
export function resolveOptions(o: ShardOptions): { spec: InputSpec; out: string } {
  failOnProblems(checkShardOptions(o));
  return shardPaths(o)!;
}

/**
 * What the stage needs: read its input and its output folder, write its output folder; and read
 * its decoding workers' module, which Deno checks when it starts them (lib/data/item_pool.ts).
 */
export function shardAccess(o: ShardOptions): StageAccess {
  const { spec, out } = resolveOptions(o);
  return { read: [...inputReadPaths(spec), out, ...moduleReadPaths()], write: [out] };
}

// ---- output folder state ------------------------------------------------------------------

interface SplitProgress {
  /** Items before this index are in written shards or rejected. */
  next: number;
  shards: ShardEntry[];
  classCounts: number[];
  finished: boolean;
}

interface Journal {
  key: string;
  splits: Record<SplitName, SplitProgress>;
  rejected: Rejection[];
}

type OutState =
  | { kind: "fresh"; exists: boolean; leftovers: string[] }
  | { kind: "resume"; journal: Journal; leftovers: string[] }
  | { kind: "done"; manifest: ShardManifest };

async function readJson(path: string): Promise<unknown> {
  try {
    return JSON.parse(await Deno.readTextFile(path));
  } catch (error) {
    return fail(`${path}: unreadable or invalid JSON (${(error as Error).message})`);
  }
}

/** Looks at --out without changing it; refuses folders holding something else. */
async function inspectOut(out: string, key: string): Promise<OutState> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(out);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) {
      return { kind: "fresh", exists: false, leftovers: [] };
    }
    throw error;
  }
  if (!info.isDirectory) fail(`--out ${out} exists and is not a folder`);
  const names: string[] = [];
  for await (const e of Deno.readDir(out)) names.push(e.name);
  const foreign = names.filter((n) => !OUR_FILE.test(n)).sort();
  if (foreign.length) {
    fail(
      `--out ${out} holds files that are not from a shard run (${
        foreign.slice(0, 3).join(", ")
      }…); choose an empty or new folder`,
    );
  }
  if (names.includes(MANIFEST_FILE)) {
    const manifest = validateManifest(
      await readJson(join(out, MANIFEST_FILE)),
      join(out, MANIFEST_FILE),
    );
    if (manifest.key !== key) {
      fail(
        `--out ${out} already holds a different shard run (other config or input); ` +
          `choose another folder or delete it`,
      );
    }
    return { kind: "done", manifest };
  }
  const leftovers = names.filter((n) => n !== JOURNAL_FILE);
  if (names.includes(JOURNAL_FILE)) {
    const journal = await readJson(join(out, JOURNAL_FILE)) as Journal;
    if (journal?.key !== key) {
      fail(
        `--out ${out} holds an unfinished shard run with another config or input; ` +
          `choose another folder or delete it`,
      );
    }
    return { kind: "resume", journal, leftovers };
  }
  return { kind: "fresh", exists: true, leftovers };
}

/** Checks the journalled shards (size and sha256); false when any is missing or damaged. */
async function verifyJournal(out: string, journal: Journal): Promise<boolean> {
  for (const split of SPLITS) {
    for (const s of journal.splits[split]?.shards ?? []) {
      try {
        const { sha256, bytes } = await sha256File(join(out, s.file));
        if (sha256 !== s.sha256 || bytes !== s.bytes) return false;
      } catch {
        return false;
      }
    }
  }
  return true;
}

async function removeOurs(out: string, names: string[]): Promise<void> {
  for (const n of names) await Deno.remove(join(out, n)).catch(() => {});
}

// ---- the stage ----------------------------------------------------------------------------

function resolveConfig(o: ShardOptions, source: Source, spec: InputSpec, out: string): ShardConfig {
  const native = source.native;
  if (o["val-fraction"] !== undefined && o["val-fraction"] > 0 && source.splits.val) {
    throw new UsageError(VAL_FRACTION_WITH_VAL);
  }
  return {
    input: o.input,
    spec,
    out,
    size: o.size ?? (native ? Math.max(native.height, native.width) : 224),
    resize: o.resize as ResizePolicy,
    channels: (o.channels ?? native?.channels ?? 3) as 1 | 3,
    valFraction: source.splits.val ? 0 : o["val-fraction"] ?? 0.1,
    perShard: o["per-shard"],
    limit: o.limit ?? null,
    seed: o.seed,
    strict: o.strict ?? false,
    maxPixels: o["max-pixels"],
  };
}

/** Equal keys ⇔ same output: the config that shapes the data and the input fingerprint. */
function runKey(c: ShardConfig, fingerprint: string): string {
  const { out: _out, strict: _strict, input: _input, ...shaping } = c;
  return sha256Hex(new TextEncoder().encode(JSON.stringify({ shaping, fingerprint })));
}

function category(reason: string): string {
  return reason.split(/[:(]/)[0].trim();
}

/**
 * Runs the stage. Throws a one-line `peco: shard: …` Error (or UsageError) on bad input; on
 * success the output folder holds the shards and manifest.json.
 */
export async function runShard(
  o: ShardOptions,
  { log = (line: string) => console.error(line) }: { log?: (line: string) => void } = {},
): Promise<ShardResult> {
  const { spec, out } = resolveOptions(o);
  const source = await openSource(spec);
  const config = resolveConfig(o, source, spec, out);
  const key = runKey(config, source.fingerprint);
  const state = await inspectOut(out, key);
  if (state.kind === "done") {
    await openShards(out).catch((error) =>
      fail(
        `--out ${out} is up to date by its manifest but damaged (${
          (error as Error).message
        }); delete it and rerun`,
      )
    );
    return { status: "up to date", out, manifest: state.manifest };
  }
  if (config.strict && source.rejected.length) {
    const r = source.rejected[0];
    fail(`${r.file}: ${r.reason} (--strict)`);
  }
  const plan = planSplits(source, {
    valFraction: config.valFraction,
    seed: config.seed,
    limit: config.limit ?? undefined,
  });
  const total = plan.train.length + plan.val.length;
  if (total === 0) {
    fail(
      `no images found in ${config.input}${
        source.rejected.length
          ? ` (${source.rejected.length} inputs rejected, first: ${source.rejected[0].file}: ${
            source.rejected[0].reason
          })`
          : ""
      }`,
    );
  }

  if (config.valFraction > 0 && plan.val.length === 0) {
    log(
      `shard: note: --val-fraction ${config.valFraction} of ${plan.train.length} images ` +
        `leaves val empty`,
    );
  }

  // From here on files are written: first the out folder, then shards, journal, manifest.
  let journal: Journal | null = null;
  if (state.kind === "resume") {
    if (await verifyJournal(out, state.journal)) journal = state.journal;
    else log(`shard: journalled shards in ${out} fail verification; restarting cleanly`);
  }
  // Resuming keeps the journalled shards (later ones are rewritten under the same names) and
  // drops half-written temporary files; restarting drops everything an earlier run left.
  await removeOurs(
    out,
    journal
      ? state.leftovers.filter((n) => n.startsWith(TEMP_PREFIX))
      : state.kind === "fresh"
      ? state.leftovers
      : [...state.leftovers, JOURNAL_FILE],
  );
  const created = state.kind === "fresh" && !state.exists;
  await Deno.mkdir(out, { recursive: true });
  const classes = source.classes.length;
  const fresh = (): SplitProgress => ({
    next: 0,
    shards: [],
    classCounts: new Array(classes).fill(0),
    finished: false,
  });
  journal ??= { key, splits: { train: fresh(), val: fresh() }, rejected: [...source.rejected] };
  const resumed = journal.splits.train.next > 0 || journal.splits.train.finished;
  if (resumed) log(`shard: resuming the unfinished run in ${out}`);

  const geometry = { channels: config.channels, height: config.size, width: config.size };
  const loadOptions = {
    ...geometry,
    size: config.size,
    resize: config.resize,
    maxPixels: config.maxPixels,
  };
  const progress = new Progress({ label: "shard", total, unit: "img", quiet: o.quiet });
  let done = SPLITS.reduce((n, s) => n + journal!.splits[s].next, 0);
  // The last item is drawn by finish() only (update draws whenever done reaches total).
  const tick = () => ++done < total && progress.update(done);
  // Decoding runs in workers that may read the input only; results come back in item order.
  const pool = new ItemPool({ workers: o.workers ?? defaultWorkers(), read: inputReadPaths(spec) });
  try {
    for (const split of SPLITS) {
      const items = plan[split];
      const p = journal.splits[split];
      if (p.finished) continue;
      const writer = new ShardWriter(out, split, geometry, config.perShard, p.shards);
      const pendingCounts = new Array(classes).fill(0);
      const pendingRejected: Rejection[] = [];
      const commit = async (next: number, finished: boolean) => {
        p.next = next;
        p.finished = finished;
        p.shards = [...writer.shards];
        pendingCounts.forEach((c, i) => (p.classCounts[i] += c));
        pendingCounts.fill(0);
        journal!.rejected.push(...pendingRejected.splice(0));
        await writeJsonAtomic(join(out, JOURNAL_FILE), journal);
      };
      let i = p.next;
      for await (const loaded of pool.loadAll(items.slice(p.next), loadOptions)) {
        const item: Item = items[i++];
        if (loaded.reason !== undefined) {
          if (config.strict) {
            throw new StrictFailure(`${itemName(item)}: ${loaded.reason} (--strict)`);
          }
          pendingRejected.push({ file: itemName(item), reason: loaded.reason });
          tick();
          continue;
        }
        if (item.label >= 0) pendingCounts[item.label]++;
        if (await writer.add(loaded.pixels, item.label)) await commit(i, false);
        tick();
      }
      await writer.finish();
      await commit(items.length, true);
    }
  } catch (error) {
    if (error instanceof StrictFailure) {
      await cleanUp(out, created);
      fail(error.message);
    }
    throw error; // unexpected (I/O, a bug): the journal stays so a rerun resumes
  } finally {
    pool.close();
  }
  progress.finish();

  const images = SPLITS.reduce(
    (n, s) => n + journal!.splits[s].shards.reduce((m, e) => m + e.count, 0),
    0,
  );
  if (images === 0) {
    await cleanUp(out, created);
    const r = journal.rejected[0];
    fail(
      `no usable images in ${config.input}: all ${journal.rejected.length} inputs were ` +
        `rejected (first: ${r.file}: ${r.reason})`,
    );
  }
  const manifest = buildManifest(config, source, journal, key);
  await writeJsonAtomic(join(out, MANIFEST_FILE), manifest);
  await Deno.remove(join(out, JOURNAL_FILE)).catch(() => {});
  return { status: resumed ? "resumed" : "written", out, manifest };
}

class StrictFailure extends Error {}

/** Removes what this stage wrote (and the folder when it made it): the run failed as a whole. */
async function cleanUp(out: string, created: boolean): Promise<void> {
  const names: string[] = [];
  for await (const e of Deno.readDir(out)) if (OUR_FILE.test(e.name)) names.push(e.name);
  await removeOurs(out, names);
  if (created) await Deno.remove(out).catch(() => {});
}

function buildManifest(c: ShardConfig, source: Source, j: Journal, key: string): ShardManifest {
  const splits: ShardManifest["splits"] = {};
  for (const s of SPLITS) {
    const p = j.splits[s];
    const count = p.shards.reduce((n, e) => n + e.count, 0);
    if (count > 0 || s === "train") {
      splits[s] = { count, classCounts: p.classCounts, shards: p.shards };
    }
  }
  const byReason: Record<string, number> = {};
  for (const r of j.rejected) {
    byReason[category(r.reason)] = (byReason[category(r.reason)] ?? 0) + 1;
  }
  const { spec: _spec, ...config } = c;
  return {
    stage: "shard",
    format: { magic: SHARD_MAGIC, version: SHARD_VERSION, headerBytes: SHARD_HEADER_BYTES },
    image: { channels: c.channels, height: c.size, width: c.size },
    classes: source.classes,
    labelled: source.labelled,
    splits,
    counts: {
      images: Object.values(splits).reduce((n, s) => n + s.count, 0),
      rejected: j.rejected.length,
      rejectedByReason: byReason,
    },
    rejected: j.rejected,
    inputs: { ...source.inputs, fingerprint: source.fingerprint },
    config: { ...config },
    key,
    deno: { ...Deno.version },
  };
}
