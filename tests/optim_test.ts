// Optimizers, parameter groups, schedules and clipping against float64 references.

import assert from "node:assert/strict";
import { assertClose, kernelsRan, prod, randArray } from "./util.ts";
import { vitLayerId } from "../lib/models/beit.ts";
import { gpu } from "../lib/gpu/device.ts";
import * as T from "../lib/tensor/mod.ts";
import { arenaOf } from "../lib/tensor/param_arena.ts";
import {
  Adam,
  AdamW,
  clipGradNorm,
  constantWithWarmup,
  decays,
  gradNorm,
  Optimizer,
  paramGroups,
  SGD,
  warmupCosine,
} from "../lib/optim/mod.ts";

// ---- helpers ---------------------------------------------------------------------------------

function param(data: number[], shape: number[], name = "p"): T.Tensor {
  const p = T.keep(T.tensor(data, shape));
  p.requiresGrad = true;
  p.name = name;
  return p;
}

function setGrad(p: T.Tensor, data: number[]): void {
  p.grad?.dispose();
  p.grad = T.keep(T.tensor(data, p.shape));
}

function release(...ts: T.Tensor[]): void {
  for (const t of ts) {
    t.grad?.dispose();
    t.grad = null;
    t.dispose();
  }
}

async function values(ts: T.Tensor[]): Promise<number[][]> {
  return (await T.readAll(ts)).map((a) => Array.from(a));
}

interface AdamRef {
  beta1: number;
  beta2: number;
  eps: number;
  wd: number;
  decoupled: boolean;
}

/** Textbook Adam(W) in float64: m̂ = m/(1−β1^t), v̂ = v/(1−β2^t), p −= lr·m̂/(√v̂ + eps). */
function adamRef(p0: number[], grads: number[][], lrs: number[], o: AdamRef): number[] {
  const p = [...p0];
  const m = p.map(() => 0);
  const v = p.map(() => 0);
  grads.forEach((g0, s) => {
    const t = s + 1;
    const lr = lrs[s];
    for (let i = 0; i < p.length; i++) {
      let g = g0[i];
      if (o.decoupled) p[i] -= lr * o.wd * p[i];
      else g += o.wd * p[i];
      m[i] = o.beta1 * m[i] + (1 - o.beta1) * g;
      v[i] = o.beta2 * v[i] + (1 - o.beta2) * g * g;
      const mHat = m[i] / (1 - o.beta1 ** t);
      const vHat = v[i] / (1 - o.beta2 ** t);
      p[i] -= lr * mHat / (Math.sqrt(vHat) + o.eps);
    }
  });
  return p;
}

interface SgdRef {
  momentum: number;
  dampening: number;
  nesterov: boolean;
  wd: number;
}

/** PyTorch's SGD in float64 (the momentum buffer starts as the first decayed gradient). */
function sgdRef(p0: number[], grads: number[][], lrs: number[], o: SgdRef): number[] {
  const p = [...p0];
  let buf: number[] | null = null;
  grads.forEach((g, s) => {
    const d = p.map((pi, i) => g[i] + o.wd * pi);
    let step = d;
    if (o.momentum > 0) {
      const prev: number[] | null = buf;
      const next: number[] = prev === null
        ? d
        : prev.map((b, i) => o.momentum * b + (1 - o.dampening) * d[i]);
      buf = next;
      step = o.nesterov ? d.map((di, i) => di + o.momentum * next[i]) : next;
    }
    for (let i = 0; i < p.length; i++) p[i] -= lrs[s] * step[i];
  });
  return p;
}

/** Runs `steps` optimizer steps with fresh gradients and lrs; returns the GPU parameters. */
async function runSteps(
  make: (params: T.Tensor[]) => Optimizer,
  inits: { data: number[]; shape: number[] }[],
  grads: number[][][],
  lrs: number[],
): Promise<number[][]> {
  const params = inits.map((i, k) => param(i.data, i.shape, `p${k}`));
  const opt = make(params);
  grads.forEach((step, s) => {
    params.forEach((p, k) => setGrad(p, step[k]));
    opt.lr = lrs[s];
    opt.step();
  });
  const out = await values(params);
  opt.dispose();
  release(...params);
  return out;
}

