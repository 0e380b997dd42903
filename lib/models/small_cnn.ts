// The engine demo's classifier: conv stem → residual block → stride-2 conv → residual block →
// pixel self-attention → global average pool → linear head. Small, but it exercises every kind
// of layer the tokenizer uses (conv, group norm, swish, attention).

import { Module } from "../nn/module.ts";
import { Conv2d, Linear } from "../nn/layers.ts";
import { ConvAttnBlock, normalize, ResnetBlock } from "../nn/blocks.ts";
import type { Rng } from "../tensor/init.ts";
import { silu } from "../tensor/ops/elementwise.ts";
import { mean } from "../tensor/ops/reduce.ts";
import { reshape } from "../tensor/ops/shape.ts";
import type { Tensor } from "../tensor/tensor.ts";
import type { GroupNorm } from "../nn/layers.ts";

export class SmallCnn extends Module {
  readonly convIn: Conv2d;
  readonly block1: ResnetBlock;
  readonly down: Conv2d;
  readonly block2: ResnetBlock;
  readonly attn: ConvAttnBlock;
  readonly normOut: GroupNorm;
  readonly head: Linear;

  constructor(inChannels: number, classes: number, rng: Rng, width = 16, groups = 8) {
    super();
    const w2 = 2 * width;
    this.convIn = this.child(
      "conv_in",
      new Conv2d(inChannels, width, 3, rng.fork("conv_in"), { padding: 1 }),
    );
    this.block1 = this.child("block1", new ResnetBlock(width, width, rng.fork("block1"), groups));
    this.down = this.child(
      "down",
      new Conv2d(width, w2, 3, rng.fork("down"), {
        stride: 2,
        padding: { top: 0, bottom: 1, left: 0, right: 1 },
      }),
    );
    this.block2 = this.child("block2", new ResnetBlock(w2, w2, rng.fork("block2"), groups));
    this.attn = this.child("attn", new ConvAttnBlock(w2, rng.fork("attn"), groups));
    this.normOut = this.child("norm_out", normalize(w2, groups));
    this.head = this.child("head", new Linear(w2, classes, rng.fork("head")));
  }

  /** x [B, C, H, W] → logits [B, classes]. */
  forward(x: Tensor): Tensor {
    let h = this.block1.forward(this.convIn.forward(x));
    h = this.attn.forward(this.block2.forward(this.down.forward(h)));
    h = silu(this.normOut.forward(h));
    const [b, c, hh, ww] = h.shape;
    const pooled = mean(reshape(h, [b, c, hh * ww]), 2);
    return this.head.forward(pooled);
  }
}
