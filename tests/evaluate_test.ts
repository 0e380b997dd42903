// The evaluate stage end to end on tiny data: a few dozen MNIST images, a tiny untrained tokenizer
// exported through the real writers, a real 2-step pretraining of a 2-block ViT on its codes, then
// evaluate with tiny budgets over two arms. Checks report.json's keys and values, the figures,
// skip on rerun, and that bad inputs are refused in one line before any work. Plus the report and
// figure helpers on their own.

import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { mnistShards, removeAfterLastTest, tinyExport } from "./stage_fixtures.ts";
import "./util.ts";
import { parseOptions, UsageError } from "../lib/cli/args.ts";
import { beginStage, finishStage } from "../lib/cli/stage.ts";
import { greyPatches, imageGrid } from "../lib/report/images.ts";
import { markdownTable, toMarkdown } from "../lib/report/document.ts";
import { measurement, reportProblems, REQUIRED_REPORT_KEYS } from "../lib/io/report.ts";
import { pretrainCommand, runPretrain } from "../tasks/pretrain.ts";
import { evaluateAccess, evaluateCommand, runEvaluate } from "../tasks/evaluate.ts";
import { armPaths } from "../lib/stages/evaluate_options.ts";
import { runBrowserCheck } from "../tools/browser_check.ts";

const root = await Deno.makeTempDir({ prefix: "peco-evaluate-" });
const quiet = { log: () => {} };

const shards = (name: string, limit: number) => mnistShards(root, name, limit);

const K = 16;
const shardDir = await shards("shard", 40);
const exportDir = await tinyExport(root, "export", shardDir, K);
const pretrainDir = join(root, "pretrain");
await runPretrain(
  parseOptions(pretrainCommand, [
    ...["--shards", shardDir, "--tokenizer", exportDir, "--out", pretrainDir, "--dim", "16"],
    ...["--depth", "2", "--heads", "2", "--limit", "8", "--batch", "4", "--steps", "2"],
    ...["--log-every", "1", "--ckpt-every", "2", "--eval-images", "5", "--quiet"],
  ])!,
  quiet,
);

function options(out: string, flags: string[] = []) {
  return parseOptions(evaluateCommand, [
    ...["--shards", shardDir, "--export", `${exportDir},${exportDir}`, "--pretrain", pretrainDir],
    ...["--labels", "λ=1,copy", "--curves", `${exportDir},${shardDir}`, "--out", out],
    ...["--finetune-steps", "3", "--finetune-batch", "4", "--finetune-warmup", "1"],
    ...["--probe-train", "12", "--probe-epochs", "2", "--probe-batch", "8", "--eval-images", "7"],
    ...["--classifier-steps", "2", "--classifier-batch", "4", "--classifier-width", "4"],
    ...["--figure-images", "2"],
    ...["--mask-ratios", "0.2,0.6", "--batch", "8", "--quiet"],
    ...flags,
  ])!;
}

async function exists(path: string): Promise<boolean> {
  return await Deno.stat(path).then(() => true, () => false);
}