// [2, 6]: a size that is a multiple of 4 (four values a lane: the _v4 kernels); the others not.
const shapes = [[3, 5], [1], [2, 1, 7], [2, 6]];
const inits = shapes.map((shape, k) => ({ shape, data: randArray(prod(shape), 10 + k) }));
const STEPS = 4;
const gradsFor = (seed: number) =>
  Array.from(
    { length: STEPS },
    (_, s) => shapes.map((shape, k) => randArray(prod(shape), seed + 31 * s + k)),
  );
const lrs = [0.1, 0.05, 0.08, 0.02];

// ---- Adam / AdamW ------------------------------------------------------------------------------

for (const decoupled of [true, false]) {
  const kind = decoupled ? "AdamW" : "Adam";
  Deno.test(`${kind}: one step and several steps match the float64 reference`, async () => {
    const o = { beta1: 0.85, beta2: 0.99, eps: 1e-6, wd: 0.3, decoupled };
    const options = {
      betas: [o.beta1, o.beta2] as [number, number],
      eps: o.eps,
      weightDecay: o.wd,
    };
    const make = (ps: T.Tensor[]) => decoupled ? new AdamW(ps, options) : new Adam(ps, options);
    for (const steps of [1, STEPS]) {
      const grads = gradsFor(100).slice(0, steps);
      const got = await runSteps(make, inits, grads, lrs);
      inits.forEach((init, k) => {
        const ref = adamRef(init.data, grads.map((g) => g[k]), lrs, o);
        assertClose(got[k], ref, { atol: 2e-6, rtol: 2e-5, what: `${kind} ${steps} steps p${k}` });
      });
    }
    // Weight decay and bias correction matter: the reference without them is far away.
    const grads = gradsFor(100);
    const got = await runSteps(make, inits, grads, lrs);
    const noDecay = adamRef(inits[0].data, grads.map((g) => g[0]), lrs, { ...o, wd: 0 });
    assert.throws(() => assertClose(got[0], noDecay, { atol: 1e-4 }), /mismatch/);
  });
}

Deno.test("optimizer kernels run four values a lane where a size is a multiple of 4", async () => {
  const ps = [param(randArray(12, 1), [3, 4], "four"), param(randArray(7, 2), [7], "seven")];
  ps.forEach((p, k) => setGrad(p, randArray(p.size, 3 + k)));
  const opt = new AdamW(ps, { lr: 0.01 });
  const ran = await kernelsRan(() => {
    clipGradNorm(ps, 0.1).dispose();
    opt.step();
  });
  for (const kernel of ["optim_sum_squares", "optim_scale_grad", "optim_adam"]) {
    assert.ok(
      ran.includes(kernel) && ran.includes(`${kernel}_v4`),
      `${kernel}: ran ${ran.join(", ")}`,
    );
  }
  await values(ps);
  opt.dispose();
  release(...ps);
});

Deno.test("AdamW: PyTorch defaults (betas 0.9/0.999, eps 1e-8, weight decay 0.01)", async () => {
  const grads = gradsFor(7).slice(0, 2);
  const got = await runSteps((ps) => new AdamW(ps, { lr: 0.01 }), inits, grads, [0.01, 0.01]);
  const o = { beta1: 0.9, beta2: 0.999, eps: 1e-8, wd: 0.01, decoupled: true };
  inits.forEach((init, k) => {
    const ref = adamRef(init.data, grads.map((g) => g[k]), [0.01, 0.01], o);
    assertClose(got[k], ref, { atol: 1e-6, rtol: 1e-5, what: `p${k}` });
  });
});

