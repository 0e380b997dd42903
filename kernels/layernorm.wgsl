// Fused layer normalisation over the last dim of x [rows, D] (lib/tensor/ops/layernorm.ts): one
// invocation per row computes the row's mean and variance (two passes, the first shifted by the
// row's first value: accurate when the mean is large against the spread) and writes y, the mean and 1/sqrt(var + eps) in the same dispatch; the
// backward computes dx per row in one dispatch, and the weight and bias gradients per column (one
// invocation per column and piece of rows, the pieces merged by a second dispatch when there are
// several). No shared memory, no barriers: both are slow on lavapipe.

override WG: u32 = 64;
override HAS_W: bool = true;
override HAS_B: bool = true;

fn linear_index(gid: vec3u, nwg: vec3u) -> u32 {
  return gid.x + gid.y * nwg.x * WG;
}

struct Rows { rows: u32, d: u32, eps: f32, inv_d: f32 }

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> weight: array<f32>;

fn weight_at(c: u32) -> f32 {
  if (HAS_W) { return weight[c]; }
  return 1.0;
}

// ---- forward ------------------------------------------------------------------------------------

@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read_write> mean_out: array<f32>;
@group(0) @binding(5) var<storage, read_write> rstd_out: array<f32>;
@group(0) @binding(6) var<uniform> fp: Rows;

@compute @workgroup_size(WG)
fn forward(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let r = linear_index(gid, nwg);
  if (r >= fp.rows) { return; }
  let base = r * fp.d;
  // Summed relative to the row's first value: a large common offset adds no rounding error.
  let shift = x[base];
  var sum = 0.0;
  for (var c = 0u; c < fp.d; c++) {
    sum += x[base + c] - shift;
  }
  let mean = shift + sum * fp.inv_d;
  var m2 = 0.0;
  for (var c = 0u; c < fp.d; c++) {
    let dv = x[base + c] - mean;
    m2 += dv * dv;
  }
  let rstd = inverseSqrt(m2 * fp.inv_d + fp.eps);
  mean_out[r] = mean;
  rstd_out[r] = rstd;
  for (var c = 0u; c < fp.d; c++) {
    var b = 0.0;
    if (HAS_B) { b = bias[c]; }
    y[base + c] = (x[base + c] - mean) * rstd * weight_at(c) + b;
  }
}

// ---- backward: dx -------------------------------------------------------------------------------

@group(0) @binding(2) var<storage, read> stat_mean: array<f32>;
@group(0) @binding(3) var<storage, read> stat_rstd: array<f32>;
@group(0) @binding(4) var<storage, read> dy: array<f32>;
@group(0) @binding(5) var<storage, read_write> dx: array<f32>;
@group(0) @binding(6) var<uniform> bp: Rows;

// dx = rstd · (u − mean(u) − xhat · mean(u · xhat)), u = dy · w, means over the row.
@compute @workgroup_size(WG)
fn grad_input(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let r = linear_index(gid, nwg);
  if (r >= bp.rows) { return; }
  let base = r * bp.d;
  let mean = stat_mean[r];
  let rstd = stat_rstd[r];
  var s0 = 0.0;
  var s1 = 0.0;
  for (var c = 0u; c < bp.d; c++) {
    let u = dy[base + c] * weight_at(c);
    s0 += u;
    s1 += u * (x[base + c] - mean) * rstd;
  }
  s0 *= bp.inv_d;
  s1 *= bp.inv_d;
  for (var c = 0u; c < bp.d; c++) {
    let xh = (x[base + c] - mean) * rstd;
    dx[base + c] = rstd * (dy[base + c] * weight_at(c) - s0 - xh * s1);
  }
}

// ---- backward: weight and bias ------------------------------------------------------------------

// Invocation (piece k, column c) sums dy · xhat and dy over rows [k·piece, (k+1)·piece) into
// out[(k·D + c)·2 + {0, 1}]; with one piece, `out` is read as the weight gradient and the bias
// gradient directly (PIECES false).
override PIECES: bool = true;
struct Columns { rows: u32, d: u32, piece: u32, pieces: u32 }

@group(0) @binding(0) var<storage, read> cx: array<f32>;
@group(0) @binding(1) var<storage, read> c_mean: array<f32>;
@group(0) @binding(2) var<storage, read> c_rstd: array<f32>;
@group(0) @binding(3) var<storage, read> c_dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> gw_out: array<f32>;
@group(0) @binding(5) var<storage, read_write> gb_out: array<f32>;
@group(0) @binding(6) var<uniform> cp: Columns;

@compute @workgroup_size(WG)
fn grad_params(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let j = linear_index(gid, nwg);
  if (j >= cp.d * cp.pieces) { return; }
  let c = j % cp.d;
  let k = j / cp.d;
  let first = k * cp.piece;
  let last = min(first + cp.piece, cp.rows);
  var sw = 0.0;
  var sb = 0.0;
  for (var r = first; r < last; r++) {
    let g = c_dy[r * cp.d + c];
    sw += g * (cx[r * cp.d + c] - c_mean[r]) * c_rstd[r];
    sb += g;
  }
  // With pieces, gw_out holds the partial sums of both (2 per invocation) and gb_out is unused.
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
@group(0) @binding(3) var<uniform> mp: Columns;

@compute @workgroup_size(WG)
fn grad_params_merge(
  @builtin(global_invocation_id) gid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
) {
  let c = linear_index(gid, nwg);
  if (c >= mp.d) { return; }
  var sw = 0.0;
  var sb = 0.0;
  for (var k = 0u; k < mp.pieces; k++) {
    let j = k * mp.d + c;
    sw += partials[2u * j];
    sb += partials[2u * j + 1u];
  }
  gw_sum[c] = sw;
  gb_sum[c] = sb;
}
