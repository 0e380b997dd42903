// The export-codebook stage and what it builds on: the portable tokenizer file (round trip against
// the training checkpoint, save/load, load errors), token shards (round trip, uint16/uint32,
// truncated and corrupt shards), the codebook statistics and patch crops, and the stage end to end
// on 12×12 MNIST crops with a tokenizer trained for 2 steps (skip on rerun, bad inputs refused).

import assert from "node:assert/strict";
import { join } from "node:path";
import "./util.ts";
import { parseOptions } from "../lib/cli/args.ts";
import { openShards } from "../lib/data/shards.ts";
import {
  openTokenShards,
  tokenDType,
  TokenShardWriter,
  writeTokenManifest,
} from "../lib/data/token_shards.ts";
import {
  countCodes,
  cropPatch,
  histogramStats,
  PatchSampler,
  rankCodes,
  selectCodes,
} from "../lib/report/codebook.ts";
import { readSafetensors, writeSafetensors } from "../lib/io/safetensors.ts";
import { distinctCodes } from "../lib/models/quantizer.ts";
import {
  loadTrainedVqVae,
  Tokenizer,
  TOKENIZER_FILE,
  TOKENIZER_META_KEY,
} from "../lib/models/tokenizer.ts";
import { resolveVqVaeConfig } from "../lib/models/vqvae.ts";
import { noGrad, type Tensor, tensor, tidy } from "../lib/tensor/mod.ts";
import { pixelsToFloat, uploadPixels } from "../lib/data/augment.ts";
import { runShard, shardCommand } from "../tasks/shard.ts";
import { runTrainTokenizer, trainTokenizerCommand } from "../tasks/train_tokenizer.ts";
import { exportCodebookCommand, runExportCodebook } from "../tasks/export_codebook.ts";
import { removeAfterLastTest } from "./stage_fixtures.ts";

const root = await Deno.makeTempDir({ prefix: "peco-export-codebook-" });
const quiet = { log: () => {} };

// ---- fixture: 12×12 MNIST shards and a tokenizer trained for 2 steps --------------------------

const shardDir = join(root, "shard");
await runShard(
  parseOptions(shardCommand, [
    "--out",
    shardDir,
    "--limit",
    "24",
    "--size",
    "12",
    "--per-shard",
    "10",
    "--quiet",
  ])!,
  quiet,
);
const tokDir = join(root, "tok");
await runTrainTokenizer(
  parseOptions(trainTokenizerCommand, [
    "--shards",
    shardDir,
    "--out",
    tokDir,
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
    "--perceptual",
    "none",
    "--eval-images",
    "4",
    "--psnr-images",
    "2",
    "--quiet",
  ])!,
  quiet,
);
const tokManifest = JSON.parse(await Deno.readTextFile(join(tokDir, "manifest.json")));
const modelConfig = resolveVqVaeConfig(tokManifest.config.model);
const shards = await openShards(shardDir);
const val = await shards.splits.val.readRange(0, shards.splits.val.count);
const HALF = { channels: 1, size: 12, mean: [0.5], std: [0.5] };

async function ints(t: Tensor): Promise<number[]> {
  const v = await t.toArray();
  t.dispose();
  return v;
}

function exportOptions(out: string, flags: string[] = []) {
  return parseOptions(exportCodebookCommand, [
    "--tokenizer",
    tokDir,
    "--shards",
    shardDir,
    "--out",
    out,
    "--batch",
    "7",
    "--per-shard",
    "10",
    "--patches-codes",
    "4",
    "--patches-per-code",
    "5",
    "--quiet",
    ...flags,
  ])!;
}

async function exists(path: string): Promise<boolean> {
  return await Deno.stat(path).then(() => true, () => false);
}

/** The stage's run on the fixture, shared by the tests that look at its outputs. */
const exportDir = join(root, "export");
let exported: ReturnType<typeof runExportCodebook> | null = null;
function exportOnce() {
  return exported ??= runExportCodebook(exportOptions(exportDir), quiet);
}

// ---- tokenizer file ---------------------------------------------------------------------------

