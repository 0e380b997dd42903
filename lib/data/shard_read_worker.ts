// The Worker side of lib/data/shard_reads.ts: reads a whole shard file and checks it (header, and
// on its first read size and sha256), then hands the bytes over (transferred, not copied). It
// may read the shard folder only (lib/io/worker_pool.ts).

import { serveRequests } from "../io/worker_pool.ts";
import { readShardFile, type ShardEntry, type ShardGeometry } from "./shards.ts";

export interface ShardReadRequest {
  path: string;
  entry: ShardEntry;
  geometry: ShardGeometry;
  verify: boolean;
}

await serveRequests<ShardReadRequest, Uint8Array>(async ({ path, entry, geometry, verify }) => {
  const bytes = await readShardFile(path, entry, geometry, verify);
  return { reply: bytes, transfer: [bytes.buffer as ArrayBuffer] };
});
