// Data movement and index kernels. They move 32-bit words, so one pipeline serves f32, i32 and u32
// tensors alike; only `cast` (conversions) and `scatter_rows` (a float sum) look at the values.
//
// Index lists (gather, scatter_rows, embedding) treat an index outside [0, len) as "no row": a
// gather reads zeros for it and a scatter drops it. Nothing reads or writes out of bounds.

override WG: u32 = 256;
// Dims of a copy box that `strided_copy` decodes (the leading 6 − RANK are size 1).
override RANK: u32 = 6;
// Consecutive elements of the innermost dim that one invocation of strided_copy, gather or
// scatter_rows handles (≤ 8, dividing that dim): the index decode's integer divisions dominate on
// CPUs (lavapipe), so there each invocation decodes once per run; 1 on GPUs. (Loops with this
// constant trip count are unrolled: they do not count against lavapipe's loop limit below.)
override RUN: u32 = 1;
// dtype codes of `cast`: 0 f32, 1 i32, 2 u32.
override FROM: u32 = 0;
override TO: u32 = 0;

const NONE: u32 = 0xffffffffu;

fn linear_index(gid: vec3u, nwg: vec3u) -> u32 {
  return gid.x + gid.y * nwg.x * WG;
}

@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;

// ---- strided copy ------------------------------------------------------------------------------
// dst[dst_off + Σ c_k·t_k] = src[src_off + Σ c_k·s_k] for every coordinate c of the box d0..d5.
// Serves permute, slice, concat, pad and their backward rules.

struct Copy {
  n: u32, src_off: u32, dst_off: u32,
  d0: u32, d1: u32, d2: u32, d3: u32, d4: u32, d5: u32,
  s0: u32, s1: u32, s2: u32, s3: u32, s4: u32, s5: u32,
  t0: u32, t1: u32, t2: u32, t3: u32, t4: u32, t5: u32,
}
@group(0) @binding(2) var<uniform> cp: Copy;

@compute @workgroup_size(WG)
fn strided_copy(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let first = linear_index(gid, nwg) * RUN;
  if (first >= cp.n) { return; }
  let dims = array<u32, 6>(cp.d0, cp.d1, cp.d2, cp.d3, cp.d4, cp.d5);
  let from_strides = array<u32, 6>(cp.s0, cp.s1, cp.s2, cp.s3, cp.s4, cp.s5);
  let to_strides = array<u32, 6>(cp.t0, cp.t1, cp.t2, cp.t3, cp.t4, cp.t5);
  var rest = first;
  var at_src = cp.src_off;
  var at_dst = cp.dst_off;
  for (var j = 0u; j < RANK; j++) {
    let k = 5u - j;
    let c = rest % dims[k];
    rest = rest / dims[k];
    at_src += c * from_strides[k];
    at_dst += c * to_strides[k];
  }
  for (var r = 0u; r < RUN; r++) {
    dst[at_dst + r * cp.t5] = src[at_src + r * cp.s5];
  }
}

// ---- placing along one axis ----------------------------------------------------------------------
// dst viewed as [outer, len, inner]: rows [start, start + count) of its middle axis come from src
// [outer, count, inner], every other element is `value` (bit pattern). One pass, no fill first:
// serves pad and slice's backward when only one axis changes.

struct Place { n: u32, len: u32, inner: u32, start: u32, count: u32, value: u32 }
@group(0) @binding(2) var<uniform> place: Place;

@compute @workgroup_size(WG)
fn place_axis(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let j = linear_index(gid, nwg);
  if (j >= place.n) { return; }
  let i = j % place.inner;
  let q = j / place.inner;
  let k = q % place.len;
  let o = q / place.len;
  if (k >= place.start && k < place.start + place.count) {
    dst[j] = src[(o * place.count + k - place.start) * place.inner + i];
  } else {
    dst[j] = place.value;
  }
}

// ---- concat of up to four tensors ----------------------------------------------------------------
// dst viewed as [outer, len, inner]: input t covers rows [start_t, start_t + len_t) of the middle
// axis (start_0 = 0; unused inputs start at len and are bound to input 0). One pass over dst.

