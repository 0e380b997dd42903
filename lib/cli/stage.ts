// The stage contract (docs/architecture.md): every stage writes one output folder, finished by a
// manifest.json written last and atomically, holding the stage name, its fingerprint, the resolved
// config, the hashes of its inputs' manifests, sha256 + size of every output file, summary
// metrics, and the Deno and adapter versions. A training stage uses it like this:
//
//   const run = await beginStage({ name: "train-tokenizer", out, config, inputs: { shards } });
//   if (run.status === "skip") return;                       // up to date: nothing to do
//   const guard = new CheckpointGuard(run.name, run.checkpoint, run.resumeFrom?.step ?? null);
//   const meta = run.resumeFrom ? await loadCheckpoint(run.checkpoint, state) : null;
//   const metrics = await MetricsWriter.open(join(out, METRICS_FILE), meta?.step ?? null);
//   … train from (meta?.step ?? 0); at log steps: read losses, guard.check(step, losses);
//     at checkpoint steps (a multiple of the log interval): guard.save(state, {...});
//   await finishStage(run, { summary });
//
// The fingerprint is the sha256 of the canonical JSON of {stage, config, input manifest hashes}:
// equal fingerprints mean the same run. The folder's state decides what beginStage does:
//   - manifest.json with this fingerprint: up to date → "skip" (after checking the files' sizes);
//   - manifest.json of another run: refused in one line unless `force`;
//   - no manifest, `.stage.json` of this fingerprint: an interrupted run → resume from its
//     checkpoint (or start again inside it when there is none);
//   - no manifest, `.stage.json` of another run: refused unless `force`;
//   - files but neither: not ours → always refused (force never deletes foreign data).

import { join, relative, resolve, sep } from "node:path";
import { type AdapterInfo, adapterInfo } from "../tensor/engine.ts";
import { TEMP_PREFIX, writeJsonAtomic } from "../io/atomic.ts";
import { failer } from "../io/errors.ts";
import { sha256File, sha256Hex } from "../io/hash.ts";
import { CHECKPOINT_FILE, type CheckpointMeta, readCheckpointMeta } from "../train/checkpoint.ts";
import type { OptionSpec } from "./args.ts";

export const MANIFEST_FILE = "manifest.json";
/** Marks a folder as holding an unfinished run of one fingerprint (removed when finished). */
export const RUN_MARKER = ".stage.json";

/** The command-line option every stage offers for replacing another run's output. */
export const FORCE_OPTION: OptionSpec = {
  type: "boolean",
  help: "replace an output folder that holds another run (finished or not) of this stage",
};

/**
 * The options every training stage shares: when to log, when to checkpoint, a simulated kill for
 * resume tests, no progress bar, and --force. `what` names what is written at checkpoints.
 */
export function trainingRunOptions(logEvery: number, ckptEvery: number, what = "checkpoint") {
  return {
    "log-every": { type: "number", default: logEvery, help: "metrics every N steps" },
    "ckpt-every": {
      type: "number",
      default: ckptEvery,
      help: `${what} every N steps (a multiple of --log-every)`,
    },
    "stop-at": {
      type: "number",
      help: "stop after the checkpoint at this step, as if killed (tests resuming)",
    },
    quiet: { type: "boolean", help: "no progress bar" },
    force: { type: "boolean", help: FORCE_OPTION.help },
  } as const;
}

export interface StageSpec {
  name: string;
  out: string;
  /** The fully resolved config (JSON: no NaN/Inf, no functions). */
  config: unknown;
  /** Input folders by name; each must hold a finished stage's manifest.json. */
  inputs?: Record<string, string>;
  /** Start afresh even when the folder holds another run or this run's checkpoint. */
  force?: boolean;
  /** One-line notes (skip, resume); default stderr. */
  log?: (line: string) => void;
}

