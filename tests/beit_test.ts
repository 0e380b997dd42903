// BEiT ViT (lib/models/beit.ts): forward against a float64 reference of a tiny config with an odd
// 3×3 grid, gradients of selected parameters against finite differences of that reference, the
// relative position index against a hand-computed table, BEiT's names, init, mask token
// substitution, classifier loading, and bad input.

import { assertClose, randArray } from "./util.ts";
import {
  deepStrictEqual as assertEquals,
  ok as assert,
  rejects as assertRejects,
  throws as assertThrows,
} from "node:assert/strict";
import { join } from "node:path";
import { backward, mul, noGrad, sum, type Tensor, tensor, tidy } from "../lib/tensor/mod.ts";
import {
  Beit,
  BeitClassifier,
  type BeitConfig,
  readBeitMeta,
  relativePositionIndex,
  resolveBeitConfig,
  saveBeit,
} from "../lib/models/beit.ts";

const CFG: BeitConfig = {
  imageSize: 6,
  patchSize: 2,
  inChannels: 1,
  dim: 8,
  depth: 2,
  heads: 2,
  mlpRatio: 2,
  vocabSize: 5,
  relPosBias: true,
  layerScaleInit: 0.1,
  dropPath: 0,
  qkvBias: true,
};
const N = 2;
const T = 9;

type Params = Record<string, number[]>;

// ---- float64 reference ----------------------------------------------------------------------

const erf = (x: number) => {
  const t = 1 / (1 + 0.5 * Math.abs(x));
  const y = 1 - t * Math.exp(
        -x * x - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +
                      t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 +
                                      t * (-0.82215223 + t * 0.17087277)))))))),
      );
  return x >= 0 ? y : -y;
};
const gelu = (x: number) => 0.5 * x * (1 + erf(x / Math.SQRT2));

/** y = W x + b for one row: W [out, in]. */
function lin(x: number[], w: number[], b: number[] | null, out: number): number[] {
  const inF = x.length;
  return Array.from({ length: out }, (_, o) => {
    let s = b ? b[o] : 0;
    for (let i = 0; i < inF; i++) s += w[o * inF + i] * x[i];
    return s;
  });
}

function ln(x: number[], w: number[], b: number[]): number[] {
  const m = x.reduce((a, v) => a + v, 0) / x.length;
  const v = x.reduce((a, u) => a + (u - m) ** 2, 0) / x.length;
  return x.map((u, i) => ((u - m) / Math.sqrt(v + 1e-6)) * w[i] + b[i]);
}

/** One image's tokens [1+T][D] through the backbone; every block's output too. */
function refBackbone(
  P: Params,
  c: BeitConfig,
  img: number[],
  mask: number[] | null,
): { last: number[][]; blocks: number[][][] } {
  const { dim: D, heads: H, patchSize: p, imageSize: S, inChannels: C } = c;
  const g = S / p;
  const hd = D / H;
  const tokens: number[][] = [P["cls_token"].slice()];
  for (let gy = 0; gy < g; gy++) {
    for (let gx = 0; gx < g; gx++) {
      const t = gy * g + gx;
      let e = Array.from({ length: D }, (_, d) => {
        let s = P["patch_embed.proj.bias"][d];
        for (let ch = 0; ch < C; ch++) {
          for (let ky = 0; ky < p; ky++) {
            for (let kx = 0; kx < p; kx++) {
              s += P["patch_embed.proj.weight"][((d * C + ch) * p + ky) * p + kx] *
                img[(ch * S + gy * p + ky) * S + gx * p + kx];
            }
          }
        }
        return s;
      });
      if (mask && mask[t]) e = P["mask_token"].slice();
      tokens.push(e);
    }
  }
  if (!c.relPosBias) {
    tokens.forEach((e, i) => e.forEach((_, d) => (e[d] += P.pos_embed[i * D + d])));
  }
  const n = g * g + 1;
  const index = relativePositionIndex(g, g);
  const bias = (h: number, i: number, j: number) =>
    c.relPosBias ? P["rel_pos_bias.relative_position_bias_table"][index[i * n + j] * H + h] : 0;
  let x = tokens;
  const blocks: number[][][] = [];
  for (let k = 0; k < c.depth; k++) {
    const q = (name: string) => P[`blocks.${k}.${name}`];
    const gamma = (i: 1 | 2) => q(`gamma_${i}`) ?? new Array(D).fill(1);
    const qkvBias = c.qkvBias
      ? [...q("attn.q_bias"), ...new Array(D).fill(0), ...q("attn.v_bias")]
      : null;
    const qkv = x.map((e) =>
      lin(ln(e, q("norm1.weight"), q("norm1.bias")), q("attn.qkv.weight"), qkvBias, 3 * D)
    );
    const attnOut = x.map((_, i) => {
      const o = new Array(D).fill(0);
      for (let h = 0; h < H; h++) {
        const scores = x.map((_, j) => {
          let s = 0;
          for (let d = 0; d < hd; d++) s += qkv[i][h * hd + d] * qkv[j][D + h * hd + d];
          return s / Math.sqrt(hd) + bias(h, i, j);
        });
        const mx = Math.max(...scores);
        const ex = scores.map((s) => Math.exp(s - mx));
        const z = ex.reduce((a, v) => a + v, 0);
        for (let j = 0; j < x.length; j++) {
          for (let d = 0; d < hd; d++) o[h * hd + d] += (ex[j] / z) * qkv[j][2 * D + h * hd + d];
        }
      }
      return lin(o, q("attn.proj.weight"), q("attn.proj.bias"), D);
    });
    const h1 = x.map((e, i) => e.map((v, d) => v + gamma(1)[d] * attnOut[i][d]));
    x = h1.map((e) => {
      const hidden = lin(
        ln(e, q("norm2.weight"), q("norm2.bias")),
        q("mlp.fc1.weight"),
        q("mlp.fc1.bias"),
        D * c.mlpRatio,
      )
        .map(gelu);
      const m = lin(hidden, q("mlp.fc2.weight"), q("mlp.fc2.bias"), D);
      return e.map((v, d) => v + gamma(2)[d] * m[d]);
    });
    blocks.push(x);
  }
  return { last: x, blocks };
}

