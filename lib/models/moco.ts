// The built-in perceptual network: a small convolutional encoder trained self-supervised with
// MoCo v3 (Chen, Xie & He 2021), the paper's choice of perceptual network, sized for MNIST-like data
// on a software GPU.
//
// MoCo v3: a base encoder (backbone + projector MLP) followed by a predictor MLP produces queries q;
// a momentum encoder (backbone + projector, an EMA of the base one, no gradients) produces keys k.
// For two augmented views x1, x2 of the same images the loss is symmetric InfoNCE:
//   L = ctr(q1, k2) + ctr(q2, k1),  ctr(q, k) = 2τ · CE(norm(q)·norm(k)ᵀ / τ, diagonal targets)
// (the 2τ factor is MoCo v3's, it makes the gradient scale independent of τ). The projector and
// predictor follow MoCo v3: Linear → BatchNorm → ReLU → Linear → BatchNorm (the predictor's last
// layer has no BatchNorm), Linear layers without bias. The momentum follows MoCo v3's cosine
// schedule from its base value to 1.
//
// The backbone (`MocoEncoder`) is a PerceptualNet: images [N, 3, H, W] in [−1, 1] → the output of
// each stage (a stride-2 conv and `depth` stride-1 convs, each with GroupNorm + ReLU). Its weights
// are saved alone as `encoder.safetensors` with its config in the metadata; `loadBuiltinPerceptual`
// reads them back as the frozen network of `--perceptual builtin`.

import { join } from "node:path";
import { Module, type ModuleList } from "../nn/module.ts";
import { BatchNorm2d, Conv2d, GroupNorm, Linear } from "../nn/layers.ts";
import { Rng } from "../tensor/init.ts";
import { readSafetensors } from "../io/safetensors.ts";
import { tensor } from "../tensor/ops/creation.ts";
import {
  add,
  addScalar,
  axpyInPlace,
  mul,
  mulScalar,
  relu,
  rsqrt,
  square,
  sub,
} from "../tensor/ops/elementwise.ts";
import { crossEntropy } from "../tensor/ops/loss.ts";
import { matmul } from "../tensor/ops/matmul.ts";
import { mean, sum } from "../tensor/ops/reduce.ts";
import { reshape } from "../tensor/ops/shape.ts";
import { noGrad, type Tensor, tidy } from "../tensor/tensor.ts";
import { checkImages, freeze, type PerceptualNet } from "./perceptual/net.ts";

/** The backbone's shape: channels of each stage and stride-1 convs after each stride-2 conv. */
export interface MocoEncoderConfig {
  widths: number[];
  depth: number;
  groups: number;
}

export const MOCO_ENCODER_DEFAULT: MocoEncoderConfig = {
  widths: [16, 32, 64],
  depth: 1,
  groups: 8,
};

/** The MLP heads: hidden width and output (embedding) width. */
export interface MocoHeadConfig {
  hidden: number;
  dim: number;
}

export const MOCO_HEAD_DEFAULT: MocoHeadConfig = { hidden: 256, dim: 64 };

/** The file the train-perceptual stage writes the backbone to, and its metadata key. */
export const ENCODER_FILE = "encoder.safetensors";
export const ENCODER_META_KEY = "peco.moco_encoder";

function checkConfig(c: MocoEncoderConfig): void {
  const ok = c.widths.length >= 1 && Number.isInteger(c.depth) && c.depth >= 0 &&
    c.widths.every((w) => Number.isInteger(w) && w >= 1 && w % c.groups === 0);
  if (!ok) {
    throw new Error(
      `peco: MocoEncoder: config ${JSON.stringify(c)} needs ≥ 1 stage, depth ≥ 0 and widths ` +
        `divisible by groups`,
    );
  }
}

/** Conv → GroupNorm → ReLU. */
class ConvNormAct extends Module {
  readonly conv: Conv2d;
  readonly norm: GroupNorm;

  constructor(cin: number, cout: number, stride: number, groups: number, rng: Rng) {
    super();
    this.conv = this.child("conv", new Conv2d(cin, cout, 3, rng, { stride, padding: 1 }));
    this.norm = this.child("norm", new GroupNorm(groups, cout));
  }

  forward(x: Tensor): Tensor {
    return this.norm.forwardRelu(this.conv.forward(x));
  }
}

/** One resolution: a stride-2 ConvNormAct then `depth` stride-1 ones. */
class Stage extends Module {
  readonly layers: ModuleList<ConvNormAct>;

