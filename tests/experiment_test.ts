// Runs with a seed list (`deno task experiment --seeds 0,1,2`, a config's "seeds"): the plan of
// every (arm, seed) run with its folders and each stage's --seed, one seed giving today's plan
// exactly, the seed list checked before anything runs, and a tiny real chain where adding a seed
// runs only that seed's steps.

import assert from "node:assert/strict";
import { join } from "node:path";
import { parseOptions } from "../lib/cli/args.ts";
import {
  chainSteps,
  type PipelineResult,
  type PipelineStep,
  prepareSteps,
  problemLines,
  runPipeline,
  seedPlan,
  seedPlanLines,
  toArgv,
} from "../lib/cli/pipeline.ts";
import {
  parseSeedList,
  type PipelineConfig,
  validateConfig,
  withSeeds,
  withSteps,
} from "../lib/cli/pipeline_config.ts";
import { evaluateCommand } from "../lib/stages/evaluate_options.ts";
import { checkChain, checkConfig, schemas, STAGES } from "../tasks/pipeline.ts";
import { experimentConfig, lambdaArms } from "../tasks/experiment.ts";
import { commandOutput } from "./stage_fixtures.ts";
import demoConfig from "../configs/demo.json" with { type: "json" };
import quickConfig from "../configs/demo-quick.json" with { type: "json" };

const REPO = new URL("..", import.meta.url).pathname;
const ALL = Object.keys(STAGES);
/** The arm stages and those before them: every step but the evaluation. */
const ARMS_ONLY = ALL.filter((s) => s !== "evaluate");

async function configError(raw: unknown): Promise<string> {
  try {
    validateConfig(raw, await schemas());
  } catch (error) {
    return (error as Error).message;
  }
  throw new Error("the config was accepted");
}

const byId = <S extends PipelineStep>(steps: S[]) =>
  Object.fromEntries(steps.map((s) => [s.id, s]));

