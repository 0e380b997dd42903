// Least privilege for stages. A stage's inputs and output are named on its command line, but Deno
// fixes permissions before the program starts and `deno task` cannot compute flags from
// arguments. So a stage started with permission to run `deno` is a launcher: it parses its options,
// works out the paths it needs, and runs itself again as
//
//   deno run --no-prompt --allow-read=<inputs>,<output> --allow-write=<output> <script> <args>
//
// (no net, env, run, ffi or sys), waits, and exits with the child's status. The child has no run
// permission, so it does the work instead of launching again. The launcher itself only resolves
// paths; it opens no input file. Running a stage directly with narrow flags also works.

import { fileURLToPath } from "node:url";
import { preferSoftwareThreads, SOFTWARE_THREADS_ENV } from "../tensor/engine.ts";

export interface StageAccess {
  /** Files or folders the stage reads (absolute). */
  read: string[];
  /** Folders the stage writes (absolute). */
  write: string[];
}

function joinPaths(flag: string, paths: string[]): string {
  for (const p of paths) {
    // Deno splits allow-lists on commas and has no escape for them.
    if (p.includes(",")) {
      throw new Error(
        `peco: permissions: path "${p}" contains a comma, which --${flag} cannot express`,
      );
    }
  }
  return `--${flag}=${[...new Set(paths)].join(",")}`;
}

/** The exact `deno run` permission flags for a stage: this access and nothing else, no prompts. */
export function permissionFlags(access: StageAccess): string[] {
  const flags = ["--no-prompt"];
  if (access.read.length) flags.push(joinPaths("allow-read", access.read));
  if (access.write.length) flags.push(joinPaths("allow-write", access.write));
  return flags;
}

/**
 * True when this process may start `deno` (found on PATH, as `--allow-run=deno` grants it), i.e.
 * it is a launcher rather than a sandboxed stage.
 */
export function isLauncher(): boolean {
  return Deno.permissions.querySync({ name: "run", command: "deno" }).state === "granted";
}

/** Where a sandboxed child's output goes. */
export interface SandboxStdio {
  stdout?: "inherit" | "piped" | "null";
  stderr?: "inherit" | "piped" | "null";
}

/** The argument marking a compiled binary's sandboxed child (handled by tasks/peco.ts). */
export const SANDBOX_SUBCOMMAND = "__sandbox";

/**
 * The permissions a compiled binary is built with (tools/compile.ts), and the flag its Worker
 * sandbox needs: a binary takes no permission flags at run time, so these are all it ever has.
 */
export const BINARY_PERMISSIONS = [
  "--allow-read",
  "--allow-write",
  "--allow-run",
  `--allow-env=${SOFTWARE_THREADS_ENV}`,
  "--no-prompt",
];
export const BINARY_FLAGS = [...BINARY_PERMISSIONS, "--unstable-worker-options"];

/** The binary's entry module while this process stands in for the binary (emulateBinary). */
let emulatedBinary: URL | null = null;

/**
 * Makes this process act as the compiled binary whose entry is `entry` (tasks/peco.ts): its
 * stages' sandboxed children become `entry __sandbox …` run by `deno run` with exactly the
 * binary's flags, so they run in the binary's Worker sandbox. `deno task peco` uses it to run the
 * binary's code paths without `deno compile`.
 */
export function emulateBinary(entry: URL): void {
  emulatedBinary = entry;
}

/** How to start this program again as the binary (null when it is not one): program + args. */
function binarySelf(config: URL): { program: string; args: string[] } | null {
  if (Deno.build.standalone) return { program: Deno.execPath(), args: [] };
  if (!emulatedBinary) return null;
  const args = ["run", `--config=${fileURLToPath(config)}`, ...BINARY_FLAGS];
  return { program: "deno", args: [...args, fileURLToPath(emulatedBinary)] };
}

/**
 * The child process of a sandboxed stage: `deno run` with the project's deno.json and exactly
 * `permissionFlags(access)`. A binary made by `deno compile` has its permissions fixed when it is
 * compiled and takes no permission flags, so there the child is the binary itself in its
 * `__sandbox` mode, which runs the stage in a Worker whose permissions are `access` and nothing
 * else (tasks/peco.ts); so it is too while this process stands in for the binary (emulateBinary).
 */
export function sandboxedCommand(
  script: string | URL,
  args: string[],
  access: StageAccess,
  { stdout = "inherit", stderr = "inherit" }: SandboxStdio = {},
  config = new URL("../../deno.json", import.meta.url),
): Deno.Command {
  // The child inherits this process's environment: the software adapter's threads are set here,
  // where the launcher may (a sandboxed stage has no environment access).
  preferSoftwareThreads();
  const href = new URL(script).href;
  const binary = binarySelf(config);
  const program = binary?.program ?? "deno";
  const childArgs = binary
    ? [...binary.args, SANDBOX_SUBCOMMAND, href, JSON.stringify(access), ...args]
    : [
      "run",
      `--config=${fileURLToPath(config)}`,
      ...permissionFlags(access),
      fileURLToPath(href),
      ...args,
    ];
  return new Deno.Command(program, { args: childArgs, stdin: "inherit", stdout, stderr });
}

/** A child's exit status as a shell reports it (128 + signal number when killed). */
export function exitCode({ code, signal }: Deno.CommandStatus): number {
  return signal ? 128 + (Deno.build.os === "windows" ? 1 : signalNumber(signal)) : code;
}

/**
 * Runs `script` (a file: URL of a stage) in a child limited to `access` (sandboxedCommand),
 * inheriting stdio. Resolves to the child's exit code.
 */
export async function runSandboxed(
  script: string | URL,
  args: string[],
  access: StageAccess,
  config = new URL("../../deno.json", import.meta.url),
): Promise<number> {
  return exitCode(await sandboxedCommand(script, args, access, {}, config).spawn().status);
}

function signalNumber(signal: Deno.Signal): number {
  return ({ SIGINT: 2, SIGKILL: 9, SIGTERM: 15 } as Record<string, number>)[signal] ?? 1;
}
