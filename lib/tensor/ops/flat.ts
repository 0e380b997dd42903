// Flat textures: a tensor's floats copied (a memcpy) into an rgba32float texture as rows of 1024,
// texel t = x[4t .. 4t+3] at (t mod 256, ⌊t / 256⌋). On software adapters (lavapipe) a texel fetch
// costs a fraction of a storage-buffer load, so kernels that read their input many times (texture
// matmuls, im2col, row softmax) read it from a flat texture instead of its buffer. The copy needs
// whole texels: the copied range starts and ends on a multiple of 4 floats.

import { gpu } from "../../gpu/device.ts";
import type { PooledTexture } from "../../gpu/pool.ts";
import type { Tensor } from "../tensor.ts";

/** Texels per row of a flat texture (1024 floats: a 4 KiB row pitch; copies need 256-byte ones). */
export const FLAT_TEXELS = 256;

/** Texture rows that hold `floats` floats. */
export const flatRows = (floats: number): number => Math.ceil(floats / (4 * FLAT_TEXELS));

/** Whether `floats` floats (a multiple of 4) fit one flat texture on this adapter. */
export const fitsFlat = (floats: number): boolean =>
  floats % 4 === 0 && flatRows(floats) <= (gpu().limits.maxTextureDimension2D ?? 8192);

/**
 * WGSL: texel `i` of a flat texture, and the float at flat index `f` (its texel's component f mod 4,
 * picked by selects: a run-time vector index would go through scratch memory on lavapipe).
 */
export const FLAT_WGSL = /* wgsl */ `
fn flat_texel(t: texture_2d<f32>, i: u32) -> vec4f {
  return textureLoad(t, vec2i(i32(i % ${FLAT_TEXELS}u), i32(i / ${FLAT_TEXELS}u)), 0);
}

fn flat_value(t: texture_2d<f32>, f: u32) -> f32 {
  let v = flat_texel(t, f >> 2u);
  let e = f & 3u;
  return select(select(v.x, v.y, e == 1u), select(v.z, v.w, e == 3u), e >= 2u);
}
`;

/**
 * Copies `count` floats of x from float `first` (both multiples of 4) into a flat texture from its
 * first texel. One copy of whole rows where x's buffer reaches that far (the pool's buffers are
 * whole multiples of a row from 4 KiB on): the texels past x's values then hold whatever follows x
 * in its buffer, as they would hold a texture's earlier contents, and no reader uses them (see
 * `zeroFlatTail` in matmul.ts where one needs zeros). Else the full rows, then the last row partly:
 * two copies, each of which costs ~75 µs on lavapipe whatever its size.
 */
export function copyFlat(x: Tensor, first: number, count: number, texture: PooledTexture): void {
  const recorder = gpu().recorder;
  const rowFloats = 4 * FLAT_TEXELS;
  const pitch = rowFloats * 4;
  const start = x.byteOffset + first * 4;
  const rows = Math.ceil(count / rowFloats);
  if (rows > 1 && start + rows * pitch <= x.gpuBuffer.size && rows <= texture.height) {
    recorder.copyToTexture(x.gpuBuffer, start, pitch, texture.texture, FLAT_TEXELS, rows);
    return;
  }
  const full = Math.floor(count / rowFloats);
  const rest = count - full * rowFloats;
  if (full) recorder.copyToTexture(x.gpuBuffer, start, pitch, texture.texture, FLAT_TEXELS, full);
  if (rest) {
    const offset = start + full * rowFloats * 4;
    recorder.copyToTexture(x.gpuBuffer, offset, pitch, texture.texture, rest / 4, 1, full);
  }
}

/** A pooled flat texture holding all of x (x.size a multiple of 4); release it to the pool. */
export function acquireFlat(x: Tensor, label: string): PooledTexture {
  const texture = gpu().pool.acquireTexture(FLAT_TEXELS, flatRows(x.size), label);
  copyFlat(x, 0, x.size, texture);
  return texture;
}

/**
 * Records `use` with all of x in a pooled flat texture (x.size a multiple of 4). The texture goes
 * back to the pool afterwards: work recorded later that reuses it runs after this.
 */
export function withFlatTexture(
  x: Tensor,
  label: string,
  use: (view: GPUTextureView) => void,
): void {
  const texture = acquireFlat(x, label);
  try {
    use(texture.view);
  } finally {
    gpu().pool.releaseTexture(texture);
  }
}
