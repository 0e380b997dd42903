// The shard stage end to end on tiny inputs: folders (classes, flat, train/ val/), MNIST, IDX
// pairs; every kind of bad input; the shard reader's checks; interruption and resume; least
// privilege. Inputs are built in temporary folders from fixtures/images (made by
// tools/make_image_fixtures.ts) plus what git cannot hold (empty folders, links, modes).

import assert from "node:assert/strict";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseOptions } from "../lib/cli/args.ts";
import { permissionFlags } from "../lib/cli/permissions.ts";
import { decodeImage } from "../lib/data/decode.ts";
import { moduleReadPaths } from "../lib/data/item_pool.ts";
import { fitImage } from "../lib/data/resize.ts";
import { openShards, type ShardManifest, type SplitReader } from "../lib/data/shards.ts";
import { MNIST_FILES, mnistDataDir } from "../lib/data/sources.ts";
import { sha256Hex } from "../lib/io/hash.ts";
import { runShard, shardAccess, shardCommand, type ShardOptions } from "../tasks/shard.ts";

const repo = fileURLToPath(new URL("../", import.meta.url));
const fixtures = join(repo, "fixtures/images");
const quietLog = () => {};

type Flags = Record<string, string | number | true>;

function argv(flags: Flags): string[] {
  return Object.entries(flags).flatMap(([k, v]) => v === true ? [`--${k}`] : [`--${k}`, `${v}`]);
}

function options(flags: Flags): ShardOptions {
  return parseOptions(shardCommand, [...argv(flags), "--quiet"])!;
}

async function shard(flags: Flags) {
  return await runShard(options(flags), { log: quietLog });
}

async function copyFixture(rel: string, to: string): Promise<void> {
  await Deno.mkdir(dirname(to), { recursive: true });
  await Deno.copyFile(join(fixtures, rel), to);
}

/** Every record of a split as "label:sha256(pixels)", sorted (order-free comparison). */
async function contents(reader: SplitReader): Promise<string[]> {
  const out: string[] = [];
  for await (const b of reader.chunks(5)) {
    for (let i = 0; i < b.count; i++) {
      const px = b.pixels.subarray(i * reader.recordBytes, (i + 1) * reader.recordBytes);
      out.push(`${b.labels[i]}:${sha256Hex(px)}`);
    }
  }
  return out.sort();
}

/** What the stage should store for a fixture file (decode → fit), as contents() writes it. */
function expectedRecord(rel: string, label: number, size: number, channels: 1 | 3): string {
  const planes = decodeImage(Deno.readFileSync(join(fixtures, rel)), { channels });
  return `${label}:${sha256Hex(fitImage(planes, size, "crop"))}`;
}

async function listing(dir: string): Promise<string[]> {
  try {
    const names: string[] = [];
    for await (const e of Deno.readDir(dir)) names.push(e.name);
    return names.sort();
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return ["<missing>"];
    throw error;
  }
}

/** Can this process read a chmod-000 file? (yes as root: then chmod cannot make one unreadable) */
async function rootCanReadLocked(path: string): Promise<boolean> {
  try {
    await Deno.readFile(path);
    return true;
  } catch {
    return false;
  }
}

