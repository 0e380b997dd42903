import assert from "node:assert/strict";
import { join } from "node:path";
import { assertClose } from "./util.ts";
import { Module, ModuleList } from "../lib/nn/module.ts";
import * as init from "../lib/tensor/init.ts";
import { Rng } from "../lib/tensor/init.ts";
import { readSafetensors, type TensorRecord, writeSafetensors } from "../lib/io/safetensors.ts";
import { backward, full, mul, sum, type Tensor, tensor, tidy, zeros } from "../lib/tensor/mod.ts";

// Test-only modules shaped like real layers (names as in PyTorch).

class TinyLinear extends Module {
  weight: Tensor;
  bias: Tensor;
  constructor(rng: Rng, inF: number, outF: number) {
    super();
    this.weight = this.param("weight", init.kaimingUniform([outF, inF], rng.fork("weight")));
    this.bias = this.param("bias", init.uniform([outF], -0.1, 0.1, rng.fork("bias")));
  }
}

class TinyNorm extends Module {
  weight: Tensor;
  constructor(dim: number) {
    super();
    this.weight = this.param("weight", full([dim], 1));
    this.buffer("running_mean", zeros([dim]));
    this.buffer("num_batches_tracked", zeros([], "i32"));
  }
}

class TinyBlock extends Module {
  attn: TinyLinear;
  norm: TinyNorm;
  constructor(rng: Rng, dim: number) {
    super();
    this.norm = this.child("norm", new TinyNorm(dim));
    this.attn = this.child("attn", new TinyLinear(rng.fork("attn"), dim, dim));
  }
}

class TinyNet extends Module {
  blocks: ModuleList<TinyBlock>;
  head: TinyLinear;
  constructor(seed: number, dim = 3, depth = 2) {
    super();
    const rng = new Rng(seed);
    this.param("cls_token", init.truncNormal([1, 1, dim], 0.02, rng.fork("cls")));
    this.blocks = this.child(
      "blocks",
      Array.from({ length: depth }, (_, i) => new TinyBlock(rng.fork(`blocks.${i}`), dim)),
    );
    this.head = this.child("head", new TinyLinear(rng.fork("head"), dim, 5));
  }
}

const PARAMS = [
  "cls_token",
  "blocks.0.norm.weight",
  "blocks.0.attn.weight",
  "blocks.0.attn.bias",
  "blocks.1.norm.weight",
  "blocks.1.attn.weight",
  "blocks.1.attn.bias",
  "head.weight",
  "head.bias",
];
const BUFFERS = [
  "blocks.0.norm.running_mean",
  "blocks.0.norm.num_batches_tracked",
  "blocks.1.norm.running_mean",
  "blocks.1.norm.num_batches_tracked",
];
// PyTorch's state_dict order: a module's parameters, its buffers, then each child's.
const STATE = [
  "cls_token",
  "blocks.0.norm.weight",
  "blocks.0.norm.running_mean",
  "blocks.0.norm.num_batches_tracked",
  "blocks.0.attn.weight",
  "blocks.0.attn.bias",
  "blocks.1.norm.weight",
  "blocks.1.norm.running_mean",
  "blocks.1.norm.num_batches_tracked",
  "blocks.1.attn.weight",
  "blocks.1.attn.bias",
  "head.weight",
  "head.bias",
];

