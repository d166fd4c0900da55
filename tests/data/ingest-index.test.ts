// Ingest's file index: write/read round trip, refusal of an altered or foreign index, and the diff.
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { INDEX_VERSION, IndexError, diffIndex, readIndex, removeStaleIndexes, writeIndex, type FileIndex } from '../../data/ingest-index.ts';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ingest-index-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const index: FileIndex = {
  version: INDEX_VERSION,
  settings: { size: 8, input: '/data/x' },
  classes: ['a', 'b'],
  files: [
    { id: 'a/1.png', size: 10, mtimeMs: 1700000000123.4567, label: 0, shard: 'shard-00000.arrow', row: 0 },
    { id: 'a/bad.jpg', size: 3, mtimeMs: 1, label: 0, rejected: 'unsupported image format' },
    { id: 'b/gone.png', size: null, mtimeMs: null, label: 1, rejected: 'cannot read: ENOENT' },
  ],
};

describe('file index', () => {
  it('round-trips under a content-derived name (fractional mtimes exactly)', async () => {
    const ref = await writeIndex(dir, index);
    expect(ref.path).toMatch(/^files-[0-9a-f]{16}\.jsonl$/);
    expect(ref.files).toBe(3);
    expect(await readIndex(dir, ref)).toEqual(index);
    expect((await writeIndex(dir, index)).path).toBe(ref.path);
  });

  it('refuses an altered index, a malformed reference and another version', async () => {
    const ref = await writeIndex(dir, index);
    await expect(readIndex(dir, { ...ref, path: '../x.jsonl' })).rejects.toThrow(IndexError);
    await writeFile(join(dir, ref.path), '{}\n');
    await expect(readIndex(dir, ref)).rejects.toThrow(/differs from the sha256 the manifest records/);
    const old = await writeIndex(dir, { ...index, version: INDEX_VERSION + 1 });
    await expect(readIndex(dir, old)).rejects.toThrow(/of another version/);
  });

  it('removeStaleIndexes keeps only the named one', async () => {
    const a = await writeIndex(dir, index);
    await writeIndex(dir, { ...index, classes: ['x'] });
    await writeFile(join(dir, 'manifest.json'), '{}');
    await removeStaleIndexes(dir, a.path);
    expect((await readdir(dir)).sort()).toEqual([a.path, 'manifest.json']);
  });

  it('diffIndex sorts files into unchanged, changed (size, mtime or label), added and removed', () => {
    const d = diffIndex(index.files, [
      { id: 'a/1.png', size: 10, mtimeMs: 1700000000123.4567, label: 1 }, // relabelled
      { id: 'a/bad.jpg', size: 3, mtimeMs: 1, label: 0 },
      { id: 'a/new.png', size: 5, mtimeMs: 2, label: 0 },
    ]);
    expect(d.counts).toEqual({ added: 1, changed: 1, removed: 1, unchanged: 1 });
    expect(d.unchanged.map((f) => f.id)).toEqual(['a/bad.jpg']);
    expect([...d.decode].sort()).toEqual(['a/1.png', 'a/new.png']);
    expect([...d.drop]).toEqual(['a/1.png']); // b/gone.png had no row to drop
  });
});
