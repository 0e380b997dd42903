// Loss kernels (lib/tensor/ops/loss.ts): cross-entropy per row with label smoothing and a mask,
// and the elementwise pair losses (squared and absolute error) summed in interleaved pieces.

override WG: u32 = 256;
override HAS_MASK: bool = false;
/** Pair loss: 0 squared error, 1 absolute error. */
override OP: u32 = 0;

fn linear_index(gid: vec3u, nwg: vec3u) -> u32 {
  return gid.x + gid.y * nwg.x * WG;
}

// ---- cross-entropy ---------------------------------------------------------------------------

// n rows of k logits; smoothing ε: the target distribution is (1 − ε)·onehot + ε/k.
struct Ce { n: u32, k: u32, smoothing: f32 }

@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read> targets: array<i32>;

fn valid_target(r: u32, k: u32) -> bool {
  let t = targets[r];
  return t >= 0 && u32(t) < k;
}

@group(0) @binding(2) var<storage, read> mask: array<f32>;
@group(0) @binding(3) var<storage, read_write> rows: array<f32>;
@group(0) @binding(4) var<storage, read_write> lse_out: array<f32>;
@group(0) @binding(5) var<uniform> cp: Ce;

// One invocation per row: log-sum-exp after subtracting the row max (no overflow), then
//   rows[r] = w·(lse − (1 − ε)·z_t − ε·mean(z)),  rows[n + r] = w,  rows[2n + r] = w·[argmax = t],
// where w is the row's mask (1 without one), and 0 when its target is outside [0, k): such a row
// counts as masked out (like PyTorch's ignore_index) and its logits at the target are never read.
// The argmax is the first index of the row's largest value (NaN skipped unless first), as argmax
// in kernels/reduce_index.wgsl.
@compute @workgroup_size(WG)
fn ce_rows(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let r = linear_index(gid, nwg);
  if (r >= cp.n) { return; }
  let base = r * cp.k;
  var top = logits[base];
  var total = 0.0;
  var best = top;
  var at = 0u;
  for (var j = 0u; j < cp.k; j++) {
    let v = logits[base + j];
    top = max(top, v);
    total += v;
    if (v > best) {
      best = v;
      at = j;
    }
  }
  var sum_exp = 0.0;
  for (var j = 0u; j < cp.k; j++) {
    sum_exp += exp(logits[base + j] - top);
  }
  let lse = top + log(sum_exp);
  lse_out[r] = lse;
  var w = 0.0;
  if (valid_target(r, cp.k)) {
    w = 1.0;
    if (HAS_MASK) { w = mask[r]; }
  }
  var loss = 0.0;
  if (w != 0.0) {
    let zt = logits[base + u32(targets[r])];
    loss = w * (lse - (1.0 - cp.smoothing) * zt - cp.smoothing * total / f32(cp.k));
  }
  rows[r] = loss;
  rows[cp.n + r] = w;
  var hit = 0.0;
  if (w != 0.0 && at == u32(targets[r])) { hit = w; }
  rows[2u * cp.n + r] = hit;
}

// The mean: Σ w·loss / Σ w, and 0 (not NaN) when no row counts.
@group(0) @binding(0) var<storage, read> row_sums: array<f32>;
@group(0) @binding(1) var<storage, read_write> mean_out: array<f32>;

@compute @workgroup_size(1)
fn ce_finish() {
  let count = row_sums[1];
  mean_out[0] = select(0.0, row_sums[0] / count, count > 0.0);
}

// The mean and the accuracy Σ w·hit / Σ w (0 when no row counts), in one invocation.
@group(0) @binding(2) var<storage, read_write> accuracy_out: array<f32>;

@compute @workgroup_size(1)
fn ce_finish_accuracy() {
  let count = row_sums[1];
  mean_out[0] = select(0.0, row_sums[0] / count, count > 0.0);
  accuracy_out[0] = select(0.0, row_sums[2] / count, count > 0.0);
}

@group(0) @binding(2) var<storage, read> rows_in: array<f32>;
@group(0) @binding(3) var<storage, read> lse_in: array<f32>;
@group(0) @binding(4) var<storage, read> sums_in: array<f32>;
@group(0) @binding(5) var<storage, read> grad_out: array<f32>;
@group(0) @binding(6) var<storage, read_write> dlogits: array<f32>;
@group(0) @binding(7) var<uniform> gp: Ce;

// dz = g · w / Σw · (softmax(z) − target distribution). One invocation per run of RUN columns of
// a row, so the row's values are loaded once per run (lavapipe pays per load).
const RUN: u32 = 16u;

@compute @workgroup_size(WG)
fn ce_grad(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let j = linear_index(gid, nwg);
  let runs = (gp.k + RUN - 1u) / RUN;
  if (j >= gp.n * runs) { return; }
  let r = j / runs;
  let start = r * gp.k + (j % runs) * RUN;
  let end = min(start + RUN, (r + 1u) * gp.k);
  let w = rows_in[gp.n + r];
  let count = sums_in[1];
  if (w == 0.0 || !(count > 0.0)) {
    for (var i = start; i < end; i++) { dlogits[i] = 0.0; }
    return;
  }
  let coef = grad_out[0] * (w / count);
  let lse = lse_in[r];
  let hit = r * gp.k + u32(targets[r]);
  let floor = gp.smoothing / f32(gp.k);
  for (var i = start; i < end; i++) {
    let q = select(floor, floor + 1.0 - gp.smoothing, i == hit);
    dlogits[i] = coef * (exp(logits[i] - lse) - q);
  }
}

