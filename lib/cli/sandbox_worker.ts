// Runs one stage inside a Worker whose Deno permissions are the stage's access and nothing else.
// This is how a binary made by `deno compile` sandboxes its stages: such a binary has its
// permissions fixed at compile time and takes no permission flags, and Deno.permissions.revoke
// cannot narrow a global grant to a list of paths (revoking global read clears it all), but a
// Worker can be started with any subset of its parent's permissions (--unstable-worker-options,
// set when compiling). The parent process (tasks/peco.ts, `__sandbox` mode) posts
// {script, args}; the worker imports the stage's task file, parses the arguments with its option
// spec, runs it in-process, and posts back the exit code the stage's own main would have had.
//
// The worker's entry module is the binary's entry (tasks/peco.ts), which imports every stage
// statically: a module outside the program's module graph would need read permission to load.

import { type Command, helpText, type OptionSpecs, parseOptions, UsageError } from "./args.ts";
import type { StageAccess } from "./permissions.ts";

export interface SandboxRequest {
  script: string;
  args: string[];
}

export interface SandboxReply {
  code: number;
}

/** What running a stage in-process needs: its option spec and its run function. */
export interface RunnableStage {
  name: string;
  command: Command<OptionSpecs>;
  run(
    options: unknown,
    hooks: { log: (line: string) => void },
  ): Promise<{ status: string; out: string }>;
}

/** Runs a stage in this thread; resolves to its exit code (0, 1 for peco errors, 2 for usage). */
export async function runStageHere(stage: RunnableStage, args: string[]): Promise<number> {
  const { command } = stage;
  try {
    const options = parseOptions(command, args);
    if (!options) {
      console.log(helpText(command));
      return 0;
    }
    const result = await stage.run(options, { log: (line) => console.error(line) });
    console.log(`${stage.name}: ${result.status}: ${result.out}`);
    return 0;
  } catch (error) {
    if (error instanceof UsageError) {
      console.error(`${command.usage}: ${error.message}`);
      return 2;
    }
    if (error instanceof Error && error.message.startsWith("peco:")) {
      console.error(error.message.split("\n")[0]);
      return 1;
    }
    console.error(error);
    return 1;
  }
}

/** The Worker permissions of a stage: its access, and no net, env, run, ffi, sys or import. */
export function workerPermissions(access: StageAccess) {
  return {
    read: access.read.length ? access.read : false,
    write: access.write.length ? access.write : false,
    net: false,
    env: false,
    run: false,
    ffi: false,
    sys: false,
    import: false,
  } as const;
}

/** Starts the stage in a Worker limited to `access`; resolves to its exit code. */
export function runStageInWorker(
  entry: URL,
  script: string,
  args: string[],
  access: StageAccess,
): Promise<number> {
  const worker = new Worker(entry, {
    type: "module",
    deno: { permissions: workerPermissions(access) },
  } as WorkerOptions);
  return new Promise<number>((done) => {
    worker.onmessage = (event: MessageEvent<SandboxReply>) => {
      worker.terminate();
      done(event.data.code);
    };
    worker.onerror = (event) => {
      event.preventDefault();
      console.error(`peco: sandboxed stage failed: ${event.message}`);
      worker.terminate();
      done(1);
    };
    worker.postMessage({ script, args } satisfies SandboxRequest);
  });
}

/** True in a Worker (where the entry module serves one stage request). */
export function inWorker(): boolean {
  // deno-lint-ignore no-explicit-any
  const scope = globalThis as any;
  return typeof scope.WorkerGlobalScope !== "undefined" && scope instanceof scope.WorkerGlobalScope;
}

/** Inside the worker: runs the requested stage once and posts back its exit code. */
export function serveStageRequest(find: (script: string) => Promise<RunnableStage>): void {
  // deno-lint-ignore no-explicit-any
  const scope = globalThis as any;
  scope.onmessage = async (event: MessageEvent<SandboxRequest>) => {
    const code = await runStageHere(await find(event.data.script), event.data.args);
    scope.postMessage({ code } satisfies SandboxReply);
  };
}
