// `pipeline report`: RUN_DIR/report/index.html, one self-contained page (inline SVG plots, data:
// URI images, no scripts) rebuilt from what is on disk, also while a run is in progress.
import { mkdir, readFile, stat } from 'node:fs/promises';
import os from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import { writeFileAtomic } from '../data/files.ts';
import { readDataset, readManifest } from '../data/manifest.ts';
import { augmentPreview } from '../stages/augment-preview.ts';
import { Cell, badge, formatSeconds, html, numberCell, page, percentCell, raw, table, type Html } from './report-html.ts';
import { confusionSpec, curveSpec, perClassSpec, renderSvg, type Point } from './report-plots.ts';
import { labelTags, metric, readRunState, stageNamed, stageOf, type MetricsRow, type ReportStage, type RunState } from './report-run.ts';

export interface ReportOptions {
  runDir: string;
  log?: (line: string) => void;
}

export type SectionState = 'ok' | 'no data' | 'failed';

export interface ReportSection {
  id: string;
  title: string;
  state: SectionState;
  /** Why it failed (the page shows it in the section). */
  error?: string;
}

export interface ReportResult {
  path: string;
  sections: ReportSection[];
  /** Stage name → its state as shown. */
  stages: Record<string, string>;
}

/** The run directory is missing or not a folder: the CLI exits 2. */
export class ReportInputError extends Error {
  override name = 'ReportInputError';
}

/** Images in the predictions gallery: correct and wrong ones each. */
const GALLERY_IMAGES = 8;
/** Rows of the augmentation contact sheet. */
const SHEET_PAIRS = 6;
/** Gallery images are magnified (nearest neighbour) to at least this side, so 32 px ones can be seen. */
const GALLERY_SIDE = 96;

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');

type SectionBody = { body: Html | Html[]; empty?: boolean };
interface SectionDef {
  id: string;
  title: string;
  build: (run: RunState, reportDir: string) => Promise<SectionBody>;
}

const SECTIONS: SectionDef[] = [
  { id: 'stages', title: 'Stages', build: async (run) => ({ body: stagesSection(run), empty: run.stages.length === 0 }) },
  { id: 'accuracy', title: 'Accuracy', build: async (run) => accuracySection(run) },
  { id: 'pretrain', title: 'Pretraining', build: async (run) => pretrainSection(run) },
  { id: 'augment', title: 'Augmentation', build: (run, reportDir) => augmentSection(run, reportDir) },
  { id: 'training', title: 'Fine-tune, baseline, distill', build: async (run) => trainingSection(run) },
  { id: 'evaluation', title: 'Classifier evaluation', build: async (run) => evaluationSection(run) },
  { id: 'environment', title: 'Machine and versions', build: async (run) => environmentSection(run) },
  { id: 'configs', title: 'Configs', build: async (run) => configsSection(run) },
];

/**
 * Builds RUN_DIR/report/index.html from the run directory as it is now and writes it atomically.
 * A section whose data is missing says so; one that cannot be built shows its error (and logs it)
 * instead of failing the report.
 */
export async function buildReport({ runDir: given, log = () => {} }: ReportOptions): Promise<ReportResult> {
  const runDir = resolve(given);
  const info = await stat(runDir).catch(() => null);
  if (!info) throw new ReportInputError(`report: run directory ${runDir} does not exist`);
  if (!info.isDirectory()) throw new ReportInputError(`report: ${runDir} is not a run directory (not a folder)`);
  const run = await readRunState(runDir);
  const reportDir = join(runDir, 'report');

  const sections: ReportSection[] = [];
  const bodies: Html[] = [];
  for (const def of SECTIONS) {
    let state: SectionState = 'ok';
    let content: Html | Html[];
    let error: string | undefined;
    try {
      const built = await def.build(run, reportDir);
      content = built.body;
      if (built.empty) state = 'no data';
    } catch (err) {
      state = 'failed';
      error = err instanceof Error ? err.message : String(err);
      log(`report: the ${def.title} section could not be built: ${error}`);
      content = html`<p class="error">This section could not be built: ${error}</p>`;
    }
    sections.push({ id: def.id, title: def.title, state, ...(error ? { error } : {}) });
    bodies.push(html`<section id="${def.id}"><h2>${def.title}</h2>${content}</section>`);
  }

  const counts = new Map<string, number>();
  for (const s of run.stages) counts.set(s.state, (counts.get(s.state) ?? 0) + 1);
  const subtitle = html`${runDir} · built ${new Date().toISOString()} · ${run.stages.length} stages${run.planned ? ' planned' : ' on disk'}: ${[...counts].map(([k, v]) => `${v} ${k}`).join(', ') || 'none yet'}`;
  const text = page({ title: `SimCLR run report: ${runDir.split('/').filter(Boolean).at(-1) ?? runDir}`, subtitle, nav: SECTIONS, body: bodies });
  const path = join(reportDir, 'index.html');
  await mkdir(reportDir, { recursive: true });
  await writeFileAtomic(path, text);
  return { path, sections, stages: Object.fromEntries(run.stages.map((s) => [s.name, s.state])) };
}

