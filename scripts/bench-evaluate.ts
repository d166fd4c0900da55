// Benchmark: inference images/s of the evaluate stage's two passes on real CIFAR-10 images at 32 px:
// encoder embeddings (ResNet-20 features) and classifier logits (encoder + first head block + linear).
// usage: npm run bench:evaluate [-- --json] [-- --backend onnxruntime,wasm] [-- --images 2048] [-- --batch 256] [-- --width 1,0.5]
//        (several backends: one child process each)
import { execFileSync } from 'node:child_process';
import { loadavg } from 'node:os';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import * as tf from '@tensorflow/tfjs';
import { loadImages } from '../data/memory.ts';
import { buildClassifier } from '../models/classifier.ts';
import { useBackend, type BackendName } from '../models/engine/backend.ts';
import { buildSimclrModel, embed } from '../models/simclr.ts';

const CIFAR_RUN = process.env.BENCH_CIFAR_DATASET;

interface Row {
  bench: 'evaluate';
  pass: 'embeddings' | 'classifier';
  model: string;
  /** Width multiplier of the encoder (0.5: the half-size students of distillation). */
  width: number;
  backend: string;
  batch: number;
  images: number;
  images_per_second: number;
  load_average: number;
}

/** Real CIFAR-10 pixels: an ingested dataset (BENCH_CIFAR_DATASET) or the JPEG folder ingested to a temporary dir. */
async function cifarPixels(images: number): Promise<Uint8Array> {
  let dir = CIFAR_RUN;
  if (!dir) {
    const { ingest } = await import('../stages/ingest.ts');
    const { mkdtemp } = await import('node:fs/promises');
    const { tmpdir } = await import('node:os');
    const { join } = await import('node:path');
    dir = await mkdtemp(join(tmpdir(), 'bench-evaluate-'));
    const input = fileURLToPath(new URL('../../shared/datasets/cifar10/train', import.meta.url));
    await ingest({ input, outDir: dir, size: 32, limitPerClass: Math.ceil(images / 10) });
  }
  const data = await loadImages(dir);
  if (data.height !== 32) throw new Error(`bench-evaluate: ${dir} holds ${data.height} px images, 32 expected`);
  return data.pixels.subarray(0, Math.min(images, data.ids.length) * 32 * 32 * 3);
}

async function measure(backend: string, images: number, batch: number, width: number): Promise<Row[]> {
  await useBackend(backend as BackendName);
  const pixels = await cifarPixels(images);
  const n = pixels.length / (32 * 32 * 3);
  const { encoder, head } = buildSimclrModel({ encoder: 'resnet20', width, inputSize: 32, seed: 0 });
  const classifier = buildClassifier(encoder, head, 1, 10);
  const rows: Row[] = [];
  try {
    for (const [pass, model] of [['embeddings', encoder], ['classifier', classifier]] as const) {
      embed(model, pixels, Math.min(n, batch), 32, batch).dispose(); // warm-up: kernels, sessions
      const t0 = performance.now();
      embed(model, pixels, n, 32, batch).dispose();
      const seconds = (performance.now() - t0) / 1000;
      rows.push({ bench: 'evaluate', pass, model: 'resnet20', width, backend: tf.getBackend(), batch, images: n, images_per_second: Math.round((n / seconds) * 10) / 10, load_average: Math.round(loadavg()[0] * 100) / 100 });
    }
  } finally {
    classifier.dispose(); // owns the encoder and the kept head block
  }
  return rows;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      json: { type: 'boolean', default: false },
      backend: { type: 'string', default: 'onnxruntime,wasm' },
      images: { type: 'string', default: '2048' },
      batch: { type: 'string', default: '256' },
      width: { type: 'string', default: '1' },
    },
  });
  const backends = values.backend!.split(',').filter(Boolean);
  const images = Number(values.images);
  const batch = Number(values.batch);
  if (!Number.isInteger(images) || images < 1) throw new Error(`--images must be a positive integer, got '${values.images}'`);
  if (!Number.isInteger(batch) || batch < 1) throw new Error(`--batch must be a positive integer, got '${values.batch}'`);
  if (backends.length > 1) {
    // One process per backend (onnxruntime and a threaded wasm cannot share one).
    const launcher = fileURLToPath(new URL('../bin/run-ts.mjs', import.meta.url));
    const args = process.argv.slice(2).filter((a, i, all) => a !== '--backend' && all[i - 1] !== '--backend' && !a.startsWith('--backend='));
    for (const backend of backends) execFileSync(process.execPath, [launcher, fileURLToPath(import.meta.url), ...args, '--backend', backend], { stdio: 'inherit' });
    return;
  }
  const widths = values.width!.split(',').map(Number);
  if (widths.some((w) => !(w > 0))) throw new Error(`--width entries must be positive numbers, got '${values.width}'`);
  const rows: Row[] = [];
  for (const w of widths) rows.push(...(await measure(backends[0], images, batch, w))); // one at a time: timings must not overlap
  for (const row of rows) {
    if (values.json) console.log(JSON.stringify(row));
    else console.log(`${row.pass.padEnd(11)} ${row.model} w${row.width}  ${row.backend.padEnd(11)} batch ${row.batch}  ${row.images_per_second.toFixed(1).padStart(8)} images/s  (${row.images} images, load ${row.load_average})`);
  }
}

main().catch((err: unknown) => {
  console.error(`bench-evaluate: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
});