Deno.test("optimizer step: one dispatch per parameter with a gradient; others stay put", async () => {
  const a = param(randArray(15, 1), [3, 5], "a");
  const b = param(randArray(4, 2), [4], "b");
  const before = await b.toArray();
  const opt = new AdamW([a, b], { lr: 0.1 });
  setGrad(a, randArray(15, 3));
  opt.step(); // first step creates state (fills)
  const dispatches = gpu().recorder.dispatches;
  opt.step();
  assert.equal(gpu().recorder.dispatches - dispatches, 1);
  assert.deepEqual(await b.toArray(), before);
  assert.equal(opt.stateDict().steps[0], 2);
  assert.equal(opt.stateDict().steps[1], undefined);
  opt.dispose();
  release(a, b);
});

// ---- SGD ----------------------------------------------------------------------------------------

const sgdCases: [string, SgdRef][] = [
  ["plain", { momentum: 0, dampening: 0, nesterov: false, wd: 0 }],
  ["plain + weight decay", { momentum: 0, dampening: 0, nesterov: false, wd: 0.2 }],
  ["momentum", { momentum: 0.9, dampening: 0, nesterov: false, wd: 0 }],
  ["momentum + dampening + weight decay", {
    momentum: 0.8,
    dampening: 0.3,
    nesterov: false,
    wd: 0.1,
  }],
  ["nesterov + weight decay", { momentum: 0.9, dampening: 0, nesterov: true, wd: 0.05 }],
];

for (const [name, o] of sgdCases) {
  Deno.test(`SGD ${name}: several steps match the float64 reference`, async () => {
    const grads = gradsFor(300);
    const got = await runSteps(
      (ps) =>
        new SGD(ps, {
          momentum: o.momentum,
          dampening: o.dampening,
          nesterov: o.nesterov,
          weightDecay: o.wd,
        }),
      inits,
      grads,
      lrs,
    );
    inits.forEach((init, k) => {
      const ref = sgdRef(init.data, grads.map((g) => g[k]), lrs, o);
      assertClose(got[k], ref, { atol: 2e-6, rtol: 2e-5, what: `SGD ${name} p${k}` });
    });
  });
}

// ---- parameter groups ---------------------------------------------------------------------------

const vitShapes: [string, number[]][] = [
  ["cls_token", [1, 1, 4]],
  ["pos_embed", [1, 3, 4]],
  ["patch_embed.proj.weight", [4, 3, 2, 2]],
  ["patch_embed.proj.bias", [4]],
  ["blocks.0.attn.qkv.weight", [12, 4]],
  ["blocks.0.norm1.weight", [4]],
  ["blocks.1.attn.relative_position_bias_table", [9, 2]],
  ["blocks.1.mlp.fc1.weight", [8, 4]],
  ["head.weight", [5, 4]],
  ["head.bias", [5]],
];

Deno.test("paramGroups: no decay for 1-D, biases and patterns; layer-wise lr scales", () => {
  const named = vitShapes.map(([name, shape]) => [name, T.empty(shape)] as const);
  const groups = paramGroups(named, {
    weightDecay: 0.05,
    layerDecay: 0.5,
    numLayers: 2,
    layerId: vitLayerId(2),
  });
  const byParam = new Map(named.map(([name, t]) => [t, name]));
  const summary = groups.map((g) => ({
    name: g.name,
    lrScale: g.lrScale,
    weightDecay: g.weightDecay,
    params: g.params.map((p) => byParam.get(p)),
  }));
  assert.deepEqual(summary, [
    {
      name: "layer0.no_decay",
      lrScale: 0.125,
      weightDecay: 0,
      params: ["cls_token", "pos_embed", "patch_embed.proj.bias"],
    },
    {
      name: "layer0.decay",
      lrScale: 0.125,
      weightDecay: 0.05,
      params: ["patch_embed.proj.weight"],
    },
    {
      name: "layer1.decay",
      lrScale: 0.25,
      weightDecay: 0.05,
      params: ["blocks.0.attn.qkv.weight"],
    },
    { name: "layer1.no_decay", lrScale: 0.25, weightDecay: 0, params: ["blocks.0.norm1.weight"] },
    {
      name: "layer2.no_decay",
      lrScale: 0.5,
      weightDecay: 0,
      params: ["blocks.1.attn.relative_position_bias_table"],
    },
    { name: "layer2.decay", lrScale: 0.5, weightDecay: 0.05, params: ["blocks.1.mlp.fc1.weight"] },
    { name: "layer3.decay", lrScale: 1, weightDecay: 0.05, params: ["head.weight"] },
    { name: "layer3.no_decay", lrScale: 1, weightDecay: 0, params: ["head.bias"] },
  ]);
  // Without layer decay: two groups; a record works as input; custom patterns replace the default.
  const record = Object.fromEntries(named);
  const plain = paramGroups(record, { weightDecay: 0.1, noDecay: [/^head\./] });
  assert.deepEqual(plain.map((g) => [g.name, g.lrScale, g.weightDecay, g.params.length]), [
    ["decay", 1, 0.1, 6],
    ["no_decay", 1, 0, 4],
  ]);
  assert.equal(decays("pos_embed", record["pos_embed"], []), true);
  assert.equal(vitLayerId(12)("rel_pos_bias.relative_position_bias_table"), 13);
  assert.throws(() => paramGroups(named, { weightDecay: 0.1, layerDecay: 0.7 }), /needs layerId/);
  assert.throws(
    () => paramGroups(named, { weightDecay: 0.1, layerDecay: 0.7, numLayers: 1, layerId: () => 5 }),
    /paramGroups: layer id 5 of "cls_token" is outside 0..2/,
  );
  for (const [, t] of named) t.dispose();
});

