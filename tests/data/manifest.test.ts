// Dataset manifest: write/read round trip, validation messages, verification by re-hashing,
// reading a dataset through its manifest, and merging the manifests of a partitioned job.
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadImages } from '../../data/memory.ts';
import {
  ManifestError,
  ShardIntegrityError,
  mergePartManifests,
  partPrefix,
  readDataset,
  readManifest,
  validateManifest,
  verifyManifest,
  writeManifest,
  type DatasetManifest,
} from '../../data/manifest.ts';
import { schemaInfo } from '../../data/schemas.ts';
import { writeShards } from '../../data/shards.ts';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'manifest-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const info = schemaInfo('images', { imageShape: [1, 2, 3] }, ['a', 'b']);

async function makeDataset(prefix = 'shard'): Promise<DatasetManifest> {
  const rows = (start: number, n: number) => ({
    id: Array.from({ length: n }, (_, i) => `x/${start + i}`),
    label: Array.from({ length: n }, (_, i) => (start + i) % 2),
    image: Uint8Array.from({ length: n * 6 }, (_, k) => (start * 6 + k) % 256),
  });
  const shards = await writeShards({ dir, schema: info, maxRows: 4, prefix }, [rows(0, 6), rows(6, 4)]);
  return {
    schema_version: 1,
    schema: 'images',
    rows: 10,
    classes: ['a', 'b'],
    class_counts: { a: 5, b: 5 },
    image_shape: [1, 2, 3],
    shards,
    rejected: 0,
  };
}

