// Decoding (PNG/JPEG variants, EXIF orientation, broken files) and resizing, against fixtures
// whose pixels are known (tools/make_image_fixtures.ts) and a float64 resampling reference.

import assert from "node:assert/strict";
import {
  decodeImage,
  exifOrientation,
  greyOf,
  ImageDecodeError,
  orientedSource,
  probeImage,
} from "../lib/data/decode.ts";
import { decodeJpegWasm, definesHuffmanTables } from "../lib/data/jpeg_wasm.ts";
import { fitImage, planFit, type ResizePolicy } from "../lib/data/resize.ts";
import jpeg from "jpeg-js";
import {
  exifWithOrientation,
  IMAGE_FIXTURE_DIR,
  imageFixtures,
  JPEG_SIZE,
  PALETTE,
  paletteIndex,
  pattern,
  PNG_SIZE,
  smooth,
} from "../tools/make_image_fixtures.ts";

const root = new URL(`../${IMAGE_FIXTURE_DIR}/`, import.meta.url);
const fixture = (rel: string) => Deno.readFileSync(new URL(rel, root));

/** Expected [C,H,W] from a per-pixel RGB function (grey via the PIL luma when C = 1). */
function planar(
  w: number,
  h: number,
  channels: 1 | 3,
  rgb: (x: number, y: number, c: number) => number,
): number[] {
  const out: number[] = [];
  for (let c = 0; c < channels; c++) {
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        out.push(channels === 3 ? rgb(x, y, c) : greyOf(rgb(x, y, 0), rgb(x, y, 1), rgb(x, y, 2)));
      }
    }
  }
  return out;
}

const scale16 = (v: number) => Math.floor((v * 255) / 65535 + 0.5);
const scale4 = (v: number) => v * 17;

Deno.test("fixtures on disk are what tools/make_image_fixtures.ts makes", () => {
  for (const [rel, bytes] of Object.entries(imageFixtures())) {
    assert.deepEqual(fixture(rel), bytes, `${rel} is stale: run deno task fixtures:images`);
  }
});

Deno.test("PNG: 4/8/16-bit grey, grey+alpha, RGB(A), palette, interlaced decode exactly", () => {
  const { width: w, height: h } = PNG_SIZE;
  const grey = (f: (v: number) => number, bits: number) => (x: number, y: number) =>
    f(pattern(x, y, 0, bits));
  const cases: [string, (x: number, y: number, c: number) => number][] = [
    ["grey8.png", grey((v) => v, 8)],
    ["grey4.png", grey(scale4, 4)],
    ["grey16.png", grey(scale16, 16)],
    ["greyalpha8.png", grey((v) => v, 8)], // alpha (sample 1) dropped
    ["rgb8.png", (x, y, c) => pattern(x, y, c)],
    ["rgb16.png", (x, y, c) => scale16(pattern(x, y, c, 16))],
    ["rgba8.png", (x, y, c) => pattern(x, y, c)], // alpha dropped
    ["interlaced.png", (x, y, c) => pattern(x, y, c)], // Adam7
    ["palette8.png", (x, y, c) => PALETTE[paletteIndex(x, y)][c]],
    ["palette4.png", (x, y, c) => PALETTE[paletteIndex(x, y)][c]],
  ];
  for (const [name, rgb] of cases) {
    for (const channels of [1, 3] as const) {
      const d = decodeImage(fixture(`decode/${name}`), { channels });
      assert.deepEqual([d.channels, d.height, d.width], [channels, h, w], name);
      // Grey sources give their grey level to C = 1 directly (no luma of equal channels needed).
      assert.deepEqual(Array.from(d.data), planar(w, h, channels, rgb), `${name} C=${channels}`);
    }
  }
  assert.equal(probeImage(fixture("decode/grey16.png")).bitDepth, 16);
  assert.equal(probeImage(fixture("decode/palette8.png")).grey, false);
});

