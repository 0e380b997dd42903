// Writes fixtures/images/: small images of every kind the decoder must read, with known pixels,
// and broken files of every kind the shard stage must reject.
//
// PNGs are assembled here chunk by chunk (node:zlib for the deflate stream), not with pngjs, so
// the decoder's tests do not check pngjs against itself; the same goes for the one-component
// baseline and progressive JPEGs, written by the tiny encoder below (jpeg-js only writes baseline
// YCbCr, which it makes for rgb.jpg and the EXIF-rotated files). Tests import `pattern` and
// `MARKED` to know what each file holds.
//
//   deno task fixtures:images [out-dir]

import { deflateSync } from "node:zlib";
import { join } from "node:path";
import jpeg from "jpeg-js";

export const IMAGE_FIXTURE_DIR = "fixtures/images";

// ---- what the images hold ---------------------------------------------------------------------

/** Sample (x, y, channel) of the PNG fixtures: 0…255, or 0…65535 for 16-bit. */
export function pattern(x: number, y: number, c: number, bits = 8): number {
  const v = (x * 37 + y * 91 + c * 53 + ((x * y) % 7) * 11) % 256;
  return bits === 16 ? v * 256 + ((x * 131 + y * 17 + c) % 256) : v >> (8 - bits);
}

/** Smooth sample for the JPEG fixtures (lossy coding keeps it within a few levels). */
export function smooth(x: number, y: number, c: number): number {
  return 20 + 8 * x + 5 * y + 25 * c; // ≤ 216 on the 13×11 fixtures
}

/** Size of the PNG fixtures and of the JPEG fixtures (odd, partial 8×8 blocks). */
export const PNG_SIZE = { width: 7, height: 5 };
export const JPEG_SIZE = { width: 13, height: 11 };

/**
 * The EXIF fixtures: stored 13×11 grey, dark, with a white 4×4 block at the stored top-left and
 * a mid-grey 4×4 block at the stored top-right. Displayed, orientation 6 (turn clockwise) puts
 * white at the top-right and grey at the bottom-right; orientation 3 (180°) puts white at the
 * bottom-right and grey at the bottom-left.
 */
export function marked(x: number, y: number): number {
  if (y < 4 && x < 4) return 250;
  if (y < 4 && x >= JPEG_SIZE.width - 4) return 128;
  return 10;
}

export const PALETTE: [number, number, number, number][] = [
  [255, 0, 0, 255],
  [0, 255, 0, 128],
  [0, 0, 255, 0],
  [20, 40, 60, 255],
  [200, 100, 50, 255],
];

export const paletteIndex = (x: number, y: number) => (x + 2 * y) % PALETTE.length;

// ---- PNG --------------------------------------------------------------------------------------

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(bytes: Uint8Array): number {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function u32be(v: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v >>> 0);
  return b;
}

function chunk(type: string, data: Uint8Array): Uint8Array {
  const typed = concat([new TextEncoder().encode(type), data]);
  return concat([u32be(data.length), typed, u32be(crc32(typed))]);
}

/** Samples per pixel of each PNG colour type. */
const PNG_SAMPLES: Record<number, number> = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 };

/** Adam7 passes: x start, y start, x step, y step. */
const ADAM7 = [
  [0, 0, 8, 8],
  [4, 0, 8, 8],
  [0, 4, 4, 8],
  [2, 0, 4, 4],
  [0, 2, 2, 4],
  [1, 0, 2, 2],
  [0, 1, 1, 2],
];

/**
 * Filtered scanlines of a (sub-)image: samples packed big-endian at `bitDepth`, each row
 * prefixed by its filter type — 0 (None) on even rows, 1 (Sub) on odd rows, to exercise both.
 */
function scanlines(
  width: number,
  height: number,
  spp: number,
  bitDepth: number,
  sample: (x: number, y: number, c: number) => number,
): Uint8Array {
  if (width === 0 || height === 0) return new Uint8Array(); // an empty Adam7 pass has no rows
  const rowBytes = Math.ceil((width * spp * bitDepth) / 8);
  const bpp = Math.max(1, (spp * bitDepth) / 8);
  const raw = new Uint8Array(height * (rowBytes + 1));
  for (let y = 0; y < height; y++) {
    const row = new Uint8Array(rowBytes);
    let bit = 0;
    for (let x = 0; x < width; x++) {
      for (let c = 0; c < spp; c++) {
        const v = sample(x, y, c);
        if (bitDepth === 16) {
          row[bit / 8] = v >> 8;
          row[bit / 8 + 1] = v & 255;
        } else {
          row[bit >> 3] |= v << (8 - bitDepth - (bit & 7));
        }
        bit += bitDepth;
      }
    }
    const filter = y % 2;
    raw[y * (rowBytes + 1)] = filter;
    for (let i = 0; i < rowBytes; i++) {
      const left = filter === 1 && i >= bpp ? row[i - bpp] : 0;
      raw[y * (rowBytes + 1) + 1 + i] = (row[i] - left) & 255;
    }
  }
  return raw;
}

