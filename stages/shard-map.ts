// A model mapped over a dataset's input shards, one output shard per input shard, each recorded with
// the input shard's and the model's sha256: distillation's teacher logits and `pipeline embed`'s
// embeddings. A shard already done for the same pair is skipped, so part jobs (--shard-index /
// --num-shards) fill the cache side by side and later runs reuse the shards an incremental ingest
// left untouched.
import type * as tf from '@tensorflow/tfjs';
import { createHash } from 'node:crypto';
import { mkdir, readFile, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { exists, writeFileAtomic } from '../data/files.ts';
import { readDataset, writeManifest, type DatasetManifest } from '../data/manifest.ts';
import type { InMemoryImages } from '../data/memory.ts';
import { SCHEMA_VERSION, schemaInfo } from '../data/schemas.ts';
import { writeShards, type ShardFile } from '../data/shards.ts';
import { embed } from '../models/simclr.ts';
import { TrainingInputError } from './training/loop.ts';

export type MappedSchema = 'logits' | 'embeddings';

/** A part job's --shard-index/--num-shards checked for `stage` (the CLI's shardFromEnvironment checks them first). */
export function checkPart(stage: string, shardIndex: number, numShards: number): void {
  if (!Number.isInteger(numShards) || numShards < 1) throw new TrainingInputError(`${stage}.numShards must be an integer >= 1, got ${numShards}`);
  if (!Number.isInteger(shardIndex) || shardIndex < 0 || shardIndex >= numShards) throw new TrainingInputError(`${stage}.shardIndex must be in [0, numShards = ${numShards}), got ${shardIndex}`);
}

/** What is mapped and how it is told in logs and errors. */
export interface ShardMapSpec {
  /** Output schema; also the prefix of its files (`logits-<input shard>.arrow`). */
  schema: MappedSchema;
  /** Log prefix, e.g. `distill: teacher logits`. */
  what: string;
  /** What to do when parts are missing at collection (the command without parts computes them). */
  missingHint: string;
  /** The part jobs, told when some did not complete, e.g. `distill-part-I-of-4`. */
  partJobs: (count: number) => string;
}

/** What one input shard's output was computed from; `<schema>-<input shard's name>.json` beside its shard. */
interface MappedPart {
  input_sha256: string;
  model_sha256: string;
  shard: ShardFile;
  /** The part job that computed it, when one did. */
  part?: { index: number; count: number };
}

/**
 * `<schema>-<input shard's name>`: keyed by the input shard, not its position, so after an
 * incremental ingest (which keeps untouched shards, rewrites others under new names and drops
 * emptied ones, moving the rest) each kept shard still finds its output.
 */
function partName(schema: MappedSchema, input: ShardFile): string {
  const stem = input.path.replace(/\.arrow$/, '');
  const plain = stem.replace(/[^A-Za-z0-9._-]/g, '_');
  return `${schema}-${plain === stem ? plain : `${plain}-${createHash('sha256').update(input.path).digest('hex').slice(0, 8)}`}`;
}
const partFile = (schema: MappedSchema, dir: string, input: ShardFile) => join(dir, `${partName(schema, input)}.json`);

async function readPart(path: string): Promise<MappedPart | null> {
  try {
    return JSON.parse(await readFile(path, 'utf8')) as MappedPart;
  } catch {
    return null;
  }
}

/**
 * The model's outputs (inference mode, un-augmented images) for the input shards of this job's part
 * (shard i where i mod numShards = shardIndex), one output shard per input shard in `dir`.
 */
export async function mapInputShards(
  spec: ShardMapSpec,
  model: tf.LayersModel,
  all: InMemoryImages,
  data: DatasetManifest,
  dir: string,
  modelSha256: string,
  part: { shardIndex: number; numShards: number },
  log: (line: string) => void,
): Promise<{ computed: number; reused: number; seconds: number }> {
  await mkdir(dir, { recursive: true });
  const dim = model.outputs[0].shape[1] as number;
  const info = schemaInfo(spec.schema, { dim }, all.classes);
  const per = all.height * all.width * 3;
  let start = 0;
  let computed = 0;
  let reused = 0;
  const t0 = performance.now();
  const records = await Promise.all(data.shards.map((input) => readPart(partFile(spec.schema, dir, input))));
  const current = (i: number) => {
    const done = records[i];
    return done !== null && done.input_sha256 === data.shards[i].sha256 && done.model_sha256 === modelSha256;
  };
  // After part jobs, the run without parts computes only what none of them left: say which part that was.
  const partCount = part.numShards === 1 ? records.find((r, i) => r?.part && current(i))?.part?.count : undefined;
  if (partCount !== undefined) {
    const missing = [...new Set(data.shards.map((_, i) => i).filter((i) => !current(i)).map((i) => i % partCount))];
    if (missing.length > 0) log(`${spec.what}: part(s) ${missing.join(', ')} of ${partCount} missing or stale (${spec.partJobs(partCount)} did not complete for this model and data); computing their shards here`);
  }
  for (const [i, input] of data.shards.entries()) {
    const rows = { from: start, to: start + input.rows };
    start = rows.to;
    if (i % part.numShards !== part.shardIndex) continue;
    const done = records[i];
    if (done && current(i) && (await exists(join(dir, done.shard.path)))) {
      reused++;
      continue;
    }
    const outputs = embed(model, all.pixels.subarray(rows.from * per, rows.to * per), input.rows, all.height); // [rows, dim]
    const values = outputs.dataSync() as Float32Array;
    outputs.dispose();
    const ids = all.ids.slice(rows.from, rows.to);
    const labels = Array.from(all.labels.subarray(rows.from, rows.to), (l) => (l < 0 ? null : l));
    const column = spec.schema === 'logits' ? { logits: values } : { embedding: values };
    const [shard, ...more] = await writeShards({ dir, schema: info, prefix: partName(spec.schema, input), maxRows: Math.max(1, input.rows) }, [{ id: ids, label: labels, ...column } as never]);
    if (more.length > 0) throw new Error(`${spec.what}: the output of input shard ${i} did not fit one shard`);
    const record: MappedPart = { input_sha256: input.sha256, model_sha256: modelSha256, shard, ...(part.numShards > 1 ? { part: { index: part.shardIndex, count: part.numShards } } : {}) };
    await writeFileAtomic(partFile(spec.schema, dir, input), JSON.stringify(record) + '\n');
    computed++;
  }
  const seconds = (performance.now() - t0) / 1000;
  log(`${spec.what}: ${computed} input shard(s) computed, ${reused} reused${part.numShards > 1 ? ` (part ${part.shardIndex} of ${part.numShards})` : ''} in ${seconds.toFixed(1)} s → ${dir}`);
  return { computed, reused, seconds };
}

/**
 * Every input shard's output in dataset order, once all parts are done: writes the output dataset's
 * manifest.json (with `extra`, e.g. the model's and data's sha256) and reads the values back through
 * it, so they are verified like any dataset. A part that is missing or of another model or input is
 * named. Files of input shards the dataset no longer has are removed.
 */
export async function collectMapped(
  spec: ShardMapSpec,
  all: InMemoryImages,
  data: DatasetManifest,
  dir: string,
  modelSha256: string,
  dim: number,
  extra: Record<string, string>,
): Promise<{ manifest: DatasetManifest; values: Float32Array }> {
  const shards: ShardFile[] = [];
  const missing: number[] = [];
  for (const [i, input] of data.shards.entries()) {
    const done = await readPart(partFile(spec.schema, dir, input));
    if (!done || done.input_sha256 !== input.sha256 || done.model_sha256 !== modelSha256) missing.push(i);
    else shards.push(done.shard);
  }
  if (missing.length > 0) throw new TrainingInputError(`${spec.what} missing for input shard(s) ${missing.join(', ')} in ${dir}; ${spec.missingHint}`);
  const counts: Record<string, number> = Object.fromEntries(all.classes.map((c) => [c, 0]));
  for (const l of all.labels) if (l >= 0) counts[all.classes[l]]++;
  const manifest: DatasetManifest = { schema_version: SCHEMA_VERSION, schema: spec.schema, rows: all.ids.length, classes: all.classes, class_counts: counts, dim, shards, ...extra };
  await writeManifest(dir, manifest);
  const keep = new Set([...data.shards.map((s) => `${partName(spec.schema, s)}.json`), ...shards.map((s) => s.path)]);
  const own = new RegExp(`^${spec.schema}-.*\\.(json|arrow)$`);
  for (const f of await readdir(dir)) if (own.test(f) && !keep.has(f)) await rm(join(dir, f), { force: true });
  const values = new Float32Array(all.ids.length * dim);
  let row = 0;
  for await (const batch of readDataset(dir, { schema: spec.schema })) {
    const columns = batch.columns as unknown as { logits?: Float32Array; embedding?: Float32Array };
    const column = spec.schema === 'logits' ? columns.logits! : columns.embedding!;
    values.set(column, row * dim);
    row += batch.numRows;
  }
  return { manifest, values };
}
