// The evaluate stage: a classifier's top-1/top-5, per-class accuracy, confusion matrix and
// predictions on a test dataset, or a pretrained encoder's kNN and linear-probe accuracy.
import * as tf from '@tensorflow/tfjs';
import { mkdir } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { csvField } from '../data/csv.ts';
import { writeFileAtomic } from '../data/files.ts';
import { holdoutSplit, parseLabelSpec, selectLabeled } from '../data/labels.ts';
import { writeManifest, type DatasetManifest } from '../data/manifest.ts';
import { gatherImages, loadImages, type InMemoryImages } from '../data/memory.ts';
import { SCHEMA_VERSION, schemaInfo, type Columns, type SchemaParams } from '../data/schemas.ts';
import { writeShards } from '../data/shards.ts';
import { findStageCheckpoint, loadCheckpoint } from '../models/checkpoint.ts';
import { useBackend, type BackendName } from '../models/engine/backend.ts';
import { accuracy as knnAccuracy, knnPredict } from '../models/knn.ts';
import { probePredict, trainLinearProbe } from '../models/linear-probe.ts';
import { embed } from '../models/simclr.ts';
import { withDefaults } from './options.ts';
import { TrainingInputError } from './training/loop.ts';

export interface EvaluateOptions {
  /** Test images dataset. */
  data: string;
  /** A finetune/baseline/pretrain stage directory, or its checkpoint/. */
  checkpoint: string;
  /** Stage directory: predictions/ or embeddings/, confusion.csv. */
  outDir: string;
  /** Test on the last N labeled images of each class of `data` only (the split pretrain's --knn-holdout and finetune's --holdout make). */
  holdout?: number;
  /** Encoder evaluation: the labeled images of the kNN bank and the probe (default: the rest of `data` when holdout is set). */
  trainData?: string;
  /** Encoder evaluation: the labeled subset of trainData (P%, N-per-class, N or an ids file; default all). */
  labels?: string;
  knnK?: number;
  /** Images per inference batch. */
  batchSize?: number;
  seed?: number;
  backend?: BackendName;
  log?: (line: string) => void;
  onBackend?: (name: string) => void;
}

export interface EvaluateResult {
  kind: 'classifier' | 'encoder';
  /** DESIGN.md's names: accuracy, top5_accuracy, per_class_accuracy (classifier); knn_accuracy, linear_accuracy (encoder). */
  metrics: Record<string, number | Record<string, number>>;
  /** Rows: true class, columns: predicted class (classifier only). */
  confusion?: number[][];
  classes: string[];
  /** The predictions or embeddings dataset written. */
  dataset: string;
  rows: number;
  backend: string;
}

export const EVALUATE_DEFAULTS = {
  holdout: 0,
  labels: '100%',
  // lightly's and InstDisc's kNN protocol: 200 neighbours, votes exp(cos/0.1).
  knnK: 200,
  batchSize: 256,
  seed: 0,
  backend: 'auto',
} as const satisfies Partial<EvaluateOptions>;

/** The vote temperature of the kNN protocol (InstDisc, lightly). */
const KNN_TEMPERATURE = 0.1;

/** The checkpoint directory of `path` (a stage dir or the checkpoint itself) and the models it holds. */
async function resolveCheckpoint(path: string): Promise<{ dir: string; stage: string }> {
  const dir = await findStageCheckpoint(path);
  if (dir !== null) return { dir, stage: basename(dir === path ? dirname(path) : path) };
  throw new TrainingInputError(`evaluate.checkpoint ${path}: no checkpoint there (give a finetune, baseline or pretrain stage directory)`);
}

/** The directory name evaluate writes to for a checkpoint: evaluate-finetune, evaluate-pretrain, ... */
export async function evaluateDirName(checkpoint: string): Promise<string> {
  return `evaluate-${(await resolveCheckpoint(checkpoint)).stage}`;
}

