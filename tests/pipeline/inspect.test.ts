// `pipeline inspect` on a run directory: a stage left `running` by a process that is gone is shown
// as interrupted, with how to go on.
import { mkdir, mkdtemp, writeFile } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { inspectPath } from '../../pipeline/inspect.ts';
import { acquireRunLock } from '../../pipeline/runner.ts';

const DEAD_PID = 2 ** 30; // above Linux's pid_max

async function stage(runDir: string, name: string, status: string, startedAt: string) {
  await mkdir(join(runDir, name), { recursive: true });
  const manifest = { stage: name, status, started_at: startedAt, finished_at: null, backend: null, config_hash: 'x', inputs: [], outputs: [], metrics: {} };
  await writeFile(join(runDir, name, 'manifest.json'), JSON.stringify(manifest));
}

async function inspect(runDir: string, json: boolean) {
  const out: string[] = [];
  const io = { stdout: (l: string) => out.push(l), stderr: () => {}, stderrStream: process.stderr };
  await inspectPath(runDir, { rows: 0, json, io });
  return out.join('\n');
}

describe('inspect a run directory', () => {
  it('shows a running stage whose lock holder is gone as interrupted, with a hint', async () => {
    const runDir = await mkdtemp(join(tmpdir(), 'inspect-'));
    await stage(runDir, 'ingest', 'running', '2025-01-01T00:00:00.000Z');
    await stage(runDir, 'pretrain', 'running', '2025-01-01T00:01:00.000Z');
    await writeFile(join(runDir, 'pipeline.lock'), JSON.stringify({ pid: DEAD_PID, host: hostname(), stage: 'pretrain' }));

    const text = await inspect(runDir, false);
    expect(text).toMatch(/ingest: interrupted.*\n\s+hint: .*rerun it: pipeline run ingest --run-dir /);
    expect(text).toMatch(/pretrain: interrupted.*\n\s+hint: .*resume with: pipeline run pretrain --run-dir .* --resume/);
    const { stages } = JSON.parse(await inspect(runDir, true));
    expect(stages).toMatchObject([
      { stage: 'ingest', status: 'interrupted', hint: expect.stringMatching(/rerun it/) },
      { stage: 'pretrain', status: 'interrupted', hint: expect.stringMatching(/--resume/) },
    ]);
  });

  it('keeps a stage running while a live process holds the lock for it', async () => {
    const runDir = await mkdtemp(join(tmpdir(), 'inspect-'));
    await stage(runDir, 'ingest', 'running', '2025-01-01T00:00:00.000Z');
    await stage(runDir, 'pretrain', 'running', '2025-01-01T00:01:00.000Z');
    const release = await acquireRunLock(runDir, { stage: 'pretrain' });
    try {
      const { stages } = JSON.parse(await inspect(runDir, true));
      // ingest was left running by an earlier process: the live holder works on pretrain.
      expect(stages.map((s: { status: string }) => s.status)).toEqual(['interrupted', 'running']);
      expect(stages[1].hint).toBeUndefined();
    } finally {
      await release();
    }
  });
});
