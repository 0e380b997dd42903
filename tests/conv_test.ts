import { assertClose, checkGrad, kernelsRan, prod, randArray, runOp } from "./util.ts";
import { convOutSize, convRef, convVjpRef, type Pad } from "./reference.ts";
import * as T from "../lib/tensor/mod.ts";
import { type ConvLowering, setConvLowering } from "../lib/tensor/ops/conv.ts";
import { forceVariant } from "../lib/gpu/autotune.ts";
import { gpu } from "../lib/gpu/device.ts";
import assert from "node:assert/strict";

interface ConvCase {
  name: string;
  xs: number[];
  ws: number[];
  stride: number;
  padding: number | Pad;
}

const forwardCases: ConvCase[] = [
  { name: "3x3 s1 p0", xs: [2, 3, 7, 5], ws: [5, 3, 3, 3], stride: 1, padding: 0 },
  { name: "3x3 s1 p1", xs: [2, 3, 7, 5], ws: [5, 3, 3, 3], stride: 1, padding: 1 },
  { name: "3x3 s2 p1", xs: [2, 3, 7, 5], ws: [5, 3, 3, 3], stride: 2, padding: 1 },
  {
    name: "3x3 s2 asym {0,1,0,1}",
    xs: [2, 3, 7, 5],
    ws: [5, 3, 3, 3],
    stride: 2,
    padding: { top: 0, bottom: 1, left: 0, right: 1 },
  },
  { name: "1x1 pointwise", xs: [2, 3, 7, 5], ws: [5, 3, 1, 1], stride: 1, padding: 0 },
  { name: "1x1 stride 2", xs: [2, 3, 7, 5], ws: [5, 3, 1, 1], stride: 2, padding: 0 },
  { name: "size-1 dims", xs: [1, 1, 1, 1], ws: [1, 1, 1, 1], stride: 1, padding: 0 },
  { name: "3x3 on 1x1 image p1", xs: [1, 2, 1, 1], ws: [3, 2, 3, 3], stride: 1, padding: 1 },
  // More channels than one register block, a wide row (several pixel blocks) and a 2x4 kernel.
  { name: "2x4 s1 wide", xs: [1, 11, 3, 13], ws: [19, 11, 2, 4], stride: 1, padding: 1 },
  { name: "4x4 s4 patchify", xs: [1, 3, 8, 12], ws: [7, 3, 4, 4], stride: 4, padding: 0 },
  { name: "5x5 s1 p2", xs: [1, 2, 6, 9], ws: [9, 2, 5, 5], stride: 1, padding: 2 },
  { name: "7x7 s2 p3", xs: [1, 2, 9, 11], ws: [3, 2, 7, 7], stride: 2, padding: 3 },
  // Rows longer than one pixel block of the kernel (several blocks per row).
  { name: "3x3 s1 p1 long rows", xs: [1, 2, 2, 75], ws: [3, 2, 3, 3], stride: 1, padding: 1 },
];

/** conv2d of seeded inputs against the float64 reference (bias optional). */
async function checkForward(tc: ConvCase, withBias: boolean): Promise<void> {
  const x = randArray(prod(tc.xs), 1);
  const w = randArray(prod(tc.ws), 2);
  const b = randArray(tc.ws[0], 3);
  const inputs = [{ data: x, shape: tc.xs }, { data: w, shape: tc.ws }];
  if (withBias) inputs.push({ data: b, shape: [tc.ws[0]] });
  const out = await runOp(
    (xt, wt, bt) => T.conv2d(xt, wt, bt ?? null, { stride: tc.stride, padding: tc.padding }),
    inputs,
  );
  const ref = convRef(x, tc.xs, w, tc.ws, withBias ? b : null, tc.stride, tc.padding);
  assertClose(out.shape, ref.shape, { what: "output shape" });
  assertClose(out.data, ref.data, { atol: 1e-5, rtol: 1e-4, what: tc.name });
}

/** Gradients to x, weight and bias against finite differences of the float64 reference. */
function checkBackward(tc: ConvCase): Promise<void> {
  const x = randArray(prod(tc.xs), 4);
  const w = randArray(prod(tc.ws), 5);
  const b = randArray(tc.ws[0], 6);
  return checkGrad(
    (xt, wt, bt) => T.conv2d(xt, wt, bt, { stride: tc.stride, padding: tc.padding }),
    (xd, wd, bd) => convRef(xd, tc.xs, wd, tc.ws, bd, tc.stride, tc.padding).data,
    [{ data: x, shape: tc.xs }, { data: w, shape: tc.ws }, { data: b, shape: [tc.ws[0]] }],
  );
}

for (const tc of forwardCases) {
  for (const withBias of [true, false]) {
    Deno.test(
      `conv2d ${tc.name}${withBias ? " +bias" : ""}: forward matches float64`,
      () => checkForward(tc, withBias),
    );
  }
}

const gradCases: ConvCase[] = [
  { name: "3x3 s1 p1", xs: [2, 3, 5, 5], ws: [5, 3, 3, 3], stride: 1, padding: 1 },
  { name: "3x3 s2 p1", xs: [2, 2, 5, 7], ws: [3, 2, 3, 3], stride: 2, padding: 1 },
  {
    name: "3x3 s2 asym {0,1,0,1}",
    xs: [1, 2, 6, 5],
    ws: [3, 2, 3, 3],
    stride: 2,
    padding: { top: 0, bottom: 1, left: 0, right: 1 },
  },
  { name: "1x1 pointwise", xs: [2, 3, 3, 5], ws: [5, 3, 1, 1], stride: 1, padding: 0 },
  // Padding larger than kernel − 1 (the transposed convolution crops instead of padding).
  { name: "2x2 s1 p2", xs: [1, 2, 3, 4], ws: [3, 2, 2, 2], stride: 1, padding: 2 },
  { name: "2x3 s3 p0 (uncovered rows)", xs: [1, 2, 7, 8], ws: [2, 2, 2, 3], stride: 3, padding: 0 },
  // Several input and output channel blocks of the GEMM kernels.
  { name: "3x3 s1 p1 C=9 O=17", xs: [1, 9, 3, 4], ws: [17, 9, 3, 3], stride: 1, padding: 1 },
  // Wider than 5 taps: the kernel width is taken in chunks.
  {
    name: "1x7 s1 pad {0,0,3,2}",
    xs: [1, 2, 2, 9],
    ws: [3, 2, 1, 7],
    stride: 1,
    padding: { top: 0, bottom: 0, left: 3, right: 2 },
  },
  // A pointwise conv whose image rows need no padding copy (H·W = one full pixel block).
  { name: "1x1 on 4x8 (no copy)", xs: [2, 3, 4, 8], ws: [5, 3, 1, 1], stride: 1, padding: 0 },
];

