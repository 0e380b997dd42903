// The Worker side of lib/data/item_pool.ts: loads an image file (read, decode, resize) per
// request. It may read the input only (lib/io/worker_pool.ts) and writes nothing: the pixels go
// back to the main thread, which hashes and writes the shards.

import { serveRequests } from "../io/worker_pool.ts";
import { ImageDecodeError } from "./decode.ts";
import { loadImageFile, type LoadOptions } from "./load_image.ts";

export interface ItemRequest {
  path: string;
  options: LoadOptions;
}

/** `pixels` on success, else `reason` (the manifest's text for a reject). */
export type ItemReply = { pixels: Uint8Array; reason?: undefined } | {
  pixels?: undefined;
  reason: string;
};

await serveRequests<ItemRequest, ItemReply>(async ({ path, options }) => {
  try {
    const pixels = await loadImageFile(path, options);
    return { reply: { pixels }, transfer: [pixels.buffer as ArrayBuffer] };
  } catch (error) {
    if (error instanceof ImageDecodeError) return { reply: { reason: error.message } };
    throw error;
  }
});
