// Every stage as a user starts it (`deno task <stage>`, a launcher that re-runs the stage with
// least privilege), on tiny data:
// - every training stage, killed with SIGKILL (its whole process group) after a checkpoint and
//   started again, ends with the same weights, bit for bit, as a run that was never interrupted;
// - evaluate, stopped by --stop-at in its fine-tuning, writes no report and no manifest, and its
//   rerun writes the report of a run that was never stopped;
// - every stage's sandbox is enforced by Deno: under the exact flags its launcher computes, a read
//   outside its inputs, a write outside its folder, env, net and run are refused (NotCapable), and
//   the stage itself, denied one of its inputs, fails with NotCapable and finishes nothing.

import assert from "node:assert/strict";
import { join } from "node:path";
import { commandOutput, mnistShards, tinyExport } from "./stage_fixtures.ts";
import "./util.ts";
import { permissionFlags, sandboxedCommand, type StageAccess } from "../lib/cli/permissions.ts";
import { parseOptions } from "../lib/cli/args.ts";
import { readSafetensors } from "../lib/io/safetensors.ts";
import { readCheckpointMeta } from "../lib/train/checkpoint.ts";
import { STAGES } from "../tasks/pipeline.ts";

const REPO = new URL("..", import.meta.url).pathname;
const root = await Deno.makeTempDir({ prefix: "peco-sandbox-" });
const shards = await mnistShards(root, "shard", 24);
const exportDir = await tinyExport(root, "export", shards, 16);

/** Tiny, fast settings of each training stage (10 steps, a checkpoint every 2). */
const TRAINING: Record<string, (out: string) => string[]> = {
  "train-perceptual": (out) => [
    ...["--shards", shards, "--out", out, "--steps", "10", "--batch", "8"],
    ...["--log-every", "1", "--ckpt-every", "2", "--knn-train", "32", "--knn-val", "16"],
  ],
  "train-tokenizer": (out) => [
    ...["--shards", shards, "--out", out, "--perceptual", "none", "--limit", "8", "--batch", "4"],
    ...["--steps", "10", "--log-every", "1", "--ckpt-every", "2", "--eval-images", "5"],
    ...["--psnr-images", "3"],
  ],
  "pretrain": (out) => [
    ...["--shards", shards, "--tokenizer", exportDir, "--out", out, "--dim", "16", "--depth", "2"],
    ...["--heads", "2", "--limit", "8", "--batch", "4", "--steps", "10", "--log-every", "1"],
    ...["--ckpt-every", "2", "--eval-images", "5"],
  ],
};

/** The adversarial variant of train-tokenizer: discriminator and its Adam in the checkpoint. */
const ADVERSARIAL = ["--disc-weight", "0.4", "--disc-start", "1", "--quantizer", "plain"];