// ---- stages and timings -------------------------------------------------------------------------

function seconds(s: ReportStage): number | undefined {
  const start = Date.parse(s.manifest?.started_at ?? '');
  const end = s.manifest?.finished_at ? Date.parse(s.manifest.finished_at) : s.state === 'running' ? Date.now() : NaN;
  return Number.isFinite(start) && Number.isFinite(end) ? (end - start) / 1000 : undefined;
}

/** An ISO time as 'YYYY-MM-DD HH:MM:SS' (UTC), the full value in its title. */
function timeCell(iso: string | null | undefined): Cell | string {
  if (typeof iso !== 'string') return '';
  return new Cell(html`<td title="${iso}">${iso.replace('T', ' ').replace(/\.\d+Z$/, 'Z')}</td>`.text);
}

function stagesSection(run: RunState): Html[] {
  if (run.stages.length === 0) return [html`<p class="missing">No stage has run yet${run.planned ? '' : ' (no plan.json and no stage directories)'}.</p>`];
  const rows = run.stages.map((s) => {
    const t = seconds(s);
    const note = s.state === 'failed' ? html`<span class="error">${s.manifest?.error ?? 'failed'}</span>` : s.state === 'interrupted' ? 'its process is gone: resume or rerun it' : s.problems.join('; ');
    return [
      html`<code>${s.name}</code>`,
      s.kind,
      s.tag ?? '',
      new Cell(html`<td class="state" data-state="${s.state}">${badge(s.state)}</td>`.text),
      timeCell(s.manifest?.started_at),
      timeCell(s.manifest?.finished_at),
      t === undefined ? '' : new Cell(html`<td class="num" data-value="${String(t)}">${formatSeconds(t)}${s.state === 'running' ? ' so far' : ''}</td>`.text),
      s.manifest?.backend ?? '',
      s.deps.join(', '),
      note,
    ];
  });
  return [
    html`<p class="note">${run.planned ? 'Every node of plan.json (in its order), then any other stage directory on disk.' : 'The stage directories on disk (no plan.json).'} Times are the manifests' started_at and finished_at.</p>`,
    table(['stage', 'kind', 'labels', 'state', 'started', 'finished', 'duration', 'backend', 'after', 'note'], rows, { id: 'stage-table' }),
  ];
}

// ---- accuracy table ---------------------------------------------------------------------------

/** A cell for a metric of a stage: the value, or why there is none. */
function metricCell(stage: ReportStage | undefined, name: string): Cell {
  const v = metric(stage, name);
  if (v !== undefined) return percentCell(v);
  return percentCell(undefined, stage === undefined || stage.state === 'not yet run' ? 'not yet run' : stage.state === 'completed' ? 'no data' : stage.state);
}

function labelsOf(run: RunState, tag: string | null): string {
  const ft = stageOf(run, 'finetune', tag) ?? stageOf(run, 'baseline', tag);
  const spec = typeof ft?.config?.labels === 'string' ? ft.config.labels : null;
  if (tag === null) return spec ?? 'the labeled subset';
  return spec && spec !== tag ? `${tag} (${spec})` : tag;
}

