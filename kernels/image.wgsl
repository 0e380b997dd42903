// Image kernels of the data path. Pixels arrive as the uint8 bytes of an [n, C, H, W] batch packed
// little-endian, 4 per u32 word. Each image has an augmentation record of 8 f32 (see `Aug`): a crop
// box in source pixels, a flip flag and colour-jitter factors. `image_view` resizes each image's
// box to one output view (bilinear, align_corners = false, no antialias, as torchvision's tensor
// resize), flips it, and normalises per channel; colour jitter is applied to the source pixels
// before interpolation (BEiT jitters the whole image, then crops), in the fixed order brightness →
// contrast → saturation. Contrast blends towards the mean grey level of the whole brightness-adjusted
// image, which `image_stats` computes first.

override WG: u32 = 64;
/** Channels: 1 (grey) or 3 (RGB). */
override C: u32 = 3;
/** False when every factor is 1: no jitter arithmetic, and `image_stats` is not needed. */
override JITTER: bool = true;
/** Output pixels per `image_view` invocation along x: they share the record, row taps and mean. */
override RUN: u32 = 8;

struct Image {
  n: u32, h: u32, w: u32, oh: u32, ow: u32,
  mean0: f32, mean1: f32, mean2: f32,
  istd0: f32, istd1: f32, istd2: f32,
}

struct Aug {
  top: f32, left: f32, bh: f32, bw: f32,
  flip: f32, brightness: f32, contrast: f32, saturation: f32,
}

// torchvision's rgb_to_grayscale weights.
const GREY = vec3f(0.2989, 0.587, 0.114);

@group(0) @binding(0) var<storage, read> pixels: array<u32>;
@group(0) @binding(1) var<storage, read> augs: array<f32>;

fn aug_of(b: u32) -> Aug {
  let o = b * 8u;
  return Aug(
    augs[o], augs[o + 1u], augs[o + 2u], augs[o + 3u],
    augs[o + 4u], augs[o + 5u], augs[o + 6u], augs[o + 7u],
  );
}

fn byte_at(k: u32) -> f32 {
  return f32((pixels[k >> 2u] >> ((k & 3u) * 8u)) & 0xffu);
}

// Pixel (y, x) of image b in [0, 1]; unused channels are 0.
fn pixel(b: u32, y: u32, x: u32, h: u32, w: u32) -> vec3f {
  let plane = h * w;
  let k = b * C * plane + y * w + x;
  var v = vec3f(byte_at(k), 0.0, 0.0);
  if (C == 3u) {
    v.y = byte_at(k + plane);
    v.z = byte_at(k + 2u * plane);
  }
  return v * (1.0 / 255.0);
}

fn grey(v: vec3f) -> f32 {
  if (C == 3u) { return dot(v, GREY); }
  return v.x;
}

fn brighten(v: vec3f, a: Aug) -> vec3f {
  return clamp(v * a.brightness, vec3f(0.0), vec3f(1.0));
}

// torchvision's adjust_brightness, adjust_contrast, adjust_saturation: each a clamped blend.
fn jitter(v: vec3f, a: Aug, grey_mean: f32) -> vec3f {
  var u = brighten(v, a);
  u = clamp(a.contrast * u + (1.0 - a.contrast) * grey_mean, vec3f(0.0), vec3f(1.0));
  if (C == 3u) {
    u = clamp(a.saturation * u + (1.0 - a.saturation) * grey(u), vec3f(0.0), vec3f(1.0));
  }
  return u;
}

fn linear_index(gid: vec3u, nwg: vec3u) -> u32 {
  return gid.x + gid.y * nwg.x * WG;
}

// Mean grey level of each brightness-adjusted image: one workgroup per image. Brightening acts
// on each channel alone and the grey level is linear in the channels, so the mean is a weighted
// sum over the image's bytes, read 4 per word: each byte's channel is found by comparing its
// position with the plane boundaries (no integer division, which is slow on CPU adapters).
@group(0) @binding(2) var<storage, read_write> stats_out: array<f32>;
@group(0) @binding(3) var<uniform> sp: Image;

var<workgroup> partial: array<f32, WG>;

fn channel_weight(c: u32) -> f32 {
  if (C == 3u) { return GREY[c]; }
  return 1.0;
}

