// `pipeline inspect PATH`: prints a dataset directory, a shard, or a run directory (its stages'
// status and metrics) for a person, or as one JSON object with --json.
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { describePath, type Description } from '../data/inspect.ts';
import { verifyTree } from '../data/manifest.ts';
import { liveLockHolder } from './lock.ts';
import { readStageManifest, StageInputError, type StageManifest } from './runner.ts';
import { STAGES, type StageIO } from './stages.ts';

export interface InspectOptions {
  rows: number;
  json: boolean;
  /** Re-hash every shard of every dataset under the path instead of describing it. */
  verify?: boolean;
  io: StageIO;
}

/** `inspect --verify` found damaged or missing shards (or no dataset): the CLI exits 2. */
export class DatasetIntegrityError extends Error {
  override name = 'DatasetIntegrityError';
}

async function verifyPath(path: string, json: boolean, io: StageIO): Promise<void> {
  const result = await verifyTree(path);
  if (result.datasets.length === 0 && result.problems.length === 0) result.problems.push(`${path}: no dataset manifest under it`);
  if (json) io.stdout(JSON.stringify({ kind: 'verify', path, ...result }));
  else if (result.problems.length === 0) io.stdout(`ok: ${result.shards} shards verified (${result.datasets.length} datasets under ${path})`);
  else for (const p of result.problems) io.stdout(p);
  if (result.problems.length > 0) throw new DatasetIntegrityError(`inspect --verify: ${result.problems.length} problem(s) under ${path}`);
}

async function isRunDir(path: string): Promise<boolean> {
  const entries = await readdir(path, { withFileTypes: true });
  if (entries.some((e) => e.name === 'pipeline.lock')) return true;
  for (const e of entries) {
    if (e.isDirectory() && (await readStageManifest(join(path, e.name)))?.stage === e.name) return true;
  }
  return false;
}

/** A stage as inspect shows it: `interrupted` is a `running` manifest that no live process works on. */
type ShownStage = { [K in keyof StageManifest]: K extends 'status' ? StageManifest['status'] | 'interrupted' : StageManifest[K] } & { hint?: string };

async function describeRunDir(path: string): Promise<ShownStage[]> {
  const stages: ShownStage[] = [];
  const holder = await liveLockHolder(path);
  for (const e of await readdir(path, { withFileTypes: true })) {
    if (!e.isDirectory()) continue;
    const m = await readStageManifest(join(path, e.name));
    if (m?.stage !== e.name) continue;
    // A lock without a stage (an older one, or not the stage runner's) may be working on any stage.
    // A part job (ingest-part-2-of-8) locks its own directory only.
    const live = (holder !== null && (holder.stage === undefined || holder.stage === m.stage)) || (/-part-\d+-of-\d+$/.test(m.stage) && (await liveLockHolder(join(path, e.name))) !== null);
    if (m.status === 'running' && !live) stages.push({ ...m, status: 'interrupted', hint: continueHint(m.command ?? m.stage, path) });
    else stages.push(m);
  }
  return stages.sort((a, b) => a.started_at.localeCompare(b.started_at));
}

/** How to go on with an interrupted stage: a training stage resumes from its checkpoint, others run again. */
function continueHint(stage: string, runDir: string): string {
  const resumable = Object.hasOwn(STAGES, stage) && Object.hasOwn(STAGES[stage].options, 'resume');
  return resumable
    ? `its process is gone; resume with: pipeline run ${stage} --run-dir ${runDir} --resume (and the flags it ran with)`
    : `its process is gone; rerun it: pipeline run ${stage} --run-dir ${runDir} (and the flags it ran with)`;
}

function formatNumber(v: number): string {
  return Number.isInteger(v) ? String(v) : v.toPrecision(4);
}

