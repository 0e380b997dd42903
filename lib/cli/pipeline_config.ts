// The pipeline's config file (deno task pipeline --config FILE.json), checked before any stage
// starts. Every error names the key it is about, e.g.
//
//   peco: pipeline: config.stages.pretrain.stepz: unknown option (known: batch, lr, steps, …)
//
// Shape (every key but `stages` optional):
//
//   {
//     "out": "runs/mine",                     // the run's folder: one sub-folder per stage
//     "seed": 0,                              // --seed of every stage that has one
//     "seeds": [0, 1, 2],                     // run the arms once per seed (see below)
//     "stages": {                             // per stage: its command-line options, by name
//       "shard": { "input": "photos/", "size": 64 },
//       "train-tokenizer": { "steps": 600, "lambda": 1 },
//       …
//     },
//     "estimates": { "train-tokenizer": 300 } // expected seconds per stage, for the ETA only
//   }
//
// A stage section holds that stage's options (their names as on its command line, values of the
// option's type). The options that connect the stages (--shards, --out, …) are set by the
// pipeline and are refused here, as are the per-invocation switches (--quiet, --force).
//
// "seeds" runs each arm (train-tokenizer → export-codebook → pretrain) once per seed, each stage
// with that seed as its --seed; the shards and the perceptual network serve every seed (they keep
// "seed"), and one evaluate measures every arm of every seed. A per-seed stage's section cannot
// set its own seed then. Without "seeds" the run has one seed, "seed".

import { type OptionSpecs, UsageError } from "./args.ts";

export type OptionValue = string | number | boolean;

export interface PipelineConfig {
  out?: string;
  seed?: number;
  /** The seeds the arms run with, distinct integers ≥ 0 (absent: one seed, `seed`). */
  seeds?: number[];
  stages: Record<string, Record<string, OptionValue>>;
  estimates: Record<string, number>;
}

/** What the validator needs to know about each stage the pipeline runs. */
export interface StageSchema {
  options: OptionSpecs;
  /** Options the pipeline sets itself (wiring), with why, e.g. "the pipeline passes <out>/shard". */
  wired: Record<string, string>;
}

const TOP_KEYS = ["out", "seed", "seeds", "stages", "estimates", "$comment"] as const;

/**
 * The stages run once per seed (an arm's randomness: the tokenizer's, its export's and its
 * pretraining's); the others, shard and train-perceptual, serve every seed, and evaluate measures
 * every arm of every seed at once.
 */
export const PER_SEED_STAGES: readonly string[] = [
  "train-tokenizer",
  "export-codebook",
  "pretrain",
];
/** Switches of one invocation, not settings of a run. */
const SWITCHES = new Set(["quiet", "force", "help"]);

function fail(path: string, what: string): never {
  throw new Error(`peco: pipeline: ${path}: ${what}`);
}

/**
 * The problems of a seed list (the config's "seeds", `deno task experiment --seeds`): no entry, an
 * entry that is not an integer ≥ 0, a seed listed twice. `show` writes an entry as the user gave it.
 */
export function seedListProblems(
  seeds: readonly unknown[],
  show: (entry: unknown) => string = (entry) => JSON.stringify(entry) ?? String(entry),
): string[] {
  const problems: string[] = [];
  if (seeds.length === 0) problems.push("no seed listed (e.g. 0,1,2)");
  const seen = new Set<number>();
  for (const [i, seed] of seeds.entries()) {
    if (typeof seed !== "number" || !Number.isSafeInteger(seed) || seed < 0) {
      problems.push(`entry ${i + 1} (${show(seed)}) is not an integer ≥ 0`);
    } else if (seen.has(seed)) {
      problems.push(`seed ${seed} is listed twice`);
    } else seen.add(seed);
  }
  return problems;
}

/** "0,1,2" → [0, 1, 2]; a usage error naming `name` lists every problem of the list. */
export function parseSeedList(text: string, name = "--seeds"): number[] {
  const parts = text.split(",").map((part) => part.trim());
  // Digits only: "1.0", "1e3", "0x1" and "" are refused as typed, not read as numbers.
  const values = parts.map((part) => /^\d+$/.test(part) ? Number(part) : part);
  const problems = text.trim() === "" ? [seedListProblems([])[0]] : seedListProblems(
    values,
    (entry) => typeof entry === "string" ? `"${entry}"` : String(entry),
  );
  if (problems.length) throw new UsageError(`${name}: ${problems.join("; ")}`);
  return values as number[];
}

/**
 * Problems of a seed list against the stage sections: a per-seed stage's section may not set its
 * own seed (each of its runs takes one of the list's). One line per section, naming its key.
 */
export function seedSectionProblems(config: PipelineConfig, source = "config"): string[] {
  if (config.seeds === undefined) return [];
  return PER_SEED_STAGES.filter((stage) => config.stages[stage]?.seed !== undefined).map(
    (stage) =>
      `${source}.stages.${stage}.seed: ${stage} runs once per seed of the seed list, each run ` +
      `with its own --seed; remove this seed`,
  );
}

/** The config with a seed list given on a command line (`--seeds`), checked against its sections. */
export function withSeeds(config: PipelineConfig, seeds: number[], source: string): PipelineConfig {
  const seeded = { ...config, seeds };
  const [conflict] = seedSectionProblems(seeded, `${source}: config`);
  if (conflict) throw new Error(`peco: pipeline: ${conflict} (or leave out --seeds)`);
  return seeded;
}

/**
 * The config with a stage's steps set from a command line (`deno task experiment
 * --perceptual-steps`), its estimate scaled from the steps it had (the section's, else
 * `defaultSteps`, the stage's default) to the new ones.
 */
