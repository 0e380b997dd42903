// Masked image modelling training steps (forward + backward + clip + AdamW) of the pretrain stage's
// ViT: the MNIST preset at its default batch (images/s), and — only when asked with
// `--filter vit-b`, because it takes minutes on lavapipe — ViT-B/16 at 224² with K = 8192 at
// batch 2, the real configuration's memory and shape check. The step is the stage's own (mimStep,
// with the preset's clip norm and optimizer settings). The targets are random codes: the
// tokenizer's cost is not included (see bench/tokenize.ts).

import { type BenchCase, measureSteps } from "./harness.ts";
import { Beit, type BeitPresetName, resolveBeitConfig } from "../lib/models/beit.ts";
import { AdamW, paramGroups } from "../lib/optim/mod.ts";
import { Rng } from "../lib/tensor/init.ts";
import { keep, normal, type Tensor, tensor } from "../lib/tensor/mod.ts";
import {
  maskedPositions,
  maskingGenerator,
  maskSpec,
  mimStep,
  PRETRAIN_TRAIN_PRESETS,
} from "../lib/train/mim.ts";

interface Setup {
  preset: BeitPresetName;
  imageSize: number;
  channels: number;
  vocabSize: number;
  batch: number;
}

/**
 * One MIM step's figures (measureSteps), with the model's size; inputs fixed (kept), targets random
 * codes.
 */
async function benchStep(s: Setup, timing: { warmup: number; minIters: number; minMs: number }) {
  const config = resolveBeitConfig({
    preset: s.preset,
    imageSize: s.imageSize,
    inChannels: s.channels,
    vocabSize: s.vocabSize,
  });
  const initStart = performance.now();
  const model = new Beit(config, 0);
  const initMs = performance.now() - initStart;
  const train = PRETRAIN_TRAIN_PRESETS[s.preset];
  const optimizer = new AdamW(
    paramGroups(model.namedParameters(), { weightDecay: train.weightDecay }),
    { lr: 1e-4, betas: train.betas, weightDecay: train.weightDecay },
  );
  const grid = model.grid;
  const t = grid[0] * grid[1];
  const rng = new Rng(1);
  const masks = maskingGenerator(grid, maskSpec(grid)).generateBatch(rng, s.batch);
  const positions = maskedPositions(masks);
  const codes = Int32Array.from({ length: s.batch * t }, () => rng.int(s.vocabSize));
  const fixed: Tensor[] = [
    normal([s.batch, s.channels, s.imageSize, s.imageSize], 2),
    tensor(Float32Array.from(masks), [s.batch, t]),
    tensor(positions, [positions.length], "i32"),
    tensor(codes, [s.batch, t], "i32"),
  ].map(keep);
  const [x, maskTensor, maskedIndex, targets] = fixed;
  model.train();
  const step = { model, optimizer, clipNorm: train.clipNorm };
  const measured = await measureSteps(() => {
    mimStep(step, x, maskTensor, maskedIndex, targets);
  }, timing);
  const parameters = model.numParameters();
  fixed.forEach((f) => f.dispose());
  model.dispose();
  optimizer.dispose();
  return { measured, parameters, initMs, masked: positions.length };
}

/** Whether the command line asks for the ViT-B case (`--filter vit-b`). */
function askedFor(name: string): boolean {
  const i = Deno.args.indexOf("--filter");
  const filter = i >= 0
    ? Deno.args[i + 1]
    : Deno.args.find((a) => a.startsWith("--filter="))?.slice(9);
  return filter !== undefined && name.includes(filter);
}

const mnistBatch = PRETRAIN_TRAIN_PRESETS.mnist.batch;
const VIT_B = "pretrain vit-b/16 224² K=8192 batch 2 step";

export const cases: BenchCase[] = [
  {
    name: `pretrain mnist preset 28² K=512 batch ${mnistBatch} step`,
    async run() {
      const r = await benchStep(
        { preset: "mnist", imageSize: 28, channels: 1, vocabSize: 512, batch: mnistBatch },
        { warmup: 2, minIters: 3, minMs: 2000 },
      );
      return {
        name: this.name,
        ...r.measured,
        items_per_s: mnistBatch / (r.measured.ms / 1e3),
        parameters: r.parameters,
        masked: r.masked,
      };
    },
  },
];

if (askedFor(VIT_B)) {
  cases.push({
    name: VIT_B,
    slow: true,
    async run() {
      const r = await benchStep(
        { preset: "base", imageSize: 224, channels: 3, vocabSize: 8192, batch: 2 },
        { warmup: 1, minIters: 1, minMs: 0 },
      );
      return {
        name: this.name,
        ...r.measured,
        items_per_s: 2 / (r.measured.ms / 1e3),
        parameters: r.parameters,
        init_ms: r.initMs,
        masked: r.masked,
      };
    },
  });
}
