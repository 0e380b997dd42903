// Batched matrix multiply and the linear layer, with their backward rules. Transposed operands are
// read in place by the kernel (override constants), so neither forward nor backward copies a
// transpose. The kernel variant (register blocks of several sizes, or shared-memory tiles) comes
// from the autotuner: a tuned winner when `tuneMatmul` ran for the shape class, else a default.
//
// Texture variants (`tex24x24`, `tex16x16`, `tex8x8`, for software adapters): storage-buffer loads are the
// bottleneck on lavapipe (~25-30 cycles per lane and float) while a textureLoad of an rgba32float
// texel costs ~10 cycles for 4 floats. So the op first puts op(A) and op(B) into rgba32float
// textures, then a kernel with a TM × TN block of C per invocation reads them without bounds checks
// and writes C with bounds-checked stores. An operand gets into its texture one of two ways:
// - copied: where its contiguous dim is a multiple of 4 (and so is K), its matrices are copied as
//   they are stored, as flat rows of 1024 floats (texel t = x[4t .. 4t+3] at (t mod 256, ⌊t/256⌋))
//   — a memcpy, many times cheaper than a packing kernel, which pays a storage load per float. The
//   kernel addresses texels by index; transposed storage stays transposed and the kernel
//   assembles its vec4s from the other axis, which costs nothing on a SIMD-of-lanes CPU driver (a
//   vec4 is four separate registers there).
// - packed: otherwise a kernel packs it zero-padded (A: texel (k/4, z·Mp + m) holds
//   op(A)[z, m, k..k+3]; B: texel (n/4, z·Kp + k) holds op(B)[z, k, n..n+3]).
// The textures come from the pool and go back to it at the end of the call. Shapes whose textures
// would exceed maxTextureDimension2D run the best buffer variant instead.

import { gpu } from "../../gpu/device.ts";
import { MAX_LOOP } from "./reduce.ts";
import { defineKernel, type Kernel } from "../../gpu/pipelines.ts";
import type { PooledTexture } from "../../gpu/pool.ts";
import { acquireFlat, copyFlat, fitsFlat, FLAT_TEXELS, FLAT_WGSL, flatRows } from "./flat.ts";
import {
  chooseVariant,
  forcedVariant,
  tune,
  type TuneResult,
  type Variant,
} from "../../gpu/autotune.ts";
import { copyValues, record, type Shape, Tensor } from "../tensor.ts";
import { reduceRaw } from "./reduce.ts";
import { fillInPlace, zeros } from "./creation.ts";
import { elementwiseKernels, GELU_WGSL, WG } from "./kernels.ts";
import { grid1d } from "../../gpu/recorder.ts";
import { countFlops, productFlops } from "./flops.ts";
import source from "../../../kernels/matmul.wgsl" with { type: "text" };

const BINDINGS: ("read" | "write")[] = ["read", "read", "read", "read", "read", "write"];

const kernels = {
  reg: defineKernel({ name: "matmul_reg", source, entry: "matmul_reg", bindings: BINDINGS }),
  tiled: defineKernel({ name: "matmul_tiled", source, entry: "matmul_tiled", bindings: BINDINGS }),
};

/**
 * Register variant: each invocation holds a tm × tn block of C; tiled: 64 × 64 shared tiles; tex:
 * operands packed into textures, tm × tn of C per invocation.
 */
export type MatmulConfig =
  | { kind: "reg"; tm: number; tn: number }
  | { kind: "tiled" }
  | { kind: "tex"; tm: number; tn: number };

// ---- texture-fed variants -------------------------------------------------------------------

/**
 * Packs op(X)[z, r, c] (at z·zs + r·rs + c·cs) into texels (c/4, (z - z0)·rowsPad + r), zero-padded,
 * reading X from its buffer or (`flat`) from a flat texture copy of it (see flat.ts): on lavapipe
 * four texel fetches cost less than half of four storage loads.
 */
function packSource(flat: boolean): string {
  const read = (i: string) => flat ? `flat_value(xt, ${i})` : `x[${i}]`;
  return /* wgsl */ `
${flat ? FLAT_WGSL : ""}
struct Params { rows: u32, cols: u32, rs: u32, cs: u32, zs: u32, z0: u32, rowsPad: u32, width: u32, height: u32 }
${
    flat
      ? "@group(0) @binding(0) var xt: texture_2d<f32>;"
      : "@group(0) @binding(0) var<storage, read> x: array<f32>;"
  }
@group(0) @binding(1) var dst: texture_storage_2d<rgba32float, write>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(8, 8)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  if (gid.x >= p.width || gid.y >= p.height) { return; }
  let zl = gid.y / p.rowsPad;
  let r = gid.y - zl * p.rowsPad;
  var v = vec4f(0.0);
  if (r < p.rows) {
    let c = gid.x * 4u;
    let base = (p.z0 + zl) * p.zs + r * p.rs + c * p.cs;
    if (c < p.cols) { v.x = ${read("base")}; }
    if (c + 1u < p.cols) { v.y = ${read("base + p.cs")}; }
    if (c + 2u < p.cols) { v.z = ${read("base + 2u * p.cs")}; }
    if (c + 3u < p.cols) { v.w = ${read("base + 3u * p.cs")}; }
  }
  textureStore(dst, vec2i(i32(gid.x), i32(gid.y)), v);
}
`;
}

/** Invocations per texture-variant workgroup: 8 × 8. */
const TEX_WG = 8;

/**
 * How an operand reaches the kernel: "pack" (a packed texture, 2-D coordinates), "flat" (copied
 * flat, texel index; A stored [M, K] or B stored [K, N]), "flatT" (copied flat from transposed
 * storage: A stored [K, M], B stored [N, K]), "window" (B only: the windows of a packed image
 * batch, read in place: see `matmulWindowsInto`), "windowStacked" (the same, the images' windows
 * one run of columns: see `windowsStacked`), "windowRows" (B only: the same windows as the
 * rows of a reduction over the images' pixels: see `matmulWindowRowsInto`).
 */
type TexFill = "pack" | "flat" | "flatT" | "window" | "windowStacked" | "windowRows";

/**
 * What a matmul's store may apply to each value o of C (+ bias) at flat index i, with an auxiliary
 * tensor of C's shape: "gelu" stores gelu(o) and keeps o in aux (the pre-activation, for
 * backward); "geluGrad" stores o · gelu'(aux[i]) (the gradient through a GELU whose input was aux).
 */
export type EpilogueKind = "gelu" | "geluGrad";
export interface Epilogue {
  kind: EpilogueKind;
  aux: Tensor;
}
const EPILOGUE_BINDING: Record<EpilogueKind, "read" | "write"> = {
  gelu: "write",
  geluGrad: "read",
};

/**
 * WGSL of a tex kernel's epilogue pass (and the aux binding): `epilogue_block(z, m0, n0, rows,
 * cols)` rewrites the block of C the invocation has just stored. A loop over the stored values
 * rather than the epilogue inlined into each of the tm·tn unrolled stores: 256 inlined erf/exp
 * chains (16 × 16) took LLVM ~20 s per kernel on lavapipe, the loop one load of C more per value.
 */
function epilogueSource(epi: EpilogueKind | null): string {
  if (!epi) return "";
  const access = epi === "gelu" ? "read_write" : "read";
  const body = epi === "gelu"
    ? "let o = c[i];\n      aux[i] = o;\n      c[i] = gelu_f(o);"
    : "c[i] = c[i] * gelu_df(aux[i]);";
  return `${GELU_WGSL}
@group(0) @binding(4) var<storage, ${access}> aux: array<f32>;
fn epilogue_block(z: u32, m0: u32, n0: u32, rows: u32, cols: u32) {
  for (var r = 0u; r < rows; r++) {
    let row = (z * p.M + m0 + r) * p.N + n0;
    for (var q = 0u; q < cols; q++) {
      let i = row + q;
      ${body}
    }
  }
}`;
}

/**
 * The texture matmul kernel for a tm × tn block per invocation (both multiples of 4), generated
 * unrolled: accumulators must stay in SSA registers on lavapipe (see kernels/matmul.wgsl). `a`, `b`:
 * how each operand's texture is laid out (see TexFill); for flat ones aRows / bRows are texels per
 * matrix and aPitch / bPitch texels per stored row. `laneM`: invocations along x (the CPU driver's
 * SIMD lanes) take consecutive row blocks rather than column blocks (see `lanesAlongM`).
 * `sumA`: the invocations of the first column block also sum the rows of op(A) they read anyway,
 * sums[z·M + m] = Σ_k op(A)[z, m, k] (with A = dCᵀ, a linear layer's bias gradient beside its
 * weight gradient; no epilogue then). One scalar per row: vec4 sums (4 registers a row) spilled
 * the 16 × 16 kernels on lavapipe and cost more than a separate reduction.
 */
