import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it, vi } from 'vitest';
import { shardFromEnvironment } from '../../pipeline/stages.ts';
import { makeSyntheticDataset } from '../../scripts/synthetic.ts';
import { runCli } from '../helpers.ts';

const run = runCli;

describe('pipeline CLI', () => {
  let images: string;
  beforeAll(async () => {
    images = await mkdtemp(join(tmpdir(), 'cli-images-'));
    await makeSyntheticDataset({ dir: images, perClass: 3, size: 12, classes: ['disc', 'square'] });
  });

  it('ingests into a run dir, prints a JSON summary, skips an up-to-date rerun, inspects', async () => {
    const runDir = await mkdtemp(join(tmpdir(), 'cli-run-'));
    const first = await run(['run', 'ingest', '--run-dir', runDir, '--input', images, '--size', '8', '--workers', '1', '--json']);
    expect(first.code).toBe(0);
    const summary = JSON.parse(first.out);
    expect(summary).toMatchObject({ stage: 'ingest', skipped: false, status: 'completed', metrics: { images: 6, rejected: 0 } });
    const manifest = JSON.parse(await readFile(join(runDir, 'ingest', 'manifest.json'), 'utf8'));
    // One file is both the stage manifest and the dataset manifest.
    expect(manifest).toMatchObject({ stage: 'ingest', status: 'completed', schema: 'images', rows: 6, classes: ['disc', 'square'], image_shape: [8, 8, 3] });
    expect(JSON.parse(await readFile(join(runDir, 'ingest', 'config.json'), 'utf8'))).toMatchObject({ size: 8, input: images });

    const again = await run(['run', 'ingest', '--run-dir', runDir, '--input', images, '--size', '8', '--workers', '2', '--json']);
    expect(JSON.parse(again.out)).toMatchObject({ skipped: true });

    const inspectRun = await run(['inspect', runDir, '--json']);
    expect(JSON.parse(inspectRun.out)).toMatchObject({ kind: 'run', stages: [{ stage: 'ingest', status: 'completed' }] });
    const inspectData = await run(['inspect', join(runDir, 'ingest'), '--rows', '1']);
    expect(inspectData.code).toBe(0);
    expect(inspectData.out).toMatch(/rows 6/);
    expect(inspectData.out).toMatch(/classes \(2\): disc 3, square 3/);
  });

  it.each([
    [['run', 'ingest', '--run-dir', '/tmp/x', '--input', '/no/such/folder'], /input \/no\/such\/folder does not exist/],
    [['run', 'ingest', '--run-dir', '/tmp/x', '--input', '.', '--size', '0'], /flag 'size' must be >= 1, got 0/],
    [['run', 'pretrain', '--input', 'x'], /Unknown argument: input/],
    [['run', 'pretrain', '--epochs', '2'], /--run-dir is required/],
    [['run', 'pretrain', '--run-dir', '/tmp/x', '--model', 'vgg'], /must be one of .*resnet20/],
    [['run', 'pretrain', '--run-dir', '/tmp/x', '--epochs', 'abc'], /flag 'epochs' must be a number, got 'abc'$/],
    [['run', 'pretrain', '--run-dir', '/tmp/x', '--epochs=12.5'], /flag 'epochs' must be an integer, got '12.5'$/],
    [['run', 'pretrain', '--run-dir', '/tmp/x', '--epochs'], /Not enough arguments following: epochs/],
    [['run', 'pretrain', '--run-dir', '/tmp/x', '--set', 'pretrian.epochs=1'], /--set pretrian\.epochs: unknown stage 'pretrian' \(known: ingest, augment, pretrain, finetune, distill, evaluate, baseline, export\)$/],
    [['frobnicate'], /Unknown argument: frobnicate/],
    [['inspect', '/no/such/path'], /inspect: \/no\/such\/path does not exist/],
    [['run', 'pretrain', '--run-dir', '/tmp/x', '--backend', 'tensorflow-gpu'], /backend 'tensorflow-gpu' is not available|does not exist/],
  ])('exits 2 with one line for bad usage or input: %j', async (args, message) => {
    const { code, err } = await run(args as string[]);
    expect(code).toBe(2);
    expect(err).toMatch(message);
    expect(err).not.toMatch(/\n\s+at /); // no stack trace without --verbose
  });

  it('reads a YAML config with flags taking precedence, and refuses unknown keys', async () => {
    const runDir = await mkdtemp(join(tmpdir(), 'cli-run-'));
    const config = join(runDir, 'pipeline.yaml');
    await writeFile(config, `run_dir: ${runDir}\ningest:\n  input: ${images}\n  size: 6\n`);
    const ok = await run(['run', 'ingest', '--config', config, '--size', '7', '--json']);
    expect(ok.code).toBe(0);
    const manifest = JSON.parse(await readFile(join(runDir, 'ingest', 'manifest.json'), 'utf8'));
    expect(manifest.image_shape).toEqual([7, 7, 3]);
    await writeFile(config, `run_dir: ${runDir}\ningest:\n  input: ${images}\n  sise: 6\n`);
    const bad = await run(['run', 'ingest', '--config', config]);
    expect(bad.code).toBe(2);
    expect(bad.err).toMatch(/section ingest: unknown key 'sise'/);
  });

  it.each([
    ['run_dir: 42', /^pipeline: config file .*pipeline.yaml: 'run_dir' must be a directory path \(a string\), got 42$/],
    ['run_dir: /tmp/x\npretrain:\n  epochs: [1, 2]', /^pipeline: config file .*pipeline.yaml section pretrain 'epochs' must be a number, got \[1,2\]$/],
    ['run_dir: /tmp/x\nseed: { a: 1 }', /^pipeline: config file .*pipeline.yaml 'seed' must be a number, got \{"a":1\}$/],
  ])('exits 2 with one line for a config value of the wrong type: %j', async (text, message) => {
    const dir = await mkdtemp(join(tmpdir(), 'cli-cfg-'));
    const config = join(dir, 'pipeline.yaml');
    await writeFile(config, `${text}\n`);
    const { code, err } = await run(['run', 'pretrain', '--config', config]);
    expect(code).toBe(2);
    expect(err).toMatch(message);
  });

  it('keeps the help of numeric flags: their type and default', async () => {
    const lines: unknown[] = [];
    const spy = vi.spyOn(console, 'log').mockImplementation((...a) => void lines.push(...a));
    try {
      expect((await run(['run', 'pretrain', '--help'])).code).toBe(0);
    } finally {
      spy.mockRestore();
    }
    const help = lines.join('\n');
    expect(help).toMatch(/--epochs +passes over the training images \(default 100\) +\[number\]/);
    expect(help).toMatch(/--model +encoder .*\[string\]/s);
    expect(help).toMatch(/--resume +continue from the last checkpoint .*\[boolean\]/);
  });

  it('takes the shard from Kubernetes or Slurm job variables', () => {
    expect(shardFromEnvironment({}, { SLURM_ARRAY_TASK_ID: '2', SLURM_ARRAY_TASK_COUNT: '4' })).toEqual({ shardIndex: 2, numShards: 4 });
    expect(shardFromEnvironment({ numShards: 8 }, { JOB_COMPLETION_INDEX: '5' })).toEqual({ shardIndex: 5, numShards: 8 });
    expect(shardFromEnvironment({ shardIndex: 1, numShards: 3 }, { JOB_COMPLETION_INDEX: '5' })).toEqual({ shardIndex: 1, numShards: 3 });
    expect(() => shardFromEnvironment({}, { JOB_COMPLETION_INDEX: '5' })).toThrow(/needs --num-shards/);
  });

  it.each([
    [{ numShards: 4 }, { JOB_COMPLETION_INDEX: '4' }, 'shard index 4 (from JOB_COMPLETION_INDEX) must be below the number of parts 4 (from --num-shards): parts are 0 to 3 (Slurm: --array=0-3)'],
    [{}, { SLURM_ARRAY_TASK_ID: '1', SLURM_ARRAY_TASK_COUNT: 'x' }, 'number of parts (SLURM_ARRAY_TASK_COUNT) must be an integer in [1, 99999], got "x"'],
    [{ numShards: 2 }, { JOB_COMPLETION_INDEX: '-1' }, 'shard index (JOB_COMPLETION_INDEX) must be a non-negative integer, got "-1"'],
    [{ numShards: 2 }, { SLURM_ARRAY_TASK_ID: '' }, 'shard index (SLURM_ARRAY_TASK_ID) must be a non-negative integer, got ""'],
    [{ shardIndex: 3, numShards: 3 }, {}, 'shard index 3 (from --shard-index) must be below the number of parts 3 (from --num-shards)'],
  ])('refuses a part outside the count: %j %j', (config, env, message) => {
    expect(() => shardFromEnvironment(config, env)).toThrow(message);
  });
});
