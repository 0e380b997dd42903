// Self-attention in three dispatches (forward, and two for backward) for short sequences on
// software adapters, reading q, k and v packed as [3, B, H, T, D] from one flat texture (flat.ts:
// on lavapipe a texel fetch of 4 floats costs a fraction of a storage load). One invocation per
// query row walks the keys with an online softmax (running max and sum, the accumulator rescaled as
// the max grows) and writes the row's output and log-sum-exp; the backward recomputes the
// probabilities from the log-sum-exp (nothing of size T × T is stored): one invocation per query
// row writes Δ = dO·O and dq, then one per key row writes dk and dv, into the parts of one
// gradient tensor. The per-row vectors (D / 4 texels) are generated unrolled, in registers.

import { gpu } from "../../gpu/device.ts";
import { defineKernel, type Kernel } from "../../gpu/pipelines.ts";
import { f32bits, grid1d } from "../../gpu/recorder.ts";
import { record, Tensor } from "../tensor.ts";
import { acquireFlat, fitsFlat, FLAT_WGSL } from "./flat.ts";
import { countFlops, productFlops } from "./flops.ts";

const WG = 64;
/** Head widths the generated kernels take: multiples of 4 up to this (the registers per row). */
export const FUSED_ATTENTION_MAX_D = 64;
/**
 * Keys (or queries) one invocation walks at most: lavapipe silently ends an invocation's loops
 * after a budget of iterations (see fused_norm.ts), and each step of the walk unrolls D / 4 loads.
 */
const MAX_LEN = 512;

/**
 * Sequences up to this long take the fused kernels by default on software adapters. Measured on
 * lavapipe (forward + backward, CPU time): [B, H, T, D] = [32, 4, 50, 16] 21 ms fused against 36 ms
 * packed, [8, 6, 65, 32] 23 against 34, but [2, 12, 197, 64] 184 against 154 (each invocation walks
 * the whole sequence serially; the matmuls spread long rows better).
 */
export const FUSED_ATTENTION_DEFAULT_MAX_T = 128;

/** Whether the fused kernels take self-attention of sequence length `t` and head width `d`. */
export function fusedAttentionFits(t: number, d: number, packedFloats: number): boolean {
  return d % 4 === 0 && d > 0 && d <= FUSED_ATTENTION_MAX_D && t > 0 && t <= MAX_LEN &&
    fitsFlat(packedFloats);
}

// Params of all three kernels: rows = B·H·T (the query or key rows, z·T + t with z = b·H + h), len =
// T, n4 = texels per part of qkv, scale, heads = H.
const PARAMS = "struct P { rows: u32, len: u32, n4: u32, scale: f32, heads: u32 }";

/**
 * Where q, k, v and the output live. "heads": qkv [3, B, H, T, D], output [B, H, T, D]; "tokens":
 * qkv [B, T, 3, H, D] (a qkv projection's output as it is), output [B, T, H, D] (the output
 * projection's input as it is), so neither side needs a permuting copy.
 */
export type AttentionLayout = "heads" | "tokens";

/**
 * WGSL addressing, in texels (vec4s): `part_at(part, r)` the first texel of row r (= z·T + t) of q
 * (part 0), k (1) or v (2); `out_at(r)` that of row r of the output (and of its gradient);
 * `part_stride()`, `out_stride()` the texels from one row t of a head to the next.
 */
function addressing(d4: number, layout: AttentionLayout): string {
  if (layout === "heads") {
    return /* wgsl */ `
fn part_at(part: u32, r: u32) -> u32 { return part * p.n4 + r * ${d4}u; }
fn out_at(r: u32) -> u32 { return r * ${d4}u; }
fn part_stride() -> u32 { return ${d4}u; }
fn out_stride() -> u32 { return ${d4}u; }`;
  }
  return /* wgsl */ `
// r = (b·H + h)·T + t → token b·T + t, head h.
fn token_of(r: u32) -> u32 {
  let z = r / p.len;
  return (z / p.heads) * p.len + (r - z * p.len);
}
fn head_of(r: u32) -> u32 { return (r / p.len) % p.heads; }
fn part_at(part: u32, r: u32) -> u32 {
  return ((token_of(r) * 3u + part) * p.heads + head_of(r)) * ${d4}u;
}
fn out_at(r: u32) -> u32 { return (token_of(r) * p.heads + head_of(r)) * ${d4}u; }
// Texels from one row of a head to the next (q, k, v; the output).
fn part_stride() -> u32 { return 3u * p.heads * ${d4}u; }
fn out_stride() -> u32 { return p.heads * ${d4}u; }`;
}

/** `name0 … name{d4-1}` bound to `expr(i)`, one line each. */
const lets = (d4: number, name: string, expr: (i: number) => string) =>
  Array.from({ length: d4 }, (_, i) => `let ${name}${i} = ${expr(i)};`).join("\n  ");
