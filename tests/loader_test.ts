import { assert, assertClose, assertRejects } from "./util.ts";
import {
  type HostBatch,
  Loader,
  type LoaderOptions,
  memorySource,
  type RecordSource,
  shardSource,
} from "../lib/data/loader.ts";
import { MaskingGenerator } from "../lib/data/masking.ts";
import { MANIFEST_FILE, openShards, ShardWriter } from "../lib/data/shards.ts";
import { workerShardSource } from "../lib/data/shard_reads.ts";
import { tidy } from "../lib/tensor/mod.ts";

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

// Records of [1, 3, 5] (15 bytes, an odd size) whose bytes and label identify the record.
const DIMS = { channels: 1, height: 3, width: 5 };
const RECORD = 15;
const byteOf = (record: number, k: number) => (record * 7 + k * 3) & 255;

function source(records: number, chunkSize: number): RecordSource {
  const pixels = new Uint8Array(records * RECORD);
  for (let r = 0; r < records; r++) {
    for (let k = 0; k < RECORD; k++) pixels[r * RECORD + k] = byteOf(r, k);
  }
  const labels = Int32Array.from({ length: records }, (_, r) => 1000 + r);
  return memorySource(pixels, labels, { ...DIMS, chunkSize });
}

/** A source that waits before each read and counts reads in flight. */
function slowSource(inner: RecordSource, delayMs: number): RecordSource & { maxInFlight: number } {
  let inFlight = 0;
  const wrapped = {
    ...inner,
    maxInFlight: 0,
    async readChunk(index: number) {
      inFlight++;
      wrapped.maxInFlight = Math.max(wrapped.maxInFlight, inFlight);
      await sleep(delayMs);
      inFlight--;
      return inner.readChunk(index);
    },
  };
  return wrapped;
}

async function collect(batches: AsyncIterable<HostBatch>): Promise<HostBatch[]> {
  const out = [];
  for await (const b of batches) out.push(b);
  return out;
}

function checkContents(batch: HostBatch): void {
  for (let i = 0; i < batch.n; i++) {
    const r = batch.records[i];
    assert(batch.labels[i] === 1000 + r, `label of record ${r}: ${batch.labels[i]}`);
    for (let k = 0; k < RECORD; k++) {
      assert(batch.pixels[i * RECORD + k] === byteOf(r, k), `byte ${k} of record ${r}`);
    }
  }
}

const base: LoaderOptions = { batchSize: 4, seed: 11, window: 2, dropLast: false };

Deno.test("loader: each epoch serves every record once, shuffled across chunks, reshuffled per epoch", async () => {
  // 47 records in chunks of 7 (the last chunk holds 5).
  const loader = new Loader(source(47, 7), base);
  assert(loader.count === 47 && loader.stepsPerEpoch === 12, `count ${loader.count}`);
  const epochs: number[][] = [];
  for (const e of [0, 1]) {
    const batches = await collect(loader.epoch(e));
    assert(batches.length === 12, `epoch ${e}: ${batches.length} batches`);
    assert(batches.slice(0, 11).every((b) => b.n === 4) && batches[11].n === 3, "batch sizes");
    batches.forEach((b, i) => {
      assert(b.epoch === e && b.step === i, `batch ${i} numbered ${b.epoch}/${b.step}`);
      checkContents(b);
    });
    const served = batches.flatMap((b) => Array.from(b.records));
    assert(
      [...served].sort((a, b) => a - b).every((r, i) => r === i),
      `epoch ${e} did not serve 0..46 once each`,
    );
    assert(served.join() === Array.from(loader.order(e)).join(), "order() differs from batches");
    epochs.push(served);
  }
  assert(epochs[0].join() !== epochs[1].join(), "epoch 1 repeats epoch 0's order");
  // Shuffled across chunks: some batch holds records of two chunks, and order is not storage order.
  const chunkOf = (r: number) => Math.floor(r / 7);
  assert(
    epochs[0].some((_, i) =>
      i % 4 === 0 && new Set(epochs[0].slice(i, i + 4).map(chunkOf)).size > 1
    ),
    "no batch mixes chunks",
  );
  assert(epochs[0].some((r, i) => r !== i), "records served in storage order");
  // Same seed → same orders; another seed → another order.
  const again = new Loader(source(47, 7), base);
  assert(Array.from(again.order(1)).join() === epochs[1].join(), "same seed, different order");
  const other = new Loader(source(47, 7), { ...base, seed: 12 });
  assert(Array.from(other.order(0)).join() !== epochs[0].join(), "different seeds, same order");
  // Without shuffling, storage order; with dropLast the partial batch goes.
  const plain = new Loader(source(47, 7), { ...base, shuffle: false, dropLast: true });
  const plainBatches = await collect(plain.epoch(0));
  assert(plainBatches.length === 11 && plainBatches.every((b) => b.n === 4), "dropLast batches");
  assert(
    plainBatches.flatMap((b) => Array.from(b.records)).every((r, i) => r === i),
    "unshuffled loader is not in storage order",
  );
});

