// The evaluate stage's work (tasks/evaluate.ts wires the command line to it): the config resolved
// from the options and inputs, then every measurement of lib/eval on every arm and seed, the claims,
// and the report (lib/report/evaluate_report.ts). Order: the real-image classifier; per arm its
// tokenizer's reconstructions and codeword probe and, with a pretrain folder, the masked-prediction
// figure and the ViT probes; then fine-tuning (each pretrained arm, and from scratch once per
// seed), which checkpoints in the stage's folder so that a rerun after a kill resumes there.
// --stop-at stops the first fine-tuning run that reaches a checkpoint at or after that step, as if
// killed: the stage ends "stopped" before the report (no report.json / .md / .html, no manifest).

import { join } from "node:path";
import { adapterInfo } from "../tensor/engine.ts";
import { Progress } from "../cli/progress.ts";
import type { StageRun } from "../cli/stage.ts";
import type { TrainingOutcome } from "../cli/training.ts";
import { failer, reason } from "../io/errors.ts";
import { measurement, type RunRef, writeReport } from "../io/report.ts";
import { Beit, BEIT_MODEL_FILE } from "../models/beit.ts";
import { Tokenizer, TOKENIZER_FILE } from "../models/tokenizer.ts";
import { deriveClaims } from "../eval/claims.ts";
import {
  finetuneRun,
  type FinetuneRunResult,
  type FinetuneRunStopped,
  runLayerDecay,
} from "../eval/finetune_run.ts";
import { type HostSet, type ImageSpec, type OnProgress, readSet } from "../eval/heldout.ts";
import { maskedPrediction } from "../eval/masked_prediction.ts";
import { encodeOutcomes, type OutcomeMetric, type OutcomeRecord } from "../eval/outcomes.ts";
import { codewordProbe, vitProbes } from "../eval/probes.ts";
import { trainRealClassifier } from "../eval/real_classifier.ts";
import { reconstructionQuality } from "../eval/reconstruction.ts";
import { seedFor } from "../eval/seeds.ts";
import { finetuneCharts, type WrittenChart } from "../report/charts.ts";
import { fileReader, pct, toHtml, toMarkdown } from "../report/document.ts";
import {
  type ArmReport,
  type EvaluateReport,
  exportFigures,
  FIGURES,
  reportBlocks,
  saveChart,
  stageCurveFigures,
} from "../report/evaluate_report.ts";
import { reportJson } from "../report/evaluate_json.ts";
import { writeMaskFigure } from "../report/masked_prediction.ts";
import {
  finetuneWarmup,
  maskRatios,
  SCRATCH_LABEL,
  scratchLayerDecay,
} from "./evaluate_options.ts";
import type { EvaluateOptions } from "./evaluate_options.ts";
import {
  type Arm,
  type Inputs,
  pretrainMaskedAcc,
  seedSharing,
  type StageFolder,
} from "./evaluate_inputs.ts";

const STAGE = "evaluate";
const fail: (what: string) => never = failer(STAGE);

/** The resolved, fingerprinted config (paths are not part of it: the inputs' hashes are). */
export function resolveEvaluateConfig(o: EvaluateOptions, inputs: Inputs) {
  const evalImages = Math.min(o["eval-images"], inputs.shards.splits.val.count);
  const scratchDecay = scratchLayerDecay(o);
  return {
    arms: inputs.arms.map((a) => ({
      label: a.label,
      seed: a.seed,
      pretrained: a.pretrainRun !== null,
    })),
    seed: o.seed,
    evalImages,
    smoke: o.smoke ?? false,
    finetune: {
      steps: o["finetune-steps"],
      batch: o["finetune-batch"],
      lr: o["finetune-lr"],
      warmupSteps: finetuneWarmup(o),
      layerDecay: o["layer-decay"],
      // Only when it differs: a config without it (every one before the option) keeps its
      // fingerprint, so its finished folder stays up to date.
      ...(scratchDecay !== o["layer-decay"] ? { scratchLayerDecay: scratchDecay } : {}),
      labelSmoothing: o["label-smoothing"],
      dropPath: o["drop-path"],
      weightDecay: o["weight-decay"],
      betas: [0.9, 0.999] as [number, number],
      checkpointEvery: o["finetune-ckpt-every"],
    },
    probe: {
      trainImages: Math.min(o["probe-train"], inputs.shards.splits.train.count),
      epochs: o["probe-epochs"],
      batch: o["probe-batch"],
      lr: o["probe-lr"],
      weightDecay: 1e-4,
      /** Share of the probe's training images held back to choose the best ViT block. */
      selectFraction: 0.2,
    },
    classifier: {
      steps: o["classifier-steps"],
      batch: o["classifier-batch"],
      lr: 2e-3,
      width: o["classifier-width"],
    },
    figure: { images: Math.min(o["figure-images"], evalImages), maskRatios: maskRatios(o) },
    batch: o.batch,
  };
}

