// The kernel profiler: timestamp queries per dispatch, summed by kernel name. It needs a device
// opened with the "timestamp-query" feature, so it runs in a process of its own.

import assert from "node:assert/strict";
import { gpu, initGpu } from "../lib/gpu/device.ts";

Deno.test("a GPU opened without profiling has no profiler", async () => {
  await initGpu();
  assert.equal(gpu().profiler, null);
});

Deno.test("the profiler counts and times every dispatch by kernel name", async () => {
  const lib = new URL("../lib/", import.meta.url).href;
  const code = `
    import { gpu, initGpu } from "${lib}gpu/device.ts";
    import * as T from "${lib}tensor/mod.ts";
    await initGpu({ profile: true });
    const a = T.keep(T.tensor([1, 2, 3, 4, 5], [5]));
    T.tidy(() => { for (let i = 0; i < 7; i++) T.add(a, a); });
    // Past one query set (4096 timestamps) the recorder submits mid-step: 2100 more dispatches.
    T.tidy(() => { for (let i = 0; i < 2100; i++) T.mulScalar(a, 2); });
    const y = T.relu(a);
    await gpu().recorder.sync();
    await gpu().profiler.collect();
    const table = gpu().profiler.table();
    // Submitted but not collected before reset: forgotten with the totals, not billed to what follows.
    T.tidy(() => { for (let i = 0; i < 3; i++) T.add(a, a); });
    await gpu().recorder.sync();
    await gpu().profiler.reset();
    T.tidy(() => { T.relu(a); });
    await gpu().recorder.sync();
    await gpu().profiler.collect();
    const afterReset = gpu().profiler.table();
    console.log(JSON.stringify({ table, afterReset, values: Array.from(await y.read()) }));
  `;
  const { code: status, stdout, stderr } = await new Deno.Command("deno", {
    args: ["eval", "--quiet", code],
    env: { XDG_RUNTIME_DIR: "/tmp" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(status, 0, new TextDecoder().decode(stderr));
  const { table, afterReset, values } = JSON.parse(new TextDecoder().decode(stdout));
  const byName = new Map<string, { dispatches: number; ms: number }>(
    table.map((r: { name: string; dispatches: number; ms: number }) => [r.name, r]),
  );
  assert.deepEqual(values, [1, 2, 3, 4, 5], "profiling must not change results");
  const binary = byName.get("binary");
  assert.ok(binary, `no "binary" row in ${JSON.stringify(table)}`);
  assert.equal(binary.dispatches, 7);
  assert.ok(binary.ms > 0);
  assert.equal(byName.get("unary")?.dispatches, 2101);
  const sorted = table.map((r: { ms: number }) => r.ms);
  assert.deepEqual(sorted, [...sorted].sort((x, y) => y - x), "most expensive first");
  assert.deepEqual(
    afterReset.map((r: { name: string; dispatches: number }) => [r.name, r.dispatches]),
    [["unary", 1]],
    "after reset only what was dispatched since",
  );
});
