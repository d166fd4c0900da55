// `pipeline merge`: parts of a partitioned ingest joined only when all are there, intact and of one
// config; in a run dir the merged manifest is the completed ingest stage. Bad part numbers exit 2.
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { readManifest } from '../../data/manifest.ts';
import { compareDatasets } from '../../scripts/compare-datasets.ts';
import { makeSyntheticDataset } from '../../scripts/synthetic.ts';
import { runCli } from '../helpers.ts';

let root: string;
let input: string;
const small = ['--size', '8', '--workers', '1'];

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'merge-'));
  input = join(root, 'images');
  await makeSyntheticDataset({ dir: input, perClass: 3, size: 12, classes: ['disc', 'square', 'ring'] }); // 9 images
});

describe('pipeline merge', () => {
  it('run-dir parts: names the missing and the killed part, merges after the part re-runs alone, equals a one-process ingest', async () => {
    const runDir = join(root, 'run');
    const part = (i: number, ...more: string[]) => runCli(['run', 'ingest', '--run-dir', runDir, '--input', input, ...small, '--num-shards', '2', '--shard-index', String(i), '--json', ...more]);
    const p0 = await part(0);
    expect(p0.code, p0.err).toBe(0);
    expect(JSON.parse(p0.out)).toMatchObject({ stage: 'ingest-part-0-of-2', status: 'completed', metrics: { images: 4 } });

    const early = await runCli(['merge', runDir]);
    expect(early.code).toBe(2);
    expect(early.err.split('\n')).toHaveLength(1);
    expect(early.err).toMatch(/1 of 2 ingest part jobs not completed: 1 \(not run\); re-run those parts \(pipeline run ingest --shard-index I --num-shards 2\)/);

    expect((await part(1)).code).toBe(0);
    // What a kill before the part published leaves: its stage still `running`, no part manifest, a temporary shard.
    const stageFile = join(runDir, 'ingest-part-1-of-2', 'manifest.json');
    await writeFile(stageFile, JSON.stringify({ ...JSON.parse(await readFile(stageFile, 'utf8')), status: 'running' }));
    await rm(join(runDir, 'ingest', 'part-00001-of-00002.manifest.json'));
    await writeFile(join(runDir, 'ingest', 'part-00001-of-00002-shard-00000.arrow.tmp-999999'), 'half');
    const killed = await runCli(['merge', runDir]);
    expect(killed.code).toBe(2);
    expect(killed.err).toMatch(/not completed: 1 \(running\)/);

    const again = await part(1);
    expect(again.code, again.err).toBe(0);
    expect(JSON.parse(again.out)).toMatchObject({ stage: 'ingest-part-1-of-2', skipped: false, metrics: { images: 5 } });
    expect(await readdir(join(runDir, 'ingest'))).not.toContain('part-00001-of-00002-shard-00000.arrow.tmp-999999');
    // The same part once more is up to date.
    expect(JSON.parse((await part(1)).out)).toMatchObject({ skipped: true });

    const merged = await runCli(['merge', join(runDir, 'ingest'), '--json']);
    expect(merged.code, merged.err).toBe(0);
    expect(JSON.parse(merged.out)).toMatchObject({ command: 'merge', parts: 2, rows: 9, run_dir: runDir });
    const stage = JSON.parse(await readFile(join(runDir, 'ingest', 'manifest.json'), 'utf8'));
    expect(stage).toMatchObject({ stage: 'ingest', status: 'completed', rows: 9, parts: { count: 2 }, metrics: { images: 9, parts: 2 } });

    const whole = join(root, 'whole');
    expect((await runCli(['ingest', '--input', input, '--out', whole, ...small])).code).toBe(0);
    expect(await compareDatasets(join(runDir, 'ingest'), whole)).toEqual({ difference: null, rows: 9 });
    // The merged ingest is the one-process ingest stage of this config: up to date, not redone.
    const one = await runCli(['run', 'ingest', '--run-dir', runDir, '--input', input, ...small, '--json']);
    expect(JSON.parse(one.out)).toMatchObject({ stage: 'ingest', skipped: true });
  });

  it('refuses parts of two configs and a damaged part shard, naming the part', async () => {
    const out = join(root, 'mixed');
    expect((await runCli(['ingest', '--input', input, '--out', out, '--size', '8', '--num-shards', '2', '--shard-index', '0'])).code).toBe(0);
    expect((await runCli(['ingest', '--input', input, '--out', out, '--size', '6', '--num-shards', '2', '--shard-index', '1'])).code).toBe(0);
    const mixed = await runCli(['merge', out]);
    expect(mixed.code).toBe(2);
    expect(mixed.err).toMatch(/part-00001-of-00002\.manifest\.json: cannot merge: its image_shape is \[6,6,3\], part-00000-of-00002\.manifest\.json's is \[8,8,3\] \(parts of two different runs\)/);

    expect((await runCli(['ingest', '--input', input, '--out', out, '--size', '8', '--num-shards', '2', '--shard-index', '1'])).code).toBe(0);
    const shard = join(out, (await readManifest(join(out, 'part-00001-of-00002.manifest.json'))).shards[0].path);
    const bytes = await readFile(shard);
    bytes[bytes.length - 1] ^= 1;
    await writeFile(shard, bytes);
    const damaged = await runCli(['merge', out]);
    expect(damaged.code).toBe(2);
    expect(damaged.err).toMatch(/cannot merge part 1: .*sha256 [0-9a-f]{64} differs from the manifest's [0-9a-f]{64}; re-run part 1 \(--shard-index 1 --num-shards 2\)/);
    expect(await readdir(out)).not.toContain('manifest.json');

    expect((await runCli(['ingest', '--input', input, '--out', out, '--size', '8', '--num-shards', '2', '--shard-index', '1'])).code).toBe(0);
    expect((await runCli(['merge', out])).code).toBe(0);
    expect(await compareDatasets(out, join(root, 'whole'))).toEqual({ difference: null, rows: 9 });
  });

  it.each([
    [['--num-shards', '0'], {}, /flag 'num-shards' must be >= 1, got 0/],
    [['--num-shards', '2', '--shard-index', '2'], {}, /shard index 2 \(from --shard-index\) must be below the number of parts 2 \(from --num-shards\): parts are 0 to 1 \(Slurm: --array=0-1\)/],
    [['--num-shards', '2'], { JOB_COMPLETION_INDEX: '4' }, /shard index 4 \(from JOB_COMPLETION_INDEX\) must be below the number of parts 2/],
    [[], { SLURM_ARRAY_TASK_ID: '0', SLURM_ARRAY_TASK_COUNT: '0' }, /number of parts \(SLURM_ARRAY_TASK_COUNT\) must be an integer in \[1, 99999\], got "0"/],
    [[], { SLURM_ARRAY_TASK_ID: '3', SLURM_ARRAY_TASK_COUNT: '3' }, /shard index 3 \(from SLURM_ARRAY_TASK_ID\) must be below the number of parts 3 \(from SLURM_ARRAY_TASK_COUNT\)/],
  ])('%j with %j exits 2 with one line', async (flags, env, message) => {
    Object.assign(process.env, env);
    try {
      const r = await runCli(['run', 'ingest', '--run-dir', join(root, 'bad'), '--input', input, ...small, ...flags]);
      expect(r.code).toBe(2);
      expect(r.err.split('\n')).toHaveLength(1);
      expect(r.err).toMatch(message);
    } finally {
      for (const k of Object.keys(env)) delete process.env[k];
    }
  });
});
