// Vector-quantisation ops: nearest code search (fused distance + argmin), pairwise squared
// distances with autograd, and deterministic per-code statistics for EMA codebook updates.
// Kernel loops are sized to stay below MAX_LOOP iterations per invocation: lavapipe silently ends
// an invocation's loops after 65535 iterations in all.

import { gpu } from "../../gpu/device.ts";
import { defineKernel } from "../../gpu/pipelines.ts";
import { grid1d } from "../../gpu/recorder.ts";
import { record, Tensor } from "../tensor.ts";
import { zeros } from "./creation.ts";
import { mul, mulScalar, sub } from "./elementwise.ts";
import { countFlops, productFlops } from "./flops.ts";
import { rowWorkgroup } from "./kernels.ts";
import { matmul } from "./matmul.ts";
import { MAX_LOOP, reduceRaw, sum } from "./reduce.ts";
import source from "../../../kernels/vq.wgsl" with { type: "text" };

/** Workgroup size of the vq kernels (the WGSL default of the WG override). */
const WG = 64;
/** Rows per invocation and codes per block of vq_nearest. */
const NEAREST_BLOCK = 16;
/** The largest codebook these ops accept (codeStats keeps K × chunks counters). */
export const MAX_CODES = 1 << 16;
/** The longest code vectors: a row of D floats is one loop in several kernels. */
export const MAX_DIM = 4096;
/** Invocations of vq_scan (its SCAN_WG). */
const SCAN_WG = 256;

const kernel = (name: string, bindings: ("read" | "write")[]) =>
  defineKernel({ name, source, entry: name, bindings });

const kernels = {
  pad: kernel("vq_pad", ["read", "write", "write"]),
  nearest: kernel("vq_nearest", ["read", "read", "read", "write", "write"]),
  distances: kernel("vq_distances", ["read", "read", "write"]),
  // vq_hist binds `order` unused, so that it shares vq_scatter's layout and params binding.
  hist: kernel("vq_hist", ["read", "write", "write"]),
  scan: kernel("vq_scan", ["write"]),
  scatter: kernel("vq_scatter", ["read", "write", "write"]),
  segsum: kernel("vq_segsum", ["read", "read", "read", "write", "write"]),
};

function checkSizes(op: string, k: number, d: number): void {
  if (!Number.isInteger(k) || k < 1 || k > MAX_CODES) {
    throw new Error(`peco: ${op}: K = ${k} codes, but this method supports 1 to ${MAX_CODES}`);
  }
  if (d < 1 || d > MAX_DIM) {
    throw new Error(`peco: ${op}: D = ${d}, but this method supports 1 to ${MAX_DIM}`);
  }
}

/** Checks z [N, D] and codebook [K, D] (f32, same D); returns [N, K, D]. */
function checkPair(op: string, z: Tensor, codebook: Tensor): [number, number, number] {
  if (z.dtype !== "f32" || codebook.dtype !== "f32" || z.rank !== 2 || codebook.rank !== 2) {
    throw new Error(
      `peco: ${op}: needs f32 z [N, D] and codebook [K, D], got ${z.describe()} and ` +
        codebook.describe(),
    );
  }
  const [n, d] = z.shape;
  const [k, dc] = codebook.shape;
  if (d !== dc) {
    throw new Error(
      `peco: ${op}: z [${z.shape}] and codebook [${codebook.shape}] differ in D (${d} vs ${dc})`,
    );
  }
  checkSizes(op, k, d);
  return [n, k, d];
}

interface Padded {
  /** The rows as vec4 rows of dp floats (x itself when it needed no padding). */
  rows: Tensor;
  /** Squared norm of each row (F32_MAX for pad rows), when asked for. */
  norms: Tensor | null;
  dp: number;
}

/**
 * x [rows, D] as rows of Dp = 4·ceil(D/4) floats with `rowsOut` ≥ rows rows (zero padding), as
 * the vec4 kernels read them, and optionally the squared norm of each row.
 */
