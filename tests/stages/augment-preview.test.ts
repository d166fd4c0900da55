// Augment preview on a small synthetic images dataset: a decodable PNG of the expected size,
// tiles equal to the stage's views, fewer rows than asked when the dataset is small, errors.
import { mkdir, mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resolveAugmentOptions } from '../../augment/options.ts';
import { sampleViewParams } from '../../augment/params.ts';
import { applyView } from '../../augment/transform.ts';
import { writeManifest } from '../../data/manifest.ts';
import { SCHEMA_VERSION, schemaInfo } from '../../data/schemas.ts';
import { ShardWriter } from '../../data/shards.ts';
import { AugmentInputError } from '../../stages/augment.ts';
import { augmentPreview } from '../../stages/augment-preview.ts';

const S = 24;
const N = 7;
let root: string;
let data: string;

const pixelsOf = (r: number) => Uint8Array.from({ length: S * S * 3 }, (_, i) => (i * 7 + r * 61 + ((i / 3) >> 3) * 13) & 255);

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'augment-preview-'));
  data = join(root, 'images');
  await mkdir(data);
  // Shards of 3 rows: the first 5 images span two shards.
  const writer = new ShardWriter({ dir: data, schema: schemaInfo('images', { imageShape: [S, S, 3] }, []), maxRows: 3, sync: false });
  const image = new Uint8Array(N * S * S * 3);
  for (let r = 0; r < N; r++) image.set(pixelsOf(r), r * S * S * 3);
  await writer.write({ id: Array.from({ length: N }, (_, r) => `p${r}`), label: Array(N).fill(null), image });
  const shards = await writer.close();
  await writeManifest(data, { schema_version: SCHEMA_VERSION, schema: 'images', rows: N, classes: [], class_counts: {}, image_shape: [S, S, 3], shards });
});

afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('augmentPreview', () => {
  it('writes a PNG of original | view1 | view2 rows for the first `pairs` images, atomically', async () => {
    const out = join(root, 'sheets', 'preview.png');
    const res = await augmentPreview({ data, out, pairs: 5, seed: 3 });
    expect(res).toEqual({ out, pairs: 5 });
    const { data: px, info } = await sharp(out).raw().toBuffer({ resolveWithObject: true });
    // Default scale for 24 px tiles: ceil(96 / 24) = 4; gap 2.
    expect((await sharp(out).metadata()).format).toBe('png');
    expect([info.width, info.height, info.channels]).toEqual([(3 * S + 4 * 2) * 4, (5 * S + 6 * 2) * 4, 3]);
    expect(await readdir(join(root, 'sheets'))).toEqual(['preview.png']); // no temporary left behind
    // Row 4 (second shard), view 1 tile, sampled at the top-left of each 4×4 block.
    const expected = applyView({ data: pixelsOf(4), height: S, width: S }, sampleViewParams({ seed: 3, epoch: 0, index: 4, view: 0 }, S, S, resolveAugmentOptions({ outputSize: S })), S);
    const top = 2 + 4 * (S + 2);
    const left = 2 + 1 * (S + 2);
    const tile: number[] = [];
    for (let y = 0; y < S; y++) for (let x = 0; x < S; x++) for (let c = 0; c < 3; c++) tile.push(px[((top + y) * 4 * info.width + (left + x) * 4) * 3 + c]);
    expect(tile).toEqual(Array.from(expected));
  });

  it('shows every image of a smaller dataset and honours outputSize and scale', async () => {
    const out = join(root, 'small.png');
    const res = await augmentPreview({ data, out, pairs: 50, outputSize: 40, scale: 1 });
    expect(res.pairs).toBe(N);
    const meta = await sharp(out).metadata();
    expect([meta.width, meta.height]).toEqual([3 * 40 + 4 * 2, N * 40 + (N + 1) * 2]);
  });

  it('names bad options and inputs', async () => {
    const fail = (o: Parameters<typeof augmentPreview>[0]) => augmentPreview(o).then(() => null, (e: unknown) => e as Error);
    for (const [o, message] of [
      [{ data, out: join(root, 'x.png'), pairs: 0 }, 'preview.pairs must be an integer in [1, 1024], got 0'],
      [{ data, out: join(root, 'x.jpg') }, 'preview.out must be a .png path'],
      [{ data, out: join(root, 'x.png'), scale: 0 }, 'preview.scale must be an integer in [1, 16], got 0'],
      [{ data, out: join(root, 'x.png'), maxScale: 0 }, 'augment.maxScale must be in (0, 1], got 0'],
      [{ data: join(root, 'missing'), out: join(root, 'x.png') }, 'preview.data: '],
    ] as const) {
      const err = await fail(o);
      expect(err).toBeInstanceOf(AugmentInputError);
      expect(err!.message).toContain(message);
    }
  });
});
