// Basic layers with PyTorch's parameter names and default initialisation, so their state dicts
// load from and into PyTorch unchanged.

import { Module } from "./module.ts";
import { normal, type Rng, uniform } from "../tensor/init.ts";
import { full, ones, zeros } from "../tensor/ops/creation.ts";
import { linear } from "../tensor/ops/matmul.ts";
import { conv2d, type Padding } from "../tensor/ops/conv.ts";
import { batchNorm, groupNorm, layerNorm } from "../tensor/ops/norm.ts";
import { embedding } from "../tensor/ops/shape.ts";
import type { Tensor } from "../tensor/tensor.ts";

/** PyTorch's default for Linear and Conv2d: U(±1/√fan_in) for weight and bias. */
function fanInUniform(shape: number[], fanIn: number, rng: Rng): Tensor {
  const bound = 1 / Math.sqrt(fanIn);
  return uniform(shape, -bound, bound, rng);
}

export class Linear extends Module {
  readonly weight: Tensor;
  readonly bias: Tensor | null;

  constructor(readonly inFeatures: number, readonly outFeatures: number, rng: Rng, bias = true) {
    super();
    this.weight = this.param("weight", fanInUniform([outFeatures, inFeatures], inFeatures, rng));
    this.bias = bias ? this.param("bias", fanInUniform([outFeatures], inFeatures, rng)) : null;
  }

  forward(x: Tensor): Tensor {
    return linear(x, this.weight, this.bias);
  }
}

export interface Conv2dConfig {
  stride?: number;
  padding?: number | Padding;
  bias?: boolean;
}

export class Conv2d extends Module {
  readonly weight: Tensor;
  readonly bias: Tensor | null;
  readonly stride: number;
  readonly padding: number | Padding;

  constructor(
    readonly inChannels: number,
    readonly outChannels: number,
    readonly kernelSize: number,
    rng: Rng,
    { stride = 1, padding = 0, bias = true }: Conv2dConfig = {},
  ) {
    super();
    const fanIn = inChannels * kernelSize * kernelSize;
    this.weight = this.param(
      "weight",
      fanInUniform([outChannels, inChannels, kernelSize, kernelSize], fanIn, rng),
    );
    this.bias = bias ? this.param("bias", fanInUniform([outChannels], fanIn, rng)) : null;
    this.stride = stride;
    this.padding = padding;
  }

  forward(x: Tensor): Tensor {
    return conv2d(x, this.weight, this.bias, { stride: this.stride, padding: this.padding });
  }
}

export class LayerNorm extends Module {
  readonly weight: Tensor;
  readonly bias: Tensor;

  constructor(readonly dim: number, readonly eps = 1e-5) {
    super();
    this.weight = this.param("weight", ones([dim]));
    this.bias = this.param("bias", zeros([dim]));
  }

  forward(x: Tensor): Tensor {
    return layerNorm(x, this.weight, this.bias, this.eps);
  }
}

export class GroupNorm extends Module {
  readonly weight: Tensor;
  readonly bias: Tensor;

  constructor(readonly groups: number, readonly channels: number, readonly eps = 1e-5) {
    super();
    this.weight = this.param("weight", ones([channels]));
    this.bias = this.param("bias", zeros([channels]));
  }

  forward(x: Tensor): Tensor {
    return groupNorm(x, this.groups, this.weight, this.bias, this.eps);
  }

  /** silu(forward(x)) as one fused op (the same values). */
  forwardSilu(x: Tensor): Tensor {
    return groupNorm(x, this.groups, this.weight, this.bias, this.eps, "silu");
  }

  /** relu(forward(x)) as one fused op (the same values). */
  forwardRelu(x: Tensor): Tensor {
    return groupNorm(x, this.groups, this.weight, this.bias, this.eps, "relu");
  }
}

export class BatchNorm2d extends Module {
  readonly weight: Tensor;
  readonly bias: Tensor;
  readonly runningMean: Tensor;
  readonly runningVar: Tensor;

  constructor(readonly channels: number, readonly eps = 1e-5, readonly momentum = 0.1) {
    super();
    this.weight = this.param("weight", ones([channels]));
    this.bias = this.param("bias", zeros([channels]));
    this.runningMean = this.buffer("running_mean", zeros([channels]));
    this.runningVar = this.buffer("running_var", ones([channels]));
    // PyTorch saves this counter (int64); kept so state dicts round-trip.
    this.buffer("num_batches_tracked", full([], 0, "i32"));
  }

  forward(x: Tensor): Tensor {
    return batchNorm(x, this.weight, this.bias, this.runningMean, this.runningVar, {
      training: this.training,
      momentum: this.momentum,
      eps: this.eps,
    });
  }
}

export class Embedding extends Module {
  readonly weight: Tensor;

  /** PyTorch's default: N(0, 1). */
  constructor(readonly count: number, readonly dim: number, rng: Rng, std = 1) {
    super();
    this.weight = this.param("weight", normal([count, dim], std, rng));
  }

  forward(ids: Tensor): Tensor {
    return embedding(this.weight, ids);
  }
}
