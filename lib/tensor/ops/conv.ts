// Spatial ops: conv2d (implicit GEMM, with input, weight and bias gradients; on software adapters
// window products or im2col + matmul where they are faster), average pooling and nearest
// upsampling. See kernels/conv.wgsl for the kernels and why they look the way they do.

import { gpu } from "../../gpu/device.ts";
import { defineKernel, type Kernel } from "../../gpu/pipelines.ts";
import { f32bits, grid1d } from "../../gpu/recorder.ts";
import { isGradEnabled, noGrad, record, Tensor } from "../tensor.ts";
import { reduceRaw, sumOuterInner } from "./reduce.ts";
import { matmul, matmulRowBias } from "./matmul.ts";
import { permute } from "./shape.ts";
import { fitsFlat, FLAT_WGSL, withFlatTexture } from "./flat.ts";
import { forcedVariant } from "../../gpu/autotune.ts";
import { countFlops, productFlops, uncounted } from "./flops.ts";
import {
  convByWindows,
  packWindows,
  weightGradFromWindows,
  weightGradWindowsFit,
  type WeightView,
  type WindowGeometry,
  windowsFit,
} from "./conv_windows.ts";
import src from "../../../kernels/conv.wgsl" with { type: "text" };

/** Workgroup size of the elementwise-style kernels (copy, weight re-layout, windows). */
const WG = 64;
/** Invocations per workgroup of the two GEMM kernels: one 8-wide SIMD row on lavapipe. */
const GEMM_WG = 8;
/** Output channel groups of 4 per invocation (both GEMMs) and input groups (weight gradient). */
const TO = 4;
const TC = 2;
/** The weight gradient splits its reduction until about this many invocations run. */
const WGRAD_TARGET_INVOCATIONS = 2048;

const kernels = {
  copy: defineKernel({
    name: "conv_copy",
    source: src,
    entry: "conv_copy",
    bindings: ["read", "write"],
  }),
  weightPrep: defineKernel({
    name: "conv_wprep",
    source: src,
    entry: "conv_wprep",
    bindings: ["read", "write"],
  }),
  forward: defineKernel({
    name: "conv_fwd",
    source: src,
    entry: "conv_fwd",
    bindings: ["read", "read", "read", "write", "uniform"],
  }),
  weightFlip: defineKernel({
    name: "conv_wflip",
    source: src,
    entry: "conv_wflip",
    bindings: ["read", "write"],
  }),
  weightGrad: defineKernel({
    name: "conv_wgrad",
    source: src,
    entry: "conv_wgrad",
    bindings: ["read", "read", "write"],
  }),
  im2col: defineKernel({
    name: "conv_im2col",
    source: src,
    entry: "conv_im2col",
    bindings: ["read", "write"],
  }),
  weightGradFinish: defineKernel({
    name: "conv_wgrad_finish",
    source: src,
    entry: "conv_wgrad_finish",
    bindings: ["read", "read", "write", "write"],
  }),
  windowSum: defineKernel({
    name: "conv_window_sum",
    source: src,
    entry: "window_sum",
    bindings: ["read", "write"],
  }),
  windowSpread: defineKernel({
    name: "conv_window_spread",
    source: src,
    entry: "window_spread",
    bindings: ["read", "write"],
  }),
  blockSum: defineKernel({
    name: "conv_block_sum",
    source: src,
    entry: "block_sum",
    bindings: ["read", "write"],
  }),
  blockSpread: defineKernel({
    name: "conv_block_spread",
    source: src,
    entry: "block_spread",
    bindings: ["read", "write"],
  }),
};

export interface Padding {
  top: number;
  bottom: number;
  left: number;
  right: number;
}

export interface Conv2dOptions {
  stride?: number;
  /** The same on all four sides, or per side (e.g. {top: 0, bottom: 1, left: 0, right: 1}). */
  padding?: number | Padding;
}

const shapeStr = (t: Tensor) => `[${t.shape.join(",")}]`;

/** Everything the kernels need to know about one convolution. */
interface Geometry {
  n: number;
  c: number;
  h: number;
  w: number;
  o: number;
  kh: number;
  kw: number;
  stride: number;
  pad: Padding;
  hout: number;
  wout: number;
  /** Size of the stride-1 result the strided one is picked from. */
  h1: number;
  w1: number;
  /**
   * The input as seen by the window (im2col only): dilated by this factor, a zero between
   * neighbours (the strided convolution's output gradient in its input gradient); absent: 1.
   */
  dil?: number;
}

function geometry(x: Tensor, w: Tensor, bias: Tensor | null, options: Conv2dOptions): Geometry {
  const what = `x ${shapeStr(x)}, weight ${shapeStr(w)}${bias ? `, bias ${shapeStr(bias)}` : ""}`;
  const fail = (problem: string) => new Error(`peco: conv2d: ${problem} (${what})`);
  for (const t of bias ? [x, w, bias] : [x, w]) {
    if (t.dtype !== "f32") throw fail(`needs f32 tensors, got ${t.describe()}`);
  }
  if (x.rank !== 4) throw fail("x must be [N, C, H, W]");
  if (w.rank !== 4) throw fail("weight must be [O, C, kh, kw]");
  const [n, c, h, wd] = x.shape;
  const [o, wc, kh, kw] = w.shape;
  if (wc !== c) throw fail(`weight has ${wc} input channels, x has ${c}`);
  if (bias && (bias.rank !== 1 || bias.shape[0] !== o)) throw fail(`bias must be [${o}]`);
  const stride = options.stride ?? 1;
  if (!Number.isInteger(stride) || stride < 1) {
    throw fail(`stride ${stride} is not a positive integer`);
  }
  const p = options.padding ?? 0;
  const pad = typeof p === "number" ? { top: p, bottom: p, left: p, right: p } : { ...p };
  for (const [side, v] of Object.entries(pad)) {
    if (!Number.isInteger(v) || v < 0) throw fail(`padding ${side} = ${v} is not an integer ≥ 0`);
  }
  const hout = Math.floor((h + pad.top + pad.bottom - kh) / stride) + 1;
  const wout = Math.floor((wd + pad.left + pad.right - kw) / stride) + 1;
  if (kh < 1 || kw < 1 || hout < 1 || wout < 1 || n < 1 || c < 1 || o < 1) {
    throw fail(`empty output [${n},${o},${hout},${wout}]`);
  }
  const h1 = (hout - 1) * stride + 1;
  const w1 = (wout - 1) * stride + 1;
  return { n, c, h, w: wd, o, kh, kw, stride, pad, hout, wout, h1, w1 };
}

/**
 * Pixel groups of 4 per invocation for rows of `width` outputs: at most 8, as few blocks per row
 * as that allows, split evenly (a 28-wide row is one block of 7 groups, not 8 with one wasted).
 */
