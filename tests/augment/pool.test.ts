// The Piscina-backed loader: transfer, determinism across worker counts, order, backpressure,
// errors, crashes and shutdown.
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { fileURLToPath } from 'node:url';
import { resolveAugmentOptions } from '../../augment/options.ts';
import { sampleViewParams } from '../../augment/params.ts';
import { arraySource, augmentBatches, AugmentPool, type AugmentedBatch, type RawImageBatch } from '../../augment/pool.ts';
import { runAugmentTask, type AugmentTask } from '../../augment/task.ts';
import { applyView } from '../../augment/transform.ts';

const H = 12;
const W = 10;
const S = 8;
const N = 23;

function images(n = N): RawImageBatch {
  const pixels = Uint8Array.from({ length: n * H * W * 3 }, (_, i) => (i * 2654435761) >>> 24);
  return { ids: Array.from({ length: n }, (_, i) => `img-${i}`), pixels, height: H, width: W };
}

async function collect(it: AsyncIterable<AugmentedBatch>): Promise<AugmentedBatch[]> {
  const out: AugmentedBatch[] = [];
  for await (const b of it) out.push(b);
  return out;
}

function concat(batches: AugmentedBatch[], key: 'view1' | 'view2'): number[] {
  return batches.flatMap((b) => Array.from(b[key] ?? []));
}

const fixture = (name: string) => fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url));

describe('AugmentPool', () => {
  let pool: AugmentPool;
  beforeAll(() => {
    pool = new AugmentPool({ workers: 2 });
  });
  afterAll(() => pool.destroy());

  it('transfers the pixel buffer to the worker instead of copying it', async () => {
    const { ids, pixels } = images(3);
    const o = resolveAugmentOptions({ outputSize: S });
    const params = [ids.map((_, index) => sampleViewParams({ seed: 1, epoch: 0, index, view: 0 }, H, W, o))];
    const task: AugmentTask = { ids, pixels: pixels.slice(), height: H, width: W, outputSize: S, output: 'uint8', params };
    const expected = runAugmentTask({ ...task, pixels: pixels.slice() });
    const pending = pool.run(task);
    expect(task.pixels.byteLength).toBe(0); // detached: the bytes now belong to the worker
    const result = await pending;
    expect(result.views[0]).toEqual(expected.views[0]);
  });

  it('reuses one pool across epochs without destroying it', async () => {
    const a = await collect(augmentBatches(arraySource(images()), { pool, batchSize: 8, seed: 3, epoch: 0, outputSize: S }));
    const b = await collect(augmentBatches(arraySource(images()), { pool, batchSize: 8, seed: 3, epoch: 1, outputSize: S }));
    expect(concat(a, 'view1')).not.toEqual(concat(b, 'view1')); // a new epoch draws new views
  });
});

