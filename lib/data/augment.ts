// GPU augmentations of the data path. A batch's uint8 pixels go up packed 4 per u32 word; the host
// draws one crop box, flip and colour-jitter factors per image with a seeded Rng; kernels/image.wgsl
// turns them into f32 views. One crop box feeds every view (the ViT view and the tokenizer view of
// BEiT/PeCo), each resized to its own size with its own normalisation, all flipped alike.
//
// Order of operations per image (BEiT: ColorJitter → flip → RandomResizedCrop → Normalize):
// colour jitter on the source pixels (brightness → contrast → saturation, a fixed order where
// torchvision permutes it randomly), crop + bilinear resize (torchvision's tensor resize with
// antialias off, without its rounding back to uint8), horizontal flip, normalisation. Flipping
// after the crop instead of before draws boxes from the same distribution.

import { gpu } from "../gpu/device.ts";
import { f32bits, grid1d } from "../gpu/recorder.ts";
import { defineKernel } from "../gpu/pipelines.ts";
import type { Rng } from "../tensor/init.ts";
import { tensor } from "../tensor/ops/creation.ts";
import { Tensor } from "../tensor/tensor.ts";
import source from "../../kernels/image.wgsl" with { type: "text" };

const WG = 64;
const RUN = 8;
/** f32 fields per image in the augmentation record (kernels/image.wgsl `Aug`). */
const AUG_FIELDS = 8;

const kernels = {
  stats: defineKernel({
    name: "image_stats",
    source,
    entry: "image_stats",
    bindings: ["read", "read", "write"],
  }),
  view: defineKernel({
    name: "image_view",
    source,
    entry: "image_view",
    bindings: ["read", "read", "read", "write"],
  }),
};

export interface CropBox {
  top: number;
  left: number;
  height: number;
  width: number;
}

/** Everything drawn for one image. Factors of 1 leave the pixels unchanged. */
export interface ImageAug extends CropBox {
  flip: boolean;
  brightness: number;
  contrast: number;
  saturation: number;
}

export interface AugmentConfig {
  /** Crop area as a fraction of the image (BEiT: [0.08, 1]). */
  scale?: [number, number];
  /** Crop aspect ratio w/h, drawn log-uniformly (BEiT: [3/4, 4/3]). */
  ratio?: [number, number];
  /** Probability of a horizontal flip (0.5). */
  flip?: number;
  /** Jitter strengths s: factors uniform in [max(0, 1 − s), 1 + s] (BEiT: 0.4 each). */
  brightness?: number;
  contrast?: number;
  saturation?: number;
}

export const BEIT_AUGMENT: Required<AugmentConfig> = {
  scale: [0.08, 1],
  ratio: [3 / 4, 4 / 3],
  flip: 0.5,
  brightness: 0.4,
  contrast: 0.4,
  saturation: 0.4,
};

/**
 * torchvision's RandomResizedCrop.get_params: 10 attempts at a box of random area and log-uniform
 * aspect ratio that fits; otherwise the centre crop of the image clamped to the ratio range.
 */
export function sampleCrop(
  rng: Rng,
  height: number,
  width: number,
  scale: [number, number] = BEIT_AUGMENT.scale,
  ratio: [number, number] = BEIT_AUGMENT.ratio,
): CropBox {
  const area = height * width;
  const logRatio = [Math.log(ratio[0]), Math.log(ratio[1])];
  for (let attempt = 0; attempt < 10; attempt++) {
    const target = area * rng.uniform(scale[0], scale[1]);
    const aspect = Math.exp(rng.uniform(logRatio[0], logRatio[1]));
    const w = Math.round(Math.sqrt(target * aspect));
    const h = Math.round(Math.sqrt(target / aspect));
    if (w > 0 && w <= width && h > 0 && h <= height) {
      return { top: rng.int(height - h + 1), left: rng.int(width - w + 1), height: h, width: w };
    }
  }
  const inRatio = width / height;
  let w = width, h = height;
  if (inRatio < Math.min(...ratio)) h = Math.round(w / Math.min(...ratio));
  else if (inRatio > Math.max(...ratio)) w = Math.round(h * Math.max(...ratio));
  return {
    top: Math.floor((height - h) / 2),
    left: Math.floor((width - w) / 2),
    height: h,
    width: w,
  };
}