Deno.test("evaluate writes report.json with every key finite, report.md, report.html and the figures", async () => {
  const out = join(root, "evaluate");
  const lines: string[] = [];
  const result = await runEvaluate(options(out), { log: (l) => lines.push(l) });
  assert.equal(result.status, "done");
  const report = JSON.parse(await Deno.readTextFile(join(out, "report.json")));
  assert.deepEqual(reportProblems(report), []);
  for (const key of REQUIRED_REPORT_KEYS) {
    const m = report[key];
    assert.ok(Number.isFinite(m.value), `${key} = ${m.value}`);
    assert.ok(m.split === "val" || m.split === "train", `${key} split ${m.split}`);
    assert.match(m.run.sha256, /^[0-9a-f]{64}$/, key);
    assert.ok([exportDir, pretrainDir].includes(m.run.dir), `${key} run ${m.run.dir}`);
  }
  for (const key of ["codewords.linear_probe_acc", "finetune.pretrained_acc", "linear_probe.acc"]) {
    assert.ok(report[key].value >= 0 && report[key].value <= 1, `${key} is an accuracy`);
  }
  assert.ok(report["tokenizer.psnr"].value > 0 && report["tokenizer.ssim"].value <= 1);
  assert.equal(report["finetune.pretrained_acc"].run.dir, pretrainDir);
  assert.equal(report["tokenizer.usage"].run.dir, exportDir);
  // Two arms: the second has the tokenizer measures only; every arm lists its figures.
  assert.equal(report.arms.length, 2);
  assert.deepEqual(report.arms.map((a: { label: string }) => a.label), ["λ=1", "copy"]);
  assert.ok(Number.isFinite(report.arms[1].metrics["codewords.linear_probe_acc"].value));
  assert.equal(report.arms[1].metrics["finetune.pretrained_acc"], undefined);
  // Tokenizers that record no λ: only the claim of pretraining over scratch, the others noted.
  assert.deepEqual(report.claims.map((c: { name: string }) => c.name), [
    "pretraining beats scratch",
  ]);
  assert.equal(report.claim_notes.length, 3);
  const curves = report.figures.curves as { stage: string; files: string[] }[];
  const figures = [
    report.arms[0].figures.masked_prediction,
    report.arms[0].figures.code_histogram,
    report.arms[1].figures.code_histogram,
    ...report.figures.finetune,
    ...curves.flatMap((c) => c.files),
  ];
  // Pretrain's charts: losses and fractions (its top_code id is on neither).
  assert.equal(figures.length, 7, `figures ${figures}`);
  for (const f of figures) assert.ok(await exists(join(out, f)), `${f} exists`);
  // The shard folder has no metrics: listed, not charted; the tokenizer and pretrain runs charted.
  assert.deepEqual(curves.map((c) => [c.stage, c.files.length]), [
    ["export-codebook", 0],
    ["shard", 0],
    ["pretrain", 2],
  ]);
  const md = await Deno.readTextFile(join(out, "report.md"));
  const html = await Deno.readTextFile(join(out, "report.html"));
  for (const heading of ["Codeword semantics (paper Table 4)", "Fine-tuning (paper Table 1)"]) {
    assert.ok(md.includes(heading), heading);
    assert.ok(html.includes(`<h2>${heading}</h2>`), heading);
  }
  assert.ok(md.includes("| λ=1 |") && md.includes("| ViT from scratch |"));
  assert.ok(html.includes('<td class="l">ViT from scratch</td>'));
  // Every chart is linked from report.md and inline in report.html; nothing is fetched by it.
  const svgs = figures.filter((f) => f.endsWith(".svg"));
  for (const f of svgs) assert.ok(md.includes(`(${f})`), `report.md links ${f}`);
  const inline = [...html.matchAll(/<figure class="chart"[^>]*><svg /g)].length;
  const linked = [...md.matchAll(/\]\(figures\/[^)]*\.svg\)/g)].length;
  assert.equal(inline, linked);
  assert.ok(inline >= svgs.length + 5, `${inline} charts: arms, top-1 and probe charts too`);
  assert.doesNotMatch(html, /(src|href)="(https?:|\/\/)|<script/);
  assert.match(html, /src="data:image\/png;base64,/);
  // One line per finished measurement.
  for (const what of ["real-image classifier", "codeword probe", "linear probes", "fine-tune"]) {
    assert.ok(lines.some((l) => l.includes(what)), `a line for ${what}`);
  }
  const manifest = JSON.parse(await Deno.readTextFile(join(out, "manifest.json")));
  assert.ok(manifest.files["report.json"] && manifest.files["report.md"]);
  assert.ok(manifest.files["report.html"]);
  assert.equal(manifest.inputs["export.1"].dir, exportDir);
  // One layer decay for both runs (no --scratch-layer-decay): the config has no scratch entry.
  assert.equal(report.config.finetune.layerDecay, 0.75);
  assert.equal("scratchLayerDecay" in report.config.finetune, false);
  assert.equal(report["finetune.pretrained_acc"].layer_decay, 0.75);
  assert.equal(report.arms[0].metrics["finetune.scratch_acc"].layer_decay, 0.75);
  assert.ok(md.includes("layer decay 0.75, label smoothing"));
  // Up to date: skipped; --scratch-layer-decay equal to --layer-decay is the same config, another
  // value is another run.
  assert.equal((await runEvaluate(options(out), quiet)).status, "skip");
  const same = options(out, ["--scratch-layer-decay", "0.75"]);
  assert.equal((await runEvaluate(same, quiet)).status, "skip");
  await assert.rejects(
    () => runEvaluate(options(out, ["--scratch-layer-decay", "1"]), quiet),
    /holds a finished evaluate run with another config or inputs/,
  );
  // Least privilege: exactly the inputs and --out.
  const access = evaluateAccess(options(out));
  assert.deepEqual(access.write, [out]);
  assert.deepEqual(
    new Set(access.read),
    new Set([shardDir, out, exportDir, pretrainDir]),
  );
});