Deno.test("tokenizer: the exported file gives the training checkpoint's ids", async () => {
  await exportOnce();
  const model = await loadTrainedVqVae(join(tokDir, "checkpoint.safetensors"), modelConfig);
  const n = val.count;
  // The training checkpoint's model on the stage's normalisation (x/255 − 0.5)/0.5.
  const [refIds, refImages] = noGrad(() =>
    tidy(() => {
      const batch = uploadPixels(val.pixels, n, 1, 12, 12);
      const x = pixelsToFloat(batch, { mean: [0.5], std: [0.5] });
      const ids = model.encodeIndices(x);
      return [ids, model.decodeIndices(ids)];
    })
  );
  const tok = await Tokenizer.load(join(exportDir, TOKENIZER_FILE));
  const ids = tok.encodePixels(val.pixels, n);
  assert.deepEqual(ids.shape, [n, 9]);
  assert.deepEqual(await ids.toArray(), await ints(refIds), "same ids as the checkpoint");
  const images = tok.decode(ids);
  assert.deepEqual(images.shape, [n, 1, 12, 12]);
  assert.deepEqual(await ints(images), await ints(refImages), "same decoded images");
  assert.equal(tok.info.codebookSize, modelConfig.codebookSize);
  assert.deepEqual(tok.info.grid, [3, 3]);
  assert.deepEqual(tok.info.image, HALF);
  assert.equal(tok.info.provenance.steps, 2);
  assert.equal(tok.info.provenance.fingerprint, tokManifest.fingerprint);
  // Codewords are the codebook's rows.
  const idList = await ids.toArray();
  const words = await ints(tok.codewords(ids));
  ids.dispose();
  const book = await tok.codebook().toArray();
  const d = modelConfig.codeDim;
  assert.equal(words.length, n * 9 * d);
  idList.forEach((id, t) => {
    assert.deepEqual(words.slice(t * d, (t + 1) * d), book.slice(id * d, (id + 1) * d));
  });
  // Bad inputs name the method and the shapes.
  assert.throws(() => tok.encodePixels(val.pixels, n + 1), /Tokenizer\.encodePixels/);
  const wrong = tensor(new Int32Array(4), [1, 4], "i32");
  assert.throws(() => tok.decode(wrong), /Tokenizer\.decode: ids must be i32 \[N, 9\]/);
  wrong.dispose();
  assert.throws(
    () => tok.encode(tensor(new Float32Array(64), [1, 1, 8, 8])),
    /Tokenizer\.encode: images must be f32 \[N, 1, 12, 12\]/,
  );
  tok.dispose();
  model.dispose();
});

Deno.test("tokenizer: save → load keeps every tensor and the description", async () => {
  await exportOnce();
  const tok = await Tokenizer.load(join(exportDir, TOKENIZER_FILE));
  const again = join(root, "again.safetensors");
  await tok.save(again);
  const a = await readSafetensors(join(exportDir, TOKENIZER_FILE));
  const b = await readSafetensors(again);
  assert.deepEqual([...b.tensors.keys()].sort(), [...a.tensors.keys()].sort());
  for (const [name, r] of a.tensors) assert.deepEqual(b.tensors.get(name)!.data, r.data, name);
  assert.deepEqual(
    JSON.parse(b.metadata[TOKENIZER_META_KEY]),
    JSON.parse(a.metadata[TOKENIZER_META_KEY]),
  );
  // Training-only state stays in the checkpoint.
  assert.ok(!a.tensors.has("quantize.embedding.embed_avg"));
  assert.ok(a.tensors.has("quantize.embedding.weight"));
  assert.ok(a.tensors.has("encoder.conv_in.weight") && a.tensors.has("decoder.conv_out.weight"));
  const reloaded = await Tokenizer.load(again);
  assert.deepEqual(reloaded.info, tok.info);
  assert.deepEqual(
    await ints(reloaded.encodePixels(val.pixels.subarray(0, 4 * 144), 4)),
    await ints(tok.encodePixels(val.pixels.subarray(0, 4 * 144), 4).view([4, 9])),
  );
  reloaded.dispose();
  tok.dispose();
});

