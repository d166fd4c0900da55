// Atomic file writes: a file appears whole or not at all, one temporary-name spelling, directory
// fsync best effort, and the leftovers of dead writers found and removed.
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import {
  asidePath,
  leftovers,
  processAlive,
  removeStaleLeftovers,
  replaceDir,
  syncDir,
  tempPath,
  writeFileAtomic,
} from '../../data/files.ts';

// Records the paths opened read-only (how syncDir opens a folder) and can refuse them, as Windows does.
const dirOpens = vi.hoisted(() => ({ paths: [] as string[], refuse: false }));
vi.mock('node:fs/promises', async (importOriginal) => {
  const real = await importOriginal<typeof import('node:fs/promises')>();
  const open = async (path: string, flags?: string, mode?: number) => {
    if (flags === 'r') {
      dirOpens.paths.push(String(path));
      if (dirOpens.refuse) throw Object.assign(new Error(`EISDIR: illegal operation on a directory, open '${path}'`), { code: 'EISDIR' });
    }
    return real.open(path, flags, mode);
  };
  return { ...real, open, default: { ...real, open } };
});

const DEAD_PID = 99_999_999; // above Linux's pid_max, so never a live process

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'files-'));
  dirOpens.paths.length = 0;
  dirOpens.refuse = false;
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('temporary names', () => {
  it('are <path>.tmp-<pid> and, for a replaced directory, <path>.old-<pid>', () => {
    expect(tempPath('/runs/a/manifest.json')).toBe(`/runs/a/manifest.json.tmp-${process.pid}`);
    expect(asidePath('/runs/a/checkpoint')).toBe(`/runs/a/checkpoint.old-${process.pid}`);
  });
});

describe('writeFileAtomic', () => {
  it('writes text or bytes, replaces the previous file, and leaves only the final name', async () => {
    const path = join(dir, 'x.json');
    await writeFileAtomic(path, 'first');
    await writeFileAtomic(path, 'second, longer');
    expect(await readFile(path, 'utf8')).toBe('second, longer');
    await writeFileAtomic(join(dir, 'y.bin'), Uint8Array.of(1, 2, 255));
    expect([...(await readFile(join(dir, 'y.bin')))]).toEqual([1, 2, 255]);
    expect((await readdir(dir)).sort()).toEqual(['x.json', 'y.bin']);
  });

  it('a write failing half-way leaves the previous file whole and no temporary behind', async () => {
    const path = join(dir, 'x.json');
    await writeFile(path, 'previous');
    let seen: { files: string[]; final: string; temp: string } | null = null;
    async function* failing() {
      yield Buffer.from('half of the new ');
      // Mid-write: the bytes so far are under the temporary name only.
      seen = { files: (await readdir(dir)).sort(), final: await readFile(path, 'utf8'), temp: await readFile(tempPath(path), 'utf8') };
      throw new Error('disk full');
    }
    await expect(writeFileAtomic(path, failing() as unknown as Uint8Array)).rejects.toThrow('disk full');
    expect(seen).toEqual({ files: ['x.json', `x.json.tmp-${process.pid}`], final: 'previous', temp: 'half of the new ' });
    expect(await readFile(path, 'utf8')).toBe('previous');
    expect(await readdir(dir)).toEqual(['x.json']);
  });

  it('fails on a missing folder without creating anything', async () => {
    await expect(writeFileAtomic(join(dir, 'no', 'x.json'), 'x')).rejects.toThrow(/ENOENT/);
    expect(await readdir(dir)).toEqual([]);
  });

  it('flushes the folder after the rename, and still succeeds where a folder cannot be opened', async () => {
    await writeFileAtomic(join(dir, 'x.json'), 'a');
    expect(dirOpens.paths).toEqual([dir]);
    dirOpens.refuse = true;
    await writeFileAtomic(join(dir, 'x.json'), 'b');
    expect(dirOpens.paths).toEqual([dir, dir]);
    expect(await readFile(join(dir, 'x.json'), 'utf8')).toBe('b');
    await expect(syncDir(join(dir, 'missing'))).resolves.toBeUndefined();
  });
});

describe('processAlive', () => {
  it('tells a live process from a dead one', () => {
    expect(processAlive(process.pid)).toBe(true);
    expect(processAlive(1)).toBe(true); // init: alive, though perhaps not ours to signal (EPERM)
    expect(processAlive(DEAD_PID)).toBe(false);
  });
});

describe('replaceDir and leftovers', () => {
  it('replaces a directory, with or without a previous one, and sets nothing aside for good', async () => {
    const target = join(dir, 'checkpoint');
    for (const content of ['one', 'two']) {
      await mkdir(tempPath(target));
      await writeFile(join(tempPath(target), 'f'), content);
      await replaceDir(tempPath(target), target);
      expect(await readFile(join(target, 'f'), 'utf8')).toBe(content);
      expect(await readdir(dir)).toEqual(['checkpoint']);
    }
  });

  it('finds <path>.tmp-<pid> / .old-<pid> siblings and removes only those of dead processes', async () => {
    const target = join(dir, 'checkpoint');
    const names = [`checkpoint.tmp-${DEAD_PID}`, `checkpoint.old-${DEAD_PID}`, `checkpoint.tmp-${process.pid}`, 'checkpoint.tmp-1', `checkpoints.tmp-${DEAD_PID}`, 'checkpoint.tmp-x', 'checkpoint'];
    for (const n of names) await mkdir(join(dir, n));
    const found = (await leftovers(target)).map((l) => [l.path, l.kind, l.pid]).sort();
    expect(found).toEqual(
      [
        [join(dir, `checkpoint.old-${DEAD_PID}`), 'old', DEAD_PID],
        [join(dir, `checkpoint.tmp-${DEAD_PID}`), 'tmp', DEAD_PID],
        [join(dir, `checkpoint.tmp-${process.pid}`), 'tmp', process.pid],
        [join(dir, 'checkpoint.tmp-1'), 'tmp', 1],
      ].sort(),
    );
    await removeStaleLeftovers(target);
    expect((await readdir(dir)).sort()).toEqual(['checkpoint', `checkpoint.tmp-${process.pid}`, 'checkpoint.tmp-1', 'checkpoint.tmp-x', `checkpoints.tmp-${DEAD_PID}`].sort());
    expect(await leftovers(join(dir, 'missing', 'checkpoint'))).toEqual([]);
  });
});
