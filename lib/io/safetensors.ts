// safetensors: an 8-byte little-endian header length N, N bytes of UTF-8 JSON
// {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {key: string}}, then the raw
// little-endian tensor bytes (offsets are relative to the end of the header). Host-side reading and
// writing of F32/F16/BF16/I32/I64/U32, with every header field validated, plus helpers to move a
// record to and from the GPU.

import { gpu } from "../gpu/device.ts";
import { tensor } from "../tensor/ops/creation.ts";
import { byteRange, type DType, type Tensor, typedArray } from "../tensor/tensor.ts";
import { writeFileAtomic } from "./atomic.ts";

export type SafeDType = "F32" | "F16" | "BF16" | "I32" | "I64" | "U32";

/** Host values: f32 for every float dtype, BigInt64Array for I64. */
export type HostData = Float32Array | Int32Array | Uint32Array | BigInt64Array;

export interface TensorRecord {
  /** The dtype in the file. F16 and BF16 values are held (and given for writing) as f32. */
  dtype: SafeDType;
  shape: number[];
  data: HostData;
}

export interface Safetensors {
  /** In file order (by data offset). */
  tensors: Map<string, TensorRecord>;
  metadata: Record<string, string>;
}

export type TensorRecords = Map<string, TensorRecord> | Record<string, TensorRecord>;

interface DTypeInfo {
  /** Bytes per element in the file. */
  bytes: number;
  /** The typed array holding the values on the host. */
  host: "f32" | "i32" | "u32" | "i64";
}

const DTYPES: Record<SafeDType, DTypeInfo> = {
  F32: { bytes: 4, host: "f32" },
  F16: { bytes: 2, host: "f32" },
  BF16: { bytes: 2, host: "f32" },
  I32: { bytes: 4, host: "i32" },
  I64: { bytes: 8, host: "i64" },
  U32: { bytes: 4, host: "u32" },
};
const SUPPORTED = Object.keys(DTYPES).join(", ");
const METADATA_KEY = "__metadata__";

// Typed arrays use the host's byte order; the format is little-endian, as is every Deno target.
if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {
  throw new Error("peco: safetensors support needs a little-endian host");
}

function isDType(name: unknown): name is SafeDType {
  return typeof name === "string" && Object.hasOwn(DTYPES, name);
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function isCount(value: unknown): value is number {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 0;
}

function shapeText(shape: readonly number[]): string {
  return `[${shape.join(",")}]`;
}

// ---- half-precision conversions ------------------------------------------------------------

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** f32 → IEEE binary16 bits, rounding to nearest even (overflow → ±inf, NaN stays NaN). */
export function f32ToF16Bits(value: number): number {
  f32[0] = value;
  const bits = u32[0];
  const sign = (bits >>> 16) & 0x8000;
  const exp = (bits >>> 23) & 0xff;
  const mant = bits & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 | (mant >>> 13) : 0);
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    // Subnormal half: the 24-bit significand shifted right by 14 - e, rounded (≥ 25: below half
    // of the smallest subnormal, so zero).
    const shift = 14 - e;
    if (shift > 24) return sign;
    return sign | roundShift(mant | 0x800000, shift);
  }
  // A rounding carry out of the mantissa correctly bumps the exponent (up to inf).
  return sign | roundShift((e << 23) | mant, 13);
}

/** x >> shift, rounded to nearest even. */
function roundShift(x: number, shift: number): number {
  const kept = x >>> shift;
  const rest = x & ((1 << shift) - 1);
  const half = 1 << (shift - 1);
  return rest > half || (rest === half && (kept & 1)) ? kept + 1 : kept;
}

/** IEEE binary16 bits → value. */
export function f16BitsToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

let f16Table: Float32Array | null = null;

/** All 65536 half values, built on first use (checkpoints hold millions of them). */
function f16Values(): Float32Array {
  if (!f16Table) {
    f16Table = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) f16Table[h] = f16BitsToF32(h);
  }
  return f16Table;
}