for (const tc of gradCases) {
  Deno.test(
    `conv2d ${tc.name}: backward to x, weight and bias matches finite differences`,
    () => checkBackward(tc),
  );
}

// ---- the im2col + matmul lowering (forced here; "auto" uses it only on software adapters) -----

async function withLowering<R>(mode: ConvLowering, fn: () => Promise<R>): Promise<R> {
  const previous = setConvLowering(mode);
  try {
    return await fn();
  } finally {
    setConvLowering(previous);
  }
}

const im2colCases: ConvCase[] = [
  ...forwardCases,
  {
    name: "odd C,O 3x3 s2 asym {1,0,2,0}",
    xs: [3, 5, 9, 7],
    ws: [7, 5, 3, 3],
    stride: 2,
    padding: { top: 1, bottom: 0, left: 2, right: 0 },
  },
  { name: "odd 1x1 s2 C=3 O=9", xs: [2, 3, 7, 9], ws: [9, 3, 1, 1], stride: 2, padding: 0 },
  { name: "odd 1x1 p1 C=7 O=5", xs: [1, 7, 5, 3], ws: [5, 7, 1, 1], stride: 1, padding: 1 },
  // C a multiple of 4: im2col reads the input from a texture of 1024-float rows (the first two
  // fit in a partial row, the last two fill one row and part of the next).
  {
    name: "C=4 3x3 s2 asym {1,0,2,0} (texture)",
    xs: [3, 4, 9, 7],
    ws: [7, 4, 3, 3],
    stride: 2,
    padding: { top: 1, bottom: 0, left: 2, right: 0 },
  },
  { name: "C=12 1x1 s2 (texture)", xs: [1, 12, 7, 9], ws: [9, 12, 1, 1], stride: 2, padding: 0 },
  { name: "C=8 4x4 p1 (texture)", xs: [2, 8, 9, 11], ws: [5, 8, 4, 4], stride: 1, padding: 1 },
  { name: "C=8 3x3 p1 (texture)", xs: [2, 8, 9, 11], ws: [6, 8, 3, 3], stride: 1, padding: 1 },
];

for (const tc of im2colCases) {
  Deno.test(
    `conv2d im2col ${tc.name}: forward matches float64`,
    () => withLowering("im2col", () => checkForward(tc, true)),
  );
}

// The odd-shaped cases above (storage-buffer im2col) and the last texture case.
for (const tc of [...gradCases, ...im2colCases.slice(-7, -4), ...im2colCases.slice(-1)]) {
  Deno.test(
    `conv2d im2col ${tc.name}: backward matches finite differences`,
    () => withLowering("im2col", () => checkBackward(tc)),
  );
}

// The im2col weight gradient's batch sum also sums the bias gradient (one pass, conv_wgrad_finish);
// the separate bias reduction stays selectable and must agree.
async function withBiasGrad<R>(name: "finish" | "separate", fn: () => Promise<R>): Promise<R> {
  forceVariant("conv2dBiasGrad", name === "separate" ? "separate" : null);
  try {
    return await fn();
  } finally {
    forceVariant("conv2dBiasGrad", null);
  }
}

for (const tc of [gradCases[0], gradCases[1], im2colCases.at(-5)!]) {
  Deno.test(
    `conv2d im2col ${tc.name}, separate bias reduction: backward matches finite differences`,
    () => withLowering("im2col", () => withBiasGrad("separate", () => checkBackward(tc))),
  );
}

Deno.test("conv2d: bias gradient in the weight gradient's pass agrees with the separate sum", async () => {
  for (
    const [mode, xs, ws, opts] of [
      ["im2col", [3, 13, 21, 17], [23, 13, 3, 3], { stride: 2, padding: 1 }],
      ["im2col", [5, 8, 9, 11], [9, 8, 3, 3], { stride: 1, padding: 1 }],
      // auto on a software adapter: the direct forward with the im2col weight gradient (C·9 < 144).
      ["auto", [2, 3, 13, 10], [9, 3, 3, 3], { stride: 1, padding: 1 }],
    ] as const
  ) {
    const x = T.tensor(randArray(prod([...xs]), 31), [...xs]);
    const w = T.tensor(randArray(prod([...ws]), 32), [...ws]);
    const b = T.tensor(randArray(ws[0], 33), [ws[0]]);
    for (const t of [x, w, b]) t.requiresGrad = true;
    const run = (name: "finish" | "separate") =>
      withLowering(mode, () =>
        withBiasGrad(name, async () => {
          T.tidy(() => {
            const y = T.conv2d(x, w, b, opts);
            const seed = T.tensor(randArray(y.size, 34), y.shape);
            T.backward(T.sum(T.mul(y, seed)));
          });
          const grads = await Promise.all([x, w, b].map((t) => t.grad!.toArray()));
          for (const t of [x, w, b]) {
            t.grad!.dispose();
            t.grad = null;
          }
          return grads;
        }));
    const folded = await run("finish");
    const separate = await run("separate");
    ["dx", "dw", "db"].forEach((what, i) =>
      assertClose(folded[i], separate[i], { atol: 1e-4, rtol: 1e-4, what: `${what} ${xs} ${ws}` })
    );
    for (const t of [x, w, b]) t.dispose();
  }
});

