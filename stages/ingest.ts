// Ingest stage: an image folder or CSV list → size×size RGB `images` shards + dataset manifest,
// decoding in a Piscina pool of sharp workers; unusable files are listed in rejected.jsonl.
import 'sharp'; // load the native addon in the main thread before workers do (sharp's advice for worker pools)
import { createHash } from 'node:crypto';
import { mkdir, readdir, rm } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { join, resolve } from 'node:path';
import { Piscina } from 'piscina';
import type { DecodeResult, DecodeTask } from '../data/decode-worker.ts';
import { writeFileAtomic } from '../data/files.ts';
import { MANIFEST_FILE, MAX_PARTS, partPrefix, publishDataset, removeDatasetLeftovers, type DatasetManifest } from '../data/manifest.ts';
import { ScanInputError, limitPerClass as limitEntries, scanInput, takePart, type ScanEntry, type ScanRejected } from '../data/scan.ts';
import { SCHEMA_VERSION, schemaInfo } from '../data/schemas.ts';
import { DEFAULT_MAX_BYTES, DEFAULT_MAX_ROWS, ShardWriter } from '../data/shards.ts';
import { withDefaults } from './options.ts';

export interface IngestOptions {
  /** An image folder (class sub-folders = labels) or a .csv list with header `path,label`. */
  input: string;
  /** Dataset folder to write; created if missing. */
  outDir: string;
  /** Output side: shorter side resized to `size`, centre crop size×size. Default 32 (CIFAR). */
  size?: number;
  /** Label every image null even if there are class folders or labels. Default false. */
  unlabeled?: boolean;
  /** Decoding threads. Default: the machine's available parallelism. */
  workers?: number;
  /** Images per worker task: large enough to amortise messaging and sharp calls (plain JPEGs are decoded a batch per call), small enough to keep all threads busy. Default 256. */
  batchSize?: number;
  /** Refuse files with more pixels than this before decoding (decompression bombs). Default 268,402,689 (sharp's, 16383²). */
  maxInputPixels?: number;
  /** Keep at most this many images per class, the first in sorted order. Default: all. */
  limitPerClass?: number;
  /** This job's part: images whose position in the sorted list mod numShards is shardIndex. Default 0. */
  shardIndex?: number;
  /** Number of parts the input is split into across jobs. Default 1. */
  numShards?: number;
  /** Fail on the first unusable file instead of skipping it. Default false. */
  strict?: boolean;
  /** Rows per shard file before rolling over. Default 10,000 (DESIGN.md). */
  maxRowsPerShard?: number;
  /** Bytes per shard file before rolling over. Default 256 MiB (DESIGN.md). */
  maxBytesPerShard?: number;
  /** Called after every decoded batch with files done (decoded or rejected) and the total. */
  onProgress?: (done: number, total: number) => void;
  /** Human-readable progress lines. */
  log?: (line: string) => void;
}

export interface IngestResult {
  outDir: string;
  manifestPath: string;
  manifest: DatasetManifest;
  /** Path of the rejected list (JSON lines {path, reason}). */
  rejectedPath: string;
  rejected: ScanRejected[];
  rows: number;
  seconds: number;
  imagesPerSecond: number;
}

/** Bad options or input (missing/empty folder, malformed list, a bad file under `strict`): the CLI exits 2. */
export class IngestInputError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'IngestInputError';
  }
}

export const INGEST_DEFAULTS = {
  size: 32,
  unlabeled: false,
  batchSize: 256,
  maxInputPixels: 16383 * 16383,
  shardIndex: 0,
  numShards: 1,
  strict: false,
  maxRowsPerShard: DEFAULT_MAX_ROWS,
  maxBytesPerShard: DEFAULT_MAX_BYTES,
} as const;

/** Rows gathered before one Arrow record batch is written: fewer, larger messages in the file. */
const WRITE_BATCH_ROWS = 1024;

type ResolvedOptions = Required<Omit<IngestOptions, 'limitPerClass' | 'onProgress' | 'log'>> &
  Pick<IngestOptions, 'limitPerClass' | 'onProgress' | 'log'>;