function pixelGroups(width: number): number {
  const w4 = Math.ceil(width / 4);
  return Math.ceil(w4 / Math.ceil(w4 / 8));
}

/** Kernel width in chunks of at most 5 taps (see conv.wgsl). */
function taps(kw: number): { kwc: number; nchunk: number } {
  const kwc = kw <= 5 ? kw : 4;
  return { kwc, nchunk: Math.ceil(kw / kwc) };
}

/**
 * Row width (in vec4s) of a padded input that both GEMMs read for `width` stride-1 outputs with a
 * kw-wide kernel: the forward's last pixel block and the weight gradient's last pixel group may
 * run past `width`, and tap shifts read one vec4 more.
 */
function paddedRow4(width: number, kw: number): number {
  const { kwc, nchunk } = taps(kw);
  const tp = pixelGroups(width);
  const extra = kwc > 1 ? 1 : 0;
  return Math.max(Math.ceil(width / (4 * tp)) * tp, Math.ceil(width / 4)) + nchunk - 1 + extra;
}

/**
 * src [N, C, h, w] → [N, C, hp, wp]: out[y, x] = src[(y·step − top) / dil, (x·step − left) / dil]
 * where that is a whole in-range index, else 0. Returns src itself when that is the identity.
 */
function copyPlanes(
  src: Tensor,
  hp: number,
  wp: number,
  { top = 0, left = 0, dil = 1, step = 1 } = {},
): Tensor {
  const [n, c, h, w] = src.shape;
  if (top === 0 && left === 0 && dil === 1 && step === 1 && h === hp && w === wp) return src;
  const out = new Tensor([n, c, hp, wp], "f32");
  gpu().recorder.dispatch(kernels.copy, {
    buffers: [src.binding, out.binding],
    params: [out.size, h, w, hp, wp, top, left, dil, step],
    constants: { WG },
    workgroups: grid1d(out.size, WG),
  });
  return out;
}

/**
 * Bytes of one uniform weight slot: WebGPU's guaranteed maxUniformBufferBindingSize, the size of
 * conv.wgsl's conv_wu (a bound range must cover it) and a multiple of the 256-byte offset alignment.
 */
const UNIFORM_SLOT_BYTES = 65536;
const SLOT_FLOATS = UNIFORM_SLOT_BYTES / 4;

/** Output channel groups of 4 per invocation: fewer for narrow outputs (no work on padding). */
const outputGroups = (cout: number) => Math.min(TO, Math.ceil(cout / 4));

/** The re-laid weight (see conv_wprep) and how the forward kernel reads it. */
interface PreparedWeights {
  wt: Tensor;
  /** Output channel groups of 4 per block (the kernel's TO). */
  to: number;
  blocks: number;
  /** Floats per block. */
  bsize: number;
  /** Blocks per dispatch: per 64 KiB uniform slot, or all of them (storage fallback). */
  perDispatch: number;
  uniform: boolean;
}

/**
 * Weights re-laid as blocks of 4·to output channels [cin, kh, kw rounded to whole chunks, 4·to],
 * packed into 64 KiB slots read as a uniform buffer, or (one block beyond 64 KiB) back to back
 * for the storage-buffer kernel.
 */
function prepWeights(v: WeightView): PreparedWeights {
  const { kwc, nchunk } = taps(v.kw);
  const kwp = kwc * nchunk;
  const to = outputGroups(v.cout);
  const bw = 4 * to;
  const blocks = Math.ceil(v.cout / bw);
  const bsize = v.cin * v.kh * kwp * bw;
  const uniform = bsize <= SLOT_FLOATS;
  let perDispatch = blocks, cstride = bsize;
  if (uniform) {
    // As few slots as will hold the blocks, filled evenly.
    const slots = Math.ceil(blocks / Math.floor(SLOT_FLOATS / bsize));
    perDispatch = Math.ceil(blocks / slots);
    cstride = SLOT_FLOATS;
  }
  // Each uniform binding covers a full slot; the storage fallback binds (unused) the first one.
  const slots = Math.ceil(blocks / perDispatch);
  const wt = new Tensor([Math.max(slots * cstride, SLOT_FLOATS)], "f32");
  const total = blocks * bsize;
  gpu().recorder.dispatch(kernels.weightPrep, {
    buffers: [v.tensor.binding, wt.binding],
    params: [
      total,
      v.cout,
      v.kh,
      v.kw,
      kwp,
      bw,
      v.base,
      v.so,
      v.sc,
      v.sky,
      v.skx,
      bsize,
      uniform ? perDispatch : 1,
      cstride,
    ],
    constants: { WG },
    workgroups: grid1d(total, WG),
  });
  return { wt, to, blocks, bsize, perDispatch, uniform };
}

/** Workgroup counts [x, y, z] for `groups` along x, folded into z above the per-dimension limit. */
function foldGrid(groups: number, y: number): [number, number, number] {
  if (groups <= 65535) return [groups, y, 1];
  const z = Math.ceil(groups / 65535);
  return [Math.ceil(groups / z), y, z];
}

/**
 * The implicit-GEMM kernel at stride 1: src [N, cin, hp, wp] (padded: see paddedRow4) and weight
 * → [N, cout, hp − kh + 1, width] (+ bias).
 */
function implicitGemm(src: Tensor, weight: WeightView, bias: Tensor | null, width: number): Tensor {
  const [n, cin, hp, wp] = src.shape;
  const { cout, kh, kw } = weight;
  const hout = hp - kh + 1;
  const { kwc, nchunk } = taps(kw);
  const tp = pixelGroups(width);
  const nbx = Math.ceil(width / (4 * tp));
  const blocks = n * hout * nbx;
  const p = prepWeights(weight);
  const out = new Tensor([n, cout, hout, width], "f32");
  const constants = { WG: GEMM_WG, TO: p.to, TP: tp, KWC: kwc, UNIFORM_W: p.uniform ? 1 : 0 };
  // Rows of whole vec4s are stored as vec4s (see store_unit).
  const vecOut = width % 4 === 0 ? 1 : 0;
  const wt = p.wt.buffer;
  // One dispatch per uniform slot of channel blocks (one in all for the storage fallback).
  for (let ob0 = 0; ob0 < p.blocks; ob0 += p.perDispatch) {
    const offset = p.uniform ? (ob0 / p.perDispatch) * UNIFORM_SLOT_BYTES : 0;
    const slot = { buffer: wt, offset, size: UNIFORM_SLOT_BYTES };
    gpu().recorder.dispatch(kernels.forward, {
      buffers: [src.binding, wt, (bias ?? p.wt).binding, out.binding, slot],
      params: [
        cin,
        cout,
        hp,
        wp / 4,
        hout,
        width,
        nbx,
        blocks,
        kh,
        p.bsize / 4,
        nchunk,
        bias ? 1 : 0,
        ob0,
      ],
      constants: { ...constants, VEC_OUT: vecOut },
      workgroups: foldGrid(
        Math.ceil(blocks / GEMM_WG),
        Math.min(p.perDispatch, p.blocks - ob0),
      ),
    });
  }
  p.wt.dispose();
  return out;
}

