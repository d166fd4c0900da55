// Model promotion for nightly runs: a run's exported student is published as MODELS_DIR/<timestamp>/
// and MODELS_DIR/current moved to it, only when it scores at least as well as the current model on
// the same evaluation split; every decision is appended to MODELS_DIR/history.jsonl.
import { appendFile, cp, mkdir, mkdtemp, readdir, readFile, readlink, rename, rm, symlink } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { exists, tempPath, writeFileAtomic } from '../data/files.ts';
import type { BackendName } from '../models/engine/backend.ts';
import { findStageCheckpoint } from '../models/checkpoint.ts';
import { sha256File } from '../data/manifest.ts';
import { evaluate } from '../stages/evaluate.ts';
import { readStageManifest } from './runner.ts';

/** The marker that makes a directory a models directory (anything else in a non-empty directory is foreign). */
const MARKER = 'models.json';
const HISTORY = 'history.jsonl';
const CURRENT = 'current';

/** A models directory that is not one, or a run with nothing to promote: the CLI exits 2. */
export class PromotionInputError extends Error {
  override name = 'PromotionInputError';
}

export interface PromotionRecord {
  at: string;
  promoted: boolean;
  reason: string;
  run_dir: string;
  stage: string;
  accuracy: number;
  current_accuracy: number | null;
  /** The model it replaced / the model kept. */
  current: string | null;
  /** The published directory name (when promoted). */
  name?: string;
  /** sha256 of the student checkpoint's index: the same model is not published twice. */
  checkpoint_sha256: string;
  split: { data: string; holdout: number };
}

export interface PromoteOptions {
  runDir: string;
  modelsDir: string;
  /** Promote when accuracy ≥ the current model's − margin (0: not lower). */
  margin?: number;
  backend?: BackendName;
  log?: (line: string) => void;
}

/**
 * Checks `dir` is a models directory (created when missing or empty) and returns its current
 * model's directory name, or null when none was promoted yet.
 */
export async function openModelsDir(dir: string, create: boolean): Promise<string | null> {
  const entries = await readdir(dir).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return null;
    throw new PromotionInputError(`models directory ${dir}: cannot read it (${err.code})`);
  });
  if (entries === null || entries.length === 0) {
    if (!create) throw new PromotionInputError(`models directory ${dir}: ${entries === null ? 'does not exist' : 'is empty'} (nothing promoted yet)`);
    await mkdir(dir, { recursive: true });
    await writeFileAtomic(join(dir, MARKER), JSON.stringify({ kind: 'simclr-pipeline models directory', version: 1 }, null, 2) + '\n');
    return null;
  }
  if (!entries.includes(MARKER)) {
    throw new PromotionInputError(`models directory ${dir}: not one (no ${MARKER}; it holds ${entries.slice(0, 5).join(', ')}${entries.length > 5 ? ', ...' : ''}); give an empty or new directory`);
  }
  const published = entries.filter((e) => /^\d{4}-\d\d-\d\dT/.test(e));
  const foreign = entries.filter((e) => e !== MARKER && e !== HISTORY && e !== CURRENT && !published.includes(e) && !e.includes('.tmp-'));
  if (foreign.length > 0) throw new PromotionInputError(`models directory ${dir}: foreign files ${foreign.join(', ')} (it holds only published models, ${CURRENT}, ${HISTORY} and ${MARKER})`);
  if (!entries.includes(CURRENT)) {
    if (published.length > 0) throw new PromotionInputError(`models directory ${dir}: has published models but no ${CURRENT} link`);
    return null;
  }
  const target = await readlink(join(dir, CURRENT)).catch(() => {
    throw new PromotionInputError(`models directory ${dir}: ${CURRENT} is not a link to a published model`);
  });
  if (!published.includes(target)) throw new PromotionInputError(`models directory ${dir}: ${CURRENT} points to ${target}, which is not a published model there`);
  return target;
}

/** The run's best student: the export whose evaluate-distill stage scored highest. */
async function candidate(runDir: string): Promise<{ stage: string; exportDir: string; checkpoint: string; accuracy: number; split: { data: string; holdout: number } }> {
  const plan = await readFile(join(runDir, 'plan.json'), 'utf8').then((t) => JSON.parse(t) as { nodes: { name: string; stage: string }[] }, () => null);
  if (!plan) throw new PromotionInputError(`promote: ${runDir} has no plan.json (promotion follows a run all)`);
  let best: Awaited<ReturnType<typeof candidate>> | null = null;
  for (const node of plan.nodes.filter((n) => n.stage === 'export')) {
    const suffix = node.name.slice('export'.length);
    const [exp, ev] = await Promise.all([readStageManifest(join(runDir, node.name)), readStageManifest(join(runDir, `evaluate-distill${suffix}`))]);
    const accuracy = ev?.metrics.accuracy;
    if (exp?.status !== 'completed' || ev?.status !== 'completed' || typeof accuracy !== 'number') continue;
    const config = JSON.parse(await readFile(join(runDir, `evaluate-distill${suffix}`, 'config.json'), 'utf8')) as { data?: string; holdout?: number };
    const checkpoint = await findStageCheckpoint(join(runDir, `distill${suffix}`));
    if (checkpoint === null) continue;
    if (best === null || accuracy > best.accuracy) {
      best = { stage: `distill${suffix}`, exportDir: join(runDir, node.name), checkpoint, accuracy, split: { data: config.data ?? join(runDir, 'ingest'), holdout: config.holdout ?? 0 } };
    }
  }
  if (best === null) throw new PromotionInputError(`promote: no completed export with a completed evaluate-distill in ${runDir}`);
  return best;
}