function texSource(
  tm: number,
  tn: number,
  a: TexFill,
  b: TexFill,
  laneM: boolean,
  epi: EpilogueKind | null,
  sumA = false,
  vecOut = false,
): string {
  const tn4 = tn / 4;
  /** B read as windows in place, per image or stacked. */
  const windows = b === "window" || b === "windowStacked";
  const decl: string[] = [];
  const pre: string[] = [];
  const body: string[] = [];
  const store: string[] = [];
  for (let r = 0; r < tm; r++) {
    for (let c = 0; c < tn4; c++) decl.push(`var acc${r}_${c} = vec4f(0.0);`);
    if (sumA) decl.push(`var sa${r} = 0.0;`);
  }
  const at = (x: string, y: string) => `textureLoad(ta, vec2i(i32(${x}), i32(${y})), 0)`;
  const bt = (x: string, y: string) => `textureLoad(tb, vec2i(i32(${x}), i32(${y})), 0)`;
  // b${j}_${c}: op(B)[k + j, n0 + 4c .. n0 + 4c + 3].
  if (b === "flatT") {
    for (let n = 0; n < tn; n++) pre.push(`let bn${n} = zb + (n4 * 4u + ${n}u) * p.bPitch;`);
    for (let n = 0; n < tn; n++) body.push(`let bt${n} = flat_texel(tb, bn${n} + k4);`);
    assembleColumns(body, tn4);
  } else if (windows) {
    // Column n is output pixel q of image z: its window's top-left texel, then per step tap
    // (dx, dy) and channel group cg (see WINDOW_LOOP). Stacked, column f is pixel q of image
    // f / pixels (one division per column, before the loop).
    for (let n = 0; n < tn; n++) {
      const col = `min(n4 * 4u + ${n}u, p.N - 1u)`;
      const image = b === "window" ? [`let q${n} = ${col};`, `let zr${n} = zb;`] : [
        `let f${n} = ${col};`,
        `let zs${n} = f${n} / p.pixels;`,
        `let q${n} = f${n} - zs${n} * p.pixels;`,
        `let zr${n} = zs${n} * p.bRows;`,
      ];
      pre.push(
        ...image,
        `let bx${n} = i32((q${n} % p.wout) * p.stride * p.c4);`,
        `let by${n} = i32(zr${n} + (q${n} / p.wout) * p.stride);`,
      );
    }
    for (let n = 0; n < tn; n++) {
      body.push(`let bt${n} = textureLoad(tb, vec2i(bx${n} + dx, by${n} + dy), 0);`);
    }
    assembleColumns(body, tn4);
  } else if (b === "windowRows") {
    // Column group n4 + c is texel (dx, dy) of every window (see WINDOW_LOOP); row k is pixel k of
    // the stacked images, walked as (x, y) from (qx, qy) with no division.
    for (let c = 0; c < tn4; c++) {
      pre.push(
        `let g${c} = min(n4 + ${c}u, p.N / 4u - 1u);`,
        `let dy${c} = i32(g${c} / (p.kw * p.c4));`,
        `let dx${c} = i32(g${c} % (p.kw * p.c4));`,
      );
    }
    body.push("var x = qx;", "var y = qy;");
    for (let j = 0; j < 4; j++) {
      body.push(`let bx${j} = i32(x * p.stride * p.c4);`, `let by${j} = i32(zbi + y * p.stride);`);
      for (let c = 0; c < tn4; c++) {
        body.push(`let b${j}_${c} = textureLoad(tb, vec2i(bx${j} + dx${c}, by${j} + dy${c}), 0);`);
      }
      body.push("x++;", "if (x == p.wout) { x = 0u; y++; }");
    }
    body.push("qx = x;", "qy = y;");
  } else if (b === "flat") {
    body.push("let bk = zb + n4 + k4 * 4u * p.bPitch;");
    for (let j = 0; j < 4; j++) {
      for (let c = 0; c < tn4; c++) {
        body.push(`let b${j}_${c} = flat_texel(tb, bk + ${j}u * p.bPitch + ${c}u);`);
      }
    }
  } else {
    for (let j = 0; j < 4; j++) {
      for (let c = 0; c < tn4; c++) {
        body.push(`let b${j}_${c} = ${bt(`n4 + ${c}u`, `zb + k4 * 4u + ${j}u`)};`);
      }
    }
  }
  // av: op(A)[m0 + r, k .. k + 3].
  if (a === "flatT") {
    body.push("let ak = za + m0 / 4u + k4 * 4u * p.aPitch;");
    for (let j = 0; j < 4; j++) {
      for (let q = 0; q < tm / 4; q++) {
        body.push(`let at${j}_${q} = flat_texel(ta, ak + ${j}u * p.aPitch + ${q}u);`);
      }
    }
  } else if (a === "flat") {
    for (let r = 0; r < tm; r++) pre.push(`let ar${r} = za + (m0 + ${r}u) * p.aPitch;`);
  }
  for (let r = 0; r < tm; r++) {
    const av = a === "flatT"
      ? `vec4f(${[0, 1, 2, 3].map((j) => `at${j}_${r >> 2}[${r & 3}]`).join(", ")})`
      : a === "flat"
      ? `flat_texel(ta, ${b === "windowRows" ? "zai + " : ""}ar${r} + k4)`
      : at("k4", `${b === "windowRows" ? "zai" : "za"} + m0 + ${r}u`);
    body.push(`{ let av = ${av};`);
    if (sumA) body.push(`sa${r} += (av.x + av.y) + (av.z + av.w);`);
    for (let j = 0; j < 4; j++) {
      for (let c = 0; c < tn4; c++) {
        body.push(`acc${r}_${c} = fma(vec4f(av[${j}]), b${j}_${c}, acc${r}_${c});`);
      }
    }
    body.push("}");
  }
  // Each bias value loaded once per invocation, not once per store (576 gathers at 24 × 24 made
  // LLVM's compile on lavapipe several times longer).
  for (let c = 0; c < tn4; c++) store.push(`let bc${c} = bias_cols((n4 + ${c}u) * 4u);`);
  for (let r = 0; r < tm; r++) store.push(`let br${r} = bias_row(m0 + ${r}u);`);
  for (let r = 0; r < tm; r++) {
    for (let c = 0; c < tn4; c++) {
      const cols = [0, 1, 2, 3].map((j) => 4 * c + j);
      store.push(
        b === "windowStacked" && vecOut
          // P % 4 = 0: the 4 columns are pixels q .. q + 3 of one image.
          ? `store_stacked(m0 + ${r}u, (n4 + ${c}u) * 4u, acc${r}_${c}, br${r}, ` +
            `zs${cols[0]}, q${cols[0]});`
          : b === "windowStacked"
          ? `store_stacked(m0 + ${r}u, (n4 + ${c}u) * 4u, acc${r}_${c}, br${r}, ` +
            `vec4u(${cols.map((n) => `zs${n}`).join(", ")}), ` +
            `vec4u(${cols.map((n) => `q${n}`).join(", ")}));`
          : b === "windowRows"
          ? `store_weight(z, m0 + ${r}u, n4 + ${c}u, acc${r}_${c});`
          : `store4(z, m0 + ${r}u, (n4 + ${c}u) * 4u, acc${r}_${c}, bc${c}, br${r});`,
      );
    }
  }
  if (epi) {
    store.push(
      `epilogue_block(z, m0, n4 * 4u, min(${tm}u, p.M - m0), min(${tn}u, p.N - n4 * 4u));`,
    );
  }
  if (sumA) {
    store.push("if (n4 == 0u) {");
    for (let r = 0; r < tm; r++) {
      store.push(
        `  if (m0 + ${r}u < p.M) { sums[z * p.M + m0 + ${r}u] = sa${r}; }`,
      );
    }
    store.push("}");
  }
  return /* wgsl */ `
// C[z0 + z] = op(A)·op(B) (+ bias) from textures, ${tm} × ${tn} of C per invocation.
override BIAS: bool = false;
override BIAS_ROW: bool = false;
struct Params {
  M: u32, N: u32, K4: u32, aRows: u32, bRows: u32, z0: u32, aPitch: u32, bPitch: u32,${
    windows || b === "windowRows"
      ? "\n  c4: u32, kw: u32, kh: u32, wout: u32, stride: u32, images: u32, pixels: u32,"
      : ""
  }${b === "windowRows" ? "\n  tilesN: u32, perSlice: u32, slices: u32, channels: u32," : ""}
}
@group(0) @binding(0) var ta: texture_2d<f32>;
@group(0) @binding(1) var tb: texture_2d<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<${vecOut ? "vec4f" : "f32"}>;
${sumA ? "@group(0) @binding(4) var<storage, read_write> sums: array<f32>;" : ""}
@group(0) @binding(${epi || sumA ? 5 : 4}) var<uniform> p: Params;

${FLAT_WGSL}
${epilogueSource(epi)}
// bias[n .. n + 3] (per column of C) and bias[m] (per row), indices clamped: values past N or M
// are never stored.
fn bias_cols(n: u32) -> vec4f {
  if (!BIAS) { return vec4f(0.0); }
  let last = p.N - 1u;
  return vec4f(bias[min(n, last)], bias[min(n + 1u, last)], bias[min(n + 2u, last)], bias[min(n + 3u, last)]);
}
fn bias_row(m: u32) -> f32 {
  if (!BIAS_ROW) { return 0.0; }
  return bias[min(m, p.M - 1u)];
}
fn store4(z: u32, m: u32, n: u32, v: vec4f, bc: vec4f, br: f32) {
  if (m >= p.M || n >= p.N) { return; }
  var o = v;
  if (BIAS_ROW) { o += vec4f(br); }
  if (BIAS) { o += bc; }
  let i = (z * p.M + m) * p.N + n;
  ${
    vecOut ? "c[i / 4u] = o;" : `c[i] = o.x;
  if (n + 1u < p.N) { c[i + 1u] = o.y; }
  if (n + 2u < p.N) { c[i + 2u] = o.z; }
  if (n + 3u < p.N) { c[i + 3u] = o.w; }`
  }
}
${b === "windowStacked" ? (vecOut ? STACKED_STORE_VEC4 : STACKED_STORE) : ""}
${b === "windowRows" ? WEIGHT_STORE : ""}

@compute @workgroup_size(${TEX_WG}, ${TEX_WG})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  ${
    b === "windowRows"
      // One run of invocations along the lanes: slice z's column blocks after slice z − 1's.
      ? `let gn = gid.${laneM ? "y" : "x"};
  let z = gn / p.tilesN;
  let n4 = (gn - z * p.tilesN) * ${tn4}u;`
      : `let n4 = gid.${laneM ? "y" : "x"} * ${tn4}u;`
  }
  let m0 = gid.${laneM ? "x" : "y"} * ${tm}u;
  if (m0 >= p.M || n4 * 4u >= p.N${b === "windowRows" ? " || z >= p.slices" : ""}) { return; }
  ${b === "windowRows" ? "" : "let z = p.z0 + gid.z;"}
  // Where this matrix starts in A's and B's texture (a row, or a texel index when flat).
  let za = gid.z * p.aRows;
  let zb = gid.z * p.bRows;
  ${[...pre, ...decl].join("\n  ")}
  ${
    windows
      ? WINDOW_LOOP
      : b === "windowRows"
      ? WINDOW_ROWS_LOOP
      : "for (var k4 = 0u; k4 < p.K4; k4++) {"
  }
    ${body.join("\n    ")}
  ${windows ? "k4++;\n  }}" : b === "windowRows" ? "}}" : "}"}
  ${store.join("\n  ")}
}
`;
}

/**
 * The store of a stacked window kernel: values n .. n + 3 of row m (+ the row's bias) go to
 * out [images, M, pixels] at image zs, pixel qs of each column (N = images · pixels).
 */