Deno.test("class folders: good files in, each bad one rejected with a reason", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "peco-shard-" });
  const input = join(tmp, "in"), out = join(tmp, "out");
  const good: [string, string][] = [
    ["cat", "decode/grey8.png"],
    ["cat", "decode/rgb8.png"],
    ["cat", "decode/rgb.jpg"],
    ["cat", "decode/progressive.jpg"],
    ["dog", "decode/rgb16.png"],
    ["dog", "decode/palette8.png"],
    ["dog", "decode/grey.jpg"],
    ["dog", "decode/exif6.jpg"],
  ];
  for (const [cls, rel] of good) await copyFixture(rel, join(input, cls, rel.split("/")[1]));
  const bad: [string, string, RegExp][] = [
    ["cat/zero.png", "bad/zero.png", /^empty file/],
    ["cat/truncated.jpg", "bad/truncated.jpg", /^truncated or corrupt JPEG/],
    ["cat/notimage.png", "bad/notimage.png", /^not a PNG or JPEG file/],
    ["cat/big.png", "decode/big.png", /^over the pixel limit: 64×48 = 3072 pixels > 3000/],
    ["dog/corrupt.png", "bad/corrupt.png", /^corrupt PNG/],
    ["dog/corrupt.jpg", "bad/corrupt.jpg", /^corrupt JPEG/],
    ["dog/truncated.png", "bad/truncated.png", /^truncated PNG/],
    ["dog/bomb.png", "bad/bomb.png", /^over the pixel limit: 40000×40000/],
  ];
  for (const [to, rel] of bad) await copyFixture(rel, join(input, to));
  await Deno.writeTextFile(join(input, "cat", "notes.txt"), "not an image");
  await copyFixture("decode/grey8.png", join(input, "stray.png"));
  await Deno.symlink(join(tmp, "nowhere.png"), join(input, "cat", "gone.png")); // unreadable
  await copyFixture("decode/rgb8.png", join(tmp, "secret.png"));
  await Deno.symlink(join(tmp, "secret.png"), join(input, "dog", "outside.png"));
  // A mode-000 file is unreadable to everyone but root, for whom chmod denies nothing: then the
  // dangling link above is the unreadable case and this file is simply ingested.
  await copyFixture("decode/rgba8.png", join(input, "dog", "locked.png"));
  await Deno.chmod(join(input, "dog", "locked.png"), 0o000);
  const readable = await rootCanReadLocked(join(input, "dog", "locked.png"));
  if (readable) good.push(["dog", "decode/rgba8.png"]);
  else bad.push(["dog/locked.png", "", /^unreadable: permission denied/]);
  const walk: [string, RegExp][] = [
    ["cat/notes.txt", /^not an image file name \(\.txt/],
    ["stray.png", /^not inside a class folder/],
    ["cat/gone.png", /^unreadable: no such file/],
    ["dog/outside.png", /^symbolic link to a path outside the input folder/],
  ];

  const { status, manifest } = await shard({
    input,
    out,
    size: 6,
    channels: 3,
    "per-shard": 3,
    "val-fraction": 0,
    "max-pixels": 3000,
  });
  assert.equal(status, "written");
  assert.deepEqual(manifest.classes, ["cat", "dog"]);
  const nDog = good.filter(([c]) => c === "dog").length;
  assert.deepEqual(manifest.splits.train.classCounts, [4, nDog]);
  assert.equal(manifest.splits.train.count, good.length);
  assert.equal(manifest.splits.val, undefined);
  assert.deepEqual(manifest.splits.train.shards.map((s) => s.count), [3, 3, good.length - 6]);
  const expectedRejects = [...bad.map(([f, , r]) => [f, r] as [string, RegExp]), ...walk];
  assert.equal(manifest.counts.rejected, expectedRejects.length);
  assert.equal(manifest.rejected.length, expectedRejects.length);
  for (const [file, reason] of expectedRejects) {
    const r = manifest.rejected.find((x) => x.file === file);
    assert.ok(r, `${file} is listed as rejected`);
    assert.match(r.reason, reason, file);
  }
  assert.equal(
    Object.values(manifest.counts.rejectedByReason).reduce((a, b) => a + b),
    expectedRejects.length,
  );
  assert.equal(manifest.counts.rejectedByReason["over the pixel limit"], 2);

  const set = await openShards(out);
  const expected = good.map(([cls, rel]) => expectedRecord(rel, cls === "cat" ? 0 : 1, 6, 3));
  assert.deepEqual(await contents(set.splits.train), expected.sort());
  await Deno.chmod(join(input, "dog", "locked.png"), 0o644);
  await Deno.remove(tmp, { recursive: true });
});

