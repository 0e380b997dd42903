// Batched matrix multiply: C[z] = op(A[z]) · op(B[z]) (+ bias[n], or bias[m] with BIAS_ROW), where
// op(X) is X or Xᵀ (TRANS_A / TRANS_B: the operand is stored transposed, so transposes are never
// copied). A batch stride of 0 broadcasts a rank-2 operand over the batch. Two variants share the
// loaders below:
//
// - `matmul_reg`, register-blocked, no workgroup memory: each invocation keeps a TM × 4·TN4 block
//   of C in registers (TM in 4..32 by 4, TN4 in 1..8). On lavapipe (Mesa 22's CPU Vulkan driver)
//   an invocation is one lane of an 8-wide SIMD vector, barriers are coroutine switches, and every
//   storage-buffer load is a per-lane scalar loop (measured ~25-30 cycles per lane and component;
//   vec4 loads ~0.8 of that per component), so loads, not FMAs, set the speed: an invocation does
//   K·(TM + 4·TN4) loads for K·TM·4·TN4 FMAs, and big blocks win (32 × 32 ran 1.6× faster than
//   16 × 16 and 3× faster than 8 × 8 at 1024³).
//   Accumulators must stay in SSA registers. A loop over an accumulator array indexed at run time
//   is not unrolled by lavapipe's compiler and falls back to scratch memory (3× slower, minutes to
//   compile), and so do strips passed by pointer; hence C is held in up to 8 `Strip` values
//   (4 rows × 8 mat4x4 units, updated by value), the strips are written out, and each strip or unit
//   past TM / TN4 sits behind an `if` that folds away once the override constants are fixed.
// - `matmul_tiled`, the classic shared-memory kernel for real GPUs: a 16 × 16 workgroup computes a
//   64 × 64 tile of C, each invocation 4 × 4, staging 64 × 16 slices of A and B in workgroup memory.
//
// Bindings: a and a4 (and b and b4) are the same buffer seen as f32 and vec4 so that one entry point
// can use vec4 loads where VEC_A / VEC_B say the layout allows them (contiguous dim a multiple of 4).
// Odd shapes need no separate path: loads clamp row and column indices into the matrix (the extra
// values are computed and never stored) and stores are bounds-checked.

override TM: u32 = 4;
override TN4: u32 = 1;
override WGX: u32 = 8;
override WGY: u32 = 8;
override TRANS_A: bool = false;
override TRANS_B: bool = false;
override VEC_A: bool = false;
override VEC_B: bool = false;
override BIAS: bool = false;
override BIAS_ROW: bool = false;

struct Params {
  M: u32,
  N: u32,
  K: u32,
  // Elements between consecutive matrices of the batch (0: the operand is shared).
  strideA: u32,
  strideB: u32,
  // First batch index of this dispatch (batches beyond 65535 take several dispatches).
  z0: u32,
}

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> a4: array<vec4f>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> b4: array<vec4f>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read_write> c: array<f32>;
@group(0) @binding(6) var<uniform> p: Params;

// op(A)[r, k] for the four rows r..r+3 (rows past M are clamped: computed, never stored).
fn load_a4(base: u32, r: u32, k: u32) -> vec4f {
  let last = p.M - 1u;
  if (TRANS_A) {
    if (VEC_A) {
      return a4[(base + k * p.M + min(r, p.M - 4u)) / 4u];
    }
    let row = base + k * p.M;
    return vec4f(a[row + min(r, last)], a[row + min(r + 1u, last)], a[row + min(r + 2u, last)],
      a[row + min(r + 3u, last)]);
  }
  return vec4f(a[base + min(r, last) * p.K + k], a[base + min(r + 1u, last) * p.K + k],
    a[base + min(r + 2u, last) * p.K + k], a[base + min(r + 3u, last) * p.K + k]);
}

// op(B)[k, n] for the four columns n..n+3 (columns past N clamped).
fn load_b4(base: u32, k: u32, n: u32) -> vec4f {
  let last = p.N - 1u;
  if (TRANS_B) {
    return vec4f(b[base + min(n, last) * p.K + k], b[base + min(n + 1u, last) * p.K + k],
      b[base + min(n + 2u, last) * p.K + k], b[base + min(n + 3u, last) * p.K + k]);
  }
  if (VEC_B) {
    return b4[(base + k * p.N + min(n, p.N - 4u)) / 4u];
  }
  let row = base + k * p.N;
  return vec4f(b[row + min(n, last)], b[row + min(n + 1u, last)], b[row + min(n + 2u, last)],
    b[row + min(n + 3u, last)]);
}

// Writes v (+ bias) to C[z, m, n..n+3], skipping what lies outside the matrix.
fn store4(z: u32, m: u32, n: u32, v: vec4f) {
  if (m >= p.M) { return; }
  let row = (z * p.M + m) * p.N;
  var w = v;
  if (BIAS_ROW) { w += vec4f(bias[m]); }
  store1(row, n, w.x);
  store1(row, n + 1u, w.y);
  store1(row, n + 2u, w.z);
  store1(row, n + 3u, w.w);
}