@compute @workgroup_size(WG)
fn image_stats(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(local_invocation_index) t: u32,
  @builtin(num_workgroups) nwg: vec3u,
) {
  let b = wid.x + wid.y * nwg.x;
  // The whole group takes the same branch, so the barriers below are in uniform control flow.
  let live = b < sp.n;
  var acc = 0.0;
  if (live) {
    let brightness = aug_of(b).brightness;
    let plane = sp.h * sp.w;
    let start = b * C * plane;
    let end = start + C * plane;
    for (var word = start / 4u + t; word * 4u < end; word += WG) {
      let bits = pixels[word];
      for (var j = 0u; j < 4u; j++) {
        let k = word * 4u + j;
        if (k >= start && k < end) {
          let c = select(0u, 1u, k >= start + plane) + select(0u, 1u, k >= start + 2u * plane);
          let v = f32((bits >> (j * 8u)) & 0xffu) * (1.0 / 255.0);
          acc += channel_weight(c) * clamp(v * brightness, 0.0, 1.0);
        }
      }
    }
  }
  partial[t] = acc;
  workgroupBarrier();
  for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
    if (t < stride) { partial[t] += partial[t + stride]; }
    workgroupBarrier();
  }
  if (t == 0u && live) { stats_out[b] = partial[0] / f32(sp.h * sp.w); }
}

// Source taps of output coordinate o along an axis of `len` box pixels resized to `out_len`:
// PyTorch's area_pixel_compute_source_index (align_corners = false, clamped at 0).
struct Taps { i0: u32, i1: u32, frac: f32 }

fn taps(o: u32, out_len: u32, len: u32) -> Taps {
  let src = max((f32(o) + 0.5) * (f32(len) / f32(out_len)) - 0.5, 0.0);
  let i0 = min(u32(src), len - 1u);
  return Taps(i0, min(i0 + 1u, len - 1u), src - f32(i0));
}

@group(0) @binding(2) var<storage, read> stats: array<f32>;
@group(0) @binding(3) var<storage, read_write> view_out: array<f32>;
@group(0) @binding(4) var<uniform> vp: Image;

// One invocation per run of RUN output pixels of one row of one image, all channels:
// out [n, C, oh, ow]. Runs are numbered densely, so small views leave no lanes idle.
@compute @workgroup_size(WG)
fn image_view(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let runs = (vp.ow + RUN - 1u) / RUN;
  let i = linear_index(gid, nwg);
  if (i >= vp.n * vp.oh * runs) { return; }
  let first = (i % runs) * RUN;
  let oy = (i / runs) % vp.oh;
  let b = i / (runs * vp.oh);
  let a = aug_of(b);
  let ty = taps(oy, vp.oh, u32(a.bh));
  let y0 = u32(a.top) + ty.i0;
  let y1 = u32(a.top) + ty.i1;
  let grey_mean = select(0.0, stats[b], JITTER);
  let mean = vec3f(vp.mean0, vp.mean1, vp.mean2);
  let istd = vec3f(vp.istd0, vp.istd1, vp.istd2);
  let plane = vp.oh * vp.ow;
  let row = b * C * plane + oy * vp.ow;
  for (var ox = first; ox < min(first + RUN, vp.ow); ox++) {
    let sx = select(ox, vp.ow - 1u - ox, a.flip > 0.5);
    let tx = taps(sx, vp.ow, u32(a.bw));
    let x0 = u32(a.left) + tx.i0;
    let x1 = u32(a.left) + tx.i1;
    var p00 = pixel(b, y0, x0, vp.h, vp.w);
    var p01 = pixel(b, y0, x1, vp.h, vp.w);
    var p10 = pixel(b, y1, x0, vp.h, vp.w);
    var p11 = pixel(b, y1, x1, vp.h, vp.w);
    if (JITTER) {
      p00 = jitter(p00, a, grey_mean);
      p01 = jitter(p01, a, grey_mean);
      p10 = jitter(p10, a, grey_mean);
      p11 = jitter(p11, a, grey_mean);
    }
    let v = (1.0 - ty.frac) * ((1.0 - tx.frac) * p00 + tx.frac * p01) +
      ty.frac * ((1.0 - tx.frac) * p10 + tx.frac * p11);
    let normed = (v - mean) * istd;
    view_out[row + ox] = normed.x;
    if (C == 3u) {
      view_out[row + plane + ox] = normed.y;
      view_out[row + 2u * plane + ox] = normed.z;
    }
  }
}
