import { assertClose, checkGrad, kernelsRan, prod, randArray, runOp } from "./util.ts";
import * as T from "../lib/tensor/mod.ts";
import { clearTuned, forceVariant } from "../lib/gpu/autotune.ts";
import { throws } from "node:assert/strict";
import { gpu } from "../lib/gpu/device.ts";

interface Input {
  data: number[];
  shape: number[];
}

let seed = 100;
const input = (...shape: number[]): Input => ({ data: randArray(prod(shape), seed++), shape });

/**
 * float64 op(a)·op(b) with the batch rules of matmul (equal batch dims, or one operand rank 2).
 */
function matmulRef(a: Input, b: Input, transA = false, transB = false): Input {
  const [ar, ac] = a.shape.slice(-2);
  const [br, bc] = b.shape.slice(-2);
  const [M, K] = transA ? [ac, ar] : [ar, ac];
  const N = transB ? br : bc;
  const batchShape = a.shape.length > 2 ? a.shape.slice(0, -2) : b.shape.slice(0, -2);
  const batch = prod(batchShape);
  const sa = a.shape.length > 2 ? M * K : 0;
  const sb = b.shape.length > 2 ? K * N : 0;
  const data: number[] = [];
  for (let z = 0; z < batch; z++) {
    for (let m = 0; m < M; m++) {
      for (let n = 0; n < N; n++) {
        let s = 0;
        for (let k = 0; k < K; k++) {
          const av = a.data[z * sa + (transA ? k * M + m : m * K + k)];
          const bv = b.data[z * sb + (transB ? n * K + k : k * N + n)];
          s += av * bv;
        }
        data.push(s);
      }
    }
  }
  return { data, shape: [...batchShape, M, N] };
}

async function checkForward(a: Input, b: Input, transA = false, transB = false, what = "") {
  const out = await runOp((x, y) => T.matmul(x, y, { transA, transB }), [a, b]);
  const ref = matmulRef(a, b, transA, transB);
  const label = `matmul ${what} [${a.shape}]${transA ? "ᵀ" : ""}·[${b.shape}]${transB ? "ᵀ" : ""}`;
  assertClose(out.shape, ref.shape, { what: `${label} shape` });
  assertClose(out.data, ref.data, { atol: 1e-5, rtol: 1e-4, what: label });
}

const TRANS: [boolean, boolean][] = [[false, false], [true, false], [false, true], [true, true]];

/** Operands of an M×K · K×N product, stored as the trans flags say. */
function operands(M: number, K: number, N: number, transA: boolean, transB: boolean, batch = 0) {
  const pre = batch ? [batch] : [];
  return {
    a: input(...pre, ...(transA ? [K, M] : [M, K])),
    b: input(...pre, ...(transB ? [N, K] : [K, N])),
  };
}

Deno.test("matmul forward: all four trans combinations on odd shapes (7×13 · 13×9)", async () => {
  for (const [ta, tb] of TRANS) {
    const { a, b } = operands(7, 13, 9, ta, tb);
    await checkForward(a, b, ta, tb);
  }
});

Deno.test("matmul forward: batches (equal, shared b, shared a) and size-1 dims", async () => {
  await checkForward(input(3, 7, 13), input(13, 9), false, false, "shared b");
  await checkForward(input(3, 13, 7), input(9, 13), true, true, "shared b, trans");
  await checkForward(input(7, 13), input(3, 13, 9), false, false, "shared a");
  await checkForward(input(2, 3, 5, 1), input(2, 3, 1, 4), false, false, "K=1");
  await checkForward(input(3, 1, 13), input(3, 13, 9), false, false, "M=1");
  await checkForward(input(3, 7, 13), input(3, 1, 13), false, true, "N=1");
  await checkForward(input(1, 1), input(1, 1), false, false, "1×1");
});

Deno.test("matmul forward: vec4 paths (N or transposed M a multiple of 4, odd other dims)", async () => {
  await checkForward(input(5, 7), input(7, 12), false, false, "vec4 B");
  await checkForward(input(3, 7, 12), input(3, 7, 5), true, false, "vec4 A");
  await checkForward(input(7, 12), input(7, 8), true, false, "vec4 A and B");
});

Deno.test("matmul forward: larger than one register block in every dim (37×29 · 29×41)", async () => {
  for (const [ta, tb] of TRANS) {
    const { a, b } = operands(37, 29, 41, ta, tb);
    await checkForward(a, b, ta, tb);
  }
});