fn store1(row: u32, n: u32, v: f32) {
  if (n >= p.N) { return; }
  var out = v;
  if (BIAS) { out += bias[n]; }
  c[row + n] = out;
}

fn batch(wz: u32) -> u32 {
  return p.z0 + wz;
}

// ---- register-blocked variant ---------------------------------------------------------------

// 4 consecutive columns of op(B) for up to 8 column groups (TN4 of them are used).
struct BRow { v0: vec4f, v1: vec4f, v2: vec4f, v3: vec4f, v4: vec4f, v5: vec4f, v6: vec4f, v7: vec4f }
// A 4-row strip of the C block: unit uj holds columns 4j..4j+3, its column r being row r of C.
struct Strip {
  u0: mat4x4f, u1: mat4x4f, u2: mat4x4f, u3: mat4x4f,
  u4: mat4x4f, u5: mat4x4f, u6: mat4x4f, u7: mat4x4f,
}

fn load_brow(base: u32, k: u32, n: u32) -> BRow {
  var r: BRow;
  r.v0 = load_b4(base, k, n);
  if (TN4 > 1u) { r.v1 = load_b4(base, k, n + 4u); }
  if (TN4 > 2u) { r.v2 = load_b4(base, k, n + 8u); }
  if (TN4 > 3u) { r.v3 = load_b4(base, k, n + 12u); }
  if (TN4 > 4u) { r.v4 = load_b4(base, k, n + 16u); }
  if (TN4 > 5u) { r.v5 = load_b4(base, k, n + 20u); }
  if (TN4 > 6u) { r.v6 = load_b4(base, k, n + 24u); }
  if (TN4 > 7u) { r.v7 = load_b4(base, k, n + 28u); }
  return r;
}

// u + outer(av, bv): row r of the unit gains av[r] · bv.
fn fma_unit(u: mat4x4f, av: vec4f, bv: vec4f) -> mat4x4f {
  return mat4x4f(fma(vec4f(av.x), bv, u[0]), fma(vec4f(av.y), bv, u[1]),
    fma(vec4f(av.z), bv, u[2]), fma(vec4f(av.w), bv, u[3]));
}

fn fma_strip(s: Strip, av: vec4f, b: BRow) -> Strip {
  var o = s;
  o.u0 = fma_unit(s.u0, av, b.v0);
  if (TN4 > 1u) { o.u1 = fma_unit(s.u1, av, b.v1); }
  if (TN4 > 2u) { o.u2 = fma_unit(s.u2, av, b.v2); }
  if (TN4 > 3u) { o.u3 = fma_unit(s.u3, av, b.v3); }
  if (TN4 > 4u) { o.u4 = fma_unit(s.u4, av, b.v4); }
  if (TN4 > 5u) { o.u5 = fma_unit(s.u5, av, b.v5); }
  if (TN4 > 6u) { o.u6 = fma_unit(s.u6, av, b.v6); }
  if (TN4 > 7u) { o.u7 = fma_unit(s.u7, av, b.v7); }
  return o;
}

fn store_unit(z: u32, m: u32, n: u32, u: mat4x4f) {
  store4(z, m, n, u[0]);
  store4(z, m + 1u, n, u[1]);
  store4(z, m + 2u, n, u[2]);
  store4(z, m + 3u, n, u[3]);
}

fn store_strip(z: u32, m: u32, n: u32, s: Strip) {
  store_unit(z, m, n, s.u0);
  if (TN4 > 1u) { store_unit(z, m, n + 4u, s.u1); }
  if (TN4 > 2u) { store_unit(z, m, n + 8u, s.u2); }
  if (TN4 > 3u) { store_unit(z, m, n + 12u, s.u3); }
  if (TN4 > 4u) { store_unit(z, m, n + 16u, s.u4); }
  if (TN4 > 5u) { store_unit(z, m, n + 20u, s.u5); }
  if (TN4 > 6u) { store_unit(z, m, n + 24u, s.u6); }
  if (TN4 > 7u) { store_unit(z, m, n + 28u, s.u7); }
}

