import { assertClose, assertThrows, checkGrad, randArray } from "./util.ts";
import * as T from "../lib/tensor/mod.ts";
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert/strict";

/** Asserts that fn throws an Error whose message contains every one of `texts`. */

// ---- float64 references -------------------------------------------------------------------------

/** Squared distances [N, K] between the rows of z [N, D] and codebook [K, D]. */
function distancesRef(z: number[], codebook: number[], d: number): number[] {
  const n = z.length / d;
  const k = codebook.length / d;
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < k; j++) {
      let s = 0;
      for (let c = 0; c < d; c++) s += (z[i * d + c] - codebook[j * d + c]) ** 2;
      out.push(s);
    }
  }
  return out;
}

/** Nearest code (first on ties) and its distance, per row; also the gap to the runner-up. */
function nearestRef(z: number[], codebook: number[], d: number) {
  const k = codebook.length / d;
  const all = distancesRef(z, codebook, d);
  const indices: number[] = [];
  const distances: number[] = [];
  let minGap = Infinity;
  for (let i = 0; i < z.length / d; i++) {
    const row = all.slice(i * k, (i + 1) * k);
    const best = row.indexOf(Math.min(...row));
    indices.push(best);
    distances.push(row[best]);
    const others = row.filter((_, j) => j !== best);
    if (others.length) minGap = Math.min(minGap, Math.min(...others) - row[best]);
  }
  return { indices, distances, minGap };
}

/** Counts and sums of the rows of z per code (indices outside [0, K) ignored). */
function statsRef(indices: number[], z: number[], d: number, k: number) {
  const counts = new Array(k).fill(0);
  const sums = new Array(k * d).fill(0);
  indices.forEach((code, i) => {
    if (code < 0 || code >= k) return;
    counts[code]++;
    for (let c = 0; c < d; c++) sums[code * d + c] += z[i * d + c];
  });
  return { counts, sums };
}

async function readAndDispose(...ts: T.Tensor[]): Promise<number[][]> {
  const out = [];
  for (const t of ts) {
    out.push(await t.toArray());
    t.dispose();
  }
  return out;
}

// ---- nearestCode --------------------------------------------------------------------------------

// D = 5 and 13 take the padded path (D % 4 ≠ 0), D = 8 the direct one; K = 11 is less than one
// block of 16 codes, K = 37 spans three; N = 37 leaves a partial block of 16 rows.
const shapes: [number, number, number][] = [[37, 11, 5], [37, 37, 8], [1, 1, 13], [20, 3, 1]];

for (const [n, k, d] of shapes) {
  Deno.test(`nearestCode N=${n} K=${k} D=${d}: indices and distances match float64`, async () => {
    const z = randArray(n * d, n + d, -2, 2);
    const codebook = randArray(k * d, k + 100, -2, 2);
    const ref = nearestRef(z, codebook, d);
    // The f32 score expansion may only disagree with float64 on near ties: this data has none.
    assert(ref.minGap > 1e-3, `test data has a near tie (${ref.minGap})`);
    const { indices, distances } = T.nearestCode(T.tensor(z, [n, d]), T.tensor(codebook, [k, d]));
    assertEquals(indices.dtype, "i32");
    assertEquals(indices.shape, [n]);
    const [idx, dist] = await readAndDispose(indices, distances);
    assertEquals(idx, ref.indices);
    assertClose(dist, ref.distances, { atol: 1e-5, rtol: 1e-5, what: "distances" });
  });
}

Deno.test("nearestCode picks the first of duplicated codes, and exact matches have distance 0", async () => {
  const d = 6;
  const codebook = randArray(9 * d, 3);
  // Code 7 repeats code 2, code 8 repeats code 5.
  codebook.splice(7 * d, d, ...codebook.slice(2 * d, 3 * d));
  codebook.splice(8 * d, d, ...codebook.slice(5 * d, 6 * d));
  const z = [...codebook.slice(7 * d, 8 * d), ...codebook.slice(8 * d, 9 * d)];
  const out = T.nearestCode(T.tensor(z, [2, d]), T.tensor(codebook, [9, d]));
  const [idx, dist] = await readAndDispose(out.indices, out.distances);
  assertEquals(idx, [2, 5]);
  assertEquals(dist, [0, 0]);
});