Deno.test("tokenizer: loading refuses broken files in one line naming file and tensor/key", async () => {
  await exportOnce();
  const good = await readSafetensors(join(exportDir, TOKENIZER_FILE));
  const meta = JSON.parse(good.metadata[TOKENIZER_META_KEY]);
  const write = async (name: string, edit: (t: typeof good.tensors, m: typeof meta) => void) => {
    const tensors = new Map(good.tensors);
    const m = structuredClone(meta);
    edit(tensors, m);
    const path = join(root, name);
    await writeSafetensors(path, tensors, { [TOKENIZER_META_KEY]: JSON.stringify(m) });
    return path;
  };
  const cases: [string, (t: typeof good.tensors, m: typeof meta) => void, RegExp][] = [
    [
      "missing.safetensors",
      (t) => t.delete("decoder.conv_in.bias"),
      /missing tensor\(s\) decoder\.conv_in\.bias/,
    ],
    [
      "extra.safetensors",
      (t) => t.set("extra.weight", { dtype: "F32", shape: [1], data: new Float32Array(1) }),
      /unexpected tensor\(s\) extra\.weight/,
    ],
    [
      "shape.safetensors",
      (t) => t.set("quant_conv.bias", { dtype: "F32", shape: [3], data: new Float32Array(3) }),
      /tensor "quant_conv\.bias" is F32\[3\], the config needs F32\[32\]/,
    ],
    [
      "unknown-key.safetensors",
      (_t, m) => (m.config.dropout = 0.1),
      /unknown config key\(s\) dropout/,
    ],
    [
      "missing-key.safetensors",
      (_t, m) => delete m.config.codeDim,
      /missing config key\(s\) codeDim/,
    ],
    [
      "quantizer-key.safetensors",
      (_t, m) => (m.config.quantizer.temperature = 1),
      /unknown config\.quantizer key\(s\) temperature/,
    ],
    ["grid.safetensors", (_t, m) => (m.grid = [4, 4]), /grid \[4,4\] does not match/],
  ];
  for (const [name, edit, pattern] of cases) {
    const path = await write(name, edit);
    await assert.rejects(() => Tokenizer.load(path), (error: Error) => {
      assert.match(
        error.message,
        new RegExp(`^peco: tokenizer ${path.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}: `),
      );
      assert.match(error.message, pattern);
      assert.ok(!error.message.includes("\n"), "one line");
      return true;
    });
  }
  const bytes = await Deno.readFile(join(exportDir, TOKENIZER_FILE));
  const truncated = join(root, "truncated.safetensors");
  await Deno.writeFile(truncated, bytes.subarray(0, bytes.length - 100));
  await assert.rejects(
    () => Tokenizer.load(truncated),
    /peco: tokenizer .*truncated\.safetensors: unreadable, truncated or corrupt/,
  );
  await assert.rejects(
    () => Tokenizer.load(join(root, "nope.safetensors")),
    /peco: tokenizer .*nope\.safetensors/,
  );
});

// ---- token shards -----------------------------------------------------------------------------

Deno.test("token shards: round trip across shards, uint16 or uint32 by K", async () => {
  for (const k of [300, 70000]) {
    const dir = join(root, `tokens-${k}`);
    await Deno.mkdir(dir);
    const geometry = { grid: [2, 3] as [number, number], codebookSize: k };
    const n = 7;
    const ids = Array.from({ length: n * 6 }, (_, i) => (i * 7919) % k);
    const labels = Int32Array.from({ length: n }, (_, i) => i - 1);
    const writer = new TokenShardWriter(dir, "train", geometry, 3);
    await writer.add(ids.slice(0, 12), labels.subarray(0, 2)); // batches cross shard boundaries
    await writer.add(ids.slice(12), labels.subarray(2));
    const train = await writer.finish();
    assert.equal(train.count, n);
    assert.deepEqual(train.shards.map((s) => s.count), [3, 3, 1]);
    await writeTokenManifest(dir, {
      geometry,
      perShard: 3,
      source: { shardsManifestSha256: "ab" },
      splits: { train },
    });
    const set = await openTokenShards(dir);
    assert.equal(set.manifest.dtype, k <= 65536 ? "uint16" : "uint32");
    assert.equal(tokenDType(k), set.manifest.dtype);
    const idBytes = k <= 65536 ? 2 : 4;
    assert.equal(train.shards[0].bytes, 32 + Math.ceil((3 * 6 * idBytes) / 4) * 4 + 12);
    const split = set.splits.train;
    assert.equal(split.count, n);
    assert.deepEqual(split.grid, [2, 3]);
    const all = await split.read(0, n);
    assert.deepEqual([...all.ids], ids);
    assert.deepEqual([...all.labels], [...labels]);
    const part = await split.read(2, 5);
    assert.deepEqual([...part.ids], ids.slice(12, 30));
    assert.deepEqual([...part.labels], [1, 2, 3]);
    await assert.rejects(() => split.read(5, 8), /range \[5, 8\) out of/);
  }
  const writer = new TokenShardWriter(join(root, "tokens-300"), "val", {
    grid: [2, 3],
    codebookSize: 300,
  }, 3);
  await assert.rejects(() => writer.add(new Array(6).fill(300), [0]), /id 300, not in \[0, 300\)/);
  await assert.rejects(() => writer.add(new Array(5).fill(0), [0]), /5 ids for 1 labels/);
});

