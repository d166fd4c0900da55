// The `run all` graph: which stage runs in which run-dir directory, after which others, with which
// resolved config. Every node's config is resolved (and so validated) before anything runs.
import { basename, extname, join } from 'node:path';
import { FINETUNE_DEFAULTS } from '../stages/finetune.ts';
import { COMMON_OPTIONS, ConfigError, normaliseKey, resolveConfig, shown, type ConfigFile, type OptionSpecs, type ResolvedConfig } from './config.ts';
import { EXPORT_STAGE, STAGES, STAGE_NAMES, type StageDefinition } from './stages.ts';

/** Config-file sections: one per stage, plus the baseline (a finetune with its own recipe) and export. */
export const CONFIG_SECTIONS = [...STAGE_NAMES, 'baseline', 'export'] as const;

/** Top-level config keys that are not options of a stage: the run dir, and the test split every stage shares. */
export const RUN_KEYS = ['runDir', 'holdout'] as const;

export interface PlanNode {
  /** Its directory (and manifest `stage`) in the run dir. */
  name: string;
  /** What it is: ingest, pretrain, finetune, baseline, distill, evaluate, export. */
  family: string;
  /** Its name without the label-fraction suffix (evaluate-distill for evaluate-distill-1pct). */
  base: string;
  /** The stage definition's key (`finetune` for the baseline). */
  command: string;
  deps: string[];
  config: ResolvedConfig;
  definition: StageDefinition;
}

/** A label spec as a directory suffix: 1% → 1pct, 10-per-class → 10-per-class, ids.txt → ids. */
export function labelTag(spec: string): string {
  const raw = spec.endsWith('%') ? `${spec.slice(0, -1)}pct` : /^[0-9]+(-per-class)?$/.test(spec) ? spec : basename(spec, extname(spec));
  return raw.replace(/[^A-Za-z0-9-]+/g, '-').replace(/^-+|-+$/g, '') || 'labels';
}

/** `--set` entries and the config file's section for one key, for the keys run all handles itself. */
function takeSet(set: readonly string[], section: string, key: string): { value?: string; rest: string[] } {
  let value: string | undefined;
  const rest: string[] = [];
  for (const entry of set) {
    const eq = entry.indexOf('=');
    const path = eq > 0 ? entry.slice(0, eq) : '';
    const dot = path.indexOf('.');
    if (dot > 0 && path.slice(0, dot) === section && normaliseKey(path.slice(dot + 1)) === key) value = entry.slice(eq + 1);
    else rest.push(entry);
  }
  return { value, rest };
}

function sectionValue(file: ConfigFile | undefined, section: string, key: string): { raw: string; value: unknown } | undefined {
  const s = file?.stages[section];
  const raw = s && Object.keys(s).find((k) => normaliseKey(k) === key);
  return raw === undefined ? undefined : { raw, value: s![raw] };
}

/** The config file without one section's key (run all sets it per node). */
function withoutKey(file: ConfigFile | undefined, section: string, key: string): ConfigFile | undefined {
  const found = sectionValue(file, section, key);
  if (!file || !found) return file;
  const { [found.raw]: _, ...rest } = file.stages[section];
  return { ...file, stages: { ...file.stages, [section]: rest } };
}

/** The top-level `holdout` (the last N labeled images per class, the test split of every stage), checked. */
export function configHoldout(file: ConfigFile | undefined): number | undefined {
  const raw = file && Object.keys(file.common).find((k) => normaliseKey(k) === 'holdout');
  if (raw === undefined) return undefined;
  const value = Number(file!.common[raw]);
  if (!Number.isInteger(value) || value < 0) throw new ConfigError(`config file ${file!.path}: '${raw}' must be an integer >= 0 (images per class held out as the test split), got ${shown(file!.common[raw])}`);
  return value;
}

