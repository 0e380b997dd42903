// Training checkpoints: one safetensors file holding everything a run needs to continue exactly
// where it stopped. Tensors are named by prefix: each module's state dict under its prefix
// ("model.encoder.conv_in.weight"), each optimizer's state under its own ("optim.3.exp_avg"), and
// extra named tensors under theirs ("ema.cluster_size"). `__metadata__["peco.checkpoint"]` is a
// JSON document with the step, epoch, seed, host RNG positions, the resolved config, the metrics
// the run carries across a resume, the stage fingerprint and each optimizer's step counts.
//
// A stage keeps ONE checkpoint file, `checkpoint.safetensors` in its output folder, replaced
// atomically: a reader or a resumed run sees the previous checkpoint or the complete new one, never
// a partial file. Because a checkpoint is written only after the losses up to its step were read
// and found finite, and saving refuses to write parameters holding NaN/Inf (CheckpointGuard), the
// file on disk is always the last good state.
//
// Host randomness must be derivable from (seed, step) — e.g. `rng.fork(\`step ${step}\`)`, and the
// loader resumes from {epoch, step} — so that `rng` in the metadata only needs positions, not the
// internal state of generators.

import type { Module } from "../nn/module.ts";
import type { Optimizer, OptimizerState } from "../optim/optimizer.ts";
import { type Tensor, uploadValues } from "../tensor/tensor.ts";
import {
  fromGpuAll,
  readSafetensors,
  type Safetensors,
  type TensorRecord,
  toGpu,
  writeSafetensors,
} from "../io/safetensors.ts";
import { reason } from "../io/errors.ts";

/** The file name a stage's checkpoint has in its output folder. */
export const CHECKPOINT_FILE = "checkpoint.safetensors";
const META_KEY = "peco.checkpoint";
const FORMAT = "peco-checkpoint/1";

/** The live objects a checkpoint saves and restores, each under its prefix (no dots). */
export interface TrainingState {
  /** e.g. `{ model: vqvae, disc: discriminator, momentum: momentumEncoder }`. */
  modules?: Record<string, Module>;
  /** e.g. `{ optim: adam, optim_disc: discAdam }`. */
  optimizers?: Record<string, Optimizer>;
  /** Other tensors restored in place, e.g. `{ ema: { cluster_size, embed_sum } }`. */
  tensors?: Record<string, Record<string, Tensor> | Map<string, Tensor>>;
}

/** What a stage records with its checkpoint. */
export interface CheckpointMeta {
  stage: string;
  /** The stage fingerprint (lib/cli/stage.ts): a checkpoint only resumes the same run. */
  fingerprint: string;
  /** Optimizer steps completed. */
  step: number;
  epoch: number;
  seed: number;
  /** Positions of host random streams and the loader, whatever the stage needs to restore. */
  rng?: Record<string, unknown>;
  /** The resolved config of the run. */
  config: unknown;
  /** Metrics carried across a resume (running averages, best values, …). */
  metrics?: Record<string, unknown>;
  /** What else the stage carries across a resume (e.g. a fine-tuning run's name and records). */
  carried?: Record<string, unknown>;
}

interface OptimizerMeta {
  steps: number;
  lr: number;
  /** Per-parameter step counts (OptimizerState.steps). */
  paramSteps: Record<string, number>;
}

interface StoredMeta extends CheckpointMeta {
  format: string;
  optimizers: Record<string, OptimizerMeta>;
}

/** A checkpoint would hold NaN/Inf: it is not written. */
export class NonFiniteStateError extends Error {
  override name = "NonFiniteStateError";
  constructor(readonly tensorName: string, readonly step: number, path: string) {
    super(
      `peco: checkpoint ${path}: tensor "${tensorName}" holds NaN/Inf at step ${step}; not written`,
    );
  }
}

function fail(path: string, what: string): never {
  throw new Error(`peco: checkpoint ${path}: ${what}`);
}

function checkPrefixes(state: TrainingState, path: string): void {
  const seen = new Set<string>();
  const groups = [state.modules, state.optimizers, state.tensors];
  for (const prefix of groups.flatMap((g) => Object.keys(g ?? {}))) {
    if (!/^[A-Za-z0-9_-]+$/.test(prefix)) fail(path, `invalid prefix "${prefix}"`);
    if (seen.has(prefix)) fail(path, `prefix "${prefix}" is used twice`);
    seen.add(prefix);
  }
}

function entriesOf(named: Record<string, Tensor> | Map<string, Tensor>): [string, Tensor][] {
  return named instanceof Map ? [...named] : Object.entries(named);
}

