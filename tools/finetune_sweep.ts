// `deno task finetune-sweep`: chooses fine-tuning budgets on a validation split carved from the
// TRAINING images (the last --val records of the train split), never on the held-out split.
//
//   deno task finetune-sweep --shards runs/demo/shard --lr 1e-3,2e-3 --steps 300,600
//   deno task finetune-sweep --shards runs/demo/shard --pretrain runs/demo/pretrain \
//     --arms scratch,pretrained --layer-decay 0.65,0.75,1 --scratch-layer-decay 1
//
// Every point of the grid (the Cartesian product of the comma lists) fine-tunes a BeitClassifier
// with lib/train/finetune.ts, the evaluate stage's loop, fed as the evaluate stage feeds it
// (seeded order, no augmentation, images normalised as the pretrained model's inputs) but from the
// first count − val training records only. The pretrained arm sweeps --layer-decay, the scratch arm
// --scratch-layer-decay (default: the same list), as the evaluate stage's two options; it prints one table row per point (validation top-1 at
// each eval step, seconds) and, with --json, writes the rows to a file.

import { join } from "node:path";
import { type Parsed, parseOrExit, runTask, UsageError } from "../lib/cli/args.ts";
import { openShards } from "../lib/data/shards.ts";
import { memorySource } from "../lib/data/loader.ts";
import {
  BEIT_MODEL_FILE,
  BeitClassifier,
  type BeitConfig,
  readBeitMeta,
  resolveBeitConfig,
} from "../lib/models/beit.ts";
import { type CurvePoint, finetune, type FinetuneConfig } from "../lib/train/finetune.ts";
import { evalSetOf, type HostSet, type ImageSpec, recordStream } from "../lib/eval/heldout.ts";
import { Rng } from "../lib/tensor/init.ts";
import { initGpu } from "../lib/tensor/engine.ts";

export const sweepCommand = {
  usage: "deno task finetune-sweep",
  summary:
    "Fine-tunes from scratch and/or from a pretrain folder over a grid of budgets, scored\n" +
    "on a validation split carved from the end of the training split; prints a table.",
  options: {
    shards: { type: "string", default: "runs/shard", help: "shard folder (deno task shard)" },
    pretrain: {
      type: "string",
      default: "",
      help: "pretrain folder (model.safetensors) for the pretrained arm and the input spec",
    },
    arms: {
      type: "string",
      default: "scratch",
      help: "arms to run, comma-separated: scratch, pretrained",
    },
    val: { type: "number", default: 1000, help: "training records held back for validation" },
    "train-limit": {
      type: "number",
      default: 0,
      help: "use only the first N of the remaining training records (0: all)",
    },
    steps: { type: "string", default: "150", help: "fine-tuning steps (list)" },
    lr: { type: "string", default: "2e-3", help: "peak lr (list)" },
    warmup: { type: "string", default: "15", help: "warmup steps (list)" },
    "layer-decay": {
      type: "string",
      default: "0.75",
      help: "layer-wise lr decay (list): the pretrained arm's, and the scratch arm's by default",
    },
    "scratch-layer-decay": {
      type: "string",
      help: "layer-wise lr decay of the scratch arm (list; default: --layer-decay)",
    },
    "label-smoothing": { type: "string", default: "0.1", help: "label smoothing (list)" },
    "drop-path": { type: "string", default: "0.1", help: "stochastic depth rate (list)" },
    "weight-decay": { type: "string", default: "0.05", help: "AdamW weight decay (list)" },
    batch: { type: "string", default: "32", help: "batch size (list)" },
    "eval-every": {
      type: "number",
      default: 0,
      help: "also measure validation top-1 every N steps (0: at the end only)",
    },
    seed: { type: "number", default: 0, help: "seed of the model init, data order and drop path" },
    json: { type: "string", default: "", help: "also write the rows to this JSON file" },
  },
} as const;

export type SweepOptions = Parsed<typeof sweepCommand.options>;

