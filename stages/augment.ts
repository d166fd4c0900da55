// Augment stage: materialises `epochs` epochs of SimCLR view pairs of an images dataset into
// `views` shards + manifest, streaming the dataset shard batch by batch through the augment pool.
import { mkdir, readdir, rm } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { join, resolve } from 'node:path';
import { DEFAULT_PRESET, type AugmentOptions, type AugmentOptionsInput, resolveAugmentOptions } from '../augment/options.ts';
import { AugmentPool, augmentBatches, type RawImageBatch } from '../augment/pool.ts';
import { MANIFEST_FILE, ManifestError, publishDataset, readDataset, readManifest, removeDatasetLeftovers, type DatasetManifest } from '../data/manifest.ts';
import { SCHEMA_VERSION, schemaInfo } from '../data/schemas.ts';
import { DEFAULT_MAX_BYTES, DEFAULT_MAX_ROWS, ShardFormatError, ShardWriter } from '../data/shards.ts';

export interface AugmentStageOptions extends Omit<AugmentOptionsInput, 'output'> {
  /** images dataset directory (an ingest output). */
  data: string;
  /** Folder for the views shards and manifest.json; created if missing. */
  outDir: string;
  /** Epochs to materialise, numbered 0..epochs−1. Default 1. */
  epochs?: number;
  /** Keys every view's random stream with (epoch, index, view). Default 0. */
  seed?: number;
  /** Augmentation threads. Default: all cores (the main thread only writes shards). */
  workers?: number;
  /**
   * Images per worker task and per written record batch. Default: 256, fewer for large views so
   * a batch's view pairs stay within 32 MiB (the loader keeps 2 × workers batches in flight).
   */
  batchSize?: number;
  /** Rows per shard file before rolling over. Default 10,000 (DESIGN.md). */
  maxRowsPerShard?: number;
  /** Bytes per shard file before rolling over. Default 256 MiB (DESIGN.md). */
  maxBytesPerShard?: number;
  /** Called after every written batch with rows (view pairs) done and the total over all epochs. */
  onProgress?: (done: number, total: number) => void;
  /** Human-readable progress lines. */
  log?: (line: string) => void;
  signal?: AbortSignal;
}

export interface AugmentStageResult {
  outDir: string;
  manifestPath: string;
  manifest: DatasetManifest;
  /** View pairs written (input rows × epochs). */
  rows: number;
  seconds: number;
  pairsPerSecond: number;
}

/** Bad options or an unusable input dataset: the CLI exits 2. */
export class AugmentInputError extends Error {
  override name = 'AugmentInputError';
}

/** The default batchSize for views of side S: 256, or as many pairs as fit in 32 MiB (111 at 224 px). */
export function defaultAugmentBatchSize(outputSize: number): number {
  return Math.max(1, Math.min(256, Math.floor((32 * 2 ** 20) / (2 * outputSize * outputSize * 3))));
}

/** The augment stage's defaults; the CLI shows and hashes these. */
export const AUGMENT_DEFAULTS = {
  epochs: 1,
  preset: DEFAULT_PRESET,
  seed: 0,
  maxRowsPerShard: DEFAULT_MAX_ROWS,
  maxBytesPerShard: DEFAULT_MAX_BYTES,
} as const;

interface Resolved {
  data: string;
  outDir: string;
  epochs: number;
  seed: number;
  workers: number;
  /** Undefined: chosen from the output size once the dataset is read. */
  batchSize: number | undefined;
  maxRowsPerShard: number;
  maxBytesPerShard: number;
  augmentInput: AugmentOptionsInput;
}

