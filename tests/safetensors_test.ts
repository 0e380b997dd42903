import assert from "node:assert/strict";
import { join } from "node:path";
import { assertClose } from "./util.ts";
import { TEMP_PREFIX, writeFileAtomic, writeJsonAtomic } from "../lib/io/atomic.ts";
import {
  f16BitsToF32,
  f32ToBf16Bits,
  f32ToF16Bits,
  fromGpu,
  fromGpuAll,
  int64ToInt32,
  parseSafetensors,
  readSafetensors,
  readSafetensorsWhere,
  serializeSafetensors,
  type TensorRecord,
  toGpu,
  writeSafetensors,
} from "../lib/io/safetensors.ts";
import { tensor } from "../lib/tensor/mod.ts";
import { FIXTURE_DIR, fixtureFiles } from "../tools/make_fixtures.ts";

const ROOT = join(import.meta.dirname!, "..");
const fixture = (name: string) => join(ROOT, FIXTURE_DIR, name);

/** Values compared exactly, -0 and NaN included. */
function assertSame(actual: ArrayLike<number | bigint>, expected: (number | bigint)[], what = "") {
  assert.equal(actual.length, expected.length, `${what}: length`);
  for (let i = 0; i < expected.length; i++) {
    assert.ok(Object.is(actual[i], expected[i]), `${what}[${i}]: ${actual[i]} != ${expected[i]}`);
  }
}

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "peco-safetensors-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function listDir(dir: string): Promise<string[]> {
  const names: string[] = [];
  for await (const e of Deno.readDir(dir)) names.push(e.name);
  return names.sort();
}

// ---- fixtures --------------------------------------------------------------------------------

Deno.test("fixtures on disk match tools/make_fixtures.ts and are small", async () => {
  const files = fixtureFiles();
  assert.ok(files.size >= 14);
  for (const [name, bytes] of files) {
    const onDisk = await Deno.readFile(fixture(name));
    assert.deepEqual(onDisk, bytes, `${name} is stale: run tools/make_fixtures.ts`);
    assert.ok(onDisk.length < 2048, `${name} is ${onDisk.length} bytes`);
  }
});

Deno.test("F32 fixture: values, shapes, file order and metadata", async () => {
  const { tensors, metadata } = await readSafetensors(fixture("f32.safetensors"));
  assert.deepEqual([...tensors.keys()], ["weight", "bias", "scalar", "empty"]);
  assert.deepEqual(metadata, { format: "pt", note: "peco fixture" });
  const w = tensors.get("weight")!;
  assert.equal(w.dtype, "F32");
  assert.deepEqual(w.shape, [2, 3]);
  assert.ok(w.data instanceof Float32Array);
  assertSame(w.data, [1, -2, 0.5, 3.25, -0, Math.fround(0.1)], "weight");
  assertSame(tensors.get("bias")!.data, [0.25, -1.5, 100], "bias");
  assert.deepEqual(tensors.get("scalar")!.shape, []);
  assertSame(tensors.get("scalar")!.data, [7], "scalar");
  assert.deepEqual(tensors.get("empty")!.shape, [0, 3]);
  assert.equal(tensors.get("empty")!.data.length, 0);
});

Deno.test("F16 fixture (unaligned data section): decoded to f32, dtype kept", async () => {
  const { tensors, metadata } = await readSafetensors(fixture("f16.safetensors"));
  assert.deepEqual(metadata, {});
  const h = tensors.get("h")!;
  assert.equal(h.dtype, "F16");
  assert.deepEqual(h.shape, [3, 3]);
  assert.ok(h.data instanceof Float32Array);
  assertSame(
    h.data,
    [1, -2, 0.5, 65504, 2 ** -24, -0, Infinity, -Infinity, NaN],
    "f16",
  );
});

Deno.test("BF16 fixture: decoded to f32, subnormal and specials included", async () => {
  const b = (await readSafetensors(fixture("bf16.safetensors"))).tensors.get("b")!;
  assert.equal(b.dtype, "BF16");
  assertSame(b.data as Float32Array, [1, -2, 3.140625, 2 ** -133, Infinity, NaN], "bf16");
});