/** A PNG; `sample(x, y, c)` gives each stored sample (palette index for colour type 3). */
export function encodePng(
  { width, height, colorType, bitDepth, sample, palette, trns, interlace = false }: {
    width: number;
    height: number;
    colorType: number;
    bitDepth: number;
    sample: (x: number, y: number, c: number) => number;
    palette?: [number, number, number, number][];
    trns?: boolean;
    interlace?: boolean;
  },
): Uint8Array {
  const spp = PNG_SAMPLES[colorType];
  const raw = interlace
    ? concat(ADAM7.map(([x0, y0, dx, dy]) =>
      scanlines(
        Math.ceil((width - x0) / dx),
        Math.ceil((height - y0) / dy),
        spp,
        bitDepth,
        (x, y, c) => sample(x0 + x * dx, y0 + y * dy, c),
      )
    ))
    : scanlines(width, height, spp, bitDepth, sample);
  const ihdr = concat([
    u32be(width),
    u32be(height),
    new Uint8Array([bitDepth, colorType, 0, 0, interlace ? 1 : 0]),
  ]);
  const parts = [
    new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", ihdr),
  ];
  if (palette) {
    parts.push(chunk("PLTE", new Uint8Array(palette.flatMap(([r, g, b]) => [r, g, b]))));
    if (trns) parts.push(chunk("tRNS", new Uint8Array(palette.map((p) => p[3]))));
  }
  parts.push(chunk("IDAT", new Uint8Array(deflateSync(raw))), chunk("IEND", new Uint8Array()));
  return concat(parts);
}

/** A PNG whose header claims width × height over a tiny IDAT (a decompression bomb's shape). */
function pngHeaderOnly(width: number, height: number): Uint8Array {
  const ihdr = concat([u32be(width), u32be(height), new Uint8Array([8, 0, 0, 0, 0])]);
  return concat([
    new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", ihdr),
    chunk("IDAT", new Uint8Array(deflateSync(new Uint8Array(1024)))),
    chunk("IEND", new Uint8Array()),
  ]);
}

// ---- a one-component JPEG encoder (baseline or progressive) -----------------------------------

/** Natural (row-major) index of each zigzag position. */
const ZIGZAG = (() => {
  const out: number[] = [];
  for (let s = 0; s < 15; s++) {
    const rows = [];
    for (let r = Math.max(0, s - 7); r <= Math.min(s, 7); r++) rows.push(r);
    if (s % 2 === 0) rows.reverse();
    for (const r of rows) out.push(r * 8 + (s - r));
  }
  return out;
})();

/** Flat quantiser: small enough that decoding stays within a few grey levels. */
const QUANT = 2;
/** Huffman tables with every code the same length: DC categories 0…11 (4 bits); AC symbols
 * EOB, ZRL and run/size for runs 0…15 and sizes 1…10 (8 bits). Valid, simple, not optimal. */
const DC_SYMBOLS = Array.from({ length: 12 }, (_, i) => i);
const AC_SYMBOLS = [0x00, 0xf0];
for (let run = 0; run < 16; run++) {
  for (let size = 1; size <= 10; size++) AC_SYMBOLS.push((run << 4) | size);
}

class BitWriter {
  bytes: number[] = [];
  private acc = 0;
  private n = 0;
  write(value: number, length: number): void {
    for (let i = length - 1; i >= 0; i--) {
      this.acc = (this.acc << 1) | ((value >> i) & 1);
      if (++this.n === 8) this.emit();
    }
  }
  private emit(): void {
    this.bytes.push(this.acc);
    if (this.acc === 0xff) this.bytes.push(0); // byte stuffing
    this.acc = 0;
    this.n = 0;
  }
  flush(): number[] {
    while (this.n !== 0) this.write(1, 1); // pad with ones
    return this.bytes;
  }
}

function category(v: number): number {
  let s = 0;
  for (let a = Math.abs(v); a > 0; a >>= 1) s++;
  return s;
}

function writeValue(w: BitWriter, v: number, s: number): void {
  if (s > 0) w.write(v >= 0 ? v : v + (1 << s) - 1, s);
}

