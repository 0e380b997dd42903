// EMA codebook updates in place (lib/tensor/ops/ema.ts): the statistics step, the codes from the
// smoothed statistics, and the restart of dead codes. The codebook and embed_avg are [K, D],
// cluster_size [K]; one invocation per code walks its D elements (D ≤ MAX_DIM of vq.ts).

override WG: u32 = 64;

fn index(gid: vec3u, nwg: vec3u) -> u32 {
  return gid.x + gid.y * nwg.x * WG;
}

// decay γ and keep 1 − γ (rounded once on the host, as the unfused ops did).
struct Ema { k: u32, d: u32, decay: f32, keep: f32, eps: f32 }

// ---- ema_stats: N_k ← γ N_k + (1 − γ) n_k, m_k ← γ m_k + (1 − γ) s_k ---------------------------

@group(0) @binding(0) var<storage, read> counts: array<f32>;
@group(0) @binding(1) var<storage, read> sums: array<f32>;
@group(0) @binding(2) var<storage, read_write> stats_n: array<f32>;
@group(0) @binding(3) var<storage, read_write> stats_m: array<f32>;
@group(0) @binding(4) var<uniform> sp: Ema;

@compute @workgroup_size(WG)
fn ema_stats(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let k = index(gid, nwg);
  if (k >= sp.k) { return; }
  stats_n[k] = stats_n[k] * sp.decay + counts[k] * sp.keep;
  for (var i = k * sp.d; i < (k + 1u) * sp.d; i++) {
    stats_m[i] = stats_m[i] * sp.decay + sums[i] * sp.keep;
  }
}

// ---- ema_codes: e_k = m_k / Ñ_k, Ñ_k = (N_k + ε) · total / (total + K ε), total = Σ_j N_j --------

@group(0) @binding(0) var<storage, read> codes_n: array<f32>;
@group(0) @binding(1) var<storage, read> codes_m: array<f32>;
@group(0) @binding(2) var<storage, read> codes_total: array<f32>;
@group(0) @binding(3) var<storage, read_write> codes_e: array<f32>;
@group(0) @binding(4) var<uniform> cp: Ema;

@compute @workgroup_size(WG)
fn ema_codes(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let k = index(gid, nwg);
  if (k >= cp.k) { return; }
  let total = codes_total[0];
  let smoothed = (codes_n[k] + cp.eps) * total / (total + f32(cp.k) * cp.eps);
  for (var i = k * cp.d; i < (k + 1u) * cp.d; i++) {
    codes_e[i] = codes_m[i] / smoothed;
  }
}

// ---- ema_restart: every code with N_k < threshold becomes a drawn row plus a perturbation -------

// rows: the batch's vectors [N, D]; draws [K] uniform in [0, N) (the row of code k); noise [K, D]
// standard normal; sum_squares [1] = Σ rows². A dead code becomes row + noise · (rms · jitter +
// floor), with m_k = that · threshold and N_k = threshold; a live code is not written.
struct Restart { k: u32, d: u32, n: u32, threshold: f32, jitter: f32, floor: f32 }

@group(0) @binding(0) var<storage, read> rows: array<f32>;
@group(0) @binding(1) var<storage, read> draws: array<f32>;
@group(0) @binding(2) var<storage, read> noise: array<f32>;
@group(0) @binding(3) var<storage, read> sum_squares: array<f32>;
@group(0) @binding(4) var<storage, read_write> restart_n: array<f32>;
@group(0) @binding(5) var<storage, read_write> restart_m: array<f32>;
@group(0) @binding(6) var<storage, read_write> restart_e: array<f32>;
@group(0) @binding(7) var<uniform> rp: Restart;

@compute @workgroup_size(WG)
fn ema_restart(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let k = index(gid, nwg);
  if (k >= rp.k || !(restart_n[k] < rp.threshold)) { return; }
  let row = u32(clamp(draws[k], 0.0, f32(rp.n - 1u)));
  let rms = sqrt(sum_squares[0] / f32(rp.n * rp.d));
  let scale = rms * rp.jitter + rp.floor;
  for (var i = 0u; i < rp.d; i++) {
    let v = rows[row * rp.d + i] + noise[k * rp.d + i] * scale;
    restart_e[k * rp.d + i] = v;
    restart_m[k * rp.d + i] = v * rp.threshold;
  }
  restart_n[k] = rp.threshold;
}
