// Benchmark of SimCLR augmentation: view pairs per second through the worker pool on CIFAR-10
// (32 px, no blur) and on ~500x375 photos made from it (224 px crops with blur), for 1 and 2
// workers; `--ops` times each op as typed-array code against sharp; `--pool` measures how long
// the trainer waits on the iterator for consumers slower and faster than augmentation.
// usage: npm run bench:augment [-- --json] [-- --images 10000] [-- --ops] [-- --pool]
import { readdirSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import sharp from 'sharp';
import { applyView } from '../augment/transform.ts';
import * as ops from '../augment/ops.ts';
import { resolveAugmentOptions } from '../augment/options.ts';
import { sampleViewParams } from '../augment/params.ts';
import { arraySource, augmentBatches, AugmentPool, type RawImageBatch } from '../augment/pool.ts';

const { values: args } = parseArgs({
  options: {
    json: { type: 'boolean', default: false },
    images: { type: 'string', default: '10000' },
    photos: { type: 'string', default: '256' },
    ops: { type: 'boolean', default: false },
    pool: { type: 'boolean', default: false },
    workers: { type: 'string', default: '1,2' },
    data: { type: 'string', default: join(import.meta.dirname, '../../shared/datasets/cifar10/train') },
  },
});

// sharp is loaded on the main thread before any worker starts (libvips must not be first
// initialised inside a worker thread), and kept single-threaded so timings compare per core.
sharp.concurrency(1);
sharp.cache(false);

const results: Array<Record<string, unknown>> = [];
function report(row: Record<string, unknown>): void {
  results.push(row);
  if (args.json) console.log(JSON.stringify(row));
}

/** The first `count` CIFAR training images (round-robin over classes), decoded to raw RGB. */
async function loadCifar(dir: string, count: number): Promise<RawImageBatch> {
  const classes = readdirSync(dir).sort();
  const lists = classes.map((c) => readdirSync(join(dir, c)).sort().map((f) => join(dir, c, f)));
  const files: string[] = [];
  for (let i = 0; files.length < count; i++) {
    let any = false;
    for (const list of lists) {
      if (i < list.length && files.length < count) {
        files.push(list[i]);
        any = true;
      }
    }
    if (!any) break;
  }
  const pixels = new Uint8Array(files.length * 32 * 32 * 3);
  const chunk = 64;
  for (let i = 0; i < files.length; i += chunk) {
    const decoded = await Promise.all(files.slice(i, i + chunk).map((f) => sharp(f).removeAlpha().raw().toBuffer({ resolveWithObject: true })));
    decoded.forEach(({ data, info }, j) => {
      if (info.width !== 32 || info.height !== 32 || info.channels !== 3) throw new Error(`${files[i + j]}: expected 32x32 RGB, got ${info.width}x${info.height}x${info.channels}`);
      pixels.set(data, (i + j) * 3072);
    });
  }
  return { ids: files.map((f) => f.slice(dir.length + 1)), pixels, height: 32, width: 32 };
}

/** Upscales CIFAR images to 500x375 "photos" with sharp (lanczos3), as raw RGB. */
async function makePhotos(cifar: RawImageBatch, count: number): Promise<RawImageBatch> {
  const W = 500;
  const H = 375;
  const pixels = new Uint8Array(count * H * W * 3);
  for (let i = 0; i < count; i++) {
    const src = cifar.pixels.subarray(i * 3072, (i + 1) * 3072);
    const data = await sharp(src, { raw: { width: 32, height: 32, channels: 3 } }).resize(W, H, { fit: 'fill' }).raw().toBuffer();
    pixels.set(data, i * H * W * 3);
  }
  return { ids: cifar.ids.slice(0, count), pixels, height: H, width: W };
}

/** View pairs per second for one epoch over `images` (after a warm-up pass that starts the workers). */
async function pairsPerSecond(images: RawImageBatch, workers: number, outputSize: number, batchSize: number): Promise<number> {
  const pool = new AugmentPool({ workers });
  try {
    const warm = { ...images, ids: images.ids.slice(0, batchSize * workers), pixels: images.pixels.subarray(0, batchSize * workers * images.height * images.width * 3) };
    for await (const _ of augmentBatches(arraySource(warm), { pool, batchSize, outputSize, seed: 1 })) void _;
    const t0 = performance.now();
    let n = 0;
    for await (const b of augmentBatches(arraySource(images), { pool, batchSize, outputSize, seed: 1, epoch: 1 })) n += b.ids.length;
    return n / ((performance.now() - t0) / 1000);
  } finally {
    await pool.destroy();
  }
}

/** Mean µs per call of f (sync or async), after a warm-up. */
async function timeCall(f: () => unknown, minMs = 300): Promise<number> {
  for (let i = 0; i < 20; i++) await f();
  let n = 0;
  const t0 = performance.now();
  while (performance.now() - t0 < minMs) {
    await f();
    n++;
  }
  return ((performance.now() - t0) * 1000) / n;
}

async function opsBench(cifar: RawImageBatch, photos: RawImageBatch): Promise<void> {
  for (const [name, src, S] of [
    ['cifar', { data: cifar.pixels.subarray(0, 3072), height: 32, width: 32 }, 32],
    ['photo', { data: photos.pixels.subarray(0, photos.height * photos.width * 3), height: photos.height, width: photos.width }, 224],
  ] as const) {
    const crop = { top: Math.floor(src.height * 0.1), left: Math.floor(src.width * 0.2), height: Math.floor(src.height * 0.7), width: Math.floor(src.width * 0.6) };
    const view = resizedView();
    function resizedView() {
      return ops.resizedCrop(src, crop, S, S);
    }
    const raw = { raw: { width: S, height: S, channels: 3 as const } };
    const work = { data: view.slice(), height: S, width: S };
    const reset = () => work.data.set(view);
    const k = Math.max(3, Math.floor(S / 10) | 1);
    const rows: Array<[string, () => unknown, () => unknown]> = [
      ['crop+resize', () => ops.resizedCrop(src, crop, S, S, work.data), () => sharp(src.data, { raw: { width: src.width, height: src.height, channels: 3 } }).extract(crop).resize(S, S, { kernel: 'linear', fit: 'fill' }).raw().toBuffer()],
      ['flip', () => ops.hflipInPlace(work), () => sharp(view, raw).flop().raw().toBuffer()],
      ['brightness', () => (reset(), ops.adjustBrightnessInPlace(work, 1.3)), () => sharp(view, raw).linear(1.3, 0).raw().toBuffer()],
      ['contrast', () => (reset(), ops.adjustContrastInPlace(work, 1.3)), () => sharp(view, raw).linear(1.3, -0.3 * 110).raw().toBuffer()],
      ['saturation', () => (reset(), ops.adjustSaturationInPlace(work, 1.3)), () => sharp(view, raw).modulate({ saturation: 1.3 }).raw().toBuffer()],
      ['hue', () => (reset(), ops.adjustHueInPlace(work, 0.1)), () => sharp(view, raw).modulate({ hue: 36 }).raw().toBuffer()],
      ['grayscale', () => (reset(), ops.grayscaleInPlace(work)), () => sharp(view, raw).grayscale().toColourspace('srgb').raw().toBuffer()],
      ['blur', () => (reset(), ops.gaussianBlurInPlace(work, k, 1.0)), () => sharp(view, raw).blur(1.0).raw().toBuffer()],
    ];
    if (S <= 32) rows.pop(); // no blur at CIFAR size
    // The whole view in one sharp pipeline, the best case for sharp's per-call overhead.
    const params = sampleViewParams({ seed: 1, epoch: 0, index: 0, view: 0 }, src.height, src.width, resolveAugmentOptions({ outputSize: S }));
    rows.push([
      'whole view',
      () => applyView(src, { ...params, crop, flip: true, grayscale: false, blur: S > 32 ? { kernelSize: k, sigma: 1 } : null, jitter: { order: ['brightness', 'contrast', 'saturation', 'hue'], brightness: 1.3, contrast: 1.3, saturation: 1.3, hue: 0.1 } }, S),
      () => {
        let p = sharp(src.data, { raw: { width: src.width, height: src.height, channels: 3 } }).extract(crop).resize(S, S, { kernel: 'linear', fit: 'fill' }).flop().linear(1.3 * 1.3, -0.3 * 110).modulate({ saturation: 1.3, hue: 36 });
        if (S > 32) p = p.blur(1.0);
        return p.raw().toBuffer();
      },
    ]);
    for (const [op, js, sh] of rows) {
      const jsUs = await timeCall(js);
      const sharpUs = await timeCall(sh);
      report({ bench: 'augment-op', op, size: S, typed_array_us: round(jsUs), sharp_us: round(sharpUs), faster: jsUs <= sharpUs ? 'typed-array' : 'sharp' });
    }
  }
}

/** How long next() blocks for consumers that take `delayMs` per batch (sleeping, like a trainer awaiting a backend). */
async function poolExperiment(images: RawImageBatch): Promise<void> {
  const workers = 2;
  const batchSize = 256;
  const pool = new AugmentPool({ workers });
  try {
    const warm = { ...images, ids: images.ids.slice(0, 512), pixels: images.pixels.subarray(0, 512 * 3072) };
    for await (const _ of augmentBatches(arraySource(warm), { pool, batchSize, outputSize: 32 })) void _;
    for (const delayMs of [0, 50, 200]) {
      const waits: number[] = [];
      const t0 = performance.now();
      const it = augmentBatches(arraySource(images), { pool, batchSize, outputSize: 32, epoch: delayMs + 1 });
      for (;;) {
        const w0 = performance.now();
        const r = await it.next();
        if (r.done) break;
        waits.push(performance.now() - w0);
        if (delayMs > 0) await new Promise((res) => setTimeout(res, delayMs));
      }
      const total = performance.now() - t0;
      const steady = waits.slice(1);
      report({
        bench: 'augment-pool',
        consumer_ms_per_batch: delayMs,
        workers,
        prefetch: 2 * workers,
        batches: waits.length,
        first_wait_ms: round(waits[0]),
        mean_wait_ms: round(steady.reduce((a, b) => a + b, 0) / Math.max(1, steady.length)),
        max_wait_ms: round(Math.max(0, ...steady)),
        waiting_fraction: round(waits.reduce((a, b) => a + b, 0) / total),
        pairs_per_second: Math.round((images.ids.length / total) * 1000),
      });
    }
  } finally {
    await pool.destroy();
  }
}

function round(x: number): number {
  return Math.round(x * 100) / 100;
}

const workerCounts = args.workers.split(',').map(Number);
const cifar = await loadCifar(args.data, Number(args.images));
const photos = await makePhotos(cifar, Math.min(Number(args.photos), cifar.ids.length));
const load = () => loadavg().map((l) => round(l));
if (!args.json) console.log(`${cifar.ids.length} CIFAR images, ${photos.ids.length} photos ${photos.width}x${photos.height}; load average ${load().join(' ')}`);

if (args.ops) await opsBench(cifar, photos);
if (args.pool) await poolExperiment(cifar);
if (!args.ops && !args.pool) {
  for (const workers of workerCounts) {
    const pps = await pairsPerSecond(cifar, workers, 32, 256);
    report({ bench: 'augment', preset: 'simclr', size: 32, blur: false, workers, images: cifar.ids.length, pairs_per_second: Math.round(pps), load1: load()[0] });
  }
  for (const workers of workerCounts) {
    const pps = await pairsPerSecond(photos, workers, 224, 16);
    report({ bench: 'augment', preset: 'simclr', size: 224, source: `${photos.width}x${photos.height}`, blur: true, workers, images: photos.ids.length, pairs_per_second: Math.round(pps), load1: load()[0] });
  }
}
if (!args.json) console.table(results);
