// The stage graph runner behind `deno task demo | pipeline | experiment`.
//
// A pipeline is a list of steps, each one run of a stage (tasks/<stage>.ts) with options built
// from the config, writing one folder. The runner holds no more power than reading (the config
// and the stages' manifests) and running `deno`: every step runs as a child process with exactly
// the permissions its stage's access function computes (lib/cli/permissions.ts), so each stage
// reads only its inputs and writes only its folder.
//
// Skipping and resuming are the stages' own (lib/cli/stage.ts): a stage whose folder holds a
// manifest of the same config and inputs exits at once ("skip": the runner sees the manifest
// unchanged); a changed setting changes that stage's manifest, hence the fingerprints of every
// stage after it, which rerun; an interrupted stage resumes from its checkpoint. So rerunning a
// killed pipeline finishes it as if it had never stopped.
//
// Output: one line per step (start with its estimate and the pipeline's ETA; end with its time),
// the stages' own progress bars and notes (stderr), and a summary table (stdout). `quiet` keeps
// only the step lines and the table (a failing stage's last lines are still shown); `json`
// writes one JSON event per line on stdout instead (start / progress / skip / done / stopped /
// fail / end, each with `t`, seconds since the pipeline started). A run with a seed list starts
// with its plan (a "plan" event; "plan:" lines): the steps shared by every seed, each seed's own.

import { join, resolve } from "node:path";
import { type Command, type OptionSpecs, parseOptions, UsageError } from "./args.ts";
import { exitCode, permissionFlags, sandboxedCommand, type StageAccess } from "./permissions.ts";
import { formatDuration } from "./progress.ts";
import type { OptionValue, PipelineConfig, StageSchema } from "./pipeline_config.ts";
import type { Problem } from "./problems.ts";
import { failer } from "../io/errors.ts";

// ---- stages and steps -------------------------------------------------------------------------

/** What the runner uses of a stage module (tasks/<stage>.ts). */
export interface StageModule {
  command: Command<OptionSpecs>;
  // deno-lint-ignore no-explicit-any
  access(options: any): StageAccess;
  /**
   * Every problem of the options: types, ranges and the rules between options that the stage
   * enforces at its start (the very function it calls there).
   */
  // deno-lint-ignore no-explicit-any
  check(options: any): Problem[];
  /** The stage's run function (run<Stage>), for running it in-process (a Worker). */
  run(
    // deno-lint-ignore no-explicit-any
    options: any,
    hooks: { log: (line: string) => void },
  ): Promise<{ status: string; out: string }>;
}

export interface StageDef {
  name: string;
  /** The stage's task file (file: URL), run as the child. */
  script: URL;
  load(): Promise<StageModule>;
}

export type StageRegistry = Record<string, StageDef>;

/** One run of a stage. */
export interface PipelineStep {
  /** Unique within the pipeline; also the folder name under the run's folder. */
  id: string;
  stage: string;
  /** Every option passed, including the wiring (--shards …) and --out. */
  args: Record<string, OptionValue>;
  /** Expected seconds (for the ETA only). */
  estimate?: number;
  /** Where the user set each argument (e.g. "config.stages.pretrain.steps"); absent: wiring. */
  keys?: Record<string, string>;
  /**
   * The seed of a step run once per seed of the config's seed list (an arm's tokenizer, export,
   * pretraining); absent on the steps shared by every seed and when the config lists no seeds.
   */
  seed?: number;
}

export interface PreparedStep extends PipelineStep {
  out: string;
  argv: string[];
  access: StageAccess;
  script: URL;
  /** The options as the stage parses them (its defaults filled in). */
  options: Record<string, unknown>;
}

/** A problem of one step, and where to fix it. */
export interface StepProblem {
  step: PipelineStep;
  problem: Problem;
}

/**
 * Where to fix a problem: the config key of the first option it names that the user set (the
 * config's stage section, its seed, an experiment arm), else the stage's section and the option
 * (at its default), or the step itself for the pipeline's wiring.
 */
export function problemKey(step: PipelineStep, problem: Problem): string {
  const keys = step.keys ?? {};
  const set = problem.options.find((o) => keys[o] !== undefined);
  if (set !== undefined) return keys[set];
  const first = problem.options[0];
  if (first === undefined) return `config.stages.${step.stage}`;
  if (first in step.args) return `config.stages.${step.stage} (step ${step.id}, --${first} wired)`;
  return `config.stages.${step.stage}.${first} (default)`;
}