Deno.test("2 λ × 3 seeds: per-seed folders and seeds, shared shards and perceptual network", async () => {
  const config: PipelineConfig = {
    seed: 0,
    seeds: [0, 1, 2],
    stages: { pretrain: { steps: 5 } },
    estimates: { "train-tokenizer": 10, evaluate: 100 },
  };
  const steps = chainSteps(config, "/e", ALL, lambdaArms([1, 0]));
  const arms = [
    "tokenizer-l1",
    "tokenizer-l0",
    "export-l1",
    "export-l0",
    "pretrain-l1",
    "pretrain-l0",
  ];
  // The base seed's arms in the run's folder itself, the others' in seed-<s>/, seed by seed.
  assert.deepEqual(steps.map((s) => s.id), [
    "shard",
    "perceptual",
    ...arms,
    ...arms.map((a) => `seed-1/${a}`),
    ...arms.map((a) => `seed-2/${a}`),
    "evaluate",
  ]);
  for (const step of steps) {
    assert.equal(step.args.out, join("/e", step.id));
    if (["shard", "perceptual", "evaluate"].includes(step.id)) {
      assert.equal(step.seed, undefined, `${step.id} is shared`);
      assert.equal(step.args.seed, 0, `${step.id} runs with the config's seed`);
    } else {
      const seed = step.id.startsWith("seed-") ? Number(step.id[5]) : 0;
      assert.equal(step.seed, seed, step.id);
      assert.equal(step.args.seed, seed, `${step.id} --seed`);
      assert.equal(step.keys?.seed, "config.seeds");
    }
  }
  const s = byId(steps);
  // Every seed's arms read the one shard folder and the one perceptual network …
  assert.equal(s["seed-2/tokenizer-l1"].args.shards, "/e/shard");
  assert.equal(s["seed-2/tokenizer-l1"].args["perceptual-dir"], "/e/perceptual");
  assert.equal(s["seed-2/tokenizer-l0"].args.perceptual, "none");
  // … and their own seed's folders.
  assert.equal(s["seed-1/export-l0"].args.tokenizer, "/e/seed-1/tokenizer-l0");
  assert.equal(s["seed-1/pretrain-l0"].args.tokenizer, "/e/seed-1/export-l0");
  assert.equal(s["seed-1/pretrain-l0"].args.steps, 5);
  // The estimates: one per step; evaluate's grows with the seeds it measures.
  assert.equal(s["seed-2/tokenizer-l0"].estimate, 10);
  assert.equal(s.evaluate.estimate, 300);
  assert.equal(s.shard.estimate, undefined);

  // One evaluation of every (arm, seed): the same label for a λ's runs, each run's seed.
  const runs = ["", "seed-1/", "seed-2/"].flatMap((f) => [`${f}X-l1`, `${f}X-l0`]);
  const folders = (name: string) => runs.map((r) => `/e/${r.replace("X", name)}`).join(",");
  assert.equal(s.evaluate.args.export, folders("export"));
  assert.equal(s.evaluate.args.pretrain, folders("pretrain"));
  assert.equal(s.evaluate.args.labels, "λ=1,λ=0,λ=1,λ=0,λ=1,λ=0");
  assert.equal(s.evaluate.args["arm-seeds"], "0,0,1,1,2,2");
  assert.equal(
    s.evaluate.args.curves,
    [
      "/e/perceptual",
      ...runs.flatMap((r) => ["tokenizer", "pretrain"].map((n) => `/e/${r.replace("X", n)}`)),
    ]
      .join(","),
  );
  // evaluate's command line takes --arm-seeds (its option; what it does with it is evaluate's).
  const parsed = parseOptions(evaluateCommand, toArgv(s.evaluate.args));
  assert.equal(parsed?.["arm-seeds"], "0,0,1,1,2,2");

  // The plan says what is shared and what runs per seed.
  const plan = seedPlan(steps)!;
  assert.deepEqual(plan.seeds, [0, 1, 2]);
  assert.deepEqual(plan.shared, ["shard", "perceptual", "evaluate"]);
  assert.deepEqual(plan.perSeed.map((p) => [p.seed, p.folder, p.steps]), [
    [0, "", arms],
    [1, "seed-1", arms],
    [2, "seed-2", arms],
  ]);
  assert.deepEqual(seedPlanLines(plan), [
    "seeds 0, 1, 2: shared by every seed: shard, perceptual, evaluate",
    `seed 0 (in <out>): ${arms.join(", ")}`,
    `seed 1 (in <out>/seed-1): ${arms.join(", ")}`,
    `seed 2 (in <out>/seed-2): ${arms.join(", ")}`,
  ]);

  // Each stage's own check passes every arm step, sandboxed to its seed's folders.
  const prepared = byId(
    await prepareSteps(chainSteps(config, "/e", ARMS_ONLY, lambdaArms([1, 0])), STAGES),
  );
  assert.deepEqual(prepared["seed-1/pretrain-l1"].argv, [
    "--seed",
    "1",
    "--steps",
    "5",
    "--shards",
    "/e/shard",
    "--tokenizer",
    "/e/seed-1/export-l1",
    "--out",
    "/e/seed-1/pretrain-l1",
  ]);
  assert.deepEqual(prepared["seed-1/export-l1"].access.write, ["/e/seed-1/export-l1"]);
  assert.ok(prepared["seed-2/tokenizer-l1"].access.read.includes("/e/perceptual"));
  assert.ok(!prepared["seed-2/tokenizer-l1"].access.read.includes("/e/tokenizer-l1"));
});

Deno.test("one seed is today's plan exactly: folders, arguments, estimates", async () => {
  for (const [raw, file] of [[demoConfig, "demo"], [quickConfig, "demo-quick"]] as const) {
    const config = await checkConfig(raw, `configs/${file}.json`);
    for (const arms of [undefined, lambdaArms([0, 1])]) {
      const today = chainSteps(config, "/r", ALL, arms);
      assert.ok(today.every((s) => s.seed === undefined), "no seed list: no per-seed steps");
      assert.equal(seedPlan(today), null);
      // The config's own seed listed alone: the same steps (only marked as that seed's).
      const listed = chainSteps({ ...config, seeds: [config.seed!] }, "/r", ALL, arms);
      const plain = (steps: PipelineStep[]) =>
        steps.map(({ id, args, estimate }) => ({ id, args, estimate }));
      assert.deepEqual(plain(listed), plain(today), file);
      assert.ok(!("arm-seeds" in today.at(-1)!.args));
    }
  }
  const today = byId(chainSteps(await checkConfig(demoConfig, "demo"), "/r", ALL));
  assert.deepEqual(Object.keys(today), [
    "shard",
    "perceptual",
    "tokenizer",
    "export",
    "pretrain",
    "evaluate",
  ]);
  assert.equal(today.evaluate.args.export, "/r/export");
  assert.equal(today.evaluate.estimate, demoConfig.estimates.evaluate);
  // One seed other than the config's: its arms in seed-<s>/, evaluate told their seed.
  const other = chainSteps(
    { seed: 0, seeds: [5], stages: {}, estimates: {} },
    "/r",
    ALL,
    lambdaArms([1]),
  );
  assert.deepEqual(other.map((s) => s.id), [
    "shard",
    "perceptual",
    "seed-5/tokenizer-l1",
    "seed-5/export-l1",
    "seed-5/pretrain-l1",
    "evaluate",
  ]);
  assert.equal(other.at(-1)!.args["arm-seeds"], "5");
  assert.equal(other.at(-1)!.args.labels, undefined);
});

