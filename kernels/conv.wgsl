// Convolution family: 2-D convolution as implicit GEMM over a zero-padded input, its weight
// gradient as a GEMM reducing over batch and pixels, the copy kernel that pads / dilates /
// subsamples planes for them, the weight re-layout, and the window sum/spread pair behind average
// pooling and nearest upsampling.
//
// The GEMM kernels use no workgroup memory. On lavapipe every invocation is one lane of a CPU SIMD
// vector and every storage-buffer load is a per-lane scalar loop (tens of cycles per lane and
// component), so loads, not FMAs, bound the speed: each invocation keeps a large block of outputs
// in registers and reuses every loaded value across it. A loop over a run-time-indexed
// accumulator array would not be unrolled (it falls back to slow scratch memory), so blocks are
// structs of mat4x4f units written out field by field, each behind an `if (T > …)` on an override
// constant that folds away once the pipeline is specialised.
//
// All convolutions run at stride 1 (the host dilates or subsamples around them) with kernel width
// taken in chunks of at most 5 taps (KWC) so that one row segment of the input, loaded once as
// aligned vec4s, serves every tap of a chunk by register shifts.

override WG: u32 = 64;
/** Output channel groups of 4 per invocation (≤ 4). */
override TO: u32 = 4;
/** Pixel groups of 4 per invocation, along a row (≤ 8). */
override TP: u32 = 8;
/** Input channel groups of 4 per invocation of the weight gradient (≤ 2). */
override TC: u32 = 2;
/** Kernel taps per width chunk (≤ 5). */
override KWC: u32 = 3;

// ---- pad / dilate / subsample --------------------------------------------------------------------

// out[p, y, x] = src[p, sy, sx] with sy = (y·step − top) / dil when that is a whole in-range index
// (sx alike), else 0. Pads the input, dilates + pads the output gradient for the transposed
// convolution, and picks every step-th pixel of a stride-1 result for a strided convolution.
struct Copy { total: u32, h: u32, w: u32, hp: u32, wp: u32, top: i32, left: i32, dil: u32, step: u32 }

@group(0) @binding(0) var<storage, read> copy_src: array<f32>;
@group(0) @binding(1) var<storage, read_write> copy_out: array<f32>;
@group(0) @binding(2) var<uniform> cpy: Copy;

// Source index along one axis, or -1 where the output holds a zero.
fn copy_source(at: u32, before: i32, len: u32) -> i32 {
  let d = i32(at * cpy.step) - before;
  if (d < 0 || d % i32(cpy.dil) != 0) { return -1; }
  let s = d / i32(cpy.dil);
  return select(-1, s, s < i32(len));
}

@compute @workgroup_size(WG)
fn conv_copy(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * WG;
  if (i >= cpy.total) { return; }
  let x = i % cpy.wp;
  let y = (i / cpy.wp) % cpy.hp;
  let plane = i / (cpy.wp * cpy.hp);
  let sy = copy_source(y, cpy.top, cpy.h);
  let sx = copy_source(x, cpy.left, cpy.w);
  var v = 0.0;
  if (sy >= 0 && sx >= 0) {
    v = copy_src[(plane * cpy.h + u32(sy)) * cpy.w + u32(sx)];
  }
  copy_out[i] = v;
}

// ---- weight re-layout ----------------------------------------------------------------------------

// The weight as blocks of bw = 4·TO output channels, each block [c, ky, kx (kwp, whole chunks), bw]
// with output channels innermost (the convolution loads 4 of them as one vec4): element i of the
// block sequence is w(o, c, ky, kx), zero for o ≥ cout or kx ≥ kw, where
// w(o, c, ky, kx) = w[base + o·so + c·sc + ky·sky + kx·skx] (the strides also express the
// transposed, flipped weight of the input gradient). Blocks are packed bpc to a slot of cstride
// elements (slots start 256-byte aligned, so each can be bound as its own uniform range).
struct WPrep {
  total: u32, cout: u32, kh: u32, kw: u32, kwp: u32, bw: u32,
  base: i32, so: i32, sc: i32, sky: i32, skx: i32,
  bsize: u32, bpc: u32, cstride: u32,
}

@group(0) @binding(0) var<storage, read> wprep_src: array<f32>;
@group(0) @binding(1) var<storage, read_write> wprep_out: array<f32>;
@group(0) @binding(2) var<uniform> wpp: WPrep;