const STACKED_STORE = /* wgsl */ `
fn store_stacked(m: u32, n: u32, v: vec4f, br: f32, zs: vec4u, qs: vec4u) {
  if (m >= p.M || n >= p.N) { return; }
  var o = v;
  if (BIAS_ROW) { o += vec4f(br); }
  c[(zs.x * p.M + m) * p.pixels + qs.x] = o.x;
  if (n + 1u < p.N) { c[(zs.y * p.M + m) * p.pixels + qs.y] = o.y; }
  if (n + 2u < p.N) { c[(zs.z * p.M + m) * p.pixels + qs.z] = o.z; }
  if (n + 3u < p.N) { c[(zs.w * p.M + m) * p.pixels + qs.w] = o.w; }
}`;

/**
 * The store of a window-rows kernel: column group g (4 channels 4·cg .. 4·cg + 3 of tap t, g =
 * t·c4 + cg) of row m goes to the weight's layout [M, C, kh·kw] (the channels past C, zeros of the
 * last texel, are not stored), so that no permute follows the product.
 */
const WEIGHT_STORE = /* wgsl */ `
fn store_weight(z: u32, m: u32, g: u32, v: vec4f) {
  if (m >= p.M || g * 4u >= p.N) { return; }
  let taps = p.kh * p.kw;
  let t = g / p.c4;
  let c0 = (g - t * p.c4) * 4u;
  let i = (z * p.M + m) * p.channels * taps + c0 * taps + t;
  c[i] = v.x;
  if (c0 + 1u < p.channels) { c[i + taps] = v.y; }
  if (c0 + 2u < p.channels) { c[i + 2u * taps] = v.z; }
  if (c0 + 3u < p.channels) { c[i + 3u * taps] = v.w; }
}`;

/**
 * The store of a stacked window kernel whose images' pixel count P is a multiple of 4 (vec4 stores):
 * values n .. n + 3 of row m, pixels q .. q + 3 of image zs, as one vec4.
 */
const STACKED_STORE_VEC4 = /* wgsl */ `
fn store_stacked(m: u32, n: u32, v: vec4f, br: f32, zs: u32, q: u32) {
  if (m >= p.M || n >= p.N) { return; }
  var o = v;
  if (BIAS_ROW) { o += vec4f(br); }
  c[((zs * p.M + m) * p.pixels + q) / 4u] = o;
}`;

/**
 * b${j}_${c} = vec4f of the j-th component of texels bt${4c} .. bt${4c + 3}: B's columns were read
 * one texel per column, along k (flatT, window).
 */
function assembleColumns(body: string[], tn4: number): void {
  for (let j = 0; j < 4; j++) {
    for (let c = 0; c < tn4; c++) {
      const parts = [0, 1, 2, 3].map((i) => `bt${4 * c + i}[${j}]`).join(", ");
      body.push(`let b${j}_${c} = vec4f(${parts});`);
    }
  }
}

/**
 * The reduction loop of a window kernel: k runs over the window's rows ky and, within a row, over
 * its kw·c4 texels: tap kx's channel group cg lies at x offset kx·c4 + cg of the packed row, so a
 * window row is one run of consecutive texels and the loop needs no division (k4 = ky·kw·c4 + dx,
 * the order of the re-laid weight in conv_windows.ts).
 */
const WINDOW_LOOP = /* wgsl */ `let row4 = p.kw * p.c4;
  var k4 = 0u;
  for (var dy = 0; dy < i32(p.kh); dy++) {
    for (var dx = 0; dx < i32(row4); dx++) {`;

/**
 * The reduction loop of a window-rows kernel: over the images, then over each image's pixels 4 at
 * a time (k4 < K4 = ⌈P / 4⌉; A's packed rows are zero past P), (qx, qy) the first pixel's.
 */
const WINDOW_ROWS_LOOP = /* wgsl */ `let zend = min(p.images, (z + 1u) * p.perSlice);
  for (var zi = z * p.perSlice; zi < zend; zi++) {
    let zai = zi * p.aRows;
    let zbi = zi * p.bRows;
    var qx = 0u;
    var qy = 0u;
    for (var k4 = 0u; k4 < p.K4; k4++) {`;

const TEX_BINDINGS: ("texture" | "read" | "write")[] = ["texture", "texture", "read", "write"];
const texKernels = new Map<string, Kernel>();
function texKernel(
  tm: number,
  tn: number,
  a: TexFill,
  b: TexFill,
  laneM: boolean,
  epi: EpilogueKind | null,
  sumA = false,
  vecOut = false,
): Kernel {
  if (epi && sumA) throw new Error("peco: matmul: row sums of A take no epilogue");
  if (epi && vecOut) throw new Error("peco: matmul: vec4 stores take no epilogue");
  const suffix = (x: string, fill: TexFill) => fill === "pack" ? "" : `_${x}${fill.toLowerCase()}`;
  const name = `matmul_tex${tm}x${tn}${suffix("a", a)}${suffix("b", b)}${laneM ? "_m" : ""}` +
    (epi ? `_${epi}` : "") + (sumA ? "_sumA" : "") + (vecOut ? "_v4" : "");
  let kernel = texKernels.get(name);
  if (!kernel) {
    const source = texSource(tm, tn, a, b, laneM, epi, sumA, vecOut);
    const bindings = epi
      ? [...TEX_BINDINGS, EPILOGUE_BINDING[epi]]
      : sumA
      ? [...TEX_BINDINGS, "write" as const]
      : TEX_BINDINGS;
    kernel = defineKernel({ name, source, bindings });
    texKernels.set(name, kernel);
  }
  return kernel;
}
const packKernels = {
  buffer: defineKernel({
    name: "matmul_pack",
    source: packSource(false),
    bindings: ["read", "storage-texture"],
  }),
  flat: defineKernel({
    name: "matmul_pack_flat",
    source: packSource(true),
    bindings: ["texture", "storage-texture"],
  }),
};

const roundUp = (x: number, m: number) => Math.ceil(x / m) * m;

/** Share of the SIMD lanes doing work when `blocks` blocks run along x, 8 lanes to a row. */
const laneUse = (blocks: number) => blocks / roundUp(blocks, TEX_WG);

/**
 * Texture kernels run row blocks along x (the SIMD lanes) when that keeps more lanes busy: with
 * few column blocks (N = 16 at an 8-wide block fills 2 of 8 lanes) rows fill them instead.
 */
function lanesAlongM(M: number, N: number, tm: number, tn: number): boolean {
  return laneUse(Math.ceil(M / tm)) > laneUse(Math.ceil(N / tn));
}

const reg = (tm: number, tn: number): Variant<MatmulConfig> => ({
  name: `reg${tm}x${tn}`,
  config: { kind: "reg", tm, tn },
});

/** Every variant; `forceVariant("matmul", name)` selects one by name. */
export const MATMUL_VARIANTS: readonly Variant<MatmulConfig>[] = [
  reg(4, 4),
  reg(8, 8),
  reg(16, 16),
  reg(32, 32),
  reg(32, 16),
  reg(16, 32),
  { name: "tiled64", config: { kind: "tiled" } },
  { name: "tex8x8", config: { kind: "tex", tm: 8, tn: 8 } },
  { name: "tex16x16", config: { kind: "tex", tm: 16, tn: 16 } },
  // Fewer texel loads per FMA again; past ~24 × 24 the accumulators spill (see `texFmaCost`).
  { name: "tex24x24", config: { kind: "tex", tm: 24, tn: 24 } },
];
const byName = (name: string) => MATMUL_VARIANTS.find((v) => v.name === name)!;

/** Invocations per workgroup of the register variant (8 × 8: one SIMD row of lavapipe per y). */
const REG_WG = 8;
const TILE = 64;
const MAX_GROUPS = 65535;

/** One batched product C[z] = op(A[z]) · op(B[z]) (+ bias), as the kernel sees it. */
interface Problem {
  M: number;
  N: number;
  K: number;
  batch: number;
  transA: boolean;
  transB: boolean;
  /** Elements between the batch's matrices; 0 for an operand shared by the batch. */
  strideA: number;
  strideB: number;
}

function vecFlags(p: Problem): { vecA: boolean; vecB: boolean } {
  // vec4 loads run along an operand's contiguous dim, which must then be a multiple of 4.
  return { vecA: p.transA && p.M % 4 === 0, vecB: !p.transB && p.N % 4 === 0 };
}

/** Shape class for tuning: trans/vec layout, batched or not, and sizes rounded to powers of 2. */
function shapeClass(p: Problem): string {
  const { vecA, vecB } = vecFlags(p);
  const log = (x: number) => Math.round(Math.log2(Math.max(1, x)));
  const flags = [p.transA, p.transB, vecA, vecB].map(Number).join("");
  return `${flags}|m${log(p.M)}n${log(p.N)}k${log(p.K)}|b${p.batch > 1 ? 1 : 0}`;
}

/**
 * Cost of one FMA of a SIMD row (8 lanes at once) in storage-load units, by the size of a lane's
 * block of C: cheap while the block fits the CPU's registers, several times dearer once it spills
 * (fitted on lavapipe to batched [50, 50]·[50, 16] products: 8 × 8 blocks ~0.075, 16 × 16 ~0.24,
 * 32 × 16 and larger ~0.35).
 */
const fmaCost = (area: number) => area <= 64 ? 0.075 : area <= 256 ? 0.24 : 0.35;

/** Cost-model units of a register variant (see `rankedRegVariants`). */
function regCost(p: Problem, v: Variant<MatmulConfig>, cores: number): number {
  if (v.config.kind !== "reg") return Infinity;
  const { vecA, vecB } = vecFlags(p);
  const { tm, tn } = v.config;
  const lanes = p.batch * Math.ceil(p.M / tm) * Math.ceil(p.N / tn);
  const groups = p.batch * Math.ceil(p.M / (tm * REG_WG)) * Math.ceil(p.N / (tn * REG_WG));
  const perLane = p.K * (tm * (vecA ? 0.8 : 1) + tn * (vecB ? 0.8 : 1)) + tm * tn;
  // Lanes along x (column blocks) share a SIMD row: a partly used row costs a full row's FMAs.
  const simdRows = p.batch * Math.ceil(p.M / tm) * Math.ceil(Math.ceil(p.N / tn) / REG_WG);
  const fmas = simdRows * p.K * tm * tn * fmaCost(tm * tn);
  return (lanes * perLane + fmas) / Math.min(groups, cores);
}

/**
 * Register variants from most to least promising on a software adapter (lavapipe), by a cost model
 * of what bounds them there: storage loads and stores, each a per-lane loop costing about the same,
 * i.e. lanes·(K·(tm + tn) + tm·tn) with vec4 loads at 0.8 per value, plus the FMAs of each SIMD
 * row (see `fmaCost`), spread over min(workgroups, cores) threads. Blocks within 5% of the best rank smallest first (faster to
 * compile).
 */
