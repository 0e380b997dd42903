// Model FLOPs: what the recorder's `flops` counter counts. By the usual MFU convention these are
// the products only — 2 FLOPs per multiply-add of the mathematical operation (a matmul's 2·M·N·K,
// a convolution's 2·N·O·C·kh·kw·Hout·Wout), forward and backward — not the elementwise, norm,
// softmax or optimizer work, not the multiply-adds a kernel spends on padding or partial tiles, not
// copies (im2col, packing), and not what a backward recomputes (fused attention's probabilities).
// Each op that multiplies adds its count once, when it records its work, through these helpers.

import { gpu } from "../../gpu/device.ts";

/** 2·batch·M·N·K: the FLOPs of `batch` products of an [M, K] by a [K, N] matrix. */
export function productFlops(batch: number, m: number, n: number, k: number): number {
  return 2 * batch * m * n * k;
}

/** Adds n model FLOPs to the recorder's counter. */
export function countFlops(n: number): void {
  gpu().recorder.addFlops(n);
}

/**
 * Runs fn without counting: for an op that counts its own model FLOPs and computes them through
 * ops that count theirs on a different (padded, dilated, strided) problem.
 */
export function uncounted<T>(fn: () => T): T {
  return gpu().recorder.withoutFlops(fn);
}
