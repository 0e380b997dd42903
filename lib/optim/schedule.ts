// Learning-rate schedules: host functions from the 0-based step to the lr of that step. Warmup is
// linear from 0 (step 0 → 0, step warmupSteps → baseLr), as in Hugging Face's schedules.

export type Schedule = (step: number) => number;

export interface WarmupCosineOptions {
  baseLr: number;
  warmupSteps?: number;
  totalSteps: number;
  /** The floor the cosine decays to (reached at totalSteps and kept after); default 0. */
  minLr?: number;
}

function checkStepCount(schedule: string, name: string, value: number): void {
  if (!Number.isInteger(value) || value < 0) {
    throw new Error(`peco: ${schedule}: ${name} must be an integer ≥ 0, got ${value}`);
  }
}

function checkLr(schedule: string, name: string, value: number): void {
  if (!(value >= 0) || !Number.isFinite(value)) {
    throw new Error(`peco: ${schedule}: ${name} must be a finite number ≥ 0, got ${value}`);
  }
}

function checkStep(schedule: string, step: number): void {
  if (!(step >= 0) || !Number.isFinite(step)) {
    throw new Error(`peco: ${schedule}: step must be a finite number ≥ 0, got ${step}`);
  }
}

/** Linear warmup to baseLr, then half a cosine from baseLr down to minLr at totalSteps. */
export function warmupCosine(
  { baseLr, warmupSteps = 0, totalSteps, minLr = 0 }: WarmupCosineOptions,
): Schedule {
  const name = "warmupCosine";
  checkLr(name, "baseLr", baseLr);
  checkLr(name, "minLr", minLr);
  checkStepCount(name, "warmupSteps", warmupSteps);
  checkStepCount(name, "totalSteps", totalSteps);
  if (minLr > baseLr) throw new Error(`peco: ${name}: minLr ${minLr} is above baseLr ${baseLr}`);
  if (totalSteps <= warmupSteps) {
    throw new Error(
      `peco: ${name}: totalSteps ${totalSteps} must exceed warmupSteps ${warmupSteps}`,
    );
  }
  return (step) => {
    checkStep(name, step);
    if (step < warmupSteps) return (baseLr * step) / warmupSteps;
    const progress = Math.min(1, (step - warmupSteps) / (totalSteps - warmupSteps));
    return minLr + (baseLr - minLr) * 0.5 * (1 + Math.cos(Math.PI * progress));
  };
}

/** Linear warmup to baseLr, then constant. */
export function constantWithWarmup(
  { baseLr, warmupSteps = 0 }: { baseLr: number; warmupSteps?: number },
): Schedule {
  const name = "constantWithWarmup";
  checkLr(name, "baseLr", baseLr);
  checkStepCount(name, "warmupSteps", warmupSteps);
  return (step) => {
    checkStep(name, step);
    return step < warmupSteps ? (baseLr * step) / warmupSteps : baseLr;
  };
}