function rankedRegVariants(p: Problem): Variant<MatmulConfig>[] {
  const cores = Math.max(1, navigator.hardwareConcurrency || 1);
  const scored: { v: Variant<MatmulConfig>; cost: number; area: number }[] = [];
  for (const v of MATMUL_VARIANTS) {
    if (v.config.kind !== "reg") continue;
    const { tm, tn } = v.config;
    scored.push({ v, cost: regCost(p, v, cores), area: tm * tn });
  }
  scored.sort((x, y) => x.cost - y.cost);
  const near = scored.filter((s) => s.cost <= scored[0].cost * 1.05).sort((x, y) =>
    x.area - y.area
  );
  const rest = scored.filter((s) => s.cost > scored[0].cost * 1.05);
  return [...near, ...rest].map((s) => s.v);
}

/** How one operand reaches its texture (see the texture variants' note at the top). */
interface OperandTexture {
  fill: TexFill;
  /** Texels per texture row. */
  width: number;
  /** Texture rows one matrix of the batch takes (flat: floats / 1024, rounded up). */
  height: (matrices: number) => number;
  /** The kernel's aRows / bRows: texture rows per matrix (packed) or texels per matrix (flat). */
  rows: number;
  /** The kernel's aPitch / bPitch: texels per stored row (flat only). */
  pitch: number;
  /** The stored matrix's [rows, cols] (cols contiguous). */
  stored: [number, number];
  /**
   * Flat only: texels after the copied matrix that must read as zeros (the stored rows K .. Kp - 1
   * of a single matrix whose K is not a multiple of 4), written by `zeroFlatTail`.
   */
  tail: number;
}

/** Texture sizes and batch chunking of a tex variant, or null where the textures would not fit. */
interface TexLayout {
  Mp: number;
  Np: number;
  Kp: number;
  a: OperandTexture;
  b: OperandTexture;
  /** Batch entries per chunk (textures filled + one multiply). */
  zc: number;
}

/**
 * One operand's texture: copied flat where its contiguous dim (and K) is a multiple of 4, else
 * packed as `packed` [texels per row, rows per matrix]. `transposed`: A stored [K, M] or B [N, K].
 * A single matrix (`single`: not batched, or shared by the batch) whose K is not a multiple of 4 is
 * copied too where K runs along its stored rows (A stored [K, M], B [K, N]): the kernel then reads
 * the stored rows up to K rounded up to 4, and the texels after the copy are zeroed
 * (`zeroFlatTail`) — a weight gradient over B·T = 394 rows copies its operands instead of packing.
 */
function operandTexture(
  stored: [number, number],
  K: number,
  transposed: boolean,
  packed: [number, number],
  single: boolean,
): OperandTexture {
  const floats = stored[0] * stored[1];
  if (stored[1] % 4 === 0 && (K % 4 === 0 || single)) {
    // K % 4 != 0 here means K is the stored rows (the contiguous dim is a multiple of 4).
    const tail = ((roundUp(K, 4) - K) * stored[1]) / 4;
    return {
      fill: transposed ? "flatT" : "flat",
      width: FLAT_TEXELS,
      height: (n) => flatRows(n * floats + tail * 4),
      rows: floats / 4,
      pitch: stored[1] / 4,
      stored,
      tail,
    };
  }
  const [width, rows] = packed;
  return { fill: "pack", width, height: (n) => n * rows, rows, pitch: 0, stored, tail: 0 };
}

const zeroTailKernel = defineKernel({
  name: "matmul_zero_tail",
  source: /* wgsl */ `
struct Params { first: u32, count: u32 }
@group(0) @binding(0) var dst: texture_storage_2d<rgba32float, write>;
@group(0) @binding(1) var<uniform> p: Params;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  if (gid.x >= p.count) { return; }
  let t = p.first + gid.x;
  textureStore(dst, vec2i(i32(t % ${FLAT_TEXELS}u), i32(t / ${FLAT_TEXELS}u)), vec4f(0.0));
}
`,
  bindings: ["storage-texture"],
});

/** Zeroes an operand's flat tail (see `operandTexture`): the texels after its copied matrix. */
function zeroFlatTail(t: OperandTexture, texture: GPUTextureView): void {
  if (!t.tail) return;
  gpu().recorder.dispatch(zeroTailKernel, {
    buffers: [texture],
    params: [t.rows, t.tail],
    workgroups: [Math.ceil(t.tail / 64)],
  });
}

function texLayout(p: Problem, tm: number, tn: number): TexLayout | null {
  if (p.K === 0) return null;
  const max = gpu().limits.maxTextureDimension2D ?? 8192;
  const [Mp, Np, Kp] = [roundUp(p.M, tm), roundUp(p.N, tn), roundUp(p.K, 4)];
  // A is stored [M, K] ([K, M] with transA), B [K, N] ([N, K] with transB); packed, their textures
  // hold op(A) [Mp, Kp] and op(B) [Kp, Np].
  const single = (stride: number) => stride === 0 || p.batch === 1;
  const a = operandTexture(
    p.transA ? [p.K, p.M] : [p.M, p.K],
    p.K,
    p.transA,
    [Kp / 4, Mp],
    single(p.strideA),
  );
  const b = operandTexture(
    p.transB ? [p.N, p.K] : [p.K, p.N],
    p.K,
    p.transB,
    [Np / 4, Kp],
    single(p.strideB),
  );
  if (a.width > max || b.width > max || a.height(1) > max || b.height(1) > max) return null;
  // Matrices per chunk: as many as the texture's rows hold.
  const fit = (t: OperandTexture, stride: number) => {
    if (!stride) return Infinity;
    let n = Math.max(1, Math.floor(max / t.height(1)));
    while (n > 1 && t.height(n) > max) n--;
    return n;
  };
  const zc = Math.min(p.batch, fit(a, p.strideA), fit(b, p.strideB), MAX_GROUPS);
  return { Mp, Np, Kp, a, b, zc };
}

/**
 * Cost of one FMA of a tex kernel's lane, in storage-load units, by the area of its block of C:
 * the accumulators stay cheap up to 24 × 24 and cost about twice as much beyond (fitted on lavapipe,
 * Mesa 22.3, to the ViT-B projection shapes by CPU time: 8 × 8 ~18, 16 × 16 ~29, 24 × 16 ~33,
 * 20 × 24 ~37, 24 × 24 ~39, 32 × 16 ~36, 32 × 32 ~35 GFLOP/s).
 */
const texFmaCost = (area: number) => area <= 576 ? 0.0033 : 0.0066;
/** Cost of one texel load of a tex kernel's lane (with the fit of `texFmaCost`). */
const TEX_TEXEL_COST = 0.355;

/**
 * Cost of a tex variant on a software adapter, in the units of `rankedRegVariants` (one storage
 * load): the multiply (per lane and 4 k: tm + tn texel loads and 4·tm·tn FMAs, see `texFmaCost`;
 * scalar stores 1 each), plus filling the textures (packing: 4 loads and a store per texel, spread
 * over the cores; a copy: ~0.5 per texel on one thread) and a fixed cost per extra dispatch or copy.
 * Calibrated on lavapipe against reg32x32 at 1024³ (~3.5× fewer units for tex16x16).
 */
function texCost(p: Problem, tm: number, tn: number, cores: number): number | null {
  const L = texLayout(p, tm, tn);
  if (!L) return null;
  // Lanes run in SIMD rows of 8 along x: a partly used row costs as much as a full one.
  const [mBlocks, nBlocks] = [Math.ceil(p.M / tm), Math.ceil(p.N / tn)];
  const lanes = p.batch *
    (lanesAlongM(p.M, p.N, tm, tn)
      ? roundUp(mBlocks, TEX_WG) * nBlocks
      : mBlocks * roundUp(nBlocks, TEX_WG));
  const groups = p.batch * Math.ceil(p.M / (tm * TEX_WG)) * Math.ceil(p.N / (tn * TEX_WG));
  const perK4 = (tm + tn) * TEX_TEXEL_COST + 4 * tm * tn * texFmaCost(tm * tn);
  const perLane = (L.Kp / 4) * perK4 + tm * tn;
  const chunks = Math.ceil(p.batch / L.zc);
  let fill = 0;
  for (const [t, stride] of [[L.a, p.strideA], [L.b, p.strideB]] as const) {
    const texels = t.height(stride ? p.batch : 1) * t.width;
    fill += t.fill === "pack"
      ? (texels * 4.5) / Math.min(Math.ceil(texels / 64), cores)
      : texels * 0.5;
  }
  return (lanes * perLane) / Math.min(groups, cores) + fill + chunks * 2 * TEX_DISPATCH_COST;
}
/** Fixed cost of one extra dispatch on lavapipe, in storage loads (~50 µs). */
const TEX_DISPATCH_COST = 4000;

/**
 * rankedVariants by problem: a training step asks for the same few dozen problems every step, and
 * ranking one (the cost model over every variant) cost ~3 ms of host time per MNIST tokenizer step.
 */
const rankedByProblem = new Map<string, Variant<MatmulConfig>[]>();

/** Register variants, then texture variants where they fit, ranked by the software cost model. */
function rankedVariants(p: Problem): Variant<MatmulConfig>[] {
  const key = `${p.M},${p.N},${p.K},${p.batch},${+p.transA},${+p.transB},${p.strideA},${p.strideB}`;
  let ranked = rankedByProblem.get(key);
  if (!ranked) {
    ranked = rankProblem(p);
    if (rankedByProblem.size >= 4096) rankedByProblem.clear(); // shapes that vary without end
    rankedByProblem.set(key, ranked);
  }
  return ranked;
}

function rankProblem(p: Problem): Variant<MatmulConfig>[] {
  const cores = Math.max(1, navigator.hardwareConcurrency || 1);
  const regs = rankedRegVariants(p);
  const scored = regs.map((v, i) => ({ v, cost: regCost(p, v, cores), i }));
  for (const v of MATMUL_VARIANTS) {
    if (v.config.kind !== "tex") continue;
    const cost = texCost(p, v.config.tm, v.config.tn, cores);
    if (cost !== null) scored.push({ v, cost, i: scored.length });
  }
  // Texture variants go first only when clearly cheaper (their packing is a fixed overhead the
  // model knows roughly); ties keep the register order.
  const bestReg = scored[0].cost;
  const tex = scored.filter((s) => s.v.config.kind === "tex" && s.cost < bestReg * 0.8)
    .sort((x, y) => x.cost - y.cost);
  const rest = scored.filter((s) => !tex.includes(s)).sort((x, y) =>
    x.v.config.kind === y.v.config.kind ? x.i - y.i : x.cost - y.cost
  );
  return [...tex, ...rest].map((s) => s.v);
}

