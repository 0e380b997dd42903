// Per-image outcomes of the evaluate stage's accuracy measurements, kept so that any two arms can
// be compared image by image (docs/statistics.md). In report.json each measurement's outcomes are
// one string with one character per held-out image, in the order of the held-out split: "1" where
// the image was classified right, "0" where not. Every string of one report has the same length
// (the `images` beside them), and character i of every string is the same image.

import { failer } from "../io/errors.ts";

const fail: (what: string) => never = failer("outcomes");

/** The accuracy measurements whose outcomes are kept, by their report.json key. */
export const OUTCOME_METRICS = [
  "codewords.linear_probe_acc",
  "reconstruction.classifier_acc",
  "linear_probe.acc",
  "finetune.pretrained_acc",
  "finetune.scratch_acc",
] as const;

export type OutcomeMetric = typeof OUTCOME_METRICS[number];

/** One measurement's outcomes in report.json. `arm` is "scratch" for training from scratch. */
export interface OutcomeRecord {
  arm: string;
  seed: number;
  metric: OutcomeMetric;
  outcomes: string;
}

/** 0/1 outcomes as a string of "0" and "1". */
export function encodeOutcomes(outcomes: ArrayLike<number>): string {
  let text = "";
  for (let i = 0; i < outcomes.length; i++) {
    const o = outcomes[i];
    if (o !== 0 && o !== 1) fail(`outcome ${i} is ${o}, not 0 or 1`);
    text += o === 1 ? "1" : "0";
  }
  return text;
}

/** A string of "0" and "1" as numbers (what the statistics take). */
export function decodeOutcomes(text: string, label = "outcomes"): Float64Array {
  const out = new Float64Array(text.length);
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c !== "0" && c !== "1") fail(`${label}: character ${i} is "${c}", not "0" or "1"`);
    out[i] = c === "1" ? 1 : 0;
  }
  return out;
}
