// Shard files: the on-disk data set every stage after `shard` reads, with their writer and reader.
//
// ## Format, version 1 (integers little-endian)
//
//   offset  bytes        field
//   0       8            magic "PECOSHRD" (ASCII)
//   8       4            u32 version = 1
//   12      4            u32 count     records in this shard
//   16      4            u32 channels  1 (grey) or 3 (RGB)
//   20      4            u32 height
//   24      4            u32 width
//   28      4            u32 reserved = 0                     (header: 32 bytes)
//   32      count·C·H·W  uint8 pixels, record after record, each [C, H, W] row-major
//   L       count·4      int32 labels, −1 when unlabelled,  L = 32 + round_up_4(count·C·H·W)
//
// The zero bytes between pixels and labels align the labels so they can be viewed in place as an
// Int32Array. The file size is exactly L + 4·count. Every shard of a split holds the same number
// of records (the run's --per-shard) except the last. A shard is only usable together with the
// manifest.json of its folder, which lists its record count, byte size and sha256: the reader
// checks sizes when it opens the folder and each shard's sha256 before the first record of that
// shard is handed out, and stops with an error naming the shard on any mismatch.
//
// ## Reading
//
//   const { manifest, splits } = await openShards("runs/shard"); // sizes checked here
//   const train = splits.train;                  // SplitReader: count, channels, height, width
//   const r = await train.read(17);              // { pixels: [C,H,W] uint8, label }
//   const b = await train.readRange(0, 64);      // { start, count, pixels [n,C,H,W], labels }
//   const s = await train.readShard(3);          // one whole shard, read in one piece
//   for await (const c of train.chunks(256, { shardOrder })) { … } // streaming, bounded memory

import { join } from "node:path";
import { writeFileAtomic } from "../io/atomic.ts";
import { Sha256, sha256File, sha256Hex } from "../io/hash.ts";
import { readManifest, type ShardEntry, type ShardManifest } from "./manifest.ts";

export * from "./manifest.ts";

export const SHARD_MAGIC = "PECOSHRD";
export const SHARD_VERSION = 1;
export const SHARD_HEADER_BYTES = 32;
export const SHARD_EXTENSION = ".shard";

if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {
  // Labels are viewed in place as Int32Array, which uses the host's byte order.
  throw new Error("peco: shards: a big-endian host is not supported");
}

export interface ShardGeometry {
  channels: number;
  height: number;
  width: number;
}

/** Byte layout of a shard of `count` records. */
export function shardLayout(g: ShardGeometry, count: number) {
  const recordBytes = g.channels * g.height * g.width;
  const labelsOffset = SHARD_HEADER_BYTES + Math.ceil((count * recordBytes) / 4) * 4;
  return { recordBytes, labelsOffset, bytes: labelsOffset + 4 * count };
}

/** Shard file name: split and index, e.g. "val-00012.shard" (token shards: ".tokens"). */
export function shardFileName(split: string, index: number, extension = SHARD_EXTENSION): string {
  return `${split}-${String(index).padStart(5, "0")}${extension}`;
}

export function encodeShardHeader(g: ShardGeometry, count: number): Uint8Array {
  const header = new Uint8Array(SHARD_HEADER_BYTES);
  header.set(new TextEncoder().encode(SHARD_MAGIC), 0);
  const view = new DataView(header.buffer);
  [SHARD_VERSION, count, g.channels, g.height, g.width].forEach((v, i) =>
    view.setUint32(8 + 4 * i, v, true)
  );
  return header;
}

