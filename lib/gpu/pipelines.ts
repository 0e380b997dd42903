// Kernels and their compiled pipelines. A kernel is one WGSL entry point with a declared list of
// storage bindings; the pipeline cache compiles it once per set of override constants.

/**
 * "read": read-only storage buffer; "write": read_write storage buffer; "uniform": a var<uniform>
 * buffer (bind a BufferSlice no larger than maxUniformBufferBindingSize; on lavapipe a load from it
 * at a workgroup-uniform address is many times cheaper than a storage load); "texture": a
 * texture_2d<f32> read with textureLoad (unfilterable-float); "storage-texture": a
 * texture_storage_2d<rgba32float, write>. Texture bindings take a GPUTextureView.
 */
export type Binding = "read" | "write" | "uniform" | "texture" | "storage-texture";

/** True for the binding kinds that take a texture view rather than a buffer. */
export const isTextureBinding = (kind: Binding): boolean =>
  kind === "texture" || kind === "storage-texture";

export interface Kernel {
  /** Unique name: the cache key, and the label in error messages. */
  readonly name: string;
  readonly source: string;
  readonly entry: string;
  /** Storage buffers (or textures) at @group(0) @binding(0..n-1), in order. */
  readonly bindings: readonly Binding[];
  /**
   * When true (the default) the kernel reads a uniform struct of 4-byte fields at
   * @binding(bindings.length); the recorder passes it with a dynamic offset.
   */
  readonly params: boolean;
}

export interface KernelSpec {
  name: string;
  source: string;
  entry?: string;
  bindings: Binding[];
  params?: boolean;
}

const kernelNames = new Set<string>();

export function defineKernel(spec: KernelSpec): Kernel {
  if (kernelNames.has(spec.name)) throw new Error(`peco: kernel "${spec.name}" defined twice`);
  kernelNames.add(spec.name);
  return { entry: "main", params: true, ...spec };
}

/** Largest params struct a kernel may declare: 32 fields of 4 bytes. */
export const MAX_PARAMS_BYTES = 128;

export type Constants = Record<string, number>;

export interface CompiledKernel {
  readonly kernel: Kernel;
  readonly pipeline: GPUComputePipeline;
  readonly layout: GPUBindGroupLayout;
  readonly layoutKey: string;
}

export class PipelineCache {
  private modules = new Map<string, GPUShaderModule>();
  private layouts = new Map<string, GPUBindGroupLayout>();
  private pipelines = new Map<string, CompiledKernel>();

  constructor(private device: GPUDevice) {}

  get size(): number {
    return this.pipelines.size;
  }

  get(kernel: Kernel, constants: Constants = {}): CompiledKernel {
    const key = kernel.name + constantsKey(constants);
    let compiled = this.pipelines.get(key);
    if (compiled) return compiled;
    const layoutKey = kernel.bindings.join(",") + (kernel.params ? ",params" : "");
    const layout = this.layout(layoutKey, kernel);
    const pipeline = this.device.createComputePipeline({
      label: key,
      layout: this.device.createPipelineLayout({ bindGroupLayouts: [layout] }),
      compute: { module: this.module(kernel), entryPoint: kernel.entry, constants },
    });
    compiled = { kernel, pipeline, layout, layoutKey };
    this.pipelines.set(key, compiled);
    return compiled;
  }

  private module(kernel: Kernel): GPUShaderModule {
    let module = this.modules.get(kernel.source);
    if (!module) {
      module = this.device.createShaderModule({ label: kernel.name, code: kernel.source });
      this.modules.set(kernel.source, module);
    }
    return module;
  }

  private layout(key: string, kernel: Kernel): GPUBindGroupLayout {
    let layout = this.layouts.get(key);
    if (layout) return layout;
    const entries: GPUBindGroupLayoutEntry[] = kernel.bindings.map((kind, binding) => {
      const visibility = GPUShaderStage.COMPUTE;
      if (kind === "texture") {
        return { binding, visibility, texture: { sampleType: "unfilterable-float" } };
      }
      if (kind === "storage-texture") {
        return {
          binding,
          visibility,
          storageTexture: { access: "write-only", format: "rgba32float" },
        };
      }
      return {
        binding,
        visibility,
        buffer: {
          type: kind === "read" ? "read-only-storage" : kind === "write" ? "storage" : kind,
        },
      };
    });
    if (kernel.params) {
      entries.push({
        binding: kernel.bindings.length,
        visibility: GPUShaderStage.COMPUTE,
        buffer: { type: "uniform", hasDynamicOffset: true, minBindingSize: 0 },
      });
    }
    layout = this.device.createBindGroupLayout({ label: key, entries });
    this.layouts.set(key, layout);
    return layout;
  }
}

function constantsKey(constants: Constants): string {
  const names = Object.keys(constants).sort();
  return names.length ? "|" + names.map((n) => `${n}=${constants[n]}`).join(",") : "";
}