/** One line per problem, each naming its config key (repeated lines of several arms once). */
export function problemLines(problems: StepProblem[]): string[] {
  return [
    ...new Set(
      problems.map(({ step, problem }) => `${problemKey(step, problem)}: ${problem.message}`),
    ),
  ];
}

/** `--key value` pairs; a true boolean is `--key`, a false one is left out. */
export function toArgv(args: Record<string, OptionValue>): string[] {
  const argv: string[] = [];
  for (const [key, value] of Object.entries(args)) {
    if (value === false) continue;
    argv.push(`--${key}`);
    if (value !== true) argv.push(String(value));
  }
  return argv;
}

const fail: (what: string) => never = failer("pipeline");

/**
 * Checks every step's options with its stage's own check (the one it runs at its start) and
 * computes its permissions, before anything runs. Returns the steps and every problem of every
 * step (steps with problems have no permissions and must not run).
 */
export async function checkSteps(
  steps: PipelineStep[],
  registry: StageRegistry,
): Promise<{ steps: PreparedStep[]; problems: StepProblem[] }> {
  const ids = new Set<string>();
  const prepared: PreparedStep[] = [];
  const problems: StepProblem[] = [];
  for (const step of steps) {
    if (ids.has(step.id)) fail(`two steps are named "${step.id}"`);
    ids.add(step.id);
    const def = registry[step.stage] ?? fail(`step ${step.id}: unknown stage "${step.stage}"`);
    const { command, access, check } = await def.load();
    const argv = toArgv(step.args);
    let options: Record<string, unknown> | null;
    try {
      options = parseOptions(command, argv);
    } catch (error) {
      if (!(error instanceof UsageError)) throw error;
      const message = error.message.replace(/ \(see --help\)$/, "");
      problems.push({ step, problem: { options: [], message } });
      continue;
    }
    if (!options) fail(`step ${step.id}: --help is not an option here`);
    const found = check(options);
    problems.push(...found.map((problem) => ({ step, problem })));
    prepared.push({
      ...step,
      out: resolve(String(step.args.out)),
      argv,
      access: found.length ? { read: [], write: [] } : access(options),
      script: def.script,
      options,
    });
  }
  return { steps: prepared, problems };
}

/** checkSteps that fails with the first problem (one line naming the step and its key). */
export async function prepareSteps(
  steps: PipelineStep[],
  registry: StageRegistry,
): Promise<PreparedStep[]> {
  const checked = await checkSteps(steps, registry);
  const first = checked.problems[0];
  if (first) {
    fail(
      `step ${first.step.id} (${first.step.stage}): ${problemKey(first.step, first.problem)}: ` +
        first.problem.message,
    );
  }
  return checked.steps;
}

/** The schemas the config validator checks against: each stage's options and its wiring. */
export async function stageSchemas(
  registry: StageRegistry,
  wired: Record<string, Record<string, string>>,
): Promise<Record<string, StageSchema>> {
  const schemas: Record<string, StageSchema> = {};
  for (const [name, def] of Object.entries(registry)) {
    schemas[name] = { options: (await def.load()).command.options, wired: wired[name] ?? {} };
  }
  return schemas;
}

// ---- the chain --------------------------------------------------------------------------------

/** The stages of the chain in order, with their folders (docs/architecture.md). */
export const CHAIN = [
  { stage: "shard", folder: "shard" },
  { stage: "train-perceptual", folder: "perceptual" },
  { stage: "train-tokenizer", folder: "tokenizer" },
  { stage: "export-codebook", folder: "export" },
  { stage: "pretrain", folder: "pretrain" },
  { stage: "evaluate", folder: "evaluate" },
] as const;

/** Options the pipeline sets itself, per stage: the wiring between folders. */
export const WIRED: Record<string, Record<string, string>> = {
  "shard": { out: "the pipeline passes <out>/shard" },
  "train-perceptual": { shards: "<out>/shard", out: "<out>/perceptual" },
  "train-tokenizer": {
    shards: "<out>/shard",
    "perceptual-dir": "<out>/perceptual when perceptual is builtin",
    out: "<out>/tokenizer",
  },
  "export-codebook": { tokenizer: "<out>/tokenizer", shards: "<out>/shard", out: "<out>/export" },
  "pretrain": { shards: "<out>/shard", tokenizer: "<out>/export", out: "<out>/pretrain" },
  "evaluate": {
    shards: "<out>/shard",
    export: "<out>/export (one per arm)",
    pretrain: "<out>/pretrain (one per arm)",
    labels: "the arms' names",
    "arm-seeds": "the seed of each arm's run (with a seed list)",
    curves: "the training stages' folders",
    out: "<out>/evaluate",
  },
};

