// The project's one-line errors: "peco: <context>: <what>". A layer that catches an error from
// below and adds its own context (the option or file it was working on) rewords it with `reason`,
// so the line does not read "peco: evaluate: --export x: peco: tokenizer …".

/** A throw-helper for one context: `fail("what")` throws "peco: <context>: what". */
export function failer(context: string): (what: string) => never {
  return (what: string): never => {
    throw new Error(`peco: ${context}: ${what}`);
  };
}

/** An error's message without the "peco: " prefix, to be thrown again under another context. */
export function reason(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  return message.replace(/^peco: /, "");
}
