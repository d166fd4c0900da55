// The augmentation loader: re-batches a source of raw images, samples every view's parameters
// on the main thread, runs batches on a Piscina pool and yields ready view pairs in order,
// keeping at most `prefetch` batches in flight ahead of the trainer.
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { Piscina, transferableSymbol, valueSymbol } from 'piscina';
import { type AugmentOptions, type AugmentOptionsInput, resolveAugmentOptions, viewsPerImage } from './options.ts';
import { sampleViewParams, type ViewParams } from './params.ts';
import type { AugmentResult, AugmentTask } from './task.ts';

/** A batch of raw images as the data layer (Arrow shards) or an in-memory array supplies it. */
export interface RawImageBatch {
  ids: readonly string[];
  /** [N, H, W, 3] uint8 RGB; never modified or detached by the loader (it copies what it sends). */
  pixels: Uint8Array;
  height: number;
  width: number;
}

/** Anything that yields raw image batches: an async generator over shards, an array, ... */
export type ImageBatchSource = AsyncIterable<RawImageBatch> | Iterable<RawImageBatch>;

/** Splits one in-memory [N, H, W, 3] array into source batches of `chunk` images (views, no copy). */
export function arraySource(images: RawImageBatch, chunk = 1024): ImageBatchSource {
  const { ids, pixels, height, width } = images;
  const bytes = height * width * 3;
  return {
    *[Symbol.iterator]() {
      for (let i = 0; i < ids.length; i += chunk) {
        const end = Math.min(ids.length, i + chunk);
        yield { ids: ids.slice(i, end), pixels: pixels.subarray(i * bytes, end * bytes), height, width };
      }
    },
  };
}

export interface AugmentedBatch {
  ids: string[];
  /** Position of each image in the source order of this epoch; keys its random stream. */
  indices: number[];
  /** [N, S, S, 3]. */
  view1: Uint8Array | Float32Array;
  /** [N, S, S, 3] for the simclr preset, null for the one-view presets. */
  view2: Uint8Array | Float32Array | null;
  outputSize: number;
}

export interface AugmentPoolOptions {
  /** Worker threads; default: cores − 1 (the trainer keeps one), at least 1. */
  workers?: number;
  /** Worker module (tests swap in failing workers); default augment/worker.mjs. */
  filename?: string;
}

const DEFAULT_WORKER = fileURLToPath(new URL('./worker.mjs', import.meta.url));

function defaultWorkers(): number {
  return Math.max(1, availableParallelism() - 1);
}

/** A Piscina pool of augmentation workers, reusable across epochs. */
export class AugmentPool {
  readonly workers: number;
  private readonly piscina: Piscina<AugmentTask, AugmentResult>;
  private destroyed = false;

  constructor(options: AugmentPoolOptions = {}) {
    const workers = options.workers ?? defaultWorkers();
    if (!Number.isInteger(workers) || workers < 1) throw new Error(`augment.workers must be a positive integer, got ${workers}`);
    this.workers = workers;
    this.piscina = new Piscina({
      filename: options.filename ?? DEFAULT_WORKER,
      minThreads: workers,
      maxThreads: workers,
      // Tasks are whole batches; one at a time per worker keeps the order of completion close
      // to submission order and the memory bounded by the loader's prefetch.
      concurrentTasksPerWorker: 1,
      idleTimeout: 60_000,
      // With Piscina's default Atomics wake-ups, small quick batches during long synchronous
      // training steps on the main thread made the pool see a reply to a task it had already
      // settled ("Unexpected message from Worker", piscina 5.1): messages only, which costs
      // nothing measurable at whole-batch task sizes.
      atomics: 'disabled',
    });
    // Piscina reports pool-level faults as 'error' events; unheard, Node would crash the process
    // with them (seen after the main thread's wasm aborted). Failed tasks still reject their own
    // promises, which is where the loader reports them.
    this.piscina.on('error', () => {});
  }

  /** Runs one task; its pixel buffer is transferred (detached here) rather than copied. */
  run(task: AugmentTask): Promise<AugmentResult> {
    if (this.destroyed) return Promise.reject(new Error('augment pool is closed'));
    const movable = {
      get [transferableSymbol]() {
        return [task.pixels.buffer];
      },
      get [valueSymbol]() {
        return task;
      },
    };
    return this.piscina.run(Piscina.move(movable) as unknown as AugmentTask);
  }