Deno.test("--workers 1, 2 and 3 write the same shard bytes, manifest and rejects", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "peco-shard-" });
  const input = join(tmp, "in");
  const files = [
    "decode/rgb.jpg",
    "decode/progressive.jpg",
    "decode/exif6.jpg",
    "decode/rgb8.png",
    "decode/palette8.png",
    "bad/corrupt.jpg",
    "decode/grey.jpg",
    "bad/truncated.png",
    "decode/interlaced.png",
  ];
  for (let i = 0; i < 23; i++) {
    const rel = files[i % files.length];
    await copyFixture(rel, join(input, `c${i % 3}`, `${i}-${rel.split("/")[1]}`));
  }
  // Each run writes the same folder (the manifest records it), read back whole, then removed.
  const out = join(tmp, "out");
  const run = async (workers: number) => {
    const flags = { input, out, size: 7, "per-shard": 4, "val-fraction": 0.25, workers };
    const { manifest } = await shard(flags);
    const bytes = new Map<string, Uint8Array>();
    for (const name of await listing(out)) bytes.set(name, await Deno.readFile(join(out, name)));
    await Deno.remove(out, { recursive: true });
    return { manifest, bytes };
  };
  const one = await run(1);
  assert.equal(one.manifest.counts.rejected, 4); // 2 corrupt.jpg + 2 truncated.png
  assert.ok(one.manifest.splits.train.shards.length >= 3 && one.manifest.splits.val.count > 0);
  assert.ok(one.bytes.has("manifest.json") && one.bytes.has("val-00000.shard"));
  for (const workers of [2, 3]) {
    const many = await run(workers);
    assert.deepEqual([...many.bytes.keys()], [...one.bytes.keys()]);
    for (const [name, bytes] of one.bytes) {
      assert.deepEqual(many.bytes.get(name), bytes, `${name} with ${workers} workers`);
    }
  }
  // --strict stops at the first reject in item order, whichever worker finished first.
  const strictOut = join(tmp, "strict");
  const strict = (workers: number) =>
    shard({ input, out: strictOut, size: 7, "val-fraction": 0, strict: true, workers });
  const first = await strict(1).then(() => "", (e: Error) => e.message);
  assert.match(first, /^peco: shard: c\d\/\d+-(corrupt\.jpg|truncated\.png): .* \(--strict\)$/);
  assert.equal(await strict(3).then(() => "", (e: Error) => e.message), first);
  assert.deepEqual(await listing(strictOut), ["<missing>"]);
  await assert.rejects(
    shard({ input, out: strictOut, workers: 0 }),
    /--workers must be an integer ≥ 1, got 0/,
  );
  await Deno.remove(tmp, { recursive: true });
});

Deno.test("an empty class folder is refused by name before anything is written", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "peco-shard-" });
  const input = join(tmp, "in"), out = join(tmp, "out");
  await copyFixture("decode/grey8.png", join(input, "cat", "grey8.png"));
  await copyFixture("decode/rgb8.png", join(input, "dog", "rgb8.png"));
  await Deno.mkdir(join(input, "empty"));
  // A class folder holding only files that are not images has no example either.
  await Deno.mkdir(join(input, "notes"));
  await Deno.writeTextFile(join(input, "notes", "readme.txt"), "not an image");
  await assert.rejects(
    shard({ input, out, size: 6, channels: 3, "val-fraction": 0 }),
    new RegExp(
      `^Error: peco: shard: input ${input}: class folders empty/, notes/ hold no \\.png, ` +
        `\\.jpg or \\.jpeg files; add images or remove them$`,
    ),
  );
  assert.deepEqual(await listing(out), ["<missing>"]);
  await Deno.remove(tmp, { recursive: true });
});

