// The tokenizer's adversarial term (lib/train/adversarial.ts): the gradient the generator's loss
// sends to the decoder's last layer against a float64 reference, taming's adaptive weight against
// one computed by hand, and the training step's wiring of both.

import assert from "node:assert/strict";
import { assertClose, randArray } from "./util.ts";
import { convRef } from "./reference.ts";
import { PatchDiscriminator } from "../lib/models/discriminator.ts";
import { VqVae } from "../lib/models/vqvae.ts";
import { Adam } from "../lib/optim/mod.ts";
import {
  add,
  backward,
  conv2d,
  copy,
  l1Loss,
  mul,
  neg,
  readAll,
  square,
  sub,
  sum,
  tensor,
  tidy,
  zeroGrad,
} from "../lib/tensor/mod.ts";
import { adversarialTerm, backwardWithAdaptiveWeight, frozen } from "../lib/train/adversarial.ts";
import { tokenizerStep, tokenizerStepTerms } from "../lib/train/tokenizer_step.ts";

const leaky = (v: number) => (v > 0 ? v : 0.2 * v);

/** float64 BatchNorm with batch statistics (training mode), eps 1e-5, over [N, C, H, W]. */
function batchNormRef(x: number[], [n, c, h, w]: number[], weight: number[], bias: number[]) {
  const out = x.slice();
  const m = n * h * w;
  for (let ch = 0; ch < c; ch++) {
    const at = (b: number, p: number) => (b * c + ch) * h * w + p;
    let mu = 0;
    for (let b = 0; b < n; b++) for (let p = 0; p < h * w; p++) mu += x[at(b, p)] / m;
    let v = 0;
    for (let b = 0; b < n; b++) for (let p = 0; p < h * w; p++) v += (x[at(b, p)] - mu) ** 2 / m;
    for (let b = 0; b < n; b++) {
      for (let p = 0; p < h * w; p++) {
        out[at(b, p)] = ((x[at(b, p)] - mu) / Math.sqrt(v + 1e-5)) * weight[ch] + bias[ch];
      }
    }
  }
  return out;
}

/** −mean D(conv(h, W, b)) in float64, D = a one-layer PatchDiscriminator in training mode. */
function ganRef(
  h: number[],
  hs: number[],
  w: number[],
  ws: number[],
  b: number[],
  d: Map<string, number[]>,
  ndf: number,
): number {
  const xhat = convRef(h, hs, w, ws, b, 1, 1);
  const a = convRef(
    xhat.data,
    xhat.shape,
    d.get("main.0.weight")!,
    [ndf, 1, 4, 4],
    d.get(
      "main.0.bias",
    )!,
    2,
    1,
  );
  const b2 = convRef(
    a.data.map(leaky),
    a.shape,
    d.get("main.2.weight")!,
    [2 * ndf, ndf, 4, 4],
    null,
    1,
    1,
  );
  const bn = batchNormRef(b2.data, b2.shape, d.get("main.3.weight")!, d.get("main.3.bias")!);
  const logits = convRef(
    bn.map(leaky),
    b2.shape,
    d.get("main.5.weight")!,
    [1, 2 * ndf, 4, 4],
    d.get(
      "main.5.bias",
    )!,
    1,
    1,
  );
  return -logits.data.reduce((s, v) => s + v, 0) / logits.data.length;
}

Deno.test("adversarial term: the decoder's last layer gets the gradient a float64 reference gives", async () => {
  // The decoder's last layer: a 3×3 conv 2 → 1 channel on a fixed feature map h [2, 2, 8, 8].
  const hs = [2, 2, 8, 8];
  const ws = [1, 2, 3, 3];
  const h = randArray(2 * 2 * 8 * 8, 41, -1, 1);
  const w = randArray(18, 42, -0.4, 0.4);
  const b = [0.1];
  const ndf = 2;
  const disc = new PatchDiscriminator({ inChannels: 1, channels: ndf, layers: 1 }, 5);
  const params = new Map<string, number[]>();
  for (const [name, t] of disc.stateDict()) params.set(name, Array.from(await t.toArray()));
  const W = tensor(w, ws);
  const B = tensor(b, [1]);
  const H = tensor(h, hs);
  W.requiresGrad = B.requiresGrad = true;
  const gan = tidy(() => {
    const g = adversarialTerm(disc, conv2d(H, W, B, { padding: 1 }));
    backward(g);
    return g;
  });
  const [value, grad] = await readAll([gan, W.grad!]);
  const ref = ganRef(h, hs, w, ws, b, params, ndf);
  assertClose([value[0]], [ref], { rtol: 1e-4, what: "−mean D(x̂)" });
  // Central differences of the float64 reference, weight by weight.
  const eps = 1e-5;
  const fd = w.map((_, i) => {
    const up = w.slice();
    const down = w.slice();
    up[i] += eps;
    down[i] -= eps;
    return (ganRef(h, hs, up, ws, b, params, ndf) - ganRef(h, hs, down, ws, b, params, ndf)) /
      (2 * eps);
  });
  const norm = Math.hypot(...fd);
  assert.ok(norm > 1e-3, `the reference gradient is not trivially small (${norm})`);
  assertClose(grad, fd, { rtol: 2e-3, atol: 2e-3 * norm, what: "∂(−mean D(x̂))/∂W_L" });
  // The discriminator is frozen: none of its weights got a gradient, and all still want one.
  for (const [name, p] of disc.namedParameters()) {
    assert.ok(p.grad === null && p.requiresGrad, `${name}`);
  }
  [gan, W, B, H].forEach((t) => t.dispose());
  disc.dispose();
});

