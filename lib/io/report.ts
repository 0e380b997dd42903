// The evaluate stage's report: report.json (every measurement with the split it was measured on
// and the run it came from — a stage folder and the sha256 of its manifest.json), report.md and
// report.html (made from the same blocks by lib/report/document.ts). Writers are atomic.

import { join } from "node:path";
import { writeFileAtomic, writeJsonAtomic } from "./atomic.ts";

/** A stage run a number came from: its folder and the sha256 of its manifest.json. */
export interface RunRef {
  dir: string;
  sha256: string;
}

/** One reported number. `value` is null only when the measurement could not be made (see note). */
export interface Measurement {
  value: number | null;
  split: string;
  run: RunRef;
  note?: string;
  [extra: string]: unknown;
}

/** The keys report.json must hold (each a Measurement of the main arm). */
export const REQUIRED_REPORT_KEYS = [
  "tokenizer.psnr",
  "tokenizer.usage",
  "tokenizer.perplexity",
  "codewords.linear_probe_acc",
  "reconstruction.classifier_acc",
  "pretrain.masked_acc",
  "finetune.pretrained_acc",
  "finetune.scratch_acc",
  "linear_probe.acc",
] as const;

export function measurement(
  value: number | null,
  split: string,
  run: RunRef,
  extra: Record<string, unknown> = {},
): Measurement {
  if (value !== null && !Number.isFinite(value)) {
    throw new Error(`peco: report: measurement on ${split} of ${run.dir} is ${value}`);
  }
  return { value, split, run, ...extra };
}

/**
 * Checks a report object: every required key present as a Measurement ({value, split, run}), and
 * no non-finite number anywhere. Returns the problems (empty when the report is complete).
 */
export function reportProblems(report: Record<string, unknown>): string[] {
  const problems: string[] = [];
  for (const key of REQUIRED_REPORT_KEYS) {
    const m = report[key] as Measurement | undefined;
    if (!m || typeof m !== "object") problems.push(`missing "${key}"`);
    else if (
      !(m.value === null || Number.isFinite(m.value)) || typeof m.split !== "string" ||
      typeof m.run?.dir !== "string" || typeof m.run?.sha256 !== "string"
    ) problems.push(`"${key}" is not {value, split, run: {dir, sha256}}`);
  }
  const walk = (v: unknown, path: string) => {
    if (typeof v === "number" && !Number.isFinite(v)) problems.push(`${path} is ${v}`);
    else if (Array.isArray(v)) v.forEach((x, i) => walk(x, `${path}[${i}]`));
    else if (v && typeof v === "object") {
      for (const [k, x] of Object.entries(v)) walk(x, path ? `${path}.${k}` : k);
    }
  };
  walk(report, "");
  return problems;
}

/**
 * Writes report.json (validated first: a report with problems is an error), then report.md and
 * report.html (lib/report/document.ts).
 */
export async function writeReport(
  dir: string,
  { json, markdown, html }: { json: Record<string, unknown>; markdown: string; html: string },
): Promise<void> {
  const problems = reportProblems(json);
  if (problems.length) {
    throw new Error(`peco: report: report.json is incomplete: ${problems.slice(0, 5).join("; ")}`);
  }
  await writeJsonAtomic(join(dir, "report.json"), json);
  await writeFileAtomic(
    join(dir, "report.md"),
    markdown.endsWith("\n") ? markdown : markdown + "\n",
  );
  await writeFileAtomic(join(dir, "report.html"), html);
}
