// Softmax and log-softmax along one axis, and their gradients. The tensor is viewed as
// [outer, len, inner] and a "row" is the len values x[o, :, i] (stride inner), so any axis works
// without a transpose. LOG selects log-softmax. Two ways to walk a row:
// - `*_rows`: one invocation per row, serial over it. On lavapipe invocations are SIMD lanes and
//   barriers are slow, so this is the fast layout there, and on GPUs for short rows.
// - `*_wg`: one workgroup per row, strided over it, partial results merged in workgroup memory:
//   long rows on GPUs.
// Both compute (log-)softmax(scale · x): attention folds its 1/√d into the softmax this way rather
// than scaling q with a pass of its own.
// The forward pass keeps a running (max, Σ exp(x − max)) pair, rescaled whenever the max grows,
// so it reads x twice (once for the statistics, once to write) instead of three times.

override WG: u32 = 256;
override LOG: bool = false;

struct Params { outer: u32, len: u32, inner: u32, scale: f32 }

// Index of element 0 of row r.
fn row_start(r: u32, len: u32, inner: u32) -> u32 {
  return (r / inner) * len * inner + r % inner;
}

// Merges two (max, sum of exp(v − max)) pairs.
fn merge(s: vec2f, t: vec2f) -> vec2f {
  let m = max(s.x, t.x);
  return vec2f(m, s.y * exp(s.x - m) + t.y * exp(t.x - m));
}

// The empty pair: the lowest finite max (not −inf, whose differences would give NaN).
const EMPTY = vec2f(-3.402823466e+38, 0.0);

fn softmax_value(v: f32, stats: vec2f) -> f32 {
  if (LOG) { return v - stats.x - log(stats.y); }
  return exp(v - stats.x) / stats.y;
}

// Gradient: softmax dx = y·(g − Σ g·y); log-softmax dx = g − exp(y)·Σ g.
fn grad_term(y: f32, g: f32) -> f32 {
  if (LOG) { return g; }
  return g * y;
}

fn grad_value(y: f32, g: f32, total: f32) -> f32 {
  if (LOG) { return g - exp(y) * total; }
  return y * (g - total);
}

// ---- forward --------------------------------------------------------------------------------

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<uniform> fp: Params;

@compute @workgroup_size(WG)
fn softmax_rows(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let r = gid.x + gid.y * nwg.x * WG;
  if (r >= fp.outer * fp.inner) { return; }
  let start = row_start(r, fp.len, fp.inner);
  var stats = EMPTY;
  for (var j = 0u; j < fp.len; j++) {
    stats = merge(stats, vec2f(x[start + j * fp.inner] * fp.scale, 1.0));
  }
  for (var j = 0u; j < fp.len; j++) {
    let at = start + j * fp.inner;
    y[at] = softmax_value(x[at] * fp.scale, stats);
  }
}

// softmax_rows reading x from a flat texture (software adapters, rows contiguous: inner = 1; the
// host appends flat_value from lib/tensor/ops/flat.ts). On lavapipe a texel fetch costs less than
// half of a storage load, and x is read twice.
@group(0) @binding(0) var xt: texture_2d<f32>;

@compute @workgroup_size(WG)
fn softmax_rows_tex(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let r = gid.x + gid.y * nwg.x * WG;
  if (r >= fp.outer) { return; }
  let start = r * fp.len;
  var stats = EMPTY;
  for (var j = 0u; j < fp.len; j++) {
    stats = merge(stats, vec2f(flat_value(xt, start + j) * fp.scale, 1.0));
  }
  for (var j = 0u; j < fp.len; j++) {
    y[start + j] = softmax_value(flat_value(xt, start + j) * fp.scale, stats);
  }
}

var<workgroup> pairs: array<vec2f, WG>;

@compute @workgroup_size(WG)
fn softmax_wg(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(local_invocation_index) t: u32,
  @builtin(num_workgroups) nwg: vec3u,
) {
  // Every invocation of a group takes the same branch: no barrier sits in divergent control.
  let r = wid.x + wid.y * nwg.x;
  let live = r < fp.outer * fp.inner;
  let start = row_start(r, fp.len, fp.inner);
  var stats = EMPTY;
  if (live) {
    for (var j = t; j < fp.len; j += WG) {
      stats = merge(stats, vec2f(x[start + j * fp.inner] * fp.scale, 1.0));
    }
  }
  pairs[t] = stats;
  workgroupBarrier();
  for (var half = WG / 2u; half > 0u; half /= 2u) {
    if (t < half) { pairs[t] = merge(pairs[t], pairs[t + half]); }
    workgroupBarrier();
  }
  let total = pairs[0];
  if (live) {
    for (var j = t; j < fp.len; j += WG) {
      let at = start + j * fp.inner;
      y[at] = softmax_value(x[at] * fp.scale, total);
    }
  }
}

// ---- backward: bindings y (the forward output), g (its gradient), dx --------------------------

@group(0) @binding(0) var<storage, read> by: array<f32>;
@group(0) @binding(1) var<storage, read> bg: array<f32>;
@group(0) @binding(2) var<storage, read_write> bdx: array<f32>;
@group(0) @binding(3) var<uniform> bp: Params;

@compute @workgroup_size(WG)
fn softmax_grad_rows(
  @builtin(global_invocation_id) gid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
) {
  let r = gid.x + gid.y * nwg.x * WG;
  if (r >= bp.outer * bp.inner) { return; }
  let start = row_start(r, bp.len, bp.inner);
  var total = 0.0;
  for (var j = 0u; j < bp.len; j++) {
    let at = start + j * bp.inner;
    total += grad_term(by[at], bg[at]);
  }
  for (var j = 0u; j < bp.len; j++) {
    let at = start + j * bp.inner;
    bdx[at] = grad_value(by[at], bg[at], total) * bp.scale;
  }
}

var<workgroup> sums: array<f32, WG>;

@compute @workgroup_size(WG)
fn softmax_grad_wg(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(local_invocation_index) t: u32,
  @builtin(num_workgroups) nwg: vec3u,
) {
  let r = wid.x + wid.y * nwg.x;
  let live = r < bp.outer * bp.inner;
  let start = row_start(r, bp.len, bp.inner);
  var total = 0.0;
  if (live) {
    for (var j = t; j < bp.len; j += WG) {
      let at = start + j * bp.inner;
      total += grad_term(by[at], bg[at]);
    }
  }
  sums[t] = total;
  workgroupBarrier();
  for (var half = WG / 2u; half > 0u; half /= 2u) {
    if (t < half) { sums[t] += sums[t + half]; }
    workgroupBarrier();
  }
  let rowTotal = sums[0];
  if (live) {
    for (var j = t; j < bp.len; j += WG) {
      let at = start + j * bp.inner;
      bdx[at] = grad_value(by[at], bg[at], rowTotal) * bp.scale;
    }
  }
}