Deno.test("AdamW honours each group's lr scale and weight decay", async () => {
  const params = vitShapes.map(([name, shape], k) =>
    [name, param(randArray(prod(shape), 50 + k), shape, name)] as const
  );
  const inits = await values(params.map(([, p]) => p));
  const groups = paramGroups(params, {
    weightDecay: 0.2,
    layerDecay: 0.6,
    numLayers: 2,
    layerId: vitLayerId(2),
  });
  const opt = new AdamW(groups, { lr: 0.05, weightDecay: 123 }); // groups override the default
  const grads = [0, 1].map((s) => params.map(([, p], k) => randArray(p.size, 900 + 17 * s + k)));
  for (const step of grads) {
    params.forEach(([, p], k) => setGrad(p, step[k]));
    opt.step();
  }
  const got = await values(params.map(([, p]) => p));
  params.forEach(([, p], k) => {
    const group = groups.find((g) => g.params.includes(p))!;
    const lr = 0.05 * group.lrScale!;
    const o = { beta1: 0.9, beta2: 0.999, eps: 1e-8, wd: group.weightDecay!, decoupled: true };
    const ref = adamRef(inits[k], grads.map((g) => g[k]), [lr, lr], o);
    assertClose(got[k], ref, { atol: 1e-6, rtol: 1e-5, what: `${p.name} (${group.name})` });
  });
  opt.dispose();
  release(...params.map(([, p]) => p));
});

// ---- schedules ----------------------------------------------------------------------------------

Deno.test("warmupCosine and constantWithWarmup: values at warmup, middle and end", () => {
  const s = warmupCosine({ baseLr: 1, warmupSteps: 10, totalSteps: 110, minLr: 0.1 });
  const close = (a: number, b: number) => assert.ok(Math.abs(a - b) < 1e-12, `${a} != ${b}`);
  close(s(0), 0);
  close(s(5), 0.5);
  close(s(10), 1);
  close(s(35), 0.1 + 0.45 * (1 + Math.SQRT1_2));
  close(s(60), 0.55);
  close(s(110), 0.1);
  close(s(1000), 0.1);
  for (let i = 11; i <= 110; i++) assert.ok(s(i) < s(i - 1), `not decreasing at ${i}`);
  close(warmupCosine({ baseLr: 2, totalSteps: 4 })(0), 2);
  close(warmupCosine({ baseLr: 2, totalSteps: 4 })(2), 1);
  const c = constantWithWarmup({ baseLr: 2, warmupSteps: 4 });
  close(c(0), 0);
  close(c(2), 1);
  close(c(4), 2);
  close(c(1e6), 2);
  close(constantWithWarmup({ baseLr: 3 })(0), 3);
  assert.throws(
    () => warmupCosine({ baseLr: 1, warmupSteps: 10, totalSteps: 10 }),
    /totalSteps 10/,
  );
  assert.throws(() => warmupCosine({ baseLr: 1, totalSteps: 10, minLr: 2 }), /minLr 2 is above/);
  assert.throws(() => s(-1), /warmupCosine: step must be/);
  assert.throws(() => constantWithWarmup({ baseLr: 1, warmupSteps: 1.5 }), /warmupSteps/);
});

