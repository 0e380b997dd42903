// Normalisation kernels shared by layerNorm, groupNorm and batchNorm (lib/tensor/ops/norm.ts).
// The input is seen as [N, C, S] (batch, channels, spatial) with one weight and bias per channel.
// Reductions run in two levels with neither shared memory nor barriers (both are slow on
// lavapipe): one invocation reduces one piece of a group in order (Welford for mean and variance,
// plain sums for the backward), then one invocation per group merges that group's pieces.

override WG: u32 = 256;
override HAS_W: bool = true;
override HAS_B: bool = true;
/** grad_partial: multiply dy by the channel's weight before summing. */
override USE_W: bool = true;
/** grad_input: the statistics are constants (batchNorm in eval mode). */
override CONST_STATS: bool = false;

fn linear_index(gid: vec3u, nwg: vec3u) -> u32 {
  return gid.x + gid.y * nwg.x * WG;
}

// ---- walking the elements of a reduction group ------------------------------------------------

// How each reduction group lies in memory: `outer` runs of `len` consecutive elements, `ostride`
// apart; group g starts at g * gstride. Run o of group g holds channel
// (g % cmod) * cmul + o * cstep and belongs to statistics group g / sdiv + o * sstep. Each group is cut into `pieces` pieces of
// `piece` elements (the last one shorter).
struct Groups {
  groups: u32, outer: u32, len: u32, ostride: u32, gstride: u32,
  cmod: u32, cmul: u32, cstep: u32, sdiv: u32, sstep: u32,
  piece: u32, pieces: u32,
}

// Position of a walk through one piece: element address, index in its run, channel, statistics
// group, and how many elements the piece holds. Advancing needs no division.
struct Cursor { addr: u32, l: u32, c: u32, sg: u32, count: u32 }

// A cursor at the first element of piece j of the grid (piece j % pieces of group j / pieces).
fn piece_start(j: u32, p: Groups) -> Cursor {
  let g = j / p.pieces;
  let k0 = (j % p.pieces) * p.piece;
  let o = k0 / p.len;
  let l = k0 % p.len;
  return Cursor(
    g * p.gstride + o * p.ostride + l,
    l,
    (g % p.cmod) * p.cmul + o * p.cstep,
    g / p.sdiv + o * p.sstep,
    min(p.piece, p.outer * p.len - k0),
  );
}

fn advance(cur: ptr<function, Cursor>, p: Groups) {
  (*cur).addr += 1u;
  (*cur).l += 1u;
  if ((*cur).l == p.len) {
    (*cur).l = 0u;
    (*cur).addr += p.ostride - p.len;
    (*cur).c += p.cstep;
    (*cur).sg += p.sstep;
  }
}

// ---- bindings shared by the kernels that read x with its statistics and weight ----------------

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> stat_mean: array<f32>;
@group(0) @binding(2) var<storage, read> stat_rstd: array<f32>;
@group(0) @binding(3) var<storage, read> weight: array<f32>;

// ---- forward: statistics ---------------------------------------------------------------------

@group(0) @binding(1) var<storage, read_write> stats_parts: array<f32>;
@group(0) @binding(2) var<uniform> sp: Groups;

// Per piece: (mean, sum of squared deviations) by Welford's update, which stays accurate when the
// mean is large against the spread (no E[x²] − E[x]² cancellation).
@compute @workgroup_size(WG)
fn stats_partial(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let j = linear_index(gid, nwg);
  if (j >= sp.groups * sp.pieces) { return; }
  var cur = piece_start(j, sp);
  let count = cur.count;
  var mean = 0.0;
  var m2 = 0.0;
  for (var i = 0u; i < count; i++) {
    let v = x[cur.addr];
    let d = v - mean;
    mean += d / f32(i + 1u);
    m2 += d * (v - mean);
    advance(&cur, sp);
  }
  stats_parts[2u * j] = mean;
  stats_parts[2u * j + 1u] = m2;
}

struct Combine { groups: u32, pieces: u32, piece: u32, count: u32, eps: f32, momentum: f32 }

@group(0) @binding(0) var<storage, read> parts: array<f32>;
@group(0) @binding(1) var<storage, read_write> mean_out: array<f32>;
@group(0) @binding(2) var<storage, read_write> rstd_out: array<f32>;
@group(0) @binding(3) var<uniform> cp: Combine;

// (mean, sum of squared deviations) of group g from its pieces (Chan et al.'s pairwise merge).
fn merge_stats(g: u32, p: Combine) -> vec2f {
  var n = 0.0;
  var mean = 0.0;
  var m2 = 0.0;
  for (var k = 0u; k < p.pieces; k++) {
    let j = g * p.pieces + k;
    let nb = f32(min(p.piece, p.count - k * p.piece));
    let total = n + nb;
    let d = parts[2u * j] - mean;
    mean += d * (nb / total);
    m2 += parts[2u * j + 1u] + d * d * (n * nb / total);
    n = total;
  }
  return vec2f(mean, m2);
}

