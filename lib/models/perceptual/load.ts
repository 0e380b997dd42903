// Building and loading the external perceptual networks by kind, from safetensors state dicts with
// PyTorch names. Loading is strict: one error, naming the file, lists every missing, unexpected and
// mismatched tensor. Only the classifier or projection head a checkpoint may carry is set aside (the
// features do not use it), and with a name prefix (a MoCo v3 training checkpoint's
// "module.base_encoder.") everything outside it (momentum encoder, predictor); the names set aside
// are returned, so nothing is skipped silently, and never read into memory. The architecture is
// read from the file's shapes (widths, depth, patch, position grid) unless given.

import { readSafetensorsWhere, type TensorRecord } from "../../io/safetensors.ts";
import { freeze, type PerceptualModule } from "./net.ts";
import { ResNet50, RESNET50_DEFAULT, type ResNet50Config } from "./resnet50.ts";
import { Vgg16, VGG16_DEFAULT, type Vgg16Config } from "./vgg16.ts";
import { VIT_B_DEFAULT, VitB, type VitConfig } from "./vit.ts";

export interface PerceptualConfigs {
  "vgg16": Vgg16Config;
  "resnet50": ResNet50Config;
  "vit-b": VitConfig;
}

export type PerceptualKind = keyof PerceptualConfigs;
export const PERCEPTUAL_KINDS: readonly PerceptualKind[] = ["vgg16", "resnet50", "vit-b"];

/** Top-level names of the classifier heads (torchvision VGG / ResNet, timm and MoCo v3 ViT). */
const HEADS: Record<PerceptualKind, string[]> = {
  "vgg16": ["classifier"],
  "resnet50": ["fc"],
  "vit-b": ["head"],
};

function isKind(kind: string): kind is PerceptualKind {
  return (PERCEPTUAL_KINDS as readonly string[]).includes(kind);
}

/**
 * A frozen network of `kind` with its full-size architecture, or `config` overriding parts of it
 * (tests use reduced widths and depths with the same layout and names). Weights are random until
 * loaded.
 */
export function createPerceptualNet<K extends PerceptualKind>(
  kind: K,
  config: Partial<PerceptualConfigs[K]> = {},
): PerceptualModule {
  if (!isKind(kind)) {
    throw new Error(
      `peco: perceptual network "${kind}" is unknown (${PERCEPTUAL_KINDS.join(", ")})`,
    );
  }
  const k: PerceptualKind = kind;
  let net: PerceptualModule;
  if (k === "vgg16") net = new Vgg16({ ...VGG16_DEFAULT, ...config as Partial<Vgg16Config> });
  else if (k === "resnet50") {
    net = new ResNet50({ ...RESNET50_DEFAULT, ...config as Partial<ResNet50Config> });
  } else net = new VitB({ ...VIT_B_DEFAULT, ...config as Partial<VitConfig> });
  return freeze(net);
}

export interface LoadPerceptualOptions<K extends PerceptualKind> {
  /** The architecture; by default read from the file's shapes (inferPerceptualConfig). */
  config?: Partial<PerceptualConfigs[K]>;
  /**
   * Use only the tensors under this name prefix, with it removed (e.g. "module.base_encoder." for
   * a MoCo v3 training checkpoint converted to safetensors).
   */
  prefix?: string;
}

export interface LoadedPerceptualNet {
  net: PerceptualModule;
  /** The architecture loaded (given, or read from the file's shapes). */
  config: Record<string, unknown>;
  /**
   * Names in the file that were set aside: the classifier or projection head, and any outside
   * `prefix` (a MoCo checkpoint's momentum encoder and predictor).
   */
  ignored: string[];
  metadata: Record<string, string>;
}

/**
 * Reads a state dict from a safetensors file into a frozen network of `kind`. Only the tensors
 * under `prefix` outside the head are read; the file's other names are returned as `ignored`.
 */
export async function loadPerceptualNet<K extends PerceptualKind>(
  kind: K,
  path: string,
  { config, prefix = "" }: LoadPerceptualOptions<K> = {},
): Promise<LoadedPerceptualNet> {
  const wanted = (name: string) => localName(name, HEADS[kind], prefix) !== null;
  const file = await readSafetensorsWhere(path, wanted);
  const kept = new Map<string, TensorRecord>();
  for (const [name, record] of file.tensors) kept.set(name.slice(prefix.length), record);
  const ignored = file.skipped.map((e) => e.name);
  const what = prefix ? `${path} (prefix "${prefix}")` : path;
  if (kept.size === 0) {
    throw new Error(
      `peco: ${what}: no tensor of the network${prefix ? ` under "${prefix}"` : ""} (the file ` +
        `holds ${ignored.length}: ${ignored.slice(0, 4).join(", ")}${
          ignored.length > 4 ? ", …" : ""
        })`,
    );
  }
  const resolved = config ?? inferPerceptualConfig(kind, kept) as Partial<PerceptualConfigs[K]>;
  const net = createPerceptualNet(kind, resolved);
  try {
    net.loadStateDict(kept, { source: what });
    const built = (net as unknown as { config: Record<string, unknown> }).config;
    return { net, config: { ...built }, ignored, metadata: file.metadata };
  } catch (error) {
    net.dispose();
    throw error;
  }
}

