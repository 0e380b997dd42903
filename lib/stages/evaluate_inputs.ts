// The evaluate stage's inputs (tasks/evaluate.ts), opened and checked before any work: the shards,
// each arm's export-codebook folder (its tokenizer file and codebook statistics) and pretrain folder
// (its ViT), the folders whose curves are plotted, and what the stage reads of their manifests (the
// pretrain runs' masked-token accuracy, the perceptual network's k-NN accuracy behind each arm).
// Every problem is one line naming the option and the file.

import { join, resolve } from "node:path";
import { METRICS_FILE, readMetrics } from "../cli/metrics.ts";
import { MANIFEST_FILE } from "../cli/stage.ts";
import type { ShardSet } from "../data/shards.ts";
import { sha256Hex } from "../io/hash.ts";
import { failer, reason } from "../io/errors.ts";
import type { RunRef } from "../io/report.ts";
import {
  BEIT_MODEL_FILE,
  type BeitConfig,
  type BeitImageSpec,
  readBeitMeta,
  resolveBeitConfig,
} from "../models/beit.ts";
import { TOKENIZER_FILE } from "../models/tokenizer.ts";
import type { ExportCodebook, SeedSharing, Sharing } from "../report/evaluate_report.ts";
import {
  type ArmPaths,
  checkEvaluateData,
  checkEvaluateLabels,
  type EvaluateOptions,
  nonEmpty,
} from "./evaluate_options.ts";
import { openStageShards } from "./stage_shards.ts";

const STAGE = "evaluate";
const fail: (what: string) => never = failer(STAGE);

export interface StageFolder {
  dir: string;
  sha256: string;
  manifest: {
    stage: string;
    config?: Record<string, unknown>;
    inputs?: Record<string, { dir?: string; sha256?: string }>;
    summary?: Record<string, unknown>;
  };
}

/** A finished stage folder: its manifest.json and the manifest's sha256 (as beginStage hashes it). */
export async function stageFolder(
  option: string,
  dir: string,
  stage?: string,
): Promise<StageFolder> {
  let bytes: Uint8Array;
  try {
    if (!(await Deno.stat(dir)).isDirectory) fail(`${option} ${dir} is not a folder`);
    bytes = await Deno.readFile(join(dir, MANIFEST_FILE));
  } catch (error) {
    if ((error as Error).message.startsWith("peco:")) throw error;
    if (error instanceof Deno.errors.NotFound) {
      fail(`${option} ${dir}: no ${MANIFEST_FILE} (missing, or an unfinished stage)`);
    }
    fail(`${option} ${dir}: cannot read ${MANIFEST_FILE} (${(error as Error).message})`);
  }
  let manifest: StageFolder["manifest"];
  try {
    manifest = JSON.parse(new TextDecoder().decode(bytes));
  } catch (error) {
    return fail(`${option} ${join(dir, MANIFEST_FILE)} is not JSON (${(error as Error).message})`);
  }
  if (typeof manifest?.stage !== "string") {
    fail(`${option} ${join(dir, MANIFEST_FILE)} is not a stage manifest (no "stage")`);
  }
  if (stage && manifest.stage !== stage) {
    fail(`${option} ${dir} holds a ${manifest.stage} run, not ${stage}`);
  }
  return { dir, sha256: sha256Hex(bytes), manifest };
}

export async function requireFile(option: string, path: string): Promise<void> {
  const ok = await Deno.stat(path).then((s) => s.isFile, () => false);
  if (!ok) fail(`${option}: ${path} is missing`);
}

export interface Arm extends ArmPaths {
  index: number;
  /** A file-name-safe id: "1-lambda_1". */
  slug: string;
  exportRun: StageFolder;
  codebook: ExportCodebook;
  pretrainRun: StageFolder | null;
  vit: { config: BeitConfig; image: BeitImageSpec } | null;
}

/** The k-NN accuracy of the perceptual network behind an arm's tokenizer, or why it is unknown. */
export interface PerceptualKnn {
  /** Held-out k-NN top-1 that train-perceptual recorded (null: not found; see `note`). */
  accuracy: number | null;
  /** The train-perceptual folder it came from. */
  dir: string | null;
  note: string;
}

export interface Inputs {
  shards: ShardSet;
  shardsRef: RunRef;
  classes: number;
  arms: Arm[];
  curves: StageFolder[];
  /** Per arm (same order), the perceptual network's k-NN accuracy. */
  perceptual: PerceptualKnn[];
}

export function slugOf(label: string, index: number): string {
  const ascii = label.replace(/λ/g, "lambda").normalize("NFKD").replace(/[^A-Za-z0-9.]+/g, "_")
    .replace(/^_+|_+$/g, "");
  return `${index + 1}${ascii ? `-${ascii}` : ""}`;
}

/** That `run` was made from the shards of this evaluation (when it records its shards input). */
export function checkShardsInput(option: string, run: StageFolder, shards: RunRef): void {
  const recorded = run.manifest.inputs?.shards?.sha256;
  if (recorded !== undefined && recorded !== shards.sha256) {
    fail(
      `${option} ${run.dir} was made from other shards (manifest sha256 ${
        recorded.slice(0, 12)
      }…) than --shards ${shards.dir} (${shards.sha256.slice(0, 12)}…)`,
    );
  }
}

