// Convolution as window products, for software adapters: the input is packed once into a texture
// (4 channels a texel, zero-padded, dilated where the input gradient needs it) and the product
// reads every window from it in place (matmulWindowsInto), where the im2col lowering would first
// write the windows out as a cols matrix kh·kw times the input's size and then read it back. See
// docs/architecture.md ("Convolution on lavapipe").

import { gpu } from "../../gpu/device.ts";
import { defineKernel } from "../../gpu/pipelines.ts";
import { grid1d } from "../../gpu/recorder.ts";
import { Tensor } from "../tensor.ts";
import { FLAT_TEXELS, flatRows } from "./flat.ts";
import {
  type FlatMatrix,
  matmulWindowRowsInto,
  matmulWindowsInto,
  windowRowsVariant,
  type WindowShape,
  windowVariant,
} from "./matmul.ts";
import type { PooledTexture } from "../../gpu/pool.ts";
import src from "../../../kernels/conv_windows.wgsl" with { type: "text" };

const WG = 64;
/** Workgroups along one dimension of a dispatch (WebGPU's limit). */
const MAX_WORKGROUPS = 65535;

const kernels = {
  pack: defineKernel({
    name: "conv_pack_windows",
    source: src,
    entry: "conv_pack_windows",
    bindings: ["read", "write"],
  }),
  weightTaps: defineKernel({
    name: "conv_weight_taps",
    source: src,
    entry: "conv_weight_taps",
    bindings: ["read", "storage-texture"],
  }),
};

/** How a weight is read: w(o, c, ky, kx) = w[base + o·so + c·sc + ky·sky + kx·skx]. */
export interface WeightView {
  tensor: Tensor;
  cout: number;
  cin: number;
  kh: number;
  kw: number;
  base: number;
  so: number;
  sc: number;
  sky: number;
  skx: number;
}

/**
 * A stride-s convolution of src [N, C, H, W] as the windows see it: the input padded by top and
 * left (and as far right and down as the windows reach), dilated by `dil` (a zero between
 * neighbours: the input gradient of a strided convolution), and the output's extent.
 */
export interface WindowGeometry {
  n: number;
  c: number;
  h: number;
  w: number;
  o: number;
  kh: number;
  kw: number;
  stride: number;
  top: number;
  left: number;
  dil: number;
  hout: number;
  wout: number;
}

/** The packed image's shape: rows per image and texels per row hold every window. */
function windowShape(g: WindowGeometry): WindowShape & { texelsPerRow: number } {
  const rows = (g.hout - 1) * g.stride + g.kh;
  const c4 = Math.ceil(g.c / 4);
  return {
    batch: g.n,
    c4,
    channels: g.c,
    rows,
    kh: g.kh,
    kw: g.kw,
    stride: g.stride,
    hout: g.hout,
    wout: g.wout,
    texelsPerRow: ((g.wout - 1) * g.stride + g.kw) * c4,
  };
}

/**
 * Whether g can run as a window product on this adapter: a packed image within the texture limits
 * and a product shape that the matmul runs with a texture variant (channels in texels of 4, the
 * last one zero-filled past C).
 */
export function windowsFit(g: WindowGeometry): boolean {
  const s = windowShape(g);
  const max = gpu().limits.maxTextureDimension2D ?? 8192;
  // The pack runs an image's texels along x of one grid row: at most MAX_WORKGROUPS of them.
  const packGroups = Math.ceil((s.texelsPerRow * s.rows) / WG);
  return s.texelsPerRow <= max && s.batch * s.rows <= max && s.batch <= 65535 &&
    packGroups <= MAX_WORKGROUPS &&
    windowVariant(g.o, s) !== null;
}

/**
 * weight → [cout, kh·kw, cin rounded up to 4] (the window order of matmulWindowsInto; zeros past
 * cin) in a pooled flat texture, written by the kernel itself; release it to the pool.
 */
function weightTaps(v: WeightView): FlatMatrix {
  const cols = v.kh * v.kw * 4 * Math.ceil(v.cin / 4);
  const texels = (v.cout * cols) / 4;
  const texture = gpu().pool.acquireTexture(FLAT_TEXELS, flatRows(4 * texels), "conv weight taps");
  gpu().recorder.dispatch(kernels.weightTaps, {
    buffers: [v.tensor.binding, texture.view],
    params: [texels, v.base, v.so, v.sc, v.sky, v.skx, v.cin],
    constants: { WG, FLAT_TEXELS, C4: Math.ceil(v.cin / 4), KH: v.kh, KW: v.kw },
    workgroups: grid1d(texels, WG),
  });
  return { texture, rows: v.cout, cols, source: v.tensor };
}