Deno.test("token shards: truncated and corrupted shards are named", async () => {
  const dir = join(root, "tokens-300");
  const file = join(dir, "train-00001.tokens");
  const original = await Deno.readFile(file);
  await Deno.writeFile(file, original.subarray(0, original.length - 4));
  await assert.rejects(
    () => openTokenShards(dir),
    /train-00001\.tokens: \d+ bytes, manifest says \d+ \(truncated\)/,
  );
  const corrupt = original.slice();
  corrupt[40] ^= 0xff;
  await Deno.writeFile(file, corrupt);
  const set = await openTokenShards(dir); // sizes agree: found when the shard is read
  assert.deepEqual((await set.splits.train.read(0, 3)).labels.length, 3);
  await assert.rejects(
    () => set.splits.train.read(2, 4),
    /train-00001\.tokens: sha256 .* does not match/,
  );
  await Deno.writeFile(file, original);
  await assert.rejects(() => openTokenShards(join(root, "no-such")), /no manifest\.json/);
});

// ---- statistics and patches -------------------------------------------------------------------

Deno.test("codebook statistics, code selection and patch crops", () => {
  const counts = new Float64Array(6);
  countCodes([0, 0, 1, 1, 3, 3, 3, 3], counts);
  assert.deepEqual([...counts], [2, 2, 0, 4, 0, 0]);
  const s = histogramStats(counts);
  assert.equal(s.tokens, 8);
  assert.equal(s.used, 3);
  assert.equal(s.dead, 3);
  assert.equal(s.usage, 0.5);
  const h = -(2 * 0.25 * Math.log(0.25) + 0.5 * Math.log(0.5));
  assert.ok(Math.abs(s.perplexity - Math.exp(h)) < 1e-12);
  assert.ok(Math.abs(s.entropyBits - 1.5) < 1e-12);
  assert.equal(histogramStats(new Float64Array([5, 5, 5, 5])).perplexity, 4);
  assert.deepEqual(rankCodes(counts), [3, 0, 1]);
  assert.throws(() => countCodes([6], counts), /id 6 is not in \[0, 6\)/);
  const sel = selectCodes(counts, { top: 1, random: 5, seed: 0 });
  assert.deepEqual(sel.top, [3]);
  assert.deepEqual(sel.random, [0, 1], "only used codes, each once");
  assert.deepEqual(
    selectCodes(counts, { top: 1, random: 1, seed: 3 }),
    selectCodes(counts, { top: 1, random: 1, seed: 3 }),
  );

  // A 4×4 image, f = 2: cell (1, 0) covers rows 2–3, columns 0–1; margin 1 reaches outside.
  const img = Uint8Array.from({ length: 16 }, (_, i) => i * 10);
  const p = cropPatch(img, { channels: 1, size: 4 }, { row: 1, col: 0 }, 2, 1, 1);
  assert.equal(p.side, 4);
  const plane = 16;
  const red = (
    y: number,
    x: number,
  ) => [p.pixels[y * 4 + x], p.pixels[plane + y * 4 + x], p.pixels[2 * plane + y * 4 + x]];
  assert.deepEqual(red(0, 0), [230, 40, 40], "outline");
  const plain = cropPatch(img, { channels: 1, size: 4 }, { row: 1, col: 0 }, 2, 1, 1).pixels;
  // Without outline: margin 0 gives exactly the cell.
  const cell = cropPatch(img, { channels: 1, size: 4 }, { row: 1, col: 0 }, 2, 0, 2);
  assert.equal(cell.side, 4);
  assert.deepEqual([...cell.pixels.subarray(0, 16)], [
    80,
    80,
    90,
    90,
    80,
    80,
    90,
    90,
    120,
    120,
    130,
    130,
    120,
    120,
    130,
    130,
  ]);
  assert.equal(plain.length, 48);
  // Reservoir sampling keeps at most perCode occurrences, all of the code.
  const sampler = new PatchSampler([5], 3, [2, 2], 0);
  const ids = Array.from({ length: 40 }, (_, i) => (i % 3 === 0 ? 5 : 1));
  sampler.add(ids, 100);
  const got = sampler.samples.get(5)!;
  assert.equal(got.length, 3);
  for (const o of got) {
    const i = (o.image - 100) * 4 + o.row * 2 + o.col;
    assert.equal(ids[i], 5);
  }
});

