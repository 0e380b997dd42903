// Token shards: a data set tokenised by a tokenizer (lib/models/tokenizer.ts), for the evaluation
// stage and for pretraining on precomputed tokens. A folder holds one manifest.json and, per split,
// shards of a fixed number of records (the last may hold fewer).
//
// ## Shard format, version 1 (integers little-endian)
//
//   offset  bytes          field
//   0       8              magic "PECOTOKS" (ASCII)
//   8       4              u32 version = 1
//   12      4              u32 count          records in this shard
//   16      4              u32 grid height h
//   20      4              u32 grid width w
//   24      4              u32 codebook size K
//   28      4              u32 id bytes: 2 (uint16, K ≤ 65536) or 4 (uint32)    (header: 32 bytes)
//   32      count·h·w·b    code ids, record after record, each [h, w] row-major
//   L       count·4        int32 labels (−1 when unlabelled),  L = 32 + round_up_4(count·h·w·b)
//
// manifest.json lists the grid, K, the id dtype, records per shard, each shard's count, size and
// sha256, and the sha256 of the source shard folder's manifest.json, so a stage can tell a token
// set made from another data set. The reader checks sizes when it opens the folder and each
// shard's sha256 and header before its first record is handed out; errors name the shard.

import { join } from "node:path";
import { writeFileAtomic, writeJsonAtomic } from "../io/atomic.ts";
import { Sha256, sha256Hex } from "../io/hash.ts";
import { checkShardDigest, isShardEntry, type ShardEntry, shardFileName } from "./shards.ts";

export const TOKEN_MAGIC = "PECOTOKS";
export const TOKEN_VERSION = 1;
export const TOKEN_HEADER_BYTES = 32;
export const TOKEN_EXTENSION = ".tokens";
export const TOKEN_MANIFEST_FILE = "manifest.json";
const FORMAT_NAME = "peco-tokens";

export type TokenDType = "uint16" | "uint32";

/** uint16 when every id fits (K ≤ 65536), else uint32. */
export function tokenDType(codebookSize: number): TokenDType {
  return codebookSize <= 65536 ? "uint16" : "uint32";
}

const ID_BYTES: Record<TokenDType, number> = { uint16: 2, uint32: 4 };

export interface TokenGeometry {
  /** Token grid (h, w). */
  grid: [number, number];
  /** K: every id is in [0, K). */
  codebookSize: number;
}

/** Byte layout of a token shard of `count` records. */
export function tokenShardLayout(g: TokenGeometry, count: number) {
  const tokens = g.grid[0] * g.grid[1];
  const idBytes = ID_BYTES[tokenDType(g.codebookSize)];
  const labelsOffset = TOKEN_HEADER_BYTES + Math.ceil((count * tokens * idBytes) / 4) * 4;
  return { tokens, idBytes, labelsOffset, bytes: labelsOffset + 4 * count };
}

export interface TokenSplitManifest {
  count: number;
  shards: ShardEntry[];
}

export interface TokenManifest {
  format: { name: string; magic: string; version: number; headerBytes: number };
  grid: [number, number];
  codebookSize: number;
  dtype: TokenDType;
  /** Records per shard (every shard of a split but the last). */
  perShard: number;
  /** What was tokenised: the sha256 of the source shards' manifest.json, and more. */
  source: { shardsManifestSha256: string } & Record<string, unknown>;
  splits: Record<string, TokenSplitManifest>;
}

function encodeHeader(g: TokenGeometry, count: number): Uint8Array {
  const header = new Uint8Array(TOKEN_HEADER_BYTES);
  header.set(new TextEncoder().encode(TOKEN_MAGIC), 0);
  const { idBytes } = tokenShardLayout(g, count);
  const fields = [TOKEN_VERSION, count, g.grid[0], g.grid[1], g.codebookSize, idBytes];
  const view = new DataView(header.buffer);
  fields.forEach((v, i) => view.setUint32(8 + 4 * i, v, true));
  return header;
}

