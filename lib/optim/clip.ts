// Global-norm gradient clipping on the GPU (torch.nn.utils.clip_grad_norm_): the norm over all
// gradients is accumulated without readback and the gradients are scaled in place by
// min(1, maxNorm / (norm + 1e-6)), read from a GPU buffer. When the parameters are exactly those of
// one optimizer's arena and backward wrote all their gradients there, the whole gradient buffer is
// one range: one dispatch for the sums of squares and one to scale, whatever the number of tensors.

import { gpu } from "../gpu/device.ts";
import { f32bits, grid1d } from "../gpu/recorder.ts";
import { arenaOf, type ParamArena } from "../tensor/param_arena.ts";
import { Tensor } from "../tensor/tensor.ts";
import { CHUNK, lanesFor, optimKernels, WG } from "./kernels.ts";

/**
 * Clips the gradients of `params` (those without one are skipped) to a global L2 norm of at most
 * `maxNorm`, in place. Returns the norm before clipping as a 1-element tensor, to be read at log
 * intervals. Dispatches: one per gradient (or one per arena) for the norm, one for the scale, one
 * per gradient (or arena) to scale (none when maxNorm is Infinity).
 */
export function clipGradNorm(params: Iterable<Tensor>, maxNorm: number): Tensor {
  if (!(maxNorm > 0)) throw new Error(`peco: clipGradNorm: maxNorm must be > 0, got ${maxNorm}`);
  const unique = [...new Set(params)];
  const packed = packedGradients(unique);
  const grads: Tensor[] = packed ? [...packed] : [];
  for (const p of packed ? [] : unique) {
    const g = p.grad;
    if (!g || g.size === 0) continue;
    if (g.dtype !== "f32") {
      throw new Error(`peco: clipGradNorm: gradient ${g.describe()} of ${p.describe()} is not f32`);
    }
    grads.push(g);
  }
  const recorder = gpu().recorder;
  const slots = grads.reduce((n, g) => n + Math.ceil(g.size / CHUNK), 0);
  // Pooled temporaries, released right after recording: later work reuses them in stream order.
  const partials = new Tensor([Math.max(1, slots)], "f32");
  const scale = new Tensor([1], "f32");
  const norm = new Tensor([], "f32");
  let slot = 0;
  for (const g of grads) {
    // A chunk of CHUNK floats is CHUNK / 4 vec4s: the slots stay one per CHUNK floats.
    const { lanes, count } = lanesFor(g.size);
    recorder.dispatch(optimKernels[lanes].sumSquares, {
      buffers: [g.binding, partials.binding],
      params: [count, lanes === "vec4" ? CHUNK / 4 : CHUNK, slot],
      workgroups: grid1d(g.size, CHUNK),
    });
    slot += Math.ceil(g.size / CHUNK);
  }
  recorder.dispatch(optimKernels.scalar.clipScale, {
    buffers: [partials.binding, norm.binding, scale.binding],
    params: [slots, f32bits(maxNorm)],
    workgroups: [1],
  });
  if (Number.isFinite(maxNorm)) {
    for (const g of grads) {
      const { lanes, count } = lanesFor(g.size);
      recorder.dispatch(optimKernels[lanes].scaleGrad, {
        buffers: [g.binding, scale.binding],
        params: [count],
        workgroups: grid1d(count, WG),
      });
    }
  }
  partials.dispose();
  scale.dispose();
  packed?.forEach((t) => t.dispose());
  return norm;
}

/**
 * All gradients of `params` as flat ranges, one per arena, when `params` are exactly the
 * parameters of their arenas and every gradient lies in them (the gaps between are zeros);
 * otherwise null.
 */
function packedGradients(params: readonly Tensor[]): Tensor[] | null {
  const arenas = new Set<ParamArena>();
  for (const p of params) {
    const arena = arenaOf(p);
    if (!arena) return null;
    arenas.add(arena);
  }
  let packed = 0;
  for (const arena of arenas) {
    if (!arena.gradsAtHome()) return null;
    packed += arena.params.length;
  }
  if (arenas.size === 0 || packed !== params.length) return null;
  return [...arenas].map((arena) => arena.grads.range());
}

/** The global L2 norm of the gradients of `params`, as a 1-element tensor (nothing is scaled). */
export function gradNorm(params: Iterable<Tensor>): Tensor {
  return clipGradNorm(params, Infinity);
}
