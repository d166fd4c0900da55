// Ingest stage on generated images: colour handling, EXIF orientation, rejected files, labels,
// CSV lists, limits, partitioning across jobs, overwriting, and the input errors the CLI maps to exit 2.
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mergePartManifests, readDataset, readManifest, verifyManifest } from '../../data/manifest.ts';
import { describePath } from '../../data/inspect.ts';
import { IngestInputError, ingest, type IngestOptions } from '../../stages/ingest.ts';

let root: string;
let input: string;

const solid = (w: number, h: number, channels: 3 | 4, colour: number[]) =>
  sharp({ create: { width: w, height: h, channels, background: channels === 4 ? { r: colour[0], g: colour[1], b: colour[2], alpha: colour[3] / 255 } : { r: colour[0], g: colour[1], b: colour[2] } } });

/** Noise survives JPEG compression as lots of entropy-coded data, so cutting the file loses pixels. */
function noise(w: number, h: number): ReturnType<typeof sharp> {
  const px = Buffer.alloc(w * h * 3);
  for (let i = 0; i < px.length; i++) px[i] = (i * 7919) % 251;
  return sharp(px, { raw: { width: w, height: h, channels: 3 } });
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'ingest-'));
  input = join(root, 'images');
  for (const c of ['red', 'green', 'blue']) await mkdir(join(input, c), { recursive: true });
  await solid(40, 48, 3, [255, 0, 0]).png().toFile(join(input, 'red', 'r1.png')); // 40×48: resized + cropped
  await solid(32, 32, 3, [255, 0, 0]).jpeg({ quality: 95 }).toFile(join(input, 'red', 'r2.jpg')); // plain JPEG path
  await solid(32, 32, 3, [255, 0, 0]).toColourspace('rgb16').png().toFile(join(input, 'red', 'r3-16bit.png'));
  await solid(32, 32, 3, [128, 128, 128]).toColourspace('b-w').png().toFile(join(input, 'green', 'g-gray.png'));
  await solid(32, 32, 3, [0, 255, 0]).png({ palette: true }).toFile(join(input, 'green', 'g-palette.png'));
  await solid(32, 32, 4, [0, 255, 0, 128]).png().toFile(join(input, 'green', 'g-rgba.png'));
  // Stored 64 wide × 32 tall, left half blue, right half white, EXIF orientation 6 (display rotated
  // 90° clockwise): upright it is 32 wide × 64 tall with the blue half on top.
  const half = Buffer.alloc(64 * 32 * 3);
  for (let y = 0; y < 32; y++) for (let x = 0; x < 64; x++) half.set(x < 32 ? [0, 0, 255] : [255, 255, 255], (y * 64 + x) * 3);
  await sharp(half, { raw: { width: 64, height: 32, channels: 3 } }).jpeg({ quality: 95 }).withMetadata({ orientation: 6 }).toFile(join(input, 'blue', 'b-exif.jpg'));
  await solid(32, 32, 3, [0, 0, 255]).jpeg({ quality: 95 }).toFile(join(input, 'blue', 'b1.jpg'));
  await writeFile(join(input, 'blue', 'b-zero.jpg'), '');
  const whole = await noise(32, 32).jpeg({ quality: 95 }).toBuffer();
  await writeFile(join(input, 'blue', 'b-trunc.jpg'), whole.subarray(0, whole.length >> 1));
  await writeFile(join(input, 'blue', 'b-text.jpg'), 'this is not a JPEG\n');
  await solid(100, 100, 3, [0, 0, 255]).png().toFile(join(input, 'blue', 'b-large.png'));
  await solid(32, 32, 3, [9, 9, 9]).png().toFile(join(input, 'stray.png')); // outside any class folder
  await writeFile(join(input, 'README.txt'), 'not an image, ignored\n');
});

afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

const base = (out: string, extra: Partial<IngestOptions> = {}): IngestOptions => ({ input, outDir: join(root, out), workers: 2, maxInputPixels: 5000, ...extra });

/** All rows of a dataset folder as {id → {label, pixels}}. */
async function rowsOf(dir: string) {
  const rows = new Map<string, { label: number | null; pixels: Uint8Array }>();
  for await (const batch of readDataset(dir, { schema: 'images' })) {
    batch.columns.id.forEach((id, i) => rows.set(id, { label: batch.columns.label[i], pixels: batch.columns.image.slice(i * 3072, (i + 1) * 3072) }));
  }
  return rows;
}

const pixel = (px: Uint8Array, x: number, y: number) => Array.from(px.subarray((y * 32 + x) * 3, (y * 32 + x) * 3 + 3));