fn write_stats(g: u32, p: Combine) -> vec2f {
  let s = merge_stats(g, p);
  mean_out[g] = s.x;
  rstd_out[g] = inverseSqrt(s.y / f32(p.count) + p.eps);
  return s;
}

@compute @workgroup_size(WG)
fn stats_combine(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let g = linear_index(gid, nwg);
  if (g >= cp.groups) { return; }
  _ = write_stats(g, cp);
}

// The same, and the running statistics updated in place (batchNorm in training mode, PyTorch
// semantics: momentum weighs the new value; the running variance is the unbiased estimate).
@group(0) @binding(3) var<storage, read_write> run_mean: array<f32>;
@group(0) @binding(4) var<storage, read_write> run_var: array<f32>;
@group(0) @binding(5) var<uniform> rp: Combine;

@compute @workgroup_size(WG)
fn stats_combine_running(
  @builtin(global_invocation_id) gid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
) {
  let g = linear_index(gid, nwg);
  if (g >= rp.groups) { return; }
  let s = write_stats(g, rp);
  let m = rp.momentum;
  run_mean[g] = (1.0 - m) * run_mean[g] + m * s.x;
  run_var[g] = (1.0 - m) * run_var[g] + m * s.y / f32(rp.count - 1u);
}

// ---- element kernels: one element per invocation, or four through vec4 views when aligned -------

struct Elements { n: u32, c: u32, s: u32, adiv: u32, amod: u32, inv_count: f32 }

// (channel, statistics group) of element i: i / S = n·C + c; the group is ((i / S) / adiv) % amod.
fn locate(i: u32, p: Elements) -> vec2u {
  let q = i / p.s;
  return vec2u(q % p.c, (q / p.adiv) % p.amod);
}

// The arithmetic on four lanes (the one-element kernels use lane x); w = 1 and b = 0 when absent.
fn forward4(x: vec4f, mean: vec4f, rstd: vec4f, w: vec4f, b: vec4f) -> vec4f {
  return (x - mean) * rstd * w + b;
}

// dx = rstd · (u − mean_group(u) − xhat · mean_group(u · xhat)), u = dy · w, from the group sums
// s0 = Σ u and s1 = Σ u · xhat; with constant statistics simply u · rstd.
fn backward4(
  x: vec4f, mean: vec4f, rstd: vec4f, w: vec4f, dy: vec4f, s0: vec4f, s1: vec4f, inv_count: f32,
) -> vec4f {
  let u = dy * w;
  if (CONST_STATS) { return u * rstd; }
  let xh = (x - mean) * rstd;
  return rstd * (u - (s0 + xh * s1) * inv_count);
}

fn weight_at(c: u32) -> f32 {
  if (HAS_W) { return weight[c]; }
  return 1.0;
}

@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;
@group(0) @binding(6) var<uniform> ap: Elements;

@compute @workgroup_size(WG)
fn apply(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = linear_index(gid, nwg);
  if (i >= ap.n) { return; }
  let at = locate(i, ap);
  var b = 0.0;
  if (HAS_B) { b = bias[at.x]; }
  let v = forward4(
    vec4f(x[i]), vec4f(stat_mean[at.y]), vec4f(stat_rstd[at.y]), vec4f(weight_at(at.x)), vec4f(b),
  );
  y[i] = v.x;
}

// The vec4 kernels: four consecutive elements share their statistics group and channel when
// S % 4 == 0; when S == 1 their channels are consecutive (CH_VEC), and so are their statistics
// groups for batchNorm (SG_VEC). Lavapipe pays per load instruction, so this quarters the loads.
override CH_VEC: bool = false;
override SG_VEC: bool = false;

@group(0) @binding(0) var<storage, read> x4: array<vec4f>;
@group(0) @binding(1) var<storage, read> mean4: array<vec4f>;
@group(0) @binding(2) var<storage, read> rstd4: array<vec4f>;
@group(0) @binding(3) var<storage, read> weight4: array<vec4f>;

// Four entries of a per-channel or per-group array from the vec4 v holding entry k: k..k+3 when
// `consecutive` (then k % 4 == 0), else entry k four times.
fn spread(v: vec4f, k: u32, consecutive: bool) -> vec4f {
  if (consecutive) { return v; }
  return vec4f(v[k & 3u]);
}

fn weight4_at(c: u32) -> vec4f {
  if (HAS_W) { return spread(weight4[c >> 2u], c, CH_VEC); }
  return vec4f(1.0);
}

@group(0) @binding(4) var<storage, read> bias4: array<vec4f>;
@group(0) @binding(5) var<storage, read_write> y4: array<vec4f>;

