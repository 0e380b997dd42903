import { assertClose, prod, randArray } from "./util.ts";
import {
  deepStrictEqual as assertEquals,
  ok as assert,
  throws as assertThrows,
} from "node:assert/strict";
import { add, backward, mseLoss, readAll, type Tensor, tensor, tidy } from "../lib/tensor/mod.ts";
import { AdamW } from "../lib/optim/mod.ts";
import { shapesBatch } from "../lib/data/synthetic.ts";
import {
  downsampleFactor,
  resolveVqVaeConfig,
  VqVae,
  type VqVaeConfig,
} from "../lib/models/vqvae.ts";

// Factor 4: three levels of widths 4, 8, 8 (2 GroupNorm groups), one residual block each.
const F4: VqVaeConfig = {
  imageSize: 8,
  inChannels: 3,
  channels: 4,
  channelMult: [1, 2, 2],
  numResBlocks: 1,
  groups: 2,
  codeDim: 5,
  codebookSize: 7,
  quantizer: { init: "random" },
};

/** The names taming's Encoder/Decoder/VQModel give this configuration's parameters. */
function tamingNames(levels: number, blocks: number, widths: number[]): string[] {
  const conv = (p: string) => [`${p}.weight`, `${p}.bias`];
  const norm = conv;
  const res = (p: string, cin: number, cout: number) => [
    ...norm(`${p}.norm1`),
    ...conv(`${p}.conv1`),
    ...norm(`${p}.norm2`),
    ...conv(`${p}.conv2`),
    ...(cin === cout ? [] : conv(`${p}.nin_shortcut`)),
  ];
  const attn = (p: string) => [
    ...norm(`${p}.norm`),
    ...conv(`${p}.q`),
    ...conv(`${p}.k`),
    ...conv(`${p}.v`),
    ...conv(`${p}.proj_out`),
  ];
  const mid = (p: string) => [
    ...res(`${p}.mid.block_1`, 0, 0),
    ...attn(`${p}.mid.attn_1`),
    ...res(`${p}.mid.block_2`, 0, 0),
  ];
  const names = [...conv("encoder.conv_in")];
  let cin = widths[0];
  for (let i = 0; i < levels; i++) {
    for (let j = 0; j < blocks; j++) {
      names.push(...res(`encoder.down.${i}.block.${j}`, j ? widths[i] : cin, widths[i]));
    }
    if (i < levels - 1) names.push(...conv(`encoder.down.${i}.downsample.conv`));
    cin = widths[i];
  }
  names.push(...mid("encoder"), ...norm("encoder.norm_out"), ...conv("encoder.conv_out"));
  names.push(...conv("decoder.conv_in"), ...mid("decoder"));
  for (let i = 0; i < levels; i++) {
    const from = i === levels - 1 ? widths[i] : widths[i + 1];
    for (let j = 0; j <= blocks; j++) {
      names.push(...res(`decoder.up.${i}.block.${j}`, j ? widths[i] : from, widths[i]));
    }
    if (i > 0) names.push(...conv(`decoder.up.${i}.upsample.conv`));
  }
  names.push(...norm("decoder.norm_out"), ...conv("decoder.conv_out"));
  names.push(...conv("quant_conv"), ...conv("post_quant_conv"));
  return names;
}

Deno.test("vqvae: taming parameter names and shapes", () => {
  const model = new VqVae(F4);
  const state = model.stateDict();
  const expected = [
    ...tamingNames(3, 1, [4, 8, 8]),
    "quantize.embedding.weight",
    "quantize.embedding.cluster_size",
    "quantize.embedding.embed_avg",
    "quantize.initted",
  ];
  assertEquals([...state.keys()].sort(), expected.sort());
  const shape = (name: string) => [...state.get(name)!.shape];
  assertEquals(shape("encoder.conv_in.weight"), [4, 3, 3, 3]);
  assertEquals(shape("encoder.down.0.downsample.conv.weight"), [4, 4, 3, 3]);
  assertEquals(shape("encoder.down.1.block.0.nin_shortcut.weight"), [8, 4, 1, 1]);
  assertEquals(shape("encoder.conv_out.weight"), [5, 8, 3, 3]);
  assertEquals(shape("quant_conv.weight"), [5, 5, 1, 1]);
  assertEquals(shape("decoder.up.0.block.0.nin_shortcut.weight"), [4, 8, 1, 1]);
  assertEquals(shape("decoder.up.1.upsample.conv.weight"), [8, 8, 3, 3]);
  assertEquals(shape("decoder.conv_out.weight"), [3, 4, 3, 3]);
  assertEquals(shape("quantize.embedding.weight"), [7, 5]);
  // Attention inside a level at the resolutions asked for (level 1 works at 8 / 2 = 4).
  const withAttn = new VqVae({ ...F4, attnResolutions: [4] });
  const names = [...withAttn.stateDict().keys()];
  assert(names.includes("encoder.down.1.attn.0.q.weight"));
  assert(names.includes("decoder.up.1.attn.1.proj_out.bias"));
  assert(!names.some((n) => /down\.[02]\.attn|up\.[02]\.attn/.test(n)));
  model.dispose();
  withAttn.dispose();
});