Deno.test("matmul forward: every kernel variant, forced", async () => {
  try {
    for (const v of T.MATMUL_VARIANTS) {
      forceVariant("matmul", v.name);
      // Shared b, vec4 B loads, scalar A loads; then vec4 A, transposed scalar B, equal batches.
      await checkForward(input(2, 37, 29), input(29, 44), false, false, v.name);
      await checkForward(input(2, 29, 36), input(2, 41, 29), true, true, v.name);
    }
  } finally {
    forceVariant("matmul", null);
  }
});

Deno.test("matmul forward: texture variants, forced, on odd shapes, batches and size-1 dims", async () => {
  const texVariants = T.MATMUL_VARIANTS.filter((v) => v.name.startsWith("tex"));
  if (texVariants.length === 0) throw new Error("no texture variants registered");
  try {
    for (const v of texVariants) {
      forceVariant("matmul", v.name);
      for (const [ta, tb] of TRANS) {
        const { a, b } = operands(37, 29, 41, ta, tb);
        await checkForward(a, b, ta, tb, v.name);
        const batched = operands(7, 13, 9, ta, tb, 3);
        await checkForward(batched.a, batched.b, ta, tb, `${v.name} batch`);
        // Many row blocks, few column blocks: row blocks run along the SIMD lanes.
        const tall = operands(45, 20, 9, ta, tb, 2);
        await checkForward(tall.a, tall.b, ta, tb, `${v.name} tall`);
      }
      await checkForward(input(3, 7, 13), input(13, 9), false, false, `${v.name} shared b`);
      await checkForward(input(3, 13, 7), input(9, 13), true, true, `${v.name} shared b, trans`);
      await checkForward(input(7, 13), input(3, 13, 9), false, false, `${v.name} shared a`);
      await checkForward(input(2, 3, 5, 1), input(2, 3, 1, 4), false, false, `${v.name} K=1`);
      await checkForward(input(3, 1, 13), input(3, 13, 9), false, false, `${v.name} M=1`);
      await checkForward(input(3, 7, 13), input(3, 1, 13), false, true, `${v.name} N=1`);
      await checkForward(input(1, 1), input(1, 1), false, false, `${v.name} 1×1`);
      await checkForward(input(33, 70), input(70, 20), false, false, `${v.name} 33×70·70×20`);
      // Batch chunks (1100 × 16 padded rows exceed maxTextureDimension2D) and an N too wide for
      // a texture row (falls back to a buffer variant).
      await checkForward(input(1100, 1, 3), input(1100, 3, 2), false, false, `${v.name} chunks`);
      await checkForward(input(2, 1), input(1, 70001), false, false, `${v.name} wide N`);
    }
  } finally {
    forceVariant("matmul", null);
  }
});

Deno.test("texture matmul: packed operands read from their buffer or a flat copy, forced", async () => {
  // Odd M, K and N (4 matrices: whole texels in all): both operands packed in every layout; the
  // pack reads each operand from its storage buffer (default at these sizes) or from a flat
  // texture copy (large operands; software adapters only: with PECO_KERNELS=gpu, the buffer).
  const sources = gpu().info.software ? ["flat", "buffer"] : ["buffer"];
  try {
    for (const source of sources) {
      forceVariant("matmulPack", source);
      const [want, not] = source === "flat"
        ? ["matmul_pack_flat", "matmul_pack"]
        : ["matmul_pack", "matmul_pack_flat"];
      for (const name of ["tex8x8", "tex16x16"]) {
        forceVariant("matmul", name);
        for (const [ta, tb] of TRANS) {
          const { a, b } = operands(37, 29, 41, ta, tb, 4);
          const ran = new Set(
            await kernelsRan(() => checkForward(a, b, ta, tb, `${name} from ${source}`)),
          );
          if (!ran.has(want) || ran.has(not)) {
            throw new Error(`${name} ta=${ta} tb=${tb} from ${source}: ran ${[...ran]}`);
          }
        }
      }
    }
  } finally {
    forceVariant("matmulPack", null);
    forceVariant("matmul", null);
  }
});

