// The layering of docs/architecture.md, checked on the source: no import cycle between files or
// folders of lib/, every folder imports only folders below it, and only the engine's own layers
// reach the device (lib/gpu); models, training, stages and tasks use lib/tensor's API.

import assert from "node:assert/strict";
import { dirname, join, normalize, relative } from "node:path";

const REPO = new URL("..", import.meta.url).pathname;

/** lib/ folders from the bottom up: each may import only the folders before it. */
const LAYERS = [
  "lib/gpu",
  "lib/tensor",
  "lib/io",
  "lib/optim",
  "lib/nn",
  "lib/data",
  "lib/models",
  "lib/train",
  "lib/eval",
  "lib/cli",
  "lib/report",
  "lib/stages",
];

/** The layers that record GPU work themselves (kernels, copies, uploads). */
const DEVICE_USERS = new Set(["lib/tensor", "lib/io", "lib/optim", "lib/data"]);

async function sourceFiles(dir: string): Promise<string[]> {
  const files: string[] = [];
  for await (const e of Deno.readDir(join(REPO, dir))) {
    const path = `${dir}/${e.name}`;
    if (e.isDirectory) files.push(...await sourceFiles(path));
    else if (e.name.endsWith(".ts")) files.push(path);
  }
  return files;
}

/** The repository files a file imports or re-exports (relative specifiers only). */
function imports(file: string, source: string): string[] {
  const found: string[] = [];
  const pattern = /(?:import|export)\s[^;]*?from\s+"(\.[^"]+\.ts)"|import\s+"(\.[^"]+\.ts)"/gs;
  for (const m of source.matchAll(pattern)) {
    found.push(relative(REPO, normalize(join(REPO, dirname(file), m[1] ?? m[2]))));
  }
  return found;
}

/** The layer (top folder under lib/) of a lib file. */
function layerOf(file: string): string {
  return file.split("/").slice(0, 2).join("/");
}

/** Strongly connected components with more than one node (Tarjan). */
function cycles(graph: Map<string, Set<string>>): string[][] {
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const found: string[][] = [];
  const visit = (v: string) => {
    index.set(v, index.size);
    low.set(v, index.get(v)!);
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, index.get(w)!));
    }
    if (low.get(v) === index.get(v)) {
      const component: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        component.push(w);
      } while (w !== v);
      if (component.length > 1) found.push(component.sort());
    }
  };
  for (const v of graph.keys()) if (!index.has(v)) visit(v);
  return found;
}

const files = [...await sourceFiles("lib"), ...await sourceFiles("tasks")];
const edges = new Map<string, Set<string>>();
for (const file of files) {
  edges.set(file, new Set(imports(file, await Deno.readTextFile(join(REPO, file)))));
}

Deno.test("layers: no import cycle between files or folders", () => {
  assert.deepEqual(cycles(edges), []);
  // Folders as layers (lib/tensor/ops is part of lib/tensor, lib/models/perceptual of lib/models).
  const folders = new Map<string, Set<string>>();
  const folderOf = (file: string) => file.startsWith("lib/") ? layerOf(file) : dirname(file);
  for (const [file, targets] of edges) {
    const from = folderOf(file);
    for (const target of targets) {
      if (folderOf(target) === from) continue;
      if (!folders.has(from)) folders.set(from, new Set());
      folders.get(from)!.add(folderOf(target));
    }
  }
  assert.deepEqual(cycles(folders), []);
});

Deno.test("layers: each lib folder imports only the layers below it", () => {
  const wrong: string[] = [];
  for (const [file, targets] of edges) {
    if (!file.startsWith("lib/")) continue;
    const from = LAYERS.indexOf(layerOf(file));
    assert.ok(from >= 0, `${file}: ${layerOf(file)} is not in the documented layers`);
    for (const target of targets) {
      if (!target.startsWith("lib/")) {
        wrong.push(`${file} imports ${target}, outside lib/`);
        continue;
      }
      const to = LAYERS.indexOf(layerOf(target));
      if (to > from) wrong.push(`${file} (${layerOf(file)}) imports ${target} (a layer above)`);
    }
  }
  assert.deepEqual(wrong, []);
});

Deno.test("layers: only the engine's layers reach lib/gpu; stages and tasks use lib/tensor", () => {
  const wrong: string[] = [];
  for (const [file, targets] of edges) {
    const layer = file.startsWith("lib/") ? layerOf(file) : "tasks";
    if (layer === "lib/gpu" || DEVICE_USERS.has(layer)) continue;
    for (const target of targets) {
      if (target.startsWith("lib/gpu/")) wrong.push(`${file} imports ${target}`);
    }
  }
  assert.deepEqual(wrong, []);
});

Deno.test("layers: the checker sees a cycle and an upward import when there is one", () => {
  const graph = new Map([["a", new Set(["b"])], ["b", new Set(["c"])], ["c", new Set(["a"])]]);
  assert.deepEqual(cycles(graph), [["a", "b", "c"]]);
  assert.deepEqual(imports("lib/nn/x.ts", 'import { y } from "../models/y.ts";'), [
    "lib/models/y.ts",
  ]);
  assert.ok(LAYERS.indexOf(layerOf("lib/models/y.ts")) > LAYERS.indexOf(layerOf("lib/nn/x.ts")));
});
