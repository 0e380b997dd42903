// `deno task evaluate`: the paper's claims, measured on the user's data (docs/paper-to-code.md;
// Table 4, §3) — fine-tuning from the MIM-pretrained ViT vs from scratch with the same budget and
// seed, linear probes of the frozen ViT (last and best block), codeword semantics of each tokenizer
// (a linear probe on average-pooled codewords; classification of its reconstructions by a
// classifier trained on real images), reconstruction PSNR / SSIM — plus figures and a report.
//
//   deno task evaluate --shards runs/shard --export runs/export,runs/export-l0 \
//     --pretrain runs/pretrain,runs/pretrain-l0 --labels "λ=1,λ=0" \
//     --curves runs/perceptual,runs/tokenizer --out runs/evaluate
//
// Arms: --export is a comma list of export-codebook folders (the first arm is the main one, whose
// numbers fill report.json's top-level keys); --pretrain lists the pretrain folder of each arm in
// the same order (it may be shorter: later arms have none); --labels names the arms. Every arm's
// tokenizer gets the codeword and reconstruction measures; every arm with a pretrain folder gets
// fine-tuning, linear probes and the masked-prediction figure; fine-tuning from scratch runs once
// per seed, with the main pretrained arm's architecture and the same budget but for the layer-wise
// lr decay (--scratch-layer-decay, default --layer-decay). --arm-seeds gives each arm its
// seed: arms sharing a label are replicates of one arm, and the report states the paper's claims as
// paired differences over seeds and held-out images with 95% intervals (docs/statistics.md). All
// measures use the same held-out "val" images. Everything is checked before any work (folders, manifests, files, that each export and
// pretrain run was made from these shards and each pretrain run from its arm's export).
//
// The measurements live in lib/eval, the stage's work in lib/stages/evaluate.ts, the report in
// lib/report/evaluate_report.ts; this file wires the command line to them.
//
// Writes into --out: report.json (with per-image outcomes and claims[]), report.md and report.html (one self-contained page: the same
// tables with the charts inline), figures/*.svg (charts: curves of every stage given and of the
// fine-tuning runs, code frequencies, probes per block, the arms compared), figures/*.png (Figure 3
// patches copied from each export, Figure 2/5 per pretrained arm), fine-tuning's checkpoint and
// finished runs (finetune/*.json: a rerun after a kill resumes there) and manifest.json last.
// --stop-at N stops the first fine-tuning run to checkpoint at or after step N, as if killed: the
// stage ends "stopped" with none of the report files and no manifest, and a rerun resumes. Least
// privilege: reads only --shards, the export, pretrain and --curves folders and --out; writes only
// --out.

import { resolve } from "node:path";
import { initGpu } from "../lib/tensor/engine.ts";
import { failOnProblems } from "../lib/cli/problems.ts";
import { type StageAccess } from "../lib/cli/permissions.ts";
import { stageMain } from "../lib/cli/stage_main.ts";
import { beginStage, finishStage, type StageResult } from "../lib/cli/stage.ts";
import { fixed, pct } from "../lib/report/document.ts";
import {
  type ArmPaths,
  armPaths,
  checkEvaluateOptions,
  evaluateCommand,
  type EvaluateOptions,
  nonEmpty,
} from "../lib/stages/evaluate_options.ts";
import { openInputs } from "../lib/stages/evaluate_inputs.ts";
import { evaluate, resolveEvaluateConfig } from "../lib/stages/evaluate.ts";

const STAGE = "evaluate";

export { evaluateCommand, type EvaluateOptions };

export type EvaluateResult = StageResult;

/** Checks the options (usage errors, exit 2): every problem at once; the arms' folders. */
function checkOptions(o: EvaluateOptions): ArmPaths[] {
  failOnProblems(checkEvaluateOptions(o));
  return armPaths(o);
}

/** The paths the sandboxed stage may read and write. */
export function evaluateAccess(o: EvaluateOptions): StageAccess {
  const out = resolve(o.out);
  const read = [resolve(o.shards), out, ...nonEmpty(o.curves).map((c) => resolve(c))];
  for (const arm of armPaths(o)) {
    read.push(arm.export);
    if (arm.pretrain) read.push(arm.pretrain);
  }
  return { read: [...new Set(read)], write: [out] };
}

export async function runEvaluate(
  o: EvaluateOptions,
  { log = (line: string) => console.error(line) }: { log?: (line: string) => void } = {},
): Promise<EvaluateResult> {
  const paths = checkOptions(o);
  // Every input is checked before anything is computed or written.
  const inputs = await openInputs(o, paths);
  await initGpu();
  const config = resolveEvaluateConfig(o, inputs);
  const stageInputs: Record<string, string> = { shards: inputs.shards.dir };
  for (const a of inputs.arms) {
    stageInputs[`export.${a.index + 1}`] = a.export;
    if (a.pretrainRun) stageInputs[`pretrain.${a.index + 1}`] = a.pretrainRun.dir;
  }
  inputs.curves.forEach((c, i) => stageInputs[`curves.${i + 1}`] ??= c.dir);
  const run = await beginStage({
    name: STAGE,
    out: o.out,
    config,
    inputs: stageInputs,
    force: o.force ?? false,
    log,
  });
  if (run.status === "skip") return { status: "skip", out: run.out, summary: run.manifest.summary };
  const { status, summary } = await evaluate(o, config, inputs, run, log);
  if (status === "done") await finishStage(run, { summary });
  return { status, out: run.out, summary };
}

if (import.meta.main) {
  await stageMain(import.meta.url, evaluateCommand, {
    check: checkOptions,
    access: evaluateAccess,
    run: (options) => runEvaluate(options),
    describe: ({ status, out, summary }) => {
      if (status === "stopped") {
        return `${STAGE}: stopped: fine-tuning run ${summary.finetune_run} after its checkpoint ` +
          `at step ${summary.step}, before the report, in ${out}; rerun to resume`;
      }
      const p = (v: unknown) => typeof v === "number" ? `${pct(v)}%` : "–";
      return `${STAGE}: ${status}: fine-tuning pretrained ` +
        `${p(summary.finetune_pretrained_acc)} vs scratch ${p(summary.finetune_scratch_acc)}; ` +
        `codeword probe ${p(summary.codeword_probe_acc)}; ` +
        `PSNR ${fixed(summary.psnr as number)} dB in ${out}`;
    },
  });
}
