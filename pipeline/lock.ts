// `RUN_DIR/pipeline.lock`: one process works in a run directory at a time. The lock names its
// holder (pid, host, process start time); a holder that is gone, or another host's silent one, is stale.
import { readFileSync } from 'node:fs';
import { link, mkdir, readFile, rm, stat } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { processAlive, removeStaleLeftovers, tempPath, writeFileAtomic, writeFileSynced } from '../data/files.ts';

/** The holder rewrites its lock this often, so that other hosts (which cannot see its pid) know it lives. */
export const LOCK_REFRESH_MS = 60_000;
/**
 * Another host's lock not rewritten for this long is stale. Ten refresh periods: a long
 * synchronous step can delay a refresh (it runs on the event loop), so the margin is wide.
 */
export const LOCK_STALE_MS = 10 * 60_000;

export interface LockBody {
  pid: number;
  host: string;
  /** Field 22 of /proc/<pid>/stat (start time in clock ticks after boot); null where there is no /proc. */
  process_start: string | null;
  /** The stage being run, when the holder is the stage runner. */
  stage?: string;
  started_at: string;
  refreshed_at: string;
}

/** Another process holds the run directory. */
export class RunDirLockedError extends Error {
  override name = 'RunDirLockedError';
}

/**
 * What /proc says of a pid on this host: `gone` (no such process, or exited and not yet reaped),
 * its start time, or null where /proc is not there (not Linux).
 */
export function processStart(pid: number): { gone: true } | { gone: false; start: string } | null {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    try {
      readFileSync('/proc/self/stat');
    } catch {
      return null;
    }
    return { gone: true };
  }
  // The command name (field 2) is in parentheses and may hold spaces: count fields after its ')'.
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  const state = fields[0]; // field 3
  if (state === 'Z' || state === 'X') return { gone: true };
  return { gone: false, start: fields[19] }; // field 22
}

/** Why a lock's holder no longer holds it, or null when it (as far as this host can tell) still does. */
export async function staleReason(path: string, holder: Partial<LockBody> | null, now = Date.now()): Promise<string | null> {
  if (!holder || typeof holder.pid !== 'number') return 'its body is unreadable';
  if (holder.host && holder.host !== hostname()) {
    const info = await stat(path).catch(() => null);
    if (!info) return 'it is gone';
    const idle = now - info.mtimeMs;
    return idle > LOCK_STALE_MS ? `not refreshed for ${Math.floor(idle / 60_000)} min, over ${LOCK_STALE_MS / 60_000} min` : null;
  }
  if (!processAlive(holder.pid)) return 'the process is gone';
  const proc = processStart(holder.pid);
  if (proc?.gone) return 'the process has exited';
  if (proc && holder.process_start && proc.start !== holder.process_start) return 'its pid now belongs to another process';
  return null;
}

/** The lock's body; null when it is unreadable; ENOENT when there is none. */
export async function readLock(path: string): Promise<Partial<LockBody> | null> {
  try {
    const body: unknown = JSON.parse(await readFile(path, 'utf8'));
    return body && typeof body === 'object' ? (body as Partial<LockBody>) : null;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw err;
    return null;
  }
}

/** Puts `body` at `path` only if nothing is there, complete (written aside, then hard-linked): no reader sees it half-written. */
async function createExclusive(path: string, body: string): Promise<void> {
  const tmp = tempPath(path);
  await writeFileSynced(tmp, body);
  try {
    await link(tmp, path);
  } finally {
    await rm(tmp, { force: true });
  }
}

/**
 * Takes `RUN_DIR/pipeline.lock`. A holder on this host whose pid is gone, exited or reused (another
 * start time), another host's lock not refreshed for LOCK_STALE_MS, or an unreadable lock is
 * stale: taken over with one log line. A live holder is a RunDirLockedError naming it. The lock is
 * rewritten every LOCK_REFRESH_MS while held. Returns the release function.
 */
export async function acquireRunLock(runDir: string, { log = () => {}, stage }: { log?: (line: string) => void; stage?: string } = {}): Promise<() => Promise<void>> {
  await mkdir(runDir, { recursive: true });
  const path = join(runDir, 'pipeline.lock');
  await removeStaleLeftovers(path);
  const self = processStart(process.pid);
  const started = new Date().toISOString();
  const bodyOf = (refreshed: string): string =>
    JSON.stringify({ pid: process.pid, host: hostname(), process_start: self && !self.gone ? self.start : null, ...(stage ? { stage } : {}), started_at: started, refreshed_at: refreshed } satisfies LockBody);
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      await createExclusive(path, bodyOf(started));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      let holder: Partial<LockBody> | null;
      try {
        holder = await readLock(path);
      } catch {
        continue; // released meanwhile
      }
      const reason = holder?.pid === process.pid && (!holder.host || holder.host === hostname()) ? 'this process left it' : await staleReason(path, holder);
      if (reason === null) {
        throw new RunDirLockedError(`${path}: run directory is in use by process ${holder!.pid} on ${holder!.host || hostname()}; wait for it, or remove the lock if that process is gone`);
      }
      log(`${path}: taking over the stale lock of process ${holder?.pid ?? '?'} on ${holder?.host || '?'} (${reason})`);
      await rm(path, { force: true });
      continue;
    }
    return holdLock(path, bodyOf);
  }
  throw new RunDirLockedError(`${path}: could not take the lock (other processes keep taking it)`);
}

/** Refreshes the lock while held; the release stops that, waits for a refresh under way, and removes the lock. */
function holdLock(path: string, bodyOf: (refreshed: string) => string): () => Promise<void> {
  let pending: Promise<void> = Promise.resolve();
  const refresh = () => {
    pending = pending.then(async () => {
      const holder = await readLock(path).catch(() => null);
      // Never write over a lock someone took over (after a refresh that came too late).
      if (holder?.pid === process.pid && holder.host === hostname()) await writeFileAtomic(path, bodyOf(new Date().toISOString()));
    }).catch(() => {});
  };
  const timer = setInterval(refresh, LOCK_REFRESH_MS);
  timer.unref();
  return async () => {
    clearInterval(timer);
    await pending;
    const holder = await readLock(path).catch(() => null);
    if (holder === null || (holder.pid === process.pid && holder.host === hostname())) await rm(path, { force: true });
  };
}

/** The live holder of RUN_DIR's lock, or null when there is none or it is stale. */
export async function liveLockHolder(runDir: string): Promise<Partial<LockBody> | null> {
  const path = join(runDir, 'pipeline.lock');
  const holder = await readLock(path).catch(() => null);
  return holder && (await staleReason(path, holder)) === null ? holder : null;
}
