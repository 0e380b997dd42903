// The engine's own machinery: scopes, pool reuse, recorder batching, autograd bookkeeping.

import assert from "node:assert/strict";
import { assertClose } from "./util.ts";
import { gpu } from "../lib/gpu/device.ts";
import { sizeClass } from "../lib/gpu/pool.ts";
import * as T from "../lib/tensor/mod.ts";

Deno.test("tidy releases intermediates, keeps returned and kept tensors", async () => {
  const pool = gpu().pool.stats;
  const before = pool.inUse;
  let kept: T.Tensor | null = null;
  const out = T.tidy(() => {
    const a = T.full([100], 2);
    const b = T.mul(a, a);
    kept = T.keep(T.addScalar(b, 1));
    T.exp(b);
    return { result: T.add(b, a) };
  });
  assert.equal(out.result.disposed, false);
  assert.equal(kept!.disposed, false);
  assertClose(await out.result.toArray(), new Array(100).fill(6));
  assertClose(await kept!.toArray(), new Array(100).fill(5));
  out.result.dispose();
  kept!.dispose();
  assert.equal(pool.inUse, before);
});

Deno.test("a steady loop allocates no new GPU buffers after its first step", async () => {
  const x = T.keep(T.full([333], 0.5));
  const step = () => T.tidy(() => void T.sum(T.gelu(T.mul(x, x))));
  step();
  await gpu().recorder.sync();
  const buffers = gpu().pool.stats.buffers;
  for (let i = 0; i < 5; i++) step();
  await gpu().recorder.sync();
  assert.equal(gpu().pool.stats.buffers, buffers);
  x.dispose();
});

Deno.test("size classes round up and stay within 1/16 above 1 MiB", () => {
  assert.equal(sizeClass(1), 256);
  assert.equal(sizeClass(1000), 1024);
  const big = 5_000_000;
  assert.ok(sizeClass(big) >= big && sizeClass(big) <= big * 1.0625 + 1);
});

Deno.test("readAll reads several tensors with one submit", async () => {
  const a = T.full([3], 1.5);
  const b = T.full([1], -2);
  const submits = gpu().recorder.submits;
  const [ra, rb] = await T.readAll([a, b]);
  assert.equal(gpu().recorder.submits, submits + 1);
  assertClose(ra, [1.5, 1.5, 1.5]);
  assertClose(rb, [-2]);
  a.dispose();
  b.dispose();
});

Deno.test("the pipeline cache compiles a kernel once per set of constants", () => {
  const x = T.full([10], 1);
  T.exp(x);
  const n = gpu().pipelines.size;
  T.exp(x);
  T.exp(x);
  assert.equal(gpu().pipelines.size, n);
  T.log(x);
  assert.equal(gpu().pipelines.size, n + 1);
  x.dispose();
});

Deno.test("gradients accumulate across backward calls; noGrad and detach record nothing", async () => {
  const w = T.keep(T.tensor([1, 2, 3]));
  w.requiresGrad = true;
  for (let i = 0; i < 2; i++) T.tidy(() => T.backward(T.sum(T.mul(w, w))));
  assertClose(await w.grad!.toArray(), [4, 8, 12]);
  const y = T.noGrad(() => T.mul(w, w));
  assert.equal(y.requiresGrad, false);
  assert.equal(w.detach().requiresGrad, false);
  T.zeroGrad([w]);
  assert.equal(w.grad, null);
  y.dispose();
  w.dispose();
});

Deno.test("a disposed tensor cannot be used", () => {
  const x = T.full([2], 1);
  x.dispose();
  assert.throws(() => T.exp(x), /used after dispose/);
});

Deno.test("bad shapes get clear errors", () => {
  const a = T.full([2, 3], 1);
  const b = T.full([4], 1);
  assert.throws(() => T.add(a, b), /shapes \[2,3\] and \[4\] do not broadcast/);
  assert.throws(() => a.view([4]), /cannot view/);
  assert.throws(() => T.tensor([1, 2, 3], [2, 2]), /3 values do not fill shape \[2,2\]/);
  a.dispose();
  b.dispose();
});

