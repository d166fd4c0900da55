import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError, configHash, configRunDir, loadConfigFile, normaliseKey, resolveConfig, type OptionSpecs } from '../../pipeline/config.ts';

const specs: OptionSpecs = {
  seed: { type: 'int', default: 0, min: 0, describe: 'seed' },
  batchSize: { type: 'int', default: 256, min: 1, describe: 'batch' },
  temperature: { type: 'number', default: 0.5, min: 0, exclusiveMin: true, describe: 't' },
  optimizer: { type: 'string', default: 'lars', choices: ['lars', 'sgd'], describe: 'opt' },
  strict: { type: 'boolean', default: false, describe: 'strict' },
};

describe('resolveConfig', () => {
  it('takes defaults, then the file, then --set, then flags', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cfg-'));
    const path = join(dir, 'pipeline.yaml');
    await writeFile(path, 'seed: 3\nrun_dir: runs/x\npretrain:\n  batch_size: 128\n  temperature: 0.2\n  optimizer: sgd\n');
    const file = await loadConfigFile(path, ['pretrain', 'ingest']);
    const config = resolveConfig({
      stage: 'pretrain',
      specs,
      file,
      set: ['pretrain.temperature=0.3', 'ingest.size=64'],
      stages: ['pretrain', 'ingest'],
      flags: { optimizer: 'lars', batchSize: undefined },
      extraFileKeys: ['runDir'],
    });
    expect(config).toEqual({ seed: 3, batchSize: 128, temperature: 0.3, optimizer: 'lars', strict: false });
  });

  it('names the unknown key and where it came from', () => {
    expect(() => resolveConfig({ stage: 'pretrain', specs, set: ['epoch=3'], stages: ['pretrain'], flags: {} })).toThrow(/--set epoch: unknown key 'epoch' for stage pretrain/);
  });

  it('refuses --set for a stage that does not exist, naming the known ones', () => {
    expect(() => resolveConfig({ stage: 'pretrain', specs, set: ['pretrian.batch_size=1'], stages: ['ingest', 'pretrain'], flags: {} })).toThrow(
      /--set pretrian.batch_size: unknown stage 'pretrian' \(known: ingest, pretrain\)/,
    );
    // Another known stage's entry is for that stage: not an error here.
    expect(resolveConfig({ stage: 'pretrain', specs, set: ['ingest.size=3'], stages: ['ingest', 'pretrain'], flags: {} }).batchSize).toBe(256);
  });

  it.each([
    [{ batchSize: 'abc' }, /flag 'batch-size' must be a number, got 'abc'$/],
    [{ batchSize: '' }, /flag 'batch-size' must be a number, got ''$/],
    [{ batchSize: '12.5' }, /flag 'batch-size' must be an integer/],
    [{ batchSize: 0 }, /flag 'batch-size' must be >= 1, got 0/],
    [{ temperature: 0 }, /flag 'temperature' must be > 0, got 0/],
    [{ optimizer: 'adamw' }, /flag 'optimizer' must be one of lars, sgd/],
    [{ strict: 'maybe' }, /flag 'strict' must be true or false/],
  ])('rejects bad flag %o', (flags, message) => {
    expect(() => resolveConfig({ stage: 'pretrain', specs, stages: ['pretrain'], flags })).toThrow(message);
  });

  it.each([
    ['list number', /section pretrain 'batch-size' must be a number, got \[1,2\]$/, 'batch_size: [1, 2]'],
    ['object', /section pretrain 'temperature' must be a number, got \{"a":1\}$/, 'temperature: { a: 1 }'],
    ['null number', /section pretrain 'batch-size' must be a number, got null$/, 'batch_size: null'],
    ['null string', /section pretrain 'optimizer' must be a string, got null$/, 'optimizer:'],
    ['list string', /section pretrain 'optimizer' must be a string, got \["sgd"\]$/, 'optimizer: [sgd]'],
    ['object boolean', /section pretrain 'strict' must be true or false, got \{\}$/, 'strict: {}'],
  ])('names the key, the value and what was expected for a value of the wrong type (%s)', async (_, message, line) => {
    const dir = await mkdtemp(join(tmpdir(), 'cfg-'));
    const path = join(dir, 'pipeline.yaml');
    await writeFile(path, `pretrain:\n  ${line}\n`);
    const file = await loadConfigFile(path, ['pretrain']);
    expect(() => resolveConfig({ stage: 'pretrain', specs, file, stages: ['pretrain'], flags: {} })).toThrow(message);
  });

  it.each([
    ['run_dir: 42', /'run_dir' must be a directory path \(a string\), got 42$/],
    ['run-dir: [a, b]', /'run-dir' must be a directory path \(a string\), got \["a","b"\]$/],
    ['run_dir:', /'run_dir' must be a directory path \(a string\), got null$/],
    ['runDir: ""', /'runDir' must be a directory path \(a string\), got ''$/],
  ])('checks the run directory of a config file: %s', async (text, message) => {
    const dir = await mkdtemp(join(tmpdir(), 'cfg-'));
    const path = join(dir, 'pipeline.yaml');
    await writeFile(path, `${text}\n`);
    await expect(loadConfigFile(path, []).then(configRunDir)).rejects.toThrow(message);
  });

  it('refuses an unreadable or malformed file with its path', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cfg-'));
    await expect(loadConfigFile(join(dir, 'missing.yaml'), [])).rejects.toThrow(/missing.yaml: cannot read it \(ENOENT\)/);
    const bad = join(dir, 'bad.yaml');
    await writeFile(bad, 'a: [1, 2\n');
    await expect(loadConfigFile(bad, [])).rejects.toThrow(ConfigError);
    await writeFile(bad, '- 1\n- 2\n');
    await expect(loadConfigFile(bad, [])).rejects.toThrow(/must hold a mapping/);
  });

  it('normalises snake, kebab and camel keys alike', () => {
    expect(['batch_size', 'batch-size', 'batchSize'].map(normaliseKey)).toEqual(['batchSize', 'batchSize', 'batchSize']);
  });

  it('hashes configs independently of key order and undefined values', () => {
    expect(configHash({ a: 1, b: 'x', c: undefined })).toBe(configHash({ b: 'x', a: 1 }));
    expect(configHash({ a: 1 })).not.toBe(configHash({ a: 2 }));
  });
});
