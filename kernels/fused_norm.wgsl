// Fused layer and group normalisation (lib/tensor/ops/fused_norm.ts). x is [N, C, S] with G groups
// of Cg = C / G channels; statistics group j = n·G + g covers Cg·S consecutive elements (layerNorm:
// [rows, D, 1] with one group). One invocation per statistics group computes its mean and variance
// (two passes, the first shifted by the group's first value: accurate when the mean is large
// against the spread) and writes y, the mean and 1/sqrt(var + eps) in the same dispatch; the
// backward computes dx per group in one dispatch, and the weight and bias gradients per channel (one
// invocation per channel and piece of samples, the pieces merged by a second dispatch when there
// are several). With ACT = 1 (2) the op is groupNorm followed by SiLU (ReLU): the forward writes
// act(z) of the normalised z, and the backward recomputes z to take the activation's derivative
// first (no stored z, no separate activation kernels). No shared memory, no barriers: both are slow on lavapipe.
//
// x, y, dy and dx are arrays of V: f32, or vec4f where S is a multiple of 4 (fused_norm.ts puts
// one of the two headers before this source: alias V, LANES elements per V, hsum(v) the sum of
// v's elements, first(v) its first). On lavapipe a storage load or store costs about the same per
// lane whatever its width, so the vec4 kernels make a quarter of the memory accesses.

override WG: u32 = 64;
override HAS_W: bool = true;
override HAS_B: bool = true;
// 0: y = z; 1: y = silu(z); 2: y = relu(z).
override ACT: u32 = 0;

fn linear_index(gid: vec3u, nwg: vec3u) -> u32 {
  return gid.x + gid.y * nwg.x * WG;
}

// groups: N·G; cg: channels per group; s: elements per channel; g: groups per sample.
struct Norm { groups: u32, cg: u32, s: u32, g: u32, eps: f32, inv_count: f32 }

@group(0) @binding(0) var<storage, read> x: array<V>;
@group(0) @binding(1) var<storage, read> weight: array<f32>;

fn weight_at(c: u32) -> f32 {
  if (HAS_W) { return weight[c]; }
  return 1.0;
}

fn activate(z: V) -> V {
  if (ACT == 1u) { return z / (1.0 + exp(-z)); }
  if (ACT == 2u) { return max(z, V(0.0)); }
  return z;
}

// d activate(z) / dz.
fn activate_grad(z: V) -> V {
  if (ACT == 1u) {
    let s = 1.0 / (1.0 + exp(-z));
    return s * (1.0 + z * (1.0 - s));
  }
  if (ACT == 2u) { return select(V(0.0), V(1.0), z > V(0.0)); }
  return V(1.0);
}

// The bias of channel c (0 without one), for the forward and for ACT's recomputed z.
@group(0) @binding(2) var<storage, read> bias: array<f32>;

fn bias_at(c: u32) -> f32 {
  if (HAS_B) { return bias[c]; }
  return 0.0;
}

// ---- forward ------------------------------------------------------------------------------------

@group(0) @binding(3) var<storage, read_write> y: array<V>;
@group(0) @binding(4) var<storage, read_write> mean_out: array<f32>;
@group(0) @binding(5) var<storage, read_write> rstd_out: array<f32>;
@group(0) @binding(6) var<uniform> fp: Norm;

@compute @workgroup_size(WG)
fn forward(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let j = linear_index(gid, nwg);
  if (j >= fp.groups) { return; }
  // Vs per group and per channel.
  let count = fp.cg * fp.s / LANES;
  let sv = fp.s / LANES;
  let base = j * count;
  // Summed relative to the group's first value: a large common offset adds no rounding error.
  let shift = first(x[base]);
  var sum = 0.0;
  for (var i = 0u; i < count; i++) {
    sum += hsum(x[base + i] - V(shift));
  }
  let mean = shift + sum * fp.inv_count;
  var m2 = 0.0;
  for (var i = 0u; i < count; i++) {
    let dv = x[base + i] - V(mean);
    m2 += hsum(dv * dv);
  }
  let rstd = inverseSqrt(m2 * fp.inv_count + fp.eps);
  mean_out[j] = mean;
  rstd_out[j] = rstd;
  let c0 = (j % fp.g) * fp.cg;
  var at = base;
  for (var ci = 0u; ci < fp.cg; ci++) {
    let scale = rstd * weight_at(c0 + ci);
    let b = bias_at(c0 + ci);
    for (var k = 0u; k < sv; k++) {
      y[at] = activate((x[at] - V(mean)) * scale + V(b));
      at++;
    }
  }
}

// ---- backward: dx -------------------------------------------------------------------------------

@group(0) @binding(3) var<storage, read> stat_mean: array<f32>;
@group(0) @binding(4) var<storage, read> stat_rstd: array<f32>;
@group(0) @binding(5) var<storage, read> dy: array<V>;
// With ACC, dx also adds the gradient x already had from its other consumers (autograd's prior).
override ACC: bool = false;
@group(0) @binding(6) var<storage, read> prior: array<V>;
@group(0) @binding(7) var<storage, read_write> dx: array<V>;
@group(0) @binding(8) var<uniform> bp: Norm;