async function stateValues(m: Module): Promise<Map<string, number[]>> {
  const out = new Map<string, number[]>();
  for (const [name, t] of m.stateDict()) out.set(name, await t.toArray());
  return out;
}

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "peco-module-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("dotted PyTorch names for parameters, buffers, state dict and submodules", () => {
  const net = new TinyNet(1);
  assert.deepEqual([...net.namedParameters().keys()], PARAMS);
  assert.deepEqual([...net.namedBuffers().keys()], BUFFERS);
  assert.deepEqual([...net.stateDict().keys()], STATE);
  assert.deepEqual(
    [...net.namedModules()].map(([n]) => n),
    [
      "",
      "blocks",
      "blocks.0",
      "blocks.0.norm",
      "blocks.0.attn",
      "blocks.1",
      "blocks.1.norm",
      "blocks.1.attn",
      "head",
    ],
  );
  assert.equal(net.parameters().length, PARAMS.length);
  assert.equal(net.numParameters(), 3 + 2 * (3 + 9 + 3) + 15 + 5);
  assert.deepEqual(net.stateDict().get("head.weight")!.shape, [5, 3]);
  for (const p of net.parameters()) assert.ok(p.requiresGrad && p.kept && p.dtype === "f32");
  for (const b of net.namedBuffers().values()) assert.ok(!b.requiresGrad && b.kept);
  assert.equal(net.stateDict().get("blocks.1.norm.num_batches_tracked")!.dtype, "i32");
  net.dispose();
});

Deno.test("ModuleList: numbered children, iteration, push, bounds", () => {
  const list = new ModuleList([new TinyNorm(2)]);
  list.push(new TinyNorm(3));
  assert.equal(list.length, 2);
  assert.deepEqual([...list].map((m) => m.weight.shape[0]), [2, 3]);
  assert.equal(list.at(-1).weight.shape[0], 3);
  assert.throws(() => list.at(2), /peco: ModuleList: index 2 out of range \(length 2\)/);
  assert.deepEqual([...list.stateDict().keys()].slice(0, 4), [
    "0.weight",
    "0.running_mean",
    "0.num_batches_tracked",
    "1.weight",
  ]);
  list.dispose();
});

Deno.test("registration rejects bad names, duplicates and non-f32 parameters", () => {
  const m = new Module();
  m.param("w", zeros([2]));
  assert.throws(() => m.param("w", zeros([2])), /peco: Module.param: "w" is already registered/);
  assert.throws(() => m.buffer("w", zeros([2])), /peco: Module.buffer: "w" is already registered/);
  assert.throws(() => m.child("w", new Module()), /peco: Module.child: "w" is already registered/);
  assert.throws(() => m.param("a.b", zeros([2])), /peco: Module.param: invalid name "a.b"/);
  assert.throws(() => m.param("", zeros([2])), /invalid name ""/);
  assert.throws(
    () => m.param("ids", zeros([2], "i32")),
    /peco: Module.param: "ids" must be f32, got tensor<i32>\[2\]/,
  );
  m.dispose();
});

Deno.test("parameters outlive scopes; tied parameters are listed once", () => {
  let net: TinyNet | null = null;
  tidy(() => {
    net = new TinyNet(2);
  });
  for (const t of net!.stateDict().values()) assert.ok(!t.disposed);
  const shared = new Module();
  const a = shared.child("a", new TinyNorm(2));
  const b = shared.child("b", new Module());
  b.param("weight", a.weight); // tied, as embedding and output weights often are
  assert.deepEqual([...shared.namedParameters().keys()], ["a.weight"]);
  assert.deepEqual([...shared.stateDict().keys()], [
    "a.weight",
    "a.running_mean",
    "a.num_batches_tracked",
    "b.weight",
  ]);
  net!.dispose();
  shared.dispose();
});

Deno.test("train()/eval() propagate to every submodule", () => {
  const net = new TinyNet(3);
  assert.ok([...net.namedModules()].every(([, m]) => m.training));
  assert.equal(net.eval(), net);
  assert.ok([...net.namedModules()].every(([, m]) => !m.training));
  net.blocks.at(0).train();
  assert.ok(net.blocks.at(0).norm.training && !net.blocks.at(1).norm.training && !net.training);
  net.train();
  assert.ok([...net.namedModules()].every(([, m]) => m.training));
  net.dispose();
});