function resolveStageOptions(options: AugmentStageOptions): Resolved {
  if (typeof options !== 'object' || options === null) throw new AugmentInputError('augment options must be an object');
  const { data, outDir, epochs, seed, workers, batchSize, maxRowsPerShard, maxBytesPerShard, onProgress, log, signal, ...augmentInput } = options;
  const defined = <T>(v: T | undefined, d: T): T => (v === undefined ? d : v);
  const r: Resolved = {
    data,
    outDir,
    epochs: defined(epochs, AUGMENT_DEFAULTS.epochs),
    seed: defined(seed, AUGMENT_DEFAULTS.seed),
    workers: defined(workers, availableParallelism()),
    batchSize,
    maxRowsPerShard: defined(maxRowsPerShard, AUGMENT_DEFAULTS.maxRowsPerShard),
    maxBytesPerShard: defined(maxBytesPerShard, AUGMENT_DEFAULTS.maxBytesPerShard),
    augmentInput,
  };
  if (typeof data !== 'string' || data === '') throw new AugmentInputError('augment.data must be an images dataset folder');
  if (typeof outDir !== 'string' || outDir === '') throw new AugmentInputError('augment.outDir must be a folder path');
  if (resolve(data) === resolve(outDir)) throw new AugmentInputError(`augment.outDir must differ from augment.data (${data})`);
  const int = (name: 'epochs' | 'seed' | 'workers' | 'batchSize' | 'maxRowsPerShard' | 'maxBytesPerShard', min: number, max = Number.MAX_SAFE_INTEGER) => {
    const v = r[name];
    if (v === undefined) return;
    if (!Number.isInteger(v) || v < min || v > max) throw new AugmentInputError(`augment.${name} must be an integer in [${min}, ${max}], got ${JSON.stringify(v)}`);
  };
  // Epoch numbers key the Philox streams as 32-bit words.
  int('epochs', 1, 2 ** 32);
  int('seed', 0);
  int('workers', 1, 256);
  int('batchSize', 1, 65_536);
  int('maxRowsPerShard', 1);
  int('maxBytesPerShard', 1);
  for (const [name, f] of [['onProgress', onProgress], ['log', log]] as const) {
    if (f !== undefined && typeof f !== 'function') throw new AugmentInputError(`augment.${name} must be a function`);
  }
  if (signal !== undefined && !(signal instanceof AbortSignal)) throw new AugmentInputError('augment.signal must be an AbortSignal');
  if ((augmentInput as { output?: unknown }).output !== undefined) {
    throw new AugmentInputError('augment.output cannot be set here: views shards always hold uint8 pixels');
  }
  return r;
}

/**
 * The transform both views go through. simclr is itself a two-view preset; finetune (crop + flip)
 * yields one view per image, so its options run as a two-view transform: sampleViewParams only
 * branches on the preset for eval, so the pairs are exactly two independent finetune views.
 * eval is refused: its centre crop would make both views of every pair identical.
 */
function resolveViewsTransform(input: AugmentOptionsInput, defaultSize: number): AugmentOptions {
  let o: AugmentOptions;
  try {
    o = resolveAugmentOptions({ outputSize: defaultSize, ...Object.fromEntries(Object.entries(input).filter(([, v]) => v !== undefined)), output: 'uint8' });
  } catch (e) {
    throw new AugmentInputError((e as Error).message);
  }
  if (o.preset === 'eval') throw new AugmentInputError('augment.preset must be simclr or finetune for view pairs, got eval (its centre crop makes both views identical)');
  return { ...o, preset: 'simclr' };
}

