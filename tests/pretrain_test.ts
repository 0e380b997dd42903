// The pretrain stage on a handful of MNIST images with a tiny tokenizer and a tiny ViT: outputs,
// skip on rerun, token shards equal to the tokenizer's codes, resume equal to an uninterrupted
// run, bad inputs refused before training; and the MIM helpers (mask budget, masked accuracy,
// code histogram) against host references.

import assert from "node:assert/strict";
import { join } from "node:path";
import { mnistShards, tinyTokenizer } from "./stage_fixtures.ts";
import { assertClose } from "./util.ts";
import { parseOptions } from "../lib/cli/args.ts";
import { readMetrics } from "../lib/cli/metrics.ts";
import { openShards } from "../lib/data/shards.ts";
import {
  TokenShardWriter,
  type TokenSplitManifest,
  writeTokenManifest,
} from "../lib/data/token_shards.ts";
import { sha256File } from "../lib/io/hash.ts";
import { readSafetensors } from "../lib/io/safetensors.ts";
import { BeitClassifier, readBeitMeta } from "../lib/models/beit.ts";
import { TOKENIZER_FILE } from "../lib/models/tokenizer.ts";
import { CodeUsage } from "../lib/models/quantizer.ts";
import { noGrad, tensor } from "../lib/tensor/mod.ts";
import { crossEntropyAccuracy } from "../lib/tensor/ops/loss.ts";
import { maskedPositions, maskSpec, mostFrequent } from "../lib/train/mim.ts";
import { pretrainCommand, runPretrain } from "../tasks/pretrain.ts";

const root = await Deno.makeTempDir({ prefix: "peco-pretrain-" });
globalThis.addEventListener("unload", () => Deno.removeSync(root, { recursive: true }));
const quiet = { log: () => {} };
const K = 16;

const shards = (name: string, limit: number) => mnistShards(root, name, limit);

/**
 * An export-codebook folder made through the real writers: a tiny untrained tokenizer (28² → 7×7
 * codes, K = 16), the token shards of `shardDir` and a stage manifest.
 */
async function makeExport(name: string, shardDir: string): Promise<string> {
  const dir = join(root, name);
  const tokens = join(dir, "tokens");
  await Deno.mkdir(tokens, { recursive: true });
  const tok = tinyTokenizer(K);
  await tok.save(join(dir, TOKENIZER_FILE));
  const set = await openShards(shardDir);
  const geometry = { grid: [7, 7] as [number, number], codebookSize: K };
  const splits: Record<string, TokenSplitManifest> = {};
  for (const split of ["train", "val"]) {
    const reader = set.splits[split];
    const b = await reader.readRange(0, reader.count);
    const ids = tok.encodePixels(b.pixels, b.count);
    const writer = new TokenShardWriter(tokens, split, geometry, 8);
    await writer.add(await ids.read(), b.labels);
    ids.dispose();
    splits[split] = await writer.finish();
  }
  const { sha256 } = await sha256File(join(shardDir, "manifest.json"));
  await writeTokenManifest(tokens, {
    geometry,
    perShard: 8,
    source: { shardsManifestSha256: sha256 },
    splits,
  });
  await Deno.writeTextFile(
    join(dir, "manifest.json"),
    JSON.stringify({ stage: "export-codebook" }),
  );
  tok.dispose();
  return dir;
}

const mnist = await shards("mnist", 16);
const exported = await makeExport("export", mnist);

function options(out: string, flags: string[] = [], shardDir = mnist, exportDir = exported) {
  return parseOptions(pretrainCommand, [
    "--shards",
    shardDir,
    "--tokenizer",
    exportDir,
    "--out",
    out,
    "--dim",
    "16",
    "--depth",
    "1",
    "--heads",
    "2",
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
    "--quiet",
    ...flags,
  ])!;
}

async function exists(path: string): Promise<boolean> {
  return await Deno.stat(path).then(() => true, () => false);
}

async function modelTensors(dir: string, file = "model.safetensors") {
  return (await readSafetensors(join(dir, file))).tensors;
}