const F8: VqVaeConfig = {
  ...F4,
  imageSize: 16,
  inChannels: 1,
  channelMult: [1, 1, 2, 2],
  codeDim: 3,
};
const shapeCases: [string, VqVaeConfig, number[], number[]][] = [
  ["factor 4", F4, [3, 3, 8, 12], [2, 3]],
  ["factor 8", F8, [1, 1, 8, 24], [1, 3]],
];

for (const [name, config, xShape, grid] of shapeCases) {
  Deno.test(`vqvae ${name}: encode, quantize and decode shapes`, async () => {
    // Eval mode: no EMA update, so the ids below come from the same codebook.
    const model = new VqVae(config, 3).eval();
    const f = downsampleFactor(config);
    assertEquals(model.downsampleFactor, f);
    assertEquals(model.tokenGrid, [config.imageSize / f, config.imageSize / f]);
    const x = tensor(randArray(prod(xShape), 4), xShape);
    const [b, c] = xShape;
    const d = config.codeDim!;
    const out = tidy(() => model.forward(x));
    assertEquals(out.z.shape, [b, d, ...grid]);
    assertEquals(out.zq.shape, [b, d, ...grid]);
    assertEquals(out.indices.shape, [b, ...grid]);
    assertEquals(out.reconstruction.shape, [b, c, xShape[2], xShape[3]]);
    const [rec, loss] = await readAll([out.reconstruction, out.loss]);
    assert(rec.every(Number.isFinite) && Number.isFinite(loss[0]));
    // Token ids and decoding from them agree with the forward pass.
    const ids = model.encodeIndices(x);
    assertEquals(await ids.toArray(), await out.indices.toArray());
    const fromIds = model.decodeIndices(ids);
    assertClose(await fromIds.toArray(), Array.from(rec), { atol: 1e-4, what: "decodeIndices" });
    x.dispose();
    model.dispose();
  });
}

/** float64 3×3 convolution of one-image x [C, H, W] with weight [O, C, 3, 3] and bias. */
function conv3x3(
  x: number[],
  [c, h, w]: number[],
  weight: number[],
  bias: number[],
  stride: number,
  [top, left]: number[],
  [ho, wo]: number[],
): number[] {
  const o = bias.length;
  const out: number[] = [];
  for (let oc = 0; oc < o; oc++) {
    for (let oy = 0; oy < ho; oy++) {
      for (let ox = 0; ox < wo; ox++) {
        let s = bias[oc];
        for (let ic = 0; ic < c; ic++) {
          for (let ky = 0; ky < 3; ky++) {
            for (let kx = 0; kx < 3; kx++) {
              const iy = oy * stride + ky - top, ix = ox * stride + kx - left;
              if (iy < 0 || iy >= h || ix < 0 || ix >= w) continue;
              s += weight[((oc * c + ic) * 3 + ky) * 3 + kx] * x[(ic * h + iy) * w + ix];
            }
          }
        }
        out.push(s);
      }
    }
  }
  return out;
}