/** One tokenizer → export → pretrain arm of an experiment (the chain has one, unnamed). */
export interface Arm {
  /** Folder suffix ("" for the plain chain), e.g. "-l0". */
  suffix: string;
  label: string;
  /** Extra train-tokenizer options of this arm (e.g. its λ). */
  tokenizer: Record<string, OptionValue>;
}

/** The seed of every stage when nothing sets one (each stage's --seed defaults to it). */
const STAGE_DEFAULT_SEED = 0;

/** The seeds a config's arms run with, and where each seed's arm folders go. */
export interface SeedLayout {
  /** Every seed, in the order of the list. */
  seeds: number[];
  /**
   * The run's own seed (the config's "seed", else the stages' default): the shared stages run
   * with it, and its arms sit in the run's folder itself, as in a run without a seed list. So a
   * seed list added to a finished run reuses that run's arms.
   */
  base: number;
  /** The config lists its seeds: each per-seed step gets its seed as --seed. */
  listed: boolean;
}

export function seedLayout(config: PipelineConfig): SeedLayout {
  const base = config.seed ?? STAGE_DEFAULT_SEED;
  return { seeds: config.seeds ?? [base], base, listed: config.seeds !== undefined };
}

/** The folder of a seed's arms, relative to the run's folder: "" for the base seed. */
export function seedFolder(seed: number, base: number): string {
  return seed === base ? "" : `seed-${seed}`;
}

/**
 * The chain's steps for a config: shard and train-perceptual once, then per seed and per arm a
 * tokenizer, its export and a pretraining (PER_SEED_STAGES), then one evaluate over every arm of
 * every seed. Stages missing from `available` (not in this build) end the chain before them.
 */
