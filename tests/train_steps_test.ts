// The training steps the stages and bench/ share, on tiny real models on the GPU: the MIM step
// (lib/train/mim.ts) and the MoCo v3 step (lib/train/moco.ts). (The tokenizer step is tested in
// tests/train_tokenizer_test.ts.)

import assert from "node:assert/strict";
import "./util.ts";
import { maskedPositions, maskingGenerator, maskSpec, mimLoss, mimStep } from "../lib/train/mim.ts";
import { mocoStep, signedView } from "../lib/train/moco.ts";
import { Beit, resolveBeitConfig } from "../lib/models/beit.ts";
import { MocoV3 } from "../lib/models/moco.ts";
import { CodeUsage } from "../lib/models/quantizer.ts";
import { AdamW, paramGroups } from "../lib/optim/mod.ts";
import { Rng } from "../lib/tensor/init.ts";
import { keep, noGrad, readAll, tensor, tidy } from "../lib/tensor/mod.ts";

Deno.test("mimStep: the masked loss before the update, clipped AdamW, targets counted; the loss falls", async () => {
  const config = resolveBeitConfig({
    preset: "mnist",
    imageSize: 28,
    inChannels: 1,
    vocabSize: 16,
    dim: 16,
    depth: 1,
    heads: 2,
  });
  const model = new Beit(config, 0);
  const optimizer = new AdamW(paramGroups(model.namedParameters(), { weightDecay: 0.05 }), {
    lr: 3e-3,
    betas: [0.9, 0.98],
    weightDecay: 0.05,
  });
  const histogram = new CodeUsage(16);
  const rng = new Rng(5);
  const n = 3;
  const grid = model.grid;
  const t = grid[0] * grid[1];
  const masks = maskingGenerator(grid, maskSpec(grid)).generateBatch(rng, n);
  const positions = maskedPositions(masks);
  const codes = Int32Array.from({ length: n * t }, () => rng.int(16));
  const fixed = [
    tensor(Float32Array.from({ length: n * 28 * 28 }, () => rng.normal()), [n, 1, 28, 28]),
    tensor(Float32Array.from(masks), [n, t]),
    tensor(positions, [positions.length], "i32"),
    tensor(codes, [n, t], "i32"),
  ].map(keep);
  const [x, maskTensor, maskedIndex, targets] = fixed;
  try {
    model.train();
    const before = noGrad(() =>
      tidy(() => mimLoss(model, x, maskTensor, maskedIndex, targets).loss)
    );
    const context = { model, optimizer, clipNorm: 3, histogram };
    const losses: number[] = [];
    for (let step = 0; step < 4; step++) {
      const scalars = tidy(() => mimStep(context, x, maskTensor, maskedIndex, targets));
      const values = await readAll(scalars);
      scalars.forEach((s) => s.dispose());
      const [loss, accuracy, norm] = values.map((v) => v[0]);
      if (step === 0) assert.equal(loss, (await readAll([before]))[0][0]);
      assert.ok(accuracy >= 0 && accuracy <= 1, `accuracy ${accuracy}`);
      assert.ok(Number.isFinite(norm) && norm > 0, `grad norm ${norm}`);
      losses.push(loss);
    }
    before.dispose();
    assert.ok(losses[3] < losses[0], `loss falls on a fixed batch: ${losses}`);
    // Every step's targets counted: 4 × the masked codes.
    const [counts] = await readAll([histogram.counts]);
    const expected = new Float32Array(16);
    for (const p of positions) expected[codes[p]] += 4;
    assert.deepEqual(counts, expected);
  } finally {
    fixed.forEach((f) => f.dispose());
    histogram.dispose();
    model.dispose();
    optimizer.dispose();
  }
});

Deno.test("mocoStep: views drawn from (seed, step), so a step replays bit for bit; the loss falls", async () => {
  const encoder = { widths: [8, 8], depth: 1, groups: 4 };
  const head = { hidden: 16, dim: 8 };
  const n = 6;
  const rng = new Rng(3);
  const pixels = Uint8Array.from({ length: n * 16 * 16 }, () => rng.int(256));
  const make = () => {
    const model = new MocoV3(encoder, head, new Rng(1));
    const optimizer = new AdamW(model.trainableParameters(), { lr: 1e-2, weightDecay: 1e-4 });
    return {
      model,
      optimizer,
      tau: 0.2,
      momentum: 0.99,
      steps: 10,
      rng: new Rng(9),
      augment: { scale: [0.5, 1] as [number, number], flip: 0.5, brightness: 0.4, contrast: 0.4 },
      image: { channels: 1, height: 16, width: 16 },
      view: signedView(8, 8, 1),
    };
  };
  const a = make();
  const b = make();
  const c = make();
  try {
    const step = async (ctx: ReturnType<typeof make>, s: number) => {
      const [loss] = tidy(() => mocoStep(ctx, pixels, n, s));
      const [v] = await readAll([loss]);
      loss.dispose();
      return v[0];
    };
    const la = await step(a, 0);
    const lb = await step(b, 0);
    const lc = await step(c, 1);
    assert.equal(lb, la, "the same step replays exactly");
    assert.notEqual(lc, la, "another step draws other views");
    const wa = await readAll(a.model.parameters());
    const wb = await readAll(b.model.parameters());
    wa.forEach((w, i) => assert.deepEqual(wb[i], w));
    const losses = [la];
    for (let s = 1; s < 8; s++) losses.push(await step(a, s));
    assert.ok(losses.every(Number.isFinite), `${losses}`);
    assert.ok(losses[7] < losses[0], `the loss falls: ${losses}`);
  } finally {
    for (const ctx of [a, b, c]) {
      ctx.model.dispose();
      ctx.optimizer.dispose();
    }
  }
});