  /** Terminates the workers; tasks still running are rejected. Safe to call twice. */
  async destroy(): Promise<void> {
    if (this.destroyed) return;
    this.destroyed = true;
    await this.piscina.destroy();
  }
}

export interface AugmentLoaderOptions extends AugmentOptionsInput, AugmentPoolOptions {
  /** Images per yielded batch (SimCLR uses large batches; 256 is a CPU-friendly default). */
  batchSize?: number;
  seed?: number;
  epoch?: number;
  /** Batches submitted ahead of the consumer; default 2 × workers so every worker has a next batch. */
  prefetch?: number;
  /** Drop a final batch smaller than batchSize (contrastive losses prefer full batches). */
  dropLast?: boolean;
  /**
   * Index of the source's first image in the epoch order (default 0). A run resumed in the middle
   * of an epoch passes the rest of the epoch as its source and the position it stopped at here, so
   * every image keeps the random stream (and views) it had in the uninterrupted run.
   */
  firstIndex?: number;
  /** Stops the loader: the pending next() rejects with the signal's reason. */
  signal?: AbortSignal;
  /** An existing pool to reuse (it is not destroyed at the end); default: a pool of its own. */
  pool?: AugmentPool;
}

interface ResolvedLoaderOptions {
  augment: AugmentOptions;
  batchSize: number;
  seed: number;
  epoch: number;
  prefetch: number;
  dropLast: boolean;
  firstIndex: number;
}

function resolveLoaderOptions(options: AugmentLoaderOptions, workers: number): ResolvedLoaderOptions {
  const { batchSize = 256, seed = 0, epoch = 0, prefetch = 2 * workers, dropLast = false, firstIndex = 0 } = options;
  const { workers: _w, filename: _f, signal: _s, pool: _p, batchSize: _b, seed: _sd, epoch: _e, prefetch: _pf, dropLast: _d, firstIndex: _fi, ...augmentInput } = options;
  const positive = (name: string, v: number) => {
    if (!Number.isInteger(v) || v < 1) throw new Error(`augment.${name} must be a positive integer, got ${v}`);
  };
  positive('batchSize', batchSize);
  positive('prefetch', prefetch);
  if (!Number.isSafeInteger(seed) || seed < 0) throw new Error(`augment.seed must be a non-negative integer, got ${seed}`);
  if (!Number.isInteger(epoch) || epoch < 0 || epoch > 0xffffffff) throw new Error(`augment.epoch must be an integer in [0, 2^32), got ${epoch}`);
  if (!Number.isInteger(firstIndex) || firstIndex < 0) throw new Error(`augment.firstIndex must be a non-negative integer, got ${firstIndex}`);
  return { augment: resolveAugmentOptions(augmentInput), batchSize, seed, epoch, prefetch, dropLast, firstIndex };
}

interface PendingBatch {
  ids: string[];
  indices: number[];
  pixels: Uint8Array;
  height: number;
  width: number;
}

/** Regroups source batches into batches of `batchSize` images of one size, copying into fresh buffers. */
async function* rebatch(source: ImageBatchSource, batchSize: number, dropLast: boolean, firstIndex: number): AsyncGenerator<PendingBatch> {
  let parts: Array<{ pixels: Uint8Array; ids: readonly string[] }> = [];
  let count = 0;
  let height = 0;
  let width = 0;
  let nextIndex = firstIndex;
  const flush = (): PendingBatch => {
    const bytes = height * width * 3;
    const pixels = new Uint8Array(count * bytes);
    const ids: string[] = [];
    let at = 0;
    for (const part of parts) {
      pixels.set(part.pixels, at);
      at += part.pixels.length;
      ids.push(...part.ids);
    }
    const indices = Array.from({ length: count }, (_, i) => nextIndex + i);
    nextIndex += count;
    parts = [];
    count = 0;
    return { ids, indices, pixels, height, width };
  };
  for await (const batch of source) {
    const n = batch.ids.length;
    const bytes = batch.height * batch.width * 3;
    if (!(batch.pixels instanceof Uint8Array) || batch.pixels.length !== n * bytes || !(bytes > 0)) {
      throw new Error(`augment source: batch starting at image ${batch.ids[0]} has ${batch.pixels?.length} bytes for ${n} images of ${batch.height}x${batch.width}x3`);
    }
    if (count > 0 && (batch.height !== height || batch.width !== width)) yield flush(); // sizes never mix in a batch
    height = batch.height;
    width = batch.width;
    for (let offset = 0; offset < n; ) {
      const take = Math.min(batchSize - count, n - offset);
      parts.push({ pixels: batch.pixels.subarray(offset * bytes, (offset + take) * bytes), ids: batch.ids.slice(offset, offset + take) });
      count += take;
      offset += take;
      if (count === batchSize) yield flush();
    }
  }
  if (count > 0 && !dropLast) yield flush();
}