/** Every tensor of the state under its checkpoint name, and each optimizer's step counts. */
function collect(state: TrainingState, path: string) {
  checkPrefixes(state, path);
  const tensors = new Map<string, Tensor>();
  const add = (name: string, t: Tensor) => {
    if (tensors.has(name)) fail(path, `tensor name "${name}" occurs twice`);
    tensors.set(name, t);
  };
  for (const [prefix, module] of Object.entries(state.modules ?? {})) {
    for (const [name, t] of module.stateDict()) add(`${prefix}.${name}`, t);
  }
  const optimizers: Record<string, OptimizerMeta> = {};
  for (const [prefix, optimizer] of Object.entries(state.optimizers ?? {})) {
    const saved = optimizer.stateDict();
    for (const [key, t] of Object.entries(saved.tensors)) add(`${prefix}.${key}`, t);
    optimizers[prefix] = { steps: optimizer.steps, lr: optimizer.lr, paramSteps: saved.steps };
  }
  for (const [prefix, named] of Object.entries(state.tensors ?? {})) {
    for (const [name, t] of entriesOf(named)) add(`${prefix}.${name}`, t);
  }
  return { tensors, optimizers };
}

function firstNonFinite(records: Map<string, TensorRecord>): string | null {
  for (const [name, r] of records) {
    if (!(r.data instanceof Float32Array)) continue;
    for (const v of r.data) if (!Number.isFinite(v)) return name;
  }
  return null;
}

/**
 * Saves `state` and `meta` to `path` atomically (one readback of every tensor). Throws
 * NonFiniteStateError, writing nothing, when a float tensor holds NaN/Inf.
 */
export async function saveCheckpoint(
  path: string,
  state: TrainingState,
  meta: CheckpointMeta,
): Promise<void> {
  if (!Number.isSafeInteger(meta.step) || meta.step < 0) fail(path, `bad step ${meta.step}`);
  const { tensors, optimizers } = collect(state, path);
  const records = await fromGpuAll(tensors);
  const bad = firstNonFinite(records);
  if (bad) throw new NonFiniteStateError(bad, meta.step, path);
  const stored: StoredMeta = { format: FORMAT, ...meta, optimizers };
  await writeSafetensors(path, records, { [META_KEY]: JSON.stringify(stored) });
}

function parseMeta(metadata: Record<string, string>, path: string): StoredMeta {
  const text = metadata[META_KEY];
  if (text === undefined) fail(path, `not a peco checkpoint (no "${META_KEY}" metadata)`);
  let meta: StoredMeta;
  try {
    meta = JSON.parse(text);
  } catch (error) {
    fail(path, `metadata is not valid JSON (${(error as Error).message})`);
  }
  if (meta?.format !== FORMAT) {
    fail(path, `unsupported checkpoint format ${JSON.stringify(meta?.format)} (want ${FORMAT})`);
  }
  if (!Number.isSafeInteger(meta.step) || typeof meta.fingerprint !== "string") {
    fail(path, "metadata lacks step or fingerprint");
  }
  return meta;
}

/** Reads and validates the whole file; every failure names the file. */
async function readFile(path: string): Promise<Safetensors> {
  try {
    return await readSafetensors(path);
  } catch (error) {
    const why = (error as Error).message.replace(/^peco: safetensors [^:]*: /, "");
    fail(path, `unreadable, truncated or corrupt (${why})`);
  }
}

/**
 * Reads only the metadata (header) of a checkpoint: what a stage looks at to decide whether it can
 * resume, without reading the tensors.
 */
export async function readCheckpointMeta(path: string): Promise<CheckpointMeta> {
  let header: Record<string, unknown>;
  try {
    using file = await Deno.open(path, { read: true });
    const size = (await file.stat()).size;
    const prefix = await readExactly(file, 8);
    const length = Number(new DataView(prefix.buffer).getBigUint64(0, true));
    if (length > size - 8) throw new Error(`header length ${length} beyond the ${size}-byte file`);
    header = JSON.parse(new TextDecoder().decode(await readExactly(file, length)));
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) fail(path, "not found");
    fail(path, `unreadable, truncated or corrupt (${(error as Error).message})`);
  }
  const metadata = (header?.__metadata__ ?? {}) as Record<string, string>;
  return stripStored(parseMeta(metadata, path));
}

async function readExactly(file: Deno.FsFile, n: number): Promise<Uint8Array> {
  const out = new Uint8Array(n);
  let done = 0;
  while (done < n) {
    const got = await file.read(out.subarray(done));
    if (got === null) throw new Error(`file ends after ${done} of ${n} header bytes`);
    done += got;
  }
  return out;
}

function stripStored(meta: StoredMeta): CheckpointMeta {
  const { format: _format, optimizers: _optimizers, ...rest } = meta;
  return rest;
}

/**
 * Restores `state` from `path` (which must hold exactly the tensors `state` names) and returns the
 * metadata; errors name the file. The file, the names and the extra tensors are checked before
 * anything is written; each module and optimizer then checks its own part before copying it, so
 * after an error the live state may be partly restored: do not train on. The copies are recorded
 * in stream order, so the next recorded step sees the restored values.
 */
