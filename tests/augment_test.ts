import { assert, assertClose, assertThrows, rng as testRng } from "./util.ts";
import {
  augmentViews,
  hostImageViews,
  identityAugmentations,
  type ImageAug,
  pixelsToFloat,
  sampleAugmentations,
  sampleCrop,
  uploadPixels,
  type ViewSpec,
} from "../lib/data/augment.ts";
import { Rng } from "../lib/tensor/init.ts";

function randomBytes(n: number, seed: number): Uint8Array {
  const r = testRng(seed);
  return Uint8Array.from({ length: n }, () => Math.floor(r() * 256));
}

// ---- float64 reference: jitter the source image, crop + bilinear resize, flip, normalise ----

const GREY = [0.2989, 0.587, 0.114];
const clamp01 = (v: number) => Math.min(1, Math.max(0, v));

function referenceViews(
  bytes: Uint8Array,
  [n, C, H, W]: number[],
  augs: ImageAug[],
  view: ViewSpec,
): number[] {
  const out: number[] = [];
  const grey = (px: number[]) => C === 3 ? px.reduce((s, v, c) => s + v * GREY[c], 0) : px[0];
  for (let b = 0; b < n; b++) {
    const a = augs[b];
    const raw = (y: number, x: number) =>
      Array.from({ length: C }, (_, c) => bytes[((b * C + c) * H + y) * W + x] / 255);
    const bright = (px: number[]) => px.map((v) => clamp01(v * a.brightness));
    let greyMean = 0;
    for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) greyMean += grey(bright(raw(y, x)));
    greyMean /= H * W;
    const source = (y: number, x: number) => {
      let px = bright(raw(y, x));
      px = px.map((v) => clamp01(a.contrast * v + (1 - a.contrast) * greyMean));
      if (C === 3) {
        const g = grey(px);
        px = px.map((v) => clamp01(a.saturation * v + (1 - a.saturation) * g));
      }
      return px;
    };
    // PyTorch upsample_bilinear2d, align_corners = false, on the crop.
    const taps = (o: number, outLen: number, len: number) => {
      const src = Math.max((o + 0.5) * (len / outLen) - 0.5, 0);
      const i0 = Math.min(Math.floor(src), len - 1);
      return { i0, i1: Math.min(i0 + 1, len - 1), f: src - i0 };
    };
    const plane: number[][] = Array.from({ length: C }, () => []);
    for (let oy = 0; oy < view.height; oy++) {
      for (let ox = 0; ox < view.width; ox++) {
        const sx = a.flip ? view.width - 1 - ox : ox;
        const ty = taps(oy, view.height, a.height);
        const tx = taps(sx, view.width, a.width);
        const p = (i: number, j: number) => source(a.top + i, a.left + j);
        const [p00, p01, p10, p11] = [
          p(ty.i0, tx.i0),
          p(ty.i0, tx.i1),
          p(ty.i1, tx.i0),
          p(ty.i1, tx.i1),
        ];
        for (let c = 0; c < C; c++) {
          const v = (1 - ty.f) * ((1 - tx.f) * p00[c] + tx.f * p01[c]) +
            ty.f * ((1 - tx.f) * p10[c] + tx.f * p11[c]);
          plane[c].push((v - (view.mean?.[c] ?? 0)) / (view.std?.[c] ?? 1));
        }
      }
    }
    for (const values of plane) out.push(...values);
  }
  return out;
}

const aug = (
  top: number,
  left: number,
  height: number,
  width: number,
  flip = false,
  [brightness, contrast, saturation] = [1, 1, 1],
): ImageAug => ({ top, left, height, width, flip, brightness, contrast, saturation });

// Fixed boxes on 13×11 images: the whole image, a flipped interior box (downsample in one axis,
// upsample in the other), a single row, a single pixel, and a box touching the bottom-right corner.
const FIXED_AUGS = [
  aug(0, 0, 13, 11, false, [1.3, 0.7, 1.2]),
  aug(2, 1, 9, 4, true, [0.8, 1.35, 0.6]),
  aug(5, 0, 1, 11, false, [1.1, 1, 1]),
  aug(6, 3, 1, 1, true, [1, 1, 1]),
  aug(4, 2, 9, 9, true, [1.6, 0.65, 1.4]),
];