Deno.test("flat folder: unlabelled, seeded val fraction, same seed → same output", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "peco-shard-" });
  const input = join(tmp, "flat");
  const names = ["grey8.png", "rgb8.png", "rgb16.png", "palette4.png", "grey.jpg", "rgb.jpg"];
  for (let i = 0; i < 10; i++) {
    const name = names[i % names.length];
    await copyFixture(`decode/${name}`, join(input, `${i}-${name}`));
  }
  await Deno.symlink(join(tmp, "nowhere.png"), join(input, "gone.png"));
  const run = (out: string, seed: number) =>
    shard({
      input,
      out: join(tmp, out),
      size: 5,
      channels: 1,
      "val-fraction": 0.3,
      "per-shard": 4,
      seed,
    });
  const a = (await run("a", 7)).manifest;
  const b = (await run("b", 7)).manifest;
  const c = (await run("c", 8)).manifest;
  assert.deepEqual(a.classes, []);
  assert.equal(a.labelled, false);
  assert.deepEqual([a.splits.train.count, a.splits.val.count], [7, 3]);
  assert.deepEqual(a.rejected.map((r) => r.file), ["gone.png"]); // listed once
  assert.deepEqual(a.splits, b.splits, "same seed, same shards");
  assert.notDeepEqual(a.splits.train.shards, c.splits.train.shards, "another seed, another order");
  const set = await openShards(join(tmp, "a"));
  const all = [...await contents(set.splits.train), ...await contents(set.splits.val)];
  assert.ok(all.every((r) => r.startsWith("-1:")));
  const expected = Array.from(
    { length: 10 },
    (_, i) => expectedRecord(`decode/${names[i % names.length]}`, -1, 5, 1),
  );
  assert.deepEqual(all.sort(), expected.sort());
  await Deno.remove(tmp, { recursive: true });
});

Deno.test("train/ and val/ folders are the splits; --val-fraction is then refused", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "peco-shard-" });
  const input = join(tmp, "in");
  await copyFixture("decode/grey8.png", join(input, "train", "a", "1.png"));
  await copyFixture("decode/rgb8.png", join(input, "train", "b", "2.png"));
  await copyFixture("decode/grey.jpg", join(input, "train", "b", "3.jpg"));
  await copyFixture("decode/rgb.jpg", join(input, "val", "a", "4.jpg"));
  await Deno.writeTextFile(join(input, "README"), "about this data set");
  const { manifest } = await shard({ input, out: join(tmp, "out"), size: 4 });
  assert.deepEqual(manifest.classes, ["a", "b"]);
  assert.deepEqual(manifest.splits.train.classCounts, [1, 2]);
  assert.deepEqual(manifest.splits.val.classCounts, [1, 0]);
  assert.deepEqual(manifest.image, { channels: 3, height: 4, width: 4 });
  assert.deepEqual(manifest.rejected, [{ file: "README", reason: "not inside train/ or val/" }]);
  await assert.rejects(
    shard({ input, out: join(tmp, "out2"), "val-fraction": 0.2 }),
    /has its own val split/,
  );
  assert.deepEqual(await listing(join(tmp, "out2")), ["<missing>"]);
  await Deno.remove(tmp, { recursive: true });
});

/** MNIST images and labels read straight from the package's IDX files (the test's reference). */
function mnistReference(split: "train" | "val"): Map<string, number[]> {
  const [imgFile, lblFile] = MNIST_FILES[split].map((f) => join(mnistDataDir(), f));
  const images = Deno.readFileSync(imgFile).subarray(16);
  const labels = Deno.readFileSync(lblFile).subarray(8);
  const byHash = new Map<string, number[]>();
  for (let i = 0; i < labels.length; i++) {
    const key = `${labels[i]}:${sha256Hex(images.subarray(i * 784, (i + 1) * 784))}`;
    byHash.set(key, [...(byHash.get(key) ?? []), i]);
  }
  return byHash;
}

