// `pipeline predict`: a trained classifier applied to new images (a folder, a CSV list or an
// images dataset), decoded exactly as ingest decodes them, one row per image → CSV or Arrow.
import * as tf from '@tensorflow/tfjs';
import { copyFile, mkdtemp, rename, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { csvField } from '../data/csv.ts';
import { writeFileAtomic } from '../data/files.ts';
import { MANIFEST_FILE, partPrefix, readManifest, sha256File } from '../data/manifest.ts';
import { partRange } from '../data/scan.ts';
import { loadImages, type InMemoryImages } from '../data/memory.ts';
import { schemaInfo } from '../data/schemas.ts';
import { writeShards } from '../data/shards.ts';
import { loadCheckpoint } from '../models/checkpoint.ts';
import { useBackend, type BackendName } from '../models/engine/backend.ts';
import { embed } from '../models/simclr.ts';
import { ingest } from './ingest.ts';
import { withDefaults } from './options.ts';
import { checkPart } from './shard-map.ts';
import { classifierHash, requireClassifier } from './training/checkpoints.ts';
import { TrainingInputError } from './training/loop.ts';

export interface PredictOptions {
  /** A classifier: a finetune, baseline or distill stage directory, or its checkpoint/. */
  checkpoint: string;
  /** An image folder, a CSV list (path[,label]) or an images dataset directory. */
  input: string;
  /** FILE.csv (id, label, top-k classes and probabilities) or FILE.arrow (a predictions shard). */
  out: string;
  topK?: number;
  /** Images per inference batch. */
  batchSize?: number;
  /** Decoding threads. */
  workers?: number;
  backend?: BackendName;
  /**
   * A part job (a Kubernetes Indexed Job or Slurm array task): the shardIndex-th of numShards
   * contiguous runs of the sorted input list (of the dataset's rows), written to `partOutput(out, …)`
   * with a `.json` record beside it; `pipeline merge OUT` joins the parts into OUT.
   */
  shardIndex?: number;
  numShards?: number;
  log?: (line: string) => void;
  onProgress?: (done: number, total: number, phase: 'decode' | 'predict') => void;
  onBackend?: (name: string) => void;
}

/** Where part `index` of `count` of a predict to `out` writes: `preds.csv` → `preds.part-00001-of-00004.csv`. */
export function partOutput(out: string, index: number, count: number): string {
  const ext = out.toLowerCase().endsWith('.arrow') ? out.slice(-6) : out.slice(-4);
  return `${out.slice(0, -ext.length)}.${partPrefix(index, count)}${ext}`;
}

/** The record a part job writes beside its file once the file is whole: what the merge checks. */
export interface PredictPartRecord {
  part: { index: number; count: number };
  /** Identity of the run the parts belong to: the classifier's weights, the input, the output format and top-k. */
  checkpoint_sha256: string;
  input: string;
  format: 'csv' | 'arrow';
  top_k: number;
  rows: number;
  rejected: number;
  /** sha256 of the part's file. */
  sha256: string;
}

export interface PredictResult {
  out: string;
  rows: number;
  /** Unusable input files, listed with their reasons in `rejectedPath` (next to `out`). */
  rejected: number;
  rejectedPath: string | null;
  imagesPerSecond: number;
  backend: string;
}

export const PREDICT_DEFAULTS = { topK: 3, batchSize: 256, backend: 'auto' } as const satisfies Partial<PredictOptions>;

async function isDataset(path: string): Promise<boolean> {
  return stat(join(path, MANIFEST_FILE)).then((s) => s.isFile(), () => false);
}

export async function predict(options: PredictOptions): Promise<PredictResult> {
  const r = withDefaults(PREDICT_DEFAULTS, options);
  if (!Number.isInteger(r.topK) || r.topK < 1) throw new TrainingInputError(`predict.topK must be an integer >= 1, got ${r.topK}`);
  if (!Number.isInteger(r.batchSize) || r.batchSize < 1) throw new TrainingInputError(`predict.batchSize must be an integer >= 1, got ${r.batchSize}`);
  const format = r.out.toLowerCase().endsWith('.csv') ? 'csv' : r.out.toLowerCase().endsWith('.arrow') ? 'arrow' : null;
  if (format === null) throw new TrainingInputError(`predict.out ${r.out}: must end in .csv or .arrow`);
  const shardIndex = r.shardIndex ?? 0;
  const numShards = r.numShards ?? 1;
  checkPart('predict', shardIndex, numShards);
  const out = numShards > 1 ? partOutput(r.out, shardIndex, numShards) : r.out;
  const log = r.log ?? (() => {});

  const { dir, classes } = await requireClassifier(r.checkpoint, 'predict.checkpoint', 'give a finetune, baseline or distill stage directory');

  const backend = await useBackend(r.backend, log);
  r.onBackend?.(backend.name);
  const model = (await loadCheckpoint(dir, { models: ['classifier'] })).models.classifier;
  const size = (model.inputs[0].shape as number[])[1];
  const scratch = await mkdtemp(join(tmpdir(), 'predict-'));
  try {
    // New images go through ingest itself (into a scratch dataset), so they are decoded, resized and
    // rejected exactly as training images were.
    let images: InMemoryImages;
    let rejected = 0;
    let rejectedPath: string | null = null;
    if (await isDataset(r.input)) {
      const m = await readManifest(r.input);
      if (m.schema !== 'images') throw new TrainingInputError(`predict.input ${r.input}: holds ${m.schema}, not images`);
      // A part: the contiguous run of rows ingest's parts would cut (data/scan.ts partRange).
      const [from, to] = partRange(m.rows, shardIndex, numShards);
      images = await loadImages(r.input, { filter: (i) => i >= from && i < to });
      if (images.height !== size || images.width !== size) throw new TrainingInputError(`predict.input ${r.input}: ${images.height}x${images.width} px images, the classifier takes ${size}x${size} (give the image folder, which is resized as ingest does)`);
    } else {
      const decoded = await ingest({ input: r.input, outDir: scratch, size, workers: r.workers, shardIndex, numShards, log: () => {}, onProgress: (done, total) => r.onProgress?.(done, total, 'decode') }).catch((err: unknown) => {
        if (err instanceof Error && err.name === 'IngestInputError') throw new TrainingInputError(`predict.input: ${err.message}`);
        throw err;
      });
      rejected = decoded.rejected.length;
      if (rejected > 0) {
        rejectedPath = `${out}.rejected.jsonl`;
        await copyFile(decoded.rejectedPath, rejectedPath);
        log(`predict: ${rejected} unusable file(s) skipped, listed in ${rejectedPath}`);
      }
      if (decoded.rows === 0) throw new TrainingInputError(`predict.input ${r.input}: no readable image (${rejected} rejected${rejectedPath ? `, listed in ${rejectedPath}` : ''})`);
      // A part's ingest names its manifest part-…manifest.json; it is this scratch dataset's only one.
      if (numShards > 1) await rename(decoded.manifestPath, join(scratch, MANIFEST_FILE));
      images = await loadImages(scratch);
    }
    const n = images.ids.length;
    const k = classes.length;
    const t0 = performance.now();
    const probabilities = new Float32Array(n * k);
    const per = size * size * 3;
    for (let start = 0; start < n; start += r.batchSize) {
      const count = Math.min(r.batchSize, n - start);
      const logits = embed(model, images.pixels.subarray(start * per, (start + count) * per), count, size, r.batchSize); // [count, K]
      probabilities.set(tf.tidy(() => tf.softmax(logits).dataSync() as Float32Array), start * k);
      logits.dispose();
      r.onProgress?.(start + count, n, 'predict');
    }
    const seconds = (performance.now() - t0) / 1000;
    const predicted = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      const p = probabilities.subarray(i * k, (i + 1) * k);
      predicted[i] = p.indexOf(Math.max(...p));
    }
    // The input's label (a class folder or CSV label), by name, where it is one of the classifier's classes.
    const index = new Map(classes.map((c, i) => [c, i]));
    const labelOf = (i: number): number | null => (images.labels[i] >= 0 ? (index.get(images.classes[images.labels[i]]) ?? null) : null);
    if (format === 'csv') {
      const topK = Math.min(r.topK, k);
      const header = ['id', 'label', ...Array.from({ length: topK }, (_, j) => [`class_${j + 1}`, `probability_${j + 1}`]).flat()];
      const lines = [header.join(',')];
      for (let i = 0; i < n; i++) {
        const p = Array.from(probabilities.subarray(i * k, (i + 1) * k), (v, c) => [v, c] as const).sort((a, b) => b[0] - a[0] || a[1] - b[1]);
        const label = labelOf(i);
        lines.push([csvField(images.ids[i]), label === null ? '' : csvField(classes[label]), ...p.slice(0, topK).flatMap(([v, c]) => [csvField(classes[c]), v.toFixed(6)])].join(','));
      }
      await writeFileAtomic(out, lines.join('\n') + '\n');
    } else {
      const info = schemaInfo('predictions', { dim: k }, classes);
      const shardDir = await mkdtemp(join(dirname(out), '.predict-'));
      try {
        const [shard, ...more] = await writeShards({ dir: shardDir, schema: info, maxRows: Math.max(1, n) }, [
          { id: images.ids, label: Array.from({ length: n }, (_, i) => labelOf(i)), predicted, probabilities },
        ]);
        if (more.length > 0) throw new Error('predict: the predictions did not fit one Arrow file');
        await rename(join(shardDir, shard.path), out);
      } finally {
        await rm(shardDir, { recursive: true, force: true });
      }
    }
    if (numShards > 1) {
      const record: PredictPartRecord = {
        part: { index: shardIndex, count: numShards },
        checkpoint_sha256: await classifierHash(dir),
        input: resolve(r.input),
        format,
        top_k: format === 'csv' ? Math.min(r.topK, k) : k,
        rows: n,
        rejected,
        sha256: await sha256File(out),
      };
      await writeFileAtomic(`${out}.json`, JSON.stringify(record) + '\n');
    }
    log(`predict: ${n} images${numShards > 1 ? ` (part ${shardIndex} of ${numShards}; \`pipeline merge ${r.out}\` joins the parts)` : ''} → ${out} (${(n / seconds).toFixed(0)} images/s, backend ${backend.name})`);
    return { out, rows: n, rejected, rejectedPath, imagesPerSecond: n / seconds, backend: backend.name };
  } finally {
    model.dispose();
    await rm(scratch, { recursive: true, force: true });
  }
}