export function withSteps(
  config: PipelineConfig,
  stage: string,
  steps: number,
  defaultSteps: number,
): PipelineConfig {
  const before = Number(config.stages[stage]?.steps ?? defaultSteps);
  const estimate = config.estimates[stage];
  return {
    ...config,
    stages: { ...config.stages, [stage]: { ...config.stages[stage], steps } },
    estimates: estimate === undefined || !(before > 0)
      ? config.estimates
      : { ...config.estimates, [stage]: estimate * steps / before },
  };
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function describe(v: unknown): string {
  return Array.isArray(v) ? "an array" : v === null ? "null" : `${typeof v} ${JSON.stringify(v)}`;
}

function checkOption(
  path: string,
  key: string,
  value: unknown,
  schema: StageSchema,
): OptionValue {
  if (key in schema.wired) fail(path, `set by the pipeline (${schema.wired[key]}); remove it`);
  if (SWITCHES.has(key)) fail(path, `a per-run switch, not a setting (pass it to the command)`);
  const spec = schema.options[key];
  if (!spec) {
    const known = Object.keys(schema.options)
      .filter((k) => !(k in schema.wired) && !SWITCHES.has(k))
      .sort();
    fail(path, `unknown option (known: ${known.join(", ")})`);
  }
  if (spec.type === "number") {
    if (typeof value !== "number" || !Number.isFinite(value)) {
      fail(path, `expected a number, got ${describe(value)}`);
    }
  } else if (spec.type === "boolean") {
    if (typeof value !== "boolean") fail(path, `expected true or false, got ${describe(value)}`);
  } else {
    if (typeof value !== "string") fail(path, `expected a string, got ${describe(value)}`);
    if (spec.choices && !spec.choices.includes(value)) {
      fail(path, `must be one of ${spec.choices.join(", ")}, got "${value}"`);
    }
  }
  return value as OptionValue;
}

/**
 * Validates a parsed config file against the stages' option specs. `source` names the file in
 * errors. Returns the config with defaults filled in (empty sections, no estimates).
 */
export function validateConfig(
  raw: unknown,
  schemas: Record<string, StageSchema>,
  source = "config",
): PipelineConfig {
  if (!isObject(raw)) fail(source, `must be a JSON object, got ${describe(raw)}`);
  for (const key of Object.keys(raw)) {
    if (!(TOP_KEYS as readonly string[]).includes(key)) {
      fail(`${source}.${key}`, `unknown key (known: ${TOP_KEYS.join(", ")})`);
    }
  }
  const config: PipelineConfig = { stages: {}, estimates: {} };
  if (raw.out !== undefined) {
    if (typeof raw.out !== "string" || raw.out === "") {
      fail(`${source}.out`, `expected a folder path, got ${describe(raw.out)}`);
    }
    config.out = raw.out;
  }
  if (raw.seed !== undefined) {
    if (!Number.isSafeInteger(raw.seed) || (raw.seed as number) < 0) {
      fail(`${source}.seed`, `expected an integer ≥ 0, got ${describe(raw.seed)}`);
    }
    config.seed = raw.seed as number;
  }
  if (raw.seeds !== undefined) {
    if (!Array.isArray(raw.seeds)) {
      fail(
        `${source}.seeds`,
        `expected an array of seeds, e.g. [0, 1, 2], got ${describe(raw.seeds)}`,
      );
    }
    const problems = seedListProblems(raw.seeds);
    if (problems.length) fail(`${source}.seeds`, problems.join("; "));
    config.seeds = raw.seeds as number[];
  }
  const names = Object.keys(schemas);
  const stages = raw.stages ?? {};
  if (!isObject(stages)) fail(`${source}.stages`, `must be an object, got ${describe(stages)}`);
  for (const [stage, section] of Object.entries(stages)) {
    const path = `${source}.stages.${stage}`;
    const schema = schemas[stage];
    if (!schema) fail(path, `unknown stage (known: ${names.join(", ")})`);
    if (!isObject(section)) fail(path, `must be an object of options, got ${describe(section)}`);
    config.stages[stage] = {};
    for (const [key, value] of Object.entries(section)) {
      config.stages[stage][key] = checkOption(`${path}.${key}`, key, value, schema);
    }
  }
  const estimates = raw.estimates ?? {};
  if (!isObject(estimates)) {
    fail(`${source}.estimates`, `must be an object, got ${describe(estimates)}`);
  }
  for (const [stage, seconds] of Object.entries(estimates)) {
    const path = `${source}.estimates.${stage}`;
    if (!schemas[stage]) fail(path, `unknown stage (known: ${names.join(", ")})`);
    if (typeof seconds !== "number" || !(seconds >= 0)) {
      fail(path, `expected seconds ≥ 0, got ${describe(seconds)}`);
    }
    config.estimates[stage] = seconds;
  }
  const [conflict] = seedSectionProblems(config, source);
  if (conflict) throw new Error(`peco: pipeline: ${conflict}`);
  return config;
}

/** validateConfig for the contents of `file`: errors name the file and the key. */
export function validateConfigFile(
  raw: unknown,
  schemas: Record<string, StageSchema>,
  file: string,
): PipelineConfig {
  try {
    return validateConfig(raw, schemas, "config");
  } catch (error) {
    throw new Error((error as Error).message.replace(/^peco: pipeline: /, `$&${file}: `));
  }
}

/** Reads and validates a config file; errors name the file and the key. */
export async function readConfig(
  path: string,
  schemas: Record<string, StageSchema>,
): Promise<PipelineConfig> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (error) {
    return fail(path, `cannot read (${(error as Error).message})`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (error) {
    return fail(path, `not valid JSON (${(error as Error).message})`);
  }
  return validateConfigFile(raw, schemas, path);
}