/** `--set holdout=N` (no section: the top-level key) written into the config file's top level. */
function withTopLevelSet(file: ConfigFile | undefined, set: readonly string[]): { file: ConfigFile | undefined; set: readonly string[] } {
  const top = set.filter((entry) => {
    const eq = entry.indexOf('=');
    return eq > 0 && normaliseKey(entry.slice(0, eq)) === 'holdout';
  });
  if (top.length === 0) return { file, set };
  const base: ConfigFile = file ?? { path: '--set', common: {}, stages: {} };
  const last = top[top.length - 1]; // as with any --set, the last one wins
  const common = { ...Object.fromEntries(Object.entries(base.common).filter(([k]) => normaliseKey(k) !== 'holdout')), holdout: last.slice(last.indexOf('=') + 1) };
  return { file: { ...base, common }, set: set.filter((e) => !top.includes(e)) };
}

/** The key a stage calls the shared test split by (pretrain's kNN monitor queries are that split). */
export function holdoutKey(specs: OptionSpecs): 'holdout' | 'knnHoldout' | null {
  return 'holdout' in specs ? 'holdout' : 'knnHoldout' in specs ? 'knnHoldout' : null;
}

/**
 * A config file with the top-level `holdout` written into `section` under the stage's own name for
 * it; a section that sets that key to another value is an error (one test split per run).
 */
export function withTestSplit(file: ConfigFile | undefined, section: string, specs: OptionSpecs): ConfigFile | undefined {
  const holdout = configHoldout(file);
  const key = holdoutKey(specs);
  if (!file || holdout === undefined || key === null) return file;
  const own = sectionValue(file, section, key);
  if (own !== undefined && Number(own.value) !== holdout) {
    throw new ConfigError(`config file ${file.path}: ${section}.${own.raw} is ${shown(own.value)} but the top-level holdout is ${holdout}; the test split is set once, at the top`);
  }
  return { ...file, stages: { ...file.stages, [section]: { ...(file.stages[section] ?? {}), [key]: holdout } } };
}

export interface PlanInput {
  runDir: string;
  file?: ConfigFile;
  set?: readonly string[];
  /** Common flags given on the command line (seed, workers, backend). */
  flags?: Record<string, unknown>;
}

/**
 * The graph for a config: ingest → pretrain → evaluate-pretrain, and per label fraction finetune,
 * baseline (same ids, from scratch), distill (from that finetune), the evaluation of each, export
 * of the student. One fraction keeps the plain names; several suffix each of those by the fraction.
 */
