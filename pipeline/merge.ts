// `pipeline merge DIR`: the parts of a partitioned ingest checked (all there, shards intact, one
// config) and joined into DIR/manifest.json; in a run dir also the ingest stage's manifest.
import { mkdtemp, readdir, readFile, rename, rm } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { writeFileAtomic } from '../data/files.ts';
import { ManifestError, mergePartManifests, sha256File, type DatasetManifest } from '../data/manifest.ts';
import { acquireRunLock } from './lock.ts';
import { readStageManifest, type StageManifest } from './runner.ts';
import { partDirName } from './stages.ts';

export interface MergeOptions {
  /** A dataset directory holding part-*-of-* files, or a run dir (its ingest/). */
  dir: string;
  log?: (line: string) => void;
}

export interface MergeResult {
  dir: string;
  manifest: DatasetManifest;
  parts: number;
  /** The run dir whose ingest stage the merge completed, when the parts ran as `pipeline run ingest`. */
  runDir: string | null;
}

const hasPartManifests = async (dir: string) => (await readdir(dir).catch(() => [] as string[])).some((f) => /^part-\d{5}-of-\d{5}\.manifest\.json$/.test(f));

/** The part jobs' stage directories beside RUN_DIR/ingest (`ingest-part-I-of-N`), with their count. */
async function partStageDirs(runDir: string): Promise<{ count: number; indices: Set<number> }[]> {
  const byCount = new Map<number, Set<number>>();
  for (const name of await readdir(runDir).catch(() => [] as string[])) {
    const m = /^ingest-part-(\d+)-of-(\d+)$/.exec(name);
    if (m) byCount.set(Number(m[2]), (byCount.get(Number(m[2])) ?? new Set()).add(Number(m[1])));
  }
  return [...byCount].map(([count, indices]) => ({ count, indices }));
}

/**
 * Merges the parts in `dir`. When they were run as `pipeline run ingest --num-shards N` (stage
 * manifests RUN_DIR/ingest-part-I-of-N), every part job must have completed with one config hash
 * and one input hash; the merged manifest is then also the completed ingest stage's manifest, under
 * that hash, so `run all` and the stages after ingest find it up to date.
 */
export async function mergeParts({ dir: given, log = () => {} }: MergeOptions): Promise<MergeResult> {
  let dir = resolve(given);
  if (!(await hasPartManifests(dir)) && (await hasPartManifests(join(dir, 'ingest')))) dir = join(dir, 'ingest');
  const runDir = basename(dir) === 'ingest' && (await partStageDirs(dirname(dir))).length > 0 ? dirname(dir) : null;
  if (runDir === null) {
    const manifest = await mergePartManifests(dir);
    const parts = (manifest.parts as { count: number }).count;
    log(`merge: ${parts} parts, ${manifest.rows} rows in ${manifest.shards.length} shards, ${manifest.rejected ?? 0} rejected → ${join(dir, 'manifest.json')}`);
    return { dir, manifest, parts, runDir };
  }
  const release = await acquireRunLock(runDir, { log, stage: 'ingest' });
  try {
    const jobs = await partStageDirs(runDir);
    if (jobs.length > 1) {
      throw new ManifestError(runDir, `cannot merge: part jobs of ${jobs.map((j) => j.count).join(' and ')} parts (ingest-part-*-of-*); remove the directories of the run that is not current`);
    }
    const { count } = jobs[0];
    const stages: StageManifest[] = [];
    const unfinished: string[] = [];
    for (let p = 0; p < count; p++) {
      const m = await readStageManifest(join(runDir, partDirName('ingest', p, count)));
      if (m?.status !== 'completed') unfinished.push(`${p} (${m ? m.status : 'not run'})`);
      else stages.push(m);
    }
    if (unfinished.length > 0) {
      throw new ManifestError(runDir, `cannot merge: ${unfinished.length} of ${count} ingest part jobs not completed: ${unfinished.join(', ')}; re-run those parts (pipeline run ingest --shard-index I --num-shards ${count})`);
    }
    for (const [p, m] of stages.entries()) {
      if (m.config_hash !== stages[0].config_hash) throw new ManifestError(join(runDir, partDirName('ingest', p, count), 'manifest.json'), `cannot merge: config hash ${m.config_hash} differs from part 0's ${stages[0].config_hash} (parts of two configs); re-run the parts with one config`);
      if (JSON.stringify(m.inputs) !== JSON.stringify(stages[0].inputs)) throw new ManifestError(join(runDir, partDirName('ingest', p, count), 'manifest.json'), `cannot merge: its input hash differs from part 0's (the input changed between the parts); re-run the parts`);
    }
    const manifest = await mergePartManifests(dir);
    const config = JSON.parse(await readFile(join(runDir, partDirName('ingest', 0, count), 'config.json'), 'utf8')) as Record<string, unknown>;
    delete config.shardIndex;
    delete config.numShards;
    await writeFileAtomic(join(dir, 'config.json'), JSON.stringify(config, null, 2) + '\n');
    const stage: StageManifest = {
      ...manifest,
      stage: 'ingest',
      status: 'completed',
      started_at: stages.map((m) => m.started_at).sort()[0],
      finished_at: new Date().toISOString(),
      backend: null,
      config_hash: stages[0].config_hash,
      inputs: stages[0].inputs,
      outputs: manifest.shards.map((s) => ({ path: join('ingest', s.path), rows: s.rows })),
      metrics: { images: manifest.rows, rejected: manifest.rejected ?? 0, parts: count },
    };
    await writeFileAtomic(join(dir, 'manifest.json'), JSON.stringify(stage, null, 2) + '\n');
    log(`merge: ${count} ingest parts, ${manifest.rows} rows in ${manifest.shards.length} shards, ${manifest.rejected ?? 0} rejected → ${join(dir, 'manifest.json')} (ingest stage completed)`);
    return { dir, manifest, parts: count, runDir };
  } finally {
    await release();
  }
}