const imgSize = CFG.inChannels * CFG.imageSize * CFG.imageSize;

/** Beit.features tokens (after norm), flattened [N, 1+T, D]. */
function refFeatures(P: Params, c: BeitConfig, xs: number[], masks: number[] | null): number[] {
  const out: number[] = [];
  for (let i = 0; i < N; i++) {
    const { last } = refBackbone(
      P,
      c,
      xs.slice(i * imgSize, (i + 1) * imgSize),
      masks?.slice(i * T, (i + 1) * T) ?? null,
    );
    for (const e of last) out.push(...ln(e, P["norm.weight"], P["norm.bias"]));
  }
  return out;
}

function refLogits(
  P: Params,
  c: BeitConfig,
  xs: number[],
  masks: number[],
  index: number[],
): number[] {
  const f = refFeatures(P, c, xs, masks);
  const D = c.dim;
  const out: number[] = [];
  for (const r of index) {
    const img = Math.floor(r / T);
    const t = r % T;
    const row = f.slice((img * (T + 1) + 1 + t) * D, (img * (T + 1) + 2 + t) * D);
    out.push(...lin(row, P["lm_head.weight"], P["lm_head.bias"], c.vocabSize));
  }
  return out;
}

function refClassify(P: Params, c: BeitConfig, xs: number[], classes: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < N; i++) {
    const { last } = refBackbone(P, c, xs.slice(i * imgSize, (i + 1) * imgSize), null);
    const pooled = new Array(c.dim).fill(0);
    for (let t = 1; t <= T; t++) last[t].forEach((v, d) => (pooled[d] += v / T));
    const normed = ln(pooled, P["fc_norm.weight"], P["fc_norm.bias"]);
    out.push(...lin(normed, P["head.weight"], P["head.bias"], classes));
  }
  return out;
}

// ---- fixtures -------------------------------------------------------------------------------

/** Random values for every parameter (zero-initialised ones included), loaded into the model. */
function randomize(model: Beit | BeitClassifier, seed: number): Params {
  const P: Params = {};
  let k = 0;
  const entries = new Map<string, Tensor>();
  for (const [name, t] of model.namedParameters()) {
    const scale = name.includes("norm") && name.endsWith("weight") ? 0.3 : 0.5;
    const base = name.includes("norm") && name.endsWith("weight") ? 1 : 0;
    P[name] = randArray(t.size, seed + k++, base - scale, base + scale);
    entries.set(name, tensor(P[name], t.shape));
  }
  model.loadStateDict(entries);
  for (const t of entries.values()) t.dispose();
  return P;
}

