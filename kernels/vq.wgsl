// Vector quantisation: nearest code search, pairwise squared distances with their gradients, and
// per-code statistics (counts and sums of the assigned vectors) for EMA codebook updates.
// z is [N, D] and the codebook [K, D], both row-major.
//
// The distance kernels read rows as vec4: on lavapipe every storage load is a loop over the SIMD
// lanes whatever its width, so a vec4 load costs about what a scalar one does. Rows whose D is not
// a multiple of 4 are first copied to zero-padded rows of Dp = 4·ceil(D/4) floats by vq_pad.

override WG: u32 = 64;

fn index(gid: vec3u, nwg: vec3u) -> u32 {
  return gid.x + gid.y * nwg.x * WG;
}

const F32_MAX: f32 = 3.40282347e38;

// z [N, Dp] and the codebook [K(p), Dp] as vec4 rows of d4 = Dp / 4 elements.
@group(0) @binding(0) var<storage, read> z4: array<vec4f>;
@group(0) @binding(1) var<storage, read> cb4: array<vec4f>;

fn dot_acc(a: vec4f, b: vec4f, acc: f32) -> f32 {
  return fma(a.x, b.x, fma(a.y, b.y, fma(a.z, b.z, fma(a.w, b.w, acc))));
}

// Σ (z[zrow] − codebook[crow])² over d4 vec4s, from the differences (no cancellation).
fn sq_dist4(zrow: u32, crow: u32, d4: u32) -> f32 {
  var s = 0.0;
  for (var i = 0u; i < d4; i++) {
    let e = z4[zrow + i] - cb4[crow + i];
    s = dot_acc(e, e, s);
  }
  return s;
}

// ---- vq_pad: dst [rows_out, dp] = src [rows, d] padded with zeros, and the squared norm of each
// row (F32_MAX for the pad rows rows .. rows_out − 1, so that a pad code never wins a search).

struct Pad { rows: u32, rows_out: u32, d: u32, dp: u32 }

@group(0) @binding(0) var<storage, read> pad_src: array<f32>;
@group(0) @binding(1) var<storage, read_write> pad_dst: array<f32>;
@group(0) @binding(2) var<storage, read_write> pad_norm: array<f32>;
@group(0) @binding(3) var<uniform> pp: Pad;

@compute @workgroup_size(WG)
fn vq_pad(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let row = index(gid, nwg);
  if (row >= pp.rows_out) { return; }
  let live = row < pp.rows;
  var norm = 0.0;
  for (var j = 0u; j < pp.dp; j++) {
    var v = 0.0;
    if (live && j < pp.d) { v = pad_src[row * pp.d + j]; }
    norm = fma(v, v, norm);
    pad_dst[row * pp.dp + j] = v;
  }
  pad_norm[row] = select(F32_MAX, norm, live);
}

// ---- vq_nearest: each invocation owns 16 rows of z and scans the codes in blocks of 16,
// holding the 16 × 16 dot products of a block in registers as 4 × 4 matrices, one per quad of
// rows and quad of codes: each vec4 step loads 16 + 16 vec4s for 1024 multiply-adds. On lavapipe
// every storage load is a loop over the SIMD lanes, so loads per multiply-add set the speed:
// 16 × 16 ran about 1.8× faster than 8 × 8 there. Shared memory would not help (its loads are
// loops too, and barriers are slow). The blocks are explicit struct values rather than arrays
// indexed in loops, which the compiler may leave in memory and whose loops would count against
// lavapipe's limit on loop iterations (65535 per invocation, after which loops silently end).
// That limit also splits long scans into passes over code ranges [k_begin, k_end): between
// passes each row's best code and score wait in idx and dist; the last pass writes the distance.
// A code's score is ||c||² − 2 z·c, the squared distance less the row's constant ||z||²; codes are
// folded in ascending order with a strict <, so the first code wins ties. The distance written is
// recomputed directly as Σ (z − c)² for the chosen code.

struct Nearest { n: u32, d4: u32, k_begin: u32, k_end: u32, first_pass: u32, last_pass: u32 }

@group(0) @binding(2) var<storage, read> near_norm: array<vec4f>;
@group(0) @binding(3) var<storage, read_write> near_idx: array<i32>;
@group(0) @binding(4) var<storage, read_write> near_dist: array<f32>;
@group(0) @binding(5) var<uniform> np: Nearest;

