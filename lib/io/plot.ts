// Tiny dependency-free plots to PNG: line plots (loss curves, optionally log-scale y) and
// histograms (code frequencies). An RGB raster with straight lines, filled rectangles and a
// built-in 5×7 bitmap font for digits, capital letters and a little punctuation (lower case is
// drawn as capitals) — enough for titles, axis labels and tick values.

import { writeFileAtomic } from "./atomic.ts";
import { type ByteImage, encodePng } from "./png.ts";

export type Rgb = readonly [number, number, number];

const BLACK: Rgb = [0, 0, 0];
const GREY: Rgb = [225, 225, 225];
const WHITE: Rgb = [255, 255, 255];
/** Matplotlib's first colours. */
export const PALETTE: readonly Rgb[] = [
  [31, 119, 180],
  [255, 127, 14],
  [44, 160, 44],
  [214, 39, 40],
  [148, 103, 189],
  [140, 86, 75],
];

// ---- font -----------------------------------------------------------------------------------

/** 5×7 glyphs: seven rows of 5 bits (MSB = left column), two hex digits per row. */
const GLYPHS: Record<string, string> = {
  "0": "0E11131519110E",
  "1": "040C040404040E",
  "2": "0E11010204081F",
  "3": "1F02040201110E",
  "4": "02060A121F0202",
  "5": "1F101E0101110E",
  "6": "0608101E11110E",
  "7": "1F010204080808",
  "8": "0E11110E11110E",
  "9": "0E11110F01020C",
  A: "0E1111111F1111",
  B: "1E11111E11111E",
  C: "0E11101010110E",
  D: "1C12111111121C",
  E: "1F10101E10101F",
  F: "1F10101E101010",
  G: "0E11101711110F",
  H: "1111111F111111",
  I: "0E04040404040E",
  J: "0702020202120C",
  K: "11121418141211",
  L: "1010101010101F",
  M: "111B1515111111",
  N: "11111915131111",
  O: "0E11111111110E",
  P: "1E11111E101010",
  Q: "0E11111115120D",
  R: "1E11111E141211",
  S: "0F10100E01011E",
  T: "1F040404040404",
  U: "1111111111110E",
  V: "11111111110A04",
  W: "1111111515150A",
  X: "11110A040A1111",
  Y: "1111110A040404",
  Z: "1F01020408101F",
  " ": "00000000000000",
  ".": "00000000000C0C",
  ",": "000000000C0408",
  "-": "0000001F000000",
  "+": "0004041F040400",
  ":": "000C0C000C0C00",
  "/": "00010204081000",
  "(": "02040808080402",
  ")": "08040202020408",
  "%": "18190204081303",
  "=": "00001F001F0000",
  "_": "0000000000001F",
  "|": "04040404040404",
  "?": "0E110102040004",
};
const GLYPH_W = 5;
const GLYPH_H = 7;
/** Horizontal advance of one character (glyph + one column of space). */
const ADVANCE = GLYPH_W + 1;

function glyphRows(ch: string): number[] {
  const hex = GLYPHS[ch.toUpperCase()] ?? GLYPHS["?"];
  return Array.from({ length: GLYPH_H }, (_, r) => parseInt(hex.slice(2 * r, 2 * r + 2), 16));
}

// ---- canvas ---------------------------------------------------------------------------------

/** An RGB raster (planar, like every ByteImage) with a few drawing primitives. */
export class Canvas {
  readonly pixels: Uint8Array;

