// The stage contract (fingerprints, skip / resume / refuse / force, manifest.json) and the JSONL
// metrics writer, ending with a toy training stage killed mid-run and resumed to the same output.

import assert from "node:assert/strict";
import { join } from "node:path";
import { randArray } from "./util.ts";
import {
  beginStage,
  canonicalJson,
  finishStage,
  MANIFEST_FILE,
  readStageManifest,
  RUN_MARKER,
  stageFingerprint,
  type StageManifest,
} from "../lib/cli/stage.ts";
import {
  METRICS_FILE,
  MetricsWriter,
  parseMetrics,
  readMetrics,
  series,
} from "../lib/cli/metrics.ts";
import { CheckpointGuard, loadCheckpoint, saveCheckpoint } from "../lib/train/checkpoint.ts";
import { writeImageGrid } from "../lib/io/png.ts";
import { lineChart, writeChart } from "../lib/report/charts.ts";
import { Linear } from "../lib/nn/layers.ts";
import { AdamW } from "../lib/optim/mod.ts";
import { Rng } from "../lib/tensor/init.ts";
import {
  axpyInPlace,
  backward,
  keep,
  mseLoss,
  readAll,
  sigmoid,
  tensor,
  tidy,
  zeros,
} from "../lib/tensor/mod.ts";

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "peco-stage-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** A finished upstream stage folder (what shard writes, reduced to the contract's fields). */
async function makeInput(dir: string, content = "shard data"): Promise<string> {
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(join(dir, "train-00000.shard"), content);
  await Deno.writeTextFile(
    join(dir, MANIFEST_FILE),
    JSON.stringify({ stage: "shard", key: content.length, splits: {} }),
  );
  return dir;
}

const quiet = { log: () => {} };

// ---- canonical JSON -------------------------------------------------------------------------

Deno.test("canonicalJson sorts keys at every level and refuses non-JSON values", () => {
  assert.equal(
    canonicalJson({ b: 1, a: { d: [3, { f: 1, e: null }], c: "x" }, u: undefined }),
    '{"a":{"c":"x","d":[3,{"e":null,"f":1}]},"b":1}',
  );
  assert.equal(
    stageFingerprint("s", { a: 1, b: 2 }, { x: "1" }),
    stageFingerprint("s", { b: 2, a: 1 }, { x: "1" }),
  );
  assert.notEqual(
    stageFingerprint("s", { a: 1 }, { x: "1" }),
    stageFingerprint("s", { a: 1 }, { x: "2" }),
  );
  assert.notEqual(stageFingerprint("s", { a: 1 }, {}), stageFingerprint("t", { a: 1 }, {}));
  assert.throws(() => canonicalJson({ lr: NaN }), /peco: config.lr is NaN, not a JSON number/);
  assert.throws(() => canonicalJson({ f: () => 1 }), /config.f is a function, not JSON/);
});

// ---- metrics --------------------------------------------------------------------------------

Deno.test("metrics JSONL: written per line, NaN/Inf kept, resume drops later steps", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, METRICS_FILE);
    const w = await MetricsWriter.open(path);
    await w.write({ step: 1, loss: 2.5, phase: "warmup" });
    // Readable while open: each write reaches the file at once.
    assert.equal((await readMetrics(path)).length, 1);
    await w.write({ step: 2, loss: NaN, grad: Infinity, low: -Infinity });
    await w.write({ step: 3, loss: 1.25 });
    await assert.rejects(w.write({ step: 2, loss: 0 }), /peco: metrics .*step 2 after step 3/);
    w.close();
    const records = await readMetrics(path);
    assert.equal(records.length, 3);
    assert.ok(Number.isNaN(records[1].loss as number));
    assert.equal(records[1].grad, Infinity);
    assert.equal(records[1].low, -Infinity);
    assert.equal(records[0].phase, "warmup");
    assert.deepEqual(series(records, "loss").x, [1, 2, 3]);
    assert.deepEqual(series(records, "grad"), { x: [2], y: [Infinity] });

    // Resuming after step 2: line 3 goes; new lines follow.
    const r = await MetricsWriter.open(path, 2);
    await r.write({ step: 3, loss: 1.5 });
    r.close();
    assert.deepEqual((await readMetrics(path)).map((m) => [m.step, m.loss]).slice(2), [[3, 1.5]]);
    // A fresh run starts the file empty.
    (await MetricsWriter.open(path)).close();
    assert.equal(await Deno.readTextFile(path), "");
  });
});