function jitterFactor(rng: Rng, strength: number): number {
  return strength > 0 ? rng.uniform(Math.max(0, 1 - strength), 1 + strength) : 1;
}

/** Draws n images' augmentations: box, flip, brightness, contrast, saturation (in that order). */
export function sampleAugmentations(
  rng: Rng,
  n: number,
  height: number,
  width: number,
  config: AugmentConfig = {},
): ImageAug[] {
  const c = { ...BEIT_AUGMENT, ...config };
  return Array.from({ length: n }, () => ({
    ...sampleCrop(rng, height, width, c.scale, c.ratio),
    flip: c.flip > 0 && rng.float() < c.flip,
    brightness: jitterFactor(rng, c.brightness),
    contrast: jitterFactor(rng, c.contrast),
    saturation: jitterFactor(rng, c.saturation),
  }));
}

/** No augmentation: the whole image, unflipped, unjittered (evaluation, plain conversion). */
export function identityAugmentations(n: number, height: number, width: number): ImageAug[] {
  const aug: ImageAug = {
    top: 0,
    left: 0,
    height,
    width,
    flip: false,
    brightness: 1,
    contrast: 1,
    saturation: 1,
  };
  return Array.from({ length: n }, () => ({ ...aug }));
}

/** A batch of uint8 images on the GPU: `pixels` holds the [n, C, H, W] bytes packed 4 per u32. */
export interface PixelBatch {
  pixels: Tensor;
  n: number;
  channels: number;
  height: number;
  width: number;
}

/** Uploads [n, C, H, W] uint8 pixels (recorded in stream order, no conversion on the host). */
export function uploadPixels(
  bytes: Uint8Array,
  n: number,
  channels: number,
  height: number,
  width: number,
): PixelBatch {
  const size = n * channels * height * width;
  if (bytes.length !== size) {
    throw new Error(
      `peco: uploadPixels: ${bytes.length} bytes do not fill [${n},${channels},${height},${width}]`,
    );
  }
  const pixels = new Tensor([Math.ceil(size / 4)], "u32");
  if (size > 0) gpu().recorder.upload(pixels.buffer, bytes);
  return { pixels, n, channels, height, width };
}

export interface ViewSpec {
  height: number;
  width: number;
  /** Per-channel mean and std subtracted/divided after scaling to [0, 1] (default 0 and 1). */
  mean?: readonly number[];
  std?: readonly number[];
}

function checkBatch(op: string, batch: PixelBatch, augs: readonly ImageAug[]): void {
  const { n, channels: C, height: H, width: W, pixels } = batch;
  const shape = `[${n},${C},${H},${W}]`;
  if (C !== 1 && C !== 3) throw new Error(`peco: ${op}: images ${shape} need 1 or 3 channels`);
  if (pixels.dtype !== "u32" || pixels.size * 4 < n * C * H * W) {
    throw new Error(`peco: ${op}: pixels ${pixels.describe()} do not hold packed bytes ${shape}`);
  }
  if (augs.length !== n) {
    throw new Error(`peco: ${op}: ${augs.length} augmentations for ${n} images ${shape}`);
  }
  augs.forEach((a, i) => {
    const ints = [a.top, a.left, a.height, a.width].every(Number.isInteger);
    if (
      !ints || a.top < 0 || a.left < 0 || a.height < 1 || a.width < 1 ||
      a.top + a.height > H || a.left + a.width > W
    ) {
      throw new Error(
        `peco: ${op}: crop box ${
          JSON.stringify([a.top, a.left, a.height, a.width])
        } of image ${i} ` +
          `([top,left,height,width]) is not inside ${H}×${W}`,
      );
    }
  });
}

function checkView(op: string, view: ViewSpec, channels: number): void {
  const { height, width, mean = [], std = [] } = view;
  if (!Number.isInteger(height) || !Number.isInteger(width) || height < 1 || width < 1) {
    throw new Error(`peco: ${op}: view size ${height}×${width} must be positive integers`);
  }
  if ((view.mean && mean.length !== channels) || (view.std && std.length !== channels)) {
    throw new Error(
      `peco: ${op}: mean [${mean}] / std [${std}] need ${channels} values, one per channel`,
    );
  }
  if (std.some((s) => !(s > 0))) throw new Error(`peco: ${op}: std [${std}] must be positive`);
}