/**
 * A 1×1 stride-1 unpadded convolution is a per-image matmul: each image is viewed as one row of
 * H·W pixels so the pixel blocks run along the whole image.
 */
function isPointwise(g: Geometry): boolean {
  const { pad } = g;
  return g.kh === 1 && g.kw === 1 && g.stride === 1 &&
    pad.top + pad.bottom + pad.left + pad.right === 0;
}

// ---- im2col lowering (software adapters) ---------------------------------------------------------

/**
 * How conv2d runs: "auto" picks per problem (on software adapters window products or im2col +
 * matmul where they are faster, else the implicit GEMM); "im2col" and "direct" force one path,
 * "windows" the window products wherever they fit and im2col elsewhere (tests, benchmarks).
 */
export type ConvLowering = "auto" | "im2col" | "direct" | "windows";
let lowering: ConvLowering = "auto";

/** Sets how conv2d runs (see ConvLowering); returns the previous setting. */
export function setConvLowering(mode: ConvLowering): ConvLowering {
  const previous = lowering;
  lowering = mode;
  return previous;
}

/** Largest im2col matrix (bytes): under the 128 MiB storage binding limit with margin. */
const IM2COL_MAX_BYTES = 96 * 1024 * 1024;
/**
 * Longest matmul reduction allowed: C·kh·kw (forward) and Hout·Wout (weight gradient), well under
 * the loop length at which lavapipe silently stops a loop.
 */
const IM2COL_MAX_K = 16384;
/**
 * Forward size rule (lavapipe on 2 cores, uniform-buffer weights, im2col read from a texture,
 * texture matmul fed by flat buffer → texture copies; CPU ms per forward, batch 8 unless noted): at
 * stride 1 the implicit GEMM wins at a reduction C·kh·kw of 9 (3.1 vs 6.1 ms at 28², O=16) and 72
 * (8.8 vs 9.8, C=8, O=16, 28²) and loses from 144 (28.3 vs 18.1 at C=16, O=32, 28²; 40.5 vs 36.0
 * at N=16, 32², C=O=16; 4.3 vs 2.6 at 288, 7², C=O=32; 420 vs 186 at 576, N=16, 32², C=O=64), so
 * the matmul takes over from 144; it also takes every stride > 1 (the implicit GEMM computes the
 * stride-1 result). Where C is a multiple of 4 the matmul reads the windows in place (window
 * products, forwardByWindows) rather than from cols. The weight gradient takes dYᵀ·cols (after a
 * window forward: a window-rows product) wherever im2col is allowed: the
 * weight-gradient kernel is slower at every size measured, a single output channel included since
 * the bias gradient joined the products' batch sum (N=8, 16 → 1, 28²: conv forward + backward
 * 14–15 against 17.5–19 CPU ms).
 */
const IM2COL_MIN_K = 144;
/**
 * Fewer output channels than this leave the matmul's tiles mostly empty: the forward is slower.
 */
const IM2COL_MIN_O = 8;

/**
 * Whether the im2col matrix of g, the weight gradient's per-image partial products [N, O, K] and
 * both products' reductions fit the limits at all.
 */
function im2colFits(g: Geometry): boolean {
  const rows = g.n * g.hout * g.wout;
  const k = g.c * g.kh * g.kw;
  return rows * k * 4 <= IM2COL_MAX_BYTES && g.n * g.o * k * 4 <= IM2COL_MAX_BYTES &&
    k <= IM2COL_MAX_K && g.hout * g.wout <= IM2COL_MAX_K;
}

/** Whether the im2col path may run at all: forced, or "auto" on a software adapter. */
function im2colAllowed(g: Geometry): boolean {
  if (lowering === "direct") return false;
  if (lowering === "im2col" || lowering === "windows") return im2colFits(g);
  return gpu().info.software && im2colFits(g);
}

/** The weight gradient as dYᵀ·cols (else the weight-gradient kernel). */
const weightGradByIm2col = (g: Geometry) => im2colAllowed(g);

/** Forward (and with it the input gradient) through im2col + matmul: the size rule. */
function forwardByIm2col(g: Geometry): boolean {
  if (!im2colAllowed(g)) return false;
  if (lowering !== "auto") return true;
  if (g.o < IM2COL_MIN_O) return false;
  return g.stride > 1 || g.c * g.kh * g.kw >= IM2COL_MIN_K;
}

/** g as the window products see it (see conv_windows.ts). */
const windowGeometry = (g: Geometry): WindowGeometry => ({
  ...g,
  top: g.pad.top,
  left: g.pad.left,
  dil: g.dil ?? 1,
});

/**
 * Whether the weight gradient of a convolution whose forward ran as window products runs as a
 * window-rows product: where it fits, unless `forceVariant("conv2dWindowsWeightGrad", "im2col")`
 * keeps dYᵀ·cols (tests and benchmarks compare the two).
 */
const weightGradByWindows = (wg: WindowGeometry) =>
  forcedVariant("conv2dWindowsWeightGrad") !== "im2col" && weightGradWindowsFit(wg);

/**
 * The weight gradient (and with `withBias` the bias gradient, or null: the caller sums it) of a
 * convolution whose forward ran as window products: a window-rows product (from the forward's
 * packed input where it was kept) where weightGradByWindows says so, else dYᵀ·cols.
 */
function weightGradAfterWindows(
  x: Tensor,
  grad: Tensor,
  g: Geometry,
  withBias = false,
  packed: Tensor | null = null,
): { dw: Tensor; db: Tensor | null } {
  const wg = windowGeometry(g);
  if (weightGradByWindows(wg)) return weightGradFromWindows(x, grad, wg, withBias, packed);
  const cols = im2col(x, g);
  const result = weightGradIm2col(grad, cols, g, withBias);
  cols.dispose();
  return result;
}

/**
 * Whether the forward of g (or an input gradient's transposed convolution) runs as window products:
 * where im2col + matmul would ("auto"), and where the weight gets a gradient (`weightGrad`) also
 * for the small reductions and channel counts the implicit GEMM would take, or wherever they fit
 * ("windows"); unless `forceVariant("conv2dWindows", "im2col")` keeps the cols (benchmarks compare
 * the two). The implicit GEMM's forward wins alone at C = 1 (MNIST tokenizer's conv_in, batch 8,
 * kernel µs: 2619 against 4079), but its weight gradient and padded copies cost more than the
 * windows' zero-filled texels gain: forward and backward 11419 against 8746; 16 → 1 channels
 * (conv_out) 18516 against 13259. `forceVariant("conv2dWindowsSmall", "off")` keeps the implicit
 * GEMM for those (tests and benchmarks compare).
 */