Deno.test("texture matmul: operands whose rows are whole texels are copied, in every layout", async () => {
  const expectFill = (a: number[], b: number[], ta: boolean, tb: boolean, want: string) => {
    const fill = T.textureFill(a, b, "tex8x8", { transA: ta, transB: tb });
    const got = fill ? `${fill.a}/${fill.b}` : "none";
    if (got !== want) throw new Error(`[${a}]·[${b}] ta=${ta} tb=${tb}: fill ${got}, want ${want}`);
  };
  try {
    for (const v of T.MATMUL_VARIANTS.filter((v) => v.name.startsWith("tex"))) {
      forceVariant("matmul", v.name);
      for (const [ta, tb] of TRANS) {
        // K = 12: an operand is copied where its contiguous dim is a multiple of 4 (K, or M = 20 /
        // N = 8 below), packed where it is odd (M = 37, N = 9).
        const odd = operands(37, 12, 9, ta, tb);
        expectFill(
          odd.a.shape,
          odd.b.shape,
          ta,
          tb,
          `${ta ? "pack" : "copy"}/${tb ? "copy" : "pack"}`,
        );
        await checkForward(odd.a, odd.b, ta, tb, `${v.name} copy K`);
        const whole = operands(20, 12, 8, ta, tb, 3);
        expectFill(whole.a.shape, whole.b.shape, ta, tb, "copy/copy");
        await checkForward(whole.a, whole.b, ta, tb, `${v.name} copy all, batch`);
      }
      // K not a multiple of 4: a single matrix with K along its stored rows is copied and the
      // rows up to K = 16 read as zeros (after a K = 16 product has left values in the pooled
      // textures), batched ones and those with K contiguous are packed. Then shared operands;
      // chunks of the batch (b's 300 packed 64-row matrices exceed 16384 texture rows; a is
      // copied chunk by chunk from an offset); matrices that are not whole texture rows.
      await checkForward(input(16, 44), input(16, 64), true, false, `${v.name} K=16`);
      expectFill([13, 44], [13, 64], true, false, "copy/copy");
      await checkForward(input(13, 44), input(13, 64), true, false, `${v.name} K=13`);
      expectFill([2, 13, 44], [2, 13, 64], true, false, "pack/pack");
      await checkForward(input(2, 13, 44), input(2, 13, 64), true, false, `${v.name} K=13 batch`);
      expectFill([13, 44], [2, 13, 64], true, false, "copy/pack");
      await checkForward(input(13, 44), input(2, 13, 64), true, false, `${v.name} K=13 shared`);
      expectFill([44, 13], [64, 13], false, true, "pack/pack");
      await checkForward(input(44, 13), input(64, 13), false, true, `${v.name} K=13 contiguous`);
      await checkForward(input(3, 37, 64), input(64, 64), false, false, `${v.name} shared b`);
      await checkForward(input(37, 64), input(3, 64, 64), false, false, `${v.name} shared a`);
      await checkForward(input(300, 60, 64), input(300, 64, 5), false, false, `${v.name} chunks`);
      await checkForward(input(5, 7, 20), input(5, 20, 12), false, false, `${v.name} partial rows`);
    }
  } finally {
    forceVariant("matmul", null);
  }
});

Deno.test("texture matmul: C stored as vec4s where N is a multiple of 4, forced on and off", async () => {
  // N = 20: a multiple of 4 but of no block width, so the last column block is partly outside C;
  // M = 13 and K = 9 odd; column bias (linear), row bias, batches and a shared operand.
  const storeOf = (what: string, want: boolean) => {
    const label = gpu().recorder.lastLabel;
    if (label.endsWith("_v4") !== want) throw new Error(`${what}: ran ${label}`);
  };
  try {
    for (const v of T.MATMUL_VARIANTS.filter((v) => v.name.startsWith("tex"))) {
      forceVariant("matmul", v.name);
      for (const store of ["vec4", "scalar"]) {
        forceVariant("matmulStore", store === "scalar" ? "scalar" : null);
        const what = `${v.name} ${store} stores`;
        for (const [ta, tb] of TRANS) {
          const { a, b } = operands(13, 9, 20, ta, tb, 3);
          await checkForward(a, b, ta, tb, what);
          storeOf(what, store === "vec4");
        }
        const shared = operands(13, 9, 20, false, true);
        await checkForward(input(2, 13, 9), shared.b, false, true, `${what} shared b`);
        const [x, w, bias] = [input(2, 7, 9), input(20, 9), input(20)];
        const out = await runOp((x, w, b) => T.linear(x, w, b), [x, w, bias]);
        const ref = matmulRef(x, w, false, true);
        const want = ref.data.map((r, i) => r + bias.data[i % 20]);
        assertClose(out.data, want, { atol: 1e-5, rtol: 1e-4, what: `${what} linear bias` });
        storeOf(`${what} linear bias`, store === "vec4");
        const [ra, rb, rowBias] = [input(13, 9), input(2, 20, 9), input(13)];
        const rows = await runOp((a, b, c) => T.matmulRowBias(a, b, c, { transB: true }), [
          ra,
          rb,
          rowBias,
        ]);
        const rowWant = matmulRef(ra, rb, false, true).data.map((r, i) =>
          r + rowBias.data[Math.floor(i / 20) % 13]
        );
        assertClose(rows.data, rowWant, { atol: 1e-5, rtol: 1e-4, what: `${what} row bias` });
        storeOf(`${what} row bias`, store === "vec4");
      }
      // N not a multiple of 4: scalar stores whatever is forced.
      await checkForward(input(2, 13, 9), input(2, 9, 18), false, false, `${v.name} N = 18`);
      storeOf(`${v.name} N = 18`, false);
    }
  } finally {
    forceVariant("matmul", null);
    forceVariant("matmulStore", null);
  }
});

