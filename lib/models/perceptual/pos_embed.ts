// Resampling a ViT's absolute position embedding to another patch grid, as timm does when a model
// runs at another input size (resample_abs_pos_embed: the class token's embedding kept, the patch
// embeddings laid out on their grid and resized by PyTorch's bicubic interpolation with
// antialiasing, align_corners = false). That interpolation is linear and separable, so here it is a
// constant matrix [toH·toW, fromH·fromW] built on the host once per grid and applied by a matmul
// on the GPU: no read-back, and gradients flow as through any matmul.

/** PyTorch's antialiased bicubic kernel (a = −0.5, as PIL). */
function cubic(x: number): number {
  const a = -0.5;
  const t = Math.abs(x);
  if (t < 1) return ((a + 2) * t - (a + 3)) * t * t + 1;
  if (t < 2) return (((t - 5) * t + 8) * t - 4) * a;
  return 0;
}

/**
 * Weights [to, from] (row-major) of resizing a length-`from` signal to `to` samples with PyTorch's
 * bicubic antialiased interpolation (align_corners = false): when shrinking, the kernel is
 * stretched by the scale (that is the antialiasing); each row's weights are normalised to sum 1.
 */
export function bicubicResizeWeights(from: number, to: number): Float64Array {
  if (!(Number.isInteger(from) && Number.isInteger(to) && from >= 1 && to >= 1)) {
    throw new Error(`peco: bicubicResizeWeights: sizes must be positive integers (${from}, ${to})`);
  }
  const w = new Float64Array(to * from);
  const scale = from / to;
  const support = 2 * Math.max(scale, 1);
  const invScale = scale >= 1 ? 1 / scale : 1;
  for (let i = 0; i < to; i++) {
    const center = scale * (i + 0.5);
    // Truncation, as the C++ cast does (the lower end is clamped at 0 anyway).
    const lo = Math.max(Math.trunc(center - support + 0.5), 0);
    const hi = Math.min(Math.trunc(center + support + 0.5), from);
    let total = 0;
    for (let j = lo; j < hi; j++) total += w[i * from + j] = cubic((j - center + 0.5) * invScale);
    if (total !== 0) { for (let j = lo; j < hi; j++) w[i * from + j] /= total; }
  }
  return w;
}

/**
 * The matrix [toH·toW, fromH·fromW] resizing a row-major grid fromH×fromW to toH×toW: the
 * Kronecker product of the two axes' weights.
 */
export function gridResizeMatrix(
  [fromH, fromW]: readonly [number, number],
  [toH, toW]: readonly [number, number],
): Float32Array {
  const wh = bicubicResizeWeights(fromH, toH);
  const ww = bicubicResizeWeights(fromW, toW);
  const m = new Float32Array(toH * toW * fromH * fromW);
  const cols = fromH * fromW;
  for (let y = 0; y < toH; y++) {
    for (let x = 0; x < toW; x++) {
      const row = (y * toW + x) * cols;
      for (let v = 0; v < fromH; v++) {
        const a = wh[y * fromH + v];
        if (a === 0) continue;
        for (let u = 0; u < fromW; u++) m[row + v * fromW + u] = a * ww[x * fromW + u];
      }
    }
  }
  return m;
}