function forwardByWindows(g: Geometry, weightGrad = false): boolean {
  if (lowering !== "auto" && lowering !== "windows") return false;
  if (forcedVariant("conv2dWindows") === "im2col") return false;
  const small = weightGrad && forcedVariant("conv2dWindowsSmall") !== "off";
  return (lowering === "windows" || forwardByIm2col(g) || small) && windowsFit(windowGeometry(g));
}

/** The parameters, bindings and texel helpers both texture im2col kernels share. */
const IM2COL_TEX_HEADER = /* wgsl */ `
struct Params {
  total: u32, c: u32, h: u32, w: u32, hout: u32, wout: u32, stride: u32, top: u32, left: u32,
}
@group(0) @binding(0) var src: texture_2d<f32>;
@group(0) @binding(1) var<storage, read_write> cols: array<vec4f>;
@group(0) @binding(2) var<uniform> p: Params;

${FLAT_WGSL}`;

/**
 * The vec4 stores of one window: its kh·kw taps of 4 channels (value q = ci·taps + tap, 4 to a
 * vec4) at cols[first + j], from `value(ci, ky, kx)` (a WGSL expression).
 */
function windowStores(
  kh: number,
  kw: number,
  first: string,
  value: (ci: number, ky: number, kx: number) => string,
): string[] {
  const taps = kh * kw;
  const lines: string[] = [];
  for (let j = 0; j < taps; j++) {
    const vals = [0, 1, 2, 3].map((e) => {
      const [ci, tap] = [Math.floor((4 * j + e) / taps), (4 * j + e) % taps];
      return value(ci, Math.floor(tap / kw), tap % kw);
    });
    lines.push(`cols[${first} + ${j}u] = vec4f(${vals.join(", ")});`);
  }
  return lines;
}

/**
 * im2col from a texture, for software adapters: the input is read from a flat texture (see
 * flat.ts). Each invocation writes the 4·kh·kw values of one
 * window for 4 channels, contiguous in cols, as vec4 stores. The kernel is generated per kernel size,
 * unrolled, so that every tap's position is a constant.
 */
function im2colTexSource(kh: number, kw: number, dil: number): string {
  const taps = kh * kw;
  const lines: string[] = [];
  // With dil > 1 the window moves over the dilated input: position i holds x[i / dil] where
  // dil divides i, else 0; iy, ix are then the source row and column.
  const axis = (v: string, k: number, at: string, len: string) =>
    dil === 1
      ? `let i${v}${k} = ${at} + ${k}; let ok${v}${k} = i${v}${k} >= 0 && i${v}${k} < i32(${len});`
      : `let d${v}${k} = ${at} + ${k}; let i${v}${k} = max(d${v}${k}, 0) / ${dil}; ` +
        `let ok${v}${k} = d${v}${k} >= 0 && d${v}${k} % ${dil} == 0 && i${v}${k} < i32(${len});`;
  for (let ky = 0; ky < kh; ky++) lines.push(axis("y", ky, "y0", "p.h"));
  for (let kx = 0; kx < kw; kx++) lines.push(axis("x", kx, "x0", "p.w"));
  lines.push(
    ...windowStores(
      kh,
      kw,
      "first",
      (ci, ky, kx) =>
        `tap(base + ${ci} * plane + iy${ky} * i32(p.w) + ix${kx}, oky${ky} && okx${kx})`,
    ),
  );
  return /* wgsl */ `
// cols[r, k] (see conv_im2col) for ${kh} × ${kw} windows, 4 channels per invocation, from a texture.
${IM2COL_TEX_HEADER}
// x at flat index f, or 0 where ok is false (the padding).
fn tap(f: i32, ok: bool) -> f32 {
  return select(0.0, flat_value(src, u32(max(f, 0))), ok);
}

@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * ${WG}u;
  if (i >= p.total) { return; }
  let groups = p.c / 4u;
  let c0 = (i % groups) * 4u;
  let r = i / groups;
  let ox = r % p.wout;
  let t = r / p.wout;
  let oy = t % p.hout;
  let b = t / p.hout;
  let y0 = i32(oy * p.stride) - i32(p.top);
  let x0 = i32(ox * p.stride) - i32(p.left);
  let plane = i32(p.h * p.w);
  let base = i32(b * p.c + c0) * plane;
  let first = ((r * p.c + c0) / 4u) * ${taps}u;
  ${lines.join("\n  ")}
}
`;
}

/**
 * The row variant of the texture im2col (stride 1, input and output rows whole texels: W and Wout
 * multiples of 4): each invocation writes the windows of 4 consecutive output pixels for 4
 * channels. The input values they read along a row form whole texels (a texel lies entirely inside
 * or outside the row, so the padding is one check per texel), each fetched once and shared by every
 * tap and pixel that reads it, where the per-window kernel fetches a texel per value. `left` (the
 * left padding) fixes which texel and component each tap of each pixel reads: generated per
 * (kh, kw, left).
 */
function im2colTexRowSource(kh: number, kw: number, left: number): string {
  const taps = kh * kw;
  // Pixel j's tap kx reads row element 4·ox4 + d, d = j + kx − left: texel ⌊d / 4⌋, component d mod 4.
  const t0 = Math.floor(-left / 4);
  const t1 = Math.floor((3 + kw - 1 - left) / 4);
  const lines: string[] = [];
  for (let ci = 0; ci < 4; ci++) {
    for (let ky = 0; ky < kh; ky++) {
      lines.push(`let row${ci}_${ky} = (base + ${ci}u * plane) + u32(max(y0 + ${ky}, 0)) * w4;`);
      for (let t = t0; t <= t1; t++) {
        const id = `${ci}_${ky}_${t - t0}`;
        lines.push(
          `let v${id} = select(vec4f(0.0), flat_texel(src, row${ci}_${ky} + u32(max(tx + ${t}, 0))), ` +
            `oky${ky} && tx + ${t} >= 0 && tx + ${t} < i32(w4));`,
        );
      }
    }
  }
  for (let ky = 0; ky < kh; ky++) {
    lines.splice(
      0,
      0,
      `let oky${kh - 1 - ky} = y0 + ${kh - 1 - ky} >= 0 && y0 + ${kh - 1 - ky} < i32(p.h);`,
    );
  }
  const comp = "xyzw";
  for (let j = 0; j < 4; j++) {
    lines.push(...windowStores(kh, kw, `first + ${j * taps}u * groups`, (ci, ky, kx) => {
      const d = j + kx - left;
      const t = Math.floor(d / 4);
      return `v${ci}_${ky}_${t - t0}.${comp[d - 4 * t]}`;
    }));
  }
  return /* wgsl */ `
// cols[r, k] (see conv_im2col) for ${kh} × ${kw} windows at stride 1, left padding ${left}: 4
// channels × 4 consecutive pixels of a row per invocation, from a texture.
${IM2COL_TEX_HEADER}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * ${WG}u;
  if (i >= p.total) { return; }
  let groups = p.c / 4u;
  let c0 = (i % groups) * 4u;
  let q = i / groups;
  let wout4 = p.wout / 4u;
  let ox4 = q % wout4;
  let t = q / wout4;
  let oy = t % p.hout;
  let b = t / p.hout;
  let r = (b * p.hout + oy) * p.wout + ox4 * 4u;
  let y0 = i32(oy) - i32(p.top);
  let w4 = p.w / 4u;
  let tx = i32(ox4);
  // In texels: where channel c0's plane starts, and a plane's length.
  let plane = p.h * w4;
  let base = (b * p.c + c0) * plane;
  // Pixel j's window for the 4 channels: ${taps} vec4s from cols[first + ${taps}·j·groups].
  let first = ((r * p.c + c0) / 4u) * ${taps}u;
  ${lines.join("\n  ")}
}
`;
}