/** Runs the augment stage; see AugmentStageOptions. Holds no state between calls. */
export async function augmentStage(options: AugmentStageOptions): Promise<AugmentStageResult> {
  const o = resolveStageOptions(options);
  const log = options.log ?? (() => undefined);
  const started = performance.now();

  let input: DatasetManifest;
  try {
    input = await readManifest(o.data);
  } catch (e) {
    if (e instanceof ManifestError) throw new AugmentInputError(`augment.data: ${e.message}`);
    throw e;
  }
  if (input.schema !== 'images') throw new AugmentInputError(`augment.data: ${join(o.data, MANIFEST_FILE)} holds the ${input.schema} schema, expected images`);
  if (input.rows === 0) throw new AugmentInputError(`augment.data: ${o.data} has no images`);
  const [height, width] = input.image_shape!;
  // Square views; for a non-square dataset the default keeps the views no larger than its shorter side.
  const augment = resolveViewsTransform(o.augmentInput, Math.min(height, width));
  const requestedPreset = o.augmentInput.preset ?? 'simclr';
  const S = augment.outputSize;
  const batchSize = o.batchSize ?? defaultAugmentBatchSize(S);
  const total = input.rows * o.epochs;

  const outDir = resolve(o.outDir);
  try {
    await mkdir(outDir, { recursive: true });
  } catch (e) {
    throw new AugmentInputError(`augment.outDir ${o.outDir} cannot be created (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  // The previous views stay readable until the new ones are whole (publishDataset); what a killed
  // run left behind goes now.
  const removed = await removeDatasetLeftovers(outDir, (name) => name.startsWith('shard-') || name === MANIFEST_FILE);
  if (removed.length > 0) log(`augment: removed ${removed.length} file(s) left by an interrupted run: ${removed.join(', ')}`);
  log(`augment: ${input.rows} images ${height}x${width} from ${o.data}, ${o.epochs} epoch(s) of ${requestedPreset} pairs at ${S}x${S}, ${o.workers} worker(s)`);

  const info = schemaInfo('views', { imageShape: [S, S, 3] }, input.classes);
  const writer = new ShardWriter({ dir: outDir, schema: info, prefix: 'shard', maxRows: o.maxRowsPerShard, maxBytes: o.maxBytesPerShard });
  const pool = new AugmentPool({ workers: o.workers });
  const classCounts = new Array<number>(input.classes.length).fill(0);
  let done = 0;
  try {
    options.onProgress?.(0, total);
    for (let epoch = 0; epoch < o.epochs; epoch++) {
      // No shuffling: every view is keyed by (seed, epoch, index, view) with index = the row's
      // position in the dataset, so the views do not depend on the order rows are processed in,
      // and a trainer reading these shards shuffles rows itself. Dataset order also lets rows of
      // one epoch be checked against the input row for row.
      const source = datasetSource(o.data, input, classCounts);
      const batches = augmentBatches(source, { ...augment, pool, batchSize, seed: o.seed, epoch, signal: options.signal });
      for await (const b of batches) {
        const n = b.ids.length;
        await writer.write({ id: b.ids, epoch: new Int32Array(n).fill(epoch), view1: b.view1 as Uint8Array, view2: b.view2 as Uint8Array });
        done += n;
        options.onProgress?.(done, total);
      }
      log(`augment: epoch ${epoch + 1}/${o.epochs} done (${done}/${total} pairs)`);
    }
    const shards = await writer.finish();
    const rows = shards.reduce((n, s) => n + s.rows, 0);
    if (rows !== total) throw new Error(`augment: wrote ${rows} view pairs, expected ${total} (${input.rows} images × ${o.epochs} epochs)`);
    const manifest: DatasetManifest = {
      schema_version: SCHEMA_VERSION,
      schema: 'views',
      rows,
      classes: input.classes,
      // Counted from the labels read, over all epochs: a class's rows here are its images × epochs.
      class_counts: Object.fromEntries(input.classes.map((c, i) => [c, classCounts[i]])),
      image_shape: [S, S, 3],
      shards,
      source: { data: resolve(o.data), rows: input.rows, image_shape: input.image_shape, shards: input.shards.map((s) => ({ path: s.path, sha256: s.sha256 })) },
      augment: { ...augment, preset: requestedPreset, seed: o.seed, epochs: o.epochs },
    };
    const manifestPath = await publishDataset(outDir, shards, manifest);
    await removeStaleShards(outDir, new Set(shards.map((s) => s.path)));
    const seconds = (performance.now() - started) / 1000;
    const pairsPerSecond = rows / Math.max(seconds, 1e-9);
    log(`augment: wrote ${rows} view pairs in ${shards.length} shards to ${outDir}, ${pairsPerSecond.toFixed(0)} pairs/s`);
    return { outDir, manifestPath, manifest, rows, seconds, pairsPerSecond };
  } catch (e) {
    await writer.abort();
    if (e instanceof ManifestError || e instanceof ShardFormatError) throw new AugmentInputError(`augment.data: ${e.message}`);
    throw e;
  } finally {
    await pool.destroy();
  }
}

/**
 * The images dataset as loader source batches, one shard record batch at a time (the loader
 * copies what it sends to workers, so the Arrow buffers are only borrowed). Counts labels as it
 * goes and checks the rows against the manifest.
 */
async function* datasetSource(dir: string, manifest: DatasetManifest, classCounts: number[]): AsyncGenerator<RawImageBatch> {
  const [height, width] = manifest.image_shape!;
  const path = join(dir, MANIFEST_FILE);
  let rows = 0;
  for await (const batch of readDataset<'images'>(dir, { schema: 'images' })) {
    const { id, label, image } = batch.columns;
    if (image.length !== batch.numRows * height * width * 3) {
      throw new ManifestError(join(dir, batch.shard), `images are not ${height}x${width}x3 as the manifest's image_shape says`);
    }
    for (const l of label) {
      if (l === null) continue;
      if (!(l >= 0 && l < classCounts.length)) throw new ManifestError(join(dir, batch.shard), `label ${l} is outside the manifest's ${classCounts.length} classes`);
      classCounts[l]++;
    }
    rows += batch.numRows;
    if (rows > manifest.rows) throw new ManifestError(path, `rows is ${manifest.rows} but the shards hold more`);
    yield { ids: id, pixels: image, height, width };
  }
  if (rows !== manifest.rows) throw new ManifestError(path, `rows is ${manifest.rows} but the shards hold ${rows}`);
}

/** Shards of an earlier run with more shards than this one would otherwise linger beside ours. */
async function removeStaleShards(dir: string, keep: Set<string>): Promise<void> {
  for (const f of await readdir(dir)) if (/^shard-\d{5}\.arrow$/.test(f) && !keep.has(f)) await rm(join(dir, f), { force: true });
}
