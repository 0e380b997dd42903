// SSIM against a float64 reference, the linear probe on separable and on random toy problems, and
// the fine-tuning helper on a toy task. Tiny shapes only.

import assert from "node:assert/strict";
import { join } from "node:path";
import { assertClose, randArray, rng } from "./util.ts";
import { Linear } from "../lib/nn/layers.ts";
import { Module } from "../lib/nn/module.ts";
import { Rng } from "../lib/tensor/init.ts";
import { relu, type Tensor, tensor } from "../lib/tensor/mod.ts";
import { gaussianWindow, meanSsim, ssimPerImage, ssimWindowSize } from "../lib/train/ssim.ts";
import { extractFeatures, trainLinearProbe } from "../lib/train/probe.ts";
import { evaluateClassifier, finetune, type FinetuneData } from "../lib/train/finetune.ts";

// ---- SSIM -----------------------------------------------------------------------------------

/** Direct (non-separable) float64 SSIM of one [C, H, W] pair: Wang et al. 2004, valid window. */
function ssimReference(
  a: number[],
  b: number[],
  [c, h, w]: number[],
  range: number,
): number {
  const k = ssimWindowSize(h, w);
  const g1 = gaussianWindow(k, 1.5);
  const c1 = (0.01 * range) ** 2, c2 = (0.03 * range) ** 2;
  let total = 0, count = 0;
  for (let ch = 0; ch < c; ch++) {
    for (let y = 0; y + k <= h; y++) {
      for (let x = 0; x + k <= w; x++) {
        let ma = 0, mb = 0, saa = 0, sbb = 0, sab = 0;
        for (let i = 0; i < k; i++) {
          for (let j = 0; j < k; j++) {
            const wt = g1[i] * g1[j];
            const p = (ch * h + y + i) * w + x + j;
            ma += wt * a[p];
            mb += wt * b[p];
            saa += wt * a[p] * a[p];
            sbb += wt * b[p] * b[p];
            sab += wt * a[p] * b[p];
          }
        }
        const va = saa - ma * ma, vb = sbb - mb * mb, cov = sab - ma * mb;
        total += ((2 * ma * mb + c1) * (2 * cov + c2)) /
          ((ma * ma + mb * mb + c1) * (va + vb + c2));
        count++;
      }
    }
  }
  return total / count;
}

Deno.test("ssim matches a float64 reference on odd sizes; identical images give 1", async () => {
  for (const [shape, range] of [[[2, 1, 13, 15], 1], [[1, 3, 12, 11], 2], [[3, 1, 5, 7], 1]]) {
    const [n, c, h, w] = shape as number[];
    const size = n * c * h * w;
    const lo = range === 2 ? -1 : 0;
    const a = randArray(size, 11 + h, lo, lo + (range as number));
    // b: a noisy copy of a, so SSIM is well away from 0 and 1.
    const noise = randArray(size, 23 + w, -0.3, 0.3);
    const b = a.map((v, i) => v + noise[i] * (range as number));
    const got = await ssimPerImage(tensor(a, shape as number[]), tensor(b, shape as number[]), {
      dataRange: range as number,
    }).read();
    const per = c * h * w;
    const ref = Array.from(
      { length: n },
      (_, i) =>
        ssimReference(
          a.slice(i * per, (i + 1) * per),
          b.slice(i * per, (i + 1) * per),
          [c, h, w],
          range as number,
        ),
    );
    assertClose(got, ref, { atol: 2e-4, rtol: 1e-3, what: `ssim [${shape}]` });
    assert.ok(ref.every((v) => v > 0.05 && v < 0.95), `reference ${ref} is not degenerate`);
    const x = tensor(a, shape as number[]);
    assert.ok(Math.abs((await meanSsim(x, x, { dataRange: range as number })) - 1) < 1e-4);
  }
  assert.equal(ssimWindowSize(28, 28), 11);
  assert.equal(ssimWindowSize(6, 9), 5);
  const g = gaussianWindow(11, 1.5);
  assert.ok(Math.abs(g.reduce((s, v) => s + v, 0) - 1) < 1e-12 && g[5] > g[4] && g[0] === g[10]);
  assert.throws(
    () => ssimPerImage(tensor([1, 2, 3, 4], [1, 1, 2, 2]), tensor([1, 2, 3], [1, 1, 1, 3])),
    /peco: ssim: images must be f32 \[N, C, H, W\] of one shape/,
  );
});

// ---- linear probe ---------------------------------------------------------------------------

/**
 * n points in d dims labelled by the argmax of a fixed random linear map, keeping only points whose
 * best score beats the runner-up by a margin of 0.2 (separable with a margin) — or labelled at
 * random.
 */