// ---- pair losses: mean of (a − b)² or |a − b| ------------------------------------------------

struct Pair { n: u32, pieces: u32, scale: f32 }

@group(0) @binding(0) var<storage, read> pa: array<f32>;
@group(0) @binding(1) var<storage, read> pb: array<f32>;

fn pair_term(d: f32) -> f32 {
  if (OP == 0u) { return d * d; }
  return abs(d);
}

fn pair_slope(d: f32) -> f32 {
  if (OP == 0u) { return 2.0 * d; }
  return sign(d);
}

@group(0) @binding(2) var<storage, read_write> pair_parts: array<f32>;
@group(0) @binding(3) var<uniform> pp: Pair;

// Piece j sums the terms j, j + pieces, j + 2·pieces, ... (neighbouring invocations read
// neighbouring elements); reduceRaw then sums the pieces.
@compute @workgroup_size(WG)
fn pair_partial(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let j = linear_index(gid, nwg);
  if (j >= pp.pieces) { return; }
  var acc = 0.0;
  for (var i = j; i < pp.n; i += pp.pieces) {
    acc += pair_term(pa[i] - pb[i]);
  }
  pair_parts[j] = acc;
}

@group(0) @binding(2) var<storage, read> pair_g: array<f32>;
@group(0) @binding(3) var<storage, read_write> pair_da: array<f32>;
@group(0) @binding(4) var<uniform> pg: Pair;

// d loss / d a = g · scale · f'(a − b); called with scale = −1/n for b.
@compute @workgroup_size(WG)
fn pair_grad(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = linear_index(gid, nwg);
  if (i >= pg.n) { return; }
  pair_da[i] = pair_g[0] * pg.scale * pair_slope(pa[i] - pb[i]);
}

// ---- unit-normalised feature distance: one tap of the perceptual loss --------------------------

// f (pa) and g (pb) [N, C, S] as N·S positions of C channels each (channel stride S); a feature
// vector's norm is sqrt(Σ_c x² + root_eps) + eps, as LPIPS's (root_eps keeps an all-zero
// position's gradient finite).
struct Unit { positions: u32, c: u32, s: u32, scale: f32, eps: f32, root_eps: f32 }

fn unit_first(p: u32, u: Unit) -> u32 {
  return (p / u.s) * u.c * u.s + p % u.s;
}

// Σ_c f² and Σ_c g² at the position starting at `first`.
fn unit_sum_squares(first: u32, u: Unit) -> vec2f {
  var sums = vec2f(0.0);
  for (var c = 0u; c < u.c; c++) {
    let i = first + c * u.s;
    sums += vec2f(pa[i] * pa[i], pb[i] * pb[i]);
  }
  return sums;
}

fn unit_root(sum_squares: f32, u: Unit) -> f32 {
  return sqrt(sum_squares + u.root_eps);
}

@group(0) @binding(2) var<storage, read_write> unit_rows: array<f32>;
@group(0) @binding(3) var<uniform> ud: Unit;

// One invocation per position: Σ_c (f_c / ‖f‖ − g_c / ‖g‖)², its two norms first.
@compute @workgroup_size(WG)
fn unit_distance(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let p = linear_index(gid, nwg);
  if (p >= ud.positions) { return; }
  let first = unit_first(p, ud);
  let sums = unit_sum_squares(first, ud);
  let ff = sums.x;
  let gg = sums.y;
  let rf = 1.0 / (unit_root(ff, ud) + ud.eps);
  let rg = 1.0 / (unit_root(gg, ud) + ud.eps);
  var acc = 0.0;
  for (var c = 0u; c < ud.c; c++) {
    let i = first + c * ud.s;
    let e = pa[i] * rf - pb[i] * rg;
    acc += e * e;
  }
  unit_rows[p] = acc;
}

@group(0) @binding(2) var<storage, read> unit_g: array<f32>;
@group(0) @binding(3) var<storage, read_write> unit_df: array<f32>;
@group(0) @binding(4) var<uniform> ug: Unit;

// d/df of scale · Σ_c (u_c − v_c)², u = f / (r + eps), r = sqrt(Σ f² + root_eps), v = g's:
//   df_k = (t_k − f_k · Σ_c t_c f_c / (r (r + eps))) / (r + eps),  t = 2 · scale · (u − v).
// The distance is symmetric: dg is this kernel with f and g swapped.
@compute @workgroup_size(WG)
fn unit_distance_grad(
  @builtin(global_invocation_id) gid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
) {
  let p = linear_index(gid, nwg);
  if (p >= ug.positions) { return; }
  let first = unit_first(p, ug);
  let sums = unit_sum_squares(first, ug);
  let ff = sums.x;
  let gg = sums.y;
  let r = unit_root(ff, ug);
  let rf = 1.0 / (r + ug.eps);
  let rg = 1.0 / (unit_root(gg, ug) + ug.eps);
  var dot = 0.0;
  for (var c = 0u; c < ug.c; c++) {
    let i = first + c * ug.s;
    dot += (pa[i] * rf - pb[i] * rg) * pa[i];
  }
  let k = 2.0 * ug.scale * unit_g[0];
  let along = dot * rf / r;
  for (var c = 0u; c < ug.c; c++) {
    let i = first + c * ug.s;
    unit_df[i] = k * (pa[i] * rf - pb[i] * rg - pa[i] * along) * rf;
  }
}
