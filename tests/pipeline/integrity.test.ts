// The CLI on damaged datasets: every reader refuses a shard whose bytes differ from its manifest
// (exit 2, one line naming the shard and the repair), and `inspect --verify` checks a whole run dir.
import { cp, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../helpers.ts';
import { makeSyntheticDataset } from '../../scripts/synthetic.ts';

const run = runCli;

/** Flips one byte of a file: in a record batch (the middle) or in the Arrow footer (near the end). */
async function flipByte(path: string, where: 'middle' | 'footer'): Promise<void> {
  const bytes = await readFile(path);
  const footerLength = bytes.readInt32LE(bytes.length - 10);
  bytes[where === 'middle' ? bytes.length >> 1 : bytes.length - 10 - (footerLength >> 1)] ^= 0x40;
  await writeFile(path, bytes);
}

describe('damaged shards through the CLI', () => {
  let pristine: string;
  beforeAll(async () => {
    const images = await mkdtemp(join(tmpdir(), 'integrity-images-'));
    await makeSyntheticDataset({ dir: images, perClass: 4, size: 12, classes: ['disc', 'square'] });
    pristine = await mkdtemp(join(tmpdir(), 'integrity-run-'));
    const ingest = await run(['run', 'ingest', '--run-dir', pristine, '--input', images, '--size', '8', '--workers', '1']);
    expect(ingest.code).toBe(0);
  });

  async function damagedRun(where: 'middle' | 'footer'): Promise<{ runDir: string; shard: string }> {
    const runDir = await mkdtemp(join(tmpdir(), 'integrity-damaged-'));
    await cp(pristine, runDir, { recursive: true });
    const shard = join(runDir, 'ingest', 'shard-00000.arrow');
    await flipByte(shard, where);
    return { runDir, shard };
  }

  it('inspect --verify says ok for an intact run dir and dataset dir', async () => {
    const whole = await run(['inspect', '--verify', pristine]);
    expect(whole.code).toBe(0);
    expect(whole.out).toMatch(/^ok: 1 shards verified/);
    expect((await run(['inspect', '--verify', join(pristine, 'ingest')])).code).toBe(0);
  });

  it.each(['middle', 'footer'] as const)('a byte flipped in the %s: verify, inspect, augment and pretrain exit 2 naming the shard', async (where) => {
    const { runDir, shard } = await damagedRun(where);
    const repair = /; re-run the stage that produced it with --force/;
    const verify = await run(['inspect', '--verify', runDir]);
    expect(verify.code).toBe(2);
    expect(verify.out.split('\n')).toHaveLength(1);
    expect(verify.out).toMatch(new RegExp(`^${shard}: sha256 [0-9a-f]{64} differs from the manifest's [0-9a-f]{64}`));
    expect(verify.out).toMatch(repair);
    const json = await run(['inspect', '--verify', runDir, '--json']);
    expect(JSON.parse(json.out)).toMatchObject({ kind: 'verify', shards: 1, problems: [expect.stringContaining(shard)] });

    for (const args of [
      ['inspect', join(runDir, 'ingest')],
      ['run', 'augment', '--run-dir', runDir, '--workers', '1'],
      ['run', 'pretrain', '--run-dir', runDir, '--backend', 'cpu', '--batch-size', '4', '--epochs', '1'],
    ]) {
      const r = await run(args);
      expect(r.code, args.join(' ')).toBe(2);
      const failure = r.err.split('\n').filter((l) => l.startsWith('pipeline: '));
      expect(failure, args.join(' ')).toHaveLength(1);
      expect(failure[0]).toMatch(new RegExp(`^pipeline: ${shard}: sha256 [0-9a-f]{64} differs from the manifest's [0-9a-f]{64}`));
      expect(failure[0]).toMatch(repair);
      expect(failure[0]).not.toMatch(/schema/);
    }
  });
});

describe('a failed re-run through the CLI', () => {
  it('keeps the last good dataset readable, its shards and rows as they were', async () => {
    const images = await mkdtemp(join(tmpdir(), 'rerun-images-'));
    await makeSyntheticDataset({ dir: images, perClass: 4, size: 12, classes: ['disc', 'square'] });
    const runDir = await mkdtemp(join(tmpdir(), 'rerun-run-'));
    expect((await run(['run', 'ingest', '--run-dir', runDir, '--input', images, '--size', '8', '--workers', '1'])).code).toBe(0);
    const manifestPath = join(runDir, 'ingest', 'manifest.json');
    const before = JSON.parse(await readFile(manifestPath, 'utf8'));
    const shardBytes = await readFile(join(runDir, 'ingest', 'shard-00000.arrow'));
    // A corrupt image added, and --strict: the re-run fails at the first unusable file.
    await writeFile(join(images, 'disc', 'broken.png'), 'not a png');
    const again = await run(['run', 'ingest', '--run-dir', runDir, '--input', images, '--size', '8', '--workers', '1', '--strict']);
    expect(again.code).toBe(2);
    const after = JSON.parse(await readFile(manifestPath, 'utf8'));
    expect(after.status).toBe('failed');
    expect(after.error).toMatch(/broken\.png/);
    // The dataset part is the last good run's, and its readers still get its rows.
    for (const key of ['schema', 'rows', 'classes', 'shards', 'image_shape']) expect(after[key]).toEqual(before[key]);
    expect(await readFile(join(runDir, 'ingest', 'shard-00000.arrow'))).toEqual(shardBytes);
    const inspect = await run(['inspect', '--verify', runDir]);
    expect(inspect.code, inspect.out + inspect.err).toBe(0);
    expect((await run(['run', 'augment', '--run-dir', runDir, '--workers', '1'])).code).toBe(0);
  });
});
