// The pipeline launcher: config validation naming the key, the chain's wiring and permissions,
// stages denied what is outside their inputs (child `deno run` and the compiled binary's Worker
// sandbox), and a tiny chain through the real stages as child processes: interrupted (--stop-at
// and a SIGKILL of the whole process group) and resumed to the uninterrupted run's result, a
// rerun skipped stage by stage, a changed setting rerunning only that stage and those after it.

import assert from "node:assert/strict";
import { join } from "node:path";
import {
  chainSteps,
  parseDuration,
  parseProgress,
  type PipelineResult,
  prepareSteps,
  runPipeline,
  toArgv,
} from "../lib/cli/pipeline.ts";
import { type PipelineConfig, validateConfig } from "../lib/cli/pipeline_config.ts";
import { Progress } from "../lib/cli/progress.ts";
import { sandboxedCommand } from "../lib/cli/permissions.ts";
import { moduleReadPaths } from "../lib/data/item_pool.ts";
import { checkConfig, schemas, STAGES } from "../tasks/pipeline.ts";
import { commandOutput } from "./stage_fixtures.ts";
import { lambdaArms, parseLambdas } from "../tasks/experiment.ts";
import demoConfig from "../configs/demo.json" with { type: "json" };
import quickConfig from "../configs/demo-quick.json" with { type: "json" };

const REPO = new URL("..", import.meta.url).pathname;
const ALL = Object.keys(STAGES);

async function configError(raw: unknown): Promise<string> {
  try {
    validateConfig(raw, await schemas());
  } catch (error) {
    return (error as Error).message;
  }
  throw new Error("the config was accepted");
}

Deno.test("config errors name the key", async () => {
  const known = Object.keys((await STAGES.pretrain.load()).command.options)
    .filter((k) => !["shards", "tokenizer", "out", "quiet", "force"].includes(k))
    .sort()
    .join(", ");
  assert.equal(
    await configError({ stages: { pretrain: { stepz: 3 } } }),
    `peco: pipeline: config.stages.pretrain.stepz: unknown option (known: ${known})`,
  );
  assert.match(
    await configError({ stages: { "train-tokenizer": { steps: "ten" } } }),
    /^peco: pipeline: config\.stages\.train-tokenizer\.steps: expected a number, got string "ten"$/,
  );
  assert.match(
    await configError({ stages: { "train-tokenizer": { perceptual: "vgg" } } }),
    /config\.stages\.train-tokenizer\.perceptual: must be one of none, builtin, vgg16/,
  );
  assert.match(
    await configError({ stages: { pretrain: { shards: "x" } } }),
    /config\.stages\.pretrain\.shards: set by the pipeline \(<out>\/shard\); remove it/,
  );
  assert.match(
    await configError({ stages: { shard: { quiet: true } } }),
    /shard\.quiet: a per-run/,
  );
  assert.match(
    await configError({ stages: { tokenize: {} } }),
    /config\.stages\.tokenize: unknown stage/,
  );
  assert.match(await configError({ stagez: {} }), /^peco: pipeline: config\.stagez: unknown key/);
  assert.match(await configError({ seed: -1 }), /config\.seed: expected an integer ≥ 0/);
  assert.match(
    await configError({ estimates: { shard: "1" } }),
    /config\.estimates\.shard: expected/,
  );
  assert.match(await configError([]), /^peco: pipeline: config: must be a JSON object/);
  // A value the stage itself refuses is caught before anything runs, naming the step.
  const bad = await checkConfig({ stages: { shard: { channels: 2 } } }, "x.json");
  await assert.rejects(
    prepareSteps(chainSteps(bad, "/tmp/x", ALL), STAGES),
    /^Error: peco: pipeline: step shard \(shard\): config\.stages\.shard\.channels: --channels must be 1 or 3, got 2$/,
  );
  await assert.rejects(
    checkConfig({ stages: { evaluate: { "finetune-stepz": 1 } } }, "configs/mine.json"),
    /^Error: peco: pipeline: configs\/mine\.json: config\.stages\.evaluate\.finetune-stepz: unknown/,
  );
});