const im2colTexKernels = new Map<string, Kernel>();
function im2colTexKernel(kh: number, kw: number, rowLeft: number | null, dil = 1): Kernel {
  const name = rowLeft === null
    ? `conv_im2col_tex${kh}x${kw}${dil > 1 ? `d${dil}` : ""}`
    : `conv_im2col_texrow${kh}x${kw}l${rowLeft}`;
  let kernel = im2colTexKernels.get(name);
  if (!kernel) {
    kernel = defineKernel({
      name,
      source: rowLeft === null ? im2colTexSource(kh, kw, dil) : im2colTexRowSource(kh, kw, rowLeft),
      bindings: ["texture", "write"],
    });
    im2colTexKernels.set(name, kernel);
  }
  return kernel;
}

/**
 * Whether the texture im2col of g runs as its row variant (im2colTexRowSource): stride 1, whole
 * texels per input and output row, unless `forceVariant("conv2dIm2col", "window")` (tests compare).
 */
function im2colByRows(g: Geometry): boolean {
  return g.stride === 1 && (g.dil ?? 1) === 1 && g.w % 4 === 0 && g.wout % 4 === 0 &&
    forcedVariant("conv2dIm2col") !== "window";
}

/** Whether x [N, C, H, W] takes the texture im2col: 4-channel groups, and a texture that fits. */
function im2colByTexture(g: Geometry): boolean {
  return gpu().info.software && g.c % 4 === 0 && fitsFlat(g.n * g.c * g.h * g.w);
}

/** x [N, C, H, W] → cols [N·Hout·Wout, C·kh·kw] (no autograd). */
function im2col(x: Tensor, g: Geometry): Tensor {
  const rows = g.n * g.hout * g.wout;
  const cols = new Tensor([rows, g.c * g.kh * g.kw], "f32");
  const geometry = [g.c, g.h, g.w];
  const window = [g.hout, g.wout, g.stride, g.pad.top, g.pad.left];
  if (im2colByTexture(g)) {
    const byRows = im2colByRows(g);
    const total = (rows * g.c) / (byRows ? 16 : 4);
    withFlatTexture(
      x,
      "im2col input",
      (view) =>
        gpu().recorder.dispatch(im2colTexKernel(g.kh, g.kw, byRows ? g.pad.left : null, g.dil), {
          buffers: [view, cols.binding],
          params: [total, ...geometry, ...window],
          workgroups: grid1d(total, WG),
        }),
    );
    return cols;
  }
  if ((g.dil ?? 1) > 1) throw new Error("peco: conv2d: a dilated im2col needs the texture kernel");
  gpu().recorder.dispatch(kernels.im2col, {
    buffers: [x.binding, cols.binding],
    params: [rows * g.c, ...geometry, g.kh, g.kw, ...window],
    constants: { WG },
    workgroups: grid1d(rows * g.c, WG),
  });
  return cols;
}

/** Forward through im2col and the (texture-fed on software adapters) matmul, without autograd. */
function forwardIm2col(
  x: Tensor,
  weight: Tensor,
  bias: Tensor | null,
  g: Geometry,
  keepCols: boolean,
): { out: Tensor; cols: Tensor | null } {
  const { n, c, o, kh, kw, hout, wout } = g;
  return noGrad(() => {
    const cols = im2col(x, g);
    const done = (out: Tensor) => {
      if (keepCols) return { out, cols };
      cols.dispose();
      return { out, cols: null };
    };
    // Per image W [O, K] · cols_bᵀ (+ bias per row O): the product comes out in NCHW order.
    const [w2, cols3] = [weight.view([o, c * kh * kw]), cols.view([n, hout * wout, c * kh * kw])];
    const y = bias
      ? matmulRowBias(w2, cols3, bias, { transB: true })
      : matmul(w2, cols3, { transB: true }); // [N, O, P]
    return done(y.view([n, o, hout, wout]));
  });
}

/**
 * Loop iterations one invocation of conv_wgrad_finish may run for a bias sum (lavapipe ends an
 * invocation's loops past a budget; see fused_norm.ts).
 */
const FINISH_MAX_ITERATIONS = 10_000;

/**
 * Whether the bias gradient folds into the weight gradient's batch sum (conv_wgrad_finish): a
 * batch to sum, a bias sum within the loop budget, and not switched off by
 * `forceVariant("conv2dBiasGrad", "separate")` (tests compare the two).
 */
function biasGradInFinish(g: Geometry): boolean {
  return g.n > 1 && g.n * g.hout * g.wout <= FINISH_MAX_ITERATIONS &&
    forcedVariant("conv2dBiasGrad") !== "separate";
}

/**
 * dL/dw = dYᵀ · cols: grad [N, O, Hout, Wout] → [O, C, kh, kw], and with `withBias` dL/db [O] from
 * the same final pass where biasGradInFinish allows (else null: the caller sums it) (no autograd).
 */
function weightGradIm2col(
  grad: Tensor,
  cols: Tensor,
  g: Geometry,
  withBias = false,
): { dw: Tensor; db: Tensor | null } {
  const { n, c, o, kh, kw, hout, wout } = g;
  return noGrad(() => {
    const k = c * kh * kw;
    const pixels = hout * wout;
    if (weightGradStacked(g)) {
      // dY permuted to [O, N·P] · cols [N·P, K]: one product over every image's pixels.
      const dyT = permute(grad.view([n, o, pixels]), [1, 0, 2]).view([o, n * pixels]);
      const dw = matmul(dyT, cols.view([n * pixels, k])).view([o, c, kh, kw]);
      return { dw, db: null };
    }
    // Per image dY_b [O, P] · cols_b [P, K], summed over the batch: each reduction is P long.
    const parts = matmul(grad.view([n, o, pixels]), cols.view([n, pixels, k])); // [N, O, K]
    return batchSumWeightGrad(parts, grad, g, withBias);
  });
}