  constructor(readonly width: number, readonly height: number, background: Rgb = WHITE) {
    if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1) {
      throw new Error(`peco: plot: bad canvas size ${width}×${height}`);
    }
    this.pixels = new Uint8Array(3 * width * height);
    this.fillRect(0, 0, width, height, background);
  }

  set(x: number, y: number, color: Rgb): void {
    x = Math.round(x);
    y = Math.round(y);
    if (x < 0 || y < 0 || x >= this.width || y >= this.height) return;
    const plane = this.width * this.height;
    const i = y * this.width + x;
    this.pixels[i] = color[0];
    this.pixels[plane + i] = color[1];
    this.pixels[2 * plane + i] = color[2];
  }

  fillRect(x: number, y: number, w: number, h: number, color: Rgb): void {
    const x0 = Math.max(0, Math.round(x)), x1 = Math.min(this.width, Math.round(x + w));
    const y0 = Math.max(0, Math.round(y)), y1 = Math.min(this.height, Math.round(y + h));
    for (let yy = y0; yy < y1; yy++) for (let xx = x0; xx < x1; xx++) this.set(xx, yy, color);
  }

  /** A one-pixel line (Bresenham). */
  line(x0: number, y0: number, x1: number, y1: number, color: Rgb): void {
    x0 = Math.round(x0), y0 = Math.round(y0), x1 = Math.round(x1), y1 = Math.round(y1);
    const dx = Math.abs(x1 - x0), dy = -Math.abs(y1 - y0);
    const sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
    let err = dx + dy;
    // Bounded by the canvas: clamp absurd coordinates' cost.
    for (let n = 0; n <= dx - dy && n < 4 * (this.width + this.height); n++) {
      this.set(x0, y0, color);
      if (x0 === x1 && y0 === y1) break;
      const e2 = 2 * err;
      if (e2 >= dy) (err += dy), (x0 += sx);
      if (e2 <= dx) (err += dx), (y0 += sy);
    }
  }

  /** Draws text with its top-left corner at (x, y). */
  text(x: number, y: number, s: string, color: Rgb = BLACK): void {
    [...s].forEach((ch, k) => {
      glyphRows(ch).forEach((bits, r) => {
        for (let c = 0; c < GLYPH_W; c++) {
          if (bits & (1 << (GLYPH_W - 1 - c))) this.set(x + k * ADVANCE + c, y + r, color);
        }
      });
    });
  }

  /** Draws text rotated a quarter turn counter-clockwise (a y-axis label), bottom at (x, y). */
  textUp(x: number, y: number, s: string, color: Rgb = BLACK): void {
    [...s].forEach((ch, k) => {
      glyphRows(ch).forEach((bits, r) => {
        for (let c = 0; c < GLYPH_W; c++) {
          if (bits & (1 << (GLYPH_W - 1 - c))) this.set(x + r, y - k * ADVANCE - c, color);
        }
      });
    });
  }

  image(): ByteImage {
    return { pixels: this.pixels, channels: 3, height: this.height, width: this.width };
  }
}

export function textWidth(s: string): number {
  return s.length ? s.length * ADVANCE - 1 : 0;
}

// ---- axes -----------------------------------------------------------------------------------

/** About `count` round tick values covering [lo, hi] (steps 1, 2 or 5 × 10^k). */
export function niceTicks(lo: number, hi: number, count = 5): { ticks: number[]; step: number } {
  if (!(hi > lo)) {
    const pad = Math.abs(lo) * 0.1 || 1;
    return niceTicks(lo - pad, lo + pad, count);
  }
  const raw = (hi - lo) / count;
  const p = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * p).find((s) => s >= raw)!;
  const ticks: number[] = [];
  for (let t = Math.ceil(lo / step - 1e-9); t * step <= hi + step * 1e-9; t++) {
    ticks.push(Number((t * step).toPrecision(12)) + 0); // no 0.6000000000000001, no -0
  }
  return { ticks, step };
}

/** A tick label with as many decimals as the step needs (exponent form when huge or tiny). */
export function formatTick(v: number, step: number): string {
  if (v === 0 || Math.abs(v) < step * 1e-6) return "0";
  const a = Math.abs(v);
  if (a >= 1e5 || a < 1e-3) {
    return v.toExponential(Math.max(0, 1 - Math.round(Math.log10(step / a))));
  }
  return v.toFixed(Math.max(0, -Math.floor(Math.log10(step) + 1e-9)));
}

interface Axes {
  left: number;
  top: number;
  width: number;
  height: number;
  x: (v: number) => number;
  y: (v: number) => number;
}

interface AxesOptions {
  title?: string;
  xLabel?: string;
  yLabel?: string;
  xRange: [number, number];
  yRange: [number, number];
  logY?: boolean;
}

