// `deno task bench [-- --json] [--quick] [--filter NAME]`: every benchmark case of the engine.
// Prints a table, or with --json one JSON object per line: {name, ms, gflops | items_per_s, ...}.
// With --profile every case is followed by its GPU time per kernel (timestamp queries), most
// expensive first: where a step's time goes. Profiling adds overhead per dispatch, so a profiled
// case's ms is not its speed. With --torch the cases that have a PyTorch twin (bench/torch/) also
// print `torch_ms` and `vs_torch` (peco's speed as a fraction of PyTorch's), and the training steps
// `torch_cpu_ms` and `vs_torch_cpu` (the same ratio by process CPU time per step, the one to trust
// when the machine is busy); every training-step case prints `dispatches`, the GPU dispatches it
// records per step, `gflop` (its model GFLOP: the products, forward and backward), `gflops` (gflop
// per second of step time) and `efficiency` (gflops ÷ `ceiling_gflops`, the adapter's FMA ceiling
// measured once in the same process). On Linux every case also prints `steal` (and with --torch
// `torch_steal`): the share of the CPUs' time the hypervisor took while it ran (bench/steal.ts).

import { parseOrExit } from "../lib/cli/args.ts";
import { gpu, initGpuOrExit } from "../lib/gpu/device.ts";
import { type BenchCase, type BenchResult, fmaCeiling } from "./harness.ts";
import { cpuCounters, stealShare } from "./steal.ts";
import { torchTimes } from "./torch_twins.ts";

const options = parseOrExit({
  usage: "deno task bench --",
  summary: "Benchmarks of the peco engine on this machine's WebGPU adapter.",
  options: {
    json: { type: "boolean", help: "one JSON object per line instead of a table" },
    quick: { type: "boolean", help: "skip the heavy cases" },
    filter: { type: "string", help: "run only cases whose name contains this text" },
    profile: { type: "boolean", help: "print each case's GPU time per kernel (slower runs)" },
    top: { type: "number", default: 15, help: "kernels listed per case with --profile" },
    torch: {
      type: "boolean",
      help: "also time the cases' PyTorch twins (bench/torch/): vs_torch by wall time, " +
        "vs_torch_cpu by CPU time (trust it on a busy machine)",
    },
  },
});

// PyTorch first, alone: the GPU adapter here may be the same cores.
const torch = options.torch ? await torchTimes(options) : null;
await initGpuOrExit({ profile: options.profile });
const files = [
  "engine",
  "matmul",
  "attention",
  "conv",
  "vq",
  "shard",
  "loader",
  "tokenizer",
  "tokenize",
  "pretrain",
];
const cases: BenchCase[] = [];
for (const file of files) {
  const mod = await import(`./${file}.ts`).catch((error) => {
    if (error instanceof Error && /Module not found/.test(error.message)) return { cases: [] };
    throw error;
  });
  cases.push(...(mod.cases as BenchCase[]));
}

const info = gpu().info;
if (!options.json) {
  const threads = info.threads === null ? "" : `, ${info.threads} worker threads`;
  console.log(`adapter: ${info.description} (${info.vendor})${threads}`);
}
// Step cases divide by the FMA ceiling, measured once per process on first use; with --profile it
// is measured here, so that its kernel is not billed to the first step case's profile.
if (options.profile) await fmaCeiling();
const results: BenchResult[] = [];
for (const c of cases) {
  if (options.filter && !c.name.includes(options.filter)) continue;
  if (options.quick && c.slow) continue;
  // Each case's peak counts its own memory: buffers cached by the cases before it are freed first.
  gpu().pool.trim();
  gpu().pool.resetPeak();
  await gpu().profiler?.reset();
  const started = performance.now();
  const countersBefore = cpuCounters();
  const result = await c.run();
  const steal = stealShare(countersBefore, cpuCounters());
  const caseMs = performance.now() - started;
  result.adapter = info.description;
  if (info.threads !== null) result.threads = info.threads;
  if (steal !== null) result.steal = +steal.toFixed(3);
  const twin = torch?.get(result.name);
  if (twin !== undefined) {
    result.torch_ms = twin.ms;
    result.vs_torch = twin.ms / result.ms;
    // CPU time against CPU time: what a loaded machine leaves comparable (README).
    if (typeof result.cpu_ms === "number") {
      result.torch_cpu_ms = twin.cpuMs;
      result.vs_torch_cpu = twin.cpuMs / result.cpu_ms;
    }
    if (twin.steal !== null) result.torch_steal = twin.steal;
  }
  // Peak GPU memory of this case: buffers and textures the pool held at once.
  result.peak_bytes = gpu().pool.stats.peakAllocated;
  results.push(result);
  if (options.json) console.log(JSON.stringify(result));
  else console.log(formatRow(result));
  if (gpu().profiler) await printProfile(c.name, caseMs, options.json, options.top);
}

/**
 * The case's GPU time per kernel (warm-up and timed iterations together), and how much of the
 * case's wall time no kernel's timestamps cover (host work, driver work between passes, and on
 * lavapipe some kernels' own work: see README, "Profiling").
 */
async function printProfile(name: string, caseMs: number, json: boolean | undefined, top: number) {
  const profiler = gpu().profiler!;
  await gpu().recorder.sync();
  await profiler.collect();
  const rows = profiler.table();
  const total = rows.reduce((s, r) => s + r.ms, 0);
  if (json) {
    console.log(JSON.stringify({ name, profile: rows, kernels_ms: total, case_ms: caseMs }));
    return;
  }
  for (const r of rows.slice(0, top)) {
    console.log(
      `    ${r.name.padEnd(40)} ${(100 * r.ms / total).toFixed(1).padStart(5)}%  ` +
        `${r.ms.toFixed(1).padStart(9)} ms  ${String(r.dispatches).padStart(7)} dispatches  ` +
        `${(1e3 * r.ms / r.dispatches).toFixed(1).padStart(8)} µs each`,
    );
  }
  const rest = rows.slice(top).reduce((s, r) => s + r.ms, 0);
  console.log(
    `    (${rows.length - Math.min(top, rows.length)} more kernels: ${rest.toFixed(1)} ms)`,
  );
}

function formatRow(r: BenchResult): string {
  // A training step has both rates: items/s in the rate column, its model GFLOP/s with the extras.
  const rateKey = r.items_per_s !== undefined ? "items_per_s" : "gflops";
  const rate = r.items_per_s !== undefined
    ? `${r.items_per_s.toFixed(1)} items/s`
    : r.gflops !== undefined
    ? `${r.gflops.toFixed(1)} GFLOP/s`
    : "";
  const extra = Object.entries(r)
    .filter(([k]) => !["name", "ms", rateKey, "adapter", "threads", "peak_bytes"].includes(k))
    .map(([k, v]) => {
      const text = typeof v === "number"
        ? +v.toFixed(3)
        : typeof v === "object"
        ? JSON.stringify(v)
        : v;
      return `${k}=${text}`;
    })
    .join(" ");
  const peak = `${((r.peak_bytes as number) / 2 ** 20).toFixed(1)} MiB peak`;
  return `${r.name.padEnd(44)} ${r.ms.toFixed(2).padStart(10)} ms  ${rate.padStart(16)}  ` +
    `${peak.padStart(14)}  ${extra}`;
}
