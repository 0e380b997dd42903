// The Worker side of lib/data/item_pool.ts: loads image files (read, decode, resize) on request.
// It starts with read access to the input and to this folder (Deno checks read access to each
// local module a Worker loads); once its modules are loaded it gives up the latter, so while it
// serves requests it can read the input and nothing else. It writes nothing: the pixels go back
// to the main thread, which hashes and writes the shards.

import { ImageDecodeError } from "./decode.ts";
import { loadImageFile, type LoadOptions } from "./load_image.ts";

export interface ItemRequest {
  id: number;
  path: string;
  /** Name for error messages. */
  name: string;
  options: LoadOptions;
}

/** `pixels` on success, `reason` for a reject (the manifest's text), `error` for anything else. */
export interface ItemReply {
  id: number;
  pixels?: Uint8Array;
  reason?: string;
  error?: string;
}

// The folder of this worker's modules (item_pool.ts: workerReadPaths), readable only while they
// load: static imports are all loaded before this line runs.
if (import.meta.dirname) await Deno.permissions.revoke({ name: "read", path: import.meta.dirname });

// deno-lint-ignore no-explicit-any
const scope = globalThis as any;
scope.onmessage = async ({ data: { id, path, name, options } }: MessageEvent<ItemRequest>) => {
  let reply: ItemReply;
  try {
    reply = { id, pixels: await loadImageFile(path, options) };
  } catch (error) {
    reply = error instanceof ImageDecodeError
      ? { id, reason: error.message }
      : { id, error: `${name}: ${(error as Error)?.stack ?? error}` };
  }
  scope.postMessage(reply, reply.pixels ? [reply.pixels.buffer] : []);
};