/**
 * Default variant without tuning. Software adapters: the best variant of the cost model (texture
 * variants for large shapes, register blocks for small ones). GPUs: 64 × 64 shared-memory tiles
 * once C fills a few tiles, else small register blocks.
 */
function defaultVariant(p: Problem): Variant<MatmulConfig> {
  if (!gpu().info.software) return bufferDefault(p);
  return rankedVariants(p)[0];
}

/** The default among buffer variants (where a texture variant cannot run the shape). */
function bufferDefault(p: Problem): Variant<MatmulConfig> {
  if (!gpu().info.software) {
    return p.M * p.N * p.batch >= 4 * TILE * TILE ? byName("tiled64") : byName("reg4x4");
  }
  return rankedRegVariants(p)[0];
}

function variantFor(p: Problem): Variant<MatmulConfig> {
  return chooseVariant("matmul", shapeClass(p), MATMUL_VARIANTS, defaultVariant(p));
}

/** A bias added to every column of C (one value per n) or, with `perRow`, to every row (per m). */
interface Bias {
  tensor: Tensor;
  perRow: boolean;
}

/** The kernels' override constants for a bias. */
const biasConstants = (bias: Bias | null) => ({
  BIAS: Number(bias !== null && !bias.perRow),
  BIAS_ROW: Number(bias?.perRow ?? false),
});

/**
 * Records one problem's product into `out` (no autograd) and counts its model FLOPs, 2·M·N·K per
 * matrix of the batch (flops.ts): every matmul of the ops goes through here once.
 */
function launch(...args: Parameters<typeof launchKernels>): void {
  const p = args[4];
  countFlops(productFlops(p.batch, p.M, p.N, p.K));
  launchKernels(...args);
}

/**
 * Records the kernel launch(es) of one problem into `out` (no autograd, not counted). An epilogue
 * runs in the texture kernels' store; the buffer kernels apply it with one elementwise dispatch
 * after.
 */
function launchKernels(
  a: Tensor,
  b: Tensor,
  bias: Bias | null,
  out: Tensor,
  p: Problem,
  variant = variantFor(p),
  epilogue: Epilogue | null = null,
  sums: Tensor | null = null,
): void {
  if (out.size === 0) return;
  if (variant.config.kind === "tex") {
    const { tm, tn } = variant.config;
    const layout = texLayout(p, tm, tn);
    if (layout) return launchTex(a, b, bias, out, p, tm, tn, layout, epilogue, sums);
    variant = bufferDefault(p);
  }
  if (sums) {
    // Buffer kernels do not sum: op(A)'s rows in a reduction of their own.
    launchKernels(a, b, bias, out, p, variant, epilogue);
    rowSumsInto(a, p, sums);
    return;
  }
  if (epilogue) {
    // The product into aux (gelu: the pre-activation it keeps) or a temporary, then the map.
    const product = epilogue.kind === "gelu" ? epilogue.aux : new Tensor(out.shape, "f32");
    launchKernels(a, b, bias, product, p, variant);
    const gelu = { n: out.size, params: [out.size, 0, 0, 0], constants: { OP: 7 } };
    gpu().recorder.dispatch(
      epilogue.kind === "gelu" ? elementwiseKernels.unary : elementwiseKernels.unaryGrad,
      {
        buffers: epilogue.kind === "gelu"
          ? [product.binding, out.binding]
          : [epilogue.aux.binding, epilogue.aux.binding, product.binding, out.binding],
        params: gelu.params,
        constants: gelu.constants,
        workgroups: grid1d(gelu.n, WG),
      },
    );
    if (product !== epilogue.aux) product.dispose();
    return;
  }
  // lavapipe ends every loop after 65535 iterations per invocation, silently: the buffer kernels
  // loop once per k, so a longer K would give wrong sums. Refuse it rather than compute garbage.
  if (gpu().info.software && p.K > MAX_LOOP) {
    throw new Error(
      `peco: matmul: K = ${p.K} exceeds ${MAX_LOOP}, the longest reduction a software adapter ` +
        `runs in one kernel loop (${p.M}×${p.K}·${p.K}×${p.N})`,
    );
  }
  const { vecA, vecB } = vecFlags(p);
  const cfg = variant.config;
  const constants: Record<string, number> = {
    TRANS_A: Number(p.transA),
    TRANS_B: Number(p.transB),
    ...biasConstants(bias),
  };
  let gx: number, gy: number;
  if (cfg.kind === "tiled") {
    gx = Math.ceil(p.N / TILE);
    gy = Math.ceil(p.M / TILE);
  } else if (cfg.kind === "reg") {
    Object.assign(constants, {
      TM: cfg.tm,
      TN4: cfg.tn / 4,
      VEC_A: Number(vecA),
      VEC_B: Number(vecB),
    });
    gx = Math.ceil(p.N / (cfg.tn * REG_WG));
    gy = Math.ceil(p.M / (cfg.tm * REG_WG));
  } else {
    throw new Error(`peco: matmul: no buffer kernel for variant ${variant.name}`);
  }
  if (gx > MAX_GROUPS || gy > MAX_GROUPS) {
    throw new Error(`peco: matmul: ${p.M}×${p.N} output is too large for one dispatch`);
  }
  const buffers = [
    a.binding,
    a.binding,
    b.binding,
    b.binding,
    (bias?.tensor ?? b).binding,
    out.binding,
  ];
  for (let z0 = 0; z0 < p.batch; z0 += MAX_GROUPS) {
    const gz = Math.min(MAX_GROUPS, p.batch - z0);
    gpu().recorder.dispatch(cfg.kind === "tiled" ? kernels.tiled : kernels.reg, {
      buffers,
      params: [p.M, p.N, p.K, p.strideA, p.strideB, z0],
      constants,
      workgroups: [gx, gy, gz],
    });
  }
}

/**
 * Floats from which `pack` reads its input from a flat texture copy rather than its buffer. Below
 * it the copy (~75 µs on lavapipe whatever its size) costs more than the texel fetches save: on the
 * MNIST tokenizer step (packs of up to 200 K floats) the packs from the buffer ran as fast or faster
 * (e.g. 941–1115 against 1171–1233 µs at 200 K) and the step took 4% less wall time (6 alternated
 * pairs). Large operands (ViT-B's) keep the copy.
 */
const PACK_FLAT_MIN_FLOATS = 1 << 18;

/**
 * A flat copy of x for `pack` to read (once for all of a product's chunks) where one fits on a
 * software adapter and x is large (PACK_FLAT_MIN_FLOATS), else null (pack reads the buffer); release
 * it to the pool. `forceVariant("matmulPack", "flat" | "buffer")` picks one (tests compare).
 */
function flatForPack(x: Tensor): PooledTexture | null {
  const forced = forcedVariant("matmulPack");
  const large = forced === "flat" || (forced !== "buffer" && x.size >= PACK_FLAT_MIN_FLOATS);
  return large && gpu().info.software && fitsFlat(x.size)
    ? acquireFlat(x, "matmul pack input")
    : null;
}

/**
 * Texture variant: fills pooled textures with op(A) and op(B) (copies or packs), chunk by chunk of
 * the batch, and multiplies each chunk with one dispatch. The textures go back to the pool at the
 * end of the call: work recorded later that reuses them is ordered after this op's by the recorder.
 */
function launchTex(
  a: Tensor,
  b: Tensor,
  bias: Bias | null,
  out: Tensor,
  p: Problem,
  tm: number,
  tn: number,
  L: TexLayout,
  epilogue: Epilogue | null,
  sums: Tensor | null = null,
): void {
  const { pool, recorder } = gpu();
  const height = (t: OperandTexture, stride: number) => t.height(stride ? L.zc : 1);
  const texA = pool.acquireTexture(L.a.width, height(L.a, p.strideA), "matmul A texture");
  const texB = pool.acquireTexture(L.b.width, height(L.b, p.strideB), "matmul B texture");
  const packFrom = (x: Tensor, t: OperandTexture) => t.fill === "pack" ? flatForPack(x) : null;
  const [flatA, flatB] = [packFrom(a, L.a), packFrom(b, L.b)];
  try {
    const laneM = lanesAlongM(p.M, p.N, tm, tn);
    const kernel = texKernel(
      tm,
      tn,
      L.a.fill,
      L.b.fill,
      laneM,
      epilogue?.kind ?? null,
      !!sums,
      vecStores(p, epilogue),
    );
    const [gm, gn] = [Math.ceil(L.Mp / (tm * TEX_WG)), Math.ceil(L.Np / (tn * TEX_WG))];
    for (let z0 = 0; z0 < p.batch; z0 += L.zc) {
      const n = Math.min(L.zc, p.batch - z0);
      // op(A)[m, k] at m·K + k (k·M + m transposed); op(B)[k, n] at k·N + n (n·K + k transposed).
      if (p.strideA || z0 === 0) {
        if (L.a.fill !== "pack") {
          copyFlat(a, p.strideA * z0, L.a.rows * 4 * (p.strideA ? n : 1), texA);
          zeroFlatTail(L.a, texA.view);
        } else pack(a, flatA, texA.view, p.M, p.K, p.transA, p.strideA, z0, n, L.Mp, L.Kp);
      }
      if (p.strideB || z0 === 0) {
        if (L.b.fill !== "pack") {
          copyFlat(b, p.strideB * z0, L.b.rows * 4 * (p.strideB ? n : 1), texB);
          zeroFlatTail(L.b, texB.view);
        } else pack(b, flatB, texB.view, p.K, p.N, p.transB, p.strideB, z0, n, L.Kp, L.Np);
      }
      recorder.dispatch(kernel, {
        buffers: [
          texA.view,
          texB.view,
          (bias?.tensor ?? b).binding,
          out.binding,
          ...(epilogue ? [epilogue.aux.binding] : []),
          ...(sums ? [sums.binding] : []),
        ],
        params: [
          p.M,
          p.N,
          L.Kp / 4,
          p.strideA ? L.a.rows : 0,
          p.strideB ? L.b.rows : 0,
          z0,
          L.a.pitch,
          L.b.pitch,
        ],
        constants: biasConstants(bias),
        workgroups: laneM ? [gm, gn, n] : [gn, gm, n],
      });
    }
  } finally {
    for (const t of [texA, texB, flatA, flatB]) if (t) pool.releaseTexture(t);
  }
}

