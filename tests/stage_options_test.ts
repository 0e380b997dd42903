// The up-front check of a pipeline config: every stage's option check (the very function the
// stage runs at its start) and the rules between a stage's options and its inputs, applied to
// what the earlier stages' options imply, all reported before any stage runs.

import assert from "node:assert/strict";
import { join } from "node:path";
import { parseOptions, UsageError } from "../lib/cli/args.ts";
import { chainSteps, problemLines, toArgv } from "../lib/cli/pipeline.ts";
import type { OptionValue, PipelineConfig } from "../lib/cli/pipeline_config.ts";
import { checkShardOptions } from "../lib/stages/shard_options.ts";
import { checkTrainPerceptualOptions } from "../lib/stages/train_perceptual_options.ts";
import { checkTrainTokenizerOptions } from "../lib/stages/train_tokenizer_options.ts";
import { checkExportCodebookOptions } from "../lib/stages/export_codebook_options.ts";
import { checkPretrainOptions } from "../lib/stages/pretrain_options.ts";
import { checkEvaluateOptions } from "../lib/stages/evaluate_options.ts";
import { checkChain, STAGES } from "../tasks/pipeline.ts";
import { lambdaArms } from "../tasks/experiment.ts";
import { mnistShards } from "./stage_fixtures.ts";

const REPO = new URL("..", import.meta.url).pathname;
const quiet = { log: () => {} };

const CHECKS: Record<string, unknown> = {
  "shard": checkShardOptions,
  "train-perceptual": checkTrainPerceptualOptions,
  "train-tokenizer": checkTrainTokenizerOptions,
  "export-codebook": checkExportCodebookOptions,
  "pretrain": checkPretrainOptions,
  "evaluate": checkEvaluateOptions,
};

/** The MNIST chain with small sections: valid as it is. */
function config(stages: Record<string, Record<string, OptionValue>> = {}): PipelineConfig {
  return { stages: { shard: { input: "mnist", limit: 200 }, ...stages }, estimates: {} };
}

async function lines(
  c: PipelineConfig,
  out = "/tmp/peco-unused",
  arms?: ReturnType<typeof lambdaArms>,
) {
  return problemLines((await checkChain({ config: c, out, arms })).problems);
}

async function exists(path: string): Promise<boolean> {
  return await Deno.stat(path).then(() => true, () => false);
}

Deno.test("the pipeline checks each stage with the stage's own check function", async () => {
  for (const [stage, check] of Object.entries(CHECKS)) {
    assert.equal((await STAGES[stage].load()).check, check, stage);
  }
  assert.deepEqual(Object.keys(CHECKS), Object.keys(STAGES));
  // The demo's and the experiment's configs pass, with nothing deferred (MNIST: counts known).
  for (const file of ["demo", "demo-quick"]) {
    const raw = JSON.parse(await Deno.readTextFile(join(REPO, "configs", `${file}.json`)));
    const checked = await checkChain({ config: { estimates: {}, ...raw }, out: "/tmp/x" });
    assert.deepEqual(problemLines(checked.problems), [], file);
    assert.deepEqual(checked.deferred, [], file);
    const arms = lambdaArms([0, 1]);
    assert.deepEqual(await lines({ estimates: {}, ...raw }, "/tmp/x", arms), [], file);
  }
});

/**
 * One rule per row: a stage section breaking it, the config key and the message. Each row is
 * checked twice: the pipeline's up-front check lists it, and the stage started alone with the
 * same options refuses to start with the same message, before writing anything.
 */