/** `name` without `prefix`, or null when it lies outside the prefix or in a head. */
function localName(name: string, heads: string[], prefix: string): string | null {
  if (!name.startsWith(prefix)) return null;
  const local = name.slice(prefix.length);
  return heads.includes(local.split(".")[0]) ? null : local;
}

/**
 * The set-aside names grouped for a log line, at the depth of `prefix`: with "module.base_encoder."
 * "module.base_encoder.head.* (16), module.momentum_encoder.* (168), module.predictor.* (10)";
 * without one, "fc.* (2)".
 */
export function summarizeNames(names: string[], prefix = ""): string {
  const depth = prefix.split(".").filter((p) => p).length;
  const groups = new Map<string, number>();
  for (const name of names) {
    const inside = prefix !== "" && name.startsWith(prefix);
    const key = inside
      ? prefix + name.slice(prefix.length).split(".")[0]
      : name.split(".").slice(0, Math.max(depth, 1)).join(".");
    groups.set(key, (groups.get(key) ?? 0) + 1);
  }
  return [...groups].map(([key, count]) => `${key}.* (${count})`).join(", ");
}

// ---- the architecture from the file's shapes ---------------------------------------------------

/** First index of each VGG16 stage's convolutions in torchvision's `features`. */
const VGG_STAGE_STARTS = [0, 5, 10, 17, 24];
/** timm's ViTs have 64 channels per attention head (ViT-S 6, ViT-B 12, ViT-L 16 heads). */
const VIT_HEAD_DIM = 64;

/** Distinct values of the name part after `prefix` ("blocks." → block indices). */
function countIndices(names: Iterable<string>, prefix: string): number {
  const seen = new Set<string>();
  for (const n of names) if (n.startsWith(prefix)) seen.add(n.slice(prefix.length).split(".")[0]);
  return seen.size;
}

/** The blocks at a quarter, half, three quarters and the end of the depth (ViT-B: 3, 6, 9, 12). */
export function vitTaps(depth: number): number[] {
  return [...new Set([1, 2, 3, 4].map((q) => Math.max(1, Math.ceil((depth * q) / 4))))];
}

/**
 * The architecture of `kind` read from a state dict's shapes (full-size torchvision / timm files
 * give the defaults; narrower or shallower ones with the same layout load too). What the shapes do
 * not tell is left to the defaults, and the strict load then names every tensor that disagrees.
 */
export function inferPerceptualConfig(
  kind: PerceptualKind,
  tensors: Map<string, { shape: number[] }>,
): Partial<PerceptualConfigs[PerceptualKind]> {
  const shape = (name: string) => tensors.get(name)?.shape;
  if (kind === "vgg16") {
    const widths = VGG_STAGE_STARTS.map((i) => shape(`features.${i}.weight`)?.[0]);
    return widths.every((w) => w !== undefined) ? { widths: widths as number[] } : {};
  }
  if (kind === "resnet50") {
    const width = shape("conv1.weight")?.[0];
    const blocks = [1, 2, 3, 4].map((s) => countIndices(tensors.keys(), `layer${s}.`));
    return {
      ...(width !== undefined ? { width } : {}),
      ...(blocks.every((b) => b > 0) ? { blocks } : {}),
    };
  }
  const dim = shape("cls_token")?.[2];
  const patch = shape("patch_embed.proj.weight")?.[2];
  const positions = shape("pos_embed")?.[1];
  const hidden = shape("blocks.0.mlp.fc1.weight")?.[0];
  const depth = countIndices(tensors.keys(), "blocks.");
  if (dim === undefined || patch === undefined || positions === undefined || depth === 0) return {};
  const grid = Math.round(Math.sqrt(positions - 1));
  if (dim % VIT_HEAD_DIM !== 0) {
    throw new Error(
      `peco: vit-b: the shapes do not tell the attention heads of a ${dim}-wide ViT (timm's have ` +
        `${VIT_HEAD_DIM} channels per head)`,
    );
  }
  return {
    dim,
    patchSize: patch,
    ...(grid * grid === positions - 1 ? { imageSize: grid * patch } : {}),
    depth,
    heads: dim / VIT_HEAD_DIM,
    ...(hidden !== undefined && hidden % dim === 0 ? { mlpRatio: hidden / dim } : {}),
    taps: vitTaps(depth),
  };
}