Deno.test("I32 and I64 fixtures; I64 converts to i32 only when the values fit", async () => {
  const ids = (await readSafetensors(fixture("i32.safetensors"))).tensors.get("ids")!;
  assert.equal(ids.dtype, "I32");
  assert.ok(ids.data instanceof Int32Array);
  assertSame(ids.data, [0, -1, 2147483647, -2147483648, 42], "i32");

  const { tensors } = await readSafetensors(fixture("i64.safetensors"));
  const small = tensors.get("small")!;
  assert.equal(small.dtype, "I64");
  assert.ok(small.data instanceof BigInt64Array);
  assertSame(small.data, [0n, -1n, 2147483647n, -2147483648n], "i64");
  assertSame(int64ToInt32(small.data, "small"), [0, -1, 2147483647, -2147483648], "as i32");
  const big = tensors.get("big")!;
  assertSame(big.data as BigInt64Array, [1n << 40n], "big");
  assert.throws(
    () => int64ToInt32(big.data as BigInt64Array, "big"),
    /^Error: peco: big: I64 value 1099511627776 at index 0 does not fit in i32$/,
  );
  assert.throws(() => toGpu(big, "big"), /peco: big: I64 value 1099511627776/);
});

const malformed: [string, string | null, RegExp][] = [
  ["file_too_short", null, /4 bytes is too short/],
  ["header_beyond_file", null, /header length 1000 goes beyond the end of the file \(68 bytes\)/],
  ["invalid_json", null, /header is not valid JSON/],
  ["unknown_dtype", "w", /unknown dtype "F42" \(supported: F32, F16, BF16, I32, I64, U32\)/],
  ["out_of_bounds", "w", /data_offsets \[0, 16\] are out of bounds of the 8-byte data section/],
  ["overlapping", "b", /data_offsets \[8, 24\] overlap those of tensor "a" \[0, 16\]/],
  ["size_mismatch", "w", /F32 \[2,3\] needs 24 bytes but data_offsets \[0, 20\] hold 20/],
  ["hole", "b", /bytes \[4, 8\) before it belong to no tensor/],
  ["non_string_metadata", null, /__metadata__ value of "epoch" is 3, not a string/],
];

for (const [name, tensorName, why] of malformed) {
  Deno.test(`malformed fixture ${name}: one clear line naming the file and tensor`, async () => {
    const path = fixture(`${name}.safetensors`);
    // The selective reader validates the whole header the same way, even when it reads nothing.
    for (const read of [readSafetensors, (p: string) => readSafetensorsWhere(p, () => false)]) {
      const error = await read(path).then(() => null, (e: Error) => e);
      assert.ok(error instanceof Error, `${name} was accepted`);
      const message = error.message;
      assert.ok(message.startsWith(`peco: safetensors ${path}: `), message);
      if (tensorName) assert.ok(message.includes(`tensor "${tensorName}"`), message);
      assert.match(message, why);
      assert.ok(!message.includes("\n"), "one line");
    }
  });
}

Deno.test("readSafetensorsWhere reads the selected tensors only and lists the others", async () => {
  const path = fixture("f32.safetensors");
  const all = await readSafetensors(path);
  const [first, ...rest] = [...all.tensors.keys()];
  const some = await readSafetensorsWhere(path, (name) => name === first);
  assert.deepEqual([...some.tensors.keys()], [first]);
  assertSame(some.tensors.get(first)!.data as Float32Array, [
    ...(all.tensors.get(first)!.data as Float32Array),
  ]);
  assert.deepEqual(some.skipped.map((e) => e.name).sort(), rest.sort());
  for (const e of some.skipped) assert.deepEqual(e.shape, all.tensors.get(e.name)!.shape);
  assert.deepEqual(some.metadata, all.metadata);
  await assert.rejects(
    readSafetensorsWhere("/nonexistent/x.safetensors", () => true),
    /peco: safetensors \/nonexistent\/x\.safetensors: /,
  );
});

Deno.test("parseSafetensors names the in-memory source; missing file names the path", async () => {
  const bytes = fixtureFiles().get("unknown_dtype.safetensors")!;
  assert.throws(
    () => parseSafetensors(bytes, "upload.bin"),
    /^Error: peco: safetensors upload\.bin: tensor "w"/,
  );
  assert.throws(() => parseSafetensors(bytes), /safetensors <memory>: /);
  await assert.rejects(
    readSafetensors("/nonexistent/x.safetensors"),
    /peco: safetensors \/nonexistent\/x\.safetensors: /,
  );
});

