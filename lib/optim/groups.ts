// Parameter groups as BEiT / MAE fine-tuning builds them: no weight decay for 1-D parameters,
// biases and names matching given patterns; optional layer-wise lr decay, where the parameters of
// layer i (0 embeddings, k+1 for block k, L+1 head) get lr scale decay^(L+1−i).

import type { Tensor } from "../tensor/tensor.ts";
import type { ParamGroupSpec } from "./optimizer.ts";

/** Names that get no weight decay in BEiT: position embeddings, special tokens, bias tables. */
export const DEFAULT_NO_DECAY: readonly string[] = [
  "pos_embed",
  "cls_token",
  "mask_token",
  "relative_position_bias_table",
];

export interface GroupOptions {
  weightDecay: number;
  /** A name matching one (as a substring, or a RegExp) gets no decay; default DEFAULT_NO_DECAY. */
  noDecay?: readonly (string | RegExp)[];
  /** Layer-wise lr decay factor; omitted: every group has lr scale 1. */
  layerDecay?: number;
  /** L, the number of blocks (layer ids run 0..L+1); needed with layerDecay. */
  numLayers?: number;
  /** Layer id of a parameter name; needed with layerDecay (e.g. `vitLayerId(L)` of lib/models/beit.ts). */
  layerId?: (name: string) => number;
}

export type NamedParams = Iterable<readonly [string, Tensor]> | Record<string, Tensor>;

/** True when the parameter should get weight decay. */
export function decays(
  name: string,
  p: Tensor,
  noDecay: readonly (string | RegExp)[] = DEFAULT_NO_DECAY,
): boolean {
  if (p.rank <= 1 || name === "bias" || name.endsWith(".bias")) return false;
  return !noDecay.some((pattern) =>
    typeof pattern === "string" ? name.includes(pattern) : pattern.test(name)
  );
}

/**
 * Splits named parameters into groups by (layer, decay or not), in order of first appearance:
 * names `layer{i}.decay` / `layer{i}.no_decay`, or `decay` / `no_decay` without layer decay.
 */
export function paramGroups(named: NamedParams, options: GroupOptions): ParamGroupSpec[] {
  const { weightDecay, noDecay = DEFAULT_NO_DECAY, layerDecay, numLayers, layerId } = options;
  if (!(weightDecay >= 0)) {
    throw new Error(`peco: paramGroups: weightDecay must be ≥ 0, got ${weightDecay}`);
  }
  if (layerDecay !== undefined) {
    if (!(layerDecay > 0)) {
      throw new Error(`peco: paramGroups: layerDecay must be > 0, got ${layerDecay}`);
    }
    if (!layerId || !Number.isInteger(numLayers) || numLayers! < 0) {
      throw new Error("peco: paramGroups: layerDecay needs layerId and an integer numLayers ≥ 0");
    }
  }
  const entries = Symbol.iterator in named
    ? [...(named as Iterable<readonly [string, Tensor]>)]
    : Object.entries(named);
  const groups = new Map<string, ParamGroupSpec & { params: Tensor[] }>();
  for (const [name, p] of entries) {
    const decay = decays(name, p, noDecay);
    let lrScale = 1;
    let prefix = "";
    if (layerDecay !== undefined) {
      const L = numLayers!;
      const id = layerId!(name);
      if (!Number.isInteger(id) || id < 0 || id > L + 1) {
        throw new Error(`peco: paramGroups: layer id ${id} of "${name}" is outside 0..${L + 1}`);
      }
      lrScale = layerDecay ** (L + 1 - id);
      prefix = `layer${id}.`;
    }
    const key = prefix + (decay ? "decay" : "no_decay");
    let group = groups.get(key);
    if (!group) {
      group = { name: key, params: [], lrScale, weightDecay: decay ? weightDecay : 0 };
      groups.set(key, group);
    }
    group.params.push(p);
  }
  return [...groups.values()];
}
