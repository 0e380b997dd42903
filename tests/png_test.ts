// PNG images and grids (decoded back with pngjs and compared with a reference).

import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { join } from "node:path";
import { PNG } from "pngjs";
import { prod, randArray } from "./util.ts";
import {
  encodePng,
  type HostImages,
  imageGrid,
  interleave,
  toBytes,
  writeImageGrid,
  writePng,
} from "../lib/io/png.ts";
import { tensor } from "../lib/tensor/mod.ts";

/** Decodes a PNG into planar [C, H, W] bytes with C = 1 for grey files. */
function decode(
  bytes: Uint8Array,
): {
  channels: number;
  height: number;
  width: number;
  at: (c: number, y: number, x: number) => number;
} {
  const png = PNG.sync.read(Buffer.from(bytes));
  const grey = (png as unknown as { colorType: number }).colorType === 0;
  return {
    channels: grey ? 1 : 3,
    height: png.height,
    width: png.width,
    at: (c, y, x) => png.data[(y * png.width + x) * 4 + c],
  };
}

/** The reference mapping of a value to a byte. */
function refByte(v: number, lo: number, hi: number): number {
  if (Number.isNaN(v)) return 0;
  return Math.round(Math.min(1, Math.max(0, (v - lo) / (hi - lo))) * 255);
}

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "peco-png-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("toBytes maps the range, clamps outside it and sends NaN to 0", () => {
  const values = [-1, -0.5, 0, 0.25, 0.5, 0.999, 1, 3, NaN, -Infinity, Infinity];
  assert.deepEqual([...toBytes(values, [-0.5, 1])], values.map((v) => refByte(v, -0.5, 1)));
  assert.throws(() => toBytes([0], [1, 1]), /peco: png: value range \[1, 1\] is empty/);
});

Deno.test("grey and RGB images round-trip through PNG (odd sizes)", async () => {
  await withTempDir(async (dir) => {
    for (const [c, h, w] of [[1, 5, 3], [3, 1, 7], [3, 4, 1]]) {
      const data = randArray(c * h * w, 10 + c + h, -1.2, 1.2);
      const path = join(dir, `img-${c}-${h}-${w}.png`);
      await writePng(path, { data, shape: [c, h, w] }, { range: [-1, 1] });
      const img = decode(await Deno.readFile(path));
      assert.deepEqual([img.channels, img.height, img.width], [c, h, w]);
      for (let k = 0; k < c; k++) {
        for (let y = 0; y < h; y++) {
          for (let x = 0; x < w; x++) {
            assert.equal(
              img.at(k, y, x),
              refByte(data[(k * h + y) * w + x], -1, 1),
              `${k},${y},${x}`,
            );
          }
        }
      }
    }
    // A GPU tensor [1, C, H, W] works the same.
    const data = randArray(3 * 3 * 5, 3, 0, 1);
    const t = tensor(data, [1, 3, 3, 5]);
    await writePng(join(dir, "t.png"), t);
    t.dispose();
    const img = decode(await Deno.readFile(join(dir, "t.png")));
    assert.equal(img.at(2, 2, 4), refByte(data[(2 * 3 + 2) * 5 + 4], 0, 1));
  });
});

Deno.test("imageGrid places images row by row with padding", () => {
  const [n, c, h, w] = [5, 1, 3, 2];
  const data = randArray(n * c * h * w, 4, 0, 1);
  const grid = imageGrid({ data, shape: [n, c, h, w] }, { cols: 2, padding: 1, background: 7 });
  const rows = 3;
  assert.deepEqual([grid.channels, grid.height, grid.width], [1, rows * h + 4, 2 * w + 3]);
  for (let y = 0; y < grid.height; y++) {
    for (let x = 0; x < grid.width; x++) {
      const gy = y - 1, gx = x - 1;
      const cellY = Math.floor(gy / (h + 1)), cellX = Math.floor(gx / (w + 1));
      const iy = gy - cellY * (h + 1), ix = gx - cellX * (w + 1);
      const i = cellY * 2 + cellX;
      const inside = gy >= 0 && gx >= 0 && iy < h && ix < w && cellX < 2 && i < n;
      const want = inside ? refByte(data[(i * h + iy) * w + ix], 0, 1) : 7;
      assert.equal(grid.pixels[y * grid.width + x], want, `pixel ${y},${x}`);
    }
  }
});

Deno.test("input | reconstruction grids interleave the sets (tensors or host arrays)", async () => {
  await withTempDir(async (dir) => {
    const shape = [3, 3, 2, 3];
    const a = randArray(prod(shape), 5, 0, 1);
    const b = randArray(prod(shape), 6, 0, 1);
    const mixed = interleave([{ data: a, shape }, { data: b, shape }]);
    assert.deepEqual(mixed.shape, [6, 3, 2, 3]);
    const size = 3 * 2 * 3;
    assert.deepEqual(
      Array.from(mixed.data).slice(size, 2 * size),
      Array.from(Float32Array.from(b.slice(0, size))),
    );
    assert.deepEqual(
      Array.from(mixed.data).slice(4 * size, 5 * size),
      Array.from(Float32Array.from(a.slice(2 * size, 3 * size))),
    );

    const path = join(dir, "pairs.png");
    const ta = tensor(a, shape);
    await writeImageGrid(path, [ta, { data: b, shape }], { padding: 1 });
    ta.dispose();
    const img = decode(await Deno.readFile(path));
    // 3 pairs: cols = 2 × ceil(√3) = 4 images per row, 2 rows.
    assert.deepEqual([img.channels, img.height, img.width], [3, 2 * 2 + 3, 4 * 3 + 5]);
    // Image 1 of the grid (row 0, col 1) is b[0]; image 4 (row 1, col 0) is a[2].
    assert.equal(img.at(1, 1 + 1, 1 + 3 + 1 + 2), refByte(b[(0 * 3 + 1) * 6 + 1 * 3 + 2], 0, 1));
    assert.equal(img.at(2, 1 + 2 + 1, 1), refByte(a[(2 * 3 + 2) * 6], 0, 1));
  });
});

Deno.test("bad image shapes and mismatched sets fail clearly", async () => {
  const bad: HostImages = { data: [0, 0, 0, 0], shape: [2, 2] };
  assert.throws(
    () => imageGrid(bad),
    /peco: png: images must be \[C,H,W\] or \[N,C,H,W\] with C = 1 or 3, got \[2,2\]/,
  );
  assert.throws(
    () => imageGrid({ data: new Array(8).fill(0), shape: [1, 2, 2, 2] }),
    /C = 1 or 3, got \[1,2,2,2\]/,
  );
  assert.throws(
    () => imageGrid({ data: [1, 2], shape: [1, 1, 1, 3] }),
    /2 values do not fill \[1,1,1,3\]/,
  );
  assert.throws(
    () => interleave([{ data: [0], shape: [1, 1, 1] }, { data: [0, 0], shape: [1, 1, 2] }]),
    /image sets differ in shape: \[1,1,1\] vs \[1,1,2\]/,
  );
  await assert.rejects(
    writePng("/nonexistent/x.png", { data: [0, 0], shape: [2, 1, 1, 1] }),
    /one image expected, got 2/,
  );
  const t = tensor([1, 2], [1, 1, 2], "i32");
  await assert.rejects(writePng("/nonexistent/x.png", t), /images must be f32/);
  t.dispose();
  assert.throws(
    () => encodePng({ pixels: new Uint8Array(5), channels: 1, height: 2, width: 2 }),
    /5 bytes for \[1,2,2\]/,
  );
});
