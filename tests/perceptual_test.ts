// The frozen perceptual networks against PyTorch (fixtures/perceptual, made by
// tools/make_perceptual_fixtures.py from reduced-width networks with the real layouts and names),
// and the perceptual loss against a float64 reference.

import assert from "node:assert/strict";
import { join } from "node:path";
import { assertClose, checkGrad, prod, randArray } from "./util.ts";
import { readSafetensors, type TensorRecord, writeSafetensors } from "../lib/io/safetensors.ts";
import { backward, readAll, reshape, type Tensor, tensor, tidy } from "../lib/tensor/mod.ts";
import {
  createPerceptualNet,
  loadPerceptualNet,
  type PerceptualKind,
} from "../lib/models/perceptual/load.ts";
import { perceptualLoss } from "../lib/models/perceptual/loss.ts";
import type { PerceptualNet } from "../lib/models/perceptual/net.ts";
import type { VitB } from "../lib/models/perceptual/vit.ts";
import { bicubicResizeWeights, gridResizeMatrix } from "../lib/models/perceptual/pos_embed.ts";

const DIR = "fixtures/perceptual";

const NETS: { kind: PerceptualKind; file: string; head: string; taps: number }[] = [
  { kind: "vgg16", file: "vgg16", head: "classifier.0.weight", taps: 5 },
  { kind: "resnet50", file: "resnet50", head: "fc.weight", taps: 4 },
  { kind: "vit-b", file: "vit_b", head: "head.weight", taps: 4 },
];

const upload = (r: TensorRecord) => tensor(r.data as Float32Array, r.shape);
const values = (r: TensorRecord) => Array.from(r.data as Float32Array);
const maxAbs = (v: ArrayLike<number>) =>
  Array.from(v).reduce((m, x) => Math.max(m, Math.abs(x)), 0);

/** ~1e-4 relative, with an absolute floor scaled to the largest reference value. */
function closeToTorch(actual: ArrayLike<number>, expected: number[], what: string, rtol = 1e-4) {
  assertClose(actual, expected, { rtol, atol: rtol * maxAbs(expected), what });
}

for (const { kind, file, head, taps } of NETS) {
  Deno.test(`perceptual ${kind}: features, loss and input gradient match PyTorch`, async () => {
    const ref = await readSafetensors(join(DIR, `${file}_ref.safetensors`));
    const config = JSON.parse(ref.metadata.config);
    const { net, ignored } = await loadPerceptualNet(kind, join(DIR, `${file}.safetensors`), {
      config,
    });
    assert.ok(ignored.includes(head), `the ${head} head is set aside: ${ignored}`);
    assert.ok(ignored.every((n) => n.startsWith(head.split(".")[0] + ".")), `${ignored}`);
    const r = (name: string) => ref.tensors.get(name)!;
    const x = upload(r("x"));
    const xhat = upload(r("xhat"));
    xhat.requiresGrad = true;
    const [features, loss] = tidy(() => {
      const features = net.features(x);
      const loss = perceptualLoss(net, x, xhat);
      backward(loss);
      return [features, loss];
    });
    assert.equal(features.length, taps);
    const got = await readAll([...features, loss, xhat.grad!]);
    features.forEach((f, i) => {
      const expected = r(`feature.${i}`);
      assert.deepEqual(f.shape, expected.shape, `feature ${i} shape`);
      closeToTorch(got[i], values(expected), `${kind} feature ${i}`);
    });
    closeToTorch(got[taps], values(r("loss")), `${kind} loss`);
    // The loss is a sum of many small terms: its gradient gets a slightly looser tolerance.
    closeToTorch(got[taps + 1], values(r("grad_xhat")), `${kind} d loss / d xhat`, 5e-4);
    // Frozen: no parameter asks for, or received, a gradient.
    for (const [name, p] of net.namedParameters()) {
      assert.ok(!p.requiresGrad && p.grad === null, `${name} is frozen`);
    }
    assert.equal(net.training, false);
    [...features, loss, x, xhat, xhat.grad!].forEach((t) => t.dispose());
    net.dispose();
  });
}

