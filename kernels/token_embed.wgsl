// The ViT input sequence (lib/tensor/ops/token_embed.ts) from patch features p [N, D, T] (a patch
// convolution's output, channels first): h [N, 1+T, D] with
//   h[n, 0]     = cls + pos[0]
//   h[n, 1 + t] = p[n, :, t] · (1 − w[n, t]) + mask_token · w[n, t] + pos[1 + t]
// (BEiT's masked input, w the 0/1 mask; without a mask w = 0, without pos embeddings pos = 0).
// Forward: one invocation per element of h. Backward: one dispatch whose invocations take, in
// ranges, dp = g · (1 − w) (one per element of p), dcls = Σ_n g[n, 0] and dpos = Σ_n g (one per
// channel or position and channel, a loop over the batch), dmask_token = Σ_{n,t} g[n, 1+t] · w
// (one per channel, a loop over the batch's patches).

override WG: u32 = 64;
override HAS_MASK: bool = false;
override HAS_POS: bool = false;

// n: images, d: channels, t: patches.
struct Dims { n: u32, d: u32, t: u32 }

fn linear_index(gid: vec3u, nwg: vec3u) -> u32 {
  return gid.x + gid.y * nwg.x * WG;
}

@group(0) @binding(0) var<storage, read> p: array<f32>;
@group(0) @binding(1) var<storage, read> cls: array<f32>;
@group(0) @binding(2) var<storage, read> pos: array<f32>;
@group(0) @binding(3) var<storage, read> mask: array<f32>;
@group(0) @binding(4) var<storage, read> mask_token: array<f32>;
@group(0) @binding(5) var<storage, read_write> h: array<f32>;
@group(0) @binding(6) var<uniform> fp: Dims;

@compute @workgroup_size(WG)
fn forward(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = linear_index(gid, nwg);
  let rows = fp.t + 1u;
  if (i >= fp.n * rows * fp.d) { return; }
  let c = i % fp.d;
  let j = (i / fp.d) % rows;
  let n = i / (fp.d * rows);
  var v = 0.0;
  if (j == 0u) {
    v = cls[c];
  } else {
    let t = j - 1u;
    v = p[(n * fp.d + c) * fp.t + t];
    if (HAS_MASK) {
      let w = mask[n * fp.t + t];
      v = v * (1.0 - w) + mask_token[c] * w;
    }
  }
  if (HAS_POS) { v += pos[j * fp.d + c]; }
  h[i] = v;
}

@group(0) @binding(0) var<storage, read> g: array<f32>;
@group(0) @binding(1) var<storage, read> bmask: array<f32>;
@group(0) @binding(2) var<storage, read_write> dp: array<f32>;
@group(0) @binding(3) var<storage, read_write> dcls: array<f32>;
@group(0) @binding(4) var<storage, read_write> dpos: array<f32>;
@group(0) @binding(5) var<storage, read_write> dmask_token: array<f32>;
@group(0) @binding(6) var<uniform> bp: Dims;

@compute @workgroup_size(WG)
fn backward(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  var i = linear_index(gid, nwg);
  let rows = bp.t + 1u;
  let patches = bp.n * bp.d * bp.t;
  // dp[n, c, t] = g[n, 1 + t, c] · (1 − w[n, t]).
  if (i < patches) {
    let t = i % bp.t;
    let c = (i / bp.t) % bp.d;
    let n = i / (bp.t * bp.d);
    var v = g[(n * rows + 1u + t) * bp.d + c];
    if (HAS_MASK) { v *= 1.0 - bmask[n * bp.t + t]; }
    dp[i] = v;
    return;
  }
  i -= patches;
  // dcls[c] = Σ_n g[n, 0, c].
  if (i < bp.d) {
    var acc = 0.0;
    for (var n = 0u; n < bp.n; n++) { acc += g[n * rows * bp.d + i]; }
    dcls[i] = acc;
    return;
  }
  i -= bp.d;
  // dpos[j, c] = Σ_n g[n, j, c].
  if (HAS_POS) {
    if (i < rows * bp.d) {
      var acc = 0.0;
      for (var n = 0u; n < bp.n; n++) { acc += g[n * rows * bp.d + i]; }
      dpos[i] = acc;
      return;
    }
    i -= rows * bp.d;
  }
  // dmask_token[c] = Σ_{n,t} g[n, 1 + t, c] · w[n, t].
  if (HAS_MASK && i < bp.d) {
    var acc = 0.0;
    for (var n = 0u; n < bp.n; n++) {
      for (var t = 0u; t < bp.t; t++) {
        acc += g[(n * rows + 1u + t) * bp.d + i] * bmask[n * bp.t + t];
      }
    }
    dmask_token[i] = acc;
  }
}