@compute @workgroup_size(WG)
fn conv_wprep(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * WG;
  if (i >= wpp.total) { return; }
  let ob = i / wpp.bsize;
  let o = ob * wpp.bw + i % wpp.bw;
  let kx = (i / wpp.bw) % wpp.kwp;
  let ky = (i / (wpp.bw * wpp.kwp)) % wpp.kh;
  let c = (i % wpp.bsize) / (wpp.bw * wpp.kwp * wpp.kh);
  var v = 0.0;
  if (o < wpp.cout && kx < wpp.kw) {
    v = wprep_src[wpp.base + i32(o) * wpp.so + i32(c) * wpp.sc + i32(ky) * wpp.sky +
      i32(kx) * wpp.skx];
  }
  wprep_out[ob / wpp.bpc * wpp.cstride + ob % wpp.bpc * wpp.bsize + i % wpp.bsize] = v;
}

// The input gradient's weight for the im2col lowering (the transposed, flipped kernel as a matrix
// [c, o·kh·kw]): wf[c, o, t] = w[o, c, taps − 1 − t], t = ky·kw + kx, taps = kh·kw (flipping the
// flattened tap index flips both axes). One invocation per (c, o) moves its taps: integer division
// is a scalar loop per lane on lavapipe, so it is done once per kernel rather than once per tap.
struct WFlip { pairs: u32, o: u32, c: u32, taps: u32 }

@group(0) @binding(0) var<storage, read> wflip_src: array<f32>;
@group(0) @binding(1) var<storage, read_write> wflip_out: array<f32>;
@group(0) @binding(2) var<uniform> wfl: WFlip;

@compute @workgroup_size(WG)
fn conv_wflip(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * WG;
  if (i >= wfl.pairs) { return; }
  let o = i % wfl.o;
  let c = i / wfl.o;
  let src = (o * wfl.c + c + 1u) * wfl.taps - 1u;
  let dst = i * wfl.taps;
  for (var t = 0u; t < wfl.taps; t++) {
    wflip_out[dst + t] = wflip_src[src - t];
  }
}

// ---- register blocks shared by both GEMMs --------------------------------------------------------

/** Up to 9 consecutive vec4s of a row (one more than a block's pixel groups, for the shifts). */
struct Row { v0: vec4f, v1: vec4f, v2: vec4f, v3: vec4f, v4: vec4f, v5: vec4f, v6: vec4f, v7: vec4f, v8: vec4f }

/** A 4-channel × TP·4-pixel strip of outputs: unit q, column r = channel r at pixels 4q..4q+3. */
struct Strip {
  u0: mat4x4f, u1: mat4x4f, u2: mat4x4f, u3: mat4x4f,
  u4: mat4x4f, u5: mat4x4f, u6: mat4x4f, u7: mat4x4f,
}

/** u + outer(a, b): column r gains a[r]·b. */
fn rank1(u: mat4x4f, a: vec4f, b: vec4f) -> mat4x4f {
  return mat4x4f(fma(vec4f(a.x), b, u[0]), fma(vec4f(a.y), b, u[1]), fma(vec4f(a.z), b, u[2]),
    fma(vec4f(a.w), b, u[3]));
}

/** Elements k..k+3 of the 8 elements a ++ b (k a constant once inlined). */
fn shift(a: vec4f, b: vec4f, k: u32) -> vec4f {
  switch k {
    case 1u: { return vec4f(a.yzw, b.x); }
    case 2u: { return vec4f(a.zw, b.xy); }
    case 3u: { return vec4f(a.w, b.xyz); }
    case 4u: { return b; }
    default: { return a; }
  }
}

// ---- implicit-GEMM convolution (stride 1) --------------------------------------------------------

// out[n, o, oy, ox] = bias[o] + Σ_{c, ky, kx} wt(c, ky, kx, o) · src[n, c, oy + ky, ox + kx]
// over a pre-padded src [N, cin, hp, wp4·4] and the re-laid weight wt (conv_wprep, kwp =
// nchunk·KWC taps per row, blocks of 4·TO channels, wblock4 vec4s apart). One invocation: 4·TO
// output channels × 4·TP consecutive pixels of one output row; the channel block is ob0 +
// workgroup_id.y, its weights block workgroup_id.y of the bound range.
//
// Every weight load is uniform across the workgroup. With UNIFORM_W the weights come from a
// uniform buffer (one ≤ 64 KiB slot of blocks per dispatch): lavapipe scalarises uniform-buffer
// loads at uniform addresses (~5 cycles a vec4 against ~80 from a storage buffer). Without it
// (weights of one block beyond 64 KiB) they come from the storage buffer; both bindings are bound
// either way (the override folds one branch away, but both variables are statically used).
override UNIFORM_W: bool = false;
/** Output rows are a whole number of vec4s (width % 4 = 0): vec4 stores. */
override VEC_OUT: bool = false;