// ---- half-precision rounding ----------------------------------------------------------------

Deno.test("f32 → F16 bits round to nearest even at the edges", () => {
  const cases: [number, number][] = [
    [1, 0x3c00],
    [-2, 0xc000],
    [1 + 2 ** -11, 0x3c00], // tie: to even
    [1 + 3 * 2 ** -11, 0x3c02], // tie: to even (up)
    [1 + 2 ** -11 + 2 ** -20, 0x3c01],
    [65504, 0x7bff],
    [65519, 0x7bff],
    [65520, 0x7c00], // overflows to inf
    [2 ** -14, 0x0400], // smallest normal
    [2 ** -14 - 2 ** -25, 0x0400], // subnormal rounding up into the normals
    [2 ** -24, 0x0001],
    [2 ** -25, 0x0000], // tie with zero: to even
    [1.5 * 2 ** -25, 0x0001],
    [-0, 0x8000],
    [Infinity, 0x7c00],
    [-Infinity, 0xfc00],
  ];
  for (const [x, bits] of cases) {
    assert.equal(f32ToF16Bits(x), bits, `f16(${x}) = 0x${f32ToF16Bits(x).toString(16)}`);
  }
  assert.ok(Number.isNaN(f16BitsToF32(f32ToF16Bits(NaN))));
});

Deno.test("F16 and BF16 encoding picks the nearest representable value (property)", () => {
  const bf16ToF32 = (h: number) => new Float32Array(new Uint32Array([h << 16]).buffer)[0];
  const cases: [string, (x: number) => number, (h: number) => number, number][] = [
    ["f16", f32ToF16Bits, f16BitsToF32, 60000],
    ["bf16", f32ToBf16Bits, bf16ToF32, 1e30],
  ];
  let x = 0.123;
  for (const [name, encode, decode, range] of cases) {
    for (let i = 0; i < 3000; i++) {
      x = Math.fround(((Math.sin(i * 12.9898 + 1) * 43758.5453) % 1) * range * 2 ** -(i % 30));
      const h = encode(x);
      const v = decode(h);
      // Neighbours on the same side of zero: none may be strictly closer.
      for (const n of [h - 1, h + 1]) {
        if ((n & 0x7fff) === 0x7fff || (n ^ h) & 0x8000) continue;
        const w = decode(n & 0xffff);
        if (Number.isFinite(w)) {
          assert.ok(Math.abs(w - x) >= Math.abs(v - x), `${name}(${x}) = ${v}, but ${w} is closer`);
        }
      }
    }
  }
});

// ---- writing --------------------------------------------------------------------------------

function everyDtype(): Map<string, TensorRecord> {
  return new Map<string, TensorRecord>([
    ["f32", {
      dtype: "F32",
      shape: [3, 1, 5],
      data: Float32Array.from({ length: 15 }, (_, i) => Math.fround(Math.sin(i) * 10)),
    }],
    ["f16", { dtype: "F16", shape: [5], data: new Float32Array([1, -2, 0.5, 65504, 2 ** -24]) }],
    ["bf16", { dtype: "BF16", shape: [1, 3], data: new Float32Array([3.140625, -0, 2 ** 100]) }],
    ["i32", { dtype: "I32", shape: [3], data: new Int32Array([7, -2147483648, 2147483647]) }],
    ["i64", { dtype: "I64", shape: [2], data: new BigInt64Array([-(1n << 50n), 3n]) }],
    ["i64_from_i32", { dtype: "I64", shape: [2], data: new Int32Array([-5, 6]) }],
    ["u32", { dtype: "U32", shape: [2], data: new Uint32Array([0, 4294967295]) }],
    ["empty", { dtype: "F32", shape: [0], data: new Float32Array(0) }],
  ]);
}

