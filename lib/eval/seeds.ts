// Seeds of the evaluate stage's measurements: each measurement draws from its own stream, derived
// from the seed of the arm it measures and its name, so adding a measurement or an arm does not
// change the draws of another.

import { Rng } from "../tensor/init.ts";

/** The 32-bit seed of measurement `label` under `seed`. */
export function seedFor(seed: number, label: string): number {
  return new Rng(seed).fork(label).key;
}
