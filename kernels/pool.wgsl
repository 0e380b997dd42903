// Max pooling over k×k windows at stride s with implicit padding `pad` on every side (padded
// positions never win: PyTorch pads with −∞). The gradient of each window goes to its FIRST
// arg-max in row-major order, as in PyTorch. The backward kernel recomputes that position from x
// for every window holding an input pixel, so the forward saves no index tensor and the gradient
// is a deterministic gather (WGSL has no float atomics for a scatter).

override WG: u32 = 64;

struct Pool { total: u32, h: u32, w: u32, ho: u32, wo: u32, k: u32, s: u32, pad: u32 }

@group(0) @binding(0) var<storage, read> x: array<f32>;

struct Best { value: f32, at: i32 }

// The largest value of window (oy, ox) of plane `plane` and its first position y·w + x in the plane.
// The params come as an argument: the two entry points bind their uniform at different numbers.
fn window_max(cfg: Pool, plane: u32, oy: u32, ox: u32) -> Best {
  let y0 = i32(oy * cfg.s) - i32(cfg.pad);
  let x0 = i32(ox * cfg.s) - i32(cfg.pad);
  let base = plane * cfg.h * cfg.w;
  var best = Best(0.0, -1);
  for (var ky = 0; ky < i32(cfg.k); ky++) {
    let y = y0 + ky;
    if (y < 0 || y >= i32(cfg.h)) { continue; }
    for (var kx = 0; kx < i32(cfg.k); kx++) {
      let xx = x0 + kx;
      if (xx < 0 || xx >= i32(cfg.w)) { continue; }
      let at = y * i32(cfg.w) + xx;
      let v = x[base + u32(at)];
      if (best.at < 0 || v > best.value) {
        best = Best(v, at);
      }
    }
  }
  return best;
}

fn linear_index(gid: vec3u, nwg: vec3u) -> u32 {
  return gid.x + gid.y * nwg.x * WG;
}

@group(0) @binding(1) var<storage, read_write> pool_out: array<f32>;
@group(0) @binding(2) var<uniform> fp: Pool;

// out[plane, oy, ox] = max of its window.
@compute @workgroup_size(WG)
fn max_pool(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = linear_index(gid, nwg);
  if (i >= fp.total) { return; }
  let ox = i % fp.wo;
  let oy = (i / fp.wo) % fp.ho;
  pool_out[i] = window_max(fp, i / (fp.wo * fp.ho), oy, ox).value;
}

// The windows along one axis that hold padded position `at + pad`: [first, last], possibly empty.
fn windows_holding(cfg: Pool, at: u32, count: u32) -> vec2i {
  let p = i32(at + cfg.pad);
  let first = max(0, (p - i32(cfg.k) + i32(cfg.s)) / i32(cfg.s));
  let last = min(p / i32(cfg.s), i32(count) - 1);
  return vec2i(first, last);
}

@group(0) @binding(1) var<storage, read> pool_grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> pool_gx: array<f32>;
@group(0) @binding(3) var<uniform> gp: Pool;

// gx[plane, y, x] = Σ over the windows whose first arg-max is (y, x) of their output gradient.
@compute @workgroup_size(WG)
fn max_pool_grad(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = linear_index(gid, nwg);
  if (i >= gp.total) { return; }
  let xx = i % gp.w;
  let y = (i / gp.w) % gp.h;
  let plane = i / (gp.w * gp.h);
  let me = i32(y * gp.w + xx);
  let ry = windows_holding(gp, y, gp.ho);
  let rx = windows_holding(gp, xx, gp.wo);
  var acc = 0.0;
  for (var oy = ry.x; oy <= ry.y; oy++) {
    for (var ox = rx.x; ox <= rx.y; ox++) {
      if (window_max(gp, plane, u32(oy), u32(ox)).at == me) {
        acc += pool_grad[(plane * gp.ho + u32(oy)) * gp.wo + u32(ox)];
      }
    }
  }
  pool_gx[i] = acc;
}