Deno.test("round trip of every dtype keeps values, shapes, dtypes and metadata", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "all.safetensors");
    const records = everyDtype();
    const metadata = { format: "pt", "step": "12", unicode: "héllo ✓" };
    await writeSafetensors(path, records, metadata);
    const back = await readSafetensors(path);
    assert.deepEqual(back.metadata, metadata);
    assert.deepEqual([...back.tensors.keys()].sort(), [...records.keys()].sort());
    for (const [name, r] of records) {
      const b = back.tensors.get(name)!;
      assert.equal(b.dtype, r.dtype, name);
      assert.deepEqual(b.shape, r.shape, name);
      const expected = name === "i64_from_i32"
        ? [-5n, 6n]
        : name === "f16"
        ? [1, -2, 0.5, 65504, 2 ** -24]
        : Array.from(r.data as ArrayLike<number>);
      assertSame(b.data, expected, name);
    }
    assertSame(back.tensors.get("i64")!.data, [-(1n << 50n), 3n], "i64");
    assert.deepEqual(await listDir(dir), ["all.safetensors"], "no temp file left");

    // Layout: header padded with spaces to 8 bytes; tensors ordered by element size then name, so
    // each starts aligned to its element size.
    const bytes = await Deno.readFile(path);
    const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    assert.equal((8 + n) % 8, 0);
    const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n)));
    const order = Object.entries(header)
      .filter(([k]) => k !== "__metadata__")
      .sort(([, a], [, b]) =>
        (a as { data_offsets: number[] }).data_offsets[0] -
        (b as { data_offsets: number[] }).data_offsets[0]
      )
      .map(([k]) => k);
    assert.deepEqual(order, ["i64", "i64_from_i32", "empty", "f32", "i32", "u32", "bf16", "f16"]);
  });
});

Deno.test("writing is deterministic: insertion order does not change the bytes", () => {
  const records = everyDtype();
  const reversed = new Map([...records].reverse());
  const a = serializeSafetensors(records, { b: "2", a: "1" });
  const b = serializeSafetensors(reversed, { b: "2", a: "1" });
  assert.deepEqual(a, b);
  const back = parseSafetensors(a, "mem");
  assert.equal(back.tensors.size, records.size);
  // F16/BF16 values are rounded on write.
  const rounded = parseSafetensors(
    serializeSafetensors({ h: { dtype: "F16", shape: [2], data: new Float32Array([0.1, 70000]) } }),
  ).tensors.get("h")!;
  assertSame(rounded.data, [f16BitsToF32(0x2e66), Infinity], "rounded");
});

Deno.test("bad records and metadata are rejected naming the tensor; the target is untouched", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "model.safetensors");
    await Deno.writeTextFile(path, "old");
    const bad: [Record<string, TensorRecord>, Record<string, string>, RegExp][] = [
      [
        { w: { dtype: "F32", shape: [2, 3], data: new Float32Array(5) } },
        {},
        /tensor "w": 5 values do not fill shape \[2,3\]/,
      ],
      [
        { w: { dtype: "F32", shape: [2], data: new Int32Array(2) } },
        {},
        /tensor "w": F32 data cannot be a Int32Array/,
      ],
      [
        { w: { dtype: "I32", shape: [2], data: new Float32Array(2) } },
        {},
        /tensor "w": I32 data cannot be a Float32Array/,
      ],
      [
        { w: { dtype: "F8" as "F32", shape: [1], data: new Float32Array(1) } },
        {},
        /tensor "w": unknown dtype "F8"/,
      ],
      [
        { w: { dtype: "F32", shape: [-1], data: new Float32Array(1) } },
        {},
        /tensor "w": invalid shape \[-1\]/,
      ],
      [{ w: { dtype: "F32", shape: [1], data: new Float32Array(1) } }, {
        epoch: 3 as unknown as string,
      }, /__metadata__ value of "epoch" is 3, not a string/],
    ];
    for (const [tensors, metadata, why] of bad) {
      await assert.rejects(writeSafetensors(path, tensors, metadata), (e: Error) => {
        assert.ok(e.message.startsWith(`peco: safetensors ${path}: `), e.message);
        assert.match(e.message, why);
        return true;
      });
    }
    assert.equal(await Deno.readTextFile(path), "old");
    assert.deepEqual(await listDir(dir), ["model.safetensors"]);
  });
});

// ---- atomic files ---------------------------------------------------------------------------

