// Failed writes and failed re-runs: a shard write that hits ENOSPC (injected into node:fs's
// writeSync, and on a real full tmpfs), a --strict re-run that stops half-way, and leftovers of a
// killed run. Each must report the real error, leave no temporary file, and keep the previous
// dataset byte for byte.
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { cp, mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { FileWriteError } from '../../data/files.ts';
import { readManifest } from '../../data/manifest.ts';
import { loadImages } from '../../data/memory.ts';
import { schemaInfo } from '../../data/schemas.ts';
import { ShardWriter, writeShards } from '../../data/shards.ts';
import { main } from '../../pipeline/cli.ts';
import { makeSyntheticDataset } from '../../scripts/synthetic.ts';
import { augmentStage } from '../../stages/augment.ts';
import { IngestInputError, ingest } from '../../stages/ingest.ts';

/** Bytes shard files may still take before writeSync fails with ENOSPC; null: no limit. */
const disk = vi.hoisted(() => ({ left: null as number | null, shardFds: new Set<number>() }));
vi.mock('node:fs', async (importOriginal) => {
  const fs = await importOriginal<typeof import('node:fs')>();
  const openSync = ((path: string, ...rest: unknown[]) => {
    const fd = (fs.openSync as (...a: unknown[]) => number)(path, ...rest);
    if (/\.arrow\.tmp-\d+$/.test(String(path))) disk.shardFds.add(fd);
    return fd;
  }) as typeof fs.openSync;
  const writeSync = ((fd: number, buffer: Uint8Array, offset?: number, length?: number, ...rest: unknown[]) => {
    if (disk.left !== null && disk.shardFds.has(fd)) {
      const want = length ?? buffer.byteLength - (offset ?? 0);
      if (want > disk.left) throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', errno: -28, syscall: 'write' });
      disk.left -= want;
    }
    return (fs.writeSync as (...a: unknown[]) => number)(fd, buffer, offset, length, ...rest);
  }) as typeof fs.writeSync;
  return { ...fs, default: { ...fs, openSync, writeSync }, openSync, writeSync };
});

/** sha256 of every file in a folder, by name: "byte-identical" made checkable. */
async function snapshot(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const f of (await readdir(dir)).sort()) out[f] = createHash('sha256').update(await readFile(join(dir, f))).digest('hex');
  return out;
}
const temporaries = async (dir: string) => (await readdir(dir)).filter((f) => /\.(tmp|old)-\d+$/.test(f));

let root: string;
let images: string;
beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'write-faults-'));
  images = join(root, 'images');
  await makeSyntheticDataset({ dir: images, perClass: 6, size: 12, classes: ['disc', 'square'] });
});
afterAll(async () => {
  disk.left = null;
  await rm(root, { recursive: true, force: true });
});

describe('ShardWriter on a full disk', () => {
  const info = schemaInfo('images', { imageShape: [4, 4, 3] }, []);
  const cols = (n: number) => ({ id: Array.from({ length: n }, (_, i) => `r${i}`), label: new Array(n).fill(null), image: new Uint8Array(n * 48) });

  it.each([200, 1500, 3000])('ENOSPC after %d bytes: one error naming the shard and ENOSPC, no temporary left', async (bytes) => {
    const dir = await mkdtemp(join(root, 'writer-'));
    disk.left = bytes;
    try {
      const err = await writeShards({ dir, schema: info, maxRows: 20 }, [cols(30), cols(30)]).catch((e) => e);
      expect(err).toBeInstanceOf(FileWriteError);
      expect(err.code).toBe('ENOSPC');
      expect(err.message).toMatch(new RegExp(`^${dir}/shard-0000\\d\\.arrow: write failed: ENOSPC: no space left on device`));
      expect(err.message).not.toMatch(/AsyncQueue|\n/);
    } finally {
      disk.left = null;
    }
    expect(await readdir(dir)).toEqual([]);
  });

  it('abort after a failed write does not throw', async () => {
    const dir = await mkdtemp(join(root, 'writer-'));
    const writer = new ShardWriter({ dir, schema: info });
    disk.left = 100;
    await expect(writer.write(cols(30))).rejects.toThrow(/ENOSPC/);
    disk.left = null;
    await expect(writer.abort()).resolves.toBeUndefined();
    expect(await readdir(dir)).toEqual([]);
  });
});

