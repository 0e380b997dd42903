// The train-tokenizer stage end to end on a handful of MNIST images: outputs, skip on rerun,
// resume equal to an uninterrupted run, and bad inputs refused before training. Tiny runs only
// (the mnist preset, a few steps of 4 images).

import assert from "node:assert/strict";
import { join } from "node:path";
import { mnistShards, removeAfterLastTest } from "./stage_fixtures.ts";
import "./util.ts";
import { parseOptions } from "../lib/cli/args.ts";
import { readMetrics } from "../lib/cli/metrics.ts";
import {
  fromGpuAll,
  readSafetensors,
  type TensorRecord,
  writeSafetensors,
} from "../lib/io/safetensors.ts";
import { createPerceptualNet, type PerceptualKind } from "../lib/models/perceptual/mod.ts";
import { chainSteps } from "../lib/cli/pipeline.ts";
import type { PipelineConfig } from "../lib/cli/pipeline_config.ts";
import { meanPsnr, perImageMse, psnr } from "../lib/train/psnr.ts";
import { tensor } from "../lib/tensor/mod.ts";
import { Rng } from "../lib/tensor/init.ts";
import { ENCODER_FILE, MocoEncoder, saveEncoder } from "../lib/models/moco.ts";
import {
  discriminatorLayersFor,
  discriminatorOutputSize,
  generatorAdversarialLoss,
  hingeDiscriminatorLoss,
  PatchDiscriminator,
} from "../lib/models/discriminator.ts";
import { runTrainTokenizer, trainTokenizerCommand } from "../tasks/train_tokenizer.ts";
import { assertClose } from "./util.ts";

const root = await Deno.makeTempDir({ prefix: "peco-train-tokenizer-" });
const quiet = { log: () => {} };

const shards = (name: string, extra: string[] = []) => mnistShards(root, name, 16, extra);

const mnist = await shards("mnist");

function options(out: string, flags: string[] = [], shardDir = mnist) {
  return parseOptions(trainTokenizerCommand, [
    "--shards",
    shardDir,
    "--out",
    out,
    "--limit",
    "8",
    "--batch",
    "4",
    "--steps",
    "2",
    "--log-every",
    "1",
    "--ckpt-every",
    "2",
    "--eval-images",
    "5",
    "--psnr-images",
    "3",
    "--quiet",
    // The cheapest runs: no perceptual network unless a test asks for one.
    ...(flags.includes("--perceptual") ? [] : ["--perceptual", "none"]),
    ...flags,
  ])!;
}

async function exists(path: string): Promise<boolean> {
  return await Deno.stat(path).then(() => true, () => false);
}

Deno.test("psnr helpers match a float64 reference", async () => {
  const a = [0.1, 0.5, -0.3, 0.9, 0, 1];
  const b = [0.2, 0.5, -0.1, 0.4, 0.3, 1];
  const got = await perImageMse(tensor(a, [2, 1, 3]), tensor(b, [2, 1, 3])).read();
  const ref = [0, 1].map((i) => {
    let s = 0;
    for (let j = 0; j < 3; j++) s += (a[i * 3 + j] - b[i * 3 + j]) ** 2;
    return s / 3;
  });
  assertClose(got, ref, { what: "per-image mse" });
  assert.equal(psnr(0.01), 20);
  assert.ok(Math.abs(psnr(0.04, 2) - 20) < 1e-12);
  assert.equal(meanPsnr([0, 0.01], 1, 100), 60);
  assert.throws(() => perImageMse(tensor(a, [2, 3]), tensor(b, [3, 2])), /perImageMse/);
});