Deno.test("MNIST: train 60k / test 10k from the package, --limit per split", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "peco-shard-" });
  const { manifest } = await shard({
    input: "mnist",
    out: join(tmp, "out"),
    limit: 40,
    "per-shard": 16,
  });
  assert.deepEqual(manifest.classes, ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]);
  assert.deepEqual(manifest.image, { channels: 1, height: 28, width: 28 });
  assert.deepEqual([manifest.splits.train.count, manifest.splits.val.count], [40, 40]);
  const files = (manifest.inputs as { files: { bytes: number }[] }).files.map((f) => f.bytes);
  assert.deepEqual(files, [47040016, 60008, 7840016, 10008]); // 60000 and 10000 images
  const set = await openShards(join(tmp, "out"));
  for (const split of ["train", "val"] as const) {
    const ref = mnistReference(split);
    const records = await contents(set.splits[split]);
    for (const r of records) assert.ok(ref.has(r), `${split} record ${r} is an MNIST image`);
    assert.equal(new Set(records).size, 40);
  }
  // Channels and size conversions go through the same path as images.
  const rgb = await shard({
    input: "mnist",
    out: join(tmp, "rgb"),
    limit: 3,
    channels: 3,
    size: 32,
  });
  assert.deepEqual(rgb.manifest.image, { channels: 3, height: 32, width: 32 });
  const one = await (await openShards(join(tmp, "rgb"))).splits.train.read(0);
  const plane = 32 * 32;
  assert.deepEqual(one.pixels.subarray(0, plane), one.pixels.subarray(2 * plane));
  await Deno.remove(tmp, { recursive: true });
});

async function gzip(bytes: Uint8Array): Promise<Uint8Array> {
  const stream = new Blob([bytes as Uint8Array<ArrayBuffer>]).stream()
    .pipeThrough(new CompressionStream("gzip"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

function idx(dims: number[], data: Uint8Array): Uint8Array {
  const out = new Uint8Array(4 + 4 * dims.length + data.length);
  out.set([0, 0, 8, dims.length]);
  const view = new DataView(out.buffer);
  dims.forEach((d, i) => view.setUint32(4 + 4 * i, d, false));
  out.set(data, 4 + 4 * dims.length);
  return out;
}

Deno.test("IDX pairs: gzipped or raw, same shards; malformed IDX fails in one line", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "peco-shard-" });
  const n = 9, h = 5, w = 3;
  const pixels = Uint8Array.from({ length: n * h * w }, (_, i) => (i * 29) % 256);
  const labels = Uint8Array.from({ length: n }, (_, i) => (i * 5) % 4);
  const images = idx([n, h, w], pixels), lab = idx([n], labels);
  await Deno.writeFile(join(tmp, "img"), images);
  await Deno.writeFile(join(tmp, "lab"), lab);
  await Deno.writeFile(join(tmp, "img.gz"), await gzip(images));
  await Deno.writeFile(join(tmp, "lab.gz"), await gzip(lab));
  const raw = await shard({
    input: `idx:${join(tmp, "img")},${join(tmp, "lab")}`,
    out: join(tmp, "o1"),
    "val-fraction": 0,
  });
  const gz = await shard({
    input: `idx:${join(tmp, "img.gz")},${join(tmp, "lab.gz")}`,
    out: join(tmp, "o2"),
    "val-fraction": 0,
  });
  // Native size, cropped to a square: 5×3 → 5×5.
  assert.deepEqual(raw.manifest.image, { channels: 1, height: 5, width: 5 });
  assert.deepEqual(raw.manifest.classes, ["0", "1", "2", "3"]);
  assert.deepEqual(raw.manifest.splits, gz.manifest.splits);
  const unlabelled = await shard({
    input: `idx:${join(tmp, "img")}`,
    out: join(tmp, "o3"),
    size: 3,
    "val-fraction": 0,
  });
  assert.equal(unlabelled.manifest.labelled, false);
  const set = await openShards(join(tmp, "o3"));
  assert.ok((await set.splits.train.readRange(0, n)).labels.every((l) => l === -1));

  await Deno.writeFile(join(tmp, "short"), images.subarray(0, images.length - 4));
  await Deno.writeFile(join(tmp, "lab8"), idx([8], labels.subarray(0, 8)));
  await Deno.writeFile(join(tmp, "float"), Uint8Array.from([0, 0, 0x0d, 1, 0, 0, 0, 0]));
  await Deno.writeFile(join(tmp, "bad.gz"), (await gzip(images)).subarray(0, 30));
  const cases: [string, RegExp][] = [
    [
      `idx:${join(tmp, "short")}`,
      /short: IDX dims \[9,5,3\] need 151 bytes, the file has 147 \(truncated\)/,
    ],
    [`idx:${join(tmp, "img")},${join(tmp, "lab8")}`, /lab8: 8 labels for 9 images/],
    [`idx:${join(tmp, "float")}`, /IDX element type float is not supported/],
    [`idx:${join(tmp, "bad.gz")}`, /bad\.gz: corrupt or truncated gzip data/],
    [`idx:${join(tmp, "missing")}`, /missing: unreadable: no such file/],
  ];
  for (const [input, message] of cases) {
    await assert.rejects(shard({ input, out: join(tmp, "never") }), message);
  }
  assert.deepEqual(await listing(join(tmp, "never")), ["<missing>"]);
  await Deno.remove(tmp, { recursive: true });
});