/** A directory name for now, unique in `dir`: 2026-12-01T13-05-00Z (filesystem-safe ISO time). */
async function publishedName(dir: string): Promise<string> {
  const base = new Date().toISOString().replace(/\.\d+Z$/, 'Z').replace(/:/g, '-');
  for (let i = 1; ; i++) {
    const name = i === 1 ? base : `${base}-${i}`;
    if (!(await exists(join(dir, name)))) return name;
  }
}

/**
 * Promotes the run's best student into `modelsDir` when it scores at least the current model's
 * accuracy − margin on the run's evaluation split (the current model is re-evaluated on that split:
 * last night's figures came from another one). Returns the decision, also appended to history.jsonl.
 */
export async function promote(options: PromoteOptions): Promise<PromotionRecord> {
  const log = options.log ?? (() => {});
  const modelsDir = resolve(options.modelsDir);
  const margin = options.margin ?? 0;
  if (!(margin >= 0)) throw new PromotionInputError(`--promote-margin must be >= 0, got ${margin}`);
  const current = await openModelsDir(modelsDir, true);
  const cand = await candidate(options.runDir);
  const checkpointSha = await sha256File(join(cand.checkpoint, 'checkpoint.json'));
  if (current !== null) {
    const published = await readFile(join(modelsDir, current, 'promotion.json'), 'utf8').then((t) => JSON.parse(t) as PromotionRecord, () => null);
    if (published?.checkpoint_sha256 === checkpointSha) {
      log(`promote: ${cand.stage} of ${options.runDir} is already the current model (${current}); nothing to do`);
      const { name: _, ...rest } = published;
      const same: PromotionRecord = { ...rest, at: new Date().toISOString(), promoted: false, reason: `already the current model (${current})`, current, current_accuracy: published.accuracy };
      await appendFile(join(modelsDir, HISTORY), JSON.stringify(same) + '\n');
      return same;
    }
  }

  let currentAccuracy: number | null = null;
  if (current !== null) {
    const scratch = await mkdtemp(join(options.runDir, 'promote-eval-'));
    try {
      const result = await evaluate({ data: cand.split.data, holdout: cand.split.holdout, checkpoint: join(modelsDir, current, 'checkpoint'), outDir: scratch, backend: options.backend, log });
      currentAccuracy = result.metrics.accuracy as number;
    } finally {
      await rm(scratch, { recursive: true, force: true });
    }
  }
  const promoted = currentAccuracy === null || cand.accuracy >= currentAccuracy - margin;
  const pct = (v: number) => `${(100 * v).toFixed(2)} %`;
  const reason =
    currentAccuracy === null
      ? 'no current model'
      : promoted
        ? `${pct(cand.accuracy)} ≥ current ${pct(currentAccuracy)}${margin > 0 ? ` − margin ${pct(margin)}` : ''} on the same split`
        : `${pct(cand.accuracy)} < current ${pct(currentAccuracy)}${margin > 0 ? ` − margin ${pct(margin)}` : ''} on the same split; keeping ${current}`;
  const record: PromotionRecord = {
    at: new Date().toISOString(),
    promoted,
    reason,
    run_dir: resolve(options.runDir),
    stage: cand.stage,
    accuracy: cand.accuracy,
    current_accuracy: currentAccuracy,
    current,
    split: cand.split,
    checkpoint_sha256: checkpointSha,
  };
  if (promoted) {
    const name = await publishedName(modelsDir);
    const staging = tempPath(join(modelsDir, name));
    await rm(staging, { recursive: true, force: true });
    // The exported models (tfjs/, onnx/: classes.json and model-card.json in each) and the checkpoint
    // the next night re-evaluates; the directory appears whole or not at all.
    await cp(cand.exportDir, staging, { recursive: true, filter: (src) => src !== join(cand.exportDir, 'manifest.json') && src !== join(cand.exportDir, 'config.json') });
    await cp(cand.checkpoint, join(staging, 'checkpoint'), { recursive: true });
    record.name = name;
    await writeFileAtomic(join(staging, 'promotion.json'), JSON.stringify(record, null, 2) + '\n');
    await rename(staging, join(modelsDir, name));
    const link = tempPath(join(modelsDir, CURRENT));
    await rm(link, { force: true });
    await symlink(name, link);
    await rename(link, join(modelsDir, CURRENT)); // atomic: readers see the old or the new model
  }
  await appendFile(join(modelsDir, HISTORY), JSON.stringify(record) + '\n');
  log(`promote: ${promoted ? `published ${record.name} as ${join(modelsDir, CURRENT)}` : 'not promoted'} (${cand.stage}: ${reason})`);
  return record;
}

export interface ModelsListing {
  current: string | null;
  models: { name: string; current: boolean; accuracy: number | null; stage: string | null; run_dir: string | null; at: string | null }[];
  history: PromotionRecord[];
}

/** What `pipeline models list` shows: the published models (oldest first) and every decision. */
export async function listModels(dir: string): Promise<ModelsListing> {
  const current = await openModelsDir(dir, false);
  const names = (await readdir(dir)).filter((e) => /^\d{4}-\d\d-\d\dT/.test(e) && !e.includes('.tmp-')).sort();
  const models = await Promise.all(
    names.map(async (name) => {
      const p = await readFile(join(dir, name, 'promotion.json'), 'utf8').then((t) => JSON.parse(t) as PromotionRecord, () => null);
      return { name, current: name === current, accuracy: p?.accuracy ?? null, stage: p?.stage ?? null, run_dir: p?.run_dir ?? null, at: p?.at ?? null };
    }),
  );
  const text = await readFile(join(dir, HISTORY), 'utf8').catch(() => '');
  const history = text.split('\n').filter((l) => l.trim() !== '').map((l) => JSON.parse(l) as PromotionRecord);
  return { current, models, history };
}
