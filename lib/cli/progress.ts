// A progress bar with rate and ETA. On a terminal it redraws one line; otherwise (CI, logs) it
// prints a plain line at most every `plainEverySec` seconds so logs stay short.

export interface ProgressOptions {
  label: string;
  total: number;
  unit?: string;
  /** Where to draw (stderr by default, so stdout stays for results). */
  stream?: { writeSync(p: Uint8Array): number; isTerminal(): boolean };
  quiet?: boolean;
  plainEverySec?: number;
  /** Items already done when this process started (a resumed run): not counted in the rate. */
  first?: number;
}

const encoder = new TextEncoder();

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return "--:--";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, "0");
  return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${ss}` : `${m}:${ss}`;
}

export class Progress {
  private start = performance.now();
  private lastDraw = -Infinity;
  private done = 0;
  private readonly tty: boolean;
  private readonly stream: { writeSync(p: Uint8Array): number; isTerminal(): boolean };

  constructor(private options: ProgressOptions) {
    this.done = options.first ?? 0;
    this.stream = options.stream ?? Deno.stderr;
    this.tty = this.stream.isTerminal();
  }

  /** Sets the count of finished items, with metrics shown after the bar (e.g. loss). */
  update(done: number, metrics: Record<string, number | string> = {}): void {
    this.done = done;
    const now = performance.now();
    const interval = this.tty ? 100 : (this.options.plainEverySec ?? 10) * 1000;
    if (done < this.options.total && now - this.lastDraw < interval) return;
    this.lastDraw = now;
    this.draw(metrics);
  }

  /** Final line (always printed unless quiet). */
  finish(metrics: Record<string, number | string> = {}): void {
    this.done = this.options.total;
    this.draw(metrics);
    if (this.tty && !this.options.quiet) this.stream.writeSync(encoder.encode("\n"));
  }

  line(metrics: Record<string, number | string>): string {
    const { label, total, unit = "it" } = this.options;
    const elapsed = (performance.now() - this.start) / 1000;
    const rate = (this.done - (this.options.first ?? 0)) / Math.max(elapsed, 1e-9);
    const eta = rate > 0 ? (total - this.done) / rate : Infinity;
    const frac = total > 0 ? Math.min(1, this.done / total) : 1;
    const width = 24;
    const filled = Math.round(frac * width);
    const bar = "█".repeat(filled) + "░".repeat(width - filled);
    const extra = Object.entries(metrics)
      .map(([k, v]) => `${k} ${typeof v === "number" ? formatNumber(v) : v}`)
      .join("  ");
    return `${label} ${bar} ${this.done}/${total} ${unit} ` +
      `[${formatDuration(elapsed)}<${formatDuration(eta)}, ${formatNumber(rate)} ${unit}/s]` +
      (extra ? `  ${extra}` : "");
  }

  private draw(metrics: Record<string, number | string>): void {
    if (this.options.quiet) return;
    const text = this.line(metrics);
    this.stream.writeSync(encoder.encode(this.tty ? `\r\x1b[2K${text}` : `${text}\n`));
  }
}

export function formatNumber(v: number): string {
  if (!Number.isFinite(v)) return String(v);
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(2);
  if (Number.isInteger(v)) return String(v);
  return v.toFixed(a < 1 ? 4 : a < 100 ? 3 : 1);
}