/**
 * Whether the im2col weight gradient runs as one product over the images' stacked pixels (dY
 * permuted to [O, N·P], one dispatch) rather than per image then summed: on software adapters where
 * P = Hout·Wout is not a multiple of 4 (the per-image products would pack both operands into
 * textures, two dispatches, where the stacked ones copy them) and N·P is (and within the
 * longest reduction allowed); not where
 * `forceVariant("conv2dWeightGrad", "batched")` keeps the per-image products (tests compare).
 */
function weightGradStacked(g: Geometry): boolean {
  const pixels = g.hout * g.wout;
  return gpu().info.software && g.n > 1 && pixels % 4 !== 0 && (g.n * pixels) % 4 === 0 &&
    g.n * pixels <= IM2COL_MAX_K && forcedVariant("conv2dWeightGrad") !== "batched";
}

/**
 * The weight gradient from its per-image parts [N, O, C·kh·kw]: their sum over the batch, with the
 * bias gradient (Σ of grad [N, O, Hout, Wout] over images and pixels) in the same pass where
 * `withBias` and biasGradInFinish allow (else db is null: the caller sums it). Takes over parts.
 */
function batchSumWeightGrad(
  parts: Tensor,
  grad: Tensor,
  g: Geometry,
  withBias: boolean,
): { dw: Tensor; db: Tensor | null } {
  const { n, c, o, kh, kw, hout, wout } = g;
  const k = c * kh * kw;
  const wShape = [o, c, kh, kw];
  if (n === 1) return { dw: parts.view(wShape), db: null };
  if (!withBias || !biasGradInFinish(g)) {
    return { dw: reduceRaw(parts, 0, "sum").view(wShape), db: null };
  }
  const dw = new Tensor(wShape, "f32");
  const db = new Tensor([o], "f32");
  gpu().recorder.dispatch(kernels.weightGradFinish, {
    buffers: [parts.binding, grad.binding, dw.binding, db.binding],
    params: [o * k, n, o, hout * wout],
    constants: { WG },
    workgroups: grid1d(o * k + o, WG),
  });
  parts.dispose();
  return { dw, db };
}

/**
 * Whether a pointwise convolution (see isPointwise) runs as plain matmuls (pointwiseConv): where
 * im2col is allowed (software adapters, or forced), unless
 * `forceVariant("conv2dPointwise", "direct")` keeps it on the implicit GEMM (tests compare the two).
 */
function pointwiseByMatmul(g: Geometry): boolean {
  return isPointwise(g) && im2colAllowed(g) && forcedVariant("conv2dPointwise") !== "direct";
}

/**
 * A pointwise convolution as per-image matmuls on x viewed as [N, C, H·W]: no padded copy, no
 * weight re-layout, no im2col. y_b = W·x_b (+ bias per row), dx_b = Wᵀ·dy_b, dw = Σ_b dy_b·x_bᵀ
 * (the bias gradient in the same batch sum: batchSumWeightGrad).
 */
function pointwiseConv(x: Tensor, weight: Tensor, bias: Tensor | null, g: Geometry): Tensor {
  const { n, c, o, h, w } = g;
  const [x3, w2] = [x.view([n, c, h * w]), weight.view([o, c])];
  const out = noGrad(() => bias ? matmulRowBias(w2, x3, bias) : matmul(w2, x3));
  const inputs = bias ? [x, weight, bias] : [x, weight];
  return recordConv(out.view([n, o, h, w]), inputs, x, weight, g, (grad) =>
    noGrad(() => {
      const g3 = grad.view([n, o, h * w]);
      const withBias = bias?.requiresGrad ?? false;
      const wg = weight.requiresGrad
        ? batchSumWeightGrad(matmul(g3, x3, { transB: true }), g3, g, withBias)
        : null;
      return [
        x.requiresGrad ? matmul(w2, g3, { transA: true }).view(x.shape) : null,
        wg?.dw ?? null,
        wg?.db ?? (withBias ? sumOuterInner(g3, n, o, h * w) : null),
      ];
    }));
}

/**
 * 2-D convolution of x [N, C, H, W] with weight [O, C, kh, kw] (PyTorch layout) plus bias [O]:
 * → [N, O, Hout, Wout] with Hout = ⌊(H + top + bottom − kh) / stride⌋ + 1 (Wout alike).
 * A strided convolution computes the stride-1 result and keeps every stride-th pixel.
 */
export function conv2d(
  x: Tensor,
  weight: Tensor,
  bias: Tensor | null,
  options: Conv2dOptions = {},
): Tensor {
  const g0 = geometry(x, weight, bias, options);
  countFlops(convFlops(g0));
  return uncounted(() => convolve(x, weight, bias, g0));
}

/**
 * The model FLOPs of convolution g (of its forward, and of each of its two gradients):
 * 2·N·O·C·kh·kw·Hout·Wout. Not those of the products that compute it, which may run over padding,
 * the stride's dilation zeros or every stride-1 pixel.
 */
function convFlops(g: Geometry): number {
  return productFlops(g.n, g.o, g.hout * g.wout, g.c * g.kh * g.kw);
}

/**
 * Records a conv2d result with its backward rule, which counts the model FLOPs of the gradients it
 * computes (dx and dw: each the forward's; the bias gradient is a sum) and runs its products
 * uncounted.
 */
function recordConv(
  out: Tensor,
  inputs: Tensor[],
  x: Tensor,
  weight: Tensor,
  g: Geometry,
  rule: (grad: Tensor) => (Tensor | null)[],
): Tensor {
  return record("conv2d", out, inputs, (grad) => {
    countFlops((Number(x.requiresGrad) + Number(weight.requiresGrad)) * convFlops(g));
    return uncounted(() => rule(grad));
  });
}