// ---- clipping -----------------------------------------------------------------------------------

Deno.test("clipGradNorm: norm over all grads, grads scaled above maxNorm, unchanged below", async () => {
  // 5003 and 4100 elements span two partial-sum chunks (4100 as vec4s, 12 too); `frozen` has no
  // gradient and is skipped.
  const clipShapes = [[3, 5], [5003], [1], [4100], [3, 4]];
  const ps = clipShapes.map((shape, k) => param(randArray(prod(shape), k), shape, `c${k}`));
  const frozen = param([1, 2, 3], [3], "frozen");
  const gs = clipShapes.map((shape, k) => randArray(prod(shape), 70 + k, -0.5, 1));
  ps.forEach((p, k) => setGrad(p, gs[k]));
  const norm = Math.sqrt(gs.flat().reduce((a, g) => a + g * g, 0));
  const all = [...ps, frozen];

  // Below the norm: scaled by maxNorm / (norm + 1e-6); 2 dispatches per grad + 1.
  const dispatches = gpu().recorder.dispatches;
  const n1 = clipGradNorm(all, norm / 3);
  assert.equal(gpu().recorder.dispatches - dispatches, 2 * ps.length + 1);
  assertClose([await n1.item()], [norm], { atol: 0, rtol: 2e-6, what: "norm" });
  const scale = norm / 3 / (norm + 1e-6);
  const scaled = await values(ps.map((p) => p.grad!));
  ps.forEach((_, k) =>
    assertClose(scaled[k], gs[k].map((g) => g * scale), { atol: 1e-7, rtol: 2e-6, what: `g${k}` })
  );
  assert.equal(frozen.grad, null);

  // The clipped grads now have norm maxNorm; above it nothing changes (bit for bit).
  const n2 = gradNorm(all);
  assertClose([await n2.item()], [norm / 3], { atol: 0, rtol: 2e-6, what: "clipped norm" });
  const n3 = clipGradNorm(all, norm);
  assertClose([await n3.item()], [norm / 3], { atol: 0, rtol: 2e-6, what: "norm below max" });
  assert.deepEqual(await values(ps.map((p) => p.grad!)), scaled);

  // No gradients at all: norm 0.
  const n4 = clipGradNorm([frozen], 1);
  assert.equal(await n4.item(), 0);
  assert.throws(() => clipGradNorm(all, 0), /clipGradNorm: maxNorm must be > 0, got 0/);
  [n1, n2, n3, n4].forEach((t) => t.dispose());
  release(...all);
});

// ---- determinism, memory, checkpoints -----------------------------------------------------------

/** Two AdamW steps with clipping; returns the parameters' bits and the norms. */
async function clippedRun(): Promise<number[][]> {
  const ps = inits.map((i, k) => param(i.data, i.shape, `p${k}`));
  const opt = new AdamW(ps, { lr: 0.01, weightDecay: 0.05 });
  const norms: T.Tensor[] = [];
  gradsFor(5).slice(0, 2).forEach((step) => {
    ps.forEach((p, k) => setGrad(p, step[k]));
    norms.push(clipGradNorm(ps, 0.5));
    opt.step();
  });
  const out = await values([...ps, ...norms]);
  opt.dispose();
  release(...ps, ...norms);
  return out;
}

Deno.test("AdamW with clipping is deterministic", async () => {
  const a = await clippedRun();
  const b = await clippedRun();
  assert.deepEqual(a, b);
  assert.ok(a[0].some((v, i) => v !== inits[0].data[i]), "parameters did not move");
});

