// Normalisation layers: layerNorm, groupNorm and batchNorm, one set of kernels (kernels/norm.wgsl).
// Each sees its input as [N, C, S] (batch, channels, spatial) with a per-channel weight and bias:
// groupNorm takes statistics per (sample, group of C/G channels); layerNorm is groupNorm with one
// group over [rows, D, 1]; batchNorm takes statistics per channel over N·S. layerNorm and groupNorm
// run the fused kernels of fused_norm.ts whenever a statistics group fits their loops.

import { gpu } from "../../gpu/device.ts";
import { defineKernel, type Kernel } from "../../gpu/pipelines.ts";
import { type BufferSlice, f32bits, grid1d } from "../../gpu/recorder.ts";
import { noGrad, record, Tensor } from "../tensor.ts";
import { addScalar, copy, relu, rsqrt, silu } from "./elementwise.ts";
import { MAX_LOOP } from "./reduce.ts";
import { fusedNorm, fusedNormFits, type NormActivation } from "./fused_norm.ts";
import source from "../../../kernels/norm.wgsl" with { type: "text" };

const WG = 256;
/** The two-level reductions cut groups into pieces until about this many invocations run... */
const TARGET_INVOCATIONS = 4096;
/** ...but no piece shorter than this (merging pieces is serial per group). */
const MIN_PIECE = 64;

/** A kernel of norm.wgsl: `reads` read-only storage buffers, then `writes` written ones. */
const kernel = (entry: string, reads: number, writes: number) =>
  defineKernel({
    name: `norm_${entry}`,
    source,
    entry,
    bindings: [...Array(reads).fill("read"), ...Array(writes).fill("write")],
  });

const kernels = {
  statsPartial: kernel("stats_partial", 1, 1),
  statsCombine: kernel("stats_combine", 1, 2),
  statsCombineRunning: kernel("stats_combine_running", 1, 4),
  apply: kernel("apply", 5, 1),
  apply4: kernel("apply4", 5, 1),
  gradPartial: kernel("grad_partial", 5, 1),
  gradCombine: kernel("grad_combine", 1, 2),
  gradInput: kernel("grad_input", 7, 1),
  gradInput4: kernel("grad_input4", 7, 1),
};

/** x as [n, c, s] with `groups` channel groups; `batch`: statistics per channel over n·s. */
interface Layout {
  op: string;
  n: number;
  c: number;
  s: number;
  groups: number;
  batch: boolean;
}

/** Where a reduction group's elements lie (the `Groups` struct of norm.wgsl, minus the pieces). */
interface Grouping {
  groups: number;
  outer: number;
  len: number;
  ostride: number;
  gstride: number;
  cmod: number;
  cmul: number;
  cstep: number;
  sdiv: number;
  sstep: number;
}

/** Groups over which the statistics are taken. */
function statsGrouping(l: Layout): Grouping {
  return l.batch ? channelGrouping(l) : {
    // One group per (sample, channel group): its Cg channels of S elements lie end to end.
    groups: l.n * l.groups,
    outer: l.c / l.groups,
    len: l.s,
    ostride: l.s,
    gstride: (l.c / l.groups) * l.s,
    cmod: l.groups,
    cmul: l.c / l.groups,
    cstep: 1,
    sdiv: 1,
    sstep: 0,
  };
}

/** One group per channel: N runs of S elements, C·S apart (weight and bias gradients). */
function channelGrouping(l: Layout): Grouping {
  const cg = l.c / l.groups;
  return {
    groups: l.c,
    outer: l.n,
    len: l.s,
    ostride: l.c * l.s,
    gstride: l.s,
    cmod: l.c,
    cmul: 1,
    cstep: 0,
    // Statistics group of (sample o, channel g): the channel itself, or o·G + g / Cg.
    sdiv: l.batch ? 1 : cg,
    sstep: l.batch ? 0 : l.groups,
  };
}

function statsCount(l: Layout): number {
  return l.batch ? l.n * l.s : (l.c / l.groups) * l.s;
}

/** Params of the element kernels (`Elements` in norm.wgsl): see `locate` there. */
function elementParams(l: Layout): number[] {
  const [adiv, amod] = l.batch ? [1, l.c] : [l.c / l.groups, 0xffffffff];
  return [l.n * l.c * l.s, l.c, l.s, adiv, amod, f32bits(1 / statsCount(l))];
}