/** Frame, grid, ticks and labels; returns the data → pixel maps of the plot area. */
function drawAxes(canvas: Canvas, o: AxesOptions): Axes {
  const { ticks: xTicks, step: xStep } = niceTicks(o.xRange[0], o.xRange[1]);
  const yScale = o.logY ? (v: number) => Math.log10(v) : (v: number) => v;
  const [ylo, yhi] = [yScale(o.yRange[0]), yScale(o.yRange[1])];
  const nice = niceTicks(ylo, yhi);
  // A log axis ticks whole decades when its range holds two; labels show the values, 10^t.
  const decades = o.logY === true && Math.floor(yhi) - Math.ceil(ylo) >= 1;
  const yTicks = decades ? nice.ticks.filter(Number.isInteger) : nice.ticks;
  const yLabels = yTicks.map((t) => {
    if (!o.logY) return formatTick(t, nice.step);
    const value = 10 ** t;
    return formatTick(value, decades ? value : value * nice.step * Math.LN10);
  });
  const xLo = Math.min(o.xRange[0], xTicks[0]), xHi = Math.max(o.xRange[1], xTicks.at(-1)!);
  const yLo = Math.min(ylo, yTicks[0] ?? ylo), yHi = Math.max(yhi, yTicks.at(-1) ?? yhi);

  const left = 8 + (o.yLabel ? GLYPH_H + 6 : 0) + Math.max(...yLabels.map(textWidth)) + 6;
  const top = o.title ? GLYPH_H + 12 : 8;
  const bottom = 8 + GLYPH_H + 6 + (o.xLabel ? GLYPH_H + 6 : 0);
  const width = canvas.width - left - 12;
  const height = canvas.height - top - bottom;
  if (width < 20 || height < 20) throw new Error(`peco: plot: canvas too small for the axes`);
  const x = (v: number) => left + ((v - xLo) / (xHi - xLo || 1)) * width;
  const y = (v: number) => top + height - ((yScale(v) - yLo) / (yHi - yLo || 1)) * height;

  yTicks.forEach((t, i) => {
    const py = top + height - ((t - yLo) / (yHi - yLo || 1)) * height;
    canvas.line(left, py, left + width, py, GREY);
    canvas.line(left - 4, py, left, py, BLACK);
    canvas.text(left - 6 - textWidth(yLabels[i]), py - 3, yLabels[i]);
  });
  for (const t of xTicks) {
    const label = formatTick(t, xStep);
    canvas.line(x(t), top, x(t), top + height, GREY);
    canvas.line(x(t), top + height, x(t), top + height + 4, BLACK);
    canvas.text(x(t) - textWidth(label) / 2, top + height + 6, label);
  }
  canvas.line(left, top, left, top + height, BLACK);
  canvas.line(left, top + height, left + width, top + height, BLACK);
  if (o.title) canvas.text((canvas.width - textWidth(o.title)) / 2, 5, o.title);
  if (o.xLabel) {
    canvas.text(left + (width - textWidth(o.xLabel)) / 2, canvas.height - GLYPH_H - 4, o.xLabel);
  }
  if (o.yLabel) canvas.textUp(4, top + (height + textWidth(o.yLabel)) / 2, o.yLabel);
  return { left, top, width, height, x, y };
}

function finiteRange(values: Iterable<number>, keep = (_v: number) => true): [number, number] {
  let lo = Infinity, hi = -Infinity;
  for (const v of values) {
    if (Number.isFinite(v) && keep(v)) (lo = Math.min(lo, v)), (hi = Math.max(hi, v));
  }
  return lo <= hi ? [lo, hi] : [0, 1];
}

// ---- line plot ------------------------------------------------------------------------------

export interface Series {
  name?: string;
  x: readonly number[];
  y: readonly number[];
  color?: Rgb;
}

export interface PlotOptions {
  title?: string;
  xLabel?: string;
  yLabel?: string;
  width?: number;
  height?: number;
}