function accuracySection(run: RunState): SectionBody {
  const pretrain = stageNamed(run, 'pretrain');
  const encoderRows: (Html | string | Cell)[][] = [
    ['random-init encoder', 'kNN, held-out images (pretrain, before training)', metricCell(pretrain, 'knn_accuracy_random_init'), 'pretrain'],
    ['SimCLR encoder', 'kNN monitor, held-out images (pretrain, last)', metricCell(pretrain, 'knn_accuracy'), 'pretrain'],
  ];
  const evalPretrain: (ReportStage | undefined)[] = run.stages.filter((s) => s.kind === 'evaluate-pretrain');
  if (evalPretrain.length === 0) evalPretrain.push(undefined); // shown as not yet run
  for (const s of evalPretrain) {
    const name = s?.name ?? 'evaluate-pretrain';
    encoderRows.push(['SimCLR encoder', 'kNN (evaluate)', metricCell(s, 'knn_accuracy'), name]);
    encoderRows.push(['SimCLR encoder', 'linear probe (evaluate)', metricCell(s, 'linear_accuracy'), name]);
  }
  const tags = labelTags(run);
  const classifierRows = tags.map((tag) => {
    const ft = metric(stageOf(run, 'evaluate-finetune', tag), 'accuracy');
    const base = metric(stageOf(run, 'evaluate-baseline', tag), 'accuracy');
    const labeled = metric(stageOf(run, 'finetune', tag), 'labeled') ?? metric(stageOf(run, 'baseline', tag), 'labeled');
    const gap = ft !== undefined && base !== undefined ? ft - base : undefined;
    return [
      labelsOf(run, tag),
      numberCell(labeled),
      metricCell(stageOf(run, 'evaluate-finetune', tag), 'accuracy'),
      metricCell(stageOf(run, 'evaluate-baseline', tag), 'accuracy'),
      gap === undefined ? percentCell(undefined) : new Cell(html`<td class="num" data-value="${String(gap)}">${gap >= 0 ? '+' : '−'}${(100 * Math.abs(gap)).toFixed(2)} pt</td>`.text),
      metricCell(stageOf(run, 'evaluate-distill', tag), 'accuracy'),
      numberCell(metric(stageOf(run, 'distill', tag), 'parameters')),
    ];
  });
  return {
    body: [
      html`<h3>Encoder</h3>`,
      table(['model', 'measure', 'top-1', 'from'], encoderRows, { id: 'accuracy-encoder' }),
      html`<h3>Classifiers, per label fraction</h3>`,
      classifierRows.length
        ? table(['labels', 'labeled images', 'fine-tuned', 'supervised baseline', 'fine-tuned − baseline', 'distilled student', 'student parameters'], classifierRows, { id: 'accuracy-classifiers' })
        : html`<p class="missing" id="accuracy-classifiers">No fine-tune, baseline or distill stage yet.</p>`,
      html`<p class="note">Top-1 on the evaluate stages' test images (evaluate-&lt;stage&gt;/manifest.json); the kNN monitor's on pretrain's held-out images.</p>`,
    ],
  };
}

// ---- curves -------------------------------------------------------------------------------------

const num = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);

/** Steps per epoch of a training stage, from its first epoch row (undefined before one is written). */
function stepsPerEpoch(rows: MetricsRow[]): number | undefined {
  const first = rows.find((r) => r.summary === 'epoch' && num(r.step) && num(r.epoch) && r.epoch > 0);
  return first ? (first.step as number) / (first.epoch as number) : undefined;
}

/** A metric's interval rows (lines) and epoch rows (points) of one stage, against step or epoch. */
function series(rows: MetricsRow[], name: string, metricName: string, x: 'step' | 'epoch'): { lines: Point[]; points: Point[] } {
  const perEpoch = stepsPerEpoch(rows);
  const lines: Point[] = [];
  const points: Point[] = [];
  for (const r of rows) {
    if (!num(r[metricName]) || !num(r.step)) continue;
    if (r.summary === 'epoch') points.push({ series: name, x: x === 'step' ? r.step : (r.epoch as number), y: r[metricName] as number });
    else if (r.summary === undefined && r.step > 0) {
      const at = x === 'step' ? r.step : perEpoch ? r.step / perEpoch : num(r.epoch) ? r.epoch : r.step;
      lines.push({ series: name, x: at, y: r[metricName] as number });
    }
  }
  return { lines, points };
}

/** A rendered plot; `data-plot` names it for readers of the page (and the tests). */
async function figure(name: string, spec: Parameters<typeof renderSvg>[0]): Promise<Html> {
  return html`<figure data-plot="${name}">${raw(await renderSvg(spec))}</figure>`;
}

const PRETRAIN_CURVES: [metric: string, title: string, percent: boolean, logY: boolean][] = [
  ['loss', 'NT-Xent loss', false, false],
  ['contrastive_accuracy', 'contrastive accuracy (the other view ranked first)', true, false],
  ['lr', 'learning rate', false, false],
  ['images_per_second', 'images per second', false, false],
];