export async function loadCheckpoint(path: string, state: TrainingState): Promise<CheckpointMeta> {
  const { tensors, metadata } = await readFile(path);
  const meta = parseMeta(metadata, path);
  checkPrefixes(state, path);
  const take = (prefix: string): Map<string, TensorRecord> => {
    const out = new Map<string, TensorRecord>();
    for (const [name, r] of tensors) {
      if (name.startsWith(prefix + ".")) {
        out.set(name.slice(prefix.length + 1), r);
        tensors.delete(name);
      }
    }
    return out;
  };
  const writes: (() => void)[] = [];
  for (const [prefix, module] of Object.entries(state.modules ?? {})) {
    const entries = take(prefix);
    writes.push(() => module.loadStateDict(entries, { source: path }));
  }
  for (const [prefix, optimizer] of Object.entries(state.optimizers ?? {})) {
    const entries = take(prefix);
    const saved = meta.optimizers?.[prefix];
    if (!saved) fail(path, `holds no state for optimizer "${prefix}"`);
    writes.push(() => restoreOptimizer(optimizer, saved, entries, path, prefix));
  }
  for (const [prefix, named] of Object.entries(state.tensors ?? {})) {
    const entries = take(prefix);
    const targets = entriesOf(named);
    for (const [name, t] of targets) {
      const r = entries.get(name);
      if (!r) fail(path, `tensor "${prefix}.${name}" is missing`);
      if (!sameShape(r.shape, t.shape) || r.dtype !== t.dtype.toUpperCase()) {
        fail(
          path,
          `tensor "${prefix}.${name}" is ${r.dtype}[${r.shape}], expected ` +
            `${t.dtype.toUpperCase()}[${t.shape}]`,
        );
      }
      entries.delete(name);
      writes.push(() => {
        uploadValues(t, r.data);
      });
    }
    if (entries.size) {
      fail(
        path,
        `unexpected tensors ${nameList([...entries.keys()].map((n) => `${prefix}.${n}`))}`,
      );
    }
  }
  if (tensors.size) {
    const names = [...tensors.keys()];
    fail(path, `${names.length} tensors belong to nothing being restored (${nameList(names)})`);
  }
  for (const write of writes) write();
  return stripStored(meta);
}

function nameList(names: string[], max = 5): string {
  return names.slice(0, max).join(", ") + (names.length > max ? ", …" : "");
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

function restoreOptimizer(
  optimizer: Optimizer,
  saved: OptimizerMeta,
  entries: Map<string, TensorRecord>,
  path: string,
  prefix: string,
): void {
  // The state goes through temporary GPU tensors; their copies are recorded before they are
  // released, and any later reuse of the pooled buffers is recorded after: stream order holds.
  const uploaded: Record<string, Tensor> = {};
  for (const [key, r] of entries) uploaded[key] = toGpu(r, `${prefix}.${key}`);
  try {
    const state: OptimizerState = { steps: saved.paramSteps, tensors: uploaded };
    optimizer.loadStateDict(state);
  } catch (error) {
    fail(path, reason(error));
  } finally {
    for (const t of Object.values(uploaded)) t.dispose();
  }
  optimizer.steps = saved.steps;
  optimizer.lr = saved.lr;
}

// ---- the NaN guard --------------------------------------------------------------------------

/**
 * Guards a training run against NaN/Inf and keeps its checkpoint good. The loop reads its losses
 * at log intervals (sums accumulated on the GPU over the interval, so a NaN at any step of it
 * shows) and passes them to `check`; `save` writes a checkpoint only for a step whose losses were
 * checked, and refuses parameters holding NaN/Inf. So the checkpoint on disk is always good, and
 * the error names it.
 */
export class CheckpointGuard {
  /** Last step whose losses were checked finite (−1: none). */
  checkedStep = -1;

  constructor(
    readonly stage: string,
    readonly path: string,
    /** The step of the checkpoint at `path` when resuming, else null. */
    public lastGoodStep: number | null = null,
  ) {}

  /** Where the last good checkpoint is, for messages. */
  describeLastGood(): string {
    return this.lastGoodStep === null
      ? "none (no checkpoint written yet)"
      : `${this.path} (step ${this.lastGoodStep})`;
  }

  private stop(what: string, step: number): never {
    throw new Error(
      `peco: ${this.stage}: ${what} at step ${step}; last good checkpoint: ${this.describeLastGood()}`,
    );
  }

  /** Throws when a loss value is NaN/Inf; otherwise marks `step` as checked. */
  check(step: number, losses: Record<string, number>): void {
    const bad = Object.entries(losses).filter(([, v]) => !Number.isFinite(v));
    if (bad.length) {
      this.stop(`loss is NaN/Inf (${bad.map(([k, v]) => `${k} = ${v}`).join(", ")})`, step);
    }
    this.checkedStep = Math.max(this.checkedStep, step);
  }

  /** Saves the checkpoint of `meta.step`, whose losses must have been checked. */
  async save(state: TrainingState, meta: CheckpointMeta): Promise<void> {
    if (meta.step !== this.checkedStep) {
      throw new Error(
        `peco: ${this.stage}: checkpoint at step ${meta.step} but the losses were last checked ` +
          `at step ${this.checkedStep}: read and check them first (checkpoint every N log steps)`,
      );
    }
    try {
      await saveCheckpoint(this.path, state, meta);
    } catch (error) {
      if (error instanceof NonFiniteStateError) {
        this.stop(`parameters hold NaN/Inf ("${error.tensorName}")`, meta.step);
      }
      throw error;
    }
    this.lastGoodStep = meta.step;
  }
}