function checkHeader(bytes: Uint8Array, g: TokenGeometry, count: number, path: string): void {
  const fail = (what: string): never => {
    throw new Error(`peco: token shards: ${path}: ${what}`);
  };
  if (bytes.length < TOKEN_HEADER_BYTES) fail(`only ${bytes.length} bytes, shorter than a header`);
  const magic = new TextDecoder().decode(bytes.subarray(0, 8));
  if (magic !== TOKEN_MAGIC) fail(`bad magic ${JSON.stringify(magic)}: not a peco token shard`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, TOKEN_HEADER_BYTES);
  const [version, n, h, w, k, b] = [0, 1, 2, 3, 4, 5].map((i) => view.getUint32(8 + 4 * i, true));
  if (version !== TOKEN_VERSION) fail(`format version ${version}, this reader reads 1`);
  const want = tokenShardLayout(g, count).idBytes;
  if (n !== count || h !== g.grid[0] || w !== g.grid[1] || k !== g.codebookSize || b !== want) {
    fail(
      `header says ${n} records of ${h}×${w} ids < ${k} (${b} bytes each), manifest says ` +
        `${count} of ${g.grid[0]}×${g.grid[1]} < ${g.codebookSize} (${want} bytes)`,
    );
  }
}

// ---- writer ---------------------------------------------------------------------------------

/**
 * Collects the tokens of one split and writes a shard (atomically) each time `perShard` records
 * are in, and the rest at `finish`. Memory: one shard's ids.
 */
export class TokenShardWriter {
  private readonly ids: Uint16Array | Uint32Array;
  private readonly labels: Int32Array;
  private readonly tokens: number;
  private n = 0;
  private total = 0;
  readonly shards: ShardEntry[] = [];

  constructor(
    readonly dir: string,
    readonly split: string,
    readonly geometry: TokenGeometry,
    readonly perShard: number,
  ) {
    checkGeometry(geometry, "TokenShardWriter");
    if (!Number.isSafeInteger(perShard) || perShard < 1) {
      throw new Error(`peco: token shards: records per shard must be ≥ 1, got ${perShard}`);
    }
    this.tokens = geometry.grid[0] * geometry.grid[1];
    const size = perShard * this.tokens;
    this.ids = tokenDType(geometry.codebookSize) === "uint16"
      ? new Uint16Array(size)
      : new Uint32Array(size);
    this.labels = new Int32Array(perShard);
  }

  /** Adds n records: ids [n, h·w] (each in [0, K)) and labels [n]. */
  async add(ids: ArrayLike<number>, labels: ArrayLike<number>): Promise<void> {
    const n = labels.length;
    if (ids.length !== n * this.tokens) {
      throw new Error(
        `peco: token shards: ${ids.length} ids for ${n} labels; expected ${n}×${this.tokens}`,
      );
    }
    const k = this.geometry.codebookSize;
    for (let r = 0; r < n; r++) {
      const base = r * this.tokens;
      for (let t = 0; t < this.tokens; t++) {
        const id = ids[base + t];
        if (!(id >= 0 && id < k) || !Number.isInteger(id)) {
          throw new Error(
            `peco: token shards: record ${this.total} of "${this.split}" holds id ${id}, ` +
              `not in [0, ${k})`,
          );
        }
        this.ids[this.n * this.tokens + t] = id;
      }
      this.labels[this.n++] = labels[r];
      this.total++;
      if (this.n === this.perShard) await this.flush();
    }
  }

  /** Writes the last, partial shard; returns the split's manifest entry. */
  async finish(): Promise<TokenSplitManifest> {
    if (this.n > 0) await this.flush();
    return { count: this.total, shards: [...this.shards] };
  }

  private async flush(): Promise<void> {
    const count = this.n;
    const layout = tokenShardLayout(this.geometry, count);
    const idBytes = count * this.tokens * layout.idBytes;
    const chunks = [
      encodeHeader(this.geometry, count),
      new Uint8Array(this.ids.buffer, 0, idBytes),
      new Uint8Array(layout.labelsOffset - TOKEN_HEADER_BYTES - idBytes),
      new Uint8Array(this.labels.buffer, 0, 4 * count),
    ];
    const file = shardFileName(this.split, this.shards.length, TOKEN_EXTENSION);
    await writeFileAtomic(join(this.dir, file), chunks);
    this.shards.push({ file, count, bytes: layout.bytes, sha256: sha256Hex(...chunks) });
    this.n = 0;
  }
}