async function pretrainSection(run: RunState): Promise<SectionBody> {
  const s = stageNamed(run, 'pretrain');
  if (!s || s.state === 'not yet run') return { body: html`<p class="missing">Pretraining has not run yet.</p>`, empty: true };
  const rows = s.metrics;
  const epochRows = rows.filter((r) => r.summary === 'epoch');
  const planned = num(s.config?.epochs) ? s.config.epochs : undefined;
  const head = html`<p>${badge(s.state)} ${epochRows.length}${planned ? ` of ${planned}` : ''} epochs in metrics.jsonl (${rows.length} rows); lines: every --log-every steps, points: epoch means.${s.manifest?.error ? html` <span class="error">${s.manifest.error}</span>` : ''}</p>`;
  if (rows.length === 0) return { body: [head, html`<p class="missing">No metrics yet (pretrain/metrics.jsonl is empty or missing).</p>`], empty: true };
  const figures: Html[] = [];
  for (const [name, title, percent, logY] of PRETRAIN_CURVES) {
    const { lines, points } = series(rows, 'pretrain', name, 'step');
    if (lines.length + points.length === 0) continue;
    figures.push(await figure(`pretrain-${name}`, curveSpec({ title, xTitle: 'step', yTitle: name, lines, points, percent, logY })));
  }
  const knn = rows.filter((r) => num(r.knn_accuracy) && num(r.epoch)).map((r) => ({ series: 'kNN', x: r.epoch as number, y: r.knn_accuracy as number }));
  const knnFigure = knn.length
    ? await figure(`pretrain-knn`, curveSpec({ title: 'kNN monitor: held-out top-1 (epoch 0 = random weights)', xTitle: 'epoch', yTitle: 'kNN accuracy', lines: [], points: knn, percent: true }))
    : html`<p class="missing">No kNN monitor rows (pretrain ran without --knn-holdout/--knn-every).</p>`;
  return { body: [head, html`<div class="plots">${figures}${knnFigure}</div>`] };
}

const TRAINING_KINDS = ['finetune', 'baseline', 'distill'];

async function trainingSection(run: RunState): Promise<SectionBody> {
  const tags = labelTags(run);
  if (tags.length === 0) return { body: html`<p class="missing">No fine-tune, baseline or distill stage yet.</p>`, empty: true };
  const parts: Html[] = [];
  for (const tag of tags) {
    const stages = TRAINING_KINDS.map((k) => stageOf(run, k, tag)).filter((s): s is ReportStage => s !== undefined);
    const summary = table(
      ['stage', 'state', 'epochs', 'loss', 'train accuracy', 'held-out accuracy', 'images/s'],
      stages.map((s) => {
        const last = s.metrics.filter((r) => r.summary === 'epoch').at(-1);
        const planned = num(s.config?.epochs) ? `/${s.config.epochs}` : '';
        return [
          html`<code>${s.name}</code>`,
          badge(s.state),
          last ? `${last.epoch}${planned}` : s.state === 'not yet run' ? '' : `0${planned}`,
          numberCell(num(last?.loss) ? last.loss : undefined),
          percentCell(num(last?.train_accuracy) ? last.train_accuracy : undefined),
          percentCell(metric(s, 'accuracy') ?? (num(last?.accuracy) ? last.accuracy : undefined)),
          numberCell(num(last?.images_per_second) ? last.images_per_second : undefined, num(last?.images_per_second) ? last.images_per_second.toFixed(0) : undefined),
        ];
      }),
      { className: 'training-summary' },
    );
    const figures: Html[] = [];
    const withRows = stages.filter((s) => s.metrics.length > 0);
    for (const [name, title, percent] of [
      ['loss', 'training loss', false],
      ['train_accuracy', 'training accuracy (augmented labeled views)', true],
      ['accuracy', 'held-out accuracy', true],
    ] as const) {
      const lines: Point[] = [];
      const points: Point[] = [];
      for (const s of withRows) {
        const got = series(s.metrics, s.kind, name, 'epoch');
        lines.push(...got.lines);
        points.push(...got.points);
      }
      if (lines.length + points.length === 0) continue;
      figures.push(await figure(`training-${tag ?? 'default'}-${name}`, curveSpec({ title, xTitle: 'epoch', yTitle: name, lines, points, percent })));
    }
    parts.push(html`<h3>Labels ${labelsOf(run, tag)}</h3>${summary}${figures.length ? html`<div class="plots">${figures}</div>` : html`<p class="missing">No metrics yet.</p>`}`);
  }
  return { body: parts };
}

