// PECO_KERNELS: a process may choose kernels as on a discrete GPU whatever its adapter (so .ci/run
// tests every GPU branch against float64 on lavapipe), or as on a software adapter; a bad value is
// refused in one line, and a process without env access (a sandboxed stage) keeps the adapter's
// own choice.

import assert from "node:assert/strict";
import { commandOutput } from "./stage_fixtures.ts";
import { simdLanesOf } from "../lib/gpu/device.ts";

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

Deno.test("simdLanesOf reads llvmpipe's vector width from its description (8 where none)", () => {
  assert.equal(simdLanesOf("llvmpipe (LLVM 15.0.6, 256 bits)"), 8);
  assert.equal(simdLanesOf("llvmpipe (LLVM 19.1.7, 512 bits)"), 16);
  assert.equal(simdLanesOf("llvmpipe (LLVM 12.0.0, 128 bits)"), 4);
  assert.equal(simdLanesOf("NVIDIA H200"), 8);
  assert.equal(simdLanesOf("odd (100 bits)"), 8);
});

// LP_NUM_THREADS: set for a software adapter where the process may and the user has not (so a
// launcher sets it for the sandboxed stage it starts, which inherits it); a user's value stays.
const THREADS_PROBE = `
import { sandboxedCommand } from "${REPO}lib/cli/permissions.ts";
import { gpu, initGpu, softwareThreads } from "${REPO}lib/gpu/device.ts";
const allowed = Deno.permissions.querySync({ name: "env", variable: "LP_NUM_THREADS" });
if (Deno.args[0] === "launcher") {
  sandboxedCommand(new URL("file:///stage.ts"), [], { read: [], write: [] });
  const env = allowed.state === "granted" ? Deno.env.get("LP_NUM_THREADS") ?? null : "hidden";
  console.log(JSON.stringify({ env, expected: String(softwareThreads()) }));
} else {
  await initGpu();
  const info = gpu().info;
  console.log(JSON.stringify({ threads: info.threads, expected: softwareThreads(), description: info.description }));
}
`;

Deno.test("LP_NUM_THREADS: cores + 2 for lavapipe unless the user set it; launchers pass it on", async () => {
  const file = await Deno.makeTempFile({ prefix: "peco-threads-", suffix: ".ts" });
  await Deno.writeTextFile(file, THREADS_PROBE);
  const run = async (flags: string[], value: string, mode: string) => {
    const r = await commandOutput(
      new Deno.Command("deno", {
        args: ["run", "--no-prompt", ...flags, file, mode],
        cwd: REPO,
        env: { XDG_RUNTIME_DIR: "/tmp", LP_NUM_THREADS: value },
      }),
    );
    assert.equal(r.code, 0, r.text);
    return JSON.parse(r.text.trim().split("\n").at(-1)!);
  };
  try {
    const env = ["--allow-env=LP_NUM_THREADS"];
    const unset = await run(env, "", "launcher");
    assert.equal(unset.env, unset.expected);
    assert.equal((await run(env, "3", "launcher")).env, "3");
    assert.equal((await run([], "", "launcher")).env, "hidden", "no env access: left alone");
    const opened = await run(env, "", "gpu");
    if (/llvmpipe/.test(opened.description)) {
      assert.equal(opened.threads, opened.expected);
      assert.equal((await run(env, "3", "gpu")).threads, 3);
    } else {
      assert.equal(opened.threads, null);
    }
  } finally {
    await Deno.remove(file);
  }
});