Deno.test("the chain wires each stage to the folders before it, with least privilege", async () => {
  for (const [raw, file] of [[demoConfig, "demo"], [quickConfig, "demo-quick"]] as const) {
    const config = await checkConfig(raw, `configs/${file}.json`);
    assert.ok(config.out?.startsWith("runs/"));
    assert.deepEqual(chainSteps(config, "/r", ALL).map((s) => s.stage), ALL);
  }
  const config: PipelineConfig = { seed: 7, stages: { pretrain: { steps: 5 } }, estimates: {} };
  const steps = await prepareSteps(chainSteps(config, "/r", ALL), STAGES);
  const byId = Object.fromEntries(steps.map((s) => [s.id, s]));
  assert.deepEqual(steps.map((s) => s.id), [
    "shard",
    "perceptual",
    "tokenizer",
    "export",
    "pretrain",
    "evaluate",
  ]);
  assert.deepEqual(byId.pretrain.argv, [
    "--seed",
    "7",
    "--steps",
    "5",
    "--shards",
    "/r/shard",
    "--tokenizer",
    "/r/export",
    "--out",
    "/r/pretrain",
  ]);
  assert.deepEqual(byId.tokenizer.access, {
    read: ["/r/shard", "/r/tokenizer", "/r/perceptual", ...moduleReadPaths()],
    write: ["/r/tokenizer"],
  });
  assert.equal(byId.evaluate.args.curves, "/r/perceptual,/r/tokenizer,/r/pretrain");
  for (const step of steps) assert.deepEqual(step.access.write, [step.out]);

  // The experiment: shard and perceptual once, one arm per λ (λ = 0 without the network).
  assert.deepEqual(parseLambdas("0, 0.3,1"), [0, 0.3, 1]);
  assert.throws(() => parseLambdas("0,x"), /--lambdas: "x" is not a number/);
  assert.throws(() => parseLambdas("1,1"), /lists a value twice/);
  const ex = await prepareSteps(chainSteps(config, "/e", ALL, lambdaArms([1, 0])), STAGES);
  assert.deepEqual(ex.map((s) => s.id), [
    "shard",
    "perceptual",
    "tokenizer-l1",
    "tokenizer-l0",
    "export-l1",
    "export-l0",
    "pretrain-l1",
    "pretrain-l0",
    "evaluate",
  ]);
  const l0 = ex.find((s) => s.id === "tokenizer-l0")!;
  assert.equal(l0.args.perceptual, "none");
  assert.ok(!l0.access.read.includes("/e/perceptual"));
  const evaluate = ex.at(-1)!;
  assert.equal(evaluate.args.export, "/e/export-l1,/e/export-l0");
  assert.equal(evaluate.args.pretrain, "/e/pretrain-l1,/e/pretrain-l0");
  assert.equal(evaluate.args.labels, "λ=1,λ=0");
});

Deno.test("arguments, progress lines and durations", () => {
  assert.deepEqual(toArgv({ steps: 3, quiet: true, force: false, input: "a b" }), [
    "--steps",
    "3",
    "--quiet",
    "--input",
    "a b",
  ]);
  const stream = { writeSync: (p: Uint8Array) => p.length, isTerminal: () => false };
  const progress = new Progress({ label: "tokenizer", total: 240, unit: "step", stream });
  progress.update(60, { loss: 0.5 });
  const parsed = parseProgress(progress.line({ loss: 0.5 }));
  assert.equal(parsed?.done, 60);
  assert.equal(parsed?.total, 240);
  assert.equal(parsed?.unit, "step");
  assert.ok(parsed?.eta !== null && parsed!.eta >= 0);
  assert.equal(parseProgress("train-tokenizer: up to date"), null);
  assert.equal(parseDuration("1:02:03"), 3723);
  assert.equal(parseDuration("--:--"), null);
});

// ---- sandboxing ---------------------------------------------------------------------------------