/** f32 → bfloat16 bits (the top half of the f32), rounding to nearest even; NaN stays NaN. */
export function f32ToBf16Bits(value: number): number {
  f32[0] = value;
  const bits = u32[0];
  if ((bits & 0x7fffffff) > 0x7f800000) return (bits >>> 16) | 0x40;
  return roundShift(bits, 16) & 0xffff;
}

// ---- parsing --------------------------------------------------------------------------------

interface Entry {
  name: string;
  dtype: SafeDType;
  shape: number[];
  begin: number;
  end: number;
}

/** Parses a safetensors file held in memory; `file` names it in error messages. */
export function parseSafetensors(bytes: Uint8Array, file = "<memory>"): Safetensors {
  const { entries, metadata, dataStart } = parseHeader(bytes, bytes.length, file);
  const tensors = new Map<string, TensorRecord>();
  for (const e of entries) {
    const raw = bytes.slice(dataStart + e.begin, dataStart + e.end); // a copy: aligned, owned
    tensors.set(e.name, { dtype: e.dtype, shape: e.shape, data: decode(e.dtype, raw.buffer) });
  }
  return { tensors, metadata };
}

/**
 * The validated header of a safetensors file of `fileBytes` bytes, from `head` (its first bytes,
 * at least the 8-byte length and the header): entries in file order, metadata, data offset.
 */
function parseHeader(head: Uint8Array, fileBytes: number, file: string) {
  const fail = (what: string): never => {
    throw new Error(`peco: safetensors ${file}: ${what}`);
  };
  if (fileBytes < 8 || head.length < 8) {
    fail(`${fileBytes} bytes is too short for the 8-byte header length`);
  }
  const view = new DataView(head.buffer, head.byteOffset, head.byteLength);
  const headerLength = view.getBigUint64(0, true);
  if (headerLength > BigInt(fileBytes - 8)) {
    fail(`header length ${headerLength} goes beyond the end of the file (${fileBytes} bytes)`);
  }
  const dataStart = 8 + Number(headerLength);
  let header: unknown;
  try {
    const text = new TextDecoder("utf-8", { fatal: true }).decode(head.subarray(8, dataStart));
    header = JSON.parse(text);
  } catch (error) {
    fail(`header is not valid JSON (${(error as Error).message.split("\n")[0]})`);
  }
  if (!isObject(header)) fail("header is not a JSON object");
  const fields = header as Record<string, unknown>;
  const dataBytes = fileBytes - dataStart;

  const metadata = parseMetadata(fields[METADATA_KEY], fail);
  const entries = Object.entries(fields)
    .filter(([name]) => name !== METADATA_KEY)
    .map(([name, value]) => parseEntry(name, value, dataBytes, fail));
  checkCoverage(entries, dataBytes, fail);
  return { entries, metadata, dataStart };
}

/** A file's tensors that `wanted` selects, and the names and shapes of the others (not read). */
export interface SafetensorsSelection extends Safetensors {
  skipped: { name: string; dtype: SafeDType; shape: number[] }[];
}

/**
 * Reads only the tensors whose names `wanted` accepts, after validating the whole header: a
 * training checkpoint's other networks (a MoCo momentum encoder, projection heads) are never read
 * into memory.
 */
export async function readSafetensorsWhere(
  path: string,
  wanted: (name: string) => boolean,
): Promise<SafetensorsSelection> {
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path, { read: true });
  } catch (error) {
    throw new Error(`peco: safetensors ${path}: ${(error as Error).message}`, { cause: error });
  }
  try {
    const size = (await file.stat()).size;
    const readAt = async (offset: number, length: number) => {
      const out = new Uint8Array(length);
      await file.seek(offset, Deno.SeekMode.Start);
      for (let at = 0; at < length;) {
        const n = await file.read(out.subarray(at));
        if (n === null) throw new Error(`peco: safetensors ${path}: unexpected end of file`);
        at += n;
      }
      return out;
    };
    const prefix = await readAt(0, Math.min(8, size));
    let headerBytes = 0;
    if (prefix.length === 8) {
      const length = new DataView(prefix.buffer).getBigUint64(0, true);
      headerBytes = length <= BigInt(size - 8) ? Number(length) : 0;
    }
    const head = await readAt(0, Math.min(size, 8 + headerBytes));
    const { entries, metadata, dataStart } = parseHeader(head, size, path);
    const tensors = new Map<string, TensorRecord>();
    const skipped: SafetensorsSelection["skipped"] = [];
    for (const e of entries) {
      if (!wanted(e.name)) {
        skipped.push({ name: e.name, dtype: e.dtype, shape: e.shape });
        continue;
      }
      const raw = await readAt(dataStart + e.begin, e.end - e.begin);
      tensors.set(e.name, { dtype: e.dtype, shape: e.shape, data: decode(e.dtype, raw.buffer) });
    }
    return { tensors, metadata, skipped };
  } finally {
    file.close();
  }
}