export interface StageInput {
  dir: string;
  /** sha256 of the input's manifest.json bytes (which hold its files' hashes). */
  sha256: string;
  manifest: Record<string, unknown>;
}

export interface FileEntry {
  bytes: number;
  sha256: string;
}

export interface StageManifest {
  stage: string;
  fingerprint: string;
  config: unknown;
  inputs: Record<string, { dir: string; stage: unknown; sha256: string }>;
  /** Every file of the folder but the manifest, by path relative to it ("/"-separated). */
  files: Record<string, FileEntry>;
  summary: Record<string, unknown>;
  deno: typeof Deno.version;
  /** The WebGPU adapter, when the stage opened one. */
  adapter: AdapterInfo | null;
}

interface StageCommon {
  name: string;
  out: string;
  fingerprint: string;
  inputs: Record<string, StageInput>;
}

/** What a stage's run function returns to the command line, the pipeline and tests. */
export interface StageResult {
  status: "skip" | "done" | "stopped";
  out: string;
  summary: Record<string, unknown>;
}

export interface StageSkip extends StageCommon {
  status: "skip";
  manifest: StageManifest;
}

export interface StageRun extends StageCommon {
  status: "fresh" | "resume";
  config: unknown;
  /** Where the stage keeps its checkpoint. */
  checkpoint: string;
  /** The checkpoint to resume from (its metadata), or null for a fresh start. */
  resumeFrom: CheckpointMeta | null;
}

// ---- canonical JSON and fingerprints --------------------------------------------------------

/** JSON with object keys sorted at every level; NaN/Inf and non-JSON values are errors. */
export function canonicalJson(value: unknown, path = "config"): string {
  if (value === null || typeof value === "boolean" || typeof value === "string") {
    return JSON.stringify(value);
  }
  if (typeof value === "number") {
    if (!Number.isFinite(value)) throw new Error(`peco: ${path} is ${value}, not a JSON number`);
    return JSON.stringify(value);
  }
  if (Array.isArray(value)) {
    return `[${value.map((v, i) => canonicalJson(v ?? null, `${path}[${i}]`)).join(",")}]`;
  }
  if (typeof value === "object") {
    const keys = Object.keys(value).filter((k) =>
      (value as Record<string, unknown>)[k] !== undefined
    )
      .sort();
    return `{${
      keys.map((k) =>
        `${JSON.stringify(k)}:${
          canonicalJson((value as Record<string, unknown>)[k], `${path}.${k}`)
        }`
      ).join(",")
    }}`;
  }
  throw new Error(`peco: ${path} is a ${typeof value}, not JSON`);
}

/** sha256 of the canonical JSON of the stage name, its config and its inputs' manifest hashes. */
export function stageFingerprint(
  name: string,
  config: unknown,
  inputHashes: Record<string, string>,
): string {
  const text = canonicalJson({ stage: name, config, inputs: inputHashes });
  return sha256Hex(new TextEncoder().encode(text));
}

// ---- reading folders ------------------------------------------------------------------------

/** A throw-helper for one stage: `fail("what")` throws "peco: <stage>: what" (lib/io/errors.ts). */
export { failer };

async function readJsonFile(path: string, fail: (what: string) => never): Promise<unknown> {
  try {
    return JSON.parse(await Deno.readTextFile(path));
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) throw error;
    return fail(`${path}: unreadable or invalid JSON (${(error as Error).message})`);
  }
}

async function readInput(
  name: string,
  dir: string,
  fail: (w: string) => never,
): Promise<StageInput> {
  const path = join(dir, MANIFEST_FILE);
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) {
      fail(`input "${name}": ${dir} has no ${MANIFEST_FILE} (missing, or an unfinished stage)`);
    }
    fail(`input "${name}": cannot read ${path} (${(error as Error).message})`);
  }
  let manifest: unknown;
  try {
    manifest = JSON.parse(new TextDecoder().decode(bytes));
  } catch (error) {
    fail(`input "${name}": ${path} is not valid JSON (${(error as Error).message})`);
  }
  if (typeof manifest !== "object" || manifest === null || !("stage" in manifest)) {
    fail(`input "${name}": ${path} is not a stage manifest (no "stage")`);
  }
  return { dir, sha256: sha256Hex(bytes), manifest: manifest as Record<string, unknown> };
}