const xs = randArray(N * imgSize, 11);
// Partial masks: image 0 masks patches 0, 4, 8 (the diagonal), image 1 a 2×2 block.
const masks = [1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1, 0, 1, 1];
const maskedIndex = masks.flatMap((m, i) => (m ? [i] : []));

async function features(model: Beit, x: number[], mask: number[] | null, allBlocks = false) {
  return await noGrad(async () => {
    const xt = tensor(x, [N, CFG.inChannels, CFG.imageSize, CFG.imageSize]);
    const mt = mask ? tensor(mask, [N, T]) : null;
    const out = model.features(xt, mt, { allBlocks });
    const tokens = await out.tokens.toArray();
    const blocks = [];
    for (const b of out.blocks ?? []) blocks.push(await b.toArray());
    for (const t of [xt, mt, out.tokens, ...(out.blocks ?? [])]) t?.dispose();
    return { tokens, blocks };
  });
}

// ---- tests ----------------------------------------------------------------------------------

Deno.test("relativePositionIndex of a 2×3 grid matches BEiT's table", () => {
  // Patch pair (i, j): (Δrow + 1)·5 + (Δcol + 2); cls→patch 15, patch→cls 16, cls→cls 17.
  const expected = [
    [17, 15, 15, 15, 15, 15, 15],
    [16, 7, 6, 5, 2, 1, 0],
    [16, 8, 7, 6, 3, 2, 1],
    [16, 9, 8, 7, 4, 3, 2],
    [16, 12, 11, 10, 7, 6, 5],
    [16, 13, 12, 11, 8, 7, 6],
    [16, 14, 13, 12, 9, 8, 7],
  ].flat();
  assertEquals([...relativePositionIndex(2, 3)], expected);
});

Deno.test("Beit: BEiT's parameter names, no saved index buffer; classifier names", () => {
  const model = new Beit(CFG, 0);
  const block = (k: number) =>
    [
      "gamma_1",
      "gamma_2",
      "norm1.weight",
      "norm1.bias",
      "attn.q_bias",
      "attn.v_bias",
      "attn.qkv.weight",
      "attn.proj.weight",
      "attn.proj.bias",
      "norm2.weight",
      "norm2.bias",
      "mlp.fc1.weight",
      "mlp.fc1.bias",
      "mlp.fc2.weight",
      "mlp.fc2.bias",
    ].map((n) => `blocks.${k}.${n}`);
  const names = [...model.stateDict().keys()];
  const expected = [
    "cls_token",
    "mask_token",
    "patch_embed.proj.weight",
    "patch_embed.proj.bias",
    "rel_pos_bias.relative_position_bias_table",
    ...block(0),
    ...block(1),
    "norm.weight",
    "norm.bias",
    "lm_head.weight",
    "lm_head.bias",
  ];
  assertEquals([...names].sort(), [...expected].sort());
  assertEquals(model.stateDict().get("rel_pos_bias.relative_position_bias_table")!.shape, [28, 2]);
  assertEquals(model.grid, [3, 3]);
  model.dispose();

  const abs = new Beit({ ...CFG, relPosBias: false, layerScaleInit: 0, qkvBias: false }, 0, "none");
  const absNames = [...abs.stateDict().keys()];
  assert(absNames.includes("pos_embed"));
  assertEquals(abs.stateDict().get("pos_embed")!.shape, [1, 10, 8]);
  for (
    const gone of [
      "rel_pos_bias.relative_position_bias_table",
      "blocks.0.gamma_1",
      "blocks.0.attn.q_bias",
      "lm_head.weight",
    ]
  ) {
    assert(!absNames.includes(gone), gone);
  }
  abs.dispose();

  const cls = new BeitClassifier(CFG, 3, 0);
  const clsNames = [...cls.stateDict().keys()];
  for (const name of ["fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias", "cls_token"]) {
    assert(clsNames.includes(name), name);
  }
  for (const name of ["mask_token", "norm.weight", "lm_head.weight"]) {
    assert(!clsNames.includes(name), name);
  }
  assertEquals(cls.layerId("cls_token"), 0);
  assertEquals(cls.layerId("patch_embed.proj.weight"), 0);
  assertEquals(cls.layerId("blocks.1.mlp.fc1.weight"), 2);
  assertEquals(cls.layerId("head.weight"), 3);
  cls.dispose();
});