/** A comma list of numbers, or a usage error naming the option. */
function numbers(
  o: SweepOptions,
  name: keyof SweepOptions,
  fallback?: keyof SweepOptions,
): number[] {
  const raw = String(o[name] ?? (fallback && o[fallback]));
  const values = raw.split(",").map((s) => Number(s.trim()));
  if (raw.trim() === "" || values.some((v) => !Number.isFinite(v))) {
    throw new UsageError(`--${name} expects a comma list of numbers, got "${raw}"`);
  }
  return values;
}

export interface Point {
  arm: "scratch" | "pretrained";
  steps: number;
  lr: number;
  warmup: number;
  layerDecay: number;
  labelSmoothing: number;
  dropPath: number;
  weightDecay: number;
  batch: number;
}

/**
 * The Cartesian product of the option lists, arm by arm (layer decay: --layer-decay for the
 * pretrained arm, --scratch-layer-decay for the scratch one).
 */
export function grid(o: SweepOptions): Point[] {
  const arms = o.arms.split(",").map((s) => s.trim());
  for (const a of arms) {
    if (a !== "scratch" && a !== "pretrained") {
      throw new UsageError(`--arms: unknown arm "${a}" (scratch, pretrained)`);
    }
    if (a === "pretrained" && !o.pretrain) {
      throw new UsageError("--arms pretrained needs --pretrain");
    }
  }
  const decays = {
    pretrained: numbers(o, "layer-decay"),
    scratch: numbers(o, "scratch-layer-decay", "layer-decay"),
  };
  for (const [arm, values] of Object.entries(decays)) {
    if (values.some((v) => !(v > 0 && v <= 1))) {
      const name = arm === "scratch" && o["scratch-layer-decay"] !== undefined
        ? "scratch-layer-decay"
        : "layer-decay";
      throw new UsageError(`--${name} must be numbers in (0, 1], got "${values.join(",")}"`);
    }
  }
  const axes: [keyof Point, (arm: string) => number[]][] = [
    ["steps", () => numbers(o, "steps")],
    ["lr", () => numbers(o, "lr")],
    ["warmup", () => numbers(o, "warmup")],
    ["layerDecay", (arm) => arm === "scratch" ? decays.scratch : decays.pretrained],
    ["labelSmoothing", () => numbers(o, "label-smoothing")],
    ["dropPath", () => numbers(o, "drop-path")],
    ["weightDecay", () => numbers(o, "weight-decay")],
    ["batch", () => numbers(o, "batch")],
  ];
  let points: Record<string, number | string>[] = arms.map((arm) => ({ arm }));
  for (const [key, values] of axes) {
    points = points.flatMap((p) => values(p.arm as string).map((v) => ({ ...p, [key]: v })));
  }
  return points as unknown as Point[];
}

/** The train / validation images: the last `val` training records are the validation split. */
async function carve(
  o: SweepOptions,
): Promise<{ train: HostSet; val: HostSet; classes: number }> {
  const shards = await openShards(o.shards);
  const split = shards.splits.train;
  if (!split) throw new UsageError(`--shards ${o.shards} has no train split`);
  const val = o.val;
  if (!Number.isInteger(val) || val < 1 || val >= split.count) {
    throw new UsageError(`--val must be an integer in [1, ${split.count}), got ${val}`);
  }
  const rest = split.count - val;
  const limit = o["train-limit"] > 0 ? Math.min(o["train-limit"], rest) : rest;
  const read = async (from: number, to: number): Promise<HostSet> => {
    const b = await split.readRange(from, to);
    const common = { channels: split.channels, size: split.height };
    return { n: to - from, pixels: b.pixels, labels: b.labels, ...common };
  };
  return {
    train: await read(0, limit),
    val: await read(rest, split.count),
    classes: shards.manifest.classes.length,
  };
}