@compute @workgroup_size(WGX, WGY)
fn matmul_reg(@builtin(global_invocation_id) gid: vec3u, @builtin(workgroup_id) wid: vec3u) {
  let z = batch(wid.z);
  let n0 = gid.x * 4u * TN4;
  let m0 = gid.y * TM;
  if (n0 >= p.N || m0 >= p.M) { return; }
  let baseA = z * p.strideA;
  let baseB = z * p.strideB;
  var s0: Strip;
  var s1: Strip;
  var s2: Strip;
  var s3: Strip;
  var s4: Strip;
  var s5: Strip;
  var s6: Strip;
  var s7: Strip;
  for (var k = 0u; k < p.K; k++) {
    let bk = load_brow(baseB, k, n0);
    s0 = fma_strip(s0, load_a4(baseA, m0, k), bk);
    if (TM > 4u) { s1 = fma_strip(s1, load_a4(baseA, m0 + 4u, k), bk); }
    if (TM > 8u) { s2 = fma_strip(s2, load_a4(baseA, m0 + 8u, k), bk); }
    if (TM > 12u) { s3 = fma_strip(s3, load_a4(baseA, m0 + 12u, k), bk); }
    if (TM > 16u) { s4 = fma_strip(s4, load_a4(baseA, m0 + 16u, k), bk); }
    if (TM > 20u) { s5 = fma_strip(s5, load_a4(baseA, m0 + 20u, k), bk); }
    if (TM > 24u) { s6 = fma_strip(s6, load_a4(baseA, m0 + 24u, k), bk); }
    if (TM > 28u) { s7 = fma_strip(s7, load_a4(baseA, m0 + 28u, k), bk); }
  }
  store_strip(z, m0, n0, s0);
  if (TM > 4u) { store_strip(z, m0 + 4u, n0, s1); }
  if (TM > 8u) { store_strip(z, m0 + 8u, n0, s2); }
  if (TM > 12u) { store_strip(z, m0 + 12u, n0, s3); }
  if (TM > 16u) { store_strip(z, m0 + 16u, n0, s4); }
  if (TM > 20u) { store_strip(z, m0 + 20u, n0, s5); }
  if (TM > 24u) { store_strip(z, m0 + 24u, n0, s6); }
  if (TM > 28u) { store_strip(z, m0 + 28u, n0, s7); }
}

// ---- shared-memory tiled variant (real GPUs) ------------------------------------------------

const TILE: u32 = 64u;
const TILE_K: u32 = 16u;
// [k][m] and [k][n] slices of the current K step.
var<workgroup> tileA: array<f32, 1024>;
var<workgroup> tileB: array<f32, 1024>;

// op(A)[m, k], zero outside the matrix.
fn a_at(base: u32, m: u32, k: u32) -> f32 {
  if (m >= p.M || k >= p.K) { return 0.0; }
  if (TRANS_A) { return a[base + k * p.M + m]; }
  return a[base + m * p.K + k];
}

// op(B)[k, n], zero outside the matrix.
fn b_at(base: u32, k: u32, n: u32) -> f32 {
  if (k >= p.K || n >= p.N) { return 0.0; }
  if (TRANS_B) { return b[base + n * p.K + k]; }
  return b[base + k * p.N + n];
}

@compute @workgroup_size(16, 16)
fn matmul_tiled(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(local_invocation_id) lid: vec3u,
  @builtin(local_invocation_index) t: u32,
) {
  let z = batch(wid.z);
  let baseA = z * p.strideA;
  let baseB = z * p.strideB;
  let tm = wid.y * TILE;
  let tn = wid.x * TILE;
  var acc: array<vec4f, 4>;
  for (var k0 = 0u; k0 < p.K; k0 += TILE_K) {
    // 256 invocations stage 1024 values of each operand; the fastest-moving invocation index
    // follows the operand's contiguous dimension so global reads coalesce.
    for (var q = 0u; q < 4u; q++) {
      let i = t + 256u * q;
      var m = i / TILE_K;
      var kk = i % TILE_K;
      if (TRANS_A) {
        m = i % TILE;
        kk = i / TILE;
      }
      tileA[kk * TILE + m] = a_at(baseA, tm + m, k0 + kk);
      var n = i % TILE;
      var kb = i / TILE;
      if (TRANS_B) {
        n = i / TILE_K;
        kb = i % TILE_K;
      }
      tileB[kb * TILE + n] = b_at(baseB, k0 + kb, tn + n);
    }
    workgroupBarrier();
    for (var kk = 0u; kk < TILE_K; kk++) {
      let av = vec4f(tileA[kk * TILE + lid.y * 4u], tileA[kk * TILE + lid.y * 4u + 1u],
        tileA[kk * TILE + lid.y * 4u + 2u], tileA[kk * TILE + lid.y * 4u + 3u]);
      let bv = vec4f(tileB[kk * TILE + lid.x * 4u], tileB[kk * TILE + lid.x * 4u + 1u],
        tileB[kk * TILE + lid.x * 4u + 2u], tileB[kk * TILE + lid.x * 4u + 3u]);
      for (var r = 0u; r < 4u; r++) { acc[r] = fma(vec4f(av[r]), bv, acc[r]); }
    }
    workgroupBarrier();
  }
  for (var r = 0u; r < 4u; r++) {
    store4(z, tm + lid.y * 4u + r, tn + lid.x * 4u, acc[r]);
  }
}
