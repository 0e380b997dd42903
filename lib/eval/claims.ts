// The paper's claims, stated on the evaluate stage's per-image outcomes (docs/statistics.md):
//  (1) a perceptual codebook (λ > 0) gives more semantic codes than a pixel-only one (λ = 0): the
//      codeword linear probe and the classification of reconstructions (paper Table 4);
//  (2) pretraining beats training from scratch: a pretrained arm fine-tuned vs the same ViT
//      fine-tuned from random initialisation with the same budget and seed (Table 1); the arm is
//      the first pretrained one with λ > 0 (PeCo's own: pretraining over perceptual codes), else
//      the main arm (the first; an experiment's λ list may well start with 0);
//  (3) pretraining over perceptual codes beats pretraining over pixel-only codes: fine-tuned λ > 0
//      vs λ = 0 (Table 8).
// Each claim pairs the two arms seed by seed on the same held-out images (pairedClaim). A claim
// whose arms are not there (no λ = 0 arm, no pretrain folder, no seed both arms share) is left out
// with a note saying why.

import { type Claim, pairedClaim, type PairedOutcomes } from "./stats.ts";
import { decodeOutcomes, type OutcomeMetric, type OutcomeRecord } from "./outcomes.ts";

/** What claims need to know of an arm: its label, and the λ its tokenizer was trained with. */
export interface ArmLambda {
  label: string;
  /** The perceptual weight of the arm's tokenizer (null: not recorded). */
  lambda: number | null;
}

export interface ClaimOf extends Claim {
  /** What the claim says, in words. */
  statement: string;
  candidate: string;
  baseline: string;
}

export interface Claims {
  claims: ClaimOf[];
  /** Claims left out, and why. */
  notes: string[];
}

/** Label of the training-from-scratch runs in the outcome records. */
export const SCRATCH = "scratch";

interface ClaimSpec {
  name: string;
  statement: string;
  metric: string;
  candidate: { label: string; metric: OutcomeMetric };
  baseline: { label: string; metric: OutcomeMetric };
}

/**
 * The claims that `records` (every arm's and seed's outcomes) support. `arms` in report order: the
 * first is the main arm. `seed` seeds the bootstrap streams.
 */
export function deriveClaims(
  arms: readonly ArmLambda[],
  records: readonly OutcomeRecord[],
  seed: number,
): Claims {
  const notes: string[] = [];
  const specs: ClaimSpec[] = [];
  const labels = [...new Map(arms.map((a) => [a.label, a])).values()];
  const has = (label: string, metric: OutcomeMetric) =>
    records.some((r) => r.arm === label && r.metric === metric);
  const perceptual = labels.find((a) => a.lambda !== null && a.lambda > 0);
  const pixel = labels.find((a) => a.lambda === 0);
  const lambdaWhy = (a: ArmLambda | undefined, what: string) =>
    a ? "" : `no arm's tokenizer records ${what}`;

  // (1) codebook semantics.
  for (
    const [metric, name, measure] of [
      ["codewords.linear_probe_acc", "semantic codes: codeword probe", "codeword linear probe"],
      [
        "reconstruction.classifier_acc",
        "semantic codes: reconstruction classification",
        "classification of reconstructions",
      ],
    ] as const
  ) {
    if (!perceptual || !pixel) {
      notes.push(
        `"${name}" left out: ${lambdaWhy(perceptual, "λ > 0") || lambdaWhy(pixel, "λ = 0")}`,
      );
      continue;
    }
    specs.push({
      name,
      statement: `a perceptual codebook (arm ${perceptual.label}: λ = ${perceptual.lambda}) ` +
        `gives more semantic codes than a pixel-only one (arm ${pixel.label}: λ = 0): ${measure}`,
      metric: `${measure} top-1 (fraction)`,
      candidate: { label: perceptual.label, metric },
      baseline: { label: pixel.label, metric },
    });
  }

  // (2) pretraining vs scratch: PeCo's arm (pretrained over perceptual codes), else the main arm.
  const pretrainedPerceptual = labels.find((a) =>
    a.lambda !== null && a.lambda > 0 && has(a.label, "finetune.pretrained_acc")
  );
  const main = pretrainedPerceptual ?? labels[0];
  const pretrainName = "pretraining beats scratch";
  if (!main || !has(main.label, "finetune.pretrained_acc")) {
    notes.push(`"${pretrainName}" left out: the main arm has no --pretrain folder`);
  } else {
    specs.push({
      name: pretrainName,
      statement: `fine-tuning the pretrained ViT (arm ${main.label}) beats training it from ` +
        "scratch with the same budget and seed",
      metric: "fine-tuned top-1 (fraction)",
      candidate: { label: main.label, metric: "finetune.pretrained_acc" },
      baseline: { label: SCRATCH, metric: "finetune.scratch_acc" },
    });
  }

  // (3) perceptual vs pixel codes as pretraining targets.
  const codesName = "perceptual codes beat pixel codes for pretraining";
  const pretrainedPixel = labels.find((a) =>
    a.lambda === 0 && has(a.label, "finetune.pretrained_acc")
  );
  if (!pretrainedPerceptual || !pretrainedPixel) {
    notes.push(
      `"${codesName}" left out: no pretrained arm with ${
        pretrainedPerceptual ? "λ = 0" : "λ > 0"
      } (each needs a --pretrain folder)`,
    );
  } else {
    specs.push({
      name: codesName,
      statement: `pretraining over perceptual codes (arm ${pretrainedPerceptual.label}: λ = ` +
        `${pretrainedPerceptual.lambda}) fine-tunes better than over pixel-only codes ` +
        `(arm ${pretrainedPixel.label}: λ = 0)`,
      metric: "fine-tuned top-1 (fraction)",
      candidate: { label: pretrainedPerceptual.label, metric: "finetune.pretrained_acc" },
      baseline: { label: pretrainedPixel.label, metric: "finetune.pretrained_acc" },
    });
  }

  const claims: ClaimOf[] = [];
  for (const spec of specs) {
    const seeds = pairedSeeds(spec, records);
    if (!seeds.length) {
      notes.push(
        `"${spec.name}" left out: ${spec.candidate.label} and ${spec.baseline.label} share no seed`,
      );
      continue;
    }
    const claim = pairedClaim({ name: spec.name, metric: spec.metric, seeds, seed });
    claims.push({
      ...claim,
      statement: spec.statement,
      candidate: spec.candidate.label,
      baseline: spec.baseline.label,
    });
  }
  return { claims, notes };
}

/** Per seed both arms were measured with (ascending), the two arms' outcomes. */
function pairedSeeds(spec: ClaimSpec, records: readonly OutcomeRecord[]): PairedOutcomes[] {
  const bySeed = (side: ClaimSpec["candidate"]) =>
    new Map(
      records.filter((r) => r.arm === side.label && r.metric === side.metric)
        .map((r) => [r.seed, r.outcomes]),
    );
  const candidate = bySeed(spec.candidate);
  const baseline = bySeed(spec.baseline);
  return [...candidate.keys()].filter((s) => baseline.has(s)).sort((a, b) => a - b).map((s) => ({
    candidate: decodeOutcomes(candidate.get(s)!, `${spec.candidate.label} seed ${s}`),
    baseline: decodeOutcomes(baseline.get(s)!, `${spec.baseline.label} seed ${s}`),
  }));
}
