// The claims of the evaluate stage on synthetic per-image outcomes (lib/eval/claims.ts,
// lib/eval/outcomes.ts): which arms each claim pairs, on which seeds, and the notes of the claims
// left out. The statistics themselves are tested in stats_test.ts.

import assert from "node:assert/strict";
import "./util.ts";
import { deriveClaims } from "../lib/eval/claims.ts";
import { decodeOutcomes, encodeOutcomes, type OutcomeRecord } from "../lib/eval/outcomes.ts";

Deno.test("outcomes: a string of 0 and 1 per measurement, both ways, bad input named", () => {
  assert.equal(encodeOutcomes(Uint8Array.from([1, 0, 0, 1])), "1001");
  assert.deepEqual([...decodeOutcomes("1001")], [1, 0, 0, 1]);
  assert.throws(() => encodeOutcomes([1, 2]), /peco: outcomes: outcome 1 is 2, not 0 or 1/);
  assert.throws(() => decodeOutcomes("10x", "λ=1 seed 0"), /λ=1 seed 0: character 2 is "x"/);
});

/** n outcomes with the first `correct` right. */
const first = (correct: number, n = 200) =>
  encodeOutcomes(Array.from({ length: n }, (_, i) => (i < correct ? 1 : 0)));

Deno.test("claims: each pairs its two arms seed by seed; missing arms are noted, not guessed", () => {
  const records: OutcomeRecord[] = [];
  for (const seed of [0, 1, 2]) {
    records.push(
      { arm: "λ=1", seed, metric: "codewords.linear_probe_acc", outcomes: first(150) },
      { arm: "λ=1", seed, metric: "reconstruction.classifier_acc", outcomes: first(100) },
      { arm: "λ=1", seed, metric: "finetune.pretrained_acc", outcomes: first(180) },
      { arm: "scratch", seed, metric: "finetune.scratch_acc", outcomes: first(120) },
    );
  }
  // λ = 0 has seeds 0 and 1 only, and no pretraining.
  for (const seed of [0, 1]) {
    records.push(
      { arm: "λ=0", seed, metric: "codewords.linear_probe_acc", outcomes: first(100) },
      { arm: "λ=0", seed, metric: "reconstruction.classifier_acc", outcomes: first(100) },
    );
  }
  const arms = [{ label: "λ=1", lambda: 1 }, { label: "λ=0", lambda: 0 }];
  const { claims, notes } = deriveClaims(arms, records, 0);
  assert.deepEqual(claims.map((c) => [c.name, c.candidate, c.baseline, c.seeds, c.images]), [
    ["semantic codes: codeword probe", "λ=1", "λ=0", 2, 200],
    ["semantic codes: reconstruction classification", "λ=1", "λ=0", 2, 200],
    ["pretraining beats scratch", "λ=1", "scratch", 3, 200],
  ]);
  const [probe, recon, pretraining] = claims;
  // +50 images of 200 on every seed: a difference of 0.25 that holds; equal arms cannot tell.
  assert.ok(Math.abs(probe.difference - 0.25) < 1e-12 && probe.verdict === "holds");
  assert.ok(probe.ci95[0] > 0 && probe.ci95[0] <= 0.25 && probe.ci95[1] >= 0.25);
  assert.equal(recon.difference, 0);
  assert.equal(recon.verdict, "cannot tell");
  assert.ok(Math.abs(pretraining.difference - 0.3) < 1e-12 && pretraining.verdict === "holds");
  assert.deepEqual(notes, [
    '"perceptual codes beat pixel codes for pretraining" left out: no pretrained arm with λ = 0 ' +
    "(each needs a --pretrain folder)",
  ]);
  // Same inputs, same intervals, bit for bit.
  assert.deepEqual(deriveClaims(arms, records, 0).claims, claims);

  // No λ = 0 arm: claim (1) is left out with the reason; a worse candidate does not hold.
  const worse = records.map((r) =>
    r.metric === "finetune.pretrained_acc" ? { ...r, outcomes: first(60) } : r
  );
  const only = deriveClaims([{ label: "λ=1", lambda: 1 }], worse, 0);
  assert.deepEqual(only.claims.map((c) => [c.name, c.verdict]), [
    ["pretraining beats scratch", "does not hold"],
  ]);
  assert.match(
    only.notes[0],
    /"semantic codes: codeword probe" left out: no arm's tokenizer records λ = 0/,
  );
  // Claim (2) is PeCo's arm against scratch even when the main (first) arm is λ = 0, as in
  // `deno task experiment` (λ ∈ {0, 1}); without a pretrained λ > 0 arm, the main arm's.
  const both = [
    ...records,
    ...[0, 1].map((seed) => ({
      arm: "λ=0",
      seed,
      metric: "finetune.pretrained_acc" as const,
      outcomes: first(130),
    })),
  ];
  const pixelFirst = [{ label: "λ=0", lambda: 0 }, { label: "λ=1", lambda: 1 }];
  const pick = (arms: typeof pixelFirst, rs: OutcomeRecord[]) =>
    deriveClaims(arms, rs, 0).claims.find((c) => c.name === "pretraining beats scratch")!;
  assert.equal(pick(pixelFirst, both).candidate, "λ=1");
  const pixelOnly = both.filter((r) =>
    !(r.arm === "λ=1" && r.metric === "finetune.pretrained_acc")
  );
  assert.equal(pick(pixelFirst, pixelOnly).candidate, "λ=0");
  // Arms without a recorded λ: neither (1) nor (3).
  const unknown = deriveClaims([{ label: "λ=1", lambda: null }], records, 0);
  assert.deepEqual(unknown.claims.map((c) => c.name), ["pretraining beats scratch"]);
  assert.equal(unknown.notes.length, 3);
});