Deno.test("seed lists are checked before anything runs, each problem naming its key", async () => {
  assert.deepEqual(parseSeedList("0, 1,2"), [0, 1, 2]);
  assert.deepEqual(parseSeedList("7"), [7]);
  assert.throws(() => parseSeedList(""), /^UsageError: --seeds: no seed listed \(e\.g\. 0,1,2\)$/);
  assert.throws(
    () => parseSeedList("0,-1,1.5,x,,0"),
    new RegExp(
      '^UsageError: --seeds: entry 2 \\("-1"\\) is not an integer ≥ 0; entry 3 \\("1\\.5"\\) is ' +
        'not an integer ≥ 0; entry 4 \\("x"\\) is not an integer ≥ 0; entry 5 \\(""\\) is not an ' +
        "integer ≥ 0; seed 0 is listed twice$",
    ),
  );
  assert.equal(
    await configError({ seeds: [0, 1, 1] }),
    "peco: pipeline: config.seeds: seed 1 is listed twice",
  );
  assert.equal(
    await configError({ seeds: [-1, 2.5, "3"] }),
    "peco: pipeline: config.seeds: entry 1 (-1) is not an integer ≥ 0; entry 2 (2.5) is not an " +
      'integer ≥ 0; entry 3 ("3") is not an integer ≥ 0',
  );
  assert.equal(
    await configError({ seeds: [] }),
    "peco: pipeline: config.seeds: no seed listed (e.g. 0,1,2)",
  );
  assert.match(
    await configError({ seeds: 3 }),
    /^peco: pipeline: config\.seeds: expected an array of seeds/,
  );
  // A per-seed stage cannot also take a seed of its own; a shared one can.
  assert.equal(
    await configError({ seeds: [0, 1], stages: { pretrain: { seed: 4 } } }),
    "peco: pipeline: config.stages.pretrain.seed: pretrain runs once per seed of the seed list, " +
      "each run with its own --seed; remove this seed",
  );
  validateConfig({ seeds: [0, 1], stages: { shard: { seed: 4 } } }, await schemas());
  const sectioned = await checkConfig({ stages: { "train-tokenizer": { seed: 4 } } }, "mine.json");
  assert.throws(
    () => withSeeds(sectioned, [0, 1], "mine.json"),
    /^Error: peco: pipeline: mine\.json: config\.stages\.train-tokenizer\.seed: .* remove this seed \(or leave out --seeds\)$/,
  );
});

Deno.test("--perceptual-steps sets train-perceptual's steps, its estimate scaled", async () => {
  const config = await checkConfig(demoConfig, "configs/demo.json");
  const longer = experimentConfig(config, { "perceptual-steps": 600, seeds: "0,1" }, "demo");
  assert.equal(longer.stages["train-perceptual"].steps, 600);
  assert.equal(longer.estimates["train-perceptual"], demoConfig.estimates["train-perceptual"] * 5);
  assert.deepEqual(longer.seeds, [0, 1]);
  assert.equal(config.stages["train-perceptual"].steps, 120, "the config itself is unchanged");
  // From the stage's default when the config leaves the steps out.
  const bare = withSteps(
    { stages: {}, estimates: { "train-perceptual": 100 } },
    "train-perceptual",
    240,
    120,
  );
  assert.deepEqual(bare.stages, { "train-perceptual": { steps: 240 } });
  assert.equal(bare.estimates["train-perceptual"], 200);
  const step = chainSteps(longer, "/r", ALL).find((s) => s.stage === "train-perceptual")!;
  assert.equal(step.args.steps, 600);
});

