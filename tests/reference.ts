// float64 references shared by several tests.

export type Pad = { top: number; bottom: number; left: number; right: number };
export const sides = (p: number | Pad): Pad =>
  typeof p === "number" ? { top: p, bottom: p, left: p, right: p } : p;

/** float64 direct convolution: x [N,C,H,W], w [O,C,kh,kw], bias [O] | null. */
export function convRef(
  x: number[],
  xs: number[],
  w: number[],
  ws: number[],
  bias: number[] | null,
  stride: number,
  padding: number | Pad,
): { data: number[]; shape: number[] } {
  const [n, c, h, wd] = xs;
  const [o, , kh, kw] = ws;
  const p = sides(padding);
  const ho = Math.floor((h + p.top + p.bottom - kh) / stride) + 1;
  const wo = Math.floor((wd + p.left + p.right - kw) / stride) + 1;
  const out: number[] = [];
  for (let b = 0; b < n; b++) {
    for (let oc = 0; oc < o; oc++) {
      for (let oy = 0; oy < ho; oy++) {
        for (let ox = 0; ox < wo; ox++) {
          let s = bias ? bias[oc] : 0;
          for (let ic = 0; ic < c; ic++) {
            for (let ky = 0; ky < kh; ky++) {
              const iy = oy * stride + ky - p.top;
              if (iy < 0 || iy >= h) continue;
              for (let kx = 0; kx < kw; kx++) {
                const ix = ox * stride + kx - p.left;
                if (ix < 0 || ix >= wd) continue;
                s += w[((oc * c + ic) * kh + ky) * kw + kx] * x[((b * c + ic) * h + iy) * wd + ix];
              }
            }
          }
          out.push(s);
        }
      }
    }
  }
  return { data: out, shape: [n, o, ho, wo] };
}
