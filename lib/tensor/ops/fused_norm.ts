// Fused layer and group normalisation (kernels/fused_norm.wgsl): one dispatch forward (statistics
// and output together), one for dx and one (or two, when the samples are split into pieces) for the
// weight and bias gradients; the general kernels of norm.ts take five to eight dispatches for the
// same work. x is seen as [N, C, S] with G groups of C / G channels (layerNorm: [rows, D, 1], G = 1).
// With an activation the op is groupNorm followed by SiLU or ReLU, in the same dispatches.

import { gpu } from "../../gpu/device.ts";
import { forcedVariant } from "../../gpu/autotune.ts";
import { defineKernel } from "../../gpu/pipelines.ts";
import { f32bits, grid1d } from "../../gpu/recorder.ts";
import { record, Tensor } from "../tensor.ts";
import { add } from "./elementwise.ts";
import { rowWorkgroup } from "./kernels.ts";
import source from "../../../kernels/fused_norm.wgsl" with { type: "text" };

/**
 * lavapipe silently ends an invocation's loops after a budget of iterations shared by all its loops
 * (measured: three passes over 16000 elements stop after about 43600): the forward walks a
 * statistics group three times, so a group holds at most this many elements, and a piece of the
 * weight/bias gradient walks at most this many.
 */
const MAX_GROUP = 10_000;
/** On GPUs, samples per piece of the weight/bias gradient aim for about this many invocations. */
const TARGET_INVOCATIONS = 4096;

/** The element type of x, y, dy and dx in kernels/fused_norm.wgsl: one float, or four. */
const HEADERS = {
  scalar: "alias V = f32;\nconst LANES = 1u;\nfn hsum(v: V) -> f32 { return v; }\n" +
    "fn first(v: V) -> f32 { return v; }\n",
  vec4: "alias V = vec4f;\nconst LANES = 4u;\n" +
    "fn hsum(v: V) -> f32 { return (v.x + v.y) + (v.z + v.w); }\nfn first(v: V) -> f32 { return v.x; }\n",
};
type Lanes = keyof typeof HEADERS;

const kernelSet = (lanes: Lanes) => {
  const kernel = (entry: string, bindings: ("read" | "write")[]) =>
    defineKernel({
      name: `fused_norm_${entry}${lanes === "vec4" ? "_v4" : ""}`,
      source: HEADERS[lanes] + source,
      entry,
      bindings,
    });
  const reads = (n: number) => Array<"read">(n).fill("read");
  return {
    forward: kernel("forward", [...reads(3), "write", "write", "write"]),
    gradInput: kernel("grad_input", [...reads(7), "write"]),
    gradParams: kernel("grad_params", [...reads(6), "write", "write"]),
    gradParamsMerge: kernel("grad_params_merge", ["read", "write", "write"]),
  };
};
const kernelSets = { scalar: kernelSet("scalar"), vec4: kernelSet("vec4") };

/**
 * The vec4 kernels where each channel's S elements are whole vec4s (unless
 * `forceVariant("fusedNorm", "scalar")`: tests compare the two), else the one-float ones.
 */
function kernelsFor(l: FusedNormLayout) {
  const vec4 = l.s % 4 === 0 && forcedVariant("fusedNorm") !== "scalar";
  return kernelSets[vec4 ? "vec4" : "scalar"];
}

/** The activation a fused norm applies to its output, in the same dispatches. */
export type NormActivation = "silu" | "relu";
/** ACT in kernels/fused_norm.wgsl. */
const ACT_CODES = { none: 0, silu: 1, relu: 2 };

/** x as [n, c, s] with `groups` groups of c / groups channels. */
export interface FusedNormLayout {
  op: string;
  n: number;
  c: number;
  s: number;
  groups: number;
}

/** Whether a statistics group fits one invocation's loops (see MAX_GROUP). */
export function fusedNormFits(l: FusedNormLayout): boolean {
  const count = (l.c / l.groups) * l.s;
  return count >= 1 && count <= MAX_GROUP;
}

/**
 * Samples per piece of the weight/bias gradient: all in one piece on software adapters (one
 * dispatch; the cores are few), else enough pieces to fill a GPU; a piece's loops (samples × S
 * elements) stay within MAX_GROUP iterations in all.
 */
function pieceSamples(l: FusedNormLayout): number {
  const wanted = gpu().info.software
    ? l.n
    : Math.ceil((l.n * l.c) / TARGET_INVOCATIONS / Math.max(1, l.s / 64));
  return Math.max(1, Math.min(l.n, wanted, Math.floor(MAX_GROUP / (l.s + 1))));
}

