// Random ops on the GPU: uniform and normal tensors, dropout and drop-path. Every random value is a
// hash of (seed, element counter) (kernels/random.wgsl), so the same seed gives the same values,
// and dropout's backward regenerates its mask from the seed instead of storing it.

import { gpu } from "../../gpu/device.ts";
import { defineKernel } from "../../gpu/pipelines.ts";
import { f32bits, grid1d } from "../../gpu/recorder.ts";
import { record, type Shape, Tensor } from "../tensor.ts";
import { WG } from "./kernels.ts";
import source from "../../../kernels/random.wgsl" with { type: "text" };

const kernels = {
  fill: defineKernel({
    name: "random_fill",
    source,
    entry: "random_fill",
    bindings: ["write"],
  }),
  drop: defineKernel({
    name: "random_drop",
    source,
    entry: "random_drop",
    bindings: ["read", "write"],
  }),
};

const DIST = { uniform: 0, normal: 1 } as const;

function checkSeed(op: string, seed: number): number {
  if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff) {
    throw new Error(`peco: ${op}: seed must be an integer in [0, 2^32), got ${seed}`);
  }
  return seed;
}

function randomFill(op: keyof typeof DIST, shape: Shape, seed: number, a: number, b: number) {
  checkSeed(op, seed);
  const out = new Tensor(shape, "f32");
  if (out.size === 0) return out;
  gpu().recorder.dispatch(kernels.fill, {
    buffers: [out.binding],
    params: [out.size, seed, f32bits(a), f32bits(b)],
    constants: { DIST: DIST[op] },
    workgroups: grid1d(out.size, WG),
  });
  return out;
}

/** Values uniform in [lo, hi) (24 random bits each). */
export function uniform(shape: Shape, seed: number, lo = 0, hi = 1): Tensor {
  return randomFill("uniform", shape, seed, lo, hi);
}

/** Normally distributed values (Box-Muller on pairs of uniforms). */
export function normal(shape: Shape, seed: number, mean = 0, std = 1): Tensor {
  return randomFill("normal", shape, seed, mean, std);
}

/**
 * x · mask / (1 − p) with the mask drawn per group of `group` consecutive elements; the backward
 * pass applies the same mask (same seed) to the gradient.
 */
function drop(op: string, x: Tensor, p: number, seed: number, group: number): Tensor {
  if (x.dtype !== "f32") throw new Error(`peco: ${op}: needs an f32 tensor, got ${x.describe()}`);
  if (!(p >= 0 && p <= 1)) throw new Error(`peco: ${op}: p must be in [0, 1], got ${p}`);
  checkSeed(op, seed);
  if (p === 0) return x;
  // A group survives when its u32 random word is ≥ p·2^32. With p = 1 nothing survives but words
  // equal to 2^32 − 1, which the zero scale turns into 0 as well.
  const threshold = Math.min(0xffffffff, Math.round(p * 2 ** 32));
  const params = [x.size, group, seed, threshold, f32bits(p === 1 ? 0 : 1 / (1 - p))];
  const apply = (input: Tensor) => {
    const out = new Tensor(input.shape, "f32");
    if (out.size > 0) {
      gpu().recorder.dispatch(kernels.drop, {
        buffers: [input.binding, out.binding],
        params,
        workgroups: grid1d(out.size, WG),
      });
    }
    return out;
  };
  const out = apply(x);
  return record(op, out, [x], (g) => [apply(g)]);
}

/** Zeroes each element with probability p and scales the survivors by 1/(1 − p); p = 0 returns x. */
export function dropout(x: Tensor, p: number, seed: number): Tensor {
  return drop("dropout", x, p, seed, 1);
}

/**
 * Stochastic depth: zeroes whole samples (slices along dim 0) with probability p and scales the
 * surviving samples by 1/(1 − p); p = 0 returns x.
 */
export function dropPath(x: Tensor, p: number, seed: number): Tensor {
  if (x.rank === 0) throw new Error(`peco: dropPath: needs a batch dim, got ${x.describe()}`);
  return drop("dropPath", x, p, seed, Math.max(1, x.size / Math.max(1, x.shape[0])));
}
