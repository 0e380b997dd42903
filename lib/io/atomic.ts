// Atomic file writes: the data goes to a temporary file in the target's folder, is flushed to disk,
// then renamed over the target. A reader (or a resumed run) sees either the old file or the complete
// new one, never a partial one; on failure the temporary file is removed and the target is left as
// it was. Needs read and write permission on the target's folder (Deno's rename asks for both).

import { basename, dirname, join } from "node:path";

/** What `writeFileAtomic` writes: bytes, text (UTF-8), or chunks (streamed, e.g. checkpoints). */
export type FileData = Uint8Array | string | Iterable<Uint8Array>;

/** Temporary files start with this, so a crashed write is recognisable (and ignorable). */
export const TEMP_PREFIX = ".tmp-";

let counter = 0;

function tempPath(path: string): string {
  // Same folder as the target: rename is only atomic within one file system.
  const unique = `${Deno.pid}-${Date.now().toString(36)}-${(counter++).toString(36)}`;
  return join(dirname(path), `${TEMP_PREFIX}${basename(path)}.${unique}`);
}

function chunksOf(data: FileData): Iterable<Uint8Array> {
  if (typeof data === "string") return [new TextEncoder().encode(data)];
  if (data instanceof Uint8Array) return [data];
  return data;
}

async function writeAll(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  let done = 0;
  while (done < bytes.length) done += await file.write(bytes.subarray(done));
}

/** Writes `data` to `path` atomically (temp file in the same folder, fsync, rename). */
export async function writeFileAtomic(path: string, data: FileData): Promise<void> {
  const temp = tempPath(path);
  let file: Deno.FsFile | null = null;
  try {
    file = await Deno.open(temp, { write: true, createNew: true });
    for (const chunk of chunksOf(data)) await writeAll(file, chunk);
    await file.sync();
    file.close();
    file = null;
    await Deno.rename(temp, path);
  } catch (error) {
    file?.close();
    await Deno.remove(temp).catch(() => {});
    const why = error instanceof Error ? error.message : String(error);
    throw new Error(`peco: could not write ${path}: ${why}`, { cause: error });
  }
  await syncFolder(dirname(path));
}

/** Makes the rename itself durable (best effort: not every platform can open a folder). */
async function syncFolder(folder: string): Promise<void> {
  try {
    const dir = await Deno.open(folder, { read: true });
    try {
      await dir.sync();
    } finally {
      dir.close();
    }
  } catch {
    // Windows, or no read permission on the folder: the data itself is already on disk.
  }
}

/** Writes `value` as pretty-printed JSON with a trailing newline, atomically. */
export async function writeJsonAtomic(path: string, value: unknown, indent = 2): Promise<void> {
  await writeFileAtomic(path, JSON.stringify(value, null, indent) + "\n");
}