/** Lines through each series' points (gaps at NaN/Inf, and at y ≤ 0 on a log axis). */
export function linePlot(
  series: readonly Series[],
  options: PlotOptions & { logY?: boolean } = {},
): ByteImage {
  for (const s of series) {
    if (s.x.length !== s.y.length) {
      throw new Error(
        `peco: plot: series "${s.name ?? ""}" has ${s.x.length} x but ${s.y.length} y`,
      );
    }
  }
  const canvas = new Canvas(options.width ?? 640, options.height ?? 400);
  const positive = options.logY ? (v: number) => v > 0 : undefined;
  const axes = drawAxes(canvas, {
    ...options,
    xRange: finiteRange(series.flatMap((s) => s.x)),
    yRange: finiteRange(series.flatMap((s) => s.y), positive),
  });
  const ok = (v: number) => Number.isFinite(v) && (!options.logY || v > 0);
  series.forEach((s, k) => {
    const color = s.color ?? PALETTE[k % PALETTE.length];
    for (let i = 0; i < s.x.length; i++) {
      if (!ok(s.x[i]) || !ok(s.y[i])) continue;
      const [px, py] = [axes.x(s.x[i]), axes.y(s.y[i])];
      if (i + 1 < s.x.length && ok(s.x[i + 1]) && ok(s.y[i + 1])) {
        canvas.line(px, py, axes.x(s.x[i + 1]), axes.y(s.y[i + 1]), color);
      } else canvas.set(px, py, color);
    }
  });
  // Legend: top right of the plot area on a white box, one line per named series.
  const named = series.map((s, k) => ({
    name: s.name,
    color: s.color ?? PALETTE[k % PALETTE.length],
  }))
    .filter((s) => s.name);
  if (named.length) {
    const w = Math.max(...named.map((s) => textWidth(s.name!))) + 24;
    const right = axes.left + axes.width - 4;
    canvas.fillRect(right - w, axes.top + 2, w, named.length * (GLYPH_H + 4) + 4, WHITE);
    named.forEach((s, k) => {
      const ly = axes.top + 6 + k * (GLYPH_H + 4);
      canvas.fillRect(right - w + 4, ly + 3, 12, 2, s.color);
      canvas.text(right - w + 20, ly, s.name!);
    });
  }
  return canvas.image();
}

// ---- histogram ------------------------------------------------------------------------------

export interface Histogram {
  counts: readonly number[];
  /** Left edge of bin 0 (default 0) and bin width (default 1): bin i is [x0 + i·w, x0 + (i+1)·w). */
  x0?: number;
  binWidth?: number;
}

/** Counts of `values` in `bins` equal bins over `range` (default: the values' finite range). */
export function histogram(
  values: Iterable<number>,
  bins: number,
  range?: [number, number],
): Required<Histogram> {
  const list = [...values];
  const [lo, hi] = range ?? finiteRange(list);
  const binWidth = (hi - lo) / bins || 1;
  const counts = new Array(bins).fill(0);
  for (const v of list) {
    if (!(v >= lo && v <= hi)) continue;
    counts[Math.min(bins - 1, Math.floor((v - lo) / binWidth))]++;
  }
  return { counts, x0: lo, binWidth };
}

/** Bars of a histogram; more bins than pixel columns are summed in equal groups. */
export function histogramPlot(
  h: Histogram,
  options: PlotOptions & { color?: Rgb } = {},
): ByteImage {
  const { x0 = 0, binWidth = 1 } = h;
  const canvas = new Canvas(options.width ?? 640, options.height ?? 400);
  const bins = h.counts.length;
  if (bins === 0) throw new Error("peco: plot: histogram has no bins");
  const group = Math.max(1, Math.ceil(bins / (canvas.width / 2)));
  const sums: number[] = [];
  for (let i = 0; i < bins; i += group) {
    sums.push(h.counts.slice(i, i + group).reduce((a, b) => a + (Number.isFinite(b) ? b : 0), 0));
  }
  const yLabel = options.yLabel ?? (group > 1 ? `count per ${group} bins` : "count");
  const axes = drawAxes(canvas, {
    ...options,
    yLabel,
    xRange: [x0, x0 + bins * binWidth],
    yRange: [0, Math.max(1, ...sums)],
  });
  const color = options.color ?? PALETTE[0];
  sums.forEach((count, g) => {
    const a = axes.x(x0 + g * group * binWidth);
    const b = axes.x(x0 + Math.min(bins, (g + 1) * group) * binWidth);
    const top = axes.y(count);
    // Adjacent bars keep a 1-pixel gap when they are wide enough to afford one.
    canvas.fillRect(a, top, Math.max(1, b - a - (b - a >= 3 ? 1 : 0)), axes.y(0) - top, color);
  });
  return canvas.image();
}

/** Writes a plot atomically as PNG. */
export async function writePlot(path: string, image: ByteImage): Promise<void> {
  await writeFileAtomic(path, encodePng(image));
}