/** `deno task <stage> …` from the repository, as its own process group. */
function startTask(stage: string, args: string[]): Deno.ChildProcess {
  return new Deno.Command("deno", {
    args: ["task", "-q", stage, ...args, "--quiet"],
    cwd: REPO,
    detached: true,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
}

async function runTask(stage: string, args: string[]): Promise<void> {
  const { code, stdout, stderr } = await startTask(stage, args).output();
  const d = new TextDecoder();
  assert.equal(code, 0, `${stage}: ${d.decode(stdout)}${d.decode(stderr)}`);
}

/** The last step logged in a metrics file (0 when none). */
async function lastLoggedStep(metrics: string): Promise<number> {
  const text = await Deno.readTextFile(metrics).catch(() => "");
  const lines = text.split("\n").filter((l) => l.trim() && l.endsWith("}"));
  return lines.length ? JSON.parse(lines.at(-1)!).step : 0;
}

async function exists(path: string): Promise<boolean> {
  return await Deno.stat(path).then(() => true, () => false);
}

/** Starts the stage and SIGKILLs its process group once it has logged a step past a checkpoint. */
async function killAfterCheckpoint(stage: string, args: string[], out: string): Promise<number> {
  const child = startTask(stage, args);
  const deadline = Date.now() + 300_000;
  let step = 0;
  while (Date.now() < deadline) {
    step = await lastLoggedStep(join(out, "metrics.jsonl"));
    if (step >= 3) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  Deno.kill(-child.pid, "SIGKILL");
  const status = await child.status;
  await child.stdout.cancel();
  await child.stderr.cancel();
  assert.equal(status.signal, "SIGKILL", `${stage} ended before it was killed`);
  assert.ok(step >= 3, `${stage} logged no step past its first checkpoint in time`);
  return step;
}

/** Every tensor of every safetensors file the two runs wrote, compared bit for bit. */
async function assertSameWeights(a: string, b: string): Promise<string[]> {
  const files: string[] = [];
  for await (const e of Deno.readDir(a)) {
    if (e.name.endsWith(".safetensors")) files.push(e.name);
  }
  assert.ok(files.includes("checkpoint.safetensors"), `no checkpoint in ${a}`);
  for (const file of files) {
    const x = (await readSafetensors(join(a, file))).tensors;
    const y = (await readSafetensors(join(b, file))).tensors;
    assert.deepEqual([...y.keys()].sort(), [...x.keys()].sort(), file);
    for (const [name, record] of x) {
      assert.deepEqual(y.get(name)!.data, record.data, `${file}: ${name} differs after the kill`);
    }
  }
  return files;
}

const cases: [string, string, string[]][] = [
  ["train-perceptual", "perceptual", []],
  ["train-tokenizer", "tokenizer", []],
  ["train-tokenizer", "tokenizer-adv", ADVERSARIAL],
  ["pretrain", "pretrain", []],
];

for (const [stage, name, extra] of cases) {
  Deno.test(`${stage}${extra.length ? " (adversarial)" : ""}: SIGKILL after a checkpoint, rerun = uninterrupted`, async () => {
    const whole = join(root, `${name}-whole`);
    const killed = join(root, name);
    await runTask(stage, [...TRAINING[stage](whole), ...extra]);
    const args = [...TRAINING[stage](killed), ...extra];
    await killAfterCheckpoint(stage, args, killed);
    assert.ok(!(await exists(join(killed, "manifest.json"))), "a killed run is not finished");
    assert.ok(await exists(join(killed, "checkpoint.safetensors")), "its checkpoint survived");
    await runTask(stage, args);
    await Deno.stat(join(killed, "manifest.json"));
    const files = await assertSameWeights(whole, killed);
    assert.ok(files.length >= 1);
    const steps = (await Deno.readTextFile(join(killed, "metrics.jsonl"))).trim().split("\n")
      .map((l) => JSON.parse(l).step);
    assert.deepEqual(steps, Array.from({ length: 10 }, (_, i) => i + 1), "one record per step");
  });
}

// ---- fine-tuning inside evaluate ------------------------------------------------------------------

/** Tiny evaluate settings: two fine-tuning runs (pretrained, scratch) of 40 steps, a checkpoint every 10. */
function evaluateArgs(out: string): string[] {
  return [
    ...["--shards", shards, "--export", exportDir, "--pretrain", join(root, "pretrain-whole")],
    ...["--out", out, "--finetune-steps", "40", "--finetune-batch", "4", "--finetune-warmup", "2"],
    ...["--finetune-ckpt-every", "10", "--probe-train", "12", "--probe-epochs", "2"],
    ...["--probe-batch", "8", "--eval-images", "8", "--classifier-steps", "2"],
    ...[
      "--classifier-batch",
      "4",
      "--classifier-width",
      "4",
      "--figure-images",
      "2",
      "--batch",
      "8",
    ],
  ];
}

/** The fine-tuning run a checkpoint holds, or null when there is none (yet). */
async function checkpointRun(path: string): Promise<string | null> {
  try {
    return String((await readCheckpointMeta(path)).carried?.run ?? "");
  } catch {
    return null;
  }
}

/** The uninterrupted evaluate run of `evaluateArgs` (and the pretrain run it reads), made once. */
async function wholeEvaluate(): Promise<string> {
  if (!(await exists(join(root, "pretrain-whole", "manifest.json")))) {
    await runTask("pretrain", TRAINING.pretrain(join(root, "pretrain-whole")));
  }
  const whole = join(root, "evaluate-whole");
  if (!(await exists(join(whole, "manifest.json")))) await runTask("evaluate", evaluateArgs(whole));
  return whole;
}

const reportOf = (dir: string) => Deno.readTextFile(join(dir, "report.json")).then(JSON.parse);

Deno.test("evaluate: SIGKILL during fine-tuning after a checkpoint, rerun = uninterrupted", async () => {
  const whole = await wholeEvaluate();
  const killed = join(root, "evaluate-killed");
  // Killed once the pretrained run has finished and the scratch run has written a checkpoint: the
  // rerun reads the first back and resumes the second.
  const child = startTask("evaluate", evaluateArgs(killed));
  const checkpoint = join(killed, "checkpoint.safetensors");
  const deadline = Date.now() + 300_000;
  let run: string | null = null;
  while (Date.now() < deadline) {
    run = await checkpointRun(checkpoint);
    if (run?.startsWith("scratch")) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  Deno.kill(-child.pid, "SIGKILL");
  const status = await child.status;
  await child.stdout.cancel();
  await child.stderr.cancel();
  assert.equal(status.signal, "SIGKILL", "evaluate ended before it was killed");
  assert.ok(run?.startsWith("scratch"), `no scratch checkpoint in time (last: ${run})`);
  assert.ok(!(await exists(join(killed, "manifest.json"))), "a killed run is not finished");
  const { code, stdout, stderr } = await startTask("evaluate", evaluateArgs(killed)).output();
  const text = new TextDecoder().decode(stdout) + new TextDecoder().decode(stderr);
  assert.equal(code, 0, text);
  assert.match(text, /resuming the interrupted run/);
  assert.match(text, /fine-tune pretrained .*finished before the interruption/);
  assert.match(text, /fine-tune from scratch: .*resumed at step [1-3]0\)/);
  const [a, b] = [await reportOf(whole), await reportOf(killed)];
  assert.ok(a.finetune_scratch.length === 1 && a.outcomes.runs.length === 5);
  assert.deepEqual(b, a, "report.json after the kill and rerun = the uninterrupted run's");
  await assertSameWeights(whole, killed);
});

Deno.test("evaluate --stop-at: stopped after a fine-tuning checkpoint with no report; rerun = uninterrupted", async () => {
  const whole = await wholeEvaluate();
  const out = join(root, "evaluate-stopped");
  const checkpoint = join(out, "checkpoint.safetensors");
  const start = async (flags: string[]) => {
    const { code, stdout, stderr } = await startTask("evaluate", [...evaluateArgs(out), ...flags])
      .output();
    const text = new TextDecoder().decode(stdout) + new TextDecoder().decode(stderr);
    assert.equal(code, 0, text);
    return text;
  };
  /** Stopped: no file of the report, no manifest; the checkpoint holds `run` at `step`. */
  const assertStopped = async (text: string, run: string, step: number) => {
    assert.match(text, /evaluate: stopped before the report \(--stop-at\); rerun to resume/);
    assert.match(
      text,
      new RegExp(
        `evaluate: stopped: fine-tuning run ${run}-\\S+ after its checkpoint at step ${step}`,
      ),
    );
    for (const file of ["report.json", "report.md", "report.html", "manifest.json"]) {
      assert.ok(!(await exists(join(out, file))), `stopped, yet ${file} was written`);
    }
    const meta = await readCheckpointMeta(checkpoint);
    assert.ok(String(meta.carried?.run).startsWith(run), `checkpoint of ${meta.carried?.run}`);
    assert.equal(meta.step, step);
  };
  // 40 steps a run, a checkpoint every 10: the pretrained run stops after its checkpoint at 30.
  let text = await start(["--stop-at", "30"]);
  assert.match(
    text,
    /fine-tune pretrained .*: stopped after the checkpoint at step 30 \(--stop-at\)/,
  );
  await assertStopped(text, "pretrained", 30);
  // Again: the pretrained run resumes at 30 and finishes (its last step never stops it); the
  // scratch run stops after its first checkpoint at or after 30.
  text = await start(["--stop-at", "30"]);
  assert.match(text, /fine-tune pretrained .*: top-1 .*\(resumed at step 30\)/);
  assert.match(
    text,
    /fine-tune from scratch: stopped after the checkpoint at step 30 \(--stop-at\)/,
  );
  await assertStopped(text, "scratch", 30);
  // Without --stop-at: the pretrained run is read back, the scratch run resumed, the report whole.
  text = await start([]);
  assert.match(text, /fine-tune pretrained .*finished before the interruption/);
  assert.match(text, /fine-tune from scratch: .*resumed at step 30\)/);
  assert.ok(await exists(join(out, "manifest.json")));
  for (const file of ["report.md", "report.html"]) assert.ok(await exists(join(out, file)), file);
  assert.deepEqual(
    await reportOf(out),
    await reportOf(whole),
    "report.json = the uninterrupted run's",
  );
  await assertSameWeights(whole, out);
});

// ---- the sandbox of every stage ------------------------------------------------------------------

/** A valid command line of each stage over the folders above, and the input to deny it. */
function stageArgs(stage: string, out: string): { args: string[]; deny: string } {
  switch (stage) {
    case "shard":
      return {
        args: ["--input", join(REPO, "fixtures/images/decode"), "--out", out, "--size", "8"],
        deny: join(REPO, "fixtures/images/decode"),
      };
    case "train-perceptual":
      return { args: TRAINING[stage](out), deny: shards };
    case "train-tokenizer":
      return {
        args: [
          ...TRAINING[stage](out).map((a) => a === "none" ? "builtin" : a),
          ...["--perceptual-dir", join(root, "perceptual-whole")],
        ],
        deny: join(root, "perceptual-whole"),
      };
    case "export-codebook":
      return {
        args: ["--tokenizer", join(root, "tokenizer-whole"), "--shards", shards, "--out", out],
        deny: join(root, "tokenizer-whole"),
      };
    case "pretrain":
      return { args: TRAINING[stage](out), deny: exportDir };
    case "evaluate":
      return {
        args: [
          ...[
            "--shards",
            shards,
            "--export",
            exportDir,
            "--pretrain",
            join(root, "pretrain-whole"),
          ],
          ...["--out", out, "--finetune-batch", "8", "--classifier-batch", "8"],
          ...["--probe-batch", "8", "--probe-train", "12", "--eval-images", "8"],
        ],
        deny: join(root, "pretrain-whole"),
      };
  }
  throw new Error(`no test arguments for stage ${stage}`);
}

/** What a process may do under `flags`: each attempt's outcome ("ok" or the error's name). */
async function probe(
  flags: string[],
  paths: Record<string, string>,
): Promise<Record<string, string>> {
  const script = join(root, "probe.ts");
  await Deno.writeTextFile(
    script,
    `const p = ${JSON.stringify(paths)};
    const attempt = async (f: () => Promise<unknown>) => {
      try { await f(); return "ok"; } catch (e) { return (e as Error).name; }
    };
    console.log(JSON.stringify({
      readInput: await attempt(() => Deno.stat(p.input)),
      readOutside: await attempt(() => Deno.readTextFile(p.outside)),
      writeOut: await attempt(() => Deno.writeTextFile(p.inOut, "x")),
      writeOutside: await attempt(() => Deno.writeTextFile(p.leak, "x")),
      writeInput: await attempt(() => Deno.writeTextFile(p.intoInput, "x")),
      env: await attempt(async () => Deno.env.get("HOME")),
      net: await attempt(() => Deno.connect({ hostname: "127.0.0.1", port: 9 })),
      run: await attempt(() => new Deno.Command("true").output()),
      ffi: await attempt(async () => Deno.dlopen("libc.so.6", {})),
    }));`,
  );
  const r = await commandOutput(
    new Deno.Command("deno", { args: ["run", ...flags, script], stdout: "piped", stderr: "piped" }),
  );
  assert.equal(r.code, 0, r.text);
  return JSON.parse(r.text.trim().split("\n").at(-1)!);
}

Deno.test("every stage's sandbox: Deno refuses what its launcher did not grant", async (t) => {
  const secret = join(root, "secret.txt");
  await Deno.writeTextFile(secret, "not for stages");
  for (const [stage, def] of Object.entries(STAGES)) {
    await t.step(stage, async () => {
      const out = join(root, `sandbox-${stage}`);
      const { args, deny } = stageArgs(stage, out);
      const { command, access } = await def.load();
      const granted: StageAccess = access(parseOptions(command, args)!);
      assert.deepEqual(granted.write, [out], "the stage writes its folder only");
      assert.ok(granted.read.includes(deny), `${deny} is one of its inputs`);
      await Deno.mkdir(out, { recursive: true });
      const outcome = await probe(permissionFlags(granted), {
        input: deny,
        outside: secret,
        inOut: join(out, "probe"),
        leak: join(root, `leak-${stage}`),
        intoInput: join(deny, "probe"),
      });
      assert.deepEqual(outcome, {
        readInput: "ok",
        readOutside: "NotCapable",
        writeOut: "ok",
        writeOutside: "NotCapable",
        writeInput: "NotCapable",
        env: "NotCapable",
        net: "NotCapable",
        run: "NotCapable",
        ffi: "NotCapable",
      });
      await Deno.remove(out, { recursive: true });

      // The stage itself, its granted access less one input, is stopped by Deno.
      const narrowed = { ...granted, read: granted.read.filter((p) => p !== deny) };
      const child = await commandOutput(
        sandboxedCommand(def.script, [...args, "--quiet"], narrowed, {
          stdout: "piped",
          stderr: "piped",
        }),
      );
      assert.notEqual(child.code, 0, child.text);
      // Deno's NotCapable error, as the stage words it: "Requires read access to …" (or, for a
      // source file of shard, "outside the stage's read permission").
      assert.match(child.text, /NotCapable|Requires read access|read permission/, child.text);
      assert.ok(!(await exists(join(out, "manifest.json"))), `${stage} finished nothing`);
    });
  }
  await assert.rejects(Deno.stat(join(root, "leak-shard")), Deno.errors.NotFound);
  await Deno.remove(root, { recursive: true }); // the last test of this file
});