struct Concat {
  n: u32, len: u32, inner: u32,
  start1: u32, start2: u32, start3: u32,
  len0: u32, len1: u32, len2: u32, len3: u32,
}
@group(0) @binding(0) var<storage, read> cat0: array<u32>;
@group(0) @binding(1) var<storage, read> cat1: array<u32>;
@group(0) @binding(2) var<storage, read> cat2: array<u32>;
@group(0) @binding(3) var<storage, read> cat3: array<u32>;
@group(0) @binding(4) var<storage, read_write> cat_out: array<u32>;
@group(0) @binding(5) var<uniform> catp: Concat;

@compute @workgroup_size(WG)
fn concat4(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let j = linear_index(gid, nwg);
  if (j >= catp.n) { return; }
  let i = j % catp.inner;
  let q = j / catp.inner;
  let k = q % catp.len;
  let o = q / catp.len;
  if (k < catp.start1) {
    cat_out[j] = cat0[(o * catp.len0 + k) * catp.inner + i];
  } else if (k < catp.start2) {
    cat_out[j] = cat1[(o * catp.len1 + k - catp.start1) * catp.inner + i];
  } else if (k < catp.start3) {
    cat_out[j] = cat2[(o * catp.len2 + k - catp.start2) * catp.inner + i];
  } else {
    cat_out[j] = cat3[(o * catp.len3 + k - catp.start3) * catp.inner + i];
  }
}

// ---- cast ---------------------------------------------------------------------------------------
// Value conversion between dtypes. float → int truncates toward zero; int ↔ int keeps the bits
// (two's complement wrap, as a C cast).
struct Cast { n: u32 }
@group(0) @binding(2) var<uniform> castp: Cast;

fn convert(bits: u32) -> u32 {
  if (FROM == TO || (FROM != 0u && TO != 0u)) { return bits; }
  if (FROM == 0u) {
    let f = bitcast<f32>(bits);
    if (TO == 1u) { return bitcast<u32>(i32(f)); }
    return u32(f);
  }
  if (FROM == 1u) { return bitcast<u32>(f32(bitcast<i32>(bits))); }
  return bitcast<u32>(f32(bits));
}

@compute @workgroup_size(WG)
fn cast_values(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = linear_index(gid, nwg);
  if (i >= castp.n) { return; }
  dst[i] = convert(src[i]);
}

// ---- gather -------------------------------------------------------------------------------------
// src viewed as [outer, len, inner]; out[o, m, c] = src[o, idx[m], c] (0 for an index out of
// range).
struct Gather { n: u32, m: u32, len: u32, inner: u32 }
@group(0) @binding(1) var<storage, read> gather_idx: array<i32>;
@group(0) @binding(2) var<storage, read_write> gather_out: array<u32>;
@group(0) @binding(3) var<uniform> gp: Gather;

// The row an index names, or NONE when it is out of [0, len).
fn row_of(index: i32, len: u32) -> u32 {
  if (index < 0 || u32(index) >= len) { return NONE; }
  return u32(index);
}

@compute @workgroup_size(WG)
fn gather(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let first = linear_index(gid, nwg) * RUN;
  if (first >= gp.n) { return; }
  let block = gp.m * gp.inner;
  let o = first / block;
  let r = first % block;
  let row = row_of(gather_idx[r / gp.inner], gp.len);
  let at = (o * gp.len + row) * gp.inner + r % gp.inner;
  for (var k = 0u; k < RUN; k++) {
    var word = 0u;
    if (row != NONE) { word = src[at + k]; }
    gather_out[first + k] = word;
  }
}

// ---- index plan ---------------------------------------------------------------------------------
// Deterministic scatter-add without float atomics (and without integer ones): the index list is
// turned into a CSR "plan" — offsets[rows + 1] and order[m], listing for each destination row the
// positions m that name it in ascending order — and `scatter_rows` then sums each row's sources
// serially in that order. It is a stable counting sort by row: the list is cut into `blocks`
// blocks of `block` positions, hist[row, b] counts row's positions in block b (one invocation per
// block, so no atomics), the row-major exclusive scan of hist gives where each (row, block) run
// starts, and each block places its positions from there.
//
// Loops stay below 65535 iterations per invocation in total: lavapipe (llvmpipe) silently ends
// longer loops (its LP_MAX_TGSI_LOOP_ITERATIONS limiter). The host sizes blocks and passes so.
struct Plan { m: u32, rows: u32, blocks: u32, block: u32 }
@group(0) @binding(0) var<storage, read> plan_idx: array<i32>;
@group(0) @binding(1) var<storage, read_write> plan_hist: array<u32>;
@group(0) @binding(2) var<uniform> pp: Plan;