describe('manifest', () => {
  it('round-trips through writeManifest/readManifest, keeping extra keys', async () => {
    const m = { ...(await makeDataset()), source: { input: '/data', kind: 'folder' } };
    const path = await writeManifest(dir, m);
    expect(path).toBe(join(dir, 'manifest.json'));
    expect(await readManifest(dir)).toEqual(m);
    expect(await readManifest(path)).toEqual(m);
    expect((await readdir(dir)).filter((f) => /\.tmp-\d+$/.test(f))).toEqual([]);
  });

  it('refuses to write an invalid manifest and leaves no file', async () => {
    const m = await makeDataset();
    await expect(writeManifest(dir, { ...m, rows: 11 })).rejects.toThrow(/shards hold 10 rows but rows is 11/);
    expect(await readdir(dir)).not.toContain('manifest.json');
  });

  it.each([
    [{ schema_version: 2 }, /schema_version must be 1/],
    [{ schema: 'pictures' }, /schema must be one of images, views/],
    [{ rows: -1 }, /rows must be a non-negative integer/],
    [{ classes: ['a', 'a'] }, /classes has duplicate names/],
    [{ class_counts: { c: 1 } }, /class_counts names "c", which is not in classes/],
    [{ class_counts: { a: 8, b: 8 } }, /class_counts add up to 16, more than rows 10/],
    [{ image_shape: [1, 2] }, /image_shape must be \[H, W, 3\]/],
    [{ shards: [{ path: '../x.arrow', rows: 10, sha256: 'a'.repeat(64) }] }, /shards\[0\]\.path must be a path inside the dataset folder/],
    [{ shards: [{ path: 'x.arrow', rows: 10, sha256: 'zz' }] }, /shards\[0\]\.sha256 must be 64 hex digits/],
    [{ rejected: 1.5 }, /rejected must be a non-negative integer/],
  ])('validation names the field: %j', async (patch, message) => {
    const m = { ...(await makeDataset()), ...patch };
    expect(() => validateManifest(m, 'some/manifest.json')).toThrow(message);
    expect(() => validateManifest(m, 'some/manifest.json')).toThrow(/^some\/manifest\.json: /);
  });

  it('reports a missing manifest and bad JSON with the path', async () => {
    await expect(readManifest(dir)).rejects.toThrow(`${join(dir, 'manifest.json')}: no manifest`);
    await writeFile(join(dir, 'manifest.json'), '{"rows": ');
    const err = await readManifest(dir).catch((e) => e);
    expect(err).toBeInstanceOf(ManifestError);
    expect(err.message).toMatch(/manifest\.json: not valid JSON/);
  });

  it('verify re-hashes shards: passes intact, names a changed or missing shard', async () => {
    const m = await makeDataset();
    await writeManifest(dir, m);
    expect(await verifyManifest(dir)).toEqual({ ok: true, problems: [] });
    const first = join(dir, m.shards[0].path);
    const bytes = await readFile(first);
    bytes[bytes.length >> 1] ^= 1;
    await writeFile(first, bytes);
    await rm(join(dir, m.shards[2].path));
    const result = await verifyManifest(dir);
    expect(result.ok).toBe(false);
    expect(result.problems).toHaveLength(2);
    expect(result.problems[0]).toMatch(/shard-00000\.arrow: sha256 [0-9a-f]{64} differs from the manifest's/);
    expect(result.problems[1]).toMatch(/shard-00002\.arrow: missing or unreadable \(ENOENT\)/);
  });

  it('readDataset yields every row in order across shards', async () => {
    await writeManifest(dir, await makeDataset());
    const ids: string[] = [];
    const shards = new Set<string>();
    for await (const batch of readDataset(dir, { schema: 'images' })) {
      ids.push(...batch.columns.id);
      shards.add(batch.shard);
      expect(batch.columns.image.length).toBe(batch.numRows * 6);
    }
    expect(ids).toEqual(Array.from({ length: 10 }, (_, i) => `x/${i}`));
    expect(shards.size).toBe(3);
    await expect(readDataset(dir, { schema: 'views' }).next()).rejects.toThrow(/schema is images, expected views/);
  });
});

describe('readers check each shard against the manifest', () => {
  /** Flips one byte of the first shard: in a record batch (the middle) or in the footer (near the end). */
  async function damage(where: 'middle' | 'footer'): Promise<{ path: string; sha256: string }> {
    const m = await makeDataset();
    await writeManifest(dir, m);
    const path = join(dir, m.shards[0].path);
    const bytes = await readFile(path);
    const footerLength = bytes.readInt32LE(bytes.length - 10);
    const at = where === 'middle' ? bytes.length >> 1 : bytes.length - 10 - (footerLength >> 1);
    bytes[at] ^= 0x40;
    await writeFile(path, bytes);
    return { path, sha256: m.shards[0].sha256 };
  }

  it.each(['middle', 'footer'] as const)('refuses a shard with a byte flipped in the %s, naming it, before any row', async (where) => {
    // An intact read first, so the per-process memo of intact shards is filled and then invalidated.
    await writeManifest(dir, await makeDataset());
    expect((await loadImages(dir)).ids).toHaveLength(10);
    const { path, sha256 } = await damage(where);
    const rows: string[] = [];
    const err = await (async () => {
      for await (const b of readDataset(dir, { schema: 'images' })) rows.push(...b.columns.id);
    })().catch((e) => e);
    expect(rows).toEqual([]);
    expect(err).toBeInstanceOf(ShardIntegrityError);
    expect(err.name).toBe('ShardIntegrityError');
    expect(err.message).toBe(`${path}: sha256 ${err.message.match(/sha256 ([0-9a-f]{64})/)[1]} differs from the manifest's ${sha256}; re-run the stage that produced it with --force`);
    expect(err.message).not.toMatch(/\n/);
    await expect(loadImages(dir)).rejects.toThrow(ShardIntegrityError);
    await expect(loadImages(dir)).rejects.toThrow(path);
  });

  it('refuses a shard of the wrong size without hashing it, and a missing one', async () => {
    const m = await makeDataset();
    await writeManifest(dir, m);
    const path = join(dir, m.shards[1].path);
    await writeFile(path, Buffer.concat([await readFile(path), Buffer.from([0])]));
    await expect(loadImages(dir)).rejects.toThrow(`${path}: size ${m.shards[1].bytes! + 1} bytes differs from the manifest's ${m.shards[1].bytes}`);
    await rm(path);
    await expect(loadImages(dir)).rejects.toThrow(`${path}: missing or unreadable (ENOENT); re-run the stage that produced it with --force`);
  });
});

describe('mergePartManifests', () => {
  it('combines all parts and their rejected lists, and names missing parts', async () => {
    const parts: DatasetManifest[] = [];
    for (let p = 0; p < 2; p++) {
      const m = { ...(await makeDataset(`${partPrefix(p, 2)}-shard`)), rejected: p };
      parts.push(m);
      if (p === 0) await expect(mergePartManifests(dir)).rejects.toThrow(/no part-/);
      await writeManifest(dir, m, `${partPrefix(p, 2)}.manifest.json`);
      if (p === 1) await writeFile(join(dir, `${partPrefix(p, 2)}.rejected.jsonl`), '{"path":"x/bad.jpg","reason":"truncated"}\n');
      if (p === 0) await expect(mergePartManifests(dir)).rejects.toThrow(/1 of 2 parts missing or unfinished: 1 \(part-00001-of-00002\); re-run those parts \(--shard-index I --num-shards 2\)/);
    }
    const merged = await mergePartManifests(dir);
    expect(merged.rows).toBe(20);
    expect(merged.class_counts).toEqual({ a: 10, b: 10 });
    expect(merged.rejected).toBe(1);
    expect(merged.shards.map((s) => s.path)).toEqual([...parts[0].shards, ...parts[1].shards].map((s) => s.path));
    expect(merged.parts).toEqual({ count: 2 });
    expect(await readManifest(dir)).toEqual(merged);
    expect(await readFile(join(dir, 'rejected.jsonl'), 'utf8')).toBe('{"path":"x/bad.jpg","reason":"truncated"}\n');
    expect((await verifyManifest(dir)).ok).toBe(true);
  });

  it('refuses parts of two configs or two counts, and a part recording another index', async () => {
    const part = (p: number, count: number, config: string) => ({ index: p, count, config_sha256: config.repeat(64), listing_sha256: 'c'.repeat(64), listing_images: 20 });
    await writeManifest(dir, { ...(await makeDataset(`${partPrefix(0, 2)}-shard`)), part: part(0, 2, 'a') }, `${partPrefix(0, 2)}.manifest.json`);
    await writeManifest(dir, { ...(await makeDataset(`${partPrefix(1, 2)}-shard`)), part: part(1, 2, 'b') }, `${partPrefix(1, 2)}.manifest.json`);
    await expect(mergePartManifests(dir)).rejects.toThrow(/part-00001-of-00002\.manifest\.json: cannot merge: its config \(part\.config_sha256\) is "b{64}", part-00000-of-00002\.manifest\.json's is "a{64}" \(parts of two different runs\)/);
    await writeManifest(dir, { ...(await makeDataset(`${partPrefix(1, 2)}-shard`)), part: part(0, 2, 'a') }, `${partPrefix(1, 2)}.manifest.json`);
    await expect(mergePartManifests(dir)).rejects.toThrow(/part-00001-of-00002\.manifest\.json: records part 0 of 2, not 1 of 2/);
    await writeManifest(dir, { ...(await makeDataset(`${partPrefix(0, 3)}-shard`)), part: part(0, 3, 'a') }, `${partPrefix(0, 3)}.manifest.json`);
    await expect(mergePartManifests(dir)).rejects.toThrow(/cannot merge: parts of 2 and 3 parts in one directory/);
    await expect(readManifest(dir)).rejects.toThrow(/no manifest/);
  });
});
