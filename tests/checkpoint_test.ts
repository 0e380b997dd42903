// Checkpoints: save/load round trips, bit-identical resumption of training, clear errors for
// corrupt or mismatched files, and the NaN guard that keeps the last checkpoint good.

import assert from "node:assert/strict";
import { join } from "node:path";
import { randArray } from "./util.ts";
import {
  CheckpointGuard,
  type CheckpointMeta,
  loadCheckpoint,
  NonFiniteStateError,
  readCheckpointMeta,
  saveCheckpoint,
  type TrainingState,
} from "../lib/train/checkpoint.ts";
import { writeSafetensors } from "../lib/io/safetensors.ts";
import { LayerNorm, Linear } from "../lib/nn/layers.ts";
import { Module } from "../lib/nn/module.ts";
import { AdamW, warmupCosine } from "../lib/optim/mod.ts";
import { Rng } from "../lib/tensor/init.ts";
import {
  axpyInPlace,
  backward,
  full,
  gelu,
  keep,
  mseLoss,
  readAll,
  type Tensor,
  tensor,
  tidy,
  zeros,
} from "../lib/tensor/mod.ts";

class Toy extends Module {
  readonly fc1: Linear;
  readonly norm: LayerNorm;
  readonly fc2: Linear;
  constructor(seed: number, hidden = 5) {
    super();
    const rng = new Rng(seed);
    this.fc1 = this.child("fc1", new Linear(3, hidden, rng.fork("fc1")));
    this.norm = this.child("norm", new LayerNorm(hidden));
    this.fc2 = this.child("fc2", new Linear(hidden, 2, rng.fork("fc2")));
  }
  forward(x: Tensor): Tensor {
    return this.fc2.forward(gelu(this.norm.forward(this.fc1.forward(x))));
  }
}

const TOTAL = 6;
const LOG_EVERY = 3;
const CONFIG = { lr: 0.05, total: TOTAL, hidden: 5 };
const schedule = warmupCosine({ baseLr: CONFIG.lr, warmupSteps: 2, totalSteps: TOTAL });

/** A training run: model, AdamW, an EMA-like extra tensor and the GPU loss accumulator. */
interface Run {
  model: Toy;
  optimizer: AdamW;
  ema: Tensor;
  lossSum: Tensor;
  state: TrainingState;
}

function newRun(seed: number): Run {
  const model = new Toy(seed);
  const optimizer = new AdamW(model.parameters(), { lr: CONFIG.lr });
  const ema = keep(zeros(model.fc1.weight.shape));
  const lossSum = keep(zeros([]));
  const state = { modules: { model }, optimizers: { optim: optimizer }, tensors: { ema: { ema } } };
  return { model, optimizer, ema, lossSum, state };
}

function disposeRun(run: Run): void {
  run.model.dispose();
  run.optimizer.dispose();
  run.ema.dispose();
  run.lossSum.dispose();
}

/** One deterministic step: the batch depends on the step only. */
function trainStep(run: Run, step: number): void {
  tidy(() => {
    run.optimizer.lr = schedule(step);
    const x = tensor(randArray(7 * 3, 100 + step), [7, 3]);
    const y = tensor(randArray(7 * 2, 200 + step), [7, 2]);
    const loss = mseLoss(run.model.forward(x), y);
    axpyInPlace(run.lossSum, loss);
    backward(loss);
    run.optimizer.step();
    run.optimizer.zeroGrad();
    axpyInPlace(run.ema, run.model.fc1.weight, 0.1);
  });
}

/** Reads the summed loss of the interval and starts a new sum. */
async function takeLoss(run: Run): Promise<number> {
  const [[value]] = await readAll([run.lossSum]);
  run.lossSum.dispose();
  run.lossSum = keep(zeros([]));
  return value;
}

/** Every tensor of a run by name, read back. */
async function snapshot(run: Run): Promise<Map<string, Float32Array>> {
  const named: [string, Tensor][] = [
    ...[...run.model.stateDict()].map(([k, t]) => [`model.${k}`, t] as [string, Tensor]),
    ...Object.entries(run.optimizer.stateDict().tensors).map(([k, t]) =>
      [`optim.${k}`, t] as [string, Tensor]
    ),
    ["ema", run.ema],
  ];
  const values = await readAll(named.map(([, t]) => t));
  return new Map(named.map(([k], i) => [k, values[i]]));
}