export function planRun({ runDir, file: fileIn, set: setIn = [], flags = {} }: PlanInput): PlanNode[] {
  const { file, set } = withTopLevelSet(fileIn, setIn);
  const labelsSet = takeSet(set, 'finetune', 'labels');
  const fromFile = sectionValue(file, 'finetune', 'labels')?.value;
  const labelList = labelsSet.value !== undefined ? [labelsSet.value] : fromFile === undefined ? [FINETUNE_DEFAULTS.labels] : Array.isArray(fromFile) ? fromFile : [fromFile];
  if (labelList.length === 0 || labelList.some((l) => typeof l !== 'string' && typeof l !== 'number')) {
    throw new ConfigError(`config file ${file?.path}: finetune.labels must be a label spec or a list of them (e.g. [1%, 10%]), got ${shown(fromFile)}`);
  }
  const labels = labelList.map(String);
  const tags = labels.map(labelTag);
  const dup = tags.find((t, i) => tags.indexOf(t) !== i);
  if (dup !== undefined) throw new ConfigError(`finetune.labels: two fractions give the same directory suffix '${dup}'`);
  const baseFile = withoutKey(file, 'finetune', 'labels');
  const restSet = labelsSet.rest;
  const split = configHoldout(file);
  const r = (name: string) => join(runDir, name);

  const nodes: PlanNode[] = [];
  const add = (base: string, family: string, command: string, section: string, deps: string[], links: Record<string, string | number | boolean>, suffix = '') => {
    const name = base + suffix;
    const definition = command === 'export' ? EXPORT_STAGE : STAGES[command];
    const specs = { ...COMMON_OPTIONS, ...definition.options };
    const sectionFile = withTestSplit(baseFile, section, specs);
    // The graph decides where each stage reads from: a section may not point a stage elsewhere.
    for (const key of Object.keys(links)) {
      const own = sectionValue(sectionFile, section, key);
      if (own !== undefined && !(key === holdoutKey(specs) && split !== undefined)) {
        throw new ConfigError(`config file ${file?.path}: ${section}.${own.raw} is set by run all (${shown(links[key])}); remove it from the config`);
      }
    }
    const config = resolveConfig({ stage: section, specs, file: sectionFile, set: restSet, stages: CONFIG_SECTIONS, flags: { ...pick(flags, COMMON_OPTIONS), ...links }, extraFileKeys: RUN_KEYS });
    nodes.push({ name, family, base, command, deps, config, definition });
    return config;
  };

  // A run in a Slurm array or an Indexed Job is still one process: never a part of the map stages.
  add('ingest', 'ingest', 'ingest', 'ingest', [], { shardIndex: 0, numShards: 1 });
  add('pretrain', 'pretrain', 'pretrain', 'pretrain', ['ingest'], { data: r('ingest') });
  add('evaluate-pretrain', 'evaluate', 'evaluate', 'evaluate', ['pretrain'], { checkpoint: r('pretrain') });
  labels.forEach((spec, i) => {
    const s = labels.length > 1 ? `-${tags[i]}` : '';
    const ft = add('finetune', 'finetune', 'finetune', 'finetune', ['pretrain'], { data: r('ingest'), pretrained: r('pretrain'), init: 'pretrained', labels: spec }, s);
    // The same ids and test split as the fine-tuning; its own recipe from the baseline section.
    for (const key of ['labels', 'holdout', 'init', 'pretrained', 'data']) {
      const own = sectionValue(baseFile, 'baseline', key);
      if (own !== undefined) throw new ConfigError(`config file ${file?.path}: baseline.${own.raw}: the baseline trains on the fine-tuning's ids and split (finetune.labels, holdout); remove it`);
    }
    add('baseline', 'baseline', 'finetune', 'baseline', ['pretrain'], { data: r('ingest'), pretrained: r('pretrain'), init: 'random', labels: spec, holdout: ft.holdout as number }, s);
    add('distill', 'distill', 'distill', 'distill', [`finetune${s}`], { data: r('ingest'), teacher: r(`finetune${s}`), shardIndex: 0, numShards: 1 }, s);
    for (const trained of ['finetune', 'baseline', 'distill']) {
      add(`evaluate-${trained}`, 'evaluate', 'evaluate', 'evaluate', [trained + s], { checkpoint: r(trained + s) }, s);
    }
    add('export', 'export', 'export', 'export', [`distill${s}`, `evaluate-distill${s}`], { checkpoint: r(`distill${s}`) }, s);
  });

  const evaluate = nodes.find((n) => n.name === 'evaluate-pretrain')!.config;
  if (split === undefined && evaluate.data === undefined && !evaluate.holdout) {
    throw new ConfigError(
      `run all needs a test split the training stages never see: set holdout: N at the top of the config (the last N images per class), or evaluate.data to a separate test dataset`,
    );
  }
  return nodes;
}

function pick(values: Record<string, unknown>, specs: OptionSpecs): Record<string, unknown> {
  return Object.fromEntries(Object.keys(specs).map((k) => [k, values[k]]));
}

/** The nodes a --from / --until / --force value names: by directory, by name without the fraction suffix, or by stage. */
function matching(nodes: readonly PlanNode[], names: readonly string[], flag: string): Set<string> {
  const out = new Set<string>();
  for (const name of names) {
    const matched = nodes.filter((n) => n.name === name || n.base === name || n.family === name);
    if (matched.length === 0) throw new ConfigError(`${flag} ${name}: no such stage in this run (stages: ${nodes.map((n) => n.name).join(', ')})`);
    for (const n of matched) out.add(n.name);
  }
  return out;
}

/** Nodes named and everything downstream of them. */
export function downstreamOf(nodes: readonly PlanNode[], names: readonly string[], flag: string): Set<string> {
  const out = matching(nodes, names, flag);
  for (const n of nodes) if (n.deps.some((d) => out.has(d))) out.add(n.name); // nodes are in dependency order
  return out;
}

/** Nodes named and everything upstream of them. */
export function upstreamOf(nodes: readonly PlanNode[], names: readonly string[], flag: string): Set<string> {
  const out = matching(nodes, names, flag);
  for (const n of [...nodes].reverse()) if (out.has(n.name)) for (const d of n.deps) out.add(d);
  return out;
}