export function chainSteps(
  config: PipelineConfig,
  out: string,
  available: string[],
  arms: Arm[] = [{ suffix: "", label: "peco", tokenizer: {} }],
): PipelineStep[] {
  const dir = (folder: string) => join(out, folder);
  const section = (stage: string) => config.stages[stage] ?? {};
  const { seeds, base, listed } = seedLayout(config);
  // Every stage has --seed (the stage conventions); the config's seed applies to all of them,
  // a listed seed to the per-seed steps of its runs.
  const seeded: Record<string, OptionValue> = config.seed === undefined
    ? {}
    : { seed: config.seed };
  const steps: PipelineStep[] = [];
  const add = (
    stage: string,
    id: string,
    args: Record<string, OptionValue>,
    run: { arm?: Arm; seed?: number } = {},
  ) => {
    const { arm } = run;
    const seed = listed ? run.seed : undefined;
    const keys: Record<string, string> = {};
    for (const key of Object.keys(seeded)) keys[key] = "config.seed";
    for (const key of Object.keys(section(stage))) keys[key] = `config.stages.${stage}.${key}`;
    for (const key of Object.keys(arm?.tokenizer ?? {})) {
      if (!(key in section(stage)) || arm!.tokenizer[key] !== section(stage)[key]) {
        keys[key] = `arm "${arm!.label}" (--${key} ${arm!.tokenizer[key]})`;
      }
    }
    if (seed !== undefined) keys.seed = "config.seeds";
    // One evaluate measures the arms of every seed: its work grows with their number.
    const estimate = config.estimates[stage];
    steps.push({
      id,
      stage,
      args: {
        ...seeded,
        ...section(stage),
        ...args,
        ...(seed !== undefined ? { seed } : {}),
        out: dir(id),
      },
      estimate: estimate === undefined || stage !== "evaluate" ? estimate : estimate * seeds.length,
      keys,
      ...(seed !== undefined ? { seed } : {}),
    });
  };
  // The builtin perceptual network is trained only when some arm uses it.
  const kind = (arm: Arm) =>
    String(arm.tokenizer.perceptual ?? section("train-tokenizer").perceptual ?? "builtin");
  const builtin = arms.some((arm) => kind(arm) === "builtin");
  const order = CHAIN.map((c) => c.stage as string)
    .filter((stage) => stage !== "train-perceptual" || builtin);
  const end = order.findIndex((stage) => !available.includes(stage));
  const runs = (stage: string) => end === -1 || order.indexOf(stage) < end;

  if (!runs("shard")) return steps;
  add("shard", "shard", {});
  const shards = dir("shard");
  if (builtin && runs("train-perceptual")) add("train-perceptual", "perceptual", { shards });
  // Every (seed, arm) run, seed by seed: a seed's steps all run before the next seed's.
  const pairs = seeds.flatMap((seed) =>
    arms.map((arm) => {
      const folder = seedFolder(seed, base);
      const id = (name: string) => `${folder ? `${folder}/` : ""}${name}${arm.suffix}`;
      return { seed, arm, id };
    })
  );
  for (const seed of seeds) {
    const mine = pairs.filter((p) => p.seed === seed);
    for (const { arm, id } of runs("train-tokenizer") ? mine : []) {
      add("train-tokenizer", id("tokenizer"), {
        shards,
        perceptual: kind(arm),
        ...(kind(arm) === "builtin" ? { "perceptual-dir": dir("perceptual") } : {}),
        ...arm.tokenizer,
      }, { arm, seed });
    }
    for (const { id } of runs("export-codebook") ? mine : []) {
      add("export-codebook", id("export"), { tokenizer: dir(id("tokenizer")), shards }, { seed });
    }
    for (const { id } of runs("pretrain") ? mine : []) {
      add("pretrain", id("pretrain"), { shards, tokenizer: dir(id("export")) }, { seed });
    }
  }
  if (!runs("evaluate")) return steps;
  const curves = [
    ...(builtin ? [dir("perceptual")] : []),
    ...pairs.flatMap(({ id }) => [dir(id("tokenizer")), dir(id("pretrain"))]),
  ];
  // Each arm's seed, when some differs from evaluate's own --seed (the one it defaults to).
  const evaluateSeed = section("evaluate").seed ?? config.seed ?? STAGE_DEFAULT_SEED;
  const armSeeds = listed && pairs.some((p) => p.seed !== evaluateSeed);
  add("evaluate", "evaluate", {
    shards,
    export: pairs.map(({ id }) => dir(id("export"))).join(","),
    pretrain: pairs.map(({ id }) => dir(id("pretrain"))).join(","),
    // The same label for an arm's runs of every seed: evaluate pools them as that arm's seeds.
    ...(pairs.length > 1 ? { labels: pairs.map((p) => p.arm.label).join(",") } : {}),
    ...(armSeeds ? { "arm-seeds": pairs.map((p) => p.seed).join(",") } : {}),
    curves: curves.join(","),
  });
  return steps;
}

/** Which steps serve every seed and which run once per seed (a run with a seed list). */
export interface SeedPlan {
  seeds: number[];
  /** Steps run once for all seeds: the shards, the perceptual network, the evaluation. */
  shared: string[];
  /** Per seed: the folder of its runs (relative to the run's folder, "" for itself), its steps. */
  perSeed: { seed: number; folder: string; steps: string[] }[];
}

/** The seed plan of a chain's steps, or null when the config lists no seeds. */
export function seedPlan(steps: PipelineStep[]): SeedPlan | null {
  if (!steps.some((s) => s.seed !== undefined)) return null;
  const seeds = [...new Set(steps.flatMap((s) => s.seed === undefined ? [] : [s.seed]))];
  return {
    seeds,
    shared: steps.filter((s) => s.seed === undefined).map((s) => s.id),
    perSeed: seeds.map((seed) => {
      const ids = steps.filter((s) => s.seed === seed).map((s) => s.id);
      const slash = ids[0].lastIndexOf("/");
      return {
        seed,
        folder: slash < 0 ? "" : ids[0].slice(0, slash),
        steps: ids.map((id) => id.slice(id.lastIndexOf("/") + 1)),
      };
    }),
  };
}

/** The plan as lines (printed before a run and by --dry-run). */
export function seedPlanLines(plan: SeedPlan): string[] {
  return [
    `seeds ${plan.seeds.join(", ")}: shared by every seed: ${plan.shared.join(", ")}`,
    ...plan.perSeed.map(({ seed, folder, steps }) =>
      `seed ${seed} (in ${folder ? `<out>/${folder}` : "<out>"}): ${steps.join(", ")}`
    ),
  ];
}

