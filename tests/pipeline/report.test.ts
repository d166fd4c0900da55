// `pipeline report`: the run report built from a real tiny run (ingest, pretrain, finetune and two
// evaluations run through the CLI) plus hand-written stages where running them would be slow.
import { mkdir, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { XMLValidator } from 'fast-xml-parser';
import { parse, type HTMLElement } from 'node-html-parser';
import sharp from 'sharp';
import { beforeAll, describe, expect, it } from 'vitest';
import { readDataset } from '../../data/manifest.ts';
import { acquireRunLock } from '../../pipeline/lock.ts';
import { buildReport } from '../../pipeline/report.ts';
import { parseStageName } from '../../pipeline/report-run.ts';
import { makeSyntheticDataset } from '../../scripts/synthetic.ts';
import { runCli } from '../helpers.ts';

type Row = Record<string, unknown>;
const CLASSES = ['disc', 'ring', 'square', 'triangle']; // ingest sorts the class folders

async function jsonl(path: string): Promise<Row[]> {
  return (await readFile(path, 'utf8')).trim().split('\n').map((l) => JSON.parse(l));
}

/** A stage directory as the runner leaves it: manifest.json, config.json and optional other files. */
async function writeStage(runDir: string, name: string, manifest: Row, files: Record<string, string> = {}): Promise<void> {
  const dir = join(runDir, name);
  await mkdir(dir, { recursive: true });
  const base = { stage: name, status: 'completed', started_at: '2026-01-01T10:00:00.000Z', finished_at: '2026-01-01T10:02:30.000Z', backend: 'wasm', config_hash: 'x', inputs: [], outputs: [], metrics: {} };
  await writeFile(join(dir, 'manifest.json'), JSON.stringify({ ...base, ...manifest }));
  await writeFile(join(dir, 'config.json'), JSON.stringify({ seed: 0, ...(files['config'] ? JSON.parse(files['config']) : {}) }));
  for (const [file, text] of Object.entries(files)) if (file !== 'config') await writeFile(join(dir, file), text);
}

/** The SVG of the plot named `name`, checked to be well-formed XML. */
function plot(doc: HTMLElement, name: string): HTMLElement {
  const fig = doc.querySelector(`figure[data-plot="${name}"]`);
  expect(fig, `plot ${name}`).not.toBeNull();
  const svg = fig!.querySelector('svg')!;
  expect(XMLValidator.validate(svg.outerHTML)).toBe(true);
  return svg;
}

/** The (x, y) of each point mark, from the aria-label the report gives it ("pretrain: step 4, loss 2.71"). */
function pointsOf(svg: HTMLElement): { x: number; y: number }[] {
  return svg.querySelectorAll('path[aria-roledescription="point"]').map((p) => {
    const m = /^[^:]+: .* (\S+), .* (\S+)$/.exec(p.getAttribute('aria-label')!);
    expect(m, p.getAttribute('aria-label')).not.toBeNull();
    return { x: Number(m![1]), y: Number(m![2]) };
  });
}

/** Vertices of each line mark drawn through the interval rows (layer 0 of a curve). */
function lineVertices(svg: HTMLElement): number[] {
  return svg.querySelectorAll('g.layer_0_marks path[aria-roledescription="line mark"]').map((p) => (p.getAttribute('d')!.match(/[ML]/g) ?? []).length);
}

function expectClose(actual: number, expected: number) {
  expect(Math.abs(actual - expected)).toBeLessThanOrEqual(1e-5 * Math.max(1, Math.abs(expected)));
}

/** The data-value of the cells of the row whose first cell is `first`. */
function rowValues(table: HTMLElement, match: (cells: string[]) => boolean): (number | string)[] {
  const row = table.querySelectorAll('tbody tr').find((tr) => match(tr.querySelectorAll('td').map((td) => td.text.trim())));
  expect(row, `row in ${table.id}`).toBeDefined();
  return row!.querySelectorAll('td').map((td) => (td.getAttribute('data-value') !== undefined ? Number(td.getAttribute('data-value')) : td.text.trim()));
}

describe('run report', () => {
  let runDir: string;
  beforeAll(async () => {
    const images = await mkdtemp(join(tmpdir(), 'report-images-'));
    await makeSyntheticDataset({ dir: images, perClass: 10, size: 16, seed: 1, classes: CLASSES as never });
    runDir = await mkdtemp(join(tmpdir(), 'report-run-'));
    const small = ['--backend', 'wasm', '--workers', '1', '--json'];
    const steps = [
      ['run', 'ingest', '--input', images, '--size', '16'],
      ['run', 'pretrain', '--epochs', '2', '--batch-size', '8', '--head-layers', '2', '--projection-dim', '16', '--log-every', '2', '--knn-holdout', '2', '--knn-every', '1', '--knn-k', '5'],
      ['run', 'finetune', '--labels', '3-per-class', '--holdout', '2', '--epochs', '2', '--batch-size', '8'],
      ['run', 'evaluate', '--holdout', '2', '--checkpoint', join(runDir, 'finetune')],
      ['run', 'evaluate', '--holdout', '2', '--knn-k', '5', '--checkpoint', join(runDir, 'pretrain')],
    ];
    for (const args of steps) {
      const r = await runCli([...args, '--run-dir', runDir, ...small]);
      expect(r.code, r.err).toBe(0);
    }
    // Hand-written, as training them would be slow: the baseline and its evaluation (completed),
    // distill (running: its metrics so far), evaluate-distill (failed); export is planned, not run.
    await writeStage(runDir, 'baseline', { command: 'finetune', metrics: { loss: 1.2, train_accuracy: 0.5, accuracy: 0.375, labeled: 12, epochs: 2 } }, {
      config: JSON.stringify({ init: 'random', labels: '3-per-class', epochs: 2 }),
      'metrics.jsonl': [
        { epoch: 1, step: 2, loss: 1.4, train_accuracy: 0.25, lr: 0.05, images_per_second: 20, epoch_seconds: 1, summary: 'epoch' },
        { epoch: 2, step: 4, loss: 1.2, train_accuracy: 0.5, lr: 0.01, images_per_second: 22, epoch_seconds: 1, summary: 'epoch', accuracy: 0.375 },
      ].map((r) => JSON.stringify(r)).join('\n') + '\n',
    });
    const confusion = [[2, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 1, 1, 0]];
    await writeStage(runDir, 'evaluate-baseline', {
      command: 'evaluate',
      kind: 'classifier',
      classes: CLASSES,
      confusion,
      metrics: { accuracy: 0.5, per_class_accuracy: { disc: 1, ring: 0.5, square: 0.5, triangle: 0 }, images: 8 },
    }, { 'confusion.csv': 'true\\predicted,' + CLASSES.join(',') + '\n' + confusion.map((r, i) => [CLASSES[i], ...r].join(',')).join('\n') + '\n' });
    await writeStage(runDir, 'distill', { status: 'running', finished_at: null, metrics: {} }, {
      config: JSON.stringify({ epochs: 3 }),
      'metrics.jsonl': '{"epoch":1,"step":3,"loss":0.9,"lr":0.1,"images_per_second":30,"epoch_seconds":1,"summary":"epoch"}\n{"epoch":2,"step":5,"lo',
    });
    await writeStage(runDir, 'evaluate-distill', { status: 'failed', error: 'evaluate.checkpoint distill: no checkpoint there' });
    const node = (name: string, deps: string[]) => ({ name, stage: parseStageName(name).kind, deps });
    await writeFile(join(runDir, 'plan.json'), JSON.stringify({
      nodes: [node('ingest', []), node('pretrain', ['ingest']), node('evaluate-pretrain', ['pretrain']), node('finetune', ['pretrain']), node('baseline', ['ingest']), node('distill', ['finetune']),
        node('evaluate-finetune', ['finetune']), node('evaluate-baseline', ['baseline']), node('evaluate-distill', ['distill']), node('export', ['distill'])],
    }));
  }, 120_000);

  it('draws every plot from the real metrics, the accuracy table from the manifests, and the plan\'s state', async () => {
    // This process holds the run dir for distill, as `run all` would while distilling.
    const release = await acquireRunLock(runDir, { stage: 'distill' });
    let result;
    try {
      result = await buildReport({ runDir });
    } finally {
      await release();
    }
    expect(result.path).toBe(join(runDir, 'report', 'index.html'));
    expect(result.sections.filter((s) => s.state !== 'ok')).toEqual([]);
    const text = await readFile(result.path, 'utf8');
    const doc = parse(text);

    // Self-contained: no script, stylesheet link or remote reference; SVG namespace names are not fetched.
    expect(text.replace(/\sxmlns(:\w+)?="[^"]*"/g, '')).not.toMatch(/https?:\/\//);
    expect(doc.querySelectorAll('script, link, iframe')).toHaveLength(0);
    const images = doc.querySelectorAll('img');
    expect(images.length).toBeGreaterThan(1);
    for (const img of images) {
      const src = img.getAttribute('src')!;
      expect(src).toMatch(/^data:image\/png;base64,/);
      const meta = await sharp(Buffer.from(src.slice(src.indexOf(',') + 1), 'base64')).metadata();
      expect(meta.format).toBe('png');
      expect(meta.width).toBeGreaterThanOrEqual(96); // 16 px images magnified
    }

    // Pretraining curves: one point per epoch row, one line vertex per interval row, at their values.
    const rows = await jsonl(join(runDir, 'pretrain', 'metrics.jsonl'));
    const epochRows = rows.filter((r) => r.summary === 'epoch');
    const stepRows = rows.filter((r) => r.summary === undefined && typeof r.loss === 'number');
    expect(epochRows).toHaveLength(2);
    expect(stepRows).toHaveLength(4);
    for (const name of ['loss', 'contrastive_accuracy', 'lr']) {
      const svg = plot(doc, `pretrain-${name}`);
      const points = pointsOf(svg);
      expect(points).toHaveLength(epochRows.length);
      points.forEach((p, i) => {
        expect(p.x).toBe(epochRows[i].step);
        expectClose(p.y, epochRows[i][name] as number);
      });
      expect(lineVertices(svg)).toEqual([stepRows.length]);
    }
    const knnRows = rows.filter((r) => typeof r.knn_accuracy === 'number');
    expect(pointsOf(plot(doc, 'pretrain-knn')).map((p) => [p.x, p.y])).toEqual(knnRows.map((r) => [r.epoch, r.knn_accuracy]));

    // Training curves of finetune (real), baseline (fixture) and distill (its complete row only).
    const ftRows = await jsonl(join(runDir, 'finetune', 'metrics.jsonl'));
    expect(pointsOf(plot(doc, 'training-default-loss'))).toHaveLength(ftRows.length + 2 + 1);
    expect(pointsOf(plot(doc, 'training-default-accuracy')).map((p) => p.y).sort()).toEqual([0.375, ...ftRows.filter((r) => typeof r.accuracy === 'number').map((r) => r.accuracy)].sort());

    // Accuracy table: the manifests' numbers.
    const manifest = async (stage: string) => JSON.parse(await readFile(join(runDir, stage, 'manifest.json'), 'utf8'));
    const pre = (await manifest('pretrain')).metrics;
    const evPre = (await manifest('evaluate-pretrain')).metrics;
    const evFt = (await manifest('evaluate-finetune')).metrics;
    const encoder = doc.querySelector('#accuracy-encoder')!;
    expect(rowValues(encoder, (c) => c[0] === 'random-init encoder')[2]).toBe(pre.knn_accuracy_random_init);
    expect(rowValues(encoder, (c) => /kNN monitor/.test(c[1]))[2]).toBe(pre.knn_accuracy);
    expect(rowValues(encoder, (c) => c[1] === 'kNN (evaluate)')[2]).toBe(evPre.knn_accuracy);
    expect(rowValues(encoder, (c) => c[1] === 'linear probe (evaluate)')[2]).toBe(evPre.linear_accuracy);
    const classifiers = rowValues(doc.querySelector('#accuracy-classifiers')!, () => true);
    expect(classifiers.slice(0, 6)).toEqual(['3-per-class', 12, evFt.accuracy, 0.5, evFt.accuracy - 0.5, 'failed']);

    // Stages: every planned node, with the manifest's state; export not yet run.
    const states = Object.fromEntries(doc.querySelectorAll('#stage-table tbody tr').map((tr) => [tr.querySelector('code')!.text, tr.querySelector('td.state')!.getAttribute('data-state')]));
    expect(states).toEqual({
      ingest: 'completed', pretrain: 'completed', 'evaluate-pretrain': 'completed', finetune: 'completed', baseline: 'completed',
      distill: 'running', 'evaluate-finetune': 'completed', 'evaluate-baseline': 'completed', 'evaluate-distill': 'failed', export: 'not yet run',
    });
    expect(doc.querySelector('#stage-table')!.text).toContain('no checkpoint there');

    // Confusion heat map: one rect per cell, the counts as text; the gallery shows the predictions.
    const heat = plot(doc, 'evaluate-finetune-confusion');
    expect(heat.querySelectorAll('path[aria-roledescription="rect mark"]')).toHaveLength(16);
    const confusion: number[][] = (await manifest('evaluate-finetune')).confusion;
    expect(heat.querySelectorAll('text[aria-roledescription="text mark"]').map((t) => Number(t.text)).reduce((a, b) => a + b, 0)).toBe(8);
    expect(plot(doc, 'evaluate-finetune-per-class').querySelectorAll('path[aria-roledescription="bar"]')).toHaveLength(4);
    expect(plot(doc, 'evaluate-baseline-confusion').querySelectorAll('path[aria-roledescription="rect mark"]')).toHaveLength(16);
    let right = 0;
    for await (const b of readDataset<'predictions'>(join(runDir, 'evaluate-finetune', 'predictions'))) for (let i = 0; i < b.numRows; i++) if (b.columns.predicted[i] === b.columns.label[i]) right++;
    expect(right).toBe(confusion.reduce((s, r, i) => s + r[i], 0));
    const section = doc.querySelector('#evaluation')!;
    expect(section.querySelectorAll('.gallery figure.right').length + section.querySelectorAll('.gallery figure.wrong').length).toBe(Math.min(8, right) + Math.min(8, 8 - right));

    // Timings, machine, versions and the configs.
    expect(doc.querySelector('#versions')!.text).toMatch(/vega-lite\s*6\.4\./);
    expect(doc.querySelector('#machine')!.text).toMatch(/cpu/);
    expect(doc.querySelectorAll('#configs details[data-stage]').length).toBe(9);
  });

  it('shows a run in progress without a plan: what is on disk, the rest as no data', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'report-empty-'));
    const empty = await buildReport({ runDir: dir });
    expect(Object.fromEntries(empty.sections.map((s) => [s.id, s.state]))).toMatchObject({ stages: 'no data', pretrain: 'no data', augment: 'no data', evaluation: 'no data', environment: 'ok' });
    await writeStage(dir, 'pretrain', { status: 'running', finished_at: null }, { 'metrics.jsonl': '{"epoch":0,"step":0,"knn_accuracy":0.25}\n{"epoch":1,"st' });
    const partial = await buildReport({ runDir: dir });
    expect(partial.stages).toEqual({ pretrain: 'interrupted' }); // no live process holds the run dir
    const doc = parse(await readFile(partial.path, 'utf8'));
    expect(pointsOf(plot(doc, 'pretrain-knn'))).toEqual([{ x: 0, y: 0.25 }]);
    expect(doc.querySelector('#accuracy-classifiers')!.text).toMatch(/No fine-tune/);
  });

  it('groups several label fractions by their tag', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'report-tags-'));
    const figures: Record<string, number> = { 'evaluate-finetune-1pct': 0.41, 'evaluate-baseline-1pct': 0.22, 'evaluate-finetune-10pct': 0.63, 'evaluate-baseline-10pct': 0.48 };
    for (const [name, accuracy] of Object.entries(figures)) await writeStage(dir, name, { command: 'evaluate', metrics: { accuracy } });
    await writeStage(dir, 'finetune-1pct', { command: 'finetune', metrics: { labeled: 100 } }, { config: JSON.stringify({ labels: '1%' }) });
    await writeStage(dir, 'finetune-10pct', { command: 'finetune', metrics: { labeled: 1000 } }, { config: JSON.stringify({ labels: '10%' }) });
    const nodes = ['finetune-1pct', 'finetune-10pct', 'distill-10pct', ...Object.keys(figures), 'evaluate-distill-10pct'].map((name) => ({ name, stage: parseStageName(name).kind, deps: [] }));
    await writeFile(join(dir, 'plan.json'), JSON.stringify({ nodes }));
    expect(parseStageName('evaluate-distill-10pct')).toEqual({ kind: 'evaluate-distill', tag: '10pct' });
    expect(parseStageName('distill-part-0-of-2')).toEqual({ kind: 'distill-part', tag: null });

    const result = await buildReport({ runDir: dir });
    expect(result.stages['distill-10pct']).toBe('not yet run');
    const doc = parse(await readFile(result.path, 'utf8'));
    const table = doc.querySelector('#accuracy-classifiers')!;
    expect(rowValues(table, (c) => c[0].startsWith('1pct')).slice(0, 6)).toEqual(['1pct (1%)', 100, 0.41, 0.22, 0.41 - 0.22, 'not yet run']);
    expect(rowValues(table, (c) => c[0].startsWith('10pct')).slice(0, 6)).toEqual(['10pct (10%)', 1000, 0.63, 0.48, 0.63 - 0.48, 'not yet run']);
  });

  it('is the `pipeline report` command: prints the path, --json a summary, a missing run dir exits 2', async () => {
    const r = await runCli(['report', '--run-dir', runDir]);
    expect(r.code, r.err).toBe(0);
    expect(r.out).toBe(join(runDir, 'report', 'index.html'));
    const j = await runCli(['report', '--run-dir', runDir, '--json']);
    expect(JSON.parse(j.out)).toMatchObject({ command: 'report', path: join(runDir, 'report', 'index.html'), stages: { export: 'not yet run', distill: 'interrupted' } });
    const missing = await runCli(['report', '--run-dir', join(runDir, 'nope')]);
    expect(missing.code).toBe(2);
    expect(missing.err.split('\n')).toEqual([`pipeline: report: run directory ${join(runDir, 'nope')} does not exist`]);
  });
});
