import { assertClose, checkGrad, prod, randArray, runOp } from "./util.ts";
import * as T from "../lib/tensor/mod.ts";
import { forceVariant } from "../lib/gpu/autotune.ts";
import { gpu } from "../lib/gpu/device.ts";
import assert from "node:assert/strict";

/**
 * float64 tokens [N, 1+T, D] from p [N, D, T]: cls, then p·(1 − w) + token·w per patch, plus pos
 * (w = 0 without a mask, pos = 0 without position embeddings).
 */
function tokenEmbedRef(
  [n, d, t]: number[],
  p: number[],
  cls: number[],
  pos: number[] | null,
  mask: number[] | null,
  token: number[] | null,
): number[] {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    for (let j = 0; j <= t; j++) {
      for (let c = 0; c < d; c++) {
        let v = cls[c];
        if (j > 0) {
          const w = mask ? mask[i * t + j - 1] : 0;
          v = p[(i * d + c) * t + j - 1] * (1 - w) + (token ? token[c] : 0) * w;
        }
        out.push(v + (pos ? pos[j * d + c] : 0));
      }
    }
  }
  return out;
}

// [N, D, T]: odd sizes; a single image and patch; a wider one.
for (const dims of [[3, 5, 7], [1, 4, 1], [2, 17, 9]]) {
  const [n, d, t] = dims;
  const p = { data: randArray(prod(dims), 1, -2, 2), shape: dims };
  const cls = { data: randArray(d, 2), shape: [1, 1, d] };
  const pos = { data: randArray((t + 1) * d, 3), shape: [1, t + 1, d] };
  const token = { data: randArray(d, 4), shape: [1, 1, d] };
  const mask = Array.from({ length: n * t }, (_, i) => (i * 5) % 3 === 0 ? 1 : 0);
  for (const variant of ["fused", "composed"]) {
    Deno.test(`tokenEmbed [${dims}] (${variant}): forward as float64, backward by finite differences`, async () => {
      forceVariant("tokenEmbed", variant);
      try {
        const m = () => T.tensor(mask, [n, t]);
        // With mask and pos (BEiT), pos only (the classifier), neither.
        const full = (a: T.Tensor, b: T.Tensor, c: T.Tensor, e: T.Tensor) =>
          T.tokenEmbed(a, b, c, { mask: m(), token: e });
        const fullRef = (a: number[], b: number[], c: number[], e: number[]) =>
          tokenEmbedRef(dims, a, b, c, mask, e);
        const out = await runOp(full, [p, cls, pos, token]);
        assert.deepEqual(out.shape, [n, t + 1, d]);
        assertClose(out.data, fullRef(p.data, cls.data, pos.data, token.data), { what: "masked" });
        await checkGrad(full, fullRef, [p, cls, pos, token]);
        await checkGrad(full, fullRef, [p, cls, pos, token], { which: [1, 3] });
        const posOnly = (a: T.Tensor, b: T.Tensor, c: T.Tensor) => T.tokenEmbed(a, b, c, null);
        const posRef = (a: number[], b: number[], c: number[]) =>
          tokenEmbedRef(dims, a, b, c, null, null);
        const plain = await runOp(posOnly, [p, cls, pos]);
        assertClose(plain.data, posRef(p.data, cls.data, pos.data), { what: "no mask" });
        await checkGrad(posOnly, posRef, [p, cls, pos]);
        const bare = (a: T.Tensor, b: T.Tensor, e: T.Tensor) =>
          T.tokenEmbed(a, b, null, { mask: m(), token: e });
        const bareRef = (a: number[], b: number[], e: number[]) =>
          tokenEmbedRef(dims, a, b, null, mask, e);
        await checkGrad(bare, bareRef, [p, cls, token]);
      } finally {
        forceVariant("tokenEmbed", null);
      }
    });
  }
}

Deno.test("tokenEmbed: one dispatch forward, three backward; past the loop budget (N·T > 10000) the composed ops", async () => {
  /** Dispatches forward and backward (from a seed of ones), and the gradients' values. */
  const run = async (dims: number[]) => {
    const [n, d, t] = dims;
    const leaves = [
      T.tensor(randArray(prod(dims), 5), dims),
      T.tensor(randArray(d, 6), [d]),
      T.tensor(randArray((t + 1) * d, 8), [t + 1, d]),
      T.tensor(randArray(d, 7), [d]),
    ];
    leaves.forEach((x) => x.requiresGrad = true);
    const [p, cls, pos, token] = leaves;
    const mask = T.tensor(Array.from({ length: n * t }, (_, i) => i % 2), [n, t]);
    const seed = T.tensor(new Array(n * (t + 1) * d).fill(1), [n, t + 1, d]);
    const counts = T.tidy(() => {
      const start = gpu().recorder.dispatches;
      const out = T.tokenEmbed(p, cls, pos, { mask, token });
      const forward = gpu().recorder.dispatches - start;
      T.backward(out, seed);
      return [forward, gpu().recorder.dispatches - start - forward];
    });
    const grads = await Promise.all(leaves.map((x) => x.grad!.toArray()));
    T.zeroGrad(leaves);
    [...leaves, mask, seed].forEach((x) => x.dispose());
    return { counts, grads };
  };
  assert.deepEqual((await run([3, 5, 7])).counts, [1, 3]);
  // 2 · 5001 patches: the mask token's gradient would loop past the budget.
  const big = await run([2, 3, 5001]);
  assert.ok(big.counts[0] > 1, `composed forward takes several dispatches, got ${big.counts[0]}`);
  // With a seed of ones: dcls = N, dtoken = Σ w = 5001 per channel.
  assertClose(big.grads[1], [2, 2, 2], { what: "dcls" });
  assertClose(big.grads[3], [5001, 5001, 5001], { what: "dtoken" });
});

Deno.test("tokenEmbed rejects mismatched inputs in one line naming them", () => {
  T.tidy(() => {
    const p = T.zeros([2, 4, 3]);
    assert.throws(
      () => T.tokenEmbed(p, T.zeros([5]), null, null),
      /peco: tokenEmbed: cls .* 4 f32/,
    );
    assert.throws(
      () => T.tokenEmbed(p, T.zeros([4]), T.zeros([3, 4]), null),
      /peco: tokenEmbed: pos .* \[4, 4\]/,
    );
    assert.throws(
      () => T.tokenEmbed(p, T.zeros([4]), null, { mask: T.zeros([2, 2]), token: T.zeros([4]) }),
      /peco: tokenEmbed: mask .* \[2, 3\]/,
    );
  });
});