Deno.test("loader: memory stays bounded by 2·window chunks whatever the data set size", async () => {
  for (const chunks of [12, 60]) {
    const loader = new Loader(source(chunks * 5, 5), { ...base, window: 3, batchSize: 3 });
    const batches = await collect(loader.epoch(0));
    assert(
      batches.length === Math.ceil((chunks * 5) / 3),
      `${chunks} chunks: ${batches.length} batches`,
    );
    assert(
      loader.stats.chunkReads === chunks,
      `${chunks} chunks read ${loader.stats.chunkReads} times`,
    );
    assert(
      loader.stats.peakResidentRecords <= 2 * 3 * 5,
      `${chunks} chunks: ${loader.stats.peakResidentRecords} records resident, bound 30`,
    );
  }
  // Streaming three epochs reads each chunk once per epoch and keeps the same bound, reading
  // ahead across the epoch boundaries.
  const loader = new Loader(source(60, 5), { ...base, window: 3, batchSize: 3 });
  const batches = await collect(loader.batches({ epochs: 3 }));
  assert(batches.length === 60 && batches[59].epoch === 2, `${batches.length} batches`);
  assert(loader.stats.chunkReads === 36, `${loader.stats.chunkReads} chunk reads in 3 epochs`);
  assert(loader.stats.peakResidentRecords <= 30, `${loader.stats.peakResidentRecords} resident`);
});

Deno.test("loader: prefetch prepares the next batches while the consumer works, within its bound", async () => {
  const depth = 2;
  const src = slowSource(source(40, 4), 2);
  const loader = new Loader(src, { ...base, window: 2, prefetch: depth });
  let k = 0;
  let ranAhead = 0;
  for await (const batch of loader.epoch(0)) {
    assert(batch.step === k, `batch ${batch.step} arrived as ${k}`);
    const prepared = loader.stats.batchesPrepared;
    assert(prepared <= k + 1 + depth, `batch ${k}: ${prepared} prepared, bound ${k + 1 + depth}`);
    await sleep(30); // the training step
    if (loader.stats.batchesPrepared >= Math.min(k + 2, loader.stepsPerEpoch)) ranAhead++;
    k++;
  }
  assert(k === 10, `${k} batches`);
  // The producer must have used (nearly) every consumer step to prepare the next batch.
  assert(ranAhead >= k - 1, `the next batch was ready after only ${ranAhead} of ${k} steps`);
  // Reads of the next window overlap the current one.
  assert(src.maxInFlight >= 2, `at most ${src.maxInFlight} reads in flight`);
});