/**
 * Whether the element kernels can take four elements per invocation through vec4 views (see
 * norm.wgsl): the constants of their vec4 variant, or null for the one-element variant.
 */
function vec4Constants(l: Layout): { CH_VEC: number; SG_VEC: number } | null {
  if (l.s % 4 === 0) return { CH_VEC: 0, SG_VEC: 0 };
  if (l.s !== 1 || l.c % 4 !== 0) return null;
  if (l.batch) return { CH_VEC: 1, SG_VEC: 1 };
  return (l.c / l.groups) % 4 === 0 ? { CH_VEC: 1, SG_VEC: 0 } : null;
}

/** Dispatches the one-element or (when the layout allows) the vec4 variant of an element kernel. */
function dispatchElementwise(
  l: Layout,
  [scalar, vector]: [Kernel, Kernel],
  constants: Record<string, number>,
  buffers: (GPUBuffer | BufferSlice)[],
): void {
  const n = l.n * l.c * l.s;
  const vec = vec4Constants(l);
  gpu().recorder.dispatch(vec ? vector : scalar, {
    buffers,
    params: elementParams(l),
    constants: vec ? { ...constants, ...vec } : constants,
    workgroups: grid1d(vec ? n / 4 : n, WG),
  });
}

/**
 * Splits each group into pieces; returns the Groups params and the piece layout. Pieces and their
 * number stay below MAX_LOOP: lavapipe silently ends longer loops.
 */
function pieces(op: string, g: Grouping): { params: number[]; piece: number; pieces: number } {
  const count = g.outer * g.len;
  const wanted = Math.max(1, Math.ceil(TARGET_INVOCATIONS / g.groups));
  const split = Math.min(wanted, Math.max(1, Math.floor(count / MIN_PIECE)));
  const piece = Math.min(MAX_LOOP, Math.max(1, Math.ceil(count / split)));
  const n = Math.ceil(count / piece);
  if (n > MAX_LOOP) {
    throw new Error(`peco: ${op}: ${count} elements per group exceed ${MAX_LOOP ** 2}`);
  }
  const params = [
    g.groups,
    g.outer,
    g.len,
    g.ostride,
    g.gstride,
    g.cmod,
    g.cmul,
    g.cstep,
    g.sdiv,
    g.sstep,
    piece,
    n,
  ];
  return { params, piece, pieces: n };
}

interface Stats {
  mean: Tensor;
  rstd: Tensor;
}

/** Mean and 1/sqrt(var + eps) per statistics group; updates running stats when given. */
function computeStats(
  x: Tensor,
  l: Layout,
  eps: number,
  running?: { mean: Tensor; var: Tensor; momentum: number },
): Stats {
  const g = statsGrouping(l);
  const p = pieces(l.op, g);
  const parts = new Tensor([g.groups, p.pieces, 2], "f32");
  const recorder = gpu().recorder;
  recorder.dispatch(kernels.statsPartial, {
    buffers: [x.binding, parts.binding],
    params: p.params,
    workgroups: grid1d(g.groups * p.pieces, WG),
  });
  const mean = new Tensor([g.groups], "f32");
  const rstd = new Tensor([g.groups], "f32");
  const combine = [
    g.groups,
    p.pieces,
    p.piece,
    statsCount(l),
    f32bits(eps),
    f32bits(running?.momentum ?? 0),
  ];
  const buffers = [parts.binding, mean.binding, rstd.binding];
  if (running) buffers.push(running.mean.binding, running.var.binding);
  recorder.dispatch(running ? kernels.statsCombineRunning : kernels.statsCombine, {
    buffers,
    params: combine,
    workgroups: grid1d(g.groups, WG),
  });
  parts.dispose();
  return { mean, rstd };
}

/** (Σ u, Σ u·xhat) per group of `g`, u = dy·weight when `weight` is given, else dy. */
function gradSums(
  op: string,
  g: Grouping,
  x: Tensor,
  dy: Tensor,
  stats: Stats,
  weight: Tensor | null,
): [Tensor, Tensor] {
  const p = pieces(op, g);
  const parts = new Tensor([g.groups, p.pieces, 2], "f32");
  const recorder = gpu().recorder;
  recorder.dispatch(kernels.gradPartial, {
    buffers: [
      x.binding,
      stats.mean.binding,
      stats.rstd.binding,
      (weight ?? x).binding,
      dy.binding,
      parts.binding,
    ],
    params: p.params,
    constants: { USE_W: weight ? 1 : 0 },
    workgroups: grid1d(g.groups * p.pieces, WG),
  });
  const sums: [Tensor, Tensor] = [new Tensor([g.groups], "f32"), new Tensor([g.groups], "f32")];
  recorder.dispatch(kernels.gradCombine, {
    buffers: [parts.binding, sums[0].binding, sums[1].binding],
    params: [g.groups, p.pieces, p.piece, g.outer * g.len, 0, 0],
    workgroups: grid1d(g.groups, WG),
  });
  parts.dispose();
  return sums;
}

