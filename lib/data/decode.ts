// Image decoding for the shard stage: PNG through npm:pngjs, JPEG through mozjpeg as WebAssembly
// (lib/data/jpeg_wasm.ts) with npm:jpeg-js for what that one must not decode, into planar uint8
// [C, H, W] with C = 1 or 3.
//
// - The header is parsed here first (`probeImage`), independently of the decoders: it recognises
//   the format from the content (not the file name), reads the size and EXIF orientation, and
//   enforces the decompression-bomb limit on width × height before any pixel memory is allocated.
// - PNG: 1/2/4/8/16-bit grey, grey+alpha, RGB, RGBA, palette (with tRNS), interlaced. pngjs
//   expands everything to 8-bit RGBA (16-bit rounded: v·255/65535). JPEG: baseline and
//   progressive, grey, YCbCr, CMYK/Adobe. The faster decoder, mozjpeg, decodes what it can decode
//   cleanly; CMYK/YCCK files, files without Huffman tables, and any file on which libjpeg warns
//   (truncated or corrupt data) go to jpeg-js, whose result or reject reason is final. Which
//   decoder serves a file depends only on its bytes, so a data set always decodes the same way.
//   The two agree to within a level or two (different IDCT and chroma upsampling rounding).
// - Alpha is dropped, as PIL's convert("RGB") does (and so torchvision's ImageFolder).
// - Grey output from colour input uses ITU-R 601-2 luma (PIL's "L": (299R + 587G + 114B)/1000).
// - EXIF orientation (JPEG APP1; jpeg-js hands back the raw EXIF but does not apply it) is applied,
//   so pixels come out the way viewers show them.

import { Buffer } from "node:buffer";
import { PNG } from "pngjs";
import jpeg from "jpeg-js";
import { decodeJpegWasm } from "./jpeg_wasm.ts";

export type ImageFormat = "png" | "jpeg";

export interface ImageInfo {
  format: ImageFormat;
  /** Stored size (before EXIF orientation). */
  width: number;
  height: number;
  /** True when the file holds grey levels only (PNG colour types 0/4, one-component JPEG). */
  grey: boolean;
  /** Colour components: JPEG frame components (4 = CMYK/YCCK), PNG samples per pixel. */
  components: number;
  /** PNG bit depth, or JPEG sample precision. */
  bitDepth: number;
  /** JPEG: progressive (SOF2) or not. */
  progressive: boolean;
  /** EXIF orientation 1…8 (1 = as stored). */
  orientation: number;
}

/** Planar uint8 pixels [channels, height, width]. */
export interface Planes {
  channels: number;
  height: number;
  width: number;
  data: Uint8Array;
}

export interface DecodedImage extends Planes {
  info: ImageInfo;
}

/** A file that cannot be ingested; `message` is the reason recorded in the manifest. */
export class ImageDecodeError extends Error {
  override name = "ImageDecodeError";
}

/** PIL's default decompression-bomb threshold (Image.MAX_IMAGE_PIXELS). */
export const DEFAULT_MAX_PIXELS = 89_478_485;

const PNG_SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

export function sniffFormat(bytes: Uint8Array): ImageFormat | null {
  if (bytes.length >= 8 && PNG_SIGNATURE.every((b, i) => bytes[i] === b)) return "png";
  if (bytes.length >= 3 && bytes[0] === 0xff && bytes[1] === 0xd8 && bytes[2] === 0xff) {
    return "jpeg";
  }
  return null;
}

function describeStart(bytes: Uint8Array): string {
  const head = Array.from(bytes.subarray(0, 8), (b) => b.toString(16).padStart(2, "0")).join(" ");
  return bytes.length === 0 ? "empty file (0 bytes)" : `not a PNG or JPEG file (starts ${head})`;
}

/** Reads format, size, colour and orientation from the header; throws ImageDecodeError. */
export function probeImage(bytes: Uint8Array): ImageInfo {
  const format = sniffFormat(bytes);
  if (format === "png") return probePng(bytes);
  if (format === "jpeg") return probeJpeg(bytes);
  throw new ImageDecodeError(describeStart(bytes));
}

function be32(b: Uint8Array, at: number): number {
  return ((b[at] << 24) | (b[at + 1] << 16) | (b[at + 2] << 8) | b[at + 3]) >>> 0;
}

const be16 = (b: Uint8Array, at: number) => (b[at] << 8) | b[at + 1];

function probePng(bytes: Uint8Array): ImageInfo {
  // Signature (8), then the IHDR chunk: length (4), "IHDR", width, height, depth, colour type, …
  const isIhdr = bytes.length >= 33 && be32(bytes, 8) === 13 &&
    String.fromCharCode(...bytes.subarray(12, 16)) === "IHDR";
  if (!isIhdr) throw new ImageDecodeError("truncated or corrupt PNG (no IHDR header)");
  const colorType = bytes[25];
  return {
    format: "png",
    components: ({ 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 } as Record<number, number>)[colorType] ?? 0,
    width: be32(bytes, 16),
    height: be32(bytes, 20),
    grey: colorType === 0 || colorType === 4,
    bitDepth: bytes[24],
    progressive: false,
    orientation: 1,
  };
}