function expectColour(px: Uint8Array, rgb: number[], tol: number) {
  for (let i = 0; i < 32 * 32; i++) {
    for (let c = 0; c < 3; c++) {
      if (Math.abs(px[i * 3 + c] - rgb[c]) > tol) expect.fail(`pixel ${i} is ${pixel(px, i % 32, i >> 5)}, expected ${rgb} ± ${tol}`);
    }
  }
}

describe('ingest of an image folder', () => {
  let result: Awaited<ReturnType<typeof ingest>>;
  let rows: Awaited<ReturnType<typeof rowsOf>>;
  const progress: Array<[number, number]> = [];
  const lines: string[] = [];
  beforeAll(async () => {
    result = await ingest(base('all', { onProgress: (d, t) => progress.push([d, t]), log: (l) => lines.push(l), batchSize: 4 }));
    rows = await rowsOf(result.outDir);
  });

  it('writes shards, manifest and rejected list with the right counts', async () => {
    const m = await readManifest(result.outDir);
    expect(m.classes).toEqual(['blue', 'green', 'red']);
    expect(m.class_counts).toEqual({ blue: 2, green: 3, red: 3 });
    expect(m.rows).toBe(8);
    expect(m.rejected).toBe(5);
    expect(m.image_shape).toEqual([32, 32, 3]);
    expect(m.shards.map((s) => s.path)).toEqual(['shard-00000.arrow']);
    expect((await verifyManifest(result.outDir)).ok).toBe(true);
    const files = (await readdir(result.outDir)).sort();
    expect(files.filter((f) => !/^files-[0-9a-f]{16}\.jsonl$/.test(f))).toEqual(['manifest.json', 'rejected.jsonl', 'shard-00000.arrow']);
    expect(files.filter((f) => f.startsWith('files-'))).toEqual([(m.files_index as { path: string }).path]);
    expect(m.changes).toMatchObject({ mode: 'full', added: 12, decoded: 12, shards_new: 1 });
  });

  it('lists every unusable file with a reason', async () => {
    const rejected = (await readFile(join(result.outDir, 'rejected.jsonl'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l));
    expect(rejected).toEqual(result.rejected);
    const byPath = Object.fromEntries(rejected.map((r: { path: string; reason: string }) => [r.path, r.reason]));
    expect(Object.keys(byPath).sort()).toEqual(['blue/b-large.png', 'blue/b-text.jpg', 'blue/b-trunc.jpg', 'blue/b-zero.jpg', 'stray.png']);
    expect(byPath['stray.png']).toBe('not inside a class folder');
    expect(byPath['blue/b-large.png']).toMatch(/pixel limit/);
    expect(byPath['blue/b-text.jpg']).toMatch(/unsupported image format/);
    expect(byPath['blue/b-zero.jpg']).toMatch(/empty/);
    expect(byPath['blue/b-trunc.jpg']).toMatch(/premature end|truncated|corrupt|VipsJpeg/i);
  });

  it('maps class folders (sorted) to labels and uses relative paths as ids', () => {
    expect([...rows.keys()].sort()).toEqual(['blue/b-exif.jpg', 'blue/b1.jpg', 'green/g-gray.png', 'green/g-palette.png', 'green/g-rgba.png', 'red/r1.png', 'red/r2.jpg', 'red/r3-16bit.png']);
    expect([...rows.keys()]).toEqual([...rows.keys()].sort()); // rows are in sorted id order
    for (const [id, { label }] of rows) expect(label).toBe(['blue', 'green', 'red'].indexOf(id.split('/')[0]));
  });

  it('turns every colour format into 8-bit sRGB RGB', () => {
    expectColour(rows.get('red/r1.png')!.pixels, [255, 0, 0], 0);
    expectColour(rows.get('red/r2.jpg')!.pixels, [255, 0, 0], 3);
    expectColour(rows.get('red/r3-16bit.png')!.pixels, [255, 0, 0], 0);
    expectColour(rows.get('green/g-gray.png')!.pixels, [128, 128, 128], 1);
    expectColour(rows.get('green/g-palette.png')!.pixels, [0, 255, 0], 0);
    expectColour(rows.get('green/g-rgba.png')!.pixels, [0, 128, 0], 2); // half alpha over black
    expectColour(rows.get('blue/b1.jpg')!.pixels, [0, 0, 255], 3);
  });

  it('applies EXIF orientation before the centre crop', () => {
    const px = rows.get('blue/b-exif.jpg')!.pixels;
    // Upright and centre-cropped: rows 0-15 blue, rows 16-31 white (unrotated it would be left/right).
    for (const [x, y] of [[0, 2], [31, 2], [16, 12]]) expect(Math.abs(pixel(px, x, y)[2] - 255) + pixel(px, x, y)[0]).toBeLessThan(20);
    for (const [x, y] of [[0, 29], [31, 29], [16, 20]]) expect(pixel(px, x, y).every((v) => v > 235)).toBe(true);
  });

  it('reports progress up to the total and logs a summary', () => {
    expect(progress[0]).toEqual([0, 12]);
    expect(progress.at(-1)).toEqual([12, 12]);
    for (let i = 1; i < progress.length; i++) expect(progress[i][0]).toBeGreaterThanOrEqual(progress[i - 1][0]);
    expect(lines[0]).toMatch(/12 images in 3 classes.*1 non-image files ignored/);
    expect(lines.at(-1)).toMatch(/wrote 8 rows in 1 shards.*5 rejected/);
  });

  it('is described by describePath, as a dataset and as a shard', async () => {
    const d = await describePath(result.outDir, { headRows: 2 });
    expect(d.kind).toBe('dataset');
    expect(d.rows).toBe(8);
    expect(d.classCounts).toEqual({ blue: 2, green: 3, red: 3 });
    expect(d.schema.fields.map((f) => `${f.name}:${f.type}`)).toEqual(['id:Utf8', 'label:Int32', 'image:FixedSizeList[3072]<Uint8>']);
    expect(d.schema.fields[2].metadata['ARROW:extension:name']).toBe('arrow.fixed_shape_tensor');
    expect(d.head.map((r) => [r.id, r.className])).toEqual([['blue/b-exif.jpg', 'blue'], ['blue/b1.jpg', 'blue']]);
    expect(d.head[1].values.image).toMatchObject({ length: 3072 });
    expect(d.head[1].values.image.mean).toBeCloseTo(255 / 3, -1);
    const s = await describePath(join(result.outDir, 'shard-00000.arrow'));
    expect(s.kind).toBe('shard');
    expect(s.rows).toBe(8);
    expect(s.classCounts).toEqual({ blue: 2, green: 3, red: 3 });
    expect(s.head).toHaveLength(5);
  });
});

describe('ingest options', () => {
  it('unlabeled gives label null and no classes', async () => {
    const r = await ingest(base('unlabeled', { unlabeled: true }));
    expect(r.manifest.classes).toEqual([]);
    expect(r.manifest.class_counts).toEqual({});
    expect(r.rows).toBe(9); // stray.png is a plain image when nothing is labelled
    for (const { label } of (await rowsOf(r.outDir)).values()) expect(label).toBeNull();
  });

  it('limitPerClass keeps the first images of each class in sorted order', async () => {
    const r = await ingest(base('limit', { limitPerClass: 1 }));
    expect([...(await rowsOf(r.outDir)).keys()]).toEqual(['blue/b-exif.jpg', 'green/g-gray.png', 'red/r1.png']);
  });

  it('size sets the output side', async () => {
    const r = await ingest(base('size8', { size: 8, limitPerClass: 1 }));
    expect(r.manifest.image_shape).toEqual([8, 8, 3]);
    for await (const b of readDataset(r.outDir, { schema: 'images' })) expect(b.columns.image.length).toBe(b.numRows * 8 * 8 * 3);
  });

  it('shardIndex/numShards split the sorted list into disjoint parts that merge into the whole', async () => {
    const out = join(root, 'parts');
    for (let p = 0; p < 3; p++) {
      const r = await ingest(base('parts', { shardIndex: p, numShards: 3 }));
      expect(r.manifestPath).toBe(join(out, `part-0000${p}-of-00003.manifest.json`));
      for (const s of r.manifest.shards) {
        expect(s.path).toMatch(new RegExp(`^part-0000${p}-of-00003-shard-\\d{5}\\.arrow$`));
      }
    }
    const merged = await mergePartManifests(out);
    expect(merged.rows).toBe(8);
    expect(merged.rejected).toBe(5);
    // Parts ingest in full and leave no file index: the next single job builds one.
    expect(merged.files_index).toBeUndefined();
    expect(merged.changes).toBeUndefined();
    expect(merged.class_counts).toEqual({ blue: 2, green: 3, red: 3 });
    const all = await rowsOf(out);
    const whole = await rowsOf(join(root, 'all'));
    // Parts are contiguous runs of the sorted list: merged, the rows come in the one-process order.
    expect([...all.keys()]).toEqual([...whole.keys()]);
    for (const [id, row] of all) expect(row.pixels).toEqual(whole.get(id)!.pixels);
    // Part p takes sorted positions [4p, 4p + 4) of the 12 images in class folders;
    // stray.png is the only scan-level reject, the one entry of that list, so the last part's.
    const part1 = await readManifest(join(out, 'part-00001-of-00003.manifest.json'));
    expect(part1.rows + (part1.rejected ?? 0)).toBe(4);
  });

  it('overwrites an earlier output cleanly', async () => {
    const first = await ingest(base('again', { maxRowsPerShard: 2 }));
    expect(first.manifest.shards).toHaveLength(4);
    // Nothing changed: a rerun keeps the shards as they are; `full` writes them anew.
    expect((await ingest(base('again'))).manifest.shards).toEqual(first.manifest.shards);
    const second = await ingest(base('again', { full: true }));
    expect(second.manifest.shards).toHaveLength(1);
    expect((await readdir(second.outDir)).filter((f) => !f.startsWith('files-')).sort()).toEqual(['manifest.json', 'rejected.jsonl', 'shard-00000.arrow']);
    expect((await verifyManifest(second.outDir)).ok).toBe(true);
  });
});

describe('ingest of a CSV list', () => {
  it('reads path,label rows relative to the CSV, labels sorted, empty label null, missing files rejected', async () => {
    const csv = join(input, 'list.csv');
    await writeFile(csv, 'path,label\nred/r1.png,warm\nblue/b1.jpg,cool\n"green/g-gray.png",\nmissing.jpg,warm\nred/r1.png,warm\n');
    const r = await ingest(base('csv', { input: csv }));
    expect(r.manifest.classes).toEqual(['cool', 'warm']);
    expect(r.manifest.class_counts).toEqual({ cool: 1, warm: 1 });
    const rows = await rowsOf(r.outDir);
    expect([...rows.entries()].map(([id, v]) => [id, v.label])).toEqual([
      ['blue/b1.jpg', 0],
      ['green/g-gray.png', null],
      ['red/r1.png', 1],
    ]);
    expect(r.rejected).toEqual([
      { path: 'red/r1.png', reason: 'listed again (first on line 2)' },
      { path: 'missing.jpg', reason: 'cannot read: ENOENT' },
    ]);
  });

  it('strict fails on the first unusable file, naming it, and leaves no shards', async () => {
    const csv = join(input, 'strict.csv');
    await writeFile(csv, 'path\nred/r1.png\nmissing.jpg\n');
    const err = await ingest(base('strict', { input: csv, strict: true })).catch((e) => e);
    expect(err).toBeInstanceOf(IngestInputError);
    expect(err.message).toBe('missing.jpg: cannot read: ENOENT (strict: stopping at the first unusable file)');
    expect((await readdir(join(root, 'strict'))).filter((f) => f.endsWith('.arrow') || /\.tmp-\d+$/.test(f) || f === 'manifest.json')).toEqual([]);
  });

  it('refuses a CSV without the path header', async () => {
    const csv = join(input, 'bad.csv');
    await writeFile(csv, 'file,class\nred/r1.png,warm\n');
    await expect(ingest(base('badcsv', { input: csv }))).rejects.toThrow(/bad\.csv: the first line must be the header "path,label"/);
  });
});

describe('ingest input errors (exit code 2 in the CLI)', () => {
  it.each([
    [{ input: '/nonexistent/folder' }, /input folder \/nonexistent\/folder does not exist/],
    [{ size: 0 }, /ingest\.size must be an integer in \[1, 4096\], got 0/],
    [{ workers: 1.5 }, /ingest\.workers must be an integer/],
    [{ shardIndex: 3, numShards: 3 }, /ingest\.shardIndex must be an integer in \[0, numShards = 3\), got 3/],
    [{ limitPerClass: -1 }, /ingest\.limitPerClass must be an integer/],
    [{ strict: 'yes' as unknown as boolean }, /ingest\.strict must be true or false/],
  ])('%j', async (patch, message) => {
    const err = await ingest(base('errors', patch)).catch((e) => e);
    expect(err).toBeInstanceOf(IngestInputError);
    expect(err.message).toMatch(message);
  });

  it('an empty folder', async () => {
    const empty = join(root, 'empty');
    await mkdir(empty, { recursive: true });
    await expect(ingest(base('errors', { input: empty }))).rejects.toThrow(new IngestInputError(`input folder ${empty} has no image files (.jpg .jpeg .png .webp .gif .tif .tiff .avif .heic .heif .jp2 .jxl .svg)`));
  });
});