// ---- the loss formula on a stand-in network, against float64 ---------------------------------

/** Two taps: x itself [N, C, H, W], and x with its rows folded into channels [N, C·H, 1, W]. */
const standIn: PerceptualNet = {
  kind: "stand-in",
  features: (x: Tensor) => {
    const [n, c, h, w] = x.shape;
    return [x, reshape(x, [n, c * h, 1, w])];
  },
};

function standInRef(x: number[], xhat: number[], [n, c, h, w]: number[]): number {
  const tap = (cc: number, hh: number) => {
    const norm = (v: number[], p: number, pos: number) => {
      let s = 0;
      for (let k = 0; k < cc; k++) s += v[(p * cc + k) * hh * w + pos] ** 2;
      return Math.sqrt(s) + 1e-10;
    };
    let total = 0;
    for (let p = 0; p < n; p++) {
      for (let pos = 0; pos < hh * w; pos++) {
        const na = norm(xhat, p, pos);
        const nb = norm(x, p, pos);
        for (let k = 0; k < cc; k++) {
          const i = (p * cc + k) * hh * w + pos;
          total += (xhat[i] / na - x[i] / nb) ** 2;
        }
      }
    }
    return total / (n * hh * w);
  };
  return tap(c, h) + tap(c * h, 1);
}

Deno.test("perceptualLoss: float64 value and finite-difference gradient on odd shapes", async () => {
  const shape = [2, 3, 5, 7];
  const x = randArray(prod(shape), 21);
  const xhat = randArray(prod(shape), 22);
  // An all-zero position in both images (as after a ReLU): no NaN, and it adds nothing.
  for (let k = 0; k < 3; k++) x[k * 35 + 4] = xhat[k * 35 + 4] = 0;
  const op = (a: Tensor, b: Tensor) => reshape(perceptualLoss(standIn, a, b), [1]);
  const [tx, txhat] = [tensor(x, shape), tensor(xhat, shape)];
  const value = await tidy(() => op(tx, txhat)).item();
  [tx, txhat].forEach((t) => t.dispose());
  const expected = standInRef(x, xhat, shape);
  assertClose([value], [expected], { rtol: 1e-5, what: "perceptual loss" });
  await checkGrad(op, (a, b) => [standInRef(a, b, shape)], [{ data: x, shape }, {
    data: xhat,
    shape,
  }], { which: [1] });
});

// ---- position embeddings at other grids, against timm (PyTorch) ------------------------------

Deno.test("vit-b: position embeddings resampled to other grids match timm's bicubic resampling", async () => {
  const { cases } = JSON.parse(await Deno.readTextFile(join(DIR, "pos_embed_resample.json")));
  for (const c of cases) {
    const [gh, gw] = c.to;
    const g = c.from[0];
    // On the host: the resize matrix applied to the patch positions, class token kept.
    const m = gridResizeMatrix(c.from, c.to);
    const host = [...c.posemb.slice(0, c.dim)];
    for (let r = 0; r < gh * gw; r++) {
      for (let d = 0; d < c.dim; d++) {
        let v = 0;
        for (let k = 0; k < g * g; k++) v += m[r * g * g + k] * c.posemb[(1 + k) * c.dim + d];
        host.push(v);
      }
    }
    assertClose(host, c.resampled, { rtol: 1e-5, atol: 1e-6, what: `${c.from} → ${c.to}` });
    // On the GPU, through a network whose checkpoint grid is c.from (patch 2).
    const vit = createPerceptualNet("vit-b", {
      imageSize: 2 * g,
      patchSize: 2,
      dim: c.dim,
      depth: 1,
      heads: 1,
      taps: [1],
    }) as VitB;
    vit.loadStateDict(new Map([["pos_embed", tensor(c.posemb, [1, 1 + g * g, c.dim])]]), {
      strict: false,
    });
    const pos = tidy(() => vit.positionEmbedding(gh, gw));
    assert.deepEqual(pos.shape, [1, 1 + gh * gw, c.dim]);
    assertClose(await pos.read(), c.resampled, { rtol: 1e-5, atol: 1e-6, what: "on the GPU" });
    if (pos !== vit.posEmbed) pos.dispose();
    vit.dispose();
  }
  // Shrinking 14 → 4 antialiases: every output sample averages several inputs.
  const w = bicubicResizeWeights(14, 4);
  for (let i = 0; i < 4; i++) {
    const row = Array.from(w.subarray(i * 14, i * 14 + 14));
    assert.ok(row.filter((v) => v !== 0).length > 4, `row ${i}: ${row}`);
    assert.ok(Math.abs(row.reduce((a, b) => a + b, 0) - 1) < 1e-12);
  }
});