/** Where the suite keeps what a person looks at after it (gitignored). */
const ARTEFACTS = fileURLToPath(new URL("../runs/test-artefacts", import.meta.url));

Deno.test("report.html opens in headless Chromium: no console error, every chart drawn", async () => {
  const out = join(root, "evaluate");
  // The report of the test above (made again if that test did not run).
  await runEvaluate(options(out), quiet);
  await Deno.mkdir(ARTEFACTS, { recursive: true });
  const screenshot = join(ARTEFACTS, "evaluate_report_html.png");
  const check = await runBrowserCheck(join(out, "report.html"), { screenshot });
  assert.deepEqual(check.problems, []);
  assert.deepEqual(check.errors, []);
  const report = JSON.parse(await Deno.readTextFile(join(out, "report.json")));
  const svgs = [
    ...report.figures.finetune,
    ...report.figures.curves.flatMap((c: { files: string[] }) => c.files),
  ];
  assert.ok(check.charts.length >= svgs.length + 5, `${check.charts.length} charts`);
  for (const c of check.charts) assert.ok(c.marks > 0, `${c.id} has marks`);
  assert.ok(check.images.length >= 1 && check.images.every((i) => i.loaded));
  // Claims, every figure over seeds, Table 4, Table 1, the probes (two) and the runs.
  assert.equal(check.tables, 7);
  assert.ok((await Deno.stat(screenshot)).size > 10_000, `screenshot ${screenshot}`);
});

Deno.test("evaluate refuses bad inputs in one line before any work", async () => {
  const out = join(root, "bad");
  const refuse = async (
    flags: string[],
    pattern: RegExp,
    kind: new (m: string) => Error = Error,
  ) => {
    await assert.rejects(() => runEvaluate(options(out, flags), quiet), (error: Error) => {
      assert.ok(error instanceof kind, `${error}`);
      assert.match(error.message, pattern);
      assert.ok(!error.message.includes("\n"), "one line");
      return true;
    });
    assert.ok(!(await exists(out)), "nothing written");
  };
  await refuse(
    ["--export", `${exportDir},${join(root, "missing")}`],
    /peco: evaluate: --export .*missing: no manifest\.json/,
  );
  await refuse(["--labels", "a,b,c"], /--labels names 3 arm\(s\) but --export lists 2/, UsageError);
  await refuse(
    ["--pretrain", `${pretrainDir},${pretrainDir},${pretrainDir}`],
    /--pretrain lists 3 folders for 2 --export arm/,
    UsageError,
  );
  // An export made from other shards than --shards.
  const other = await shards("other", 30);
  await refuse(
    ["--shards", other],
    /peco: evaluate: --export .* was made from other shards .* than --shards/,
  );
  // A folder of another stage given as --pretrain.
  await refuse(
    ["--pretrain", exportDir],
    /--pretrain .* holds a export-codebook run, not pretrain/,
  );
  await refuse(
    ["--mask-ratios", "0.5,1.5"],
    /--mask-ratios must be numbers in \(0, 1\)/,
    UsageError,
  );
});

/** A finished stage folder of `stage` holding only its manifest (inputs and summary). */
async function manifestOnly(
  name: string,
  stage: string,
  inputs: Record<string, string>,
  summary: Record<string, unknown>,
): Promise<string> {
  const run = await beginStage({
    name: stage,
    out: join(root, name),
    config: {},
    inputs,
    ...quiet,
  });
  if (run.status !== "skip") await finishStage(run, { summary });
  return join(root, name);
}

