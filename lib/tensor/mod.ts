// The tensor library: Tensor, scopes, autograd and every op.

export * from "./tensor.ts";
export * from "./autograd.ts";
export * from "./ops/creation.ts";
export * from "./ops/elementwise.ts";
export * from "./ops/reduce.ts";
export * from "./ops/shape.ts";
export * from "./ops/reduce_index.ts";
export * from "./ops/conv.ts";
export * from "./ops/random.ts";
export * from "./ops/vq.ts";
export * from "./ops/norm.ts";
export * from "./ops/loss.ts";
export * from "./ops/matmul.ts";
export * from "./ops/pool.ts";
export * from "./ops/softmax.ts";
export * from "./ops/attention.ts";
export * from "./ops/residual.ts";
export * from "./ops/mlp.ts";
export * from "./ops/token_embed.ts";