// ---- bad input --------------------------------------------------------------------------------

Deno.test("perceptual weights: missing and mismatched tensors give one error naming the file", async () => {
  const { tensors, metadata } = await readSafetensors(join(DIR, "resnet50.safetensors"));
  const config = JSON.parse(metadata.config);
  const broken = new Map(tensors);
  broken.delete("layer1.0.conv2.weight");
  const bn = broken.get("layer3.0.bn1.weight")!;
  broken.set("layer3.0.bn1.weight", { ...bn, shape: [bn.shape[0] - 1], data: bn.data.slice(1) });
  const dir = await Deno.makeTempDir({ prefix: "peco-perceptual-" });
  const path = join(dir, "broken.safetensors");
  try {
    await writeSafetensors(path, broken, metadata);
    await assert.rejects(loadPerceptualNet("resnet50", path, { config }), (e: Error) => {
      assert.match(e.message, /^peco: ResNet50\.loadStateDict from .*broken\.safetensors: /);
      assert.match(e.message, /1 missing \[layer1\.0\.conv2\.weight f32\[4,4,3,3\]\]/);
      assert.match(
        e.message,
        /1 mismatched \[layer3\.0\.bn1\.weight: module f32\[16\], state dict F32\[15\]\]/,
      );
      return true;
    });
    // The right file for the wrong architecture: every name is reported.
    await assert.rejects(
      loadPerceptualNet("vgg16", join(DIR, "resnet50.safetensors"), {
        config: { widths: [4, 8, 16, 32, 32] },
      }),
      /peco: Vgg16\.loadStateDict from fixtures\/perceptual\/resnet50\.safetensors: 26 missing \[features\.0\.weight .*unexpected \[conv1\.weight/,
    );
    // A wider network than the file's: every tensor whose shape depends on the width is listed.
    const vit = JSON.parse((await readSafetensors(join(DIR, "vit_b.safetensors"))).metadata.config);
    await assert.rejects(
      loadPerceptualNet("vit-b", join(DIR, "vit_b.safetensors"), { config: { ...vit, dim: 30 } }),
      (e: Error) => {
        assert.match(
          e.message,
          /^peco: VitB\.loadStateDict from .*vit_b\.safetensors: \d+ mismatched \[/,
        );
        assert.match(e.message, /cls_token: module f32\[1,1,30\], state dict F32\[1,1,24\]/);
        assert.match(
          e.message,
          /blocks\.3\.mlp\.fc2\.bias: module f32\[30\], state dict F32\[24\]/,
        );
        assert.doesNotMatch(e.message, /missing|unexpected/);
        return true;
      },
    );
    await assert.rejects(
      loadPerceptualNet("vgg16", join(dir, "absent.safetensors")),
      /peco: safetensors .*absent\.safetensors/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("perceptual weights: a prefixed training checkpoint loads with `prefix`", async () => {
  const { tensors, metadata } = await readSafetensors(join(DIR, "vgg16.safetensors"));
  // As a MoCo-style checkpoint: the encoder under a prefix, beside another network's tensors.
  const wrapped = new Map<string, TensorRecord>();
  for (const [name, r] of tensors) wrapped.set(`module.base_encoder.${name}`, r);
  const bias = tensors.get("features.28.bias")!;
  wrapped.set("module.momentum_encoder.features.0.bias", tensors.get("features.0.bias")!);
  const dir = await Deno.makeTempDir({ prefix: "peco-perceptual-" });
  const path = join(dir, "wrapped.safetensors");
  try {
    await writeSafetensors(path, wrapped, metadata);
    const config = JSON.parse(metadata.config);
    const prefix = "module.base_encoder.";
    const { net, ignored } = await loadPerceptualNet("vgg16", path, { config, prefix });
    assert.deepEqual(ignored.sort(), [
      "module.base_encoder.classifier.0.bias",
      "module.base_encoder.classifier.0.weight",
      "module.momentum_encoder.features.0.bias",
    ]);
    const loaded = await net.stateDict().get("features.28.bias")!.toArray();
    assertClose(loaded, Array.from(bias.data as Float32Array), { atol: 0, rtol: 0, what: "bias" });
    net.dispose();
    // Without the prefix nothing matches: the error lists the names and the file.
    await assert.rejects(
      loadPerceptualNet("vgg16", path, { config }),
      /peco: Vgg16\.loadStateDict from .*wrapped\.safetensors: 26 missing .*unexpected \[.*module\.base_encoder\.features\.0\.weight/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("perceptual networks: bad images and bad configs throw clear errors", () => {
  const vit = createPerceptualNet("vit-b", {
    imageSize: 16,
    patchSize: 8,
    dim: 6,
    depth: 2,
    heads: 2,
    taps: [1, 2],
  });
  const vgg = createPerceptualNet("vgg16", { widths: [2, 2, 2, 2, 2] });
  const small = tensor(randArray(2 * 3 * 8 * 8, 3), [2, 3, 8, 8]);
  const gray = tensor(randArray(16 * 16, 4), [1, 1, 16, 16]);
  const odd = tensor(randArray(3 * 12 * 12, 5), [1, 3, 12, 12]);
  try {
    assert.throws(
      () => vit.features(odd),
      /peco: vit-b: 12×12 images do not split into 8×8 patches \(sides must be multiples of 8\)/,
    );
    assert.throws(() => vit.checkInputSize!(28, 28), /28×28 images do not split into 8×8/);
    assert.throws(
      () => vit.features(gray),
      /peco: vit-b: input must be f32 \[N, 3, H, W\].*\[1,1,16,16\]/,
    );
    assert.throws(() => vgg.features(small), /peco: vgg16: input must be .*H, W ≥ 16.*\[2,3,8,8\]/);
    assert.throws(
      () => perceptualLoss(vgg, small, gray),
      /peco: perceptualLoss: x .*\[2,3,8,8\] and xhat .*\[1,1,16,16\] differ/,
    );
    assert.throws(
      () => createPerceptualNet("vgg16", { widths: [4, 8] }),
      /peco: vgg16: widths must list 5 stages/,
    );
    assert.throws(
      () => createPerceptualNet("resnet50", { blocks: [1, 1] }),
      /peco: resnet50: blocks must be 4/,
    );
    assert.throws(
      () => createPerceptualNet("vit-b", { taps: [13] }),
      /peco: vit-b: taps \[13\] must be block numbers in 1\.\.12/,
    );
    assert.throws(
      () => createPerceptualNet("alexnet" as PerceptualKind),
      /peco: perceptual network "alexnet" is unknown/,
    );
  } finally {
    [vit, vgg].forEach((m) => m.dispose());
    [small, gray, odd].forEach((t) => t.dispose());
  }
});
