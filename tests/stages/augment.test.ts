// Augment stage on small synthetic images datasets: views byte-identical to applyView on the
// sampled parameters, distinct epochs, manifest counts, worker-count independence, round trip, errors.
import { mkdir, mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resolveAugmentOptions } from '../../augment/options.ts';
import { sampleViewParams } from '../../augment/params.ts';
import { applyView } from '../../augment/transform.ts';
import { readDataset, readManifest, verifyManifest, writeManifest } from '../../data/manifest.ts';
import { SCHEMA_VERSION, schemaInfo } from '../../data/schemas.ts';
import { ShardWriter } from '../../data/shards.ts';
import { AugmentInputError, augmentStage, defaultAugmentBatchSize, type AugmentStageOptions, type AugmentStageResult } from '../../stages/augment.ts';

const H = 20;
const W = 20;
const N = 13;
const CLASSES = ['cat', 'dog', 'eel'];
/** Row r: label r mod 3, except every fifth row is unlabeled. */
const labelOf = (r: number) => (r % 5 === 4 ? null : r % 3);
/** Smooth gradients plus a per-image colour cast, so crops, flips and jitter all change bytes. */
function pixelsOf(r: number): Uint8Array {
  const px = new Uint8Array(H * W * 3);
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      const p = (y * W + x) * 3;
      px[p] = (x * 12 + r * 17) & 255;
      px[p + 1] = (y * 11 + r * 29) & 255;
      px[p + 2] = ((x + y) * 6 + r * 41) & 255;
    }
  }
  return px;
}

let root: string;
let data: string;

/** An images dataset of N rows in shards of 5 rows, so the stage's source crosses shard boundaries. */
async function writeImages(dir: string): Promise<void> {
  const writer = new ShardWriter({ dir, schema: schemaInfo('images', { imageShape: [H, W, 3] }, CLASSES), maxRows: 5, sync: false });
  for (let r0 = 0; r0 < N; r0 += 4) {
    const rows = Array.from({ length: Math.min(4, N - r0) }, (_, i) => r0 + i);
    const image = new Uint8Array(rows.length * H * W * 3);
    rows.forEach((r, i) => image.set(pixelsOf(r), i * H * W * 3));
    await writer.write({ id: rows.map((r) => `img-${r}`), label: rows.map(labelOf), image });
  }
  const shards = await writer.close();
  const counts = Object.fromEntries(CLASSES.map((c, k) => [c, Array.from({ length: N }, (_, r) => labelOf(r)).filter((l) => l === k).length]));
  await writeManifest(dir, { schema_version: SCHEMA_VERSION, schema: 'images', rows: N, classes: CLASSES, class_counts: counts, image_shape: [H, W, 3], shards });
}

interface ViewRow {
  id: string;
  epoch: number;
  view1: Uint8Array;
  view2: Uint8Array;
}

async function viewRows(dir: string): Promise<ViewRow[]> {
  const rows: ViewRow[] = [];
  for await (const batch of readDataset(dir, { schema: 'views' })) {
    const { id, epoch, view1, view2 } = batch.columns;
    const bytes = view1.length / batch.numRows;
    for (let i = 0; i < batch.numRows; i++) {
      rows.push({ id: id[i], epoch: epoch[i], view1: view1.slice(i * bytes, (i + 1) * bytes), view2: view2.slice(i * bytes, (i + 1) * bytes) });
    }
  }
  return rows;
}

const base = (out: string, extra: Partial<AugmentStageOptions> = {}): AugmentStageOptions => ({ data, outDir: join(root, out), seed: 7, batchSize: 3, ...extra });

let one: AugmentStageResult;
let progress: Array<[number, number]>;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'augment-stage-'));
  data = join(root, 'images');
  await mkdir(data);
  await writeImages(data);
  progress = [];
  // maxRowsPerShard 10 < 2·13 rows forces a rollover into a second and third shard.
  one = await augmentStage(base('views-1', { epochs: 2, workers: 1, maxRowsPerShard: 10, onProgress: (d, t) => progress.push([d, t]) }));
});

afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('augmentStage', () => {
  it('writes view pairs byte-identical to applyView on the parameters sampled for (seed, epoch, index, view)', async () => {
    const rows = await viewRows(one.outDir);
    const o = resolveAugmentOptions({ outputSize: H });
    for (const epoch of [0, 1]) {
      for (const index of [0, 4, 5, 12]) {
        const row = rows[epoch * N + index];
        expect([row.id, row.epoch]).toEqual([`img-${index}`, epoch]);
        const src = { data: pixelsOf(index), height: H, width: W };
        for (const [view, got] of [[0, row.view1], [1, row.view2]] as const) {
          const expected = applyView(src, sampleViewParams({ seed: 7, epoch, index, view }, H, W, o), H);
          expect(Buffer.from(got).equals(Buffer.from(expected)), `epoch ${epoch} image ${index} view ${view + 1}`).toBe(true);
        }
      }
    }
  });

  it('gives each epoch and each view its own augmentation', async () => {
    const rows = await viewRows(one.outDir);
    let sameAcrossEpochs = 0;
    for (let i = 0; i < N; i++) {
      if (Buffer.from(rows[i].view1).equals(Buffer.from(rows[N + i].view1))) sameAcrossEpochs++;
      expect(Buffer.from(rows[i].view1).equals(Buffer.from(rows[i].view2))).toBe(false);
    }
    expect(sameAcrossEpochs).toBe(0);
  });

  it('writes a views manifest with rows, classes, counts over all epochs, view shape and shard hashes', async () => {
    const m = await readManifest(one.outDir);
    expect(m).toEqual(one.manifest);
    expect(m.schema).toBe('views');
    expect(m.rows).toBe(2 * N);
    expect(m.classes).toEqual(CLASSES);
    // Labels of rows 0..12: rows 4 and 9 unlabeled; of the rest, r mod 3 = 0: 0,3,6,12; 1: 1,7,10; 2: 2,5,8,11.
    expect(m.class_counts).toEqual({ cat: 2 * 4, dog: 2 * 3, eel: 2 * 4 });
    expect(m.image_shape).toEqual([H, H, 3]);
    expect(m.shards.map((s) => s.rows)).toEqual([10, 10, 6]);
    expect(await verifyManifest(one.outDir)).toEqual({ ok: true, problems: [] });
    expect((await readdir(one.outDir)).sort()).toEqual(['manifest.json', 'shard-00000.arrow', 'shard-00001.arrow', 'shard-00002.arrow']);
    expect(one.rows).toBe(2 * N);
    expect(progress[0]).toEqual([0, 2 * N]);
    expect(progress.at(-1)).toEqual([2 * N, 2 * N]);
  });

  it('reads back in dataset order, epoch after epoch (the shards round-trip)', async () => {
    const rows = await viewRows(one.outDir);
    expect(rows.map((r) => `${r.epoch}:${r.id}`)).toEqual([0, 1].flatMap((e) => Array.from({ length: N }, (_, i) => `${e}:img-${i}`)));
    expect(rows.every((r) => r.view1.length === H * H * 3 && r.view2.length === H * H * 3)).toBe(true);
  });

  it('writes the same bytes with 2 workers as with 1', async () => {
    const two = await augmentStage(base('views-2', { epochs: 2, workers: 2, maxRowsPerShard: 10 }));
    expect(two.manifest.shards).toEqual(one.manifest.shards); // paths, rows and sha256
    expect(await readFile(join(two.outDir, 'shard-00001.arrow'))).toEqual(await readFile(join(one.outDir, 'shard-00001.arrow')));
  });

  it('honours outputSize (with blur above 32 px) and the finetune preset as crop + flip pairs', async () => {
    const big = await augmentStage(base('views-big', { outputSize: 40, workers: 1 }));
    expect(big.manifest.image_shape).toEqual([40, 40, 3]);
    const o = resolveAugmentOptions({ outputSize: 40 });
    expect(o.blurProbability).toBe(0.5);
    const rows = await viewRows(big.outDir);
    for (const index of [1, 2, 3]) {
      const src = { data: pixelsOf(index), height: H, width: W };
      expect(Buffer.from(rows[index].view2).equals(Buffer.from(applyView(src, sampleViewParams({ seed: 7, epoch: 0, index, view: 1 }, H, W, o), 40)))).toBe(true);
    }
    const ft = await augmentStage(base('views-ft', { preset: 'finetune', workers: 1 }));
    const f = resolveAugmentOptions({ preset: 'finetune', outputSize: H });
    const ftRows = await viewRows(ft.outDir);
    for (const view of [0, 1]) {
      const params = sampleViewParams({ seed: 7, epoch: 0, index: 6, view }, H, W, f);
      expect(params.jitter).toBeNull();
      const got = view === 0 ? ftRows[6].view1 : ftRows[6].view2;
      expect(Buffer.from(got).equals(Buffer.from(applyView({ data: pixelsOf(6), height: H, width: W }, params, H)))).toBe(true);
    }
    expect((ft.manifest.augment as { preset: string }).preset).toBe('finetune');
  });

  it('defaults to batches of at most 256 pairs and 32 MiB of views', () => {
    expect(defaultAugmentBatchSize(32)).toBe(256);
    expect(defaultAugmentBatchSize(224)).toBe(Math.floor(2 ** 25 / (2 * 224 * 224 * 3))); // 111
    expect(defaultAugmentBatchSize(4096)).toBe(1);
  });

  it('refuses bad options and inputs with AugmentInputError naming the field', async () => {
    const bad = async (extra: Partial<AugmentStageOptions>, message: string | RegExp) => {
      const err: unknown = await augmentStage(base('views-bad', extra)).then(() => null, (e: unknown) => e);
      expect(err).toBeInstanceOf(AugmentInputError);
      expect((err as Error).message).toMatch(message);
    };
    await bad({ epochs: 0 }, 'augment.epochs must be an integer in [1, 4294967296], got 0');
    await bad({ workers: 1.5 }, 'augment.workers must be an integer in [1, 256], got 1.5');
    await bad({ minScale: 2 }, 'augment.minScale must be in (0, 1], got 2');
    await bad({ preset: 'eval' }, /augment.preset must be simclr or finetune/);
    await bad({ outputSize: 32, blurProbability: 0.5 }, /augment.blurProbability must be 0 for outputSize <= 32/);
    await bad({ data: join(root, 'nowhere') }, /augment.data: .*nowhere.*cannot read/);
    await bad({ data: one.outDir }, /holds the views schema, expected images/);
    await bad({ outDir: data }, 'augment.outDir must differ from augment.data');
  });
});
