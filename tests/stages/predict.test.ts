import { mkdtemp, readdir, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { loadImages } from '../../data/memory.ts';
import { readShard } from '../../data/shards.ts';
import { layersModelFiles } from '../../models/checkpoint.ts';
import { embed } from '../../models/simclr.ts';
import { SYNTHETIC_CLASSES, makeSyntheticDataset } from '../../scripts/synthetic.ts';
import { finetune } from '../../stages/finetune.ts';
import { ingest } from '../../stages/ingest.ts';
import { partOutput, predict } from '../../stages/predict.ts';
import { pretrain } from '../../stages/pretrain.ts';
import { runCli, tinyImagesDataset } from '../helpers.ts';

describe('predict', () => {
  let classifierDir: string;
  let folder: string;
  beforeAll(async () => {
    const data = await tinyImagesDataset({ perClass: 8, size: 8 });
    const pretrainDir = await mkdtemp(join(tmpdir(), 'pr-pretrain-'));
    await pretrain({ data, outDir: pretrainDir, epochs: 1, batchSize: 8, headLayers: 2, projectionDim: 16, backend: 'wasm', workers: 1 });
    classifierDir = await mkdtemp(join(tmpdir(), 'pr-finetune-'));
    await finetune({ data, outDir: classifierDir, pretrained: pretrainDir, labels: '4-per-class', epochs: 2, batchSize: 8, backend: 'wasm', workers: 1 });
    // New images at another size (resized as ingest does), of the classifier's classes, and one corrupt file.
    folder = await mkdtemp(join(tmpdir(), 'pr-new-'));
    await makeSyntheticDataset({ dir: folder, perClass: 2, size: 20, classes: SYNTHETIC_CLASSES.slice(0, 4), seed: 5 });
    await writeFile(join(folder, SYNTHETIC_CLASSES[0], 'broken.png'), 'not a png');
  });

  it('writes top-k classes per image to CSV, lists the corrupt file, and agrees with the model on the ingested images', async () => {
    const out = join(await mkdtemp(join(tmpdir(), 'pr-out-')), 'predictions.csv');
    const before = tf.memory().numTensors;
    const result = await predict({ checkpoint: classifierDir, input: folder, out, topK: 2, backend: 'wasm', workers: 1 });
    expect(tf.memory().numTensors).toBe(before);
    expect(result).toMatchObject({ rows: 8, rejected: 1, rejectedPath: `${out}.rejected.jsonl` });
    expect(await readFile(result.rejectedPath!, 'utf8')).toMatch(/broken\.png/);
    const lines = (await readFile(out, 'utf8')).trim().split('\n');
    expect(lines[0]).toBe('id,label,class_1,probability_1,class_2,probability_2');
    expect(lines).toHaveLength(9);

    // The same images ingested at the model's size, through the model here.
    const dataset = await mkdtemp(join(tmpdir(), 'pr-ingested-'));
    await ingest({ input: folder, outDir: dataset, size: 8, workers: 1 });
    const images = await loadImages(dataset);
    const model = await tf.loadLayersModel(layersModelFiles(join(classifierDir, 'checkpoint', 'classifier')));
    const probs = tf.tidy(() => tf.softmax(embed(model, images.pixels, images.ids.length, 8)).arraySync() as number[][]);
    model.dispose();
    const classes = JSON.parse(await readFile(join(classifierDir, 'classes.json'), 'utf8')) as string[];
    for (const [i, id] of images.ids.entries()) {
      const row = lines.find((l) => l.startsWith(`${id},`))!.split(',');
      expect(row[1]).toBe(images.classes[images.labels[i]]);
      const order = probs[i].map((p, c) => [p, c]).sort((a, b) => b[0] - a[0]);
      expect(row[2]).toBe(classes[order[0][1]]);
      expect(Number(row[3])).toBeCloseTo(order[0][0], 5);
      expect(Number(row[5])).toBeCloseTo(order[1][0], 5);
    }

    // An images dataset as input, Arrow out: the full probabilities.
    const arrow = join(await mkdtemp(join(tmpdir(), 'pr-out-')), 'predictions.arrow');
    expect((await predict({ checkpoint: classifierDir, input: dataset, out: arrow, backend: 'wasm' })).rows).toBe(8);
    let row = 0;
    for await (const batch of readShard<'predictions'>(arrow, { schema: 'predictions' })) {
      for (let r = 0; r < batch.numRows; r++, row++) {
        for (let c = 0; c < 4; c++) expect(batch.columns.probabilities[r * 4 + c]).toBeCloseTo(probs[row][c], 5);
      }
    }
    expect(row).toBe(8);
  });

  it('refuses an empty input, a folder with no readable image, a non-classifier and a bad --out, with one line (exit 2)', async () => {
    const out = join(await mkdtemp(join(tmpdir(), 'pr-out-')), 'p.csv');
    const empty = await mkdtemp(join(tmpdir(), 'pr-empty-'));
    await expect(predict({ checkpoint: classifierDir, input: empty, out, backend: 'wasm' })).rejects.toThrow(/predict.input: input folder .* has no image files/);
    const junk = await mkdtemp(join(tmpdir(), 'pr-junk-'));
    await writeFile(join(junk, 'a.jpg'), 'nope');
    await expect(predict({ checkpoint: classifierDir, input: junk, out, backend: 'wasm' })).rejects.toThrow(/no readable image \(1 rejected, listed in .*p\.csv\.rejected\.jsonl\)/);
    await expect(predict({ checkpoint: classifierDir, input: folder, out: join(empty, 'p.txt'), backend: 'wasm' })).rejects.toThrow('must end in .csv or .arrow');
    const cli = await runCli(['predict', '--checkpoint', join(empty, 'none'), '--input', folder, '--out', out, '--backend', 'wasm']);
    expect(cli.code).toBe(2);
    expect(cli.err.trim().split('\n')).toHaveLength(1);
    const ok = await runCli(['predict', '--checkpoint', classifierDir, '--input', folder, '--out', out, '--backend', 'wasm', '--workers', '1', '--json']);
    expect(ok.code, ok.err).toBe(0);
    expect(JSON.parse(ok.out)).toMatchObject({ command: 'predict', rows: 8, rejected: 1 });
  });

  it('runs as parts (--shard-index/--num-shards or the scheduler\'s variables) that `pipeline merge OUT` joins into the one-process output', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'pr-parts-'));
    const whole = join(dir, 'whole.csv');
    await predict({ checkpoint: classifierDir, input: folder, out: whole, backend: 'wasm', workers: 1 });
    const out = join(dir, 'p.csv');
    // Part 2 first, from the Slurm variables; part 0 from the flags; part 1 missing yet.
    const args = ['predict', '--checkpoint', classifierDir, '--input', folder, '--out', out, '--backend', 'wasm', '--workers', '1'];
    Object.assign(process.env, { SLURM_ARRAY_TASK_ID: '2', SLURM_ARRAY_TASK_COUNT: '3' });
    try {
      expect((await runCli(args)).code).toBe(0);
    } finally {
      delete process.env.SLURM_ARRAY_TASK_ID;
      delete process.env.SLURM_ARRAY_TASK_COUNT;
    }
    expect((await runCli([...args, '--shard-index', '0', '--num-shards', '3'])).code).toBe(0);
    expect(await readdir(dir)).toContain('p.part-00002-of-00003.csv');
    const missing = await runCli(['merge', out]);
    expect(missing.code).toBe(2);
    expect(missing.err).toMatch(/1 of 3 predict parts missing or unfinished: 1; re-run those parts/);
    await predict({ checkpoint: classifierDir, input: folder, out, backend: 'wasm', workers: 1, shardIndex: 1, numShards: 3 });
    const merged = await runCli(['merge', out, '--json']);
    expect(merged.code, merged.err).toBe(0);
    expect(JSON.parse(merged.out)).toMatchObject({ parts: 3, rows: 8, rejected: 1 });
    expect(await readFile(out, 'utf8')).toBe(await readFile(whole, 'utf8'));
    expect(await readFile(`${out}.rejected.jsonl`, 'utf8')).toMatch(/broken\.png/);
    // Arrow parts of a dataset's rows join into the one-process file's rows.
    const dataset = await mkdtemp(join(tmpdir(), 'pr-ds-'));
    await ingest({ input: folder, outDir: dataset, size: 8, workers: 1, log: () => {} });
    const arrow = join(dir, 'p.arrow');
    for (const i of [0, 1]) await predict({ checkpoint: classifierDir, input: dataset, out: arrow, backend: 'wasm', shardIndex: i, numShards: 2 });
    expect((await runCli(['merge', arrow])).code).toBe(0);
    const rows = async (file: string) => {
      const all: unknown[] = [];
      for await (const b of readShard<'predictions'>(file, { schema: 'predictions' })) for (let r = 0; r < b.numRows; r++) all.push([b.columns.id[r], b.columns.predicted[r], Array.from(b.columns.probabilities.subarray(r * 4, r * 4 + 4))]);
      return all;
    };
    const single = join(dir, 'single.arrow');
    await predict({ checkpoint: classifierDir, input: dataset, out: single, backend: 'wasm' });
    expect(await rows(arrow)).toEqual(await rows(single));
    // A part made by another classifier (its record says so) is refused by name.
    await writeFile(`${partOutput(arrow, 1, 2)}.json`, (await readFile(`${partOutput(arrow, 1, 2)}.json`, 'utf8')).replace(/"checkpoint_sha256":"[0-9a-f]+"/, '"checkpoint_sha256":"0000"'));
    const mixed = await runCli(['merge', arrow]);
    expect(mixed.code).toBe(2);
    expect(mixed.err).toMatch(/p\.part-00001-of-00002\.arrow\.json: cannot merge: made with another classifier than part 0/);
    await expect(predict({ checkpoint: classifierDir, input: folder, out, backend: 'wasm', shardIndex: 3, numShards: 3 })).rejects.toThrow(/predict\.shardIndex must be in \[0, numShards = 3\), got 3/);
    expect((await runCli([...args, '--num-shards', '0'])).code).toBe(2);
  });
});
