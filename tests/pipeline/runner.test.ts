import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { acquireRunLock, readStageManifest, runStage } from '../../pipeline/runner.ts';

async function tempRunDir() {
  const runDir = await mkdtemp(join(tmpdir(), 'run-'));
  const input = join(runDir, 'input.txt');
  await writeFile(input, 'hello');
  return { runDir, input };
}

describe('runStage', () => {
  it('writes config, a completed manifest, and skips an up-to-date rerun', async () => {
    const { runDir, input } = await tempRunDir();
    let calls = 0;
    const body = async () => {
      calls++;
      return { outputs: [{ path: join(runDir, 'demo', 'out.arrow'), rows: 4 }], metrics: { loss: 1.5 } };
    };
    const first = await runStage({ stage: 'demo', runDir, config: { seed: 1 }, inputs: [input], body });
    expect(first.skipped).toBe(false);
    const manifest = await readStageManifest(join(runDir, 'demo'));
    expect(manifest).toMatchObject({
      stage: 'demo',
      status: 'completed',
      outputs: [{ path: 'demo/out.arrow', rows: 4 }],
      metrics: { loss: 1.5 },
      // sha256("hello")
      inputs: [{ path: 'input.txt', sha256: '2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824' }],
    });
    expect(JSON.parse(await readFile(join(runDir, 'demo', 'config.json'), 'utf8'))).toEqual({ seed: 1 });

    expect((await runStage({ stage: 'demo', runDir, config: { seed: 1 }, inputs: [input], body })).skipped).toBe(true);
    expect((await runStage({ stage: 'demo', runDir, config: { seed: 2 }, inputs: [input], body })).skipped).toBe(false);
    await writeFile(input, 'changed');
    expect((await runStage({ stage: 'demo', runDir, config: { seed: 2 }, inputs: [input], body })).skipped).toBe(false);
    expect((await runStage({ stage: 'demo', runDir, config: { seed: 2 }, inputs: [input], body, force: true })).skipped).toBe(false);
    expect(calls).toBe(4);
  });

  it('records a failure with its message and releases the lock', async () => {
    const { runDir } = await tempRunDir();
    await expect(
      runStage({ stage: 'demo', runDir, config: {}, inputs: [], body: async () => { throw new Error('boom at step 3'); } }),
    ).rejects.toThrow('boom at step 3');
    expect(await readStageManifest(join(runDir, 'demo'))).toMatchObject({ status: 'failed', error: 'boom at step 3' });
    const release = await acquireRunLock(runDir);
    await release();
  });
});
