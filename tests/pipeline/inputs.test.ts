// The skip rule sees what ingest reads: a symlinked image added to the folder, or an image of a
// CSV list rewritten, makes `run ingest` run again instead of "up to date".
import { cp, mkdtemp, readFile, symlink, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { main } from '../../pipeline/cli.ts';
import { makeSyntheticDataset } from '../../scripts/synthetic.ts';

async function ingestRun(runDir: string, input: string) {
  const out: string[] = [];
  const code = await main(['run', 'ingest', '--run-dir', runDir, '--input', input, '--size', '8', '--workers', '1', '--json'], {
    stdout: (l) => out.push(l),
    stderr: () => undefined,
    stderrStream: { isTTY: false, write: () => true } as unknown as NodeJS.WriteStream,
  });
  expect(code).toBe(0);
  return JSON.parse(out.join('\n')) as { skipped: boolean; metrics: { images: number } };
}

describe('ingest up-to-date check', () => {
  let images: string;
  beforeAll(async () => {
    images = await mkdtemp(join(tmpdir(), 'inputs-images-'));
    await makeSyntheticDataset({ dir: images, perClass: 3, size: 12, classes: ['disc', 'square'] });
  });

  it('reruns when a symlinked image is added', async () => {
    const input = await mkdtemp(join(tmpdir(), 'inputs-folder-'));
    await cp(images, input, { recursive: true });
    const runDir = await mkdtemp(join(tmpdir(), 'inputs-run-'));
    expect(await ingestRun(runDir, input)).toMatchObject({ skipped: false, metrics: { images: 6 } });
    expect((await ingestRun(runDir, input)).skipped).toBe(true);
    const extra = await mkdtemp(join(tmpdir(), 'inputs-elsewhere-'));
    await cp(join(input, 'disc', '00000.png'), join(extra, 'linked.png'));
    await symlink(join(extra, 'linked.png'), join(input, 'disc', 'zz-linked.png'));
    expect(await ingestRun(runDir, input)).toMatchObject({ skipped: false, metrics: { images: 7 } });
    expect((await ingestRun(runDir, input)).skipped).toBe(true);
  });

  it('reruns when an image of a CSV list changes', async () => {
    const input = await mkdtemp(join(tmpdir(), 'inputs-csv-'));
    await cp(images, input, { recursive: true });
    const csv = join(input, 'list.csv');
    await writeFile(csv, 'path,label\ndisc/00000.png,disc\nsquare/00000.png,square\n');
    const runDir = await mkdtemp(join(tmpdir(), 'inputs-run-'));
    expect((await ingestRun(runDir, csv)).skipped).toBe(false);
    expect((await ingestRun(runDir, csv)).skipped).toBe(true);
    const target = join(input, 'disc', '00000.png');
    await writeFile(target, await readFile(join(input, 'disc', '00002.png')));
    await utimes(target, new Date(), new Date(Date.now() + 5000));
    expect((await ingestRun(runDir, csv)).skipped).toBe(false);
  });
});
