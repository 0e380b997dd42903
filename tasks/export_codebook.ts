// `deno task export-codebook`: turns a train-tokenizer run into what users take away — a portable
// tokenizer file, the data set as token shards, and a report on what the codebook learned.
//
//   deno task export-codebook --tokenizer runs/tokenizer --shards runs/shard --out runs/export
//
// Reads the train-tokenizer folder (manifest.json: the VQ-VAE config; checkpoint.safetensors: the
// weights, checked against the manifest's sha256) and a shard folder of the same image geometry.
// Writes into --out: tokenizer.safetensors (lib/models/tokenizer.ts), tokens/ (token shards of
// every split, the shard images as stored — centre crops — with their labels, and their own
// manifest.json; lib/data/token_shards.ts), codebook.json (usage, perplexity, dead codes per
// split, top codes, full histograms), figures/code_histogram.svg (sorted code frequencies),
// figures/patches_code_<id>.png (paper Figure 3: held-out patches per code, for the most frequent
// codes and a seeded sample of other used codes), figures/patches_overview.png, codebook.md, and
// manifest.json last (lib/cli/stage.ts). An interrupted run starts again cleanly; a finished one
// with the same inputs and options is skipped. The work is lib/stages/export_codebook.ts.
//
// Least privilege (lib/cli/permissions.ts): reads only the two input folders and --out, writes
// only --out.

import { resolve } from "node:path";
import { initGpu } from "../lib/tensor/engine.ts";
import { failOnProblems } from "../lib/cli/problems.ts";
import { type StageAccess } from "../lib/cli/permissions.ts";
import { stageMain } from "../lib/cli/stage_main.ts";
import { beginStage, finishStage, type StageResult } from "../lib/cli/stage.ts";
import {
  EXPORT_CODEBOOK_STAGE as STAGE,
  exportCodebook,
  type ExportCodebookConfig,
  openExportCodebookInputs,
  resolveExportCodebookConfig,
} from "../lib/stages/export_codebook.ts";
import {
  checkExportCodebookOptions,
  exportCodebookCommand,
  type ExportCodebookOptions,
} from "../lib/stages/export_codebook_options.ts";

export { exportCodebookCommand, type ExportCodebookConfig, type ExportCodebookOptions };

export type ExportCodebookResult = StageResult;

/** Checks the options (usage errors, exit 2): every problem at once. */
function checkOptions(o: ExportCodebookOptions): void {
  failOnProblems(checkExportCodebookOptions(o));
}

/** The paths the sandboxed stage may read and write. */
export function exportCodebookAccess(o: ExportCodebookOptions): StageAccess {
  const out = resolve(o.out);
  return { read: [resolve(o.tokenizer), resolve(o.shards), out], write: [out] };
}

export async function runExportCodebook(
  o: ExportCodebookOptions,
  { log = (line: string) => console.error(line) } = {},
): Promise<ExportCodebookResult> {
  checkOptions(o);
  const inputs = await openExportCodebookInputs(o);
  await initGpu();
  const config = resolveExportCodebookConfig(o, inputs);
  const run = await beginStage({
    name: STAGE,
    out: o.out,
    config,
    inputs: { tokenizer: inputs.dir, shards: inputs.shards.dir },
    force: o.force ?? false,
    log,
  });
  if (run.status === "skip") return { status: "skip", out: run.out, summary: run.manifest.summary };
  const summary = await exportCodebook(run, config, inputs, { log, quiet: o.quiet });
  await finishStage(run, { summary });
  return { status: "done", out: run.out, summary };
}

// ---- command line ---------------------------------------------------------------------------

if (import.meta.main) {
  await stageMain(import.meta.url, exportCodebookCommand, {
    check: checkOptions,
    access: exportCodebookAccess,
    run: (options) => runExportCodebook(options),
    describe: ({ status, out, summary }) => {
      const splits = summary.splits as Record<string, { usage: number; perplexity: number }>;
      const text = Object.entries(splits).map(([n, s]) =>
        `${n} usage ${s.usage.toFixed(3)} perplexity ${s.perplexity.toFixed(1)}`
      ).join(", ");
      return `${STAGE}: ${status}: ${text}; dead codes ${summary.dead_everywhere} in ${out}`;
    },
  });
}
