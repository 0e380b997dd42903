// Optimizer kernels. Parameter updates are fused: one dispatch per parameter tensor updates the
// parameter and its state in place (PyTorch semantics). Global-norm clipping runs without readback:
// `sum_squares` writes one partial sum of g² per chunk of a gradient into a slot of a partials
// buffer, `clip_scale` sums the slots into the norm and the clip scale, and `scale_grad` multiplies
// each gradient in place by that scale, read from the GPU buffer.
//
// V, the element type of parameters, gradients and states, is f32 or vec4f (four values a lane where
// a tensor's size is a multiple of 4: on lavapipe a storage access costs about the same whatever its
// width), and sq(v) its sum of squares: lib/optim/kernels.ts prepends their definitions.

override WG: u32 = 256;
// Adam: decoupled weight decay (AdamW) instead of L2 decay added to the gradient.
override DECOUPLED: bool = false;
// SGD: keep a momentum buffer (state0); with NESTEROV, step along g + momentum · buffer.
override MOMENTUM: bool = false;
override NESTEROV: bool = false;

fn linear_index(gid: vec3u, nwg: vec3u) -> u32 {
  return gid.x + gid.y * nwg.x * WG;
}

@group(0) @binding(0) var<storage, read_write> param: array<V>;
@group(0) @binding(1) var<storage, read> grad: array<V>;
// Adam: exp_avg; SGD: momentum buffer.
@group(0) @binding(2) var<storage, read_write> state0: array<V>;
// Adam: exp_avg_sq.
@group(0) @binding(3) var<storage, read_write> state1: array<V>;

// The host folds the step count into the bias corrections (in float64): no readback, no pow here.
struct Adam {
  n: u32,
  weight_decay: f32,
  // AdamW: 1 − lr · weight_decay.
  decay: f32,
  beta1: f32,
  beta2: f32,
  one_minus_beta1: f32,
  one_minus_beta2: f32,
  eps: f32,
  // lr / (1 − beta1^step)
  step_size: f32,
  // sqrt(1 − beta2^step)
  bc2_sqrt: f32,
}
@group(0) @binding(4) var<uniform> ap: Adam;

@compute @workgroup_size(WG)
fn adam(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = linear_index(gid, nwg);
  if (i >= ap.n) { return; }
  var p = param[i];
  var g = grad[i];
  if (DECOUPLED) {
    p = p * ap.decay;
  } else {
    g = g + ap.weight_decay * p;
  }
  // exp_avg.lerp_(g, 1 − beta1); exp_avg_sq = beta2 · exp_avg_sq + (1 − beta2) · g².
  let m = state0[i] + ap.one_minus_beta1 * (g - state0[i]);
  let v = ap.beta2 * state1[i] + ap.one_minus_beta2 * g * g;
  state0[i] = m;
  state1[i] = v;
  param[i] = p - ap.step_size * m / (sqrt(v) / ap.bc2_sqrt + ap.eps);
}

struct Sgd {
  n: u32,
  lr: f32,
  weight_decay: f32,
  momentum: f32,
  one_minus_dampening: f32,
  // 1 on a parameter's first step: the buffer starts as the gradient (its memory is not read).
  first: u32,
}
@group(0) @binding(3) var<uniform> sp: Sgd;

@compute @workgroup_size(WG)
fn sgd(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = linear_index(gid, nwg);
  if (i >= sp.n) { return; }
  let p = param[i];
  var d = grad[i] + sp.weight_decay * p;
  if (MOMENTUM) {
    var buf = d;
    if (sp.first == 0u) {
      buf = sp.momentum * state0[i] + sp.one_minus_dampening * d;
    }
    state0[i] = buf;
    if (NESTEROV) {
      d = d + sp.momentum * buf;
    } else {
      d = buf;
    }
  }
  param[i] = p - sp.lr * d;
}

// ---- global-norm clipping ----------------------------------------------------------------------

var<workgroup> partial: array<f32, WG>;

// Sum of v over the workgroup (WG a power of two); call from uniform control flow.
fn workgroup_sum(t: u32, v: f32) -> f32 {
  partial[t] = v;
  workgroupBarrier();
  for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
    if (t < stride) {
      partial[t] = partial[t] + partial[t + stride];
    }
    workgroupBarrier();
  }
  return partial[0];
}

// Workgroup c sums g² over elements [c·chunk, (c+1)·chunk) into partials[slot + c].
struct SumSquares { n: u32, chunk: u32, slot: u32 }
@group(0) @binding(0) var<storage, read> sq_grad: array<V>;
@group(0) @binding(1) var<storage, read_write> sq_partials: array<f32>;
@group(0) @binding(2) var<uniform> qp: SumSquares;

@compute @workgroup_size(WG)
fn sum_squares(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(local_invocation_index) t: u32,
  @builtin(num_workgroups) nwg: vec3u,
) {
  let c = wid.x + wid.y * nwg.x;
  let start = c * qp.chunk;
  let end = min(start + qp.chunk, qp.n);
  var acc = 0.0;
  for (var k = start + t; k < end; k += WG) {
    acc += sq(sq_grad[k]);
  }
  // Every invocation reaches the barriers; groups past the end (2-D grid padding) write nothing.
  let total = workgroup_sum(t, acc);
  if (t == 0u && start < qp.n) {
    sq_partials[qp.slot + c] = total;
  }
}

// One workgroup: norm = sqrt(Σ slots), scale = min(1, max_norm / (norm + 1e-6)) (as PyTorch).
struct ClipScale { slots: u32, max_norm: f32 }
@group(0) @binding(0) var<storage, read> cs_partials: array<f32>;
@group(0) @binding(1) var<storage, read_write> cs_norm: array<f32>;
@group(0) @binding(2) var<storage, read_write> cs_scale: array<f32>;
@group(0) @binding(3) var<uniform> cp: ClipScale;

@compute @workgroup_size(WG)
fn clip_scale(@builtin(local_invocation_index) t: u32) {
  var acc = 0.0;
  for (var k = t; k < cp.slots; k += WG) {
    acc += cs_partials[k];
  }
  let total = workgroup_sum(t, acc);
  if (t == 0u) {
    let norm = sqrt(total);
    cs_norm[0] = norm;
    cs_scale[0] = min(1.0, cp.max_norm / (norm + 1e-6));
  }
}

// g ← g · scale[0], in place.
struct ScaleGrad { n: u32 }
@group(0) @binding(0) var<storage, read_write> sg_grad: array<V>;
@group(0) @binding(1) var<storage, read> sg_scale: array<f32>;
@group(0) @binding(2) var<uniform> gp: ScaleGrad;

@compute @workgroup_size(WG)
fn scale_grad(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = linear_index(gid, nwg);
  if (i >= gp.n) { return; }
  sg_grad[i] = sg_grad[i] * sg_scale[0];
}