Deno.test("vqvae: downsample pads right/bottom only; upsample is nearest ×2 then conv", async () => {
  const model = new VqVae(F4, 5);
  const state = model.stateDict();
  const read = (name: string) => state.get(name)!.toArray();
  // Encoder level 0 downsample on [1, 4, 7, 5] (odd sizes: the padded row/column is used).
  const xs = [4, 7, 5];
  const x = randArray(prod(xs), 6);
  const down = model.encoder.down.at(0).resample!;
  const gotDown = down.forward(tensor(x, [1, ...xs]));
  assertEquals(gotDown.shape, [1, 4, 3, 2]);
  const wd = await read("encoder.down.0.downsample.conv.weight");
  const bd = await read("encoder.down.0.downsample.conv.bias");
  assertClose(await gotDown.toArray(), conv3x3(x, xs, wd, bd, 2, [0, 0], [3, 2]), {
    what: "downsample",
  });
  // Decoder level 1 upsample on [1, 8, 3, 1].
  const us = [8, 3, 1];
  const u = randArray(prod(us), 7);
  const gotUp = model.decoder.up.at(1).resample!.forward(tensor(u, [1, ...us]));
  assertEquals(gotUp.shape, [1, 8, 6, 2]);
  const big: number[] = [];
  for (let ch = 0; ch < 8; ch++) {
    for (let y = 0; y < 6; y++) {
      for (let xx = 0; xx < 2; xx++) big.push(u[(ch * 3 + (y >> 1)) * 1 + (xx >> 1)]);
    }
  }
  const wu = await read("decoder.up.1.upsample.conv.weight");
  const bu = await read("decoder.up.1.upsample.conv.bias");
  assertClose(await gotUp.toArray(), conv3x3(big, [8, 6, 2], wu, bu, 1, [1, 1], [6, 2]), {
    what: "upsample",
  });
  model.dispose();
});

Deno.test("vqvae: bad configs and inputs give clear errors", () => {
  const bad: [Partial<VqVaeConfig>, RegExp][] = [
    [{ imageSize: 30 }, /imageSize 30 is not divisible by the downsample factor 4/],
    [{ imageSize: 12, channelMult: [1, 1, 2, 2] }, /downsample factor 8 \(4 levels/],
    [{ channelMult: [] }, /channelMult must list at least one level/],
    [{ channelMult: [1, 0, 2] }, /channelMult\[1\] must be a positive integer/],
    [{ groups: 3 }, /width 4 is not divisible into 3 GroupNorm groups/],
    [{ attnResolutions: [3] }, /attnResolutions: 3 is not a level resolution \(8, 4, 2\)/],
    [{ numResBlocks: 0 }, /numResBlocks must be a positive integer/],
    [{ quantizer: { decay: 2 } }, /VectorQuantizer config: decay/],
  ];
  for (const [change, message] of bad) {
    assertThrows(() => new VqVae({ ...F4, ...change }), message);
  }
  assertThrows(() => resolveVqVaeConfig({ ...F4, imageSize: 30 }), /^Error: peco: VqVae config:/);
  const model = new VqVae(F4);
  const x = tensor(new Array(2 * 3 * 8 * 6).fill(0), [2, 3, 8, 6]);
  assertThrows(
    () => model.encode(x),
    /peco: VqVae.encode: x must be f32 \[B, 3, H, W\] with H and W divisible by the downsample factor 4, got .*\[2,3,8,6\]/,
  );
  assertThrows(() => model.encode(x.view([2, 3, 48])), /VqVae.encode/);
  assertThrows(() => model.decode(x.view([2, 3, 4, 12])), /VqVae.decode: z_q must be f32 \[B, 5/);
  x.dispose();
  model.dispose();
});

Deno.test("vqvae: a tiny model reduces its reconstruction loss on a fixed batch", async () => {
  const batch = 4, size = 8;
  const model = new VqVae({
    imageSize: size,
    inChannels: 1,
    channels: 8,
    channelMult: [1, 2, 2],
    numResBlocks: 1,
    groups: 4,
    codeDim: 4,
    codebookSize: 16,
    quantizer: { seed: 1 },
  }, 11);
  const data = shapesBatch(batch, size, 12);
  const x = tensor(Array.from(data.images, (v) => 2 * v - 1), [batch, 1, size, size]);
  const optimizer = new AdamW(model.parameters(), { lr: 3e-3, betas: [0.5, 0.95], weightDecay: 0 });
  const losses: Tensor[] = [];
  for (let step = 0; step < 30; step++) {
    losses.push(tidy(() => {
      const out = model.forward(x);
      const rec = mseLoss(out.reconstruction, x);
      backward(add(rec, out.loss));
      optimizer.step();
      optimizer.zeroGrad();
      return rec;
    }));
  }
  const values = (await readAll(losses)).map((v) => v[0]);
  assert(values.every(Number.isFinite), `losses ${values}`);
  const first = values.slice(0, 3).reduce((a, b) => a + b, 0) / 3;
  const last = values.slice(-3).reduce((a, b) => a + b, 0) / 3;
  assert(last < 0.5 * first, `reconstruction loss went from ${first} to ${last}`);
  assert(model.quantize.initialized && model.quantize.steps === 30);
  losses.forEach((t) => t.dispose());
  optimizer.dispose();
  x.dispose();
  model.dispose();
});
