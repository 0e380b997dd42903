// peco's public library API: the WebGPU engine (tensors, autograd, ops), modules, optimizers and
// safetensors I/O. Stages build on these; so can other Deno programs.

export { type AdapterInfo, gpu, GpuError, initGpu } from "./lib/gpu/device.ts";
export * from "./lib/tensor/mod.ts";
export * as init from "./lib/tensor/init.ts";
export { Rng } from "./lib/tensor/init.ts";
export * from "./lib/nn/module.ts";
export * from "./lib/nn/layers.ts";
export * from "./lib/nn/blocks.ts";
export * from "./lib/optim/mod.ts";
export {
  parseSafetensors,
  readSafetensors,
  serializeSafetensors,
  writeSafetensors,
} from "./lib/io/safetensors.ts";
export { writeFileAtomic, writeJsonAtomic } from "./lib/io/atomic.ts";
export {
  loadTrainedVqVae,
  Tokenizer,
  TOKENIZER_FILE,
  type TokenizerImage,
  type TokenizerInfo,
} from "./lib/models/tokenizer.ts";
export {
  openTokenShards,
  type TokenManifest,
  type TokenSet,
  TokenShardWriter,
  type TokenSplit,
  writeTokenManifest,
} from "./lib/data/token_shards.ts";
export * from "./lib/models/beit.ts";