const RULES: [string, Record<string, OptionValue>, string, string][] = [
  [
    "shard",
    { input: "mnist", "val-fraction": 0.2 },
    "val-fraction",
    "the input has its own val split; --val-fraction applies only to inputs without one",
  ],
  ["shard", { channels: 2 }, "channels", "--channels must be 1 or 3, got 2"],
  [
    "train-perceptual",
    { "log-every": 10, "ckpt-every": 25 },
    "ckpt-every",
    "--ckpt-every 25 must be a multiple of --log-every 10 (a checkpoint is written only after " +
    "its losses were read and checked)",
  ],
  ["train-perceptual", { batch: 1 }, "batch", "--batch must be ≥ 2 (contrastive), got 1"],
  [
    "train-tokenizer",
    { "ckpt-every": 30 },
    "ckpt-every",
    "--ckpt-every 30 must be a multiple of --log-every 60 (a checkpoint is written only after " +
    "its losses were read and checked)",
  ],
  [
    "train-tokenizer",
    { perceptual: "vgg16" },
    "perceptual",
    "--perceptual vgg16 needs --perceptual-weights FILE",
  ],
  [
    "train-tokenizer",
    { "perceptual-weights": "w.safetensors", perceptual: "none" },
    "perceptual-weights",
    "--perceptual-weights is only for --perceptual vgg16|resnet50|vit-b",
  ],
  [
    "train-tokenizer",
    { "perceptual-prefix": "module.base_encoder.", perceptual: "none" },
    "perceptual-prefix",
    "--perceptual-prefix is only for --perceptual vgg16|resnet50|vit-b",
  ],
  [
    "export-codebook",
    { "patches-per-code": 0 },
    "patches-per-code",
    "--patches-per-code must be an integer ≥ 1, got 0",
  ],
  [
    "pretrain",
    { "log-every": 20, "ckpt-every": 50 },
    "ckpt-every",
    "--ckpt-every 50 must be a multiple of --log-every 20 (a checkpoint is written only after " +
    "its losses were read and checked)",
  ],
  [
    "pretrain",
    { "mask-ratio": 0.4, "mask-patches": 10 },
    "mask-ratio",
    "give --mask-ratio or --mask-patches, not both",
  ],
  [
    "pretrain",
    { tokens: true, augment: "crop" },
    "tokens",
    "--tokens holds the codes of the stored images only: it needs --augment none (got crop)",
  ],
  [
    "evaluate",
    { "finetune-steps": 10, "finetune-warmup": 15 },
    "finetune-warmup",
    "--finetune-warmup 15 must be below --finetune-steps 10",
  ],
  [
    "evaluate",
    { "finetune-ckpt-every": 25 },
    "finetune-ckpt-every",
    "--finetune-ckpt-every must be a multiple of 10 (the log interval), got 25",
  ],
  [
    "evaluate",
    { "arm-seeds": "0,1" },
    "arm-seeds",
    "--arm-seeds lists 2 seed(s) but --export lists 1 arm(s)",
  ],
  [
    "evaluate",
    { "scratch-layer-decay": 0 },
    "scratch-layer-decay",
    "--scratch-layer-decay must be in (0, 1], got 0",
  ],
  [
    "evaluate",
    { "scratch-layer-decay": 1.5 },
    "scratch-layer-decay",
    "--scratch-layer-decay must be in (0, 1], got 1.5",
  ],
  [
    "evaluate",
    { "mask-ratios": "0.5,1.5" },
    "mask-ratios",
    '--mask-ratios must be numbers in (0, 1), got "0.5,1.5"',
  ],
  ["evaluate", { "stop-at": 0 }, "stop-at", "--stop-at must be an integer ≥ 1, got 0"],
  ["evaluate", { "stop-at": 2.5 }, "stop-at", "--stop-at must be an integer ≥ 1, got 2.5"],
];

for (const stage of Object.keys(CHECKS)) {
  Deno.test(`${stage}: every rule it enforces at its start is reported by the pipeline first`, async (t) => {
    const tmp = await Deno.makeTempDir({ prefix: "peco-options-" });
    const rules = RULES.filter(([s]) => s === stage);
    assert.ok(rules.length > 0);
    for (const [, section, key, message] of rules) {
      await t.step(Object.keys(section).join(" + "), async () => {
        const c = config({ [stage]: section });
        const out = join(tmp, key);
        assert.ok(
          (await lines(c, out)).includes(`config.stages.${stage}.${key}: ${message}`),
          `${stage}.${key} listed`,
        );
        // The stage started alone with the step's options (the wiring included) refuses at once.
        const step = chainSteps(c, out, Object.keys(STAGES)).find((s) => s.stage === stage)!;
        const module = await STAGES[stage].load();
        const options = parseOptions(module.command, toArgv(step.args));
        await assert.rejects(
          module.run(options, quiet),
          (error) => error instanceof UsageError && error.message.includes(message),
        );
        assert.ok(!(await exists(step.args.out as string)), "no folder written");
      });
    }
    await Deno.remove(tmp, { recursive: true });
  });
}