@compute @workgroup_size(WG)
fn index_hist(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let b = linear_index(gid, nwg);
  if (b >= pp.blocks) { return; }
  let end = min(pp.m, (b + 1u) * pp.block);
  for (var s = b * pp.block; s < end; s++) {
    let row = row_of(plan_idx[s], pp.rows);
    if (row != NONE) { plan_hist[row * pp.blocks + b] += 1u; }
  }
}

// In-place exclusive prefix sum of hist [rows · blocks] by one workgroup (each invocation scans a
// contiguous chunk), also writing offsets[row] (the start of row's first block) and offsets[rows].
const SCAN_WG: u32 = 256u;
@group(0) @binding(0) var<storage, read_write> scan_hist: array<u32>;
@group(0) @binding(1) var<storage, read_write> scan_offsets: array<u32>;
var<workgroup> scan_part: array<u32, SCAN_WG>;

@compute @workgroup_size(SCAN_WG)
fn index_scan(@builtin(local_invocation_index) t: u32) {
  let len = pp.rows * pp.blocks;
  let chunk = (len + SCAN_WG - 1u) / SCAN_WG;
  let lo = min(t * chunk, len);
  let hi = min(lo + chunk, len);
  var total = 0u;
  for (var j = lo; j < hi; j++) { total += scan_hist[j]; }
  scan_part[t] = total;
  workgroupBarrier();
  if (t == 0u) {
    var run = 0u;
    for (var k = 0u; k < SCAN_WG; k++) {
      let c = scan_part[k];
      scan_part[k] = run;
      run += c;
    }
    scan_offsets[pp.rows] = run;
  }
  workgroupBarrier();
  var run = scan_part[t];
  for (var j = lo; j < hi; j++) {
    let c = scan_hist[j];
    scan_hist[j] = run;
    if (j % pp.blocks == 0u) { scan_offsets[j / pp.blocks] = run; }
    run += c;
  }
}

// Each block places its positions at its runs' starts, in ascending order (hist serves as the
// cursors: only block b touches column b).
@group(0) @binding(2) var<storage, read_write> place_order: array<u32>;
@group(0) @binding(3) var<uniform> placep: Plan;

@compute @workgroup_size(WG)
fn index_place(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let b = linear_index(gid, nwg);
  if (b >= placep.blocks) { return; }
  let end = min(placep.m, (b + 1u) * placep.block);
  for (var s = b * placep.block; s < end; s++) {
    let row = row_of(plan_idx[s], placep.rows);
    if (row == NONE) { continue; }
    let at = row * placep.blocks + b;
    place_order[plan_hist[at]] = s;
    plan_hist[at] += 1u;
  }
}

// ---- scatter rows -------------------------------------------------------------------------------
// src viewed as [outer, m, inner]; out[o, row, c] = Σ over the plan's positions p of row, in
// ascending order, of src[o, p, c]. A pass sums the positions [skip, skip + take) of each row's
// list and adds to what earlier passes left (long lists take several passes: see the loop limit).
struct Scatter { n: u32, rows: u32, m: u32, inner: u32, skip: u32, take: u32 }
@group(0) @binding(0) var<storage, read> scatter_src: array<f32>;
@group(0) @binding(1) var<storage, read> scatter_offsets: array<u32>;
@group(0) @binding(2) var<storage, read> scatter_order: array<u32>;
@group(0) @binding(3) var<storage, read_write> scatter_out: array<f32>;
@group(0) @binding(4) var<uniform> scp: Scatter;

@compute @workgroup_size(WG)
fn scatter_rows(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = linear_index(gid, nwg) * RUN;
  if (i >= scp.n) { return; }
  let block = scp.rows * scp.inner;
  let o = i / block;
  let r = i % block;
  let row = r / scp.inner;
  let base = o * scp.m * scp.inner + r % scp.inner;
  let first = scatter_offsets[row] + scp.skip;
  let end = min(scatter_offsets[row + 1u], first + scp.take);
  var acc: array<f32, 8>;
  for (var k = 0u; k < RUN; k++) { acc[k] = select(scatter_out[i + k], 0.0, scp.skip == 0u); }
  for (var s = first; s < end; s++) {
    let at = base + scatter_order[s] * scp.inner;
    for (var k = 0u; k < RUN; k++) { acc[k] += scatter_src[at + k]; }
  }
  for (var k = 0u; k < RUN; k++) { scatter_out[i + k] = acc[k]; }
}