/** Quantised DCT blocks (natural order) of a grey image, edges replicated to whole blocks. */
function dctBlocks(
  width: number,
  height: number,
  grey: (x: number, y: number) => number,
): number[][] {
  const blocks: number[][] = [];
  const cos = (i: number, u: number) => Math.cos(((2 * i + 1) * u * Math.PI) / 16);
  for (let by = 0; by < Math.ceil(height / 8); by++) {
    for (let bx = 0; bx < Math.ceil(width / 8); bx++) {
      const f = (x: number, y: number) =>
        grey(Math.min(width - 1, bx * 8 + x), Math.min(height - 1, by * 8 + y)) - 128;
      const block: number[] = [];
      for (let v = 0; v < 8; v++) {
        for (let u = 0; u < 8; u++) {
          let sum = 0;
          for (let y = 0; y < 8; y++) {
            for (let x = 0; x < 8; x++) sum += f(x, y) * cos(x, u) * cos(y, v);
          }
          const cu = u === 0 ? Math.SQRT1_2 : 1, cv = v === 0 ? Math.SQRT1_2 : 1;
          block.push(Math.round((0.25 * cu * cv * sum) / QUANT));
        }
      }
      blocks.push(block);
    }
  }
  return blocks;
}

function segment(marker: number, body: number[]): number[] {
  return [0xff, marker, (body.length + 2) >> 8, (body.length + 2) & 255, ...body];
}

function huffmanTable(tableClass: number, symbols: number[], length: number): number[] {
  const counts = new Array(16).fill(0);
  counts[length - 1] = symbols.length;
  return [(tableClass << 4) | 0, ...counts, ...symbols];
}

/** Codes zigzag positions [ss, se] of one block: run/size symbols, ZRL, EOB at trailing zeros. */
function writeAc(w: BitWriter, zz: number[], ss: number, se: number): void {
  let run = 0;
  for (let k = ss; k <= se; k++) {
    const v = zz[k];
    if (v === 0) {
      run++;
      continue;
    }
    while (run > 15) {
      w.write(AC_SYMBOLS.indexOf(0xf0), 8);
      run -= 16;
    }
    const s = category(v);
    w.write(AC_SYMBOLS.indexOf((run << 4) | s), 8);
    writeValue(w, v, s);
    run = 0;
  }
  if (run > 0) w.write(AC_SYMBOLS.indexOf(0x00), 8); // EOB (in a progressive scan: EOBRUN 1)
}

/** A grey JPEG: baseline (SOF0, one scan) or progressive (SOF2, spectral-selection scans). */
export function encodeGreyJpeg(
  width: number,
  height: number,
  grey: (x: number, y: number) => number,
  progressive: boolean,
): Uint8Array {
  const blocks = dctBlocks(width, height, grey).map((b) => ZIGZAG.map((i) => b[i]));
  const scans: [number, number][] = progressive ? [[0, 0], [1, 5], [6, 63]] : [[0, 63]];
  const out = [0xff, 0xd8];
  out.push(...segment(0xdb, [0, ...new Array(64).fill(QUANT)]));
  out.push(
    ...segment(progressive ? 0xc2 : 0xc0, [
      8,
      height >> 8,
      height & 255,
      width >> 8,
      width & 255,
      1,
      1,
      0x11,
      0,
    ]),
  );
  out.push(
    ...segment(0xc4, [...huffmanTable(0, DC_SYMBOLS, 4), ...huffmanTable(1, AC_SYMBOLS, 8)]),
  );
  for (const [ss, se] of scans) {
    out.push(...segment(0xda, [1, 1, 0x00, ss, se, 0]));
    const w = new BitWriter();
    let pred = 0;
    for (const zz of blocks) {
      if (ss === 0) {
        const diff = zz[0] - pred;
        pred = zz[0];
        const s = category(diff);
        w.write(DC_SYMBOLS.indexOf(s), 4);
        writeValue(w, diff, s);
      }
      if (se > 0) writeAc(w, zz, Math.max(1, ss), se);
    }
    out.push(...w.flush());
  }
  out.push(0xff, 0xd9);
  return new Uint8Array(out);
}

/** An APP1 EXIF body ("Exif\0\0" + little-endian TIFF with one IFD0 entry: Orientation). */
export function exifWithOrientation(orientation: number): Uint8Array {
  const tiff = new Uint8Array(26);
  const v = new DataView(tiff.buffer);
  tiff.set([0x49, 0x49, 42, 0]);
  v.setUint32(4, 8, true); // IFD0 offset
  v.setUint16(8, 1, true); // one entry
  v.setUint16(10, 0x0112, true);
  v.setUint16(12, 3, true); // SHORT
  v.setUint32(14, 1, true);
  v.setUint16(18, orientation, true);
  v.setUint32(22, 0, true); // no next IFD
  return concat([new Uint8Array([0x45, 0x78, 0x69, 0x66, 0, 0]), tiff]);
}

