// Shard stage throughput (CPU only): images/s through the whole stage (read, decode, resize,
// shard encoding, sha256, atomic writes, manifest) for 256×256 JPEGs → 224 centre crop and for
// MNIST. Without write permission (the stage writes shards) it times the same per-image work in
// memory instead — decode, resize, sha256 — and says so in `mode`.

import jpeg from "jpeg-js";
import { join } from "node:path";
import { parseOptions } from "../lib/cli/args.ts";
import { decodeImage } from "../lib/data/decode.ts";
import { fitImage } from "../lib/data/resize.ts";
import { loadItem, openSource, planSplits } from "../lib/data/sources.ts";
import { sha256Hex } from "../lib/io/hash.ts";
import { runShard, shardCommand } from "../tasks/shard.ts";
import type { BenchCase, BenchResult } from "./harness.ts";

const JPEGS = 48;
const JPEG_SIDE = 256;

/** A photo-like 256×256 JPEG: smooth colour fields, edges and noise (quality 90). */
function syntheticJpeg(seed: number): Uint8Array {
  const n = JPEG_SIDE;
  const data = new Uint8Array(n * n * 4);
  let s = seed * 2654435761 >>> 0;
  const noise = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) >>> 24) / 16;
  for (let y = 0; y < n; y++) {
    for (let x = 0; x < n; x++) {
      const i = (y * n + x) * 4;
      const edge = (x + 2 * y + seed * 17) % 97 < 40 ? 60 : 0;
      data[i] = (x + seed * 13) % 200 + edge / 2 + noise();
      data[i + 1] = (y * 0.7 + 30 * Math.sin((x + seed) / 19)) % 200 + 30 + noise();
      data[i + 2] = 120 + 80 * Math.cos((x - y) / 23) - edge / 3 + noise();
      data[i + 3] = 255;
    }
  }
  return new Uint8Array(jpeg.encode({ data, width: n, height: n }, 90).data);
}

const canWrite = () => Deno.permissions.querySync({ name: "write" }).state === "granted";

function result(name: string, images: number, ms: number, mode: string): BenchResult {
  return { name, ms: ms / images, items_per_s: (images * 1000) / ms, images, mode };
}

/** Times one full stage run into a fresh folder (after an untimed warm-up run). */
async function timeStage(argv: string[], warmArgv: string[], tmp: string): Promise<number> {
  const run = (out: string, extra: string[]) =>
    runShard(parseOptions(shardCommand, [...extra, "--out", join(tmp, out), "--quiet"])!, {
      log: () => {},
    });
  await run("warm", warmArgv);
  const start = performance.now();
  await run("timed", argv);
  return performance.now() - start;
}

export const cases: BenchCase[] = [
  {
    name: `shard jpeg ${JPEG_SIDE}²→224 crop (${JPEGS} images)`,
    async run() {
      const files = Array.from({ length: JPEGS }, (_, i) => syntheticJpeg(i + 1));
      if (!canWrite()) {
        const start = performance.now();
        for (const bytes of files) {
          sha256Hex(fitImage(decodeImage(bytes, { channels: 3 }), 224, "crop"));
        }
        return result(this.name, JPEGS, performance.now() - start, "in memory (no --allow-write)");
      }
      const tmp = await Deno.makeTempDir({ prefix: "peco-bench-shard-" });
      try {
        for (let i = 0; i < JPEGS; i++) {
          await Deno.mkdir(join(tmp, "in", `c${i % 2}`), { recursive: true });
          await Deno.writeFile(join(tmp, "in", `c${i % 2}`, `${i}.jpg`), files[i]);
        }
        const common = ["--input", join(tmp, "in"), "--size", "224", "--channels", "3"];
        const ms = await timeStage(
          [...common, "--val-fraction", "0", "--per-shard", "64"],
          [...common, "--val-fraction", "0", "--limit", "4"],
          tmp,
        );
        return result(this.name, JPEGS, ms, "stage");
      } finally {
        await Deno.remove(tmp, { recursive: true });
      }
    },
  },
  {
    name: "shard mnist 28² (70000 images)",
    async run() {
      if (!canWrite()) {
        const source = await openSource({ kind: "mnist" });
        const plan = planSplits(source, { valFraction: 0, seed: 0 });
        const items = [...plan.train, ...plan.val];
        const o = { size: 28, channels: 1 as const, resize: "crop" as const, maxPixels: 1e6 };
        const start = performance.now();
        for (const item of items) sha256Hex(await loadItem(item, o));
        return result(
          this.name,
          items.length,
          performance.now() - start,
          "in memory (no --allow-write)",
        );
      }
      const tmp = await Deno.makeTempDir({ prefix: "peco-bench-shard-" });
      try {
        const ms = await timeStage(
          ["--input", "mnist"],
          ["--input", "mnist", "--limit", "500"],
          tmp,
        );
        return result(this.name, 70000, ms, "stage");
      } finally {
        await Deno.remove(tmp, { recursive: true });
      }
    },
  },
];

if (import.meta.main) {
  for (const c of cases) console.log(JSON.stringify(await c.run()));
}