Deno.test("train-tokenizer runs end to end and a rerun is skipped", async () => {
  const out = join(root, "e2e");
  const result = await runTrainTokenizer(options(out), quiet);
  assert.equal(result.status, "done");
  for (const f of ["checkpoint.safetensors", "metrics.jsonl", "manifest.json"]) {
    assert.ok(await exists(join(out, f)), `${f} written`);
  }
  assert.ok(await exists(join(out, "grids/step_000002.png")), "grid written");
  const records = await readMetrics(join(out, "metrics.jsonl"));
  assert.deepEqual(records.map((r) => r.step), [1, 2]);
  for (
    const key of [
      "loss",
      "pixel",
      "commitment",
      "perceptual",
      "psnr",
      "usage",
      "perplexity",
      "lr",
      "images_per_s",
      "peak_gpu_bytes",
    ]
  ) {
    assert.equal(typeof records[1][key], "number", key);
    assert.ok(Number.isFinite(records[1][key] as number), `${key} finite`);
  }
  // No two codebook rows are equal (k-means seeds and restarts are jittered): 196 encoder
  // outputs, many of them identical background patches, seed 512 codes.
  assert.equal(records[1].distinct_codes, 512);
  const usage = records[1].usage as number;
  assert.ok(usage > 0 && usage <= 1, `usage ${usage}`);
  assert.ok((records[1].perplexity as number) >= 1);
  const manifest = JSON.parse(await Deno.readTextFile(join(out, "manifest.json")));
  assert.equal(manifest.stage, "train-tokenizer");
  assert.equal(manifest.summary.psnr, records[1].psnr);
  assert.ok(manifest.files["checkpoint.safetensors"].bytes > 0);
  const { tensors } = await readSafetensors(join(out, "checkpoint.safetensors"));
  assert.ok(tensors.has("model.quantize.embedding.weight"));

  const again = await runTrainTokenizer(options(out), quiet);
  assert.equal(again.status, "skip");
});

Deno.test("train-tokenizer trains with the builtin perceptual network (λ = 1)", async () => {
  // A tiny stand-in for a train-perceptual output folder: encoder.safetensors + a manifest.
  const dir = join(root, "perceptual");
  await Deno.mkdir(dir);
  const encoder = new MocoEncoder({ widths: [8, 8], depth: 1, groups: 4 }, new Rng(1));
  await saveEncoder(encoder, join(dir, ENCODER_FILE));
  encoder.dispose();
  // Trained on 14² views: the tokenizer pools its 28² images by 2 for the loss.
  await Deno.writeTextFile(
    join(dir, "manifest.json"),
    JSON.stringify({ stage: "train-perceptual", summary: { view_size: [14, 14] } }),
  );
  const out = join(root, "builtin");
  const flags = ["--perceptual", "builtin", "--perceptual-dir", dir, "--lambda", "1"];
  assert.equal((await runTrainTokenizer(options(out, flags), quiet)).status, "done");
  const records = await readMetrics(join(out, "metrics.jsonl"));
  const perceptual = records[1].perceptual as number;
  assert.ok(Number.isFinite(perceptual) && perceptual > 0, `perceptual loss ${perceptual}`);
  const manifest = JSON.parse(await Deno.readTextFile(join(out, "manifest.json")));
  assert.equal(manifest.inputs.perceptual.stage, "train-perceptual");
  assert.equal(manifest.config.perceptual.lambda, 1);
  assert.equal(manifest.config.perceptual.pool, 2);
});

// ---- external perceptual networks from files, on 64² RGB photos --------------------------------

/** 64² RGB shards of the decoder fixtures' photos (JPEG and PNG), a quarter held out. */
async function photoShards(): Promise<string> {
  const photos = join(root, "photos");
  await Deno.mkdir(photos, { recursive: true });
  for (
    const name of ["rgb.jpg", "progressive.jpg", "exif6.jpg", "rgb8.png", "rgba8.png", "big.png"]
  ) {
    await Deno.copyFile(join("fixtures/images/decode", name), join(photos, name));
  }
  return await mnistShards(root, "photo-shards", 100, [
    "--input",
    photos,
    "--size",
    "64",
    "--channels",
    "3",
    "--val-fraction",
    "0.34",
  ]);
}

const f32 = (shape: number[], value = 0.01): TensorRecord => ({
  dtype: "F32",
  shape,
  data: new Float32Array(shape.reduce((a, b) => a * b, 1)).fill(value),
});

/** A BatchNorm1d's tensors under `name` (MoCo's MLPs), with or without affine parameters. */
function bn1d(out: Map<string, TensorRecord>, name: string, c: number, affine = true) {
  if (affine) [out.set(`${name}.weight`, f32([c], 1)), out.set(`${name}.bias`, f32([c], 0))];
  out.set(`${name}.running_mean`, f32([c], 0));
  out.set(`${name}.running_var`, f32([c], 1));
  out.set(`${name}.num_batches_tracked`, {
    dtype: "I64",
    shape: [],
    data: new BigInt64Array([3n]),
  });
}

/**
 * A reduced-width network of `kind` saved as its framework does: torchvision (with the classifier),
 * or a MoCo v3 training checkpoint (base and momentum encoders, each with the 3-layer projector as
 * head.N, and the predictor, all under "module.").
 */
