// Command-line parsing for every task: typed options over node:util parseArgs, a generated
// --help, and one-line errors (exit 2) for unknown or malformed options.

import { parseArgs } from "node:util";

export type OptionType = "string" | "number" | "boolean";

export interface OptionSpec {
  type: OptionType;
  help: string;
  default?: string | number | boolean;
  short?: string;
  /** Allowed values of a string option. */
  choices?: readonly string[];
}

export type OptionSpecs = Record<string, OptionSpec>;

type ValueOf<S extends OptionSpec> = S["type"] extends "number" ? number
  : S["type"] extends "boolean" ? boolean
  : string;

export type Parsed<S extends OptionSpecs> = {
  [K in keyof S]: S[K]["default"] extends undefined ? ValueOf<S[K]> | undefined : ValueOf<S[K]>;
};

export interface Command<S extends OptionSpecs> {
  /** e.g. "deno task demo". */
  usage: string;
  summary: string;
  options: S;
}

export class UsageError extends Error {
  override name = "UsageError";
}

/** Usage error unless `v` (when given) is an integer ≥ min: `--name must be an integer ≥ min`. */
export function checkInteger(name: string, v: number | undefined, min = 1): void {
  if (v !== undefined && (!Number.isSafeInteger(v) || v < min)) {
    throw new UsageError(`--${name} must be an integer ≥ ${min}, got ${v}`);
  }
}

export function helpText<S extends OptionSpecs>(command: Command<S>): string {
  const rows = Object.entries(command.options).map(([name, spec]) => {
    const flag = `${spec.short ? `-${spec.short}, ` : ""}--${name}${
      spec.type === "boolean" ? "" : ` <${spec.choices ? spec.choices.join("|") : spec.type}>`
    }`;
    const def = spec.default !== undefined && spec.type !== "boolean"
      ? ` (default: ${spec.default})`
      : "";
    return [flag, spec.help + def];
  });
  rows.push(["-h, --help", "show this help"]);
  const width = Math.max(...rows.map(([f]) => f.length)) + 2;
  return `${command.summary}\n\nUsage: ${command.usage} [options]\n\nOptions:\n` +
    rows.map(([f, h]) => `  ${f.padEnd(width)}${h}`).join("\n");
}

/** Parses argv; throws UsageError with a one-line message on bad input; null when --help. */
export function parseOptions<S extends OptionSpecs>(
  command: Command<S>,
  argv: string[],
): Parsed<S> | null {
  const config: Record<string, { type: "string" | "boolean"; short?: string }> = {
    help: { type: "boolean", short: "h" },
  };
  for (const [name, spec] of Object.entries(command.options)) {
    config[name] = { type: spec.type === "boolean" ? "boolean" : "string" };
    if (spec.short) config[name].short = spec.short;
  }
  // `deno task NAME -- --flag` passes the "--" through: it separates the task's own arguments.
  const args = argv[0] === "--" ? argv.slice(1) : argv;
  let values: Record<string, string | boolean | undefined>;
  try {
    values = parseArgs({ args, options: config, strict: true, allowPositionals: false })
      .values as Record<string, string | boolean | undefined>;
  } catch (error) {
    throw new UsageError(`${(error as Error).message.split("\n")[0]} (see --help)`);
  }
  if (values.help) return null;
  const out: Record<string, unknown> = {};
  for (const [name, spec] of Object.entries(command.options)) {
    const raw = values[name];
    if (raw === undefined) {
      out[name] = spec.default;
      continue;
    }
    if (spec.type === "number") {
      const n = Number(raw);
      if (raw === "" || !Number.isFinite(n)) {
        throw new UsageError(`--${name} expects a number, got "${raw}"`);
      }
      out[name] = n;
    } else if (spec.type === "string" && spec.choices && !spec.choices.includes(raw as string)) {
      throw new UsageError(`--${name} must be one of ${spec.choices.join(", ")}, got "${raw}"`);
    } else {
      out[name] = raw;
    }
  }
  return out as Parsed<S>;
}

/** parseOptions for a task's main: prints --help and exits 0, or the error and exits 2. */
export function parseOrExit<S extends OptionSpecs>(
  command: Command<S>,
  argv = Deno.args,
): Parsed<S> {
  try {
    const parsed = parseOptions(command, argv);
    if (parsed) return parsed;
    console.log(helpText(command));
    Deno.exit(0);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    console.error(`${command.usage}: ${error.message}`);
    Deno.exit(2);
  }
}

/**
 * Runs a task's body. Expected failures become one line on stderr and a non-zero exit: usage
 * errors exit 2, errors of ours (messages starting "peco:") exit 1. Anything else is a bug and
 * keeps its stack trace.
 */
export async function runTask(usage: string, body: () => Promise<void>): Promise<void> {
  try {
    await body();
  } catch (error) {
    if (error instanceof UsageError) {
      console.error(`${usage}: ${error.message}`);
      Deno.exit(2);
    }
    if (error instanceof Error && error.message.startsWith("peco:")) {
      console.error(error.message.split("\n")[0]);
      Deno.exit(1);
    }
    throw error;
  }
}