  constructor(cin: number, cout: number, c: MocoEncoderConfig, rng: Rng) {
    super();
    const layers = [new ConvNormAct(cin, cout, 2, c.groups, rng.fork("down"))];
    for (let i = 0; i < c.depth; i++) {
      layers.push(new ConvNormAct(cout, cout, 1, c.groups, rng.fork(`conv ${i}`)));
    }
    this.layers = this.child("layers", layers);
  }

  forward(x: Tensor): Tensor {
    for (const layer of this.layers) x = layer.forward(x);
    return x;
  }
}

/** The backbone: a PerceptualNet tapping the output of every stage. */
export class MocoEncoder extends Module implements PerceptualNet {
  readonly kind = "builtin";
  readonly stages: ModuleList<Stage>;

  constructor(readonly config: MocoEncoderConfig, rng: Rng) {
    super();
    checkConfig(config);
    const stages: Stage[] = [];
    let cin = 3;
    config.widths.forEach((w, i) => {
      stages.push(new Stage(cin, w, config, rng.fork(`stage ${i}`)));
      cin = w;
    });
    this.stages = this.child("stages", stages);
  }

  /** Channels of the pooled representation (the last stage's width). */
  get dim(): number {
    return this.config.widths[this.config.widths.length - 1];
  }

  features(x: Tensor): Tensor[] {
    checkImages("MocoEncoder.features", x);
    const out: Tensor[] = [];
    for (const stage of this.stages) out.push(x = stage.forward(x));
    return out;
  }

  /** The representation: the last stage averaged over positions → [N, dim]. */
  embed(x: Tensor): Tensor {
    const last = this.features(x).at(-1)!;
    const [n, c, h, w] = last.shape;
    return mean(reshape(last, [n, c, h * w]), 2);
  }
}

/** Linear → BatchNorm → ReLU → Linear (→ BatchNorm when `lastNorm`), as MoCo v3's MLPs. */
export class MlpHead extends Module {
  readonly fc1: Linear;
  readonly bn1: BatchNorm2d;
  readonly fc2: Linear;
  readonly bn2: BatchNorm2d | null;

  constructor(cin: number, hidden: number, cout: number, lastNorm: boolean, rng: Rng) {
    super();
    this.fc1 = this.child("fc1", new Linear(cin, hidden, rng.fork("fc1"), false));
    this.bn1 = this.child("bn1", new BatchNorm2d(hidden));
    this.fc2 = this.child("fc2", new Linear(hidden, cout, rng.fork("fc2"), false));
    this.bn2 = lastNorm ? this.child("bn2", new BatchNorm2d(cout)) : null;
  }

  /** x [N, cin] → [N, cout] (BatchNorm over the batch: N ≥ 2 in training). */
  forward(x: Tensor): Tensor {
    const h = this.fc2.forward(relu(this.bn1.forward(this.fc1.forward(x))));
    return this.bn2 ? this.bn2.forward(h) : h;
  }
}

/** Backbone + projector: the base encoder, and (same layout) the momentum encoder. */
export class ProjectedEncoder extends Module {
  readonly backbone: MocoEncoder;
  readonly projector: MlpHead;

  constructor(encoder: MocoEncoderConfig, head: MocoHeadConfig, rng: Rng) {
    super();
    this.backbone = this.child("backbone", new MocoEncoder(encoder, rng.fork("backbone")));
    this.projector = this.child(
      "projector",
      new MlpHead(this.backbone.dim, head.hidden, head.dim, true, rng.fork("projector")),
    );
  }

  forward(x: Tensor): Tensor {
    return this.projector.forward(this.backbone.embed(x));
  }
}

/** Rows scaled to unit length: x / sqrt(Σ x² + eps). */
export function normalizeRows(x: Tensor, eps = 1e-12): Tensor {
  return mul(x, rsqrt(addScalar(sum(square(x), 1, true), eps)));
}

/**
 * MoCo v3's contrastive loss of queries q [N, D] against keys k [N, D] (k carries no gradient):
 * 2τ · CE(norm(q)·norm(k)ᵀ / τ, targets = the diagonal).
 */
