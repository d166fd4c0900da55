// What the run report reads from a run directory: its stages (planned in plan.json or on disk),
// each one's manifest, config and metrics.jsonl, tolerant of a run in progress.
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { liveLockHolder } from './lock.ts';
import type { StageManifest } from './runner.ts';

/** A stage directory name: its kind and the label-fraction tag of `run all` with several fractions ('1pct'). */
const TAGGED_STAGE = /^(finetune|baseline|distill|evaluate-(?:pretrain|finetune|baseline|distill)|export)(?:-(.+))?$/;
/** distill's teacher-logits part jobs (`distill --num-shards N`): not a tag. */
const PART_STAGE = /^(.+)-part-\d+-of-\d+$/;

/** The order stages are listed in when there is no plan.json. */
const KIND_ORDER = ['ingest', 'augment', 'pretrain', 'finetune', 'baseline', 'distill', 'distill-part', 'evaluate-pretrain', 'evaluate-finetune', 'evaluate-baseline', 'evaluate-distill', 'export'];

export function parseStageName(name: string): { kind: string; tag: string | null } {
  const part = PART_STAGE.exec(name);
  if (part) return { kind: `${part[1]}-part`, tag: null };
  const m = TAGGED_STAGE.exec(name);
  return m ? { kind: m[1], tag: m[2] ?? null } : { kind: name, tag: null };
}

/** A stage as the report shows it; `interrupted` is a running manifest no live process works on. */
export type StageState = 'completed' | 'running' | 'interrupted' | 'failed' | 'not yet run' | 'no manifest';

export type MetricsRow = { epoch?: number; step?: number; summary?: string } & Record<string, unknown>;

export interface ReportStage {
  name: string;
  kind: string;
  tag: string | null;
  /** From plan.json, when it lists the stage. */
  deps: string[];
  planned: boolean;
  dir: string;
  state: StageState;
  manifest: StageManifest | null;
  config: Record<string, unknown> | null;
  /** metrics.jsonl rows (lines a running process left half-written are skipped); [] without the file. */
  metrics: MetricsRow[];
  /** Why a file of the stage could not be read (shown, never thrown). */
  problems: string[];
}

export interface RunState {
  runDir: string;
  /** plan.json was there and readable. */
  planned: boolean;
  stages: ReportStage[];
  problems: string[];
}

async function readJson(path: string): Promise<{ value: unknown } | { missing: true } | { error: string }> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT' || (err as NodeJS.ErrnoException).code === 'ENOTDIR') return { missing: true };
    return { error: `${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}` };
  }
  try {
    return { value: JSON.parse(text) };
  } catch (err) {
    return { error: `${path}: not valid JSON (${(err as Error).message})` };
  }
}

/** The rows of a metrics.jsonl; a half-written last line of a running stage is skipped. */
export async function readMetricsRows(path: string): Promise<MetricsRow[]> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch {
    return [];
  }
  const rows: MetricsRow[] = [];
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    try {
      const row = JSON.parse(line);
      if (row && typeof row === 'object' && !Array.isArray(row)) rows.push(row as MetricsRow);
    } catch {
      // a line being written
    }
  }
  return rows;
}

interface PlanNode {
  name: string;
  stage?: string;
  deps?: string[];
}

function planNodes(value: unknown): PlanNode[] | null {
  const nodes = (value as { nodes?: unknown } | null)?.nodes;
  if (!Array.isArray(nodes)) return null;
  return nodes.filter((n): n is PlanNode => typeof n === 'object' && n !== null && typeof (n as PlanNode).name === 'string');
}

function kindRank(kind: string): number {
  const i = KIND_ORDER.indexOf(kind);
  return i < 0 ? KIND_ORDER.length : i;
}

const natural = new Intl.Collator('en', { numeric: true });

/** Untagged stages first, then each tag's in turn, each group in pipeline order. */
function compareStages(a: ReportStage, b: ReportStage): number {
  if (a.tag !== b.tag) return a.tag === null ? -1 : b.tag === null ? 1 : natural.compare(a.tag, b.tag);
  return kindRank(a.kind) - kindRank(b.kind) || natural.compare(a.name, b.name);
}

/**
 * Reads the run directory: with plan.json every planned node (in plan order) and then any other
 * stage directory on disk; without it, what is on disk. Never throws for a missing or unreadable
 * piece: it is recorded in `problems`.
 */
