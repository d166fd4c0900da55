import { copyFile, mkdtemp, readdir, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { readDataset, readManifest, writeManifest } from '../../data/manifest.ts';
import { distill, teacherLogitsPart, type DistillOptions } from '../../stages/distill.ts';
import { evaluate } from '../../stages/evaluate.ts';
import { finetune } from '../../stages/finetune.ts';
import { pretrain } from '../../stages/pretrain.ts';
import { TrainingInterruptedError } from '../../stages/training/loop.ts';
import { plainTfjsPredict, tinyImagesDataset } from '../helpers.ts';

describe('distill stage', () => {
  let data: string;
  let pretrainDir: string;
  let teacherDir: string;
  let common: DistillOptions;
  beforeAll(async () => {
    data = await tinyImagesDataset({ perClass: 12, size: 8 });
    pretrainDir = await mkdtemp(join(tmpdir(), 'di-pretrain-'));
    await pretrain({ data, outDir: pretrainDir, epochs: 1, batchSize: 8, headLayers: 2, projectionDim: 16, backend: 'wasm', workers: 1, seed: 1 });
    teacherDir = await mkdtemp(join(tmpdir(), 'di-teacher-'));
    await finetune({ data, outDir: teacherDir, pretrained: pretrainDir, labels: '4-per-class', holdout: 2, epochs: 3, batchSize: 8, backend: 'wasm', workers: 1 });
    common = { data, outDir: '', teacher: teacherDir, holdout: 2, epochs: 2, batchSize: 8, backend: 'wasm', workers: 1, seed: 3 };
  });

  it('caches the teacher logits, trains a self-distilled student, reuses the logits, leaks nothing', async () => {
    const outDir = await mkdtemp(join(tmpdir(), 'di-self-'));
    const before = tf.memory().numTensors;
    const lines: string[] = [];
    const result = await distill({ ...common, outDir, log: (l) => lines.push(l) });
    expect(tf.memory().numTensors).toBe(before);
    // 40 training images (12 − 2 held out, × 4), batch 8: 5 steps an epoch.
    expect(result.metrics).toMatchObject({ epochs: 2, steps: 10, images: 40 });
    expect(result.metrics.parameters).toBe(result.metrics.teacher_parameters);
    expect(Number.isInteger(result.metrics.accuracy! * 8)).toBe(true);
    // The logits dataset: one row per image of the dataset (held-out ones too: the pass maps over its shards).
    const manifest = await readManifest(result.teacherLogits);
    expect(manifest).toMatchObject({ schema: 'logits', rows: 48, dim: 4 });
    expect(manifest.teacher_sha256).toMatch(/^[0-9a-f]{64}$/);
    const stored: number[] = [];
    for await (const b of readDataset<'logits'>(result.teacherLogits, { schema: 'logits' })) stored.push(...b.columns.logits);
    expect(stored.some((v) => v !== 0)).toBe(true);
    // The student's checkpoint is a classifier plain tfjs loads, and evaluate scores.
    expect((await plainTfjsPredict(join(outDir, 'checkpoint', 'classifier'), 8)).y).toHaveLength(8);
    const scored = await evaluate({ data, checkpoint: outDir, outDir: await mkdtemp(join(tmpdir(), 'di-eval-')), holdout: 2, backend: 'wasm' });
    expect(scored.metrics.accuracy).toBeCloseTo(result.metrics.accuracy!, 10);
    expect(JSON.parse(await readFile(join(outDir, 'classes.json'), 'utf8'))).toHaveLength(4);
    // A second run with the same teacher and data reuses the logits.
    const again: string[] = [];
    await distill({ ...common, outDir, epochs: 1, force: true, log: (l) => again.push(l) });
    expect(again.join('\n')).toMatch(/teacher logits: 0 input shard\(s\) computed, 1 reused/);
  });

  it('trains a smaller student, and online mode, and resumes to the same weights', async () => {
    const small = await distill({ ...common, outDir: await mkdtemp(join(tmpdir(), 'di-small-')), studentWidth: 0.5, studentHeadLayers: 0, teacherMode: 'online', epochs: 1 });
    expect(small.metrics.parameters).toBeLessThan(small.metrics.teacher_parameters / 2);

    const straight = await mkdtemp(join(tmpdir(), 'di-straight-'));
    await distill({ ...common, outDir: straight, alpha: 0.5 });
    const dir = await mkdtemp(join(tmpdir(), 'di-resumed-'));
    const controller = new AbortController();
    let steps = 0;
    await expect(distill({ ...common, outDir: dir, alpha: 0.5, signal: controller.signal, onProgress: ({ step }) => void (step > 0 && ++steps === 7 && controller.abort()) })).rejects.toThrow(TrainingInterruptedError);
    await distill({ ...common, outDir: dir, alpha: 0.5, resume: true });
    const weights = async (d: string) => (await plainTfjsPredict(join(d, 'checkpoint', 'classifier'), 8)).y;
    expect(await weights(dir)).toEqual(await weights(straight));
  });

  it('maps the teacher pass over input shards in parts; distill reuses every part', async () => {
    const sharded = await tinyImagesDataset({ perClass: 12, size: 8, maxRows: 16 }); // 48 rows: 3 shards
    expect((await readManifest(sharded)).shards).toHaveLength(3);
    const outDir = await mkdtemp(join(tmpdir(), 'di-parts-'));
    const part0 = await teacherLogitsPart({ data: sharded, teacher: teacherDir, outDir, shardIndex: 0, numShards: 2, backend: 'wasm' });
    const part1 = await teacherLogitsPart({ data: sharded, teacher: teacherDir, outDir, shardIndex: 1, numShards: 2, backend: 'wasm' });
    expect([part0.computed, part1.computed]).toEqual([2, 1]);
    expect((await teacherLogitsPart({ data: sharded, teacher: teacherDir, outDir, shardIndex: 1, numShards: 2, backend: 'wasm' })).reused).toBe(1);
    const lines: string[] = [];
    await distill({ ...common, data: sharded, outDir, epochs: 1, log: (l) => lines.push(l) });
    expect(lines.join('\n')).toMatch(/teacher logits: 0 input shard\(s\) computed, 3 reused/);
    const logits = await readManifest(join(outDir, 'teacher-logits'));
    expect(logits).toMatchObject({ schema: 'logits', rows: 48 });
    expect(logits.shards).toHaveLength(3);
    // The same logits as one pass over the whole dataset computes.
    const whole = await mkdtemp(join(tmpdir(), 'di-whole-'));
    await teacherLogitsPart({ data: sharded, teacher: teacherDir, outDir: whole, shardIndex: 0, numShards: 1, backend: 'wasm' });
    const read = async (dir: string) => {
      const values: number[] = [];
      for await (const b of readDataset<'logits'>(dir, { schema: 'logits' })) values.push(...b.columns.logits);
      return values;
    };
    await distill({ ...common, data: sharded, outDir: whole, epochs: 1 });
    expect(await read(join(whole, 'teacher-logits'))).toEqual(await read(join(outDir, 'teacher-logits')));
    await expect(teacherLogitsPart({ data: sharded, teacher: teacherDir, outDir, shardIndex: 2, numShards: 2 })).rejects.toThrow('distill.shardIndex must be in [0, numShards = 2), got 2');
  });

  it('names the teacher-logits part that did not run, and computes its shards itself', async () => {
    const sharded = await tinyImagesDataset({ perClass: 12, size: 8, maxRows: 16 }); // 3 shards: part 0 of 2 has 0 and 2, part 1 has 1
    const outDir = await mkdtemp(join(tmpdir(), 'di-missing-'));
    await teacherLogitsPart({ data: sharded, teacher: teacherDir, outDir, shardIndex: 0, numShards: 2, backend: 'wasm' });
    const lines: string[] = [];
    await distill({ ...common, data: sharded, outDir, epochs: 1, log: (l) => lines.push(l) });
    expect(lines.join('\n')).toMatch(/teacher logits: part\(s\) 1 of 2 missing or stale \(distill-part-I-of-2 did not complete/);
    expect(lines.join('\n')).toMatch(/teacher logits: 1 input shard\(s\) computed, 2 reused/);
  });

  it('keys the cached logits by input shard, so a dataset that lost and gained shards reuses the rest', async () => {
    const sharded = await tinyImagesDataset({ perClass: 12, size: 8, maxRows: 16 }); // shards of rows 0-15, 16-31, 32-47
    const outDir = await mkdtemp(join(tmpdir(), 'di-incr-'));
    expect((await teacherLogitsPart({ data: sharded, teacher: teacherDir, outDir, shardIndex: 0, numShards: 1, backend: 'wasm' })).computed).toBe(3);
    const before = await readManifest(join(outDir, 'teacher-logits')).catch(() => null);
    expect(before).toBeNull(); // parts only; distill collects
    // What an incremental ingest leaves: shard 1 gone (its rows removed), shard 2 moved up, a new shard after it.
    const m = await readManifest(sharded);
    const extra = await tinyImagesDataset({ perClass: 2, size: 8, seed: 9 });
    const newShard = (await readManifest(extra)).shards[0];
    await copyFile(join(extra, newShard.path), join(sharded, 'shard-00003.arrow'));
    await writeManifest(sharded, { ...m, rows: 40, class_counts: { disc: 14, square: 6, triangle: 6, ring: 14 }, shards: [m.shards[0], m.shards[2], { ...newShard, path: 'shard-00003.arrow' }] });
    const lines: string[] = [];
    await distill({ ...common, data: sharded, outDir, holdout: 1, epochs: 1, log: (l) => lines.push(l) });
    expect(lines.join('\n')).toMatch(/teacher logits: 1 input shard\(s\) computed, 2 reused/);
    const logits = await readManifest(join(outDir, 'teacher-logits'));
    expect(logits.rows).toBe(40);
    // The logits of the shard that went are removed with its record.
    expect((await readdir(join(outDir, 'teacher-logits'))).filter((f) => f.includes('shard-00001'))).toEqual([]);
  });

  it.each([
    [{ teacher: '' }, /distill.teacher : no checkpoint there/],
    [{ alpha: 1.5 }, 'distill.alpha must be in [0, 1], got 1.5'],
    [{ temperature: 0 }, 'distill.temperature must be > 0, got 0'],
    [{ student: 'resnet99' }, /distill.student must be one of .*resnet20.*, got "resnet99"/],
    [{ studentWidth: 0.01 }, /distill.student: encoder.width 0.01 leaves resnet20 a layer with no channels/],
  ])('refuses %j with one line', async (bad, message) => {
    await expect(distill({ ...common, outDir: await mkdtemp(join(tmpdir(), 'di-bad-')), ...bad })).rejects.toThrow(message);
  });

  it('refuses a teacher that is not a classifier', async () => {
    await expect(distill({ ...common, outDir: await mkdtemp(join(tmpdir(), 'di-bad-')), teacher: pretrainDir })).rejects.toThrow(/holds \[encoder, head\], not a classifier/);
  });
});