Deno.test("matmulRowBias adds bias[m] to every row, on buffer and texture variants", async () => {
  try {
    for (const name of ["reg4x4", "reg16x16", "tiled64", "tex8x8", "tex24x24"]) {
      forceVariant("matmul", name);
      for (
        const [a, b, tb] of [[input(37, 20), input(2, 9, 20), true], [
          input(7, 64),
          input(64, 65),
          false,
        ]] as const
      ) {
        const bias = input(a.shape[0]);
        const out = await runOp((x, y, z) => T.matmulRowBias(x, y, z, { transB: tb }), [
          a,
          b,
          bias,
        ]);
        const ref = matmulRef(a, b, false, tb);
        const [M, N] = ref.shape.slice(-2);
        const want = ref.data.map((v, i) => v + bias.data[Math.floor(i / N) % M]);
        assertClose(out.data, want, {
          atol: 1e-5,
          rtol: 1e-4,
          what: `${name} row bias [${a.shape}]·[${b.shape}]`,
        });
      }
    }
  } finally {
    forceVariant("matmul", null);
  }
  throws(
    () => T.matmulRowBias(T.zeros([3, 4]), T.zeros([4, 5]), T.zeros([5])),
    /row bias .* 3 values/,
  );
});

Deno.test("linear with a forced texture variant: bias added, gradients match", async () => {
  try {
    for (const v of T.MATMUL_VARIANTS.filter((v) => v.name.startsWith("tex"))) {
      forceVariant("matmul", v.name);
      const x = input(2, 5, 7);
      const w = input(9, 7);
      const bias = input(9);
      const out = await runOp((a, b, c) => T.linear(a, b, c), [x, w, bias]);
      const ref = matmulRef(x, w, false, true);
      const data = ref.data.map((s, i) => s + bias.data[i % 9]);
      assertClose(out.data, data, { atol: 1e-5, rtol: 1e-4, what: `${v.name} linear` });
      for (const [ta, tb] of TRANS) {
        const { a, b } = operands(5, 6, 7, ta, tb, 2);
        await checkGrad(mm(ta, tb), mmRef(a, b, ta, tb), [a, b]);
      }
    }
  } finally {
    forceVariant("matmul", null);
  }
});

Deno.test("texture matmul: pooled textures are released and reused", async () => {
  try {
    forceVariant("matmul", "tex16x16");
    const a = input(20, 30);
    const b = input(30, 10);
    await checkForward(a, b, false, false, "warm-up");
    const { inUse, textures } = gpu().pool.stats;
    await checkForward(a, b, false, false, "again");
    assertClose([gpu().pool.stats.inUse, gpu().pool.stats.textures], [inUse, textures]);
  } finally {
    forceVariant("matmul", null);
  }
});

const mm = (transA: boolean, transB: boolean) => (x: T.Tensor, y: T.Tensor) =>
  T.matmul(x, y, { transA, transB });
const mmRef =
  (a: Input, b: Input, transA: boolean, transB: boolean) => (x: number[], y: number[]) =>
    matmulRef({ data: x, shape: a.shape }, { data: y, shape: b.shape }, transA, transB).data;

