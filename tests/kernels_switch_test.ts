// PECO_KERNELS: a process may choose kernels as on a discrete GPU whatever its adapter (so .ci/run
// tests every GPU branch against float64 on lavapipe), or as on a software adapter; a bad value is
// refused in one line, and a process without env access (a sandboxed stage) keeps the adapter's
// own choice.

import assert from "node:assert/strict";
import { commandOutput } from "./stage_fixtures.ts";

const REPO = new URL("..", import.meta.url).pathname;
const PROBE = `
import { gpu, initGpu } from "${REPO}lib/gpu/device.ts";
import { matmulVariant } from "${REPO}lib/tensor/ops/matmul.ts";
await initGpu();
console.log(JSON.stringify({
  software: gpu().info.software,
  description: gpu().info.description,
  matmul: matmulVariant([512, 512], [512, 512]),
}));
`;
const script = await Deno.makeTempFile({ prefix: "peco-kernels-", suffix: ".ts" });
await Deno.writeTextFile(script, PROBE);

/** The probe under `deno run` (no permission but env, when allowed) with `env` set. */
async function probe(env: Record<string, string>, allowEnv = true) {
  const r = await commandOutput(
    new Deno.Command("deno", {
      args: ["run", "--no-prompt", ...(allowEnv ? ["--allow-env"] : []), script],
      cwd: REPO,
      env: { XDG_RUNTIME_DIR: "/tmp", ...env },
      stdout: "piped",
      stderr: "piped",
    }),
  );
  return r;
}

Deno.test("PECO_KERNELS=gpu makes kernel choices as on a GPU; software and unset as the adapter", async () => {
  const plain = await probe({ PECO_KERNELS: "" });
  assert.equal(plain.code, 0, plain.text);
  const own = JSON.parse(plain.text.trim().split("\n").at(-1)!);
  const asGpu = JSON.parse((await probe({ PECO_KERNELS: "gpu" })).text.trim().split("\n").at(-1)!);
  assert.equal(asGpu.software, false);
  assert.match(asGpu.matmul, /^tiled64$/, "a 512³ product takes the shared-memory tiles on a GPU");
  const asSoftware = JSON.parse(
    (await probe({ PECO_KERNELS: "software" })).text.trim().split("\n").at(-1)!,
  );
  assert.equal(asSoftware.software, true);
  if (own.software) {
    assert.match(asGpu.description, /kernels chosen as for a GPU: PECO_KERNELS=gpu/);
    assert.notEqual(asGpu.matmul, own.matmul);
  }
  // Without env access the variable is not read: the adapter's own choice.
  const sandboxed = await probe({ PECO_KERNELS: "gpu" }, false);
  assert.equal(sandboxed.code, 0, sandboxed.text);
  assert.equal(JSON.parse(sandboxed.text.trim().split("\n").at(-1)!).software, own.software);
  const bad = await probe({ PECO_KERNELS: "fast" });
  assert.notEqual(bad.code, 0);
  assert.match(bad.text, /PECO_KERNELS=fast: expected "gpu" or "software"/);
  await Deno.remove(script);
});