Deno.test("JPEG: baseline RGB, baseline and progressive grey decode within a few levels", () => {
  const { width: w, height: h } = JPEG_SIZE;
  const cases: [string, boolean, boolean, 1 | 3][] = [
    ["rgb.jpg", false, false, 3],
    ["grey.jpg", true, false, 1],
    ["progressive.jpg", true, true, 1],
  ];
  for (const [name, grey, progressive, channels] of cases) {
    const bytes = fixture(`decode/${name}`);
    const info = probeImage(bytes);
    assert.deepEqual(
      [info.format, info.width, info.height, info.grey, info.progressive],
      ["jpeg", w, h, grey, progressive],
    );
    const d = decodeImage(bytes, { channels });
    const expected = planar(w, h, channels, (x, y, c) => smooth(x, y, grey ? 0 : c));
    const errors = Array.from(d.data, (v, i) => Math.abs(v - expected[i]));
    assert.ok(Math.max(...errors) <= 6, `${name}: max error ${Math.max(...errors)}`);
    assert.ok(errors.reduce((a, b) => a + b) / errors.length < 2, `${name}: mean error`);
  }
  // Grey JPEG to RGB repeats the plane.
  const rgb = decodeImage(fixture("decode/progressive.jpg"), { channels: 3 });
  const plane = w * h;
  assert.deepEqual(rgb.data.subarray(0, plane), rgb.data.subarray(2 * plane));
});

Deno.test("EXIF orientation: every case moves the corners as the EXIF spec says", () => {
  // Stored 3×2 image, pixel value = its stored position; displayed corners for each orientation
  // written out by hand: [top-left, top-right, bottom-left, bottom-right] of the displayed image.
  const w = 3, h = 2;
  const id = (x: number, y: number) => y * w + x;
  const [TL, TR, BL, BR] = [id(0, 0), id(2, 0), id(0, 1), id(2, 1)];
  const expected: Record<number, number[]> = {
    1: [TL, TR, BL, BR],
    2: [TR, TL, BR, BL], // mirrored
    3: [BR, BL, TR, TL], // 180°
    4: [BL, BR, TL, TR], // flipped vertically
    5: [TL, BL, TR, BR], // transposed
    6: [BL, TL, BR, TR], // turned clockwise for display
    7: [BR, TR, BL, TL], // transversed
    8: [TR, BR, TL, BL], // turned counter-clockwise for display
  };
  for (let o = 1; o <= 8; o++) {
    const [dw, dh] = o >= 5 ? [h, w] : [w, h];
    const at = (x: number, y: number) => id(...orientedSource(o, x, y, w, h));
    const corners = [at(0, 0), at(dw - 1, 0), at(0, dh - 1), at(dw - 1, dh - 1)];
    assert.deepEqual(corners, expected[o], `orientation ${o}`);
  }
});

Deno.test("EXIF orientation of a JPEG is applied: markers land where viewers show them", () => {
  const { width: w, height: h } = JPEG_SIZE;
  const mean = (d: { data: Uint8Array; width: number }, x0: number, y0: number) => {
    let s = 0;
    for (let y = y0; y < y0 + 4; y++) {
      for (let x = x0; x < x0 + 4; x++) s += d.data[y * d.width + x];
    }
    return s / 16;
  };
  const six = decodeImage(fixture("decode/exif6.jpg"), { channels: 1 });
  assert.equal(six.info.orientation, 6);
  assert.deepEqual([six.width, six.height], [h, w]);
  assert.ok(mean(six, h - 4, 0) > 230, "white marker at the top-right");
  assert.ok(Math.abs(mean(six, h - 4, w - 4) - 128) < 12, "grey marker at the bottom-right");
  assert.ok(mean(six, 0, 0) < 30 && mean(six, 0, w - 4) < 30, "left corners dark");
  const three = decodeImage(fixture("decode/exif3.jpg"), { channels: 1 });
  assert.deepEqual([three.width, three.height], [w, h]);
  assert.ok(mean(three, w - 4, h - 4) > 230, "white marker at the bottom-right");
  assert.ok(Math.abs(mean(three, 0, h - 4) - 128) < 12, "grey marker at the bottom-left");
});