/** Rejects as soon as `signal` aborts, otherwise settles like `promise`. */
function raceAbort<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return promise;
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (e) => {
        signal.removeEventListener('abort', onAbort);
        reject(e);
      },
    );
  });
}

function describeFailure(err: unknown, batch: PendingBatch): Error {
  const message = err instanceof Error ? err.message : String(err);
  // Errors thrown by the transforms already name the image; a crashed worker cannot, so name the batch.
  if (message.startsWith('augment: image ')) return new Error(message, { cause: err });
  const n = batch.ids.length;
  return new Error(`augment worker failed on images ${batch.ids[0]}..${batch.ids[n - 1]} (indices ${batch.indices[0]}..${batch.indices[n - 1]}): ${message}`, { cause: err });
}

/**
 * Augments one epoch of `source`: yields {ids, indices, view1, view2} batches in source order.
 * At most `prefetch` batches are submitted or finished-but-unclaimed at any time (the batch the
 * consumer holds is not counted), so a slow consumer stalls the source instead of filling memory.
 * Ends cleanly on return() (for-await break) and on `signal`; a worker error or crash rejects
 * next() with a message naming the image(s).
 */
export async function* augmentBatches(source: ImageBatchSource, options: AugmentLoaderOptions = {}): AsyncGenerator<AugmentedBatch, void, undefined> {
  const ownPool = options.pool === undefined;
  const pool = options.pool ?? new AugmentPool(options);
  let resolved: ResolvedLoaderOptions;
  try {
    resolved = resolveLoaderOptions(options, pool.workers);
  } catch (err) {
    if (ownPool) await pool.destroy();
    throw err;
  }
  const { augment, batchSize, seed, epoch, prefetch, dropLast, firstIndex } = resolved;
  const views = viewsPerImage(augment.preset);
  const signal = options.signal;
  // Free the threads at once on abort even if the consumer never calls next() again.
  const onAbort = () => void (ownPool ? pool.destroy() : undefined);
  signal?.addEventListener('abort', onAbort, { once: true });

  const batches = rebatch(source, batchSize, dropLast, firstIndex);
  const inflight: Array<Promise<AugmentedBatch>> = [];
  let exhausted = false;

  const submit = (batch: PendingBatch): Promise<AugmentedBatch> => {
    const params: ViewParams[][] = [];
    for (let view = 0; view < views; view++) {
      params.push(batch.indices.map((index) => sampleViewParams({ seed, epoch, index, view }, batch.height, batch.width, augment)));
    }
    const { ids, indices } = batch;
    const task: AugmentTask = { ids, pixels: batch.pixels, height: batch.height, width: batch.width, outputSize: augment.outputSize, output: augment.output, params };
    const done = pool.run(task).then(
      (result): AugmentedBatch => ({ ids, indices, view1: result.views[0], view2: result.views[1] ?? null, outputSize: augment.outputSize }),
      (err) => {
        throw describeFailure(err, batch);
      },
    );
    done.catch(() => {}); // observed later by the consumer; never an unhandled rejection meanwhile
    return done;
  };

  const fill = async () => {
    while (!exhausted && inflight.length < prefetch) {
      const next = await raceAbort(batches.next(), signal);
      if (next.done) exhausted = true;
      else inflight.push(submit(next.value));
    }
  };

  try {
    await fill();
    while (inflight.length > 0) {
      const ready = await raceAbort(inflight[0], signal);
      inflight.shift();
      // Top the queue up before handing the batch over, so the workers stay busy while the
      // consumer trains on it.
      await fill();
      yield ready;
      if (signal?.aborted) throw signal.reason;
    }
  } finally {
    signal?.removeEventListener('abort', onAbort);
    exhausted = true;
    await batches.return(undefined); // closes the source (its finally blocks, open shard readers)
    if (ownPool) await pool.destroy();
  }
}