export async function evaluate(options: EvaluateOptions): Promise<EvaluateResult> {
  const r = withDefaults(EVALUATE_DEFAULTS, options);
  for (const name of ['holdout', 'knnK', 'batchSize', 'seed'] as const) {
    const min = name === 'holdout' || name === 'seed' ? 0 : 1;
    if (!Number.isInteger(r[name]) || r[name] < min) throw new TrainingInputError(`evaluate.${name} must be an integer >= ${min}, got ${r[name]}`);
  }
  const log = r.log ?? (() => {});
  const { dir } = await resolveCheckpoint(r.checkpoint);
  const peek = await loadCheckpoint(dir, { models: [] });
  const models = peek.available;
  const kind = models.includes('classifier') ? 'classifier' : models.includes('encoder') ? 'encoder' : null;
  if (kind === null) throw new TrainingInputError(`evaluate.checkpoint ${dir}: holds models [${models.join(', ')}], neither a classifier nor an encoder`);
  const backend = await useBackend(r.backend, log);
  r.onBackend?.(backend.name);

  const all = await loadImages(r.data);
  const { train: restRows, heldOut } = holdoutSplit(all, r.holdout, 'evaluate.holdout');
  const test = r.holdout > 0 ? gatherImages(all, heldOut) : all;
  if (test.ids.length === 0) throw new TrainingInputError(`evaluate.data ${r.data}: no images to evaluate`);
  await mkdir(r.outDir, { recursive: true });

  const loaded = await loadCheckpoint(dir, { models: [kind] });
  const model = loaded.models[kind];
  try {
    const [, h, w] = model.inputs[0].shape as number[];
    if (h !== test.height || w !== test.width) {
      throw new TrainingInputError(`evaluate: ${dir} takes ${h}x${w} px images, ${r.data} holds ${test.height}x${test.width} px (ingest the test images with --size ${h})`);
    }
    if (kind === 'classifier') {
      const classes = ((peek.state as { config?: { classes?: string[] } }).config?.classes ?? null) as string[] | null;
      if (classes === null) throw new TrainingInputError(`evaluate.checkpoint ${dir}: the classifier's checkpoint does not record its classes`);
      if (JSON.stringify(classes) !== JSON.stringify(test.classes)) {
        throw new TrainingInputError(`evaluate: ${r.data} has classes [${test.classes.join(', ')}], the classifier in ${dir} was trained on [${classes.join(', ')}]`);
      }
      return await evaluateClassifier(model, test, r.outDir, r.batchSize, backend.name, log);
    }
    const trainPool = r.trainData !== undefined ? await loadImages(r.trainData) : r.holdout > 0 ? gatherImages(all, restRows) : null;
    if (trainPool === null) throw new TrainingInputError('evaluate: an encoder is scored by kNN and a linear probe on labeled training images: give --train-data, or --holdout N to test on part of --data');
    if (JSON.stringify(trainPool.classes) !== JSON.stringify(test.classes)) {
      throw new TrainingInputError(`evaluate: --train-data has classes [${trainPool.classes.join(', ')}], --data [${test.classes.join(', ')}]`);
    }
    const chosen = await selectLabeled(trainPool, parseLabelSpec(r.labels, 'evaluate.labels'), r.seed, 'evaluate.labels');
    const bank = gatherImages(trainPool, chosen.rows);
    bank.labels.set(chosen.labels);
    return await evaluateEncoder(model, bank, test, r, backend.name, log);
  } finally {
    model.dispose();
  }
}

async function evaluateClassifier(model: tf.LayersModel, test: InMemoryImages, outDir: string, batchSize: number, backend: string, log: (line: string) => void): Promise<EvaluateResult> {
  const n = test.ids.length;
  const k = test.classes.length;
  const t0 = performance.now();
  const logits = embed(model, test.pixels, n, test.height, batchSize); // [N, K]
  const probabilities = tf.tidy(() => tf.softmax(logits).dataSync() as Float32Array); // [N·K]
  logits.dispose();
  const seconds = (performance.now() - t0) / 1000;
  const predicted = new Int32Array(n);
  const confusion = test.classes.map(() => new Array<number>(k).fill(0));
  let top1 = 0;
  let top5 = 0;
  let scored = 0;
  for (let i = 0; i < n; i++) {
    const p = probabilities.subarray(i * k, (i + 1) * k);
    let best = 0;
    for (let c = 1; c < k; c++) if (p[c] > p[best]) best = c;
    predicted[i] = best;
    const label = test.labels[i];
    if (label < 0) continue;
    scored++;
    confusion[label][best]++;
    if (best === label) top1++;
    // Top-5: fewer than 5 classes score higher than the true one.
    let above = 0;
    for (let c = 0; c < k; c++) if (p[c] > p[label]) above++;
    if (above < 5) top5++;
  }
  if (scored === 0) throw new TrainingInputError('evaluate: the test dataset has no labels to score against');
  const perClass = Object.fromEntries(test.classes.map((c, i) => [c, confusion[i][i] / Math.max(1, confusion[i].reduce((s, v) => s + v, 0))]));
  const metrics: EvaluateResult['metrics'] = {
    accuracy: top1 / scored,
    ...(k > 5 ? { top5_accuracy: top5 / scored } : {}),
    per_class_accuracy: perClass,
    images: scored,
    images_per_second: n / seconds,
  };
  const dataset = join(outDir, 'predictions');
  await writeDataset(dataset, 'predictions', k, test, { id: test.ids, label: Array.from(test.labels, (l) => (l < 0 ? null : l)), predicted, probabilities });
  await writeFileAtomic(join(outDir, 'confusion.csv'), confusionCsv(test.classes, confusion));
  log(
    `evaluate: classifier top-1 ${(100 * (metrics.accuracy as number)).toFixed(2)} %${k > 5 ? `, top-5 ${(100 * (metrics.top5_accuracy as number)).toFixed(2)} %` : ''} on ${scored} images ` +
      `(${(n / seconds).toFixed(0)} images/s); predictions in ${dataset}`,
  );
  return { kind: 'classifier', metrics, confusion, classes: test.classes, dataset, rows: n, backend };
}

