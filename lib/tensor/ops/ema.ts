// The EMA codebook's updates as in-place kernels (kernels/ema.wgsl; docs/paper-to-code.md): a
// statistics step, the codes from the smoothed statistics, and the restart of dead codes. Each is
// one dispatch over the codes (the total of the counts one reduction more); the chains of
// elementwise ops they replace took ~40 dispatches a training step.

import { gpu } from "../../gpu/device.ts";
import { defineKernel } from "../../gpu/pipelines.ts";
import { f32bits, grid1d } from "../../gpu/recorder.ts";
import type { Tensor } from "../tensor.ts";
import { reduceRaw } from "./reduce_raw.ts";
import source from "../../../kernels/ema.wgsl" with { type: "text" };

const WG = 64;

const kernel = (entry: string, bindings: ("read" | "write")[]) =>
  defineKernel({ name: entry, source, entry, bindings });

const kernels = {
  stats: kernel("ema_stats", ["read", "read", "write", "write"]),
  codes: kernel("ema_codes", ["read", "read", "read", "write"]),
  restart: kernel("ema_restart", [...Array<"read">(4).fill("read"), "write", "write", "write"]),
};

/** An EMA codebook's state: codes e [K, D], statistics N [K] (cluster sizes) and m [K, D]. */
export interface EmaCodebook {
  weight: Tensor;
  clusterSize: Tensor;
  embedAvg: Tensor;
}

function dims(op: string, s: EmaCodebook): [number, number] {
  const [k, d] = s.weight.shape;
  const ok = s.weight.rank === 2 && s.embedAvg.shape.join() === `${k},${d}` &&
    s.clusterSize.shape.join() === `${k}`;
  if (!ok) {
    throw new Error(
      `peco: ${op}: codebook ${s.weight.describe()}, embed_avg ${s.embedAvg.describe()} and ` +
        `cluster_size ${s.clusterSize.describe()} do not fit together`,
    );
  }
  return [k, d];
}

/**
 * One EMA step in place from an assignment's counts [K] and sums [K, D]:
 *   N_k ← γ N_k + (1−γ) n_k,  m_k ← γ m_k + (1−γ) s_k,
 *   Ñ_k = (N_k + ε) / (Σ_j N_j + K ε) · Σ_j N_j,  e_k = m_k / Ñ_k.
 */
export function emaCodebookStep(
  s: EmaCodebook,
  counts: Tensor,
  sums: Tensor,
  decay: number,
  eps: number,
): void {
  const [k, d] = dims("emaCodebookStep", s);
  if (counts.size !== k || sums.size !== k * d) {
    throw new Error(
      `peco: emaCodebookStep: counts ${counts.describe()} and sums ${sums.describe()} ` +
        `do not fit K = ${k}, D = ${d}`,
    );
  }
  const params = [k, d, f32bits(decay), f32bits(1 - decay), f32bits(eps)];
  const recorder = gpu().recorder;
  const workgroups = grid1d(k, WG);
  recorder.dispatch(kernels.stats, {
    buffers: [counts.binding, sums.binding, s.clusterSize.binding, s.embedAvg.binding],
    params,
    workgroups,
  });
  const total = reduceRaw(s.clusterSize, 0, "sum");
  recorder.dispatch(kernels.codes, {
    buffers: [s.clusterSize.binding, s.embedAvg.binding, total.binding, s.weight.binding],
    params,
    workgroups,
  });
  total.dispose();
}

/** What a restarted code is made of (see restartDeadCodes). */
export interface RestartDraw {
  /** The batch's vectors [N, D]. */
  rows: Tensor;
  /** [K] uniform in [0, N): code k's row. */
  draws: Tensor;
  /** [K, D] standard normal. */
  noise: Tensor;
  /** [] or [1]: Σ rows². */
  sumSquares: Tensor;
  /** Relative size of the perturbation, and its floor. */
  jitter: number;
  floor: number;
}

/**
 * In place: every code k with N_k < threshold becomes rows[draw_k] + noise_k · (rms(rows) · jitter
 * + floor), with m_k = that · threshold and N_k = threshold. Live codes are not written (they keep
 * their values bit for bit).
 */
export function restartDeadCodes(s: EmaCodebook, r: RestartDraw, threshold: number): void {
  const [k, d] = dims("restartDeadCodes", s);
  const n = r.rows.shape[0];
  if (r.rows.rank !== 2 || r.rows.shape[1] !== d || r.draws.size !== k || r.noise.size !== k * d) {
    throw new Error(
      `peco: restartDeadCodes: rows ${r.rows.describe()}, draws ${r.draws.describe()} and ` +
        `noise ${r.noise.describe()} do not fit K = ${k}, D = ${d}`,
    );
  }
  if (n === 0) return;
  gpu().recorder.dispatch(kernels.restart, {
    buffers: [
      r.rows.binding,
      r.draws.binding,
      r.noise.binding,
      r.sumSquares.binding,
      s.clusterSize.binding,
      s.embedAvg.binding,
      s.weight.binding,
    ],
    params: [k, d, n, f32bits(threshold), f32bits(r.jitter), f32bits(r.floor)],
    workgroups: grid1d(k, WG),
  });
}
