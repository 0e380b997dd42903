// PNG images and grids (decoded back with pngjs and compared with a reference), and the plots.

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
import {
  Canvas,
  formatTick,
  histogram,
  histogramPlot,
  linePlot,
  niceTicks,
  PALETTE,
  textWidth,
  writePlot,
} from "../lib/io/plot.ts";
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

// ---- plots ----------------------------------------------------------------------------------

Deno.test("the bitmap font draws known glyphs", () => {
  const canvas = new Canvas(16, 9);
  canvas.text(1, 1, "1L");
  const art = Array.from(
    { length: 7 },
    (_, r) =>
      Array.from({ length: 11 }, (_, c) => canvas.pixels[(r + 1) * 16 + c + 1] === 0 ? "#" : ".")
        .join(""),
  );
  assert.deepEqual(art, [
    "..#...#....",
    ".##...#....",
    "..#...#....",
    "..#...#....",
    "..#...#....",
    "..#...#....",
    ".###..#####",
  ]);
  assert.equal(textWidth("1L"), 11);
});

Deno.test("niceTicks and formatTick give round, readable ticks", () => {
  assert.deepEqual(niceTicks(0, 1), {
    ticks: [0, 0.2, 0.4, 0.6, 0.8, 1],
    step: 0.2,
  });
  const { ticks, step } = niceTicks(-3.7, 12.2);
  assert.equal(step, 5);
  assert.deepEqual(ticks, [0, 5, 10]);
  assert.equal(formatTick(0.6000000000000001, 0.2), "0.6");
  assert.equal(formatTick(1500, 500), "1500");
  assert.equal(formatTick(2e-4, 1e-4), "2.0e-4");
  assert.equal(formatTick(-1e-17, 0.5), "0");
  assert.equal(niceTicks(3, 3).ticks.includes(3), true);
});

Deno.test("linePlot draws each series in its colour inside the axes", async () => {
  const x = Array.from({ length: 31 }, (_, i) => i * 10);
  const loss = x.map((s) => 2 * Math.exp(-s / 100) + 0.05);
  const image = linePlot(
    [{ name: "train", x, y: loss }, {
      name: "val",
      x,
      y: loss.map((v, i) => (i === 7 ? NaN : v * 1.2)),
    }],
    { title: "Loss", xLabel: "step", yLabel: "loss", width: 301, height: 201, logY: true },
  );
  assert.deepEqual([image.channels, image.height, image.width], [3, 201, 301]);
  const plane = image.height * image.width;
  const count = (c: readonly number[]) => {
    let n = 0;
    for (let i = 0; i < plane; i++) {
      if (
        image.pixels[i] === c[0] && image.pixels[plane + i] === c[1] &&
        image.pixels[2 * plane + i] === c[2]
      ) n++;
    }
    return n;
  };
  assert.ok(count(PALETTE[0]) > 150, `train line has ${count(PALETTE[0])} pixels`);
  assert.ok(count(PALETTE[1]) > 150, `val line has ${count(PALETTE[1])} pixels`);
  assert.throws(() => linePlot([{ x: [1, 2], y: [1] }]), /has 2 x but 1 y/);
  await withTempDir(async (dir) => {
    await writePlot(join(dir, "loss.png"), image);
    const png = decode(await Deno.readFile(join(dir, "loss.png")));
    assert.deepEqual([png.channels, png.height, png.width], [3, 201, 301]);
  });
});

Deno.test("histogram counts and histogramPlot bars (grouped beyond the plot width)", () => {
  const values = [0, 0.1, 0.5, 0.99, 1, 2, NaN, -1];
  const h = histogram(values, 4, [0, 1]);
  assert.deepEqual(h, { counts: [2, 0, 1, 2], x0: 0, binWidth: 0.25 });

  // One code used 50 times, the others once: the tallest bar reaches the top tick.
  const counts = new Array(37).fill(1);
  counts[5] = 50;
  const img = histogramPlot({ counts }, { width: 201, height: 121, title: "codes" });
  const plane = img.width * img.height;
  const barColumns = new Set<number>();
  for (let i = 0; i < plane; i++) {
    if (img.pixels[i] === PALETTE[0][0] && img.pixels[plane + i] === PALETTE[0][1]) {
      barColumns.add(i % img.width);
    }
  }
  assert.ok(barColumns.size > 37, `bars cover ${barColumns.size} columns`);
  // 1000 bins on a 201-pixel canvas are summed in groups (shown in the y label).
  const wide = histogramPlot({ counts: new Array(1000).fill(1) }, { width: 201, height: 121 });
  assert.equal(wide.width, 201);
  assert.throws(() => histogramPlot({ counts: [] }), /histogram has no bins/);
});