/**
 * y = (x − mean) · rstd · weight + bias with its backward rule. `constStats`: the statistics do not
 * depend on x (batchNorm in eval mode), so dx is simply dy · weight · rstd.
 */
function normalize(
  x: Tensor,
  l: Layout,
  stats: Stats,
  weight: Tensor | null,
  bias: Tensor | null,
  constStats: boolean,
): Tensor {
  const out = new Tensor(x.shape, "f32");
  dispatchElementwise(l, [kernels.apply, kernels.apply4], {
    HAS_W: weight ? 1 : 0,
    HAS_B: bias ? 1 : 0,
  }, [
    x.binding,
    stats.mean.binding,
    stats.rstd.binding,
    (weight ?? x).binding,
    (bias ?? x).binding,
    out.binding,
  ]);
  const inputs = [x, weight, bias].filter((t): t is Tensor => t != null);
  return record(l.op, out, inputs, (dy) => {
    let gw: Tensor | null = null;
    let gb: Tensor | null = null;
    let channelSums: [Tensor, Tensor] | null = null;
    if (weight?.requiresGrad || bias?.requiresGrad) {
      channelSums = gradSums(l.op, channelGrouping(l), x, dy, stats, null);
      [gb, gw] = channelSums;
    }
    let gx: Tensor | null = null;
    if (x.requiresGrad) {
      // batchNorm without weight: the group sums are the channel sums already at hand.
      const groupSums = constStats
        ? null
        : l.batch && !weight && channelSums
        ? channelSums
        : gradSums(l.op, statsGrouping(l), x, dy, stats, weight);
      gx = new Tensor(x.shape, "f32");
      dispatchElementwise(l, [kernels.gradInput, kernels.gradInput4], {
        HAS_W: weight ? 1 : 0,
        CONST_STATS: constStats ? 1 : 0,
      }, [
        x.binding,
        stats.mean.binding,
        stats.rstd.binding,
        (weight ?? x).binding,
        dy.binding,
        (groupSums?.[0] ?? x).binding,
        (groupSums?.[1] ?? x).binding,
        gx.binding,
      ]);
      if (groupSums && groupSums !== channelSums) groupSums.forEach((t) => t.dispose());
    }
    const grads: (Tensor | null)[] = [gx];
    if (weight) grads.push(weight.requiresGrad ? gw : null);
    if (bias) grads.push(bias.requiresGrad ? gb : null);
    return grads;
  });
}

// ---- validation -------------------------------------------------------------------------------

function shapeOf(t: Tensor): string {
  return `[${t.shape.join(",")}]`;
}

function requireF32(op: string, name: string, t: Tensor): void {
  if (t.dtype !== "f32") throw new Error(`peco: ${op}: ${name} must be f32, got ${t.describe()}`);
}

/** A per-channel parameter (weight, bias, running statistics): f32 of shape [c]. */
function checkChannelParam(op: string, name: string, t: Tensor | null, c: number, x: Tensor) {
  if (!t) return;
  requireF32(op, name, t);
  if (t.rank !== 1 || t.shape[0] !== c) {
    throw new Error(
      `peco: ${op}: ${name} ${shapeOf(t)} does not match ${c} channels of x ${shapeOf(x)}`,
    );
  }
}

/** [N, C, ...spatial] → its layout, checking rank, dtype and the per-channel tensors. */
function channelLayout(
  op: string,
  x: Tensor,
  groups: number,
  batch: boolean,
  params: Record<string, Tensor | null>,
): Layout {
  requireF32(op, "x", x);
  if (x.rank < 2) throw new Error(`peco: ${op}: x ${shapeOf(x)} must be [N, C, ...]`);
  const [n, c] = x.shape;
  for (const [name, t] of Object.entries(params)) checkChannelParam(op, name, t, c, x);
  return { op, n, c, s: x.size / Math.max(1, n * c), groups, batch };
}