function checkGeometry(g: TokenGeometry, where: string): void {
  const ok = Array.isArray(g.grid) && g.grid.length === 2 &&
    g.grid.every((d) => Number.isSafeInteger(d) && d >= 1) &&
    Number.isSafeInteger(g.codebookSize) && g.codebookSize >= 1 && g.codebookSize <= 2 ** 32;
  if (!ok) {
    throw new Error(
      `peco: token shards: ${where}: bad grid ${JSON.stringify(g.grid)} or codebook size ` +
        `${g.codebookSize}`,
    );
  }
}

/** Writes `<dir>/manifest.json` (atomically, after every shard): the folder is then complete. */
export async function writeTokenManifest(
  dir: string,
  m: {
    geometry: TokenGeometry;
    perShard: number;
    source: TokenManifest["source"];
    splits: Record<string, TokenSplitManifest>;
  },
): Promise<TokenManifest> {
  const manifest: TokenManifest = {
    format: {
      name: FORMAT_NAME,
      magic: TOKEN_MAGIC,
      version: TOKEN_VERSION,
      headerBytes: TOKEN_HEADER_BYTES,
    },
    grid: [...m.geometry.grid],
    codebookSize: m.geometry.codebookSize,
    dtype: tokenDType(m.geometry.codebookSize),
    perShard: m.perShard,
    source: m.source,
    splits: m.splits,
  };
  validateTokenManifest(manifest, join(dir, TOKEN_MANIFEST_FILE));
  await writeJsonAtomic(join(dir, TOKEN_MANIFEST_FILE), manifest);
  return manifest;
}

// ---- reader ---------------------------------------------------------------------------------

function validateTokenManifest(value: unknown, where: string): TokenManifest {
  const fail = (what: string): never => {
    throw new Error(`peco: token shards: ${where}: ${what}`);
  };
  if (typeof value !== "object" || value === null) fail("not a JSON object");
  const m = value as TokenManifest;
  if (m.format?.name !== FORMAT_NAME || m.format?.version !== TOKEN_VERSION) {
    fail(`format ${JSON.stringify(m.format)} is not ${FORMAT_NAME} version ${TOKEN_VERSION}`);
  }
  try {
    checkGeometry(m, "manifest");
  } catch (error) {
    fail((error as Error).message.replace(/^peco: token shards: manifest: /, ""));
  }
  if (m.dtype !== tokenDType(m.codebookSize)) {
    fail(`dtype ${JSON.stringify(m.dtype)} does not suit K = ${m.codebookSize}`);
  }
  if (!Number.isSafeInteger(m.perShard) || m.perShard < 1) fail(`bad perShard ${m.perShard}`);
  if (typeof m.source?.shardsManifestSha256 !== "string") {
    fail(`source.shardsManifestSha256 missing`);
  }
  if (typeof m.splits !== "object" || m.splits === null) fail("splits missing");
  for (const [name, split] of Object.entries(m.splits)) {
    if (!split || !Number.isSafeInteger(split.count) || !Array.isArray(split.shards)) {
      fail(`split "${name}" malformed`);
    }
    let total = 0;
    for (const s of split.shards) {
      if (!isShardEntry(s)) fail(`split "${name}" has a malformed shard ${JSON.stringify(s)}`);
      if (s.bytes !== tokenShardLayout(m, s.count).bytes) {
        fail(`shard ${s.file}: ${s.bytes} bytes cannot hold ${s.count} records`);
      }
      total += s.count;
    }
    if (total !== split.count) {
      fail(`split "${name}" counts ${split.count} records but its shards hold ${total}`);
    }
  }
  return m;
}

export interface TokenBatch {
  /** Code ids [n, h·w]. */
  ids: Uint32Array;
  labels: Int32Array;
}

/** One split of a token folder. */
export interface TokenSplit {
  count: number;
  grid: [number, number];
  codebookSize: number;
  shards: readonly ShardEntry[];
  /** Records [from, to) (may span shards); each shard is verified before its first use. */
  read(from: number, to: number): Promise<TokenBatch>;
}

export interface TokenSet {
  dir: string;
  manifest: TokenManifest;
  splits: Record<string, TokenSplit>;
}

class TokenSplitReader implements TokenSplit {
  readonly count: number;
  readonly grid: [number, number];
  readonly codebookSize: number;
  readonly shards: readonly ShardEntry[];
  private readonly starts: number[] = [0];
  /** The last shard read, decoded (reads are mostly sequential). */
  private cached: { k: number; ids: Uint32Array; labels: Int32Array } | null = null;