Deno.test("a steady step (clip + AdamW) allocates no GPU buffers after the first", async () => {
  const ps = inits.map((i, k) => param(i.data, i.shape, `p${k}`));
  ps.forEach((p, k) => setGrad(p, randArray(p.size, k)));
  const opt = new AdamW(ps, { lr: 0.01 });
  const step = () => T.tidy(() => void (clipGradNorm(ps, 0.1), opt.step()));
  step();
  await gpu().recorder.sync();
  const { buffers, inUse } = gpu().pool.stats;
  for (let i = 0; i < 4; i++) step();
  await gpu().recorder.sync();
  assert.equal(gpu().pool.stats.buffers, buffers);
  assert.equal(gpu().pool.stats.inUse, inUse);
  opt.dispose();
  release(...ps);
});

Deno.test("stateDict / loadStateDict resume an optimizer exactly", async () => {
  for (
    const make of [
      (ps: T.Tensor[]) => new AdamW(ps),
      (ps: T.Tensor[]) => new SGD(ps, { momentum: 0.9 }),
    ]
  ) {
    const grads = gradsFor(40);
    const a = inits.map((i, k) => param(i.data, i.shape, `a${k}`));
    const optA = make(a);
    for (const step of grads.slice(0, 2)) {
      a.forEach((p, k) => setGrad(p, step[k]));
      optA.step();
    }
    // A second optimizer on copies of the parameters, resumed from A's state.
    const b = (await values(a)).map((data, k) => param(data, inits[k].shape, `b${k}`));
    const optB = make(b);
    optB.loadStateDict(optA.stateDict());
    for (const opt of [optA, optB]) {
      const ps = opt === optA ? a : b;
      ps.forEach((p, k) => setGrad(p, grads[2][k]));
      opt.step();
    }
    assert.deepEqual(await values(b), await values(a));
    assert.deepEqual(optB.stateDict().steps, Object.fromEntries(shapes.map((_, k) => [k, 3])));
    const bad = optA.stateDict();
    bad.tensors["1.bogus"] = bad.tensors[Object.keys(bad.tensors)[0]];
    assert.throws(
      () => optB.loadStateDict(bad),
      /loadStateDict: unexpected state tensor "1.bogus"/,
    );
    optA.dispose();
    optB.dispose();
    release(...a, ...b);
  }
});

// ---- packed parameters: one dispatch per group --------------------------------------------------

// Odd lengths (none a multiple of the 64-float alignment), two groups with their own lr scale and
// weight decay; 5003 elements span two partial-sum chunks of the norm.
const packedShapes = [[7], [3, 5], [5003], [1], [2, 1, 33]];
const packedInits = packedShapes.map((shape, k) => ({
  shape,
  data: randArray(prod(shape), 500 + k),
}));
const packedGroups = [[0, 2, 4], [1, 3]];

/** Gradients written by backward: loss = Σ_k Σ p_k · c_k, so that grad p_k = c_k. */
function backwardInto(ps: T.Tensor[], cs: number[][]): void {
  T.tidy(() => {
    const terms = ps.map((p, k) => T.sum(T.mul(p, T.tensor(cs[k], p.shape))));
    T.backward(terms.reduce((a, b) => T.add(a, b)));
  });
}

const packedGrads = (seed: number) =>
  Array.from(
    { length: STEPS },
    (_, s) => packedShapes.map((shape, k) => randArray(prod(shape), seed + 17 * s + k)),
  );

