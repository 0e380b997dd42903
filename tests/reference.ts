// float64 references shared by several tests.

export type Pad = { top: number; bottom: number; left: number; right: number };
export const sides = (p: number | Pad): Pad =>
  typeof p === "number" ? { top: p, bottom: p, left: p, right: p } : p;

/** The output [Hout, Wout] of a convolution of x [N,C,H,W] with w [O,C,kh,kw]. */
export function convOutSize(
  xs: number[],
  ws: number[],
  stride: number,
  padding: number | Pad,
): [number, number] {
  const p = sides(padding);
  return [
    Math.floor((xs[2] + p.top + p.bottom - ws[2]) / stride) + 1,
    Math.floor((xs[3] + p.left + p.right - ws[3]) / stride) + 1,
  ];
}

/**
 * Visits every (output element, input element, weight) triple of a direct convolution x [N,C,H,W]
 * ⊛ w [O,C,kh,kw]: `tap(oi, xi, wi)` with flat indices (padding taps skipped); `out(oi, oc)` once
 * per output element before its taps. Returns the output shape.
 */
function convWindows(
  xs: number[],
  ws: number[],
  stride: number,
  padding: number | Pad,
  out: (oi: number, oc: number) => void,
  tap: (oi: number, xi: number, wi: number) => void,
): number[] {
  const [n, c, h, wd] = xs;
  const [o, , kh, kw] = ws;
  const p = sides(padding);
  const [ho, wo] = convOutSize(xs, ws, stride, padding);
  for (let b = 0; b < n; b++) {
    for (let oc = 0; oc < o; oc++) {
      for (let oy = 0; oy < ho; oy++) {
        for (let ox = 0; ox < wo; ox++) {
          const oi = ((b * o + oc) * ho + oy) * wo + ox;
          out(oi, oc);
          for (let ic = 0; ic < c; ic++) {
            for (let ky = 0; ky < kh; ky++) {
              const iy = oy * stride + ky - p.top;
              if (iy < 0 || iy >= h) continue;
              for (let kx = 0; kx < kw; kx++) {
                const ix = ox * stride + kx - p.left;
                if (ix < 0 || ix >= wd) continue;
                tap(oi, ((b * c + ic) * h + iy) * wd + ix, ((oc * c + ic) * kh + ky) * kw + kx);
              }
            }
          }
        }
      }
    }
  }
  return [n, o, ho, wo];
}

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
  const data: number[] = [];
  const shape = convWindows(xs, ws, stride, padding, (oi, oc) => {
    data[oi] = bias ? bias[oc] : 0;
  }, (oi, xi, wi) => {
    data[oi] += w[wi] * x[xi];
  });
  return { data, shape };
}

/** float64 gradients [dx, dw, db] of the convolution for the output gradient `seed`. */
export function convVjpRef(
  x: number[],
  xs: number[],
  w: number[],
  ws: number[],
  seed: number[],
  stride: number,
  padding: number | Pad,
): number[][] {
  const dx = new Array(x.length).fill(0), dw = new Array(w.length).fill(0);
  const db = new Array(ws[0]).fill(0);
  convWindows(xs, ws, stride, padding, (oi, oc) => {
    db[oc] += seed[oi];
  }, (oi, xi, wi) => {
    dx[xi] += seed[oi] * w[wi];
    dw[wi] += seed[oi] * x[xi];
  });
  return [dx, dw, db];
}
