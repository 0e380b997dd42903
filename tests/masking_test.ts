import { assert, assertClose, assertThrows } from "./util.ts";
import { type MaskBlock, MaskingGenerator, maskTensor } from "../lib/data/masking.ts";
import { Rng } from "../lib/tensor/init.ts";

/**
 * Draws `draws` masks and checks every invariant of BEiT's generator on each: the budget, the
 * grid bounds of each block, the areas a block can have after rounding, the new patches each block
 * adds, and that the blocks make up the mask. Returns the mean masked fraction.
 */
function checkDraws(gen: MaskingGenerator, draws: number, seed: number): number {
  const { height: H, width: W, budget, minBlock, maxBlock } = gen;
  const rng = new Rng(seed);
  const sqrtAspect = Math.sqrt(1 / 0.3);
  let total = 0;
  for (let d = 0; d < draws; d++) {
    const blocks: MaskBlock[] = [];
    const mask = gen.generate(rng, blocks);
    const count = mask.reduce((a, b) => a + b, 0);
    assert(count <= budget, `${H}×${W}: masked ${count} > budget ${budget}`);
    const rebuilt = new Uint8Array(H * W);
    let masked = 0;
    for (const b of blocks) {
      const where = `${H}×${W} draw ${d} block ${JSON.stringify(b)}`;
      assert(b.height >= 1 && b.width >= 1, `${where}: empty block`);
      assert(b.height < H && b.width < W, `${where}: not smaller than the grid`);
      assert(b.top >= 0 && b.left >= 0, `${where}: negative origin`);
      assert(b.top + b.height <= H && b.left + b.width <= W, `${where}: outside the grid`);
      // The drawn area lies in [min(minBlock, limit), limit] with limit ≤ the remaining budget;
      // h and w are rounded square roots, which bounds the rectangle's area.
      const limit = Math.min(budget - masked, maxBlock);
      assert(b.added >= 1 && b.added <= limit, `${where}: adds ${b.added}, limit ${limit}`);
      const hiArea = Math.max(limit, minBlock);
      const slack = 0.5 * Math.sqrt(hiArea) * (sqrtAspect + 1 / sqrtAspect) + 0.25;
      assert(b.height * b.width <= hiArea + slack, `${where}: area above ${hiArea} + rounding`);
      let added = 0;
      for (let y = b.top; y < b.top + b.height; y++) {
        for (let x = b.left; x < b.left + b.width; x++) {
          added += 1 - rebuilt[y * W + x];
          rebuilt[y * W + x] = 1;
        }
      }
      assert(added === b.added, `${where}: reports ${b.added} new patches, adds ${added}`);
      masked += added;
    }
    assert(masked === count, `${H}×${W}: blocks mask ${masked}, mask has ${count}`);
    assert(rebuilt.every((v, i) => v === mask[i]), `${H}×${W}: blocks differ from the mask`);
    total += count;
  }
  return total / draws / (H * W);
}

Deno.test("masking: BEiT's 14×14 defaults (75 patches, blocks ≥ 16) and all invariants", () => {
  const gen = new MaskingGenerator({ height: 14, width: 14 });
  assert(gen.budget === 75 && gen.minBlock === 16, `defaults ${gen.budget}, ${gen.minBlock}`);
  const fraction = checkDraws(gen, 2000, 1);
  const target = 75 / 196;
  assert(
    Math.abs(fraction - target) <= 0.02,
    `mean masked fraction ${fraction.toFixed(4)} not within 2 points of ${target.toFixed(4)}`,
  );
});

Deno.test("masking: budget and min block scale with the grid; fraction holds on other grids", () => {
  const cases: [number, number, number, number][] = [
    // height, width, expected budget, expected min block
    [7, 7, 19, 4],
    [8, 8, 24, 5],
    [6, 9, 21, 4],
    [16, 16, 98, 21],
  ];
  for (const [h, w, budget, minBlock] of cases) {
    const gen = new MaskingGenerator({ height: h, width: w });
    assert(gen.budget === budget, `${h}×${w}: budget ${gen.budget}, expected ${budget}`);
    assert(gen.minBlock === minBlock, `${h}×${w}: min block ${gen.minBlock}, expected ${minBlock}`);
    const fraction = checkDraws(gen, 1500, 7 + h);
    assert(
      Math.abs(fraction - budget / (h * w)) <= 0.02,
      `${h}×${w}: mean fraction ${fraction.toFixed(4)} vs budget ${(budget / (h * w)).toFixed(4)}`,
    );
  }
  // Tiny grids: the rule never asks for a block larger than the grid allows.
  const tiny = new MaskingGenerator({ height: 3, width: 3 });
  assert(tiny.budget === 3 && tiny.minBlock === 1, `3×3: ${tiny.budget}, ${tiny.minBlock}`);
  checkDraws(tiny, 500, 3);
  // A 1-row grid cannot hold a block with h < H: nothing is masked, and it terminates.
  const row = new MaskingGenerator({ height: 1, width: 5 });
  assert(row.generate(new Rng(1)).every((v) => v === 0), "1×5 grid got a mask");
});

Deno.test("masking: explicit budget and block limits are honoured", () => {
  const gen = new MaskingGenerator({
    height: 10,
    width: 12,
    budget: 50,
    minBlock: 6,
    maxBlock: 20,
  });
  checkDraws(gen, 800, 5);
  const blocks: MaskBlock[] = [];
  const rng = new Rng(9);
  for (let i = 0; i < 200; i++) gen.generate(rng, blocks);
  assert(blocks.every((b) => b.added <= 20), "a block added more than maxBlock patches");
});

Deno.test("masking: same seed gives the same masks, other seeds other masks", () => {
  const gen = new MaskingGenerator({ height: 14, width: 14 });
  const a = gen.generateBatch(new Rng(42), 16);
  const b = gen.generateBatch(new Rng(42), 16);
  const c = gen.generateBatch(new Rng(43), 16);
  assert(a.length === 16 * 196, `batch length ${a.length}`);
  assert(a.every((v, i) => v === b[i]), "same seed gave different masks");
  assert(a.some((v, i) => v !== c[i]), "different seeds gave identical masks");
  // Masks within a batch differ from each other.
  assert(a.slice(0, 196).some((v, i) => v !== a[196 + i]), "two images got the same mask");
});

Deno.test("masking: masks upload as an f32 tensor [n, L]", async () => {
  const gen = new MaskingGenerator({ height: 5, width: 3 });
  const masks = gen.generateBatch(new Rng(3), 3);
  const t = maskTensor(masks, 3, 15);
  assert(t.shape.join(",") === "3,15" && t.dtype === "f32", `tensor ${t.describe()}`);
  assertClose(await t.toArray(), Array.from(masks), { atol: 0, rtol: 0, what: "mask tensor" });
  t.dispose();
  assertThrows(() => maskTensor(masks, 2, 15), /maskTensor: 45 mask bytes do not fill \[2,15\]/);
});

Deno.test("masking: bad options throw clear errors", () => {
  assertThrows(() => new MaskingGenerator({ height: 0, width: 4 }), /MaskingGenerator: grid 0×4/);
  assertThrows(
    () => new MaskingGenerator({ height: 4, width: 4, budget: 17 }),
    /budget 17 must be an integer in \[0, 16\] for a 4×4 grid/,
  );
  assertThrows(
    () => new MaskingGenerator({ height: 4, width: 4, minBlock: 0 }),
    /block areas must be positive/,
  );
  assertThrows(
    () => new MaskingGenerator({ height: 4, width: 4, minAspect: 2 }),
    /minAspect 2 must be in \(0, 1\]/,
  );
});
