// Loader throughput: images per second delivered to the GPU as two augmented views (the ViT view
// and the tokenizer view of one crop), from a temporary shard folder written with ShardWriter and
// read back through the verified shard reader. Also reports the host side alone (read, shuffle,
// batch assembly, augmentation and mask draws) to show which side limits.

import { gpu } from "../lib/gpu/device.ts";
import { type GpuBatch, Loader, shardSource } from "../lib/data/loader.ts";
import { MaskingGenerator } from "../lib/data/masking.ts";
import { MANIFEST_FILE, openShards, ShardWriter } from "../lib/data/shards.ts";
import type { ViewSpec } from "../lib/data/augment.ts";
import { Rng } from "../lib/tensor/init.ts";
import { tidy } from "../lib/tensor/mod.ts";
import type { BenchCase, BenchResult } from "./harness.ts";

interface LoaderCase {
  name: string;
  channels: number;
  size: number;
  images: number;
  perShard: number;
  batchSize: number;
  views: ViewSpec[];
  patchGrid: number;
  slow?: boolean;
}

const IMAGENET = { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] };

const configs: LoaderCase[] = [
  {
    name: "loader 28² grey, batch 128 → 2 views 28²",
    channels: 1,
    size: 28,
    images: 4096,
    perShard: 1024,
    batchSize: 128,
    views: [{ height: 28, width: 28, mean: [0.5], std: [0.5] }, { height: 28, width: 28 }],
    patchGrid: 7,
  },
  {
    name: "loader 224² RGB, batch 32 → 2 views 224²",
    channels: 3,
    size: 224,
    images: 256,
    perShard: 64,
    batchSize: 32,
    views: [{ height: 224, width: 224, ...IMAGENET }, { height: 224, width: 224 }],
    patchGrid: 14,
    slow: true,
  },
];

/** Writes `images` random images as shards plus a minimal manifest; returns the folder. */
async function writeShards(c: LoaderCase): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "peco-bench-loader-" });
  const geometry = { channels: c.channels, height: c.size, width: c.size };
  const writer = new ShardWriter(dir, "train", geometry, c.perShard);
  const rng = new Rng(1);
  const record = new Uint8Array(c.channels * c.size * c.size);
  for (let i = 0; i < c.images; i++) {
    // Smooth random content (a gradient plus noise) rather than constant bytes.
    const base = rng.int(200);
    for (let k = 0; k < record.length; k++) record[k] = (base + (k % 53) + (rng.next() & 7)) & 255;
    await writer.add(record, i % 10);
  }
  await writer.finish();
  const manifest = {
    stage: "shard",
    image: geometry,
    classes: [],
    splits: { train: { count: c.images, classCounts: [], shards: writer.shards } },
  };
  await Deno.writeTextFile(`${dir}/${MANIFEST_FILE}`, JSON.stringify(manifest));
  return dir;
}

async function run(c: LoaderCase): Promise<BenchResult> {
  const dir = await writeShards(c);
  try {
    const { splits } = await openShards(dir);
    const loader = new Loader(shardSource(splits.train), {
      batchSize: c.batchSize,
      seed: 1,
      augment: {},
      masking: new MaskingGenerator({ height: c.patchGrid, width: c.patchGrid }),
    });
    const recorder = gpu().recorder;
    const steps = loader.stepsPerEpoch;

    // Host side alone: one epoch of prepared batches (reads, shuffling, copies, draws).
    let start = performance.now();
    let hostImages = 0;
    for await (const batch of loader.epoch(0)) hostImages += batch.n;
    const hostMs = performance.now() - start;

    // Delivered: batches uploaded and rendered to two views on the GPU, one submit per batch as a
    // training step would, GPU synced at the end. The first batch (pipeline compiles) is untimed.
    let images = 0;
    let timed = false;
    for await (const batch of loader.batches({ epoch: 1, epochs: 2 })) {
      tidy(() => {
        const g: GpuBatch = loader.toGpu(batch, c.views);
        return g.views.length;
      });
      recorder.flush();
      if (!timed) {
        await recorder.sync();
        start = performance.now();
        timed = true;
        continue;
      }
      images += batch.n;
      // Keep the GPU at most a few batches behind, as a training loop's readbacks would.
      if (batch.step % 4 === 3) await recorder.sync();
    }
    await recorder.sync();
    const ms = performance.now() - start;
    return {
      name: c.name,
      ms: ms / (2 * steps - 1),
      items_per_s: (images / ms) * 1000,
      host_images_per_s: (hostImages / hostMs) * 1000,
      batch: c.batchSize,
    };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

export const cases: BenchCase[] = configs.map((c) => ({
  name: c.name,
  slow: c.slow,
  run: () => run(c),
}));