function resolveOptions(options: IngestOptions): ResolvedOptions {
  if (typeof options !== 'object' || options === null) throw new IngestInputError('ingest options must be an object');
  const o: ResolvedOptions = withDefaults({ ...INGEST_DEFAULTS, workers: availableParallelism() }, options);
  const positiveInt = (field: keyof IngestOptions, max = Number.MAX_SAFE_INTEGER) => {
    const v = o[field];
    if (!Number.isInteger(v) || (v as number) < 1 || (v as number) > max) throw new IngestInputError(`ingest.${field} must be an integer in [1, ${max}], got ${JSON.stringify(v)}`);
  };
  if (typeof o.input !== 'string' || o.input === '') throw new IngestInputError('ingest.input must be a folder or .csv path');
  if (typeof o.outDir !== 'string' || o.outDir === '') throw new IngestInputError('ingest.outDir must be a folder path');
  positiveInt('size', 4096);
  positiveInt('workers', 256);
  positiveInt('batchSize', 4096);
  positiveInt('maxInputPixels');
  positiveInt('numShards', MAX_PARTS);
  positiveInt('maxRowsPerShard');
  positiveInt('maxBytesPerShard');
  if (o.limitPerClass !== undefined) positiveInt('limitPerClass');
  if (!Number.isInteger(o.shardIndex) || o.shardIndex < 0 || o.shardIndex >= o.numShards) {
    throw new IngestInputError(`ingest.shardIndex must be an integer in [0, numShards = ${o.numShards}), got ${JSON.stringify(o.shardIndex)}`);
  }
  for (const f of ['unlabeled', 'strict'] as const) {
    if (typeof o[f] !== 'boolean') throw new IngestInputError(`ingest.${f} must be true or false, got ${JSON.stringify(o[f])}`);
  }
  for (const f of ['onProgress', 'log'] as const) {
    if (o[f] !== undefined && typeof o[f] !== 'function') throw new IngestInputError(`ingest.${f} must be a function`);
  }
  if (resolve(o.input) === resolve(o.outDir)) throw new IngestInputError(`ingest.outDir must differ from ingest.input (${o.input})`);
  return o;
}

/**
 * File names of this job's outputs. A single job writes DESIGN's `shard-00000.arrow`,
 * `manifest.json`, `rejected.jsonl`; part p of n (numShards > 1) prefixes them with
 * `part-PPPPP-of-NNNNN` (`part-00002-of-00008-shard-00000.arrow`, `part-00002-of-00008.manifest.json`,
 * `part-00002-of-00008.rejected.jsonl`) so parallel jobs can share one outDir;
 * data/manifest.ts mergePartManifests then joins them into manifest.json.
 */
function ingestOutputNames(shardIndex: number, numShards: number): { shardPrefix: string; manifest: string; rejected: string } {
  if (numShards === 1) return { shardPrefix: 'shard', manifest: MANIFEST_FILE, rejected: 'rejected.jsonl' };
  const part = partPrefix(shardIndex, numShards);
  return { shardPrefix: `${part}-shard`, manifest: `${part}.manifest.json`, rejected: `${part}.rejected.jsonl` };
}

