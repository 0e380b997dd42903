// Max pooling (VGG, ResNet stems): forward and backward side by side; see kernels/pool.wgsl.

import { gpu } from "../../gpu/device.ts";
import { defineKernel } from "../../gpu/pipelines.ts";
import { grid1d } from "../../gpu/recorder.ts";
import { record, Tensor } from "../tensor.ts";
import { MAX_LOOP } from "./reduce.ts";
import source from "../../../kernels/pool.wgsl" with { type: "text" };

const WG = 64;

const kernels = {
  forward: defineKernel({
    name: "pool_max",
    source,
    entry: "max_pool",
    bindings: ["read", "write"],
  }),
  backward: defineKernel({
    name: "pool_max_grad",
    source,
    entry: "max_pool_grad",
    bindings: ["read", "read", "write"],
  }),
};

function positiveInt(v: number): boolean {
  return Number.isInteger(v) && v >= 1;
}

/**
 * Max over kernel×kernel windows at `stride`, the input padded by `padding` on every side with −∞
 * (PyTorch's MaxPool2d, floor mode): x [N, C, H, W] → [N, C, Ho, Wo] with
 * Ho = ⌊(H + 2·padding − kernel) / stride⌋ + 1. The gradient of each window goes to its first
 * arg-max (row-major), as in PyTorch.
 */
export function maxPool2d(x: Tensor, kernel: number, stride = kernel, padding = 0): Tensor {
  const what = `x ${x.describe()}, kernel ${kernel}, stride ${stride}, padding ${padding}`;
  const fail = (problem: string) => new Error(`peco: maxPool2d: ${problem} (${what})`);
  if (x.dtype !== "f32") throw fail("needs f32");
  if (x.rank !== 4) throw fail("x must be [N, C, H, W]");
  if (!positiveInt(kernel) || !positiveInt(stride)) {
    throw fail("kernel and stride must be positive integers");
  }
  // PyTorch's rule: every window then holds at least one real pixel.
  if (!Number.isInteger(padding) || padding < 0 || 2 * padding > kernel) {
    throw fail("padding must be an integer in [0, kernel / 2]");
  }
  // The backward loops over ⌈k/s⌉² windows of k² pixels per invocation (lavapipe stops loops
  // after 65535 iterations).
  if (kernel * kernel * Math.ceil(kernel / stride) ** 2 > MAX_LOOP) throw fail("kernel too large");
  const [n, c, h, w] = x.shape;
  const ho = Math.floor((h + 2 * padding - kernel) / stride) + 1;
  const wo = Math.floor((w + 2 * padding - kernel) / stride) + 1;
  if (ho < 1 || wo < 1) throw fail("the window is larger than the padded input");
  const geometry = [h, w, ho, wo, kernel, stride, padding];
  const out = new Tensor([n, c, ho, wo], "f32");
  if (out.size > 0) {
    gpu().recorder.dispatch(kernels.forward, {
      buffers: [x.binding, out.binding],
      params: [out.size, ...geometry],
      constants: { WG },
      workgroups: grid1d(out.size, WG),
    });
  }
  return record("maxPool2d", out, [x], (grad) => {
    const gx = new Tensor(x.shape, "f32");
    if (gx.size > 0) {
      gpu().recorder.dispatch(kernels.backward, {
        buffers: [x.binding, grad.binding, gx.binding],
        params: [gx.size, ...geometry],
        constants: { WG },
        workgroups: grid1d(gx.size, WG),
      });
    }
    return [gx];
  });
}
