// Stage runner: run-dir lock, stage manifest (running → completed | failed), resolved config file,
// and the skip rule (same config hash and input hashes → nothing to do).
import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile, stat } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { writeFileAtomic } from '../data/files.ts';
import { datasetHash, readManifest, sha256File } from '../data/manifest.ts';
import { listImageFiles, scanInput } from '../data/scan.ts';
import { configHash, type ResolvedConfig } from './config.ts';
import { acquireRunLock } from './lock.ts';

export type StageStatus = 'running' | 'completed' | 'failed';

export interface StageManifest {
  /** The stage's directory name: its command's name, or another (finetune --init random → baseline). */
  stage: string;
  /** The `pipeline run` command, when `stage` is another name. */
  command?: string;
  status: StageStatus;
  started_at: string;
  finished_at: string | null;
  backend: string | null;
  config_hash: string;
  inputs: { path: string; sha256: string }[];
  outputs: { path: string; rows?: number }[];
  metrics: Record<string, number | Record<string, number>>;
  error?: string;
  [extra: string]: unknown;
}

export { acquireRunLock, RunDirLockedError } from './lock.ts';

/** The fields every stage manifest has; what else a manifest holds belongs to the stage's output. */
const STAGE_FIELDS = ['stage', 'command', 'status', 'started_at', 'finished_at', 'backend', 'config_hash', 'inputs', 'outputs', 'metrics', 'error'];

function withoutStageFields(manifest: StageManifest): Record<string, unknown> {
  return Object.fromEntries(Object.entries(manifest).filter(([k]) => !STAGE_FIELDS.includes(k)));
}

export async function readStageManifest(stageDir: string): Promise<StageManifest | null> {
  try {
    return JSON.parse(await readFile(join(stageDir, 'manifest.json'), 'utf8')) as StageManifest;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new Error(`${join(stageDir, 'manifest.json')}: unreadable manifest (${(err as Error).message})`);
  }
}

/**
 * Hash of an image folder's listing: the files the ingest scan reads (data/scan.ts listImageFiles,
 * symlinks included), each with the size and modification time of what it points to; not their
 * bytes, so cheap for 50,000 images. A dangling link is listed as missing.
 */
async function hashListing(dir: string): Promise<string> {
  const hash = createHash('sha256');
  for (const id of (await listImageFiles(dir)).images) {
    const info = await stat(join(dir, id)).catch(() => null);
    hash.update(info ? `${id}\0${info.size}\0${info.mtimeMs}\n` : `${id}\0missing\n`);
  }
  return hash.digest('hex');
}

/** Hash of a CSV image list: its bytes and the size and modification time of each file it lists. */
async function hashImageList(csv: string): Promise<string> {
  const hash = createHash('sha256').update(await sha256File(csv));
  const scan = await scanInput(csv).catch(() => null); // a malformed list: ingest reports it
  for (const e of scan?.entries ?? []) {
    const info = await stat(e.path).catch(() => null);
    hash.update(info ? `${e.id}\0${info.size}\0${info.mtimeMs}\n` : `${e.id}\0missing\n`);
  }
  return hash.digest('hex');
}

/**
 * Hashes the stage inputs: a CSV image list by its bytes and its images' listing, any other file by
 * its bytes, a dataset directory by its content (data/manifest.ts datasetHash: classes, shape and
 * its shards' sha256, not the manifest's timestamps, so re-ingesting the same images leaves the
 * stages after it up to date), any other directory by its image listing. A missing input is a clear error.
 */
async function hashInputs(paths: readonly string[], runDir: string): Promise<{ path: string; sha256: string }[]> {
  const out: { path: string; sha256: string }[] = [];
  for (const path of paths) {
    let info;
    try {
      info = await stat(path);
    } catch {
      throw new StageInputError(`input ${path} does not exist`);
    }
    if (!info.isDirectory()) {
      out.push({ path: relativeIfInside(path, runDir), sha256: path.toLowerCase().endsWith('.csv') ? await hashImageList(path) : await sha256File(path) });
      continue;
    }
    const manifest = join(path, 'manifest.json');
    const isDataset = await stat(manifest).then((s) => s.isFile(), () => false);
    out.push(
      isDataset
        ? { path: relativeIfInside(manifest, runDir), sha256: datasetHash(await readManifest(path)) }
        : { path: relativeIfInside(path, runDir), sha256: await hashListing(path) },
    );
  }
  return out;
}

/** A stage input that is missing: the CLI exits 2. */
export class StageInputError extends Error {
  override name = 'StageInputError';
}

function relativeIfInside(path: string, dir: string): string {
  const rel = relative(dir, path);
  return rel.startsWith('..') ? path : rel;
}

export interface StageContext<C = ResolvedConfig> {
  runDir: string;
  stageDir: string;
  config: C;
  /** `--force`: rerun although up to date, and replace what an earlier run left (a checkpoint). */
  force: boolean;
  /** Records the backend that ended up running the stage. */
  setBackend(name: string): void;
}