/** The ViT of a pretrain folder: its config and input images, from model.safetensors' metadata. */
export async function pretrainVit(run: StageFolder) {
  const file = join(run.dir, BEIT_MODEL_FILE);
  await requireFile("--pretrain", file);
  try {
    const meta = await readBeitMeta(file);
    return { config: resolveBeitConfig(meta.config), image: meta.image };
  } catch (error) {
    // Older files: the config in the manifest, inputs normalised as the tokenizer's.
    const model = (run.manifest.config as { model?: BeitConfig } | undefined)?.model;
    if (!model) {
      return fail(`--pretrain ${file}: ${reason(error)}`);
    }
    return { config: resolveBeitConfig(model), image: null };
  }
}

export async function openArm(paths: ArmPaths, index: number, shards: ShardSet, shardsRef: RunRef) {
  const exportRun = await stageFolder("--export", paths.export, "export-codebook");
  checkShardsInput("--export", exportRun, shardsRef);
  await requireFile("--export", join(paths.export, TOKENIZER_FILE));
  let codebook: ExportCodebook;
  try {
    codebook = JSON.parse(await Deno.readTextFile(join(paths.export, "codebook.json")));
  } catch (error) {
    return fail(`--export ${paths.export}/codebook.json: ${(error as Error).message}`);
  }
  if (!codebook?.splits || !Object.keys(codebook.splits).length) {
    fail(`--export ${paths.export}/codebook.json has no per-split statistics`);
  }
  let pretrainRun: StageFolder | null = null;
  let vit: Arm["vit"] = null;
  if (paths.pretrain) {
    pretrainRun = await stageFolder("--pretrain", paths.pretrain, "pretrain");
    checkShardsInput("--pretrain", pretrainRun, shardsRef);
    // The pretrain run's targets must be this arm's tokens.
    const used = Object.values(pretrainRun.manifest.inputs ?? {}).map((i) => i.sha256);
    const fromExport = Object.entries(pretrainRun.manifest.inputs ?? {})
      .some(([k, i]) => k !== "shards" && i.sha256 === exportRun.sha256);
    if (used.length > 1 && !fromExport) {
      fail(
        `--pretrain ${paths.pretrain} was not trained on the tokens of --export ${paths.export} ` +
          `(arm "${paths.label}")`,
      );
    }
    const spec = await pretrainVit(pretrainRun);
    const { channels, height, width } = shards.manifest.image;
    vit = {
      config: spec.config,
      image: spec.image ?? { channels, size: spec.config.imageSize, mean: [], std: [] },
    };
    if (spec.config.inChannels !== channels || height !== width) {
      fail(
        `--pretrain ${paths.pretrain}: the ViT takes ${spec.config.inChannels}-channel images, ` +
          `the shards hold [${channels},${height},${width}]`,
      );
    }
  }
  return {
    ...paths,
    index,
    slug: slugOf(paths.label, index),
    exportRun,
    codebook,
    pretrainRun,
    vit,
  };
}

/** Opens and checks every input; nothing is computed or written before this returns. */
export async function openInputs(o: EvaluateOptions, paths: ArmPaths[]): Promise<Inputs> {
  const shards = await openStageShards(STAGE, o.shards, {
    splits: ["train", "val"],
    check: ({ splits, manifest }) => [
      ...checkEvaluateData(o, splits.train.count),
      ...checkEvaluateLabels(manifest.labelled, manifest.classes.length),
    ],
  });
  const dir = shards.dir;
  const shardsRef = await stageFolder("--shards", dir, "shard");
  const arms: Arm[] = [];
  for (const [i, p] of paths.entries()) arms.push(await openArm(p, i, shards, shardsRef));
  const curves: StageFolder[] = [];
  for (const c of nonEmpty(o.curves)) curves.push(await stageFolder("--curves", resolve(c)));
  // The pretrain folders are plotted too; each folder once.
  for (const a of arms) {
    if (a.pretrainRun && !curves.some((c) => c.dir === a.pretrainRun!.dir)) {
      curves.push(a.pretrainRun);
    }
  }
  return {
    shards,
    shardsRef: { dir: shardsRef.dir, sha256: shardsRef.sha256 },
    classes: shards.manifest.classes.length,
    arms,
    curves,
    perceptual: arms.map((a) => perceptualKnn(a.exportRun, curves)),
  };
}

/**
 * Follows the manifests' input chain export → tokenizer → perceptual through the folders the stage
 * may read (its --curves: the pipeline passes the training stages' folders there), matching each
 * link by its manifest's sha256, to the k-NN accuracy train-perceptual recorded in its summary.
 */