/** Parses and checks a shard header against what the manifest promises; error names the shard. */
export function checkShardHeader(
  bytes: Uint8Array,
  g: ShardGeometry,
  count: number,
  name: string,
): void {
  const fail = (what: string): never => {
    throw new Error(`peco: shards: ${name}: ${what}`);
  };
  if (bytes.length < SHARD_HEADER_BYTES) fail(`only ${bytes.length} bytes, shorter than a header`);
  const magic = new TextDecoder().decode(bytes.subarray(0, 8));
  if (magic !== SHARD_MAGIC) fail(`bad magic ${JSON.stringify(magic)}: not a peco shard`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, SHARD_HEADER_BYTES);
  const [version, n, c, h, w] = [0, 1, 2, 3, 4].map((i) => view.getUint32(8 + 4 * i, true));
  if (version !== SHARD_VERSION) fail(`format version ${version}, this reader reads 1`);
  if (n !== count || c !== g.channels || h !== g.height || w !== g.width) {
    fail(
      `header says ${n} records of [${c},${h},${w}], manifest says ${count} of ` +
        `[${g.channels},${g.height},${g.width}]`,
    );
  }
}

// ---- writer ---------------------------------------------------------------------------------

/**
 * Collects records of one split and writes a shard each time `perShard` are in (and the rest at
 * `finish`). Each shard is written atomically (temporary name, then rename), so a shard file with
 * a final name is always complete. Memory: one shard's pixels.
 */
export class ShardWriter {
  private readonly pixels: Uint8Array;
  private readonly labels: Int32Array;
  private readonly recordBytes: number;
  private n = 0;
  /** Entries of the shards written so far (continues `written` when resuming). */
  readonly shards: ShardEntry[];

  constructor(
    readonly dir: string,
    readonly split: string,
    readonly geometry: ShardGeometry,
    readonly perShard: number,
    written: ShardEntry[] = [],
  ) {
    if (!Number.isSafeInteger(perShard) || perShard < 1) {
      throw new Error(
        `peco: shards: records per shard must be a positive integer, got ${perShard}`,
      );
    }
    this.recordBytes = shardLayout(geometry, 1).recordBytes;
    this.pixels = new Uint8Array(perShard * this.recordBytes);
    this.labels = new Int32Array(perShard);
    this.shards = [...written];
  }

  /** Adds one record ([C,H,W] uint8); returns the shard entry when this record completed one. */
  async add(pixels: Uint8Array, label: number): Promise<ShardEntry | null> {
    if (pixels.length !== this.recordBytes) {
      throw new Error(
        `peco: shards: record has ${pixels.length} bytes, expected ${this.recordBytes}`,
      );
    }
    this.pixels.set(pixels, this.n * this.recordBytes);
    this.labels[this.n++] = label;
    return this.n === this.perShard ? await this.flush() : null;
  }

  /** Writes the last, partial shard (if any records are pending). */
  async finish(): Promise<ShardEntry | null> {
    return this.n > 0 ? await this.flush() : null;
  }

  private async flush(): Promise<ShardEntry> {
    const count = this.n;
    const layout = shardLayout(this.geometry, count);
    const pixelBytes = count * this.recordBytes;
    const chunks = [
      encodeShardHeader(this.geometry, count),
      this.pixels.subarray(0, pixelBytes),
      new Uint8Array(layout.labelsOffset - SHARD_HEADER_BYTES - pixelBytes),
      new Uint8Array(this.labels.buffer, 0, 4 * count),
    ];
    const file = shardFileName(this.split, this.shards.length);
    await writeFileAtomic(join(this.dir, file), chunks);
    const entry = { file, count, bytes: layout.bytes, sha256: sha256Hex(...chunks) };
    this.shards.push(entry);
    this.n = 0;
    return entry;
  }
}

// ---- reader ---------------------------------------------------------------------------------

/** One record: pixels [C, H, W] uint8 and its label (−1 when unlabelled). */
export interface ShardRecord {
  pixels: Uint8Array;
  label: number;
}

/** Consecutive records of a split: pixels [count, C, H, W] uint8 and labels [count]. */
export interface ShardBatch {
  /** Index (within the split) of the first record; −1 when the records are not consecutive. */
  start: number;
  count: number;
  pixels: Uint8Array;
  labels: Int32Array;
}