Deno.test("writeFileAtomic replaces the target and leaves no temp file", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "a.txt");
    await Deno.writeTextFile(path, "old");
    await writeFileAtomic(path, "new ✓");
    assert.equal(await Deno.readTextFile(path), "new ✓");
    await writeFileAtomic(path, [new Uint8Array([104, 105]), new Uint8Array([33])]);
    assert.equal(await Deno.readTextFile(path), "hi!");
    await writeJsonAtomic(join(dir, "m.json"), { a: [1, 2] });
    assert.equal(
      await Deno.readTextFile(join(dir, "m.json")),
      '{\n  "a": [\n    1,\n    2\n  ]\n}\n',
    );
    assert.deepEqual(await listDir(dir), ["a.txt", "m.json"]);
  });
});

Deno.test("writeFileAtomic failing midway keeps the old target and removes its temp file", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "ckpt.safetensors");
    await Deno.writeTextFile(path, "old checkpoint");
    function* chunks() {
      yield new Uint8Array(1000).fill(1);
      throw new Error("disk on fire");
    }
    await assert.rejects(
      writeFileAtomic(path, chunks()),
      /^Error: peco: could not write .*ckpt\.safetensors: disk on fire$/,
    );
    assert.equal(await Deno.readTextFile(path), "old checkpoint");
    assert.deepEqual(await listDir(dir), ["ckpt.safetensors"]);

    // The rename itself fails (the target is a non-empty folder): temp removed, folder intact.
    const folder = join(dir, "taken");
    await Deno.mkdir(folder);
    await Deno.writeTextFile(join(folder, "x"), "x");
    await assert.rejects(writeFileAtomic(folder, "data"), /peco: could not write .*taken: /);
    const left = await listDir(dir);
    assert.deepEqual(left, ["ckpt.safetensors", "taken"]);
    assert.ok(!left.some((n) => n.startsWith(TEMP_PREFIX)));

    // A missing folder is a clear error too.
    await assert.rejects(writeFileAtomic(join(dir, "nope", "f"), "x"), /could not write .*nope/);
  });
});

// ---- GPU ------------------------------------------------------------------------------------

Deno.test("toGpu / fromGpu round trip records of every dtype through GPU tensors", async () => {
  const records = everyDtype();
  records.set("i64", { dtype: "I64", shape: [2], data: new BigInt64Array([-(1n << 31n), 3n]) });
  const deviceDtype = { F32: "f32", F16: "f32", BF16: "f32", I32: "i32", I64: "i32", U32: "u32" };
  for (const [name, r] of records) {
    const t = toGpu(r, name);
    assert.equal(t.name, name);
    assert.deepEqual(t.shape, r.shape);
    assert.equal(t.dtype, deviceDtype[r.dtype], name);
    const back = await fromGpu(t, r.dtype);
    assert.equal(back.dtype, r.dtype);
    assert.deepEqual(back.shape, r.shape);
    const values = Array.from(r.data as ArrayLike<number | bigint>);
    assertSame(back.data, r.dtype === "I64" ? values.map((v) => BigInt(v)) : values, name);
    t.dispose();
  }
  const big = { dtype: "I64" as const, shape: [1], data: new BigInt64Array([1n << 40n]) };
  assert.throws(() => toGpu(big, "ids"), /^Error: peco: ids: I64 value 1099511627776 at index 0/);
  const x = tensor([1.5, -2, 0.1], [3]);
  await assert.rejects(fromGpu(x, "I32"), /peco: fromGpu: tensor<f32>\[3\] cannot be saved as I32/);
  const ids = tensor([4, -9], [1, 2], "i32");
  const all = await fromGpuAll(new Map([["x", x], ["ids", ids]]), { floatDtype: "BF16" });
  assert.deepEqual([...all.keys()], ["x", "ids"]);
  assert.equal(all.get("x")!.dtype, "BF16");
  assertClose(all.get("x")!.data as Float32Array, [1.5, -2, 0.1], { atol: 0, rtol: 1e-7 });
  assert.equal(all.get("ids")!.dtype, "I32");
  assert.deepEqual(all.get("ids")!.shape, [1, 2]);
  assertSame(all.get("ids")!.data, [4, -9], "ids");
  x.dispose();
  ids.dispose();
});