// ---- the stage --------------------------------------------------------------------------------

Deno.test("export-codebook: end to end, numbers consistent with the token shards, rerun skipped", async () => {
  const result = await exportOnce();
  assert.equal(result.status, "done");
  const manifest = JSON.parse(await Deno.readTextFile(join(exportDir, "manifest.json")));
  assert.equal(manifest.stage, "export-codebook");
  const files = Object.keys(manifest.files);
  const codebook = JSON.parse(await Deno.readTextFile(join(exportDir, "codebook.json")));
  const figures = codebook.patches.codes.map((c: { file: string }) => c.file);
  for (
    const f of [
      TOKENIZER_FILE,
      "tokens/manifest.json",
      "tokens/train-00000.tokens",
      "tokens/val-00000.tokens",
      "codebook.json",
      "codebook.md",
      "figures/code_histogram.svg",
      "figures/patches_overview.png",
      ...figures,
    ]
  ) {
    assert.ok(files.includes(f), `manifest lists ${f}`);
    assert.ok(await exists(join(exportDir, f)), `${f} exists`);
  }
  assert.equal(figures.length, 4);
  // Distinct codebook rows, counted from the exported tokenizer's codebook.
  const { tensors } = await readSafetensors(join(exportDir, TOKENIZER_FILE));
  const weight = tensors.get("quantize.embedding.weight")!;
  assert.equal(codebook.distinctCodes, distinctCodes(weight.data as Float32Array, weight.shape[1]));
  assert.equal(result.summary.distinct_codes, codebook.distinctCodes);
  const md = await Deno.readTextFile(join(exportDir, "codebook.md"));
  assert.match(md, new RegExp(`Distinct codebook rows: ${codebook.distinctCodes} of`));
  for (const f of [...figures, "figures/code_histogram.svg", "figures/patches_overview.png"]) {
    assert.ok(md.includes(`(${f})`), `codebook.md links ${f}`);
  }
  // Token shards: every image of each split, labels kept, counts equal codebook.json's.
  const tokens = await openTokenShards(join(exportDir, "tokens"));
  const shardManifest = await Deno.readFile(join(shardDir, "manifest.json"));
  const { sha256Hex } = await import("../lib/io/hash.ts");
  assert.equal(tokens.manifest.source.shardsManifestSha256, sha256Hex(shardManifest));
  assert.equal(tokens.manifest.codebookSize, modelConfig.codebookSize);
  for (const split of ["train", "val"]) {
    const reader = tokens.splits[split];
    const source = shards.splits[split];
    assert.equal(reader.count, source.count);
    const { ids, labels } = await reader.read(0, reader.count);
    assert.deepEqual([...labels], [...(await source.readRange(0, source.count)).labels]);
    const counts = new Float64Array(modelConfig.codebookSize);
    countCodes(ids, counts);
    assert.deepEqual(codebook.counts[split], [...counts], `${split} histogram`);
    const stats = histogramStats(counts);
    assert.equal(codebook.splits[split].used, stats.used);
    assert.ok(Math.abs(codebook.splits[split].perplexity - stats.perplexity) < 1e-9);
    assert.equal(codebook.splits[split].images, source.count);
    assert.equal(
      result.summary.splits &&
        (result.summary.splits as Record<string, { dead: number }>)[split].dead,
      stats.dead,
    );
    for (const c of codebook.patches.codes.filter(() => split === "val")) {
      assert.ok(
        counts[c.code] > 0 && c.occurrences === counts[c.code],
        `code ${c.code} occurs in val`,
      );
      assert.equal(c.patches, Math.min(5, counts[c.code]));
    }
  }
  // The val tokens are the tokenizer's ids of the val images.
  const tok = await Tokenizer.load(join(exportDir, TOKENIZER_FILE));
  const valIds = await ints(tok.encodePixels(val.pixels, val.count));
  tok.dispose();
  assert.deepEqual([...(await tokens.splits.val.read(0, val.count)).ids], valIds);

  const again = await runExportCodebook(exportOptions(exportDir), quiet);
  assert.equal(again.status, "skip");
  assert.deepEqual(again.summary, result.summary);
});

