// Global-norm gradient clipping on the GPU (torch.nn.utils.clip_grad_norm_): the norm over all
// gradients is accumulated without readback and the gradients are scaled in place by
// min(1, maxNorm / (norm + 1e-6)), read from a GPU buffer.

import { gpu } from "../gpu/device.ts";
import { f32bits, grid1d } from "../gpu/recorder.ts";
import { Tensor } from "../tensor/tensor.ts";
import { CHUNK, optimKernels, WG } from "./kernels.ts";

/**
 * Clips the gradients of `params` (those without one are skipped) to a global L2 norm of at most
 * `maxNorm`, in place. Returns the norm before clipping as a 1-element tensor, to be read at log
 * intervals. Dispatches: one per gradient for the norm, one for the scale, one per gradient to
 * scale (none when maxNorm is Infinity).
 */
export function clipGradNorm(params: Iterable<Tensor>, maxNorm: number): Tensor {
  if (!(maxNorm > 0)) throw new Error(`peco: clipGradNorm: maxNorm must be > 0, got ${maxNorm}`);
  const grads: Tensor[] = [];
  for (const p of new Set(params)) {
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
    recorder.dispatch(optimKernels.sumSquares, {
      buffers: [g.buffer, partials.buffer],
      params: [g.size, CHUNK, slot],
      workgroups: grid1d(g.size, CHUNK),
    });
    slot += Math.ceil(g.size / CHUNK);
  }
  recorder.dispatch(optimKernels.clipScale, {
    buffers: [partials.buffer, norm.buffer, scale.buffer],
    params: [slots, f32bits(maxNorm)],
    workgroups: [1],
  });
  if (Number.isFinite(maxNorm)) {
    for (const g of grads) {
      recorder.dispatch(optimKernels.scaleGrad, {
        buffers: [g.buffer, scale.buffer],
        params: [g.size],
        workgroups: grid1d(g.size, WG),
      });
    }
  }
  partials.dispose();
  scale.dispose();
  return norm;
}

/** The global L2 norm of the gradients of `params`, as a 1-element tensor (nothing is scaled). */
export function gradNorm(params: Iterable<Tensor>): Tensor {
  return clipGradNorm(params, Infinity);
}