Deno.test("conv2d: im2col and direct paths agree (output and all gradients) at a larger size", async () => {
  const xs = [3, 13, 21, 17], ws = [23, 13, 3, 3];
  const opts = { stride: 2, padding: { top: 1, bottom: 0, left: 0, right: 2 } };
  const run = (mode: ConvLowering) =>
    withLowering(mode, async () => {
      const x = T.tensor(randArray(prod(xs), 7), xs);
      const w = T.tensor(randArray(prod(ws), 8), ws);
      const b = T.tensor(randArray(ws[0], 9), [ws[0]]);
      for (const t of [x, w, b]) t.requiresGrad = true;
      let y!: T.Tensor;
      T.tidy(() => {
        y = T.keep(T.conv2d(x, w, b, opts));
        const seed = T.tensor(randArray(y.size, 10), y.shape);
        T.backward(T.sum(T.mul(y, seed)));
      });
      const result = [
        await y.toArray(),
        ...await Promise.all([x, w, b].map((t) => t.grad!.toArray())),
      ];
      for (const t of [x, w, b, y]) {
        t.grad?.dispose();
        t.dispose();
      }
      return result;
    });
  const direct = await run("direct");
  const lowered = await run("im2col");
  ["y", "dx", "dw", "db"].forEach((what, i) =>
    assertClose(lowered[i], direct[i], { atol: 1e-4, rtol: 1e-4, what })
  );
});

// ---- the input gradient through im2col + matmul (stride 1: the padding is im2col's index math) --

/** Runs fn with the stride-1 input gradient on im2col + matmul (the default) or forced direct. */
async function withInputGrad<R>(name: "im2col" | "direct", fn: () => Promise<R>): Promise<R> {
  forceVariant("conv2dInputGrad", name === "direct" ? "direct" : null);
  try {
    return await fn();
  } finally {
    forceVariant("conv2dInputGrad", null);
  }
}

/** Output and all gradients under `mode` against float64 (the reference's vector-Jacobian). */
async function checkVjp(tc: ConvCase, mode: ConvLowering): Promise<void> {
  await withLowering(mode, async () => {
    const xd = randArray(prod(tc.xs), 11), wd = randArray(prod(tc.ws), 12);
    const bd = randArray(tc.ws[0], 13);
    const x = T.tensor(xd, tc.xs), w = T.tensor(wd, tc.ws), b = T.tensor(bd, [tc.ws[0]]);
    for (const t of [x, w, b]) t.requiresGrad = true;
    const opts = { stride: tc.stride, padding: tc.padding };
    const ref = convRef(xd, tc.xs, wd, tc.ws, bd, tc.stride, tc.padding);
    const seedData = randArray(prod(ref.shape), 14);
    let y!: T.Tensor;
    T.tidy(() => {
      y = T.keep(T.conv2d(x, w, b, opts));
      T.backward(T.sum(T.mul(y, T.tensor(seedData, ref.shape))));
    });
    assertClose(y.shape, ref.shape, { what: "output shape" });
    assertClose(await y.toArray(), ref.data, { atol: 1e-4, rtol: 1e-4, what: `${tc.name} y` });
    const grads = convVjpRef(xd, tc.xs, wd, tc.ws, seedData, tc.stride, tc.padding);
    for (const [i, t] of [x, w, b].entries()) {
      const what = `${tc.name} ${["dx", "dw", "db"][i]}`;
      assertClose(await t.grad!.toArray(), grads[i], { atol: 1e-4, rtol: 1e-4, what });
    }
    for (const t of [x, w, b, y]) {
      t.grad?.dispose();
      t.dispose();
    }
  });
}

const inputGradCases: ConvCase[] = [
  // Odd channels and sizes, asymmetric padding (the transposed conv's k − 1 − pad differs by side).
  {
    name: "C=5 O=7 3x3 pad {0,2,1,0}",
    xs: [2, 5, 9, 7],
    ws: [7, 5, 3, 3],
    stride: 1,
    padding: { top: 0, bottom: 2, left: 1, right: 0 },
  },
  // O a multiple of 4: the gradient's im2col reads it from a texture.
  {
    name: "C=9 O=12 3x3 p1 (texture)",
    xs: [3, 9, 11, 13],
    ws: [12, 9, 3, 3],
    stride: 1,
    padding: 1,
  },
  // Unpadded 2x4 kernel: the transposed conv pads by k − 1 on every side.
  { name: "C=3 O=8 2x4 p0 (texture)", xs: [1, 3, 6, 10], ws: [8, 3, 2, 4], stride: 1, padding: 0 },
  // What auto's size rule sends to im2col on a software adapter: O·9 ≥ 144 and C ≥ 8.
  { name: "C=9 O=17 3x3 p1", xs: [2, 9, 13, 10], ws: [17, 9, 3, 3], stride: 1, padding: 1 },
  // Strided: the output gradient dilated by im2col's index math (O a multiple of 4: from a
  // texture); the downsampling form (padding right and bottom only), and rows no window covers.
  { name: "s2 C=3 O=8 3x3 p1", xs: [2, 3, 9, 7], ws: [8, 3, 3, 3], stride: 2, padding: 1 },
  {
    name: "s2 C=5 O=4 3x3 pad {0,1,0,1}",
    xs: [1, 5, 6, 8],
    ws: [4, 5, 3, 3],
    stride: 2,
    padding: { top: 0, bottom: 1, left: 0, right: 1 },
  },
  {
    name: "s3 C=2 O=4 2x3 p0 (uncovered rows)",
    xs: [1, 2, 7, 8],
    ws: [4, 2, 2, 3],
    stride: 3,
    padding: 0,
  },
  // Padding beyond k − 1 on one side: the implicit GEMM (it crops) whatever the setting.
  { name: "C=4 O=6 2x2 p2", xs: [1, 4, 3, 5], ws: [6, 4, 2, 2], stride: 1, padding: 2 },
];