/** Reads and checks a stage folder's manifest.json (as written by finishStage). */
export async function readStageManifest(dir: string): Promise<StageManifest> {
  const fail = failer("stage");
  const path = join(dir, MANIFEST_FILE);
  let m: StageManifest;
  try {
    m = await readJsonFile(path, fail) as StageManifest;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) fail(`${dir} has no ${MANIFEST_FILE}`);
    throw error;
  }
  if (
    typeof m !== "object" || m === null || typeof m.stage !== "string" ||
    typeof m.fingerprint !== "string" || typeof m.files !== "object" || m.files === null
  ) fail(`${path} is not a stage manifest (stage, fingerprint, files)`);
  return m;
}

/** Files under `dir` (relative, "/"-separated, sorted), recursively. */
async function listFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (folder: string) => {
    for await (const e of Deno.readDir(folder)) {
      const path = join(folder, e.name);
      if (e.isDirectory) await walk(path);
      else out.push(relative(dir, path).split(sep).join("/"));
    }
  };
  await walk(dir);
  return out.sort();
}

async function removeEntries(out: string, keep: (name: string) => boolean): Promise<void> {
  for await (const e of Deno.readDir(out)) {
    if (!keep(e.name)) await Deno.remove(join(out, e.name), { recursive: true });
  }
}

// ---- begin ----------------------------------------------------------------------------------

/**
 * Checks the inputs and the output folder, and decides: skip (up to date), resume, or a fresh
 * start (the folder is then created and marked). Refusals are one-line Errors `peco: <stage>: …`.
 */
export async function beginStage(spec: StageSpec): Promise<StageRun | StageSkip> {
  const { name, config, force = false } = spec;
  const log = spec.log ?? ((line: string) => console.error(line));
  const fail = failer(name);
  const out = resolve(spec.out);
  const inputs: Record<string, StageInput> = {};
  for (const [key, dir] of Object.entries(spec.inputs ?? {})) {
    inputs[key] = await readInput(key, resolve(dir), fail);
  }
  const hashes = Object.fromEntries(Object.entries(inputs).map(([k, v]) => [k, v.sha256]));
  const fingerprint = stageFingerprint(name, config, hashes);
  const common = { name, out, fingerprint, inputs };
  const run = (status: StageRun["status"], resumeFrom: CheckpointMeta | null): StageRun => ({
    ...common,
    status,
    config,
    checkpoint: join(out, CHECKPOINT_FILE),
    resumeFrom,
  });
  const startFresh = async (): Promise<StageRun> => {
    await Deno.mkdir(out, { recursive: true });
    // The marker goes first: interrupted from here on, the folder is known to be this run's.
    await writeJsonAtomic(join(out, RUN_MARKER), { stage: name, fingerprint });
    await removeEntries(out, (n) => n === RUN_MARKER);
    return run("fresh", null);
  };

  let names: string[];
  try {
    if (!(await Deno.stat(out)).isDirectory) fail(`--out ${out} exists and is not a folder`);
    names = [];
    for await (const e of Deno.readDir(out)) names.push(e.name);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return await startFresh();
    throw error;
  }
  const replace = "use --force to replace it, or choose another folder";

  if (names.includes(MANIFEST_FILE)) {
    const manifest = await readStageManifest(out).catch(() => null);
    if (manifest?.fingerprint === fingerprint && manifest.stage === name && !force) {
      await checkFiles(out, manifest, fail);
      log(`${name}: up to date (${join(out, MANIFEST_FILE)}); skipped`);
      return { ...common, status: "skip", manifest };
    }
    if (!force) {
      fail(
        `--out ${out} holds a finished ${manifest?.stage ?? "unknown"} run with another config ` +
          `or inputs; ${replace}`,
      );
    }
    return await startFresh();
  }

  if (names.includes(RUN_MARKER)) {
    const marker = await readJsonFile(join(out, RUN_MARKER), fail) as Record<string, unknown>;
    if (marker?.fingerprint !== fingerprint || marker?.stage !== name) {
      if (!force) {
        fail(`--out ${out} holds an unfinished run with another config or inputs; ${replace}`);
      }
      return await startFresh();
    }
    if (force || !names.includes(CHECKPOINT_FILE)) return await startFresh();
    const meta = await readCheckpointMeta(join(out, CHECKPOINT_FILE)).catch((error) =>
      fail(`${(error as Error).message.replace(/^peco: /, "")}; use --force to start over`)
    );
    if (meta.fingerprint !== fingerprint) return await startFresh(); // a stale one: start again
    // Half-written temporary files of the interrupted run go; everything else is overwritten.
    await removeEntries(out, (n) => !n.startsWith(TEMP_PREFIX));
    log(`${name}: resuming the interrupted run in ${out} from step ${meta.step}`);
    return run("resume", meta);
  }

  if (names.length === 0) return await startFresh();
  const shown = names.sort().slice(0, 3).join(", ");
  return fail(
    `--out ${out} holds files that are not from a ${name} run (${shown}${
      names.length > 3 ? ", …" : ""
    }); choose an empty or new folder`,
  );
}