Deno.test("metrics reader: a crash's partial last line is ignored, bad lines are errors", async () => {
  assert.deepEqual(parseMetrics('{"step":1,"a":1}\n{"step":2,"a"'), [{ step: 1, a: 1 }]);
  assert.throws(
    () => parseMetrics('{"step":1}\nnot json\n{"step":3}\n', "m.jsonl"),
    /peco: metrics m.jsonl: line 2 is not JSON/,
  );
  assert.throws(() => parseMetrics('{"loss":1}\n', "m.jsonl"), /line 1 has no integer "step"/);
  await assert.rejects(readMetrics("/nonexistent/metrics.jsonl"), /peco: metrics \/nonexistent/);
});

// ---- the folder states ----------------------------------------------------------------------

Deno.test("beginStage: fresh, skip when up to date, refuse another run, --force replaces", async () => {
  await withTempDir(async (dir) => {
    const input = await makeInput(join(dir, "shards"));
    const out = join(dir, "out");
    const spec = { name: "toy", out, config: { a: 1 }, inputs: { shards: input }, ...quiet };
    const run = await beginStage(spec);
    if (run.status !== "fresh") throw new Error(`status ${run.status}, expected fresh`);
    assert.equal(run.checkpoint, join(out, "checkpoint.safetensors"));
    assert.ok((await Deno.stat(join(out, RUN_MARKER))).isFile);
    await Deno.mkdir(join(out, "sub"));
    await Deno.writeTextFile(join(out, "sub", "b.txt"), "bee");
    await Deno.writeTextFile(join(out, "a.txt"), "hello");
    await Deno.writeTextFile(join(out, ".tmp-a.txt.123"), "half"); // a crashed atomic write
    const manifest = await finishStage(run, { summary: { psnr: 21.5 } });

    assert.deepEqual(Object.keys(manifest.files), ["a.txt", "sub/b.txt"]);
    assert.equal(
      manifest.files["a.txt"].sha256,
      "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
    );
    assert.equal(manifest.files["a.txt"].bytes, 5);
    assert.equal(manifest.inputs.shards.stage, "shard");
    assert.equal(manifest.adapter?.description !== undefined, true, "the GPU adapter is recorded");
    assert.equal(manifest.deno.deno, Deno.version.deno);
    assert.deepEqual(await readStageManifest(out), manifest);
    const names = [...Deno.readDirSync(out)].map((e) => e.name).sort();
    assert.deepEqual(names, ["a.txt", "manifest.json", "sub"], "marker and temp file gone");

    // Same config and inputs: skipped with a one-line note.
    const notes: string[] = [];
    const again = await beginStage({ ...spec, log: (l) => notes.push(l) });
    assert.equal(again.status, "skip");
    assert.match(notes[0], /^toy: up to date \(.*manifest.json\); skipped$/);

    // Another config: refused in one line; the folder is untouched.
    await assert.rejects(
      beginStage({ ...spec, config: { a: 2 } }),
      {
        message: `peco: toy: --out ${out} holds a finished toy run with another config or ` +
          `inputs; use --force to replace it, or choose another folder`,
      },
    );
    // Changed input: a different fingerprint too.
    await makeInput(input, "other shard data");
    await assert.rejects(beginStage(spec), /holds a finished toy run/);
    // --force: the old run's files are gone, a fresh run is marked.
    const forced = await beginStage({ ...spec, force: true });
    assert.equal(forced.status, "fresh");
    assert.deepEqual([...Deno.readDirSync(out)].map((e) => e.name), [RUN_MARKER]);
    // Its unfinished run is not another config's to take over.
    await assert.rejects(
      beginStage({ ...spec, config: { a: 3 } }),
      /holds an unfinished run with another config or inputs; use --force/,
    );
  });
});

