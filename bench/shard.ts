// Shard stage throughput (CPU only), on photo-like 500×375 JPEGs (ImageNet's typical size,
// quality 90, made here: there is no photo data set to ship) and on MNIST:
// - "decode" cases: one thread decoding the JPEGs in memory with jpeg-js and with mozjpeg
//   (WebAssembly, lib/data/jpeg_wasm.ts) — which decoder is faster, and the single-thread jpeg-js
//   rate the stage is compared with — and the same pictures as RGB PNGs with pngjs (decodeImage);
// - "shard jpeg" cases: the whole stage (read, decode, resize to 224, shard encoding, sha256,
//   atomic writes, manifest) with 1 worker and with one per core. Each reports `vs_jpeg_js` (its
//   rate over the single-thread jpeg-js decode rate of the same run), `cpu_ms_per_image`
//   (process CPU time, all threads, per image: when it stays flat as workers are added, the work
//   parallelises without overhead, and wall-clock scaling is bounded by idle cores only) and
//   `main_cpu_ms_per_image` (the main thread's share: hashing, shard writes, bookkeeping; the
//   stage cannot go faster than one image per that much, whatever the worker count).
// Without write permission (the stage writes shards) the stage cases time decode + resize +
// sha256 in memory instead and say so in `mode`.

import jpeg from "jpeg-js";
import { Buffer } from "node:buffer";
import { PNG } from "pngjs";
import { join } from "node:path";
import { parseOptions } from "../lib/cli/args.ts";
import { decodeImage, probeImage } from "../lib/data/decode.ts";
import { defaultWorkers } from "../lib/data/item_pool.ts";
import { decodeJpegWasm } from "../lib/data/jpeg_wasm.ts";
import { fitImage } from "../lib/data/resize.ts";
import { loadItem, openSource, planSplits } from "../lib/data/sources.ts";
import { sha256Hex } from "../lib/io/hash.ts";
import { runShard, shardCommand } from "../lib/stages/shard.ts";
import { type BenchCase, type BenchResult, cpuTimes } from "./harness.ts";

const PHOTO = { width: 500, height: 375 };
/** Files in the folder; DISTINCT different pictures, each stored PHOTOS / DISTINCT times. */
const PHOTOS = 480;
const DISTINCT = 48;

/**
 * A photo-like JPEG (quality 90, ~100 KB at 500×375): sky and ground split by a wavy horizon,
 * discs of flat colour with sharp edges, smooth shading, a fine texture and sensor-like noise.
 */
export function photoLikeJpeg(seed: number, width = PHOTO.width, height = PHOTO.height) {
  const data = new Uint8Array(width * height * 4);
  let s = (seed * 2654435761) >>> 0;
  const rnd = () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32;
  const colour = () => [rnd() * 255, rnd() * 255, rnd() * 255];
  const discs = Array.from({ length: 6 }, () => ({
    x: rnd() * width,
    y: rnd() * height,
    r: 20 + rnd() * 90,
    c: colour(),
  }));
  const sky = colour(), ground = colour(), horizon = height * (0.3 + 0.4 * rnd());
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      let c = y < horizon + 15 * Math.sin(x / 40 + seed) ? sky : ground;
      for (const d of discs) if ((x - d.x) ** 2 + (y - d.y) ** 2 < d.r * d.r) c = d.c;
      const shade = 0.75 + 0.25 * Math.sin(x / 57 + y / 83 + seed);
      const texture = 10 * Math.sin(x * 0.9 + y * 0.35) * Math.sin(y * 0.7 - x * 0.2);
      const i = (y * width + x) * 4;
      for (let k = 0; k < 3; k++) data[i + k] = c[k] * shade + texture + (rnd() - 0.5) * 12;
      data[i + 3] = 255;
    }
  }
  return new Uint8Array(jpeg.encode({ data, width, height }, 90).data);
}

let photos: Promise<{ dir: string; files: Uint8Array[] }> | null = null;

/** The photo folder (two class folders), made once per bench process and removed at exit. */
function photoFolder(): Promise<{ dir: string; files: Uint8Array[] }> {
  photos ??= (async () => {
    const files = Array.from({ length: DISTINCT }, (_, i) => photoLikeJpeg(i + 1));
    const dir = await Deno.makeTempDir({ prefix: "peco-bench-photos-" });
    globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
    for (let i = 0; i < PHOTOS; i++) {
      await Deno.mkdir(join(dir, `c${i % 2}`), { recursive: true });
      await Deno.writeFile(join(dir, `c${i % 2}`, `${i}.jpg`), files[i % DISTINCT]);
    }
    return { dir, files };
  })();
  return photos;
}

const canWrite = () => Deno.permissions.querySync({ name: "write" }).state === "granted";
const cpuMs = () => cpuTimes().process;

function result(name: string, images: number, ms: number, extra: Record<string, unknown>) {
  return { name, ms: ms / images, items_per_s: (images * 1000) / ms, images, ...extra };
}

/** Images/s of one thread decoding every distinct photo `rounds` times (after a warm-up pass). */
function decodeRate(files: Uint8Array[], decode: (bytes: Uint8Array) => unknown, rounds = 3) {
  for (const f of files) decode(f);
  const start = performance.now(), cpu = cpuMs();
  for (let r = 0; r < rounds; r++) for (const f of files) decode(f);
  const ms = performance.now() - start;
  return { images: rounds * files.length, ms, cpu: cpuMs() - cpu };
}