Deno.test("loader: draws depend on seed, epoch and step only (prefetch depth, resuming)", async () => {
  const masking = new MaskingGenerator({ height: 3, width: 5 });
  const options = { ...base, augment: {}, masking };
  const deep = await collect(new Loader(source(30, 4), { ...options, prefetch: 4 }).batches({
    epoch: 0,
    epochs: 2,
  }));
  const none = await collect(new Loader(source(30, 4), { ...options, prefetch: 0 }).batches({
    epoch: 0,
    epochs: 2,
  }));
  assert(deep.length === 16 && none.length === 16, `${deep.length}, ${none.length} batches`);
  assert(deep[8].epoch === 1 && deep[8].step === 0, "second epoch numbering");
  const key = (b: HostBatch) =>
    JSON.stringify([b.epoch, b.step, Array.from(b.records), b.augs, Array.from(b.masks ?? [])]);
  assert(deep.every((b, i) => key(b) === key(none[i])), "prefetch depth changed the batches");
  assert(deep[0].augs.some((a) => a.height !== 3 || a.width !== 5), "augment drew no crops");
  assert(deep[0].masks!.some((v) => v === 1), "no patch masked");
  assert(key(deep[0]) !== key(deep[1]), "two batches drew the same");
  // Resuming at epoch 1, step 3 continues exactly where an uninterrupted run would be.
  const resumed = new Loader(source(30, 4), options).batches({ epoch: 1, step: 3, epochs: 1 });
  const rest = await collect(resumed);
  assert(rest.length === 5, `${rest.length} batches after resuming`);
  assert(rest.every((b, i) => key(b) === key(deep[8 + 3 + i])), "resumed batches differ");
  // The same with dropLast, which cuts the epoch's last partial batch.
  const cut = { ...options, dropLast: true };
  const whole = await collect(new Loader(source(30, 4), cut).epoch(2));
  const tail = await collect(
    new Loader(source(30, 4), cut).batches({ epoch: 2, step: 5, epochs: 1 }),
  );
  assert(whole.length === 7 && tail.length === 2, `${whole.length} and ${tail.length} batches`);
  assert(tail.every((b, i) => key(b) === key(whole[5 + i])), "resumed dropLast batches differ");
});

Deno.test("loader: toGpu uploads packed uint8, renders views from one box, labels and masks", async () => {
  const masking = new MaskingGenerator({ height: 2, width: 3 });
  const plain = new Loader(source(9, 4), { ...base, batchSize: 3, masking, augment: false });
  const [batch] = await collect(plain.epoch(0));
  const gpuBatch = plain.toGpu(batch, [{ height: 3, width: 5 }, { height: 6, width: 10 }]);
  assert(gpuBatch.views[1].shape.join() === "3,1,6,10", `view shape [${gpuBatch.views[1].shape}]`);
  assertClose(await gpuBatch.views[0].toArray(), Array.from(batch.pixels, (v) => v / 255), {
    atol: 1e-7,
    what: "unaugmented view",
  });
  assert(gpuBatch.labels.dtype === "i32", "labels dtype");
  assertClose(await gpuBatch.labels.toArray(), Array.from(batch.labels), { atol: 0, rtol: 0 });
  assertClose(await gpuBatch.masks!.toArray(), Array.from(batch.masks!), { atol: 0, rtol: 0 });
  gpuBatch.dispose();
  assert(gpuBatch.labels.disposed && gpuBatch.views[0].disposed, "dispose left tensors");

  // With augmentation, two views of the same size but different normalisation must be the same
  // crop: view1 = (view0·0.5 + 0.25 − 0.1) / 2 exactly when both come from one box.
  const aug = new Loader(source(9, 4), { ...base, batchSize: 3, augment: {} });
  const [augBatch] = await collect(aug.epoch(0));
  const values = await tidy(() => {
    const g = aug.toGpu(augBatch, [
      { height: 4, width: 4, mean: [0.25], std: [0.5] },
      { height: 4, width: 4, mean: [0.1], std: [2] },
    ]);
    return g.views;
  }).reduce(async (acc, t) => [...await acc, await t.toArray()], Promise.resolve([] as number[][]));
  assertClose(values[1], values[0].map((v) => (v * 0.5 + 0.25 - 0.1) / 2), {
    atol: 1e-5,
    what: "second view of the same crop",
  });
});