function parseMetadata(value: unknown, fail: (what: string) => never): Record<string, string> {
  if (value === undefined) return {};
  if (!isObject(value)) fail(`${METADATA_KEY} is not a JSON object`);
  const metadata: Record<string, string> = {};
  for (const [key, v] of Object.entries(value as Record<string, unknown>)) {
    if (typeof v !== "string") {
      fail(`${METADATA_KEY} value of "${key}" is ${JSON.stringify(v)}, not a string`);
    }
    metadata[key] = v as string;
  }
  return metadata;
}

function parseEntry(
  name: string,
  value: unknown,
  dataBytes: number,
  fail: (what: string) => never,
): Entry {
  const bad = (what: string) => fail(`tensor "${name}": ${what}`);
  if (!isObject(value)) return bad("entry is not a JSON object");
  const { dtype, shape, data_offsets: offsets } = value as Record<string, unknown>;
  if (!isDType(dtype)) {
    return bad(`unknown dtype ${JSON.stringify(dtype)} (supported: ${SUPPORTED})`);
  }
  if (!Array.isArray(shape) || !shape.every(isCount)) {
    return bad(`shape ${JSON.stringify(shape)} is not a list of non-negative integers`);
  }
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isCount)) {
    return bad(`data_offsets ${JSON.stringify(offsets)} is not a pair of non-negative integers`);
  }
  const [begin, end] = offsets as number[];
  if (begin > end || end > dataBytes) {
    bad(`data_offsets [${begin}, ${end}] are out of bounds of the ${dataBytes}-byte data section`);
  }
  const need = (shape as number[]).reduce((a, b) => a * b, 1) * DTYPES[dtype].bytes;
  if (end - begin !== need) {
    bad(
      `${dtype} ${shapeText(shape)} needs ${need} bytes but data_offsets [${begin}, ${end}] ` +
        `hold ${end - begin}`,
    );
  }
  return { name, dtype, shape: [...shape], begin, end };
}

/**
 * Tensors must tile the data section exactly, as the format requires (no overlaps, which would
 * alias two tensors; no holes or trailing bytes, which could hide other content). Sorts `entries`
 * into file order.
 */
function checkCoverage(entries: Entry[], dataBytes: number, fail: (what: string) => never): void {
  entries.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let covered = 0;
  let previous: Entry | null = null;
  for (const e of entries) {
    if (previous && e.begin < previous.end) {
      fail(
        `tensor "${e.name}": data_offsets [${e.begin}, ${e.end}] overlap those of tensor ` +
          `"${previous.name}" [${previous.begin}, ${previous.end}]`,
      );
    }
    if (e.begin > covered) {
      fail(`tensor "${e.name}": bytes [${covered}, ${e.begin}) before it belong to no tensor`);
    }
    covered = e.end;
    previous = e;
  }
  if (covered !== dataBytes) {
    fail(`bytes [${covered}, ${dataBytes}) of the data section belong to no tensor`);
  }
}

function decode(dtype: SafeDType, raw: ArrayBuffer): HostData {
  switch (dtype) {
    case "F32":
      return new Float32Array(raw);
    case "F16": {
      const table = f16Values();
      const halves = new Uint16Array(raw);
      const out = new Float32Array(halves.length);
      for (let i = 0; i < halves.length; i++) out[i] = table[halves[i]];
      return out;
    }
    case "BF16": {
      const halves = new Uint16Array(raw);
      const bits = new Uint32Array(halves.length);
      for (let i = 0; i < halves.length; i++) bits[i] = halves[i] << 16;
      return new Float32Array(bits.buffer);
    }
    case "I32":
      return new Int32Array(raw);
    case "I64":
      return new BigInt64Array(raw);
    case "U32":
      return new Uint32Array(raw);
  }
}