Deno.test("matmul backward: all trans combinations, equal and shared batches", async () => {
  for (const [ta, tb] of TRANS) {
    const plain = operands(3, 5, 4, ta, tb);
    const batched = operands(3, 5, 4, ta, tb, 2);
    // Shared b (the batch sum folds into one product when a is not transposed), shared a.
    const sharedB = { a: batched.a, b: plain.b };
    const sharedA = { a: plain.a, b: batched.b };
    for (const { a, b } of [plain, batched, sharedB, sharedA]) {
      await checkGrad(mm(ta, tb), mmRef(a, b, ta, tb), [a, b]);
    }
  }
});

Deno.test("matmul backward: only the input that needs a gradient gets one", async () => {
  const a = input(2, 3, 5);
  const b = input(5, 4);
  await checkGrad(mm(false, false), mmRef(a, b, false, false), [a, b], { which: [1] });
  await checkGrad(mm(false, false), mmRef(a, b, false, false), [a, b], { which: [0] });
});

function linearRef(x: Input, w: Input, bias: number[] | null) {
  const out = matmulRef(
    { data: x.data, shape: [prod(x.shape.slice(0, -1)), x.shape.at(-1)!] },
    w,
    false,
    true,
  );
  const n = w.shape[0];
  return out.data.map((v, i) => v + (bias ? bias[i % n] : 0));
}

Deno.test("linear: forward and backward, with and without bias, 3-D input", async () => {
  const x = input(2, 3, 5);
  const w = input(4, 5);
  const bias = input(4);
  const out = await runOp(T.linear, [x, w, bias]);
  assertClose(out.shape, [2, 3, 4], { what: "linear shape" });
  assertClose(out.data, linearRef(x, w, bias.data), { what: "linear" });
  const noBias = await runOp((a, b) => T.linear(a, b, null), [x, w]);
  assertClose(noBias.data, linearRef(x, w, null), { what: "linear without bias" });
  await checkGrad(
    T.linear,
    (a, b, c) => linearRef({ data: a, shape: x.shape }, { data: b, shape: w.shape }, c),
    [
      x,
      w,
      bias,
    ],
  );
  await checkGrad(
    (a, b) => T.linear(a, b, null),
    (a, b) => linearRef({ data: a, shape: x.shape }, { data: b, shape: w.shape }, null),
    [x, w],
  );
});

Deno.test("matmulRowSumsInto: the product and Σ_k op(A)[m, k], every layout, forced on and off", async () => {
  // [M, K, N]: packed A (M = 13, K = 37 odd), copied A whose M is not a whole 16-row block
  // (20), copied A of one 8-row block, a single column (N = 1: one column block), K = 1.
  const shapes = [[13, 37, 9], [20, 40, 12], [8, 12, 4], [21, 16, 1], [5, 1, 3]];
  try {
    for (const variant of ["tex8x8", "tex16x16", "reg4x4", "separate"]) {
      forceVariant("matmul", variant === "separate" ? "tex8x8" : variant);
      forceVariant("matmulRowSums", variant === "separate" ? "separate" : null);
      for (const [M, K, N] of shapes) {
        for (const [ta, tb] of TRANS) {
          const { a, b } = operands(M, K, N, ta, tb);
          const [ta2, tb2] = [T.tensor(a.data, a.shape), T.tensor(b.data, b.shape)];
          const [out, sums] = [T.zeros([M, N]), T.zeros([M])];
          T.matmulRowSumsInto(ta2, tb2, out, sums, { transA: ta, transB: tb });
          const what = `${variant} [${a.shape}]${ta ? "ᵀ" : ""}·[${b.shape}]${tb ? "ᵀ" : ""}`;
          assertClose(await out.toArray(), matmulRef(a, b, ta, tb).data, {
            atol: 1e-5,
            rtol: 1e-4,
            what: `${what} product`,
          });
          const want = Array.from({ length: M }, (_, m) => {
            let acc = 0;
            for (let k = 0; k < K; k++) acc += a.data[ta ? k * M + m : m * K + k];
            return acc;
          });
          assertClose(await sums.toArray(), want, { atol: 1e-5, rtol: 1e-4, what: `${what} sums` });
          [ta2, tb2, out, sums].forEach((t) => t.dispose());
        }
      }
    }
  } finally {
    forceVariant("matmul", null);
    forceVariant("matmulRowSums", null);
  }
  throws(
    () => T.matmulRowSumsInto(T.zeros([3, 4]), T.zeros([4, 5]), T.zeros([3, 5]), T.zeros([5])),
    /row sums .* 3 values/,
  );
});