// dz: the gradient that reaches z = xhat · w + b (through the activation when there is one).
fn dz_at(at: u32, xh: V, w: f32, b: f32) -> V {
  if (ACT == 0u) { return dy[at]; }
  return dy[at] * activate_grad(xh * w + V(b));
}

// dx = rstd · (u − mean(u) − xhat · mean(u · xhat)), u = dz · w, means over the group.
@compute @workgroup_size(WG)
fn grad_input(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let j = linear_index(gid, nwg);
  if (j >= bp.groups) { return; }
  let sv = bp.s / LANES;
  let base = j * bp.cg * sv;
  let c0 = (j % bp.g) * bp.cg;
  let mean = stat_mean[j];
  let rstd = stat_rstd[j];
  var s0 = 0.0;
  var s1 = 0.0;
  var at = base;
  for (var ci = 0u; ci < bp.cg; ci++) {
    let w = weight_at(c0 + ci);
    let b = bias_at(c0 + ci);
    for (var k = 0u; k < sv; k++) {
      let xh = (x[at] - V(mean)) * rstd;
      let u = dz_at(at, xh, w, b) * w;
      s0 += hsum(u);
      s1 += hsum(u * xh);
      at++;
    }
  }
  s0 *= bp.inv_count;
  s1 *= bp.inv_count;
  at = base;
  for (var ci = 0u; ci < bp.cg; ci++) {
    let w = weight_at(c0 + ci);
    let b = bias_at(c0 + ci);
    for (var k = 0u; k < sv; k++) {
      let xh = (x[at] - V(mean)) * rstd;
      var v = rstd * (dz_at(at, xh, w, b) * w - V(s0) - xh * s1);
      if (ACC) { v += prior[at]; }
      dx[at] = v;
      at++;
    }
  }
}

// ---- backward: weight and bias ------------------------------------------------------------------

// Invocation (piece k, channel c) sums dy · xhat and dy over samples [k·piece, (k+1)·piece) and
// the channel's S elements; with pieces (PIECES) into partials[(k·C + c)·2 + {0, 1}] (bound as the
// weight gradient; the bias gradient's binding is unused), else into the weight and bias gradients.
override PIECES: bool = true;
// n: samples; c: channels; cg, s, g as in Norm.
struct Channels { n: u32, c: u32, cg: u32, s: u32, g: u32, piece: u32, pieces: u32 }

// Bindings 0–2 as above (x, weight, bias: ACT recomputes z), then the statistics and dy.
@group(0) @binding(3) var<storage, read> c_mean: array<f32>;
@group(0) @binding(4) var<storage, read> c_rstd: array<f32>;
@group(0) @binding(5) var<storage, read> c_dy: array<V>;
@group(0) @binding(6) var<storage, read_write> gw_out: array<f32>;
@group(0) @binding(7) var<storage, read_write> gb_out: array<f32>;
@group(0) @binding(8) var<uniform> cp: Channels;

@compute @workgroup_size(WG)
fn grad_params(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let j = linear_index(gid, nwg);
  if (j >= cp.c * cp.pieces) { return; }
  let c = j % cp.c;
  let k = j / cp.c;
  let first = k * cp.piece;
  let last = min(first + cp.piece, cp.n);
  let group = c / cp.cg;
  let w = weight_at(c);
  let b = bias_at(c);
  var sw = 0.0;
  var sb = 0.0;
  for (var n = first; n < last; n++) {
    let stat = n * cp.g + group;
    let mean = c_mean[stat];
    let rstd = c_rstd[stat];
    let sv = cp.s / LANES;
    let base = (n * cp.c + c) * sv;
    for (var e = 0u; e < sv; e++) {
      let xh = (x[base + e] - V(mean)) * rstd;
      var g = c_dy[base + e];
      if (ACT != 0u) { g *= activate_grad(xh * w + V(b)); }
      sw += hsum(g * xh);
      sb += hsum(g);
    }
  }
  if (PIECES) {
    gw_out[2u * j] = sw;
    gw_out[2u * j + 1u] = sb;
  } else {
    gw_out[c] = sw;
    gb_out[c] = sb;
  }
}

@group(0) @binding(0) var<storage, read> partials: array<f32>;
@group(0) @binding(1) var<storage, read_write> gw_sum: array<f32>;
@group(0) @binding(2) var<storage, read_write> gb_sum: array<f32>;
@group(0) @binding(3) var<uniform> mp: Channels;

@compute @workgroup_size(WG)
fn grad_params_merge(
  @builtin(global_invocation_id) gid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
) {
  let c = linear_index(gid, nwg);
  if (c >= mp.c) { return; }
  var sw = 0.0;
  var sb = 0.0;
  for (var k = 0u; k < mp.pieces; k++) {
    let j = k * mp.c + c;
    sw += partials[2u * j];
    sb += partials[2u * j + 1u];
  }
  gw_sum[c] = sw;
  gb_sum[c] = sb;
}