function toyProblem(n: number, d: number, k: number, seed: number, random = false) {
  const w = randArray(d * k, 99, -1, 1);
  const r = rng(seed + 1);
  const x: number[] = [];
  const labels = new Int32Array(n);
  for (let i = 0, attempt = 0; i < n; attempt++) {
    const p = randArray(d, seed * 100_003 + attempt, -1, 1);
    const scores = Array.from(
      { length: k },
      (_, j) => p.reduce((s, v, q) => s + v * w[q * k + j], 0),
    );
    const sorted = [...scores].sort((a, b) => b - a);
    if (!random && sorted[0] - sorted[1] < 0.2) continue;
    x.push(...p);
    labels[i++] = random ? Math.floor(r() * k) : scores.indexOf(sorted[0]);
  }
  return { x, labels };
}

Deno.test("extractFeatures copies every chunk's outputs into one tensor each", async () => {
  const values = randArray(7 * 3, 5);
  const [f, g] = extractFeatures(7, 3, (from, to) => [
    tensor(values.slice(from * 3, to * 3), [to - from, 3]),
    tensor(values.slice(from * 3, to * 3).map((v) => 2 * v), [to - from, 3]),
  ]);
  assertClose(await f.read(), values, { what: "features" });
  assertClose(await g.read(), values.map((v) => 2 * v), { what: "second output" });
  f.dispose();
  g.dispose();
  assert.throws(
    () => extractFeatures(4, 2, () => tensor([1, 2, 3], [3])),
    /peco: probe: feature chunk .* does not fit/,
  );
});

Deno.test("the linear probe learns a separable problem and is at chance on random labels", async () => {
  const d = 5, k = 3;
  const train = toyProblem(241, d, k, 1);
  const val = toyProblem(199, d, k, 2);
  const set = (p: ReturnType<typeof toyProblem>) => ({
    features: tensor(p.x, [p.labels.length, d]),
    labels: p.labels,
  });
  const [tr, va] = [set(train), set(val)];
  const options = { epochs: 15, batchSize: 64, lr: 5e-2, seed: 3 };
  const good = await trainLinearProbe(tr, va, k, options);
  assert.ok(good.accuracy > 0.95, `separable: held-out top-1 ${good.accuracy}`);
  assert.ok(good.losses.at(-1)! < good.losses[0], `loss ${good.losses[0]} → ${good.losses.at(-1)}`);
  const again = await trainLinearProbe(tr, va, k, options);
  assert.deepEqual(again, good, "same seed, same result");
  const full = await trainLinearProbe(tr, va, k, { epochs: 60, lr: 1e-1 });
  assert.ok(full.accuracy > 0.95, `full-batch: held-out top-1 ${full.accuracy}`);

  const noise = toyProblem(241, d, 4, 4, true);
  const noiseVal = toyProblem(400, d, 4, 5, true);
  const chance = await trainLinearProbe(set(noise), set(noiseVal), 4, options);
  assert.ok(
    chance.accuracy > 0.15 && chance.accuracy < 0.35,
    `random labels: held-out top-1 ${chance.accuracy} should be near 1/4`,
  );
  await assert.rejects(
    () => trainLinearProbe(tr, { ...va, labels: va.labels.map(() => 7) }, k, options),
    /peco: probe: val label 7 at 0 is not a class in \[0, 3\)/,
  );
});

// ---- fine-tuning helper ---------------------------------------------------------------------

/** A toy "ViT": embedding → one block → head, named like BEiT for layer-wise lr decay. */
class ToyClassifier extends Module {
  readonly embed: Linear;
  readonly block: Linear;
  readonly head: Linear;
  constructor(d: number, k: number, rng: Rng) {
    super();
    this.embed = this.child("patch_embed", new Linear(d, 16, rng.fork("embed")));
    this.block = this.child("blocks", [new Linear(16, 16, rng.fork("block"))]).at(0);
    this.head = this.child("head", new Linear(16, k, rng.fork("head")));
  }
  forward(x: Tensor): Tensor {
    return this.head.forward(relu(this.block.forward(relu(this.embed.forward(x)))));
  }
}

/**
 * Ten batches an epoch of a toy problem (batch b of every epoch the same slice); `poison`: the
 * batch of that step gets a NaN input.
 */
function toyStream(
  train: { x: number[]; labels: Int32Array },
  d: number,
  batch: number,
  poison?: number,
): FinetuneData<{ n: number; b: number; step: number }> {
  return {
    stepsPerEpoch: 10,
    async *batches({ epoch, step }) {
      for (let s = epoch * 10 + step;; s++) yield { n: batch, b: s % 10, step: s };
    },
    upload: ({ b, step }) => {
      const x = train.x.slice(b * batch * d, (b + 1) * batch * d);
      if (step === poison) x[0] = NaN;
      return {
        x: tensor(x, [batch, d]),
        labels: tensor(train.labels.slice(b * batch, (b + 1) * batch), [batch], "i32"),
      };
    },
  };
}

