// `deno task engine-demo`: trains the small CNN on generated shape images
// with AdamW, warmup + cosine and gradient clipping, and reports held-out accuracy. A tour of the
// engine in one readable training loop.

import { parseOrExit } from "../lib/cli/args.ts";
import { adapterInfo, flush, fmtBytes, initGpuOrExit, peakGpuBytes } from "../lib/tensor/engine.ts";
import { Progress } from "../lib/cli/progress.ts";
import { SHAPE_CLASSES, shapesBatch } from "../lib/data/synthetic.ts";
import { SmallCnn } from "../lib/models/small_cnn.ts";
import { AdamW, clipGradNorm, warmupCosine } from "../lib/optim/mod.ts";
import { Rng } from "../lib/tensor/init.ts";
import {
  argmax,
  backward,
  crossEntropy,
  noGrad,
  readAll,
  tensor,
  tidy,
} from "../lib/tensor/mod.ts";

const options = parseOrExit({
  usage: "deno task engine-demo",
  summary: "Engine demo: trains a small CNN (conv, group norm, attention) on generated shapes.",
  options: {
    steps: { type: "number", default: 120, help: "training steps" },
    batch: { type: "number", default: 32, help: "batch size" },
    size: { type: "number", default: 16, help: "image size (pixels)" },
    lr: { type: "number", default: 3e-3, help: "peak learning rate" },
    seed: { type: "number", default: 0, help: "random seed" },
    "log-every": { type: "number", default: 10, help: "read the loss back every N steps" },
    quiet: { type: "boolean", help: "no progress bar" },
  },
});

await initGpuOrExit();
const { steps, batch, size, seed } = options;
const rng = new Rng(seed);
const model = new SmallCnn(1, SHAPE_CLASSES.length, rng.fork("model"));
const optimizer = new AdamW(model.parameters(), { lr: options.lr, weightDecay: 0.05 });
const schedule = warmupCosine({
  baseLr: options.lr,
  warmupSteps: Math.ceil(steps / 10),
  totalSteps: steps,
});
console.error(
  `adapter: ${adapterInfo().description}; model: ${model.numParameters()} parameters; ` +
    `${steps} steps of ${batch} images ${size}×${size}`,
);

const progress = new Progress({ label: "train", total: steps, unit: "step", quiet: options.quiet });
let loss = NaN;
const start = performance.now();
for (let step = 0; step < steps; step++) {
  const data = shapesBatch(batch, size, seed * 1_000_003 + step + 1);
  optimizer.lr = schedule(step);
  const logged = tidy(() => {
    const x = tensor(data.images, [batch, 1, size, size]);
    const y = tensor(data.labels, [batch], "i32");
    const l = crossEntropy(model.forward(x), y);
    backward(l);
    const norm = clipGradNorm(model.parameters(), 1.0);
    optimizer.step();
    optimizer.zeroGrad();
    return [l, norm];
  });
  if ((step + 1) % options["log-every"] === 0 || step === steps - 1) {
    const [[l], [n]] = await readAll(logged);
    loss = l;
    progress.update(step + 1, { loss: l, "grad norm": n, lr: optimizer.lr });
  } else {
    flush();
  }
  logged.forEach((t) => t.dispose());
}
progress.finish({ loss });
const seconds = (performance.now() - start) / 1000;

// Held-out accuracy on images the model never saw.
model.eval();
const test = shapesBatch(256, size, 999_999_937 + seed);
const predicted = noGrad(() =>
  tidy(() => argmax(model.forward(tensor(test.images, [test.n, 1, size, size])), 1))
);
const labels = await predicted.read();
predicted.dispose();
let correct = 0;
labels.forEach((p, i) => correct += p === test.labels[i] ? 1 : 0);
console.log(
  `final loss ${loss.toFixed(4)}; held-out accuracy ${(100 * correct / test.n).toFixed(1)}% ` +
    `(${test.n} images, chance 25%); ${(steps * batch / seconds).toFixed(1)} images/s; ` +
    `peak GPU memory ${fmtBytes(peakGpuBytes())}`,
);
