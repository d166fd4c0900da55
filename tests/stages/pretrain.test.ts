import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { layersModelFiles } from '../../models/checkpoint.ts';
import { buildSimclrModel } from '../../models/simclr.ts';
import { pretrain, PretrainInputError, PretrainInterruptedError } from '../../stages/pretrain.ts';
import { plainTfjsPredict, tinyImagesDataset } from '../helpers.ts';

const SIZE = 8;

/** 4 classes × perClass images of 8 px. */
const tinyDataset = (perClass: number, seed = 7) => tinyImagesDataset({ perClass, size: SIZE, seed });

describe('pretrain stage', () => {
  let data: string;
  beforeAll(async () => {
    data = await tinyDataset(12);
  });

  it('trains, logs metrics per interval and epoch, writes a checkpoint plain tfjs can load', async () => {
    const outDir = await mkdtemp(join(tmpdir(), 'pretrain-out-'));
    const before = tf.memory().numTensors;
    const lines: string[] = [];
    const result = await pretrain({
      data,
      outDir,
      epochs: 2,
      batchSize: 8,
      headLayers: 2,
      projectionDim: 16,
      backend: 'wasm',
      workers: 1,
      logEvery: 2,
      knnHoldout: 2,
      knnEvery: 1,
      knnK: 5,
      log: (l) => lines.push(l),
    });
    expect(tf.memory().numTensors).toBe(before);
    // 4 classes × (12 − 2 held out) = 40 training images → 5 steps of 8 per epoch.
    expect(result.metrics).toMatchObject({ epochs: 2, steps: 10 });
    expect(result.metrics.loss).toBeGreaterThan(0);
    // A count out of what was scored, not NaN or a wrong denominator: kNN classifies the 8 held-out
    // images (2 per class), so its accuracy is in eighths; each step scores 2·8 views, so the last
    // epoch's mean over 5 steps is in 80ths, and the two views of an image find each other more
    // often than chance, 1 in 2N − 1 = 15 (a pairing bug gives chance or less).
    const inUnits = (value: number | undefined, units: number) => {
      expect(value).toBeGreaterThanOrEqual(0);
      expect(value).toBeLessThanOrEqual(1);
      expect(value! * units).toBeCloseTo(Math.round(value! * units), 6);
    };
    inUnits(result.metrics.knn_accuracy, 8);
    inUnits(result.metrics.knn_accuracy_random_init, 8);
    inUnits(result.metrics.contrastive_accuracy, 80);
    expect(result.metrics.contrastive_accuracy).toBeGreaterThan(1 / 15);
    const rows = (await readFile(join(outDir, 'metrics.jsonl'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l));
    // random-init kNN, then per epoch: steps 2 and 4 (interval rows) and the epoch row.
    expect(rows.map((r) => r.step)).toEqual([0, 2, 4, 5, 7, 9, 10]);
    const epochRows = rows.filter((r) => r.summary === 'epoch');
    expect(epochRows.map((r) => r.epoch)).toEqual([1, 2]);
    expect(rows[0].knn_accuracy).toBe(result.metrics.knn_accuracy_random_init);
    expect(epochRows[1]).toMatchObject({ loss: result.metrics.loss, contrastive_accuracy: result.metrics.contrastive_accuracy, knn_accuracy: result.metrics.knn_accuracy });
    for (const r of epochRows) expect(Object.keys(r)).toEqual(expect.arrayContaining(['loss', 'contrastive_accuracy', 'lr', 'images_per_second', 'knn_accuracy']));
    expect(lines.join('\n')).toMatch(/kNN accuracy with random weights/);

    // The encoder loads back here, and in a separate process that has nothing of ours loaded
    // (plain @tensorflow/tfjs, stock layers, cpu backend), with the same outputs.
    const encoder = await tf.loadLayersModel(layersModelFiles(join(outDir, 'checkpoint', 'encoder')));
    const input = tf.tidy(() => tf.div(tf.range(0, 2 * SIZE * SIZE * 3), 2 * SIZE * SIZE * 3).reshape([2, SIZE, SIZE, 3]));
    const y = encoder.predict(input) as tf.Tensor;
    expect(y.shape).toEqual([2, 64]);
    const ours = Array.from(y.dataSync());
    expect(ours.every(Number.isFinite)).toBe(true);
    tf.dispose([y, input]);
    encoder.dispose();
    const plain = await plainTfjsPredict(join(outDir, 'checkpoint', 'encoder'), SIZE);
    expect(plain.layers).toContain('BatchNormalization');
    expect(plain.y).toHaveLength(ours.length);
    for (let i = 0; i < ours.length; i++) expect(plain.y[i]).toBeCloseTo(ours[i], 3);
  });

  it('resumes an interrupted run exactly: same final weights as an uninterrupted run', async () => {
    const common = { data, epochs: 2, batchSize: 8, headLayers: 2, projectionDim: 16, backend: 'wasm' as const, workers: 1, seed: 3, logEvery: 100 };
    const straightDir = await mkdtemp(join(tmpdir(), 'pretrain-straight-'));
    // The seeded initial weights, to show that training moved them far more than the tolerance.
    const initialModel = buildSimclrModel({ encoder: 'resnet20', inputSize: SIZE, headLayers: 2, projectionDim: 16, seed: 3 });
    const initial = initialModel.encoder.getWeights().map((w) => Array.from(w.dataSync()));
    initialModel.encoder.dispose();
    initialModel.head.dispose();
    await pretrain({ ...common, outDir: straightDir });

    const resumedDir = await mkdtemp(join(tmpdir(), 'pretrain-resumed-'));
    const controller = new AbortController();
    // 48 images, batch 8: 6 steps per epoch; stop in the middle of the second epoch.
    let seen = 0;
    await expect(
      pretrain({
        ...common,
        outDir: resumedDir,
        signal: controller.signal,
        onProgress: ({ step }) => {
          if (step > 0 && ++seen === 8) controller.abort();
        },
      }),
    ).rejects.toThrow(PretrainInterruptedError);
    const state = JSON.parse(await readFile(join(resumedDir, 'checkpoint', 'state.json'), 'utf8'));
    expect(state.train).toEqual({ epoch: 1, stepInEpoch: 2, globalStep: 8 });
    const result = await pretrain({ ...common, outDir: resumedDir, resume: true });
    expect(result.metrics).toMatchObject({ epochs: 2, steps: 12 });

    const load = (dir: string) => tf.loadLayersModel(layersModelFiles(join(dir, 'checkpoint', 'encoder')));
    const [a, b] = await Promise.all([load(straightDir), load(resumedDir)]);
    const wa = a.getWeights();
    const wb = b.getWeights();
    expect(wb.length).toBe(wa.length);
    // Same views, order, learning rates, optimizer state and layer classes: bit-identical weights,
    // which training moved well away from their seeded start.
    let maxStepChange = 0;
    for (let i = 0; i < wa.length; i++) {
      expect(Array.from(wb[i].dataSync())).toEqual(Array.from(wa[i].dataSync()));
      maxStepChange = Math.max(maxStepChange, ...Array.from(wa[i].dataSync(), (v, j) => Math.abs(v - initial[i][j])));
    }
    expect(maxStepChange).toBeGreaterThan(1e-3);
    a.dispose();
    b.dispose();
    // A resumed run refuses a checkpoint made with other settings.
    await expect(pretrain({ ...common, batchSize: 4, outDir: resumedDir, resume: true })).rejects.toThrow(/was made with batchSize = 8, this run has 4/);
  });

  it('resumes only its own dataset and settings; a finished run resumes as a no-op; starting over needs force', async () => {
    const other = await tinyDataset(12, 8); // the same size and classes, other pixels
    const outDir = await mkdtemp(join(tmpdir(), 'pretrain-keys-'));
    const common = { outDir, epochs: 1, batchSize: 8, headLayers: 1, projectionDim: 8, backend: 'wasm' as const, workers: 1 };
    const first = await pretrain({ ...common, data });
    await expect(pretrain({ ...common, data: other, resume: true })).rejects.toThrow(/was made with datasetSha256 = "[0-9a-f]{64}", this run has "[0-9a-f]{64}"/);
    await expect(pretrain({ ...common, data, epochs: 2, resume: true })).rejects.toThrow(/was made with epochs = 1, this run has 2/);
    await expect(pretrain({ ...common, data, temperature: 0.2, resume: true })).rejects.toThrow(/was made with temperature = 0.5, this run has 0.2/);
    const lines: string[] = [];
    const again = await pretrain({ ...common, data, resume: true, log: (l) => lines.push(l) });
    expect(again.metrics).toEqual(first.metrics);
    expect(lines.join('\n')).toMatch(/has finished all 1 epochs; nothing left to train/);
    await expect(pretrain({ ...common, data })).rejects.toThrow(PretrainInputError);
    await expect(pretrain({ ...common, data })).rejects.toThrow(/holds the checkpoint of an earlier run \(epoch 1, step 6\); continue it with --resume, or start over with --force/);
    const over = await pretrain({ ...common, data: other, force: true });
    expect(over.metrics).toMatchObject({ epochs: 1, steps: 6 });
  });

  it('refuses a batch larger than the data and a resume without checkpoint, naming the option', async () => {
    const outDir = await mkdtemp(join(tmpdir(), 'pretrain-out-'));
    await expect(pretrain({ data, outDir, batchSize: 64, backend: 'wasm' })).rejects.toThrow(/pretrain.batchSize 64 is larger than the 48 training images/);
    await expect(pretrain({ data, outDir, batchSize: 8, resume: true, backend: 'wasm' })).rejects.toThrow(PretrainInputError);
    await expect(pretrain({ data, outDir, epochs: 0, backend: 'wasm' })).rejects.toThrow('pretrain.epochs must be an integer >= 1, got 0');
  });

  it('stops on a non-finite loss naming the step, and frees the model', async () => {
    const outDir = await mkdtemp(join(tmpdir(), 'pretrain-out-'));
    const before = tf.memory().numTensors;
    await expect(
      pretrain({ data, outDir, epochs: 3, batchSize: 8, optimizer: 'sgd', lr: 1e30, warmupEpochs: 0, headLayers: 1, projectionDim: 8, backend: 'wasm', workers: 1 }),
    ).rejects.toThrow(/loss is (NaN|Infinity|-Infinity) at epoch \d+ step \d+ \(global step \d+/);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('warm-starts from another run: its encoder as the start (the kNN before the first step equals that run\'s last), its own schedule; another architecture is refused', async () => {
    const common = { data, batchSize: 8, headLayers: 2, projectionDim: 16, backend: 'wasm' as const, workers: 1, seed: 3, logEvery: 100, knnHoldout: 2, knnEvery: 1, knnK: 3 };
    const first = await mkdtemp(join(tmpdir(), 'pretrain-first-'));
    const a = await pretrain({ ...common, epochs: 2, outDir: first });
    const second = await mkdtemp(join(tmpdir(), 'pretrain-warm-'));
    const before = tf.memory().numTensors;
    const b = await pretrain({ ...common, epochs: 1, outDir: second, initFrom: first });
    expect(tf.memory().numTensors).toBe(before);
    expect(b.initFrom?.checkpoint).toBe(join(first, 'checkpoint'));
    expect(b.metrics.knn_accuracy_random_init).toBeUndefined();
    // The same encoder, bank and queries (same data and seed): the same kNN accuracy.
    expect(b.metrics.knn_accuracy_init_from).toBe(a.metrics.knn_accuracy);
    const rows = (await readFile(join(second, 'metrics.jsonl'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l));
    expect(rows.filter((r) => r.summary === 'epoch').length).toBe(1); // its own one-epoch schedule
    // The resume key holds the start: a resume of the warm-started run without it is refused.
    await expect(pretrain({ ...common, epochs: 2, outDir: first, initFrom: second, resume: true })).rejects.toThrow(/does not record initFrom/);
    await expect(pretrain({ ...common, epochs: 1, headLayers: 3, outDir: await mkdtemp(join(tmpdir(), 'pretrain-warm-')), initFrom: first })).rejects.toThrow(
      /pretrain\.initFrom .*: another architecture \(headLayers 2 there, 3 here\); warm starts need the same network/,
    );
    await expect(pretrain({ ...common, epochs: 1, outDir: await mkdtemp(join(tmpdir(), 'pretrain-warm-')), initFrom: data })).rejects.toThrow(/checkpoint\.json: is missing, so the checkpoint is incomplete/);
  });
});