// ---- running ----------------------------------------------------------------------------------

export type StepStatus = "skip" | "done" | "stopped" | "fail" | "pending";

export interface StepResult {
  id: string;
  stage: string;
  out: string;
  status: StepStatus;
  seconds: number;
  code?: number;
  summary?: Record<string, unknown>;
}

export interface PipelineResult {
  status: "done" | "stopped" | "fail" | "interrupted";
  seconds: number;
  steps: StepResult[];
  /** The exit code the command should end with. */
  code: number;
}

export interface RunOptions {
  quiet?: boolean;
  json?: boolean;
  /** Where lines go (tests capture them); default the process's stdout and stderr. */
  write?: { out(line: string): void; err(text: string): void; errIsTerminal: boolean };
}

interface StageProgress {
  done: number;
  total: number;
  unit: string;
  eta: number | null;
}

/** The progress line of lib/cli/progress.ts: "<label> <bar> 3/10 step [0:05<0:12, …". */
const PROGRESS_LINE = /^\S+ [█░]+ (\d+)\/(\d+) (\S+) \[([\d:]+|--:--)<([\d:]+|--:--),/;

export function parseProgress(line: string): StageProgress | null {
  const m = PROGRESS_LINE.exec(line);
  if (!m) return null;
  return { done: Number(m[1]), total: Number(m[2]), unit: m[3], eta: parseDuration(m[5]) };
}

/** "m:ss" or "h:mm:ss" → seconds; "--:--" → null. */
export function parseDuration(text: string): number | null {
  if (!/^\d+(:\d\d){1,2}$/.test(text)) return null;
  return text.split(":").reduce((s, part) => s * 60 + Number(part), 0);
}

/**
 * True when a stage's last lines are lib/cli/stage.ts's refusal to replace a run of the same
 * stage with other settings (finished, or unfinished: its checkpoint is of no use to this one).
 */
export function holdsOtherRun(stage: string, lines: string[]): boolean {
  const last = lines.filter((l) => l.startsWith(`peco: ${stage}: `)).at(-1) ?? "";
  return new RegExp(
    `holds (a finished ${stage} run|an unfinished run) with another ` +
      `config or inputs; use --force`,
  ).test(last);
}

async function readBytes(path: string): Promise<Uint8Array | null> {
  try {
    return await Deno.readFile(path);
  } catch {
    return null;
  }
}

function sameBytes(a: Uint8Array | null, b: Uint8Array | null): boolean {
  return a !== null && b !== null && a.length === b.length && a.every((v, i) => v === b[i]);
}

/** A manifest's summary (the stage contract), or the shard manifest's counts. */
function summaryOf(bytes: Uint8Array): Record<string, unknown> {
  try {
    const m = JSON.parse(new TextDecoder().decode(bytes));
    if (m.summary && typeof m.summary === "object") return m.summary;
    if (m.counts && typeof m.counts === "object") {
      return { images: m.counts.images, rejected: m.counts.rejected };
    }
  } catch { /* not JSON: no summary */ }
  return {};
}

async function forEachLine(
  stream: ReadableStream<Uint8Array>,
  onLine: (line: string) => void,
): Promise<void> {
  let rest = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    const parts = (rest + chunk).split(/\r?\n|\r/);
    rest = parts.pop()!;
    parts.forEach(onLine);
  }
  if (rest) onLine(rest);
}

const encoder = new TextEncoder();

function defaultWrite(): NonNullable<RunOptions["write"]> {
  return {
    out: (line) => console.log(line),
    err: (text) => Deno.stderr.writeSync(encoder.encode(text)),
    errIsTerminal: Deno.stderr.isTerminal(),
  };
}

