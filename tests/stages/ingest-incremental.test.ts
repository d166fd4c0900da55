// Incremental ingest: a rerun on a folder that gained, lost and changed files decodes only those,
// keeps the untouched shards byte for byte, and holds the same rows by id as a fresh ingest; a
// killed or failed run leaves the previous dataset whole; other settings or classes mean a full run.
import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, readFile, readdir, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { datasetHash, mergePartManifests, readDataset, readManifest, verifyManifest, type DatasetManifest } from '../../data/manifest.ts';
import { ingest, type IngestOptions } from '../../stages/ingest.ts';
import { runCli } from '../helpers.ts';

const SIZE = 8;
let root: string;

/** A PNG of one colour; `n` picks the colour, so every file's pixels differ. */
const png = (path: string, n: number) =>
  sharp({ create: { width: 12, height: 10, channels: 3, background: { r: (n * 37) % 256, g: (n * 91) % 256, b: (n * 53) % 256 } } }).png().toFile(path);

/** Classes a, b, c with 6 images each, and one file that is not an image in b. */
async function makeFolder(dir: string): Promise<void> {
  let n = 0;
  for (const c of ['a', 'b', 'c']) {
    await mkdir(join(dir, c), { recursive: true });
    for (let i = 0; i < 6; i++) await png(join(dir, c, `${i}.png`), n++);
  }
  await writeFile(join(dir, 'b', 'bad.jpg'), 'not a JPEG\n');
}

/** Every row as id → label + pixels, and the ids in dataset order. */
async function rowsOf(dir: string) {
  const rows = new Map<string, { label: number | null; pixels: Buffer }>();
  const order: string[] = [];
  const per = SIZE * SIZE * 3;
  for await (const b of readDataset(dir, { schema: 'images' })) {
    b.columns.id.forEach((id, i) => {
      rows.set(id, { label: b.columns.label[i], pixels: Buffer.from(b.columns.image.subarray(i * per, (i + 1) * per)) });
      order.push(id);
    });
  }
  return { rows, order };
}

/** Each shard's sha256 and file mtime, by path. */
async function shardFiles(dir: string, m: DatasetManifest) {
  return new Map(await Promise.all(m.shards.map(async (s) => [s.path, { sha256: s.sha256, mtimeNs: (await stat(join(dir, s.path), { bigint: true })).mtimeNs }] as const)));
}

async function expectSameAsFresh(input: string, out: string) {
  const fresh = await ingest({ input, outDir: await mkdtemp(join(root, 'fresh-')), size: SIZE, workers: 1 });
  const a = await rowsOf(out);
  const b = await rowsOf(fresh.outDir);
  expect([...a.rows.keys()].sort()).toEqual([...b.rows.keys()].sort());
  for (const [id, row] of a.rows) {
    expect(row.label, id).toBe(b.rows.get(id)!.label);
    expect(row.pixels.equals(b.rows.get(id)!.pixels), id).toBe(true);
  }
  const m = await readManifest(out);
  expect(m).toMatchObject({ rows: fresh.manifest.rows, classes: fresh.manifest.classes, class_counts: fresh.manifest.class_counts, rejected: fresh.manifest.rejected });
  expect(await readFile(join(out, 'rejected.jsonl'), 'utf8')).toBe(await readFile(join(fresh.outDir, 'rejected.jsonl'), 'utf8'));
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'ingest-incr-'));
});

afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('incremental ingest', () => {
  let input: string;
  let out: string;
  const opts = (extra: Partial<IngestOptions> = {}): IngestOptions => ({ input, outDir: out, size: SIZE, workers: 1, maxRowsPerShard: 4, ...extra });

  beforeAll(async () => {
    input = join(root, 'folder');
    out = join(root, 'dataset');
    await makeFolder(input);
  });

  it('decodes only new and changed files, keeps untouched shards, drops removed ids, equals a fresh ingest by id', async () => {
    const first = await ingest(opts());
    // Sorted rows a0-a5 b0-b5 c0-c5 in shards of 4: [a0-a3] [a4 a5 b0 b1] [b2-b5] [c0-c3] [c4 c5].
    expect(first.manifest.shards.map((s) => s.rows)).toEqual([4, 4, 4, 4, 2]);
    expect(first.changes).toMatchObject({ mode: 'full', added: 19, decoded: 19 });
    const before = await shardFiles(out, first.manifest);

    await png(join(input, 'a', 'new1.png'), 100);
    await png(join(input, 'c', 'new2.png'), 101);
    await rm(join(input, 'b', '1.png'));
    await png(join(input, 'c', '3.png'), 102);
    await utimes(join(input, 'c', '3.png'), new Date(), new Date(Date.now() + 5000)); // a new mtime even on a coarse clock
    const progress: Array<[number, number]> = [];
    const lines: string[] = [];
    const second = await ingest(opts({ onProgress: (d, t) => progress.push([d, t]), log: (l) => lines.push(l) }));

    expect(second.changes).toEqual({ mode: 'incremental', reason: null, added: 2, changed: 1, removed: 1, unchanged: 17, decoded: 3, shards_kept: 3, shards_rewritten: 2, shards_new: 1 });
    expect(progress.at(-1)).toEqual([3, 3]); // only the three new or changed files went to the decoder
    expect(lines.join('\n')).toMatch(/incremental: 2 added, 1 changed, 1 removed, 17 unchanged; 3 decoded; shards 3 kept, 2 rewritten, 1 new/);
    const m = await readManifest(out);
    expect(m.changes).toEqual(second.changes);
    // Shards 0, 2, 4 untouched (same file, sha256, mtime); 1 and 3 rewritten under new names; new rows after them.
    expect(m.shards.map((s) => s.path)).toEqual(['shard-00000.arrow', 'shard-00005.arrow', 'shard-00002.arrow', 'shard-00006.arrow', 'shard-00004.arrow', 'shard-00007.arrow']);
    const after = await shardFiles(out, m);
    for (const p of ['shard-00000.arrow', 'shard-00002.arrow', 'shard-00004.arrow']) expect(after.get(p)).toEqual(before.get(p));
    expect(m.shards.map((s) => s.rows)).toEqual([4, 3, 4, 3, 2, 3]);
    expect((await verifyManifest(out)).ok).toBe(true);
    // The replaced shards and the previous index are gone from the folder.
    const files = (await readdir(out)).sort();
    expect(files).toEqual([...m.shards.map((s) => s.path), (m.files_index as { path: string }).path, 'manifest.json', 'rejected.jsonl'].sort());
    const { rows, order } = await rowsOf(out);
    expect(rows.has('b/1.png')).toBe(false);
    expect(order.slice(-3)).toEqual(['a/new1.png', 'c/3.png', 'c/new2.png']); // new shards: sorted among themselves
    // The unreadable file stays rejected without being decoded again.
    expect(JSON.parse((await readFile(join(out, 'rejected.jsonl'), 'utf8')).trim())).toMatchObject({ path: 'b/bad.jpg' });
    await expectSameAsFresh(input, out);
  });

  it('a rerun with nothing changed decodes nothing and leaves the dataset hash as it was', async () => {
    const m0 = await readManifest(out);
    const files0 = await shardFiles(out, m0);
    const r = await ingest(opts());
    expect(r.changes).toMatchObject({ mode: 'incremental', added: 0, changed: 0, removed: 0, decoded: 0, shards_kept: 6, shards_rewritten: 0, shards_new: 0 });
    expect(datasetHash(r.manifest)).toBe(datasetHash(m0));
    expect(await shardFiles(out, r.manifest)).toEqual(files0);
  });

  it('compares size and mtime, not content: a file rewritten with both kept is not read', async () => {
    const path = join(input, 'a', '0.png');
    const original = await readFile(path);
    // Whole seconds, so that utimes can put back exactly the mtime the index records.
    const atime = new Date(2024, 0, 1);
    const mtime = new Date(2024, 0, 2);
    await utimes(path, atime, mtime);
    expect((await ingest(opts())).changes).toMatchObject({ changed: 1, decoded: 1 });
    await writeFile(path, Buffer.alloc(original.length, 0x20)); // garbage: decoding it would reject it
    await utimes(path, atime, mtime);
    const r = await ingest(opts());
    expect(r.changes).toMatchObject({ decoded: 0, unchanged: 20 });
    expect((await rowsOf(out)).rows.has('a/0.png')).toBe(true);
    // `full` decodes everything again and so sees it.
    const full = await ingest(opts({ full: true }));
    expect(full.changes).toMatchObject({ mode: 'full', reason: 'asked for (full)', decoded: 20 });
    expect(full.rejected.map((x) => x.path)).toContain('a/0.png');
    await writeFile(path, original);
    await utimes(path, atime, new Date(mtime.getTime() + 1000));
    expect((await ingest(opts())).changes).toMatchObject({ mode: 'incremental', changed: 1, decoded: 1 });
    await expectSameAsFresh(input, out);
  });

  it('a killed run leaves the previous dataset readable; the next run cleans up and completes', async () => {
    const m0 = await readManifest(out);
    const rows0 = await rowsOf(out);
    await rm(join(input, 'a', '2.png')); // shard 0 gets rewritten before decoding starts
    for (let i = 0; i < 4; i++) await png(join(input, 'b', `k${i}.png`), 200 + i);
    // A child process SIGKILLs itself after the first decoded file: rewritten and new shards are
    // at their temporary names, nothing published.
    const script = join(root, 'killed.mts');
    await writeFile(
      script,
      `import { ingest } from ${JSON.stringify(new URL('../../stages/ingest.ts', import.meta.url).pathname)};
await ingest({ input: ${JSON.stringify(input)}, outDir: ${JSON.stringify(out)}, size: ${SIZE}, workers: 1, batchSize: 1, maxRowsPerShard: 4,
  onProgress: (done) => { if (done === 1) process.kill(process.pid, 'SIGKILL'); } });
`,
    );
    let child: { status?: number | null; signal?: string | null; stderr?: Buffer } = {};
    try {
      execFileSync(process.execPath, ['--import', 'tsx', script], { stdio: 'pipe' });
    } catch (e) {
      child = e as typeof child;
    }
    expect({ signal: child.signal, stderr: String(child.stderr ?? '') }).toEqual({ signal: 'SIGKILL', stderr: '' });
    expect((await readdir(out)).some((f) => /\.tmp-\d+$/.test(f))).toBe(true);
    expect((await verifyManifest(out)).ok).toBe(true);
    expect(datasetHash(await readManifest(out))).toBe(datasetHash(m0));
    expect((await rowsOf(out)).rows).toEqual(rows0.rows);

    const lines: string[] = [];
    const r = await ingest(opts({ log: (l) => lines.push(l) }));
    expect(lines.join('\n')).toMatch(/removed \d+ file\(s\) left by an interrupted run/);
    expect(r.changes).toMatchObject({ mode: 'incremental', added: 4, removed: 1, decoded: 4 });
    expect((await readdir(out)).some((f) => /\.(tmp|old)-\d+$/.test(f))).toBe(false);
    await expectSameAsFresh(input, out);
  });

  it('a run that fails part way leaves the previous dataset as it was', async () => {
    const m0 = await readManifest(out);
    await png(join(input, 'c', 'f1.png'), 300);
    await png(join(input, 'c', 'f2.png'), 301);
    await expect(ingest(opts({ batchSize: 1, onProgress: (done) => {
      if (done === 1) throw new Error('stop here');
    } }))).rejects.toThrow('stop here');
    expect(await readManifest(out)).toEqual(m0);
    expect((await verifyManifest(out)).ok).toBe(true);
    expect((await readdir(out)).some((f) => /\.tmp-\d+$/.test(f))).toBe(false);
    expect((await ingest(opts())).changes).toMatchObject({ added: 2, decoded: 2 });
  });

  it('another size, or a class folder appearing or going, means a full ingest with the reason', async () => {
    const lines: string[] = [];
    const resized = await ingest(opts({ size: 4, log: (l) => lines.push(l) }));
    expect(resized.changes).toMatchObject({ mode: 'full', decoded: resized.changes.added });
    expect(resized.changes.reason).toMatch(/the ingest settings changed \(size: 8 → 4\)/);
    expect(lines.join('\n')).toMatch(/full ingest: the ingest settings changed/);
    await ingest(opts()); // back to 8 px: full again
    await mkdir(join(input, 'aa'));
    await png(join(input, 'aa', '0.png'), 400);
    const added = await ingest(opts());
    expect(added.changes.mode).toBe('full');
    expect(added.changes.reason).toBe('the classes changed ([a, b, c] → [a, aa, b, c]); labels are class indices');
    await rm(join(input, 'aa'), { recursive: true });
    expect((await ingest(opts())).changes.reason).toMatch(/the classes changed \(\[a, aa, b, c\] → \[a, b, c\]\)/);
    await expectSameAsFresh(input, out);
  });

  it('a damaged or missing file index means a full ingest', async () => {
    const m = await readManifest(out);
    await writeFile(join(out, (m.files_index as { path: string }).path), '{}\n');
    const r = await ingest(opts());
    expect(r.changes.mode).toBe('full');
    expect(r.changes.reason).toMatch(/differs from the sha256 the manifest records/);
  });
});