struct Conv {
  cin: u32, cout: u32, hp: u32, wp4: u32,
  hout: u32, wout: u32, nbx: u32, blocks: u32,
  kh: u32, wblock4: u32, nchunk: u32, has_bias: u32,
  ob0: u32,
}

@group(0) @binding(0) var<storage, read> conv_src: array<vec4f>;
@group(0) @binding(1) var<storage, read> conv_w: array<vec4f>;
@group(0) @binding(2) var<storage, read> conv_bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> conv_out: array<vec4f>;
/** The 64 KiB (maxUniformBufferBindingSize) slot of weight blocks of this dispatch. */
@group(0) @binding(4) var<uniform> conv_wu: array<vec4f, 4096>;
@group(0) @binding(5) var<uniform> cp: Conv;

fn conv_weight(at: u32) -> vec4f {
  if (UNIFORM_W) { return conv_wu[at]; }
  return conv_w[at];
}

/** The TP vec4s of a row segment starting at vec4 `at`, plus one more when taps shift. */
fn load_row(at: u32) -> Row {
  let n = TP + select(0u, 1u, KWC > 1u);
  var r: Row;
  r.v0 = conv_src[at];
  if (n > 1u) { r.v1 = conv_src[at + 1u]; }
  if (n > 2u) { r.v2 = conv_src[at + 2u]; }
  if (n > 3u) { r.v3 = conv_src[at + 3u]; }
  if (n > 4u) { r.v4 = conv_src[at + 4u]; }
  if (n > 5u) { r.v5 = conv_src[at + 5u]; }
  if (n > 6u) { r.v6 = conv_src[at + 6u]; }
  if (n > 7u) { r.v7 = conv_src[at + 7u]; }
  if (n > 8u) { r.v8 = conv_src[at + 8u]; }
  return r;
}

/** The row seen through tap k: pixel group q holds row elements 4q + k .. 4q + k + 3. */
fn shifted(r: Row, k: u32) -> Row {
  var x: Row;
  x.v0 = shift(r.v0, r.v1, k);
  x.v1 = shift(r.v1, r.v2, k);
  x.v2 = shift(r.v2, r.v3, k);
  x.v3 = shift(r.v3, r.v4, k);
  x.v4 = shift(r.v4, r.v5, k);
  x.v5 = shift(r.v5, r.v6, k);
  x.v6 = shift(r.v6, r.v7, k);
  x.v7 = shift(r.v7, r.v8, k);
  return x;
}

fn fma_strip(s: ptr<function, Strip>, w: vec4f, x: Row) {
  (*s).u0 = rank1((*s).u0, w, x.v0);
  if (TP > 1u) { (*s).u1 = rank1((*s).u1, w, x.v1); }
  if (TP > 2u) { (*s).u2 = rank1((*s).u2, w, x.v2); }
  if (TP > 3u) { (*s).u3 = rank1((*s).u3, w, x.v3); }
  if (TP > 4u) { (*s).u4 = rank1((*s).u4, w, x.v4); }
  if (TP > 5u) { (*s).u5 = rank1((*s).u5, w, x.v5); }
  if (TP > 6u) { (*s).u6 = rank1((*s).u6, w, x.v6); }
  if (TP > 7u) { (*s).u7 = rank1((*s).u7, w, x.v7); }
}

/** One kernel tap k: every strip gains (weights of its 4 channels) ⊗ (shifted row). */
fn conv_tap(
  s0: ptr<function, Strip>,
  s1: ptr<function, Strip>,
  s2: ptr<function, Strip>,
  s3: ptr<function, Strip>,
  row: Row,
  k: u32,
  wat: u32,
) {
  let x = shifted(row, k);
  let at = wat + k * TO;
  fma_strip(s0, conv_weight(at), x);
  if (TO > 1u) { fma_strip(s1, conv_weight(at + 1u), x); }
  if (TO > 2u) { fma_strip(s2, conv_weight(at + 2u), x); }
  if (TO > 3u) { fma_strip(s3, conv_weight(at + 3u), x); }
}

