// The one WebGPU device of the process: adapter with its own limits, the buffer pool, the pipeline
// cache and the recorder that batches a step's dispatches into one submit.

import { GpuError } from "./errors.ts";
import { BufferPool } from "./pool.ts";
import { PipelineCache } from "./pipelines.ts";
import { KernelProfiler } from "./profiler.ts";
import { Recorder } from "./recorder.ts";

export interface AdapterInfo {
  vendor: string;
  architecture: string;
  device: string;
  description: string;
  isFallbackAdapter: boolean;
  /** True for Mesa's software rasteriser (lavapipe): kernel variants are chosen for CPUs. */
  software: boolean;
  /**
   * f32 lanes of the vectors a software adapter runs invocations in (llvmpipe names its width,
   * "256 bits": 8 lanes; 8 where it does not say); a workgroup runs on one CPU thread as batches
   * of this many invocations. Unused on GPUs.
   */
  simdLanes: number;
  /**
   * A software adapter's worker threads (SOFTWARE_THREADS_ENV, where this process can read it);
   * null on GPUs or where unknown (Mesa's default: one per core).
   */
  threads: number | null;
}

/**
 * The environment variable that sets how many threads lavapipe (llvmpipe) runs a dispatch's
 * workgroups on; Mesa's default is one per core.
 */
export const SOFTWARE_THREADS_ENV = "LP_NUM_THREADS";

/**
 * Threads for a software adapter where the user has not set SOFTWARE_THREADS_ENV: two more than the
 * cores. A dispatch ends when its last workgroup does; with one worker per core, a worker that the
 * OS preempts (for the JS thread, the driver's queue thread, or the hypervisor) holds the dispatch
 * up while the others wait, and spare workers take its share instead (measured on 2 cores:
 * docs/architecture.md, "Threads and workgroups on lavapipe").
 */
export function softwareThreads(cores = navigator.hardwareConcurrency || 1): number {
  return cores + 2;
}

/**
 * Sets SOFTWARE_THREADS_ENV to softwareThreads() for this process and the processes it starts,
 * unless the user has set it or this process may not (a sandboxed stage inherits its launcher's
 * environment). Takes effect only before the adapter is opened: the driver reads it once.
 */
export function preferSoftwareThreads(): void {
  if (!envGranted(SOFTWARE_THREADS_ENV) || Deno.env.get(SOFTWARE_THREADS_ENV)) return;
  Deno.env.set(SOFTWARE_THREADS_ENV, String(softwareThreads()));
}

/**
 * Whether this process may read (and set) environment variable `name`: a sandboxed stage may not,
 * and must not prompt for it.
 */
function envGranted(name: string): boolean {
  return Deno.permissions.querySync({ name: "env", variable: name }).state === "granted";
}

/** SOFTWARE_THREADS_ENV where this process may read it and it is a count, else null. */
function threadsInForce(): number | null {
  if (!envGranted(SOFTWARE_THREADS_ENV)) return null;
  const n = Number(Deno.env.get(SOFTWARE_THREADS_ENV));
  return Number.isInteger(n) && n > 0 ? n : null;
}

/** f32 lanes from a description such as "llvmpipe (LLVM 15.0.6, 256 bits)"; 8 if it names none. */
export function simdLanesOf(description: string): number {
  const bits = Number(/\b(\d+) bits\b/.exec(description)?.[1]);
  return bits >= 128 && bits % 32 === 0 ? bits / 32 : 8;
}

export { GpuError };

/** Limits copied from the adapter: the WebGPU defaults (128 MiB bindings) are too small. */
const REQUESTED_LIMITS = [
  "maxBufferSize",
  "maxStorageBufferBindingSize",
  "maxStorageBuffersPerShaderStage",
  "maxComputeWorkgroupStorageSize",
  "maxComputeInvocationsPerWorkgroup",
  "maxComputeWorkgroupSizeX",
  "maxComputeWorkgroupSizeY",
  "maxComputeWorkgroupSizeZ",
  "maxComputeWorkgroupsPerDimension",
  "maxTextureDimension2D",
  "maxDynamicUniformBuffersPerPipelineLayout",
] as const;

export const NO_ADAPTER_MESSAGE =
  "peco: no WebGPU adapter found. On a machine without a GPU install the software Vulkan driver " +
  "(apt-get install -y mesa-vulkan-drivers); on a GPU host install the vendor's Vulkan driver.";

export class Gpu {
  readonly pool: BufferPool;
  readonly pipelines: PipelineCache;
  readonly recorder: Recorder;
  /** Per-kernel timestamps: only when opened with `initGpu({ profile: true })`. */
  readonly profiler: KernelProfiler | null;
  /** First asynchronous device error (validation, out-of-memory, loss); thrown at the next sync. */
  pendingError: GpuError | null = null;

