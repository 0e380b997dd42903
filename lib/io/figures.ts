// Figures of the evaluate stage: one curves figure per stage from its metrics.jsonl (panels side by
// side: losses, accuracies, reconstruction quality, perplexity — whichever the stage logged), and
// labelled image tables such as the paper's Figure 2/5 (original | masked | reconstruction from the
// predicted codes, per mask ratio). Pure host code on ByteImages (lib/io/plot.ts, lib/io/png.ts).

import { type MetricRecord, series } from "../cli/metrics.ts";
import { writeFileAtomic } from "./atomic.ts";
import { Canvas, linePlot, type Rgb, textWidth } from "./plot.ts";
import { type ByteImage, encodePng, type HostImages, toBytes } from "./png.ts";

function fail(what: string): never {
  throw new Error(`peco: figures: ${what}`);
}

/** Logged keys that are bookkeeping, not curves. */
const NOT_CURVES =
  /^(step|epoch|lr|images_per_s|peak_gpu_bytes|grad_norm|seconds|time|wall_s|train_seconds)$/;

export interface CurvePanel {
  title: string;
  keys: string[];
  logY: boolean;
}

/** The panel a logged key belongs in. */
function panelOf(key: string): string {
  if (/acc|usage/i.test(key)) return "accuracy";
  if (/psnr|ssim/i.test(key)) return "quality";
  if (/perplexity/i.test(key)) return "perplexity";
  return "loss";
}

const PANEL_TITLES: Record<string, string> = {
  loss: "LOSS",
  accuracy: "ACCURACY / USAGE",
  quality: "RECONSTRUCTION",
  perplexity: "PERPLEXITY",
};

/**
 * Groups the numeric keys of `records` into panels (losses; accuracies and codebook usage; PSNR /
 * SSIM; perplexity), in that order, leaving out bookkeeping (lr, throughput, memory, step). A loss
 * panel whose positive values span more than a decade gets a log axis.
 */
export function curvePanels(records: readonly MetricRecord[]): CurvePanel[] {
  const keys: string[] = [];
  for (const r of records) {
    for (const [k, v] of Object.entries(r)) {
      if (typeof v === "number" && !NOT_CURVES.test(k) && !keys.includes(k)) keys.push(k);
    }
  }
  const panels: CurvePanel[] = [];
  for (const kind of Object.keys(PANEL_TITLES)) {
    const members = keys.filter((k) => panelOf(k) === kind);
    if (!members.length) continue;
    const values = members.flatMap((k) => series(records as MetricRecord[], k).y)
      .filter((v) => Number.isFinite(v));
    const positive = values.length > 0 && values.every((v) => v > 0);
    const span = positive ? Math.max(...values) / Math.min(...values) : 0;
    panels.push({ title: PANEL_TITLES[kind], keys: members, logY: kind === "loss" && span > 10 });
  }
  return panels;
}

/** Images side by side on a white background, `gap` pixels apart, top-aligned (RGB out). */
export function hstack(images: readonly ByteImage[], gap = 8): ByteImage {
  if (!images.length) fail("hstack of no images");
  const width = images.reduce((w, im) => w + im.width, 0) + gap * (images.length - 1);
  const height = Math.max(...images.map((im) => im.height));
  const canvas = new Canvas(width, height);
  let left = 0;
  for (const im of images) {
    blit(canvas, im, left, 0);
    left += im.width + gap;
  }
  return canvas.image();
}

/** Copies `im` (grey or RGB) onto the canvas at (left, top). */
function blit(canvas: Canvas, im: ByteImage, left: number, top: number): void {
  const plane = im.height * im.width;
  for (let y = 0; y < im.height; y++) {
    for (let x = 0; x < im.width; x++) {
      const i = y * im.width + x;
      const rgb: Rgb = im.channels === 3
        ? [im.pixels[i], im.pixels[plane + i], im.pixels[2 * plane + i]]
        : [im.pixels[i], im.pixels[i], im.pixels[i]];
      canvas.set(left + x, top + y, rgb);
    }
  }
}

/**
 * The curves figure of one stage: a panel per kind of logged value, each a line per key against
 * the step; null when the records hold no curve (e.g. a stage that logs nothing numeric).
 */
export function stageCurves(
  records: readonly MetricRecord[],
  title: string,
  { width = 420, height = 320 } = {},
): { image: ByteImage; panels: CurvePanel[] } | null {
  const panels = curvePanels(records);
  if (!panels.length) return null;
  const plots = panels.map((p) =>
    linePlot(
      p.keys.map((k) => ({ name: k, ...series(records as MetricRecord[], k) })),
      {
        title: `${title}: ${p.title}`,
        xLabel: "STEP",
        width,
        height,
        logY: p.logY,
      },
    )
  );
  return { image: hstack(plots), panels };
}

/** Writes a ByteImage as PNG, atomically. */
export async function writeFigure(path: string, image: ByteImage): Promise<void> {
  await writeFileAtomic(path, encodePng(image));
}

// ---- image tables ---------------------------------------------------------------------------

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

/**
 * A table of images with a header line per column (and an optional label per row): every cell is
 * enlarged by `scale` so the 5×7 header font fits. Cells of one table share one size.
 */
export function imageTable(
  rows: readonly (readonly ByteImage[])[],
  headers: readonly string[],
  { scale = 1, gap = 4, rowLabels }: { scale?: number; gap?: number; rowLabels?: string[] } = {},
): ByteImage {
  if (!rows.length || rows.some((r) => r.length !== headers.length)) {
    fail(`image table needs rows of ${headers.length} cells`);
  }
  const cells = rows.map((r) => r.map((im) => zoom(im, scale)));
  const { height: ch, width: cw } = cells[0][0];
  if (cells.some((r) => r.some((im) => im.height !== ch || im.width !== cw))) {
    fail("image table cells differ in size");
  }
  const labelWidth = rowLabels?.length ? Math.max(...rowLabels.map(textWidth)) + gap : 0;
  const colWidth = Math.max(cw, ...headers.map(textWidth));
  const top = 7 + 2 * gap;
  const width = labelWidth + headers.length * (colWidth + gap) + gap;
  const height = top + rows.length * (ch + gap);
  const canvas = new Canvas(width, height);
  headers.forEach((h, j) => {
    const x = labelWidth + gap + j * (colWidth + gap);
    canvas.text(x + (colWidth - textWidth(h)) / 2, gap, h);
  });
  cells.forEach((row, i) => {
    const y = top + i * (ch + gap);
    if (rowLabels?.[i]) canvas.text(gap / 2, y + (ch - 7) / 2, rowLabels[i]);
    row.forEach((im, j) => {
      blit(canvas, im, labelWidth + gap + j * (colWidth + gap) + (colWidth - cw) / 2, y);
    });
  });
  return canvas.image();
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