/**
 * A unit's 4 channels × 4 pixels, plus bias. Every global store is a per-lane scalar loop on
 * lavapipe (costing about as much as the FMAs of the whole block when done per float), so rows that
 * are a whole number of vec4s (VEC_OUT) are stored one vec4 per channel.
 */
fn store_unit(n: u32, o: u32, oy: u32, ox: u32, u: mat4x4f) {
  for (var r = 0u; r < 4u; r++) {
    if (o + r >= cp.cout) { return; }
    var bias = 0.0;
    if (cp.has_bias != 0u) { bias = conv_bias[o + r]; }
    let v = u[r] + bias;
    let dst = ((n * cp.cout + o + r) * cp.hout + oy) * cp.wout + ox;
    if (VEC_OUT) {
      if (ox < cp.wout) { conv_out[dst / 4u] = v; }
    } else {
      for (var t = 0u; t < 4u; t++) {
        let at = dst + t;
        if (ox + t < cp.wout) { conv_out[at / 4u][at % 4u] = v[t]; }
      }
    }
  }
}

fn store_strip(n: u32, o: u32, oy: u32, ox: u32, s: Strip) {
  store_unit(n, o, oy, ox, s.u0);
  if (TP > 1u) { store_unit(n, o, oy, ox + 4u, s.u1); }
  if (TP > 2u) { store_unit(n, o, oy, ox + 8u, s.u2); }
  if (TP > 3u) { store_unit(n, o, oy, ox + 12u, s.u3); }
  if (TP > 4u) { store_unit(n, o, oy, ox + 16u, s.u4); }
  if (TP > 5u) { store_unit(n, o, oy, ox + 20u, s.u5); }
  if (TP > 6u) { store_unit(n, o, oy, ox + 24u, s.u6); }
  if (TP > 7u) { store_unit(n, o, oy, ox + 28u, s.u7); }
}

@compute @workgroup_size(WG)
fn conv_fwd(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(local_invocation_index) lid: u32,
  @builtin(num_workgroups) nwg: vec3u,
) {
  // Out-of-range invocations compute a copy of the last block and skip the store: an early return
  // would put the whole loop under an execution mask.
  let raw = (wid.x + wid.z * nwg.x) * WG + lid;
  let blk = min(raw, cp.blocks - 1u);
  let bx = blk % cp.nbx;
  let row = blk / cp.nbx;
  let oy = row % cp.hout;
  let n = row / cp.hout;
  let og = (cp.ob0 + wid.y) * TO;
  var s0: Strip;
  var s1: Strip;
  var s2: Strip;
  var s3: Strip;
  var at = (n * cp.cin * cp.hp + oy) * cp.wp4 + bx * TP;
  var wat = wid.y * cp.wblock4;
  for (var c = 0u; c < cp.cin; c++) {
    for (var ky = 0u; ky < cp.kh; ky++) {
      for (var chunk = 0u; chunk < cp.nchunk; chunk++) {
        let r = load_row(at + ky * cp.wp4 + chunk);
        conv_tap(&s0, &s1, &s2, &s3, r, 0u, wat);
        if (KWC > 1u) { conv_tap(&s0, &s1, &s2, &s3, r, 1u, wat); }
        if (KWC > 2u) { conv_tap(&s0, &s1, &s2, &s3, r, 2u, wat); }
        if (KWC > 3u) { conv_tap(&s0, &s1, &s2, &s3, r, 3u, wat); }
        if (KWC > 4u) { conv_tap(&s0, &s1, &s2, &s3, r, 4u, wat); }
        wat += KWC * TO;
      }
    }
    at += cp.hp * cp.wp4;
  }
  if (raw >= cp.blocks) { return; }
  let o0 = og * 4u;
  let ox = bx * TP * 4u;
  store_strip(n, o0, oy, ox, s0);
  if (TO > 1u) { store_strip(n, o0 + 4u, oy, ox, s1); }
  if (TO > 2u) { store_strip(n, o0 + 8u, oy, ox, s2); }
  if (TO > 3u) { store_strip(n, o0 + 12u, oy, ox, s3); }
}

// ---- weight gradient (stride 1) ------------------------------------------------------------------

