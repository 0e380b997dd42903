// Residual add with a layer scale (lib/tensor/ops/residual.ts): out = x + h · gamma, gamma one
// value per channel of the last dim (C). Forward: one pass. Backward: one invocation per channel
// and piece of rows writes dh = g · gamma over its rows and Σ g · h (gamma's gradient, one partial
// per piece; the op sums the pieces). dx is g itself.

override WG: u32 = 64;

struct Params { n: u32, channels: u32, rows: u32, piece_rows: u32, pieces: u32 }

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> h: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

fn linear_index(gid: vec3u, nwg: vec3u) -> u32 {
  return gid.x + gid.y * nwg.x * WG;
}

@compute @workgroup_size(WG)
fn forward(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = linear_index(gid, nwg);
  if (i >= p.n) { return; }
  out[i] = x[i] + h[i] * gamma[i % p.channels];
}

// Bindings of the backward: g, h, gamma, dh, gamma partials [pieces, C].
@group(0) @binding(0) var<storage, read> bg: array<f32>;
@group(0) @binding(1) var<storage, read> bh: array<f32>;
@group(0) @binding(2) var<storage, read> bgamma: array<f32>;
@group(0) @binding(3) var<storage, read_write> dh: array<f32>;
@group(0) @binding(4) var<storage, read_write> dgamma: array<f32>;
@group(0) @binding(5) var<uniform> bp: Params;

@compute @workgroup_size(WG)
fn backward(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let j = linear_index(gid, nwg);
  if (j >= bp.pieces * bp.channels) { return; }
  let piece = j / bp.channels;
  let c = j - piece * bp.channels;
  let first = piece * bp.piece_rows;
  let last = min(bp.rows, first + bp.piece_rows);
  let s = bgamma[c];
  var acc = 0.0;
  for (var r = first; r < last; r++) {
    let i = r * bp.channels + c;
    let g = bg[i];
    dh[i] = g * s;
    acc += g * bh[i];
  }
  dgamma[j] = acc;
}