function assertBitIdentical(a: Map<string, Float32Array>, b: Map<string, Float32Array>): void {
  assert.deepEqual([...a.keys()].sort(), [...b.keys()].sort());
  for (const [name, va] of a) {
    const ua = new Uint32Array(va.buffer, va.byteOffset, va.length);
    const vb = b.get(name)!;
    const ub = new Uint32Array(vb.buffer, vb.byteOffset, vb.length);
    assert.deepEqual(ua, ub, `${name} differs`);
  }
}

function meta(step: number, extra: Partial<CheckpointMeta> = {}): CheckpointMeta {
  return {
    stage: "toy",
    fingerprint: "f".repeat(64),
    step,
    epoch: 0,
    seed: 1,
    rng: { loader: { epoch: 0, step } },
    config: CONFIG,
    metrics: { bestLoss: 0.5 },
    ...extra,
  };
}

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "peco-checkpoint-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("resuming from a checkpoint is bit-identical to an uninterrupted run", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "checkpoint.safetensors");
    // Uninterrupted.
    const a = newRun(1);
    const lossesA: number[] = [];
    for (let step = 0; step < TOTAL; step++) {
      trainStep(a, step);
      if ((step + 1) % LOG_EVERY === 0) lossesA.push(await takeLoss(a));
    }
    const final = await snapshot(a);
    const stepsA = a.optimizer.steps;
    disposeRun(a);

    // Interrupted after 3 steps, with the checkpoint written only after the losses were checked.
    const b = newRun(1);
    const guard = new CheckpointGuard("toy", path);
    for (let step = 0; step < LOG_EVERY; step++) trainStep(b, step);
    const lossB = await takeLoss(b);
    guard.check(LOG_EVERY, { loss: lossB });
    await guard.save(b.state, meta(LOG_EVERY));
    assert.equal(guard.lastGoodStep, LOG_EVERY);
    disposeRun(b);

    // A fresh process: other initial weights, no optimizer state, until the checkpoint loads.
    const c = newRun(7);
    const before = await snapshot(c);
    const restored = await loadCheckpoint(path, c.state);
    assert.deepEqual(restored, meta(LOG_EVERY));
    assert.equal(c.optimizer.steps, LOG_EVERY);
    const lossesC = [lossB];
    for (let step = restored.step; step < TOTAL; step++) {
      trainStep(c, step);
      if ((step + 1) % LOG_EVERY === 0) lossesC.push(await takeLoss(c));
    }
    const resumed = await snapshot(c);
    assert.notDeepEqual(before.get("model.fc1.weight"), final.get("model.fc1.weight"));
    assertBitIdentical(resumed, final);
    assert.deepEqual(lossesC, lossesA);
    assert.equal(c.optimizer.steps, stepsA);
    disposeRun(c);
  });
});

Deno.test("readCheckpointMeta reads the metadata from the header only", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "ckpt.safetensors");
    const run = newRun(2);
    trainStep(run, 0);
    await saveCheckpoint(path, run.state, meta(1, { rng: { a: [1, 2] }, epoch: 4 }));
    assert.deepEqual(await readCheckpointMeta(path), meta(1, { rng: { a: [1, 2] }, epoch: 4 }));
    disposeRun(run);
  });
});

