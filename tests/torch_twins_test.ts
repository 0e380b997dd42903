// The PyTorch twins of bench/torch/ against peco's models, through bench/torch/check.py: the
// tokenizer's VqVae and the built-in perceptual network have the same parameter shapes, the
// network's taps the same shapes, and the perceptual loss on the same weights and images the same
// value and gradient. Ignored where /usr/bin/python3 has no torch.

import assert from "node:assert/strict";
import { assertClose, prod, randArray } from "./util.ts";
import { PYTHON, SCRIPT_DIR, torchMissing } from "../bench/torch_twins.ts";
import { MOCO_ENCODER_DEFAULT, MocoEncoder } from "../lib/models/moco.ts";
import { freeze } from "../lib/models/perceptual/net.ts";
import { perceptualLoss } from "../lib/models/perceptual/loss.ts";
import { presetVqVaeConfig, tokenizerPreset } from "../lib/models/tokenizer_config.ts";
import { VqVae } from "../lib/models/vqvae.ts";
import type { Module } from "../lib/nn/module.ts";
import { Rng } from "../lib/tensor/init.ts";
import { backward, readAll, type Tensor, tensor, tidy } from "../lib/tensor/mod.ts";
import { perceptualInput } from "../lib/train/tokenizer_step.ts";

interface Sizes {
  params: number;
  shapes: number[][];
}

interface TwinReport {
  vqvae: Sizes;
  moco: Sizes;
  taps: number[][];
  perceptual: number;
  grad: number[];
}

/** Lexicographic, a prefix first: Python's order of lists. */
function byShape(a: number[], b: number[]): number {
  for (let i = 0; i < Math.min(a.length, b.length); i++) if (a[i] !== b[i]) return a[i] - b[i];
  return a.length - b.length;
}

function sizes(m: Module): Sizes {
  const shapes = m.parameters().map((p) => [...p.shape]).sort(byShape);
  return { params: m.numParameters(), shapes };
}

async function asJson(t: Tensor) {
  const [data] = await readAll([t]);
  return { shape: t.shape, data: Array.from(data) };
}

async function runCheck(request: unknown): Promise<TwinReport> {
  const child = new Deno.Command(PYTHON, {
    args: ["check.py"],
    cwd: SCRIPT_DIR,
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(JSON.stringify(request)));
  await writer.close();
  const out = await child.output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  assert.ok(out.success, `bench/torch/check.py failed:\n${text(out.stderr)}`);
  return JSON.parse(text(out.stdout));
}

const missing = await torchMissing();

Deno.test({
  name: "torch twins: VqVae and MocoEncoder sizes, taps, perceptual loss and gradient match peco's",
  ignore: missing !== null,
  async fn() {
    const model = new VqVae(
      presetVqVaeConfig(tokenizerPreset("mnist"), { size: 28, channels: 1 }),
      0,
    );
    const net = freeze(new MocoEncoder(MOCO_ENCODER_DEFAULT, new Rng(1)));
    // bench/tokenizer.ts's images (grey 28², pooled by 2), 3 of them.
    const shape = [3, 1, 28, 28];
    const x = tensor(randArray(prod(shape), 1), shape);
    const xhat = tensor(randArray(prod(shape), 2), shape);
    xhat.requiresGrad = true;
    const [taps, loss] = tidy(() => {
      const taps = net.features(perceptualInput(x, 2));
      const loss = perceptualLoss(net, perceptualInput(x, 2), perceptualInput(xhat, 2));
      backward(loss);
      return [taps, loss];
    });
    const moco: Record<string, unknown> = {};
    for (const [name, p] of net.namedParameters()) moco[name] = await asJson(p);
    const twin = await runCheck({ moco, x: await asJson(x), xhat: await asJson(xhat), pool: 2 });

    assert.deepEqual(twin.vqvae, sizes(model));
    assert.deepEqual(twin.moco, sizes(net));
    assert.deepEqual(twin.taps, taps.map((t) => [...t.shape]));
    const [value, grad] = await readAll([loss, xhat.grad!]);
    assertClose(value, [twin.perceptual], { rtol: 1e-4, what: "perceptual loss" });
    const gradScale = twin.grad.reduce((m, g) => Math.max(m, Math.abs(g)), 0);
    assertClose(grad, twin.grad, { rtol: 5e-4, atol: 5e-4 * gradScale, what: "d loss / d xhat" });
    [...taps, loss, x, xhat, xhat.grad!, model, net].forEach((t) => t.dispose());
  },
});