Deno.test("MIM helpers: mask budget scaled to the grid, masked positions, accuracy, histogram", async () => {
  assert.deepEqual(maskSpec([14, 14]), { budget: 75, minBlock: 16 });
  assert.deepEqual(maskSpec([7, 7]), { budget: 19, minBlock: 4 });
  assert.deepEqual(maskSpec([2, 2]), { budget: 2, minBlock: 1 });
  assert.deepEqual(maskSpec([7, 7], { ratio: 0.5, minBlock: 2 }), { budget: 25, minBlock: 2 });
  assert.deepEqual(maskSpec([7, 7], { patches: 10 }), { budget: 10, minBlock: 4 });
  assert.throws(
    () => maskSpec([7, 7], { patches: 49 }),
    /--mask-patches must be an integer in \[1, 48\]/,
  );
  assert.throws(
    () => maskSpec([7, 7], { patches: 3 }),
    /--min-block must be an integer in \[1, 3\]/,
  );
  assert.deepEqual([...maskedPositions(Uint8Array.from([0, 1, 1, 0, 0, 1]))], [1, 2, 5]);

  // Logits [5, 3]: argmax 2, 0, 1, 1, 2; targets 2, 0, 0, 1, 1 → 3 of 5.
  const logits = [0, 1, 3, 5, 1, 0, 0, 2, -1, 0.1, 0.7, 0.2, -2, -1, 4];
  const targets = [2, 0, 0, 1, 1];
  const acc = await noGrad(() =>
    crossEntropyAccuracy(tensor(logits, [5, 3]), tensor(targets, [5], "i32")).accuracy
  ).item();
  assertClose([acc], [0.6], { what: "masked accuracy" });

  const histogram = new CodeUsage(4);
  histogram.add(tensor([3, 1, 3, 0], [4], "i32"));
  histogram.add(tensor([3, 2], [2], "i32"));
  const counts = await histogram.counts.toArray();
  assert.deepEqual(counts, [1, 1, 1, 3]);
  assert.deepEqual(mostFrequent(counts), { code: 3, share: 0.5 });
  histogram.dispose();
});

Deno.test("pretrain runs end to end, writes a BEiT model, and a rerun is skipped", async () => {
  const out = join(root, "e2e");
  // BEiT's shared relative position bias (the mnist preset's default is absolute positions).
  const flags = ["--augment", "crop", "--pos", "rel"];
  const result = await runPretrain(options(out, flags), quiet);
  assert.equal(result.status, "done");
  for (
    const f of ["checkpoint.safetensors", "metrics.jsonl", "model.safetensors", "manifest.json"]
  ) {
    assert.ok(await exists(join(out, f)), `${f} written`);
  }
  const records = await readMetrics(join(out, "metrics.jsonl"));
  assert.deepEqual(records.map((r) => r.step), [1, 2]);
  const keys = [
    "loss",
    "accuracy",
    "grad_norm",
    "eval_loss",
    "eval_accuracy",
    "baseline_accuracy",
    "lr",
    "images_per_s",
    "peak_gpu_bytes",
  ];
  for (const key of keys) {
    const v = records[1][key] as number;
    assert.ok(typeof v === "number" && Number.isFinite(v), `${key} = ${v}`);
  }
  // An untrained head predicts nearly uniformly: the first loss is ln K.
  const first = records[0].loss as number;
  assert.ok(Math.abs(first - Math.log(K)) < 0.05, `first loss ${first} vs ln K ${Math.log(K)}`);
  for (const key of ["accuracy", "eval_accuracy", "baseline_accuracy"]) {
    const v = records[1][key] as number;
    assert.ok(v >= 0 && v <= 1, `${key} ${v}`);
  }
  const manifest = JSON.parse(await Deno.readTextFile(join(out, "manifest.json")));
  assert.equal(manifest.stage, "pretrain");
  assert.equal(manifest.inputs.export.stage, "export-codebook");
  assert.equal(manifest.config.model.vocabSize, K);
  assert.equal(manifest.summary.eval_accuracy, records[1].eval_accuracy);
  assert.ok(manifest.files["model.safetensors"].bytes > 0);

  // model.safetensors: BEiT names, its config, and a classifier loads its backbone.
  const meta = await readBeitMeta(out);
  assert.deepEqual(meta.config, manifest.config.model);
  assert.deepEqual(meta.image, { channels: 1, size: 28, mean: [0.5], std: [0.5] });
  const names = [...(await modelTensors(out)).keys()];
  for (
    const n of [
      "cls_token",
      "mask_token",
      "rel_pos_bias.relative_position_bias_table",
      "blocks.0.attn.q_bias",
      "lm_head.weight",
    ]
  ) {
    assert.ok(names.includes(n), n);
  }
  const classifier = new BeitClassifier(meta.config, 10, 0);
  const { skipped } = await classifier.loadPretrained(join(out, "model.safetensors"));
  assert.ok(skipped.includes("lm_head.weight"));
  classifier.dispose();

  const again = await runPretrain(options(out, flags), quiet);
  assert.equal(again.status, "skip");
});

