// The training loop (lib/train/loop.ts) on a tiny real model on the GPU (a linear regression with
// Adam, its data drawn from (seed, epoch, step)): a run stopped after a checkpoint and resumed
// equals an uninterrupted one bit for bit; --stop-at stops after the first checkpoint at or after
// its step; a NaN stops the run naming the step and the last good checkpoint; each log record holds
// the mean of its interval's steps.

import assert from "node:assert/strict";
import { join } from "node:path";
import "./util.ts";
import { readMetrics } from "../lib/cli/metrics.ts";
import { stageSinks } from "../lib/cli/training.ts";
import { readSafetensors } from "../lib/io/safetensors.ts";
import { Linear } from "../lib/nn/layers.ts";
import { Adam, warmupCosine } from "../lib/optim/mod.ts";
import { Rng } from "../lib/tensor/init.ts";
import { backward, mseLoss, tensor } from "../lib/tensor/mod.ts";
import { CHECKPOINT_FILE, readCheckpointMeta } from "../lib/train/checkpoint.ts";
import { type LoopRun, type TrainingLoop, trainLoop } from "../lib/train/loop.ts";
import { removeAfterLastTest } from "./stage_fixtures.ts";

const IN = 5;
const OUT = 3;
const BATCH = 4;

interface Batch {
  n: number;
  x: Float32Array;
  y: Float32Array;
}

/** Regression data: batch (epoch, step) drawn from its own stream; `poison` puts a NaN in one. */
function data(seed: number, poison?: number) {
  const stepsPerEpoch = 3;
  return {
    stepsPerEpoch,
    async *batches(at: { epoch: number; step: number }): AsyncGenerator<Batch> {
      for (let epoch = at.epoch;; epoch++) {
        for (let step = epoch === at.epoch ? at.step : 0; step < stepsPerEpoch; step++) {
          const rng = new Rng(seed).fork(`batch ${epoch} ${step}`);
          const x = Float32Array.from({ length: BATCH * IN }, () => rng.normal());
          const y = Float32Array.from({ length: BATCH * OUT }, () => rng.normal());
          if (epoch * stepsPerEpoch + step === poison) x[0] = NaN;
          await Promise.resolve();
          yield { n: BATCH, x, y };
        }
      }
    },
  };
}

/** A loop over a fresh model in `dir`, resuming the checkpoint found there. */
async function runIn(
  dir: string,
  { steps = 8, stopAt, poison, evalEvery, keep = true }: {
    steps?: number;
    stopAt?: number;
    poison?: number;
    evalEvery?: number;
    /** false: the run keeps no checkpoint file. */
    keep?: boolean;
  } = {},
) {
  const model = new Linear(IN, OUT, new Rng(7));
  const optimizer = new Adam(model.parameters(), { lr: 0.05 });
  const checkpoint = keep ? join(dir, CHECKPOINT_FILE) : null;
  const resumeFrom = checkpoint
    ? await readCheckpointMeta(checkpoint).then((m) => m, () => null)
    : null;
  const run: LoopRun = { checkpoint, fingerprint: "loop-test", resumeFrom };
  const lines: string[] = [];
  const spec: TrainingLoop<Batch> = {
    stage: "loop-test",
    steps,
    seed: 1,
    config: { steps },
    logEvery: 2,
    ckptEvery: 4,
    stopAt,
    state: { modules: { model }, optimizers: { optim: optimizer } },
    data: data(1, poison),
    lr: {
      schedule: warmupCosine({ baseLr: 0.05, warmupSteps: 2, totalSteps: steps }),
      optimizers: [optimizer],
    },
    terms: ["loss", "step_id"],
    step(batch, step) {
      const loss = mseLoss(
        model.forward(tensor(batch.x, [BATCH, IN])),
        tensor(batch.y, [BATCH, OUT]),
      );
      backward(loss);
      optimizer.step();
      optimizer.zeroGrad();
      // The step's own number: the records' means of it are known exactly.
      return [loss, tensor([step], [1])];
    },
    evaluate: (done) => Promise.resolve({ evaluated_at: done }),
    evalEvery,
    carry: () => ({ note: `carried at ${optimizer.steps}` }),
  };
  const sinks = stageSinks({ out: dir }, {
    label: "loop-test",
    total: steps,
    quiet: true,
    log: (line) => lines.push(line),
  });
  try {
    return { result: await trainLoop(spec, run, sinks), lines };
  } finally {
    model.dispose();
    optimizer.dispose();
  }
}

async function tensorsOf(path: string) {
  return (await readSafetensors(path)).tensors;
}

/** The records without their timings (which differ from run to run). */
async function records(dir: string) {
  return (await readMetrics(join(dir, "metrics.jsonl"))).map((r) => {
    const { images_per_s: _i, peak_gpu_bytes: _p, ...rest } = r;
    return rest;
  });
}

const root = await Deno.makeTempDir({ prefix: "peco-loop-" });

