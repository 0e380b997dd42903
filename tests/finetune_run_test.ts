// The evaluate stage's fine-tuning runs (lib/eval/finetune_run.ts) and their layer-wise lr decay:
// a run from pretrained weights decays the lr by --layer-decay, a run from scratch by
// --scratch-layer-decay (default: --layer-decay). Checked on real one-step runs of a 2-block ViT:
// AdamW's first step moves every parameter with a gradient by lr · lrScale (g / (|g| + eps), no
// weight decay), so the largest move within each layer id, read from the run's checkpoint, is the
// lr that layer's parameter group got. Plus the option's place in the stage's config (fingerprint).

import assert from "node:assert/strict";
import { join } from "node:path";
import "./util.ts";
import { mnistShards, removeAfterLastTest, tinyVit } from "./stage_fixtures.ts";
import { parseOptions } from "../lib/cli/args.ts";
import { canonicalJson } from "../lib/cli/stage.ts";
import { openShards } from "../lib/data/shards.ts";
import { fromGpuAll, readSafetensors } from "../lib/io/safetensors.ts";
import { Beit, BeitClassifier, saveBeit } from "../lib/models/beit.ts";
import { type FinetuneBudget, finetuneRun, runLayerDecay } from "../lib/eval/finetune_run.ts";
import { readSet } from "../lib/eval/heldout.ts";
import { seedFor } from "../lib/eval/seeds.ts";
import type { Inputs } from "../lib/stages/evaluate_inputs.ts";
import { resolveEvaluateConfig } from "../lib/stages/evaluate.ts";
import { evaluateCommand } from "../lib/stages/evaluate_options.ts";

const root = await Deno.makeTempDir({ prefix: "peco-finetune-run-" });

Deno.test("fine-tuning from scratch uses the scratch layer decay, from pretrained weights the other", async () => {
  const shards = await openShards(await mnistShards(root, "shard", 12));
  const vit = tinyVit();
  const spec = { size: 28, mean: [0.5], std: [0.5] };
  const weights = join(root, "pretrained.safetensors");
  const pretrained = new Beit(vit, 5, "mim");
  await saveBeit(pretrained, weights, { channels: 1, ...spec });
  pretrained.dispose();
  const data = {
    shards,
    val: await readSet(shards.splits.val, 4),
    evalImages: 4,
    classes: shards.manifest.classes.length,
    evalBatch: 4,
  };
  const lr = 1e-2;
  const budget: FinetuneBudget = {
    steps: 1,
    batch: 4,
    lr,
    warmupSteps: 0,
    layerDecay: 0.5,
    scratchLayerDecay: 0.8,
    labelSmoothing: 0,
    dropPath: 0,
    weightDecay: 0,
    betas: [0.9, 0.999],
    checkpointEvery: 10,
  };
  const L = vit.depth;

  /** Per layer id 0..L+1, the largest |Δ| of the run's one step (from its checkpoint) over lr. */
  const stepScales = async (name: string, from: string | null, b: FinetuneBudget) => {
    const checkpoint = join(root, `checkpoint-${name}.safetensors`);
    const seed = 3;
    await finetuneRun(
      { name, vit, spec, weights: from, seed },
      data,
      b,
      { name: "finetune-test", out: root, fingerprint: name, checkpoint },
    );
    // The run's initial model, made as finetuneRun makes it.
    const model = new BeitClassifier(
      { ...vit, dropPath: b.dropPath },
      data.classes,
      seedFor(seed, "finetune"),
    );
    if (from) await model.loadPretrained(from);
    const before = await fromGpuAll(model.namedParameters());
    const ids = new Map([...before.keys()].map((k) => [k, model.layerId(k)]));
    model.dispose();
    const { tensors: after } = await readSafetensors(checkpoint);
    const scales = new Array(L + 2).fill(0);
    for (const [key, r] of before) {
      const a = after.get(`model.${key}`)!.data as Float32Array;
      const b0 = r.data as Float32Array;
      let max = 0;
      for (let i = 0; i < b0.length; i++) max = Math.max(max, Math.abs(a[i] - b0[i]));
      scales[ids.get(key)!] = Math.max(scales[ids.get(key)!], max / lr);
    }
    return scales;
  };
  const expect = (decay: number) => Array.from({ length: L + 2 }, (_, id) => decay ** (L + 1 - id));
  const close = (got: number[], want: number[], what: string) =>
    got.forEach((g, i) =>
      assert.ok(Math.abs(g - want[i]) < 0.02 * want[i], `${what}: layer ${i}: ${got} vs ${want}`)
    );

  assert.equal(runLayerDecay(budget, true), 0.5);
  assert.equal(runLayerDecay(budget, false), 0.8);
  close(await stepScales("scratch", null, budget), expect(0.8), "from scratch");
  close(await stepScales("pretrained", weights, budget), expect(0.5), "pretrained");
  // Without scratchLayerDecay, a run from scratch takes layerDecay (every config before it).
  const { scratchLayerDecay: _, ...shared } = budget;
  assert.equal(runLayerDecay(shared, false), 0.5);
  close(await stepScales("scratch-shared", null, shared), expect(0.5), "from scratch, shared");
});

Deno.test("--scratch-layer-decay enters the evaluate config only where it differs from --layer-decay", () => {
  const inputs = {
    arms: [],
    shards: { splits: { train: { count: 50 }, val: { count: 20 } } },
  } as unknown as Inputs;
  const config = (flags: string[]) =>
    resolveEvaluateConfig(parseOptions(evaluateCommand, flags)!, inputs);
  const before = config([]);
  assert.equal("scratchLayerDecay" in before.finetune, false);
  assert.equal(before.finetune.layerDecay, 0.75);
  // Equal to --layer-decay: the same config, so a finished folder's fingerprint still matches.
  for (
    const same of [["--scratch-layer-decay", "0.75"], [
      "--layer-decay",
      "0.9",
      "--scratch-layer-decay",
      "0.9",
    ]]
  ) {
    const c = config(same);
    assert.equal("scratchLayerDecay" in c.finetune, false, same.join(" "));
  }
  assert.equal(canonicalJson(config(["--scratch-layer-decay", "0.75"])), canonicalJson(before));
  const own = config(["--scratch-layer-decay", "1"]);
  assert.equal(own.finetune.scratchLayerDecay, 1);
  assert.equal(own.finetune.layerDecay, 0.75);
  assert.notEqual(canonicalJson(own), canonicalJson(before));
  assert.equal(runLayerDecay(own.finetune, false), 1);
  assert.equal(runLayerDecay(own.finetune, true), 0.75);
});

removeAfterLastTest("finetune run", root);
