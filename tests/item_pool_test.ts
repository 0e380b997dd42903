// The decoding pool of the shard stage (lib/data/item_pool.ts): results in input order whatever
// the worker count, rejects as reasons, and workers that can read the input and nothing else.

import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { ItemPool, type Loaded } from "../lib/data/item_pool.ts";
import { loadImageFile } from "../lib/data/load_image.ts";
import type { Item } from "../lib/data/sources.ts";

const fixtures = fileURLToPath(new URL("../fixtures/images/", import.meta.url));
const options = { size: 5, channels: 3 as const, resize: "crop" as const, maxPixels: 1e6 };
const file = (path: string, rel = path): Item => ({ kind: "file", path, rel, label: 0 });

async function collect(pool: ItemPool, items: Item[], window?: number): Promise<Loaded[]> {
  const out: Loaded[] = [];
  for await (const loaded of pool.loadAll(items, options, window)) out.push(loaded);
  return out;
}

Deno.test("item pool: results in input order, rejects as reasons, for 1 to 3 workers", async () => {
  const names = ["decode/rgb.jpg", "decode/rgb8.png", "bad/corrupt.jpg", "decode/exif6.jpg"];
  const items = Array.from({ length: 14 }, (_, i) => file(join(fixtures, names[i % 4])));
  const expected: Loaded[] = [];
  for (const item of items) {
    const path = (item as { path: string }).path;
    expected.push(
      await loadImageFile(path, options).then(
        (pixels) => ({ pixels }),
        (error: Error) => ({ reason: error.message }),
      ),
    );
  }
  assert.ok(expected.some((e) => e.reason) && expected.some((e) => e.pixels));
  for (const workers of [1, 2, 3]) {
    const pool = new ItemPool({ workers, read: [fixtures] });
    try {
      assert.deepEqual(await collect(pool, items, 3), expected, `${workers} workers`);
      assert.ok(pool.started <= workers);
    } finally {
      pool.close();
    }
  }
});

Deno.test("item pool: workers read the input only, not even their own modules once started", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "peco-pool-" });
  const input = join(tmp, "in");
  await Deno.mkdir(input);
  await Deno.copyFile(join(fixtures, "decode/rgb.jpg"), join(input, "a.jpg"));
  await Deno.copyFile(join(fixtures, "decode/rgb.jpg"), join(tmp, "outside.jpg"));
  const pool = new ItemPool({ workers: 1, read: [input] });
  try {
    const [inside, outside, module] = await collect(pool, [
      file(join(input, "a.jpg")),
      file(join(tmp, "outside.jpg")),
      // Readable while the worker loaded its modules; given up before serving requests.
      file(fileURLToPath(new URL("../lib/data/decode.ts", import.meta.url))),
    ]);
    assert.ok(inside.pixels);
    assert.equal(outside.reason, "unreadable: outside the stage's read permission");
    assert.equal(module.reason, "unreadable: outside the stage's read permission");
  } finally {
    pool.close();
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("item pool: a closed pool refuses work; a bad worker count is refused", async () => {
  const pool = new ItemPool({ workers: 2, read: [fixtures] });
  pool.close();
  await assert.rejects(pool.load(file(join(fixtures, "decode/rgb.jpg")), options), /closed/);
  assert.throws(() => new ItemPool({ workers: 0, read: [] }), /positive integer/);
});
