// Tokenizer training throughput (images/s; main.ts adds the peak GPU memory): the train-tokenizer
// stage's own step (tokenizerStep) on random images, for the MNIST preset with λ = 0 and with
// λ = 1 through a builtin perceptual network (MoCo encoder at its default width, pooled 28² → 14²
// as the stage does), with the adversarial term on (its adaptive weight costs a second backward
// pass, plus the discriminator's step), and for the paper preset (224², 16×, K = 8192) at batch 8. The 224² case
// takes minutes per step on a software GPU: it runs only when asked for by name,
// `deno task bench --filter tokenizer-224`.

import { type BenchCase, measureSteps } from "./harness.ts";
import { MOCO_ENCODER_DEFAULT, MocoEncoder } from "../lib/models/moco.ts";
import { discriminatorLayersFor, PatchDiscriminator } from "../lib/models/discriminator.ts";
import { freeze } from "../lib/models/perceptual/net.ts";
import { presetVqVaeConfig, tokenizerPreset } from "../lib/models/tokenizer_config.ts";
import { VqVae } from "../lib/models/vqvae.ts";
import { Adam } from "../lib/optim/mod.ts";
import { Rng } from "../lib/tensor/init.ts";
import { keep, uniform } from "../lib/tensor/mod.ts";
import { tokenizerStep, type TokenizerStepContext } from "../lib/train/tokenizer_step.ts";

interface Setup {
  preset: "mnist" | "paper";
  size: number;
  channels: number;
  batch: number;
  lambda: number;
  /** With the adversarial term (patch discriminator, adaptive weight) from the first step. */
  adversarial?: boolean;
}

async function trainThroughput(name: string, s: Setup, slow = false) {
  const preset = tokenizerPreset(s.preset);
  const model = new VqVae(presetVqVaeConfig(preset, { size: s.size, channels: s.channels }), 0);
  const optimizer = new Adam(model.parameters(), {
    lr: preset.train.lr,
    betas: preset.train.betas,
  });
  const net = s.lambda > 0 ? freeze(new MocoEncoder(MOCO_ENCODER_DEFAULT, new Rng(1))) : null;
  const ctx: TokenizerStepContext = {
    model,
    optimizer,
    train: preset.train,
    perceptual: net ? { net, lambda: s.lambda, pool: s.size <= 32 ? 2 : 1 } : null,
    adversarial: null,
  };
  if (s.adversarial) {
    const disc = new PatchDiscriminator({
      inChannels: s.channels,
      channels: preset.train.discChannels,
      layers: discriminatorLayersFor(s.size),
    });
    const discOptimizer = new Adam(disc.parameters(), { lr: preset.train.lr });
    ctx.adversarial = { disc, optimizer: discOptimizer, weight: 0.4, start: 0 };
  }
  const x = keep(uniform([s.batch, s.channels, s.size, s.size], 7, -1, 1));
  let step = 0;
  // The first call runs the k-means initialisation: a warmup call. The slow case times that one
  // call only (two calls took over 20 minutes on a 2-core lavapipe): its figure is an upper bound
  // that includes the k-means initialisation and the shaders' compilation.
  const measured = await measureSteps(
    () => tokenizerStep(ctx, x, step++),
    slow ? { warmup: 0, minIters: 1, minMs: 0 } : { warmup: 2, minIters: 3, minMs: 3000 },
  );
  const params = model.numParameters();
  const a = ctx.adversarial;
  for (const m of [x, model, optimizer, net, a?.disc, a?.optimizer]) m?.dispose();
  return {
    name,
    ...measured,
    items_per_s: s.batch / (measured.ms / 1e3),
    batch: s.batch,
    params,
  };
}

/** The 224² case only when the command line's --filter names it. */
function asked(name: string): boolean {
  const args = Deno.args;
  const i = args.indexOf("--filter");
  const filter = i >= 0 ? args[i + 1] : args.find((a) => a.startsWith("--filter="))?.slice(9);
  return filter !== undefined && filter.length > 0 && name.includes(filter);
}

const PAPER = "tokenizer-224 train paper preset 16× K=8192 b=8";

/** A case of the MNIST preset: 28² grey images, batch 8. */
function mnistCase(name: string, lambda: number, adversarial = false): BenchCase {
  return {
    name,
    run: () =>
      trainThroughput(name, {
        preset: "mnist",
        size: 28,
        channels: 1,
        batch: 8,
        lambda,
        adversarial,
      }),
  };
}

export const cases: BenchCase[] = [
  mnistCase("tokenizer-mnist train λ=0 b=8", 0),
  mnistCase("tokenizer-mnist train λ=1 builtin b=8", 1),
  mnistCase("tokenizer-mnist train λ=0 adversarial b=8", 0, true),
  ...(asked(PAPER)
    ? [{
      name: PAPER,
      slow: true,
      run() {
        return trainThroughput(
          PAPER,
          { preset: "paper", size: 224, channels: 3, batch: 8, lambda: 0 },
          true,
        );
      },
    }]
    : []),
];