export interface MergePredictionsResult {
  out: string;
  parts: number;
  rows: number;
  rejected: number;
}

/**
 * `pipeline merge OUT.csv|OUT.arrow`: the parts of a partitioned predict (`pipeline predict --out OUT
 * --num-shards N`, files OUT's stem `.part-IIIII-of-NNNNN` + extension, each with its `.json`
 * record) checked — all N there and whole (their sha256), one classifier, input, format and top-k —
 * and joined in part order into OUT (rows as one process writes them), with their rejected lists.
 */
export async function mergePredictionParts({ out: given, log = () => {} }: { out: string; log?: (line: string) => void }): Promise<MergePredictionsResult> {
  const { partOutput } = await import('../stages/predict.ts');
  const out = resolve(given);
  const format = out.toLowerCase().endsWith('.arrow') ? 'arrow' : 'csv';
  const ext = format === 'arrow' ? out.slice(-6) : out.slice(-4);
  const stem = basename(out).slice(0, -ext.length);
  const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const pattern = new RegExp(`^${escape(stem)}\\.part-(\\d{5})-of-(\\d{5})${escape(ext)}\\.json$`);
  const counts = new Map<number, Set<number>>();
  for (const f of await readdir(dirname(out)).catch(() => [] as string[])) {
    const m = pattern.exec(f);
    if (m) counts.set(Number(m[2]), (counts.get(Number(m[2])) ?? new Set()).add(Number(m[1])));
  }
  if (counts.size === 0) throw new ManifestError(out, `cannot merge: no predict parts (${stem}.part-IIIII-of-NNNNN${ext} with its .json record) beside it; run pipeline predict --out ${given} --shard-index I --num-shards N first`);
  if (counts.size > 1) throw new ManifestError(out, `cannot merge: parts of ${[...counts.keys()].join(' and ')}-part runs beside it; remove the files of the run that is not current`);
  const [[count, present]] = [...counts];
  const missing = Array.from({ length: count }, (_, i) => i).filter((i) => !present.has(i));
  if (missing.length > 0) throw new ManifestError(out, `cannot merge: ${missing.length} of ${count} predict parts missing or unfinished: ${missing.join(', ')}; re-run those parts (pipeline predict --shard-index I --num-shards ${count})`);
  type Record = import('../stages/predict.ts').PredictPartRecord;
  const files = Array.from({ length: count }, (_, i) => partOutput(out, i, count));
  const records: Record[] = [];
  for (const file of files) {
    const record = JSON.parse(await readFile(`${file}.json`, 'utf8')) as Record;
    const sha256 = await sha256File(file).catch(() => null);
    if (sha256 !== record.sha256) throw new ManifestError(file, `cannot merge: missing or not the file its record describes (sha256); re-run part ${record.part.index}`);
    const first = records[0];
    if (first && (record.checkpoint_sha256 !== first.checkpoint_sha256 || record.input !== first.input || record.format !== first.format || record.top_k !== first.top_k)) {
      throw new ManifestError(`${file}.json`, `cannot merge: made with another ${record.checkpoint_sha256 !== first.checkpoint_sha256 ? 'classifier' : record.input !== first.input ? `input (${record.input}, part 0: ${first.input})` : 'format or top-k'} than part 0 (parts of two runs); re-run the parts with one command`);
    }
    records.push(record);
  }
  if (format === 'csv') {
    const texts = await Promise.all(files.map((f) => readFile(f, 'utf8')));
    const header = texts[0].slice(0, texts[0].indexOf('\n') + 1);
    await writeFileAtomic(out, header + texts.map((t) => t.slice(t.indexOf('\n') + 1)).join(''));
  } else {
    const { openShard, writeShards } = await import('../data/shards.ts');
    const batches: import('../data/schemas.ts').Columns<'predictions'>[] = [];
    let info: import('../data/schemas.ts').SchemaInfo<'predictions'> | null = null;
    for (const file of files) {
      const reader = await openShard(file, { schema: 'predictions' });
      info ??= reader.schema;
      for await (const b of reader.batches()) batches.push({ id: [...b.columns.id], label: [...b.columns.label], predicted: b.columns.predicted.slice(), probabilities: b.columns.probabilities.slice() });
      await reader.close();
    }
    const rows = batches.reduce((s, b) => s + b.id.length, 0);
    const dir = await mkdtemp(join(dirname(out), '.merge-'));
    try {
      const written = await writeShards({ dir, schema: info!, maxRows: Math.max(1, rows) }, batches);
      if (written.length !== 1) throw new Error('merge: the predictions did not fit one Arrow file');
      await rename(join(dir, written[0].path), out);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }
  const rejectedLists = await Promise.all(files.map((f) => readFile(`${f}.rejected.jsonl`, 'utf8').catch(() => '')));
  const rejected = records.reduce((s, r) => s + r.rejected, 0);
  if (rejected > 0) await writeFileAtomic(`${out}.rejected.jsonl`, rejectedLists.join(''));
  const rows = records.reduce((s, r) => s + r.rows, 0);
  log(`merge: ${count} predict parts, ${rows} rows, ${rejected} rejected → ${out}`);
  return { out, parts: count, rows, rejected };
}