Deno.test("loop: a run stopped after a checkpoint and resumed equals an uninterrupted one", async () => {
  const whole = join(root, "whole");
  const parts = join(root, "parts");
  await Deno.mkdir(whole);
  await Deno.mkdir(parts);
  const a = await runIn(whole);
  assert.equal(a.result.status, "done");
  assert.equal(a.result.step, 8);
  const stopped = await runIn(parts, { stopAt: 3 });
  assert.equal(stopped.result.status, "stopped");
  assert.equal(stopped.result.step, 4, "stops after the first checkpoint at or after --stop-at");
  assert.match(stopped.lines.join("\n"), /stopped after the checkpoint at step 4/);
  assert.equal((await readCheckpointMeta(join(parts, CHECKPOINT_FILE))).step, 4);
  const b = await runIn(parts);
  assert.equal(b.result.status, "done");
  const ta = await tensorsOf(join(whole, CHECKPOINT_FILE));
  const tb = await tensorsOf(join(parts, CHECKPOINT_FILE));
  assert.deepEqual([...tb.keys()].sort(), [...ta.keys()].sort());
  assert.ok(ta.has("model.weight") && ta.has("optim.0.exp_avg"));
  for (const [name, r] of ta) assert.deepEqual(tb.get(name)!.data, r.data, `${name} differs`);
  assert.deepEqual(await records(parts), await records(whole));
  assert.deepEqual(b.result.last.loss, a.result.last.loss);
  // A run resumed at its last checkpoint trains nothing and keeps the last record.
  const again = await runIn(parts);
  assert.equal(again.result.status, "done");
  assert.deepEqual(again.result.last.loss, a.result.last.loss);
  assert.ok(again.result.summary.train_seconds > 0, "training seconds carried across resumes");
});

Deno.test("loop: each log step records its interval's means, held-out numbers, lr and timings", async () => {
  const dir = join(root, "records");
  await Deno.mkdir(dir);
  await runIn(dir, { steps: 5 });
  const logged = await readMetrics(join(dir, "metrics.jsonl"));
  assert.deepEqual(logged.map((r) => r.step), [2, 4, 5]);
  // Steps 0,1 → 0.5; 2,3 → 2.5; 4 alone → 4.
  assert.deepEqual(logged.map((r) => r.step_id), [0.5, 2.5, 4]);
  assert.deepEqual(logged.map((r) => r.evaluated_at), [2, 4, 5]);
  const schedule = warmupCosine({ baseLr: 0.05, warmupSteps: 2, totalSteps: 5 });
  assert.deepEqual(logged.map((r) => r.lr), [schedule(1), schedule(3), schedule(4)]);
  for (const r of logged) {
    for (const key of ["loss", "images_per_s", "peak_gpu_bytes"]) {
      assert.ok(Number.isFinite(r[key] as number) && (r[key] as number) > 0, `${key} ${r[key]}`);
    }
  }
  // Checkpoints every 4 steps and at the end.
  assert.equal((await readCheckpointMeta(join(dir, CHECKPOINT_FILE))).step, 5);
});

Deno.test("loop: evalEvery evaluates at its own steps (a record of its own off the log steps); carried data; no checkpoint file", async () => {
  const dir = join(root, "eval-every");
  await Deno.mkdir(dir);
  await runIn(dir, { steps: 5, evalEvery: 3 });
  const logged = await records(dir);
  assert.deepEqual(logged.map((r) => r.step), [2, 3, 4, 5]);
  assert.deepEqual(logged[1], { step: 3, evaluated_at: 3 }, "step 3: the evaluation alone");
  assert.deepEqual(logged.map((r) => r.evaluated_at), [undefined, 3, undefined, 5]);
  assert.deepEqual(logged.map((r) => r.step_id), [0.5, undefined, 2.5, 4]);
  const meta = await readCheckpointMeta(join(dir, CHECKPOINT_FILE));
  assert.deepEqual(meta.carried, { note: "carried at 5" });
  const none = join(root, "no-checkpoint");
  await Deno.mkdir(none);
  const { result } = await runIn(none, { steps: 5, keep: false });
  assert.equal(result.status, "done");
  assert.deepEqual([...Deno.readDirSync(none)].map((e) => e.name), ["metrics.jsonl"]);
});

Deno.test("loop: a NaN loss stops the run naming its step and the last good checkpoint", async () => {
  const dir = join(root, "nan");
  await Deno.mkdir(dir);
  const checkpoint = join(dir, CHECKPOINT_FILE);
  await runIn(dir, { steps: 4 });
  const good = await tensorsOf(checkpoint);
  // Rerun longer with batch 5 (step 6) poisoned: resumes at 4, fails at 6, keeps the step-4 file.
  await assert.rejects(
    () => runIn(dir, { steps: 8, poison: 5 }),
    (error: Error) => {
      assert.match(
        error.message,
        new RegExp(
          `^peco: loop-test: loss is NaN/Inf \\(loss = NaN.*\\) at step 6; ` +
            `last good checkpoint: ${checkpoint.replaceAll(".", "\\.")} \\(step 4\\)$`,
        ),
      );
      return true;
    },
  );
  assert.equal((await readCheckpointMeta(checkpoint)).step, 4);
  const after = await tensorsOf(checkpoint);
  for (const [name, r] of good) assert.deepEqual(after.get(name)!.data, r.data, name);
});

removeAfterLastTest("loop", root);
