// PNG output: f32 images ([C,H,W] or [N,C,H,W], from the GPU or the host) mapped from a value range
// to 8-bit, laid out in grids (e.g. input | reconstruction pairs), encoded by npm:pngjs and written
// atomically. One channel gives a greyscale PNG, three an RGB one.

import { Buffer } from "node:buffer";
import { PNG } from "pngjs";
import { Tensor } from "../tensor/tensor.ts";
import { writeFileAtomic } from "./atomic.ts";
import { failer } from "./errors.ts";

/** Host images: planar values, shape [C,H,W] (one image) or [N,C,H,W]. */
export interface HostImages {
  data: ArrayLike<number>;
  shape: readonly number[];
}

export type ImageSource = Tensor | HostImages;

/** An 8-bit planar image [channels, height, width] (channels 1 or 3). */
export interface ByteImage {
  pixels: Uint8Array;
  channels: number;
  height: number;
  width: number;
}

export interface RangeOptions {
  /** Values mapped to 0 and 255 (clamped outside; NaN gives 0). Default [0, 1]. */
  range?: readonly [number, number];
}

export interface GridOptions extends RangeOptions {
  /** Images per row (default: about square). */
  cols?: number;
  /** Pixels between and around images (default 2). */
  padding?: number;
  /** Byte value of the padding (default 255: white). */
  background?: number;
}

const fail: (what: string) => never = failer("png");

/** [N, C, H, W] of a shape, checking it describes images of 1 or 3 channels. */
function imageDims(shape: readonly number[], what: string): [number, number, number, number] {
  const dims = shape.length === 3 ? [1, ...shape] : [...shape];
  if (dims.length !== 4 || (dims[1] !== 1 && dims[1] !== 3) || dims[2] < 1 || dims[3] < 1) {
    fail(`${what} must be [C,H,W] or [N,C,H,W] with C = 1 or 3, got [${shape.join(",")}]`);
  }
  return dims as [number, number, number, number];
}

/** Reads a tensor's values back (one sync); host images pass through. */
export async function toHostImages(source: ImageSource): Promise<HostImages> {
  if (!(source instanceof Tensor)) return source;
  if (source.dtype !== "f32") fail(`images must be f32, got ${source.describe()}`);
  return { data: await source.read(), shape: source.shape };
}

/** Maps values in `range` to bytes. */
export function toBytes(data: ArrayLike<number>, range: readonly [number, number] = [0, 1]) {
  const [lo, hi] = range;
  if (!(hi > lo)) fail(`value range [${lo}, ${hi}] is empty`);
  const out = new Uint8Array(data.length);
  const scale = 255 / (hi - lo);
  for (let i = 0; i < data.length; i++) {
    const v = (data[i] - lo) * scale;
    out[i] = v > 0 ? Math.min(255, Math.round(v)) : 0; // NaN fails `v > 0`: 0
  }
  return out;
}

/** Encodes one 8-bit planar image as PNG bytes. */
export function encodePng(image: ByteImage): Uint8Array {
  const { pixels, channels: c, height: h, width: w } = image;
  if ((c !== 1 && c !== 3) || pixels.length !== c * h * w || h < 1 || w < 1) {
    fail(`bad image: ${pixels.length} bytes for [${c},${h},${w}] (C must be 1 or 3)`);
  }
  const interleaved = Buffer.alloc(c * h * w);
  const plane = h * w;
  for (let i = 0; i < plane; i++) {
    for (let k = 0; k < c; k++) interleaved[i * c + k] = pixels[k * plane + i];
  }
  const colorType = c === 1 ? 0 : 2;
  const png = PNG.sync.write(
    { width: w, height: h, data: interleaved } as unknown as PNG,
    { colorType, inputColorType: colorType, inputHasAlpha: false, bitDepth: 8 },
  );
  return new Uint8Array(png.buffer, png.byteOffset, png.byteLength);
}

/** Interleaves image sets of equal shape: a0 b0 a1 b1 … (pairs side by side in a grid). */
export function interleave(sets: readonly HostImages[]): HostImages {
  if (sets.length === 0) fail("no images");
  const [n, c, h, w] = imageDims(sets[0].shape, "images");
  for (const s of sets) {
    const d = imageDims(s.shape, "images");
    if (d[0] !== n || d[1] !== c || d[2] !== h || d[3] !== w) {
      fail(`image sets differ in shape: [${sets[0].shape}] vs [${s.shape}]`);
    }
  }
  const size = c * h * w;
  const data = new Float32Array(sets.length * n * size);
  for (let i = 0; i < n; i++) {
    sets.forEach((s, k) => {
      const to = (i * sets.length + k) * size;
      for (let j = 0; j < size; j++) data[to + j] = s.data[i * size + j];
    });
  }
  return { data, shape: [sets.length * n, c, h, w] };
}

/** Lays images out row by row with padding: one 8-bit image. */
export function imageGrid(images: HostImages, options: GridOptions = {}): ByteImage {
  const [n, c, h, w] = imageDims(images.shape, "images");
  if (images.data.length !== n * c * h * w) {
    fail(`${images.data.length} values do not fill [${images.shape.join(",")}]`);
  }
  const { padding = 2, background = 255 } = options;
  const cols = Math.min(n, options.cols ?? Math.ceil(Math.sqrt(n)));
  if (!Number.isInteger(cols) || cols < 1 || !Number.isInteger(padding) || padding < 0) {
    fail(`bad grid: cols ${options.cols}, padding ${padding}`);
  }
  const rows = Math.ceil(n / cols);
  const height = rows * h + (rows + 1) * padding;
  const width = cols * w + (cols + 1) * padding;
  const bytes = toBytes(images.data, options.range);
  const pixels = new Uint8Array(c * height * width).fill(background);
  for (let i = 0; i < n; i++) {
    const top = padding + Math.floor(i / cols) * (h + padding);
    const left = padding + (i % cols) * (w + padding);
    for (let k = 0; k < c; k++) {
      for (let y = 0; y < h; y++) {
        const src = ((i * c + k) * h + y) * w;
        pixels.set(bytes.subarray(src, src + w), (k * height + top + y) * width + left);
      }
    }
  }
  return { pixels, channels: c, height, width };
}

/** Writes one image ([C,H,W], or [1,C,H,W]) as a PNG, atomically. */
export async function writePng(
  path: string,
  source: ImageSource,
  options: RangeOptions = {},
): Promise<void> {
  const images = await toHostImages(source);
  const [n, c, h, w] = imageDims(images.shape, `${path}: image`);
  if (n !== 1) fail(`${path}: one image expected, got ${n} (use writeImageGrid)`);
  await writeFileAtomic(
    path,
    encodePng({ pixels: toBytes(images.data, options.range), channels: c, height: h, width: w }),
  );
}

/**
 * Writes a grid PNG atomically. Several sets (e.g. `[inputs, reconstructions]`) are interleaved so
 * that each image's versions sit side by side; `cols` then defaults to a whole number of groups.
 */
export async function writeImageGrid(
  path: string,
  sets: ImageSource | readonly ImageSource[],
  options: GridOptions = {},
): Promise<void> {
  const list = Array.isArray(sets) ? sets : [sets as ImageSource];
  const hosts: HostImages[] = [];
  for (const source of list) hosts.push(await toHostImages(source));
  const images = hosts.length === 1 ? hosts[0] : interleave(hosts);
  const n = imageDims(images.shape, `${path}: images`)[0];
  const groups = n / hosts.length;
  const cols = options.cols ?? hosts.length * Math.ceil(Math.sqrt(groups));
  await writeFileAtomic(path, encodePng(imageGrid(images, { ...options, cols })));
}
