// SHA-256 of bytes, of a file streamed in bounded memory, and incremental over chunks. Backed by
// node:crypto (native code; streaming, which WebCrypto's one-shot digest is not).

import { createHash, type Hash } from "node:crypto";

/** Incremental SHA-256: feed chunks with `update`, then read `hex()` once. */
export class Sha256 {
  private hash: Hash = createHash("sha256");

  update(bytes: Uint8Array): this {
    this.hash.update(bytes);
    return this;
  }

  hex(): string {
    return this.hash.digest("hex");
  }
}

export function sha256Hex(...chunks: Uint8Array[]): string {
  const h = new Sha256();
  for (const c of chunks) h.update(c);
  return h.hex();
}

/** SHA-256 of a file and its size, reading it in chunks (memory bounded by `chunkBytes`). */
export async function sha256File(
  path: string,
  chunkBytes = 1 << 22,
): Promise<{ sha256: string; bytes: number }> {
  const h = new Sha256();
  const buffer = new Uint8Array(chunkBytes);
  let bytes = 0;
  using file = await Deno.open(path, { read: true });
  while (true) {
    const n = await file.read(buffer);
    if (n === null) break;
    h.update(buffer.subarray(0, n));
    bytes += n;
  }
  return { sha256: h.hex(), bytes };
}