/** Runs the ingest stage; see IngestOptions. Holds no state between calls. */
export async function ingest(options: IngestOptions): Promise<IngestResult> {
  const o = resolveOptions(options);
  const log = o.log ?? (() => undefined);
  const started = performance.now();

  let scan;
  try {
    scan = await scanInput(o.input, { unlabeled: o.unlabeled });
  } catch (e) {
    if (e instanceof ScanInputError) throw new IngestInputError(e.message);
    throw e;
  }
  const { classes } = scan;
  // Limit before partitioning, so the parts of a limited run together equal the unpartitioned run.
  const limited = o.limitPerClass === undefined ? scan.entries : limitEntries(scan.entries, o.limitPerClass);
  const entries = takePart(limited, o.shardIndex, o.numShards);
  const partNote = o.numShards > 1 ? ` (part ${o.shardIndex} of ${o.numShards})` : '';
  log(
    `ingest: ${entries.length} images${partNote} in ${classes.length || 'no'} classes from ${o.input}` +
      (scan.ignored ? `; ${scan.ignored} non-image files ignored` : ''),
  );

  const rejected: ScanRejected[] = [];
  const reject = (path: string, reason: string) => {
    if (o.strict) throw new IngestInputError(`${path}: ${reason} (strict: stopping at the first unusable file)`);
    rejected.push({ path, reason });
  };
  // Scan-level rejects belong to this part only when they fall into it (by position, like images).
  for (const r of takePart(scan.rejected, o.shardIndex, o.numShards)) reject(r.path, r.reason);

  const outDir = resolve(o.outDir);
  const names = ingestOutputNames(o.shardIndex, o.numShards);
  try {
    await mkdir(outDir, { recursive: true });
  } catch (e) {
    throw new IngestInputError(`ingest.outDir ${o.outDir} cannot be created (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  // The previous dataset stays readable until the new one is whole (publishDataset); what a killed
  // run left behind goes now.
  const owns = (name: string) => name.startsWith(`${names.shardPrefix}-`) || name === names.manifest || name === names.rejected;
  const removed = await removeDatasetLeftovers(outDir, owns, names.manifest);
  if (removed.length > 0) log(`ingest: removed ${removed.length} file(s) left by an interrupted run: ${removed.join(', ')}`);

  const info = schemaInfo('images', { imageShape: [o.size, o.size, 3] }, classes);
  const writer = new ShardWriter({ dir: outDir, schema: info, prefix: names.shardPrefix, maxRows: o.maxRowsPerShard, maxBytes: o.maxBytesPerShard });
  const pool = new Piscina({
    filename: new URL('../data/decode-worker.mjs', import.meta.url).href,
    minThreads: o.workers,
    maxThreads: o.workers,
    idleTimeout: 1000,
  });
  const classCounts = new Array<number>(classes.length).fill(0);
  const stride = o.size * o.size * 3;
  let done = 0;
  try {
    o.onProgress?.(0, entries.length);
    const tasks: ScanEntry[][] = [];
    for (let i = 0; i < entries.length; i += o.batchSize) tasks.push(entries.slice(i, i + o.batchSize));
    const run = (batch: ScanEntry[]) => {
      const p = pool.run({ paths: batch.map((e) => e.path), size: o.size, maxInputPixels: o.maxInputPixels } satisfies DecodeTask) as Promise<DecodeResult>;
      // Tasks still queued when we stop early (strict) reject on pool.destroy(); nobody awaits them.
      p.catch(() => undefined);
      return p;
    };

    // Keep every thread busy with a couple of tasks queued, but results are consumed in order,
    // so rows land in the shards in sorted-id order whatever thread finishes first.
    const inFlight: Array<Promise<DecodeResult>> = [];
    const depth = o.workers * 3;
    let next = 0;
    let pending = { id: [] as string[], label: [] as Array<number | null>, chunks: [] as Uint8Array[] };
    const flush = async () => {
      const n = pending.id.length;
      if (n === 0) return;
      const image = new Uint8Array(n * stride);
      pending.chunks.forEach((c, i) => image.set(c, i * stride));
      await writer.write({ id: pending.id, label: pending.label, image });
      pending = { id: [], label: [], chunks: [] };
    };
    for (let t = 0; t < tasks.length; t++) {
      while (next < tasks.length && next < t + depth) inFlight.push(run(tasks[next++]));
      const result = await inFlight.shift()!;
      const batch = tasks[t];
      for (let i = 0; i < batch.length; i++) {
        const err = result.errors[i];
        if (err !== null) {
          reject(batch[i].id, err);
          continue;
        }
        pending.id.push(batch[i].id);
        pending.label.push(batch[i].label);
        pending.chunks.push(result.pixels.subarray(i * stride, (i + 1) * stride));
        if (batch[i].label !== null) classCounts[batch[i].label!]++;
      }
      done += batch.length;
      if (pending.id.length >= WRITE_BATCH_ROWS) await flush();
      o.onProgress?.(done, entries.length);
    }
    await flush();
    const shards = await writer.finish();
    const rows = shards.reduce((n, s) => n + s.rows, 0);

    await writeFileAtomic(join(outDir, names.rejected), rejected.map((r) => JSON.stringify(r) + '\n').join(''));
    const manifest: DatasetManifest = {
      schema_version: SCHEMA_VERSION,
      schema: 'images',
      rows,
      classes,
      class_counts: Object.fromEntries(classes.map((c, i) => [c, classCounts[i]])),
      image_shape: [o.size, o.size, 3],
      shards,
      rejected: rejected.length,
      source: { input: resolve(o.input), kind: scan.kind, unlabeled: o.unlabeled, limit_per_class: o.limitPerClass ?? null },
      preprocessing: 'EXIF orientation applied; shorter side resized to size (Lanczos3), centre crop; alpha flattened onto black; 8-bit sRGB RGB, HWC',
      ...(o.numShards > 1 ? { part: { index: o.shardIndex, count: o.numShards, ...partIdentity(o, scan.kind, limited) } } : {}),
    };
    const manifestPath = await publishDataset(outDir, shards, manifest, names.manifest);
    await removeStaleShards(outDir, names.shardPrefix, new Set(shards.map((s) => s.path)));
    const seconds = (performance.now() - started) / 1000;
    const imagesPerSecond = entries.length / Math.max(seconds, 1e-9);
    log(`ingest: wrote ${rows} rows in ${shards.length} shards to ${outDir}, ${rejected.length} rejected, ${imagesPerSecond.toFixed(0)} images/s`);
    return { outDir, manifestPath, manifest, rejectedPath: join(outDir, names.rejected), rejected, rows, seconds, imagesPerSecond };
  } catch (e) {
    await writer.abort();
    throw e;
  } finally {
    await pool.destroy();
  }
}

/**
 * What every part of one partitioned ingest must share, for the merge to refuse a mix: the options
 * that decide the rows, and the whole (limited) sorted list the parts are cut from.
 */
function partIdentity(o: ResolvedOptions, kind: string, list: readonly ScanEntry[]): { config_sha256: string; listing_sha256: string; listing_images: number } {
  const config = { input: resolve(o.input), kind, size: o.size, unlabeled: o.unlabeled, limit_per_class: o.limitPerClass ?? null, max_input_pixels: o.maxInputPixels, strict: o.strict };
  const listing = createHash('sha256');
  for (const e of list) listing.update(`${e.id}\0${e.label ?? ''}\n`);
  return { config_sha256: createHash('sha256').update(JSON.stringify(config)).digest('hex'), listing_sha256: listing.digest('hex'), listing_images: list.length };
}

/** Shards of an earlier run with more shards than this one would otherwise linger beside ours. */
async function removeStaleShards(dir: string, prefix: string, keep: Set<string>): Promise<void> {
  const pattern = new RegExp(`^${prefix.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}-\\d{5}\\.arrow$`);
  for (const f of await readdir(dir)) if (pattern.test(f) && !keep.has(f)) await rm(join(dir, f), { force: true });
}