/** An up-to-date folder must still hold its files at their recorded sizes. */
async function checkFiles(
  out: string,
  manifest: StageManifest,
  fail: (what: string) => never,
): Promise<void> {
  for (const [path, entry] of Object.entries(manifest.files)) {
    const size = await Deno.stat(join(out, path)).then((s) => s.size, () => -1);
    if (size !== entry.bytes) {
      fail(
        `--out ${out} is up to date by its manifest but ${path} is ` +
          `${size < 0 ? "missing" : `${size} bytes, not ${entry.bytes}`}; use --force to rerun`,
      );
    }
  }
}

// ---- finish ---------------------------------------------------------------------------------

function adapterIfOpen(): AdapterInfo | null {
  try {
    return adapterInfo();
  } catch {
    return null; // the stage never opened the GPU
  }
}

/**
 * Completes a run: hashes every file of the folder, writes manifest.json last and atomically, and
 * removes the run marker. Returns the manifest.
 */
export async function finishStage(
  run: StageRun,
  { summary = {} }: { summary?: Record<string, unknown> } = {},
): Promise<StageManifest> {
  const files: Record<string, FileEntry> = {};
  for (const path of await listFiles(run.out)) {
    if (path === MANIFEST_FILE || path === RUN_MARKER) continue;
    const base = path.split("/").at(-1)!;
    if (base.startsWith(TEMP_PREFIX)) {
      await Deno.remove(join(run.out, path)); // left by a crashed atomic write
      continue;
    }
    files[path] = await sha256File(join(run.out, path));
  }
  const manifest: StageManifest = {
    stage: run.name,
    fingerprint: run.fingerprint,
    config: run.config,
    inputs: Object.fromEntries(
      Object.entries(run.inputs).map(([k, v]) => [
        k,
        { dir: v.dir, stage: v.manifest.stage, sha256: v.sha256 },
      ]),
    ),
    files,
    summary,
    deno: { ...Deno.version },
    adapter: adapterIfOpen(),
  };
  // Validate before writing: a NaN in the summary must not leave a half-described run behind.
  canonicalJson(summary, "summary");
  await writeJsonAtomic(join(run.out, MANIFEST_FILE), manifest);
  await Deno.remove(join(run.out, RUN_MARKER)).catch(() => {});
  return manifest;
}