/** conv2d of geometry g0, its products uncounted (conv2d counts the convolution's). */
function convolve(x: Tensor, weight: Tensor, bias: Tensor | null, g0: Geometry): Tensor {
  const outShape = [g0.n, g0.o, g0.hout, g0.wout];
  const inputs = bias ? [x, weight, bias] : [x, weight];
  const biasGrad = (gs: Tensor) =>
    bias?.requiresGrad ? sumOuterInner(gs, g0.n, g0.o, g0.hout * g0.wout) : null;
  if (pointwiseByMatmul(g0)) return pointwiseConv(x, weight, bias, g0);
  if (forwardByWindows(g0, isGradEnabled() && weight.requiresGrad)) {
    // The packed input is kept (a tensor of the scope) for the weight gradient where that runs as
    // window products too: one pack instead of two (MNIST tokenizer step: CPU −10%, 6 of 6 pairs),
    // unless `forceVariant("conv2dWindowsReuse", "off")` packs it again (tests compare the two).
    const wg = windowGeometry(g0);
    const keepPacked = isGradEnabled() && weight.requiresGrad && weightGradByWindows(wg) &&
      forcedVariant("conv2dWindowsReuse") !== "off";
    const packed = keepPacked ? packWindows(x, wg) : null;
    const out = noGrad(() => convByWindows(x, forwardWeight(weight, g0), bias, wg, packed));
    return recordConv(out, inputs, x, weight, g0, (grad) => {
      const w = weight.requiresGrad
        ? weightGradAfterWindows(x, grad, g0, bias?.requiresGrad, packed)
        : null;
      return [
        x.requiresGrad ? inputGrad(grad, weight, g0).view(x.shape) : null,
        w?.dw ?? null,
        w?.db ?? biasGrad(grad),
      ];
    });
  }
  if (forwardByIm2col(g0)) {
    // The weight gradient dYᵀ·cols reuses the forward's im2col matrix (kept while the graph is).
    const keepCols = isGradEnabled() && weight.requiresGrad;
    const { out, cols } = forwardIm2col(x, weight, bias, g0, keepCols);
    return recordConv(out, inputs, x, weight, g0, (grad) => {
      const gs = grad.view(outShape);
      const w = weight.requiresGrad
        ? weightGradIm2col(gs, cols ?? im2col(x, g0), g0, bias?.requiresGrad)
        : null;
      return [
        x.requiresGrad ? inputGrad(gs, weight, g0).view(x.shape) : null,
        w?.dw ?? null,
        w?.db ?? biasGrad(gs),
      ];
    });
  }
  let g = g0;
  let xs = x;
  if (isPointwise(g)) {
    const pixels = g.h * g.w;
    g = { ...g, h: 1, w: pixels, hout: 1, wout: pixels, h1: 1, w1: pixels };
    xs = x.view([g.n, g.c, 1, pixels]);
  }
  const { n, o, kh, kw, stride, pad, hout, wout, h1, w1 } = g;
  const xPadded = copyPlanes(xs, h1 + kh - 1, 4 * paddedRow4(w1, kw), {
    top: pad.top,
    left: pad.left,
  });
  const full = implicitGemm(xPadded, forwardWeight(weight, g), bias, w1);
  const out = copyPlanes(full, hout, wout, { step: stride }).view(outShape);

  return recordConv(out, inputs, x, weight, g0, (grad) => {
    const gs = grad.view([n, o, hout, wout]);
    let dw: Tensor | null = null;
    let db: Tensor | null = null;
    if (weight.requiresGrad && weightGradByIm2col(g0)) {
      const cols = im2col(x, g0);
      ({ dw, db } = weightGradIm2col(grad.view(outShape), cols, g0, bias?.requiresGrad));
      cols.dispose();
    } else if (weight.requiresGrad) {
      dw = weightGrad(gs, xPadded, g);
    }
    return [
      x.requiresGrad ? inputGrad(gs, weight, g).view(x.shape) : null,
      dw,
      db ?? biasGrad(gs),
    ];
  });
}

/** The weight [O, C, kh, kw] of convolution g as the forward reads it. */
function forwardWeight(weight: Tensor, g: Geometry): WeightView {
  const { o, c, kh, kw } = g;
  return {
    tensor: weight,
    cout: o,
    cin: c,
    kh,
    kw,
    base: 0,
    so: c * kh * kw,
    sc: kh * kw,
    sky: kw,
    skx: 1,
  };
}

/**
 * The weight of convolution g as its input gradient reads it: transposed (O ↔ C) and flipped
 * along both kernel axes.
 */
function flippedWeight(weight: Tensor, g: Geometry): WeightView {
  const { o, c, kh, kw } = g;
  return {
    tensor: weight,
    cout: c,
    cin: o,
    kh,
    kw,
    base: kh * kw - 1,
    so: kh * kw,
    sc: c * kh * kw,
    sky: -kw,
    skx: -1,
  };
}

/**
 * The input gradient of convolution g as a stride-1 convolution of its own: the output gradient
 * [N, O, Hout, Wout], dilated by the stride and padded by k − 1 − pad before (after: what makes the
 * result [N, C, H, W]), with the weight transposed (O ↔ C) and flipped. Null where a side's
 * padding would be negative (the gradient would be cropped, not padded).
 */
function transposedGeometry(g: Geometry): Geometry | null {
  const { kh, kw, pad, stride } = g;
  const [hd, wd] = [(g.hout - 1) * stride + 1, (g.wout - 1) * stride + 1];
  const tpad = {
    top: kh - 1 - pad.top,
    bottom: g.h + kh - 1 - hd - (kh - 1 - pad.top),
    left: kw - 1 - pad.left,
    right: g.w + kw - 1 - wd - (kw - 1 - pad.left),
  };
  if (Object.values(tpad).some((v) => v < 0)) return null;
  const { n, h, w } = g;
  return {
    n,
    c: g.o,
    h: g.hout,
    w: g.wout,
    o: g.c,
    kh,
    kw,
    stride: 1,
    pad: tpad,
    hout: h,
    wout: w,
    h1: h,
    w1: w,
    dil: stride,
  };
}

/**
 * Whether the input gradient runs through im2col + matmul (the forward's size rule applied to the
 * transposed convolution gt; a dilated one only from a texture), unless
 * `forceVariant("conv2dInputGrad", "direct")` keeps it on the implicit GEMM (tests compare the two).
 */
function inputGradByIm2col(gt: Geometry): boolean {
  return forcedVariant("conv2dInputGrad") !== "direct" && forwardByIm2col(gt) &&
    ((gt.dil ?? 1) === 1 || im2colByTexture(gt));
}

/** weight [O, C, kh, kw] → [C, O, kh, kw] flipped along both kernel axes (see conv_wflip). */
function flipWeight(weight: Tensor, g: Geometry): Tensor {
  const out = new Tensor([g.c, g.o, g.kh, g.kw], "f32");
  gpu().recorder.dispatch(kernels.weightFlip, {
    buffers: [weight.binding, out.binding],
    params: [g.c * g.o, g.o, g.c, g.kh * g.kw],
    constants: { WG },
    workgroups: grid1d(g.c * g.o, WG),
  });
  return out;
}

/**
 * dL/dx: through im2col + matmul where inputGradByIm2col says so, else (implicit GEMM) a stride-1
 * convolution of the output gradient, dilated by the stride and padded by k − 1 − pad (cropped
 * where that is negative), with the weight transposed (O ↔ C) and flipped.
 */