Deno.test("nearestCode splits a long scan into passes and keeps the best code across them", async () => {
  // D = 4096 allows 240 codes per pass (lavapipe's loop limit): K = 777 takes four passes, where
  // one would run 50 · 1025 loop iterations and end early.
  const [n, k, d] = [5, 777, 4096];
  const z = randArray(n * d, 21, -1, 1);
  const codebook = randArray(k * d, 22, -1, 1);
  // Make the winners fall on both sides of the pass boundary, and a tie across it.
  for (const [row, code] of [[0, 3], [1, 770], [2, 239], [3, 240]]) {
    codebook.splice(code * d, d, ...z.slice(row * d, (row + 1) * d).map((v) => v + 0.01));
  }
  codebook.splice(760 * d, d, ...codebook.slice(3 * d, 4 * d));
  const ref = nearestRef(z, codebook, d);
  const out = T.nearestCode(T.tensor(z, [n, d]), T.tensor(codebook, [k, d]));
  const [idx, dist] = await readAndDispose(out.indices, out.distances);
  assertEquals(idx.slice(0, 4), [3, 770, 239, 240]);
  assertEquals(idx, ref.indices);
  assertClose(dist, ref.distances, { atol: 1e-4, rtol: 1e-5, what: "distances" });
});

// ---- codeDistances ------------------------------------------------------------------------------

Deno.test("codeDistances: forward matches float64, gradients to z and the codebook", async () => {
  for (const [n, k, d] of [[7, 5, 3], [3, 1, 8]]) {
    const z = randArray(n * d, 1);
    const codebook = randArray(k * d, 2);
    const out = T.codeDistances(T.tensor(z, [n, d]), T.tensor(codebook, [k, d]));
    assertEquals(out.shape, [n, k]);
    const [got] = await readAndDispose(out);
    assertClose(got, distancesRef(z, codebook, d), { what: "distances" });
    await checkGrad(T.codeDistances, (a, b) => distancesRef(a, b, d), [
      { data: z, shape: [n, d] },
      { data: codebook, shape: [k, d] },
    ]);
  }
});

// ---- codeStats ----------------------------------------------------------------------------------

Deno.test("codeStats: counts and sums match float64, with unused, repeated and invalid codes", async () => {
  for (const [n, k, d] of [[37, 11, 5], [1000, 7, 8], [5, 3, 1]]) {
    const z = randArray(n * d, n, -3, 3);
    // Code 1 is never used and code 0 is used many times; -1 and K are out of range (ignored).
    const indices = Array.from(
      { length: n },
      (_, i) => (i % 3 === 0 ? 0 : 2 + ((i * 7) % (k - 2))),
    );
    indices[1 % n] = -1;
    if (n > 4) indices[4] = k;
    const ref = statsRef(indices, z, d, k);
    assertEquals(ref.counts[1], 0);
    const { counts, sums } = T.codeStats(T.tensor(indices, [n], "i32"), T.tensor(z, [n, d]), k);
    assertEquals(counts.shape, [k]);
    assertEquals(sums.shape, [k, d]);
    const [c, s] = await readAndDispose(counts, sums);
    assertEquals(c, ref.counts);
    assertClose(s, ref.sums, { atol: 1e-4, what: `sums N=${n} K=${k} D=${d}` });
  }
});

Deno.test("codeStats is deterministic: bit-identical runs, each code summed in row order", async () => {
  const [n, k, d] = [3001, 13, 6];
  const zData = randArray(n * d, 4, -1, 1).map((v) => Math.fround(v * 1000));
  const idxData = Array.from({ length: n }, (_, i) => (i * i) % k);
  const z = T.tensor(zData, [n, d]);
  const indices = T.tensor(idxData, [n], "i32");
  const runs = [];
  for (let r = 0; r < 2; r++) {
    const { counts, sums } = T.codeStats(indices, z, k);
    const [c, s] = await readAndDispose(counts, sums);
    runs.push({ c, s });
  }
  assertEquals(runs[0].c, runs[1].c);
  assertEquals(new Float32Array(runs[0].s), new Float32Array(runs[1].s));
  // Many chunks of rows (3001 rows, 13 codes), yet each sum is the f32 sum in row order.
  const ordered = new Float32Array(k * d);
  idxData.forEach((code, i) => {
    for (let c = 0; c < d; c++) ordered[code * d + c] += zData[i * d + c];
  });
  assertEquals(new Float32Array(runs[0].s), ordered);
  z.dispose();
  indices.dispose();
});