Deno.test("beginStage: missing inputs, foreign folders and damaged outputs fail clearly", async () => {
  await withTempDir(async (dir) => {
    const empty = join(dir, "empty");
    await Deno.mkdir(empty);
    await assert.rejects(
      beginStage({ name: "toy", out: join(dir, "o"), config: {}, inputs: { shards: empty } }),
      {
        message: `peco: toy: input "shards": ${empty} has no manifest.json ` +
          `(missing, or an unfinished stage)`,
      },
    );
    const broken = join(dir, "broken");
    await Deno.mkdir(broken);
    await Deno.writeTextFile(join(broken, MANIFEST_FILE), "{oops");
    await assert.rejects(
      beginStage({ name: "toy", out: join(dir, "o"), config: {}, inputs: { x: broken } }),
      /input "x": .*manifest.json is not valid JSON/,
    );

    // A folder with someone else's files is never touched, not even with --force.
    const foreign = join(dir, "photos");
    await Deno.mkdir(foreign);
    await Deno.writeTextFile(join(foreign, "holiday.jpg"), "jpeg");
    for (const force of [false, true]) {
      await assert.rejects(
        beginStage({ name: "toy", out: foreign, config: {}, force, ...quiet }),
        /holds files that are not from a toy run \(holiday.jpg\); choose an empty or new folder/,
      );
    }
    assert.equal(await Deno.readTextFile(join(foreign, "holiday.jpg")), "jpeg");

    // Up to date by the manifest but a file is gone.
    const out = join(dir, "out");
    const run = await beginStage({ name: "toy", out, config: {}, ...quiet });
    if (run.status === "skip") throw new Error("unexpected skip");
    await Deno.writeTextFile(join(out, "model.bin"), "weights");
    await finishStage(run);
    await Deno.remove(join(out, "model.bin"));
    await assert.rejects(
      beginStage({ name: "toy", out, config: {}, ...quiet }),
      /up to date by its manifest but model.bin is missing; use --force to rerun/,
    );
    await assert.rejects(finishStage(run, { summary: { x: NaN } }), /summary.x is NaN/);
  });
});

// ---- a whole toy stage, killed and resumed ---------------------------------------------------

const TOTAL = 8;
const LOG_EVERY = 2;
const CHECKPOINT_EVERY = 4;

class Killed extends Error {}

/** The toy stage's loss chart axes. */
const xy = { xTitle: "step", yTitle: "loss" };

/**
 * A training stage written the way the real ones are: begin, restore, train with checked losses,
 * metrics and checkpoints, figures, finish. `killAfter` throws after that step, like a kill.
 */
async function toyStage(
  out: string,
  input: string,
  config: { seed: number; lr: number },
  killAfter?: number,
): Promise<{ status: string; manifest: StageManifest | null }> {
  const run = await beginStage({
    name: "train-toy",
    out,
    config,
    inputs: { shards: input },
    ...quiet,
  });
  if (run.status === "skip") return { status: "skip", manifest: run.manifest };
  const model = new Linear(3, 2, new Rng(config.seed));
  const optimizer = new AdamW(model.parameters(), { lr: config.lr });
  const state = { modules: { model }, optimizers: { optim: optimizer } };
  const guard = new CheckpointGuard(run.name, run.checkpoint, run.resumeFrom?.step ?? null);
  const start = run.resumeFrom ? (await loadCheckpoint(run.checkpoint, state)).step : 0;
  const metrics = await MetricsWriter.open(join(out, METRICS_FILE), run.resumeFrom ? start : null);
  const batch = (step: number) => ({
    x: tensor(randArray(5 * 3, 50 + step), [5, 3]),
    y: tensor(randArray(5 * 2, 60 + step, 0, 1), [5, 2]),
  });
  let lossSum = keep(zeros([]));
  try {
    for (let step = start; step < TOTAL; step++) {
      tidy(() => {
        const { x, y } = batch(step);
        const loss = mseLoss(sigmoid(model.forward(x)), y);
        axpyInPlace(lossSum, loss);
        backward(loss);
        optimizer.step();
        optimizer.zeroGrad();
      });
      const done = step + 1;
      if (done % LOG_EVERY === 0) {
        const [[sum]] = await readAll([lossSum]);
        lossSum.dispose();
        lossSum = keep(zeros([]));
        guard.check(done, { loss: sum });
        await metrics.write({ step: done, loss: sum / LOG_EVERY });
        if (done % CHECKPOINT_EVERY === 0) {
          await guard.save(state, {
            stage: run.name,
            fingerprint: run.fingerprint,
            step: done,
            epoch: 0,
            seed: config.seed,
            config,
          });
        }
      }
      if (done === killAfter) throw new Killed();
    }
    const { x, y } = batch(0);
    const recon = tidy(() => sigmoid(model.forward(x)));
    await writeImageGrid(join(out, "recon.png"), [y.view([5, 1, 1, 2]), recon.view([5, 1, 1, 2])]);
    const curve = series(await readMetrics(join(out, METRICS_FILE)), "loss");
    const points = curve.x.map((x, i) => ({ x, y: curve.y[i], series: "loss" }));
    await writeChart(out, "loss.svg", lineChart("loss", "loss", points, xy));
    const manifest = await finishStage(run, { summary: { loss: curve.y.at(-1) } });
    return { status: run.status, manifest };
  } finally {
    metrics.close();
    lossSum.dispose();
    model.dispose();
    optimizer.dispose();
  }
}