// ---- augmentation contact sheet ----------------------------------------------------------------

function imagesDatasetOf(run: RunState, stage: ReportStage | undefined): string {
  const data = stage?.config?.data;
  return typeof data === 'string' ? data : join(run.runDir, 'ingest');
}

async function augmentSection(run: RunState, reportDir: string): Promise<SectionBody> {
  const pretrain = stageNamed(run, 'pretrain');
  const data = imagesDatasetOf(run, pretrain);
  const manifest = await readManifest(data).catch(() => null);
  if (manifest?.schema !== 'images') return { body: html`<p class="missing">No images dataset at ${data} yet (ingest has not run).</p>`, empty: true };
  const c = pretrain?.config ?? {};
  const out = join(reportDir, 'augment-preview.png');
  // Pretraining's own augmentation settings and seed, so the sheet shows views it trained on.
  const result = await augmentPreview({
    data,
    out,
    pairs: SHEET_PAIRS,
    seed: num(c.seed) ? c.seed : 0,
    ...(num(c.colorStrength) ? { colorStrength: c.colorStrength } : {}),
    ...(num(c.minScale) ? { minScale: c.minScale } : {}),
  });
  const png = await readFile(result.out);
  return {
    body: html`<p class="note">The first ${result.pairs} images of ${data}: original | view 1 | view 2 of epoch 0 with pretraining's seed and augmentation settings (also in report/augment-preview.png).</p><img class="sheet" alt="augmentation contact sheet" src="data:image/png;base64,${png.toString('base64')}">`,
  };
}

// ---- classifier evaluations ---------------------------------------------------------------------

const CLASSIFIER_EVALUATIONS = ['evaluate-finetune', 'evaluate-baseline', 'evaluate-distill'];

