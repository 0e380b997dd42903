// Writes fixtures/safetensors/: small valid files of every supported dtype with known values, and
// malformed ones, one per validation rule. The bytes are laid out here by hand (not with
// lib/io/safetensors.ts), so the reader's tests do not just check the writer against itself.
//
//   deno run --allow-read=fixtures --allow-write=fixtures tools/make_fixtures.ts [out-dir]

import { join } from "node:path";
import { writeFileAtomic } from "../lib/io/atomic.ts";

export const FIXTURE_DIR = "fixtures/safetensors";

type Bytes = Uint8Array;

const f32 = (values: number[]): Bytes => new Uint8Array(new Float32Array(values).buffer);
const i32 = (values: number[]): Bytes => new Uint8Array(new Int32Array(values).buffer);
const i64 = (values: bigint[]): Bytes => new Uint8Array(new BigInt64Array(values).buffer);
const u16 = (bits: number[]): Bytes => new Uint8Array(new Uint16Array(bits).buffer);

function concat(parts: Bytes[]): Bytes {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/**
 * A file from a header (an object, or raw text for broken JSON) and the data section. `pad` aligns
 * the data section to 8 bytes with spaces; `headerLength` overrides the length field.
 */
function file(
  header: unknown,
  data: Bytes,
  { pad = true, headerLength }: { pad?: boolean; headerLength?: number } = {},
): Bytes {
  let text = typeof header === "string" ? header : JSON.stringify(header);
  if (pad) text = text.padEnd(Math.ceil(text.length / 8) * 8, " ");
  const json = new TextEncoder().encode(text);
  const prefix = new Uint8Array(8);
  new DataView(prefix.buffer).setBigUint64(0, BigInt(headerLength ?? json.length), true);
  return concat([prefix, json, data]);
}

/** Header entries for tensors laid out back to back, in the order given. */
function layout(tensors: [string, string, number[], Bytes][]): [Record<string, unknown>, Bytes] {
  const header: Record<string, unknown> = {};
  let offset = 0;
  for (const [name, dtype, shape, bytes] of tensors) {
    header[name] = { dtype, shape, data_offsets: [offset, offset + bytes.length] };
    offset += bytes.length;
  }
  return [header, concat(tensors.map((t) => t[3]))];
}

function valid(
  tensors: [string, string, number[], Bytes][],
  metadata?: Record<string, string>,
  pad = true,
): Bytes {
  const [header, data] = layout(tensors);
  return file(metadata ? { __metadata__: metadata, ...header } : header, data, { pad });
}

/** Every fixture file by name. */
export function fixtureFiles(): Map<string, Bytes> {
  const w = { dtype: "F32", shape: [1], data_offsets: [0, 4] };
  return new Map([
    // ---- valid ----
    [
      "f32.safetensors",
      valid([
        ["weight", "F32", [2, 3], f32([1, -2, 0.5, 3.25, -0, 0.1])],
        ["bias", "F32", [3], f32([0.25, -1.5, 100])],
        ["scalar", "F32", [], f32([7])],
        ["empty", "F32", [0, 3], f32([])],
      ], { format: "pt", note: "peco fixture" }),
    ],
    // 1, -2, 0.5, 65504 (max), 2^-24 (min subnormal), -0, inf, -inf, NaN. No header padding: the
    // data section starts unaligned.
    [
      "f16.safetensors",
      valid(
        [[
          "h",
          "F16",
          [3, 3],
          u16([0x3c00, 0xc000, 0x3800, 0x7bff, 0x0001, 0x8000, 0x7c00, 0xfc00, 0x7e00]),
        ]],
        undefined,
        false,
      ),
    ],
    // 1, -2, 3.140625, 2^-133 (subnormal), inf, NaN.
    [
      "bf16.safetensors",
      valid([["b", "BF16", [2, 3], u16([0x3f80, 0xc000, 0x4049, 0x0001, 0x7f80, 0x7fc0])]]),
    ],
    ["i32.safetensors", valid([["ids", "I32", [5], i32([0, -1, 2147483647, -2147483648, 42])]])],
    [
      "i64.safetensors",
      valid([
        ["small", "I64", [2, 2], i64([0n, -1n, 2147483647n, -2147483648n])],
        ["big", "I64", [1], i64([1n << 40n])],
      ]),
    ],
    // ---- malformed ----
    ["file_too_short.safetensors", new Uint8Array([1, 0, 0, 0])],
    ["header_beyond_file.safetensors", file({ w }, f32([1]), { headerLength: 1000 })],
    [
      "invalid_json.safetensors",
      file('{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}', f32([1])),
    ],
    [
      "unknown_dtype.safetensors",
      file({ w: { dtype: "F42", shape: [1], data_offsets: [0, 4] } }, f32([1])),
    ],
    [
      "out_of_bounds.safetensors",
      file({ w: { dtype: "F32", shape: [4], data_offsets: [0, 16] } }, f32([1, 2])),
    ],
    [
      "overlapping.safetensors",
      file({
        a: { dtype: "F32", shape: [4], data_offsets: [0, 16] },
        b: { dtype: "F32", shape: [4], data_offsets: [8, 24] },
      }, f32([1, 2, 3, 4, 5, 6])),
    ],
    [
      "size_mismatch.safetensors",
      file({ w: { dtype: "F32", shape: [2, 3], data_offsets: [0, 20] } }, f32([1, 2, 3, 4, 5])),
    ],
    [
      "hole.safetensors",
      file({
        a: { dtype: "F32", shape: [1], data_offsets: [0, 4] },
        b: { dtype: "F32", shape: [1], data_offsets: [8, 12] },
      }, f32([1, 2, 3])),
    ],
    ["non_string_metadata.safetensors", file({ __metadata__: { epoch: 3 }, w }, f32([1]))],
  ]);
}

/** Writes every fixture into `dir` (which must exist). */
export async function makeFixtures(dir = FIXTURE_DIR): Promise<string[]> {
  const names: string[] = [];
  for (const [name, bytes] of fixtureFiles()) {
    await writeFileAtomic(join(dir, name), bytes);
    names.push(name);
  }
  return names;
}

if (import.meta.main) {
  const dir = Deno.args[0] ?? FIXTURE_DIR;
  await Deno.mkdir(dir, { recursive: true });
  const names = await makeFixtures(dir);
  console.log(`wrote ${names.length} files to ${dir}`);
}