/** Start-of-frame markers (baseline, extended, progressive, lossless; Huffman or arithmetic). */
const SOF_MARKERS = new Set([
  0xc0,
  0xc1,
  0xc2,
  0xc3,
  0xc5,
  0xc6,
  0xc7,
  0xc9,
  0xca,
  0xcb,
  0xcd,
  0xce,
  0xcf,
]);

function probeJpeg(bytes: Uint8Array): ImageInfo {
  let orientation = 1;
  let at = 2;
  while (at + 4 <= bytes.length) {
    if (bytes[at] !== 0xff) throw new ImageDecodeError(`corrupt JPEG (no marker at byte ${at})`);
    const marker = bytes[at + 1];
    if (marker === 0xff) { // fill byte
      at++;
      continue;
    }
    if (marker === 0x01 || (marker >= 0xd0 && marker <= 0xd7)) { // markers without a length
      at += 2;
      continue;
    }
    if (marker === 0xd9 || marker === 0xda) break; // end of image / start of scan before a frame
    const length = be16(bytes, at + 2);
    const body = at + 4;
    if (length < 2 || body + length - 2 > bytes.length) break;
    if (marker === 0xe1) orientation = exifOrientation(bytes.subarray(body, body + length - 2));
    if (SOF_MARKERS.has(marker)) {
      if (length < 8) break;
      const height = be16(bytes, body + 1);
      const width = be16(bytes, body + 3);
      if (width === 0 || height === 0) {
        throw new ImageDecodeError("unsupported JPEG (size defined later by a DNL marker)");
      }
      if (marker !== 0xc0 && marker !== 0xc1 && marker !== 0xc2) {
        throw new ImageDecodeError(
          `unsupported JPEG coding (frame marker 0x${marker.toString(16)}: lossless or arithmetic)`,
        );
      }
      return {
        format: "jpeg",
        width,
        height,
        grey: bytes[body + 5] === 1,
        components: bytes[body + 5],
        bitDepth: bytes[body],
        progressive: marker === 0xc2,
        orientation,
      };
    }
    at = body + length - 2;
  }
  throw new ImageDecodeError("truncated or corrupt JPEG (no frame header)");
}

/** Orientation tag (0x0112) of IFD0 in an APP1 "Exif\0\0" segment body; 1 when absent/invalid. */
export function exifOrientation(app1: Uint8Array): number {
  const exif = [0x45, 0x78, 0x69, 0x66, 0, 0];
  if (app1.length < 14 || !exif.every((b, i) => app1[i] === b)) return 1;
  const tiff = app1.subarray(6);
  const little = tiff[0] === 0x49 && tiff[1] === 0x49;
  if (!little && !(tiff[0] === 0x4d && tiff[1] === 0x4d)) return 1;
  const view = new DataView(tiff.buffer, tiff.byteOffset, tiff.length);
  const u16 = (o: number) => view.getUint16(o, little);
  if (u16(2) !== 42) return 1;
  const ifd = view.getUint32(4, little);
  if (ifd + 2 > tiff.length) return 1;
  const entries = u16(ifd);
  for (let i = 0; i < entries; i++) {
    const e = ifd + 2 + 12 * i;
    if (e + 12 > tiff.length) return 1;
    if (u16(e) === 0x0112 && u16(e + 2) === 3) {
      const v = u16(e + 8);
      return v >= 1 && v <= 8 ? v : 1;
    }
  }
  return 1;
}

/**
 * Where pixel (x, y) of the displayed image comes from in the stored one (w × h), for EXIF
 * orientation o. Orientations 5–8 swap width and height.
 */
export function orientedSource(
  o: number,
  x: number,
  y: number,
  w: number,
  h: number,
): [number, number] {
  switch (o) {
    case 2:
      return [w - 1 - x, y]; // mirrored left-right
    case 3:
      return [w - 1 - x, h - 1 - y]; // rotated 180°
    case 4:
      return [x, h - 1 - y]; // mirrored top-bottom
    case 5:
      return [y, x]; // transposed
    case 6:
      return [y, h - 1 - x]; // stored rotated 90° counter-clockwise: turn clockwise
    case 7:
      return [w - 1 - y, h - 1 - x]; // transversed
    case 8:
      return [w - 1 - y, x]; // stored rotated 90° clockwise: turn counter-clockwise
    default:
      return [x, y];
  }
}

export interface DecodeOptions {
  /** Output channels: 1 (grey) or 3 (RGB). */
  channels: 1 | 3;
  /** Refuse images with more than this many pixels (width × height), checked before decoding. */
  maxPixels?: number;
}