@compute @workgroup_size(WG)
fn apply4(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let j = linear_index(gid, nwg);
  if (4u * j >= ap.n) { return; }
  let at = locate(4u * j, ap);
  var b = vec4f(0.0);
  if (HAS_B) { b = spread(bias4[at.x >> 2u], at.x, CH_VEC); }
  let mean = spread(mean4[at.y >> 2u], at.y, SG_VEC);
  let rstd = spread(rstd4[at.y >> 2u], at.y, SG_VEC);
  y4[j] = forward4(x4[j], mean, rstd, weight4_at(at.x), b);
}

// ---- backward ----------------------------------------------------------------------------------

@group(0) @binding(4) var<storage, read> dy: array<f32>;
@group(0) @binding(5) var<storage, read_write> grad_parts: array<f32>;
@group(0) @binding(6) var<uniform> gp: Groups;

// Per piece: (Σ u, Σ u·xhat) with u = dy·weight (USE_W) or dy. The statistics and the weight are
// loaded again only when the walk reaches another group or channel (loads are what lavapipe pays).
@compute @workgroup_size(WG)
fn grad_partial(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let j = linear_index(gid, nwg);
  if (j >= gp.groups * gp.pieces) { return; }
  var cur = piece_start(j, gp);
  let count = cur.count;
  var sg = cur.sg;
  var mean = stat_mean[sg];
  var rstd = stat_rstd[sg];
  var c = cur.c;
  var w = 1.0;
  if (USE_W) { w = weight[c]; }
  var acc = vec2f(0.0);
  for (var i = 0u; i < count; i++) {
    if (cur.sg != sg) {
      sg = cur.sg;
      mean = stat_mean[sg];
      rstd = stat_rstd[sg];
    }
    if (USE_W && cur.c != c) {
      c = cur.c;
      w = weight[c];
    }
    let u = dy[cur.addr] * w;
    acc += vec2f(u, u * (x[cur.addr] - mean) * rstd);
    advance(&cur, gp);
  }
  grad_parts[2u * j] = acc.x;
  grad_parts[2u * j + 1u] = acc.y;
}

@group(0) @binding(1) var<storage, read_write> sum0_out: array<f32>;
@group(0) @binding(2) var<storage, read_write> sum1_out: array<f32>;

@compute @workgroup_size(WG)
fn grad_combine(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let g = linear_index(gid, nwg);
  if (g >= cp.groups) { return; }
  var acc = vec2f(0.0);
  for (var k = 0u; k < cp.pieces; k++) {
    let j = g * cp.pieces + k;
    acc += vec2f(parts[2u * j], parts[2u * j + 1u]);
  }
  sum0_out[g] = acc.x;
  sum1_out[g] = acc.y;
}

@group(0) @binding(5) var<storage, read> gsum0: array<f32>;
@group(0) @binding(6) var<storage, read> gsum1: array<f32>;
@group(0) @binding(7) var<storage, read_write> dx: array<f32>;
@group(0) @binding(8) var<uniform> dp: Elements;

@compute @workgroup_size(WG)
fn grad_input(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = linear_index(gid, nwg);
  if (i >= dp.n) { return; }
  let at = locate(i, dp);
  let g = at.y;
  var s = vec2f(0.0);
  if (!CONST_STATS) { s = vec2f(gsum0[g], gsum1[g]); }
  let v = backward4(
    vec4f(x[i]), vec4f(stat_mean[g]), vec4f(stat_rstd[g]), vec4f(weight_at(at.x)),
    vec4f(dy[i]), vec4f(s.x), vec4f(s.y), dp.inv_count,
  );
  dx[i] = v.x;
}

@group(0) @binding(4) var<storage, read> dy4: array<vec4f>;
@group(0) @binding(5) var<storage, read> gsum0_4: array<vec4f>;
@group(0) @binding(6) var<storage, read> gsum1_4: array<vec4f>;
@group(0) @binding(7) var<storage, read_write> dx4: array<vec4f>;

@compute @workgroup_size(WG)
fn grad_input4(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let j = linear_index(gid, nwg);
  if (4u * j >= dp.n) { return; }
  let at = locate(4u * j, dp);
  let g = at.y;
  var s0 = vec4f(0.0);
  var s1 = vec4f(0.0);
  if (!CONST_STATS) {
    s0 = spread(gsum0_4[g >> 2u], g, SG_VEC);
    s1 = spread(gsum1_4[g >> 2u], g, SG_VEC);
  }
  let mean = spread(mean4[g >> 2u], g, SG_VEC);
  let rstd = spread(rstd4[g >> 2u], g, SG_VEC);
  dx4[j] = backward4(x4[j], mean, rstd, weight4_at(at.x), dy4[j], s0, s1, dp.inv_count);
}