describe('incremental ingest and parts', () => {
  it('parts over a one-process dataset ingest in full; the merge drops its index and changes; the next single run is full', async () => {
    const input = join(root, 'parts-folder');
    const out = join(root, 'parts-out');
    await makeFolder(input);
    const opts = (extra: Partial<IngestOptions> = {}): IngestOptions => ({ input, outDir: out, size: SIZE, workers: 1, maxRowsPerShard: 4, ...extra });
    const single = await ingest(opts());
    expect(single.manifest.files_index).toBeDefined();
    await png(join(input, 'a', 'new.png'), 600);
    for (let p = 0; p < 2; p++) {
      const part = await ingest(opts({ shardIndex: p, numShards: 2 }));
      expect(part.changes).toMatchObject({ mode: 'full', shards_kept: 0, shards_rewritten: 0 });
      expect(part.manifest.files_index).toBeUndefined();
    }
    const merged = await mergePartManifests(out);
    expect(merged.changes).toBeUndefined();
    expect(merged.files_index).toBeUndefined();
    expect(merged.rows).toBe(19);
    // The one-process dataset's shards and file index went with it.
    const files = await readdir(out);
    expect(files.filter((f) => f.startsWith('files-') || /^shard-/.test(f))).toEqual([]);
    expect((await verifyManifest(out)).ok).toBe(true);
    const next = await ingest(opts());
    expect(next.changes).toMatchObject({ mode: 'full', reason: expect.stringMatching(/has no file index/) });
    expect(next.manifest.files_index).toBeDefined();
    await expectSameAsFresh(input, out);
  });
});