describe('a failed re-run keeps the previous dataset', () => {
  /** An ingested dataset of 12 images in shards of 5 rows, and its files' hashes. */
  async function previous(name: string) {
    const outDir = join(root, name);
    await ingest({ input: images, outDir, size: 8, workers: 1, maxRowsPerShard: 5 });
    return { outDir, before: await snapshot(outDir) };
  }

  it('ingest: ENOSPC while writing the new shards (same names as the old ones)', async () => {
    const { outDir, before } = await previous('enospc');
    disk.left = 2000;
    // full: the same files would otherwise be an incremental re-run with nothing to decode.
    const err = await ingest({ input: images, outDir, size: 8, workers: 1, maxRowsPerShard: 2, full: true })
      .catch((e) => e)
      .finally(() => (disk.left = null));
    expect(err).toBeInstanceOf(FileWriteError);
    expect(err.message).toMatch(new RegExp(`^${outDir}/shard-\\d{5}\\.arrow: write failed: ENOSPC`));
    expect(await snapshot(outDir)).toEqual(before);
    expect((await loadImages(outDir)).ids).toHaveLength(12);
  });

  it('ingest: a --strict re-run that stops at a corrupt image added since', async () => {
    const { outDir, before } = await previous('strict');
    const input = join(root, 'images-bad');
    await cp(images, input, { recursive: true });
    await writeFile(join(input, 'square', 'zz-broken.png'), 'not a PNG');
    await expect(ingest({ input, outDir, size: 8, workers: 1, strict: true })).rejects.toThrow(IngestInputError);
    expect(await snapshot(outDir)).toEqual(before);
  });

  it('augment: ENOSPC while writing the new views', async () => {
    const { outDir: data } = await previous('augment-input');
    const outDir = join(root, 'augment-out');
    await augmentStage({ data, outDir, workers: 1, maxRowsPerShard: 5 });
    const before = await snapshot(outDir);
    disk.left = 1500;
    const err = await augmentStage({ data, outDir, workers: 1, seed: 1, maxRowsPerShard: 5 })
      .catch((e) => e)
      .finally(() => (disk.left = null));
    expect(err).toBeInstanceOf(FileWriteError);
    expect(err.message).toMatch(/ENOSPC/);
    expect(await snapshot(outDir)).toEqual(before);
  });

  it('a successful re-run replaces the old dataset and removes its extra shards', async () => {
    const { outDir } = await previous('replace');
    const second = await ingest({ input: images, outDir, size: 6, workers: 1 });
    const files = (await readdir(outDir)).sort();
    expect(files.filter((f) => !/^files-[0-9a-f]{16}\.jsonl$/.test(f))).toEqual(['manifest.json', 'rejected.jsonl', 'shard-00000.arrow']);
    expect(files.filter((f) => f.startsWith('files-'))).toHaveLength(1); // the new file index only
    expect((await readManifest(outDir)).image_shape).toEqual([6, 6, 3]);
    expect((await loadImages(outDir)).ids).toHaveLength(second.rows);
  });

  it('the CLI exits 1 with one line naming the shard and ENOSPC', async () => {
    const runDir = join(root, 'cli-run');
    const io = (err: string[]) => ({ stdout: () => undefined, stderr: (l: string) => err.push(l), stderrStream: { isTTY: false, write: () => true } as unknown as NodeJS.WriteStream });
    expect(await main(['run', 'ingest', '--run-dir', runDir, '--input', images, '--size', '8', '--workers', '1'], io([]))).toBe(0);
    const err: string[] = [];
    disk.left = 500;
    const code = await main(['run', 'ingest', '--run-dir', runDir, '--input', images, '--size', '9', '--workers', '1'], io(err)).finally(() => (disk.left = null));
    expect(code).toBe(1);
    const failure = err.filter((l) => l.startsWith('pipeline: '));
    expect(failure).toHaveLength(1);
    expect(failure[0]).toMatch(new RegExp(`^pipeline: ${runDir}/ingest/shard-00000\\.arrow: write failed: ENOSPC`));
    expect(await temporaries(join(runDir, 'ingest'))).toEqual([]);
  });
});

describe('leftovers of a killed run', () => {
  it('are removed by the next run in that folder, with a log line naming them; a live process keeps its own', async () => {
    const outDir = join(root, 'leftovers');
    await mkdir(outDir, { recursive: true });
    const dead = 2 ** 31 - 2; // above any pid_max: no such process
    const stale = [`shard-00003.arrow.tmp-${dead}`, `manifest.json.tmp-${dead}`, `shard-00000.arrow.old-${dead}`];
    for (const f of stale) await writeFile(join(outDir, f), 'x'.repeat(1000));
    const live = `shard-00001.arrow.tmp-${process.ppid}`;
    await writeFile(join(outDir, live), 'y');
    const lines: string[] = [];
    await ingest({ input: images, outDir, size: 8, workers: 1, log: (l) => lines.push(l) });
    expect(await temporaries(outDir)).toEqual([live]);
    const line = lines.find((l) => l.includes('left by an interrupted run'));
    expect(line).toBeDefined();
    for (const f of stale) expect(line).toContain(join(outDir, f));
  });
});

/** A real full file system: a 2 MiB tmpfs, where we may mount one (root in a sandbox that allows it). */
describe('on a real full file system (2 MiB tmpfs)', () => {
  const mountPoint = join(tmpdir(), `write-faults-tmpfs-${process.pid}`);
  let mounted = false;
  beforeAll(() => {
    try {
      execFileSync('mkdir', ['-p', mountPoint]);
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', mountPoint], { stdio: 'ignore' });
      mounted = true;
    } catch {
      mounted = false;
    }
  });
  afterAll(() => {
    if (mounted) execFileSync('umount', [mountPoint]);
    execFileSync('rmdir', [mountPoint]);
  });

  it('a re-run too large for the disk fails with ENOSPC and keeps the previous dataset', async (ctx) => {
    if (!mounted) ctx.skip('cannot mount a tmpfs here');
    const outDir = join(mountPoint, 'data');
    await ingest({ input: images, outDir, size: 16, workers: 1 });
    const before = await snapshot(outDir);
    // 12 images at 300×300×3 take 3.1 MiB: more than the whole disk.
    const err = await ingest({ input: images, outDir, size: 300, workers: 1 }).catch((e) => e);
    expect(err).toBeInstanceOf(FileWriteError);
    expect(err.code).toBe('ENOSPC');
    expect(err.message).toMatch(new RegExp(`^${outDir}/`));
    expect(await snapshot(outDir)).toEqual(before);
    expect(await temporaries(outDir)).toEqual([]);
  });
});