function jpegRgb(
  width: number,
  height: number,
  rgb: (x: number, y: number, c: number) => number,
  exifBuffer?: Uint8Array,
): Uint8Array {
  const data = new Uint8Array(width * height * 4);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      for (let c = 0; c < 3; c++) data[(y * width + x) * 4 + c] = rgb(x, y, c);
      data[(y * width + x) * 4 + 3] = 255;
    }
  }
  return new Uint8Array(jpeg.encode({ data, width, height, exifBuffer } as never, 95).data);
}

/** Drops every DHT segment: the headers stay valid, the entropy data becomes undecodable. */
function withoutHuffmanTables(file: Uint8Array): Uint8Array {
  const parts: Uint8Array[] = [file.subarray(0, 2)];
  let at = 2;
  while (at < file.length && file[at + 1] !== 0xda) {
    const len = (file[at + 2] << 8) | file[at + 3];
    if (file[at + 1] !== 0xc4) parts.push(file.subarray(at, at + 2 + len));
    at += 2 + len;
  }
  parts.push(file.subarray(at));
  return concat(parts);
}

// ---- the fixture set --------------------------------------------------------------------------

/** Every fixture file by relative path. */
export function imageFixtures(): Record<string, Uint8Array> {
  const { width, height } = PNG_SIZE;
  const png = (colorType: number, bitDepth: number, extra = {}) =>
    encodePng({
      width,
      height,
      colorType,
      bitDepth,
      sample: (x, y, c) => pattern(x, y, c, bitDepth),
      ...extra,
    });
  const { width: jw, height: jh } = JPEG_SIZE;
  const rgbJpeg = jpegRgb(jw, jh, smooth);
  const rgbPng = png(2, 8);
  const files: Record<string, Uint8Array> = {
    "decode/grey8.png": png(0, 8),
    "decode/grey4.png": png(0, 4),
    "decode/grey16.png": png(0, 16),
    "decode/greyalpha8.png": png(4, 8),
    "decode/rgb8.png": rgbPng,
    "decode/rgb16.png": png(2, 16),
    "decode/rgba8.png": png(6, 8),
    "decode/interlaced.png": png(2, 8, { interlace: true }),
    "decode/palette8.png": encodePng({
      width,
      height,
      colorType: 3,
      bitDepth: 8,
      sample: paletteIndex,
      palette: PALETTE,
      trns: true,
    }),
    "decode/palette4.png": encodePng({
      width,
      height,
      colorType: 3,
      bitDepth: 4,
      sample: paletteIndex,
      palette: PALETTE,
    }),
    "decode/rgb.jpg": rgbJpeg,
    "decode/grey.jpg": encodeGreyJpeg(jw, jh, (x, y) => smooth(x, y, 0), false),
    "decode/progressive.jpg": encodeGreyJpeg(jw, jh, (x, y) => smooth(x, y, 0), true),
    "decode/exif3.jpg": jpegRgb(jw, jh, (x, y) => marked(x, y), exifWithOrientation(3)),
    "decode/exif6.jpg": jpegRgb(jw, jh, (x, y) => marked(x, y), exifWithOrientation(6)),
    "decode/big.png": encodePng({
      width: 64,
      height: 48,
      colorType: 2,
      bitDepth: 8,
      sample: (x, y, c) => pattern(x, y, c),
    }),
    "bad/zero.png": new Uint8Array(),
    "bad/truncated.png": rgbPng.subarray(0, Math.floor(rgbPng.length * 0.6)),
    "bad/truncated.jpg": rgbJpeg.subarray(0, Math.floor(rgbJpeg.length * 0.6)),
    "bad/corrupt.jpg": withoutHuffmanTables(rgbJpeg),
    "bad/notimage.png": new TextEncoder().encode("this is a text file, not a PNG\n"),
    "bad/notimage.jpg": new TextEncoder().encode("GIF89a... no, just text\n"),
    // A valid header claiming 40000×40000: refused from the header, never allocated.
    "bad/bomb.png": pngHeaderOnly(40000, 40000),
  };
  // corrupt.png: one byte of the IDAT data flipped (its CRC no longer matches).
  const corrupt = rgbPng.slice();
  corrupt[rgbPng.length - 20] ^= 0x5a;
  files["bad/corrupt.png"] = corrupt;
  return files;
}

if (import.meta.main) {
  const dir = Deno.args[0] ?? IMAGE_FIXTURE_DIR;
  for (const [rel, bytes] of Object.entries(imageFixtures())) {
    const path = join(dir, rel);
    await Deno.mkdir(join(path, ".."), { recursive: true });
    await Deno.writeFile(path, bytes);
  }
  console.log(`wrote ${Object.keys(imageFixtures()).length} files to ${dir}`);
}
