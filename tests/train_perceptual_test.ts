// The train-perceptual stage: MoCo v3's loss and momentum update against float64 references, the
// stage end to end on a handful of MNIST images, exact resume, the builtin loader and bad input.

import assert from "node:assert/strict";
import { join } from "node:path";
import { assertClose, checkGrad, randArray } from "./util.ts";
import { parseOptions } from "../lib/cli/args.ts";
import { readMetrics } from "../lib/cli/metrics.ts";
import { readStageManifest } from "../lib/cli/stage.ts";
import { readSafetensors } from "../lib/io/safetensors.ts";
import {
  loadBuiltinPerceptual,
  mocoContrastiveLoss,
  MocoEncoder,
  MocoV3,
  momentumAt,
} from "../lib/models/moco.ts";
import { Rng } from "../lib/tensor/init.ts";
import { axpyInPlace, readAll, tensor, tidy } from "../lib/tensor/mod.ts";
import { runShard, shardCommand } from "../tasks/shard.ts";
import { knnAccuracy } from "../lib/train/moco.ts";
import {
  runTrainPerceptual,
  trainPerceptualCommand,
  type TrainPerceptualOptions,
} from "../tasks/train_perceptual.ts";

const quiet = () => {};

/** float64 reference of 2τ·CE(norm(q)·norm(k)ᵀ/τ, diagonal). */
function contrastiveRef(q: number[], k: number[], n: number, d: number, tau: number): number {
  const norm = (x: number[]) =>
    Array.from({ length: n }, (_, i) => {
      const row = x.slice(i * d, (i + 1) * d);
      const len = Math.sqrt(row.reduce((s, v) => s + v * v, 0));
      return row.map((v) => v / len);
    });
  const qn = norm(q), kn = norm(k);
  let total = 0;
  for (let i = 0; i < n; i++) {
    const logits = kn.map((kr) => kr.reduce((s, v, j) => s + v * qn[i][j], 0) / tau);
    const m = Math.max(...logits);
    const lse = m + Math.log(logits.reduce((s, l) => s + Math.exp(l - m), 0));
    total += lse - logits[i];
  }
  return 2 * tau * total / n;
}

Deno.test("mocoContrastiveLoss matches a float64 reference; bad shapes throw", async () => {
  for (const [n, d, tau] of [[5, 3, 0.2], [1, 7, 1], [9, 1, 0.5]] as const) {
    const q = randArray(n * d, 11 + n), k = randArray(n * d, 29 + d);
    const l = tidy(() => mocoContrastiveLoss(tensor(q, [n, d]), tensor(k, [n, d]), tau));
    const [[got]] = await readAll([l]);
    l.dispose();
    assertClose([got], [contrastiveRef(q, k, n, d, tau)], {
      atol: 1e-5,
      rtol: 1e-4,
      what: `loss ${n}×${d}`,
    });
  }
  assert.throws(
    () =>
      tidy(() =>
        mocoContrastiveLoss(tensor(randArray(6, 1), [3, 2]), tensor(randArray(6, 2), [2, 3]), 0.2)
      ),
    /mocoContrastiveLoss/,
  );
  assert.throws(
    () => tidy(() => mocoContrastiveLoss(tensor([1, 2], [1, 2]), tensor([1, 2], [1, 2]), 0)),
    /tau\ must\ be\ >\ 0/,
  );
});

Deno.test("mocoContrastiveLoss: gradient to the queries matches finite differences", async () => {
  const [n, d, tau] = [5, 3, 0.3];
  const q = randArray(n * d, 5), k = randArray(n * d, 6);
  // Only q needs a gradient (k comes from the momentum encoder, under noGrad).
  await checkGrad(
    (qt, kt) => mocoContrastiveLoss(qt, kt, tau),
    (qa, ka) => [contrastiveRef(qa, ka, n, d, tau)],
    [{ data: q, shape: [n, d] }, { data: k, shape: [n, d] }],
    { which: [0] },
  );
});

