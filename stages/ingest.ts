// Ingest stage: an image folder or CSV list → size×size RGB `images` shards + dataset manifest,
// decoding in a Piscina pool of sharp workers; unusable files are listed in rejected.jsonl. A rerun
// on the same settings decodes only new or changed files (the dataset's file index); part jobs
// (numShards > 1) always ingest their part in full, and `pipeline merge` joins them.
import sharp from 'sharp'; // load the native addon in the main thread before workers do (sharp's advice for worker pools)
import { createHash } from 'node:crypto';
import { mkdir, readdir, rm, stat } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { join, resolve } from 'node:path';
import { Piscina } from 'piscina';
import type { DecodeResult, DecodeTask } from '../data/decode-worker.ts';
import { writeFileAtomic } from '../data/files.ts';
import { INDEX_VERSION, diffIndex, readIndex, removeStaleIndexes, writeIndex, type FileIndex, type IndexedFile, type SourceFile } from '../data/ingest-index.ts';
import { MANIFEST_FILE, MAX_PARTS, checkShard, partPrefix, publishDataset, readManifest, removeDatasetLeftovers, type DatasetManifest } from '../data/manifest.ts';
import { ScanInputError, limitPerClass as limitEntries, scanInput, takePart, type ScanEntry, type ScanRejected } from '../data/scan.ts';
import { SCHEMA_VERSION, schemaInfo } from '../data/schemas.ts';
import { DEFAULT_MAX_BYTES, DEFAULT_MAX_ROWS, ShardWriter, readShard, type ShardFile } from '../data/shards.ts';
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
  /** This job's part: the shardIndex-th of numShards contiguous runs of the sorted list (data/scan.ts takePart). Default 0. */
  shardIndex?: number;
  /** Number of parts the input is split into across jobs. Default 1. */
  numShards?: number;
  /** Fail on the first unusable file instead of skipping it. Default false. */
  strict?: boolean;
  /**
   * Decode every file again, ignoring the previous dataset in outDir. Default false: a rerun with
   * the same settings (single job) decodes only files that are new or changed since the last run.
   */
  full?: boolean;
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
  /** Files decoded per second (a rerun that decodes nothing reports 0). */
  imagesPerSecond: number;
  /** What this run did against the previous dataset; also the manifest's `changes`. */
  changes: IngestChanges;
}

/**
 * A run against the last: `added` / `changed` / `removed` / `unchanged` files (images and rejected
 * ones, by id; scan-level rejects aside), `decoded` = added + changed (all files in a full ingest),
 * and which shards were kept as they were, rewritten without the rows that went, or are new.
 */