  constructor(readonly dir: string, readonly name: string, readonly manifest: TokenManifest) {
    const split = manifest.splits[name];
    this.count = split.count;
    this.grid = [...manifest.grid];
    this.codebookSize = manifest.codebookSize;
    this.shards = split.shards;
    for (const s of split.shards) this.starts.push(this.starts[this.starts.length - 1] + s.count);
  }

  path(k: number): string {
    return join(this.dir, this.shards[k].file);
  }

  async checkSizes(): Promise<void> {
    for (let k = 0; k < this.shards.length; k++) {
      let size: number;
      try {
        size = (await Deno.stat(this.path(k))).size;
      } catch (error) {
        throw new Error(
          `peco: token shards: ${this.path(k)}: cannot open (${(error as Error).message})`,
        );
      }
      if (size !== this.shards[k].bytes) {
        checkShardDigest(this.path(k), this.shards[k], "", size);
      }
    }
  }

  /** Shard k, read whole, verified (size, sha256, header) and decoded. */
  private async shard(k: number): Promise<{ ids: Uint32Array; labels: Int32Array }> {
    if (this.cached?.k === k) return this.cached;
    const entry = this.shards[k];
    const path = this.path(k);
    let bytes: Uint8Array;
    try {
      bytes = await Deno.readFile(path);
    } catch (error) {
      throw new Error(`peco: token shards: ${path}: cannot read (${(error as Error).message})`);
    }
    checkShardDigest(path, entry, new Sha256().update(bytes).hex(), bytes.length);
    checkHeader(bytes, this.manifest, entry.count, path);
    const { tokens, idBytes, labelsOffset } = tokenShardLayout(this.manifest, entry.count);
    const n = entry.count * tokens;
    const raw = bytes.buffer.slice(
      bytes.byteOffset + TOKEN_HEADER_BYTES,
      bytes.byteOffset + TOKEN_HEADER_BYTES + n * idBytes,
    );
    const ids = idBytes === 2 ? Uint32Array.from(new Uint16Array(raw)) : new Uint32Array(raw);
    const labels = new Int32Array(
      bytes.buffer.slice(
        bytes.byteOffset + labelsOffset,
        bytes.byteOffset + labelsOffset + 4 * entry.count,
      ),
    );
    this.cached = { k, ids, labels };
    return this.cached;
  }

  async read(from: number, to: number): Promise<TokenBatch> {
    if (
      !Number.isSafeInteger(from) || !Number.isSafeInteger(to) || from < 0 || to < from ||
      to > this.count
    ) {
      throw new Error(
        `peco: token shards: range [${from}, ${to}) out of [0, ${this.count}] of "${this.name}"`,
      );
    }
    const tokens = this.grid[0] * this.grid[1];
    const ids = new Uint32Array((to - from) * tokens);
    const labels = new Int32Array(to - from);
    let at = from;
    let k = 0;
    while (at < to) {
      while (this.starts[k + 1] <= at) k++;
      const shard = await this.shard(k);
      const offset = at - this.starts[k];
      const take = Math.min(to - at, this.shards[k].count - offset);
      ids.set(shard.ids.subarray(offset * tokens, (offset + take) * tokens), (at - from) * tokens);
      labels.set(shard.labels.subarray(offset, offset + take), at - from);
      at += take;
    }
    return { ids, labels };
  }
}

/** Opens a token folder: validates manifest.json and checks every shard's size. */
export async function openTokenShards(dir: string): Promise<TokenSet> {
  const path = join(dir, TOKEN_MANIFEST_FILE);
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) {
      throw new Error(`peco: token shards: ${dir}: no ${TOKEN_MANIFEST_FILE} (not a token folder)`);
    }
    throw new Error(`peco: token shards: ${path}: cannot read (${(error as Error).message})`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    throw new Error(`peco: token shards: ${path}: invalid JSON (${(error as Error).message})`);
  }
  const manifest = validateTokenManifest(json, path);
  const splits: Record<string, TokenSplit> = {};
  for (const name of Object.keys(manifest.splits)) {
    const reader = new TokenSplitReader(dir, name, manifest);
    await reader.checkSizes();
    splits[name] = reader;
  }
  return { dir, manifest, splits };
}
