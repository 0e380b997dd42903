// `deno task experiment [--lambdas 0,1] [--seeds 0,1,2] [--quick]`: the paper's ablation of the
// perceptual loss weight λ in one command (Table 4 and Table 8). The data are sharded and the
// perceptual network trained once; then for each λ (and each seed) a tokenizer, its export and a
// pretraining, all with the same budgets; then one evaluate over every arm and seed, whose report
// holds the comparison table.
//
//   deno task experiment                          # λ ∈ {0, 1}, configs/demo.json budgets
//   deno task experiment --seeds 0,1,2            # every arm three times, one seed each
//   deno task experiment --lambdas 0,0.3,1,3,10 --quick
//   deno task experiment --perceptual-steps 600   # a longer-trained perceptual network
//   deno task experiment --config my.json --out runs/ablation
//
// Folders: <out>/shard, <out>/perceptual, and per λ <out>/tokenizer-l<λ>, export-l<λ>,
// pretrain-l<λ>; then <out>/evaluate. With several seeds, the arms of the config's own seed
// ("seed", 0 by default) keep those folders and each other seed s has its own under
// <out>/seed-<s>/; the shards and the perceptual network serve every seed (the seed studied is an
// arm's: its tokenizer's, pretraining's and fine-tuning's). Like the pipeline, a rerun skips what
// is up to date (adding a λ or a seed runs only its arms and the evaluation) and an interrupted
// run resumes.

import { resolve } from "node:path";
import { checkInteger, type Parsed, parseOrExit, runTask, UsageError } from "../lib/cli/args.ts";
import type { Arm } from "../lib/cli/pipeline.ts";
import {
  parseSeedList,
  type PipelineConfig,
  readConfig,
  withSeeds,
  withSteps,
} from "../lib/cli/pipeline_config.ts";
import { trainPerceptualCommand } from "../lib/stages/train_perceptual_options.ts";
import { LAUNCH_FLAGS, launchFlags, schemas } from "./pipeline.ts";
import { demoConfig, launchAndReport } from "./demo.ts";

export const experimentCommand = {
  usage: "deno task experiment",
  summary: "The λ ablation: one tokenizer → export → pretrain arm per λ (and per seed) with\n" +
    "identical budgets, then one evaluation comparing them (its report holds the table).",
  options: {
    lambdas: { type: "string", default: "0,1", help: "comma-separated perceptual loss weights λ" },
    seeds: {
      type: "string",
      help: "comma-separated seeds, e.g. 0,1,2: every arm runs once per seed (default: the " +
        'config\'s "seeds", else its "seed"); shards and the perceptual network are shared',
    },
    "perceptual-steps": {
      type: "number",
      help: "train-perceptual steps, instead of the config's (the perceptual network's budget)",
    },
    quick: { type: "boolean", help: "the quick demo's budgets (configs/demo-quick.json)" },
    config: { type: "string", help: "budgets from this pipeline config instead of the demo's" },
    out: {
      type: "string",
      help: "run folder (default: runs/experiment, or runs/experiment-quick)",
    },
    ...LAUNCH_FLAGS,
  },
} as const;

export type ExperimentOptions = Parsed<typeof experimentCommand.options>;

/** "0,0.3,1" → [0, 0.3, 1]; distinct numbers ≥ 0. */
export function parseLambdas(text: string): number[] {
  const values = text.split(",").map((part) => part.trim());
  const lambdas = values.map((part) => {
    const v = Number(part);
    if (part === "" || !Number.isFinite(v) || v < 0) {
      throw new UsageError(`--lambdas: "${part}" is not a number ≥ 0 (e.g. --lambdas 0,1)`);
    }
    return v;
  });
  if (new Set(lambdas).size !== lambdas.length) {
    throw new UsageError(`--lambdas: ${text} lists a value twice`);
  }
  return lambdas;
}

/** One arm per λ: λ = 0 trains without the perceptual network (it would add nothing). */
export function lambdaArms(lambdas: number[], perceptual = "builtin"): Arm[] {
  return lambdas.map((lambda) => ({
    suffix: `-l${lambda}`,
    label: `λ=${lambda}`,
    tokenizer: { lambda, perceptual: lambda === 0 ? "none" : perceptual },
  }));
}

/** The config with the command line's seeds and perceptual budget (checked before anything). */
export function experimentConfig(
  config: PipelineConfig,
  o: Pick<ExperimentOptions, "seeds" | "perceptual-steps">,
  source: string,
): PipelineConfig {
  let result = config;
  if (o.seeds !== undefined) result = withSeeds(result, parseSeedList(o.seeds), source);
  const steps = o["perceptual-steps"];
  if (steps !== undefined) {
    const defaultSteps = trainPerceptualCommand.options.steps.default;
    result = withSteps(result, "train-perceptual", steps, defaultSteps);
  }
  return result;
}

export async function main(argv = Deno.args): Promise<void> {
  const options = parseOrExit(experimentCommand, argv);
  await runTask(experimentCommand.usage, async () => {
    const lambdas = parseLambdas(options.lambdas);
    // The command line's own problems first: nothing is read or run with a bad seed list.
    if (options.seeds !== undefined) parseSeedList(options.seeds);
    checkInteger("perceptual-steps", options["perceptual-steps"], 1);
    const source = options.config ??
      (options.quick ? "configs/demo-quick.json" : "configs/demo.json");
    const config = experimentConfig(
      options.config
        ? await readConfig(options.config, await schemas())
        : await demoConfig(options.quick),
      options,
      source,
    );
    // Each arm's λ (and perceptual "none" for λ = 0) overrides the config's train-tokenizer.
    const perceptual = String(config.stages["train-tokenizer"]?.perceptual ?? "builtin");
    const arms = lambdaArms(lambdas, perceptual);
    if (
      options["perceptual-steps"] !== undefined &&
      !arms.some((arm) => arm.tokenizer.perceptual === "builtin")
    ) {
      throw new UsageError(
        `--perceptual-steps: no arm uses the builtin perceptual network (λ = 0 trains without ` +
          `one; ${source}'s train-tokenizer perceptual is ${perceptual})`,
      );
    }
    const out = options.out ??
      (options.config
        ? config.out ?? "runs/experiment"
        : options.quick
        ? "runs/experiment-quick"
        : "runs/experiment");
    await launchAndReport({
      config,
      out: resolve(out),
      arms,
      source,
      ...launchFlags(options),
    });
  });
}

if (import.meta.main) await main();
