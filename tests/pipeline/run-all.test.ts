import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, readlink, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, loadConfigFile, type ConfigFile } from '../../pipeline/config.ts';
import { CONFIG_SECTIONS, downstreamOf, labelTag, planRun, upstreamOf } from '../../pipeline/graph.ts';
import { promote } from '../../pipeline/promote.ts';
import { makeSyntheticDataset, mulberry32 } from '../../scripts/synthetic.ts';
import { runCli } from '../helpers.ts';

const PIPELINE = fileURLToPath(new URL('../../bin/pipeline.mjs', import.meta.url));

function configFile(doc: Record<string, unknown>): ConfigFile {
  const sections = ['ingest', 'augment', 'pretrain', 'finetune', 'distill', 'evaluate', 'baseline', 'export'];
  const common: Record<string, unknown> = {};
  const stages: Record<string, Record<string, unknown>> = {};
  for (const [k, v] of Object.entries(doc)) (sections.includes(k) ? (stages[k] = v as Record<string, unknown>) : (common[k] = v));
  return { path: 'test.yaml', common, stages };
}

describe('run all plan', () => {
  it('one label fraction keeps the plain directory names, in dependency order', () => {
    const nodes = planRun({ runDir: '/r', file: configFile({ holdout: 5, ingest: { input: '/images' } }) });
    expect(nodes.map((n) => n.name)).toEqual(['ingest', 'pretrain', 'evaluate-pretrain', 'finetune', 'baseline', 'distill', 'evaluate-finetune', 'evaluate-baseline', 'evaluate-distill', 'export']);
    const seen = new Set<string>();
    for (const n of nodes) {
      for (const d of n.deps) expect(seen.has(d)).toBe(true);
      seen.add(n.name);
    }
  });

  it('several fractions give one finetune, baseline, distill, evaluations and export each, on the same ids and split', () => {
    const nodes = planRun({ runDir: '/r', file: configFile({ holdout: 5, ingest: { input: '/images' }, finetune: { labels: ['1%', '10%'], epochs: 3 }, baseline: { lr: 0.1 } }) });
    const byName = new Map(nodes.map((n) => [n.name, n]));
    for (const tag of ['1pct', '10pct']) {
      for (const base of ['finetune', 'baseline', 'distill', 'evaluate-finetune', 'evaluate-baseline', 'evaluate-distill', 'export']) expect(byName.has(`${base}-${tag}`)).toBe(true);
      const ft = byName.get(`finetune-${tag}`)!.config;
      const bl = byName.get(`baseline-${tag}`)!.config;
      expect(bl.labels).toBe(ft.labels);
      expect(bl.holdout).toBe(5);
      expect(bl.init).toBe('random');
      expect(bl.lr).toBe(0.1); // the baseline section, not the finetune's
      expect(bl.epochs).toBeUndefined();
      expect(ft.epochs).toBe(3);
      expect(byName.get(`distill-${tag}`)!.config.teacher).toBe(`/r/finetune-${tag}`);
    }
    expect(byName.get('finetune-1pct')!.config.labels).toBe('1%');
    expect(byName.get('pretrain')!.config.knnHoldout).toBe(5);
    expect(byName.get('evaluate-pretrain')!.config.holdout).toBe(5);
    expect(labelTag('10-per-class')).toBe('10-per-class');
    expect(labelTag('/data/ids.csv')).toBe('ids');
  });

  it('--set holdout=N sets the top-level test split, over the config file', () => {
    const nodes = planRun({ runDir: '/r', file: configFile({ holdout: 5, ingest: { input: '/images' } }), set: ['holdout=3'] });
    const byName = new Map(nodes.map((n) => [n.name, n]));
    expect(byName.get('pretrain')!.config.knnHoldout).toBe(3);
    expect(byName.get('finetune')!.config.holdout).toBe(3);
    expect(byName.get('evaluate-distill')!.config.holdout).toBe(3);
    expect(planRun({ runDir: '/r', set: ['ingest.input=/images', 'holdout=2'] }).find((n) => n.name === 'baseline')!.config.holdout).toBe(2);
    expect(() => planRun({ runDir: '/r', set: ['ingest.input=/images', 'holdout=-1'] })).toThrow(/'holdout' must be an integer >= 0/);
  });

  it('--force, --from and --until take a directory, a name without the fraction suffix, or a stage', () => {
    const nodes = planRun({ runDir: '/r', file: configFile({ holdout: 5, ingest: { input: '/images' }, finetune: { labels: ['1%', '10%'] } }) });
    expect([...downstreamOf(nodes, ['distill-1pct'], '--force')].sort()).toEqual(['distill-1pct', 'evaluate-distill-1pct', 'export-1pct']);
    expect(downstreamOf(nodes, ['finetune'], '--from').has('export-10pct')).toBe(true);
    expect(downstreamOf(nodes, ['finetune'], '--from').has('baseline-1pct')).toBe(false);
    expect([...upstreamOf(nodes, ['evaluate-distill'], '--until')].sort()).toEqual(
      ['distill-10pct', 'distill-1pct', 'evaluate-distill-10pct', 'evaluate-distill-1pct', 'finetune-10pct', 'finetune-1pct', 'ingest', 'pretrain'],
    );
    expect(() => downstreamOf(nodes, ['distil'], '--from')).toThrow(/--from distil: no such stage in this run/);
  });

  it('refuses a config that points a stage elsewhere, splits the test set twice, or has none', () => {
    const plan = (doc: Record<string, unknown>) => () => planRun({ runDir: '/r', file: configFile({ ingest: { input: '/images' }, ...doc }) });
    expect(plan({ holdout: 5, distill: { teacher: '/elsewhere' } })).toThrow(/distill\.teacher is set by run all/);
    expect(plan({ holdout: 5, baseline: { labels: '10%' } })).toThrow(/baseline\.labels: the baseline trains on the fine-tuning's ids/);
    expect(plan({ holdout: 5, finetune: { holdout: 3 } })).toThrow(/finetune\.holdout is 3 but the top-level holdout is 5/);
    expect(plan({})).toThrow(/run all needs a test split/);
    expect(plan({ holdout: 5, distill: { epochz: 3 } })).toThrow(ConfigError);
    expect(plan({ holdout: 5, distill: { epochz: 3 } })).toThrow(/unknown key 'epochz' for stage distill/);
    expect(plan({ holdout: 5, finetune: { labels: [] } })).toThrow(/finetune\.labels must be a label spec or a list/);
  });
});

describe('example configs', () => {
  const dir = fileURLToPath(new URL('../../configs/', import.meta.url));
  it.each(['quickstart.yaml', 'cifar10-32px.yaml', 'photos-96px.yaml', 'photos-224px.yaml'])('configs/%s plans a whole run', async (name) => {
    const file = await loadConfigFile(join(dir, name), CONFIG_SECTIONS);
    const nodes = planRun({ runDir: '/r', file, set: name === 'quickstart.yaml' ? ['ingest.input=/images'] : [] });
    expect(nodes.some((n) => n.family === 'export')).toBe(true);
    expect(nodes.find((n) => n.name === 'pretrain')!.config.knnHoldout).toBeGreaterThan(0);
  });
});

/** The tiny whole pipeline the kill test runs: a few seconds per stage on wasm. */
const TINY_CONFIG = (images: string) => `# run all kill-anywhere test
holdout: 3
backend: wasm
workers: 1
seed: 5
ingest:
  input: ${images}
  size: 16
pretrain:
  epochs: 3
  batch_size: 16
  head_layers: 2
  projection_dim: 16
  knn_every: 1
  knn_k: 5
  log_every: 1
finetune:
  labels: 4-per-class
  epochs: 3
  batch_size: 8
  log_every: 1
baseline:
  epochs: 3
  batch_size: 8
  log_every: 1
distill:
  epochs: 2
  batch_size: 16
  log_every: 1
evaluate:
  knn_k: 5
export:
  formats: tfjs,onnx
`;

/**
 * Fields that say how the last attempt ran, not what the run produced: times and speeds; what an
 * ingest did against the dataset it found (killed after publishing, it is rerun and finds nothing
 * to decode); `resume` in a training stage's config.json (true when run all resumed it).
 */
const HOW_IT_RAN = /^(started_at|finished_at|images_per_second|pairs_per_second|.*_seconds|elapsed.*|wall.*|changes|added|changed|removed|unchanged|decoded|incremental|shards_(kept|rewritten|new)|logits_shards_(computed|reused)|resume)$/;

/** A value with HOW_IT_RAN fields dropped and the run dir's own path written as RUN_DIR (the two runs live in two dirs). */
function comparable(value: unknown, runDir: string): unknown {
  if (typeof value === 'string') return value.split(runDir).join('RUN_DIR');
  if (Array.isArray(value)) return value.map((v) => comparable(v, runDir));
  if (value === null || typeof value !== 'object') return value;
  return Object.fromEntries(Object.entries(value).filter(([k]) => !HOW_IT_RAN.test(k)).map(([k, v]) => [k, comparable(v, runDir)]));
}

/**
 * What a finished run dir holds, timing aside: every manifest (inputs by path: a checkpoint index
 * records its save time; no config hash: the config holds the run dir's path, compared as
 * config.json instead), every metrics.jsonl row, and the bytes of every weights, shard and model file.
 */
async function runDigest(runDir: string): Promise<Record<string, unknown>> {
  const out: Record<string, unknown> = {};
  const walk = async (dir: string): Promise<void> => {
    for (const entry of await readdir(dir, { withFileTypes: true })) {
      const path = join(dir, entry.name);
      const rel = relative(runDir, path);
      if (entry.isDirectory()) {
        if (rel !== 'report') await walk(path);
      } else if (entry.name === 'manifest.json') {
        const m = JSON.parse(await readFile(path, 'utf8'));
        if (Array.isArray(m.inputs)) m.inputs = m.inputs.map((i: { path: string }) => i.path);
        delete m.config_hash;
        out[rel] = comparable(m, runDir);
      } else if (entry.name === 'config.json' || entry.name === 'plan.json') {
        out[rel] = comparable(JSON.parse(await readFile(path, 'utf8')), runDir);
      } else if (entry.name === 'metrics.jsonl') {
        out[rel] = (await readFile(path, 'utf8')).trim().split('\n').map((l) => comparable(JSON.parse(l), runDir));
      } else if (/\.(bin|arrow|onnx)$/.test(entry.name) || entry.name === 'labeled-ids.txt') {
        out[rel] = createHash('sha256').update(await readFile(path)).digest('hex');
      }
    }
  };
  await walk(runDir);
  return out;
}

/** A stage's manifest, or null. */
async function manifestOf(runDir: string, stage: string): Promise<{ status: string; started_at: string; finished_at: string | null } | null> {
  return readFile(join(runDir, stage, 'manifest.json'), 'utf8').then(JSON.parse, () => null);
}

/**
 * `pipeline run all` in its own process group; with `kill`, SIGKILLed `afterMs` after the manifest of
 * `stage` says it is running in this attempt (or when the run gets there: a finished run is not killed).
 */
function runAllProcess(args: string[], kill?: { runDir: string; stage: string; afterMs: number }): Promise<{ code: number | null; signal: NodeJS.Signals | null; err: string }> {
  return new Promise((resolve, reject) => {
    const started = new Date().toISOString();
    const child = spawn(process.execPath, [PIPELINE, 'run', 'all', ...args], { detached: true, stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    let done = false;
    child.stderr.on('data', (d) => (err += d));
    const watch = async () => {
      while (kill && !done) {
        const m = await manifestOf(kill.runDir, kill.stage);
        if (m?.status === 'running' && m.started_at >= started) {
          await new Promise((r) => setTimeout(r, kill.afterMs));
          // bin/pipeline.mjs runs the CLI in a child of its own: kill the whole group, as a scheduler's SIGKILL would.
          if (!done) process.kill(-child.pid!, 'SIGKILL');
          return;
        }
        await new Promise((r) => setTimeout(r, 25));
      }
    };
    void watch();
    child.on('error', reject);
    child.on('close', (code, signal) => {
      done = true;
      resolve({ code, signal, err });
    });
  });
}

describe('run all, killed anywhere', () => {
  let root: string;
  let config: string;
  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'run-all-'));
    await makeSyntheticDataset({ dir: join(root, 'images'), perClass: 10, size: 20, seed: 2, classes: ['disc', 'square', 'ring', 'checker'] });
    config = join(root, 'tiny.yaml');
    await writeFile(config, TINY_CONFIG(join(root, 'images')));
  });

  it('ends with the same manifests, metrics and weights as an uninterrupted run, and a rerun skips everything', async () => {
    const straight = join(root, 'straight');
    const t0 = performance.now();
    const reference = await runAllProcess(['--config', config, '--run-dir', straight]);
    const wallMs = performance.now() - t0;
    expect(reference.code, reference.err).toBe(0);

    // Kill points: four stages drawn by a seeded generator from the plan, each killed at a random
    // moment of its own run (a uniform fraction of its duration in the uninterrupted run), in
    // pipeline order: training stages resume mid-run, the others redo their work.
    const plan: { name: string }[] = JSON.parse(await readFile(join(straight, 'plan.json'), 'utf8')).nodes;
    const random = mulberry32(20261201);
    const picked = new Set<number>();
    while (picked.size < 4) picked.add(Math.floor(random() * plan.length));
    const killed = join(root, 'killed');
    const hits: string[] = [];
    for (const index of [...picked].sort((x, y) => x - y)) {
      const stage = plan[index].name;
      const m = (await manifestOf(straight, stage))!;
      const afterMs = random() * (Date.parse(m.finished_at!) - Date.parse(m.started_at));
      const r = await runAllProcess(['--config', config, '--run-dir', killed], { runDir: killed, stage, afterMs });
      if (r.code === 0) break; // finished before its kill
      expect(r.signal, r.err).toBe('SIGKILL');
      hits.push(`${stage} +${Math.round(afterMs)} ms`);
    }
    const last = await runAllProcess(['--config', config, '--run-dir', killed]);
    expect(last.code, last.err).toBe(0);
    console.log(`run all killed in: ${hits.join(', ')} (uninterrupted run ${(wallMs / 1000).toFixed(1)} s)`);
    expect(hits.length).toBe(4);
    // The last attempt found the lock of the killed one and took it over.
    expect(last.err).toMatch(/taking over the stale lock of process \d+/);

    const [a, b] = [await runDigest(straight), await runDigest(killed)];
    expect(Object.keys(b).sort()).toEqual(Object.keys(a).sort());
    for (const key of Object.keys(a)) expect(b[key], key).toEqual(a[key]);

    // The same command on a finished run does nothing.
    const again = await runCli(['run', 'all', '--config', config, '--run-dir', killed, '--json']);
    expect(again.code, again.err).toBe(0);
    const summary = JSON.parse(again.out);
    expect(summary.stages.map((s: { result: string }) => s.result)).toEqual(summary.stages.map(() => 'skipped'));
    expect((await stat(join(killed, 'plan.json'))).isFile()).toBe(true);
  }, 240_000);

  it('promotes a student only when it scores at least the current model on the same split, atomically, keeping the history', async () => {
    const models = join(root, 'models');
    const straight = join(root, 'straight');
    const killed = join(root, 'killed');
    const first = await promote({ runDir: straight, modelsDir: models });
    expect(first).toMatchObject({ promoted: true, reason: 'no current model', current: null, stage: 'distill' });
    expect(await readlink(join(models, 'current'))).toBe(first.name);
    for (const f of ['tfjs/model.json', 'onnx/model.onnx', 'onnx/model-card.json', 'checkpoint/checkpoint.json', 'promotion.json']) expect((await stat(join(models, first.name!, f))).isFile()).toBe(true);
    // The same model again: nothing published.
    expect(await promote({ runDir: straight, modelsDir: models })).toMatchObject({ promoted: false, reason: `already the current model (${first.name})` });

    // A run whose student scores lower than the current model (re-evaluated on this run's split): kept.
    // Its evaluation is edited down here; the current model's figure comes from evaluating it afresh.
    const evalManifest = join(killed, 'evaluate-distill', 'manifest.json');
    const m = JSON.parse(await readFile(evalManifest, 'utf8'));
    const real = m.metrics.accuracy as number;
    m.metrics.accuracy = real - 0.01;
    await writeFile(evalManifest, JSON.stringify(m));
    const kept = await promote({ runDir: killed, modelsDir: models });
    expect(kept.promoted).toBe(false);
    expect(kept.current_accuracy).toBe(real);
    expect(kept.reason).toMatch(/< current .* on the same split; keeping/);
    expect(await readlink(join(models, 'current'))).toBe(first.name);
    // Within the margin it goes through.
    const within = await promote({ runDir: killed, modelsDir: models, margin: 0.02 });
    expect(within.promoted).toBe(true);
    expect(await readlink(join(models, 'current'))).toBe(within.name);

    const listing = await runCli(['models', 'list', models, '--json']);
    const l = JSON.parse(listing.out);
    expect(l.current).toBe(within.name);
    expect(l.models.map((x: { name: string }) => x.name)).toEqual([first.name, within.name].sort());
    expect(l.history.map((h: { promoted: boolean }) => h.promoted)).toEqual([true, false, false, true]);

    // Not a models directory: one line, exit 2, before anything runs.
    const foreign = join(root, 'foreign');
    await mkdir(foreign);
    await writeFile(join(foreign, 'notes.txt'), 'mine');
    const r = await runCli(['run', 'all', '--config', config, '--run-dir', straight, '--promote-to', foreign]);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/models directory .*foreign: not one \(no models\.json; it holds notes\.txt\)/);
    expect(r.err).not.toMatch(/run all \[/);
    await rm(join(models, 'current'));
    expect((await runCli(['models', 'list', models])).err).toMatch(/has published models but no current link/);
  }, 120_000);

  it('ingests a grown folder incrementally (decodes only the new files) unless --force ingest', async () => {
    const folder = join(root, 'growing');
    await makeSyntheticDataset({ dir: folder, perClass: 6, size: 20, seed: 5, classes: ['disc', 'square', 'ring', 'checker'] });
    const more = join(root, 'more');
    await makeSyntheticDataset({ dir: more, perClass: 1, size: 20, seed: 6, classes: ['disc', 'square', 'ring', 'checker'] });
    const runDir = join(root, 'grow-run');
    const args = ['run', 'all', '--config', config, '--run-dir', runDir, '--until', 'ingest', '--set', `ingest.input=${folder}`];
    expect((await runCli(args)).code).toBe(0);
    for (const cls of await readdir(more)) for (const f of await readdir(join(more, cls))) await writeFile(join(folder, cls, `new-${f}`), await readFile(join(more, cls, f)));
    const grown = await runCli(args);
    expect(grown.code, grown.err).toBe(0);
    const metrics = async () => (JSON.parse(await readFile(join(runDir, 'ingest', 'manifest.json'), 'utf8')) as { metrics: Record<string, number> }).metrics;
    expect(await metrics()).toMatchObject({ images: 28, incremental: 1, added: 4, decoded: 4, unchanged: 24 });
    expect((await runCli([...args, '--force', 'ingest'])).code).toBe(0);
    expect(await metrics()).toMatchObject({ images: 28, incremental: 0, decoded: 28 });
  });

  it('refuses --from a stage whose inputs have not run, and a lock held by a live process', async () => {
    const fresh = join(root, 'fresh');
    const r = await runCli(['run', 'all', '--config', config, '--run-dir', fresh, '--from', 'distill']);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/run all --from distill: distill needs finetune, which has not run in .*fresh; run it first \(or start --from finetune\)/);
    await writeFile(join(fresh, 'pipeline.lock'), JSON.stringify({ pid: process.pid, host: (await import('node:os')).hostname(), started_at: new Date().toISOString(), refreshed_at: new Date().toISOString() }));
    const child = await runAllProcess(['--config', config, '--run-dir', fresh]);
    expect(child.code).toBe(2);
    expect(child.err).toMatch(/run directory is in use by process \d+/);
  });
});