// part[z, o, c, ky, kx] = Σ_{(n, y) in row chunk z} Σ_x g[n, o, y, x] · src[n, c, y + ky, x + kx]
// with g zero-padded to rows of gw4 vec4s and src the padded input of the forward pass. One
// invocation: 4·TO output channels × 4·TC input channels × the KWC taps of one (ky, width chunk);
// the channel blocks are workgroup_id.y (output) and the invocation index (input, ky, chunk), the
// row chunk (split-K, added up afterwards) workgroup_id.z. Its accumulators: for each (output
// group, input group) pair, one unit per tap, column r = output channel r, rows = input channels.
struct WGrad {
  cin: u32, cout: u32, hp: u32, wp4: u32,
  h1: u32, gw4: u32, kh: u32, kw: u32,
  rows: u32, chunk_rows: u32, nchunk: u32,
}

/** One unit per tap of a width chunk. */
struct Taps { k0: mat4x4f, k1: mat4x4f, k2: mat4x4f, k3: mat4x4f, k4: mat4x4f }

@group(0) @binding(1) var<storage, read> wg_g: array<vec4f>;
@group(0) @binding(2) var<storage, read_write> wg_out: array<f32>;
@group(0) @binding(3) var<uniform> wgp: WGrad;

/**
 * 4 input channels at row elements e = 0..7 (two vec4s each): element e of all four as one vec4.
 */
struct Cols { e0: vec4f, e1: vec4f, e2: vec4f, e3: vec4f, e4: vec4f, e5: vec4f, e6: vec4f, e7: vec4f }

fn load_cols(at: u32, plane: u32) -> Cols {
  let a0 = conv_src[at];
  let a1 = conv_src[at + plane];
  let a2 = conv_src[at + 2u * plane];
  let a3 = conv_src[at + 3u * plane];
  // Elements 4..7 only serve taps k ≥ 1.
  var b0 = vec4f();
  var b1 = vec4f();
  var b2 = vec4f();
  var b3 = vec4f();
  if (KWC > 1u) {
    b0 = conv_src[at + 1u];
    b1 = conv_src[at + plane + 1u];
    b2 = conv_src[at + 2u * plane + 1u];
    b3 = conv_src[at + 3u * plane + 1u];
  }
  return Cols(vec4f(a0.x, a1.x, a2.x, a3.x), vec4f(a0.y, a1.y, a2.y, a3.y),
    vec4f(a0.z, a1.z, a2.z, a3.z), vec4f(a0.w, a1.w, a2.w, a3.w), vec4f(b0.x, b1.x, b2.x, b3.x),
    vec4f(b0.y, b1.y, b2.y, b3.y), vec4f(b0.z, b1.z, b2.z, b3.z), vec4f(b0.w, b1.w, b2.w, b3.w));
}

fn col(x: Cols, e: u32) -> vec4f {
  switch e {
    case 1u: { return x.e1; }
    case 2u: { return x.e2; }
    case 3u: { return x.e3; }
    case 4u: { return x.e4; }
    case 5u: { return x.e5; }
    case 6u: { return x.e6; }
    case 7u: { return x.e7; }
    default: { return x.e0; }
  }
}

/** Pixel t of 4 output channels' gradients (g: column r = channel r's 4 pixels) at every tap. */
fn fma_taps(acc: ptr<function, Taps>, g: mat4x4f, x: Cols, t: u32) {
  let gv = vec4f(g[0][t], g[1][t], g[2][t], g[3][t]);
  (*acc).k0 = rank1((*acc).k0, gv, col(x, t));
  if (KWC > 1u) { (*acc).k1 = rank1((*acc).k1, gv, col(x, t + 1u)); }
  if (KWC > 2u) { (*acc).k2 = rank1((*acc).k2, gv, col(x, t + 2u)); }
  if (KWC > 3u) { (*acc).k3 = rank1((*acc).k3, gv, col(x, t + 3u)); }
  if (KWC > 4u) { (*acc).k4 = rank1((*acc).k4, gv, col(x, t + 4u)); }
}

fn fma_pixels(acc: ptr<function, Taps>, g: mat4x4f, x: Cols) {
  fma_taps(acc, g, x, 0u);
  fma_taps(acc, g, x, 1u);
  fma_taps(acc, g, x, 2u);
  fma_taps(acc, g, x, 3u);
}

/** The 4 pixels of a pixel group for output channels o..o+3 (column r = channel o + r). */
fn load_g(at: u32, plane: u32) -> mat4x4f {
  return mat4x4f(wg_g[at], wg_g[at + plane], wg_g[at + 2u * plane], wg_g[at + 3u * plane]);
}