Deno.test("Beit: initialisation as BEiT (trunc-normal, rescaled outputs, zero table, layer scale)", async () => {
  const cfg = { ...CFG, dim: 16, heads: 2 };
  const model = new Beit(cfg, 3);
  const sd = model.stateDict();
  const values = async (name: string) => await sd.get(name)!.toArray();
  const maxAbs = (v: number[]) => Math.max(...v.map(Math.abs));
  for (const name of ["cls_token", "mask_token", "blocks.0.attn.qkv.weight", "lm_head.weight"]) {
    const v = await values(name);
    assert(maxAbs(v) <= 0.02 + 1e-7 && maxAbs(v) > 0.01, `${name}: max |w| ${maxAbs(v)}`);
  }
  // Block k's attn.proj and mlp.fc2 weights are divided by √(2(k+1)).
  for (const [k, name] of [[0, "attn.proj.weight"], [1, "mlp.fc2.weight"]] as const) {
    const bound = 0.02 / Math.sqrt(2 * (k + 1));
    const m = maxAbs(await values(`blocks.${k}.${name}`));
    assert(
      m <= bound + 1e-7 && m > 0.6 * bound,
      `blocks.${k}.${name}: max |w| ${m}, bound ${bound}`,
    );
  }
  assertEquals(maxAbs(await values("rel_pos_bias.relative_position_bias_table")), 0);
  assertEquals(maxAbs(await values("blocks.1.attn.q_bias")), 0);
  assertEquals(maxAbs(await values("blocks.0.mlp.fc1.bias")), 0);
  assertClose(await values("blocks.1.gamma_2"), new Array(16).fill(0.1));
  // Same seed, same weights; another seed, others.
  const again = new Beit(cfg, 3);
  const other = new Beit(cfg, 4);
  const w = await values("blocks.0.attn.qkv.weight");
  assertEquals(await again.stateDict().get("blocks.0.attn.qkv.weight")!.toArray(), w);
  assert((await other.stateDict().get("blocks.0.attn.qkv.weight")!.toArray())[0] !== w[0]);
  for (const m of [model, again, other]) m.dispose();
});

Deno.test("Beit.features and mimLogits match the float64 reference (relative and absolute positions)", async () => {
  for (const cfg of [CFG, { ...CFG, relPosBias: false, depth: 1 }]) {
    const model = new Beit(cfg, 1);
    model.eval();
    const P = randomize(model, 100);
    const what = cfg.relPosBias ? "rel" : "abs";
    const got = await features(model, xs, masks, true);
    assertClose(got.tokens, refFeatures(P, cfg, xs, masks), {
      atol: 2e-4,
      rtol: 1e-3,
      what: `${what} tokens`,
    });
    assertEquals(got.blocks.length, cfg.depth);
    const refBlock = (i: number, k: number) =>
      refBackbone(P, cfg, xs.slice(i * imgSize, (i + 1) * imgSize), masks.slice(i * T, (i + 1) * T))
        .blocks[k].flat();
    for (let k = 0; k < cfg.depth; k++) {
      assertClose(got.blocks[k], [...refBlock(0, k), ...refBlock(1, k)], {
        atol: 2e-4,
        rtol: 1e-3,
        what: `${what} block ${k}`,
      });
    }
    const logits = await noGrad(async () => {
      const out = model.mimLogits(
        tensor(xs, [N, 1, 6, 6]),
        tensor(masks, [N, T]),
        tensor(maskedIndex, [maskedIndex.length], "i32"),
      );
      assertEquals(out.shape, [maskedIndex.length, cfg.vocabSize]);
      return await out.toArray();
    });
    assertClose(logits, refLogits(P, cfg, xs, masks, maskedIndex), {
      atol: 2e-4,
      rtol: 1e-3,
      what: `${what} logits`,
    });
    model.dispose();
  }
});

