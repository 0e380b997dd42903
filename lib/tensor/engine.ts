// The engine's device-level services for everything above lib/tensor: models, training, stages
// and the command line use these, never lib/gpu itself (docs/architecture.md). Opening the device,
// submitting the work recorded so far, the pool's peak memory and the adapter's description.

import { type AdapterInfo, gpu } from "../gpu/device.ts";

export {
  type AdapterInfo,
  initGpu,
  initGpuOrExit,
  preferSoftwareThreads,
  SOFTWARE_THREADS_ENV,
} from "../gpu/device.ts";
export { fmtBytes } from "../gpu/pool.ts";

/**
 * Submits every dispatch recorded since the last submit, without waiting for it. A training loop
 * calls it after each step it does not read back, so the GPU works while the host records the next.
 */
export function flush(): void {
  gpu().recorder.flush();
}

/** The most GPU memory the buffer pool has held at once, in bytes. */
export function peakGpuBytes(): number {
  return gpu().pool.stats.peakAllocated;
}

/** The adapter in use (a copy): its description, vendor, architecture, whether it is software. */
export function adapterInfo(): AdapterInfo {
  return { ...gpu().info };
}