export interface OpenShardsOptions {
  /**
   * "lazy" (default): sizes are checked at open, each shard's sha256 the first time it is read.
   * "eager": every shard is hashed at open (a full read of the data set).
   */
  verify?: "lazy" | "eager";
}

export interface ShardSet {
  dir: string;
  manifest: ShardManifest;
  /** Readers by split name ("train", "val"). */
  splits: Record<string, SplitReader>;
}

/** Reads one split of a shard folder: by index, by range, by shard, or streamed in chunks. */
export class SplitReader {
  readonly count: number;
  readonly channels: number;
  readonly height: number;
  readonly width: number;
  /** Bytes of one record (C·H·W). */
  readonly recordBytes: number;
  readonly shards: readonly ShardEntry[];
  /** Index of each shard's first record, plus the total at the end. */
  readonly shardStarts: readonly number[];
  private readonly verified = new Set<number>();

  constructor(readonly dir: string, readonly name: string, manifest: ShardManifest) {
    const split = manifest.splits[name];
    if (!split) throw new Error(`peco: shards: ${dir} has no split "${name}"`);
    ({ channels: this.channels, height: this.height, width: this.width } = manifest.image);
    this.recordBytes = this.channels * this.height * this.width;
    this.count = split.count;
    this.shards = split.shards;
    const starts = [0];
    for (const s of split.shards) starts.push(starts[starts.length - 1] + s.count);
    this.shardStarts = starts;
  }

  /** Path of shard k. */
  path(k: number): string {
    return join(this.dir, this.shards[k].file);
  }

