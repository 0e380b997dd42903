// Tensors from values: filled on the GPU, or uploaded in stream order with the recorded work.

import { gpu } from "../../gpu/device.ts";
import { f32bits, grid1d } from "../../gpu/recorder.ts";
import { type DType, type Shape, Tensor } from "../tensor.ts";
import { elementwiseKernels, WG } from "./kernels.ts";

export function empty(shape: Shape, dtype: DType = "f32"): Tensor {
  return new Tensor(shape, dtype);
}

/** A tensor filled with one value (bit-exact for i32/u32). */
export function full(shape: Shape, value: number, dtype: DType = "f32"): Tensor {
  const out = new Tensor(shape, dtype);
  fillInPlace(out, value);
  return out;
}

/** Overwrites every element of t with one value (bit-exact for i32/u32). */
export function fillInPlace(t: Tensor, value: number): void {
  if (t.size === 0) return;
  const bits = t.dtype === "f32" ? f32bits(value) : value >>> 0;
  gpu().recorder.dispatch(elementwiseKernels.fill, {
    buffers: [t.binding],
    params: [t.size, bits],
    workgroups: grid1d(t.size, WG),
  });
}

export function zeros(shape: Shape, dtype: DType = "f32"): Tensor {
  return full(shape, 0, dtype);
}

export function ones(shape: Shape): Tensor {
  return full(shape, 1);
}

export function scalar(value: number): Tensor {
  return full([], value);
}

/**
 * Uploads host values. The copy is recorded in order with the dispatches already recorded, so a
 * pooled buffer that earlier recorded work still reads is not overwritten early.
 */
export function tensor(
  data: ArrayLike<number>,
  shape: Shape = [data.length],
  dtype: DType = "f32",
): Tensor {
  const out = new Tensor(shape, dtype);
  if (data.length !== out.size) {
    throw new Error(`peco: ${data.length} values do not fill shape [${shape.join(",")}]`);
  }
  if (out.size === 0) return out;
  const typed = dtype === "f32"
    ? Float32Array.from(data)
    : dtype === "i32"
    ? Int32Array.from(data)
    : Uint32Array.from(data);
  gpu().recorder.upload(out.buffer, typed);
  return out;
}