Deno.test("adaptive weight: taming's ‖∇_L rec‖ / (‖∇_L gan‖ + 1e-4), clamped, matches a hand computation", async () => {
  // A tiny model: h = u ⊙ x, y = W ⊙ h (W the last layer); rec = Σ (y − t)², gan = −Σ v ⊙ y.
  const x = [1, 2];
  const t = [0.5, -1];
  const u0 = [0.3, -0.7];
  const w0 = [1.5, 0.25];
  const cases = [
    { v: [3, -2], weight: 0.4 },
    // A vanishing adversarial gradient: the ratio is clamped to 1e4.
    { v: [1e-9, 0], weight: 0.5 },
  ];
  for (const { v, weight } of cases) {
    const u = tensor(u0, [2]);
    const W = tensor(w0, [2]);
    u.requiresGrad = W.requiresGrad = true;
    const d = tidy(() => {
      const y = mul(W, mul(u, tensor(x, [2])));
      const rec = sum(square(sub(y, tensor(t, [2]))));
      const gan = neg(sum(mul(tensor(v, [2]), y)));
      return backwardWithAdaptiveWeight(rec, gan, [u, W], W, weight);
    });
    const [dv, gu, gw] = await readAll([d, u.grad!, W.grad!]);
    // By hand.
    const h = x.map((xi, i) => u0[i] * xi);
    const y = h.map((hi, i) => w0[i] * hi);
    const recW = y.map((yi, i) => 2 * (yi - t[i]) * h[i]);
    const recU = y.map((yi, i) => 2 * (yi - t[i]) * w0[i] * x[i]);
    const ganW = h.map((hi, i) => -v[i] * hi);
    const ganU = x.map((xi, i) => -v[i] * w0[i] * xi);
    const ratio = Math.hypot(...recW) / (Math.hypot(...ganW) + 1e-4);
    const expected = Math.min(Math.max(ratio, 0), 1e4) * weight;
    assertClose([dv[0]], [expected], { rtol: 1e-5, what: `d (v = ${v})` });
    assertClose(gu, recU.map((r, i) => r + expected * ganU[i]), { rtol: 1e-5, what: "∂/∂u" });
    assertClose(gw, recW.map((r, i) => r + expected * ganW[i]), { rtol: 1e-5, what: "∂/∂W" });
    [d, u, W].forEach((x) => x.dispose());
    zeroGrad([u, W]);
  }
  assert.equal(
    frozen(new PatchDiscriminator({ inChannels: 1, channels: 1, layers: 1 }), () => 3),
    3,
  );
});

/** A tiny 8² VQ-VAE and discriminator, fresh from fixed seeds. */
function tinySetup() {
  const model = new VqVae({
    imageSize: 8,
    inChannels: 1,
    channels: 4,
    channelMult: [1, 1],
    numResBlocks: 1,
    groups: 2,
    codeDim: 4,
    codebookSize: 8,
  }, 3);
  const disc = new PatchDiscriminator({ inChannels: 1, channels: 2, layers: 1 }, 4);
  return {
    model,
    disc,
    optimizer: new Adam(model.parameters(), { lr: 1e-3 }),
    discOptimizer: new Adam(disc.parameters(), { lr: 1e-3 }),
  };
}

Deno.test("tokenizerStep: the adversarial term enters with taming's adaptive weight at conv_out", async () => {
  const x = tensor(randArray(2 * 64, 43, -1, 1), [2, 1, 8, 8]);
  const weight = 0.4;
  // The step, from a fresh model.
  const a = tinySetup();
  const ctx = {
    model: a.model,
    optimizer: a.optimizer,
    train: { pixelLoss: "l1" as const, clipNorm: 1e9 },
    perceptual: null,
    adversarial: { disc: a.disc, optimizer: a.discOptimizer, weight, start: 0 },
  };
  const terms = tidy(() => tokenizerStep(ctx, x, 0));
  const names = tokenizerStepTerms(true);
  const got = Object.fromEntries((await readAll(terms)).map((v, i) => [names[i], v[0]]));
  // The same forward on an identical fresh model, each loss's gradient at conv_out on its own.
  const b = tinySetup();
  const last = b.model.decoder.convOut.weight;
  const [gRec, gGan] = tidy(() => {
    const out = b.model.forward(x);
    backward(add(l1Loss(out.reconstruction, x), out.loss));
    const gRec = copy(last.grad!);
    zeroGrad(b.model.parameters());
    backward(adversarialTerm(b.disc, out.reconstruction));
    return [gRec, copy(last.grad!)];
  });
  const [r, g] = await readAll([gRec, gGan]);
  const expected = Math.min(Math.hypot(...r) / (Math.hypot(...g) + 1e-4), 1e4) * weight;
  assertClose([got.d_weight], [expected], { rtol: 1e-4, what: "the step's adaptive weight" });
  assert.ok(got.g_adv !== 0 && Number.isFinite(got.d_loss), JSON.stringify(got));
  // Before the start the term is off: its weight reads 0.
  const before = tidy(() =>
    tokenizerStep({ ...ctx, adversarial: { ...ctx.adversarial, start: 5 } }, x, 1)
  );
  const off = await readAll(before);
  assert.equal(off[names.indexOf("d_weight")][0], 0);
  [...terms, ...before, gRec, gGan, x].forEach((t) => t.dispose());
  for (const s of [a, b]) {
    [s.model, s.disc, s.optimizer, s.discOptimizer].forEach((m) => m.dispose());
  }
});