Deno.test("pretrain: token shards give exactly the tokenizer's training (no augmentation)", async () => {
  const a = join(root, "by-tokenizer");
  const b = join(root, "by-tokens");
  assert.equal((await runPretrain(options(a, ["--augment", "none"]), quiet)).status, "done");
  assert.equal(
    (await runPretrain(options(b, ["--augment", "none", "--tokens"]), quiet)).status,
    "done",
  );
  const ta = await modelTensors(a);
  const tb = await modelTensors(b);
  for (const [name, r] of ta) assert.deepEqual(tb.get(name)!.data, r.data, `${name} differs`);
  const ma = await readMetrics(join(a, "metrics.jsonl"));
  const mb = await readMetrics(join(b, "metrics.jsonl"));
  assert.equal(ma[1].eval_accuracy, mb[1].eval_accuracy);
  assert.equal(ma[1].baseline_accuracy, mb[1].baseline_accuracy);
});

Deno.test("pretrain: a resumed run equals an uninterrupted one (augmentation and drop path)", async () => {
  const flags = ["--steps", "4", "--depth", "2", "--drop-path", "0.2", "--augment", "crop"];
  const whole = join(root, "whole");
  const parts = join(root, "parts");
  assert.equal((await runPretrain(options(whole, flags), quiet)).status, "done");
  const first = await runPretrain(options(parts, [...flags, "--stop-at", "2"]), quiet);
  assert.equal(first.status, "stopped");
  assert.ok(!(await exists(join(parts, "manifest.json"))), "a stopped run is not finished");
  assert.equal((await runPretrain(options(parts, flags), quiet)).status, "done");
  const a = await modelTensors(whole, "checkpoint.safetensors");
  const b = await modelTensors(parts, "checkpoint.safetensors");
  assert.deepEqual([...a.keys()].sort(), [...b.keys()].sort());
  assert.ok(a.has("stats.code_counts") && a.has("optim.0.exp_avg"));
  for (const [name, record] of a) {
    assert.deepEqual(b.get(name)!.data, record.data, `${name} differs after resuming`);
  }
  const steps = (await readMetrics(join(parts, "metrics.jsonl"))).map((r) => r.step);
  assert.deepEqual(steps, [1, 2, 3, 4]);
});

Deno.test("pretrain refuses bad inputs before training", async () => {
  const refused = async (
    name: string,
    flags: string[],
    pattern: RegExp,
    shardDir = mnist,
    exportDir = exported,
  ) => {
    const out = join(root, name);
    await assert.rejects(
      () => runPretrain(options(out, flags, shardDir, exportDir), quiet),
      pattern,
    );
    assert.ok(!(await exists(out)), `${name}: nothing written`);
  };
  // The ViT's 4×4 patch grid (28 / 7) is not the tokenizer's 7×7.
  await refused(
    "grid",
    ["--patch-size", "7"],
    /^Error: peco: pretrain: the tokenizer's token grid 7×7 ≠ the ViT's patch grid 4×4 .*\(--tokenizer \//,
  );
  // Token shards of another data set (shards of 12 images, not these 16).
  const other = await shards("other", 12);
  await refused(
    "foreign",
    ["--tokens", "--augment", "none"],
    /token shards .* were made from another data set/,
    other,
  );
  // An export folder without its tokenizer, one without a manifest.
  const bare = join(root, "bare-export");
  await Deno.mkdir(bare);
  await Deno.writeTextFile(
    join(bare, "manifest.json"),
    JSON.stringify({ stage: "export-codebook" }),
  );
  await refused("no-tokenizer", [], /has no tokenizer\.safetensors/, mnist, bare);
  await refused(
    "no-tokens",
    ["--tokens", "--augment", "none"],
    /--tokenizer: token shards: .*no manifest\.json/,
    mnist,
    bare,
  );
  await refused("no-manifest", [], /has no manifest\.json/, mnist, join(root, "missing"));
  // A diverging run stops at the first log step whose loss is not finite, before checkpointing.
  await assert.rejects(
    () => runPretrain(options(join(root, "nan"), ["--lr", "1e30", "--warmup", "0"]), quiet),
    /peco: pretrain: loss is NaN\/Inf .* at step 2; last good checkpoint: none/,
  );
  assert.ok(!(await exists(join(root, "nan", "checkpoint.safetensors"))), "no bad checkpoint");
  // Option errors.
  await refused(
    "tokens-augment",
    ["--tokens", "--augment", "crop"],
    /--tokens .* needs --augment none/,
  );
  await refused("ckpt", ["--ckpt-every", "3", "--log-every", "2"], /multiple of --log-every/);
  await refused(
    "mask",
    ["--mask-patches", "3", "--min-block", "5"],
    /--min-block must be an integer in \[1, 3\]/,
  );
});