Deno.test("finetune lowers the loss on a toy task and reports held-out top-1", async () => {
  const d = 5, k = 3, batch = 16;
  const train = toyProblem(160, d, k, 6);
  const val = toyProblem(97, d, k, 7);
  const model = new ToyClassifier(d, k, new Rng(1));
  const stream = toyStream(train, d, batch);
  const evalSet = {
    count: val.labels.length,
    labels: val.labels,
    inputs: (from: number, to: number) => tensor(val.x.slice(from * d, to * d), [to - from, d]),
  };
  const before = await evaluateClassifier(model, evalSet, 32);
  const logged: number[] = [];
  const result = await finetune(model, { train: stream, val: evalSet }, {
    steps: 40,
    lr: 3e-2,
    warmupSteps: 5,
    weightDecay: 0.05,
    layerDecay: 0.75,
    labelSmoothing: 0.1,
    clipNorm: 3,
    logEvery: 10,
    evalEvery: 20,
    evalBatch: 32,
  }, {
    layers: {
      numLayers: 1,
      layerId: (name) => name.startsWith("patch_embed") ? 0 : name.startsWith("blocks") ? 1 : 2,
    },
    onLog: (r) => void logged.push(r.step),
  });
  const losses = result.curve.filter((p) => p.loss !== undefined).map((p) => p.loss!);
  assert.equal(losses.length, 4);
  assert.ok(losses.at(-1)! < 0.7 * losses[0], `loss ${losses[0]} → ${losses.at(-1)}`);
  assert.ok(result.accuracy > Math.max(0.6, before), `top-1 ${before} → ${result.accuracy}`);
  assert.equal(result.curve.at(-1)!.val_acc, result.accuracy);
  assert.equal(result.curve.filter((p) => p.val_acc !== undefined).length, 2);
  assert.deepEqual(logged, [10, 20, 30, 40]);
  await assert.rejects(
    () =>
      finetune(model, { train: stream, val: evalSet }, {
        steps: 5,
        lr: 1,
        warmupSteps: 5,
        weightDecay: 0,
      }),
    /peco: finetune: steps 5 must be ≥ 1 and exceed warmupSteps 5/,
  );
  model.dispose();
});

Deno.test("finetune's checkpoint: a NaN names the last good one, stopAt stops after one, and the rerun resumes it to the uninterrupted result", async () => {
  const d = 5, k = 3, batch = 16;
  const train = toyProblem(160, d, k, 6);
  const val = toyProblem(97, d, k, 7);
  const evalSet = {
    count: val.labels.length,
    labels: val.labels,
    inputs: (from: number, to: number) => tensor(val.x.slice(from * d, to * d), [to - from, d]),
  };
  const config = { steps: 30, lr: 3e-2, warmupSteps: 5, weightDecay: 0.05, evalEvery: 15 };
  const dir = await Deno.makeTempDir({ prefix: "peco-finetune-" });
  const checkpoint = (folder: string) => ({
    path: join(folder, "checkpoint.safetensors"),
    every: 10,
    stage: "finetune-test",
    fingerprint: "toy",
    run: "toy-run",
  });
  const run = async (folder: string, poison?: number) => {
    const model = new ToyClassifier(d, k, new Rng(1));
    await Deno.mkdir(folder, { recursive: true });
    try {
      return await finetune(
        model,
        { train: toyStream(train, d, batch, poison), val: evalSet },
        config,
        { checkpoint: checkpoint(folder) },
      );
    } finally {
      model.dispose();
    }
  };
  const whole = await run(join(dir, "whole"));
  assert.equal(whole.resumedFrom, 0);
  assert.deepEqual(whole.curve.map((p) => p.step), [10, 15, 20, 30]);
  const broken = join(dir, "broken");
  await assert.rejects(
    () => run(broken, 24),
    // The NaN input does not reach the loss through the ReLU but poisons the gradients: the
    // parameters it leaves are refused at the next checkpoint.
    /peco: finetune-test: parameters hold NaN\/Inf .* at step 30; last good checkpoint: .*checkpoint\.safetensors \(step 20\)/,
  );
  const resumed = await run(broken);
  assert.equal(resumed.resumedFrom, 20);
  assert.deepEqual(resumed.curve, whole.curve);
  assert.deepEqual(resumed.outcomes, whole.outcomes);
  // stopAt 15: stopped after the checkpoint at 20 (the first at or after 15), nothing evaluated;
  // the rerun resumes there to the uninterrupted result.
  const stopped = join(dir, "stopped");
  await Deno.mkdir(stopped);
  const model = new ToyClassifier(d, k, new Rng(1));
  const stop = await finetune(model, { train: toyStream(train, d, batch), val: evalSet }, config, {
    checkpoint: { ...checkpoint(stopped), stopAt: 15 },
  }).finally(() => model.dispose());
  assert.deepEqual(stop, { status: "stopped", step: 20, resumedFrom: 0 });
  const rest = await run(stopped);
  assert.equal(rest.resumedFrom, 20);
  assert.deepEqual(rest.curve, whole.curve);
  assert.deepEqual(rest.outcomes, whole.outcomes);
  await Deno.remove(dir, { recursive: true });
});
