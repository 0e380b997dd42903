// Reduction of the middle axis of a tensor viewed as [outer, len, inner]:
// out[o, i] = scale * OP_k x[o, k, i]. OP: 0 sum, 1 max, 2 min.
// lavapipe stops any loop after 65535 iterations per invocation (silently), so the host keeps
// every loop here below that: long axes are split into segments reduced by separate workgroups.

override WG: u32 = 256;
override OP: u32 = 0;

struct Reduce { outer: u32, len: u32, inner: u32, scale: f32, seg: u32 }

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<uniform> p: Reduce;

fn identity() -> f32 {
  switch OP {
    case 1u: { return -3.402823466e+38; }
    case 2u: { return 3.402823466e+38; }
    default: { return 0.0; }
  }
}

fn combine(acc: f32, v: f32) -> f32 {
  switch OP {
    case 1u: { return max(acc, v); }
    case 2u: { return min(acc, v); }
    default: { return acc + v; }
  }
}

@compute @workgroup_size(WG)
fn reduce_serial(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let j = gid.x + gid.y * nwg.x * WG;
  if (j >= p.outer * p.inner) { return; }
  let o = j / p.inner;
  let i = j % p.inner;
  var acc = identity();
  var at = o * p.len * p.inner + i;
  for (var k = 0u; k < p.len; k++) {
    acc = combine(acc, x[at]);
    at += p.inner;
  }
  out[j] = acc * p.scale;
}

var<workgroup> partial: array<f32, WG>;

// One workgroup per (output, segment of `seg` values along the axis); with several segments the
// output is [outer, segments, inner] partials, reduced again by the host.
@compute @workgroup_size(WG)
fn reduce_workgroup(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(local_invocation_index) t: u32,
  @builtin(num_workgroups) nwg: vec3u,
) {
  let j = wid.x + wid.y * nwg.x;
  let part = wid.z;
  let parts = nwg.z;
  // Every invocation of the group takes the same branch: no barrier sits in divergent control.
  let live = j < p.outer * p.inner;
  let o = j / p.inner;
  let i = j % p.inner;
  var acc = identity();
  if (live) {
    let base = o * p.len * p.inner + i;
    let end = min(p.len, (part + 1u) * p.seg);
    for (var k = part * p.seg + t; k < end; k += WG) {
      acc = combine(acc, x[base + k * p.inner]);
    }
  }
  partial[t] = acc;
  workgroupBarrier();
  for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
    if (t < stride) {
      partial[t] = combine(partial[t], partial[t + stride]);
    }
    workgroupBarrier();
  }
  if (t == 0u && live) {
    out[(o * parts + part) * p.inner + i] = partial[0] * p.scale;
  }
}

// Sum over the first and last axes of [outer, len, inner]: out[k] = scale · Σ_o Σ_i x[o, k, i]
// (a convolution's bias gradient over batch and pixels), one invocation per k; p.seg unused.
@compute @workgroup_size(WG)
fn sum_outer_inner(
  @builtin(global_invocation_id) gid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
) {
  let k = gid.x + gid.y * nwg.x * WG;
  if (k >= p.len) { return; }
  var acc = 0.0;
  for (var o = 0u; o < p.outer; o++) {
    let base = (o * p.len + k) * p.inner;
    for (var i = 0u; i < p.inner; i++) {
      acc += x[base + i];
    }
  }
  out[k] = acc * p.scale;
}