Deno.test("momentum encoder: starts equal to the base, EMA update matches the reference", async () => {
  const model = new MocoV3(
    { widths: [8, 8], depth: 0, groups: 4 },
    { hidden: 6, dim: 5 },
    new Rng(3),
  );
  try {
    const base = model.baseEncoder.namedParameters();
    const mom = model.momentumEncoder.namedParameters();
    assert.deepStrictEqual([...base.keys()], [...mom.keys()]);
    for (const p of mom.values()) assert(!p.requiresGrad);
    const names = [...base.keys()];
    const before = await readAll(names.map((n) => base.get(n)!));
    const momBefore = await readAll(names.map((n) => mom.get(n)!));
    names.forEach((n, i) =>
      assert.deepStrictEqual(momBefore[i], before[i], `initial copy of ${n}`)
    );
    // Move the base away (as an optimizer step would), then update with m = 0.9.
    const deltas = before.map((b, i) => Array.from(b, (_, j) => 0.1 * Math.sin(i + j)));
    const newBase = before.map((b, i) => b.map((v, j) => v + deltas[i][j]));
    tidy(() =>
      names.forEach((n, i) => axpyInPlace(base.get(n)!, tensor(deltas[i], [deltas[i].length])))
    );
    model.updateMomentum(0.9);
    const after = await readAll(names.map((n) => mom.get(n)!));
    names.forEach((n, i) => {
      const ref = Array.from(momBefore[i], (v, j) => 0.9 * v + 0.1 * newBase[i][j]);
      assertClose(after[i], ref, { atol: 1e-6, rtol: 1e-5, what: `EMA of ${n}` });
    });
    assert.deepStrictEqual(momentumAt(0, 100, 0.99), 0.99);
    assertClose([momentumAt(100, 100, 0.99), momentumAt(50, 100, 0.99)], [1, 0.995], {
      atol: 1e-12,
    });
  } finally {
    model.dispose();
  }
});

Deno.test("MocoEncoder taps every stage; wrong input shapes throw", async () => {
  const enc = new MocoEncoder({ widths: [8, 16], depth: 1, groups: 4 }, new Rng(1));
  try {
    const feats = tidy(() => enc.features(tensor(randArray(2 * 3 * 9 * 7, 4), [2, 3, 9, 7])));
    assert.deepStrictEqual(feats.map((f) => f.shape), [[2, 8, 5, 4], [2, 16, 3, 2]]);
    const values = await readAll(feats);
    feats.forEach((f) => f.dispose());
    assert(values.every((v) => v.every(Number.isFinite)));
    assert.throws(
      () => tidy(() => enc.features(tensor(randArray(2 * 9 * 9, 4), [2, 1, 9, 9]))),
      /MocoEncoder\.features/,
    );
  } finally {
    enc.dispose();
  }
  assert.throws(
    () => new MocoEncoder({ widths: [6], depth: 0, groups: 4 }, new Rng(1)),
    /divisible\ by\ groups/,
  );
});

Deno.test("knnAccuracy: similarity-weighted votes of the k nearest", () => {
  // Bank: class 0 near (1, 0), class 1 near (0, 1); queries on each side and one ambiguous.
  const bank = {
    features: Float32Array.from([1, 0, 0.99, 0.14, 0, 1, 0.14, 0.99]),
    labels: Int32Array.from([0, 0, 1, 1]),
    n: 4,
    dim: 2,
  };
  const query = {
    features: Float32Array.from([0.98, 0.2, 0.2, 0.98]),
    labels: Int32Array.from([0, 0]),
    n: 2,
  };
  assert.deepStrictEqual(knnAccuracy(bank, query, 2, 0.07), 0.5);
  assert.deepStrictEqual(
    knnAccuracy(bank, { ...query, labels: Int32Array.from([0, 1]) }, 2, 0.07),
    1,
  );
});

// ---- the stage end to end ------------------------------------------------------------------

let shardDir: string | null = null;

/** A tiny MNIST shard folder (made once). */
async function tinyShards(): Promise<string> {
  if (shardDir) return shardDir;
  const dir = await Deno.makeTempDir({ prefix: "peco-tp-shards-" });
  const options = parseOptions(shardCommand, [
    "--input",
    "mnist",
    "--out",
    dir,
    "--limit",
    "48",
    "--per-shard",
    "16",
    "--quiet",
  ])!;
  await runShard(options, { log: quiet });
  return shardDir = dir;
}

function stageOptions(shards: string, out: string, extra: string[] = []): TrainPerceptualOptions {
  return parseOptions(trainPerceptualCommand, [
    "--shards",
    shards,
    "--out",
    out,
    "--steps",
    "4",
    "--batch",
    "8",
    "--log-every",
    "2",
    "--ckpt-every",
    "2",
    "--knn-train",
    "32",
    "--knn-val",
    "16",
    "--quiet",
    ...extra,
  ])! as TrainPerceptualOptions;
}