Deno.test("Beit: gradients of selected parameters match finite differences of the reference", async () => {
  const model = new Beit(CFG, 2);
  model.eval();
  const P = randomize(model, 200);
  const K = CFG.vocabSize;
  const w = randArray(maskedIndex.length * K, 7);
  const checked = [
    "rel_pos_bias.relative_position_bias_table",
    "mask_token",
    "patch_embed.proj.weight",
    "blocks.0.attn.qkv.weight",
    "blocks.0.attn.q_bias",
    "blocks.1.attn.v_bias",
    "blocks.0.gamma_1",
    "blocks.1.mlp.fc2.weight",
    "lm_head.weight",
  ];
  const params = model.namedParameters();
  tidy(() => {
    const logits = model.mimLogits(
      tensor(xs, [N, 1, 6, 6]),
      tensor(masks, [N, T]),
      tensor(maskedIndex, [maskedIndex.length], "i32"),
    );
    backward(sum(mul(logits, tensor(w, logits.shape))));
  });
  const loss = (Q: Params) =>
    refLogits(Q, CFG, xs, masks, maskedIndex).reduce((a, v, i) => a + v * w[i], 0);
  const eps = 1e-4;
  for (const name of checked) {
    const grad = await params.get(name)!.grad!.toArray();
    // A spread of elements of each parameter (all of the small ones).
    const picks = Array.from(
      { length: Math.min(6, grad.length) },
      (_, i) => Math.floor((i * grad.length) / Math.min(6, grad.length)),
    );
    const numeric = picks.map((idx) => {
      const plus = { ...P, [name]: P[name].slice() };
      const minus = { ...P, [name]: P[name].slice() };
      plus[name][idx] += eps;
      minus[name][idx] -= eps;
      return (loss(plus) - loss(minus)) / (2 * eps);
    });
    assertClose(picks.map((i) => grad[i]), numeric, {
      atol: 3e-4,
      rtol: 3e-3,
      what: `d/d ${name}`,
    });
  }
  // The table's rows used by masked logits get gradient; cls→cls (row R−1) too, via [CLS] mixing.
  assert(
    (await params.get("rel_pos_bias.relative_position_bias_table")!.grad!.toArray()).some((v) =>
      v !== 0
    ),
  );
  model.zeroGrad();
  model.dispose();
});

Deno.test("Beit: the mask token replaces masked patches only", async () => {
  const model = new Beit(CFG, 5);
  model.eval();
  randomize(model, 300);
  const other = xs.map((v, i) => (i % 3 === 0 ? -v : v + 0.25));
  const all = new Array(N * T).fill(1);
  const a = await features(model, xs, all);
  const b = await features(model, other, all);
  assertClose(a.tokens, b.tokens, { atol: 1e-6, what: "fully masked: the image does not matter" });
  const none = await features(model, xs, new Array(N * T).fill(0));
  const plain = await features(model, xs, null);
  assertClose(none.tokens, plain.tokens, { atol: 1e-6, what: "an empty mask is no mask" });
  const part = await features(model, xs, masks);
  assert(
    part.tokens.some((v, i) => Math.abs(v - plain.tokens[i]) > 1e-3),
    "masking changes features",
  );
  model.dispose();
});

Deno.test("Beit: drop path draws by dropSeed in training, none in eval", async () => {
  const model = new Beit({ ...CFG, dropPath: 0.5 }, 6);
  randomize(model, 400);
  model.train();
  const run = async (seed: number) => {
    model.dropSeed = seed;
    return (await features(model, xs, null)).tokens;
  };
  const s1 = await run(1), s1b = await run(1);
  assertEquals(s1, s1b);
  let differs = false;
  for (let seed = 2; seed < 12 && !differs; seed++) {
    differs = (await run(seed)).some((v, i) => Math.abs(v - s1[i]) > 1e-4);
  }
  assert(differs, "some seed drops another path");
  model.eval();
  const e1 = await run(1), e2 = await run(2);
  assertEquals(e1, e2);
  model.dispose();
});