export type EvaluateConfig = ReturnType<typeof resolveEvaluateConfig>;

type Log = (line: string) => void;

/** A progress bar for one measurement, its one-line result, and its time in `seconds`. */
class Measure {
  private readonly bar: Progress;
  private readonly started = performance.now();
  constructor(
    readonly label: string,
    total: number,
    unit: string,
    private readonly env: { quiet: boolean; log: Log; seconds: Record<string, number> },
  ) {
    this.bar = new Progress({ label, total, unit, quiet: env.quiet });
  }
  readonly progress: OnProgress = (done, metrics = {}) => this.bar.update(done, metrics);
  done(result: string): void {
    const seconds = (performance.now() - this.started) / 1000;
    this.bar.finish();
    this.env.log(`${STAGE}: ${this.label}: ${result} (${seconds.toFixed(1)} s)`);
    this.env.seconds[this.label] = seconds;
  }
}

/** The ViT's input images of a pretrained arm. */
function vitSpec(arm: Arm, tok: { image: ImageSpec }): ImageSpec {
  const image = arm.vit!.image;
  // A model file without an image spec: inputs normalised as the tokenizer's.
  return image.mean.length ? image : { ...tok.image, size: arm.vit!.config.imageSize };
}

async function loadBeit(arm: Arm, seed: number): Promise<Beit> {
  const model = new Beit(arm.vit!.config, seed, "mim");
  try {
    await model.loadSafetensors(join(arm.pretrainRun!.dir, BEIT_MODEL_FILE));
  } catch (error) {
    model.dispose();
    fail(`--pretrain ${arm.pretrainRun!.dir}: ${reason(error)}`);
  }
  return model.eval();
}

const ref = (f: StageFolder): RunRef => ({ dir: f.dir, sha256: f.sha256 });

/**
 * Every measurement, the claims and the report; returns the stage's summary, or status "stopped"
 * (--stop-at: a fine-tuning run stopped after a checkpoint; nothing of the report is written).
 */
