// `deno task pipeline --config FILE.json`: the whole chain (shard → train-perceptual →
// train-tokenizer → export-codebook → pretrain → evaluate) on the user's data and settings, into
// one folder with a sub-folder per stage. The config (lib/cli/pipeline_config.ts) is validated
// against every stage's options before anything runs; each stage then runs as a child process
// locked to its inputs and its folder (lib/cli/pipeline.ts). Rerunning skips what is up to date,
// reruns what a changed setting affects, and resumes what was interrupted.
//
//   deno task pipeline --config my.json [--out runs/mine] [--quiet | --json] [--dry-run]
//
// The launcher itself holds only --allow-read (the config, the stages' manifests) and
// --allow-run=deno (to start the stages).

import { resolve } from "node:path";
import { type Parsed, parseOrExit, runTask, UsageError } from "../lib/cli/args.ts";
import {
  type Arm,
  chainSteps,
  checkSteps,
  describeStep,
  type PipelineResult,
  problemLines,
  runPipeline,
  seedPlan,
  seedPlanLines,
  type StageRegistry,
  stageSchemas,
  type StepProblem,
  WIRED,
} from "../lib/cli/pipeline.ts";
import { type PipelineConfig, readConfig, validateConfigFile } from "../lib/cli/pipeline_config.ts";
import { checkShardOptions } from "../lib/stages/shard_options.ts";
import { checkTrainPerceptualOptions } from "../lib/stages/train_perceptual_options.ts";
import { checkTrainTokenizerOptions } from "../lib/stages/train_tokenizer_options.ts";
import { checkExportCodebookOptions } from "../lib/stages/export_codebook_options.ts";
import { checkPretrainOptions } from "../lib/stages/pretrain_options.ts";
import { checkEvaluateOptions } from "../lib/stages/evaluate_options.ts";
import { checkImpliedInputs } from "../lib/stages/chain_checks.ts";

/** Every stage the pipeline can run: its task file, loaded only when used. */
export const STAGES: StageRegistry = {
  "shard": {
    name: "shard",
    script: new URL("./shard.ts", import.meta.url),
    load: async () => {
      const m = await import("./shard.ts");
      return {
        command: m.shardCommand,
        access: m.shardAccess,
        run: m.runShard,
        check: checkShardOptions,
      };
    },
  },
  "train-perceptual": {
    name: "train-perceptual",
    script: new URL("./train_perceptual.ts", import.meta.url),
    load: async () => {
      const m = await import("./train_perceptual.ts");
      return {
        command: m.trainPerceptualCommand,
        access: m.trainPerceptualAccess,
        run: m.runTrainPerceptual,
        check: checkTrainPerceptualOptions,
      };
    },
  },
  "train-tokenizer": {
    name: "train-tokenizer",
    script: new URL("./train_tokenizer.ts", import.meta.url),
    load: async () => {
      const m = await import("./train_tokenizer.ts");
      return {
        command: m.trainTokenizerCommand,
        access: m.trainTokenizerAccess,
        run: m.runTrainTokenizer,
        check: checkTrainTokenizerOptions,
      };
    },
  },
  "export-codebook": {
    name: "export-codebook",
    script: new URL("./export_codebook.ts", import.meta.url),
    load: async () => {
      const m = await import("./export_codebook.ts");
      return {
        command: m.exportCodebookCommand,
        access: m.exportCodebookAccess,
        run: m.runExportCodebook,
        check: checkExportCodebookOptions,
      };
    },
  },
  "pretrain": {
    name: "pretrain",
    script: new URL("./pretrain.ts", import.meta.url),
    load: async () => {
      const m = await import("./pretrain.ts");
      return {
        command: m.pretrainCommand,
        access: m.pretrainAccess,
        run: m.runPretrain,
        check: checkPretrainOptions,
      };
    },
  },
  "evaluate": {
    name: "evaluate",
    script: new URL("./evaluate.ts", import.meta.url),
    load: async () => {
      const m = await import("./evaluate.ts");
      return {
        command: m.evaluateCommand,
        access: m.evaluateAccess,
        run: m.runEvaluate,
        check: checkEvaluateOptions,
      };
    },
  },
};