Deno.test("BeitClassifier: forward matches the reference; loads a pretrain export's backbone", async () => {
  const dir = await Deno.makeTempDir({ prefix: "peco-beit-" });
  try {
    const pre = new Beit(CFG, 7);
    const P = randomize(pre, 500);
    const path = join(dir, "model.safetensors");
    const image = { channels: 1, size: 6, mean: [0.5], std: [0.5] };
    await saveBeit(pre, path, image);
    const meta = await readBeitMeta(dir);
    assertEquals(meta.config, CFG);
    assertEquals(meta.image, image);

    const cls = new BeitClassifier(CFG, 3, 8);
    cls.eval();
    const headP: Params = {};
    for (const name of ["fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"]) {
      headP[name] = await cls.stateDict().get(name)!.toArray();
    }
    // BEiT's head init: trunc-normal(0.02) · 0.001.
    assert(Math.max(...headP["head.weight"].map(Math.abs)) <= 2e-5 + 1e-9);
    const { loaded, skipped } = await cls.loadPretrained(path);
    assertEquals([...skipped].sort(), [
      "lm_head.bias",
      "lm_head.weight",
      "mask_token",
      "norm.bias",
      "norm.weight",
    ]);
    assert(loaded.includes("blocks.1.attn.qkv.weight") && !loaded.includes("head.weight"));
    // A head with visible values, then the forward against the reference.
    const head = {
      "head.weight": randArray(3 * 8, 9),
      "head.bias": randArray(3, 10),
      "fc_norm.weight": randArray(8, 12, 0.5, 1.5),
      "fc_norm.bias": randArray(8, 13),
    };
    const entries = new Map(
      Object.entries(head).map(([k, v]) => [k, tensor(v, cls.stateDict().get(k)!.shape)]),
    );
    cls.loadStateDict(entries, { strict: false });
    const logits = await noGrad(async () => await cls.forward(tensor(xs, [N, 1, 6, 6])).toArray());
    assertClose(logits, refClassify({ ...P, ...head }, CFG, xs, 3), {
      atol: 2e-4,
      rtol: 1e-3,
      what: "classifier logits",
    });

    // A checkpoint-style file (names under "model.", optimizer state beside) loads the same way.
    const ckpt = join(dir, "ckpt.safetensors");
    const { writeSafetensors, fromGpuAll } = await import("../lib/io/safetensors.ts");
    const records = await fromGpuAll(pre.stateDict());
    await writeSafetensors(
      ckpt,
      new Map([...[...records].map(([k, r]) => [`model.${k}`, r] as const), [
        "optim.0.exp_avg",
        records.get("cls_token")!,
      ]]),
      {},
    );
    assertEquals((await cls.loadPretrained(ckpt)).skipped.length, 5);

    // Another architecture: missing tensors or shapes are named.
    const absPath = join(dir, "abs.safetensors");
    const abs = new Beit({ ...CFG, relPosBias: false }, 0);
    await saveBeit(abs, absPath, image);
    await assertRejects(
      () => cls.loadPretrained(absPath),
      /rel_pos_bias\.relative_position_bias_table/,
    );
    const widePath = join(dir, "wide.safetensors");
    const wide = new Beit({ ...CFG, mlpRatio: 3 }, 0);
    await saveBeit(wide, widePath, image);
    await assertRejects(() => cls.loadPretrained(widePath), /blocks\.0\.mlp\.fc1\.weight/);
    for (const m of [pre, cls, abs, wide]) m.dispose();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("Beit: bad configs and inputs throw clear errors", () => {
  const base = { imageSize: 28, inChannels: 1, vocabSize: 512 };
  assertEquals(resolveBeitConfig({ ...base, preset: "mnist" }).patchSize, 4);
  assertEquals(
    resolveBeitConfig({ ...base, imageSize: 224, preset: "base", vocabSize: 8192 }).dim,
    768,
  );
  assertThrows(
    () => resolveBeitConfig({ ...base, preset: "mnist", heads: 5 }),
    /dim 64 is not divisible by heads 5/,
  );
  assertThrows(
    () => resolveBeitConfig({ ...base, preset: "mnist", patchSize: 5 }),
    /imageSize 28 is not a multiple of patchSize 5/,
  );
  assertThrows(() => resolveBeitConfig({ ...base, preset: "mnist", dropPath: 1 }), /dropPath/);
  assertThrows(() => resolveBeitConfig({ ...base, inChannels: 2 }), /inChannels must be 1 or 3/);
  assertThrows(
    () => resolveBeitConfig({ ...base, preset: "huge" as "base" }),
    /unknown preset "huge"/,
  );
  const model = new Beit(CFG, 0);
  noGrad(() =>
    tidy(() => {
      assertThrows(
        () => model.features(tensor(new Array(2 * 64).fill(0), [2, 1, 8, 8]), null),
        /Beit\.features: images must be f32 \[N, 1, 6, 6\], got .*\[2,1,8,8\]/,
      );
      const x = tensor(xs, [N, 1, 6, 6]);
      assertThrows(
        () => model.features(x, tensor(new Array(N * 8).fill(0), [N, 8])),
        /mask must be f32 \[2, 9\]/,
      );
      assertThrows(
        () => model.mimLogits(x, tensor(masks, [N, T]), tensor([0, 1], [2])),
        /maskedIndex must be i32 \[M\]/,
      );
    })
  );
  model.dispose();
});