  /** The shard holding record `index` and the record's position in it. */
  locate(index: number): { shard: number; offset: number } {
    if (!Number.isSafeInteger(index) || index < 0 || index >= this.count) {
      throw new Error(
        `peco: shards: record ${index} out of range [0, ${this.count}) of "${this.name}"`,
      );
    }
    let lo = 0, hi = this.shards.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.shardStarts[mid] <= index) lo = mid;
      else hi = mid - 1;
    }
    return { shard: lo, offset: index - this.shardStarts[lo] };
  }

  /** Checks every shard's size now (done by openShards). */
  async checkSizes(): Promise<void> {
    for (let k = 0; k < this.shards.length; k++) {
      const expected = this.shards[k].bytes;
      let size: number;
      try {
        size = (await Deno.stat(this.path(k))).size;
      } catch (error) {
        throw new Error(`peco: shards: ${this.path(k)}: cannot open (${(error as Error).message})`);
      }
      const layout = shardLayout(this, this.shards[k].count).bytes;
      if (size !== expected || layout !== expected) {
        throw new Error(
          `peco: shards: ${this.path(k)}: ${size} bytes, manifest says ${expected} ` +
            `(${size < expected ? "truncated" : "modified"})`,
        );
      }
    }
  }

  /** Hashes shard k (streaming) unless already verified; error names the shard. */
  async verifyShard(k: number): Promise<void> {
    if (this.verified.has(k)) return;
    const { sha256, bytes } = await sha256File(this.path(k));
    this.accept(k, sha256, bytes);
  }

  /** Hashes every shard of the split. */
  async verify(): Promise<void> {
    for (let k = 0; k < this.shards.length; k++) await this.verifyShard(k);
  }

  /** All records of shard k, read in one piece and verified (size, sha256, header). */
  readShard(k: number): Promise<ShardBatch> {
    return this.readShardWith(k, readShardFile);
  }

  /**
   * readShard with the file read and checked by `read` (e.g. in a worker: lib/data/shard_reads.ts),
   * which must hash it when asked to `verify` (the first read of each shard).
   */
  async readShardWith(k: number, read: ShardFileReader): Promise<ShardBatch> {
    const entry = this.shards[k];
    if (!entry) throw new Error(`peco: shards: "${this.name}" has no shard ${k}`);
    const geometry = { channels: this.channels, height: this.height, width: this.width };
    const bytes = await read(this.path(k), entry, geometry, !this.verified.has(k));
    this.verified.add(k);
    const { labelsOffset } = shardLayout(this, entry.count);
    return {
      start: this.shardStarts[k],
      count: entry.count,
      pixels: bytes.subarray(
        SHARD_HEADER_BYTES,
        SHARD_HEADER_BYTES + entry.count * this.recordBytes,
      ),
      labels: new Int32Array(bytes.buffer, bytes.byteOffset + labelsOffset, entry.count),
    };
  }

  /** Records [start, end) (may span shards); each shard touched is verified first. */
  async readRange(start: number, end: number): Promise<ShardBatch> {
    if (
      !(Number.isSafeInteger(start) && Number.isSafeInteger(end)) || start < 0 || end < start ||
      end > this.count
    ) {
      throw new Error(
        `peco: shards: range [${start}, ${end}) out of [0, ${this.count}] of "${this.name}"`,
      );
    }
    const n = end - start;
    const out: ShardBatch = {
      start,
      count: n,
      pixels: new Uint8Array(n * this.recordBytes),
      labels: new Int32Array(n),
    };
    let at = start;
    while (at < end) {
      const { shard, offset } = this.locate(at);
      const take = Math.min(end - at, this.shards[shard].count - offset);
      await this.readPart(shard, offset, take, out, at - start);
      at += take;
    }
    return out;
  }

  /** One record by index. */
  async read(index: number): Promise<ShardRecord> {
    const b = await this.readRange(index, index + 1);
    return { pixels: b.pixels, label: b.labels[0] };
  }

  /**
   * Streams the split in chunks of `size` records (the last may be shorter), shard by shard in
   * `shardOrder` (default 0, 1, …; pass a shuffled order for a shuffled pass). Each shard is read
   * whole and verified before its first record is yielded; memory is bounded by one shard plus one
   * chunk, whatever the size of the data set. Chunks span shard boundaries; `start` is the split
   * index of the chunk's first record when the chunk is consecutive, else −1.
   */
  async *chunks(
    size: number,
    { shardOrder }: { shardOrder?: readonly number[] } = {},
  ): AsyncGenerator<ShardBatch> {
    if (!Number.isSafeInteger(size) || size < 1) {
      throw new Error(`peco: shards: chunk size must be a positive integer, got ${size}`);
    }
    const order = shardOrder ?? this.shards.map((_, k) => k);
    let pending: ShardBatch | null = null;
    for (const k of order) {
      const batch = await this.readShard(k);
      let at = 0;
      if (pending) {
        const take = Math.min(size - pending.count, batch.count);
        pending = joinBatches(pending, slice(batch, 0, take), this.recordBytes);
        at = take;
        if (pending.count < size) continue;
        yield pending;
        pending = null;
      }
      for (; at + size <= batch.count; at += size) yield slice(batch, at, at + size);
      if (at < batch.count) pending = copyBatch(slice(batch, at, batch.count));
    }
    if (pending) yield pending;
  }

  private accept(k: number, sha256: string, bytes: number): void {
    checkShardDigest(this.path(k), this.shards[k], sha256, bytes);
    this.verified.add(k);
  }

  /** Positioned read of `take` records of shard k from `offset` into `out` at `into`. */
  private async readPart(
    k: number,
    offset: number,
    take: number,
    out: ShardBatch,
    into: number,
  ): Promise<void> {
    await this.verifyShard(k);
    const entry = this.shards[k];
    const { labelsOffset } = shardLayout(this, entry.count);
    using file = await Deno.open(this.path(k), { read: true });
    const header = new Uint8Array(SHARD_HEADER_BYTES);
    await readExactly(file, 0, header, this.path(k));
    checkShardHeader(header, this, entry.count, this.path(k));
    const px = out.pixels.subarray(into * this.recordBytes, (into + take) * this.recordBytes);
    await readExactly(file, SHARD_HEADER_BYTES + offset * this.recordBytes, px, this.path(k));
    const lb = new Uint8Array(out.labels.buffer, out.labels.byteOffset + 4 * into, 4 * take);
    await readExactly(file, labelsOffset + 4 * offset, lb, this.path(k));
  }
}

