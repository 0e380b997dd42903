// Building and loading the external perceptual networks by kind, from safetensors state dicts with
// PyTorch names. Loading is strict: one error, naming the file, lists every missing, unexpected and
// mismatched tensor. Only the classifier head a checkpoint may carry is set aside (the features do
// not use it), and the names set aside are returned, so nothing is skipped silently.

import type { Module } from "../../nn/module.ts";
import { readSafetensors, type TensorRecord } from "../../io/safetensors.ts";
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
  config?: Partial<PerceptualConfigs[K]>;
  /**
   * Use only the tensors under this name prefix, with it removed (e.g. "module.base_encoder." for
   * a MoCo v3 training checkpoint converted to safetensors).
   */
  prefix?: string;
}

export interface LoadedPerceptualNet {
  net: PerceptualModule;
  /** Names in the file that were set aside: the classifier head, and any outside `prefix`. */
  ignored: string[];
  metadata: Record<string, string>;
}

/** Reads a state dict from a safetensors file into a frozen network of `kind`. */
export async function loadPerceptualNet<K extends PerceptualKind>(
  kind: K,
  path: string,
  { config, prefix = "" }: LoadPerceptualOptions<K> = {},
): Promise<LoadedPerceptualNet> {
  const net = createPerceptualNet(kind, config);
  try {
    const { tensors, metadata } = await readSafetensors(path);
    const ignored = loadInto(net, tensors, HEADS[kind], prefix, path);
    return { net, ignored, metadata };
  } catch (error) {
    net.dispose();
    throw error;
  }
}

/** Loads the records into `net` (strict), setting aside heads and names outside `prefix`. */
export function loadInto(
  net: Module,
  tensors: Map<string, TensorRecord>,
  heads: string[],
  prefix: string,
  source: string,
): string[] {
  const kept = new Map<string, TensorRecord>();
  const ignored: string[] = [];
  for (const [name, record] of tensors) {
    const local = name.startsWith(prefix) ? name.slice(prefix.length) : null;
    if (local === null || heads.includes(local.split(".")[0])) ignored.push(name);
    else kept.set(local, record);
  }
  const what = prefix ? `${source} (prefix "${prefix}")` : source;
  net.loadStateDict(kept, { source: what });
  return ignored;
}