export interface IngestChanges {
  mode: 'incremental' | 'full';
  /** Why a rerun was a full ingest (null: incremental, or nothing to compare with). */
  reason: string | null;
  added: number;
  changed: number;
  removed: number;
  unchanged: number;
  decoded: number;
  shards_kept: number;
  shards_rewritten: number;
  shards_new: number;
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
  full: false,
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
  for (const f of ['unlabeled', 'strict', 'full'] as const) {
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

const PREPROCESSING = 'EXIF orientation applied; shorter side resized to size (Lanczos3), centre crop; alpha flattened onto black; 8-bit sRGB RGB, HWC';

/** The usual first run: nothing to build on, and nothing worth a log line. */
const NO_PREVIOUS = 'no complete earlier dataset there';

/** The previous dataset of this output, when a rerun can build on it; else why not. */
type Previous = { manifest: DatasetManifest; index: FileIndex } | { reason: string };

/**
 * The dataset in outDir as the base of an incremental run: readable through its manifest, with
 * the file index it names (sha256 checked), the same settings and classes as this run, the index's
 * rows agreeing with the manifest's shards, and every shard intact (size + sha256, as readers
 * check). Anything else means a full ingest, with the reason logged.
 */
async function previousDataset(outDir: string, settings: Record<string, unknown>, classes: string[]): Promise<Previous> {
  let manifest: DatasetManifest;
  try {
    manifest = await readManifest(join(outDir, MANIFEST_FILE));
  } catch {
    return { reason: NO_PREVIOUS };
  }
  if (manifest.files_index === undefined) return { reason: 'the earlier dataset has no file index (a part job or an older version wrote it)' };
  let index: FileIndex;
  try {
    index = await readIndex(outDir, manifest.files_index);
  } catch (e) {
    return { reason: `the earlier dataset: ${(e as Error).message}` };
  }
  const changed = Object.keys({ ...settings, ...index.settings }).filter((k) => JSON.stringify(settings[k]) !== JSON.stringify(index.settings[k]));
  if (changed.length > 0) return { reason: `the ingest settings changed (${changed.map((k) => `${k}: ${JSON.stringify(index.settings[k])} → ${JSON.stringify(settings[k])}`).join(', ')})` };
  // Labels are indices into the sorted class list: another list would relabel the kept rows.
  if (JSON.stringify(classes) !== JSON.stringify(manifest.classes) || JSON.stringify(classes) !== JSON.stringify(index.classes)) {
    return { reason: `the classes changed ([${manifest.classes.join(', ')}] → [${classes.join(', ')}]); labels are class indices` };
  }
  const rows = new Map(manifest.shards.map((s) => [s.path, 0]));
  for (const f of index.files) {
    if (f.shard === undefined) continue;
    if (!rows.has(f.shard)) return { reason: `its file index places ${f.id} in ${f.shard}, which the manifest does not list` };
    rows.set(f.shard, rows.get(f.shard)! + 1);
  }
  const off = manifest.shards.find((s) => rows.get(s.path) !== s.rows);
  if (off) return { reason: `its file index places ${rows.get(off.path)} rows in ${off.path}, the manifest ${off.rows}` };
  for (const s of manifest.shards) {
    try {
      await checkShard(join(outDir, s.path), s);
    } catch (e) {
      return { reason: `the earlier dataset is damaged: ${(e as Error).message}` };
    }
  }
  return { manifest, index };
}

/** size and mtime of each entry's file (null when it cannot be stat'ed: the decoder reports why). */
async function statEntries(entries: ScanEntry[]): Promise<SourceFile[]> {
  const out: SourceFile[] = new Array(entries.length);
  const CONCURRENT = 64;
  for (let i = 0; i < entries.length; i += CONCURRENT) {
    await Promise.all(
      entries.slice(i, i + CONCURRENT).map(async (e, j) => {
        const info = await stat(e.path).catch(() => null);
        out[i + j] = { id: e.id, size: info ? info.size : null, mtimeMs: info ? info.mtimeMs : null, label: e.label };
      }),
    );
  }
  return out;
}

/** Number after `${prefix}-` in a shard name, or -1. */
function shardNumber(prefix: string, path: string): number {
  const m = /^(.*)-(\d+)\.arrow$/.exec(path);
  return m && m[1] === prefix ? Number(m[2]) : -1;
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

  const strictStop = (path: string, reason: string) => new IngestInputError(`${path}: ${reason} (strict: stopping at the first unusable file)`);
  // Scan-level rejects belong to this part only when they fall into it (by position, like images).
  const scanRejected = takePart(scan.rejected, o.shardIndex, o.numShards);
  if (o.strict && scanRejected.length > 0) throw strictStop(scanRejected[0].path, scanRejected[0].reason);

  const outDir = resolve(o.outDir);
  const names = ingestOutputNames(o.shardIndex, o.numShards);
  try {
    await mkdir(outDir, { recursive: true });
  } catch (e) {
    throw new IngestInputError(`ingest.outDir ${o.outDir} cannot be created (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  // The previous dataset stays readable until the new one is whole (publishDataset); what a killed
  // run left behind goes now.
  const owns = (name: string) => name.startsWith(`${names.shardPrefix}-`) || name === names.manifest || name === names.rejected || /^files-[0-9a-f]{16}\.jsonl$/.test(name);
  const removed = await removeDatasetLeftovers(outDir, owns, names.manifest);
  if (removed.length > 0) log(`ingest: removed ${removed.length} file(s) left by an interrupted run: ${removed.join(', ')}`);

  // What decides a row besides its file. Incremental runs are for one job writing the whole
  // dataset: parts are contiguous runs of the sorted list, so one new file shifts the boundaries of
  // every later part, and their merged manifest has no index (the next single job ingests in full).
  const single = o.numShards === 1;
  const settings = {
    input: resolve(o.input),
    kind: scan.kind,
    size: o.size,
    unlabeled: o.unlabeled,
    limit_per_class: o.limitPerClass ?? null,
    max_input_pixels: o.maxInputPixels,
    preprocessing: PREPROCESSING,
    decoder: { sharp: sharp.versions.sharp, vips: sharp.versions.vips },
  };
  const sources = single ? await statEntries(entries) : entries.map((e) => ({ id: e.id, size: null, mtimeMs: null, label: e.label }));
  let previous: Previous | null = null;
  if (single && !o.full) {
    previous = await previousDataset(outDir, settings, classes);
    if ('reason' in previous && previous.reason !== NO_PREVIOUS) log(`ingest: full ingest: ${previous.reason}`);
  }
  const base = previous && 'manifest' in previous ? previous : null;
  const diff = base ? diffIndex(base.index.files, sources) : null;
  const toDecode = diff ? entries.filter((e) => diff.decode.has(e.id)) : entries;

  const info = schemaInfo('images', { imageShape: [o.size, o.size, 3] }, classes);
  // New shards take numbers after the kept ones', so publishing them never replaces a file the
  // previous manifest lists: it stays readable until the new manifest is in place.
  const startIndex = base ? 1 + Math.max(-1, ...base.manifest.shards.map((s) => shardNumber(names.shardPrefix, s.path))) : 0;
  const writer = new ShardWriter({ dir: outDir, schema: info, prefix: names.shardPrefix, startIndex, maxRows: o.maxRowsPerShard, maxBytes: o.maxBytesPerShard });
  const pool =
    toDecode.length > 0
      ? new Piscina({ filename: new URL('../data/decode-worker.mjs', import.meta.url).href, minThreads: o.workers, maxThreads: o.workers, idleTimeout: 1000 })
      : null;
  const stride = o.size * o.size * 3;
  // Rows in the order they go to the writer; their shard and row are known once it is finished.
  const written: IndexedFile[] = [];
  const rejectedById = new Map<string, string>();
  const indexed: IndexedFile[] = [];
  try {
    // 1. Previous shards: kept as they are, or rewritten (new name) without the rows that went.
    const layout: Array<{ kept: ShardFile } | { from: number; to: number }> = [];
    let shardsKept = 0;
    let shardsRewritten = 0;
    if (base && diff) {
      for (const f of diff.unchanged) {
        if (f.shard === undefined) {
          if (o.strict) throw strictStop(f.id, f.rejected!);
          rejectedById.set(f.id, f.rejected!);
        }
      }
      const dropFrom = new Set(base.index.files.filter((f) => diff.drop.has(f.id)).map((f) => f.shard!));
      const byId = new Map(diff.unchanged.map((f) => [f.id, f]));
      const byShard = new Map<string, IndexedFile[]>();
      for (const f of diff.unchanged) {
        if (f.shard === undefined) continue;
        if (!byShard.has(f.shard)) byShard.set(f.shard, []);
        byShard.get(f.shard)!.push(f);
      }
      for (const s of base.manifest.shards) {
        if (!dropFrom.has(s.path)) {
          layout.push({ kept: s });
          shardsKept++;
          indexed.push(...(byShard.get(s.path) ?? []));
          continue;
        }
        const from = writer.shardCount;
        for await (const batch of readShard<'images'>(join(outDir, s.path), { schema: 'images' })) {
          const { id, label, image } = batch.columns;
          const keep: number[] = [];
          for (let r = 0; r < batch.numRows; r++) if (!diff.drop.has(id[r])) keep.push(r);
          if (keep.length === 0) continue;
          const pixels = new Uint8Array(keep.length * stride);
          keep.forEach((r, i) => pixels.set(image.subarray(r * stride, (r + 1) * stride), i * stride));
          await writer.write({ id: keep.map((r) => id[r]), label: keep.map((r) => label[r]), image: pixels });
          for (const r of keep) {
            const f = byId.get(id[r]);
            if (!f) throw new Error(`ingest: ${s.path} holds ${id[r]}, which its file index does not list; rerun with full`);
            written.push({ ...f });
          }
        }
        await writer.cut();
        if (writer.shardCount > from) layout.push({ from, to: writer.shardCount });
        shardsRewritten++;
      }
    }

    // 2. New and changed files, decoded, into new shards after the others.
    const newFrom = writer.shardCount;
    const sourceById = new Map(sources.map((f) => [f.id, f]));
    let done = 0;
    o.onProgress?.(0, toDecode.length);
    if (pool) {
      const tasks: ScanEntry[][] = [];
      for (let i = 0; i < toDecode.length; i += o.batchSize) tasks.push(toDecode.slice(i, i + o.batchSize));
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
          const source = sourceById.get(batch[i].id)!;
          const err = result.errors[i];
          if (err !== null) {
            if (o.strict) throw strictStop(batch[i].id, err);
            rejectedById.set(batch[i].id, err);
            indexed.push({ ...source, rejected: err });
            continue;
          }
          pending.id.push(batch[i].id);
          pending.label.push(batch[i].label);
          pending.chunks.push(result.pixels.subarray(i * stride, (i + 1) * stride));
          written.push({ ...source });
        }
        done += batch.length;
        if (pending.id.length >= WRITE_BATCH_ROWS) await flush();
        o.onProgress?.(done, toDecode.length);
      }
      await flush();
    }
    const fresh = await writer.finish();
    if (fresh.length > newFrom) layout.push({ from: newFrom, to: fresh.length });
    let seq = 0;
    for (const s of fresh) {
      for (let row = 0; row < s.rows; row++, seq++) indexed.push(Object.assign(written[seq], { shard: s.path, row }));
    }
    const shards = layout.flatMap((l) => ('kept' in l ? [l.kept] : fresh.slice(l.from, l.to)));
    const rows = shards.reduce((n, s) => n + s.rows, 0);
    for (const f of diff?.unchanged ?? []) if (f.shard === undefined) indexed.push(f); // rejections kept without a retry
    indexed.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    const classCounts = new Array<number>(classes.length).fill(0);
    for (const f of indexed) if (f.shard !== undefined && f.label !== null) classCounts[f.label]++;
    // The full current list, as a fresh ingest would write it: scan rejects, then decoding's in id order.
    const rejected: ScanRejected[] = [...scanRejected, ...entries.filter((e) => rejectedById.has(e.id)).map((e) => ({ path: e.id, reason: rejectedById.get(e.id)! }))];

    const changes: IngestChanges = {
      mode: diff ? 'incremental' : 'full',
      reason: previous && 'reason' in previous && previous.reason !== NO_PREVIOUS ? previous.reason : o.full && single ? 'asked for (full)' : null,
      ...(diff ? diff.counts : { added: entries.length, changed: 0, removed: 0, unchanged: 0 }),
      decoded: toDecode.length,
      shards_kept: shardsKept,
      shards_rewritten: shardsRewritten,
      shards_new: fresh.length - newFrom,
    };
    await writeFileAtomic(join(outDir, names.rejected), rejected.map((r) => JSON.stringify(r) + '\n').join(''));
    // The index goes in under a new name before the manifest that names it: a crash in between
    // leaves the previous manifest naming the previous index, both intact.
    const filesIndex = single ? await writeIndex(outDir, { version: INDEX_VERSION, settings, classes, files: indexed }) : null;
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
      preprocessing: PREPROCESSING,
      ...(filesIndex ? { files_index: filesIndex } : {}),
      changes,
      ...(o.numShards > 1 ? { part: { index: o.shardIndex, count: o.numShards, ...partIdentity(o, scan.kind, limited) } } : {}),
    };
    const manifestPath = await publishDataset(outDir, fresh, manifest, names.manifest);
    await removeStaleShards(outDir, names.shardPrefix, new Set(shards.map((s) => s.path)));
    if (single) await removeStaleIndexes(outDir, filesIndex!.path);
    const seconds = (performance.now() - started) / 1000;
    const imagesPerSecond = toDecode.length / Math.max(seconds, 1e-9);
    if (diff) {
      log(
        `ingest: incremental: ${changes.added} added, ${changes.changed} changed, ${changes.removed} removed, ${changes.unchanged} unchanged; ` +
          `${changes.decoded} decoded; shards ${shardsKept} kept, ${shardsRewritten} rewritten, ${changes.shards_new} new`,
      );
    }
    log(`ingest: wrote ${rows} rows in ${shards.length} shards to ${outDir}, ${rejected.length} rejected, ${imagesPerSecond.toFixed(0)} images/s`);
    return { outDir, manifestPath, manifest, rejectedPath: join(outDir, names.rejected), rejected, rows, seconds, imagesPerSecond, changes };
  } catch (e) {
    await writer.abort();
    throw e;
  } finally {
    await pool?.destroy();
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

/** Shards of an earlier run that the new manifest does not list would otherwise linger beside ours. */
async function removeStaleShards(dir: string, prefix: string, keep: Set<string>): Promise<void> {
  const pattern = new RegExp(`^${prefix.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}-\\d{5,}\\.arrow$`);
  for (const f of await readdir(dir)) if (pattern.test(f) && !keep.has(f)) await rm(join(dir, f), { force: true });
}