const vars = (d4: number, name: string) =>
  Array.from({ length: d4 }, (_, i) => `var ${name}${i} = vec4f(0.0);`).join("\n  ");
const dots = (d4: number, a: string, b: (i: number) => string) =>
  Array.from({ length: d4 }, (_, i) => `dot(${a}${i}, ${b(i)})`).join(" + ");
const lines = (d4: number, line: (i: number) => string) =>
  Array.from({ length: d4 }, (_, i) => line(i)).join("\n    ");

function forwardSource(d4: number, layout: AttentionLayout): string {
  return /* wgsl */ `
${PARAMS}
@group(0) @binding(0) var tqkv: texture_2d<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<vec4f>;
@group(0) @binding(2) var<storage, read_write> lse: array<f32>;
@group(0) @binding(3) var<uniform> p: P;
${FLAT_WGSL}
${addressing(d4, layout)}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let r = gid.x + gid.y * nwg.x * ${WG}u;
  if (r >= p.rows) { return; }
  let first = (r / p.len) * p.len;
  let qb = part_at(0u, r);
  ${lets(d4, "q", (i) => `flat_texel(tqkv, qb + ${i}u) * p.scale`)}
  ${vars(d4, "a")}
  var m = -3.0e38;
  var l = 0.0;
  let step = part_stride();
  var ks = part_at(1u, first);
  var vs = part_at(2u, first);
  for (var s = 0u; s < p.len; s++) {
    let sc = ${dots(d4, "q", (i) => `flat_texel(tqkv, ks + ${i}u)`)};
    let mn = max(m, sc);
    let corr = exp(m - mn);
    let e = exp(sc - mn);
    l = l * corr + e;
    ${lines(d4, (i) => `a${i} = a${i} * corr + e * flat_texel(tqkv, vs + ${i}u);`)}
    m = mn;
    ks += step;
    vs += step;
  }
  let inv = 1.0 / l;
  let ob = out_at(r);
  ${lines(d4, (i) => `out[ob + ${i}u] = a${i} * inv;`)}
  lse[r] = m + log(l);
}
`;
}

function gradQuerySource(d4: number, layout: AttentionLayout): string {
  return /* wgsl */ `
${PARAMS}
@group(0) @binding(0) var tqkv: texture_2d<f32>;
@group(0) @binding(1) var tdo: texture_2d<f32>;
@group(0) @binding(2) var<storage, read> o: array<vec4f>;
@group(0) @binding(3) var<storage, read> lse: array<f32>;
@group(0) @binding(4) var<storage, read_write> dqkv: array<vec4f>;
@group(0) @binding(5) var<storage, read_write> delta: array<f32>;
@group(0) @binding(6) var<uniform> p: P;
${FLAT_WGSL}
${addressing(d4, layout)}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let r = gid.x + gid.y * nwg.x * ${WG}u;
  if (r >= p.rows) { return; }
  let first = (r / p.len) * p.len;
  let ob = out_at(r);
  ${lets(d4, "g", (i) => `flat_texel(tdo, ob + ${i}u)`)}
  let dl = ${dots(d4, "g", (i) => `o[ob + ${i}u]`)};
  delta[r] = dl;
  let qb = part_at(0u, r);
  ${lets(d4, "q", (i) => `flat_texel(tqkv, qb + ${i}u) * p.scale`)}
  let L = lse[r];
  ${vars(d4, "dq")}
  let step = part_stride();
  var ks = part_at(1u, first);
  var vs = part_at(2u, first);
  for (var s = 0u; s < p.len; s++) {
    ${lines(d4, (i) => `let k${i} = flat_texel(tqkv, ks + ${i}u);`)}
    let pr = exp(${dots(d4, "q", (i) => `k${i}`)} - L);
    let dp = ${dots(d4, "g", (i) => `flat_texel(tqkv, vs + ${i}u)`)};
    let ds = pr * (dp - dl);
    ${lines(d4, (i) => `dq${i} += ds * k${i};`)}
    ks += step;
    vs += step;
  }
  ${lines(d4, (i) => `dqkv[qb + ${i}u] = dq${i} * p.scale;`)}
}
`;
}