Deno.test("mozjpeg (WebAssembly) decodes the JPEG fixtures as jpeg-js does, to 2 levels", () => {
  for (const name of ["rgb.jpg", "grey.jpg", "progressive.jpg", "exif3.jpg", "exif6.jpg"]) {
    const bytes = fixture(`decode/${name}`);
    const fast = decodeJpegWasm(bytes, probeImage(bytes).components);
    assert.ok(fast, `${name}: mozjpeg declined a clean file`);
    // Both as stored (EXIF orientation is applied later, by decode.ts, for either decoder).
    const slow = jpeg.decode(bytes, { useTArray: true, formatAsRGBA: true });
    assert.deepEqual([fast.width, fast.height], [slow.width, slow.height], name);
    let worst = 0;
    for (let i = 0; i < slow.data.length; i++) {
      worst = Math.max(worst, Math.abs(fast.data[i] - slow.data[i]));
    }
    assert.ok(worst <= 2, `${name}: decoders differ by ${worst} levels`);
  }
});

Deno.test("mozjpeg declines what it would decode leniently; jpeg-js then rejects it", () => {
  // libjpeg would fill a truncated scan with grey and use default Huffman tables for a file that
  // has none: both files must still be rejects, with jpeg-js's reason.
  for (const name of ["bad/truncated.jpg", "bad/corrupt.jpg"]) {
    const bytes = fixture(name);
    assert.equal(decodeJpegWasm(bytes, 3), null, name);
  }
  assert.equal(definesHuffmanTables(fixture("bad/corrupt.jpg")), false);
  assert.equal(definesHuffmanTables(fixture("decode/rgb.jpg")), true);
  // Four components (CMYK/YCCK) always go to jpeg-js, which converts them to RGB.
  assert.equal(decodeJpegWasm(fixture("decode/rgb.jpg"), 4), null);
  // After libjpeg's fatal error the decoder starts afresh: a clean file decodes again.
  assert.ok(decodeJpegWasm(fixture("decode/rgb.jpg"), 3));
});

/**
 * An 8×8 four-component (Adobe CMYK, no transform) baseline JPEG of flat samples, written here
 * since jpeg-js encodes YCbCr only: one DC coefficient per block (quantiser 1, the standard DC
 * Huffman table), every AC coefficient zero (an AC table holding only end-of-block).
 */
function cmykJpeg(samples: [number, number, number, number]): Uint8Array {
  const segment = (marker: number, body: number[]) => [
    0xff,
    marker,
    (body.length + 2) >> 8,
    (body.length + 2) & 255,
    ...body,
  ];
  const adobe = [..."Adobe"].map((c) => c.charCodeAt(0)).concat([0, 100, 0, 0, 0, 0, 0]);
  const dcBits = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0];
  const dcCodes = ["00", "010", "011", "100", "101", "110", "1110", "11110", "111110", "1111110"]
    .concat(["11111110", "111111110"]);
  let bits = "";
  for (const v of samples) {
    const dc = 8 * (v - 128); // the DC coefficient of a flat block, quantiser 1
    const size = dc === 0 ? 0 : Math.floor(Math.log2(Math.abs(dc))) + 1;
    const value = dc >= 0 ? dc : dc + (1 << size) - 1;
    bits += dcCodes[size] + (size ? value.toString(2).padStart(size, "0") : "") + "0"; // + EOB
  }
  bits = bits.padEnd(Math.ceil(bits.length / 8) * 8, "1");
  const scan: number[] = [];
  for (let i = 0; i < bits.length; i += 8) {
    const byte = parseInt(bits.slice(i, i + 8), 2);
    scan.push(...(byte === 0xff ? [0xff, 0] : [byte]));
  }
  return new Uint8Array([
    0xff,
    0xd8,
    ...segment(0xee, adobe),
    ...segment(0xdb, [0, ...new Array(64).fill(1)]),
    ...segment(0xc0, [8, 0, 8, 0, 8, 4, 1, 0x11, 0, 2, 0x11, 0, 3, 0x11, 0, 4, 0x11, 0]),
    ...segment(0xc4, [0x00, ...dcBits, ...dcCodes.map((_, i) => i)]),
    ...segment(0xc4, [0x10, 1, ...new Array(15).fill(0), 0]),
    ...segment(0xda, [4, 1, 0, 2, 0, 3, 0, 4, 0, 0, 63, 0]),
    ...scan,
    0xff,
    0xd9,
  ]);
}

