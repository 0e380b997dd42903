// bench/steal.ts: the hypervisor's share of the CPUs' time from /proc/stat's aggregate cpu line.

import assert from "node:assert/strict";
import { cpuCounters, parseCpuLine, stealShare } from "../bench/steal.ts";

Deno.test("parseCpuLine: steal is the eighth counter, the total leaves guest time out", () => {
  // user nice system idle iowait irq softirq steal guest guest_nice
  const c = parseCpuLine("cpu  300 600 40 3000 2 0 5 100 50 7");
  assert.deepEqual(c, { steal: 100, total: 300 + 600 + 40 + 3000 + 2 + 0 + 5 + 100 });
});

Deno.test("parseCpuLine: a per-CPU line, a short line or a non-number is no reading", () => {
  assert.equal(parseCpuLine("cpu0 1 2 3 4 5 6 7 8"), null);
  assert.equal(parseCpuLine("cpu 1 2 3 4 5 6 7"), null);
  assert.equal(parseCpuLine("cpu 1 2 3 4 x 6 7 8"), null);
});

Deno.test("stealShare: stolen ticks over all ticks between two readings", () => {
  assert.equal(stealShare({ steal: 10, total: 1000 }, { steal: 40, total: 1100 }), 0.3);
  assert.equal(stealShare({ steal: 10, total: 1000 }, { steal: 10, total: 1000 }), null);
  assert.equal(stealShare(null, { steal: 10, total: 1000 }), null);
});

Deno.test("cpuCounters: a reading on Linux (through cat, as the bench task allows)", () => {
  const c = cpuCounters();
  if (Deno.build.os !== "linux") return;
  assert.ok(c !== null && c.total > 0 && c.steal >= 0 && c.steal <= c.total);
});
