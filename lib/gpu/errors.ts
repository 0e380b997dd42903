// Errors of the device layer: a failed device, out of memory, a misuse of the pool.

export class GpuError extends Error {
  override name = "GpuError";
}
