// Benchmark: images/s of SimCLR pretraining as a user gets it (the real stage: CIFAR-10 images,
// augmentation in its worker pool, both views through encoder + head, NT-Xent, LARS), and peak RSS.
// Two views count as two images. Each configuration runs in a child process so RSS is its own.
// usage: npm run bench:pretrain [-- --json] [-- --backend wasm,onnxruntime] [-- --steps 6]
//        [-- --config resnet20:256,resnet20:128,resnet18:128]
import { execFileSync } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import type { BackendName } from '../models/engine/backend.ts';

const CIFAR = fileURLToPath(new URL('../../shared/datasets/cifar10/train', import.meta.url));

interface Row {
  bench: 'pretrain';
  model: string;
  batch: number;
  backend: string;
  images_per_second: number;
  peak_rss_mb: number;
  steps: number;
  load_average: number;
  error?: string;
}

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Child mode: one pretraining run, prints {images_per_second (median over steps after warm-up), peak_rss_mb}. */
async function child(data: string, model: string, batch: number, backend: string, steps: number): Promise<void> {
  const { pretrain } = await import('../stages/pretrain.ts');
  const outDir = await mkdtemp(join(tmpdir(), 'bench-pretrain-'));
  try {
    // A command-line string; useBackend refuses a name it does not know.
    await pretrain({ data, outDir, model, batchSize: batch, backend: backend as BackendName, epochs: 1, limit: batch * steps, logEvery: 1, log: () => {} });
    const rows = (await readFile(join(outDir, 'metrics.jsonl'), 'utf8'))
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l))
      .filter((r) => r.summary !== 'epoch' && typeof r.images_per_second === 'number');
    // The first two steps include warm-up (kernel setup, pool start); the rest is steady state.
    const steady = rows.slice(2).map((r) => r.images_per_second as number);
    const peakRssMb = process.resourceUsage().maxRSS / 1024;
    console.log(JSON.stringify({ images_per_second: median(steady), peak_rss_mb: peakRssMb, steps: steady.length }));
  } finally {
    await rm(outDir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      json: { type: 'boolean', default: false },
      backend: { type: 'string', default: 'wasm' },
      config: { type: 'string', default: 'resnet20:256,resnet20:128,resnet18:128' },
      steps: { type: 'string', default: '6' },
      child: { type: 'string' },
    },
  });
  const steps = Number(values.steps);
  if (values.child) {
    const [data, model, batch, backend] = values.child.split('|');
    await child(data, model, Number(batch), backend, steps);
    return;
  }
  const configs = values.config!.split(',').map((c) => {
    const [model, batch] = c.split(':');
    return { model, batch: Number(batch) };
  });
  const maxImages = Math.max(...configs.map((c) => c.batch * steps));
  // Real images: ingest a class-balanced CIFAR-10 subset once for all configurations.
  const data = await mkdtemp(join(tmpdir(), 'bench-pretrain-data-'));
  const { ingest } = await import('../stages/ingest.ts');
  await ingest({ input: CIFAR, outDir: data, size: 32, limitPerClass: Math.ceil(maxImages / 10) });
  const rows: Row[] = [];
  try {
    for (const backend of values.backend!.split(',')) {
      for (const { model, batch } of configs) {
        const load = loadavg()[0];
        let r: { images_per_second: number; peak_rss_mb: number; steps: number; error?: string };
        try {
          const out = execFileSync(process.execPath, [fileURLToPath(new URL('../bin/run-ts.mjs', import.meta.url)), fileURLToPath(import.meta.url), '--child', `${data}|${model}|${batch}|${backend}`, '--steps', String(steps)], {
            encoding: 'utf8',
            stdio: ['ignore', 'pipe', 'pipe'],
          });
          r = JSON.parse(out.trim().split('\n').pop()!);
        } catch (err) {
          // A configuration that does not run (e.g. out of the wasm heap) is a row, not the end of the bench.
          const stderr = String((err as { stderr?: string }).stderr ?? err);
          const line = stderr.split('\n').find((l) => /pretrain: |Error:/.test(l)) ?? stderr.split('\n')[0];
          r = { images_per_second: NaN, peak_rss_mb: NaN, steps: 0, error: line.slice(0, 300) };
        }
        const row: Row = { bench: 'pretrain', model, batch, backend, images_per_second: Math.round(r.images_per_second * 10) / 10, peak_rss_mb: Math.round(r.peak_rss_mb), steps: r.steps, load_average: Math.round(load * 100) / 100, ...(r.error ? { error: r.error } : {}) };
        rows.push(row);
        if (values.json) console.log(JSON.stringify(row));
      }
    }
  } finally {
    await rm(data, { recursive: true, force: true });
  }
  if (!values.json) {
    console.log('model     batch  backend      images/s  peak RSS MB  steps  load');
    for (const r of rows) {
      console.log(
        `${r.model.padEnd(9)} ${String(r.batch).padStart(5)}  ${r.backend.padEnd(11)} ${r.images_per_second.toFixed(1).padStart(9)}  ${String(r.peak_rss_mb).padStart(11)}  ${String(r.steps).padStart(5)}  ${r.load_average}${r.error ? `  ${r.error}` : ''}`,
      );
    }
  }
}

await main();
