// Block-wise masking for masked image modelling, as BEiT's MaskingGenerator
// (docs/paper-to-code.md): rectangular blocks of random area and aspect ratio are added until the
// mask budget is spent.
//
// Budget rule for other grids: BEiT masks 75 of the 196 patches of a 14×14 grid with blocks of at
// least 16 patches. By default both numbers scale with the patch count, budget = round(75/196·H·W)
// and min block = max(1, round(16/196·H·W)), which gives exactly BEiT's 75 and 16 on 14×14 (e.g.
// 7×7 → 19 and 4, 4×4 → 6 and 1). Either can be set explicitly.

import { type Rng } from "../tensor/init.ts";
import { tensor } from "../tensor/ops/creation.ts";
import type { Tensor } from "../tensor/tensor.ts";

/** BEiT's numbers on its 14×14 grid. */
const BEIT_PATCHES = 196;
const BEIT_BUDGET = 75;
const BEIT_MIN_BLOCK = 16;
/** Placement attempts per block before the generator gives up (BEiT's 10). */
const ATTEMPTS = 10;

export interface MaskingOptions {
  /** Patch grid rows and columns. */
  height: number;
  width: number;
  /** Patches to mask per image (default: BEiT's fraction 75/196 of the grid, rounded). */
  budget?: number;
  /** Smallest block area drawn (default: BEiT's 16/196 of the grid, rounded, at least 1). */
  minBlock?: number;
  /** Largest block area drawn (default: the budget). */
  maxBlock?: number;
  /** Aspect ratios h/w are log-uniform in [minAspect, 1/minAspect] (default 0.3). */
  minAspect?: number;
}

/** One accepted block: its rectangle and how many patches it newly masked. */
export interface MaskBlock {
  top: number;
  left: number;
  height: number;
  width: number;
  added: number;
}

export class MaskingGenerator {
  readonly height: number;
  readonly width: number;
  readonly budget: number;
  readonly minBlock: number;
  readonly maxBlock: number;
  private readonly logAspect: [number, number];

  constructor(options: MaskingOptions) {
    const { height, width, minAspect = 0.3 } = options;
    if (!Number.isInteger(height) || !Number.isInteger(width) || height < 1 || width < 1) {
      throw new Error(`peco: MaskingGenerator: grid ${height}×${width} must be positive integers`);
    }
    const patches = height * width;
    this.height = height;
    this.width = width;
    this.budget = options.budget ?? Math.round((BEIT_BUDGET / BEIT_PATCHES) * patches);
    this.minBlock = options.minBlock ??
      Math.max(1, Math.round((BEIT_MIN_BLOCK / BEIT_PATCHES) * patches));
    this.maxBlock = options.maxBlock ?? this.budget;
    if (!Number.isInteger(this.budget) || this.budget < 0 || this.budget > patches) {
      throw new Error(
        `peco: MaskingGenerator: budget ${this.budget} must be an integer in [0, ${patches}] ` +
          `for a ${height}×${width} grid`,
      );
    }
    if (!(this.minBlock > 0) || !(this.maxBlock > 0)) {
      throw new Error(
        `peco: MaskingGenerator: block areas must be positive (min ${this.minBlock}, max ${this.maxBlock})`,
      );
    }
    if (!(minAspect > 0 && minAspect <= 1)) {
      throw new Error(`peco: MaskingGenerator: minAspect ${minAspect} must be in (0, 1]`);
    }
    this.logAspect = [Math.log(minAspect), Math.log(1 / minAspect)];
  }

  get patches(): number {
    return this.height * this.width;
  }

  /**
   * One mask, row-major [height·width] of 0/1. Accepted blocks are appended to `blocks` when
   * given (for inspection and tests).
   */
  generate(rng: Rng, blocks?: MaskBlock[]): Uint8Array {
    const mask = new Uint8Array(this.patches);
    let count = 0;
    while (count < this.budget) {
      const delta = this.addBlock(mask, Math.min(this.budget - count, this.maxBlock), rng, blocks);
      if (delta === 0) break;
      count += delta;
    }
    return mask;
  }

  /** Masks for n images, concatenated: [n, height·width]. */
  generateBatch(rng: Rng, n: number): Uint8Array {
    const out = new Uint8Array(n * this.patches);
    for (let i = 0; i < n; i++) out.set(this.generate(rng), i * this.patches);
    return out;
  }

  /**
   * BEiT's `_mask`: up to 10 attempts at one block whose area is uniform in [minBlock, limit];
   * the first that adds between 1 and `limit` new patches is accepted.
   */
  private addBlock(mask: Uint8Array, limit: number, rng: Rng, blocks?: MaskBlock[]): number {
    const { height: H, width: W } = this;
    for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
      const area = rng.uniform(this.minBlock, limit);
      const aspect = Math.exp(rng.uniform(this.logAspect[0], this.logAspect[1]));
      const h = Math.round(Math.sqrt(area * aspect));
      const w = Math.round(Math.sqrt(area / aspect));
      if (w >= W || h >= H) continue;
      // Python's random.randint is inclusive of both ends.
      const top = rng.int(H - h + 1);
      const left = rng.int(W - w + 1);
      let covered = 0;
      for (let y = top; y < top + h; y++) {
        for (let x = left; x < left + w; x++) covered += mask[y * W + x];
      }
      const added = h * w - covered;
      if (added > 0 && added <= limit) {
        for (let y = top; y < top + h; y++) mask.fill(1, y * W + left, y * W + left + w);
        blocks?.push({ top, left, height: h, width: w, added });
        return added;
      }
    }
    return 0;
  }
}

/** Masks [n, L] of 0/1 bytes → an f32 GPU tensor [n, L] (1 = masked), ready to blend or weight. */
export function maskTensor(masks: Uint8Array, n: number, patches: number): Tensor {
  if (masks.length !== n * patches) {
    throw new Error(
      `peco: maskTensor: ${masks.length} mask bytes do not fill [${n},${patches}]`,
    );
  }
  return tensor(Float32Array.from(masks), [n, patches]);
}
