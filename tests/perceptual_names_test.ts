// Full-size checkpoints laid out as torchvision 0.14, timm and MoCo v3 save them: the names, dtypes
// and shapes come from fixtures/perceptual/names (tools/make_perceptual_names.py), the values are
// random. Each is written as safetensors, loaded with strict checking (the architecture read from
// the shapes, the heads and other networks set aside and listed), and run for one forward pass at
// 64² (ViT-B with its position embedding resampled from 14×14 to 4×4).

import assert from "node:assert/strict";
import { join } from "node:path";
import "./util.ts";
import { readAll, tensor, tidy } from "../lib/tensor/mod.ts";
import { type TensorRecord, writeSafetensors } from "../lib/io/safetensors.ts";
import {
  loadPerceptualNet,
  type PerceptualKind,
  summarizeNames,
} from "../lib/models/perceptual/load.ts";
import { VIT_B_DEFAULT } from "../lib/models/perceptual/vit.ts";
import { randArray } from "./util.ts";
import { removeAfterLastTest } from "./stage_fixtures.ts";

const NAMES = "fixtures/perceptual/names";
const root = await Deno.makeTempDir({ prefix: "peco-perceptual-names-" });

type Entry = [string, "F32" | "I64", number[]];

async function nameList(file: string): Promise<Entry[]> {
  return JSON.parse(await Deno.readTextFile(join(NAMES, `${file}.json`))).tensors;
}

/**
 * A state dict with the list's names and shapes: tensors that `loaded` selects get random values
 * (running variances positive), the others zeros (they are never read).
 */
function randomStateDict(entries: Entry[], loaded: (name: string) => boolean) {
  const tensors = new Map<string, TensorRecord>();
  let seed = 1;
  for (const [name, dtype, shape] of entries) {
    const size = shape.reduce((a, b) => a * b, 1);
    if (dtype === "I64") {
      tensors.set(name, { dtype, shape, data: new BigInt64Array(size).fill(7n) });
      continue;
    }
    const data = new Float32Array(size);
    if (loaded(name)) {
      // A cheap generator: values in ±0.05 (0.5–1.5 for running variances).
      let s = (seed++ * 2654435761) >>> 0;
      const variance = name.endsWith("running_var");
      for (let i = 0; i < size; i++) {
        s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
        data[i] = variance ? 0.5 + s / 2 ** 32 : (s / 2 ** 32 - 0.5) * 0.1;
      }
    }
    tensors.set(name, { dtype, shape, data });
  }
  return tensors;
}

interface Case {
  kind: PerceptualKind;
  list: string;
  prefix?: string;
  /** The names set aside, grouped. */
  ignored: string;
  config: Record<string, unknown>;
  /** Tap shapes at 64². */
  taps: number[][];
}

const CASES: Case[] = [
  {
    kind: "vgg16",
    list: "vgg16",
    ignored: "classifier.* (6)",
    config: { widths: [64, 128, 256, 512, 512] },
    taps: [[1, 64, 64, 64], [1, 128, 32, 32], [1, 256, 16, 16], [1, 512, 8, 8], [1, 512, 4, 4]],
  },
  {
    kind: "resnet50",
    list: "resnet50",
    ignored: "fc.* (2)",
    config: { width: 64, blocks: [3, 4, 6, 3] },
    taps: [[1, 256, 16, 16], [1, 512, 8, 8], [1, 1024, 4, 4], [1, 2048, 2, 2]],
  },
  {
    kind: "vit-b",
    list: "vit_base_patch16_224",
    ignored: "head.* (2)",
    // ViT-B/16 at 224², as VIT_B_DEFAULT: every field read from the shapes.
    config: { ...VIT_B_DEFAULT },
    taps: [[1, 768, 4, 4], [1, 768, 4, 4], [1, 768, 4, 4], [1, 768, 4, 4]],
  },
  {
    kind: "vit-b",
    list: "moco_v3_vit_base",
    prefix: "module.base_encoder.",
    ignored: "module.base_encoder.head.* (16), module.momentum_encoder.* (166), " +
      "module.predictor.* (10)",
    config: { dim: 768, depth: 12, heads: 12, taps: [3, 6, 9, 12] },
    taps: [],
  },
];

for (const c of CASES) {
  Deno.test(`perceptual ${c.kind}: a full-size ${c.list} state dict loads strictly and runs`, async () => {
    const entries = await nameList(c.list);
    const prefix = c.prefix ?? "";
    const heads = ["classifier", "fc", "head"];
    const isLoaded = (name: string) =>
      name.startsWith(prefix) && !heads.includes(name.slice(prefix.length).split(".")[0]);
    const path = join(root, `${c.list}.safetensors`);
    const records = randomStateDict(entries, isLoaded);
    await writeSafetensors(path, records);
    const { net, ignored, config } = await loadPerceptualNet(c.kind, path, { prefix });
    try {
      assert.equal(summarizeNames(ignored, prefix), c.ignored);
      assert.equal(ignored.length + entries.filter(([n]) => isLoaded(n)).length, entries.length);
      for (const [key, value] of Object.entries(c.config)) {
        assert.deepEqual(config[key], value, `config.${key}`);
      }
      // The values arrived under the local names.
      const [name] = entries.find(([n, , s]) => isLoaded(n) && s.length === 4)!;
      const local = name.slice(prefix.length);
      const got = await net.stateDict().get(local)!.read();
      const want = records.get(name)!.data as Float32Array;
      assert.deepEqual(got.subarray(0, 64), want.subarray(0, 64), local);
      if (c.taps.length) {
        const x = tensor(randArray(3 * 64 * 64, 5), [1, 3, 64, 64]);
        const features = tidy(() => net.features(x));
        assert.deepEqual(features.map((f) => f.shape), c.taps);
        for (const [i, v] of (await readAll(features)).entries()) {
          assert.ok(v.every(Number.isFinite), `tap ${i} finite`);
        }
        [x, ...features].forEach((t) => t.dispose());
      }
    } finally {
      net.dispose();
      records.clear();
      await Deno.remove(path);
    }
  });
}

Deno.test("perceptual vit-b: a MoCo v3 checkpoint without its prefix is refused, naming it", async () => {
  const entries = (await nameList("moco_v3_vit_base")).filter(([n]) =>
    !n.includes(".blocks.") || n.includes(".blocks.0.")
  );
  const path = join(root, "moco-small.safetensors");
  const shapes = entries.map(([n, d, s]): Entry => [n, d, s.map((v) => Math.min(v, 8))]);
  await writeSafetensors(path, randomStateDict(shapes, () => false));
  try {
    await assert.rejects(
      loadPerceptualNet("vit-b", path),
      /peco: VitB\.loadStateDict from .*moco-small\.safetensors: \d+ missing \[cls_token .*unexpected \[.*module\.base_encoder\.cls_token/,
    );
    await assert.rejects(
      loadPerceptualNet("vit-b", path, { prefix: "module.encoder." }),
      /peco: .*moco-small\.safetensors \(prefix "module\.encoder\."\): no tensor of the network under "module\.encoder\." \(the file holds \d+: module\.base_encoder\./,
    );
  } finally {
    await Deno.remove(path);
  }
});

removeAfterLastTest("perceptual names", root);