/** Texels between the rows of a packed image kept in a buffer: rows of 256 bytes' multiples. */
const rowPitch = (g: WindowGeometry) => Math.ceil(windowShape(g).texelsPerRow / 16) * 16;

/**
 * src packed for the windows of g (see PackedWindows) into a tensor, rows rowPitch texels apart:
 * textureOf copies it into the texture a product reads.
 */
export function packWindows(src: Tensor, g: WindowGeometry): Tensor {
  const shape = windowShape(g);
  const pitch = rowPitch(g);
  const out = new Tensor([g.n * shape.rows * pitch * 4], "f32");
  const wp = shape.texelsPerRow / shape.c4;
  const perImage = shape.texelsPerRow * shape.rows;
  const rows = Math.min(g.n, MAX_WORKGROUPS);
  gpu().recorder.dispatch(kernels.pack, {
    buffers: [src.binding, out.binding],
    params: [g.n, g.h, g.w, shape.rows, wp, g.top, g.left, pitch, g.c],
    constants: { WG, C4: shape.c4, DIL: g.dil },
    workgroups: [Math.ceil(perImage / WG), rows, Math.ceil(g.n / rows)],
  });
  return out;
}

/** A packed image (packWindows) copied into a pooled texture; release it to the pool. */
function textureOf(packed: Tensor, g: WindowGeometry): PooledTexture {
  const shape = windowShape(g);
  const rows = g.n * shape.rows;
  const texture = gpu().pool.acquireTexture(shape.texelsPerRow, rows, "conv windows");
  const bytesPerRow = rowPitch(g) * 16;
  gpu().recorder.copyToTexture(
    packed.gpuBuffer,
    packed.byteOffset,
    bytesPerRow,
    texture.texture,
    shape.texelsPerRow,
    rows,
  );
  return texture;
}

/** use(src packed for g): `packed` where given, else src packed for this call only. */
function withPacked<R>(
  src: Tensor,
  g: WindowGeometry,
  packed: Tensor | null,
  use: (p: Tensor) => R,
): R {
  if (packed) return use(packed);
  const own = packWindows(src, g);
  try {
    return use(own);
  } finally {
    own.dispose();
  }
}

/**
 * The convolution g of src [N, C, H, W] with the weight seen through `weight` (+ bias per output
 * channel) → [N, O, Hout, Wout], without storing its windows (no autograd; windowsFit(g) must hold).
 * `packed`: src already packed by packWindows (kept for the weight gradient).
 */
export function convByWindows(
  src: Tensor,
  weight: WeightView,
  bias: Tensor | null,
  g: WindowGeometry,
  packed: Tensor | null = null,
): Tensor {
  const texture = withPacked(src, g, packed, (p) => textureOf(p, g));
  const w = weightTaps(weight);
  try {
    const out = new Tensor([g.n, g.o, g.hout, g.wout], "f32");
    matmulWindowsInto(w, { ...windowShape(g), view: texture.view }, bias, out);
    return out;
  } finally {
    gpu().pool.releaseTexture(texture);
    gpu().pool.releaseTexture(w.texture);
  }
}

/** Whether the weight gradient of g can run as a window-rows product (see windowsFit). */
export function weightGradWindowsFit(g: WindowGeometry): boolean {
  return windowsFit(g) && windowRowsVariant(g.o, windowShape(g)) !== null;
}

/**
 * The weight gradient of convolution g (stride-s, undilated) from its input x [N, C, H, W] and
 * output gradient grad [N, O, Hout, Wout]: dw [O, C, kh, kw] = Σ over images and pixels of grad
 * times the windows, read from x packed (no cols stored), and with `withBias` db [O] = Σ grad from
 * the same pass. No autograd; weightGradWindowsFit(g) must hold. `packed`: x already packed by
 * packWindows (by the forward).
 */
export function weightGradFromWindows(
  x: Tensor,
  grad: Tensor,
  g: WindowGeometry,
  withBias: boolean,
  packed: Tensor | null = null,
): { dw: Tensor; db: Tensor | null } {
  const texture = withPacked(x, g, packed, (p) => textureOf(p, g));
  const dw = new Tensor([g.o, g.c, g.kh, g.kw], "f32");
  const db = withBias ? new Tensor([g.o], "f32") : null;
  try {
    const img = { ...windowShape(g), view: texture.view };
    matmulWindowRowsInto(grad.view([g.n, g.o, g.hout * g.wout]), img, dw, db);
  } finally {
    gpu().pool.releaseTexture(texture);
  }
  return { dw, db };
}
