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

import type { OptionSpecs } from "./args.ts";

export type OptionValue = string | number | boolean;

export interface PipelineConfig {
  out?: string;
  seed?: number;
  stages: Record<string, Record<string, OptionValue>>;
  estimates: Record<string, number>;
}

/** What the validator needs to know about each stage the pipeline runs. */
export interface StageSchema {
  options: OptionSpecs;
  /** Options the pipeline sets itself (wiring), with why, e.g. "the pipeline passes <out>/shard". */
  wired: Record<string, string>;
}

const TOP_KEYS = ["out", "seed", "stages", "estimates", "$comment"] as const;
/** Switches of one invocation, not settings of a run. */
const SWITCHES = new Set(["quiet", "force", "help"]);

function fail(path: string, what: string): never {
  throw new Error(`peco: pipeline: ${path}: ${what}`);
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