/** The launcher flags of every chain command (pipeline, demo, experiment). */
export const LAUNCH_FLAGS = {
  quiet: { type: "boolean", help: "one line per stage and the summary table only" },
  json: { type: "boolean", help: "one JSON event per line on stdout (start/skip/done/fail…)" },
  "dry-run": { type: "boolean", help: "print each stage's command and permissions; run nothing" },
} as const;

/** LaunchOptions' flags from a command line parsed with LAUNCH_FLAGS. */
export function launchFlags(o: { quiet?: boolean; json?: boolean; "dry-run"?: boolean }) {
  return { quiet: o.quiet, json: o.json, dryRun: o["dry-run"] };
}

export const pipelineCommand = {
  usage: "deno task pipeline",
  summary: "Runs the whole chain (shard → … → evaluate) with the settings of a JSON config.\n" +
    "Each stage runs sandboxed; up-to-date stages are skipped, interrupted ones resume.",
  options: {
    config: { type: "string", help: "the pipeline config (JSON; see README, configs/demo.json)" },
    out: {
      type: "string",
      help: "the run's folder (default: the config's \"out\", runs/pipeline)",
    },
    ...LAUNCH_FLAGS,
  },
} as const;

export type PipelineOptions = Parsed<typeof pipelineCommand.options>;

/** The stages' option schemas with the pipeline's wiring. */
export function schemas() {
  return stageSchemas(STAGES, WIRED);
}

/** Validates a config object read from `file` (errors name the file and the key). */
export async function checkConfig(raw: unknown, file: string): Promise<PipelineConfig> {
  return validateConfigFile(raw, await schemas(), file);
}

export interface LaunchOptions {
  config: PipelineConfig;
  out: string;
  arms?: Arm[];
  quiet?: boolean;
  json?: boolean;
  dryRun?: boolean;
  /** The config's file, named in the problem lines. */
  source?: string;
}

/**
 * Every problem of every step before any runs: each stage's own check of its options (the one it
 * runs at its start), then the rules between a stage's options and its inputs, checked against
 * what the earlier stages' options imply (or deferred when they imply too little).
 */
export async function checkChain(o: Pick<LaunchOptions, "config" | "out" | "arms">) {
  const chain = chainSteps(o.config, resolve(o.out), Object.keys(STAGES), o.arms);
  const { steps, problems } = await checkSteps(chain, STAGES);
  const implied = checkImpliedInputs(steps, problems);
  // In the order of the steps: the first stage's problems first.
  const order = (p: StepProblem) => chain.findIndex((s) => s.id === p.step.id);
  const all = [...problems, ...implied.problems].sort((a, b) => order(a) - order(b));
  return { steps, problems: all, deferred: implied.deferred };
}

/** Builds, checks and runs the chain of a validated config. */
export async function launch(o: LaunchOptions): Promise<PipelineResult | null> {
  const { steps, problems, deferred } = await checkChain(o);
  const where = o.source ? `${o.source}: ` : "";
  if (problems.length) {
    const lines = problemLines(problems);
    for (const line of lines) console.error(`peco: pipeline: ${where}${line}`);
    throw new Error(
      `peco: pipeline: ${where}${lines.length} problem${lines.length > 1 ? "s" : ""} in the ` +
        `config (listed above); no stage was run`,
    );
  }
  if (o.dryRun) {
    const plan = seedPlan(steps);
    for (const line of plan ? seedPlanLines(plan) : []) console.log(`# ${line}`);
    for (const step of steps) console.log(describeStep(step));
    for (const line of deferred) console.log(`# checked when the stage starts: ${line}`);
    return null;
  }
  return await runPipeline(steps, { quiet: o.quiet, json: o.json });
}

export async function main(argv = Deno.args): Promise<void> {
  const options = parseOrExit(pipelineCommand, argv);
  await runTask(pipelineCommand.usage, async () => {
    if (!options.config) throw new UsageError("--config FILE.json is required");
    const config = await readConfig(options.config, await schemas());
    const result = await launch({
      config,
      out: options.out ?? config.out ?? "runs/pipeline",
      source: options.config,
      ...launchFlags(options),
    });
    if (result) Deno.exit(result.code);
  });
}

if (import.meta.main) await main();
