// The ViT input sequence (lib/tensor/ops/token_embed.ts) from patch features p [N, D, T] (a patch
// convolution's output, channels first): h [N, 1+T, D] with
//   h[n, 0]     = cls + pos[0]
//   h[n, 1 + t] = p[n, :, t] · (1 − w[n, t]) + mask_token · w[n, t] + pos[1 + t]
// (BEiT's masked input, w the 0/1 mask; without a mask w = 0, without pos embeddings pos = 0).
// Forward: one invocation per element of h. Backward: one dispatch for dp = g · (1 − w) (one
// invocation per element of p), one for dcls = Σ_n g[n, 0] and dpos = Σ_n g (one invocation per
// channel or position and channel, a loop over the batch), one for dmask_token =
// Σ_{n,t} g[n, 1+t] · w (one per channel, a loop over the batch's patches).

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

// Backward, the patches: dp[n, c, t] = g[n, 1 + t, c] · (1 − w[n, t]), one invocation each.
@group(0) @binding(0) var<storage, read> g: array<f32>;
@group(0) @binding(1) var<storage, read> bmask: array<f32>;
@group(0) @binding(2) var<storage, read_write> dp: array<f32>;
@group(0) @binding(3) var<uniform> bp: Dims;

@compute @workgroup_size(WG)
fn backward(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = linear_index(gid, nwg);
  if (i >= bp.n * bp.d * bp.t) { return; }
  let t = i % bp.t;
  let c = (i / bp.t) % bp.d;
  let n = i / (bp.t * bp.d);
  var v = g[(n * (bp.t + 1u) + 1u + t) * bp.d + c];
  if (HAS_MASK) { v *= 1.0 - bmask[n * bp.t + t]; }
  dp[i] = v;
}

// Backward, the [CLS] token and the position embeddings, in ranges of invocations: dcls[c] =
// Σ_n g[n, 0, c], dpos[j, c] = Σ_n g[n, j, c]. Loops of different lengths each get a dispatch of
// their own: on lavapipe a few invocations' long loops slow down every invocation of a dispatch
// they share (measured on [32, 64, 49] with position embeddings, the op forward and backward:
// 35 ms CPU with the mask token's loop in this dispatch, 6-8 ms with it apart).
@group(0) @binding(0) var<storage, read> pg: array<f32>;
@group(0) @binding(1) var<storage, read> pmask: array<f32>;
@group(0) @binding(2) var<storage, read_write> dcls: array<f32>;
@group(0) @binding(3) var<storage, read_write> dpos: array<f32>;
@group(0) @binding(4) var<storage, read_write> dmask_token: array<f32>;
@group(0) @binding(5) var<uniform> pp: Dims;

// Σ_n g[n, j, c] at flat index i = j·d + c of a row.
fn batch_sum(i: u32) -> f32 {
  var acc = 0.0;
  for (var n = 0u; n < pp.n; n++) { acc += pg[n * (pp.t + 1u) * pp.d + i]; }
  return acc;
}

@compute @workgroup_size(WG)
fn backward_params(
  @builtin(global_invocation_id) gid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
) {
  let i = linear_index(gid, nwg);
  if (i < pp.d) {
    dcls[i] = batch_sum(i);
  } else if (HAS_POS && i - pp.d < (pp.t + 1u) * pp.d) {
    dpos[i - pp.d] = batch_sum(i - pp.d);
  }
}

// Backward, the mask token: dmask_token[c] = Σ_{n,t} g[n, 1+t, c] · w[n, t], one invocation per
// channel looping over the batch's patches (a dispatch of its own, see above).
@compute @workgroup_size(WG)
fn backward_token(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let c = linear_index(gid, nwg);
  if (c >= pp.d) { return; }
  var acc = 0.0;
  for (var n = 0u; n < pp.n; n++) {
    for (var t = 0u; t < pp.t; t++) {
      acc += pg[(n * (pp.t + 1u) + 1u + t) * pp.d + c] * pmask[n * pp.t + t];
    }
  }
  dmask_token[c] = acc;
}