/** A shard folder (train split, minimal manifest) of `count` records, `perShard` per shard. */
async function writeRecords(dir: string, count: number, perShard: number): Promise<void> {
  const writer = new ShardWriter(dir, "train", DIMS, perShard);
  for (let r = 0; r < count; r++) {
    await writer.add(Uint8Array.from({ length: RECORD }, (_, k) => byteOf(r, k)), 1000 + r);
  }
  await writer.finish();
  const manifest = {
    stage: "shard",
    image: DIMS,
    classes: [],
    splits: { train: { count, classCounts: [], shards: writer.shards } },
  };
  await Deno.writeTextFile(`${dir}/${MANIFEST_FILE}`, JSON.stringify(manifest));
}

Deno.test("loader: streams a shard folder written by ShardWriter through shardSource", async () => {
  const dir = await Deno.makeTempDir({ prefix: "peco-loader-" });
  try {
    await writeRecords(dir, 23, 6);
    const { splits } = await openShards(dir);
    const loader = new Loader(shardSource(splits.train), { ...base, batchSize: 5, window: 2 });
    assert(loader.count === 23, `count ${loader.count}`);
    const batches = await collect(loader.epoch(3));
    batches.forEach(checkContents);
    const served = batches.flatMap((b) => Array.from(b.records)).sort((a, b) => a - b);
    assert(served.length === 23 && served.every((r, i) => r === i), "records of the shards");
    assert(loader.stats.chunkReads === 4, `${loader.stats.chunkReads} shard reads for 4 shards`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("loader: shard reads in Workers serve the same batches; a damaged shard is named", async () => {
  const dir = await Deno.makeTempDir({ prefix: "peco-loader-" });
  try {
    await writeRecords(dir, 22, 4);
    const masking = new MaskingGenerator({ height: 2, width: 2 });
    const options = { ...base, batchSize: 3, window: 2, augment: {}, masking };
    const here = new Loader(shardSource((await openShards(dir)).splits.train), options);
    const expected = await collect(here.batches({ epochs: 2 }));
    for (const workers of [1, 3]) {
      const source = workerShardSource((await openShards(dir)).splits.train, { workers });
      try {
        const got = await collect(new Loader(source, options).batches({ epochs: 2 }));
        assert(
          JSON.stringify(got) === JSON.stringify(expected),
          `${workers} workers: same batches`,
        );
      } finally {
        source.close();
      }
    }
    // One flipped byte in shard 2: its first read (in a worker) fails, naming the file.
    const path = `${dir}/train-00002.shard`;
    const bytes = await Deno.readFile(path);
    bytes[40] ^= 1;
    await Deno.writeFile(path, bytes);
    const source = workerShardSource((await openShards(dir)).splits.train, { workers: 2 });
    try {
      await assertRejects(
        () => collect(new Loader(source, options).epoch(0)),
        /^peco: shards: .*train-00002\.shard: sha256 .* does not match the manifest/,
      );
    } finally {
      source.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("loader: bad input throws clear errors", async () => {
  const src = source(10, 4);
  const throwsSync = (fn: () => unknown, pattern: RegExp) =>
    assertRejects(() => Promise.resolve().then(fn), pattern);
  await throwsSync(() => new Loader(src, { batchSize: 0, seed: 1 }), /loader: batch size 0/);
  await throwsSync(
    () => new Loader(src, { batchSize: 11, seed: 1 }),
    /loader: 10 records make no batch of 11 \(dropLast/,
  );
  await throwsSync(
    () => new Loader(src, { batchSize: 2, seed: 1, window: 0 }),
    /window 0 must be ≥ 1/,
  );
  await throwsSync(
    () => memorySource(new Uint8Array(10), new Int32Array(2), { ...DIMS, chunkSize: 4 }),
    /memorySource: 10 bytes for 2 records of \[1,3,5\]/,
  );
  const broken: RecordSource = {
    ...src,
    async readChunk(index: number) {
      const chunk = await src.readChunk(index);
      return index === 1 ? { ...chunk, pixels: chunk.pixels.subarray(1) } : chunk;
    },
  };
  const loader = new Loader(broken, { batchSize: 2, seed: 1, shuffle: false, window: 1 });
  await assertRejects(
    () => collect(loader.epoch(0)),
    /loader: chunk 1 gave 59 pixel bytes and 4 labels, expected 4 records of \[1,3,5\]/,
  );
});
