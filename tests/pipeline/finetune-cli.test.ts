// `pipeline run finetune` end to end in a run dir: the fine-tuned classifier, the baseline beside it.
import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { runCli, tinyImagesDataset } from '../helpers.ts';

const run = runCli;

describe('pipeline run finetune', () => {
  let data: string;
  let runDir: string;
  const small = ['--backend', 'wasm', '--workers', '1', '--batch-size', '8', '--json'];
  beforeAll(async () => {
    data = await tinyImagesDataset({ perClass: 8, size: 8 });
    runDir = await mkdtemp(join(tmpdir(), 'ft-cli-'));
    const pre = await run(['run', 'pretrain', '--run-dir', runDir, '--data', data, '--epochs', '1', '--head-layers', '2', '--projection-dim', '16', ...small]);
    expect(pre.code, pre.err).toBe(0);
  });

  it('fine-tunes from RUN_DIR/pretrain, writes the baseline to RUN_DIR/baseline, skips what is up to date', async () => {
    const ft = await run(['run', 'finetune', '--run-dir', runDir, '--data', data, '--labels', '3-per-class', '--holdout', '2', '--epochs', '2', ...small]);
    expect(ft.code, ft.err).toBe(0);
    expect(JSON.parse(ft.out)).toMatchObject({ stage: 'finetune', status: 'completed', metrics: { labeled: 12, epochs: 2 } });
    const manifest = JSON.parse(await readFile(join(runDir, 'finetune', 'manifest.json'), 'utf8'));
    expect(manifest.inputs.map((i: { path: string }) => i.path)).toEqual([join(data, 'manifest.json'), 'pretrain/checkpoint/checkpoint.json']);
    expect(manifest.classes).toHaveLength(4);
    expect(manifest.metrics.accuracy).toBeGreaterThanOrEqual(0);

    const base = await run(['run', 'finetune', '--run-dir', runDir, '--data', data, '--labels', '3-per-class', '--holdout', '2', '--epochs', '2', '--init', 'random', ...small]);
    expect(base.code, base.err).toBe(0);
    expect(JSON.parse(base.out)).toMatchObject({ stage: 'baseline', status: 'completed' });
    expect(JSON.parse(await readFile(join(runDir, 'baseline', 'manifest.json'), 'utf8'))).toMatchObject({ stage: 'baseline', command: 'finetune' });
    expect(await readFile(join(runDir, 'baseline', 'labeled-ids.txt'), 'utf8')).toBe(await readFile(join(runDir, 'finetune', 'labeled-ids.txt'), 'utf8'));
    expect(JSON.parse((await run(['inspect', runDir, '--json'])).out).stages.map((s: { stage: string }) => s.stage)).toEqual(['pretrain', 'finetune', 'baseline']);

    const again = await run(['run', 'finetune', '--run-dir', runDir, '--data', data, '--labels', '3-per-class', '--holdout', '2', '--epochs', '2', ...small]);
    expect(JSON.parse(again.out)).toMatchObject({ skipped: true });
    // The same subset from its file is the same run's input; another count is another run, which needs --force over the checkpoint.
    const more = await run(['run', 'finetune', '--run-dir', runDir, '--data', data, '--labels', '4-per-class', '--holdout', '2', '--epochs', '2', ...small]);
    expect(more.code).toBe(2);
    expect(more.err).toMatch(/holds the checkpoint of an earlier run .*--resume, or start over with --force/);
  });

  it('distils the fine-tuned teacher and evaluates teacher, student and encoder side by side', async () => {
    const di = await run(['run', 'distill', '--run-dir', runDir, '--data', data, '--holdout', '2', '--epochs', '1', ...small]);
    expect(di.code, di.err).toBe(0);
    expect(JSON.parse(di.out)).toMatchObject({ stage: 'distill', status: 'completed', metrics: { images: 24, epochs: 1 } });
    // A part job of the teacher pass (here from a Kubernetes Indexed Job's environment) has its own manifest and reuses the done shard.
    process.env.JOB_COMPLETION_INDEX = '0';
    try {
      const part = await run(['run', 'distill', '--run-dir', runDir, '--data', data, '--num-shards', '2', ...small]);
      expect(part.code, part.err).toBe(0);
      expect(JSON.parse(part.out)).toMatchObject({ stage: 'distill-part-0-of-2', metrics: { logits_shards_computed: 0, logits_shards_reused: 1 } });
    } finally {
      delete process.env.JOB_COMPLETION_INDEX;
    }
    for (const [checkpoint, dir, metric] of [['finetune', 'evaluate-finetune', 'accuracy'], ['distill', 'evaluate-distill', 'accuracy'], ['pretrain', 'evaluate-pretrain', 'knn_accuracy']]) {
      const ev = await run(['run', 'evaluate', '--run-dir', runDir, '--data', data, '--holdout', '2', '--checkpoint', join(runDir, checkpoint), '--knn-k', '5', '--backend', 'wasm', '--json']);
      expect(ev.code, ev.err).toBe(0);
      const manifest = JSON.parse(await readFile(join(runDir, dir, 'manifest.json'), 'utf8'));
      expect(manifest).toMatchObject({ stage: dir, command: 'evaluate', status: 'completed' });
      expect(manifest.metrics[metric]).toBeGreaterThanOrEqual(0);
      expect(manifest.metrics.images).toBe(8);
    }
    // The export's model card carries the checkpoint's figures and its evaluation's.
    const exported = await run(['export', '--checkpoint', join(runDir, 'distill'), '--format', 'onnx', '--out', join(runDir, 'export'), '--json']);
    expect(exported.code, exported.err).toBe(0);
    const card = JSON.parse(await readFile(join(runDir, 'export', 'model-card.json'), 'utf8'));
    expect(Object.keys(card.evaluation)).toEqual(['distill', 'evaluate-distill']);
    expect(card.evaluation['evaluate-distill'].accuracy).toBeGreaterThanOrEqual(0);
    const classifier = JSON.parse(await readFile(join(runDir, 'evaluate-finetune', 'manifest.json'), 'utf8'));
    expect(Object.keys(classifier.metrics.per_class_accuracy)).toHaveLength(4);
    expect(classifier.confusion).toHaveLength(4);
  });

  it('takes a checkpoint directory itself wherever it takes a stage directory', async () => {
    const ev = await run(['run', 'evaluate', '--run-dir', runDir, '--data', data, '--holdout', '2', '--checkpoint', join(runDir, 'finetune', 'checkpoint'), '--force', ...small]);
    expect(ev.code, ev.err).toBe(0);
    expect(JSON.parse(ev.out)).toMatchObject({ stage: 'evaluate-finetune', status: 'completed' });
    expect(JSON.parse(await readFile(join(runDir, 'evaluate-finetune', 'manifest.json'), 'utf8')).inputs[1].path).toBe('finetune/checkpoint/checkpoint.json');
  });

  it.each([
    [['--labels', '0%'], /--labels 0%: a percentage must be in \(0, 100\]/],
    [['--labels', '9-per-class'], /finetune.labels 9-per-class: class \S+ has only 8 labeled images, 9 wanted/],
    [['--pretrained', '/nonexistent/pretrain'], /does not exist|no pretrain checkpoint/],
  ])('%j: exit 2 with one line', async (extra, message) => {
    const r = await run(['run', 'finetune', '--run-dir', runDir, '--data', data, '--epochs', '1', ...small, ...extra]);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(message);
    expect(r.err.trim().split('\n')).toHaveLength(1);
  });
});
