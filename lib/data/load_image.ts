// One image file as a shard record: read, decode (lib/data/decode.ts), fit to the shard size
// (lib/data/resize.ts). Kept apart from sources.ts so that the decoding workers
// (lib/data/item_worker.ts) load these few modules only, all in this folder.

import { decodeImage, ImageDecodeError } from "./decode.ts";
import { fitImage, type ResizePolicy } from "./resize.ts";

export interface LoadOptions {
  size: number;
  channels: 1 | 3;
  resize: ResizePolicy;
  maxPixels: number;
}

/** Why reading a path failed, as a short reason for the manifest. */
export function readFailure(error: unknown): string {
  if (error instanceof Deno.errors.NotFound) return "unreadable: no such file (or a dangling link)";
  if (error instanceof Deno.errors.PermissionDenied) return "unreadable: permission denied";
  if (error instanceof Deno.errors.NotCapable) {
    return "unreadable: outside the stage's read permission";
  }
  if (error instanceof Deno.errors.IsADirectory) return "unreadable: is a directory";
  return `unreadable: ${(error as Error).message}`;
}

/**
 * An image file as [channels, size, size] uint8. Throws ImageDecodeError (the reason for the
 * manifest) for an unreadable or undecodable file.
 */
export async function loadImageFile(path: string, o: LoadOptions): Promise<Uint8Array> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (error) {
    throw new ImageDecodeError(readFailure(error));
  }
  return fitImage(
    decodeImage(bytes, { channels: o.channels, maxPixels: o.maxPixels }),
    o.size,
    o.resize,
  );
}