async function reducedCheckpoint(
  kind: PerceptualKind,
  config: Record<string, unknown>,
  layout: "torchvision" | "moco",
  file = `${kind}-${layout}`,
): Promise<string> {
  const net = createPerceptualNet(kind, config);
  const records = await fromGpuAll(net.stateDict());
  net.dispose();
  const out = new Map<string, TensorRecord>();
  if (layout === "torchvision") {
    for (const [name, r] of records) out.set(name, r);
    if (kind === "vgg16") {
      for (const [i, shape] of [[0, [16, 8]], [3, [16, 16]], [6, [10, 16]]] as const) {
        out.set(`classifier.${i}.weight`, f32([...shape]));
        out.set(`classifier.${i}.bias`, f32([shape[0]]));
      }
    } else [out.set("fc.weight", f32([10, 32])), out.set("fc.bias", f32([10]))];
  } else {
    const dim = config.dim as number;
    for (const part of ["base_encoder", "momentum_encoder"]) {
      const p = `module.${part}`;
      for (const [name, r] of records) out.set(`${p}.${name}`, r);
      out.set(`${p}.head.0.weight`, f32([16, dim]));
      bn1d(out, `${p}.head.1`, 16);
      out.set(`${p}.head.3.weight`, f32([16, 16]));
      bn1d(out, `${p}.head.4`, 16);
      out.set(`${p}.head.6.weight`, f32([8, 16]));
      bn1d(out, `${p}.head.7`, 8, false);
    }
    out.set("module.predictor.0.weight", f32([16, 8]));
    bn1d(out, "module.predictor.1", 16);
    out.set("module.predictor.3.weight", f32([8, 16]));
    bn1d(out, "module.predictor.4", 8, false);
  }
  const path = join(root, `${file}.safetensors`);
  await writeSafetensors(path, out);
  return path;
}

const EXTERNAL: { kind: PerceptualKind; config: Record<string, unknown>; moco: boolean }[] = [
  { kind: "vgg16", config: { widths: [4, 8, 8, 8, 8] }, moco: false },
  { kind: "resnet50", config: { width: 4, blocks: [1, 1, 1, 1] }, moco: false },
  // A 64-wide, 2-block ViT at the checkpoint grid 14×14 (224² / 16): run at 64², 4×4 patches.
  {
    kind: "vit-b",
    config: { dim: 64, depth: 2, heads: 1, taps: [1, 2], imageSize: 224, patchSize: 16 },
    moco: true,
  },
];

let photos: string | null = null;
for (const { kind, config, moco } of EXTERNAL) {
  Deno.test(`train-tokenizer trains with --perceptual ${kind} from a ${moco ? "MoCo v3" : "torchvision"} file on 64² RGB photos`, async () => {
    photos ??= await photoShards();
    const weights = await reducedCheckpoint(kind, config, moco ? "moco" : "torchvision");
    const out = join(root, `external-${kind}`);
    const lines: string[] = [];
    const flags = [
      "--perceptual",
      kind,
      "--perceptual-weights",
      weights,
      ...(moco ? ["--perceptual-prefix", "module.base_encoder."] : []),
      "--batch",
      "2",
      "--eval-images",
      "2",
      "--psnr-images",
      "2",
    ];
    const result = await runTrainTokenizer(options(out, flags, photos), {
      log: (l) => lines.push(l),
    });
    assert.equal(result.status, "done");
    const records = await readMetrics(join(out, "metrics.jsonl"));
    for (const r of records) {
      const p = r.perceptual as number;
      assert.ok(Number.isFinite(p) && p > 0, `perceptual loss ${p} at step ${r.step}`);
    }
    const manifest = JSON.parse(await Deno.readTextFile(join(out, "manifest.json")));
    assert.equal(manifest.config.perceptual.kind, kind);
    assert.equal(manifest.config.model.imageSize, 64);
    assert.equal(manifest.config.model.inChannels, 3);
    assert.equal(manifest.config.perceptual.prefix, moco ? "module.base_encoder." : undefined);
    // What the file held beside the network is listed.
    const note = lines.find((l) => l.includes(`--perceptual ${kind}:`))!;
    assert.ok(note, lines.join("\n"));
    assert.match(
      note,
      moco
        ? /set aside \d+: module\.base_encoder\.head\.\* \(16\), module\.momentum_encoder\.\* \(\d+\), module\.predictor\.\* \(10\)/
        : kind === "vgg16"
        ? /set aside 6: classifier\.\* \(6\)/
        : /set aside 2: fc\.\* \(2\)/,
    );
  });
}