// Vec4 i of the rows at z4 offsets o, as a matrix with m[d][r] = z_r[d].
fn rows4(o: vec4u, i: u32) -> mat4x4f {
  return transpose(mat4x4f(z4[o.x + i], z4[o.y + i], z4[o.z + i], z4[o.w + i]));
}

// Vec4 i of 16 codes from k on, as 4 matrices with m_q[j][d] = c_{k+4q+j}[d].
struct Codes16 { q0: mat4x4f, q1: mat4x4f, q2: mat4x4f, q3: mat4x4f }

fn codes4(k: u32, i: u32) -> mat4x4f {
  let d4 = np.d4;
  return mat4x4f(
    cb4[k * d4 + i],
    cb4[(k + 1u) * d4 + i],
    cb4[(k + 2u) * d4 + i],
    cb4[(k + 3u) * d4 + i],
  );
}

fn codes16(k: u32, i: u32) -> Codes16 {
  return Codes16(codes4(k, i), codes4(k + 4u, i), codes4(k + 8u, i), codes4(k + 12u, i));
}

// Dot products of 4 rows with 16 codes: (z * c.q)[j][r] = z_r · c_{k+4q+j}.
fn mac(a: Codes16, z: mat4x4f, c: Codes16) -> Codes16 {
  return Codes16(a.q0 + z * c.q0, a.q1 + z * c.q1, a.q2 + z * c.q2, a.q3 + z * c.q3);
}

// The best score and code so far of 4 rows.
struct Best4 { score: vec4f, code: vec4u }

fn fold1(b: Best4, dots: vec4f, norm: f32, code: u32) -> Best4 {
  let score = vec4f(norm) - 2.0 * dots;
  let better = score < b.score;
  return Best4(select(b.score, score, better), select(b.code, vec4u(code), better));
}

// Folds codes k .. k + 3, whose dot products with the 4 rows are the columns of acc.
fn fold4(b: Best4, acc: mat4x4f, k: u32) -> Best4 {
  let norm = near_norm[k / 4u];
  let b1 = fold1(fold1(b, acc[0], norm.x, k), acc[1], norm.y, k + 1u);
  return fold1(fold1(b1, acc[2], norm.z, k + 2u), acc[3], norm.w, k + 3u);
}

fn fold16(b: Best4, acc: Codes16, k: u32) -> Best4 {
  return fold4(fold4(fold4(fold4(b, acc.q0, k), acc.q1, k + 4u), acc.q2, k + 8u), acc.q3, k + 12u);
}

// Rows first .. first + 3, clamped to the last row: rows past the end repeat the last row, are
// computed like it and write its values again.
fn rows_of(first: u32) -> vec4u {
  return min(vec4u(first) + vec4u(0u, 1u, 2u, 3u), vec4u(np.n - 1u));
}

// The best codes of 4 rows before this pass: none, or what the previous pass left.
fn start4(rows: vec4u) -> Best4 {
  if (np.first_pass == 1u) { return Best4(vec4f(F32_MAX), vec4u(0u)); }
  return Best4(
    vec4f(near_dist[rows.x], near_dist[rows.y], near_dist[rows.z], near_dist[rows.w]),
    vec4u(vec4i(near_idx[rows.x], near_idx[rows.y], near_idx[rows.z], near_idx[rows.w])),
  );
}

// Writes the best codes of 4 rows, with their distances after the last pass (else their scores).
fn finish4(rows: vec4u, b: Best4) {
  for (var r = 0u; r < 4u; r++) {
    let row = rows[r];
    near_idx[row] = i32(b.code[r]);
    if (np.last_pass == 1u) {
      near_dist[row] = sq_dist4(row * np.d4, b.code[r] * np.d4, np.d4);
    } else {
      near_dist[row] = b.score[r];
    }
  }
}