// ---- the ops ----------------------------------------------------------------------------------

/** Layer normalisation over the last dim: x [..., D], weight and bias [D] or null. */
export function layerNorm(
  x: Tensor,
  weight: Tensor | null,
  bias: Tensor | null,
  eps = 1e-5,
): Tensor {
  const op = "layerNorm";
  requireF32(op, "x", x);
  if (x.rank < 1) throw new Error(`peco: ${op}: x ${shapeOf(x)} needs at least one dim`);
  const d = x.shape[x.rank - 1];
  checkChannelParam(op, "weight", weight, d, x);
  checkChannelParam(op, "bias", bias, d, x);
  const l: Layout = { op, n: x.size / Math.max(1, d), c: d, s: 1, groups: 1, batch: false };
  if (fusedNormFits(l)) return fusedNorm(l, x, weight, bias, eps);
  return normalize(x, l, computeStats(x, l, eps), weight, bias, false);
}

/** groupNorm's layout of x, checked: C divisible by `groups`, weight and bias [C] or null. */
function groupLayout(x: Tensor, groups: number, weight: Tensor | null, bias: Tensor | null) {
  const op = "groupNorm";
  const l = channelLayout(op, x, groups, false, { weight, bias });
  if (!Number.isInteger(groups) || groups < 1 || l.c % groups !== 0) {
    throw new Error(
      `peco: ${op}: ${l.c} channels of x ${shapeOf(x)} do not split into ${groups} groups`,
    );
  }
  return l;
}

/**
 * Group normalisation: x [N, C, ...spatial], C divisible by `groups`; weight and bias [C]. With
 * `activation` ("silu" or "relu") the result is activation(groupNorm(x)), in the same dispatches
 * when a statistics group fits the fused kernels.
 */
export function groupNorm(
  x: Tensor,
  groups: number,
  weight: Tensor | null,
  bias: Tensor | null,
  eps = 1e-5,
  activation?: NormActivation,
): Tensor {
  const l = groupLayout(x, groups, weight, bias);
  if (fusedNormFits(l)) return fusedNorm(l, x, weight, bias, eps, activation);
  const y = normalize(x, l, computeStats(x, l, eps), weight, bias, false);
  if (activation === undefined) return y;
  return activation === "silu" ? silu(y) : relu(y);
}

export interface BatchNormOptions {
  /** Normalise with the batch statistics and update the running ones (else use the running). */
  training: boolean;
  momentum?: number;
  eps?: number;
}

/**
 * Batch normalisation: x [N, C, ...spatial], statistics per channel. In training mode it normalises
 * with the batch statistics and updates runningMean/runningVar in place (PyTorch semantics:
 * running = (1 − momentum)·running + momentum·batch, with the unbiased batch variance); in eval
 * mode it normalises with the running statistics.
 */
export function batchNorm(
  x: Tensor,
  weight: Tensor | null,
  bias: Tensor | null,
  runningMean: Tensor | null,
  runningVar: Tensor | null,
  { training, momentum = 0.1, eps = 1e-5 }: BatchNormOptions,
): Tensor {
  const op = "batchNorm";
  const l = channelLayout(op, x, x.shape[1] ?? 1, true, {
    weight,
    bias,
    runningMean,
    runningVar,
  });
  if (!runningMean !== !runningVar) {
    throw new Error(`peco: ${op}: give both runningMean and runningVar, or neither`);
  }
  if (runningMean && runningVar && runningMean.sharesStorage(runningVar)) {
    throw new Error(`peco: ${op}: runningMean and runningVar share one buffer`);
  }
  if (!training) {
    if (!runningMean || !runningVar) {
      throw new Error(`peco: ${op}: eval mode needs runningMean and runningVar`);
    }
    // Snapshots, so that the backward rule sees the statistics this forward used.
    const stats = noGrad(() => ({
      mean: copy(runningMean),
      rstd: rsqrt(addScalar(runningVar, eps)),
    }));
    return normalize(x, l, stats, weight, bias, true);
  }
  if (l.n * l.s < 2) {
    throw new Error(
      `peco: ${op}: training needs more than 1 value per channel, x is ${shapeOf(x)}`,
    );
  }
  const running = runningMean && runningVar
    ? { mean: runningMean, var: runningVar, momentum }
    : undefined;
  return normalize(x, l, computeStats(x, l, eps, running), weight, bias, false);
}
