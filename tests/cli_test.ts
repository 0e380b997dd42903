// Argument parsing and the progress line shared by every task.

import assert from "node:assert/strict";
import { helpText, parseOptions, UsageError } from "../lib/cli/args.ts";
import { formatDuration, Progress } from "../lib/cli/progress.ts";

const command = {
  usage: "deno task demo",
  summary: "A demo.",
  options: {
    steps: { type: "number" as const, default: 10, help: "training steps" },
    mode: { type: "string" as const, default: "a", choices: ["a", "b"], help: "mode" },
    json: { type: "boolean" as const, help: "JSON output" },
  },
};

Deno.test("options parse with defaults, numbers, choices and the task separator --", () => {
  assert.deepEqual(parseOptions(command, []), { steps: 10, mode: "a", json: undefined });
  assert.deepEqual(parseOptions(command, ["--", "--json", "--steps", "3", "--mode", "b"]), {
    steps: 3,
    mode: "b",
    json: true,
  });
  assert.equal(parseOptions(command, ["--help"]), null);
});

Deno.test("bad options give one-line usage errors", () => {
  assert.throws(() => parseOptions(command, ["--steps", "ten"]), UsageError);
  assert.throws(() => parseOptions(command, ["--steps", "ten"]), /--steps expects a number/);
  assert.throws(() => parseOptions(command, ["--mode", "c"]), /--mode must be one of a, b/);
  assert.throws(() => parseOptions(command, ["--nope"]), /nope.*\(see --help\)/);
});

Deno.test("help lists every option with its default", () => {
  const text = helpText(command);
  assert.match(text, /--steps <number>\s+training steps \(default: 10\)/);
  assert.match(text, /--mode <a\|b>/);
  assert.match(text, /-h, --help/);
});

Deno.test("the progress line shows counts, rate, ETA and metrics", () => {
  const lines: string[] = [];
  const stream = {
    writeSync(p: Uint8Array) {
      lines.push(new TextDecoder().decode(p));
      return p.length;
    },
    isTerminal: () => false,
  };
  const progress = new Progress({ label: "train", total: 4, unit: "step", stream });
  progress.update(2, { loss: 0.5 });
  progress.finish({ loss: 0.25 });
  assert.equal(lines.length, 2);
  assert.match(
    lines[0],
    /^train .* 2\/4 step \[\d+:\d\d<\d+:\d\d, .* step\/s\] {2}loss 0\.5000\n$/,
  );
  assert.match(lines[1], /4\/4 step .* loss 0\.2500/);
  assert.equal(formatDuration(3725), "1:02:05");
  assert.equal(formatDuration(Infinity), "--:--");
});
