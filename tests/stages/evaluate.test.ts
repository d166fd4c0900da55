import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { readDataset, readManifest } from '../../data/manifest.ts';
import { loadImages } from '../../data/memory.ts';
import { layersModelFiles } from '../../models/checkpoint.ts';
import { useBackend } from '../../models/engine/backend.ts';
import { knnPredict } from '../../models/knn.ts';
import { embed } from '../../models/simclr.ts';
import { evaluate } from '../../stages/evaluate.ts';
import { finetune } from '../../stages/finetune.ts';
import { pretrain } from '../../stages/pretrain.ts';
import { tinyImagesDataset } from '../helpers.ts';

describe('evaluate stage', () => {
  let data: string;
  let pretrainDir: string;
  let finetuneDir: string;
  beforeAll(async () => {
    data = await tinyImagesDataset({ perClass: 12, size: 8 });
    pretrainDir = await mkdtemp(join(tmpdir(), 'ev-pretrain-'));
    await pretrain({ data, outDir: pretrainDir, epochs: 1, batchSize: 8, headLayers: 2, projectionDim: 16, backend: 'wasm', workers: 1, seed: 1 });
    finetuneDir = await mkdtemp(join(tmpdir(), 'ev-finetune-'));
    await finetune({ data, outDir: finetuneDir, pretrained: pretrainDir, labels: '4-per-class', holdout: 3, epochs: 4, batchSize: 8, backend: 'wasm', workers: 1 });
  });

  it('scores a classifier: top-1 and per-class accuracy agree with its predictions and the confusion matrix; no leaks', async () => {
    const outDir = await mkdtemp(join(tmpdir(), 'ev-clf-'));
    const before = tf.memory().numTensors;
    const result = await evaluate({ data, checkpoint: finetuneDir, outDir, holdout: 3, backend: 'wasm' });
    expect(tf.memory().numTensors).toBe(before);
    expect(result.kind).toBe('classifier');
    expect(result.rows).toBe(12);
    // 4 classes: no top-5.
    expect(result.metrics.top5_accuracy).toBeUndefined();
    const confusion = result.confusion!;
    expect(confusion.flat().reduce((s, v) => s + v, 0)).toBe(12);
    const diagonal = confusion.reduce((s, row, i) => s + row[i], 0);
    expect(result.metrics.accuracy).toBeCloseTo(diagonal / 12, 10);
    const perClass = result.metrics.per_class_accuracy as Record<string, number>;
    result.classes.forEach((c, i) => expect(perClass[c]).toBeCloseTo(confusion[i][i] / 3, 10));
    // The predictions shard holds every test image with probabilities summing to 1, and agrees with the matrix.
    const manifest = await readManifest(result.dataset);
    expect(manifest).toMatchObject({ schema: 'predictions', rows: 12, dim: 4 });
    let correct = 0;
    for await (const batch of readDataset<'predictions'>(result.dataset, { schema: 'predictions' })) {
      const { label, predicted, probabilities } = batch.columns;
      for (let r = 0; r < batch.numRows; r++) {
        const p = probabilities.subarray(r * 4, r * 4 + 4);
        expect(p.reduce((s, v) => s + v, 0)).toBeCloseTo(1, 5);
        expect(predicted[r]).toBe(p.indexOf(Math.max(...p)));
        if (predicted[r] === label[r]) correct++;
      }
    }
    expect(correct).toBe(diagonal);
    const csv = (await readFile(join(outDir, 'confusion.csv'), 'utf8')).trim().split('\n');
    expect(csv[0]).toBe(['true\\predicted', ...result.classes].join(','));
    expect(csv.slice(1).map((l) => l.split(',').slice(1).map(Number))).toEqual(confusion);
  });

  it('scores an encoder: kNN equal to a direct computation, a linear probe that fits its training images', async () => {
    const outDir = await mkdtemp(join(tmpdir(), 'ev-enc-'));
    const before = tf.memory().numTensors;
    const result = await evaluate({ data, checkpoint: pretrainDir, outDir, holdout: 3, knnK: 5, backend: 'wasm' });
    expect(tf.memory().numTensors).toBe(before);
    expect(result.kind).toBe('encoder');
    expect(result.metrics).toMatchObject({ bank_images: 36, images: 12, linear_converged: 1 });
    // The probe fits its 36 training embeddings of 64 dimensions (separable).
    expect(result.metrics.linear_train_accuracy).toBe(1);
    // kNN recomputed here from the encoder, on the same split.
    const all = await loadImages(data);
    const encoder = await tf.loadLayersModel(layersModelFiles(join(pretrainDir, 'checkpoint', 'encoder')));
    await useBackend('wasm');
    const testRows = [...Array(all.ids.length).keys()].filter((i) => i % 12 >= 9);
    const trainRows = [...Array(all.ids.length).keys()].filter((i) => i % 12 < 9);
    const per = 8 * 8 * 3;
    const pick = (rows: number[]) => {
      const px = new Uint8Array(rows.length * per);
      rows.forEach((r, j) => px.set(all.pixels.subarray(r * per, (r + 1) * per), j * per));
      return embed(encoder, px, rows.length, 8);
    };
    const [bank, queries] = [pick(trainRows), pick(testRows)];
    const predicted = knnPredict(bank, Int32Array.from(trainRows, (r) => all.labels[r]), queries, { k: 5, temperature: 0.1, numClasses: 4 });
    const expected = testRows.filter((r, j) => predicted[j] === all.labels[r]).length / 12;
    expect(result.metrics.knn_accuracy).toBeCloseTo(expected, 10);
    tf.dispose([bank, queries]);
    encoder.dispose();
    expect((await readManifest(result.dataset)).schema).toBe('embeddings');
  });

  it('refuses a test set of other classes or image size, and an encoder without training images', async () => {
    const outDir = await mkdtemp(join(tmpdir(), 'ev-bad-'));
    const big = await tinyImagesDataset({ perClass: 4, size: 16 });
    await expect(evaluate({ data: big, checkpoint: finetuneDir, outDir, backend: 'wasm' })).rejects.toThrow(/takes 8x8 px images, .* holds 16x16 px \(ingest the test images with --size 8\)/);
    await expect(evaluate({ data, checkpoint: pretrainDir, outDir, backend: 'wasm' })).rejects.toThrow(/give --train-data, or --holdout N/);
    await expect(evaluate({ data, checkpoint: join(outDir, 'none'), outDir, backend: 'wasm' })).rejects.toThrow(/no checkpoint there/);
  });
});
