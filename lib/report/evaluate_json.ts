// The evaluate stage's report.json (lib/io/report.ts writes it): the main arm's measurements at the
// top level, then every arm and seed, the claims, the per-image outcomes (their format is in
// docs/statistics.md), the figures, the config and the shards. Made from the same EvaluateReport as
// report.md and report.html (lib/report/evaluate_report.ts).

import { measurement, REQUIRED_REPORT_KEYS } from "../io/report.ts";
import type { EvaluateReport } from "./evaluate_report.ts";

/** The notice a smoke run's report.json holds. */
const SMOKE_JSON_NOTICE = "smoke run: its budgets are too small to support any claim";

/**
 * report.json: the main arm's measurements at the top level (REQUIRED_REPORT_KEYS), then every
 * arm and seed, the claims, the per-image outcomes (format in docs/statistics.md), the figures, the
 * config and the shards.
 */
export function reportJson(r: EvaluateReport): Record<string, unknown> {
  const first = r.arms[0];
  const json: Record<string, unknown> = {};
  if (r.smoke) json.notice = SMOKE_JSON_NOTICE;
  for (const key of REQUIRED_REPORT_KEYS) {
    json[key] = first.metrics[key] ??
      measurement(null, "val", first.pretrain ?? first.export, {
        note: "not measured: the main arm has no pretrain folder",
      });
  }
  for (const [key, m] of Object.entries(first.metrics)) json[key] ??= m;
  const shards = { dir: r.shards.dir, sha256: r.shards.sha256 };
  json["classifier.real_acc"] = measurement(r.classifier.accuracy, "val", shards, {
    steps: r.classifier.steps,
    seed: r.classifier.seed,
  });
  json.claims = r.claims;
  json.claim_notes = r.claimNotes;
  json.perceptual_knn = r.perceptualKnn;
  if (r.seedSharing) json.seed_sharing = r.seedSharing;
  json.arms = r.arms.map((a) => ({
    label: a.label,
    seed: a.seed,
    lambda: a.lambda,
    export: a.export,
    pretrain: a.pretrain,
    metrics: a.metrics,
    figures: {
      masked_prediction: a.maskFigure?.file,
      code_histogram: a.figures.histogram?.file,
      patches: a.figures.patches.map((p) => p.file),
    },
    vit_probe_blocks: a.vitProbe?.perBlock,
    masked_prediction_acc: a.maskFigure?.maskedAcc,
    finetune_curve: a.finetuneCurve,
  }));
  json.finetune_scratch = r.scratch;
  json.outcomes = {
    format: "per measurement one string, one character per held-out image in the val split's " +
      'order: "1" classified right, "0" wrong; arm "scratch" is fine-tuning from scratch',
    images: r.evalImages,
    runs: r.outcomes,
  };
  json.figures = {
    curves: r.curves.map((c) => ({
      dir: c.dir,
      stage: c.stage,
      files: c.charts.map((x) => x.file),
      note: c.note,
    })),
    finetune: r.finetuneCharts.map((c) => c.file),
  };
  json.config = r.config;
  json.shards = shards;
  return json;
}