/** Decodes a PNG or JPEG to planar [channels, H, W]; every failure is an ImageDecodeError. */
export function decodeImage(bytes: Uint8Array, options: DecodeOptions): DecodedImage {
  const info = probeImage(bytes);
  const maxPixels = options.maxPixels ?? DEFAULT_MAX_PIXELS;
  const pixels = info.width * info.height;
  if (pixels > maxPixels) {
    throw new ImageDecodeError(
      `over the pixel limit: ${info.width}×${info.height} = ${pixels} pixels > ${maxPixels} ` +
        `(--max-pixels)`,
    );
  }
  if (pixels === 0) {
    throw new ImageDecodeError(`image has no pixels (${info.width}×${info.height})`);
  }
  const { data, stride } = info.format === "png"
    ? decodePng(bytes)
    : decodeJpeg(bytes, info, maxPixels);
  return { ...toPlanes(data, stride, info, options.channels), info };
}

function decodePng(bytes: Uint8Array): { data: Uint8Array; stride: number } {
  try {
    const png = PNG.sync.read(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length));
    return { data: png.data, stride: 4 };
  } catch (error) {
    const why = (error as Error).message;
    const truncated = !endsWithIend(bytes);
    throw new ImageDecodeError(
      `${truncated ? "truncated PNG (no IEND chunk at the end)" : "corrupt PNG"}: pngjs: ${why}`,
    );
  }
}

function endsWithIend(bytes: Uint8Array): boolean {
  const tail = bytes.subarray(Math.max(0, bytes.length - 64));
  const s = String.fromCharCode(...tail);
  return s.includes("IEND");
}

function decodeJpeg(
  bytes: Uint8Array,
  info: ImageInfo,
  maxPixels: number,
): { data: Uint8Array; stride: number } {
  const fast = decodeJpegWasm(bytes, info.components);
  if (fast && fast.width === info.width && fast.height === info.height) {
    return { data: fast.data, stride: 4 };
  }
  try {
    const image = jpeg.decode(bytes, {
      useTArray: true,
      formatAsRGBA: false,
      // Our own limit was enforced from the header; keep jpeg-js's guards just above it.
      maxResolutionInMP: maxPixels / 1e6 + 1,
      maxMemoryUsageInMB: Math.ceil((maxPixels * 8) / 2 ** 20) + 64,
    });
    if (image.width !== info.width || image.height !== info.height) {
      throw new Error(
        `decoded ${image.width}×${image.height}, header says ${info.width}×${info.height}`,
      );
    }
    return { data: image.data, stride: 3 };
  } catch (error) {
    const why = (error as Error).message;
    const eoi = bytes.length >= 2 && bytes[bytes.length - 2] === 0xff &&
      bytes[bytes.length - 1] === 0xd9;
    throw new ImageDecodeError(
      `${eoi ? "corrupt JPEG" : "truncated or corrupt JPEG (no end-of-image marker)"}: ` +
        `jpeg-js: ${why}`,
    );
  }
}

/**
 * Interleaved RGB(A) (`stride` 3 or 4) → planar [channels, H', W'] with EXIF orientation applied.
 */
function toPlanes(src: Uint8Array, stride: number, info: ImageInfo, channels: 1 | 3): Planes {
  const { width: w, height: h, orientation: o } = info;
  const swap = o >= 5;
  const width = swap ? h : w, height = swap ? w : h;
  const plane = width * height;
  const data = new Uint8Array(channels * plane);
  const luma = channels === 1 && !info.grey;
  // The orientation map is affine: walk the source with constant steps per x and per y.
  const at = (x: number, y: number) => {
    const [sx, sy] = orientedSource(o, x, y, w, h);
    return (sy * w + sx) * stride;
  };
  const s00 = at(0, 0), dx = at(1, 0) - s00, dy = at(0, 1) - s00;
  for (let y = 0, d = 0; y < height; y++) {
    for (let x = 0, s = s00 + y * dy; x < width; x++, d++, s += dx) {
      if (channels === 3) {
        data[d] = src[s];
        data[plane + d] = src[s + 1];
        data[2 * plane + d] = src[s + 2];
      } else {
        data[d] = luma ? greyOf(src[s], src[s + 1], src[s + 2]) : src[s];
      }
    }
  }
  return { channels, height, width, data };
}

/** ITU-R 601-2 luma, rounded (PIL's RGB → "L"). */
export function greyOf(r: number, g: number, b: number): number {
  return Math.floor((r * 299 + g * 587 + b * 114 + 500) / 1000);
}

/** Planar grey [1, H, W] → [channels, H, W] (RGB repeats the plane). */
export function greyPlanes(
  grey: Uint8Array,
  height: number,
  width: number,
  channels: 1 | 3,
): Planes {
  if (channels === 1) return { channels, height, width, data: grey };
  const data = new Uint8Array(3 * grey.length);
  for (let c = 0; c < 3; c++) data.set(grey, c * grey.length);
  return { channels, height, width, data };
}