function printDataset(d: Description, io: StageIO): void {
  io.stdout(`${d.kind} ${d.path}`);
  io.stdout(`  schema ${d.schema.name}${d.schema.imageShape ? ` image_shape [${d.schema.imageShape.join(', ')}]` : ''}${d.schema.dim ? ` dim ${d.schema.dim}` : ''}`);
  for (const f of d.schema.fields) {
    const tag = f.metadata['ARROW:extension:name'] ? ` (${f.metadata['ARROW:extension:name']} ${f.metadata['ARROW:extension:metadata'] ?? ''})` : '';
    io.stdout(`    ${f.name}: ${f.type}${f.nullable ? ' nullable' : ''}${tag}`);
  }
  io.stdout(`  rows ${d.rows}${d.rejected !== undefined ? `, rejected at ingest ${d.rejected}` : ''}`);
  if (d.classes.length > 0 || d.unlabeled > 0) {
    const counts = d.classes.map((c) => `${c} ${d.classCounts[c] ?? 0}`);
    if (d.unlabeled > 0) counts.push(`unlabeled ${d.unlabeled}`);
    io.stdout(`  classes (${d.classes.length}): ${counts.join(', ')}`);
  }
  io.stdout(`  shards (${d.shards.length}):`);
  for (const s of d.shards) io.stdout(`    ${s.path} ${s.rows} rows${'sha256' in s ? ` sha256 ${s.sha256.slice(0, 16)}…` : ''}`);
  if (d.head.length > 0) io.stdout(`  first ${d.head.length} rows:`);
  for (const row of d.head) {
    const parts = [`id ${row.id}`, `label ${row.label ?? 'null'}${row.className ? ` (${row.className})` : ''}`];
    for (const [k, v] of Object.entries(row.scalars)) parts.push(`${k} ${v}`);
    for (const [k, v] of Object.entries(row.values)) parts.push(`${k}[${v.length}] min ${formatNumber(v.min)} max ${formatNumber(v.max)} mean ${formatNumber(v.mean)}`);
    io.stdout(`    ${parts.join('  ')}`);
  }
}

function printRunDir(path: string, stages: ShownStage[], io: StageIO): void {
  io.stdout(`run directory ${path}`);
  if (stages.length === 0) io.stdout('  no stage has run yet');
  for (const m of stages) {
    const seconds = m.finished_at ? (Date.parse(m.finished_at) - Date.parse(m.started_at)) / 1000 : null;
    io.stdout(`  ${m.stage}: ${m.status}${m.backend ? ` on ${m.backend}` : ''}, started ${m.started_at}${seconds !== null ? `, ${seconds.toFixed(0)} s` : ''}`);
    const metrics = Object.entries(m.metrics ?? {}).filter((e): e is [string, number] => typeof e[1] === 'number');
    if (metrics.length) io.stdout(`    metrics: ${metrics.map(([k, v]) => `${k} ${formatNumber(v)}`).join(', ')}`);
    if (m.outputs?.length) io.stdout(`    outputs: ${m.outputs.map((o) => `${o.path}${o.rows !== undefined ? ` (${o.rows} rows)` : ''}`).join(', ')}`);
    if (m.error) io.stdout(`    error: ${m.error}`);
    if (m.hint) io.stdout(`    hint: ${m.hint}`);
  }
}

export async function inspectPath(path: string, { rows, json, verify = false, io }: InspectOptions): Promise<void> {
  const info = await stat(path).catch(() => null);
  if (!info) throw new StageInputError(`inspect: ${path} does not exist`);
  if (verify) {
    if (!info.isDirectory()) throw new StageInputError(`inspect --verify: ${path} is not a folder (give a dataset or run directory)`);
    return verifyPath(path, json, io);
  }
  if (info.isDirectory() && (await isRunDir(path))) {
    const stages = await describeRunDir(path);
    if (json) io.stdout(JSON.stringify({ kind: 'run', path, stages }));
    else printRunDir(path, stages, io);
    return;
  }
  const description = await describePath(path, { headRows: rows });
  if (json) io.stdout(JSON.stringify(description));
  else printDataset(description, io);
}
