// Resizing decoded planes to the shard size, on the CPU (the shard stage needs no GPU).
//
// Policies (--resize):
// - "crop": scale so the shorter side equals `size`, then take the centre size × size window
//   (torchvision's Resize(size) + CenterCrop(size)).
// - "pad": scale so the longer side equals `size`, then centre the image on a black size × size
//   canvas (letterboxing; no pixels are lost).
//
// Resampling is separable with a triangle (bilinear) filter whose support widens with the
// downscale factor, i.e. antialiased like PIL's Image.resize(BILINEAR): each output pixel averages
// the source pixels it covers instead of sampling 4 of them. Only the output window is computed
// (a centre crop never resamples the discarded margins).

import type { Planes } from "./decode.ts";

export type ResizePolicy = "crop" | "pad";
export const RESIZE_POLICIES: readonly ResizePolicy[] = ["crop", "pad"];

/** Filter taps for `count` outputs starting at output index `first` of an axis inLen → outLen. */
export interface AxisTaps {
  count: number;
  /** First source index of each output. */
  start: Int32Array;
  /** Number of taps of each output. */
  taps: Int32Array;
  /** Weights, `maxTaps` per output (normalised to sum 1). */
  weights: Float32Array;
  maxTaps: number;
}

export function axisTaps(inLen: number, outLen: number, first: number, count: number): AxisTaps {
  const scale = inLen / outLen;
  const support = Math.max(1, scale); // filter radius in source pixels
  const maxTaps = Math.ceil(support) * 2 + 1;
  const start = new Int32Array(count);
  const taps = new Int32Array(count);
  const weights = new Float32Array(count * maxTaps);
  for (let i = 0; i < count; i++) {
    const center = (first + i + 0.5) * scale;
    const lo = Math.max(0, Math.floor(center - support));
    const hi = Math.min(inLen, Math.ceil(center + support));
    let sum = 0;
    for (let k = lo; k < hi; k++) sum += Math.max(0, 1 - Math.abs(k + 0.5 - center) / support);
    start[i] = lo;
    taps[i] = hi - lo;
    for (let k = lo; k < hi; k++) {
      weights[i * maxTaps + k - lo] = Math.max(0, 1 - Math.abs(k + 0.5 - center) / support) / sum;
    }
  }
  return { count, start, taps, weights, maxTaps };
}

/** Where the image lands: scaled size, the window taken from it, and its place on the canvas. */
export interface FitPlan {
  /** Size of the whole scaled image. */
  scaledW: number;
  scaledH: number;
  /** Window of the scaled image that is kept (crop) — the whole image for pad. */
  cropX: number;
  cropY: number;
  outW: number;
  outH: number;
  /** Offset of that window on the size × size canvas (pad). */
  padX: number;
  padY: number;
}

export function planFit(
  width: number,
  height: number,
  size: number,
  policy: ResizePolicy,
): FitPlan {
  if (policy === "crop") {
    const s = size / Math.min(width, height);
    const scaledW = Math.max(size, Math.round(width * s));
    const scaledH = Math.max(size, Math.round(height * s));
    return {
      scaledW,
      scaledH,
      cropX: Math.round((scaledW - size) / 2),
      cropY: Math.round((scaledH - size) / 2),
      outW: size,
      outH: size,
      padX: 0,
      padY: 0,
    };
  }
  const s = size / Math.max(width, height);
  const scaledW = Math.min(size, Math.max(1, Math.round(width * s)));
  const scaledH = Math.min(size, Math.max(1, Math.round(height * s)));
  return {
    scaledW,
    scaledH,
    cropX: 0,
    cropY: 0,
    outW: scaledW,
    outH: scaledH,
    padX: Math.floor((size - scaledW) / 2),
    padY: Math.floor((size - scaledH) / 2),
  };
}

/** Resizes planes to [C, size, size] by `policy`. */
export function fitImage(src: Planes, size: number, policy: ResizePolicy): Uint8Array {
  const { channels, width, height } = src;
  if (width === size && height === size) return src.data;
  const p = planFit(width, height, size, policy);
  const tx = axisTaps(width, p.scaledW, p.cropX, p.outW);
  const ty = axisTaps(height, p.scaledH, p.cropY, p.outH);
  const out = new Uint8Array(channels * size * size);
  const clamped = new Uint8ClampedArray(out.buffer);
  // Horizontal pass over only the source rows the vertical taps touch.
  const rowLo = ty.start[0];
  const rowHi = ty.start[ty.count - 1] + ty.taps[ty.count - 1];
  const mid = new Float32Array((rowHi - rowLo) * p.outW);
  const row = new Float64Array(p.outW);
  for (let c = 0; c < channels; c++) {
    const plane = src.data.subarray(c * width * height, (c + 1) * width * height);
    for (let y = rowLo; y < rowHi; y++) {
      const row = y * width;
      const m = (y - rowLo) * p.outW;
      for (let x = 0; x < p.outW; x++) {
        const s = row + tx.start[x], w = x * tx.maxTaps;
        let acc = 0;
        for (let k = 0; k < tx.taps[x]; k++) acc += plane[s + k] * tx.weights[w + k];
        mid[m + x] = acc;
      }
    }
    const base = c * size * size;
    for (let y = 0; y < p.outH; y++) {
      // Accumulate whole rows (contiguous inner loop), then round into the canvas.
      const s = ty.start[y] - rowLo, w = y * ty.maxTaps;
      row.fill(0);
      for (let k = 0; k < ty.taps[y]; k++) {
        const weight = ty.weights[w + k], m = (s + k) * p.outW;
        for (let x = 0; x < p.outW; x++) row[x] += mid[m + x] * weight;
      }
      // A clamped array clamps to [0, 255] and rounds (half to even) on store.
      clamped.set(row, base + (p.padY + y) * size + p.padX);
    }
  }
  return out;
}
