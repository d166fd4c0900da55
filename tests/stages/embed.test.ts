import { mkdtemp, readdir, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { readDataset, readManifest } from '../../data/manifest.ts';
import { loadImages } from '../../data/memory.ts';
import { loadCheckpoint } from '../../models/checkpoint.ts';
import { embedDataset } from '../../stages/embed.ts';
import { finetune } from '../../stages/finetune.ts';
import { pretrain } from '../../stages/pretrain.ts';
import { runCli, tinyImagesDataset } from '../helpers.ts';

/** Every row's (id, embedding) of an embeddings dataset, in order. */
async function rowsOf(dir: string): Promise<[string, number[]][]> {
  const rows: [string, number[]][] = [];
  for await (const b of readDataset<'embeddings'>(dir, { schema: 'embeddings' })) {
    const d = b.columns.embedding.length / b.numRows;
    for (let r = 0; r < b.numRows; r++) rows.push([b.columns.id[r], Array.from(b.columns.embedding.subarray(r * d, (r + 1) * d))]);
  }
  return rows;
}

describe('pipeline embed', () => {
  let data: string;
  let encoderDir: string;
  beforeAll(async () => {
    data = await tinyImagesDataset({ perClass: 6, size: 8, maxRows: 5 }); // 24 rows in 5 shards
    encoderDir = await mkdtemp(join(tmpdir(), 'embed-pretrain-'));
    await pretrain({ data, outDir: encoderDir, epochs: 1, batchSize: 8, headLayers: 2, projectionDim: 16, backend: 'wasm', workers: 1 });
  });

  it('writes every image\'s encoder output as an embeddings dataset, one shard per input shard', async () => {
    const out = await mkdtemp(join(tmpdir(), 'embed-out-'));
    const before = tf.memory().numTensors;
    const result = await embedDataset({ checkpoint: encoderDir, data, out, backend: 'wasm' });
    expect(tf.memory().numTensors).toBe(before);
    expect(result).toMatchObject({ rows: 24, computed: 5, reused: 0 });
    const manifest = await readManifest(out);
    expect(manifest).toMatchObject({ schema: 'embeddings', rows: 24, dim: result.dim });
    expect(manifest.shards).toHaveLength(5);
    expect(manifest.encoder_sha256).toMatch(/^[0-9a-f]{64}$/);
    // Against the encoder applied directly (inference mode, pixels scaled as everywhere: x / 255).
    const images = await loadImages(data);
    const encoder = (await loadCheckpoint(join(encoderDir, 'checkpoint'), { models: ['encoder'] })).models.encoder;
    const direct = tf.tidy(() => (encoder.predict(tf.tensor4d(Float32Array.from(images.pixels, (v) => v / 255), [24, 8, 8, 3])) as tf.Tensor).arraySync() as number[][]);
    encoder.dispose();
    const rows = await rowsOf(out);
    expect(rows.map(([id]) => id)).toEqual(images.ids);
    rows.forEach(([, e], i) => e.forEach((v, j) => expect(v).toBeCloseTo(direct[i][j], 4)));
    // A rerun for the same encoder and data reuses every shard.
    expect(await embedDataset({ checkpoint: encoderDir, data, out, backend: 'wasm' })).toMatchObject({ computed: 0, reused: 5 });
  });

  it('runs as parts that the run without parts collects, computing (and naming) a part that did not run', async () => {
    const whole = await mkdtemp(join(tmpdir(), 'embed-whole-'));
    await embedDataset({ checkpoint: encoderDir, data, out: whole, backend: 'wasm' });
    const out = await mkdtemp(join(tmpdir(), 'embed-parts-'));
    expect(await embedDataset({ checkpoint: encoderDir, data, out, backend: 'wasm', shardIndex: 0, numShards: 3 })).toMatchObject({ computed: 2, manifest: null });
    expect((await runCli(['embed', '--checkpoint', encoderDir, '--data', data, '--out', out, '--backend', 'wasm', '--shard-index', '2', '--num-shards', '3'])).code).toBe(0);
    expect(await readdir(out)).not.toContain('manifest.json');
    const lines: string[] = [];
    const collected = await embedDataset({ checkpoint: encoderDir, data, out, backend: 'wasm', log: (l) => lines.push(l) });
    expect(collected).toMatchObject({ computed: 2, reused: 3, rows: 24 }); // part 1 held shards 1 and 4
    expect(lines.join('\n')).toMatch(/part\(s\) 1 of 3 missing or stale/);
    expect(await rowsOf(out)).toEqual(await rowsOf(whole));
    for (const f of (await readdir(whole)).filter((f) => f.endsWith('.arrow'))) expect(await readFile(join(out, f))).toEqual(await readFile(join(whole, f)));
  });

  it('refuses a checkpoint that is not an encoder and a part index out of range, with one line (exit 2)', async () => {
    const classifier = await mkdtemp(join(tmpdir(), 'embed-ft-'));
    await finetune({ data, outDir: classifier, pretrained: encoderDir, labels: '2-per-class', epochs: 1, batchSize: 4, backend: 'wasm', workers: 1 });
    const out = await mkdtemp(join(tmpdir(), 'embed-bad-'));
    await expect(embedDataset({ checkpoint: classifier, data, out, backend: 'wasm' })).rejects.toThrow(/holds \[classifier\], not an encoder \(give a pretrain stage directory\)/);
    for (const extra of [['--num-shards', '0'], ['--shard-index', '3', '--num-shards', '3']]) {
      const r = await runCli(['embed', '--checkpoint', encoderDir, '--data', data, '--out', out, '--backend', 'wasm', ...extra]);
      expect(r.code).toBe(2);
      expect(r.err.trim().split('\n')).toHaveLength(1);
    }
  });
});