function gradKeyValueSource(d4: number, layout: AttentionLayout): string {
  return /* wgsl */ `
${PARAMS}
@group(0) @binding(0) var tqkv: texture_2d<f32>;
@group(0) @binding(1) var tdo: texture_2d<f32>;
@group(0) @binding(2) var<storage, read> lse: array<f32>;
@group(0) @binding(3) var<storage, read> delta: array<f32>;
@group(0) @binding(4) var<storage, read_write> dqkv: array<vec4f>;
@group(0) @binding(5) var<uniform> p: P;
${FLAT_WGSL}
${addressing(d4, layout)}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let r = gid.x + gid.y * nwg.x * ${WG}u;
  if (r >= p.rows) { return; }
  let first = (r / p.len) * p.len;
  let kb = part_at(1u, r);
  let vb = part_at(2u, r);
  ${lets(d4, "k", (i) => `flat_texel(tqkv, kb + ${i}u)`)}
  ${lets(d4, "v", (i) => `flat_texel(tqkv, vb + ${i}u)`)}
  ${vars(d4, "dk")}
  ${vars(d4, "dv")}
  let qstep = part_stride();
  let gstep = out_stride();
  var qt = part_at(0u, first);
  var gt = out_at(first);
  for (var t = 0u; t < p.len; t++) {
    let rt = first + t;
    ${lines(d4, (i) => `let q${i} = flat_texel(tqkv, qt + ${i}u) * p.scale;`)}
    ${lines(d4, (i) => `let g${i} = flat_texel(tdo, gt + ${i}u);`)}
    let pr = exp(${dots(d4, "q", (i) => `k${i}`)} - lse[rt]);
    let dp = ${dots(d4, "g", (i) => `v${i}`)};
    let ds = pr * (dp - delta[rt]);
    ${lines(d4, (i) => `dv${i} += pr * g${i};`)}
    ${lines(d4, (i) => `dk${i} += ds * q${i};`)}
    qt += qstep;
    gt += gstep;
  }
  ${lines(d4, (i) => `dqkv[kb + ${i}u] = dk${i};`)}
  ${lines(d4, (i) => `dqkv[vb + ${i}u] = dv${i};`)}
}
`;
}

const cache = new Map<string, Kernel>();
function kernel(
  kind: "forward" | "grad_q" | "grad_kv",
  d4: number,
  layout: AttentionLayout,
): Kernel {
  const name = `attention_fused_${kind}_d${4 * d4}_${layout}`;
  let k = cache.get(name);
  if (!k) {
    const [source, bindings] = kind === "forward"
      ? [forwardSource(d4, layout), ["texture", "write", "write"] as const]
      : kind === "grad_q"
      ? [
        gradQuerySource(d4, layout),
        ["texture", "texture", "read", "read", "write", "write"] as const,
      ]
      : [gradKeyValueSource(d4, layout), ["texture", "texture", "read", "read", "write"] as const];
    k = defineKernel({ name, source, bindings: [...bindings] });
    cache.set(name, k);
  }
  return k;
}

/**
 * softmax(q·kᵀ·scale)·v of qkv [3, B, H, T, D] → [B, H, T, D] ("heads"), or of qkv [B, T, 3, H, D]
 * → [B, T, H, D] ("tokens"), with its backward rule (to qkv). The caller has checked the shape,
 * dtype and `fusedAttentionFits`.
 */
export function fusedAttention(
  qkv: Tensor,
  scale: number,
  layout: AttentionLayout = "heads",
): Tensor {
  const [B, T, H, D] = layout === "heads"
    ? [qkv.shape[1], qkv.shape[3], qkv.shape[2], qkv.shape[4]]
    : [qkv.shape[0], qkv.shape[1], qkv.shape[3], qkv.shape[4]];
  const d4 = D / 4;
  const rows = B * H * T;
  const n4 = rows * d4;
  const recorder = gpu().recorder;
  const pool = gpu().pool;
  const params = [rows, T, n4, f32bits(scale), H];
  const out = new Tensor(layout === "heads" ? [B, H, T, D] : [B, T, H, D], "f32");
  const lse = new Tensor([rows], "f32");
  // Model FLOPs of the two products q·kᵀ and p·v (T × T × D each per head); the backward counts
  // its four (dp = dO·vᵀ, dq, dk, dv), not the probabilities it recomputes.
  const products = productFlops(B * H, T, T, D);
  countFlops(2 * products);
  const texQkv = acquireFlat(qkv, "attention qkv");
  try {
    recorder.dispatch(kernel("forward", d4, layout), {
      buffers: [texQkv.view, out.binding, lse.binding],
      params,
      workgroups: grid1d(rows, WG),
    });
  } finally {
    pool.releaseTexture(texQkv);
  }
  return record("fusedAttention", out, [qkv], (g) => {
    countFlops(4 * products);
    const grad = new Tensor(qkv.shape, "f32");
    const delta = new Tensor([rows], "f32");
    const [tq, tg] = [acquireFlat(qkv, "attention qkv"), acquireFlat(g, "attention dO")];
    try {
      recorder.dispatch(kernel("grad_q", d4, layout), {
        buffers: [tq.view, tg.view, out.binding, lse.binding, grad.binding, delta.binding],
        params,
        workgroups: grid1d(rows, WG),
      });
      recorder.dispatch(kernel("grad_kv", d4, layout), {
        buffers: [tq.view, tg.view, lse.binding, delta.binding, grad.binding],
        params,
        workgroups: grid1d(rows, WG),
      });
    } finally {
      pool.releaseTexture(tq);
      pool.releaseTexture(tg);
    }
    delta.dispose();
    return [grad];
  });
}