Deno.test("bad stage input: one-line error and nothing written", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "peco-shard-" });
  const input = join(tmp, "in");
  await copyFixture("decode/grey8.png", join(input, "a", "1.png"));
  const file = join(tmp, "file.png");
  await copyFixture("decode/grey8.png", file);
  const out = join(tmp, "out");
  await assert.rejects(
    shard({ input: join(tmp, "nope"), out }),
    /^Error: peco: shard: input folder .*nope does not exist$/,
  );
  await assert.rejects(shard({ input: file, out }), /is not a folder/);
  await assert.rejects(
    shard({ input, out: join(input, "a", "o") }),
    /must not contain one another/,
  );
  assert.deepEqual(await listing(out), ["<missing>"]);
  // An out folder holding a different run, or other files, is refused and left untouched.
  await shard({ input, out, size: 4 });
  const before = await listing(out);
  const manifest = await Deno.readTextFile(join(out, "manifest.json"));
  await assert.rejects(
    shard({ input, out, size: 5 }),
    /already holds a different shard run/,
  );
  assert.equal((await shard({ input, out, size: 4 })).status, "up to date");
  assert.deepEqual(await listing(out), before);
  assert.equal(await Deno.readTextFile(join(out, "manifest.json")), manifest);
  const other = join(tmp, "other");
  await Deno.mkdir(other);
  await Deno.writeTextFile(join(other, "notes.md"), "mine");
  await assert.rejects(
    shard({ input, out: other }),
    /holds files that are not from a shard run \(notes\.md/,
  );
  assert.deepEqual(await listing(other), ["notes.md"]);
  // Nothing usable: every file rejected → error, no output; --strict stops at the first reject.
  const junk = join(tmp, "junk");
  await copyFixture("bad/zero.png", join(junk, "x", "zero.png"));
  await copyFixture("bad/notimage.jpg", join(junk, "x", "text.jpg"));
  await assert.rejects(
    shard({ input: junk, out: join(tmp, "o2") }),
    /no usable images in .*junk: all 2 inputs were rejected \(first: x\/\S+: /,
  );
  assert.deepEqual(await listing(join(tmp, "o2")), ["<missing>"]);
  await copyFixture("decode/grey8.png", join(junk, "x", "ok.png"));
  await copyFixture("decode/rgb8.png", join(junk, "x", "ok2.png"));
  const lenient = await shard({
    input: junk,
    out: join(tmp, "o3"),
    "val-fraction": 0,
    "per-shard": 1,
  });
  assert.equal(lenient.manifest.counts.rejected, 2);
  await assert.rejects(
    shard({ input: junk, out: join(tmp, "o4"), strict: true, "per-shard": 1 }),
    /peco: shard: x\/(zero\.png: empty file|text\.jpg: not a PNG or JPEG).*\(--strict\)$/,
  );
  assert.deepEqual(await listing(join(tmp, "o4")), ["<missing>"]);
  await Deno.remove(tmp, { recursive: true });
});

