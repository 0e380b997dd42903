// Tokenisation throughput of the MNIST tokenizer preset (what export-codebook and the evaluation
// stage spend their time on), against the same model's training throughput: one training step
// (forward, loss, backward, Adam) at the preset's batch. The issue asks for ≥ 10× (images/s).

import { type BenchCase, timeSteps } from "./harness.ts";
import { pixelsToFloat, signedUnitNorm, uploadPixels } from "../lib/data/augment.ts";
import { Tokenizer } from "../lib/models/tokenizer.ts";
import { tokenizerPreset } from "../lib/models/tokenizer_config.ts";
import { VqVae } from "../lib/models/vqvae.ts";
import { Adam } from "../lib/optim/mod.ts";
import { add, backward, keep, mseLoss } from "../lib/tensor/mod.ts";
import { Rng } from "../lib/tensor/init.ts";

const SIZE = 28;
const BATCH = 64;

function mnistModel(): VqVae {
  const preset = tokenizerPreset("mnist");
  return new VqVae({ ...preset.model, imageSize: SIZE, inChannels: 1 }, 0);
}

function randomPixels(n: number, seed: number): Uint8Array {
  const rng = new Rng(seed);
  return Uint8Array.from({ length: n * SIZE * SIZE }, () => rng.int(256));
}

/** ms per training step of `batch` images: forward, pixel + commitment loss, backward, Adam. */
async function trainStepMs(batch: number): Promise<number> {
  const model = mnistModel();
  const preset = tokenizerPreset("mnist");
  const optimizer = new Adam(model.parameters(), {
    lr: preset.train.lr,
    betas: preset.train.betas,
  });
  const upload = uploadPixels(randomPixels(batch, 1), batch, 1, SIZE, SIZE);
  const x = keep(pixelsToFloat(upload, signedUnitNorm(1)));
  upload.pixels.dispose();
  model.train();
  const ms = await timeSteps(() => {
    const out = model.forward(x);
    backward(add(mseLoss(out.reconstruction, x), out.loss));
    optimizer.step();
    optimizer.zeroGrad();
  }, { warmup: 1, minIters: 2, minMs: 0 });
  x.dispose();
  model.dispose();
  optimizer.dispose();
  return ms;
}

export const cases: BenchCase[] = [
  {
    name: `tokenize mnist ${SIZE}² → 7×7 B=${BATCH} (vs train step B=8)`,
    async run() {
      const tok = Tokenizer.fromModel(mnistModel(), {
        image: { channels: 1, size: SIZE, ...signedUnitNorm(1) },
        provenance: {},
      });
      const pixels = randomPixels(BATCH, 2);
      // The stage's path: upload uint8 pixels, normalise, encode (ids stay on the GPU).
      const ms = await timeSteps(() => tok.encodePixels(pixels, BATCH), { minIters: 3 });
      tok.dispose();
      const tokenize = BATCH / (ms / 1e3);
      const trainBatch = tokenizerPreset("mnist").train.batch;
      const train = trainBatch / ((await trainStepMs(trainBatch)) / 1e3);
      return {
        name: this.name,
        ms,
        items_per_s: tokenize,
        train_images_per_s: train,
        ratio: tokenize / train,
      };
    },
  },
];