/** The ViT's config and input spec: the pretrain folder's, else the MNIST preset at half/half. */
async function architecture(o: SweepOptions, images: HostSet) {
  if (o.pretrain) {
    const meta = await readBeitMeta(join(o.pretrain, BEIT_MODEL_FILE));
    return { config: meta.config, spec: meta.image as ImageSpec };
  }
  const config = resolveBeitConfig({
    preset: "mnist",
    imageSize: images.size,
    inChannels: images.channels,
    vocabSize: 512,
  });
  const half = new Array(images.channels).fill(0.5);
  return { config, spec: { size: images.size, mean: half, std: half } };
}

export interface Row extends Point {
  accuracy: number;
  curve: CurvePoint[];
  seconds: number;
}

async function runPoint(
  p: Point,
  data: { train: HostSet; val: HostSet; classes: number },
  vit: { config: BeitConfig; spec: ImageSpec },
  o: SweepOptions,
): Promise<Row> {
  const seed = new Rng(o.seed).fork("finetune").key;
  const model = new BeitClassifier({ ...vit.config, dropPath: p.dropPath }, data.classes, seed);
  const { train } = data;
  const source = memorySource(train.pixels, train.labels, {
    channels: train.channels,
    height: train.size,
    width: train.size,
    chunkSize: 1000,
  });
  const stream = recordStream(source, p.batch, seed, vit.spec);
  try {
    if (p.arm === "pretrained") await model.loadPretrained(join(o.pretrain, BEIT_MODEL_FILE));
    const config: FinetuneConfig = {
      steps: p.steps,
      lr: p.lr,
      warmupSteps: p.warmup,
      weightDecay: p.weightDecay,
      layerDecay: p.layerDecay,
      labelSmoothing: p.labelSmoothing,
      logEvery: 10,
      evalEvery: o["eval-every"],
      evalBatch: 100,
      seed,
    };
    const result = await finetune(
      model,
      { train: stream, val: evalSetOf(data.val, data.val.n, vit.spec) },
      config,
      {
        layers: { numLayers: vit.config.depth, layerId: (n) => model.layerId(n) },
      },
    );
    return { ...p, ...result };
  } finally {
    model.dispose();
  }
}

const pct = (v: number | undefined) => v === undefined ? "—" : (100 * v).toFixed(1);

function rowLine(r: Row): string {
  const evals = r.curve.filter((c) => c.val_acc !== undefined);
  const along = evals.map((c) => `${c.step}:${pct(c.val_acc)}`).join(" ");
  const loss = r.curve.findLast((c) => c.loss !== undefined)?.loss;
  return [
    r.arm.padEnd(10),
    String(r.steps).padStart(5),
    String(r.lr).padStart(7),
    String(r.warmup).padStart(6),
    String(r.layerDecay).padStart(5),
    String(r.labelSmoothing).padStart(5),
    String(r.dropPath).padStart(5),
    String(r.weightDecay).padStart(5),
    String(r.batch).padStart(5),
    pct(r.accuracy).padStart(6),
    r.seconds.toFixed(0).padStart(6),
    (loss?.toFixed(3) ?? "—").padStart(6),
    along,
  ].join(" ");
}

/** Runs every point of the grid in order, printing a row each (and --json's file); the rows. */
export async function runSweep(
  o: SweepOptions,
  log: (line: string) => void = console.log,
): Promise<Row[]> {
  const points = grid(o);
  await initGpu();
  const data = await carve(o);
  const vit = await architecture(o, data.train);
  log(
    `finetune-sweep: ${points.length} point(s); train ${data.train.labels.length} images, ` +
      `validation ${data.val.labels.length} (the last training records)`,
  );
  log("arm        steps      lr warmup  ld    ls    dp    wd    batch top-1%   sec   loss along");
  const rows: Row[] = [];
  for (const p of points) {
    const row = await runPoint(p, data, vit, o);
    rows.push(row);
    log(rowLine(row));
    if (o.json) await Deno.writeTextFile(o.json, JSON.stringify(rows, null, 1) + "\n");
  }
  return rows;
}

async function main(): Promise<void> {
  const o = parseOrExit(sweepCommand);
  await runTask(sweepCommand.usage, async () => void await runSweep(o));
}

if (import.meta.main) await main();