function padRows(x: Tensor, rowsOut: number, wantNorms: boolean): Padded {
  const [rows, d] = x.shape;
  const dp = Math.ceil(d / 4) * 4;
  if (dp === d && rowsOut === rows && !wantNorms) return { rows: x, norms: null, dp };
  const out = new Tensor([rowsOut, dp], "f32");
  const norms = new Tensor([rowsOut], "f32");
  gpu().recorder.dispatch(kernels.pad, {
    buffers: [x.binding, out.binding, norms.binding],
    params: [rows, rowsOut, d, dp],
    workgroups: grid1d(rowsOut, WG),
  });
  if (wantNorms) return { rows: out, norms, dp };
  norms.dispose();
  return { rows: out, norms: null, dp };
}

/** Releases padRows' copies (later work may reuse the buffers: dispatches run in order). */
function release(original: Tensor, padded: Padded): void {
  if (padded.rows !== original) padded.rows.dispose();
  padded.norms?.dispose();
}

/**
 * The nearest code of each row of z [N, D] in codebook [K, D] → indices i32 [N] and the squared
 * Euclidean distance to that code f32 [N]. Distance and argmin are fused: no [N, K] matrix is
 * materialised. The argmin compares ||c||² − 2 z·c in f32 (the expansion of ||z − c||² without
 * the row's constant ||z||²), which is what makes it a register-blocked matrix product; on near
 * ties (gaps around 1e-6 of ||z||² + ||c||²) it may pick another code than the direct form would.
 * Exact ties of the score go to the lowest index. The distances are recomputed directly as
 * Σ (z − c)² for the chosen code, so they carry no cancellation error. Large K·D scans run as
 * several passes over code ranges (lavapipe's loop limit), with the same result. No gradient.
 */
export function nearestCode(z: Tensor, codebook: Tensor): { indices: Tensor; distances: Tensor } {
  const [n, k] = checkPair("nearestCode", z, codebook);
  const indices = new Tensor([n], "i32");
  const distances = new Tensor([n], "f32");
  if (n === 0) return { indices, distances };
  // Model FLOPs: the scores' product z·cᵀ (the norms and the chosen code's distance are not).
  countFlops(productFlops(1, n, k, z.shape[1]));
  // The codebook padded to whole blocks of codes, with its norms; z padded only when D % 4 ≠ 0.
  const kp = Math.ceil(k / NEAREST_BLOCK) * NEAREST_BLOCK;
  const codes = padRows(codebook, kp, true);
  const rows = padRows(z, n, false);
  const d4 = codes.dp / 4;
  // An invocation loops (d4 + 1) times per block of codes, and 16·(d4 + 1) times to finish.
  const blocksPerPass = Math.floor(MAX_LOOP / (d4 + 1)) - NEAREST_BLOCK;
  const codesPerPass = blocksPerPass * NEAREST_BLOCK;
  const wg = rowWorkgroup();
  for (let begin = 0; begin < kp; begin += codesPerPass) {
    const end = Math.min(kp, begin + codesPerPass);
    gpu().recorder.dispatch(kernels.nearest, {
      buffers: [
        rows.rows.binding,
        codes.rows.binding,
        codes.norms!.binding,
        indices.binding,
        distances.binding,
      ],
      params: [n, d4, begin, end, begin === 0 ? 1 : 0, end === kp ? 1 : 0],
      constants: { WG: wg },
      workgroups: grid1d(Math.ceil(n / NEAREST_BLOCK), wg),
    });
  }
  release(codebook, codes);
  release(z, rows);
  return { indices, distances };
}

/**
 * Squared Euclidean distances [N, K] between the rows of z [N, D] and codebook [K, D], computed
 * directly as Σ (z − c)². The backward pass uses the expanded form:
 * ∂/∂z = 2 (z · Σ_k g − g · C) and ∂/∂C = 2 (C · Σ_n g − gᵀ · z).
 */
export function codeDistances(z: Tensor, codebook: Tensor): Tensor {
  const [n, k] = checkPair("codeDistances", z, codebook);
  const out = new Tensor([n, k], "f32");
  // Model FLOPs: as many as the product z·cᵀ the distances expand to (the backward's products
  // count their own).
  countFlops(productFlops(1, n, k, z.shape[1]));
  if (out.size > 0) {
    const rows = padRows(z, n, false);
    const codes = padRows(codebook, k, false);
    gpu().recorder.dispatch(kernels.distances, {
      buffers: [rows.rows.binding, codes.rows.binding, out.binding],
      params: [n, k, codes.dp / 4],
      workgroups: grid1d(out.size, WG),
    });
    release(z, rows);
    release(codebook, codes);
  }
  return record("codeDistances", out, [z, codebook], (g) => [
    z.requiresGrad ? mulScalar(sub(mul(z, sum(g, 1, true)), matmul(g, codebook)), 2) : null,
    codebook.requiresGrad
      ? mulScalar(sub(mul(codebook, sum(g, 0).view([k, 1])), matmul(g, z, { transA: true })), 2)
      : null,
  ]);
}