for (const tc of inputGradCases) {
  for (const path of ["im2col", "direct"] as const) {
    for (const mode of ["im2col", "auto"] as const) {
      Deno.test(
        `conv2d ${tc.name}, ${mode} lowering, input gradient ${path}: output and gradients match float64`,
        () => withInputGrad(path, () => checkVjp(tc, mode)),
      );
    }
    if (prod(tc.xs) + prod(tc.ws) > 1000) continue; // finite differences: small cases only
    Deno.test(
      `conv2d ${tc.name}, im2col lowering, input gradient ${path}: backward matches finite differences`,
      () => withLowering("im2col", () => withInputGrad(path, () => checkBackward(tc))),
    );
  }
}

// ---- pointwise convolutions as plain matmuls (where im2col is allowed) ---------------------------

/** Runs fn with pointwise convolutions as matmuls (the default) or forced onto the direct path. */
async function withPointwise<R>(name: "matmul" | "direct", fn: () => Promise<R>): Promise<R> {
  forceVariant("conv2dPointwise", name === "direct" ? "direct" : null);
  try {
    return await fn();
  } finally {
    forceVariant("conv2dPointwise", null);
  }
}

const pointwiseCases: ConvCase[] = [
  // Odd channels, H·W not a multiple of 4 (the matmul packs x), one image and several.
  { name: "1x1 C=5 O=7 7x7", xs: [3, 5, 7, 7], ws: [7, 5, 1, 1], stride: 1, padding: 0 },
  { name: "1x1 C=9 O=3 5x3 N=1", xs: [1, 9, 5, 3], ws: [3, 9, 1, 1], stride: 1, padding: 0 },
  // Channels multiples of 4, H·W too (the matmul copies its operands flat).
  { name: "1x1 C=12 O=8 4x6", xs: [2, 12, 4, 6], ws: [8, 12, 1, 1], stride: 1, padding: 0 },
];

for (const tc of pointwiseCases) {
  for (const path of ["matmul", "direct"] as const) {
    for (const mode of ["im2col", "auto"] as const) {
      Deno.test(
        `conv2d ${tc.name}, ${mode} lowering, pointwise ${path}: output and gradients match float64`,
        () => withPointwise(path, () => checkVjp(tc, mode)),
      );
    }
    Deno.test(
      `conv2d ${tc.name}, pointwise ${path}: backward matches finite differences`,
      () => withLowering("auto", () => withPointwise(path, () => checkBackward(tc))),
    );
    Deno.test(
      `conv2d ${tc.name}, pointwise ${path}, separate bias reduction: backward matches finite differences`,
      () => withBiasGrad("separate", () => withPointwise(path, () => checkBackward(tc))),
    );
  }
}

// ---- window products (the input packed into a texture, read in place: conv_windows.ts) ----------

/** The last kernel conv2d's forward runs on seeded inputs of tc (no bias, no autograd). */
function forwardKernel(tc: ConvCase): string {
  const x = T.tensor(randArray(prod(tc.xs), 21), tc.xs);
  const w = T.tensor(randArray(prod(tc.ws), 22), tc.ws);
  T.conv2d(x, w, null, { stride: tc.stride, padding: tc.padding }).dispose();
  x.dispose();
  w.dispose();
  return gpu().recorder.lastLabel;
}

// Channels in texels of 4: C a multiple of 4 (whole texels) or not (the last texel zero-filled:
// C = 1, 3, 6; likewise O, the input gradient's channels). Odd N, H, W; pixels per image of no
// block size, and some a multiple of 4 (vec4 stores).
const windowCases: ConvCase[] = [
  { name: "C=1 O=8 3x3 p1 N=2 6x5", xs: [2, 1, 6, 5], ws: [8, 1, 3, 3], stride: 1, padding: 1 },
  { name: "C=3 O=5 3x3 p1 N=3 5x7", xs: [3, 3, 5, 7], ws: [5, 3, 3, 3], stride: 1, padding: 1 },
  { name: "C=6 O=4 3x3 s2 p1 7x7", xs: [2, 6, 7, 7], ws: [4, 6, 3, 3], stride: 2, padding: 1 },
  { name: "C=4 O=5 3x3 p1 5x7", xs: [2, 4, 5, 7], ws: [5, 4, 3, 3], stride: 1, padding: 1 },
  {
    name: "C=8 O=12 3x3 s2 pad {1,0,2,0}",
    xs: [3, 8, 9, 7],
    ws: [12, 8, 3, 3],
    stride: 2,
    padding: { top: 1, bottom: 0, left: 2, right: 0 },
  },
  { name: "C=4 O=8 2x4 p0", xs: [1, 4, 6, 10], ws: [8, 4, 2, 4], stride: 1, padding: 0 },
  { name: "C=12 O=4 3x3 p1 4x8", xs: [2, 12, 4, 8], ws: [4, 12, 3, 3], stride: 1, padding: 1 },
  { name: "C=4 O=8 5x5 p2 3x9", xs: [1, 4, 3, 9], ws: [8, 4, 5, 5], stride: 1, padding: 2 },
  {
    name: "C=4 O=4 2x3 s3 (uncovered rows)",
    xs: [1, 4, 7, 8],
    ws: [4, 4, 2, 3],
    stride: 3,
    padding: 0,
  },
  // Odd pixel counts over several images, stacked into one run of columns with scalar stores
  // (forward 5 × 5 and 5 × 5; input gradients 5 × 5 and, dilated, 9 × 9).
  {
    name: "C=8 O=8 3x3 p1 N=3 5x5 (stacked)",
    xs: [3, 8, 5, 5],
    ws: [8, 8, 3, 3],
    stride: 1,
    padding: 1,
  },
  {
    name: "C=4 O=4 3x3 s2 p1 N=3 9x9 (stacked)",
    xs: [3, 4, 9, 9],
    ws: [4, 4, 3, 3],
    stride: 2,
    padding: 1,
  },
];

