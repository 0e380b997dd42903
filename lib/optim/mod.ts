// Optimizers (fused GPU kernels), parameter groups, lr schedules and gradient clipping.

export * from "./optimizer.ts";
export * from "./adam.ts";
export * from "./sgd.ts";
export * from "./groups.ts";
export * from "./schedule.ts";
export * from "./clip.ts";