// Arenas of 512 bytes (128 floats): q0 | q4 | q1 q3 in three arenas, q2 (5003 floats) unpacked, so
// a step takes 4 dispatches; by default one arena holds all: one dispatch per group.
const packings: [string, number | null, number][] = [
  ["one dispatch per group", null, packedGroups.length],
  ["arenas of 512 bytes", 512, 4],
];
for (const kind of ["AdamW", "Adam", "SGD"] as const) {
  for (const [packing, maxPackBytes, dispatches] of packings) {
    Deno.test(`${kind} on packed parameters (${packing}): float64 reference`, async () => {
      Optimizer.maxPackBytes = maxPackBytes;
      const adam = { beta1: 0.8, beta2: 0.95, eps: 1e-6, decoupled: kind === "AdamW" };
      const sgd = { momentum: 0.9, dampening: 0.1, nesterov: false };
      const wds = [0.2, 0];
      const lrScales = [1, 0.5];
      const ps = packedInits.map((init, k) => param(init.data, init.shape, `q${k}`));
      const groups = packedGroups.map((ks, g) => ({
        params: ks.map((k) => ps[k]),
        weightDecay: wds[g],
        lrScale: lrScales[g],
      }));
      const opt = kind === "SGD"
        ? new SGD(groups, sgd)
        : new (kind === "AdamW" ? AdamW : Adam)(groups, {
          betas: [adam.beta1, adam.beta2],
          eps: 1e-6,
        });
      Optimizer.maxPackBytes = null;
      const grads = packedGrads(900);
      grads.forEach((step, s) => {
        backwardInto(ps, step);
        opt.lr = lrs[s];
        const before = gpu().recorder.dispatches;
        opt.step();
        // The first step also fills the state buffers once.
        if (s > 0) assert.equal(gpu().recorder.dispatches - before, dispatches);
        opt.zeroGrad();
      });
      const got = await values(ps);
      packedGroups.forEach((ks, g) => {
        const groupLrs = lrs.map((lr) => lr * lrScales[g]);
        for (const k of ks) {
          const gs = grads.map((step) => step[k]);
          const ref = kind === "SGD"
            ? sgdRef(packedInits[k].data, gs, groupLrs, { ...sgd, wd: wds[g] })
            : adamRef(packedInits[k].data, gs, groupLrs, { ...adam, wd: wds[g] });
          assertClose(got[k], ref, { atol: 2e-6, rtol: 2e-5, what: `${kind} packed q${k}` });
        }
      });
      assert.deepEqual(opt.stateDict().steps, { 0: 4, 1: 4, 2: 4, 3: 4, 4: 4 });
      opt.dispose();
      release(...ps);
    });
  }
}

Deno.test("packed optimizer: a parameter without a gradient falls back per tensor", async () => {
  const ps = packedInits.map((init, k) => param(init.data, init.shape, `r${k}`));
  const opt = new AdamW(ps, { lr: 0.1 });
  const grads = packedGrads(40)[0];
  backwardInto(ps, grads);
  opt.step(); // creates the state
  opt.zeroGrad();
  const frozenBefore = await ps[1].toArray();
  // Only parameters other than r1 get a gradient: 4 dispatches, r1 unchanged.
  const others = ps.filter((_, k) => k !== 1);
  backwardInto(others, grads.filter((_, k) => k !== 1));
  const before = gpu().recorder.dispatches;
  opt.step();
  assert.equal(gpu().recorder.dispatches - before, others.length);
  assert.deepEqual(await ps[1].toArray(), frozenBefore);
  opt.zeroGrad();
  // Every parameter has a gradient again, but r1 stays a step behind: per tensor from now on.
  for (const expected of [ps.length, ps.length]) {
    backwardInto(ps, grads);
    const start = gpu().recorder.dispatches;
    opt.step();
    assert.equal(gpu().recorder.dispatches - start, expected);
    opt.zeroGrad();
  }
  assert.deepEqual(opt.stateDict().steps, { 0: 4, 1: 3, 2: 4, 3: 4, 4: 4 });
  opt.dispose();
  release(...ps);
});