/** Whether conv2d's forward over tc stacks its images' windows (N > 1). */
const stacksWindows = (tc: ConvCase) => tc.xs[0] > 1;

/** Whether the images of tc's forward have a pixel count that is a multiple of 4. */
function wholeTexels(tc: ConvCase): boolean {
  const [hout, wout] = convOutSize(tc.xs, tc.ws, tc.stride, tc.padding);
  return (hout * wout) % 4 === 0;
}

for (const v of T.MATMUL_VARIANTS.filter((v) => v.name.startsWith("tex"))) {
  for (const tc of windowCases) {
    Deno.test(`conv2d windows ${v.name} ${tc.name}: output and gradients match float64`, async () => {
      forceVariant("matmul", v.name);
      try {
        await withLowering("windows", async () => {
          const kernel = forwardKernel(tc);
          const fill = stacksWindows(tc) ? "_bwindowstacked" : "_bwindow_";
          if (!kernel.startsWith(`matmul_${v.name}`) || !`${kernel}_`.includes(fill)) {
            throw new Error(`the forward ran ${kernel}, not a window product (${fill})`);
          }
          await checkVjp(tc, "windows");
        });
      } finally {
        forceVariant("matmul", null);
      }
    });
  }
}

for (const tc of windowCases) {
  Deno.test(`conv2d windows ${tc.name}, no autograd: forward matches float64`, async () => {
    forceVariant("matmul", "tex8x8");
    try {
      await withLowering("windows", () => checkForward(tc, true));
    } finally {
      forceVariant("matmul", null);
    }
  });
  Deno.test(`conv2d windows ${tc.name}, input packed again for the weight gradient: matches float64`, async () => {
    forceVariant("matmul", "tex8x8");
    forceVariant("conv2dWindowsReuse", "off");
    try {
      await checkVjp(tc, "windows");
    } finally {
      forceVariant("matmul", null);
      forceVariant("conv2dWindowsReuse", null);
    }
  });
  Deno.test(`conv2d windows ${tc.name}, weight gradient through im2col: matches float64`, async () => {
    forceVariant("matmul", "tex8x8");
    forceVariant("conv2dWindowsWeightGrad", "im2col");
    try {
      await checkVjp(tc, "windows");
    } finally {
      forceVariant("matmul", null);
      forceVariant("conv2dWindowsWeightGrad", null);
    }
  });
}

for (const tc of windowCases.filter(stacksWindows)) {
  Deno.test(`conv2d windows ${tc.name}, a grid per image (not stacked): matches float64`, async () => {
    forceVariant("matmul", "tex16x16");
    forceVariant("conv2dWindowsStacked", "off");
    try {
      await withLowering("windows", async () => {
        const kernel = forwardKernel(tc);
        if (!`${kernel}_`.includes("_bwindow_")) throw new Error(`the forward ran ${kernel}`);
        await checkVjp(tc, "windows");
      });
    } finally {
      forceVariant("matmul", null);
      forceVariant("conv2dWindowsStacked", null);
    }
  });
}

// Pixel counts that are multiples of 4, stacked: the stacked product stores vec4s, and scalars
// where forced to.
for (const tc of windowCases.filter((tc) => stacksWindows(tc) && wholeTexels(tc))) {
  for (const store of ["vec4", "scalar"]) {
    Deno.test(`conv2d windows ${tc.name}, stacked with ${store} stores: matches float64`, async () => {
      forceVariant("matmul", "tex16x16");
      forceVariant("matmulStore", store === "scalar" ? "scalar" : null);
      try {
        await withLowering("windows", async () => {
          const kernel = forwardKernel(tc);
          if (
            !kernel.includes("_bwindowstacked") || kernel.endsWith("_v4") !== (store === "vec4")
          ) {
            throw new Error(`the forward ran ${kernel}`);
          }
          await checkVjp(tc, "windows");
        });
      } finally {
        forceVariant("matmul", null);
        forceVariant("matmulStore", null);
      }
    });
  }
}

// The weight gradient's dY copied flat where its images' pixel counts are whole texels (default),
// or packed as it is elsewhere: the window-rows kernel that ran says which.
for (const tc of windowCases.filter(wholeTexels)) {
  for (const dy of ["flat", "pack"]) {
    Deno.test(`conv2d windows ${tc.name}, weight gradient with dY ${dy}: matches float64`, async () => {
      forceVariant("matmul", "tex16x16");
      forceVariant("windowRowsA", dy === "pack" ? "pack" : null);
      try {
        const ran = await kernelsRan(
          () => withLowering("windows", () => checkVjp(tc, "windows")),
          "_bwindowrows",
        );
        const flat = ran.map((name) => name.includes("_aflat_"));
        if (ran.length === 0 || flat.some((f) => f !== (dy === "flat"))) {
          throw new Error(`dY ${dy}: ran ${ran.join(", ") || "no window-rows kernel"}`);
        }
      } finally {
        forceVariant("matmul", null);
        forceVariant("windowRowsA", null);
      }
    });
  }
}

// "auto" on a software adapter: a convolution of one input channel (the MNIST tokenizer's conv_in)
// runs as window products where its weight gets a gradient (training), as the implicit GEMM where
// it does not or where `forceVariant("conv2dWindowsSmall", "off")`.
Deno.test("conv2d auto: C = 1 as window products in training, else the implicit GEMM", async () => {
  if (!gpu().info.software) return;
  const tc: ConvCase = {
    name: "C=1 O=16 28x28 N=8",
    xs: [8, 1, 28, 28],
    ws: [16, 1, 3, 3],
    stride: 1,
    padding: 1,
  };
  const windows = (ran: string[]) => ran.some((name) => name.includes("_bwindowstacked"));
  const trained = await kernelsRan(() => checkVjp(tc, "auto"));
  assert.ok(windows(trained), `training ran ${[...new Set(trained)].join(", ")}`);
  const inference = await kernelsRan(() =>
    withLowering("auto", () => {
      forwardKernel(tc);
      return Promise.resolve();
    })
  );
  assert.ok(!windows(inference) && inference.includes("conv_fwd"), inference.join(", "));
  forceVariant("conv2dWindowsSmall", "off");
  try {
    const off = await kernelsRan(() => checkVjp(tc, "auto"));
    assert.ok(!windows(off) && off.includes("conv_fwd"), [...new Set(off)].join(", "));
  } finally {
    forceVariant("conv2dWindowsSmall", null);
  }
});

