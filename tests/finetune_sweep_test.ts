// `deno task finetune-sweep` (tools/finetune_sweep.ts): its grid gives the pretrained arm
// --layer-decay and the scratch arm --scratch-layer-decay (default: the same list), and a tiny real
// sweep over a pretrain folder runs every point of it.

import assert from "node:assert/strict";
import { join } from "node:path";
import "./util.ts";
import { mnistShards, tinyVit } from "./stage_fixtures.ts";
import { parseOptions, UsageError } from "../lib/cli/args.ts";
import { Beit, BEIT_MODEL_FILE, saveBeit } from "../lib/models/beit.ts";
import { grid, runSweep, sweepCommand } from "../tools/finetune_sweep.ts";

const options = (flags: string[]) => parseOptions(sweepCommand, flags)!;
const arms = (flags: string[]) => grid(options(flags)).map((p) => `${p.arm} ${p.layerDecay}`);

Deno.test("finetune-sweep: the pretrained arm sweeps --layer-decay, the scratch arm --scratch-layer-decay", () => {
  const both = ["--pretrain", "p", "--arms", "scratch,pretrained"];
  assert.deepEqual(arms([...both, "--layer-decay", "0.65,0.75,1", "--scratch-layer-decay", "1"]), [
    "scratch 1",
    "pretrained 0.65",
    "pretrained 0.75",
    "pretrained 1",
  ]);
  // Without --scratch-layer-decay both arms sweep --layer-decay (as before the option).
  assert.deepEqual(arms([...both, "--layer-decay", "0.75,1"]), [
    "scratch 0.75",
    "scratch 1",
    "pretrained 0.75",
    "pretrained 1",
  ]);
  assert.deepEqual(arms(["--layer-decay", "0.75,1"]), ["scratch 0.75", "scratch 1"]);
  // The other axes multiply each arm's points.
  const points = grid(options([...both, "--scratch-layer-decay", "1", "--lr", "1e-3,2e-3"]));
  assert.deepEqual(points.map((p) => [p.arm, p.layerDecay, p.lr]), [
    ["scratch", 1, 1e-3],
    ["scratch", 1, 2e-3],
    ["pretrained", 0.75, 1e-3],
    ["pretrained", 0.75, 2e-3],
  ]);
  const refuse = (flags: string[], pattern: RegExp) =>
    assert.throws(
      () => grid(options(flags)),
      (e: Error) => e instanceof UsageError && pattern.test(e.message),
    );
  refuse([...both, "--layer-decay", "0,1"], /--layer-decay must be numbers in \(0, 1\], got "0,1"/);
  refuse(
    [...both, "--scratch-layer-decay", "1.5"],
    /--scratch-layer-decay must be numbers in \(0, 1\], got "1.5"/,
  );
  refuse([...both, "--scratch-layer-decay", "x"], /--scratch-layer-decay expects a comma list/);
  refuse(["--arms", "pretrained"], /--arms pretrained needs --pretrain/);
});

Deno.test("finetune-sweep runs a scratch and a pretrained arm's layer decays from a pretrain folder", async () => {
  const root = await Deno.makeTempDir({ prefix: "peco-finetune-sweep-" });
  const shards = await mnistShards(root, "shard", 12);
  const pretrain = join(root, "pretrain");
  await Deno.mkdir(pretrain);
  const vit = tinyVit();
  const model = new Beit(vit, 5, "mim");
  await saveBeit(model, join(pretrain, BEIT_MODEL_FILE), {
    channels: 1,
    size: 28,
    mean: [0.5],
    std: [0.5],
  });
  model.dispose();
  const json = join(root, "rows.json");
  const lines: string[] = [];
  const rows = await runSweep(
    options([
      ...["--shards", shards, "--pretrain", pretrain, "--arms", "scratch,pretrained"],
      ...["--layer-decay", "0.5,1", "--scratch-layer-decay", "1", "--val", "4"],
      ...["--train-limit", "8", "--steps", "2", "--warmup", "0", "--batch", "4", "--json", json],
    ]),
    (line) => lines.push(line),
  );
  assert.deepEqual(rows.map((r) => `${r.arm} ${r.layerDecay}`), [
    "scratch 1",
    "pretrained 0.5",
    "pretrained 1",
  ]);
  for (const r of rows) {
    assert.ok(r.accuracy >= 0 && r.accuracy <= 1, `${r.accuracy}`);
    assert.equal(r.curve.at(-1)?.val_acc, r.accuracy);
  }
  assert.match(lines[0], /3 point\(s\); train 8 images, validation 4/);
  assert.equal(lines.length, 2 + rows.length);
  assert.deepEqual(
    JSON.parse(await Deno.readTextFile(json)).map((r: { layerDecay: number }) => r.layerDecay),
    [1, 0.5, 1],
  );
  await Deno.remove(root, { recursive: true });
});