/**
 * A batch of images packed for window products (conv.ts): texel (x·c4 + cg, z·rows + y) of `view`
 * holds channels 4·cg .. 4·cg + 3 of pixel (y, x) of image z, zero-padded as the convolution needs,
 * so that window (oy, ox) of image z covers pixels (oy·stride + ky, ox·stride + kx).
 */
export interface PackedWindows extends WindowShape {
  view: GPUTextureView;
}

/** A packed image batch's shape (see PackedWindows). */
export interface WindowShape {
  batch: number;
  /** Channel groups of 4 per pixel (the last one zero-filled past `channels`). */
  c4: number;
  /** The image's channels C (c4 = ⌈C / 4⌉). */
  channels: number;
  /** Texture rows per image. */
  rows: number;
  kh: number;
  kw: number;
  stride: number;
  hout: number;
  wout: number;
}

/** Pixels P per image and values K per window of a packed image batch. */
const windowDims = (img: WindowShape) => [img.hout * img.wout, img.kh * img.kw * 4 * img.c4];

/** The window kernels' params after the common eight (see texSource's Params). */
const windowParams = (img: WindowShape) => [
  img.c4,
  img.kw,
  img.kh,
  img.wout,
  img.stride,
  img.batch,
  windowDims(img)[0],
];

/**
 * Whether a window product runs its images' windows as one run of batch·P columns rather than a
 * grid per image: wherever there are images to stack. A grid per image leaves lanes idle in its
 * last column blocks (7 × 7: 49 columns in blocks of 16; 14 × 14: 196 in 13 blocks, rounded up to
 * 16 lanes) and stores scalars where P is not a multiple of 4; stacked, every block but the last is
 * full, and where P is a multiple of 4 the stores stay vec4s (stackedVecStores). MNIST tokenizer,
 * per dispatch: 7 × 7 2331 → 1487 µs, 28 × 28 (M 16) 3887 → 3269, 14 × 14 (M 32) 2799 → 2446
 * (docs/architecture.md). Not where `forceVariant("conv2dWindowsStacked", "off")` (tests compare).
 */
function windowsStacked(img: WindowShape): boolean {
  return img.batch > 1 && forcedVariant("conv2dWindowsStacked") !== "off";
}

/**
 * The problem of a window product: per image W [M, K] · colsᵀ, cols [P, K] never stored; stacked
 * (windowsStacked), one product W · [batch·P, K]ᵀ.
 */
function windowProblem(M: number, img: WindowShape): Problem {
  const [P, K] = windowDims(img);
  return windowsStacked(img)
    ? { M, N: img.batch * P, K, batch: 1, transA: false, transB: true, strideA: 0, strideB: 0 }
    : { M, N: P, K, batch: img.batch, transA: false, transB: true, strideA: 0, strideB: P * K };
}

/**
 * The texture variant a window product of W [M, ·] over img runs: the one the same product with
 * its cols stored would run (tuned, forced or default), or null where that is not a texture
 * variant (the caller then stores the cols).
 */
export function windowVariant(M: number, img: WindowShape): string | null {
  const v = variantFor(windowProblem(M, img));
  return v.config.kind === "tex" ? v.name : null;
}

/**
 * A matrix [rows, cols] in a pooled flat texture (flat.ts; cols a multiple of 4), and the tensor its
 * values were made from (bound read-only in the bias's place where a product has no bias: bindings
 * must not alias its output).
 */
export interface FlatMatrix {
  texture: PooledTexture;
  rows: number;
  cols: number;
  source: Tensor;
}

/**
 * out [batch, M, P] = per image W [M, K] · colsᵀ (+ bias per row), where cols [P, K] holds the
 * windows of img — row q the window of output pixel q, its K = kh·kw·4·c4 values ordered by tap
 * (ky·kw + kx), then channel — read from the packed image itself: no cols matrix is stored. W, a
 * flat matrix, must be laid out in that order (no autograd). Throws where windowVariant is null.
 */
export function matmulWindowsInto(
  w: FlatMatrix,
  img: PackedWindows,
  bias: Tensor | null,
  out: Tensor,
): void {
  const M = w.rows;
  const p = windowProblem(M, img);
  const stacked = windowsStacked(img);
  if (w.cols !== p.K || out.size !== p.batch * M * p.N) {
    throw new Error(
      `peco: matmul: window product of a [${M},${w.cols}] weight over ${img.batch} images of ` +
        `${img.hout}×${img.wout} windows of ${p.K} values does not fit ${out.describe()}`,
    );
  }
  const variant = variantFor(p);
  if (variant.config.kind !== "tex") {
    throw new Error(`peco: matmul: no window kernel for variant ${variant.name}`);
  }
  countFlops(productFlops(p.batch, M, p.N, p.K));
  const { tm, tn } = variant.config;
  const laneM = lanesAlongM(M, p.N, tm, tn);
  const kernel = stacked
    ? texKernel(tm, tn, "flat", "windowStacked", laneM, null, false, stackedVecStores(img))
    : texKernel(tm, tn, "flat", "window", laneM, null, false, vecStores(p, null));
  const [gm, gn] = [Math.ceil(M / (tm * TEX_WG)), Math.ceil(p.N / (tn * TEX_WG))];
  gpu().recorder.dispatch(kernel, {
    buffers: [w.texture.view, img.view, (bias ?? w.source).binding, out.binding],
    params: [M, p.N, p.K / 4, 0, img.rows, 0, p.K / 4, 0, ...windowParams(img)],
    constants: biasConstants(bias && { tensor: bias, perRow: true }),
    workgroups: laneM ? [gm, gn, p.batch] : [gn, gm, p.batch],
  });
}

/** Whether a stacked window product stores vec4s: each image's P a multiple of 4 (see vecStores). */
const stackedVecStores = (img: WindowShape) =>
  windowDims(img)[0] % 4 === 0 && forcedVariant("matmulStore") !== "scalar";

/** The problem of a window-rows product: dY [batch, M, P] · cols [batch·P, K] summed over images. */
function windowRowsProblem(M: number, img: WindowShape): Problem {
  const [P, K] = windowDims(img);
  return {
    M,
    N: K,
    K: img.batch * P,
    batch: 1,
    transA: false,
    transB: false,
    strideA: 0,
    strideB: 0,
  };
}

/**
 * The texture variant a window-rows product of dY [·, M, ·] over img runs (see windowVariant), or
 * null where that is not a texture variant or dY's packed texture would not fit.
 */
export function windowRowsVariant(M: number, img: WindowShape): string | null {
  return windowRowsTex(M, img)?.name ?? null;
}

function windowRowsTex(M: number, img: WindowShape): Variant<MatmulConfig> | null {
  const v = variantFor(windowRowsProblem(M, img));
  if (v.config.kind !== "tex") return null;
  const max = gpu().limits.maxTextureDimension2D ?? 8192;
  const [P] = windowDims(img);
  const fits = Math.ceil(P / 4) <= max && img.batch * roundUp(M, v.config.tm) <= max;
  return fits ? v : null;
}

/**
 * Σ over images z of dY[z] [M, P] · cols_z [P, K], cols as in `matmulWindowsInto` (read from the
 * packed image, never stored), into out [M, C, kh·kw] (each row's K values, ordered by tap then
 * channel in the product, stored by channel then tap: a convolution weight's layout), and with
 * `sums` its row sums Σ_z Σ_p dY[z, m, p] (a convolution's weight and bias gradients). No autograd;
 * throws where windowRowsVariant is null.
 */
export function matmulWindowRowsInto(
  dy: Tensor,
  img: PackedWindows,
  out: Tensor,
  sums: Tensor | null,
): void {
  const M = dy.shape[1];
  const p = windowRowsProblem(M, img);
  const [P] = windowDims(img);
  const weights = M * img.kh * img.kw * img.channels;
  if (dy.size !== img.batch * M * P || out.size !== weights || (sums && sums.size !== M)) {
    throw new Error(
      `peco: matmul: window-rows product of ${dy.describe()} over ${img.batch} images of ` +
        `${img.hout}×${img.wout} windows of ${p.N} values does not fit ${out.describe()}`,
    );
  }
  const variant = windowRowsTex(M, img);
  if (variant?.config.kind !== "tex") {
    throw new Error(`peco: matmul: no window-rows kernel for this product (${variantFor(p).name})`);
  }
  countFlops(productFlops(1, M, p.N, p.K));
  const { tm, tn } = variant.config;
  const laneM = lanesAlongM(M, p.N, tm, tn);
  const tilesN = Math.ceil(p.N / tn);
  const slices = windowRowsSlices(img.batch, P);
  const perSlice = Math.ceil(img.batch / slices);
  const [gm, gn] = [Math.ceil(M / (tm * TEX_WG)), Math.ceil((slices * tilesN) / TEX_WG)];
  const { pool, recorder } = gpu();
  // Each slice's sums go to a partial [slices, ·] that one reduction adds up.
  const partOut = slices > 1 ? new Tensor([slices * out.size], "f32") : out;
  const partSums = sums && slices > 1 ? new Tensor([slices * M], "f32") : sums;
  // dY as A: copied flat where each row of P pixels is whole texels (no pack dispatch), else packed
  // [batch·Mp, Pp/4]; `forceVariant("windowRowsA", "pack")` packs it anyway (tests compare).
  const flatA = P % 4 === 0 && fitsFlat(dy.size) && forcedVariant("windowRowsA") !== "pack";
  const [Mp, Pp] = [roundUp(M, tm), roundUp(P, 4)];
  const kernel = texKernel(tm, tn, flatA ? "flat" : "pack", "windowRows", laneM, null, !!sums);
  const dyTexture = flatA
    ? acquireFlat(dy, "matmul window-rows dY")
    : pool.acquireTexture(Pp / 4, img.batch * Mp, "matmul window-rows dY");
  const flat = flatA ? null : flatForPack(dy);
  try {
    if (!flatA) pack(dy, flat, dyTexture.view, M, P, false, M * P, 0, img.batch, Mp, Pp);
    recorder.dispatch(kernel, {
      buffers: [
        dyTexture.view,
        img.view,
        dy.binding,
        partOut.binding,
        ...(partSums ? [partSums.binding] : []),
      ],
      params: [
        M,
        p.N,
        Pp / 4,
        flatA ? (M * P) / 4 : Mp,
        img.rows,
        0,
        flatA ? P / 4 : 0,
        0,
        ...windowParams(img),
        tilesN,
        perSlice,
        slices,
        img.channels,
      ],
      constants: biasConstants(null),
      workgroups: laneM ? [gm, gn, 1] : [gn, gm, 1],
    });
  } finally {
    for (const t of [dyTexture, flat]) if (t) pool.releaseTexture(t);
  }
  if (slices === 1) return;
  sumSlicesInto(slices, partOut, out, partSums, sums);
  partOut.dispose();
  partSums?.dispose();
}