// The weight gradient's sum over the images split into slices (forced here: by default only where
// a slice holds enough pixels), the partials added up in one pass with the bias gradient's (or
// without one): 2 slices of N = 3 hold 2 and 1 images, 3 slices 1 each.
for (const tc of windowCases.filter((tc) => tc.xs[0] > 1)) {
  for (const slices of [2, 3]) {
    Deno.test(`conv2d windows ${tc.name}, weight gradient in ${slices} slices: matches float64`, async () => {
      forceVariant("matmul", "tex16x16");
      forceVariant("windowRowsSlices", String(slices));
      try {
        const ran = await kernelsRan(
          () => withLowering("windows", () => checkVjp(tc, "windows")),
          "sum_slices",
        );
        if (!ran.includes("matmul_sum_slices_sums")) {
          throw new Error(
            `the weight gradient's slices were not summed (${ran.join(", ") || "none"})`,
          );
        }
      } finally {
        forceVariant("matmul", null);
        forceVariant("windowRowsSlices", null);
      }
    });
  }
}

Deno.test("conv2d windows: a weight gradient without bias in slices matches float64", async () => {
  const tc = windowCases.find((tc) => tc.name.includes("(stacked)"))!;
  const xd = randArray(prod(tc.xs), 21), wd = randArray(prod(tc.ws), 22);
  const x = T.tensor(xd, tc.xs), w = T.tensor(wd, tc.ws);
  w.requiresGrad = true;
  const opts = { stride: tc.stride, padding: tc.padding };
  const [hout, wout] = convOutSize(tc.xs, tc.ws, tc.stride, tc.padding);
  const seed = randArray(tc.xs[0] * tc.ws[0] * hout * wout, 23);
  forceVariant("matmul", "tex16x16");
  forceVariant("windowRowsSlices", "2");
  try {
    const ran = await kernelsRan(
      () =>
        withLowering("windows", () => {
          T.tidy(() => {
            const y = T.conv2d(x, w, null, opts);
            T.backward(T.sum(T.mul(y, T.tensor(seed, y.shape))));
          });
          return Promise.resolve();
        }),
      "sum_slices",
    );
    if (ran.join() !== "matmul_sum_slices") throw new Error(`ran ${ran.join(", ") || "none"}`);
    const dw = convVjpRef(xd, tc.xs, wd, tc.ws, seed, tc.stride, tc.padding)[1];
    assertClose(await w.grad!.toArray(), dw, { atol: 1e-4, rtol: 1e-4, what: "dw" });
  } finally {
    forceVariant("matmul", null);
    forceVariant("windowRowsSlices", null);
    for (const t of [x, w]) {
      t.grad?.dispose();
      t.dispose();
    }
  }
});

for (const tc of windowCases.filter((tc) => prod(tc.xs) + prod(tc.ws) <= 700)) {
  Deno.test(`conv2d windows ${tc.name}: backward matches finite differences`, async () => {
    forceVariant("matmul", "tex8x8");
    try {
      await withLowering("windows", () => checkBackward(tc));
    } finally {
      forceVariant("matmul", null);
    }
  });
}

// ---- the texture im2col's row variant (stride 1, rows of whole texels) ---------------------------

/** Runs fn with the texture im2col's row variant where it applies (default) or forced off. */
async function withIm2col<R>(name: "rows" | "window", fn: () => Promise<R>): Promise<R> {
  forceVariant("conv2dIm2col", name === "window" ? "window" : null);
  try {
    return await fn();
  } finally {
    forceVariant("conv2dIm2col", null);
  }
}

// C and W multiples of 4 (the input texture's rows are whole texels), Wout too; odd N, H, O.
const rowIm2colCases: ConvCase[] = [
  { name: "rows C=8 3x3 p1", xs: [3, 8, 5, 12], ws: [7, 8, 3, 3], stride: 1, padding: 1 },
  // No left padding, and left padding beyond a texel (the taps reach two texels back).
  {
    name: "rows C=4 1x3 pad {1,0,0,2}",
    xs: [1, 4, 3, 8],
    ws: [5, 4, 1, 3],
    stride: 1,
    padding: { top: 1, bottom: 0, left: 0, right: 2 },
  },
  {
    name: "rows C=4 2x7 pad {0,1,5,1}",
    xs: [1, 4, 3, 8],
    ws: [3, 4, 2, 7],
    stride: 1,
    padding: { top: 0, bottom: 1, left: 5, right: 1 },
  },
  // O a multiple of 4 as well: the input gradient's im2col of dy takes the row variant too.
  { name: "rows C=4 O=8 3x3 p1", xs: [2, 4, 3, 4], ws: [8, 4, 3, 3], stride: 1, padding: 1 },
];

for (const tc of rowIm2colCases) {
  for (const path of ["rows", "window"] as const) {
    Deno.test(
      `conv2d im2col ${tc.name}, ${path}: output and gradients match float64`,
      () => withIm2col(path, () => checkVjp(tc, "im2col")),
    );
    if (prod(tc.xs) + prod(tc.ws) > 1000) continue; // finite differences: small cases only
    Deno.test(
      `conv2d im2col ${tc.name}, ${path}: backward matches finite differences`,
      () => withLowering("im2col", () => withIm2col(path, () => checkBackward(tc))),
    );
  }
}

// ---- the im2col weight gradient over the images' stacked pixels (software adapters, P % 4 ≠ 0) --

