// `peco`: every command in one entry point, the one `deno task compile` turns into a single
// executable (tools/compile.ts).
//
//   peco demo [--quick]                 peco shard --input mnist --out runs/shard
//   peco pipeline --config FILE.json    peco train-perceptual | train-tokenizer | …
//   peco experiment [--lambdas 0,1]     peco --help
//
// A stage command runs the stage sandboxed, like its `deno task`: read access to its inputs and
// write access to its --out only. Under `deno run` the sandbox is a child `deno run` with exactly
// those flags; in a compiled binary, whose permissions Deno fixes at compile time, it is the
// binary itself in its internal `__sandbox` mode, which runs the stage in a Worker limited to
// those paths (lib/cli/sandbox_worker.ts). `deno task peco …` runs this entry under `deno run`
// with exactly the binary's permissions and `--as-binary`, so it takes the binary's code paths
// (Worker sandboxes included) without compiling.

import { parseOrExit, runTask } from "../lib/cli/args.ts";
import { failOnProblems } from "../lib/cli/problems.ts";
import {
  emulateBinary,
  runSandboxed,
  SANDBOX_SUBCOMMAND,
  type StageAccess,
} from "../lib/cli/permissions.ts";
import { inWorker, runStageInWorker, serveStageRequest } from "../lib/cli/sandbox_worker.ts";
import { STAGES } from "./pipeline.ts";

/** The commands that are not stages: each module exports main(argv). */
const COMMANDS: Record<string, () => Promise<{ main(argv: string[]): Promise<void> }>> = {
  demo: () => import("./demo.ts"),
  pipeline: () => import("./pipeline.ts"),
  experiment: () => import("./experiment.ts"),
};

export function usage(): string {
  return [
    "peco: perceptual codebook tokenizers and BEiT pretraining on WebGPU.",
    "",
    "Usage: peco <command> [options]    (peco <command> --help for its options)",
    "",
    "Commands:",
    "  demo         the whole chain on MNIST (--quick: in minutes)",
    "  pipeline     the whole chain with the settings of --config FILE.json",
    "  experiment   the λ ablation (--lambdas 0,1, --seeds 0,1,2)",
    ...Object.keys(STAGES).map((s) => `  ${s.padEnd(13)}the ${s} stage alone`),
  ].join("\n");
}

/** The subcommands a build of peco offers (stages, then the pipeline commands). */
export function subcommands(): string[] {
  return [...Object.keys(STAGES), ...Object.keys(COMMANDS)];
}

async function runStage(stage: string, args: string[]): Promise<void> {
  const def = STAGES[stage];
  const { command, access, check } = await def.load();
  const options = parseOrExit({ ...command, usage: `peco ${stage}` }, args);
  await runTask(`peco ${stage}`, async () => {
    failOnProblems(check(options)); // every problem at once, before the sandbox starts
    Deno.exit(await runSandboxed(def.script, args, access(options)));
  });
}

/** `__sandbox <script> <access JSON> args…`: the compiled binary's sandboxed child. */
async function sandboxChild(rest: string[]): Promise<void> {
  const [script, accessJson, ...args] = rest;
  const known = Object.values(STAGES).some((def) => def.script.href === script);
  if (!known) {
    console.error(`peco: ${SANDBOX_SUBCOMMAND}: ${script} is not a stage of this build`);
    Deno.exit(2);
  }
  const access = JSON.parse(accessJson) as StageAccess;
  Deno.exit(await runStageInWorker(new URL(import.meta.url), script, args, access));
}

/** `peco --as-binary <command> …` under `deno run`: the compiled binary's sandboxes, uncompiled. */
const AS_BINARY = "--as-binary";

export async function main(argv = Deno.args): Promise<void> {
  const [name, ...rest] = argv;
  if (name === AS_BINARY) {
    emulateBinary(new URL(import.meta.url));
    return await main(rest);
  }
  if (name === SANDBOX_SUBCOMMAND) return await sandboxChild(rest);
  if (name && name in STAGES) return await runStage(name, rest);
  if (name && name in COMMANDS) return await (await COMMANDS[name]()).main(rest);
  if (name === undefined || name === "--help" || name === "-h") {
    console.log(usage());
    Deno.exit(name === undefined ? 2 : 0);
  }
  console.error(`peco: unknown command "${name}"\n\n${usage()}`);
  Deno.exit(2);
}

/** The stage of a task file URL, loaded (in the sandbox Worker). */
async function findStage(script: string) {
  const def = Object.values(STAGES).find((d) => d.script.href === script);
  if (!def) throw new Error(`peco: ${script} is not a stage of this build`);
  return { name: def.name, ...(await def.load()) };
}

// In the sandbox Worker this module is the entry again: it serves the one stage request.
if (inWorker()) serveStageRequest(findStage);
else if (import.meta.main) await main();