export async function readRunState(runDir: string): Promise<RunState> {
  const problems: string[] = [];
  const plan = await readJson(join(runDir, 'plan.json'));
  let nodes: PlanNode[] = [];
  let planned = false;
  if ('value' in plan) {
    const parsed = planNodes(plan.value);
    if (parsed) {
      nodes = parsed;
      planned = true;
    } else problems.push(`${join(runDir, 'plan.json')}: no "nodes" list`);
  } else if ('error' in plan) problems.push(plan.error);

  const onDisk: string[] = [];
  for (const e of await readdir(runDir, { withFileTypes: true })) {
    if (!e.isDirectory() || e.name === 'report' || e.name.startsWith('.')) continue;
    const entries = await readdir(join(runDir, e.name)).catch(() => [] as string[]);
    if (entries.includes('manifest.json') || entries.includes('config.json') || TAGGED_STAGE.test(e.name) || KIND_ORDER.includes(e.name)) onDisk.push(e.name);
  }

  const holder = await liveLockHolder(runDir).catch(() => null);
  const load = async (name: string, node: PlanNode | null): Promise<ReportStage> => {
    const dir = join(runDir, name);
    const { kind, tag } = parseStageName(name);
    const stageProblems: string[] = [];
    const manifestRead = await readJson(join(dir, 'manifest.json'));
    const configRead = await readJson(join(dir, 'config.json'));
    if ('error' in manifestRead) stageProblems.push(manifestRead.error);
    if ('error' in configRead) stageProblems.push(configRead.error);
    const manifest = 'value' in manifestRead && typeof manifestRead.value === 'object' && manifestRead.value !== null ? (manifestRead.value as StageManifest) : null;
    const config = 'value' in configRead && typeof configRead.value === 'object' && configRead.value !== null ? (configRead.value as Record<string, unknown>) : null;
    let state: StageState;
    if (manifest === null || typeof manifest.status !== 'string') state = onDisk.includes(name) ? 'no manifest' : 'not yet run';
    else if (manifest.status === 'running') {
      // A lock naming no stage may be working on any of them.
      const live = holder !== null && (holder.stage === undefined || holder.stage === name);
      state = live ? 'running' : 'interrupted';
    } else state = manifest.status === 'completed' || manifest.status === 'failed' ? manifest.status : 'no manifest';
    return {
      name,
      kind: node?.stage && !TAGGED_STAGE.test(name) && !PART_STAGE.test(name) ? node.stage : kind,
      tag,
      deps: node?.deps ?? [],
      planned: node !== null,
      dir,
      state,
      manifest,
      config,
      metrics: await readMetricsRows(join(dir, 'metrics.jsonl')),
      problems: stageProblems,
    };
  };

  const stages: ReportStage[] = [];
  for (const node of nodes) stages.push(await load(node.name, node));
  const rest: ReportStage[] = [];
  for (const name of onDisk) if (!nodes.some((n) => n.name === name)) rest.push(await load(name, null));
  stages.push(...rest.sort(compareStages));
  if (!planned) stages.sort(compareStages);
  for (const s of stages) problems.push(...s.problems);
  return { runDir, planned, stages, problems };
}

/** The stage named `name`, if listed. */
export function stageNamed(run: RunState, name: string): ReportStage | undefined {
  return run.stages.find((s) => s.name === name);
}

/** The tags of the label-fraction stages, untagged (null) first when present. */
export function labelTags(run: RunState): (string | null)[] {
  const tags: (string | null)[] = [];
  for (const s of run.stages) {
    if (!/^(finetune|baseline|distill|evaluate-(finetune|baseline|distill))$/.test(s.kind)) continue;
    if (!tags.includes(s.tag)) tags.push(s.tag);
  }
  return tags.sort((a, b) => (a === b ? 0 : a === null ? -1 : b === null ? 1 : natural.compare(a, b)));
}

/** The stage of `kind` with `tag` ('finetune', '1pct' → finetune-1pct). */
export function stageOf(run: RunState, kind: string, tag: string | null): ReportStage | undefined {
  return stageNamed(run, tag === null ? kind : `${kind}-${tag}`);
}

/** A number from a manifest's metrics, or undefined. */
export function metric(stage: ReportStage | undefined, name: string): number | undefined {
  const v = stage?.manifest?.metrics?.[name];
  return typeof v === 'number' && Number.isFinite(v) ? v : undefined;
}
