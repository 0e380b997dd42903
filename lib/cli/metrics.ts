// Metrics as JSON Lines: one object per line, each with an integer `step`, appended and handed to
// the OS at every write (no buffering in the process), so a killed run loses nothing it logged.
// Resuming from a checkpoint at step S drops the lines with step > S (they are logged again by the
// resumed run), so the file of an interrupted run ends up as that of an uninterrupted one.
// NaN and ±Infinity, which JSON cannot hold, are written as the strings "NaN", "Infinity" and
// "-Infinity" and read back as numbers.

import { writeFileAtomic } from "../io/atomic.ts";

/** One logged record: a step and named values (numbers, or strings such as a phase name). */
export interface MetricRecord {
  step: number;
  [key: string]: unknown;
}

export const METRICS_FILE = "metrics.jsonl";

const NON_FINITE = new Set(["NaN", "Infinity", "-Infinity"]);

function fail(path: string, what: string): never {
  throw new Error(`peco: metrics ${path}: ${what}`);
}

function encodeLine(record: MetricRecord): string {
  return JSON.stringify(
    record,
    (_key, v) => typeof v === "number" && !Number.isFinite(v) ? String(v) : v,
  ) + "\n";
}

/**
 * Parses a JSONL metrics text. A last line without its newline is what a crash mid-write leaves:
 * it is ignored; any other malformed line is an error naming the file and line.
 */
export function parseMetrics(text: string, path = "<memory>"): MetricRecord[] {
  // The last piece after splitting is "" when the text ends with a newline, else a partial line.
  const complete = text.split("\n").slice(0, -1);
  const out: MetricRecord[] = [];
  complete.forEach((line, i) => {
    if (line.trim() === "") return;
    let value: unknown;
    try {
      value = JSON.parse(
        line,
        (_key, v) => typeof v === "string" && NON_FINITE.has(v) ? Number(v) : v,
      );
    } catch (error) {
      fail(path, `line ${i + 1} is not JSON (${(error as Error).message})`);
    }
    const record = value as MetricRecord;
    if (typeof record !== "object" || record === null || !Number.isSafeInteger(record.step)) {
      fail(path, `line ${i + 1} has no integer "step"`);
    }
    out.push(record);
  });
  return out;
}

/** Reads a metrics file (see parseMetrics); a missing file is an error naming it. */
export async function readMetrics(path: string): Promise<MetricRecord[]> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (error) {
    fail(path, (error as Error).message);
  }
  return parseMetrics(text, path);
}

/** The (step, value) pairs of one numeric key, in file order, for plots. */
export function series(records: MetricRecord[], key: string): { x: number[]; y: number[] } {
  const x: number[] = [];
  const y: number[] = [];
  for (const r of records) {
    const v = r[key];
    if (typeof v === "number") {
      x.push(r.step);
      y.push(v);
    }
  }
  return { x, y };
}

export class MetricsWriter {
  private lastStep = -Infinity;

  private constructor(readonly path: string, private file: Deno.FsFile | null) {}

  /**
   * Opens `path` for a run. `resumeStep` null: a fresh run, the file starts empty. A number: the
   * run resumes after that step; earlier lines are kept, later ones dropped (the file is rewritten
   * atomically first, so a crash here loses nothing).
   */
  static async open(path: string, resumeStep: number | null = null): Promise<MetricsWriter> {
    let keep = "";
    let lastStep = -Infinity;
    if (resumeStep !== null) {
      let records: MetricRecord[] = [];
      try {
        records = parseMetrics(await Deno.readTextFile(path), path);
      } catch (error) {
        if (!(error instanceof Deno.errors.NotFound)) throw error;
      }
      const kept = records.filter((r) => r.step <= resumeStep);
      keep = kept.map(encodeLine).join("");
      lastStep = kept.reduce((m, r) => Math.max(m, r.step), -Infinity);
    }
    await writeFileAtomic(path, keep);
    const file = await Deno.open(path, { append: true });
    const writer = new MetricsWriter(path, file);
    writer.lastStep = lastStep;
    return writer;
  }

  /** Appends one record (steps must not go backwards). */
  async write(record: MetricRecord): Promise<void> {
    if (!this.file) fail(this.path, "write after close");
    if (!Number.isSafeInteger(record.step) || record.step < this.lastStep) {
      fail(this.path, `step ${record.step} after step ${this.lastStep}`);
    }
    this.lastStep = record.step;
    const bytes = new TextEncoder().encode(encodeLine(record));
    let done = 0;
    while (done < bytes.length) done += await this.file.write(bytes.subarray(done));
  }

  close(): void {
    this.file?.close();
    this.file = null;
  }
}