Deno.test("codeStats on the nearestCode assignment agrees with a host reference", async () => {
  const [n, k, d] = [300, 17, 4];
  const z = randArray(n * d, 8);
  const codebook = randArray(k * d, 9);
  const zt = T.tensor(z, [n, d]);
  const { indices, distances } = T.nearestCode(zt, T.tensor(codebook, [k, d]));
  const { counts, sums } = T.codeStats(indices, zt, k);
  const [idx, c, s] = await readAndDispose(indices, counts, sums);
  distances.dispose();
  const ref = statsRef(idx, z, d, k);
  assertEquals(c, ref.counts);
  assertEquals(c.reduce((a, b) => a + b, 0), n);
  assertClose(s, ref.sums, { atol: 1e-4, what: "sums" });
});

Deno.test("codeStats sums a code owning more rows than lavapipe lets one loop run, in parts", async () => {
  const [n, k, d] = [70_000, 3, 2];
  const z = randArray(n * d, 5, 0, 1).map(Math.fround);
  const idxData = Array.from({ length: n }, (_, i) => (i % 1000 === 7 ? 2 : 0));
  const { counts, sums } = T.codeStats(T.tensor(idxData, [n], "i32"), T.tensor(z, [n, d]), k);
  const [c, s] = await readAndDispose(counts, sums);
  const ref = statsRef(idxData, z, d, k);
  assertEquals(c, ref.counts);
  assertClose(s, ref.sums, { rtol: 1e-5, what: "sums" });
});

// ---- bad input ----------------------------------------------------------------------------------

Deno.test("vq ops reject bad input with errors naming the op and shapes", () => {
  const z = T.zeros([4, 3]);
  const codebook = T.zeros([5, 2]);
  assertThrows(() => T.nearestCode(z, codebook), "nearestCode:", "[4,3]", "[5,2]", "differ in D");
  assertThrows(() => T.codeDistances(z, codebook), "codeDistances:", "differ in D");
  assertThrows(() => T.nearestCode(z.view([12]), codebook), "nearestCode:", "[N, D]");
  const big = T.zeros([T.MAX_CODES + 1, 3]);
  assertThrows(() => T.nearestCode(z, big), "nearestCode:", `K = ${T.MAX_CODES + 1}`);
  big.dispose();
  const fIdx = T.zeros([4]);
  assertThrows(() => T.codeStats(fIdx, z, 5), "codeStats:", "i32", "<f32>[4]");
  const idx = T.zeros([4], "i32");
  assertThrows(() => T.codeStats(idx, T.zeros([3, 3]), 5), "codeStats:", "N = 4", "[3,3]");
  assertThrows(() => T.codeStats(idx, z, T.MAX_CODES + 1), "codeStats:", "K = ");
  assertThrows(() => T.codeStats(idx, z, 0), "codeStats:", "K = 0");
  const wide = T.zeros([2, T.MAX_DIM + 1]);
  assertThrows(() => T.codeDistances(wide, wide), "codeDistances:", `D = ${T.MAX_DIM + 1}`);
  wide.dispose();
  // 2M rows over 65536 codes need more sort counters than one scan handles.
  const manyIdx = T.zeros([2_000_000], "i32");
  const manyZ = T.zeros([2_000_000, 1]);
  assertThrows(() => T.codeStats(manyIdx, manyZ, T.MAX_CODES), "codeStats:", "counters");
  manyIdx.dispose();
  manyZ.dispose();
  for (const t of [z, codebook, fIdx, idx]) t.dispose();
});
