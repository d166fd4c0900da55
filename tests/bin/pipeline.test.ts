// The `pipeline` command as a user runs it: a reader that goes away ends it quietly.
import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

describe('bin/pipeline.mjs', () => {
  it('exits 0 without a stack trace when its reader goes away (| head -n 1)', async () => {
    const runDir = await mkdtemp(join(tmpdir(), 'pipe-'));
    for (const stage of ['ingest', 'augment', 'pretrain']) {
      await mkdir(join(runDir, stage));
      const manifest = { stage, status: 'completed', started_at: '2025-01-01T00:00:00Z', finished_at: '2025-01-01T00:01:00Z', metrics: { loss: 1 }, outputs: [] };
      await writeFile(join(runDir, stage, 'manifest.json'), JSON.stringify(manifest));
    }
    const errFile = join(runDir, 'stderr.txt');
    const status = execFileSync('bash', ['-c', `node "${join(ROOT, 'bin/pipeline.mjs')}" inspect "${runDir}" 2>"${errFile}" | head -n 1 >/dev/null; echo "\${PIPESTATUS[0]}"`], { encoding: 'utf8' });
    expect(await readFile(errFile, 'utf8')).toBe('');
    expect(status.trim()).toBe('0');
  });
});