Deno.test("input rules are checked against what the earlier stages' options imply", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "peco-options-" });
  // 30×30 MNIST images: not divisible by the mnist tokenizer's factor 4; 20 training images: fewer
  // than the default batches of train-perceptual (64), pretrain (32) and evaluate (32).
  const c = config({ shard: { input: "mnist", limit: 20, size: 30 } });
  const implied = "as the shard options imply: 30×30 images, 1 channel, 20 training images";
  const batchRule = "the train split has 20 images, fewer than --batch 64";
  const gridRule = 'images are 30×30; the "mnist" preset needs square images whose side is ' +
    "divisible by its downsample factor 4";
  assert.deepEqual(await lines(c), [
    `config.stages.train-perceptual.batch (default): ${batchRule} (${implied})`,
    `config.stages.train-tokenizer.preset (default): ${gridRule} (${implied})`,
    "config.stages.pretrain.batch (default): --batch 32 (the preset's) is more than the 20 " +
    `training images: no batch can be drawn (${implied})`,
    "config.stages.evaluate.finetune-batch (default): --finetune-batch 32 is more than the 20 " +
    `training images: no batch can be drawn (${implied})`,
    "config.stages.evaluate.classifier-batch (default): --classifier-batch 32 is more than the " +
    `20 training images: no batch can be drawn (${implied})`,
  ]);
  // The stages refuse the same real shards with the same rules at their start.
  const shards = await mnistShards(tmp, "shards", 20, ["--size", "30"]);
  const perceptual = await STAGES["train-perceptual"].load();
  await assert.rejects(
    perceptual.run(
      parseOptions(perceptual.command, ["--shards", shards, "--out", join(tmp, "p")]),
      quiet,
    ),
    new RegExp(`^Error: peco: train-perceptual: --shards ${shards}: ${batchRule}$`),
  );
  const tokenizer = await STAGES["train-tokenizer"].load();
  await assert.rejects(
    tokenizer.run(
      parseOptions(tokenizer.command, ["--shards", shards, "--out", join(tmp, "t")]),
      quiet,
    ),
    (error) =>
      (error as Error).message === `peco: train-tokenizer: --shards ${shards}: ${gridRule}`,
  );
  assert.ok(!(await exists(join(tmp, "p"))) && !(await exists(join(tmp, "t"))));

  // A perceptual network's input size; its weights file, which exists before any stage runs.
  const weights = join(tmp, "vit.safetensors");
  const vit = config({ "train-tokenizer": { perceptual: "vit-b", "perceptual-weights": weights } });
  assert.deepEqual(await lines(vit), [
    `config.stages.train-tokenizer.perceptual-weights: --perceptual-weights ${weights}: cannot ` +
    `read (No such file or directory (os error 2): stat '${weights}')`,
    "config.stages.train-tokenizer.perceptual: --perceptual vit-b needs image sides that are " +
    "multiples of its 16-pixel patch, the shards hold 28×28 (as the shard options imply: 28×28 " +
    "images, 1 channel, 200 training images)",
  ]);
  // The ViT's patch grid against the tokenizer's token grid, and the mask budget against it.
  assert.deepEqual(
    await lines(config({ pretrain: { "patch-size": 7 }, "train-tokenizer": {} })),
    [
      "config.stages.pretrain.patch-size: the tokenizer's token grid 7×7 ≠ the ViT's patch grid " +
      "4×4 (image 28, patch 7): choose --image-size / --patch-size so that image/patch = 7 (as " +
      "the shard options imply: 28×28 images, 1 channel, 200 training images; the mnist " +
      "tokenizer preset makes 7×7 tokens)",
    ],
  );
  const [mask] = await lines(config({ pretrain: { "mask-patches": 49 } }));
  assert.match(
    mask,
    /^config\.stages\.pretrain\.mask-patches: --mask-patches must be an integer in \[1, 48\] for a 7×7 grid, got 49/,
  );
  // Token shards cut by export-codebook's --limit hold too few records for pretrain --tokens.
  const [tokens] = await lines(
    config({ "export-codebook": { limit: 50 }, pretrain: { tokens: true, augment: "none" } }),
  );
  assert.match(
    tokens,
    /^config\.stages\.pretrain\.tokens: the token shards' split "train" holds 50 records, the run needs the first 200 /,
  );
  // What the options do not imply is deferred to the stage's start, and said so.
  const folder = await checkChain({ config: config({ shard: { input: tmp } }), out: "/tmp/x" });
  assert.deepEqual(problemLines(folder.problems), []);
  assert.ok(
    folder.deferred.some((d) => d.startsWith("perceptual: --batch vs the training images")),
  );
  const idx = await checkChain({ config: config({ shard: { input: "idx:a.gz" } }), out: "/tmp/x" });
  assert.ok(idx.deferred.some((d) => d.startsWith("tokenizer: the image size vs the preset's")));
  assert.ok(
    folder.deferred.some((d) => d.startsWith("evaluate: labelled shards with ≥ 2 classes")),
  );
  // An IDX input without its labels file makes unlabelled shards: nothing to evaluate.
  assert.deepEqual(problemLines(idx.problems), [
    "config.stages.evaluate: the shards are not labelled with ≥ 2 classes: nothing to classify " +
    "(the shard stage's --input idx:a.gz)",
  ]);
  await Deno.remove(tmp, { recursive: true });
});