/**
 * Slices of the images a window-rows product splits its sum into: each slice runs every block of
 * the output over its own images into a partial, and one reduction adds the partials up. The
 * products are small ([O, C·9] of a 3 × 3 convolution: 9–36 blocks of 16 × 16) against a long sum
 * (every pixel of every image), so in one slice a dispatch has 2–3 workgroups, the last one's lanes
 * mostly idle (9 blocks: 8 lanes, then 1), each running the whole sum; sliced, blocks × slices fill
 * the lanes and the workgroups share the cores. A slice sums at least WINDOW_ROWS_SLICE_PIXELS
 * pixels: below that its stores and the reduction cost more than the lanes gain. Measured on
 * lavapipe (MNIST tokenizer, batch 8, kernel µs): 28 × 28 M 16 4298 → 2638 (8 slices), M 32 12210
 * → 8892 (8), 14 × 14 M 32 3506 → 2619 (4); 7 × 7 1323 → 1628 with 2, so it keeps one.
 * `forceVariant("windowRowsSlices", "n")` sets the count (tests compare).
 */
function windowRowsSlices(images: number, pixels: number): number {
  const forced = Number(forcedVariant("windowRowsSlices"));
  if (forced >= 1) return Math.min(forced, images);
  return Math.max(1, Math.min(images, Math.floor((images * pixels) / WINDOW_ROWS_SLICE_PIXELS)));
}
const WINDOW_ROWS_SLICE_PIXELS = 392;

/**
 * out = Σ over s of part[s] (part [slices, out.size]) and, where given, sums alike from partSums,
 * in one dispatch (no autograd).
 */
function sumSlicesInto(
  slices: number,
  part: Tensor,
  out: Tensor,
  partSums: Tensor | null,
  sums: Tensor | null,
): void {
  const total = out.size + (sums ? sums.size : 0);
  gpu().recorder.dispatch(sums ? sumSlicesKernels.withSums : sumSlicesKernels.plain, {
    buffers: sums && partSums
      ? [part.binding, partSums.binding, out.binding, sums.binding]
      : [part.binding, out.binding],
    params: [slices, out.size, total],
    workgroups: grid1d(total, WG),
  });
}

/** The kernels of sumSlicesInto: values i < n from part into out, the rest from partSums into sums. */
const sumSlicesSource = (withSums: boolean) => /* wgsl */ `
struct Params { slices: u32, n: u32, total: u32 }
@group(0) @binding(0) var<storage, read> part: array<f32>;
${
  withSums
    ? `@group(0) @binding(1) var<storage, read> part_sums: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read_write> sums: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;`
    : `@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;`
}

@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * ${WG}u;
  if (i >= p.total) { return; }
  var acc = 0.0;
  if (i < p.n) {
    for (var s = 0u; s < p.slices; s++) { acc += part[s * p.n + i]; }
    out[i] = acc;
    return;
  }${
  withSums
    ? `
  let m = i - p.n;
  let rows = p.total - p.n;
  for (var s = 0u; s < p.slices; s++) { acc += part_sums[s * rows + m]; }
  sums[m] = acc;`
    : ""
}
}
`;
const sumSlicesKernels = {
  plain: defineKernel({
    name: "matmul_sum_slices",
    source: sumSlicesSource(false),
    bindings: ["read", "write"],
  }),
  withSums: defineKernel({
    name: "matmul_sum_slices_sums",
    source: sumSlicesSource(true),
    bindings: ["read", "read", "write", "write"],
  }),
};

/**
 * Whether a texture kernel stores C as vec4s (one storage store per 4 values: on lavapipe a store
 * costs about the same whatever its width, and storing C took ~30% of a conv-sized product): where
 * N is a multiple of 4, so that every block of 4 columns lies within a row, and there is no
 * epilogue; not where `forceVariant("matmulStore", "scalar")` keeps the scalar stores (tests compare).
 */
function vecStores(p: Problem, epilogue: Epilogue | null): boolean {
  return p.N % 4 === 0 && !epilogue && forcedVariant("matmulStore") !== "scalar";
}

/**
 * Packs op(X) [rows, cols] (of `batch` matrices `stride` apart, from batch z0; one shared matrix
 * when stride is 0) into texels of 4 consecutive columns, zero-padded to [paddedRows, paddedCols],
 * reading x from `flat` (a flat texture copy of it) when given, else from its buffer.
 */
function pack(
  x: Tensor,
  flat: PooledTexture | null,
  texture: GPUTextureView,
  rows: number,
  cols: number,
  trans: boolean,
  stride: number,
  z0: number,
  batch: number,
  paddedRows: number,
  paddedCols: number,
): void {
  const height = (stride ? batch : 1) * paddedRows;
  gpu().recorder.dispatch(flat ? packKernels.flat : packKernels.buffer, {
    buffers: [flat ? flat.view : x.binding, texture],
    params: [
      rows,
      cols,
      trans ? 1 : cols,
      trans ? rows : 1,
      stride,
      stride ? z0 : 0,
      paddedRows,
      paddedCols / 4,
      height,
    ],
    workgroups: [Math.ceil(paddedCols / 4 / 8), Math.ceil(height / 8)],
  });
}

export interface MatmulOptions {
  /** a is stored as [..., K, M]. */
  transA?: boolean;
  /** b is stored as [..., N, K]. */
  transB?: boolean;
}

/** What `plan` needs of an operand: tensors, or bare shapes for `matmulVariant`. */
interface Operand {
  readonly shape: Shape;
  readonly dtype: string;
}

const describe = (t: Operand) => `[${t.shape.join(",")}]`;

/** Checks shapes and works out the problem: batch dims equal, or one operand of rank 2 (shared). */
function plan(op: string, a: Operand, b: Operand, transA: boolean, transB: boolean) {
  for (const t of [a, b]) {
    if (t.dtype !== "f32") {
      throw new Error(`peco: ${op}: needs f32 tensors, got ${t.dtype}${describe(t)}`);
    }
    if (t.shape.length < 2) {
      throw new Error(
        `peco: ${op}: operands need rank >= 2, got ${describe(a)} and ${describe(b)}`,
      );
    }
  }
  const [ar, ac] = a.shape.slice(-2);
  const [br, bc] = b.shape.slice(-2);
  const [M, K] = transA ? [ac, ar] : [ar, ac];
  const [Kb, N] = transB ? [bc, br] : [br, bc];
  if (K !== Kb) {
    throw new Error(
      `peco: ${op}: inner dimensions differ: a ${describe(a)}${transA ? "ᵀ" : ""} has K=${K}, ` +
        `b ${describe(b)}${transB ? "ᵀ" : ""} has K=${Kb}`,
    );
  }
  const batchA = a.shape.slice(0, -2);
  const batchB = b.shape.slice(0, -2);
  const sameBatch = batchA.length === batchB.length && batchA.every((d, i) => d === batchB[i]);
  if (!sameBatch && batchA.length > 0 && batchB.length > 0) {
    throw new Error(
      `peco: ${op}: batch dimensions of a ${describe(a)} and b ${describe(b)} differ ` +
        `(they must match, or one operand must be rank 2)`,
    );
  }
  const batchShape = batchA.length ? batchA : batchB;
  const batch = batchShape.reduce((x, y) => x * y, 1);
  const problem: Problem = {
    M,
    N,
    K,
    batch,
    transA,
    transB,
    strideA: batchA.length ? M * K : 0,
    strideB: batchB.length ? K * N : 0,
  };
  return { problem, outShape: [...batchShape, M, N] };
}

/** op(a) · op(b) without autograd. */
function product(a: Tensor, b: Tensor, transA: boolean, transB: boolean): Tensor {
  const { problem, outShape } = plan("matmul", a, b, transA, transB);
  const out = new Tensor(outShape, "f32");
  launch(a, b, null, out, problem);
  return out;
}

/**
 * op(a) · op(b) written into `out` (no autograd): a fused op's backward that fills the parts of one
 * gradient buffer through views of it (256-byte aligned) instead of concatenating them afterwards.
 */
export function matmulInto(a: Tensor, b: Tensor, out: Tensor, options: MatmulOptions = {}): void {
  const { problem, outShape } = plan("matmul", a, b, !!options.transA, !!options.transB);
  if (out.size !== outShape.reduce((x, y) => x * y, 1)) {
    throw new Error(`peco: matmul: output ${out.describe()} does not hold [${outShape}]`);
  }
  launch(a, b, null, out, problem);
}

/**
 * Σ_k op(A)[m, k] into sums [M] by a reduction of its own (A of rank 2): where the texture kernels
 * do not sum as they multiply, or `forceVariant("matmulRowSums", "separate")` (tests compare).
 */
function rowSumsInto(a: Tensor, p: Problem, sums: Tensor): void {
  const s = reduceRaw(a.view(p.transA ? [p.K, p.M] : [p.M, p.K]), p.transA ? 0 : 1, "sum");
  copyValues(sums, s);
  s.dispose();
}

/**
 * op(a) · op(b) into `out` and Σ_k op(A)[m, k] into `sums` [M] (no autograd; a and b of rank 2):
 * with a = dC stored [rows, M] and transA, a linear layer's weight gradient dCᵀ·x and its bias
 * gradient Σ_rows dC from one pass on the texture kernels (the rows of A they read anyway).
 */
