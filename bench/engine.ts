// Engine overheads: host time to record and submit a step of small dispatches.

import { gpu } from "../lib/gpu/device.ts";
import { SHAPE_CLASSES, shapesBatch } from "../lib/data/synthetic.ts";
import { SmallCnn } from "../lib/models/small_cnn.ts";
import { AdamW, clipGradNorm } from "../lib/optim/mod.ts";
import { Rng } from "../lib/tensor/init.ts";
import { addScalar, backward, crossEntropy, full, tensor, tidy } from "../lib/tensor/mod.ts";
import { type BenchCase, measureSteps } from "./harness.ts";

export const cases: BenchCase[] = [
  {
    name: "host overhead: 100 small dispatches",
    async run() {
      const recorder = gpu().recorder;
      const x = full([1024], 1);
      const step = () => {
        let t = x;
        for (let i = 0; i < 100; i++) t = addScalar(t, 1);
        return t;
      };
      for (let i = 0; i < 3; i++) tidy(() => void step());
      await recorder.sync();
      // Host side only: record + submit, without waiting for the GPU.
      const rounds = 20;
      let hostMs = 0;
      for (let r = 0; r < rounds; r++) {
        const t0 = performance.now();
        tidy(() => void step());
        recorder.flush();
        hostMs += performance.now() - t0;
        await recorder.sync();
      }
      x.dispose();
      const ms = hostMs / rounds;
      // items: dispatches recorded and submitted per second of host time.
      return { name: "host overhead: 100 small dispatches", ms, items_per_s: 100 / (ms / 1000) };
    },
  },
];

/** One AdamW training step of the engine demo's CNN (conv, group norm, attention), batch 32. */
cases.push({
  name: "small CNN training step (batch 32, 16×16)",
  async run() {
    const batch = 32, size = 16;
    const model = new SmallCnn(1, SHAPE_CLASSES.length, new Rng(0));
    const optimizer = new AdamW(model.parameters(), { lr: 1e-3 });
    const data = shapesBatch(batch, size, 1);
    const measured = await measureSteps(() => {
      const x = tensor(data.images, [batch, 1, size, size]);
      const y = tensor(data.labels, [batch], "i32");
      backward(crossEntropy(model.forward(x), y));
      clipGradNorm(model.parameters(), 1);
      optimizer.step();
      optimizer.zeroGrad();
    }, { warmup: 2, minIters: 5, minMs: 2000 });
    optimizer.dispose();
    model.dispose();
    return {
      name: this.name,
      ...measured,
      items_per_s: batch / (measured.ms / 1000),
    };
  },
});