Deno.test("export-codebook: an interrupted run reruns cleanly, bad inputs are refused", async () => {
  // An interrupted run: the marker and half the outputs, no manifest.
  const out = join(root, "interrupted");
  await exportOnce();
  await Deno.mkdir(out);
  const first = JSON.parse(await Deno.readTextFile(join(exportDir, "manifest.json")));
  await Deno.writeTextFile(
    join(out, ".stage.json"),
    JSON.stringify({ stage: "export-codebook", fingerprint: first.fingerprint }),
  );
  await Deno.writeTextFile(join(out, "codebook.md"), "half");
  await Deno.mkdir(join(out, "tokens"));
  await Deno.writeTextFile(join(out, "tokens", "train-00000.tokens"), "half");
  const rerun = await runExportCodebook(exportOptions(out), quiet);
  assert.equal(rerun.status, "done");
  const second = JSON.parse(await Deno.readTextFile(join(out, "manifest.json")));
  assert.deepEqual(second.files, first.files, "the same files, byte for byte");

  // --limit tokenises the first images of each split only.
  const limited = join(root, "limited");
  const small = await runExportCodebook(exportOptions(limited, ["--limit", "5"]), quiet);
  assert.equal(small.summary.images, 10);
  const few = await openTokenShards(join(limited, "tokens"));
  assert.deepEqual([few.splits.train.count, few.splits.val.count], [5, 5]);
  const full = await openTokenShards(join(exportDir, "tokens"));
  assert.deepEqual(await few.splits.val.read(0, 5), await full.splits.val.read(0, 5));

  // The shard folder is not a tokenizer run; images of another size do not fit.
  const bad1 = join(root, "bad1");
  await assert.rejects(
    () =>
      runExportCodebook(
        parseOptions(exportCodebookCommand, [
          "--tokenizer",
          shardDir,
          "--shards",
          shardDir,
          "--out",
          bad1,
          "--quiet",
        ])!,
        quiet,
      ),
    /peco: export-codebook: --tokenizer: .*shard.manifest\.json is not a stage manifest/,
  );
  await assert.rejects(
    () =>
      runExportCodebook(
        parseOptions(exportCodebookCommand, [
          "--tokenizer",
          exportDir,
          "--shards",
          shardDir,
          "--out",
          bad1,
          "--quiet",
        ])!,
        quiet,
      ),
    /--tokenizer .*export holds a export-codebook run, not a train-tokenizer run/,
  );
  const other = join(root, "shard16");
  await runShard(
    parseOptions(shardCommand, ["--out", other, "--limit", "4", "--size", "16", "--quiet"])!,
    quiet,
  );
  const bad2 = join(root, "bad2");
  await assert.rejects(
    () =>
      runExportCodebook(
        parseOptions(exportCodebookCommand, [
          "--tokenizer",
          tokDir,
          "--shards",
          other,
          "--out",
          bad2,
          "--quiet",
        ])!,
        quiet,
      ),
    /--shards .*: images are 1×16×16, the tokenizer takes 1×12×12/,
  );
  await assert.rejects(
    () => runExportCodebook(exportOptions(join(root, "bad3"), ["--batch", "0"])),
    /--batch must be an integer ≥ 1/,
  );
  for (const d of [bad1, bad2]) assert.ok(!(await exists(d)), `nothing written in ${d}`);
});

removeAfterLastTest("export-codebook", root);