export interface StageOutcome {
  outputs: { path: string; rows?: number }[];
  /** DESIGN.md's metric names; per-class figures as an object (class → value). */
  metrics: Record<string, number | Record<string, number>>;
  /** Fields merged into the manifest (a dataset stage writes its dataset manifest here too). */
  extra?: Record<string, unknown>;
}

export interface RunStageOptions {
  /** The directory (and manifest) name in the run dir. */
  stage: string;
  /** The `pipeline run` command, when it differs from `stage`. */
  command?: string;
  runDir: string;
  config: ResolvedConfig;
  inputs: readonly string[];
  force?: boolean;
  /** Config keys left out of the hash (thread counts, log intervals, --resume). */
  volatile?: readonly string[];
  log?: (line: string) => void;
  /** The caller holds the run-dir lock already (`run all` takes it once for the whole run). */
  lockHeld?: boolean;
  /** Lock only the stage's own directory (a part job: the parts of one map stage run side by side). */
  lockStageDir?: boolean;
  body: (ctx: StageContext) => Promise<StageOutcome>;
}

export interface StageState {
  /** The config hash the manifest records (volatile keys left out). */
  hash: string;
  inputs: { path: string; sha256: string }[];
  previous: StageManifest | null;
  /** Completed with the same config and input hashes: nothing to do. */
  upToDate: boolean;
}

/** Where a stage stands against its last run in `runDir/<stage>` (the skip rule). */
export async function stageState(opts: Pick<RunStageOptions, 'stage' | 'runDir' | 'config' | 'inputs' | 'volatile'>): Promise<StageState> {
  const hash = configHash(Object.fromEntries(Object.entries(opts.config).filter(([k]) => !opts.volatile?.includes(k))));
  const inputs = await hashInputs(opts.inputs, opts.runDir);
  const previous = await readStageManifest(join(opts.runDir, opts.stage));
  const upToDate = previous?.status === 'completed' && previous.config_hash === hash && JSON.stringify(previous.inputs) === JSON.stringify(inputs);
  return { hash, inputs, previous, upToDate };
}

export type RunStageResult = { skipped: true; manifest: StageManifest } | { skipped: false; manifest: StageManifest };

/**
 * Runs one stage in `runDir/<stage>`: holds the lock, writes config.json and a `running`
 * manifest, then `completed` with outputs and metrics, or `failed` with the error (rethrown).
 * A completed stage with the same config and input hashes is skipped unless `force`.
 */
export async function runStage(opts: RunStageOptions): Promise<RunStageResult> {
  const { stage, runDir, config, log = () => {} } = opts;
  const stageDir = join(runDir, stage);
  const release = opts.lockHeld ? async () => {} : await acquireRunLock(opts.lockStageDir ? stageDir : runDir, { log, stage });
  try {
    const { hash, inputs, previous, upToDate } = await stageState(opts);
    if (!opts.force && upToDate) {
      log(`${stage}: up to date (same config and inputs as the completed run in ${stageDir}); skipped, --force reruns it`);
      return { skipped: true, manifest: previous! };
    }
    await mkdir(stageDir, { recursive: true });
    await writeFileAtomic(join(stageDir, 'config.json'), JSON.stringify(config, null, 2) + '\n');
    let backend: string | null = null;
    const manifest: StageManifest = {
      // What the last run left beside its stage fields (for ingest: its dataset manifest, which is
      // this same file) stays readable while this run works and if it fails.
      ...(previous ? withoutStageFields(previous) : {}),
      stage,
      ...(opts.command !== undefined && opts.command !== stage ? { command: opts.command } : {}),
      status: 'running',
      started_at: new Date().toISOString(),
      finished_at: null,
      backend,
      config_hash: hash,
      inputs,
      outputs: [],
      metrics: {},
    };
    const save = () => writeFileAtomic(join(stageDir, 'manifest.json'), JSON.stringify(manifest, null, 2) + '\n');
    await save();
    try {
      const outcome = await opts.body({
        runDir,
        stageDir,
        config,
        force: Boolean(opts.force),
        setBackend: (name) => {
          backend = name;
        },
      });
      Object.assign(manifest, outcome.extra ?? {}, {
        stage,
        status: 'completed' as const,
        finished_at: new Date().toISOString(),
        backend,
        outputs: outcome.outputs.map((o) => ({ ...o, path: relativeIfInside(o.path, runDir) })),
        metrics: outcome.metrics,
      });
      await save();
      return { skipped: false, manifest };
    } catch (err) {
      // The stage may have published its output before failing: keep what the file says now.
      const onDisk = await readStageManifest(stageDir).catch(() => null);
      Object.assign(manifest, onDisk ? withoutStageFields(onDisk) : {}, {
        status: 'failed' as const,
        finished_at: new Date().toISOString(),
        backend,
        error: err instanceof Error ? err.message : String(err),
      });
      try {
        await save();
      } catch (saveErr) {
        // The stage's own error is the one to report (a full disk fails this write too).
        log(`${stage}: could not record the failure in ${join(stageDir, 'manifest.json')}: ${saveErr instanceof Error ? saveErr.message : saveErr}`);
      }
      throw err;
    }
  } finally {
    await release();
  }
}