/**
 * A λ = 1 and a λ = 0 export (different tokenizers), and a pretrain run on the λ = 1 codes. The
 * λ = 1 export's manifests chain to a train-perceptual folder that records a k-NN accuracy.
 */
async function lambdaArms() {
  const perceptual = await manifestOnly("perceptual", "train-perceptual", {}, {
    knn_accuracy: 0.824, // the keys of train-perceptual's summary (tests/train_perceptual_test.ts)
    knn_k: 20,
  });
  const tokenizer = await manifestOnly("tokenizer", "train-tokenizer", { perceptual }, {});
  const l1 = await tinyExport(root, "export-l1", shardDir, K, { lambda: 1, seed: 3, tokenizer });
  const l0 = await tinyExport(root, "export-l0", shardDir, K, { lambda: 0, seed: 5 });
  const p1 = join(root, "pretrain-l1");
  await runPretrain(
    parseOptions(pretrainCommand, [
      ...["--shards", shardDir, "--tokenizer", l1, "--out", p1, "--dim", "16"],
      ...["--depth", "2", "--heads", "2", "--limit", "8", "--batch", "4", "--steps", "2"],
      ...["--log-every", "1", "--ckpt-every", "2", "--eval-images", "5", "--quiet"],
    ])!,
    quiet,
  );
  return { l1, l0, p1, perceptual, tokenizer };
}