/** Reads a whole shard file and checks it: header, and with `verify` its size and sha256. */
export type ShardFileReader = (
  path: string,
  entry: ShardEntry,
  geometry: ShardGeometry,
  verify: boolean,
) => Promise<Uint8Array>;

/** The ShardFileReader of this thread; errors name the shard. */
export const readShardFile: ShardFileReader = async (path, entry, geometry, verify) => {
  const bytes = await Deno.readFile(path);
  if (verify) checkShardDigest(path, entry, new Sha256().update(bytes).hex(), bytes.length);
  checkShardHeader(bytes, geometry, entry.count, path);
  return bytes;
};

/** Throws, naming the shard, when its size or sha256 differs from its manifest entry. */
export function checkShardDigest(
  path: string,
  entry: Pick<ShardEntry, "bytes" | "sha256">,
  sha256: string,
  bytes: number,
): void {
  if (bytes !== entry.bytes) {
    throw new Error(
      `peco: shards: ${path}: ${bytes} bytes, manifest says ${entry.bytes} ` +
        `(${bytes < entry.bytes ? "truncated" : "modified"})`,
    );
  }
  if (sha256 !== entry.sha256) {
    throw new Error(
      `peco: shards: ${path}: sha256 ${sha256.slice(0, 16)}… does not match the ` +
        `manifest's ${entry.sha256.slice(0, 16)}… (the shard was modified or corrupted)`,
    );
  }
}

async function readExactly(
  file: Deno.FsFile,
  position: number,
  into: Uint8Array,
  name: string,
): Promise<void> {
  await file.seek(position, Deno.SeekMode.Start);
  let done = 0;
  while (done < into.length) {
    const n = await file.read(into.subarray(done));
    if (n === null) throw new Error(`peco: shards: ${name}: ends early (truncated)`);
    done += n;
  }
}

function slice(b: ShardBatch, from: number, to: number): ShardBatch {
  const rb = b.pixels.length / b.count;
  return {
    start: b.start < 0 ? -1 : b.start + from,
    count: to - from,
    pixels: b.pixels.subarray(from * rb, to * rb),
    labels: b.labels.subarray(from, to),
  };
}

function copyBatch(b: ShardBatch): ShardBatch {
  return { start: b.start, count: b.count, pixels: b.pixels.slice(), labels: b.labels.slice() };
}

function joinBatches(a: ShardBatch, b: ShardBatch, recordBytes: number): ShardBatch {
  const pixels = new Uint8Array((a.count + b.count) * recordBytes);
  pixels.set(a.pixels);
  pixels.set(b.pixels, a.pixels.length);
  const labels = new Int32Array(a.count + b.count);
  labels.set(a.labels);
  labels.set(b.labels, a.count);
  const consecutive = a.start >= 0 && b.start === a.start + a.count;
  return { start: consecutive ? a.start : -1, count: a.count + b.count, pixels, labels };
}

/**
 * Opens a shard folder: reads and validates manifest.json, checks every shard's size (and, with
 * verify "eager", its sha256). Errors are one line naming the folder or the shard.
 */
export async function openShards(dir: string, options: OpenShardsOptions = {}): Promise<ShardSet> {
  const manifest = await readManifest(dir);
  const splits: Record<string, SplitReader> = {};
  for (const name of Object.keys(manifest.splits)) {
    const reader = new SplitReader(dir, name, manifest);
    await reader.checkSizes();
    if (options.verify === "eager") await reader.verify();
    splits[name] = reader;
  }
  return { dir, manifest, splits };
}