Deno.test("reader: index, range, shard, chunk reads agree; damaged shards are named", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "peco-shard-" });
  const out = join(tmp, "out");
  await shard({ input: "mnist", out, limit: 23, "per-shard": 5, size: 9 });
  const { splits, manifest } = await openShards(out);
  const train = splits.train;
  assert.deepEqual([train.count, train.shards.length, train.recordBytes], [23, 5, 81]);
  const whole = await train.readRange(0, 23); // spans all five shards
  for (const i of [0, 4, 5, 22]) {
    const r = await train.read(i);
    assert.deepEqual(r.pixels, whole.pixels.subarray(i * 81, (i + 1) * 81));
    assert.equal(r.label, whole.labels[i]);
  }
  const s2 = await train.readShard(2);
  assert.deepEqual([s2.start, s2.count], [10, 5]);
  assert.deepEqual(s2.pixels, whole.pixels.subarray(10 * 81, 15 * 81));
  const chunks = [];
  for await (const c of train.chunks(7, { shardOrder: [4, 0, 1, 2, 3] })) chunks.push(c);
  assert.deepEqual(chunks.map((c) => c.count), [7, 7, 7, 2]);
  assert.equal(chunks[0].start, -1); // shard 4 (3 records) then shard 0: not consecutive
  assert.deepEqual(
    chunks[0].labels,
    Int32Array.from([...whole.labels.subarray(20), ...whole.labels.subarray(0, 4)]),
  );
  assert.deepEqual(chunks[3].pixels, whole.pixels.subarray(18 * 81, 20 * 81));
  await assert.rejects(train.readRange(20, 24), /range \[20, 24\) out of \[0, 23\]/);
  assert.equal(manifest.splits.train.count, 23);

  // Tampered (same size): found by sha256 before any record of that shard is handed out.
  const copy = join(tmp, "tampered");
  await Deno.mkdir(copy);
  for await (const e of Deno.readDir(out)) {
    await Deno.copyFile(join(out, e.name), join(copy, e.name));
  }
  const target = join(copy, "train-00001.shard");
  const bytes = await Deno.readFile(target);
  bytes[100] ^= 1;
  await Deno.writeFile(target, bytes);
  const t = await openShards(copy); // sizes fine
  const first = await t.splits.train.read(0); // shard 0 is intact
  assert.deepEqual(first.pixels, whole.pixels.subarray(0, 81));
  const named = /train-00001\.shard: sha256 [0-9a-f]{16}… does not match the manifest's/;
  await assert.rejects(t.splits.train.read(6), named);
  await assert.rejects(t.splits.train.readShard(1), named);
  await assert.rejects(
    (async () => {
      for await (const _ of t.splits.train.chunks(4)) { /* consume */ }
    })(),
    named,
  );
  await assert.rejects(openShards(copy, { verify: "eager" }), named);
  // Truncated: found at open from the size.
  await Deno.truncate(target, bytes.length - 10);
  await assert.rejects(
    openShards(copy),
    /train-00001\.shard: 450 bytes, manifest says 460 \(truncated\)/,
  );
  await Deno.remove(target);
  await assert.rejects(openShards(copy), /train-00001\.shard: cannot open/);
  await Deno.remove(join(copy, "manifest.json"));
  await assert.rejects(
    openShards(copy),
    /no manifest\.json \(not a shard folder, or an unfinished run\)/,
  );
  await Deno.remove(tmp, { recursive: true });
});

const stage = join(repo, "tasks/shard.ts");

/** `deno run` of the stage with exactly the permissions its launcher grants. */
function sandboxed(flags: Flags): Deno.Command {
  const args = [...argv(flags), "--quiet"];
  return new Deno.Command("deno", {
    args: ["run", ...permissionFlags(shardAccess(options(flags))), stage, ...args],
    cwd: repo,
    stdout: "piped",
    stderr: "piped",
  });
}