Deno.test("evaluate: arms with seeds, per-image outcomes, claims with intervals, the smoke notice", async () => {
  const { l1, l0, p1, perceptual, tokenizer } = await lambdaArms();
  const out = join(root, "evaluate-seeds");
  const lines: string[] = [];
  const o = options(out, [
    ...["--export", `${l1},${l1},${l0}`, "--pretrain", `${p1},${p1}`],
    ...["--labels", "λ=1,λ=1,λ=0", "--arm-seeds", "0,1,0", "--smoke"],
    ...["--curves", `${tokenizer},${perceptual}`, "--scratch-layer-decay", "1"],
  ]);
  assert.equal((await runEvaluate(o, { log: (l) => lines.push(l) })).status, "done");
  const report = JSON.parse(await Deno.readTextFile(join(out, "report.json")));
  assert.deepEqual(reportProblems(report), []);
  // The runs from scratch had their own layer decay: recorded in the config and each measurement.
  assert.equal(report.config.finetune.layerDecay, 0.75);
  assert.equal(report.config.finetune.scratchLayerDecay, 1);
  for (const a of report.arms.filter((a: { pretrain: unknown }) => a.pretrain)) {
    assert.equal(a.metrics["finetune.pretrained_acc"].layer_decay, 0.75);
    assert.equal(a.metrics["finetune.scratch_acc"].layer_decay, 1);
  }
  const manifest = JSON.parse(await Deno.readTextFile(join(out, "manifest.json")));
  assert.equal(manifest.config.finetune.scratchLayerDecay, 1);
  assert.ok(
    (await Deno.readTextFile(join(out, "report.md"))).includes(
      "layer decay 0.75 (from scratch: 1), label smoothing",
    ),
  );
  assert.deepEqual(
    report.arms.map((
      a: { label: string; seed: number; lambda: number },
    ) => [a.label, a.seed, a.lambda]),
    [["λ=1", 0, 1], ["λ=1", 1, 1], ["λ=0", 0, 0]],
  );
  // Outcomes: one 0/1 string per measurement, one character per held-out image, agreeing with the
  // accuracy reported beside it.
  const { images, runs } = report.outcomes;
  assert.equal(images, 7);
  const key = (r: { arm: string; seed: number; metric: string }) =>
    `${r.arm}@${r.seed} ${r.metric}`;
  assert.deepEqual(
    runs.map(key).sort(),
    [
      "scratch@0 finetune.scratch_acc",
      "scratch@1 finetune.scratch_acc",
      ...["λ=0@0", "λ=1@0", "λ=1@1"].flatMap((a) => [
        `${a} codewords.linear_probe_acc`,
        `${a} reconstruction.classifier_acc`,
      ]),
      ...["λ=1@0", "λ=1@1"].flatMap((a) => [
        `${a} finetune.pretrained_acc`,
        `${a} linear_probe.acc`,
      ]),
    ].sort(),
  );
  for (const r of runs) {
    assert.match(r.outcomes, /^[01]{7}$/, key(r));
    const ones = [...r.outcomes].filter((c) => c === "1").length;
    const value = r.arm === "scratch"
      ? report.finetune_scratch.find((x: { seed: number }) => x.seed === r.seed).accuracy
      : report.arms.find((a: { label: string; seed: number }) =>
        a.label === r.arm && a.seed === r.seed
      ).metrics[r.metric].value;
    assert.ok(Math.abs(value - ones / 7) < 1e-12, `${key(r)}: ${value} vs ${ones}/7`);
  }
  // Fine-tuning from scratch once per seed; each pretrained arm compared with its own seed's.
  assert.deepEqual(report.finetune_scratch.map((x: { seed: number }) => x.seed), [0, 1]);
  // Claims: (1) twice on the seed both λ arms share, (2) on both seeds, (3) left out with a note.
  const claims = report.claims as {
    name: string;
    difference: number;
    ci95: [number, number];
    verdict: string;
    seeds: number;
    images: number;
  }[];
  assert.deepEqual(claims.map((c) => [c.name, c.seeds, c.images]), [
    ["semantic codes: codeword probe", 1, 7],
    ["semantic codes: reconstruction classification", 1, 7],
    ["pretraining beats scratch", 2, 7],
  ]);
  for (const c of claims) {
    assert.ok(c.ci95[0] <= c.difference && c.difference <= c.ci95[1], `${c.name} in its interval`);
    assert.ok(["holds", "does not hold", "cannot tell"].includes(c.verdict));
  }
  assert.equal(report.claim_notes.length, 1);
  assert.match(
    report.claim_notes[0],
    /perceptual codes beat pixel codes .* left out: no pretrained arm with λ = 0/,
  );
  // The perceptual network's k-NN accuracy, found through export → tokenizer → perceptual; the
  // λ = 0 export records no tokenizer, and the report says so.
  assert.deepEqual(
    report.perceptual_knn.map((p: { accuracy: number | null }) => p.accuracy),
    [0.824, 0.824, null],
  );
  assert.match(report.perceptual_knn[2].note, /records no tokenizer input/);
  // The smoke notice first, in report.json and at the top of report.md and report.html.
  assert.match(report.notice, /too small to support any claim/);
  const md = await Deno.readTextFile(join(out, "report.md"));
  assert.match(md.split("\n\n")[1], /This is a smoke run: its budgets are far too small/);
  const html = await Deno.readTextFile(join(out, "report.html"));
  assert.match(html, /This is a smoke run/);
  assert.ok(md.includes("## Claims") && md.includes("Every figure, mean ± sd over seeds"));
  assert.match(md, /\| λ=1 \| 1 \| 0, 1 \| [0-9.]+ ± [0-9.]+ \(2\) \|/);
  assert.match(md, /pretraining beats scratch: fine-tuned top-1 \(fraction\) [+-][0-9.]+ \[/);
  assert.ok(lines.some((l) => l.includes('claim "pretraining beats scratch"')));
  assert.match(
    md,
    /Claim \(1\) rests on the perceptual network: λ=1: k-NN top-1 82\.4% \(k = 20, on held-out images\)\./,
  );
});

Deno.test("evaluate over two seeds of tiny arms: claims on 2 seeds, mean ± sd, what is shared", async () => {
  // Per seed: a λ = 1 arm (its own tokenizer on the one perceptual network, its own pretraining)
  // and a λ = 0 arm, as `deno task experiment --seeds 0,1` lays them out.
  const { l1, l0, p1, perceptual, tokenizer } = await lambdaArms();
  const tokenizer1 = await manifestOnly("seed-1/tokenizer", "train-tokenizer", { perceptual }, {});
  const l1b = await tinyExport(root, "seed-1/export-l1", shardDir, K, {
    lambda: 1,
    seed: 4,
    tokenizer: tokenizer1,
  });
  const l0b = await tinyExport(root, "seed-1/export-l0", shardDir, K, { lambda: 0, seed: 6 });
  const p1b = join(root, "seed-1/pretrain-l1");
  await runPretrain(
    parseOptions(pretrainCommand, [
      ...["--shards", shardDir, "--tokenizer", l1b, "--out", p1b, "--dim", "16", "--depth", "2"],
      ...["--heads", "2", "--limit", "8", "--batch", "4", "--steps", "2", "--seed", "1"],
      ...["--log-every", "1", "--ckpt-every", "2", "--eval-images", "5", "--quiet"],
    ])!,
    quiet,
  );
  const out = join(root, "evaluate-two-seeds");
  const o = options(out, [
    ...["--export", [l1, l0, l1b, l0b].join(","), "--pretrain", `${p1},,${p1b},`],
    ...["--labels", "λ=1,λ=0,λ=1,λ=0", "--arm-seeds", "0,0,1,1"],
    ...["--curves", [perceptual, tokenizer, tokenizer1].join(",")],
  ]);
  assert.equal((await runEvaluate(o, quiet)).status, "done");
  const report = JSON.parse(await Deno.readTextFile(join(out, "report.json")));
  assert.deepEqual(reportProblems(report), []);
  assert.deepEqual(
    report.claims.map((c: { name: string; seeds: number; images: number }) => [
      c.name,
      c.seeds,
      c.images,
    ]),
    [
      ["semantic codes: codeword probe", 2, 7],
      ["semantic codes: reconstruction classification", 2, 7],
      ["pretraining beats scratch", 2, 7],
    ],
  );
  for (const c of report.claims) {
    assert.ok(c.ci95[0] <= c.difference && c.difference <= c.ci95[1], c.name);
    assert.ok(["holds", "does not hold", "cannot tell"].includes(c.verdict), c.verdict);
  }
  // Every arm's row: the mean ± sd over its two seeds, (2) beside it.
  const md = await Deno.readTextFile(join(out, "report.md"));
  assert.match(md, /\| λ=1 \| 1 \| 0, 1 \| [0-9.]+ ± [0-9.]+ \(2\) \|/);
  assert.match(md, /\| λ=0 \| 0 \| 0, 1 \| [0-9.]+ ± [0-9.]+ \(2\) \|/);
  assert.match(md, /\| ViT from scratch \| – \| 0, 1 \|/);
  // What the seeds share, read from the inputs' manifests.
  assert.deepEqual(report.seed_sharing, {
    seeds: [0, 1],
    runs: [
      { what: "the shards and held-out images", sharing: "shared", dirs: [shardDir] },
      { what: "the perceptual network", sharing: "shared", dirs: [perceptual] },
      { what: "the tokenizers", sharing: "per seed", dirs: [tokenizer, tokenizer1] },
      { what: "the codebook exports", sharing: "per seed", dirs: [l1, l0, l1b, l0b] },
      { what: "the pretraining runs", sharing: "per seed", dirs: [p1, p1b] },
    ],
  });
  assert.match(
    md,
    new RegExp(
      "## Seeds: what is shared\n\nSeeds 0, 1\\. Shared by every seed \\(their randomness is " +
        `not in the intervals\\): the shards and held-out images \\(\`${shardDir}\`\\); the ` +
        `perceptual network \\(\`${perceptual}\`\\); the classifier of real images \\(seed 0\\)\\. ` +
        "Each seed's own: the tokenizers; the codebook exports; the pretraining runs; ",
    ),
  );
});

Deno.test("evaluate: --arm-seeds is checked with --export and --labels, every problem named", async () => {
  const refuse = async (flags: string[], pattern: RegExp) => {
    const out = join(root, "bad-seeds");
    await assert.rejects(() => runEvaluate(options(out, flags), quiet), (error: Error) => {
      assert.ok(error instanceof UsageError, `${error}`);
      assert.match(error.message, pattern);
      return true;
    });
    assert.ok(!(await exists(out)), "nothing written");
  };
  await refuse(["--arm-seeds", "0,1,2"], /--arm-seeds lists 3 seed\(s\) but --export lists 2/);
  await refuse(["--arm-seeds", "0,x"], /--arm-seeds must be integers ≥ 0, got "0,x"/);
  await refuse(
    ["--labels", "a,a"],
    /--arm-seeds: arms sharing a label are replicates of one arm and need distinct seeds, but arm "a" has seed 0 twice/,
  );
  await refuse(["--labels", "a,a", "--arm-seeds", "4,4"], /arm "a" has seed 4 twice/);
  await refuse(["--labels", "a,scratch"], /--labels must be non-empty and not "scratch"/);
  // Replicates of one label with distinct seeds are fine.
  const o = options(join(root, "unused"), ["--labels", "a,a", "--arm-seeds", "0,1"]);
  assert.deepEqual(
    armPaths(o).map((a) => [a.label, a.seed]),
    [["a", 0], ["a", 1]],
  );
});

Deno.test("report and figure helpers", () => {
  assert.equal(
    markdownTable(["a", "b"], [["x|y", 1], [null, 2.5]]),
    "| a | b |\n| :--- | ---: |\n| x\\|y | 1 |\n| – | 2.5 |",
  );
  assert.throws(() => markdownTable(["a"], [["x", 1]]), /a table row has 2 cells, the header 1/);
  const run = { dir: "/x", sha256: "0".repeat(64) };
  const complete = Object.fromEntries(
    REQUIRED_REPORT_KEYS.map((k) => [k, measurement(0.5, "val", run)]),
  );
  assert.deepEqual(reportProblems(complete), []);
  const broken = { ...complete, "tokenizer.psnr": undefined, extra: { v: NaN } };
  assert.deepEqual(reportProblems(broken), ['missing "tokenizer.psnr"', "extra.v is NaN"]);
  assert.throws(() => measurement(Infinity, "val", run), /measurement on val of \/x is Infinity/);

  // 1 image 1×4×4, 2×2 patches: patches 1 and 2 greyed.
  const grey = greyPatches(
    { data: new Array(16).fill(1), shape: [1, 1, 4, 4] },
    [0, 1, 1, 0],
    2,
    0.5,
  );
  assert.deepEqual(Array.from(grey.data), [1, 1, .5, .5, 1, 1, .5, .5, .5, .5, 1, 1, .5, .5, 1, 1]);
  // A grid: pictures only, white around; its layout says where the cells are.
  const cell = { pixels: new Uint8Array(9).fill(7), channels: 1, height: 3, width: 3 };
  const { image, layout } = imageGrid([[cell, cell], [cell]], { scale: 2, gap: 1 });
  assert.deepEqual(layout, { columns: 2, rows: 2, cellWidth: 6, cellHeight: 6, gap: 1 });
  assert.deepEqual([image.channels, image.width, image.height], [3, 1 + 2 * 7, 1 + 2 * 7]);
  const px = (k: number, y: number, x: number) => image.pixels[(k * 15 + y) * 15 + x];
  assert.deepEqual([px(0, 1, 1), px(2, 6, 6), px(1, 0, 0), px(0, 7, 4), px(0, 8, 8)], [
    7,
    7,
    255,
    255,
    255,
  ]);
  assert.throws(() => imageGrid([[cell], []]), /needs cells in every row/);
  assert.throws(() => imageGrid([[cell, { ...cell, width: 2 }]]), /cells differ in size/);
  // Markdown of blocks: a grid's column headings are text beside its image.
  const md = toMarkdown([
    { kind: "heading", level: 2, text: "T" },
    { kind: "grid", file: "g.png", alt: "g", columns: ["a", "b"], layout, caption: "C." },
    { kind: "table", header: ["x", "img"], rows: [[1, { image: "p.png", alt: "p" }]] },
  ]);
  assert.equal(
    md,
    "## T\n\nC. Columns: a | b.\n\n![g](g.png)\n\n| x | img |\n| :--- | ---: |\n| 1 | ![p](p.png) |\n",
  );
});

removeAfterLastTest("evaluate", root);
