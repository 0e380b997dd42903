// The portable tokenizer: one safetensors file holding a trained VQ-VAE's encoder, codebook and
// decoder weights, with everything needed to use it in `__metadata__["peco.tokenizer"]` (a JSON
// document): the full architecture config, the token grid, K, the input size and normalisation,
// and the provenance of the training run. What PeCo's users take away from training.
//
//   const tok = await Tokenizer.load("runs/export/tokenizer.safetensors");
//   const ids = tok.encodePixels(uint8NCHW, n);   // i32 [n, h·w] code ids, on the GPU
//   const x = tok.decode(ids);                    // f32 [n, C, S, S], normalised as tok.info.image
//
// The file holds the inference state only: the EMA statistics of the codebook (cluster_size,
// embed_avg) and the k-means flag are training state and stay in the training checkpoint. Loading
// checks every tensor name and shape and every config key, naming the file and what is wrong.

import { type PixelBatch, pixelsToFloat, uploadPixels } from "../data/augment.ts";
import { initGpu } from "../tensor/engine.ts";
import {
  fromGpuAll,
  readSafetensors,
  type TensorRecord,
  writeSafetensors,
} from "../io/safetensors.ts";
import { full } from "../tensor/ops/creation.ts";
import { reason } from "../io/errors.ts";
import { embedding } from "../tensor/ops/shape.ts";
import { noGrad, type Tensor, tidy } from "../tensor/tensor.ts";
import { QUANTIZER_DEFAULTS } from "./quantizer.ts";
import { downsampleFactor, type ResolvedVqVaeConfig, resolveVqVaeConfig, VqVae } from "./vqvae.ts";

export const TOKENIZER_FILE = "tokenizer.safetensors";
/** The `__metadata__` key holding the tokenizer's JSON description. */
export const TOKENIZER_META_KEY = "peco.tokenizer";
export const TOKENIZER_FORMAT = "peco-tokenizer/1";

export interface TokenizerImage {
  channels: number;
  size: number;
  mean: number[];
  std: number[];
}

export interface TokenizerInfo {
  config: ResolvedVqVaeConfig;
  /** Token grid (h, w). */
  grid: [number, number];
  /** K. */
  codebookSize: number;
  /** The model's input: (x/255 − mean)/std per channel, [channels, size, size]. */
  image: TokenizerImage;
  /** Training manifest sha256, steps, λ, perceptual network, … */
  provenance: Record<string, unknown>;
}

/** State-dict entries that are training state only (not saved in the tokenizer file). */
const TRAINING_ONLY = new Set([
  "quantize.embedding.cluster_size",
  "quantize.embedding.embed_avg",
  "quantize.initted",
]);

/** The keys of a resolved VqVae config, and of its quantizer part (all optional there). */
const CONFIG_KEYS = [
  "imageSize",
  "inChannels",
  "outChannels",
  "channels",
  "channelMult",
  "numResBlocks",
  "attnResolutions",
  "groups",
  "zChannels",
  "codeDim",
  "codebookSize",
  "quantizer",
] as const satisfies readonly (keyof ResolvedVqVaeConfig)[];
const QUANTIZER_KEYS = Object.keys(QUANTIZER_DEFAULTS);
const INFO_KEYS = ["format", "config", "grid", "codebookSize", "image", "provenance"];