Deno.test("a toy stage killed mid-run resumes to exactly the uninterrupted output", async () => {
  await withTempDir(async (dir) => {
    const input = await makeInput(join(dir, "shards"));
    const config = { seed: 3, lr: 0.1 };
    const whole = await toyStage(join(dir, "a"), input, config);
    assert.equal(whole.status, "fresh");

    const out = join(dir, "b");
    await assert.rejects(toyStage(out, input, config, 6), Killed);
    // Killed after step 6: checkpoint of step 4, metrics up to step 6, no manifest.
    assert.equal((await readMetrics(join(out, METRICS_FILE))).at(-1)!.step, 6);
    await assert.rejects(Deno.stat(join(out, MANIFEST_FILE)), Deno.errors.NotFound);
    const resumed = await toyStage(out, input, config);
    assert.equal(resumed.status, "resume");

    const a = whole.manifest!, b = resumed.manifest!;
    assert.deepEqual(Object.keys(a.files), [
      "checkpoint.safetensors",
      "loss.svg",
      METRICS_FILE,
      "recon.png",
    ]);
    assert.deepEqual(b.files, a.files, "every output file is byte-identical");
    assert.equal(b.fingerprint, a.fingerprint);
    assert.deepEqual(
      (await readMetrics(join(out, METRICS_FILE))).map((m) => m.step),
      [2, 4, 6, 8],
    );
    // A third run is a skip; a changed lr is refused.
    assert.equal((await toyStage(out, input, config)).status, "skip");
    await assert.rejects(toyStage(out, input, { ...config, lr: 0.2 }), /another config/);
  });
});

Deno.test("a checkpoint of another fingerprint is not resumed; a corrupt one says --force", async () => {
  await withTempDir(async (dir) => {
    const out = join(dir, "out");
    const spec = { name: "toy", out, config: { k: 1 }, ...quiet };
    const run = await beginStage(spec);
    if (run.status === "skip") throw new Error("unexpected skip");
    const meta = { stage: "toy", step: 4, epoch: 0, seed: 0, config: {} };
    await saveCheckpoint(run.checkpoint, {}, { ...meta, fingerprint: run.fingerprint });
    const resumed = await beginStage(spec);
    assert.equal(resumed.status, "resume");
    assert.equal(resumed.status === "resume" && resumed.resumeFrom?.step, 4);

    await saveCheckpoint(run.checkpoint, {}, { ...meta, fingerprint: "0".repeat(64) });
    const stale = await beginStage(spec);
    assert.equal(stale.status, "fresh");
    assert.deepEqual([...Deno.readDirSync(out)].map((e) => e.name), [RUN_MARKER]);

    await Deno.writeTextFile(run.checkpoint, "garbage");
    await assert.rejects(
      beginStage(spec),
      /peco: toy: checkpoint .*checkpoint.safetensors: unreadable, truncated or corrupt .*; use --force to start over/,
    );
    assert.equal((await beginStage({ ...spec, force: true })).status, "fresh");
  });
});
