// End-to-end training on generated problems: the ops, autograd, modules and optimizer together.

import assert from "node:assert/strict";
import "./util.ts";
import { Linear } from "../lib/nn/layers.ts";
import { Module } from "../lib/nn/module.ts";
import { SmallCnn } from "../lib/models/small_cnn.ts";
import { shapesBatch } from "../lib/data/synthetic.ts";
import { AdamW, clipGradNorm, warmupCosine } from "../lib/optim/mod.ts";
import { Rng } from "../lib/tensor/init.ts";
import {
  backward,
  crossEntropy,
  gelu,
  readAll,
  type Tensor,
  tensor,
  tidy,
} from "../lib/tensor/mod.ts";

class Mlp2 extends Module {
  readonly fc1: Linear;
  readonly fc2: Linear;
  constructor(rng: Rng) {
    super();
    this.fc1 = this.child("fc1", new Linear(2, 32, rng.fork("fc1")));
    this.fc2 = this.child("fc2", new Linear(32, 3, rng.fork("fc2")));
  }
  forward(x: Tensor): Tensor {
    return this.fc2.forward(gelu(this.fc1.forward(x)));
  }
}

/** Three classes of points: inside a disc, a ring around it, and outside the ring. */
function rings(n: number, seed: number): { x: number[]; y: number[] } {
  const rng = new Rng(seed);
  const x: number[] = [], y: number[] = [];
  for (let i = 0; i < n; i++) {
    const a = rng.uniform(-1.5, 1.5), b = rng.uniform(-1.5, 1.5);
    const r = Math.hypot(a, b);
    x.push(a, b);
    y.push(r < 0.6 ? 0 : r < 1.1 ? 1 : 2);
  }
  return { x, y };
}

async function train(
  model: { forward(x: Tensor): Tensor } & Module,
  batchAt: (step: number) => { x: Tensor; y: Tensor },
  steps: number,
  lr: number,
): Promise<number[]> {
  const optimizer = new AdamW(model.parameters(), { lr, weightDecay: 0 });
  const schedule = warmupCosine({ baseLr: lr, warmupSteps: 5, totalSteps: steps });
  const losses: Tensor[] = [];
  for (let step = 0; step < steps; step++) {
    optimizer.lr = schedule(step);
    losses.push(tidy(() => {
      const { x, y } = batchAt(step);
      const loss = crossEntropy(model.forward(x), y);
      backward(loss);
      clipGradNorm(model.parameters(), 5);
      optimizer.step();
      optimizer.zeroGrad();
      return loss;
    }));
  }
  const values = (await readAll(losses)).map((v) => v[0]);
  losses.forEach((t) => t.dispose());
  optimizer.dispose();
  return values;
}

Deno.test("an MLP learns a 3-class rings problem (loss below 0.25)", async () => {
  const model = new Mlp2(new Rng(1));
  const losses = await train(
    model,
    (step) => {
      const d = rings(128, step + 10);
      return { x: tensor(d.x, [128, 2]), y: tensor(d.y, [128], "i32") };
    },
    300,
    2e-2,
  );
  const last = losses.slice(-10).reduce((a, b) => a + b, 0) / 10;
  assert.ok(losses[0] > 0.9, `initial loss ${losses[0]} should be near ln 3`);
  assert.ok(last < 0.25, `final loss ${last} (first ${losses[0]})`);
  model.dispose();
});

Deno.test("a small CNN with conv, group norm and attention learns generated shapes", async () => {
  const model = new SmallCnn(1, 4, new Rng(2), 8, 4);
  const batch = 32, size = 12;
  const losses = await train(
    model,
    (step) => {
      const d = shapesBatch(batch, size, 100 + step);
      return {
        x: tensor(d.images, [batch, 1, size, size]),
        y: tensor(d.labels, [batch], "i32"),
      };
    },
    80,
    5e-3,
  );
  const first = losses.slice(0, 5).reduce((a, b) => a + b, 0) / 5;
  const last = losses.slice(-10).reduce((a, b) => a + b, 0) / 10;
  assert.ok(last < 0.6, `final loss ${last} (first ${first})`);
  assert.ok(last < first / 2, `loss fell from ${first} to ${last}`);
  model.dispose();
});