// ---- the command line ----------------------------------------------------------------------------

function experiment(...args: string[]) {
  return commandOutput(
    new Deno.Command("deno", {
      args: ["run", "--allow-read", "--allow-run=deno", "tasks/experiment.ts", ...args],
      cwd: REPO,
      stdout: "piped",
      stderr: "piped",
    }),
  );
}

async function exists(path: string): Promise<boolean> {
  return await Deno.stat(path).then(() => true, () => false);
}

Deno.test("deno task experiment: a bad seed list or budget stops it at once, nothing written", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "peco-experiment-" });
  try {
    const out = join(tmp, "run");
    for (
      const [args, line] of [
        [["--seeds", "0,1,1"], "deno task experiment: --seeds: seed 1 is listed twice"],
        [["--seeds=-2"], 'deno task experiment: --seeds: entry 1 ("-2") is not an integer ≥ 0'],
        [
          ["--perceptual-steps", "0"],
          "deno task experiment: --perceptual-steps must be an integer ≥ 1, got 0",
        ],
        [
          ["--perceptual-steps", "600", "--lambdas", "0"],
          "deno task experiment: --perceptual-steps: no arm uses the builtin perceptual network " +
          "(λ = 0 trains without one; configs/demo-quick.json's train-tokenizer perceptual is " +
          "builtin)",
        ],
      ]
    ) {
      const r = await experiment(...args, "--quick", "--out", out);
      assert.equal(r.code, 2, r.text);
      assert.equal(r.text.trim(), line);
    }
    const file = join(tmp, "mine.json");
    await Deno.writeTextFile(file, JSON.stringify({ stages: { pretrain: { seed: 1 } } }));
    const r = await experiment("--config", file, "--seeds", "0,1", "--out", out);
    assert.equal(r.code, 1, r.text);
    assert.equal(
      r.text.trim(),
      `peco: pipeline: ${file}: config.stages.pretrain.seed: pretrain runs once per seed of the ` +
        "seed list, each run with its own --seed; remove this seed (or leave out --seeds)",
    );
    assert.ok(!(await exists(out)), "no run folder");
    // --dry-run prints the per-seed plan, then each step's command; it runs nothing.
    const dry = await experiment(
      "--quick",
      "--lambdas",
      "1",
      "--seeds",
      "5",
      "--out",
      out,
      "--dry-run",
    );
    assert.equal(dry.code, 0, dry.text);
    const lines = dry.text.trim().split("\n");
    assert.deepEqual(lines.slice(0, 2), [
      "# seeds 5: shared by every seed: shard, perceptual, evaluate",
      "# seed 5 (in <out>/seed-5): tokenizer-l1, export-l1, pretrain-l1",
    ]);
    assert.ok(
      lines.some((l) => l.includes(`--seed 5 `) && l.includes(`--out ${out}/seed-5/pretrain-l1`)),
    );
    assert.ok(lines.some((l) => l.includes("--arm-seeds 5 ")));
    assert.ok(!(await exists(out)), "no run folder");
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("3 seeds: the whole up-front check passes; --dry-run prints each seed's plan", async () => {
  // The chain's check of every step (each stage's own check, then the rules between a stage and
  // what earlier stages imply: lib/stages/chain_checks.ts) over the demos' budgets with 3 seeds.
  for (const [raw, file] of [[demoConfig, "demo"], [quickConfig, "demo-quick"]] as const) {
    const config = withSeeds(await checkConfig(raw, `configs/${file}.json`), [0, 1, 2], file);
    const { steps, problems } = await checkChain({ config, out: "/x", arms: lambdaArms([0, 1]) });
    assert.deepEqual(problemLines(problems), [], file);
    assert.equal(steps.length, 2 + 3 * 6 + 1, file);
    const evaluate = steps.at(-1)!;
    assert.equal(evaluate.options["arm-seeds"], "0,0,1,1,2,2");
    assert.ok(evaluate.access.read.includes("/x/seed-2/pretrain-l1"), "evaluate reads seed 2");
    assert.deepEqual(evaluate.access.write, ["/x/evaluate"]);
  }
  const out = await Deno.makeTempDir({ prefix: "peco-dry-" });
  try {
    const dry = await experiment("--quick", "--seeds", "0,1,2", "--out", out, "--dry-run");
    assert.equal(dry.code, 0, dry.text);
    const lines = dry.text.trim().split("\n");
    const arms = "tokenizer-l0, tokenizer-l1, export-l0, export-l1, pretrain-l0, pretrain-l1";
    assert.deepEqual(lines.slice(0, 4), [
      "# seeds 0, 1, 2: shared by every seed: shard, perceptual, evaluate",
      `# seed 0 (in <out>): ${arms}`,
      `# seed 1 (in <out>/seed-1): ${arms}`,
      `# seed 2 (in <out>/seed-2): ${arms}`,
    ]);
    const commands = lines.filter((l) => l.startsWith("deno run "));
    assert.equal(commands.length, 21);
    for (const seed of [1, 2]) {
      assert.ok(
        commands.some((l) =>
          l.includes(`--seed ${seed} `) && l.endsWith(`--out ${out}/seed-${seed}/pretrain-l1`)
        ),
        `seed ${seed}'s pretraining`,
      );
    }
    assert.ok(commands.at(-1)!.includes("--arm-seeds 0,0,1,1,2,2 "));
    assert.deepEqual([...Deno.readDirSync(out)], [], "nothing written");
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});

// ---- a tiny chain through the real stages -------------------------------------------------------

/** Tiny MNIST (16×16) → a tokenizer without the perceptual network: the cheapest real arm. */
function tinyConfig(seeds?: number[]) {
  return checkConfig({
    seed: 3,
    ...(seeds ? { seeds } : {}),
    stages: {
      shard: { input: "mnist", limit: 24, size: 16 },
      "train-tokenizer": {
        perceptual: "none",
        steps: 2,
        batch: 4,
        "log-every": 1,
        "ckpt-every": 1,
        "eval-images": 8,
        "psnr-images": 4,
      },
    },
    estimates: {},
  }, "tiny.json");
}

async function run(config: PipelineConfig, out: string) {
  const events: Record<string, unknown>[] = [];
  const steps = await prepareSteps(chainSteps(config, out, ["shard", "train-tokenizer"]), STAGES);
  const result: PipelineResult = await runPipeline(steps, {
    json: true,
    write: { out: (l) => events.push(JSON.parse(l)), err: () => {}, errIsTerminal: false },
  });
  const status = Object.fromEntries(result.steps.map((s) => [s.id, s.status]));
  return { result, status, events };
}

async function tokenizerManifest(dir: string) {
  return JSON.parse(await Deno.readTextFile(join(dir, "manifest.json")));
}

Deno.test("adding seeds to a finished run runs only the new seeds' steps", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "peco-seeds-" });
  try {
    const out = join(tmp, "run");
    // A run without a seed list (seed 3) …
    const first = await run(await tinyConfig(), out);
    assert.deepEqual(first.status, { shard: "done", tokenizer: "done" });
    assert.ok(!first.events.some((e) => e.event === "plan"));
    // … then seeds 3 and 4: seed 3's tokenizer is that run's, up to date; seed 4's runs.
    const second = await run(await tinyConfig([3, 4]), out);
    assert.equal(second.result.status, "done");
    assert.deepEqual(second.status, {
      shard: "skip",
      tokenizer: "skip",
      "seed-4/tokenizer": "done",
    });
    const plan = second.events.find((e) => e.event === "plan")!;
    assert.deepEqual(plan.shared, ["shard"]);
    assert.deepEqual(plan.perSeed, [
      { seed: 3, folder: "", steps: ["tokenizer"] },
      { seed: 4, folder: "seed-4", steps: ["tokenizer"] },
    ]);
    const starts = second.events.filter((e) => e.event === "start").map((e) => [e.step, e.seed]);
    assert.deepEqual(starts, [["shard", undefined], ["tokenizer", 3], ["seed-4/tokenizer", 4]]);
    const [three, four] = await Promise.all([
      tokenizerManifest(join(out, "tokenizer")),
      tokenizerManifest(join(out, "seed-4/tokenizer")),
    ]);
    assert.equal(three.config.seed, 3);
    assert.equal(four.config.seed, 4);
    assert.notEqual(four.summary.loss, three.summary.loss, "another seed, another run");
    // A third seed runs only its own step.
    const third = await run(await tinyConfig([3, 4, 5]), out);
    assert.deepEqual(third.status, {
      shard: "skip",
      tokenizer: "skip",
      "seed-4/tokenizer": "skip",
      "seed-5/tokenizer": "done",
    });
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