Deno.test("killed mid-run: nothing looks complete; a rerun resumes to the end", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "peco-shard-" });
  const args = (out: string): Flags => ({
    input: "mnist",
    out: join(tmp, out),
    limit: 1500,
    size: 40,
    channels: 3,
    "per-shard": 100,
  });
  const child = sandboxed(args("killed")).spawn();
  const journal = join(tmp, "killed", ".shard-journal.json");
  for (let i = 0; i < 12000; i++) { // up to a minute on a loaded machine
    if (await Deno.stat(journal).then(() => true, () => false)) break;
    await new Promise((r) => setTimeout(r, 5));
  }
  child.kill("SIGKILL");
  await child.output();
  const names = await listing(join(tmp, "killed"));
  assert.ok(!names.includes("manifest.json"), `killed before the end: ${names.length} files`);
  await assert.rejects(openShards(join(tmp, "killed")), /no manifest\.json/);
  // Every file with a shard name is a complete shard: its header's count matches its size.
  for (const n of names.filter((n) => n.endsWith(".shard"))) {
    const b = await Deno.readFile(join(tmp, "killed", n));
    const count = new DataView(b.buffer).getUint32(12, true);
    assert.equal(b.length, 32 + count * 4800 + count * 4, n);
  }
  // A copy with a damaged journalled shard restarts cleanly instead of resuming.
  const damaged = join(tmp, "damaged");
  await Deno.mkdir(damaged);
  for (const n of names) await Deno.copyFile(join(tmp, "killed", n), join(damaged, n));
  await Deno.writeFile(join(damaged, "train-00000.shard"), new Uint8Array(10));

  const resumed = await runShard(options(args("killed")), { log: quietLog });
  assert.equal(resumed.status, "resumed");
  const logs: string[] = [];
  const restarted = await runShard(options(args("damaged")), { log: (l) => logs.push(l) });
  assert.equal(restarted.status, "written");
  assert.match(logs.join("\n"), /fail verification; restarting cleanly/);
  const clean = await runShard(options(args("clean")), { log: quietLog });
  const shardsOf = (m: ShardManifest) => JSON.stringify(m.splits);
  assert.equal(shardsOf(resumed.manifest), shardsOf(clean.manifest));
  assert.equal(shardsOf(restarted.manifest), shardsOf(clean.manifest));
  // Same files as the clean run: no journal or temporary file is left behind.
  assert.deepEqual(await listing(join(tmp, "killed")), await listing(join(tmp, "clean")));
  await openShards(join(tmp, "killed"), { verify: "eager" });
  await Deno.remove(tmp, { recursive: true });
});

Deno.test("least privilege: deno task shard works; its sandbox denies access outside", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "peco-shard-" });
  const input = join(tmp, "in"), out = join(tmp, "out");
  await copyFixture("decode/rgb8.png", join(input, "a", "1.png"));
  await copyFixture("decode/grey.jpg", join(input, "b", "2.jpg"));
  await Deno.writeTextFile(join(tmp, "secret.txt"), "outside the input");
  // As configured in deno.json: the launcher re-runs the stage with narrow permissions.
  const task = await new Deno.Command("deno", {
    args: ["task", "-q", "shard", "--input", input, "--out", out, "--size", "4", "--quiet"],
    cwd: repo,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(task.stdout) + new TextDecoder().decode(task.stderr);
  assert.equal(task.code, 0, text);
  assert.match(text, /^shard: written: 2 train images \[3,4,4\] in /m);
  assert.equal((await openShards(out, { verify: "eager" })).manifest.counts.images, 2);

  // The flags the launcher computes grant exactly: read input + out, write out (and read its
  // decoding workers' module, which Deno checks when it starts them).
  const access = shardAccess(options({ input, out }));
  const [worker] = moduleReadPaths();
  assert.deepEqual(access, { read: [input, out, worker], write: [out] });
  const flags = permissionFlags(access);
  assert.deepEqual(flags, [
    "--no-prompt",
    `--allow-read=${input},${out},${worker}`,
    `--allow-write=${out}`,
  ]);
  // What Deno refuses under these flags (reads outside, writes outside, env, net, run, ffi) is
  // tested for every stage in tests/stage_sandbox_test.ts.
  await Deno.remove(tmp, { recursive: true });
});