/** Runs the steps in order, stopping at the first that fails or stops. */
export async function runPipeline(
  steps: PreparedStep[],
  { quiet = false, json = false, write = defaultWrite() }: RunOptions = {},
): Promise<PipelineResult> {
  const start = performance.now();
  const now = () => (performance.now() - start) / 1000;
  const emit = (event: Record<string, unknown>) => {
    if (!json) return;
    // Seconds to the millisecond: the events are for machines, but also read by people.
    const round = (_key: string, v: unknown) =>
      typeof v === "number" && !Number.isInteger(v) ? Number(v.toFixed(3)) : v;
    write.out(JSON.stringify({ ...event, t: now() }, round));
  };
  const note = (line: string) => {
    if (!json) write.err(`${line}\n`);
  };
  const results: StepResult[] = steps.map((s) => ({
    id: s.id,
    stage: s.stage,
    out: s.out,
    status: "pending",
    seconds: 0,
  }));
  const live = write.errIsTerminal && !quiet && !json;
  let drawn = false; // a redrawn progress line is on screen
  const clearLive = () => {
    if (drawn) write.err("\r\x1b[2K");
    drawn = false;
  };

  // Ctrl-C / kill: stop the running stage (it resumes on the next run) and report.
  let child: Deno.ChildProcess | null = null;
  let interrupted = false;
  const onSignal = () => {
    interrupted = true;
    try {
      child?.kill("SIGTERM");
    } catch { /* already gone */ }
  };
  const signals: Deno.Signal[] = Deno.build.os === "windows" ? ["SIGINT"] : ["SIGINT", "SIGTERM"];
  signals.forEach((s) => Deno.addSignalListener(s, onSignal));

  /** Seconds left: the running step's own ETA (or estimate) plus the later steps' estimates. */
  const pipelineEta = (index: number, elapsed: number, stageEta: number | null) => {
    let eta = stageEta ?? Math.max((steps[index].estimate ?? 0) - elapsed, 0);
    let known = stageEta !== null || steps[index].estimate !== undefined;
    for (const s of steps.slice(index + 1)) {
      eta += s.estimate ?? 0;
      known &&= s.estimate !== undefined;
    }
    return { eta, known };
  };
  // Without estimates for some later steps the ETA is a lower bound; without any, unknown.
  const etaText = ({ eta, known }: { eta: number; known: boolean }) =>
    known ? formatDuration(eta) : eta > 0 ? `≥${formatDuration(eta)}` : "unknown";

  // A run with a seed list first says which steps serve every seed and which run per seed.
  const plan = seedPlan(steps);
  if (plan) {
    emit({ event: "plan", ...plan });
    for (const line of seedPlanLines(plan)) note(`plan: ${line}`);
  }

  let status: PipelineResult["status"] = "done";
  let code = 0;
  try {
    for (const [index, step] of steps.entries()) {
      const result = results[index];
      const tag = `[${index + 1}/${steps.length}] ${step.id}`;
      const manifestPath = join(step.out, "manifest.json");
      const before = await readBytes(manifestPath);
      const eta0 = pipelineEta(index, 0, null);
      emit({
        event: "start",
        step: step.id,
        stage: step.stage,
        index: index + 1,
        of: steps.length,
        ...(step.seed !== undefined ? { seed: step.seed } : {}),
        out: step.out,
        estimate_s: step.estimate ?? null,
        pipeline_eta_s: eta0.eta,
      });
      note(
        `${tag}: ${step.stage} → ${step.out}` +
          (step.estimate !== undefined ? ` (estimate ${formatDuration(step.estimate)}` : " (") +
          `${step.estimate !== undefined ? "; " : ""}pipeline ETA ${etaText(eta0)})`,
      );
      const stepStart = performance.now();
      const elapsed = () => (performance.now() - stepStart) / 1000;
      const argv = quiet && !step.argv.includes("--quiet") ? [...step.argv, "--quiet"] : step.argv;
      const held: string[] = []; // quiet: the child's last lines, shown if it fails
      const tail: string[] = []; // the child's last lines, to recognise a refusal
      const onLine = (line: string) => {
        tail.push(line);
        if (tail.length > 20) tail.shift();
        const p = parseProgress(line);
        if (p) {
          const eta = pipelineEta(index, elapsed(), p.eta);
          emit({
            event: "progress",
            step: step.id,
            stage: step.stage,
            done: p.done,
            total: p.total,
            unit: p.unit,
            elapsed_s: Number(elapsed().toFixed(1)),
            eta_s: p.eta,
            pipeline_eta_s: eta.eta,
          });
          if (live) {
            write.err(`\r\x1b[2K${line}  | pipeline ETA ${etaText(eta)}`);
            drawn = true;
            return;
          }
        }
        if (quiet) {
          held.push(line);
          if (held.length > 20) held.shift();
          return;
        }
        clearLive();
        write.err(`${line}\n`);
      };
      const runChild = async (args: string[]) => {
        child = sandboxedCommand(step.script, args, step.access, {
          stdout: "piped",
          stderr: "piped",
        }).spawn();
        await Promise.all([forEachLine(child.stdout, onLine), forEachLine(child.stderr, onLine)]);
        const status = exitCode(await child.status);
        child = null;
        return status;
      };
      let childCode = await runChild(argv);
      if (childCode === 1 && !interrupted && holdsOtherRun(step.stage, tail)) {
        // The step's own folder holds this stage's run of other settings (the config changed):
        // the stage refuses to replace it unless told to. Only that refusal is overridden.
        emit({ event: "replace", step: step.id, stage: step.stage, out: step.out });
        note(`${tag}: ${step.out} holds a run of other settings; replacing it (--force)`);
        held.length = 0;
        childCode = await runChild([...argv, "--force"]);
      }
      clearLive();
      result.seconds = elapsed();
      const after = await readBytes(manifestPath);
      if (childCode !== 0 || interrupted) {
        result.status = interrupted ? "stopped" : "fail";
        result.code = childCode;
        held.forEach((line) => write.err(`${line}\n`));
        const message = interrupted ? "interrupted" : `exited with code ${childCode}`;
        emit({
          event: interrupted ? "stopped" : "fail",
          step: step.id,
          stage: step.stage,
          seconds: result.seconds,
          code: childCode,
          message,
        });
        note(`${tag}: ${message} after ${formatDuration(result.seconds)}`);
        status = interrupted ? "interrupted" : "fail";
        code = interrupted ? 130 : childCode;
        break;
      }
      if (after === null) {
        // Exit 0 without a manifest: the stage stopped early (--stop-at) and will resume.
        result.status = "stopped";
        emit({ event: "stopped", step: step.id, stage: step.stage, seconds: result.seconds });
        note(`${tag}: stopped before finishing (no manifest.json); rerun to resume`);
        status = "stopped";
        code = 3;
        break;
      }
      result.status = sameBytes(before, after) ? "skip" : "done";
      result.summary = summaryOf(after);
      const eta = pipelineEta(index + 1 < steps.length ? index + 1 : index, 0, null);
      emit({
        event: result.status,
        step: step.id,
        stage: step.stage,
        seconds: result.seconds,
        summary: result.summary,
      });
      note(
        `${tag}: ${result.status === "skip" ? "up to date, skipped" : "done"} in ` +
          `${formatDuration(result.seconds)} (total ${formatDuration(now())}` +
          (index + 1 < steps.length ? `; ETA ${etaText(eta)})` : ")"),
      );
    }
  } finally {
    signals.forEach((s) => Deno.removeSignalListener(s, onSignal));
  }
  const pipeline: PipelineResult = { status, seconds: now(), steps: results, code };
  emit({ event: "end", status, seconds: pipeline.seconds, steps: results });
  if (!json) write.out(summaryTable(pipeline));
  return pipeline;
}