export function perceptualKnn(exportRun: StageFolder, folders: StageFolder[]): PerceptualKnn {
  const unknown = (note: string): PerceptualKnn => ({ accuracy: null, dir: null, note });
  const bySha = (sha: string | undefined) => folders.find((f) => f.sha256 === sha);
  const tokenizerSha = exportRun.manifest.inputs?.tokenizer?.sha256;
  if (!tokenizerSha) return unknown("the export's manifest records no tokenizer input");
  const tokenizer = bySha(tokenizerSha);
  if (!tokenizer) {
    return unknown("its train-tokenizer folder is not among the --curves folders");
  }
  const perceptualSha = tokenizer.manifest.inputs?.perceptual?.sha256;
  if (!perceptualSha) {
    return unknown("its tokenizer used no built-in perceptual network (λ = 0 or outside weights)");
  }
  const perceptual = bySha(perceptualSha);
  if (!perceptual) {
    return unknown("its train-perceptual folder is not among the --curves folders");
  }
  // train-perceptual's summary keys (lib/stages/train_perceptual.ts; its test reads them too).
  const knn = perceptual.manifest.summary?.knn_accuracy;
  if (typeof knn !== "number" || !Number.isFinite(knn)) {
    return { accuracy: null, dir: perceptual.dir, note: "its summary records no k-NN accuracy" };
  }
  const k = perceptual.manifest.summary?.knn_k;
  return {
    accuracy: knn,
    dir: perceptual.dir,
    note: `k = ${typeof k === "number" ? k : "?"}, on held-out images`,
  };
}

/** The pretrain run's masked-token accuracy: its summary, else the last logged value. */
export async function pretrainMaskedAcc(
  run: StageFolder,
): Promise<{ value: number | null; split: string; key: string }> {
  const summary = run.manifest.summary ?? {};
  // The held-out masked accuracy first (pretrain's eval_accuracy), then training-batch accuracy.
  const keys = ["eval_accuracy", "val_masked_acc", "masked_acc", "accuracy"];
  const splitOf = (key: string) => (/^(eval|val)_/.test(key) ? "val" : "train");
  for (const key of keys) {
    const v = summary[key];
    if (typeof v === "number" && Number.isFinite(v)) {
      return { value: v, split: splitOf(key), key: `summary.${key}` };
    }
  }
  try {
    const records = await readMetrics(join(run.dir, METRICS_FILE));
    for (const key of keys) {
      const last = records.filter((r) => typeof r[key] === "number").at(-1);
      if (last) {
        return {
          value: last[key] as number,
          split: splitOf(key),
          key: `${METRICS_FILE}:${key}@${last.step}`,
        };
      }
    }
  } catch {
    // No metrics: reported as not measured.
  }
  return { value: null, split: "train", key: "none" };
}

/**
 * Whether the runs keyed by `key` (a folder, null: not known) are one per seed, one for every
 * seed, or some of each, within each group of arms (null: no group spans two seeds).
 */
export function sharingOf(
  arms: readonly { group: string; seed: number; key: string | null }[],
): Sharing | null {
  const groups = new Map<string, Map<string, Set<number>>>();
  for (const a of arms) {
    if (a.key === null) continue;
    const byKey = groups.get(a.group) ?? new Map<string, Set<number>>();
    groups.set(a.group, byKey.set(a.key, (byKey.get(a.key) ?? new Set()).add(a.seed)));
  }
  let spans = false, shared = true, perSeed = true;
  for (const byKey of groups.values()) {
    const seeds = new Set([...byKey.values()].flatMap((s) => [...s]));
    if (seeds.size < 2) continue;
    spans = true;
    shared &&= byKey.size === 1;
    perSeed &&= [...byKey.values()].every((s) => s.size === 1);
  }
  return !spans ? null : shared ? "shared" : perSeed ? "per seed" : "partly shared";
}

/**
 * What the arms' seeds share and what each seed has its own of, read from the inputs: the one
 * shard folder; the perceptual network behind the λ > 0 arms (their manifests' chain); each
 * label's tokenizers, exports and pretraining runs (one folder per seed, or one for all). Null
 * with a single seed.
 */
export function seedSharing(inputs: Inputs): SeedSharing | null {
  const seeds = [...new Set(inputs.arms.map((a) => a.seed))];
  if (seeds.length < 2) return null;
  const runs: SeedSharing["runs"] = [
    { what: "the shards and held-out images", sharing: "shared", dirs: [inputs.shardsRef.dir] },
  ];
  const add = (what: string, rows: { group: string; seed: number; key: string | null }[]) => {
    const sharing = sharingOf(rows);
    const dirs = [...new Set(rows.flatMap((r) => r.key === null ? [] : [r.key]))];
    if (sharing) runs.push({ what, sharing, dirs });
  };
  add(
    "the perceptual network",
    inputs.arms.map((a, i) => ({ group: "", seed: a.seed, key: inputs.perceptual[i].dir })),
  );
  add(
    "the tokenizers",
    inputs.arms.map((a) => ({
      group: a.label,
      seed: a.seed,
      key: a.exportRun.manifest.inputs?.tokenizer?.dir ?? null,
    })),
  );
  add(
    "the codebook exports",
    inputs.arms.map((a) => ({ group: a.label, seed: a.seed, key: a.exportRun.dir })),
  );
  add(
    "the pretraining runs",
    inputs.arms.map((a) => ({ group: a.label, seed: a.seed, key: a.pretrainRun?.dir ?? null })),
  );
  return { seeds, runs };
}