Deno.test("train-tokenizer: --perceptual vit-b refuses images its patches do not tile, before training", async () => {
  const weights = await reducedCheckpoint("vit-b", EXTERNAL[2].config, "moco");
  const out = join(root, "vit-28");
  const flags = ["--perceptual", "vit-b", "--perceptual-weights", weights];
  await assert.rejects(
    () =>
      runTrainTokenizer(
        options(out, [...flags, "--perceptual-prefix", "module.base_encoder."]),
        quiet,
      ),
    /^Error: peco: train-tokenizer: --shards .*: --perceptual vit-b needs image sides that are multiples of its 16-pixel patch, the shards hold 28×28$/,
  );
  assert.ok(!(await exists(out)), "nothing written");
  // Without the prefix, the MoCo checkpoint's names are listed against the network's.
  photos ??= await photoShards();
  await assert.rejects(
    () => runTrainTokenizer(options(out, flags, photos!), quiet),
    /--perceptual-weights: VitB\.loadStateDict from .*vit-b-moco\.safetensors: \d+ missing \[cls_token/,
  );
  assert.ok(!(await exists(out)), "nothing written");
  // The file's own patch is checked too: 24-pixel patches do not tile 64² photos.
  const wide = await reducedCheckpoint(
    "vit-b",
    { ...EXTERNAL[2].config, patchSize: 24, imageSize: 48 },
    "moco",
    "vit-b-patch24",
  );
  await assert.rejects(
    () =>
      runTrainTokenizer(
        options(out, [
          "--perceptual",
          "vit-b",
          "--perceptual-weights",
          wide,
          "--perceptual-prefix",
          "module.base_encoder.",
        ], photos!),
        quiet,
      ),
    /^Error: peco: train-tokenizer: --perceptual vit-b: vit-b: 64×64 images do not split into 24×24 patches \(sides must be multiples of 24\) \(the --shards images\)$/,
  );
  assert.ok(!(await exists(out)), "nothing written");
});

Deno.test("train-tokenizer and the pipeline default to the builtin perceptual network", () => {
  const o = parseOptions(trainTokenizerCommand, [])!;
  assert.equal(o.perceptual, "builtin");
  assert.equal(o["perceptual-dir"], "runs/perceptual");
  const steps = chainSteps({ stages: {}, estimates: {} } as unknown as PipelineConfig, "runs/x", [
    "shard",
    "train-perceptual",
    "train-tokenizer",
  ]);
  const tokenizer = steps.find((s) => s.stage === "train-tokenizer")!;
  assert.equal(tokenizer.args.perceptual, o.perceptual);
  assert.equal(tokenizer.args["perceptual-dir"], "runs/x/perceptual");
  assert.ok(steps.some((s) => s.stage === "train-perceptual"));
});

Deno.test("train-tokenizer: a resumed run equals an uninterrupted one", async () => {
  const flags = ["--steps", "4", "--ckpt-every", "2"];
  const whole = join(root, "whole");
  const parts = join(root, "parts");
  assert.equal((await runTrainTokenizer(options(whole, flags), quiet)).status, "done");
  const first = await runTrainTokenizer(options(parts, [...flags, "--stop-at", "2"]), quiet);
  assert.equal(first.status, "stopped");
  assert.ok(!(await exists(join(parts, "manifest.json"))), "a stopped run is not finished");
  const resumed = await runTrainTokenizer(options(parts, flags), quiet);
  assert.equal(resumed.status, "done");
  const a = (await readSafetensors(join(whole, "checkpoint.safetensors"))).tensors;
  const b = (await readSafetensors(join(parts, "checkpoint.safetensors"))).tensors;
  assert.deepEqual([...a.keys()].sort(), [...b.keys()].sort());
  for (const [name, record] of a) {
    assert.deepEqual(b.get(name)!.data, record.data, `${name} differs after resuming`);
  }
  const steps = (await readMetrics(join(parts, "metrics.jsonl"))).map((r) => r.step);
  assert.deepEqual(steps, [1, 2, 3, 4]);
});

Deno.test("PatchDiscriminator: taming's NLayerDiscriminator names and shapes, hinge losses", async () => {
  assert.equal(discriminatorLayersFor(28), 2);
  assert.equal(discriminatorLayersFor(224), 3);
  assert.equal(discriminatorLayersFor(12), 1);
  assert.equal(discriminatorOutputSize(28, 2), 5);
  assert.equal(discriminatorOutputSize(224, 3), 26);
  const d = new PatchDiscriminator({ inChannels: 1, channels: 4, layers: 2 }, 3);
  const shapes = Object.fromEntries([...d.stateDict()].map(([k, t]) => [k, t.shape]));
  const bn = (c: number, i: number) => ({
    [`main.${i}.weight`]: [c],
    [`main.${i}.bias`]: [c],
    [`main.${i}.running_mean`]: [c],
    [`main.${i}.running_var`]: [c],
    [`main.${i}.num_batches_tracked`]: [],
  });
  assert.deepEqual(shapes, {
    "main.0.weight": [4, 1, 4, 4],
    "main.0.bias": [4],
    "main.2.weight": [8, 4, 4, 4],
    ...bn(8, 3),
    "main.5.weight": [16, 8, 4, 4],
    ...bn(16, 6),
    "main.8.weight": [1, 16, 4, 4],
    "main.8.bias": [1],
  });
  const logits = d.forward(tensor(new Float32Array(2 * 28 * 28).fill(0.5), [2, 1, 28, 28]));
  assert.deepEqual(logits.shape, [2, 1, 5, 5]);
  assert.ok((await logits.read()).every(Number.isFinite));
  // Hinge: ½(mean relu(1 − r) + mean relu(1 + f)); generator: −mean f.
  const r = [0.5, 2, -1];
  const f = [-2, 0.25, 3];
  const ref = 0.5 * (r.reduce((s, v) => s + Math.max(0, 1 - v), 0) / 3 +
    f.reduce((s, v) => s + Math.max(0, 1 + v), 0) / 3);
  const dl = await hingeDiscriminatorLoss(tensor(r, [3]), tensor(f, [3])).item();
  assert.ok(Math.abs(dl - ref) < 1e-6, `hinge ${dl} vs ${ref}`);
  const gl = await generatorAdversarialLoss(tensor(f, [3])).item();
  assert.ok(Math.abs(gl + 1.25 / 3) < 1e-6, `generator ${gl}`);
  assert.throws(() => d.forward(tensor(new Float32Array(12), [1, 3, 2, 2])), /PatchDiscriminator/);
  assert.throws(
    () => new PatchDiscriminator({ inChannels: 1, channels: 0, layers: 2 }),
    /PatchDiscriminator: config/,
  );
  d.dispose();
});

Deno.test("train-tokenizer: adversarial term + plain quantizer train and resume exactly", async () => {
  const flags = [
    "--steps",
    "3",
    "--ckpt-every",
    "1",
    "--disc-weight",
    "0.4",
    "--disc-start",
    "1",
    "--quantizer",
    "plain",
  ];
  const whole = join(root, "adv-whole");
  const parts = join(root, "adv-parts");
  assert.equal((await runTrainTokenizer(options(whole, flags), quiet)).status, "done");
  const first = await runTrainTokenizer(options(parts, [...flags, "--stop-at", "2"]), quiet);
  assert.equal(first.status, "stopped");
  assert.equal((await runTrainTokenizer(options(parts, flags), quiet)).status, "done");
  const a = (await readSafetensors(join(whole, "checkpoint.safetensors"))).tensors;
  const b = (await readSafetensors(join(parts, "checkpoint.safetensors"))).tensors;
  assert.ok(a.has("disc.main.0.weight") && a.has("disc.main.3.running_mean"), "disc saved");
  assert.ok([...a.keys()].some((k) => k.startsWith("optim_disc.")), "its Adam saved");
  assert.deepEqual([...a.keys()].sort(), [...b.keys()].sort());
  for (const [name, record] of a) {
    assert.deepEqual(b.get(name)!.data, record.data, `${name} differs after resuming`);
  }
  const records = await readMetrics(join(parts, "metrics.jsonl"));
  assert.deepEqual(records.map((r) => r.step), [1, 2, 3]);
  assert.equal(records[0].d_loss, 0, "no discriminator before --disc-start");
  assert.equal(records[0].d_weight, 0, "no adversarial term before --disc-start");
  assert.ok((records[1].d_weight as number) > 0, `adaptive weight ${records[1].d_weight}`);
  for (const r of records.slice(1)) {
    for (const key of ["g_adv", "d_weight", "d_loss", "logits_real", "logits_fake"]) {
      assert.ok(Number.isFinite(r[key] as number), `${key} at step ${r.step}`);
    }
    assert.ok((r.d_loss as number) > 0, `d_loss ${r.d_loss}`);
  }
  const manifest = JSON.parse(await Deno.readTextFile(join(whole, "manifest.json")));
  assert.equal(manifest.config.model.quantizer.kind, "plain");
  assert.deepEqual(manifest.config.disc, { weight: 0.4, start: 1, channels: 16, layers: 2 });
});

Deno.test("train-tokenizer refuses bad inputs before training", async () => {
  // No manifest in the shards folder.
  const empty = join(root, "empty-shards");
  await Deno.mkdir(empty);
  const out1 = join(root, "bad1");
  await assert.rejects(
    () => runTrainTokenizer(options(out1, [], empty), quiet),
    /peco: train-tokenizer: --shards: .*manifest/,
  );
  assert.ok(!(await exists(out1)), "nothing written");

  // 30×30 images do not divide into the 4× downsample of the mnist preset.
  const odd = await shards("odd", ["--size", "30"]);
  const out2 = join(root, "bad2");
  await assert.rejects(
    () => runTrainTokenizer(options(out2, [], odd), quiet),
    /30×30.*downsample factor 4/,
  );
  assert.ok(!(await exists(out2)), "nothing written");

  // A VGG16 state dict missing almost every tensor, one with a wrong shape.
  const weights = join(root, "bad-vgg.safetensors");
  await writeSafetensors(weights, {
    "features.0.weight": { dtype: "F32", shape: [2, 3, 3, 3], data: new Float32Array(54) },
  });
  const out3 = join(root, "bad3");
  await assert.rejects(
    () =>
      runTrainTokenizer(
        options(out3, ["--perceptual", "vgg16", "--perceptual-weights", weights]),
        quiet,
      ),
    /peco: train-tokenizer: --perceptual-weights: .*bad-vgg\.safetensors.*(missing|shape)/,
  );
  assert.ok(!(await exists(out3)), "nothing written");

  // A shard whose size no longer matches the shards manifest.
  const cut = join(root, "cut-shards");
  await Deno.mkdir(cut);
  for await (const e of Deno.readDir(mnist)) {
    await Deno.copyFile(join(mnist, e.name), join(cut, e.name));
  }
  const shard = [...Deno.readDirSync(cut)].find((e) => e.name.endsWith(".shard"))!.name;
  await Deno.truncate(join(cut, shard), 100);
  const out6 = join(root, "bad6");
  await assert.rejects(
    () => runTrainTokenizer(options(out6, [], cut), quiet),
    new RegExp(`peco: train-tokenizer: --shards: .*${shard}: 100 bytes, manifest says`),
  );
  assert.ok(!(await exists(out6)), "nothing written");

  // A builtin network whose tensors do not match the config in its metadata.
  const pdir = join(root, "bad-perceptual");
  await Deno.mkdir(pdir);
  const small = new MocoEncoder({ widths: [8, 8], depth: 1, groups: 4 }, new Rng(1));
  await small.saveSafetensors(join(pdir, ENCODER_FILE), {
    "peco.moco_encoder": JSON.stringify({ widths: [8, 16], depth: 1, groups: 4 }),
  });
  small.dispose();
  await Deno.writeTextFile(join(pdir, "manifest.json"), JSON.stringify({ stage: "x" }));
  const out7 = join(root, "bad7");
  await assert.rejects(
    () =>
      runTrainTokenizer(
        options(out7, ["--perceptual", "builtin", "--perceptual-dir", pdir]),
        quiet,
      ),
    /peco: train-tokenizer: --perceptual-dir: .*encoder\.safetensors/,
  );
  assert.ok(!(await exists(out7)), "nothing written");

  // Option errors: weights without a kind that takes them, a builtin network not built yet.
  await assert.rejects(
    () => runTrainTokenizer(options(join(root, "bad4"), ["--perceptual-weights", weights]), quiet),
    /--perceptual-weights is only for/,
  );
  await assert.rejects(
    () => runTrainTokenizer(options(join(root, "bad5"), ["--ckpt-every", "3", "--log-every", "2"])),
    /multiple of --log-every/,
  );
});

removeAfterLastTest("train-tokenizer", root);