// ---- summary ----------------------------------------------------------------------------------

/** Up to three headline numbers of a stage's summary. */
function headline(summary: Record<string, unknown> | undefined): string {
  if (!summary) return "";
  const skip = /seconds|bytes|^steps$|per_?s|images_?per/i;
  return Object.entries(summary)
    .filter(([k, v]) => typeof v === "number" && Number.isFinite(v) && !skip.test(k))
    .slice(0, 3)
    .map(([k, v]) => `${k} ${Number.isInteger(v) ? v : (v as number).toFixed(3)}`)
    .join(", ");
}

export function summaryTable(result: PipelineResult): string {
  const rows = [
    ["step", "stage", "status", "time", "summary"],
    ...result.steps.map((s) => [
      s.id,
      s.stage,
      s.status,
      s.status === "pending" ? "" : formatDuration(s.seconds),
      headline(s.summary),
    ]),
  ];
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  const line = (r: string[]) => `| ${r.map((v, c) => v.padEnd(widths[c])).join(" | ")} |`;
  return [
    line(rows[0]),
    `|${widths.map((w) => "-".repeat(w + 2)).join("|")}|`,
    ...rows.slice(1).map(line),
    `pipeline: ${result.status} in ${formatDuration(result.seconds)}`,
  ].join("\n");
}

/** The exact command line of a prepared step (for --dry-run and the docs). */
export function describeStep(step: PreparedStep): string {
  const quote = (a: string) => /^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replaceAll("'", "'\\''")}'`;
  return ["deno", "run", ...permissionFlags(step.access), step.script.pathname, ...step.argv]
    .map(quote).join(" ");
}