function inputGrad(grad: Tensor, weight: Tensor, g: Geometry): Tensor {
  const gt = transposedGeometry(g);
  const direct = forcedVariant("conv2dInputGrad") === "direct";
  if (gt && !direct && forwardByWindows(gt)) {
    // The dilation and padding are the packing's index math, as im2col's below.
    return convByWindows(grad, flippedWeight(weight, g), null, windowGeometry(gt));
  }
  if (gt && inputGradByIm2col(gt)) {
    // The padding is im2col's index math: no padded copy of the gradient is made.
    const flipped = flipWeight(weight, g);
    const { out } = forwardIm2col(grad, flipped, null, gt, false);
    flipped.dispose();
    return out;
  }
  const { h, w, kh, kw, stride, pad } = g;
  const gPadded = copyPlanes(grad, h + kh - 1, 4 * paddedRow4(w, kw), {
    top: kh - 1 - pad.top,
    left: kw - 1 - pad.left,
    dil: stride,
  });
  return implicitGemm(gPadded, flippedWeight(weight, g), null, w);
}

/**
 * dL/dw: Σ over images and pixels of the output gradient (dilated by the stride) times the padded
 * input, split into row chunks whose partial sums a reduction adds.
 */
function weightGrad(grad: Tensor, xPadded: Tensor, g: Geometry): Tensor {
  const { n, c, o, kh, kw, stride, h1, w1 } = g;
  const { kwc, nchunk } = taps(kw);
  const gw4 = Math.ceil(w1 / 4);
  const gDilated = copyPlanes(grad, h1, 4 * gw4, { dil: stride });
  const rows = n * h1;
  const lanes = Math.ceil(c / (4 * TC)) * kh * nchunk;
  const oblocks = Math.ceil(o / (4 * TO));
  const perChunk = Math.ceil(lanes / GEMM_WG) * GEMM_WG * oblocks;
  const chunks = Math.min(rows, Math.max(1, Math.round(WGRAD_TARGET_INVOCATIONS / perChunk)));
  const chunkRows = Math.ceil(rows / chunks);
  const z = Math.ceil(rows / chunkRows);
  const part = new Tensor([z, o, c, kh, kw], "f32");
  const [, , hp, wp] = xPadded.shape;
  gpu().recorder.dispatch(kernels.weightGrad, {
    buffers: [xPadded.binding, gDilated.binding, part.binding],
    params: [c, o, hp, wp / 4, h1, gw4, kh, kw, rows, chunkRows, nchunk],
    constants: { WG: GEMM_WG, TO, TC, KWC: kwc },
    workgroups: [Math.ceil(lanes / GEMM_WG), oblocks, z],
  });
  const wShape = [o, c, kh, kw];
  return z === 1 ? part.view(wShape) : reduceRaw(part, 0, "sum").view(wShape);
}

// ---- pooling and upsampling ---------------------------------------------------------------------

/**
 * The window sum (or its adjoint, the spread) of k×k windows at stride s over planes {h, w} → {ho,
 * wo}: where the windows tile the planes (k = s, h = ho·s, w = wo·s) the block kernels, one
 * invocation per window (`forceVariant("windowOp", "general")` keeps the general ones: tests
 * compare), else one invocation per output.
 */
function windowOp(
  op: "sum" | "spread",
  src: Tensor,
  outShape: number[],
  plane: { h: number; w: number; ho: number; wo: number },
  k: number,
  s: number,
  factor: number,
): Tensor {
  const out = new Tensor(outShape, "f32");
  const tiles = k === s && plane.h === plane.ho * s && plane.w === plane.wo * s &&
    forcedVariant("windowOp") !== "general";
  const windows = op === "sum" ? out.size : src.size;
  const kernel = tiles
    ? (op === "sum" ? kernels.blockSum : kernels.blockSpread)
    : (op === "sum" ? kernels.windowSum : kernels.windowSpread);
  const total = tiles ? windows : out.size;
  gpu().recorder.dispatch(kernel, {
    buffers: [src.binding, out.binding],
    params: [total, plane.h, plane.w, plane.ho, plane.wo, k, s, f32bits(factor)],
    constants: tiles ? { WG, BLOCK: k } : { WG },
    workgroups: grid1d(total, WG),
  });
  return out;
}

function require4d(op: string, x: Tensor): void {
  if (x.rank !== 4) throw new Error(`peco: ${op}: x must be [N, C, H, W], got ${shapeStr(x)}`);
  if (x.dtype !== "f32") throw new Error(`peco: ${op}: needs f32, got ${x.describe()}`);
}

function requirePositiveInt(op: string, name: string, v: number): void {
  if (!Number.isInteger(v) || v < 1) {
    throw new Error(`peco: ${op}: ${name} ${v} is not a positive integer`);
  }
}

/** Mean over kernel×kernel windows at `stride` (no padding; trailing rows/columns that no window
 * covers are dropped, as in PyTorch). */
export function avgPool2d(x: Tensor, kernel: number, stride = kernel): Tensor {
  require4d("avgPool2d", x);
  requirePositiveInt("avgPool2d", "kernel", kernel);
  requirePositiveInt("avgPool2d", "stride", stride);
  const [n, c, h, w] = x.shape;
  const ho = Math.floor((h - kernel) / stride) + 1;
  const wo = Math.floor((w - kernel) / stride) + 1;
  if (ho < 1 || wo < 1) {
    throw new Error(`peco: avgPool2d: kernel ${kernel} is larger than x ${shapeStr(x)}`);
  }
  const plane = { h, w, ho, wo };
  const factor = 1 / (kernel * kernel);
  const out = windowOp("sum", x, [n, c, ho, wo], plane, kernel, stride, factor);
  return record("avgPool2d", out, [x], (g) => [
    windowOp("spread", g, [n, c, h, w], plane, kernel, stride, factor),
  ]);
}

/** Each pixel repeated into a scale×scale block: [N, C, H, W] → [N, C, H·scale, W·scale]. */
export function upsampleNearest2d(x: Tensor, scale: number): Tensor {
  require4d("upsampleNearest2d", x);
  requirePositiveInt("upsampleNearest2d", "scale", scale);
  const [n, c, h, w] = x.shape;
  // The windows of the spread/sum pair are the scale×scale blocks of the upsampled image.
  const plane = { h: h * scale, w: w * scale, ho: h, wo: w };
  const outShape = [n, c, h * scale, w * scale];
  const out = windowOp("spread", x, outShape, plane, scale, scale, 1);
  return record("upsampleNearest2d", out, [x], (g) => [
    windowOp("sum", g, [n, c, h, w], plane, scale, scale, 1),
  ]);
}
