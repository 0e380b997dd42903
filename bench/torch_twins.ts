// `deno task bench --torch`: the PyTorch time of the cases that have a twin in bench/torch/cases.py
// (the same models and shapes, CPU, two threads), run with /usr/bin/python3 before the peco cases
// so the two never compete for the cores. main.ts adds `torch_ms` and `vs_torch` (peco's speed as a
// fraction of PyTorch's: torch_ms / ms) to every matching case, and where the case measured its CPU
// time, `torch_cpu_ms` and `vs_torch_cpu` (torch_cpu_ms / cpu_ms): process CPU time per step on
// both sides, the ratio to trust on a busy machine (see README, "Dispatches and PyTorch").

export const PYTHON = "/usr/bin/python3";
export const SCRIPT_DIR = new URL("./torch/", import.meta.url).pathname;

/** Why PyTorch cannot run here, or null when /usr/bin/python3 imports torch. */
export async function torchMissing(): Promise<string | null> {
  try {
    const out = await new Deno.Command(PYTHON, {
      args: ["-c", "import torch; print(torch.__version__)"],
      stdout: "null",
      stderr: "null",
    }).output();
    return out.success ? null : `${PYTHON} has no torch`;
  } catch (error) {
    return `${PYTHON} cannot run (${error instanceof Error ? error.message : error})`;
  }
}

/** PyTorch's wall and process CPU milliseconds per step of one case, and the steal meanwhile. */
export interface TorchTime {
  ms: number;
  cpuMs: number;
  /** Share of the CPUs' time stolen by the hypervisor while the case ran (null: not Linux). */
  steal: number | null;
}

/**
 * PyTorch's times per case name, for the cases the filter selects; null (after printing one
 * line saying why) when torch is not available.
 */
export async function torchTimes(
  { filter, quick }: { filter?: string; quick?: boolean },
): Promise<Map<string, TorchTime> | null> {
  const missing = await torchMissing();
  if (missing) {
    console.log(`--torch: ${missing}; running the peco cases only`);
    return null;
  }
  const args = ["cases.py", ...(filter ? ["--filter", filter] : []), ...(quick ? ["--quick"] : [])];
  const out = await new Deno.Command(PYTHON, { args, cwd: SCRIPT_DIR, stderr: "inherit" }).output();
  if (!out.success) throw new Error(`peco: bench --torch: bench/torch/cases.py exited ${out.code}`);
  const times = new Map<string, TorchTime>();
  for (const line of new TextDecoder().decode(out.stdout).split("\n")) {
    if (!line.trim()) continue;
    const { name, torch_ms, torch_cpu_ms, steal } = JSON.parse(line) as {
      name: string;
      torch_ms: number;
      torch_cpu_ms: number;
      steal?: number | null;
    };
    times.set(name, { ms: torch_ms, cpuMs: torch_cpu_ms, steal: steal ?? null });
  }
  return times;
}