/**
 * Chunks of rows of codeStats's counting sort: chunks run in parallel and each owns K counters,
 * so aim for about 4N counters in all and at least 32 rows per chunk, but keep every chunk's loop
 * below MAX_LOOP rows.
 */
function statChunks(n: number, k: number): number {
  const wanted = Math.min(Math.ceil(n / 32), Math.floor((4 * n) / k));
  return Math.max(1, Math.ceil(n / MAX_LOOP), wanted);
}

/**
 * Per-code statistics of an assignment: counts f32 [K] (rows assigned to each code) and sums
 * f32 [K, D] (sum of the rows of z assigned to each code), e.g. for EMA codebook updates.
 * Deterministic without float atomics: a stable counting sort of the rows by code, then each
 * code's rows are summed in row order, so equal inputs give bit-identical results. Indices
 * outside [0, K) are ignored. No gradient.
 */
export function codeStats(indices: Tensor, z: Tensor, k: number): { counts: Tensor; sums: Tensor } {
  if (indices.dtype !== "i32" || indices.rank !== 1) {
    throw new Error(`peco: codeStats: needs indices i32 [N], got ${indices.describe()}`);
  }
  if (z.dtype !== "f32" || z.rank !== 2 || z.shape[0] !== indices.shape[0]) {
    throw new Error(
      `peco: codeStats: needs z f32 [N, D] with N = ${indices.shape[0]} (the indices' length), ` +
        `got ${z.describe()}`,
    );
  }
  const [n, d] = z.shape;
  checkSizes("codeStats", k, d);
  const chunks = statChunks(n, k);
  // vq_scan's invocations each loop twice over len / SCAN_WG counters, and one over SCAN_WG.
  const maxCounters = (SCAN_WG * (MAX_LOOP - SCAN_WG)) / 2;
  if (k * chunks > maxCounters) {
    throw new Error(
      `peco: codeStats: N = ${n} rows with K = ${k} codes need ${k * chunks} counters, ` +
        `above the ${maxCounters} one scan handles`,
    );
  }
  const chunk = Math.max(1, Math.ceil(n / chunks));
  const recorder = gpu().recorder;
  const slots = zeros([k * chunks], "u32");
  const order = new Tensor([n], "u32");
  const sortParams = [n, k, chunks, chunk];
  recorder.dispatch(kernels.hist, {
    buffers: [indices.binding, slots.binding, order.binding],
    params: sortParams,
    workgroups: grid1d(chunks, WG),
  });
  recorder.dispatch(kernels.scan, {
    buffers: [slots.binding],
    params: [slots.size],
    workgroups: [1],
  });
  recorder.dispatch(kernels.scatter, {
    buffers: [indices.binding, slots.binding, order.binding],
    params: sortParams,
    workgroups: grid1d(chunks, WG),
  });
  // A code may own every row: its sum is split into parts of at most MAX_LOOP rows, added up in
  // part order afterwards (deterministic too).
  const parts = Math.max(1, Math.ceil(n / MAX_LOOP));
  const counts = new Tensor([k], "f32");
  const partial = new Tensor(parts === 1 ? [k, d] : [parts, k, d], "f32");
  const rows = padRows(z, n, false);
  const d4 = rows.dp / 4;
  const groups = Math.ceil(d4 / 4);
  recorder.dispatch(kernels.segsum, {
    buffers: [rows.rows.binding, slots.binding, order.binding, counts.binding, partial.binding],
    params: [k, d, d4, groups, chunks, MAX_LOOP, parts],
    workgroups: grid1d(parts * k * groups, WG),
  });
  release(z, rows);
  slots.dispose();
  order.dispose();
  if (parts === 1) return { counts, sums: partial };
  const sums = reduceRaw(partial, 0, "sum");
  partial.dispose();
  return { counts, sums };
}