fn store_taps(z: u32, o: u32, c: u32, ky: u32, kx0: u32, acc: Taps) {
  store_tap(z, o, c, ky, kx0, acc.k0);
  if (KWC > 1u) { store_tap(z, o, c, ky, kx0 + 1u, acc.k1); }
  if (KWC > 2u) { store_tap(z, o, c, ky, kx0 + 2u, acc.k2); }
  if (KWC > 3u) { store_tap(z, o, c, ky, kx0 + 3u, acc.k3); }
  if (KWC > 4u) { store_tap(z, o, c, ky, kx0 + 4u, acc.k4); }
}

fn store_tap(z: u32, o: u32, c: u32, ky: u32, kx: u32, u: mat4x4f) {
  if (kx >= wgp.kw) { return; }
  for (var r = 0u; r < 4u; r++) {
    if (o + r >= wgp.cout) { return; }
    for (var t = 0u; t < 4u; t++) {
      if (c + t < wgp.cin) {
        wg_out[(((z * wgp.cout + o + r) * wgp.cin + c + t) * wgp.kh + ky) * wgp.kw + kx] = u[r][t];
      }
    }
  }
}

@compute @workgroup_size(WG)
fn conv_wgrad(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let raw = wid.x * WG + lid;
  let cblocks = (wgp.cin + 4u * TC - 1u) / (4u * TC);
  let lanes = cblocks * wgp.kh * wgp.nchunk;
  let lane = min(raw, lanes - 1u);
  let chunk = lane % wgp.nchunk;
  let ky = (lane / wgp.nchunk) % wgp.kh;
  let c0 = lane / (wgp.nchunk * wgp.kh) * 4u * TC;
  let o0 = wid.y * 4u * TO;
  // Channels past the end read the last one again (their sums are not stored).
  let cl = wgp.cin - 1u;
  let ol = wgp.cout - 1u;
  let splane = wgp.hp * wgp.wp4;
  let gplane = wgp.h1 * wgp.gw4;
  var a00: Taps;
  var a01: Taps;
  var a10: Taps;
  var a11: Taps;
  var a20: Taps;
  var a21: Taps;
  var a30: Taps;
  var a31: Taps;
  let r1 = min(wgp.rows, (wid.z + 1u) * wgp.chunk_rows);
  for (var rw = wid.z * wgp.chunk_rows; rw < r1; rw++) {
    let n = rw / wgp.h1;
    let y = rw % wgp.h1;
    let src0 = ((n * wgp.cin + min(c0, cl)) * wgp.hp + y + ky) * wgp.wp4 + chunk;
    let src1 = ((n * wgp.cin + min(c0 + 4u, cl)) * wgp.hp + y + ky) * wgp.wp4 + chunk;
    let g0 = ((n * wgp.cout + min(o0, ol)) * wgp.h1 + y) * wgp.gw4;
    let g1 = ((n * wgp.cout + min(o0 + 4u, ol)) * wgp.h1 + y) * wgp.gw4;
    let g2 = ((n * wgp.cout + min(o0 + 8u, ol)) * wgp.h1 + y) * wgp.gw4;
    let g3 = ((n * wgp.cout + min(o0 + 12u, ol)) * wgp.h1 + y) * wgp.gw4;
    for (var q = 0u; q < wgp.gw4; q++) {
      // Lanes of a group past cin or cout read other planes (or, at the very end, whatever
      // robust buffer access returns): that only reaches accumulator entries that are not stored.
      let x0 = load_cols(src0 + q, splane);
      var x1: Cols;
      if (TC > 1u) { x1 = load_cols(src1 + q, splane); }
      let gq0 = load_g(g0 + q, gplane);
      fma_pixels(&a00, gq0, x0);
      if (TC > 1u) { fma_pixels(&a01, gq0, x1); }
      if (TO > 1u) {
        let gq1 = load_g(g1 + q, gplane);
        fma_pixels(&a10, gq1, x0);
        if (TC > 1u) { fma_pixels(&a11, gq1, x1); }
      }
      if (TO > 2u) {
        let gq2 = load_g(g2 + q, gplane);
        fma_pixels(&a20, gq2, x0);
        if (TC > 1u) { fma_pixels(&a21, gq2, x1); }
      }
      if (TO > 3u) {
        let gq3 = load_g(g3 + q, gplane);
        fma_pixels(&a30, gq3, x0);
        if (TC > 1u) { fma_pixels(&a31, gq3, x1); }
      }
    }
  }
  if (raw >= lanes) { return; }
  let kx0 = chunk * KWC;
  store_taps(wid.z, o0, c0, ky, kx0, a00);
  if (TC > 1u) { store_taps(wid.z, o0, c0 + 4u, ky, kx0, a01); }
  if (TO > 1u) {
    store_taps(wid.z, o0 + 4u, c0, ky, kx0, a10);
    if (TC > 1u) { store_taps(wid.z, o0 + 4u, c0 + 4u, ky, kx0, a11); }
  }
  if (TO > 2u) {
    store_taps(wid.z, o0 + 8u, c0, ky, kx0, a20);
    if (TC > 1u) { store_taps(wid.z, o0 + 8u, c0 + 4u, ky, kx0, a21); }
  }
  if (TO > 3u) {
    store_taps(wid.z, o0 + 12u, c0, ky, kx0, a30);
    if (TC > 1u) { store_taps(wid.z, o0 + 12u, c0 + 4u, ky, kx0, a31); }
  }
}