async function evaluateEncoder(
  encoder: tf.LayersModel,
  bank: InMemoryImages,
  test: InMemoryImages,
  r: { knnK: number; batchSize: number; outDir: string },
  backend: string,
  log: (line: string) => void,
): Promise<EvaluateResult> {
  const numClasses = test.classes.length;
  const t0 = performance.now();
  const testFeatures = embed(encoder, test.pixels, test.ids.length, test.height, r.batchSize); // [Nq, D]
  const seconds = (performance.now() - t0) / 1000;
  const bankFeatures = embed(encoder, bank.pixels, bank.ids.length, bank.height, r.batchSize); // [Nb, D]
  const probe = trainLinearProbe(bankFeatures, bank.labels, { numClasses });
  try {
    const scoredRows = Array.from(test.labels.keys()).filter((i) => test.labels[i] >= 0);
    if (scoredRows.length === 0) throw new TrainingInputError('evaluate: the test dataset has no labels to score against');
    const scoredFeatures = tf.tidy(() => tf.gather(testFeatures, scoredRows) as tf.Tensor2D);
    const truth = Int32Array.from(scoredRows, (i) => test.labels[i]);
    const knn = knnAccuracy(knnPredict(bankFeatures, bank.labels, scoredFeatures, { k: r.knnK, temperature: KNN_TEMPERATURE, numClasses }), truth);
    const linear = knnAccuracy(probePredict(probe, scoredFeatures), truth);
    scoredFeatures.dispose();
    const dim = testFeatures.shape[1];
    const dataset = join(r.outDir, 'embeddings');
    await writeDataset(dataset, 'embeddings', dim, test, { id: test.ids, label: Array.from(test.labels, (l) => (l < 0 ? null : l)), embedding: testFeatures.dataSync() as Float32Array });
    const metrics = {
      knn_accuracy: knn,
      linear_accuracy: linear,
      linear_train_accuracy: probe.trainAccuracy,
      linear_train_loss: probe.trainLoss,
      linear_steps: probe.steps,
      linear_converged: probe.converged ? 1 : 0,
      bank_images: bank.ids.length,
      images: truth.length,
      images_per_second: test.ids.length / seconds,
    };
    log(
      `evaluate: encoder kNN (k ${r.knnK}) ${(100 * knn).toFixed(2)} %, linear probe ${(100 * linear).toFixed(2)} % ` +
        `(train ${(100 * probe.trainAccuracy).toFixed(2)} % after ${probe.steps} steps${probe.converged ? ', converged' : ', not converged'}) on ${truth.length} images, ` +
        `bank ${bank.ids.length}; embeddings in ${dataset}`,
    );
    return { kind: 'encoder', metrics, classes: test.classes, dataset, rows: test.ids.length, backend };
  } finally {
    tf.dispose([testFeatures, bankFeatures]);
    probe.dispose();
  }
}

/** Writes `columns` as a dataset (shards + manifest.json) in `dir`. */
async function writeDataset<S extends 'predictions' | 'embeddings'>(dir: string, schema: S, dim: number, source: InMemoryImages, columns: Columns<S>): Promise<void> {
  await mkdir(dir, { recursive: true });
  // Both schemas are parameterised by their vector length; TypeScript cannot narrow SchemaParams<S> over a generic S.
  const info = schemaInfo<S>(schema, { dim } as SchemaParams<S>, source.classes);
  const shards = await writeShards({ dir, schema: info }, [columns]);
  const counts: Record<string, number> = Object.fromEntries(source.classes.map((c) => [c, 0]));
  for (const l of source.labels) if (l >= 0) counts[source.classes[l]]++;
  const manifest: DatasetManifest = { schema_version: SCHEMA_VERSION, schema, rows: source.ids.length, classes: source.classes, class_counts: counts, dim, shards };
  await writeManifest(dir, manifest);
}

/** confusion.csv: a header of predicted classes, one row per true class. */
function confusionCsv(classes: string[], confusion: number[][]): string {
  return ['true\\predicted', ...classes].map(csvField).join(',') + '\n' + confusion.map((row, i) => [csvField(classes[i]), ...row].join(',')).join('\n') + '\n';
}