Deno.test("train-perceptual: end to end, then a killed run resumes to the same weights", async () => {
  const shards = await tinyShards();
  const root = await Deno.makeTempDir({ prefix: "peco-tp-" });
  try {
    const full = join(root, "full");
    const result = await runTrainPerceptual(stageOptions(shards, full), { log: quiet });
    assert.deepStrictEqual(result.status, "done");
    const manifest = await readStageManifest(full);
    assert.deepStrictEqual(manifest.stage, "train-perceptual");
    for (const f of ["checkpoint.safetensors", "encoder.safetensors", "metrics.jsonl"]) {
      assert(f in manifest.files, `${f} in the manifest`);
    }
    const knn = manifest.summary.knn_accuracy as number;
    assert(knn >= 0 && knn <= 1, `k-NN accuracy ${knn}`);
    assert(Number.isFinite(manifest.summary.loss as number));
    assert.deepStrictEqual(manifest.summary.view_size, [14, 14]);
    const metrics = await readMetrics(join(full, "metrics.jsonl"));
    assert.deepStrictEqual(metrics.map((m) => m.step), [2, 4]);
    for (const key of ["loss", "lr", "images_per_s", "peak_gpu_bytes"]) {
      assert(Number.isFinite(metrics[1][key] as number), `metric ${key}`);
    }

    // The builtin loader gives a frozen PerceptualNet with the trained weights.
    const net = await loadBuiltinPerceptual(full);
    try {
      assert(net.parameters().every((p) => !p.requiresGrad));
      const feats = tidy(() => net.features(tensor(randArray(3 * 28 * 28, 9), [1, 3, 28, 28])));
      assert.deepStrictEqual(feats.length, 3);
      feats.forEach((f) => f.dispose());
    } finally {
      net.dispose();
    }

    // Stopped after the checkpoint at step 2 (as if killed), then rerun: resumes to the same result.
    const split = join(root, "split");
    const stopped = await runTrainPerceptual(stageOptions(shards, split, ["--stop-at", "2"]), {
      log: quiet,
    });
    assert.deepStrictEqual(stopped.status, "stopped");
    const resumed = await runTrainPerceptual(stageOptions(shards, split), { log: quiet });
    assert.deepStrictEqual(resumed.status, "done");
    const a = await readSafetensors(join(full, "encoder.safetensors"));
    const b = await readSafetensors(join(split, "encoder.safetensors"));
    assert.deepStrictEqual([...b.tensors.keys()], [...a.tensors.keys()]);
    for (const [name, r] of a.tensors) {
      assert.deepStrictEqual(b.tensors.get(name)!.data, r.data, `resumed ${name}`);
    }
    const resumedMetrics = await readMetrics(join(split, "metrics.jsonl"));
    assert.deepStrictEqual(resumedMetrics.map((m) => m.loss), metrics.map((m) => m.loss));

    // Rerunning a finished run is a skip.
    const again = await runTrainPerceptual(stageOptions(shards, full), { log: quiet });
    assert.deepStrictEqual(again.status, "skip");
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("train-perceptual: bad input fails clearly before training", async () => {
  const root = await Deno.makeTempDir({ prefix: "peco-tp-bad-" });
  try {
    await assert.rejects(
      () => runTrainPerceptual(stageOptions(join(root, "nope"), join(root, "out")), { log: quiet }),
      /nope/,
    );
    const shards = await tinyShards();
    await assert.rejects(
      () =>
        runTrainPerceptual(stageOptions(shards, join(root, "o2"), ["--batch", "500"]), {
          log: quiet,
        }),
      /fewer\ than\ \-\-batch\ 500/,
    );
    await assert.rejects(
      () =>
        runTrainPerceptual(stageOptions(shards, join(root, "o3"), ["--ckpt-every", "3"]), {
          log: quiet,
        }),
      /multiple\ of\ \-\-log\-every/,
    );
    await assert.rejects(
      () =>
        runTrainPerceptual(stageOptions(shards, join(root, "o4"), ["--tau", "0"]), { log: quiet }),
      /\-\-tau/,
    );
    // A shard cut short: its size no longer matches the shards manifest.
    const cut = join(root, "cut");
    await Deno.mkdir(cut);
    for (const e of Deno.readDirSync(shards)) {
      await Deno.copyFile(join(shards, e.name), join(cut, e.name));
    }
    const shard = [...Deno.readDirSync(cut)].find((e) => e.name.endsWith(".shard"))!.name;
    await Deno.truncate(join(cut, shard), 64);
    await assert.rejects(
      () => runTrainPerceptual(stageOptions(cut, join(root, "o5")), { log: quiet }),
      new RegExp(`${shard}: 64 bytes, manifest says`),
    );
    // Nothing was created for the refused runs.
    for (const o of ["out", "o2", "o3", "o4", "o5"]) {
      assert(!(await Deno.stat(join(root, o)).then(() => true, () => false)), `${o} not created`);
    }
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test({
  name: "cleanup tiny shards",
  fn: async () => {
    if (shardDir) await Deno.remove(shardDir, { recursive: true });
    shardDir = null;
  },
});
