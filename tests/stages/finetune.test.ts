import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { isEventsFile, readEvents } from '../../data/tfevents.ts';
import { layersModelFiles } from '../../models/checkpoint.ts';
import { defaultFinetuneEpochs, finetune, type FinetuneOptions } from '../../stages/finetune.ts';
import { pretrain } from '../../stages/pretrain.ts';
import { TrainingInterruptedError } from '../../stages/training/loop.ts';
import { plainTfjsPredict, tinyImagesDataset } from '../helpers.ts';

const SIZE = 8;
const weightsOf = async (dir: string, model: string) => {
  const m = await tf.loadLayersModel(layersModelFiles(join(dir, 'checkpoint', model)));
  const w = m.getWeights().map((t) => Array.from(t.dataSync()));
  m.dispose();
  return w;
};

describe('finetune stage', () => {
  let data: string;
  let pretrainDir: string;
  let common: FinetuneOptions;
  beforeAll(async () => {
    data = await tinyImagesDataset({ perClass: 12, size: SIZE });
    pretrainDir = await mkdtemp(join(tmpdir(), 'ft-pretrain-'));
    await pretrain({ data, outDir: pretrainDir, epochs: 1, batchSize: 8, headLayers: 2, projectionDim: 16, backend: 'wasm', workers: 1, seed: 1 });
    common = { data, outDir: '', pretrained: pretrainDir, labels: '4-per-class', holdout: 2, epochs: 3, batchSize: 8, backend: 'wasm', workers: 1, seed: 2 };
  });

  it('fine-tunes from the first head layer; the classifier loads in plain tfjs; ids, classes, metrics written; no leaks', async () => {
    const outDir = await mkdtemp(join(tmpdir(), 'ft-'));
    const before = tf.memory().numTensors;
    const lines: string[] = [];
    const result = await finetune({ ...common, outDir, logEvery: 1, log: (l) => lines.push(l) });
    expect(tf.memory().numTensors).toBe(before);
    // 4 classes × 4 labeled images = 16, batch 8: 2 steps an epoch.
    expect(result.metrics).toMatchObject({ epochs: 3, steps: 6, labeled: 16 });
    // 2 held-out images per class: the accuracy is a count of 8.
    expect(Number.isInteger(result.metrics.accuracy! * 8)).toBe(true);
    const rows = (await readFile(result.metricsFile, 'utf8')).trim().split('\n').map((l) => JSON.parse(l));
    // The classifier starts at zero: the first step's loss is exactly log(4) for 4 classes.
    expect(rows[0].loss).toBeCloseTo(Math.log(4), 5);
    expect(rows.filter((r) => r.summary === 'epoch').at(-1)).toMatchObject({ accuracy: result.metrics.accuracy });
    const ids = (await readFile(result.labeledIds, 'utf8')).trim().split('\n');
    expect(ids[0]).toBe('id,label');
    expect(ids).toHaveLength(17);
    // Never a held-out image (the last 2 of each class: ids 10 and 11).
    expect(ids.slice(1).every((l) => !/\/1[01],/.test(l))).toBe(true);
    expect(JSON.parse(await readFile(join(outDir, 'classes.json'), 'utf8'))).toEqual(result.classes);
    expect(lines.join('\n')).toMatch(/16 labeled images \(4-per-class; .*\), batch 8, 2 steps\/epoch × 3 epochs, lars lr 0.0141/);

    // One model from raw [0, 1] pixels to logits, loadable where nothing of ours is loaded.
    const model = await tf.loadLayersModel(layersModelFiles(join(outDir, 'checkpoint', 'classifier')));
    const n = 2 * SIZE * SIZE * 3;
    const x = tf.tidy(() => tf.div(tf.range(0, n), n).reshape([2, SIZE, SIZE, 3]));
    const y = model.predict(x) as tf.Tensor;
    expect(y.shape).toEqual([2, 4]);
    const ours = Array.from(y.dataSync());
    tf.dispose([x, y]);
    model.dispose();
    const plain = (await plainTfjsPredict(join(outDir, 'checkpoint', 'classifier'), SIZE)).y;
    expect(plain).toHaveLength(8);
    for (let i = 0; i < 8; i++) expect(plain[i]).toBeCloseTo(ours[i], 4);
    // Training moved the logits off zero.
    expect(ours.some((v) => Math.abs(v) > 1e-4)).toBe(true);
  });

  it('with tensorboard, writes an events file whose scalars are metrics.jsonl\'s numbers at their steps', async () => {
    const outDir = await mkdtemp(join(tmpdir(), 'ft-tb-'));
    const result = await finetune({ ...common, outDir, epochs: 2, logEvery: 1, tensorboard: true });
    const rows = (await readFile(result.metricsFile, 'utf8')).trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    const files = (await readdir(outDir)).filter(isEventsFile);
    expect(files).toHaveLength(1);
    const [version, ...events] = await readEvents(join(outDir, files[0]));
    expect(version.fileVersion).toBe('brain.Event:2');
    // Every number of a row but its step, as float32; the epoch rows' (loss, held-out accuracy, ...) under epoch/.
    expect(events.map((e) => [e.step, e.scalars])).toEqual(
      rows.map((r) => [
        r.step,
        Object.fromEntries(Object.entries(r).filter(([k, v]) => k !== 'step' && typeof v === 'number').map(([k, v]) => [`${r.summary === 'epoch' ? 'epoch/' : ''}${k}`, Math.fround(v as number)])),
      ]),
    );
    expect(events.at(-1)!.scalars).toMatchObject({ 'epoch/accuracy': Math.fround(result.metrics.accuracy!), 'epoch/train_accuracy': expect.any(Number), 'epoch/lr': expect.any(Number) });
    expect(events.map((e) => e.step)).toEqual([1, 2, 2, 3, 4, 4]);
  });

  it('a frozen encoder keeps its weights and batch-norm statistics; the head and classifier train', async () => {
    const outDir = await mkdtemp(join(tmpdir(), 'ft-frozen-'));
    await finetune({ ...common, outDir, freezeEncoder: true, fromHeadLayer: 1 });
    const pre = await weightsOf(pretrainDir, 'encoder');
    const model = await tf.loadLayersModel(layersModelFiles(join(outDir, 'checkpoint', 'classifier')));
    const [, encoder, head] = model.layers;
    expect(encoder.getWeights().map((t) => Array.from(t.dataSync()))).toEqual(pre);
    const preHead = (await weightsOf(pretrainDir, 'head')).slice(0, head.getWeights().length);
    expect(head.getWeights().map((t) => Array.from(t.dataSync()))).not.toEqual(preHead);
    model.dispose();
  });

  it('--init random trains the same network from scratch, with its own defaults, on the same ids', async () => {
    const ftDir = await mkdtemp(join(tmpdir(), 'ft-a-'));
    const baseDir = await mkdtemp(join(tmpdir(), 'ft-baseline-'));
    const lines: string[] = [];
    await finetune({ ...common, outDir: ftDir, epochs: 1 });
    const result = await finetune({ ...common, outDir: baseDir, init: 'random', epochs: 1, log: (l) => lines.push(l) });
    expect(await readFile(result.labeledIds, 'utf8')).toBe(await readFile(join(ftDir, 'labeled-ids.txt'), 'utf8'));
    expect(lines.join('\n')).toMatch(/random init \(supervised baseline\), resnet20 \+ 1 head layer\(s\).* sgd lr 0.00625 \(cosine\), weight decay 0.0005/);
    // Same layer shapes as the fine-tuned classifier, other values.
    const [a, b] = [await weightsOf(ftDir, 'classifier'), await weightsOf(baseDir, 'classifier')];
    expect(b.map((w) => w.length)).toEqual(a.map((w) => w.length));
    expect(b[0]).not.toEqual(a[0]);
    // Without any pretrained checkpoint the options give the architecture.
    const bare = await finetune({ ...common, outDir: await mkdtemp(join(tmpdir(), 'ft-bare-')), pretrained: undefined, init: 'random', epochs: 1, headLayers: 2 });
    expect(bare.metrics.steps).toBe(2);
  });

  it('resumes an interrupted run to the same weights as an uninterrupted one', async () => {
    const straightDir = await mkdtemp(join(tmpdir(), 'ft-straight-'));
    await finetune({ ...common, outDir: straightDir });
    const dir = await mkdtemp(join(tmpdir(), 'ft-resumed-'));
    const controller = new AbortController();
    let steps = 0;
    await expect(
      finetune({ ...common, outDir: dir, signal: controller.signal, onProgress: ({ step }) => void (step > 0 && ++steps === 3 && controller.abort()) }),
    ).rejects.toThrow(TrainingInterruptedError);
    const resumed = await finetune({ ...common, outDir: dir, resume: true });
    expect(resumed.metrics).toMatchObject({ epochs: 3, steps: 6 });
    expect(await weightsOf(dir, 'classifier')).toEqual(await weightsOf(straightDir, 'classifier'));
  });

  it('refuses a missing, half-written or mismatched pretrained checkpoint and bad labels with one line', async () => {
    const outDir = await mkdtemp(join(tmpdir(), 'ft-bad-'));
    const missing = join(outDir, 'nope');
    await expect(finetune({ ...common, outDir, pretrained: missing })).rejects.toThrow(`finetune.pretrained ${missing}: no pretrain checkpoint there (run pretrain first, or give RUN_DIR/pretrain)`);
    await expect(finetune({ ...common, outDir, pretrained: undefined })).rejects.toThrow('finetune.pretrained is required');
    const big = await tinyImagesDataset({ perClass: 12, size: 16 });
    await expect(finetune({ ...common, outDir, data: big })).rejects.toThrow(`finetune: ${join(pretrainDir, 'checkpoint')} was pretrained on 8 px images, ${big} holds 16 px images`);
    await expect(finetune({ ...common, outDir, labels: '11-per-class' })).rejects.toThrow(/^finetune.labels 11-per-class: class \S+ has only 10 labeled images, 11 wanted$/);
    await expect(finetune({ ...common, outDir, fromHeadLayer: 3 })).rejects.toThrow('finetune.fromHeadLayer 3 is deeper than the 2-layer head');
    // A checkpoint whose index was never written (a save killed half-way) is not taken for whole.
    const half = await mkdtemp(join(tmpdir(), 'ft-half-'));
    await pretrain({ data, outDir: half, epochs: 1, batchSize: 8, headLayers: 2, projectionDim: 16, backend: 'wasm', workers: 1 });
    await rm(join(half, 'checkpoint', 'checkpoint.json'));
    await expect(finetune({ ...common, outDir, pretrained: half })).rejects.toThrow(/checkpoint\.json: is missing, so the checkpoint is incomplete/);
  });

  it('chooses more epochs for fewer labels, along SimCLRv2\'s two points', () => {
    expect(defaultFinetuneEpochs(12_800)).toBe(60);
    expect(defaultFinetuneEpochs(128_000)).toBe(30);
    expect(defaultFinetuneEpochs(400)).toBe(170);
    expect(defaultFinetuneEpochs(4_000)).toBe(85);
    expect(defaultFinetuneEpochs(10)).toBe(200);
  });
});