  constructor(
    readonly device: GPUDevice,
    readonly info: AdapterInfo,
    readonly limits: Record<string, number>,
  ) {
    this.pool = new BufferPool(
      device,
      limits.maxBufferSize,
      limits.maxStorageBufferBindingSize,
      (error) => this.pendingError ??= error,
    );
    this.pipelines = new PipelineCache(device);
    this.profiler = device.features.has("timestamp-query") ? new KernelProfiler(device) : null;
    this.recorder = new Recorder(this);
    device.addEventListener("uncapturederror", (event) => {
      const error = (event as GPUUncapturedErrorEvent).error;
      const kind = error instanceof GPUOutOfMemoryError ? "out of memory" : "device error";
      this.pendingError ??= new GpuError(
        `GPU ${kind}: ${
          error.message.split("\n")[0]
        } (${this.pool.describe()}; last: ${this.recorder.lastLabel})`,
      );
    });
    device.lost.then((lost) => {
      if (lost.reason === "destroyed") return;
      this.pendingError ??= new GpuError(
        `GPU device lost: ${
          lost.message || lost.reason
        } (${this.pool.describe()}; last: ${this.recorder.lastLabel})`,
      );
    });
  }

  /** Throws the first asynchronous device error, if one happened. */
  throwIfFailed(): void {
    if (this.pendingError) throw this.pendingError;
  }
}

let current: Promise<Gpu> | null = null;
let ready: Gpu | null = null;

export interface GpuOptions {
  /**
   * Time every dispatch with timestamp queries (`gpu().profiler`; `bench --profile`). Throws when
   * the adapter has no "timestamp-query" feature.
   */
  profile?: boolean;
}

/**
 * `PECO_KERNELS=gpu` makes this process choose kernels as on a discrete GPU (shared-memory tiles,
 * workgroup reductions) whatever the adapter, `software` as on lavapipe: so the GPU branches of
 * every op are tested against float64 on a machine without a GPU (.ci/run). Read only where the
 * process may read it: a sandboxed stage has no env access and keeps the adapter's own choice.
 */
export const KERNELS_ENV = "PECO_KERNELS";

function kernelsOverride(): boolean | null {
  if (!envGranted(KERNELS_ENV)) return null;
  const value = Deno.env.get(KERNELS_ENV);
  if (value === undefined || value === "") return null;
  if (value === "gpu") return false;
  if (value === "software") return true;
  throw new GpuError(`peco: ${KERNELS_ENV}=${value}: expected "gpu" or "software"`);
}

/** Opens (once) and returns the process's GPU; the first call's options count. */
export function initGpu(options: GpuOptions = {}): Promise<Gpu> {
  current ??= openGpu(options).then((gpu) => (ready = gpu));
  return current;
}

/** The GPU opened by `initGpu`; ops call this synchronously. */
export function gpu(): Gpu {
  if (!ready) throw new GpuError("peco: the GPU is not initialised: await initGpu() first");
  return ready;
}

async function openGpu({ profile = false }: GpuOptions): Promise<Gpu> {
  if (!("gpu" in navigator) || !navigator.gpu) throw new GpuError(NO_ADAPTER_MESSAGE);
  preferSoftwareThreads();
  const adapter = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
  if (!adapter) throw new GpuError(NO_ADAPTER_MESSAGE);
  const limits: Record<string, number> = {};
  for (const name of REQUESTED_LIMITS) limits[name] = adapter.limits[name];
  if (profile && !adapter.features.has("timestamp-query")) {
    throw new GpuError(
      `peco: profiling needs the "timestamp-query" feature, which this adapter lacks`,
    );
  }
  const device = await adapter.requestDevice({
    requiredLimits: limits,
    requiredFeatures: profile ? ["timestamp-query"] : [],
    label: "peco",
  });
  const all: Record<string, number> = {};
  for (const name in device.limits) all[name] = device.limits[name as keyof GPUSupportedLimits];
  const raw = adapter.info;
  const info: AdapterInfo = {
    vendor: raw.vendor,
    architecture: raw.architecture,
    device: raw.device,
    description: raw.description,
    isFallbackAdapter: (raw as unknown as { isFallbackAdapter?: boolean }).isFallbackAdapter ??
      false,
    software: /llvmpipe|lavapipe|swiftshader/i.test(raw.description),
    simdLanes: simdLanesOf(raw.description),
    threads: /llvmpipe|lavapipe/i.test(raw.description) ? threadsInForce() : null,
  };
  const forced = kernelsOverride();
  if (forced !== null && forced !== info.software) {
    info.software = forced;
    info.description += ` (kernels chosen as for a ${forced ? "software adapter" : "GPU"}: ` +
      `${KERNELS_ENV}=${forced ? "software" : "gpu"})`;
  }
  return new Gpu(device, info, all);
}

/** Exits the process with one clear line when the GPU cannot be opened (for task entry points). */
export async function initGpuOrExit(options: GpuOptions = {}): Promise<Gpu> {
  try {
    return await initGpu(options);
  } catch (error) {
    console.error(error instanceof Error ? error.message : String(error));
    Deno.exit(3);
  }
}