export async function evaluate(
  o: EvaluateOptions,
  config: EvaluateConfig,
  inputs: Inputs,
  run: StageRun,
  log: Log,
): Promise<TrainingOutcome> {
  const started = performance.now();
  const { shards } = inputs;
  const n = config.evalImages;
  const val = await readSet(shards.splits.val, n);
  const probeTrain = await readSet(shards.splits.train, config.probe.trainImages);
  await Deno.mkdir(join(run.out, FIGURES), { recursive: true });
  const seconds: Record<string, number> = {};
  const env = { quiet: o.quiet ?? false, log, seconds };
  const measure = (label: string, total: number, unit: string) =>
    new Measure(label, total, unit, env);
  const name = (a: Arm) =>
    a.label + (inputs.arms.some((b) => b !== a && b.label === a.label) ? ` seed ${a.seed}` : "");
  log(
    `${STAGE}: ${adapterInfo().description}; ${inputs.arms.length} arm(s) ` +
      `(${inputs.arms.map(name).join(", ")}), ${n} val images, ${inputs.classes} classes`,
  );
  const outcomes: OutcomeRecord[] = [];
  const keep = (arm: string, seed: number, metric: OutcomeMetric, o: Uint8Array) =>
    outcomes.push({ arm, seed, metric, outcomes: encodeOutcomes(o) });
  const probeData = (train: HostSet) => ({
    train,
    val,
    evalImages: n,
    classes: inputs.classes,
    batch: config.batch,
  });

  // The real-image classifier: one instrument (seed --seed) for every arm's reconstructions.
  const c = config.classifier;
  const cm = measure("real-image classifier", c.steps, "step");
  const classifier = await trainRealClassifier(
    { shards, val, evalImages: n, classes: inputs.classes },
    c,
    config.seed,
    { evalBatch: config.batch, onProgress: cm.progress },
  );
  cm.done(`top-1 ${pct(classifier.accuracy)}% on ${n} real val images`);

  const arms: (ArmReport & { vitSpec?: ImageSpec })[] = [];
  try {
    for (const arm of inputs.arms) {
      arms.push(await measureArm(arm));
    }
  } finally {
    classifier.model.dispose();
  }

  /** Tokenizer measures of every arm; the ViT's of a pretrained one. */
  async function measureArm(arm: Arm): Promise<ArmReport & { vitSpec?: ImageSpec }> {
    const tok = await Tokenizer.load(join(arm.export, TOKENIZER_FILE)).catch((error) =>
      fail(`--export ${arm.export}: ${reason(error)}`)
    );
    try {
      const { channels, height } = shards.manifest.image;
      if (tok.info.image.channels !== channels || tok.info.image.size !== height) {
        fail(
          `--export ${arm.export}: the tokenizer takes ${tok.info.image.channels}×` +
            `${tok.info.image.size}² images, the shards hold ${channels}×${height}²`,
        );
      }
      const rm = measure(`tokenizer ${name(arm)}: reconstructions`, n, "img");
      const recon = await reconstructionQuality(tok, val, n, config.batch, classifier, rm.progress);
      rm.done(
        `PSNR ${recon.psnr.toFixed(2)} dB, SSIM ${recon.ssim.toFixed(4)}, reconstructions ` +
          `classified ${pct(recon.accuracy)}% on ${n} val images`,
      );
      keep(arm.label, arm.seed, "reconstruction.classifier_acc", recon.outcomes);
      const pm = measure(
        `tokenizer ${name(arm)}: codeword probe`,
        config.probe.trainImages + n,
        "img",
      );
      const probe = await codewordProbe(
        tok,
        probeData(probeTrain),
        config.probe,
        arm.seed,
        pm.progress,
      );
      pm.done(
        `codeword linear probe top-1 ${pct(probe.accuracy)}% (train ${pct(probe.trainAccuracy)}%)`,
      );
      keep(arm.label, arm.seed, "codewords.linear_probe_acc", probe.outcomes);
      const split = arm.codebook.splits.val ? "val" : Object.keys(arm.codebook.splits)[0];
      const stats = arm.codebook.splits[split];
      const exportRef = ref(arm.exportRun);
      const lambda = tok.info.provenance.lambda;
      const result: ArmReport & { vitSpec?: ImageSpec } = {
        label: arm.label,
        seed: arm.seed,
        lambda: typeof lambda === "number" ? lambda : null,
        export: exportRef,
        pretrain: arm.pretrainRun ? ref(arm.pretrainRun) : null,
        metrics: {
          "tokenizer.psnr": measurement(recon.psnr, "val", exportRef, { images: n }),
          "tokenizer.ssim": measurement(recon.ssim, "val", exportRef, { images: n }),
          "tokenizer.usage": measurement(stats.usage, split, exportRef, {
            from: "codebook.json",
          }),
          "tokenizer.perplexity": measurement(stats.perplexity, split, exportRef, {
            from: "codebook.json",
          }),
          "codewords.linear_probe_acc": measurement(probe.accuracy, "val", exportRef, {
            train_images: config.probe.trainImages,
            train_acc: probe.trainAccuracy,
          }),
          "reconstruction.classifier_acc": measurement(recon.accuracy, "val", exportRef, {
            real_image_acc: classifier.accuracy,
          }),
        },
        figures: await exportFigures(run.out, {
          slug: arm.slug,
          label: name(arm),
          exportDir: arm.export,
          codebook: arm.codebook,
        }),
      };
      if (arm.pretrainRun) await measureVit(arm, tok, result);
      return result;
    } finally {
      tok.dispose();
    }
  }

  /** The masked-prediction figure and the ViT probes of a pretrained arm. */
  async function measureVit(arm: Arm, tok: Tokenizer, result: ArmReport & { vitSpec?: ImageSpec }) {
    const spec = vitSpec(arm, tok.info);
    result.vitSpec = spec;
    const beit = await loadBeit(arm, seedFor(arm.seed, "beit"));
    try {
      const masked = await maskedPrediction(beit, tok, spec, val, {
        images: config.figure.images,
        ratios: config.figure.maskRatios,
        seed: arm.seed,
      }).catch((error) => fail(`arm "${name(arm)}": ${reason(error)}`));
      result.maskFigure = await writeMaskFigure(
        run.out,
        `${FIGURES}/masked_prediction_${arm.slug}.png`,
        masked,
      );
      const depth = arm.vit!.config.depth;
      const vm = measure(
        `ViT ${name(arm)}: linear probes`,
        config.probe.trainImages + n + depth,
        "item",
      );
      const probes = await vitProbes(
        beit,
        spec,
        probeData(probeTrain),
        config.probe,
        arm.seed,
        vm.progress,
      );
      vm.done(
        `linear probe top-1 last block ${pct(probes.last)}%, best block ${probes.best.block} ` +
          `${pct(probes.best.val)}%`,
      );
      result.vitProbe = probes;
      keep(arm.label, arm.seed, "linear_probe.acc", probes.outcomes);
    } finally {
      beit.dispose();
    }
    const pr = ref(arm.pretrainRun!);
    const maskedAcc = await pretrainMaskedAcc(arm.pretrainRun!);
    Object.assign(result.metrics, {
      "pretrain.masked_acc": measurement(maskedAcc.value, maskedAcc.split, pr, {
        from: maskedAcc.key,
      }),
      "linear_probe.acc": measurement(result.vitProbe!.last, "val", pr, {
        block: arm.vit!.config.depth,
      }),
      "linear_probe.best_acc": measurement(result.vitProbe!.best.val, "val", pr, {
        block: result.vitProbe!.best.block,
        chosen_on: `${Math.round(100 * config.probe.selectFraction)}% of the probe's train images`,
      }),
    });
  }

  // Fine-tuning: every pretrained arm with its seed, then from scratch once per seed of those
  // arms (the main pretrained arm's architecture and input images).
  const ft = config.finetune;
  const data = {
    shards,
    val,
    evalImages: n,
    classes: inputs.classes,
    evalBatch: config.batch,
  };
  const stage = {
    name: STAGE,
    out: run.out,
    fingerprint: run.fingerprint,
    checkpoint: run.checkpoint,
    stopAt: o["stop-at"],
  };
  const fineTune = async (
    label: string,
    spec: Parameters<typeof finetuneRun>[0],
  ): Promise<FinetuneRunResult | FinetuneRunStopped> => {
    const m = measure(`fine-tune ${label}`, ft.steps, "step");
    const r = await finetuneRun(spec, data, ft, stage, m.progress);
    const how = r.provenance === "run"
      ? ""
      : r.provenance === "finished before"
      ? " (finished before the interruption)"
      : ` (resumed at step ${r.provenance.resumedFrom})`;
    m.done(
      r.status === "stopped"
        ? `stopped after the checkpoint at step ${r.step} (--stop-at)${how}`
        : `top-1 ${pct(r.accuracy)}% on ${n} val images${how}`,
    );
    return r;
  };
  /** The stage stopped in fine-tuning run `name` (--stop-at): no report; a rerun resumes. */
  const stopped = (name: string, r: FinetuneRunStopped): TrainingOutcome => {
    log(`${STAGE}: stopped before the report (--stop-at); rerun to resume`);
    return { status: "stopped", summary: { finetune_run: name, step: r.step } };
  };
  const finetuneCurves: { label: string; curve: FinetuneRunResult["curve"] }[] = [];
  const pretrainedArms = inputs.arms.filter((a) => a.pretrainRun);
  for (const arm of pretrainedArms) {
    const result = arms[arm.index];
    const runName = `pretrained-${arm.slug}-seed-${arm.seed}`;
    const r = await fineTune(`pretrained ${name(arm)}`, {
      name: runName,
      vit: arm.vit!.config,
      spec: result.vitSpec!,
      weights: join(arm.pretrainRun!.dir, BEIT_MODEL_FILE),
      seed: arm.seed,
    });
    if (r.status === "stopped") return stopped(runName, r);
    result.metrics["finetune.pretrained_acc"] = measurement(r.accuracy, "val", result.pretrain!, {
      steps: ft.steps,
      layer_decay: runLayerDecay(ft, true),
      seed: arm.seed,
    });
    result.finetuneCurve = r.curve;
    finetuneCurves.push({ label: name(arm), curve: r.curve });
    keep(arm.label, arm.seed, "finetune.pretrained_acc", r.outcomes);
  }
  const scratch: EvaluateReport["scratch"] = [];
  const main = pretrainedArms[0];
  if (main) {
    const seeds = [...new Set(pretrainedArms.map((a) => a.seed))];
    for (const seed of seeds) {
      const label = seeds.length > 1 ? `from scratch seed ${seed}` : "from scratch";
      const runName = `scratch-seed-${seed}`;
      const r = await fineTune(label, {
        name: runName,
        vit: main.vit!.config,
        spec: arms[main.index].vitSpec!,
        weights: null,
        seed,
      });
      if (r.status === "stopped") return stopped(runName, r);
      scratch.push({ seed, accuracy: r.accuracy, curve: r.curve });
      finetuneCurves.push({
        label: seeds.length > 1 ? `scratch seed ${seed}` : "scratch",
        curve: r.curve,
      });
      keep(SCRATCH_LABEL, seed, "finetune.scratch_acc", r.outcomes);
    }
    for (const a of arms) {
      if (!a.pretrain) continue;
      const own = scratch.find((x) => x.seed === a.seed)!;
      a.metrics["finetune.scratch_acc"] = measurement(own.accuracy, "val", a.pretrain, {
        steps: ft.steps,
        layer_decay: runLayerDecay(ft, false),
        seed: a.seed,
        note: "random initialisation, the architecture of the main pretrain run",
      });
    }
  }

  // The claims, on the per-image outcomes.
  const { claims, notes } = deriveClaims(arms, outcomes, config.seed);
  for (const claim of claims) {
    log(
      `${STAGE}: claim "${claim.name}": ${claim.verdict} (difference ` +
        `${(100 * claim.difference).toFixed(1)} points, 95% interval ` +
        `[${claim.ci95.map((x) => (100 * x).toFixed(1)).join(", ")}])`,
    );
  }
  // Charts of every stage's curves and of fine-tuning.
  const curves = await stageCurveFigures(
    run.out,
    inputs.curves.map((f) => ({ dir: f.dir, stage: f.manifest.stage })),
    log,
  );
  const finetune: WrittenChart[] = [];
  if (finetuneCurves.length) {
    for (const chart of finetuneCharts(finetuneCurves)) {
      finetune.push(await saveChart(run.out, chart));
    }
  }

  const s = shards.manifest;
  const report: EvaluateReport = {
    shards: {
      ...inputs.shardsRef,
      train: s.splits.train.count,
      val: s.splits.val.count,
      image: s.image,
    },
    classes: inputs.classes,
    evalImages: n,
    probe: config.probe,
    finetune: ft,
    maskRatios: config.figure.maskRatios,
    arms,
    scratch,
    classifier: {
      accuracy: classifier.accuracy,
      steps: config.classifier.steps,
      seed: config.seed,
    },
    claims,
    claimNotes: notes,
    perceptualKnn: inputs.arms.map((a, i) => ({
      label: a.label,
      seed: a.seed,
      ...inputs.perceptual[i],
    })),
    outcomes,
    seedSharing: seedSharing(inputs),
    smoke: config.smoke,
    curves,
    finetuneCharts: finetune,
    config,
  };
  const blocks = await reportBlocks(run.out, report);
  await writeReport(run.out, {
    json: reportJson(report),
    markdown: toMarkdown(blocks),
    html: await toHtml("PeCo evaluation", blocks, fileReader(run.out)),
  });
  const total = (performance.now() - started) / 1000;
  log(`${STAGE}: all measurements in ${total.toFixed(0)} s`);
  const first = arms[0];
  const value = (k: string) => (first.metrics[k]?.value ?? null);
  const mainScratch = scratch.find((x) => x.seed === first.seed) ?? scratch[0];
  const summary = {
    arms: arms.map((a) => a.label),
    psnr: value("tokenizer.psnr"),
    ssim: value("tokenizer.ssim"),
    codeword_probe_acc: value("codewords.linear_probe_acc"),
    reconstruction_acc: value("reconstruction.classifier_acc"),
    real_image_acc: classifier.accuracy,
    linear_probe_acc: value("linear_probe.acc"),
    finetune_pretrained_acc: value("finetune.pretrained_acc"),
    finetune_scratch_acc: mainScratch?.accuracy ?? null,
    claims: Object.fromEntries(claims.map((c) => [c.name, c.verdict])),
    seconds: total,
    measurement_seconds: seconds,
  };
  return { status: "done", summary };
}