Deno.test("an invalid last stage fails the pipeline at once: every problem, no folder", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "peco-options-" });
  const file = join(tmp, "mine.json");
  const out = join(tmp, "run");
  await Deno.writeTextFile(
    file,
    JSON.stringify({
      stages: {
        shard: { input: "mnist", limit: 200 },
        "train-perceptual": { "log-every": 10, "ckpt-every": 25 },
        evaluate: { "finetune-steps": 10, "finetune-warmup": 15 },
      },
    }),
  );
  const run = (...extra: string[]) =>
    new Deno.Command("deno", {
      args: [
        "run",
        "--allow-read",
        "--allow-run=deno",
        "tasks/pipeline.ts",
        "--config",
        file,
        "--out",
        out,
        ...extra,
      ],
      cwd: REPO,
      stdout: "piped",
      stderr: "piped",
    }).output();
  const started = performance.now();
  const result = await run();
  const seconds = (performance.now() - started) / 1000;
  const stderr = new TextDecoder().decode(result.stderr);
  assert.equal(result.code, 1, stderr);
  assert.ok(seconds < 5, `failed after ${seconds.toFixed(1)} s`);
  assert.deepEqual(stderr.trim().split("\n"), [
    `peco: pipeline: ${file}: config.stages.train-perceptual.ckpt-every: --ckpt-every 25 must be ` +
    "a multiple of --log-every 10 (a checkpoint is written only after its losses were read and " +
    "checked)",
    `peco: pipeline: ${file}: config.stages.evaluate.finetune-warmup: --finetune-warmup 15 must ` +
    "be below --finetune-steps 10",
    `peco: pipeline: ${file}: 2 problems in the config (listed above); no stage was run`,
  ]);
  assert.ok(!(await exists(out)), "no stage folder");
  // --dry-run lists the same problems; a short fine-tuning alone is fine (its warmup follows).
  const dry = await run("--dry-run");
  assert.equal(dry.code, 1);
  assert.equal(new TextDecoder().decode(dry.stderr), stderr);
  assert.ok(!(await exists(out)), "no stage folder");
  await Deno.remove(tmp, { recursive: true });
});
