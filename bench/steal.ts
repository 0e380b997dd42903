// Steal time: on a virtual machine, the share of the CPUs' time the hypervisor gave to other
// guests while a case ran (Linux /proc/stat, all CPUs together). A shared VM can lose a third to a
// half of its cycles this way, and it is not the process's own load: a figure measured at 40%
// steal says little about the code, and pairs that compare two versions should have had similar
// steal. bench/torch/cases.py measures the same for the PyTorch twins.

/** Cumulative CPU-time counters of all CPUs (clock ticks), or null where /proc/stat is missing. */
export interface CpuCounters {
  steal: number;
  total: number;
}

export function cpuCounters(): CpuCounters | null {
  const text = procStat();
  return text === null ? null : parseCpuLine(text.split("\n")[0]);
}

/** The bench task may run `cat` for this: Deno reads files under /proc only with --allow-all. */
const CAT = "/usr/bin/cat";

function procStat(): string | null {
  if (Deno.permissions.querySync({ name: "run", command: CAT }).state !== "granted") return null;
  try {
    const out = new Deno.Command(CAT, { args: ["/proc/stat"], stderr: "null" }).outputSync();
    return out.success ? new TextDecoder().decode(out.stdout) : null;
  } catch {
    return null; // no cat, or no /proc/stat (not Linux)
  }
}

/**
 * The aggregate `cpu` line of /proc/stat: user nice system idle iowait irq softirq steal [guest
 * guest_nice] (guest time is already counted in user and nice, so the total leaves it out).
 */
export function parseCpuLine(line: string): CpuCounters | null {
  const fields = line.trim().split(/\s+/);
  if (fields[0] !== "cpu" || fields.length < 9) return null;
  const ticks = fields.slice(1, 9).map(Number);
  if (ticks.some((t) => !Number.isFinite(t))) return null;
  return { steal: ticks[7], total: ticks.reduce((s, t) => s + t, 0) };
}

/** Share of the CPUs' time stolen between two readings (0–1), or null without both readings. */
export function stealShare(before: CpuCounters | null, after: CpuCounters | null): number | null {
  if (!before || !after || after.total <= before.total) return null;
  return (after.steal - before.steal) / (after.total - before.total);
}