Deno.test("saveSafetensors → loadSafetensors restores every value into another model", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "net.safetensors");
    const a = new TinyNet(10);
    await a.saveSafetensors(path, { step: "7", arch: "tiny" });
    const file = await readSafetensors(path);
    assert.deepEqual([...file.tensors.keys()].sort(), [...STATE].sort());
    assert.deepEqual(file.metadata, { step: "7", arch: "tiny" });
    assert.equal(file.tensors.get("blocks.0.norm.num_batches_tracked")!.dtype, "I32");
    assert.deepEqual(file.tensors.get("head.weight")!.shape, [5, 3]);

    const b = new TinyNet(11);
    const before = await stateValues(b);
    const expected = await stateValues(a);
    assert.notDeepEqual(before.get("head.weight"), expected.get("head.weight"));
    const result = await b.loadSafetensors(path);
    assert.deepEqual(result, {
      missing: [],
      unexpected: [],
      metadata: { step: "7", arch: "tiny" },
    });
    const after = await stateValues(b);
    for (const name of STATE) assert.deepEqual(after.get(name), expected.get(name), name);
    // Loading replaced values in place: the same tensors (optimizers keep their references).
    assert.equal(b.stateDict().get("head.weight"), b.head.weight);

    // BF16 storage: values rounded to bfloat16.
    await a.saveSafetensors(path, {}, { floatDtype: "BF16" });
    const half = await readSafetensors(path);
    assert.equal(half.tensors.get("head.weight")!.dtype, "BF16");
    assertClose(
      half.tensors.get("head.weight")!.data as Float32Array,
      expected.get("head.weight")!,
      {
        atol: 0,
        rtol: 2 ** -8,
      },
    );
    a.dispose();
    b.dispose();
  });
});

Deno.test("loadStateDict from GPU tensors, plain objects and PyTorch-style I64 buffers", async () => {
  const a = new TinyNet(20);
  const b = new TinyNet(21);
  b.loadStateDict(a.stateDict());
  assert.deepEqual(await stateValues(b), await stateValues(a));
  b.loadStateDict(b.stateDict()); // onto itself: a no-op, not a GPU error
  assert.deepEqual(await stateValues(b), await stateValues(a));

  const c = new TinyNet(22, 1, 1);
  const entries: Record<string, TensorRecord | Tensor> = {
    "cls_token": { dtype: "F16", shape: [1, 1, 1], data: new Float32Array([0.5]) },
    "blocks.0.norm.weight": tensor([2], [1]),
    "blocks.0.norm.running_mean": { dtype: "F32", shape: [1], data: new Float32Array([-3]) },
    "blocks.0.norm.num_batches_tracked": {
      dtype: "I64",
      shape: [],
      data: new BigInt64Array([123n]),
    },
    "blocks.0.attn.weight": { dtype: "F32", shape: [1, 1], data: new Float32Array([4]) },
    "blocks.0.attn.bias": { dtype: "BF16", shape: [1], data: new Float32Array([5]) },
    "head.weight": { dtype: "F32", shape: [5, 1], data: new Float32Array([1, 2, 3, 4, 5]) },
    "head.bias": { dtype: "F32", shape: [5], data: new Float32Array(5) },
  };
  c.loadStateDict(entries);
  const v = await stateValues(c);
  assert.deepEqual(
    [...v.values()].slice(0, 6),
    [[0.5], [2], [-3], [123], [4], [5]],
  );
  assert.deepEqual(v.get("head.weight"), [1, 2, 3, 4, 5]);
  a.dispose();
  b.dispose();
  c.dispose();
});