function parseConfusionCsv(text: string): { classes: string[]; confusion: number[][] } | null {
  // Class names may be quoted (data/csv.ts): split on commas outside quotes.
  const cells = (line: string) => [...line.matchAll(/("([^"]|"")*"|[^,]*)(,|$)/g)].map((m) => m[1].replace(/^"(.*)"$/s, '$1').replace(/""/g, '"')).slice(0, -1);
  const lines = text.trim().split('\n');
  if (lines.length < 2) return null;
  const classes = cells(lines[0]).slice(1);
  const confusion = lines.slice(1).map((l) => cells(l).slice(1).map(Number));
  return confusion.every((r) => r.length === classes.length && r.every(Number.isFinite)) ? { classes, confusion } : null;
}

async function confusionOf(s: ReportStage): Promise<{ classes: string[]; confusion: number[][]; csv: string | null } | null> {
  const csv = await readFile(join(s.dir, 'confusion.csv'), 'utf8').catch(() => null);
  const m = s.manifest as { classes?: unknown; confusion?: unknown } | null;
  if (Array.isArray(m?.classes) && Array.isArray(m?.confusion)) return { classes: m.classes as string[], confusion: m.confusion as number[][], csv };
  const parsed = csv === null ? null : parseConfusionCsv(csv);
  return parsed ? { ...parsed, csv } : null;
}

interface GalleryImage {
  id: string;
  label: number;
  predicted: number;
  probability: number;
}

/** The first correct and wrong predictions of an evaluate stage's predictions dataset. */
async function pickPredictions(dir: string): Promise<{ right: GalleryImage[]; wrong: GalleryImage[] }> {
  const right: GalleryImage[] = [];
  const wrong: GalleryImage[] = [];
  for await (const batch of readDataset<'predictions'>(dir, { schema: 'predictions' })) {
    const { id, label, predicted, probabilities } = batch.columns;
    const k = probabilities.length / Math.max(1, batch.numRows);
    for (let i = 0; i < batch.numRows; i++) {
      const l = label[i];
      if (l === null) continue;
      const into = predicted[i] === l ? right : wrong;
      if (into.length < GALLERY_IMAGES) into.push({ id: id[i], label: l, predicted: predicted[i], probability: probabilities[i * k + predicted[i]] });
    }
    if (right.length >= GALLERY_IMAGES && wrong.length >= GALLERY_IMAGES) break;
  }
  return { right, wrong };
}

/** The images dataset rows of `ids`, as PNG data URIs magnified to at least GALLERY_SIDE px. */
async function imagePngs(dataset: string, ids: ReadonlySet<string>): Promise<Map<string, string>> {
  const found = new Map<string, string>();
  if (ids.size === 0) return found;
  const manifest = await readManifest(dataset);
  const [h, w] = manifest.image_shape ?? [0, 0];
  const scale = Math.max(1, Math.min(16, Math.ceil(GALLERY_SIDE / Math.max(h, w))));
  for await (const batch of readDataset<'images'>(dataset, { schema: 'images' })) {
    const bytes = h * w * 3;
    for (let i = 0; i < batch.numRows; i++) {
      if (!ids.has(batch.columns.id[i]) || found.has(batch.columns.id[i])) continue;
      const pixels = Buffer.from(batch.columns.image.subarray(i * bytes, (i + 1) * bytes));
      const png = await sharp(pixels, { raw: { width: w, height: h, channels: 3 } }).resize(w * scale, h * scale, { kernel: 'nearest' }).png().toBuffer();
      found.set(batch.columns.id[i], `data:image/png;base64,${png.toString('base64')}`);
    }
    if (found.size === ids.size) break;
  }
  return found;
}

async function gallery(run: RunState, s: ReportStage, classes: string[]): Promise<Html> {
  const predictionsDir = join(s.dir, 'predictions');
  const picked = await pickPredictions(predictionsDir).catch(() => null);
  if (picked === null) return html`<p class="missing">No predictions dataset in ${predictionsDir}.</p>`;
  const dataset = imagesDatasetOf(run, s);
  const pngs = await imagePngs(dataset, new Set([...picked.right, ...picked.wrong].map((p) => p.id))).catch(() => new Map<string, string>());
  const tile = (p: GalleryImage, kind: 'right' | 'wrong') => {
    const src = pngs.get(p.id);
    return html`<figure class="${kind}" data-id="${p.id}">${src ? html`<img alt="${p.id}" src="${src}">` : html`<div class="missing">image not found</div>`}<figcaption><b>${classes[p.predicted] ?? p.predicted}</b> ${(100 * p.probability).toFixed(0)} %${kind === 'wrong' ? html`<br>true: ${classes[p.label] ?? p.label}` : ''}<br><span class="note">${p.id}</span></figcaption></figure>`;
  };
  return html`<h4>Correct (first ${picked.right.length})</h4><div class="gallery">${picked.right.map((p) => tile(p, 'right'))}</div>
<h4>Wrong (first ${picked.wrong.length})</h4><div class="gallery">${picked.wrong.length ? picked.wrong.map((p) => tile(p, 'wrong')) : html`<span class="note">none</span>`}</div>
<p class="note">Predicted class and its probability; images from ${dataset}.</p>`;
}

async function evaluationSection(run: RunState): Promise<SectionBody> {
  const stages = run.stages.filter((s) => CLASSIFIER_EVALUATIONS.includes(s.kind));
  if (stages.length === 0) return { body: html`<p class="missing">No classifier evaluation yet (evaluate-finetune, evaluate-baseline, evaluate-distill).</p>`, empty: true };
  const parts: Html[] = [];
  for (const s of stages) {
    const title = html`<h3 id="${s.name}"><code>${s.name}</code> ${badge(s.state)}</h3>`;
    if (s.state !== 'completed') {
      parts.push(html`${title}${s.manifest?.error ? html`<p class="error">${s.manifest.error}</p>` : html`<p class="missing">No results yet.</p>`}`);
      continue;
    }
    const perClass = (s.manifest?.metrics?.per_class_accuracy ?? {}) as Record<string, number>;
    const conf = await confusionOf(s);
    const classes = conf?.classes ?? ((s.manifest as { classes?: string[] }).classes ?? Object.keys(perClass));
    const acc = metric(s, 'accuracy');
    const top5 = metric(s, 'top5_accuracy');
    const figures: Html[] = [];
    if (conf) figures.push(await figure(`${s.name}-confusion`, confusionSpec(conf.classes, conf.confusion, 'confusion matrix (rows: true class)')));
    if (Object.keys(perClass).length) figures.push(await figure(`${s.name}-per-class`, perClassSpec(perClass, classes, 'per-class accuracy')));
    const perClassRows = classes.map((c, i) => {
      const row = conf?.confusion[i];
      const total = row?.reduce((a, b) => a + b, 0);
      let confused = '';
      if (row) {
        let worst = -1;
        for (let j = 0; j < row.length; j++) if (j !== i && row[j] > 0 && (worst < 0 || row[j] > row[worst])) worst = j;
        if (worst >= 0) confused = `${conf!.classes[worst]} (${row[worst]})`;
      }
      return [c, percentCell(num(perClass[c]) ? perClass[c] : undefined), numberCell(total), confused];
    });
    const csvLink = conf?.csv ? html` · <a download="${s.name}-confusion.csv" href="data:text/csv;base64,${Buffer.from(conf.csv).toString('base64')}">confusion.csv</a>` : '';
    parts.push(html`${title}<p>top-1 <b>${acc !== undefined ? `${(100 * acc).toFixed(2)} %` : '—'}</b>${top5 !== undefined ? ` · top-5 ${(100 * top5).toFixed(2)} %` : ''} on ${metric(s, 'images') ?? '?'} images${csvLink}</p>
<div class="plots">${figures}</div>
<details><summary>per-class table</summary>${table(['class', 'accuracy', 'images', 'most often taken for'], perClassRows, { className: 'per-class' })}</details>
${await gallery(run, s, classes)}`);
  }
  return { body: parts };
}

// ---- machine, versions, configs ----------------------------------------------------------------

/** Packages whose versions decide the numbers (read from node_modules, wherever it is above the project). */
const VERSIONED_PACKAGES = ['@tensorflow/tfjs', '@tensorflow/tfjs-backend-wasm', 'onnxruntime-node', '@tensorflow/tfjs-node', '@tensorflow/tfjs-node-gpu', 'apache-arrow', 'sharp', 'piscina', 'vega', 'vega-lite'];

async function packageVersion(name: string): Promise<string | null> {
  for (let dir = ROOT; ; dir = dirname(dir)) {
    const version = await readFile(join(dir, 'node_modules', name, 'package.json'), 'utf8').then((t) => (JSON.parse(t) as { version?: string }).version ?? null, () => null);
    if (version) return version;
    if (dirname(dir) === dir) return null;
  }
}

async function environmentSection(run: RunState): Promise<SectionBody> {
  const cpus = os.cpus();
  const own = await readFile(join(ROOT, 'package.json'), 'utf8').then((t) => JSON.parse(t) as { name: string; version: string }, () => null);
  const backends = [...new Set(run.stages.map((s) => s.manifest?.backend).filter((b): b is string => typeof b === 'string'))];
  const versions: [string, string][] = [['node', process.version], ...(own ? [[own.name, own.version] as [string, string]] : [])];
  for (const name of VERSIONED_PACKAGES) {
    const v = await packageVersion(name);
    if (v) versions.push([name, v]);
  }
  versions.push(['libvips (sharp)', sharp.versions.vips]);
  return {
    body: [
      html`<p class="note">The machine and packages that built this report; each stage's backend is in its manifest.</p>`,
      table(
        null,
        [
          ['backends (stage manifests)', backends.join(', ') || 'none recorded yet'],
          ['host', os.hostname()],
          ['os', `${os.type()} ${os.release()} ${os.arch()}`],
          ['cpu', `${cpus[0]?.model ?? 'unknown'} × ${cpus.length}`],
          ['memory', `${(os.totalmem() / 2 ** 30).toFixed(1)} GiB`],
        ],
        { id: 'machine' },
      ),
      table(['package', 'version'], versions, { id: 'versions' }),
    ],
  };
}

async function configsSection(run: RunState): Promise<SectionBody> {
  const withConfig = run.stages.filter((s) => s.config !== null);
  const plan = await readFile(join(run.runDir, 'plan.json'), 'utf8').catch(() => null);
  const parts = withConfig.map((s) => html`<details data-stage="${s.name}"><summary><code>${s.name}</code>/config.json</summary><pre>${JSON.stringify(s.config, null, 2)}</pre></details>`);
  if (plan !== null) parts.push(html`<details><summary><code>plan.json</code></summary><pre>${plan}</pre></details>`);
  if (parts.length === 0) return { body: html`<p class="missing">No stage has written its config yet.</p>`, empty: true };
  return { body: [html`<p class="note">Each stage's resolved config (defaults, config file, flags).</p>`, ...parts] };
}