Deno.test("CMYK JPEG: goes to jpeg-js (mozjpeg does not convert it), decodes to its RGB", () => {
  const bytes = cmykJpeg([40, 120, 200, 230]);
  const info = probeImage(bytes);
  assert.deepEqual([info.components, info.width, info.height, info.grey], [4, 8, 8, false]);
  assert.equal(decodeJpegWasm(bytes, info.components), null);
  const slow = jpeg.decode(bytes, { useTArray: true, formatAsRGBA: false });
  const d = decodeImage(bytes, { channels: 3 });
  for (let c = 0; c < 3; c++) {
    const plane = d.data.subarray(c * 64, (c + 1) * 64);
    assert.ok(plane.every((v, i) => v === slow.data[3 * i + c]), `channel ${c} as jpeg-js`);
  }
  // Not a grey or constant image: the four samples made distinct RGB channels.
  assert.ok(new Set([d.data[0], d.data[64], d.data[128]]).size > 1, `${d.data[0]},${d.data[64]}`);
});

Deno.test("exifOrientation reads big-endian TIFF and ignores malformed EXIF", () => {
  const le = exifWithOrientation(8);
  assert.equal(exifOrientation(le), 8);
  // The same entry in big-endian ("MM") byte order.
  const be = new Uint8Array(le.length);
  be.set([0x45, 0x78, 0x69, 0x66, 0, 0, 0x4d, 0x4d, 0, 42, 0, 0, 0, 8, 0, 1, 0x01, 0x12, 0, 3]);
  be.set([0, 0, 0, 1, 0, 5, 0, 0, 0, 0, 0, 0], 20);
  assert.equal(exifOrientation(be), 5);
  assert.equal(exifOrientation(le.subarray(0, 12)), 1); // truncated
  assert.equal(exifOrientation(exifWithOrientation(9)), 1); // out of range
  assert.equal(exifOrientation(new TextEncoder().encode("NotExif!!!!!!!!!!!!!")), 1);
});