/** Reads and validates a safetensors file (F16/BF16 become f32, I64 a BigInt64Array). */
export async function readSafetensors(path: string): Promise<Safetensors> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (error) {
    throw new Error(`peco: safetensors ${path}: ${(error as Error).message}`, { cause: error });
  }
  return parseSafetensors(bytes, path);
}

/** I64 values as i32, or a clear error naming `what` when one does not fit. */
export function int64ToInt32(data: BigInt64Array, what: string): Int32Array {
  const out = new Int32Array(data.length);
  for (let i = 0; i < data.length; i++) {
    const v = data[i];
    if (v < -2147483648n || v > 2147483647n) {
      throw new Error(`peco: ${what}: I64 value ${v} at index ${i} does not fit in i32`);
    }
    out[i] = Number(v);
  }
  return out;
}

// ---- writing --------------------------------------------------------------------------------

function entriesOf(tensors: TensorRecords): [string, TensorRecord][] {
  return tensors instanceof Map ? [...tensors] : Object.entries(tensors);
}

/** The bytes of one tensor as stored in the file. */
function encode(record: TensorRecord, fail: (what: string) => never): Uint8Array {
  const { dtype, data } = record;
  const host = DTYPES[dtype].host;
  const ok = host === "f32"
    ? data instanceof Float32Array
    : host === "i32"
    ? data instanceof Int32Array
    : host === "u32"
    ? data instanceof Uint32Array
    : data instanceof BigInt64Array || data instanceof Int32Array;
  if (!ok) fail(`${dtype} data cannot be a ${data.constructor.name}`);
  let out: ArrayBufferView = data;
  if (dtype === "F16" || dtype === "BF16") {
    const convert = dtype === "F16" ? f32ToF16Bits : f32ToBf16Bits;
    out = Uint16Array.from(data as Float32Array, convert);
  } else if (dtype === "I64" && data instanceof Int32Array) {
    out = BigInt64Array.from(data, (v) => BigInt(v));
  }
  return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
}

/**
 * The file as chunks (header, then each tensor's bytes). Tensors are ordered by element size
 * (largest first, so each starts aligned to it after the 8-byte-aligned header), then by name.
 */
function encodeChunks(
  tensors: TensorRecords,
  metadata: Record<string, string>,
  file: string,
): Uint8Array[] {
  const fail = (what: string): never => {
    throw new Error(`peco: safetensors ${file}: ${what}`);
  };
  const entries = entriesOf(tensors).sort(([na, a], [nb, b]) =>
    (DTYPES[b.dtype]?.bytes ?? 0) - (DTYPES[a.dtype]?.bytes ?? 0) ||
    (na < nb ? -1 : na > nb ? 1 : 0)
  );
  const header: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(metadata)) {
    if (typeof value !== "string") {
      fail(`${METADATA_KEY} value of "${key}" is ${JSON.stringify(value)}, not a string`);
    }
  }
  if (Object.keys(metadata).length > 0) header[METADATA_KEY] = metadata;
  const chunks: Uint8Array[] = [];
  let offset = 0;
  for (const [name, record] of entries) {
    const bad = (what: string): never => fail(`tensor "${name}": ${what}`);
    if (name === "" || name === METADATA_KEY) bad("invalid tensor name");
    if (!isDType(record.dtype)) bad(`unknown dtype ${JSON.stringify(record.dtype)}`);
    if (!Array.isArray(record.shape) || !record.shape.every(isCount)) {
      bad(`invalid shape ${JSON.stringify(record.shape)}`);
    }
    const size = record.shape.reduce((a, b) => a * b, 1);
    if (record.data.length !== size) {
      bad(`${record.data.length} values do not fill shape ${shapeText(record.shape)}`);
    }
    const bytes = encode(record, bad);
    header[name] = {
      dtype: record.dtype,
      shape: record.shape,
      data_offsets: [offset, offset + bytes.length],
    };
    chunks.push(bytes);
    offset += bytes.length;
  }
  let json = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil(json.length / 8) * 8; // the format allows trailing spaces
  if (padded > json.length) {
    const spaced = new Uint8Array(padded).fill(0x20);
    spaced.set(json);
    json = spaced;
  }
  const prefix = new Uint8Array(8);
  new DataView(prefix.buffer).setBigUint64(0, BigInt(json.length), true);
  return [prefix, json, ...chunks];
}

