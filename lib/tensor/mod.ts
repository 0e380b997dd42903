// The tensor library: Tensor, scopes, autograd and every op.

export * from "./tensor.ts";
export * from "./autograd.ts";
export * from "./ops/creation.ts";
export * from "./ops/elementwise.ts";
export * from "./ops/reduce.ts";