export function matmulRowSumsInto(
  a: Tensor,
  b: Tensor,
  out: Tensor,
  sums: Tensor,
  options: MatmulOptions = {},
): void {
  const { problem, outShape } = plan("matmul", a, b, !!options.transA, !!options.transB);
  if (out.size !== outShape.reduce((x, y) => x * y, 1) || problem.batch !== 1) {
    throw new Error(`peco: matmul: output ${out.describe()} does not hold [${outShape}] (rank 2)`);
  }
  if (sums.size !== problem.M) {
    throw new Error(`peco: matmul: row sums ${sums.describe()} must have ${problem.M} values`);
  }
  if (forcedVariant("matmulRowSums") === "separate" || out.size === 0) {
    launch(a, b, null, out, problem);
    if (problem.K === 0) fillInPlace(sums, 0);
    else rowSumsInto(a, problem, sums);
    return;
  }
  launch(a, b, null, out, problem, undefined, null, sums);
}

/**
 * op(a) · op(b) (+ bias per column of C) with `epilogue` applied as C is stored, written into
 * `out` (no autograd): the building block of fused ops (mlp.ts).
 */
export function matmulEpilogueInto(
  a: Tensor,
  b: Tensor,
  bias: Tensor | null,
  out: Tensor,
  epilogue: Epilogue | null,
  options: MatmulOptions = {},
): void {
  const { problem, outShape } = plan("matmul", a, b, !!options.transA, !!options.transB);
  const size = outShape.reduce((x, y) => x * y, 1);
  if (out.size !== size || (epilogue && epilogue.aux.size !== size)) {
    throw new Error(`peco: matmul: output ${out.describe()} does not hold [${outShape}]`);
  }
  if (bias && bias.size !== problem.N) {
    throw new Error(`peco: matmul: bias ${bias.describe()} must have ${problem.N} values`);
  }
  launch(a, b, bias && { tensor: bias, perRow: false }, out, problem, undefined, epilogue);
}

/** Sums a batched gradient [...batch, R, C] over its batch dims to `shape` [R, C]. */
function sumBatch(g: Tensor, shape: Shape): Tensor {
  if (g.rank === shape.length) return g;
  const inner = shape[0] * shape[1];
  return reduceRaw(g.view([g.size / inner, inner]), 0, "sum").view(shape);
}

/** a shared by the batch stacked into its rows: [...batch, M, K] → [batch·M, K] (a free view). */
const stackRows = (t: Tensor) => t.view([t.size / t.shape[t.rank - 1], t.shape[t.rank - 1]]);

/**
 * Batched matrix product op(a) · op(b): a [...batch, M, K] (or [..., K, M] with transA), b
 * [...batch, K, N] (or [..., N, K] with transB) → [...batch, M, N]. Either operand may be rank 2
 * and shared by the other's batch.
 */
export function matmul(a: Tensor, b: Tensor, options: MatmulOptions = {}): Tensor {
  const transA = options.transA ?? false;
  const transB = options.transB ?? false;
  const out = product(a, b, transA, transB);
  return record("matmul", out, [a, b], (g) => {
    // C = op(A)·op(B): dop(A) = dC·op(B)ᵀ and dop(B) = op(A)ᵀ·dC, each written so that the
    // kernel reads every operand in place through its trans flags.
    let ga: Tensor | null = null;
    let gb: Tensor | null = null;
    if (a.requiresGrad) {
      ga = transA ? product(b, g, transB, true) : product(g, b, false, !transB);
      ga = sumBatch(ga, a.shape);
    }
    if (b.requiresGrad) {
      if (b.rank === 2 && a.rank > 2 && !transA) {
        // Shared b: the batch sum folds into one product over the stacked rows of a and dC.
        const [a2, g2] = [stackRows(a), stackRows(g)];
        gb = transB ? product(g2, a2, true, false) : product(a2, g2, true, false);
      } else {
        gb = transB ? product(g, a, true, transA) : product(a, g, !transA, false);
        gb = sumBatch(gb, b.shape);
      }
    }
    return [ga?.view(a.shape) ?? null, gb?.view(b.shape) ?? null];
  });
}

/**
 * op(a) · op(b) + bias[m] on every row m of each product (no autograd): bias [M]. The row bias is
 * added as C is stored (a convolution's per-channel bias, with channels as rows).
 */
export function matmulRowBias(
  a: Tensor,
  b: Tensor,
  bias: Tensor,
  options: MatmulOptions = {},
): Tensor {
  const { problem, outShape } = plan("matmul", a, b, !!options.transA, !!options.transB);
  if (bias.dtype !== "f32" || bias.size !== problem.M) {
    throw new Error(
      `peco: matmul: row bias ${bias.describe()} must be f32 with ${problem.M} values`,
    );
  }
  const out = new Tensor(outShape, "f32");
  launch(a, b, { tensor: bias, perRow: true }, out, problem);
  return out;
}

/** x [..., in] · weightᵀ (+ bias): weight [out, in], bias [out] → [..., out] (PyTorch Linear). */
export function linear(x: Tensor, weight: Tensor, bias: Tensor | null): Tensor {
  if (weight.rank !== 2 || x.rank < 1 || x.shape[x.rank - 1] !== weight.shape[1]) {
    throw new Error(
      `peco: linear: weight ${describe(weight)} does not match input ${describe(x)} ` +
        `(weight must be [out, in] with in = the input's last dim)`,
    );
  }
  const [outF, inF] = weight.shape;
  if (bias && (bias.rank !== 1 || bias.shape[0] !== outF || bias.dtype !== "f32")) {
    throw new Error(`peco: linear: bias ${bias.describe()} must be f32 [${outF}]`);
  }
  const rows = x.size / inF;
  const { problem } = plan("linear", { shape: [rows, inF], dtype: x.dtype }, weight, false, true);
  const out = new Tensor([...x.shape.slice(0, -1), outF], "f32");
  launch(x, weight, bias && { tensor: bias, perRow: false }, out, problem);
  const inputs = bias ? [x, weight, bias] : [x, weight];
  return record("linear", out, inputs, (g) => {
    const flat = (t: Tensor) => t.view([rows, t.shape[t.rank - 1]]);
    const g2 = flat(g);
    const dx = x.requiresGrad ? product(g2, weight, false, false).view(x.shape) : null;
    if (weight.requiresGrad && bias?.requiresGrad) {
      // The bias gradient Σ_rows g from the weight gradient's pass over gᵀ.
      const [dw, db] = [new Tensor(weight.shape, "f32"), new Tensor([outF], "f32")];
      matmulRowSumsInto(g2, flat(x), dw, db, { transA: true });
      return [dx, dw, db];
    }
    return [
      dx,
      weight.requiresGrad ? product(g2, flat(x), true, false) : null,
      bias?.requiresGrad ? reduceRaw(g2, 0, "sum") : null,
    ];
  });
}

/** The variant `matmul(a, b, options)` would run now (for benchmarks and reports). */
export function matmulVariant(a: Shape, b: Shape, options: MatmulOptions = {}): string {
  const [sa, sb] = [{ shape: a, dtype: "f32" }, { shape: b, dtype: "f32" }];
  const { problem } = plan("matmul", sa, sb, !!options.transA, !!options.transB);
  return variantFor(problem).name;
}

/**
 * Times candidate variants on an [M, K] · [K, N] problem (batch `batch`, stored as the trans flags
 * say) and makes the fastest the choice for its shape class in this process. Candidates default to
 * the 3 best variants of the cost model on software adapters plus its best texture variant where
 * the shape fits one (shared-memory tiles are slow there, and timing every block size on big shapes
 * takes minutes), and to all buffer variants on GPUs.
 */
export async function tuneMatmul(
  M: number,
  N: number,
  K: number,
  { transA = false, transB = false, batch = 1, candidates, iters = 2 }: MatmulOptions & {
    batch?: number;
    candidates?: string[];
    iters?: number;
  } = {},
): Promise<TuneResult> {
  const aShape = [...(batch > 1 ? [batch] : []), ...(transA ? [K, M] : [M, K])];
  const bShape = [...(batch > 1 ? [batch] : []), ...(transB ? [N, K] : [K, N])];
  const a = zeros(aShape);
  const b = zeros(bShape);
  const { problem, outShape } = plan("matmul", a, b, transA, transB);
  const out = new Tensor(outShape, "f32");
  const pool = candidates
    ? candidates.map((name) => {
      const v = MATMUL_VARIANTS.find((c) => c.name === name);
      if (!v) throw new Error(`peco: tuneMatmul: no variant "${name}"`);
      return v;
    })
    : gpu().info.software
    ? softwareCandidates(problem)
    : MATMUL_VARIANTS.filter((v) => v.config.kind !== "tex");
  try {
    // Tuning runs are no model's work: not counted.
    const run = (v: Variant<MatmulConfig>) => launchKernels(a, b, null, out, problem, v);
    return await tune("matmul", shapeClass(problem), pool, run, { iters });
  } finally {
    // Released here, not by a scope: the caller need not run this inside tidy().
    await gpu().recorder.sync();
    for (const t of [a, b, out]) t.dispose();
  }
}

/** Tuning candidates on a software adapter: the model's best 3, and the best texture variant. */
function softwareCandidates(p: Problem): Variant<MatmulConfig>[] {
  const ranked = rankedVariants(p);
  const top = ranked.slice(0, 3);
  const tex = ranked.find((v) => v.config.kind === "tex");
  if (tex && !top.includes(tex)) top.push(tex);
  return top;
}

/** The variant matmul runs for this problem without tuning (for benchmark reports). */
export function defaultMatmulVariant(a: Shape, b: Shape, options: MatmulOptions = {}): string {
  const [sa, sb] = [{ shape: a, dtype: "f32" }, { shape: b, dtype: "f32" }];
  return defaultVariant(plan("matmul", sa, sb, !!options.transA, !!options.transB).problem).name;
}

/**
 * How a texture variant fills its two textures for this product: "copy" or "pack" for a and b,
 * or null where the variant is not a texture variant or its textures would not fit.
 */
export function textureFill(
  a: Shape,
  b: Shape,
  variant: string,
  options: MatmulOptions = {},
): { a: "copy" | "pack"; b: "copy" | "pack" } | null {
  const config = MATMUL_VARIANTS.find((v) => v.name === variant)?.config;
  if (config?.kind !== "tex") return null;
  const [sa, sb] = [{ shape: a, dtype: "f32" }, { shape: b, dtype: "f32" }];
  const { problem } = plan("matmul", sa, sb, !!options.transA, !!options.transB);
  const layout = texLayout(problem, config.tm, config.tn);
  if (!layout) return null;
  const fill = (t: OperandTexture) => t.fill === "pack" ? "pack" : "copy";
  return { a: fill(layout.a), b: fill(layout.b) };
}