Deno.test("without an adapter a task exits with one line naming the driver to install", async () => {
  const script = new URL("../bench/main.ts", import.meta.url).pathname;
  const { code, stderr } = await new Deno.Command("deno", {
    args: ["run", "--allow-read", script],
    // No adapter exists for a backend this OS lacks: the same path as a machine without a driver.
    env: { DENO_WEBGPU_BACKEND: "dx12", XDG_RUNTIME_DIR: "/tmp" },
    stdout: "null",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(stderr).trim();
  assert.equal(code, 3);
  assert.match(text, /^peco: no WebGPU adapter found.*apt-get install -y mesa-vulkan-drivers/);
  assert.equal(text.split("\n").length, 1);
});

Deno.test("a tensor above the adapter's largest binding fails with a clear error", () => {
  const limit = gpu().limits.maxStorageBufferBindingSize;
  assert.throws(
    () => T.empty([Math.floor(limit / 4) + 1]),
    /GPU out of memory: f32\[\d+\] needs .* above the adapter's largest storage binding/,
  );
});

Deno.test("backward follows only the inputs that required a gradient when the op ran", async () => {
  // A weight frozen for one forward pass (as the discriminator under the generator's loss) gets
  // no gradient from it, even when unfrozen before backward runs.
  const w = T.tensor([2, 3], [2]);
  const x = T.tensor([5, 7], [2]);
  w.requiresGrad = x.requiresGrad = true;
  w.requiresGrad = false;
  const y = T.sum(T.mul(w, x));
  w.requiresGrad = true;
  T.backward(y);
  assert.equal(w.grad, null, "the frozen weight got a gradient");
  assert.deepEqual(Array.from(await x.grad!.toArray()), [2, 3]);
  [w, x, y, x.grad!].forEach((t) => t.dispose());
});

Deno.test("the pool hands out the free buffer made first, whatever order they were released in", () => {
  const pool = gpu().pool;
  const bytes = 4 * 1237;
  const made = [0, 1, 2, 3].map(() => pool.acquire(bytes));
  for (const i of [2, 0, 3, 1]) pool.release(made[i]);
  const again = [0, 1, 2, 3].map(() => pool.acquire(bytes));
  assert.ok(again.every((buffer, i) => buffer === made[i]), "the same buffers, in the same order");
  for (const i of [1, 3, 0, 2]) pool.release(again[i]);
  const textures = [0, 1, 2].map(() => pool.acquireTexture(5, 3));
  for (const i of [1, 2, 0]) pool.releaseTexture(textures[i]);
  const reused = [0, 1, 2].map(() => pool.acquireTexture(5, 3));
  assert.ok(reused.every((t, i) => t === textures[i]), "the same textures, in the same order");
  for (const t of reused) pool.releaseTexture(t);
});

Deno.test("a steady training step creates no bind groups after its first steps", async () => {
  const x = T.keep(T.full([7, 33], 0.25));
  const w = T.keep(T.full([33, 5], 0.5));
  w.requiresGrad = true;
  // Intermediates of one size class released mid-step in another order than made.
  const step = () =>
    T.tidy(() => {
      const a = T.mul(x, x);
      const b = T.add(x, a);
      const c = T.gelu(b);
      a.dispose();
      T.backward(T.sum(T.matmul(T.mul(c, b), w)));
      w.grad!.dispose();
      w.grad = null;
    });
  for (let i = 0; i < 3; i++) step();
  await gpu().recorder.sync();
  const before = gpu().recorder.bindGroupsCreated;
  for (let i = 0; i < 4; i++) step();
  await gpu().recorder.sync();
  assert.equal(gpu().recorder.bindGroupsCreated, before);
  x.dispose();
  w.dispose();
});