/**
 * y = (x − mean) · rstd · weight + bias per statistics group, weight and bias per channel (then
 * `activation`(y) with one), with its backward rule. The caller has checked shapes and dtypes and that
 * the layout fits.
 */
export function fusedNorm(
  l: FusedNormLayout,
  x: Tensor,
  weight: Tensor | null,
  bias: Tensor | null,
  eps: number,
  activation?: NormActivation,
): Tensor {
  const groups = l.n * l.groups;
  const cg = l.c / l.groups;
  const out = new Tensor(x.shape, "f32");
  const mean = new Tensor([groups], "f32");
  const rstd = new Tensor([groups], "f32");
  const recorder = gpu().recorder;
  const kernels = kernelsFor(l);
  const params = [groups, cg, l.s, l.groups, f32bits(eps), f32bits(1 / (cg * l.s))];
  const wg = rowWorkgroup();
  const constants = {
    WG: wg,
    HAS_W: weight ? 1 : 0,
    HAS_B: bias ? 1 : 0,
    ACT: ACT_CODES[activation ?? "none"],
  };
  const affine = [(weight ?? x).binding, (bias ?? x).binding];
  recorder.dispatch(kernels.forward, {
    buffers: [x.binding, ...affine, out.binding, mean.binding, rstd.binding],
    params,
    constants,
    workgroups: grid1d(groups, wg),
  });
  const inputs = [x, weight, bias].filter((t): t is Tensor => t != null);
  // dx adds x's prior gradient as it is written (a residual stream's: one addition less).
  return record(activation ? `${l.op}+${activation}` : l.op, out, inputs, (dy, prior) => {
    let gx: Tensor | null = null;
    if (x.requiresGrad) {
      gx = new Tensor(x.shape, "f32");
      const acc = prior[0];
      recorder.dispatch(kernels.gradInput, {
        buffers: [
          x.binding,
          ...affine,
          mean.binding,
          rstd.binding,
          dy.binding,
          (acc ?? dy).binding,
          gx.binding,
        ],
        params,
        constants: { ...constants, ACC: acc ? 1 : 0 },
        workgroups: grid1d(groups, wg),
      });
    }
    const [gw, gb] = weight?.requiresGrad || bias?.requiresGrad
      ? paramGrads(l, [x, weight, bias, mean, rstd, dy], constants)
      : [null, null];
    // The weight's and bias's priors (a parameter used twice), added here.
    const total = (g: Tensor | null, i: number) => g && prior[i] ? add(prior[i]!, g) : g;
    const grads: (Tensor | null)[] = [gx];
    if (weight) grads.push(weight.requiresGrad ? total(gw, grads.length) : null);
    if (bias) grads.push(bias.requiresGrad ? total(gb, grads.length) : null);
    return grads;
  }, { accumulates: true });
}

/** Σ dy · xhat and Σ dy per channel over samples and positions: the weight and bias gradients. */
function paramGrads(
  l: FusedNormLayout,
  [x, weight, bias, mean, rstd, dy]: [Tensor, Tensor | null, Tensor | null, Tensor, Tensor, Tensor],
  constants: Record<string, number>,
): [Tensor, Tensor] {
  const recorder = gpu().recorder;
  const kernels = kernelsFor(l);
  const wg = rowWorkgroup();
  const piece = pieceSamples(l);
  const pieces = Math.ceil(l.n / piece);
  const gw = new Tensor([l.c], "f32");
  const gb = new Tensor([l.c], "f32");
  const channels = [l.n, l.c, l.c / l.groups, l.s, l.groups, piece, pieces];
  const partials = pieces > 1 ? new Tensor([pieces * l.c * 2], "f32") : null;
  recorder.dispatch(kernels.gradParams, {
    buffers: [
      x.binding,
      (weight ?? x).binding,
      (bias ?? x).binding,
      mean.binding,
      rstd.binding,
      dy.binding,
      (partials ?? gw).binding,
      gb.binding,
    ],
    params: channels,
    constants: { ...constants, PIECES: partials ? 1 : 0 },
    workgroups: grid1d(pieces * l.c, wg),
  });
  if (partials) {
    recorder.dispatch(kernels.gradParamsMerge, {
      buffers: [partials.binding, gw.binding, gb.binding],
      params: channels,
      constants: { WG: wg },
      workgroups: grid1d(l.c, wg),
    });
    partials.dispose();
  }
  return [gw, gb];
}