Deno.test("loadStateDict: ONE error listing every missing, unexpected and mismatched name", async () => {
  const net = new TinyNet(30);
  const before = await stateValues(net);
  const entries = new Map<string, TensorRecord>();
  for (const [name, values] of before) {
    const t = net.stateDict().get(name)!;
    entries.set(
      name,
      t.dtype === "i32"
        ? { dtype: "I32", shape: [...t.shape], data: new Int32Array(values) }
        : { dtype: "F32", shape: [...t.shape], data: new Float32Array(values.map((x) => x + 1)) },
    );
  }
  entries.delete("head.bias");
  entries.delete("blocks.1.norm.running_mean");
  entries.set("head.extra", { dtype: "F32", shape: [2], data: new Float32Array(2) });
  entries.set("blocks.0.attn.weight", { dtype: "F32", shape: [3, 2], data: new Float32Array(6) });
  entries.set("blocks.0.attn.bias", { dtype: "I32", shape: [3], data: new Int32Array(3) });
  entries.set("blocks.0.norm.num_batches_tracked", {
    dtype: "I64",
    shape: [],
    data: new BigInt64Array([1n << 33n]),
  });

  assert.throws(() => net.loadStateDict(entries), (e: Error) => {
    assert.equal(
      e.message,
      "peco: TinyNet.loadStateDict: " +
        "2 missing [blocks.1.norm.running_mean f32[3]; head.bias f32[5]], " +
        "1 unexpected [head.extra F32[2]], " +
        "3 mismatched [blocks.0.norm.num_batches_tracked: I64 value 8589934592 at index 0 does not fit in i32; " +
        "blocks.0.attn.weight: module f32[3,3], state dict F32[3,2]; " +
        "blocks.0.attn.bias: module f32[3], state dict I32[3]]",
    );
    return true;
  });
  assert.deepEqual(await stateValues(net), before, "nothing written by a failed load");

  // Not strict: missing/unexpected alone are fine (listed in the message), mismatches still fail.
  assert.throws(
    () => net.loadStateDict(entries, { strict: false, source: "ckpt.safetensors" }),
    /^Error: peco: TinyNet\.loadStateDict from ckpt\.safetensors: 2 missing .* 3 mismatched \[/,
  );
  entries.delete("blocks.0.attn.weight");
  entries.delete("blocks.0.attn.bias");
  entries.delete("blocks.0.norm.num_batches_tracked");
  const result = net.loadStateDict(entries, { strict: false });
  assert.deepEqual(result, {
    missing: [
      "blocks.0.norm.num_batches_tracked",
      "blocks.0.attn.weight",
      "blocks.0.attn.bias",
      "blocks.1.norm.running_mean",
      "head.bias",
    ],
    unexpected: ["head.extra"],
  });
  const after = await stateValues(net);
  assert.deepEqual(
    after.get("head.weight"),
    before.get("head.weight")!.map((x) => Math.fround(x + 1)),
  );
  assert.deepEqual(
    after.get("head.bias"),
    before.get("head.bias"),
    "missing entries are left alone",
  );
  net.dispose();
});

Deno.test("loadSafetensors names the file in its error", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "other.safetensors");
    await writeSafetensors(path, { "w": { dtype: "F32", shape: [1], data: new Float32Array(1) } });
    const net = new TinyNet(40);
    await assert.rejects(
      net.loadSafetensors(path),
      new RegExp(
        `^Error: peco: TinyNet\\.loadStateDict from ${
          path.replaceAll(".", "\\.")
        }: 13 missing .*1 unexpected \\[w F32\\[1\\]\\]$`,
      ),
    );
    net.dispose();
  });
});

Deno.test("zeroGrad releases gradients; dispose releases parameters, gradients and buffers", async () => {
  const net = new TinyNet(50);
  tidy(() => backward(sum(mul(net.head.weight, net.head.weight))));
  const g = net.head.weight.grad!;
  assertClose(await g.toArray(), (await net.head.weight.toArray()).map((w) => 2 * w), {
    what: "grad",
  });
  net.zeroGrad();
  assert.equal(net.head.weight.grad, null);
  assert.ok(g.disposed);
  tidy(() => backward(sum(net.head.bias)));
  const g2 = net.head.bias.grad!;
  const all = [...net.stateDict().values()];
  net.dispose();
  assert.ok(all.every((t) => t.disposed));
  assert.ok(g2.disposed && net.head.bias.grad === null);
});
