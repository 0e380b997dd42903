// Loader throughput: images per second delivered to the GPU as two augmented views (the ViT view
// and the tokenizer view of one crop), from a temporary shard folder written with ShardWriter and
// read back through the verified shard reader. Also reports the host side alone (read, shuffle,
// batch assembly, augmentation and mask draws) to show which side limits: `host_images_per_s`
// with shards read on the main thread, and `host_w<N>` with shards read and checked by N Workers
// (lib/data/shard_reads.ts), each for a first epoch (every shard hashed on its first read) and,
// `host_warm_*`, a second one; `main_cpu_ms*`: the main thread's CPU ms per image in the first
// epoch, the bound on the host rate whatever the worker count (holds on a busy machine).

import { gpu } from "../lib/gpu/device.ts";
import { type GpuBatch, Loader, type RecordSource, shardSource } from "../lib/data/loader.ts";
import { defaultWorkers, workerShardSource } from "../lib/data/shard_reads.ts";
import { MaskingGenerator } from "../lib/data/masking.ts";
import { MANIFEST_FILE, openShards, ShardWriter } from "../lib/data/shards.ts";
import type { ViewSpec } from "../lib/data/augment.ts";
import { Rng } from "../lib/tensor/init.ts";
import { tidy } from "../lib/tensor/mod.ts";
import { type BenchCase, type BenchResult, cpuTimes } from "./harness.ts";

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
    images: 1024,
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

function makeLoader(c: LoaderCase, source: RecordSource): Loader {
  return new Loader(source, {
    batchSize: c.batchSize,
    seed: 1,
    augment: {},
    masking: new MaskingGenerator({ height: c.patchGrid, width: c.patchGrid }),
  });
}

/**
 * Host side alone: images/s of prepared batches (reads, shuffling, copies, draws) per epoch, and
 * the CPU ms per image of the first epoch: the main thread's (null where not measurable) and the
 * whole process's (Workers and I/O threads included).
 */
async function hostRates(
  c: LoaderCase,
  source: RecordSource,
  epochs: number,
): Promise<{ rates: number[]; mainCpu: number | null; cpu: number }> {
  const loader = makeLoader(c, source);
  const rates = [];
  let mainCpu: number | null = null, cpu = 0;
  for (let epoch = 0; epoch < epochs; epoch++) {
    const start = performance.now(), before = cpuTimes();
    let images = 0;
    for await (const batch of loader.epoch(epoch)) images += batch.n;
    rates.push((images / (performance.now() - start)) * 1000);
    const after = cpuTimes();
    if (epoch > 0) continue;
    cpu = (after.process - before.process) / images;
    if (before.main !== null && after.main !== null) mainCpu = (after.main - before.main) / images;
  }
  return { rates, mainCpu, cpu };
}

/** Host rates with shards read by 1, 2, … and all-cores Workers (fresh: first reads hash). */
async function workerHostRates(c: LoaderCase, dir: string): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  const counts = [...new Set([1, 2, defaultWorkers()])];
  for (const workers of counts) {
    const { splits } = await openShards(dir);
    const source = workerShardSource(splits.train, { workers });
    try {
      await source.warm(); // worker start-up (module loading) is not part of the rate
      const { rates: [first, warm], mainCpu, cpu } = await hostRates(c, source, 2);
      out[`host_w${workers}`] = first;
      out[`host_warm_w${workers}`] = warm;
      out[`cpu_ms_w${workers}`] = cpu;
      if (mainCpu !== null) out[`main_cpu_ms_w${workers}`] = mainCpu;
    } finally {
      source.close();
    }
  }
  return out;
}

async function run(c: LoaderCase): Promise<BenchResult> {
  const dir = await writeShards(c);
  try {
    const { rates: [hostRate, hostWarm], mainCpu, cpu } = await hostRates(
      c,
      shardSource((await openShards(dir)).splits.train),
      2,
    );
    const workers = await workerHostRates(c, dir);
    const { splits } = await openShards(dir);
    const loader = makeLoader(c, shardSource(splits.train));
    const recorder = gpu().recorder;
    // At most 16 timed batches (the host side's figures need more images than the GPU's).
    const batches = Math.min(2 * loader.stepsPerEpoch, 17);
    let start = 0;

    // Delivered: batches uploaded and rendered to two views on the GPU, one submit per batch as a
    // training step would, GPU synced at the end. The first batch (pipeline compiles) is untimed.
    let images = 0;
    let timed = false;
    let served = 0;
    for await (const batch of loader.batches({ epoch: 1, epochs: 2 })) {
      if (served++ === batches) break;
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
      ms: ms / (batches - 1),
      items_per_s: (images / ms) * 1000,
      host_images_per_s: hostRate,
      host_warm: hostWarm,
      cpu_ms: cpu,
      ...(mainCpu !== null ? { main_cpu_ms: mainCpu } : {}),
      ...workers,
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