// ---- window sum / spread (average pooling, nearest upsampling) ----------------------------------

// Windows of k×k at stride s over planes of h×w give ho×wo outputs.
// window_sum:    out[p, oy, ox] = factor · Σ_{ky, kx < k} src[p, oy·s + ky, ox·s + kx]
// window_spread: out[p, y, x]   = factor · Σ_{windows (oy, ox) holding (y, x)} src[p, oy, ox]
// The spread is the adjoint of the sum: avgPool2d is sum-forward / spread-backward and
// upsampleNearest2d (k = s = scale, factor 1) is spread-forward / sum-backward.
struct Window { total: u32, h: u32, w: u32, ho: u32, wo: u32, k: u32, s: u32, factor: f32 }

@group(0) @binding(0) var<storage, read> win_src: array<f32>;
@group(0) @binding(1) var<storage, read_write> win_out: array<f32>;
@group(0) @binding(2) var<uniform> wn: Window;

@compute @workgroup_size(WG)
fn window_sum(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * WG;
  if (i >= wn.total) { return; }
  let ox = i % wn.wo;
  let oy = (i / wn.wo) % wn.ho;
  let plane = i / (wn.wo * wn.ho);
  var acc = 0.0;
  for (var ky = 0u; ky < wn.k; ky++) {
    let at = (plane * wn.h + oy * wn.s + ky) * wn.w + ox * wn.s;
    for (var kx = 0u; kx < wn.k; kx++) {
      acc += win_src[at + kx];
    }
  }
  win_out[i] = acc * wn.factor;
}

// The windows along one axis that hold position `at`: [first, last] (empty when first > last).
fn windows_holding(at: u32, len: u32) -> vec2u {
  let first = select(0u, (at - wn.k + wn.s) / wn.s, at + 1u > wn.k);
  let last = min(at / wn.s, len - 1u);
  return vec2u(first, last);
}

@compute @workgroup_size(WG)
fn window_spread(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * WG;
  if (i >= wn.total) { return; }
  let x = i % wn.w;
  let y = (i / wn.w) % wn.h;
  let plane = i / (wn.w * wn.h);
  let ry = windows_holding(y, wn.ho);
  let rx = windows_holding(x, wn.wo);
  var acc = 0.0;
  for (var oy = ry.x; oy <= ry.y; oy++) {
    for (var ox = rx.x; ox <= rx.y; ox++) {
      acc += win_src[(plane * wn.ho + oy) * wn.wo + ox];
    }
  }
  win_out[i] = acc * wn.factor;
}

// ---- block sum / spread (windows that tile the plane: k = s, h = ho·s, w = wo·s) -----------------

// The common case of the pair above (nearest upsampling, average pooling by its own size), without
// the general kernels' per-element divisions and data-dependent loops: integer division is a scalar
// loop per lane on lavapipe. One invocation per window, its BLOCK × BLOCK values unrolled; the
// planes' window rows are one run (row r of windows covers rows r·BLOCK .. of the stacked planes).
override BLOCK: u32 = 2;

// The first value of window i: its row of windows r covers rows r·BLOCK .. of the stacked planes.
fn block_start(i: u32) -> u32 {
  let row = i / wn.wo;
  return row * BLOCK * wn.w + (i - row * wn.wo) * BLOCK;
}