const decoders: Record<string, (bytes: Uint8Array) => unknown> = {
  "jpeg-js": (bytes) => jpeg.decode(bytes, { useTArray: true, formatAsRGBA: false }),
  pngjs: (bytes) => decodeImage(bytes, { channels: 3 }),
  "mozjpeg wasm": (bytes) => {
    if (!decodeJpegWasm(bytes, probeImage(bytes).components)) throw new Error("mozjpeg declined");
  },
};

let jpegJsRate: Promise<number> | null = null;

/** The single-thread jpeg-js decode rate of this run (images/s), measured once. */
function jpegJsBaseline(): Promise<number> {
  jpegJsRate ??= photoFolder().then(({ files }) => {
    const r = decodeRate(files, decoders["jpeg-js"]);
    return (r.images * 1000) / r.ms;
  });
  return jpegJsRate;
}

/** The photos as 8-bit RGB PNGs (pngjs, default compression). */
async function photoPngs(): Promise<Uint8Array[]> {
  const { files } = await photoFolder();
  return files.slice(0, 16).map((bytes) => {
    const { data, width, height } = jpeg.decode(bytes, { useTArray: true, formatAsRGBA: true });
    const png = new PNG({ width, height, colorType: 2 });
    png.data = Buffer.from(data.buffer, data.byteOffset, data.length);
    return new Uint8Array(PNG.sync.write(png, { colorType: 2 }));
  });
}

function decodeCase(decoder: string): BenchCase {
  const format = decoder === "pngjs" ? "png" : "jpeg";
  return {
    name: `shard decode ${format} ${PHOTO.width}×${PHOTO.height}, 1 thread: ${decoder}`,
    async run() {
      const files = format === "png" ? await photoPngs() : (await photoFolder()).files;
      const r = decodeRate(files, decoders[decoder]);
      if (decoder === "jpeg-js") jpegJsRate ??= Promise.resolve((r.images * 1000) / r.ms);
      return result(this.name, r.images, r.ms, { cpu_ms_per_image: r.cpu / r.images });
    },
  };
}

function stageCase(workers: number, label: string): BenchCase {
  return {
    name: `shard jpeg ${PHOTO.width}×${PHOTO.height}→224 crop, ${label}`,
    async run(): Promise<BenchResult> {
      const { dir, files } = await photoFolder();
      const baseline = await jpegJsBaseline();
      if (!canWrite()) {
        const start = performance.now();
        for (const bytes of files) {
          sha256Hex(fitImage(decodeImage(bytes, { channels: 3 }), 224, "crop"));
        }
        const ms = performance.now() - start;
        return result(this.name, files.length, ms, { mode: "in memory, 1 thread (no write)" });
      }
      const tmp = await Deno.makeTempDir({ prefix: "peco-bench-shard-" });
      try {
        const run = (out: string, extra: string[]) =>
          runShard(
            parseOptions(shardCommand, [
              ...["--input", dir, "--out", join(tmp, out), "--size", "224", "--channels", "3"],
              ...["--val-fraction", "0", "--per-shard", "64", "--workers", `${workers}`],
              ...extra,
              "--quiet",
            ])!,
            { log: () => {} },
          );
        await run("warm", ["--limit", "8"]);
        const start = performance.now(), cpu = cpuTimes();
        await run("timed", []);
        const ms = performance.now() - start, end = cpuTimes();
        const rate = (PHOTOS * 1000) / ms;
        return result(this.name, PHOTOS, ms, {
          workers,
          vs_jpeg_js: rate / baseline,
          cpu_ms_per_image: (end.process - cpu.process) / PHOTOS,
          ...(end.main !== null && cpu.main !== null
            ? { main_cpu_ms_per_image: (end.main - cpu.main) / PHOTOS }
            : {}),
          mode: "stage",
        });
      } finally {
        await Deno.remove(tmp, { recursive: true });
      }
    },
  };
}

export const cases: BenchCase[] = [
  decodeCase("jpeg-js"),
  decodeCase("mozjpeg wasm"),
  decodeCase("pngjs"),
  stageCase(1, "1 worker"),
  stageCase(defaultWorkers(), `${defaultWorkers()} workers (all cores)`),
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
        const ms = performance.now() - start;
        return result(this.name, items.length, ms, { mode: "in memory (no --allow-write)" });
      }
      const tmp = await Deno.makeTempDir({ prefix: "peco-bench-shard-" });
      try {
        const run = (out: string, extra: string[]) =>
          runShard(
            parseOptions(shardCommand, ["--input", "mnist", "--out", join(tmp, out), ...extra])!,
            { log: () => {} },
          );
        await run("warm", ["--limit", "500", "--quiet"]);
        const start = performance.now();
        await run("timed", ["--quiet"]);
        return result(this.name, 70000, performance.now() - start, { mode: "stage" });
      } finally {
        await Deno.remove(tmp, { recursive: true });
      }
    },
  },
];

if (import.meta.main) {
  for (const c of cases) console.log(JSON.stringify(await c.run()));
}