Deno.test("corrupt, truncated, foreign or missing checkpoints fail naming the file", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "ckpt.safetensors");
    const run = newRun(3);
    trainStep(run, 0);
    await saveCheckpoint(path, run.state, meta(1));
    const bytes = await Deno.readFile(path);

    const truncated = join(dir, "truncated.safetensors");
    await Deno.writeFile(truncated, bytes.subarray(0, bytes.length - 10));
    await assert.rejects(
      loadCheckpoint(truncated, run.state),
      (e: Error) => e.message.startsWith(`peco: checkpoint ${truncated}: unreadable, truncated`),
    );
    const headerCut = join(dir, "header-cut.safetensors");
    await Deno.writeFile(headerCut, bytes.subarray(0, 20));
    await assert.rejects(readCheckpointMeta(headerCut), new RegExp(`checkpoint ${headerCut}: `));
    await assert.rejects(loadCheckpoint(headerCut, run.state), new RegExp(headerCut));

    const garbage = join(dir, "garbage.safetensors");
    await Deno.writeTextFile(garbage, "this is not a checkpoint at all");
    await assert.rejects(loadCheckpoint(garbage, run.state), new RegExp(`checkpoint ${garbage}`));

    const plain = join(dir, "plain.safetensors");
    await writeSafetensors(plain, { w: { dtype: "F32", shape: [1], data: new Float32Array(1) } });
    await assert.rejects(readCheckpointMeta(plain), /not a peco checkpoint/);
    await assert.rejects(loadCheckpoint(plain, run.state), /not a peco checkpoint/);

    const missing = join(dir, "missing.safetensors");
    await assert.rejects(readCheckpointMeta(missing), new RegExp(`${missing}: not found`));
    disposeRun(run);
  });
});

Deno.test("loading into a different state is refused with the names and shapes", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "ckpt.safetensors");
    const run = newRun(4);
    trainStep(run, 0);
    await saveCheckpoint(path, run.state, meta(1));

    // Wider hidden layer: shapes mismatch.
    const wide = new Toy(4, 6);
    await assert.rejects(
      loadCheckpoint(path, { ...run.state, modules: { model: wide } }),
      (e: Error) => e.message.includes(path) && e.message.includes("fc1.weight"),
    );
    // Only the module: the optimizer and ema tensors belong to nothing.
    await assert.rejects(
      loadCheckpoint(path, { modules: { model: run.model } }),
      /tensors belong to nothing being restored/,
    );
    // An extra tensor of the wrong shape.
    const small = keep(zeros([2]));
    await assert.rejects(
      loadCheckpoint(path, { ...run.state, tensors: { ema: { ema: small } } }),
      /"ema.ema" is F32\[5,3\], expected F32\[2\]/,
    );
    // Two groups under one prefix.
    await assert.rejects(
      saveCheckpoint(
        path,
        { modules: { model: run.model }, tensors: { model: { x: small } } },
        meta(1),
      ),
      /prefix "model" is used twice/,
    );
    small.dispose();
    wide.dispose();
    disposeRun(run);
  });
});

Deno.test("NaN guard: NaN loss stops with the last good checkpoint; NaN state is never saved", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "checkpoint.safetensors");
    const run = newRun(5);
    const guard = new CheckpointGuard("train-toy", path);
    assert.throws(
      () => guard.check(3, { loss: NaN, perceptual: 0.5 }),
      {
        message: "peco: train-toy: loss is NaN/Inf (loss = NaN) at step 3; " +
          "last good checkpoint: none (no checkpoint written yet)",
      },
    );
    // Saving a step whose losses were not checked is a bug in the loop.
    await assert.rejects(guard.save(run.state, meta(3)), /losses were last checked at step -1/);

    trainStep(run, 0);
    guard.check(1, { loss: await takeLoss(run) });
    await guard.save(run.state, meta(1));
    const good = await Deno.readFile(path);

    assert.throws(
      () => guard.check(2, { loss: Infinity }),
      {
        message: `peco: train-toy: loss is NaN/Inf (loss = Infinity) at step 2; ` +
          `last good checkpoint: ${path} (step 1)`,
      },
    );
    // Parameters gone NaN although the checked loss was finite: refused, old file untouched.
    const bias = run.model.fc2.bias!;
    const nan = tidy(() => full(bias.shape, NaN));
    axpyInPlace(bias, nan);
    nan.dispose();
    guard.check(2, { loss: 0.25 });
    await assert.rejects(
      guard.save(run.state, meta(2)),
      {
        message: `peco: train-toy: parameters hold NaN/Inf ("model.fc2.bias") at step 2; ` +
          `last good checkpoint: ${path} (step 1)`,
      },
    );
    await assert.rejects(saveCheckpoint(path, run.state, meta(2)), NonFiniteStateError);
    assert.deepEqual(await Deno.readFile(path), good);
    assert.equal(guard.lastGoodStep, 1);
    const names = [...Deno.readDirSync(dir)].map((e) => e.name);
    assert.deepEqual(names, ["checkpoint.safetensors"], "no temporary file is left behind");
    disposeRun(run);
  });
});
