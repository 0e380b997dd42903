// The command line of a stage, shared by every tasks/<stage>.ts: parse the options (usage errors
// exit 2), and either launch the stage sandboxed (a launcher holds --allow-run=deno: it checks the
// options and re-runs the stage with exactly its access) or, inside the sandbox, run it and print
// one line describing the result. Errors become one line and a non-zero exit (runTask).

import { type Command, type OptionSpecs, type Parsed, parseOrExit, runTask } from "./args.ts";
import { isLauncher, runSandboxed, type StageAccess } from "./permissions.ts";

export interface StageEntry<S extends OptionSpecs, R> {
  /** Usage checks the launcher can do before starting the sandboxed child (optional). */
  check?: (options: Parsed<S>) => void;
  /** The paths the sandboxed child may read and write. */
  access: (options: Parsed<S>) => StageAccess;
  run: (options: Parsed<S>) => Promise<R>;
  /** The one line printed for a finished (or skipped) run. */
  describe: (result: R) => string;
}

/** Runs the stage whose module is `script` (its import.meta.url) from the command line. */
export async function stageMain<S extends OptionSpecs, R>(
  script: string,
  command: Command<S>,
  stage: StageEntry<S, R>,
): Promise<void> {
  const options = parseOrExit(command);
  await runTask(command.usage, async () => {
    if (isLauncher()) {
      stage.check?.(options);
      Deno.exit(await runSandboxed(script, Deno.args, stage.access(options)));
    }
    console.log(stage.describe(await stage.run(options)));
  });
}