@compute @workgroup_size(WG)
fn vq_nearest(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let first = index(gid, nwg) * 16u;
  if (first >= np.n) { return; }
  let r0 = rows_of(first);
  let r1 = rows_of(first + 4u);
  let r2 = rows_of(first + 8u);
  let r3 = rows_of(first + 12u);
  let o0 = r0 * np.d4;
  let o1 = r1 * np.d4;
  let o2 = r2 * np.d4;
  let o3 = r3 * np.d4;
  var b0 = start4(r0);
  var b1 = start4(r1);
  var b2 = start4(r2);
  var b3 = start4(r3);
  for (var k = np.k_begin; k < np.k_end; k += 16u) {
    let zero = Codes16(mat4x4f(), mat4x4f(), mat4x4f(), mat4x4f());
    var a0 = zero;
    var a1 = zero;
    var a2 = zero;
    var a3 = zero;
    for (var i = 0u; i < np.d4; i++) {
      let c = codes16(k, i);
      a0 = mac(a0, rows4(o0, i), c);
      a1 = mac(a1, rows4(o1, i), c);
      a2 = mac(a2, rows4(o2, i), c);
      a3 = mac(a3, rows4(o3, i), c);
    }
    b0 = fold16(b0, a0, k);
    b1 = fold16(b1, a1, k);
    b2 = fold16(b2, a2, k);
    b3 = fold16(b3, a3, k);
  }
  finish4(r0, b0);
  finish4(r1, b1);
  finish4(r2, b2);
  finish4(r3, b3);
}

// ---- codeDistances ------------------------------------------------------------------------------

struct Dist { n: u32, k: u32, d4: u32 }

@group(0) @binding(2) var<storage, read_write> dist_out: array<f32>;
@group(0) @binding(3) var<uniform> dp: Dist;

// out[n, k] = Σ_d (z[n, d] − codebook[k, d])².
@compute @workgroup_size(WG)
fn vq_distances(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = index(gid, nwg);
  if (i >= dp.n * dp.k) { return; }
  dist_out[i] = sq_dist4((i / dp.k) * dp.d4, (i % dp.k) * dp.d4, dp.d4);
}

// ---- codeStats ----------------------------------------------------------------------------------
// A stable counting sort of the rows by code, then sums over each code's rows in row order: no
// float atomics, and the summation order is fixed, so results are bit-identical from run to run.
// The rows are cut into `chunks` chunks of `chunk` rows; counters live in one array ordered
// (code, chunk), so its exclusive prefix sum is each (code, chunk)'s first slot in the sorted
// order. Rows whose index is outside [0, K) are ignored. Every loop is sized by the host to stay
// below lavapipe's limit on loop iterations per invocation.

struct Stats { n: u32, k: u32, chunks: u32, chunk: u32 }

@group(0) @binding(0) var<storage, read> stat_idx: array<i32>;
@group(0) @binding(1) var<storage, read_write> stat_slots: array<u32>;
@group(0) @binding(2) var<storage, read_write> stat_order: array<u32>;
@group(0) @binding(3) var<uniform> sp: Stats;

// The code of a row, or K when it is out of range.
fn code_of(row: u32) -> u32 {
  let c = stat_idx[row];
  return select(sp.k, u32(c), c >= 0 && u32(c) < sp.k);
}

// One invocation per chunk counts its rows per code into slots[code · chunks + chunk] (zeroed
// beforehand).
@compute @workgroup_size(WG)
fn vq_hist(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let c = index(gid, nwg);
  if (c >= sp.chunks) { return; }
  let end = min(sp.n, (c + 1u) * sp.chunk);
  for (var row = c * sp.chunk; row < end; row++) {
    let k = code_of(row);
    if (k < sp.k) { stat_slots[k * sp.chunks + c] += 1u; }
  }
}

// After the prefix sum, each chunk walks its rows in order and places them: order[slot] = row.
// Every slot ends one past its (code, chunk)'s last row, i.e. at the start of the next slot.
@compute @workgroup_size(WG)
fn vq_scatter(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let c = index(gid, nwg);
  if (c >= sp.chunks) { return; }
  let end = min(sp.n, (c + 1u) * sp.chunk);
  for (var row = c * sp.chunk; row < end; row++) {
    let k = code_of(row);
    if (k < sp.k) {
      let at = k * sp.chunks + c;
      let slot = stat_slots[at];
      stat_order[slot] = row;
      stat_slots[at] = slot + 1u;
    }
  }
}

// Exclusive prefix sum of slots[0 .. len) in place, by one workgroup: each invocation sums a
// contiguous segment, invocation 0 scans the SCAN_WG partial sums, then each segment is rewritten.
const SCAN_WG: u32 = 256u;