/** Runs fn with the stacked weight gradient where it applies (default) or per-image products. */
async function withWeightGrad<R>(name: "stacked" | "batched", fn: () => Promise<R>): Promise<R> {
  forceVariant("conv2dWeightGrad", name === "batched" ? "batched" : null);
  try {
    return await fn();
  } finally {
    forceVariant("conv2dWeightGrad", null);
  }
}

// Hout·Wout not a multiple of 4, N·Hout·Wout a multiple of 4; odd channels; stride 1 and 2.
const stackedCases: ConvCase[] = [
  { name: "stacked 3x3 p1 N=4 7x7", xs: [4, 5, 7, 7], ws: [6, 5, 3, 3], stride: 1, padding: 1 },
  { name: "stacked 3x3 s2 N=4 5x6", xs: [4, 3, 5, 6], ws: [7, 3, 3, 3], stride: 2, padding: 1 },
  { name: "stacked 2x2 p0 N=2 4x3", xs: [2, 3, 4, 3], ws: [5, 3, 2, 2], stride: 1, padding: 0 },
];

for (const tc of stackedCases) {
  for (const path of ["stacked", "batched"] as const) {
    Deno.test(
      `conv2d im2col ${tc.name}, ${path}: output and gradients match float64`,
      () => withWeightGrad(path, () => checkVjp(tc, "im2col")),
    );
    if (prod(tc.xs) + prod(tc.ws) > 1000) continue; // finite differences: small cases only
    Deno.test(
      `conv2d im2col ${tc.name}, ${path}: backward matches finite differences`,
      () => withLowering("im2col", () => withWeightGrad(path, () => checkBackward(tc))),
    );
  }
}

// ---- the implicit GEMM's weight operand: 64 KiB uniform slots, or storage beyond one block ------

/** Output and all gradients of the direct path (implicit GEMM both ways) against float64. */
const checkDirectLarge = (tc: ConvCase) => checkVjp(tc, "direct");

const largeWeightCases: ConvCase[] = [
  // Forward: 3 blocks of 16 channels, one 67·9·16-float block per 64 KiB slot (3 dispatches);
  // input gradient (37 → 67 channels): 5 blocks, 3 to a slot, the last slot part full.
  {
    name: "C=67 O=37 3x3 p1 (uniform slots)",
    xs: [1, 67, 2, 3],
    ws: [37, 67, 3, 3],
    stride: 1,
    padding: 1,
  },
  // Forward: one 8-channel block of 229·9·8 floats, beyond 64 KiB: the storage-buffer fallback;
  // input gradient: 15 blocks in one slot.
  {
    name: "C=229 O=5 3x3 s2 (storage fallback)",
    xs: [1, 229, 3, 2],
    ws: [5, 229, 3, 3],
    stride: 2,
    padding: 1,
  },
];

for (const tc of largeWeightCases) {
  Deno.test(`conv2d direct ${tc.name}: output and gradients match float64`, () =>
    checkDirectLarge(tc));
}

Deno.test("conv2d: only the inputs that need a gradient get one", async () => {
  const xs = [1, 2, 4, 5], ws = [3, 2, 3, 3];
  const x = T.tensor(randArray(prod(xs), 7), xs);
  const w = T.tensor(randArray(prod(ws), 8), ws);
  w.requiresGrad = true;
  T.tidy(() => T.backward(T.sum(T.conv2d(x, w, null, { padding: 1 }))));
  if (x.grad !== null) throw new Error("x needs no gradient but got one");
  if (!w.grad || w.grad.size !== prod(ws)) throw new Error("weight gradient missing");
  // d(sum)/dw[o,c,ky,kx] = Σ of x over the window positions that tap meets.
  const ref = convRef(await x.toArray(), xs, new Array(prod(ws)).fill(0), ws, null, 1, 1);
  assertClose(ref.shape, [1, 3, 4, 5]);
  const xd = await x.toArray();
  const expected: number[] = [];
  for (let o = 0; o < 3; o++) {
    for (let c = 0; c < 2; c++) {
      for (let ky = 0; ky < 3; ky++) {
        for (let kx = 0; kx < 3; kx++) {
          let s = 0;
          for (let oy = 0; oy < 4; oy++) {
            for (let ox = 0; ox < 5; ox++) {
              const iy = oy + ky - 1, ix = ox + kx - 1;
              if (iy >= 0 && iy < 4 && ix >= 0 && ix < 5) s += xd[(c * 4 + iy) * 5 + ix];
            }
          }
          expected.push(s);
        }
      }
    }
  }
  assertClose(await w.grad.toArray(), expected, { atol: 1e-5, what: "weight gradient" });
  w.grad.dispose();
  x.dispose();
  w.dispose();
});

Deno.test("conv2d: bad inputs throw errors naming conv2d and the shapes", () => {
  const x = T.zeros([2, 3, 7, 5]);
  const expectThrow = (fn: () => unknown, ...parts: string[]) => {
    let message = "";
    try {
      fn();
    } catch (error) {
      message = (error as Error).message;
    }
    for (const part of ["peco: conv2d", ...parts]) {
      if (!message.includes(part)) {
        throw new Error(`expected an error containing "${part}", got "${message}"`);
      }
    }
  };
  const w4 = T.zeros([5, 4, 3, 3]);
  expectThrow(() => T.conv2d(x, w4, null), "4 input channels", "[2,3,7,5]", "[5,4,3,3]");
  const x3 = T.zeros([3, 7, 5]);
  const w = T.zeros([5, 3, 3, 3]);
  expectThrow(() => T.conv2d(x3, w, null), "[N, C, H, W]", "[3,7,5]");
  expectThrow(() => T.conv2d(x, T.zeros([5, 3, 3]), null), "[O, C, kh, kw]", "[5,3,3]");
  expectThrow(() => T.conv2d(x, w, T.zeros([4])), "bias must be [5]", "[4]");
  expectThrow(() => T.conv2d(x, w, null, { stride: 0 }), "stride 0");
  expectThrow(() => T.conv2d(x, w, null, { padding: -1 }), "padding top = -1");
  expectThrow(() => T.conv2d(x, T.zeros([5, 3, 9, 3]), null), "empty output");
  expectThrow(() => T.conv2d(T.zeros([2, 3, 7, 5], "i32"), w, null), "needs f32");
  for (const t of [x, w4, x3, w]) t.dispose();
});