Deno.test("clipGradNorm on packed gradients: 2 dispatches per arena + 1, equal to the per-tensor path", async () => {
  const grads = packedGrads(77)[0].map((g) => g.map((v) => 3 * v));
  const norm = Math.sqrt(grads.flat().reduce((a, g) => a + g * g, 0));
  const clipped: number[][][] = [];
  const norms: number[] = [];
  // Packed in one arena (3 dispatches), in three (7: arenas of 20 KiB hold s0 s1 | s2 s3 | s4),
  // and not packed (2 per tensor + 1).
  for (
    const [packed, maxPackBytes, dispatches] of [[true, null, 3], [true, 20480, 7], [
      false,
      null,
      11,
    ]] as const
  ) {
    const ps = packedInits.map((init, k) => param(init.data, init.shape, `s${k}`));
    Optimizer.maxPackBytes = maxPackBytes;
    const opt = packed ? new AdamW(ps) : null;
    Optimizer.maxPackBytes = null;
    backwardInto(ps, grads);
    const before = gpu().recorder.dispatches;
    const n = clipGradNorm(ps, norm / 4);
    assert.equal(gpu().recorder.dispatches - before, dispatches);
    norms.push(await n.item());
    clipped.push(await values(ps.map((p) => p.grad!)));
    n.dispose();
    opt?.dispose();
    release(...ps);
  }
  const scale = norm / 4 / (norm + 1e-6);
  assertClose(norms, [norm, norm, norm], { atol: 0, rtol: 2e-6, what: "norms" });
  grads.forEach((g, k) => {
    const ref = g.map((v) => v * scale);
    for (const c of [0, 1]) {
      assertClose(clipped[c][k], ref, { atol: 1e-7, rtol: 2e-6, what: `packed g${k}` });
      assertClose(clipped[c][k], clipped[2][k], { atol: 1e-7, rtol: 1e-6, what: `paths g${k}` });
    }
  });
});

Deno.test("packed parameters: gaps stay zero, views and checkpoints see each tensor", async () => {
  const ps = packedInits.map((init, k) => param(init.data, init.shape, `t${k}`));
  const opt = new AdamW(ps, { lr: 0.1, weightDecay: 0.1 });
  backwardInto(ps, packedGrads(5)[0]);
  clipGradNorm(ps, 0.5).dispose();
  opt.step();
  // The whole parameter buffer: every float outside a tensor's range is still zero.
  const arena = arenaOf(ps[0])!;
  const whole = arena.valuesRange();
  const all = await whole.toArray();
  whole.dispose();
  const inside = new Set<number>();
  for (const p of ps) for (let i = 0; i < p.size; i++) inside.add(arena.offsetOf(p) + i);
  assert.ok(all.every((v, i) => inside.has(i) || v === 0), "a gap between tensors changed");
  // Each tensor reads back its own values, also through a reshape.
  const got = await values(ps);
  ps.forEach((p, k) =>
    assert.deepEqual(got[k], all.slice(arena.offsetOf(p), arena.offsetOf(p) + p.size))
  );
  const reshaped = await T.tidy(() => T.reshape(ps[1], [5, 3])).toArray();
  assert.deepEqual(reshaped, got[1]);
  opt.dispose();
  release(...ps);
});

// ---- bad input ----------------------------------------------------------------------------------

Deno.test("optimizers reject bad parameters, gradients and options with clear errors", () => {
  const p = param(randArray(6, 1), [2, 3], "w");
  const ints = T.keep(T.tensor([1, 2], [2], "i32"));
  assert.throws(() => new AdamW([ints]), /peco: AdamW: parameter tensor<i32>\[2\] is not f32/);
  assert.throws(() => new Adam([]), /Adam: no parameters/);
  assert.throws(() => new AdamW([p], { betas: [1, 0.9] }), /AdamW: betas must lie in \[0, 1\)/);
  assert.throws(() => new AdamW([p], { lr: -1 }), /AdamW: lr must be/);
  assert.throws(() => new SGD([p], { nesterov: true }), /SGD: nesterov needs momentum > 0/);
  assert.throws(
    () => new SGD([{ params: [p] }, { params: [p] }]),
    /SGD: parameter w<f32>\[2,3\] is in two groups/,
  );
  const opt = new AdamW([p]);
  p.grad = T.keep(T.tensor(randArray(5, 2), [5]));
  assert.throws(
    () => opt.step(),
    /peco: AdamW.step: gradient tensor<f32>\[5\] does not match parameter w<f32>\[2,3\]/,
  );
  opt.lr = NaN;
  assert.throws(() => opt.step(), /AdamW: lr must be/);
  opt.dispose();
  release(p, ints);
});