describe('augmentBatches', () => {
  it('yields every image once, in order, with both views equal to the main-thread computation', async () => {
    const src = images();
    const batches = await collect(augmentBatches(arraySource(src, 5), { workers: 2, batchSize: 8, seed: 9, epoch: 2, outputSize: S }));
    expect(batches.map((b) => b.ids.length)).toEqual([8, 8, 7]);
    expect(batches.flatMap((b) => b.ids)).toEqual(src.ids);
    expect(batches.flatMap((b) => b.indices)).toEqual([...Array(N).keys()]);
    const o = resolveAugmentOptions({ outputSize: S });
    const bytes = H * W * 3;
    const view = (index: number, v: number) =>
      Array.from(applyView({ data: src.pixels.subarray(index * bytes, (index + 1) * bytes), height: H, width: W }, sampleViewParams({ seed: 9, epoch: 2, index, view: v }, H, W, o), S));
    expect(concat(batches, 'view1')).toEqual([...Array(N).keys()].flatMap((i) => view(i, 0)));
    expect(concat(batches, 'view2')).toEqual([...Array(N).keys()].flatMap((i) => view(i, 1)));
    expect(concat(batches, 'view1')).not.toEqual(concat(batches, 'view2'));
    expect(src.pixels.byteLength).toBe(N * bytes); // the caller's pixels are copied, never detached
  });

  it('gives byte-identical views for one seed whatever the workers, batch size and prefetch', async () => {
    const one = await collect(augmentBatches(arraySource(images()), { workers: 1, batchSize: 23, prefetch: 1, seed: 4, outputSize: S }));
    const two = await collect(augmentBatches(arraySource(images(), 3), { workers: 2, batchSize: 4, prefetch: 5, seed: 4, outputSize: S }));
    expect(concat(two, 'view1')).toEqual(concat(one, 'view1'));
    expect(concat(two, 'view2')).toEqual(concat(one, 'view2'));
    const otherSeed = await collect(augmentBatches(arraySource(images()), { workers: 1, batchSize: 23, seed: 5, outputSize: S }));
    expect(concat(otherSeed, 'view1')).not.toEqual(concat(one, 'view1'));
  });

  it('supports one-view presets, float32 output and dropLast', async () => {
    const batches = await collect(augmentBatches(arraySource(images()), { workers: 1, batchSize: 10, dropLast: true, preset: 'eval', outputSize: S, output: 'float32' }));
    expect(batches.map((b) => b.ids.length)).toEqual([10, 10]);
    expect(batches[0].view2).toBeNull();
    expect(batches[0].view1).toBeInstanceOf(Float32Array);
    const u8 = await collect(augmentBatches(arraySource(images()), { workers: 1, batchSize: 10, dropLast: true, preset: 'eval', outputSize: S }));
    expect(Array.from(batches[0].view1)).toEqual(Array.from(u8[0].view1, (v) => Math.fround(v / 255)));
  });

  it('keeps at most `prefetch` batches ahead of a slow consumer', async () => {
    let pulled = 0;
    const src = images();
    async function* counting() {
      for (let i = 0; i < N; i++) {
        pulled++;
        yield { ids: [src.ids[i]], pixels: src.pixels.subarray(i * H * W * 3, (i + 1) * H * W * 3), height: H, width: W };
      }
    }
    const it = augmentBatches(counting(), { workers: 1, batchSize: 1, prefetch: 3, outputSize: S });
    await it.next(); // the consumer now holds batch 0 and is "training"
    await new Promise((r) => setTimeout(r, 300));
    expect(pulled).toBe(1 + 3);
    await it.next();
    await new Promise((r) => setTimeout(r, 100));
    expect(pulled).toBe(2 + 3);
    await it.return(undefined);
  });

  it('names the image when a transform fails in a worker', async () => {
    const src = images(6);
    const ids = ['a', 'b', 'c', 'poison', 'e', 'f'];
    const run = collect(augmentBatches(arraySource({ ...src, ids }), { workers: 1, batchSize: 3, outputSize: S, filename: fixture('poison-worker.mjs') }));
    await expect(run).rejects.toThrow(/augment: image poison \(view 1\): crop .* is outside the 12x10 image/);
  });

  it('rejects instead of hanging when a worker dies, naming the batch', async () => {
    const run = collect(augmentBatches(arraySource(images(4)), { workers: 1, batchSize: 2, outputSize: S, filename: fixture('crash-worker.mjs') }));
    await expect(run).rejects.toThrow(/augment worker failed on images img-0\.\.img-1 \(indices 0\.\.1\): worker exited with code: 3/);
  });

  it('rejects bad loader options naming the field', async () => {
    await expect(collect(augmentBatches(arraySource(images()), { workers: 1, batchSize: 0 }))).rejects.toThrow('augment.batchSize must be a positive integer, got 0');
    await expect(collect(augmentBatches(arraySource(images()), { workers: 1, minScale: 2 }))).rejects.toThrow('augment.minScale must be in (0, 1]');
    expect(() => new AugmentPool({ workers: 0 })).toThrow('augment.workers must be a positive integer, got 0');
    await expect(collect(augmentBatches([{ ids: ['x'], pixels: new Uint8Array(5), height: H, width: W }], { workers: 1 }))).rejects.toThrow(
      /batch starting at image x has 5 bytes for 1 images of 12x10x3/,
    );
  });

  it('closes the source and its own pool when the consumer breaks out', async () => {
    let closed = false;
    const src = images();
    function* source() {
      try {
        for (let i = 0; i < N; i++) yield { ids: [src.ids[i]], pixels: src.pixels.subarray(i * H * W * 3, (i + 1) * H * W * 3), height: H, width: W };
      } finally {
        closed = true;
      }
    }
    const destroy = vi.spyOn(AugmentPool.prototype, 'destroy');
    let seen = 0;
    for await (const b of augmentBatches(source(), { workers: 1, batchSize: 2, outputSize: S })) {
      seen += b.ids.length;
      if (seen >= 4) break;
    }
    expect(closed).toBe(true);
    expect(destroy).toHaveBeenCalledTimes(1);
    destroy.mockRestore();
  });

  it('stops on an AbortSignal: the pending next() rejects with the reason and the pool is destroyed', async () => {
    const controller = new AbortController();
    const destroy = vi.spyOn(AugmentPool.prototype, 'destroy');
    // An endless source: only the abort can end this loop.
    const src = images(1);
    function* endless() {
      for (;;) yield src;
    }
    const it = augmentBatches(endless(), { workers: 1, batchSize: 4, outputSize: S, signal: controller.signal });
    expect((await it.next()).done).toBe(false);
    const pending = it.next();
    controller.abort(new Error('user stop'));
    await expect(pending).rejects.toThrow('user stop');
    expect(destroy).toHaveBeenCalled();
    expect((await it.next()).done).toBe(true); // finished, not hanging
    destroy.mockRestore();
  });
});