function augRecords(augs: readonly ImageAug[]): Float32Array {
  const data = new Float32Array(augs.length * AUG_FIELDS);
  augs.forEach((a, i) => {
    data.set(
      [a.top, a.left, a.height, a.width, a.flip ? 1 : 0, a.brightness, a.contrast, a.saturation],
      i * AUG_FIELDS,
    );
  });
  return data;
}

/**
 * Renders every view of a batch: each image's crop box resized to each view's size, jittered and
 * flipped as drawn, normalised per view → one f32 tensor [n, C, view.height, view.width] per view.
 * Data preparation: no autograd.
 */
export function augmentViews(
  batch: PixelBatch,
  augs: readonly ImageAug[],
  views: readonly ViewSpec[],
): Tensor[] {
  const op = "augmentViews";
  checkBatch(op, batch, augs);
  for (const view of views) checkView(op, view, batch.channels);
  const { n, channels: C, height: H, width: W, pixels } = batch;
  const recorder = gpu().recorder;
  const jitter = augs.some((a) => a.brightness !== 1 || a.contrast !== 1 || a.saturation !== 1);
  const constants = { C, JITTER: jitter ? 1 : 0, WG, RUN };
  const augTensor = tensor(augRecords(augs), [n, AUG_FIELDS]);
  // Without jitter the kernel never reads the grey means: any buffer fills the binding.
  let greyMeans = augTensor;
  if (jitter && n > 0) {
    greyMeans = new Tensor([n], "f32");
    recorder.dispatch(kernels.stats, {
      buffers: [pixels.binding, augTensor.binding, greyMeans.binding],
      params: [n, H, W],
      constants,
      workgroups: grid1d(n, 1),
    });
  }
  const outputs = views.map((view) => {
    const out = new Tensor([n, C, view.height, view.width], "f32");
    if (out.size === 0) return out;
    const mean = [0, 1, 2].map((c) => view.mean?.[c] ?? 0);
    const istd = [0, 1, 2].map((c) => 1 / (view.std?.[c] ?? 1));
    recorder.dispatch(kernels.view, {
      buffers: [pixels.binding, augTensor.binding, greyMeans.binding, out.binding],
      params: [n, H, W, view.height, view.width, ...mean.map(f32bits), ...istd.map(f32bits)],
      constants,
      workgroups: grid1d(n * view.height * Math.ceil(view.width / RUN), WG),
    });
    return out;
  });
  if (greyMeans !== augTensor) greyMeans.dispose();
  augTensor.dispose();
  return outputs;
}

/**
 * Images [from, to) of host pixels uint8 [N, C, H, W] (`shape` = [C, H, W]) uploaded and rendered
 * unaugmented as each of `views` (resized, normalised): one f32 tensor [to − from, C, view.height,
 * view.width] per view. How held-out sets kept on the host reach the GPU, a chunk at a time.
 */
export function hostImageViews(
  pixels: Uint8Array,
  shape: readonly [number, number, number],
  from: number,
  to: number,
  views: readonly ViewSpec[],
): Tensor[] {
  const [channels, height, width] = shape;
  const bytes = channels * height * width;
  const n = to - from;
  const upload = uploadPixels(
    pixels.subarray(from * bytes, to * bytes),
    n,
    channels,
    height,
    width,
  );
  try {
    return augmentViews(upload, identityAugmentations(n, height, width), views);
  } finally {
    upload.pixels.dispose();
  }
}

/** uint8 → f32 [n, C, H, W] in [0, 1], optionally normalised: the evaluation path. */
export function pixelsToFloat(
  batch: PixelBatch,
  { mean, std }: { mean?: readonly number[]; std?: readonly number[] } = {},
): Tensor {
  const augs = identityAugmentations(batch.n, batch.height, batch.width);
  return augmentViews(batch, augs, [{ height: batch.height, width: batch.width, mean, std }])[0];
}

/**
 * The normalisation of the tokenizer's and the ViT's inputs, (x/255 − 0.5) / 0.5 per channel:
 * pixels in [−1, 1], as taming-transformers and BEiT feed their models.
 */
export function signedUnitNorm(channels: number): { mean: number[]; std: number[] } {
  return { mean: new Array(channels).fill(0.5), std: new Array(channels).fill(0.5) };
}
