// The launcher (bin/malloc-tuning.mjs): its child, the real run, dies with it, even when the
// launcher is killed with SIGKILL, and leaves the run lock to the next run.
import { spawn } from 'node:child_process';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { ORPHAN_GRACE_MS } from '../../bin/malloc-tuning.mjs';
import { processAlive } from '../../data/files.ts';
import { processStart } from '../../pipeline/lock.ts';
import { acquireRunLock } from '../../pipeline/runner.ts';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const glibc = process.platform === 'linux' && typeof (process.report?.getReport() as { header?: { glibcVersionRuntime?: string } })?.header?.glibcVersionRuntime === 'string';

/** Starts `bin/run-ts.mjs` on the lock-holding fixture and resolves to the launcher and its child's pid once the child holds the lock. */
async function launch(runDir: string, ...args: string[]) {
  const env = { ...process.env };
  for (const k of ['SIMCLR_MALLOC_TUNING', 'MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_']) delete env[k];
  const launcher = spawn(process.execPath, [join(ROOT, 'bin/run-ts.mjs'), join(ROOT, 'tests/bin/fixtures/hold-lock.ts'), runDir, ...args], { env, stdio: ['ignore', 'pipe', 'inherit'] });
  const line = await new Promise<string>((resolveLine, reject) => {
    let text = '';
    launcher.stdout.on('data', (chunk) => {
      text += chunk;
      if (text.includes('\n')) resolveLine(text.split('\n')[0]);
    });
    launcher.on('exit', (code) => reject(new Error(`launcher exited ${code} before its child started`)));
  });
  const child = JSON.parse(line) as { pid: number; ppid: number; tuned: string | null };
  return { launcher, child };
}

/** Milliseconds until `pid` has exited (a zombie counts: the container's init reaps about once a second), or Infinity. */
async function gone(pid: number, withinMs: number): Promise<number> {
  const start = Date.now();
  while (processAlive(pid) && !processStart(pid)?.gone) {
    if (Date.now() - start > withinMs) return Infinity;
    await new Promise((r) => setTimeout(r, 50));
  }
  return Date.now() - start;
}

describe.runIf(glibc)('launcher child process', () => {
  it.each([
    ['a run that stops on SIGTERM', [], 1_000],
    ['a run that ignores SIGTERM (killed after the grace period)', ['--ignore-sigterm'], ORPHAN_GRACE_MS + 1_500],
  ])('dies with a SIGKILLed launcher and frees the run lock: %s', async (_, args, withinMs) => {
    const runDir = await mkdtemp(join(tmpdir(), 'launcher-'));
    const { launcher, child } = await launch(runDir, ...args);
    try {
      expect(child).toMatchObject({ ppid: launcher.pid, tuned: '1' });
      launcher.kill('SIGKILL');
      expect(await gone(child.pid, withinMs)).toBeLessThan(withinMs);
      const release = await acquireRunLock(runDir);
      await release();
    } finally {
      if (processAlive(child.pid)) process.kill(child.pid, 'SIGKILL');
    }
  }, 20_000);
});
