// `deno task shard`: ingests an image folder, MNIST or an IDX pair into verified shards.
//
//   deno task shard --input mnist --out runs/shard
//   deno task shard --input photos/ --out runs/photos --size 224 --channels 3
//   deno task shard --input idx:emnist-images.gz,emnist-labels.gz --out runs/emnist
//
// Least privilege (lib/cli/permissions.ts): the task starts with --allow-read and
// --allow-run=deno only, resolves the paths, and re-runs this file with read access to the input
// and the output folder and write access to the output folder only (no net/env/run/ffi/sys).
//
// The work (resumable, atomic shards, manifest.json last) is in lib/stages/shard.ts.

import { parseOrExit, runTask } from "../lib/cli/args.ts";
import { isLauncher, runSandboxed } from "../lib/cli/permissions.ts";
import { runShard, shardAccess, shardCommand } from "../lib/stages/shard.ts";

export {
  resolveOptions,
  runShard,
  shardAccess,
  shardCommand,
  type ShardConfig,
  type ShardOptions,
  type ShardResult,
} from "../lib/stages/shard.ts";

// ---- command line ---------------------------------------------------------------------------

async function main(): Promise<void> {
  const options = parseOrExit(shardCommand);
  await runTask(shardCommand.usage, async () => {
    if (isLauncher()) {
      Deno.exit(await runSandboxed(import.meta.url, Deno.args, shardAccess(options)));
    }
    const { status, out, manifest } = await runShard(options);
    const parts = Object.entries(manifest.splits).map(([s, m]) => `${m.count} ${s}`).join(" + ");
    const { channels, height, width } = manifest.image;
    console.log(
      `shard: ${status}: ${parts} images [${channels},${height},${width}] in ${out}; ` +
        `${manifest.counts.rejected} rejected${
          manifest.counts.rejected ? " (see manifest.json)" : ""
        }`,
    );
  });
}

if (import.meta.main) await main();