Deno.test("linear backward: the bias gradient from the weight gradient's pass, forced on and off", async () => {
  // 3·7 = 21 rows (not a whole texel), 12 inputs (copied), 9 outputs (packed gᵀ).
  const x = input(3, 7, 12);
  const w = input(9, 12);
  const bias = input(9);
  const ref = (a: number[], b: number[], c: number[]) =>
    linearRef({ data: a, shape: x.shape }, { data: b, shape: w.shape }, c);
  try {
    for (const variant of ["tex8x8", "tex16x16", "reg4x4", "separate"]) {
      forceVariant("matmul", variant === "separate" ? "tex16x16" : variant);
      forceVariant("matmulRowSums", variant === "separate" ? "separate" : null);
      await checkGrad(T.linear, ref, [x, w, bias]);
      // The bias alone (no weight gradient: its own reduction), and the weight alone.
      await checkGrad(T.linear, ref, [x, w, bias], { which: [2] });
      await checkGrad(T.linear, ref, [x, w, bias], { which: [1] });
    }
  } finally {
    forceVariant("matmul", null);
    forceVariant("matmulRowSums", null);
  }
});

Deno.test("matmul and linear reject bad shapes and dtypes with clear errors", () => {
  const t = (shape: number[], dtype: T.DType = "f32") => T.zeros(shape, dtype);
  T.tidy(() => {
    throws(
      () => T.matmul(t([2, 3]), t([4, 5])),
      /peco: matmul: inner dimensions differ.*\[2,3\].*\[4,5\]/,
    );
    throws(() => T.matmul(t([2, 3]), t([2, 5]), { transB: true }), /inner dimensions differ/);
    throws(
      () => T.matmul(t([2, 3, 4]), t([3, 4, 5])),
      /peco: matmul: batch dimensions.*\[2,3,4\].*\[3,4,5\]/,
    );
    throws(() => T.matmul(t([3]), t([3, 2])), /peco: matmul: operands need rank >= 2/);
    throws(() => T.matmul(t([2, 3], "i32"), t([3, 2])), /peco: matmul: needs f32.*i32\[2,3\]/);
    throws(
      () => T.linear(t([2, 5]), t([4, 6]), null),
      /peco: linear: weight \[4,6\] does not match input \[2,5\]/,
    );
    throws(
      () => T.linear(t([2, 5]), t([4, 5]), t([3])),
      /peco: linear: bias .*\[3\] must be f32 \[4\]/,
    );
  });
});

Deno.test("autotuner: tuneMatmul picks a timed candidate; forced variants override it", async () => {
  try {
    const result = await T.tuneMatmul(9, 12, 5, { candidates: ["reg4x4", "reg8x8"] });
    assertClose([result.timings.length], [2], { what: "timed candidates" });
    if (!["reg4x4", "reg8x8"].includes(result.winner)) throw new Error(`winner ${result.winner}`);
    const fastest = result.timings.reduce((a, b) => (b.ms < a.ms ? b : a)).name;
    if (fastest !== result.winner) throw new Error(`winner ${result.winner} is not ${fastest}`);
    // The same shape class now runs the winner; a forced variant beats it.
    if (T.matmulVariant([9, 5], [5, 12]) !== result.winner) throw new Error("tuned winner unused");
    forceVariant("matmul", "tiled64");
    if (T.matmulVariant([9, 5], [5, 12]) !== "tiled64") throw new Error("forced variant unused");
    forceVariant("matmul", "nonesuch");
    throws(() => T.matmulVariant([9, 5], [5, 12]), /peco: matmul: no variant "nonesuch"/);
  } finally {
    forceVariant("matmul", null);
    clearTuned();
  }
});

Deno.test("matmul refuses a K longer than a software adapter's loop limit instead of a wrong sum", () => {
  if (!gpu().info.software) return;
  const a = T.full([1, 70000], 1);
  const b = T.full([70000, 3], 1);
  throws(() => T.matmul(a, b), /matmul: K = 70000 exceeds 32000/);
  a.dispose();
  b.dispose();
});