for (const C of [3, 1]) {
  Deno.test(`augmentViews C=${C}: one box, three views (7×5, 9×9, 3×19) match the float64 reference`, async () => {
    const shape = [FIXED_AUGS.length, C, 13, 11];
    const bytes = randomBytes(shape.reduce((a, b) => a * b, 1), 17 + C);
    // Saturate some pixels so brightness clamps matter.
    bytes.fill(255, 0, 9);
    const batch = uploadPixels(bytes, shape[0], C, 13, 11);
    const views: ViewSpec[] = [
      C === 3
        ? { height: 7, width: 5, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] }
        : { height: 7, width: 5, mean: [0.5], std: [0.25] },
      { height: 9, width: 9 },
      // Wider than two runs of 8 output pixels: full runs and a partial one.
      { height: 3, width: 19 },
    ];
    const outs = augmentViews(batch, FIXED_AUGS, views);
    for (let v = 0; v < views.length; v++) {
      assert(
        outs[v].shape.join(",") === [shape[0], C, views[v].height, views[v].width].join(","),
        `view ${v} shape [${outs[v].shape}]`,
      );
      assertClose(await outs[v].toArray(), referenceViews(bytes, shape, FIXED_AUGS, views[v]), {
        atol: 2e-5,
        rtol: 1e-4,
        what: `C=${C} view ${v}`,
      });
      outs[v].dispose();
    }
    batch.pixels.dispose();
  });
}

Deno.test("augmentViews without jitter (factors 1) and pixelsToFloat are exact conversions", async () => {
  const [n, C, H, W] = [2, 3, 5, 3];
  const bytes = randomBytes(n * C * H * W, 4);
  const batch = uploadPixels(bytes, n, C, H, W);
  const plain = await pixelsToFloat(batch).toArray();
  assertClose(plain, Array.from(bytes, (v) => v / 255), { atol: 1e-7, rtol: 0, what: "u8 → f32" });
  const normed = await pixelsToFloat(batch, { mean: [0.1, 0.2, 0.3], std: [2, 3, 4] }).toArray();
  const ref = Array.from(bytes, (v, i) => {
    const c = Math.floor(i / (H * W)) % C;
    return (v / 255 - [0.1, 0.2, 0.3][c]) / [2, 3, 4][c];
  });
  assertClose(normed, ref, { atol: 1e-6, what: "normalised" });
  const augs = [aug(1, 0, 4, 3, true), aug(0, 1, 5, 2)];
  const [view] = augmentViews(batch, augs, [{ height: 6, width: 4 }]);
  assertClose(
    await view.toArray(),
    referenceViews(bytes, [n, C, H, W], augs, { height: 6, width: 4 }),
    {
      atol: 2e-6,
      what: "resize without jitter",
    },
  );
  view.dispose();
  batch.pixels.dispose();
});

Deno.test("hostImageViews: a chunk of host images as unaugmented views, the reference's resize and normalisation", async () => {
  const [N, C, H, W] = [5, 3, 4, 7];
  const bytes = randomBytes(N * C * H * W, 9);
  const views = [{ height: H, width: W, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5] }, {
    height: 3,
    width: 5,
  }];
  const [from, to] = [1, 4];
  const chunk = bytes.subarray(from * C * H * W, to * C * H * W);
  const outs = hostImageViews(bytes, [C, H, W], from, to, views);
  assert(outs.length === 2 && outs[1].shape.join() === `${to - from},${C},3,5`, "shapes");
  for (const [i, view] of views.entries()) {
    assertClose(
      await outs[i].toArray(),
      referenceViews(chunk, [to - from, C, H, W], identityAugmentations(to - from, H, W), view),
      { atol: 2e-6, what: `view ${i}` },
    );
    outs[i].dispose();
  }
});