function fail(path: string, what: string): never {
  throw new Error(`peco: tokenizer ${path}: ${what}`);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Unknown and missing keys of `value` against `allowed` / `required`, as one message or null. */
function keyProblems(
  value: Record<string, unknown>,
  allowed: readonly string[],
  required: readonly string[],
  where: string,
): string | null {
  const unknown = Object.keys(value).filter((k) => !allowed.includes(k));
  const missing = required.filter((k) => !(k in value));
  const parts: string[] = [];
  if (unknown.length) parts.push(`unknown ${where} key(s) ${unknown.join(", ")}`);
  if (missing.length) parts.push(`missing ${where} key(s) ${missing.join(", ")}`);
  return parts.length ? parts.join("; ") : null;
}

/** Checks the image description against the model config; returns a problem or null. */
function imageProblem(image: unknown, config: ResolvedVqVaeConfig): string | null {
  if (!isObject(image)) return `image is not an object`;
  const keys = keyProblems(image, ["channels", "size", "mean", "std"], [
    "channels",
    "size",
    "mean",
    "std",
  ], "image");
  if (keys) return keys;
  const { channels, size, mean, std } = image as unknown as TokenizerImage;
  if (channels !== config.inChannels || size !== config.imageSize) {
    return `image is ${channels}×${size}² but the model takes ` +
      `${config.inChannels}×${config.imageSize}²`;
  }
  const perChannel = (v: unknown) =>
    Array.isArray(v) && v.length === channels && v.every((x) => Number.isFinite(x));
  if (!perChannel(mean) || !perChannel(std) || std.some((s) => !(s > 0))) {
    return `image mean ${JSON.stringify(mean)} / std ${JSON.stringify(std)} need ${channels} ` +
      `finite values each (std > 0)`;
  }
  return null;
}

/** Parses and validates the metadata document of a tokenizer file. */
function parseInfo(metadata: Record<string, string>, path: string): TokenizerInfo {
  const text = metadata[TOKENIZER_META_KEY];
  if (text === undefined) fail(path, `not a peco tokenizer (no "${TOKENIZER_META_KEY}" metadata)`);
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (error) {
    fail(path, `metadata is not valid JSON (${(error as Error).message})`);
  }
  if (!isObject(doc)) fail(path, `metadata is not a JSON object`);
  if (doc.format !== TOKENIZER_FORMAT) {
    fail(path, `unsupported format ${JSON.stringify(doc.format)} (want ${TOKENIZER_FORMAT})`);
  }
  const top = keyProblems(doc, INFO_KEYS, INFO_KEYS, "metadata");
  if (top) fail(path, top);
  const raw = doc.config;
  if (!isObject(raw)) fail(path, `config is not an object`);
  const configKeys = keyProblems(raw, CONFIG_KEYS, CONFIG_KEYS, "config");
  if (configKeys) fail(path, configKeys);
  if (!isObject(raw.quantizer)) fail(path, `config.quantizer is not an object`);
  const quantizerKeys = keyProblems(raw.quantizer, QUANTIZER_KEYS, [], "config.quantizer");
  if (quantizerKeys) fail(path, quantizerKeys);
  let config: ResolvedVqVaeConfig;
  try {
    config = resolveVqVaeConfig(raw as unknown as ResolvedVqVaeConfig);
  } catch (error) {
    return fail(path, reason(error));
  }
  const side = config.imageSize / downsampleFactor(config);
  const grid = doc.grid as unknown;
  if (!Array.isArray(grid) || grid.length !== 2 || grid[0] !== side || grid[1] !== side) {
    fail(path, `grid ${JSON.stringify(grid)} does not match the config's [${side},${side}]`);
  }
  if (doc.codebookSize !== config.codebookSize) {
    fail(path, `codebookSize ${doc.codebookSize} ≠ config.codebookSize ${config.codebookSize}`);
  }
  const image = imageProblem(doc.image, config);
  if (image) fail(path, image);
  if (!isObject(doc.provenance)) fail(path, `provenance is not an object`);
  return {
    config,
    grid: [side, side],
    codebookSize: config.codebookSize,
    image: doc.image as unknown as TokenizerImage,
    provenance: doc.provenance,
  };
}

/** The state-dict entries a tokenizer file holds: all but the training-only statistics. */
function inferenceState(model: VqVae): Map<string, Tensor> {
  const out = new Map<string, Tensor>();
  for (const [name, t] of model.stateDict()) if (!TRAINING_ONLY.has(name)) out.set(name, t);
  return out;
}

function shapeText(dtype: string, shape: readonly number[]): string {
  return `${dtype}[${shape.join(",")}]`;
}

function nameList(names: string[], max = 4): string {
  return names.slice(0, max).join(", ") + (names.length > max ? `, … (${names.length})` : "");
}

/**
 * Checks `tensors` (from a file) against the model's inference state: every name present, none
 * extra, shapes and dtypes equal. Returns the entries to load.
 */
function checkTensors(
  tensors: Map<string, TensorRecord>,
  model: VqVae,
  path: string,
): Map<string, TensorRecord> {
  const expected = inferenceState(model);
  const missing = [...expected.keys()].filter((n) => !tensors.has(n));
  if (missing.length) fail(path, `missing tensor(s) ${nameList(missing)}`);
  const extra = [...tensors.keys()].filter((n) => !expected.has(n));
  if (extra.length) fail(path, `unexpected tensor(s) ${nameList(extra)}`);
  for (const [name, t] of expected) {
    const r = tensors.get(name)!;
    const dtypeOk = t.dtype === "f32"
      ? ["F32", "F16", "BF16"].includes(r.dtype)
      : r.dtype === t.dtype.toUpperCase();
    const shapeOk = r.shape.length === t.shape.length && r.shape.every((d, i) => d === t.shape[i]);
    if (!dtypeOk || !shapeOk) {
      fail(
        path,
        `tensor "${name}" is ${shapeText(r.dtype, r.shape)}, the config needs ` +
          shapeText(t.dtype.toUpperCase(), t.shape),
      );
    }
  }
  return tensors;
}

function checkImageInfo(image: TokenizerImage, config: ResolvedVqVaeConfig): void {
  const problem = imageProblem(image, config);
  if (problem) throw new Error(`peco: Tokenizer.fromModel: ${problem}`);
}

/**
 * Loads the model part ("model.*") of a training checkpoint (lib/train/checkpoint.ts) into a new
 * VqVae of `config`, ready for inference. Errors name the file.
 */
export async function loadTrainedVqVae(
  checkpoint: string,
  config: ResolvedVqVaeConfig,
): Promise<VqVae> {
  const { tensors } = await readSafetensors(checkpoint).catch((error) =>
    fail(checkpoint, `unreadable, truncated or corrupt (${(error as Error).message})`)
  );
  const prefix = "model.";
  const entries = new Map<string, TensorRecord>();
  for (const [name, r] of tensors) {
    if (name.startsWith(prefix)) entries.set(name.slice(prefix.length), r);
  }
  if (entries.size === 0) fail(checkpoint, `holds no "${prefix}*" tensors (not a VQ-VAE run)`);
  await initGpu();
  const model = new VqVae(config, config.quantizer.seed ?? 0);
  try {
    model.loadStateDict(entries, { source: checkpoint });
    await model.quantize.restore();
  } catch (error) {
    model.dispose();
    throw error;
  }
  return model.eval();
}

export class Tokenizer {
  private constructor(
    /** The wrapped VQ-VAE (inference only through this class). */
    readonly model: VqVae,
    readonly info: TokenizerInfo,
  ) {}

  /** Reads and validates a tokenizer file; every error is one line naming the file. */
  static async load(path: string): Promise<Tokenizer> {
    let file: Awaited<ReturnType<typeof readSafetensors>>;
    try {
      file = await readSafetensors(path);
    } catch (error) {
      const why = (error as Error).message.replace(/^peco: safetensors [^:]*: /, "");
      return fail(path, `unreadable, truncated or corrupt (${why})`);
    }
    const info = parseInfo(file.metadata, path);
    await initGpu();
    const model = new VqVae(info.config, info.config.quantizer.seed ?? 0);
    try {
      const entries = checkTensors(file.tensors, model, path);
      model.loadStateDict(entries, { source: path, strict: false });
      // The codebook is trained: never k-means it again, even in training mode.
      tidy(() =>
        model.loadStateDict({ "quantize.initted": full([1], 1, "i32") }, { strict: false })
      );
      model.quantize.initialized = true;
    } catch (error) {
      model.dispose();
      throw error;
    }
    return new Tokenizer(model.eval(), info);
  }

  /** Wraps a trained model (no copy: disposing the tokenizer disposes the model). */
  static fromModel(
    model: VqVae,
    info: Omit<TokenizerInfo, "config" | "grid" | "codebookSize">,
  ): Tokenizer {
    const config = model.config;
    const image = {
      channels: info.image.channels,
      size: info.image.size,
      mean: [...info.image.mean],
      std: [...info.image.std],
    };
    checkImageInfo(image, config);
    return new Tokenizer(model, {
      config,
      grid: [...model.tokenGrid] as [number, number],
      codebookSize: config.codebookSize,
      image,
      provenance: structuredClone(info.provenance),
    });
  }

  /** Writes the tokenizer file atomically (one readback of the weights). */
  async save(path: string): Promise<void> {
    const records = await fromGpuAll(inferenceState(this.model));
    const doc = { format: TOKENIZER_FORMAT, ...this.info };
    await writeSafetensors(path, records, { [TOKENIZER_META_KEY]: JSON.stringify(doc) });
  }

  /** The downsample factor f: token (i, j) covers pixels [i·f, (i+1)·f) × [j·f, (j+1)·f). */
  get downsampleFactor(): number {
    return this.model.downsampleFactor;
  }

  /** Tokens per image, h·w. */
  get tokensPerImage(): number {
    return this.info.grid[0] * this.info.grid[1];
  }

  /** Runs fn in eval mode without autograd, restoring the model's mode after. */
  private infer<T>(fn: () => T): T {
    const wasTraining = this.model.training;
    this.model.eval();
    try {
      return noGrad(() => tidy(fn));
    } finally {
      if (wasTraining) this.model.train();
    }
  }

  /** Images f32 [N, C, S, S] normalised as info.image → code ids i32 [N, h·w]. */
  encode(images: Tensor): Tensor {
    const { channels: c, size: s } = this.info.image;
    const sh = images.shape;
    if (images.dtype !== "f32" || images.rank !== 4 || sh[1] !== c || sh[2] !== s || sh[3] !== s) {
      throw new Error(
        `peco: Tokenizer.encode: images must be f32 [N, ${c}, ${s}, ${s}], got ${images.describe()}`,
      );
    }
    const n = sh[0];
    return this.infer(() => this.model.encodeIndices(images).view([n, this.tokensPerImage]));
  }

  /** Host images uint8 [n, C, S, S] (row-major) → code ids i32 [n, h·w] (upload, normalise, encode). */
  encodePixels(pixels: Uint8Array, n: number): Tensor {
    const { channels: c, size: s, mean, std } = this.info.image;
    if (!Number.isSafeInteger(n) || n < 0 || pixels.length !== n * c * s * s) {
      throw new Error(
        `peco: Tokenizer.encodePixels: ${pixels.length} bytes are not ${n} images [${c},${s},${s}]`,
      );
    }
    let batch: PixelBatch | null = null;
    try {
      batch = uploadPixels(pixels, n, c, s, s);
      const x = pixelsToFloat(batch, { mean, std });
      try {
        return this.encode(x);
      } finally {
        x.dispose();
      }
    } finally {
      batch?.pixels.dispose();
    }
  }

  private checkIds(op: string, ids: Tensor, tokens?: number): void {
    if (
      ids.dtype !== "i32" || ids.rank !== 2 || (tokens !== undefined && ids.shape[1] !== tokens)
    ) {
      const want = tokens === undefined ? "T" : String(tokens);
      throw new Error(`peco: Tokenizer.${op}: ids must be i32 [N, ${want}], got ${ids.describe()}`);
    }
  }

  /** Code ids i32 [N, h·w] (each in [0, K)) → images f32 [N, C, S, S] in the normalised space. */
  decode(ids: Tensor): Tensor {
    this.checkIds("decode", ids, this.tokensPerImage);
    const [h, w] = this.info.grid;
    return this.infer(() => this.model.decodeIndices(ids.view([ids.shape[0], h, w])));
  }

  /** Code ids i32 [N, T] → their codewords f32 [N, T, D]. */
  codewords(ids: Tensor): Tensor {
    this.checkIds("codewords", ids);
    const [n, t] = ids.shape;
    const d = this.info.config.codeDim;
    return this.infer(() => embedding(this.codebook(), ids.view([n * t])).view([n, t, d]));
  }

  /** The codebook f32 [K, D]: the live tensor (do not dispose). */
  codebook(): Tensor {
    return this.model.quantize.codebook;
  }

  dispose(): void {
    this.model.dispose();
  }
}
