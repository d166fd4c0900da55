// The run lock: a holder is this host's live process with the recorded start time; a dead, exited
// or reused pid, or another host's lock left unrefreshed, is stale and taken over with a log line.
import { mkdtemp, readFile, stat, utimes, writeFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it, vi } from 'vitest';
import { LOCK_REFRESH_MS } from '../../pipeline/lock.ts';
import { acquireRunLock, RunDirLockedError } from '../../pipeline/runner.ts';

const linux = (() => {
  try {
    readFileSync('/proc/self/stat');
    return true;
  } catch {
    return false;
  }
})();
/** Field 22 of /proc/<pid>/stat: the process's start time in clock ticks after boot. */
const startOf = (pid: number) => readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ')[19];

async function lockedDir(body: object) {
  const runDir = await mkdtemp(join(tmpdir(), 'lock-'));
  await writeFile(join(runDir, 'pipeline.lock'), JSON.stringify(body));
  return runDir;
}

async function takeOver(runDir: string) {
  const lines: string[] = [];
  const release = await acquireRunLock(runDir, { log: (l) => lines.push(l) });
  const body = JSON.parse(await readFile(join(runDir, 'pipeline.lock'), 'utf8'));
  await release();
  return { lines, body };
}

describe('acquireRunLock', () => {
  it('records pid, host and start time, and frees the lock on release', async () => {
    const { lines, body } = await takeOver(await mkdtemp(join(tmpdir(), 'lock-')));
    expect(lines).toEqual([]);
    expect(body).toMatchObject({ pid: process.pid, host: hostname() });
    if (linux) expect(body.process_start).toBe(startOf(process.pid));
  });

  it('refuses a live holder on this host, naming it', async () => {
    // pid 1 is always alive.
    const runDir = await lockedDir({ pid: 1, host: hostname(), ...(linux ? { process_start: startOf(1) } : {}) });
    await expect(acquireRunLock(runDir)).rejects.toThrow(RunDirLockedError);
    await expect(acquireRunLock(runDir)).rejects.toThrow(/in use by process 1 on /);
  });

  it('takes over a dead holder and says so in one line', async () => {
    // A pid far above pid_max cannot be alive.
    const { lines, body } = await takeOver(await lockedDir({ pid: 2 ** 30, host: hostname() }));
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(new RegExp(`taking over the stale lock of process ${2 ** 30} on ${hostname()}`));
    expect(body.pid).toBe(process.pid);
  });

  it.runIf(linux)('takes over a lock whose pid now belongs to another process (another start time)', async () => {
    const { lines, body } = await takeOver(await lockedDir({ pid: 1, host: hostname(), process_start: String(Number(startOf(1)) + 12345) }));
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/stale lock of process 1 .*pid now belongs to another process/);
    expect(body.pid).toBe(process.pid);
  });

  it("refuses another host's lock while it is refreshed, and takes it over once it is not", async () => {
    const runDir = await lockedDir({ pid: 2 ** 30, host: 'other-host.example' });
    await expect(acquireRunLock(runDir)).rejects.toThrow(/in use by process 1073741824 on other-host.example/);
    const old = new Date(Date.now() - 11 * 60_000);
    await utimes(join(runDir, 'pipeline.lock'), old, old);
    const { lines, body } = await takeOver(runDir);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/stale lock of process 1073741824 on other-host.example .*not refreshed for 11 min/);
    expect(body.host).toBe(hostname());
  });

  it('treats an unreadable lock body as stale', async () => {
    const runDir = await mkdtemp(join(tmpdir(), 'lock-'));
    await writeFile(join(runDir, 'pipeline.lock'), '{"pid": ');
    const { lines, body } = await takeOver(runDir);
    expect(lines[0]).toMatch(/taking over the stale lock .*unreadable/);
    expect(body.pid).toBe(process.pid);
  });

  it('rewrites the lock while held, so other hosts see it live', async () => {
    const runDir = await mkdtemp(join(tmpdir(), 'lock-'));
    const path = join(runDir, 'pipeline.lock');
    vi.useFakeTimers({ toFake: ['setInterval', 'clearInterval'] });
    try {
      const release = await acquireRunLock(runDir);
      const old = new Date(Date.now() - 5 * 60_000);
      await utimes(path, old, old);
      vi.advanceTimersByTime(LOCK_REFRESH_MS);
      for (let i = 0; i < 100 && (await stat(path)).mtimeMs < Date.now() - 60_000; i++) await new Promise((r) => setTimeout(r, 10));
      expect((await stat(path)).mtimeMs).toBeGreaterThan(Date.now() - 60_000);
      expect(JSON.parse(await readFile(path, 'utf8')).pid).toBe(process.pid);
      await release();
      await expect(stat(path)).rejects.toThrow(/ENOENT/);
    } finally {
      vi.useRealTimers();
    }
  });
});