Deno.test("sampleCrop follows torchvision: bounds, ranges, determinism, centre-crop fallback", () => {
  const rng = new Rng(5);
  const [H, W] = [37, 29];
  let areaSum = 0;
  const draws = 3000;
  for (let i = 0; i < draws; i++) {
    const box = sampleCrop(rng, H, W);
    assert(box.height >= 1 && box.width >= 1, `empty box ${JSON.stringify(box)}`);
    assert(
      box.top + box.height <= H && box.left + box.width <= W,
      `box outside ${JSON.stringify(box)}`,
    );
    // Rounded from an area in [0.08, 1]·H·W and an aspect in [3/4, 4/3].
    const area = box.height * box.width / (H * W);
    assert(area >= 0.05 && area <= 1, `area fraction ${area}`);
    const aspect = box.width / box.height;
    if (box.height >= 8 && box.width >= 8) {
      assert(aspect > 0.75 * 0.85 && aspect < (4 / 3) / 0.85, `aspect ${aspect}`);
    }
    areaSum += area;
  }
  // E[area] = 0.54 for scale U(0.08, 1) (slightly less: large boxes that do not fit are redrawn).
  assert(areaSum / draws > 0.4 && areaSum / draws < 0.56, `mean area ${areaSum / draws}`);
  const a = sampleAugmentations(new Rng(8), 6, H, W);
  const b = sampleAugmentations(new Rng(8), 6, H, W);
  assert(JSON.stringify(a) === JSON.stringify(b), "same seed, different augmentations");
  assert(a.some((x) => x.flip) && a.some((x) => !x.flip), "flip never varies");
  assert(a.every((x) => x.brightness >= 0.6 && x.brightness <= 1.4), "brightness out of range");
  // Impossible areas (scale > 1) force the fallback: a tall image is cut to ratio 3/4 at its
  // centre; an image whose ratio is in range is kept whole.
  const tall = sampleCrop(new Rng(1), 30, 10, [2, 3]);
  assert(
    JSON.stringify(tall) === JSON.stringify({ top: 8, left: 0, height: 13, width: 10 }),
    `tall ${JSON.stringify(tall)}`,
  );
  const wide = sampleCrop(new Rng(1), 10, 30, [2, 3]);
  assert(
    JSON.stringify(wide) === JSON.stringify({ top: 0, left: 8, height: 10, width: 13 }),
    `wide ${JSON.stringify(wide)}`,
  );
  const whole = sampleCrop(new Rng(1), 13, 11, [2, 3]);
  assert(
    JSON.stringify(whole) === JSON.stringify({ top: 0, left: 0, height: 13, width: 11 }),
    `whole ${JSON.stringify(whole)}`,
  );
  const off = sampleAugmentations(new Rng(2), 3, 9, 9, {
    flip: 0,
    brightness: 0,
    contrast: 0,
    saturation: 0,
  });
  assert(
    off.every((x) => !x.flip && x.brightness === 1 && x.contrast === 1 && x.saturation === 1),
    "disabled jitter drew factors",
  );
});

Deno.test("augment: bad input throws clear errors naming the op and shapes", () => {
  const batch = uploadPixels(new Uint8Array(2 * 3 * 4 * 5), 2, 3, 4, 5);
  const ok = [aug(0, 0, 4, 5), aug(1, 1, 2, 2)];
  assertThrows(
    () => uploadPixels(new Uint8Array(7), 2, 1, 2, 2),
    /uploadPixels: 7 bytes do not fill \[2,1,2,2\]/,
  );
  assertThrows(
    () => augmentViews(batch, [ok[0]], [{ height: 2, width: 2 }]),
    /augmentViews: 1 augmentations for 2 images \[2,3,4,5\]/,
  );
  assertThrows(
    () => augmentViews(batch, [ok[0], aug(1, 2, 4, 2)], [{ height: 2, width: 2 }]),
    /augmentViews: crop box \[1,2,4,2\] of image 1 .* is not inside 4×5/,
  );
  assertThrows(
    () => augmentViews(batch, ok, [{ height: 0, width: 2 }]),
    /augmentViews: view size 0×2/,
  );
  assertThrows(
    () => augmentViews(batch, ok, [{ height: 2, width: 2, mean: [0.5] }]),
    /augmentViews: mean \[0.5\] .* need 3 values/,
  );
  assertThrows(
    () => augmentViews({ ...batch, channels: 2 }, ok, [{ height: 2, width: 2 }]),
    /augmentViews: images \[2,2,4,5\] need 1 or 3 channels/,
  );
  assertThrows(
    () => augmentViews({ ...batch, height: 40 }, ok, [{ height: 2, width: 2 }]),
    /augmentViews: pixels .* do not hold packed bytes \[2,3,40,5\]/,
  );
  batch.pixels.dispose();
});