// ---- pooling and upsampling ---------------------------------------------------------------------

function avgPoolRef(x: number[], [n, c, h, w]: number[], k: number, s: number): number[] {
  const ho = Math.floor((h - k) / s) + 1, wo = Math.floor((w - k) / s) + 1;
  const out: number[] = [];
  for (let p = 0; p < n * c; p++) {
    for (let oy = 0; oy < ho; oy++) {
      for (let ox = 0; ox < wo; ox++) {
        let acc = 0;
        for (let ky = 0; ky < k; ky++) {
          for (let kx = 0; kx < k; kx++) acc += x[(p * h + oy * s + ky) * w + ox * s + kx];
        }
        out.push(acc / (k * k));
      }
    }
  }
  return out;
}

function upsampleRef(x: number[], [n, c, h, w]: number[], s: number): number[] {
  const out: number[] = [];
  for (let p = 0; p < n * c; p++) {
    for (let y = 0; y < h * s; y++) {
      for (let xx = 0; xx < w * s; xx++) {
        out.push(x[(p * h + Math.floor(y / s)) * w + Math.floor(xx / s)]);
      }
    }
  }
  return out;
}

const poolCases: [number[], number, number][] = [
  [[2, 3, 7, 5], 2, 2], // odd sizes: the last row/column is in no window
  [[1, 2, 7, 5], 3, 2], // overlapping windows
  [[1, 1, 5, 7], 3, 1],
  [[2, 1, 1, 1], 1, 1],
  [[2, 3, 6, 4], 2, 2], // windows that tile the plane: the block kernels
  [[1, 2, 9, 6], 3, 3],
];

/**
 * The pooling and upsampling kernels: the block ones where the windows tile the planes (default) or
 * the general ones (forced); `tiles`: whether the case's windows tile its planes.
 */
async function withWindowKernels(
  kernels: "block" | "general",
  tiles: boolean,
  fn: () => Promise<void>,
): Promise<void> {
  forceVariant("windowOp", kernels === "general" ? "general" : null);
  try {
    const ran = await kernelsRan(fn, "conv_");
    const expected = kernels === "block" && tiles ? "conv_block_" : "conv_window_";
    if (ran.length === 0 || ran.some((name) => !name.startsWith(expected))) {
      throw new Error(`expected ${expected}* kernels, ran ${ran.join(", ") || "none"}`);
    }
  } finally {
    forceVariant("windowOp", null);
  }
}

for (const [xs, k, s] of poolCases) {
  const tiles = k === s && xs[2] % s === 0 && xs[3] % s === 0;
  for (const kernels of tiles ? ["block", "general"] as const : ["general"] as const) {
    Deno.test(`avgPool2d [${xs}] k${k} s${s}, ${kernels} kernels: forward and backward`, () =>
      withWindowKernels(kernels, tiles, async () => {
        const x = randArray(prod(xs), 9);
        const out = await runOp((t) => T.avgPool2d(t, k, s), [{ data: x, shape: xs }]);
        const ho = Math.floor((xs[2] - k) / s) + 1, wo = Math.floor((xs[3] - k) / s) + 1;
        assertClose(out.shape, [xs[0], xs[1], ho, wo], { what: "shape" });
        assertClose(out.data, avgPoolRef(x, xs, k, s), { atol: 1e-6, what: "avgPool2d" });
        await checkGrad((t) => T.avgPool2d(t, k, s), (d) => avgPoolRef(d, xs, k, s), [{
          data: x,
          shape: xs,
        }]);
      }));
  }
}

for (
  const [xs, s] of [[[2, 3, 3, 5], 2], [[1, 2, 1, 3], 3], [[1, 1, 2, 2], 1]] as [number[], number][]
) {
  for (const kernels of ["block", "general"] as const) {
    Deno.test(`upsampleNearest2d [${xs}] x${s}, ${kernels} kernels: forward and backward`, () =>
      withWindowKernels(kernels, true, async () => {
        const x = randArray(prod(xs), 10);
        const out = await runOp((t) => T.upsampleNearest2d(t, s), [{ data: x, shape: xs }]);
        assertClose(out.shape, [xs[0], xs[1], xs[2] * s, xs[3] * s], { what: "shape" });
        const x32 = Array.from(Float32Array.from(x));
        assertClose(out.data, upsampleRef(x32, xs, s), { atol: 0, rtol: 0, what: "upsample" });
        await checkGrad((t) => T.upsampleNearest2d(t, s), (d) => upsampleRef(d, xs, s), [
          { data: x, shape: xs },
        ]);
      }));
  }
}

Deno.test("avgPool2d and upsampleNearest2d: bad inputs throw clear errors", () => {
  const x = T.zeros([2, 3, 4]);
  const y = T.zeros([1, 1, 2, 2]);
  const cases: [() => unknown, string][] = [
    [() => T.avgPool2d(x, 2), "peco: avgPool2d: x must be [N, C, H, W], got [2,3,4]"],
    [() => T.avgPool2d(y, 3), "peco: avgPool2d: kernel 3 is larger than x [1,1,2,2]"],
    [() => T.avgPool2d(y, 0), "peco: avgPool2d: kernel 0"],
    [() => T.upsampleNearest2d(x, 2), "peco: upsampleNearest2d: x must be [N, C, H, W]"],
    [() => T.upsampleNearest2d(y, 1.5), "peco: upsampleNearest2d: scale 1.5"],
  ];
  for (const [fn, expected] of cases) {
    let message = "";
    try {
      fn();
    } catch (error) {
      message = (error as Error).message;
    }
    if (!message.startsWith(expected)) throw new Error(`expected "${expected}…", got "${message}"`);
  }
  x.dispose();
  y.dispose();
});