struct Scan { len: u32 }

@group(0) @binding(0) var<storage, read_write> scan_data: array<u32>;
@group(0) @binding(1) var<uniform> scp: Scan;

var<workgroup> scan_partial: array<u32, SCAN_WG>;

@compute @workgroup_size(SCAN_WG)
fn vq_scan(@builtin(local_invocation_index) t: u32) {
  let seg = (scp.len + SCAN_WG - 1u) / SCAN_WG;
  let start = min(scp.len, t * seg);
  let end = min(scp.len, start + seg);
  var total = 0u;
  for (var i = start; i < end; i++) { total += scan_data[i]; }
  scan_partial[t] = total;
  workgroupBarrier();
  if (t == 0u) {
    var running = 0u;
    for (var j = 0u; j < SCAN_WG; j++) {
      let v = scan_partial[j];
      scan_partial[j] = running;
      running += v;
    }
  }
  workgroupBarrier();
  var running = scan_partial[t];
  for (var i = start; i < end; i++) {
    let v = scan_data[i];
    scan_data[i] = running;
    running += v;
  }
}

// One invocation per (part, code, group of 16 dims) sums its code's rows of z (padded vec4 rows)
// in sorted order, which is row order. A group is 4 vec4 quads, so each row index loaded serves 4
// vec4 loads of z (on lavapipe the number of loads sets the speed). A part is a run of at most
// part_len of the code's rows; with several parts, the sums are partial sums [parts, K, D] that
// the host adds up in part order.
struct SegSum { k: u32, d: u32, d4: u32, groups: u32, chunks: u32, part_len: u32, parts: u32 }

@group(0) @binding(1) var<storage, read> seg_slots: array<u32>;
@group(0) @binding(2) var<storage, read> seg_order: array<u32>;
@group(0) @binding(3) var<storage, read_write> seg_counts: array<f32>;
@group(0) @binding(4) var<storage, read_write> seg_sums: array<f32>;
@group(0) @binding(5) var<uniform> gsp: SegSum;

// Writes the real columns of quad q of row `at` of the sums (the pad columns of the last quad,
// and quads past the last, are dropped).
fn write_quad(at: u32, q: u32, s: vec4f) {
  for (var e = 0u; e < 4u; e++) {
    let col = 4u * q + e;
    if (q < gsp.d4 && col < gsp.d) { seg_sums[at * gsp.d + col] = s[e]; }
  }
}

@compute @workgroup_size(WG)
fn vq_segsum(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = index(gid, nwg);
  let per_part = gsp.k * gsp.groups;
  if (i >= gsp.parts * per_part) { return; }
  let part = i / per_part;
  let k = (i % per_part) / gsp.groups;
  let q = 4u * (i % gsp.groups);
  // After vq_scatter, slot (k, chunks − 1) ends code k's rows and slot (k − 1, chunks − 1) starts
  // them.
  let code_start = select(0u, seg_slots[max(k * gsp.chunks, 1u) - 1u], k > 0u);
  let code_end = seg_slots[(k + 1u) * gsp.chunks - 1u];
  if (part == 0u && q == 0u) { seg_counts[k] = f32(code_end - code_start); }
  // Parts past the code's rows still write their zero sums.
  let start = min(code_start + part * gsp.part_len, code_end);
  let end = min(start + gsp.part_len, code_end);
  // Quads past the last re-read the last one (in bounds; never written).
  let last = gsp.d4 - 1u;
  let q1 = min(q + 1u, last);
  let q2 = min(q + 2u, last);
  let q3 = min(q + 3u, last);
  var s0 = vec4f(0.0);
  var s1 = vec4f(0.0);
  var s2 = vec4f(0.0);
  var s3 = vec4f(0.0);
  for (var j = start; j < end; j++) {
    let row = seg_order[j] * gsp.d4;
    s0 += z4[row + q];
    s1 += z4[row + q1];
    s2 += z4[row + q2];
    s3 += z4[row + q3];
  }
  let at = part * gsp.k + k;
  write_quad(at, q, s0);
  write_quad(at, q + 1u, s1);
  write_quad(at, q + 2u, s2);
  write_quad(at, q + 3u, s3);
}
