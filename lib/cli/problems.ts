// Problems with a stage's options. Each stage's check returns every problem at once instead of
// throwing at the first, so that the pipeline can report all problems of all its stages before any
// stage runs (each naming its config key), while the stage's own command line fails with them.

import { UsageError } from "./args.ts";

export interface Problem {
  /**
   * The options the problem is about (names as on the command line, without "--"), the one to
   * change first: a rule between two options names both.
   */
  options: string[];
  /** The whole sentence, naming the options and their values: "--warmup 15 must be below …". */
  message: string;
}

/** Collects problems; the range helpers skip options that were not given (undefined). */
export class Problems {
  readonly list: Problem[] = [];

  add(options: string | string[], message: string): void {
    this.list.push({ options: typeof options === "string" ? [options] : options, message });
  }

  /** `--name` must be an integer ≥ min. */
  integer(name: string, v: number | undefined, min = 1): void {
    if (v !== undefined && (!Number.isSafeInteger(v) || v < min)) {
      this.add(name, `--${name} must be an integer ≥ ${min}, got ${v}`);
    }
  }

  /** `--name` must lie in the interval; `open` excludes an end ("[0, 1)": open "hi"). */
  within(
    name: string,
    v: number | undefined,
    lo: number,
    hi: number,
    open: "" | "lo" | "hi" | "both" = "",
  ): void {
    if (v === undefined) return;
    const loOk = open === "lo" || open === "both" ? v > lo : v >= lo;
    const hiOk = open === "hi" || open === "both" ? v < hi : v <= hi;
    if (!(loOk && hiOk && !Number.isNaN(v))) {
      const left = open === "lo" || open === "both" ? "(" : "[";
      const right = open === "hi" || open === "both" ? ")" : "]";
      this.add(name, `--${name} must be in ${left}${lo}, ${hi}${right}, got ${v}`);
    }
  }

  /** `--name` must be > 0 (and finite). */
  positive(name: string, v: number | undefined): void {
    if (v !== undefined && !(v > 0 && Number.isFinite(v))) {
      this.add(name, `--${name} must be > 0, got ${v}`);
    }
  }

  /** `--ckpt-every` must be a multiple of `--log-every` (the training stages' rule). */
  checkpointInterval(logEvery: number, ckptEvery: number): void {
    if (Number.isSafeInteger(logEvery) && logEvery > 0 && ckptEvery % logEvery !== 0) {
      this.add(
        ["ckpt-every", "log-every"],
        `--ckpt-every ${ckptEvery} must be a multiple of --log-every ${logEvery} ` +
          `(a checkpoint is written only after its losses were read and checked)`,
      );
    }
  }

  /**
   * A training loader draws whole batches: `--name` must not exceed the training images it draws
   * from (null when not known yet); `preset` marks a batch size that is the preset's default.
   */
  batchFits(name: string, batch: number, images: number | null, preset = false): void {
    if (images !== null && batch > images) {
      this.add(
        name,
        `--${name} ${batch}${preset ? " (the preset's)" : ""} is more than the ${images} ` +
          `training images: no batch can be drawn`,
      );
    }
  }

  /** Runs `check`, turning what it throws (a one-line rule of a library) into a problem. */
  catching(options: string | string[], check: () => void, strip = /^peco: [\w-]+: /): void {
    try {
      check();
    } catch (error) {
      if (!(error instanceof Error)) throw error;
      this.add(options, error.message.replace(strip, ""));
    }
  }
}

/** A stage's start: a usage error (exit 2) holding every problem, or nothing when there is none. */
export function failOnProblems(problems: Problem[]): void {
  if (problems.length === 0) return;
  throw new UsageError(problems.map((p) => p.message).join("; "));
}
