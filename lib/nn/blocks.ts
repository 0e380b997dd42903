// Building blocks shared by the models: the transformer MLP and multi-head self-attention (timm /
// BEiT names), and the convolutional residual and attention blocks of taming-transformers'
// encoder/decoder (its names: norm1, conv1, nin_shortcut, q, k, v, proj_out).

import { Module } from "./module.ts";
import { Conv2d, GroupNorm, Linear } from "./layers.ts";
import type { Rng } from "../tensor/init.ts";
import { attention } from "../tensor/ops/attention.ts";
import { mlpGelu } from "../tensor/ops/mlp.ts";
import { add } from "../tensor/ops/elementwise.ts";
import { permute, reshape, slice } from "../tensor/ops/shape.ts";
import type { Tensor } from "../tensor/tensor.ts";

/** fc1 → GELU → fc2. */
export class Mlp extends Module {
  readonly fc1: Linear;
  readonly fc2: Linear;

  constructor(dim: number, hidden: number, rng: Rng) {
    super();
    this.fc1 = this.child("fc1", new Linear(dim, hidden, rng.fork("fc1")));
    this.fc2 = this.child("fc2", new Linear(hidden, dim, rng.fork("fc2")));
  }

  forward(x: Tensor): Tensor {
    const { fc1, fc2 } = this;
    return mlpGelu(x, fc1.weight, fc1.bias, fc2.weight, fc2.bias);
  }
}

/** Multi-head self-attention over tokens [B, T, C] with one qkv projection (timm layout). */
export class SelfAttention extends Module {
  readonly qkv: Linear;
  readonly proj: Linear;
  readonly headDim: number;

  constructor(readonly dim: number, readonly heads: number, rng: Rng, qkvBias = true) {
    super();
    if (dim % heads !== 0) {
      throw new Error(`peco: SelfAttention: dim ${dim} is not divisible by ${heads} heads`);
    }
    this.headDim = dim / heads;
    this.qkv = this.child("qkv", new Linear(dim, 3 * dim, rng.fork("qkv"), qkvBias));
    this.proj = this.child("proj", new Linear(dim, dim, rng.fork("proj")));
  }

  /** `bias`: an additive attention bias broadcastable to [B, heads, T, T] (e.g. relative position). */
  forward(x: Tensor, bias?: Tensor): Tensor {
    const [b, t, c] = x.shape;
    // [B, T, 3·C] → [3, B, heads, T, headDim]
    const qkv = permute(reshape(this.qkv.forward(x), [b, t, 3, this.heads, this.headDim]), [
      2,
      0,
      3,
      1,
      4,
    ]);
    const part = (i: number) => reshape(slice(qkv, 0, i, i + 1), [b, this.heads, t, this.headDim]);
    const out = attention(part(0), part(1), part(2), { bias });
    return this.proj.forward(reshape(permute(out, [0, 2, 1, 3]), [b, t, c]));
  }
}

/** GroupNorm(32 groups or fewer when channels are few, eps 1e-6), as taming's Normalize. */
export function normalize(channels: number, groups = 32): GroupNorm {
  const g = Math.min(groups, channels);
  return new GroupNorm(channels % g === 0 ? g : 1, channels, 1e-6);
}

/** norm → swish → conv3×3, twice, plus a (1×1 when channels change) shortcut. */
export class ResnetBlock extends Module {
  readonly norm1: GroupNorm;
  readonly conv1: Conv2d;
  readonly norm2: GroupNorm;
  readonly conv2: Conv2d;
  readonly ninShortcut: Conv2d | null;

  constructor(inChannels: number, outChannels: number, rng: Rng, groups = 32) {
    super();
    this.norm1 = this.child("norm1", normalize(inChannels, groups));
    this.conv1 = this.child(
      "conv1",
      new Conv2d(inChannels, outChannels, 3, rng.fork("conv1"), { padding: 1 }),
    );
    this.norm2 = this.child("norm2", normalize(outChannels, groups));
    this.conv2 = this.child(
      "conv2",
      new Conv2d(outChannels, outChannels, 3, rng.fork("conv2"), { padding: 1 }),
    );
    this.ninShortcut = inChannels === outChannels
      ? null
      : this.child("nin_shortcut", new Conv2d(inChannels, outChannels, 1, rng.fork("nin")));
  }

  forward(x: Tensor): Tensor {
    let h = this.conv1.forward(this.norm1.forwardSilu(x));
    h = this.conv2.forward(this.norm2.forwardSilu(h));
    return add(this.ninShortcut ? this.ninShortcut.forward(x) : x, h);
  }
}

/** Single-head self-attention over the pixels of a feature map, scale c^−½ (taming's AttnBlock). */
export class ConvAttnBlock extends Module {
  readonly norm: GroupNorm;
  readonly q: Conv2d;
  readonly k: Conv2d;
  readonly v: Conv2d;
  readonly projOut: Conv2d;

  constructor(readonly channels: number, rng: Rng, groups = 32) {
    super();
    this.norm = this.child("norm", normalize(channels, groups));
    const conv = (name: string) => new Conv2d(channels, channels, 1, rng.fork(name));
    this.q = this.child("q", conv("q"));
    this.k = this.child("k", conv("k"));
    this.v = this.child("v", conv("v"));
    this.projOut = this.child("proj_out", conv("proj_out"));
  }

  forward(x: Tensor): Tensor {
    const [b, c, h, w] = x.shape;
    const n = this.norm.forward(x);
    // [B, C, H, W] → [B, 1, HW, C]: one head over the pixels.
    const tokens = (t: Tensor) =>
      reshape(permute(reshape(t, [b, c, h * w]), [0, 2, 1]), [b, 1, h * w, c]);
    const out = attention(
      tokens(this.q.forward(n)),
      tokens(this.k.forward(n)),
      tokens(this.v.forward(n)),
    );
    const back = reshape(permute(reshape(out, [b, h * w, c]), [0, 2, 1]), [b, c, h, w]);
    return add(x, this.projOut.forward(back));
  }
}