export function mocoContrastiveLoss(q: Tensor, k: Tensor, tau: number): Tensor {
  if (q.rank !== 2 || k.rank !== 2 || q.shape[0] !== k.shape[0] || q.shape[1] !== k.shape[1]) {
    throw new Error(
      `peco: mocoContrastiveLoss: q ${q.describe()} and k ${k.describe()} must both be [N, D]`,
    );
  }
  if (!(tau > 0)) throw new Error(`peco: mocoContrastiveLoss: tau must be > 0, got ${tau}`);
  const n = q.shape[0];
  const logits = mulScalar(matmul(normalizeRows(q), normalizeRows(k), { transB: true }), 1 / tau);
  const targets = tensor(Int32Array.from({ length: n }, (_, i) => i), [n], "i32");
  return mulScalar(crossEntropy(logits, targets), 2 * tau);
}

/** MoCo v3's momentum at `step` of `total`: from `base` up to 1 along half a cosine. */
export function momentumAt(step: number, total: number, base: number): number {
  return 1 - (1 - base) * (Math.cos(Math.PI * step / Math.max(total, 1)) + 1) / 2;
}

/** The whole MoCo v3 model; names follow MoCo v3's (base_encoder, momentum_encoder, predictor). */
export class MocoV3 extends Module {
  readonly baseEncoder: ProjectedEncoder;
  readonly momentumEncoder: ProjectedEncoder;
  readonly predictor: MlpHead;

  constructor(encoder: MocoEncoderConfig, head: MocoHeadConfig, rng: Rng) {
    super();
    this.baseEncoder = this.child("base_encoder", new ProjectedEncoder(encoder, head, rng));
    this.momentumEncoder = this.child(
      "momentum_encoder",
      new ProjectedEncoder(encoder, head, rng),
    );
    this.predictor = this.child(
      "predictor",
      new MlpHead(head.dim, head.hidden, head.dim, false, rng.fork("predictor")),
    );
    // The momentum encoder starts as a copy of the base one (same rng) and is never optimised.
    for (const p of this.momentumEncoder.parameters()) p.requiresGrad = false;
  }

  /** What the optimizer updates: base encoder and predictor. */
  trainableParameters(): Tensor[] {
    return [...this.baseEncoder.parameters(), ...this.predictor.parameters()];
  }

  /** The symmetric loss of two views [N, 3, H, W] of the same images. */
  loss(x1: Tensor, x2: Tensor, tau: number): Tensor {
    const q1 = this.predictor.forward(this.baseEncoder.forward(x1));
    const q2 = this.predictor.forward(this.baseEncoder.forward(x2));
    const [k1, k2] = noGrad(
      () => [this.momentumEncoder.forward(x1), this.momentumEncoder.forward(x2)],
    );
    const l1 = mocoContrastiveLoss(q1, k2, tau);
    const l2 = mocoContrastiveLoss(q2, k1, tau);
    return add(l1, l2);
  }

  /** momentum ← m·momentum + (1 − m)·base for every parameter (recorded, no autograd). */
  updateMomentum(m: number): void {
    const base = this.baseEncoder.namedParameters();
    noGrad(() =>
      tidy(() => {
        for (const [name, pm] of this.momentumEncoder.namedParameters()) {
          axpyInPlace(pm, sub(base.get(name)!, pm), 1 - m);
        }
      })
    );
  }
}

/**
 * The frozen built-in perceptual network of a train-perceptual output folder (or of an
 * encoder.safetensors file): the backbone with the config recorded in the file's metadata.
 */
export async function loadBuiltinPerceptual(dirOrFile: string): Promise<MocoEncoder> {
  const path = dirOrFile.endsWith(".safetensors") ? dirOrFile : join(dirOrFile, ENCODER_FILE);
  let records, metadata;
  try {
    ({ tensors: records, metadata } = await readSafetensors(path));
  } catch (error) {
    throw new Error(
      `peco: builtin perceptual network: cannot read ${path} (${(error as Error).message})`,
    );
  }
  const text = metadata[ENCODER_META_KEY];
  if (!text) {
    throw new Error(
      `peco: builtin perceptual network: ${path} has no "${ENCODER_META_KEY}" metadata ` +
        `(not written by train-perceptual)`,
    );
  }
  const config = JSON.parse(text) as MocoEncoderConfig;
  const net = new MocoEncoder(config, new Rng(0));
  try {
    net.loadStateDict(records, { source: path });
  } catch (error) {
    net.dispose();
    throw error;
  }
  return freeze(net);
}

/** Writes the backbone as a safetensors file with its config in the metadata. */
export async function saveEncoder(encoder: MocoEncoder, path: string): Promise<void> {
  await encoder.saveSafetensors(path, { [ENCODER_META_KEY]: JSON.stringify(encoder.config) });
}