Deno.test("broken files are rejected with a reason naming the problem", () => {
  const cases: [string, RegExp][] = [
    ["bad/zero.png", /^empty file \(0 bytes\)$/],
    ["bad/truncated.png", /^truncated PNG/],
    ["bad/corrupt.png", /^corrupt PNG: pngjs: /],
    ["bad/truncated.jpg", /^truncated or corrupt JPEG \(no end-of-image marker\)/],
    ["bad/corrupt.jpg", /^corrupt JPEG: jpeg-js: /],
    ["bad/notimage.png", /^not a PNG or JPEG file \(starts 74 68 69 73/],
    ["bad/notimage.jpg", /^not a PNG or JPEG file/],
    ["bad/bomb.png", /^over the pixel limit: 40000×40000 = 1600000000 pixels > 89478485/],
  ];
  for (const [name, reason] of cases) {
    assert.throws(
      () => decodeImage(fixture(name), { channels: 3 }),
      (e: unknown) => e instanceof ImageDecodeError && reason.test(e.message),
      name,
    );
  }
  // The limit applies to width × height and is checked from the header (64×48 = 3072 pixels).
  const big = fixture("decode/big.png");
  assert.equal(decodeImage(big, { channels: 1, maxPixels: 3072 }).width, 64);
  assert.throws(() => decodeImage(big, { channels: 1, maxPixels: 3071 }), /over the pixel limit/);
});

// ---- resizing -------------------------------------------------------------------------------

/** float64 reference: each output pixel as a 2-D weighted sum (triangle filter, PIL-style). */
function resizeRef(
  src: number[],
  c: number,
  w: number,
  h: number,
  size: number,
  policy: ResizePolicy,
): number[] {
  const p = planFit(w, h, size, policy);
  const weights = (inLen: number, outLen: number, j: number) => {
    const scale = inLen / outLen, support = Math.max(1, scale);
    const center = (j + 0.5) * scale;
    const ws = Array.from(
      { length: inLen },
      (_, k) => Math.max(0, 1 - Math.abs(k + 0.5 - center) / support),
    );
    const sum = ws.reduce((a, b) => a + b);
    return ws.map((v) => v / sum);
  };
  const out = new Array(c * size * size).fill(0);
  for (let ch = 0; ch < c; ch++) {
    for (let y = 0; y < p.outH; y++) {
      const wy = weights(h, p.scaledH, y + p.cropY);
      for (let x = 0; x < p.outW; x++) {
        const wx = weights(w, p.scaledW, x + p.cropX);
        let acc = 0;
        for (let k = 0; k < h; k++) {
          for (let l = 0; l < w; l++) acc += wy[k] * wx[l] * src[ch * w * h + k * w + l];
        }
        out[ch * size * size + (y + p.padY) * size + x + p.padX] = Math.min(
          255,
          Math.max(0, Math.round(acc)),
        );
      }
    }
  }
  return out;
}

Deno.test("fitImage matches the float64 resampling reference (crop and pad, down and up)", () => {
  const cases: [number, number, number, number, ResizePolicy][] = [
    [3, 17, 11, 5, "crop"], // downscale ×2.2 (antialiased), wide → centre crop
    [1, 9, 23, 7, "crop"], // tall
    [3, 13, 7, 9, "crop"], // upscale
    [1, 1, 1, 3, "crop"], // a single pixel
    [3, 17, 11, 5, "pad"],
    [1, 9, 23, 8, "pad"],
    [1, 5, 3, 11, "pad"], // upscale with borders
  ];
  for (const [c, w, h, size, policy] of cases) {
    const src = Array.from({ length: c * w * h }, (_, i) => (i * 97 + ((i * i) % 13) * 7) % 256);
    const out = fitImage(
      { channels: c, width: w, height: h, data: new Uint8Array(src) },
      size,
      policy,
    );
    const ref = resizeRef(src, c, w, h, size, policy);
    const worst = Math.max(...Array.from(out, (v, i) => Math.abs(v - ref[i])));
    // float32 weights may round a .5 the other way: at most one level apart.
    assert.ok(worst <= 1, `${w}×${h} → ${size} ${policy}: off by ${worst}`);
  }
});

Deno.test("planFit: crop keeps the centre of the scaled image, pad centres it on a canvas", () => {
  assert.deepEqual(planFit(400, 200, 100, "crop"), {
    scaledW: 200,
    scaledH: 100,
    cropX: 50,
    cropY: 0,
    outW: 100,
    outH: 100,
    padX: 0,
    padY: 0,
  });
  assert.deepEqual(planFit(400, 200, 100, "pad"), {
    scaledW: 100,
    scaledH: 50,
    cropX: 0,
    cropY: 0,
    outW: 100,
    outH: 50,
    padX: 0,
    padY: 25,
  });
  // Pad leaves black borders; a constant image stays constant inside.
  const flat = { channels: 1, width: 10, height: 4, data: new Uint8Array(40).fill(200) };
  const padded = fitImage(flat, 5, "pad");
  assert.deepEqual(Array.from(padded.subarray(0, 5)), [0, 0, 0, 0, 0]);
  assert.deepEqual(Array.from(padded.subarray(10, 15)), [200, 200, 200, 200, 200]);
  assert.ok(fitImage(flat, 3, "crop").every((v) => v === 200));
});