/** The bytes of a safetensors file holding `tensors` and `metadata`. */
export function serializeSafetensors(
  tensors: TensorRecords,
  metadata: Record<string, string> = {},
): Uint8Array {
  const chunks = encodeChunks(tensors, metadata, "<memory>");
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const chunk of chunks) {
    out.set(chunk, at);
    at += chunk.length;
  }
  return out;
}

/**
 * Writes a safetensors file atomically (the target is replaced only once the whole file is on
 * disk). F16/BF16 records give f32 values, rounded to nearest even here.
 */
export async function writeSafetensors(
  path: string,
  tensors: TensorRecords,
  metadata: Record<string, string> = {},
): Promise<void> {
  await writeFileAtomic(path, encodeChunks(tensors, metadata, path));
}

// ---- GPU ------------------------------------------------------------------------------------

const DEVICE_DTYPE: Record<DTypeInfo["host"], DType> = {
  f32: "f32",
  i32: "i32",
  u32: "u32",
  i64: "i32",
};

/** Uploads a record: float dtypes as f32, I32/I64 as i32 (I64 values must fit), U32 as u32. */
export function toGpu(record: TensorRecord, name = "tensor"): Tensor {
  const data = record.data instanceof BigInt64Array ? int64ToInt32(record.data, name) : record.data;
  const out = tensor(data, record.shape, DEVICE_DTYPE[DTYPES[record.dtype].host]);
  out.name = name;
  return out;
}

/** Which file dtypes a GPU dtype may be saved as (the first is the default). */
const SAVE_AS: Record<DType, SafeDType[]> = {
  f32: ["F32", "F16", "BF16"],
  i32: ["I32", "I64"],
  u32: ["U32"],
};

/** The record of a tensor read back as `bytes`, stored as `dtype` (which must suit the tensor). */
function recordOf(t: Tensor, bytes: ArrayBuffer, dtype: SafeDType): TensorRecord {
  if (!SAVE_AS[t.dtype].includes(dtype)) {
    throw new Error(
      `peco: fromGpu: ${t.describe()} cannot be saved as ${dtype} (only ${SAVE_AS[t.dtype]})`,
    );
  }
  const values = typedArray(t.dtype, bytes);
  const data = dtype === "I64" ? BigInt64Array.from(values, (v) => BigInt(v)) : values;
  return { dtype, shape: [...t.shape], data };
}

/** Reads tensors back with one GPU sync, as records of their dtype (or `floatDtype` for f32). */
export async function fromGpuAll(
  tensors: Map<string, Tensor> | Iterable<[string, Tensor]>,
  { floatDtype = "F32" }: { floatDtype?: "F32" | "F16" | "BF16" } = {},
): Promise<Map<string, TensorRecord>> {
  const list = [...tensors];
  const buffers = await gpu().recorder.readMany(
    list.map(([, t]) => byteRange(t)),
  );
  const out = new Map<string, TensorRecord>();
  list.forEach(([name, t], i) => {
    out.set(name, recordOf(t, buffers[i], t.dtype === "f32" ? floatDtype : SAVE_AS[t.dtype][0]));
  });
  return out;
}

/** Reads one tensor back as a record, stored as `dtype` (F16/BF16 for f32, I64 for i32 allowed). */
export async function fromGpu(
  t: Tensor,
  dtype: SafeDType = SAVE_AS[t.dtype][0],
): Promise<TensorRecord> {
  const [bytes] = await gpu().recorder.readMany([byteRange(t)]);
  return recordOf(t, bytes, dtype);
}