/** `peco __sandbox`: the compiled binary's child, here under `deno run`. */
function workerSandbox(script: URL, access: unknown, args: string[]): Deno.Command {
  return new Deno.Command("deno", {
    args: [
      "run",
      "--unstable-worker-options",
      "--allow-read",
      "--allow-write",
      "--allow-run",
      join(REPO, "tasks/peco.ts"),
      "__sandbox",
      script.href,
      JSON.stringify(access),
      ...args,
    ],
    stdout: "piped",
    stderr: "piped",
  });
}

Deno.test("a sandboxed stage cannot read outside its inputs", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "peco-pipeline-deny-" });
  try {
    const allowed = join(tmp, "allowed");
    const secret = join(tmp, "secret");
    const out = join(tmp, "out");
    await Deno.mkdir(join(allowed, "a"), { recursive: true });
    await Deno.mkdir(join(secret, "a"), { recursive: true });
    const pngs = join(REPO, "fixtures/images/decode");
    for await (const e of Deno.readDir(pngs)) {
      if (e.name.endsWith(".png")) {
        await Deno.copyFile(join(pngs, e.name), join(secret, "a", "1.png"));
        break;
      }
    }
    // The permissions computed for --input allowed/, but the stage is pointed at secret/.
    const { access } = await STAGES.shard.load();
    const granted = access({
      input: allowed,
      out,
      resize: "crop",
      "per-shard": 8,
      seed: 0,
      "max-pixels": 1e6,
    });
    // (Plus the folder of the decoding workers' modules, lib/data/item_pool.ts.)
    assert.deepEqual(granted, { read: [allowed, out, ...moduleReadPaths()], write: [out] });
    const args = ["--input", secret, "--out", out, "--size", "4", "--quiet"];
    const child = await commandOutput(
      sandboxedCommand(STAGES.shard.script, args, granted, { stdout: "piped", stderr: "piped" }),
    );
    assert.notEqual(child.code, 0, child.text);
    assert.match(child.text, /NotCapable|permission/i);
    // The compiled binary's sandbox (a Worker limited to the same access) denies it too …
    const worker = await commandOutput(workerSandbox(STAGES.shard.script, granted, args));
    assert.equal(worker.code, 1, worker.text);
    assert.match(worker.text, /NotCapable|permission/i);
    await assert.rejects(Deno.stat(join(out, "manifest.json")), Deno.errors.NotFound);
    // … and runs the stage when the input is granted.
    const ok = await commandOutput(
      workerSandbox(
        STAGES.shard.script,
        { read: [secret, out, ...moduleReadPaths()], write: [out] },
        args,
      ),
    );
    assert.equal(ok.code, 0, ok.text);
    assert.match(ok.text, /^shard: written: /m);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

// ---- a tiny chain through the real stages -------------------------------------------------------

/** Tiny MNIST (16×16) → tokenizer without the perceptual network: the cheapest real chain. */
function tinyConfig(tokenizer: Record<string, number | string> = {}) {
  return checkConfig({
    seed: 3,
    stages: {
      shard: { input: "mnist", limit: 24, size: 16 },
      "train-tokenizer": {
        perceptual: "none",
        steps: 3,
        batch: 4,
        "log-every": 1,
        "ckpt-every": 1,
        "eval-images": 8,
        "psnr-images": 4,
        ...tokenizer,
      },
      // Batches the 24 training images hold: the killed pipeline below runs the whole chain, whose
      // config is checked in full before its first stage starts.
      pretrain: { batch: 4 },
      evaluate: { "finetune-batch": 4, "classifier-batch": 4 },
    },
    estimates: { shard: 1, "train-tokenizer": 10 },
  }, "tiny.json");
}

const CHAIN = ["shard", "train-tokenizer"];

async function run(config: PipelineConfig, out: string): Promise<PipelineResult & { log: string }> {
  const lines: string[] = [];
  const steps = await prepareSteps(chainSteps(config, out, CHAIN), STAGES);
  const result = await runPipeline(steps, {
    quiet: true,
    write: { out: (l) => lines.push(l), err: (t) => lines.push(t), errIsTerminal: false },
  });
  return { ...result, log: lines.join("\n") };
}

const statuses = (r: PipelineResult) => r.steps.map((s) => s.status);

/** The tokenizer's summary without timings (fingerprints differ: each run has its own shards). */
async function tokenizerResult(out: string) {
  const manifest = JSON.parse(await Deno.readTextFile(join(out, "tokenizer/manifest.json")));
  // (Timings and memory differ from run to run.)
  const { train_seconds: _t, images_per_s: _i, peak_gpu_bytes: _p, ...summary } = manifest.summary;
  return summary;
}

Deno.test("pipeline: interrupted and resumed = uninterrupted; reruns skip; changes cascade", async (t) => {
  const tmp = await Deno.makeTempDir({ prefix: "peco-pipeline-" });
  try {
    const ref = join(tmp, "ref");
    const cut = join(tmp, "cut");
    const config = await tinyConfig();

    await t.step("an uninterrupted run", async () => {
      const r = await run(config, ref);
      assert.equal(r.status, "done", r.log);
      assert.deepEqual(statuses(r), ["done", "done"]);
      assert.match(r.log, /\| tokenizer \| train-tokenizer \| done/);
    });

    await t.step(
      "stopped after a checkpoint (--stop-at): status stopped, exit code 3",
      async () => {
        const r = await run(await tinyConfig({ "stop-at": 1 }), cut);
        assert.equal(r.status, "stopped", r.log);
        assert.equal(r.code, 3);
        assert.deepEqual(statuses(r), ["done", "stopped"]);
        await assert.rejects(Deno.stat(join(cut, "tokenizer/manifest.json")), Deno.errors.NotFound);
        await Deno.stat(join(cut, "tokenizer/checkpoint.safetensors"));
      },
    );

    await t.step("killed with SIGKILL (the whole process group) mid-stage", async () => {
      const file = join(tmp, "tiny.json");
      await Deno.writeTextFile(file, JSON.stringify({ ...config, out: cut }));
      const child = new Deno.Command("deno", {
        args: [
          "run",
          "--allow-read",
          "--allow-run=deno",
          join(REPO, "tasks/pipeline.ts"),
          "--config",
          file,
          "--quiet",
        ],
        detached: true,
        stdout: "null",
        stderr: "null",
      }).spawn();
      // Kill once the resumed tokenizer has logged a step past its checkpoint at step 1.
      const metrics = join(cut, "tokenizer/metrics.jsonl");
      const deadline = Date.now() + 120_000;
      while (Date.now() < deadline) {
        const text = await Deno.readTextFile(metrics).catch(() => "");
        if (text.split("\n").some((l) => l && JSON.parse(l).step >= 2)) break;
        await new Promise((r) => setTimeout(r, 50));
      }
      Deno.kill(-child.pid, "SIGKILL");
      assert.equal((await child.status).signal, "SIGKILL");
    });

    await t.step("the rerun resumes and ends as the uninterrupted run", async () => {
      const r = await run(config, cut);
      assert.equal(r.status, "done", r.log);
      assert.deepEqual(statuses(r), ["skip", "done"]);
      assert.deepEqual(await tokenizerResult(cut), await tokenizerResult(ref));
    });

    await t.step("a second rerun is skipped stage by stage", async () => {
      const start = performance.now();
      const r = await run(config, cut);
      const seconds = (performance.now() - start) / 1000;
      assert.deepEqual(statuses(r), ["skip", "skip"], r.log);
      assert.ok(seconds < 10, `skipped rerun took ${seconds.toFixed(1)} s`);
    });

    await t.step("a changed setting reruns that stage and those after it only", async () => {
      // (stopped after its first step to save time: the stage ran again, replacing the old run)
      const r = await run(await tinyConfig({ lr: 1e-3, "stop-at": 1 }), cut);
      assert.deepEqual(statuses(r), ["skip", "stopped"], r.log);
      assert.match(r.log, /tokenizer: \S+ holds a run of other settings; replacing it \(--force\)/);
    });
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
