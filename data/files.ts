// Atomic, durable file writes and the one spelling of their temporary names (`<path>.tmp-<pid>`,
// a replaced directory set aside as `<path>.old-<pid>`), so every cleaner recognises every writer's leftovers.
import { open, readdir, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

const TEMP = '.tmp-';
const ASIDE = '.old-';

/** Where this process writes `path` before renaming it into place. */
export function tempPath(path: string): string {
  return `${path}${TEMP}${process.pid}`;
}

/** Where {@link replaceDir} keeps the previous `path` between its two renames. */
export function asidePath(path: string): string {
  return `${path}${ASIDE}${process.pid}`;
}

/** Whether a process with this pid exists (EPERM: it does, owned by someone else). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * A write that failed at run time (disk full, read-only file system, I/O error): one line naming
 * the file and the errno, e.g. `/data/x/shard-00000.arrow: write failed: ENOSPC: no space left on device, write`.
 * Not bad usage: the CLI exits 1.
 */
export class FileWriteError extends Error {
  /** The errno name (ENOSPC, EROFS, EIO, ...) when the system gave one. */
  readonly code: string | undefined;
  constructor(
    readonly path: string,
    cause: unknown,
  ) {
    const e = cause as NodeJS.ErrnoException;
    super(`${path}: write failed: ${e instanceof Error ? e.message : String(e)}`, { cause });
    this.name = 'FileWriteError';
    this.code = e?.code;
  }
}

/** `err` as a FileWriteError naming `path`, unless it already names a file. */
export function writeError(path: string, err: unknown): FileWriteError {
  return err instanceof FileWriteError ? err : new FileWriteError(path, err);
}

/** Flushes a directory's entries (the renames); not supported everywhere, so best effort. */
export async function syncDir(path: string): Promise<void> {
  try {
    const handle = await open(path, 'r');
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
  } catch {
    // Windows cannot open directories; the rename is still atomic there, only less durable.
  }
}

/**
 * Writes and fsyncs a file in place (no rename): for files inside a temporary directory that is
 * renamed as a whole, so the rename never publishes data still in the page cache only. Returns the bytes written.
 */
export async function writeFileSynced(path: string, data: string | Uint8Array): Promise<number> {
  const handle = await open(path, 'w');
  try {
    await handle.writeFile(data);
    await handle.sync();
  } finally {
    await handle.close();
  }
  return typeof data === 'string' ? Buffer.byteLength(data) : data.byteLength;
}

/** Renames a complete, flushed temporary file over `path`, then flushes the directory (best effort). */
export async function renameDurable(from: string, path: string): Promise<void> {
  await rename(from, path);
  await syncDir(dirname(path));
}

/**
 * Writes a file so that readers see either the old or the whole new content, never half, and a
 * crash after it returns keeps the new one: temporary name, write, fsync, rename, fsync of the folder.
 * A failed write removes its temporary file and leaves the previous file as it was.
 */
export async function writeFileAtomic(path: string, data: string | Uint8Array): Promise<void> {
  const tmp = tempPath(path);
  try {
    await writeFileSynced(tmp, data);
    await renameDurable(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw writeError(path, err);
  }
}

/** Whether anything (a file, a directory) is at `path`. */
export async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * Puts the complete, flushed directory `from` at `dir`, replacing what was there: the old `dir` is
 * renamed to {@link asidePath}, `from` renamed to `dir`, the parent flushed, and only then the old
 * one removed. A crash leaves the old or the new directory at `dir`, or (between the two renames)
 * none at `dir` and the old one aside, where {@link leftovers} finds it.
 */
export async function replaceDir(from: string, dir: string): Promise<void> {
  const aside = asidePath(dir);
  const hadPrevious = await exists(dir);
  if (hadPrevious) await rename(dir, aside);
  await rename(from, dir);
  await syncDir(dirname(dir));
  if (hadPrevious) await rm(aside, { recursive: true, force: true });
}

export interface Leftover {
  path: string;
  /** `tmp`: a temporary being written; `old`: a replaced directory set aside by {@link replaceDir}. */
  kind: 'tmp' | 'old';
  pid: number;
}

/** The `<path>.tmp-<pid>` and `<path>.old-<pid>` siblings of `path`, of any process; none when its folder is missing. */
export async function leftovers(path: string): Promise<Leftover[]> {
  const parent = dirname(path);
  const name = basename(path);
  let entries: string[];
  try {
    entries = await readdir(parent);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  const found: Leftover[] = [];
  for (const entry of entries) {
    for (const [infix, kind] of [[TEMP, 'tmp'], [ASIDE, 'old']] as const) {
      const prefix = name + infix;
      if (entry.startsWith(prefix) && /^\d+$/.test(entry.slice(prefix.length))) {
        found.push({ path: join(parent, entry), kind, pid: Number(entry.slice(prefix.length)) });
      }
    }
  }
  return found;
}

/** Removes the leftovers of `path` whose writer died (a crash mid-write); a live writer's are kept. */
export async function removeStaleLeftovers(path: string): Promise<void> {
  for (const l of await leftovers(path)) {
    if (l.pid !== process.pid && !processAlive(l.pid)) await rm(l.path, { recursive: true, force: true });
  }
}

const LEFTOVER = /^(.+)\.(tmp|old)-(\d+)$/;

/**
 * Removes the `<name>.tmp-<pid>` / `<name>.old-<pid>` entries of `dir` left by processes that are
 * gone (killed mid-write), for the names `owns` accepts, except those in `keep` (files a manifest
 * still lists). Other processes' live leftovers stay. Returns the paths removed.
 */
export async function removeDeadLeftoversIn(dir: string, owns: (name: string) => boolean, keep: ReadonlySet<string> = new Set()): Promise<string[]> {
  let entries: string[];
  try {
    entries = await readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  const removed: string[] = [];
  for (const entry of entries.sort()) {
    const m = LEFTOVER.exec(entry);
    if (!m || !owns(m[1]) || keep.has(entry)) continue;
    const pid = Number(m[3]);
    if (pid === process.pid || processAlive(pid)) continue;
    await rm(join(dir, entry), { recursive: true, force: true });
    removed.push(join(dir, entry));
  }
  return removed;
}
