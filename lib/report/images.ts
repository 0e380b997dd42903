// Image grids of the report (the masked-prediction figure, Figure 3's patches per code): pictures
// only, laid out on a white RGB background. Their headings and labels are text of the markdown
// and HTML around them; `GridLayout` says where each column is, so the HTML can align its column
// headers with the cells.

import { type ByteImage, type HostImages, toBytes } from "../io/png.ts";
import { failer } from "../io/errors.ts";

const fail: (what: string) => never = failer("images");

/** One image of a host batch [N, C, H, W] as bytes, values mapped from `range`. */
export function imageAt(
  images: HostImages,
  index: number,
  range: readonly [number, number] = [0, 1],
): ByteImage {
  const [n, c, h, w] = images.shape;
  if (images.shape.length !== 4 || index < 0 || index >= n) {
    fail(`image ${index} of [${images.shape.join(",")}]`);
  }
  const size = c * h * w;
  const data = Array.prototype.slice.call(images.data, index * size, (index + 1) * size);
  return { pixels: toBytes(data, range), channels: c, height: h, width: w };
}

/** Nearest-neighbour enlargement by an integer factor. */
export function zoom(im: ByteImage, factor: number): ByteImage {
  if (!Number.isInteger(factor) || factor < 1) fail(`zoom factor ${factor}`);
  if (factor === 1) return im;
  const [h, w] = [im.height * factor, im.width * factor];
  const pixels = new Uint8Array(im.channels * h * w);
  for (let k = 0; k < im.channels; k++) {
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        pixels[(k * h + y) * w + x] =
          im.pixels[(k * im.height + Math.floor(y / factor)) * im.width + Math.floor(x / factor)];
      }
    }
  }
  return { pixels, channels: im.channels, height: h, width: w };
}

/** Where the cells of a grid image are: every cell `cell` pixels square-ish, `gap` apart. */
export interface GridLayout {
  columns: number;
  rows: number;
  cellWidth: number;
  cellHeight: number;
  /** Pixels between cells and around the grid. */
  gap: number;
}

/**
 * Cells in rows and columns on white, each enlarged by `scale`, `gap` pixels apart and around;
 * every cell the same size; a row may be shorter than the others (RGB out).
 */
export function imageGrid(
  rows: readonly (readonly ByteImage[])[],
  { scale = 1, gap = 4 }: { scale?: number; gap?: number } = {},
): { image: ByteImage; layout: GridLayout } {
  if (!rows.length || rows.some((r) => !r.length)) fail("an image grid needs cells in every row");
  const cells = rows.map((r) => r.map((im) => zoom(im, scale)));
  const { height: ch, width: cw } = cells[0][0];
  if (cells.some((r) => r.some((im) => im.height !== ch || im.width !== cw))) {
    fail("image grid cells differ in size");
  }
  const columns = Math.max(...cells.map((r) => r.length));
  const width = gap + columns * (cw + gap);
  const height = gap + cells.length * (ch + gap);
  const pixels = new Uint8Array(3 * width * height).fill(255);
  cells.forEach((row, i) =>
    row.forEach((im, j) =>
      blit(pixels, width, height, im, gap + j * (cw + gap), gap + i * (ch + gap))
    )
  );
  return {
    image: { pixels, channels: 3, height, width },
    layout: { columns, rows: cells.length, cellWidth: cw, cellHeight: ch, gap },
  };
}

/** Copies `im` (grey or RGB, planar) into the planar RGB raster at (left, top). */
function blit(
  out: Uint8Array,
  width: number,
  height: number,
  im: ByteImage,
  left: number,
  top: number,
): void {
  const plane = im.height * im.width;
  for (let k = 0; k < 3; k++) {
    const src = Math.min(k, im.channels - 1) * plane;
    for (let y = 0; y < im.height; y++) {
      const row = (k * height + top + y) * width + left;
      out.set(im.pixels.subarray(src + y * im.width, src + (y + 1) * im.width), row);
    }
  }
}

/**
 * Greys the masked patches of images [N, C, H, W] (host values): patch p of image i (row-major
 * over a grid of `patch`-pixel cells) is set to `value` where masks[i·T + p] is 1.
 */
export function greyPatches(
  images: HostImages,
  masks: ArrayLike<number>,
  patch: number,
  value: number,
): HostImages {
  const [n, c, h, w] = images.shape;
  const gw = Math.floor(w / patch), gh = Math.floor(h / patch);
  const t = gh * gw;
  if (masks.length !== n * t) fail(`${masks.length} mask values for ${n} images of ${gh}×${gw}`);
  const data = Float32Array.from(images.data);
  for (let i = 0; i < n; i++) {
    for (let p = 0; p < t; p++) {
      if (!masks[i * t + p]) continue;
      const [py, px] = [Math.floor(p / gw) * patch, (p % gw) * patch];
      for (let k = 0; k < c; k++) {
        for (let y = py; y < py + patch; y++) {
          data.fill(value, ((i * c + k) * h + y) * w + px, ((i * c + k) * h + y) * w + px + patch);
        }
      }
    }
  }
  return { data, shape: images.shape };
}
