// Convolution as window products (software adapters; see lib/tensor/ops/conv_windows.ts): the input
// packed once into a texture the product reads every window from, and the weight re-laid in the
// order the product walks a window (tap, then channel).

override WG: u32 = 64;
// Texels per row of a flat texture (FLAT_TEXELS of lib/tensor/ops/flat.ts, passed by conv_windows.ts).
override FLAT_TEXELS: u32 = 256;

// ---- packed image ------------------------------------------------------------------------------

// Texel (x·c4 + cg, z·hp + y) = channels 4·cg .. 4·cg + 3 of src[z, ·, sy, sx] (src [N, c, h, w],
// c4 = ⌈c / 4⌉, channels past c zeros), with sy = (y − top) / dil when that is a whole in-range
// index (sx alike), else zeros: the input padded for the forward, or the output gradient dilated
// by the stride and padded for the input gradient. The texels go to a buffer of rows `pitch` texels
// apart (a multiple of 16: 256 bytes, the row pitch of a buffer → texture copy), kept as a tensor
// where the weight gradient needs it again, and copied into a texture where a product reads it.
// One invocation per texel, an image's texels one run along x and the images along y (then z past a
// grid's 65535 rows); the channel-group count C4 and the dilation DIL are compile-time constants,
// so a texel costs one division by a runtime value (integer division is a scalar loop per lane on
// lavapipe). Measured there, MNIST tokenizer, a convolution's two packs (forward, input gradient)
// against the previous grid of all texels as one run (six runtime divisions per texel): 28² C 16
// 1918 → 1227 µs, 14² C 32 1171 → 764, 7² 391 → 311. One invocation per pixel looping over its c4
// texels ran slower (Mesa 22.3: 5.7–20 ms against 4.5 ms at [8, 16, 30, 30]), and so did an 8 × 8
// grid per image (see docs/architecture.md).
override C4: u32 = 4;
override DIL: i32 = 1;

struct Pack { images: u32, h: u32, w: u32, hp: u32, wp: u32, top: i32, left: i32, pitch: u32, c: u32 }

@group(0) @binding(0) var<storage, read> pack_src: array<f32>;
@group(0) @binding(1) var<storage, read_write> pack_rows: array<vec4f>;
@group(0) @binding(2) var<uniform> pk: Pack;

// Source index along one axis, or -1 where the texel holds zeros.
fn pack_source(at: u32, before: i32, len: u32) -> i32 {
  let d = i32(at) - before;
  if (d < 0 || d % DIL != 0) { return -1; }
  let s = d / DIL;
  return select(-1, s, s < i32(len));
}

// Channels ch .. ch + 3 of src[z] at plane offset `at` (those past c are zeros: the last texel of a
// channel count that is not a multiple of 4). The weight taps are zeros there too: either alone
// keeps finite values out of the sums, both keep out 0 · ∞ (another image's channel, or whatever
// lies past the weight).
fn pack_texel(z: u32, ch: u32, at: u32) -> vec4f {
  let plane = pk.h * pk.w;
  let first = (z * pk.c + ch) * plane + at;
  var v = vec4f(0.0);
  for (var k = 0u; k < 4u; k++) {
    if (ch + k < pk.c) { v[k] = pack_src[first + k * plane]; }
  }
  return v;
}

@compute @workgroup_size(WG)
fn conv_pack_windows(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let row = pk.wp * C4;
  let i = gid.x;
  let z = gid.y + gid.z * nwg.y;
  if (i >= row * pk.hp || z >= pk.images) { return; }
  let y = i / row;
  let tx = i - y * row;
  let sy = pack_source(y, pk.top, pk.h);
  let sx = pack_source(tx / C4, pk.left, pk.w);
  var v = vec4f(0.0);
  if (sy >= 0 && sx >= 0) {
    v = pack_texel(z, (tx % C4) * 4u, u32(sy) * pk.w + u32(sx));
  }
  pack_rows[(z * pk.hp + y) * pk.pitch + tx] = v;
}

// ---- weight in window order --------------------------------------------------------------------

// out[o, t, c] = w(o, c, ky, kx), t = ky·kw + kx, with w(o, c, ky, kx) = w[base + o·so + c·sc +
// ky·sky + kx·skx] (the strides also express the transposed, flipped weight of the input gradient),
// written as a flat texture (texel i at (i mod 256, ⌊i / 256⌋): see lib/tensor/ops/flat.ts), which
// the product reads: no buffer, no copy. One invocation per texel: channels 4·j .. 4·j + 3 of one
// (o, t), zeros past cin.
struct Taps { texels: u32, base: i32, so: i32, sc: i32, sky: i32, skx: i32, cin: u32 }

@group(0) @binding(0) var<storage, read> taps_src: array<f32>;
@group(0) @binding(1) var taps_out: texture_storage_2d<rgba32float, write>;
@group(0) @binding(2) var<uniform> tp: Taps;

// The channel-group count C4 and the kernel's KH × KW are compile-time constants: no division by a
// runtime value.
override KH: u32 = 3;
override KW: u32 = 3;

@compute @workgroup_size(WG)
fn conv_weight_taps(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * WG;
  if (i >= tp.texels) { return; }
  let j = i % C4;
  let t = (i / C4) % (KH * KW);
  let o = i / (C4 * KH * KW);
  let ky = t / KW;
  let kx = t - ky * KW;
  let at = tp.base + i32(o) * tp.so + i32(4u * j) * tp.sc + i32(ky) * tp.sky + i32(kx) * tp.skx;
  var v = vec4f(0.0);
  for (var k = 0u; k < 4u; k++) {
    if (4u * j + k < tp.cin) { v[k] = taps_src[at + i32(k) * tp.sc]; }
  }
  textureStore(taps_out, vec2i(i32(i % FLAT_TEXELS), i32(i / FLAT_TEXELS)), v);
}
