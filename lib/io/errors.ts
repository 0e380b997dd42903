// peco's errors read as one line, "peco: <where>: <what>", so a stage failing on a bad file prints
// where and what without a stack. `failer` makes the thrower of one place; `reason` takes such a
// message back apart when another place re-raises it under its own name (an option, a path), so
// the line does not read "peco: evaluate: --export x: peco: tokenizer …".

/**
 * A thrower of "peco: <where>: <what>" errors: `fail("what")`, or `fail("--shards", error)` for
 * "peco: <where>: --shards: <the error's reason>".
 */
export function failer(where: string): (what: string, cause?: unknown) => never {
  return (what: string, cause?: unknown): never => {
    throw new Error(`peco: ${where}: ${what}${cause === undefined ? "" : `: ${reason(cause)}`}`);
  };
}

/** The message of an error without its leading "peco: ", to be re-raised under another name. */
export function reason(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  return message.replace(/^peco: /, "");
}