describe('pipeline run ingest, incremental', () => {
  it('records added, removed and unchanged in the stage manifest; a rerun only runs when the folder changed', async () => {
    const input = join(root, 'cli-folder');
    const runDir = join(root, 'cli-run');
    await makeFolder(input);
    const args = ['run', 'ingest', '--run-dir', runDir, '--input', input, '--size', String(SIZE), '--workers', '1'];
    expect((await runCli(args)).code).toBe(0);
    const first = JSON.parse(await readFile(join(runDir, 'ingest', 'manifest.json'), 'utf8'));
    expect(first.metrics).toMatchObject({ images: 18, added: 19, removed: 0, unchanged: 0, decoded: 19, incremental: 0 });
    await png(join(input, 'b', 'new.png'), 500);
    expect((await runCli(args)).code).toBe(0);
    const second = JSON.parse(await readFile(join(runDir, 'ingest', 'manifest.json'), 'utf8'));
    expect(second).toMatchObject({ status: 'completed', rows: 19, changes: { mode: 'incremental', added: 1, removed: 0, unchanged: 19 } });
    expect(second.metrics).toMatchObject({ images: 19, added: 1, removed: 0, unchanged: 19, changed: 0, decoded: 1, incremental: 1 });
    expect(second.shards[0]).toEqual(first.shards[0]); // the untouched shard: what distill's logits are keyed on
    await rm(join(input, 'a', '5.png'));
    expect((await runCli(args)).code).toBe(0);
    const third = JSON.parse(await readFile(join(runDir, 'ingest', 'manifest.json'), 'utf8'));
    expect(third.metrics).toMatchObject({ images: 18, added: 0, removed: 1, unchanged: 19, decoded: 0, shards_rewritten: 1, shards_kept: 1 });
    expect((await runCli(args)).err).toMatch(/ingest: up to date/);
    // --force decodes everything again.
    expect((await runCli([...args, '--force'])).code).toBe(0);
    expect(JSON.parse(await readFile(join(runDir, 'ingest', 'manifest.json'), 'utf8')).metrics).toMatchObject({ decoded: 19, incremental: 0 });
  });
});
