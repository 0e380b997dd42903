import { assertClose, checkGrad, prod, randArray, runOp } from "./util.ts";
import { backward, maxPool2d, sum, tensor, tidy } from "../lib/tensor/mod.ts";
import { throws } from "node:assert/strict";

/** float64 max pooling with −∞ padding; `arg` gets each window's first arg-max (flat x index). */
function maxPoolRef(
  x: number[],
  [n, c, h, w]: number[],
  k: number,
  s: number,
  pad: number,
  arg: number[] = [],
): number[] {
  const ho = Math.floor((h + 2 * pad - k) / s) + 1;
  const wo = Math.floor((w + 2 * pad - k) / s) + 1;
  const out: number[] = [];
  for (let p = 0; p < n * c; p++) {
    for (let oy = 0; oy < ho; oy++) {
      for (let ox = 0; ox < wo; ox++) {
        let best = -Infinity;
        let at = -1;
        for (let ky = 0; ky < k; ky++) {
          for (let kx = 0; kx < k; kx++) {
            const y = oy * s - pad + ky;
            const xx = ox * s - pad + kx;
            if (y < 0 || y >= h || xx < 0 || xx >= w) continue;
            const i = (p * h + y) * w + xx;
            if (x[i] > best) [best, at] = [x[i], i];
          }
        }
        out.push(best);
        arg.push(at);
      }
    }
  }
  return out;
}

const cases: { shape: number[]; k: number; s?: number; pad?: number }[] = [
  { shape: [2, 3, 7, 9], k: 2 }, // VGG: trailing odd row/column dropped
  { shape: [1, 2, 9, 7], k: 3, s: 2, pad: 1 }, // ResNet stem
  { shape: [3, 1, 5, 5], k: 3, s: 1, pad: 1 }, // overlapping windows: pixels win several
  { shape: [1, 1, 1, 1], k: 1 },
  { shape: [2, 1, 3, 1], k: 3, s: 2, pad: 1 },
];

for (const { shape, k, s = k, pad = 0 } of cases) {
  Deno.test(`maxPool2d [${shape}] k${k} s${s} p${pad}: float64 forward and finite differences`, async () => {
    // Values exactly representable in f32, so the max is exact.
    const data = randArray(prod(shape), 7 + k + shape[2]).map(Math.fround);
    const op = (x: Parameters<typeof maxPool2d>[0]) => maxPool2d(x, k, s, pad);
    const out = await runOp(op, [{ data, shape }]);
    const ref = maxPoolRef(data, shape, k, s, pad);
    assertClose(out.data, ref, { atol: 0, rtol: 0, what: "maxPool2d" });
    const ho = Math.floor((shape[2] + 2 * pad - k) / s) + 1;
    const wo = Math.floor((shape[3] + 2 * pad - k) / s) + 1;
    if (out.shape.join() !== [shape[0], shape[1], ho, wo].join()) {
      throw new Error(`maxPool2d shape [${out.shape}]`);
    }
    await checkGrad(op, (x) => maxPoolRef(x, shape, k, s, pad), [{ data, shape }]);
  });
}

Deno.test("maxPool2d: ties send the gradient to the first arg-max only", async () => {
  // Two equal maxima per 2×2 window (positions 1 and 2 of each window, row-major).
  const shape = [1, 1, 2, 4];
  const data = [0, 5, -1, 7, 5, 1, 7, 2];
  const arg: number[] = [];
  maxPoolRef(data, shape, 2, 2, 0, arg);
  const gradRef = data.map((_, i) => arg.filter((a) => a === i).length);
  const x = tensor(data, shape);
  x.requiresGrad = true;
  tidy(() => backward(sum(maxPool2d(x, 2))));
  assertClose(await x.grad!.toArray(), gradRef, { atol: 0, rtol: 0, what: "tie gradient" });
  if (gradRef.reduce((a, b) => a + b, 0) !== 2 || gradRef[1] !== 1 || gradRef[3] !== 1) {
    throw new Error(`unexpected reference ${gradRef}`);
  }
  x.grad!.dispose();
  x.dispose();
});

Deno.test("maxPool2d: bad input throws naming the op and the shapes", () => {
  const x = tensor(randArray(2 * 3 * 4 * 4, 1), [2, 3, 4, 4]);
  const flat = tensor(randArray(12, 2), [3, 4]);
  const ints = tensor([1, 2, 3, 4], [1, 1, 2, 2], "i32");
  throws(() => maxPool2d(flat, 2), /peco: maxPool2d: x must be \[N, C, H, W\].*\[3,4\]/);
  throws(() => maxPool2d(ints, 2), /peco: maxPool2d: needs f32/);
  throws(() => maxPool2d(x, 0), /peco: maxPool2d: kernel and stride.*\[2,3,4,4\]/);
  throws(() => maxPool2d(x, 2, 2, 2), /peco: maxPool2d: padding/);
  throws(() => maxPool2d(x, 5), /peco: maxPool2d: the window is larger.*\[2,3,4,4\]/);
  [x, flat, ints].forEach((t) => t.dispose());
});
