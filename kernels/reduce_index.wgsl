// Arg reductions of the middle axis of x viewed as [outer, len, inner]: the extreme value and the
// first index that holds it (OP: 0 max, 1 min), and the backward rule that routes the gradient of
// each output to that index. Comparisons skip NaN (unless it is the first element).

override WG: u32 = 256;
override OP: u32 = 0;

const NONE: u32 = 0xffffffffu;

struct ArgReduce { outer: u32, len: u32, inner: u32 }

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> values: array<f32>;
@group(0) @binding(2) var<storage, read_write> indices: array<i32>;
@group(0) @binding(3) var<uniform> p: ArgReduce;

// Whether candidate (v, k) replaces the best so far (best, at): a strictly better value, or an
// equal one at a smaller index (so ties resolve to the first index whatever the visiting order).
// NONE marks "no element".
fn beats(v: f32, k: u32, best: f32, at: u32) -> bool {
  if (k == NONE) { return false; }
  if (at == NONE) { return true; }
  let better = select((v < best), (v > best), OP == 0u);
  return better || (v == best && k < at);
}

@compute @workgroup_size(WG)
fn arg_serial(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let j = gid.x + gid.y * nwg.x * WG;
  if (j >= p.outer * p.inner) { return; }
  let base = (j / p.inner) * p.len * p.inner + j % p.inner;
  var best = x[base];
  var at = 0u;
  for (var k = 1u; k < p.len; k++) {
    let v = x[base + k * p.inner];
    if (beats(v, k, best, at)) {
      best = v;
      at = k;
    }
  }
  values[j] = best;
  indices[j] = i32(at);
}

var<workgroup> part_value: array<f32, WG>;
var<workgroup> part_index: array<u32, WG>;

// One workgroup per output: long axes, few outputs.
@compute @workgroup_size(WG)
fn arg_workgroup(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(local_invocation_index) t: u32,
  @builtin(num_workgroups) nwg: vec3u,
) {
  let j = wid.x + wid.y * nwg.x;
  // Every invocation of the group takes the same branch: no barrier sits in divergent control.
  let live = j < p.outer * p.inner;
  var best = 0.0;
  var at = NONE;
  if (live) {
    let base = (j / p.inner) * p.len * p.inner + j % p.inner;
    for (var k = t; k < p.len; k += WG) {
      let v = x[base + k * p.inner];
      if (beats(v, k, best, at)) {
        best = v;
        at = k;
      }
    }
  }
  part_value[t] = best;
  part_index[t] = at;
  workgroupBarrier();
  for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
    if (t < stride) {
      let v = part_value[t + stride];
      let k = part_index[t + stride];
      if (beats(v, k, part_value[t], part_index[t])) {
        part_value[t] = v;
        part_index[t] = k;
      }
    }
    workgroupBarrier();
  }
  if (t == 0u && live) {
    values[j] = part_value[0];
    indices[j] = i32(part_index[0]);
  }
}

// gx[o, k, i] = g[o, i] where k is the output's arg index, else 0.
@group(0) @binding(0) var<storage, read> g: array<f32>;
@group(0) @binding(1) var<storage, read> arg: array<i32>;
@group(0) @binding(2) var<storage, read_write> gx: array<f32>;

@compute @workgroup_size(WG)
fn arg_grad(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = gid.x + gid.y * nwg.x * WG;
  let block = p.len * p.inner;
  if (i >= p.outer * block) { return; }
  let r = i % block;
  let j = (i / block) * p.inner + r % p.inner;
  gx[i] = select(0.0, g[j], arg[j] == i32(r / p.inner));
}