@compute @workgroup_size(WG)
fn block_sum(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * WG;
  if (i >= wn.total) { return; }
  let at = block_start(i);
  var acc = 0.0;
  for (var ky = 0u; ky < BLOCK; ky++) {
    for (var kx = 0u; kx < BLOCK; kx++) {
      acc += win_src[at + ky * wn.w + kx];
    }
  }
  win_out[i] = acc * wn.factor;
}

@compute @workgroup_size(WG)
fn block_spread(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * WG;
  if (i >= wn.total) { return; }
  let at = block_start(i);
  let v = win_src[i] * wn.factor;
  for (var ky = 0u; ky < BLOCK; ky++) {
    for (var kx = 0u; kx < BLOCK; kx++) {
      win_out[at + ky * wn.w + kx] = v;
    }
  }
}

// ---- im2col (software adapters: the convolution then runs as a texture-fed matmul) ---------------

// cols[r, k] with r = (b·hout + oy)·wout + ox and k = (c·kh + ky)·kw + kx holds
// x[b, c, oy·stride + ky − top, ox·stride + kx − left], or 0 in the padding. One invocation per
// (r, c) writes its kh·kw taps: integer division is a scalar loop per lane on lavapipe, so it is
// done once per window rather than once per element.
struct Im2col {
  total: u32, c: u32, h: u32, w: u32, kh: u32, kw: u32, hout: u32, wout: u32,
  stride: u32, top: u32, left: u32,
}

@group(0) @binding(0) var<storage, read> im2col_src: array<f32>;
@group(0) @binding(1) var<storage, read_write> im2col_out: array<f32>;
@group(0) @binding(2) var<uniform> i2c: Im2col;

@compute @workgroup_size(WG)
fn conv_im2col(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * WG;
  if (i >= i2c.total) { return; }
  let c = i % i2c.c;
  let r = i / i2c.c;
  let ox = r % i2c.wout;
  let t = r / i2c.wout;
  let oy = t % i2c.hout;
  let b = t / i2c.hout;
  let y0 = i32(oy * i2c.stride) - i32(i2c.top);
  let x0 = i32(ox * i2c.stride) - i32(i2c.left);
  let plane = (b * i2c.c + c) * i2c.h;
  var at = i * i2c.kh * i2c.kw;
  for (var ky = 0u; ky < i2c.kh; ky++) {
    let iy = y0 + i32(ky);
    let rowOk = iy >= 0 && iy < i32(i2c.h);
    let row = (plane + u32(max(iy, 0))) * i2c.w;
    for (var kx = 0u; kx < i2c.kw; kx++) {
      let ix = x0 + i32(kx);
      var v = 0.0;
      if (rowOk && ix >= 0 && ix < i32(i2c.w)) {
        v = im2col_src[row + u32(ix)];
      }
      im2col_out[at] = v;
      at++;
    }
  }
}

// ---- weight-gradient batch sum with the bias gradient --------------------------------------------

// The last pass of the im2col weight gradient, with the bias gradient folded in (one dispatch where
// there were two): invocations i < wtotal sum the per-image partial products, dw[i] =
// Σ_b parts[b, i] (parts [n, wtotal]); the next o invocations sum the output gradient over images
// and pixels, db[j] = Σ_b Σ_p dy[b, j, p] (dy [n, o, pixels], n·pixels loop iterations: the host
// keeps that under lavapipe's per-invocation loop budget).
struct WFinish { wtotal: u32, n: u32, o: u32, pixels: u32 }

@group(0) @binding(0) var<storage, read> wfin_parts: array<f32>;
@group(0) @binding(1) var<storage, read> wfin_dy: array<f32>;
@group(0) @binding(2) var<storage, read_write> wfin_dw: array<f32>;
@group(0) @binding(3) var<storage, read_write> wfin_db: array<f32>;
@group(0) @binding(4) var<uniform> wfin: WFinish;

@compute @workgroup_size(WG)
fn conv_wgrad_finish(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * WG;
  if (i < wfin.wtotal) {
    var acc = 0.0;
    for (var b = 0u; b < wfin.n; b++) {
      acc += wfin_parts[b * wfin.wtotal + i];
    }
    wfin_dw[i] = acc;
    return;
  }
  let j = i - wfin.wtotal;
  if (j >= wfin.o) { return; }
  let len = wfin.n * wfin.pixels;
  var acc = 0.0;
  for (var t = 0u; t < len; t++) {
    let b = t / wfin.pixels;
    acc += wfin_dy[(b * wfin.o + j) * wfin.pixels + t % wfin.pixels];
  }
  wfin_db[j] = acc;
}
