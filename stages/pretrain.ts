// The pretrain stage: SimCLR/SimCLRv2 contrastive pretraining of a ResNet encoder + projection head
// on an images dataset, run on the shared training loop (checkpoints, exact resume, kNN monitor).
import type * as tf from '@tensorflow/tfjs';
import { AugmentPool, augmentBatches, type AugmentedBatch } from '../augment/pool.ts';
import { holdoutSplit } from '../data/labels.ts';
import { join } from 'node:path';
import { datasetHash, readManifest, sha256File } from '../data/manifest.ts';
import { gatherImages, loadImages, type InMemoryImages } from '../data/memory.ts';
import { useBackend } from '../models/engine/backend.ts';
import { accuracy as knnAccuracy, knnPredict } from '../models/knn.ts';
import { defaultTemperature } from '../models/losses.ts';
import { makeOptimizer, type OptimizerName } from '../models/optimizers.ts';
import { defaultWarmupEpochs, scaledLearningRate, warmupCosine, type LearningRateScaling } from '../models/schedules.ts';
import { buildSimclrModel, embed, pixelsToTensor, simclrStep, type SimclrModel } from '../models/simclr.ts';
import { withDefaults } from './options.ts';
import { epochPermutation, limitRows } from '../data/random.ts';
import { loadCheckpoint } from '../models/checkpoint.ts';
import { imageBatches } from './training/batches.ts';
import { requireCheckpoint } from './training/checkpoints.ts';
import {
  NonFiniteLossError,
  openTraining,
  TrainingInputError,
  TrainingInterruptedError,
  trainingLoop,
  TrainingOutOfMemoryError,
  type TrainingStageOptions,
} from './training/loop.ts';

// The names pretrain's errors have always had; one class each for every training stage.
export {
  NonFiniteLossError,
  TrainingInputError as PretrainInputError,
  TrainingInterruptedError as PretrainInterruptedError,
  TrainingOutOfMemoryError as PretrainOutOfMemoryError,
};

/** Pretraining defaults: SimCLR's values where they fit a 2-core machine; the CLI shows and hashes these. */
export const PRETRAIN_DEFAULTS = {
  epochs: 100,
  // SimCLR uses 256 and more; 128 leaves room in the wasm backends' heap (4 GB at most) for the
  // larger encoders (ResNet-18 at 2 × 128 views of 32 px: ~2.7 GB peak RSS on wasm); ResNet-20
  // at 256 needs ~1.7 GB.
  batchSize: 128,
  model: 'resnet20',
  width: 1,
  lrScaling: 'linear',
  optimizer: 'lars',
  // SimCLR's 1e-6 for LARS (it is L2 on g, so tiny); excluded for batch norm and biases.
  weightDecay: 1e-6,
  momentum: 0.9,
  // SimCLRv2's deeper head: fine-tuning starts from its first layer.
  headLayers: 3,
  projectionDim: 128,
  limit: 0,
  seed: 0,
  backend: 'auto',
  resume: false,
  force: false,
  logEvery: 10,
  tensorboard: false,
  knnHoldout: 0,
  knnEvery: 0,
  // lightly's and InstDisc's kNN protocol: 200 neighbours.
  knnK: 200,
  knnBank: 10_000,
} as const satisfies Partial<PretrainOptions>;

export interface PretrainOptions extends TrainingStageOptions {
  /** images dataset directory (an ingest output). */
  data: string;
  /** Stage directory: checkpoint/, metrics.jsonl go here. */
  outDir: string;
  epochs?: number;
  batchSize?: number;
  /** Encoder registry name. */
  model?: string;
  width?: number;
  /** NT-Xent τ; default by image size (0.5 up to 64 px, 0.1 above). */
  temperature?: number;
  /** Base learning rate before batch scaling; default 0.3 (linear) / 0.075 (sqrt) for LARS and SGD, 1e-3 for Adam. */
  lr?: number;
  lrScaling?: LearningRateScaling;
  /** Default: min(10, epochs / 10). */
  warmupEpochs?: number;
  optimizer?: OptimizerName;
  /** SimCLR's 1e-6 for LARS (it is L2 on g, so tiny); excluded for batch norm and biases. */
  weightDecay?: number;
  momentum?: number;
  headLayers?: number;
  projectionDim?: number;
  /** Colour jitter strength s; default 0.5 for images <= 32 px, else 1 (SimCLR appendix B.9). */
  colorStrength?: number;
  /** Smallest crop area of the random resized crop; SimCLR's 0.08 by default. */
  minScale?: number;
  /** Train on at most this many images (0 = all); taken after the held-out split. */
  limit?: number;
  /** Hold out this many labeled images per class from training, as kNN queries (0 = none). */
  knnHoldout?: number;
  /** Compute kNN accuracy every this many epochs (and before training and at the end); 0 = off. */
  knnEvery?: number;
  knnK?: number;
  /** Labeled training images used as the kNN memory bank, at most. */
  knnBank?: number;
  /** Warm start: another run's pretrain directory (or checkpoint/) whose encoder and head this run starts from, with its own schedule. */
  initFrom?: string;
}

export interface PretrainResult {
  checkpoint: string;
  metricsFile: string;
  metrics: {
    loss: number;
    contrastive_accuracy: number;
    images_per_second: number;
    epochs: number;
    steps: number;
    knn_accuracy?: number;
    /** The kNN monitor before the first step, with random weights; `knn_accuracy_init_from` instead when warm-started. */
    knn_accuracy_random_init?: number;
    knn_accuracy_init_from?: number;
  };
  backend: string;
  /** Where a warm-started run started: the checkpoint and the sha256 of its index. */
  initFrom?: { checkpoint: string; sha256: string };
}

type Resolved = Omit<PretrainOptions, keyof typeof PRETRAIN_DEFAULTS> & {
  -readonly [K in keyof typeof PRETRAIN_DEFAULTS]-?: NonNullable<PretrainOptions[K]>;
};

function resolve(options: PretrainOptions): Resolved {
  const r: Resolved = withDefaults(PRETRAIN_DEFAULTS, options);
  const int = (name: keyof Resolved, min: number) => {
    const v = r[name] as number;
    if (!Number.isInteger(v) || v < min) throw new TrainingInputError(`pretrain.${name} must be an integer >= ${min}, got ${v}`);
  };
  int('epochs', 1);
  int('batchSize', 2);
  int('headLayers', 1);
  int('projectionDim', 1);
  int('limit', 0);
  int('seed', 0);
  int('logEvery', 1);
  int('knnHoldout', 0);
  int('knnEvery', 0);
  int('knnK', 1);
  int('knnBank', 1);
  const positive = (name: keyof Resolved) => {
    const v = r[name] as number | undefined;
    if (v !== undefined && !(Number.isFinite(v) && v > 0)) throw new TrainingInputError(`pretrain.${name} must be > 0, got ${v}`);
  };
  positive('width');
  positive('temperature');
  positive('lr');
  positive('colorStrength');
  positive('minScale');
  if (r.minScale !== undefined && r.minScale > 1) throw new TrainingInputError(`pretrain.minScale must be in (0, 1], got ${r.minScale}`);
  if (r.warmupEpochs !== undefined && !(r.warmupEpochs >= 0 && r.warmupEpochs <= r.epochs)) {
    throw new TrainingInputError(`pretrain.warmupEpochs must be in [0, epochs], got ${r.warmupEpochs}`);
  }
  if (!(r.weightDecay >= 0)) throw new TrainingInputError(`pretrain.weightDecay must be >= 0, got ${r.weightDecay}`);
  if (!(r.momentum >= 0 && r.momentum < 1)) throw new TrainingInputError(`pretrain.momentum must be in [0, 1), got ${r.momentum}`);
  return r;
}

function defaultBaseLr(optimizer: OptimizerName, scaling: LearningRateScaling): number {
  if (optimizer === 'adam') return 1e-3;
  // SimCLR: 0.3 × B/256 with linear scaling, 0.075 × √B with square-root scaling.
  return scaling === 'linear' ? 0.3 : 0.075;
}

export async function pretrain(options: PretrainOptions): Promise<PretrainResult> {
  const r = resolve(options);
  const log = options.log ?? (() => {});
  const backend = await useBackend(r.backend, log);
  options.onBackend?.(backend.name);

  const all = await loadImages(options.data);
  if (all.height !== all.width) throw new TrainingInputError(`pretrain: images in ${options.data} are ${all.height}x${all.width}; square images are expected (ingest with --size)`);
  const size = all.height;
  const { train: trainRowsAll, heldOut } = holdoutSplit(all, r.knnHoldout, 'pretrain.knnHoldout');
  const train = gatherImages(all, limitRows(trainRowsAll, r.limit, r.seed));
  const n = train.ids.length;
  if (n < r.batchSize) {
    throw new TrainingInputError(`pretrain.batchSize ${r.batchSize} is larger than the ${n} training images in ${options.data}`);
  }
  const temperature = r.temperature ?? defaultTemperature(size);
  const stepsPerEpoch = Math.floor(n / r.batchSize); // the last partial batch is dropped: NT-Xent wants full batches
  const totalSteps = stepsPerEpoch * r.epochs;
  const baseLr = scaledLearningRate(r.lr ?? defaultBaseLr(r.optimizer, r.lrScaling), r.batchSize, r.lrScaling);
  const warmupSteps = Math.round((r.warmupEpochs ?? defaultWarmupEpochs(r.epochs)) * stepsPerEpoch);
  const schedule = warmupCosine({ baseLr, warmupSteps, totalSteps });

  const built = buildSimclrModel({ encoder: r.model, width: r.width, inputSize: size, headLayers: r.headLayers, projectionDim: r.projectionDim, seed: r.seed });
  let initFrom: { checkpoint: string; sha256: string } | undefined;
  try {
    initFrom = r.initFrom === undefined ? undefined : await warmStart(r.initFrom, built, { model: r.model, width: r.width, headLayers: r.headLayers, projectionDim: r.projectionDim, inputSize: size }, !r.resume);
  } catch (err) {
    built.encoder.dispose();
    built.head.dispose();
    throw err;
  }
  const optimizer = makeOptimizer({ name: r.optimizer, learningRate: baseLr, momentum: r.momentum, weightDecay: r.weightDecay });
  // What must match for a checkpoint to be resumed by the same run: the data, the network, the
  // batches and the schedule.
  const key = {
    model: r.model,
    width: r.width,
    headLayers: r.headLayers,
    projectionDim: r.projectionDim,
    batchSize: r.batchSize,
    seed: r.seed,
    optimizer: r.optimizer,
    inputSize: size,
    trainRows: n,
    epochs: r.epochs,
    datasetSha256: datasetHash(await readManifest(options.data)),
    limit: r.limit,
    knnHoldout: r.knnHoldout,
    baseLr,
    warmupSteps,
    weightDecay: r.weightDecay,
    momentum: r.momentum,
    temperature,
    colorStrength: r.colorStrength ?? null,
    minScale: r.minScale ?? null,
    // Only when warm-started, so that checkpoints written before warm starts existed still resume.
    ...(initFrom ? { initFrom: initFrom.sha256 } : {}),
  };
  let models: Record<'encoder' | 'head', tf.LayersModel> = { encoder: built.encoder, head: built.head };
  // Everything below holds the model and optimizer: free them however the run ends.
  try {
    const run = await openTraining({ stage: 'pretrain', outDir: options.outDir, models, optimizer, key, config: { totalSteps }, resume: r.resume, force: r.force });
    models = run.models;
    const model: SimclrModel = { ...models, featureDim: built.featureDim };
    if (r.resume) log(`pretrain: resuming from ${run.checkpointDir} at epoch ${run.state.epoch + 1}, step ${run.state.stepInEpoch} of ${stepsPerEpoch}`);

    const knn = knnMonitor(r, all, train, heldOut, model, log);
    log(
      `pretrain: ${r.model} (width ${r.width}) + ${r.headLayers}-layer head on ${n} images of ${size}px, batch ${r.batchSize}, ${stepsPerEpoch} steps/epoch × ${r.epochs} epochs, ` +
        `${r.optimizer} lr ${baseLr.toPrecision(3)} (warm-up ${warmupSteps} steps, cosine), τ ${temperature}, backend ${backend.name}`,
    );

    const pool = new AugmentPool({ workers: r.workers });
    try {
      const { metrics, initial } = await trainingLoop<AugmentedBatch>(run, {
        epochs: r.epochs,
        stepsPerEpoch,
        // Two SimCLR views of every image of the epoch's permutation, from step `fromStep` on.
        batches: (epoch, fromStep) =>
          augmentBatches(imageBatches(train, epochPermutation(r.seed, epoch, n), fromStep * r.batchSize, r.batchSize), {
            pool,
            preset: 'simclr',
            outputSize: size,
            output: 'float32',
            colorStrength: r.colorStrength,
            ...(r.minScale !== undefined ? { minScale: r.minScale } : {}),
            batchSize: r.batchSize,
            dropLast: true,
            seed: r.seed,
            epoch,
            firstIndex: fromStep * r.batchSize,
          }),
        step: (batch) => {
          const count = batch.ids.length;
          const v1 = pixelsToTensor(batch.view1, count, size);
          const v2 = pixelsToTensor(batch.view2!, count, size);
          try {
            const { loss, accuracy } = simclrStep(model, optimizer, v1, v2, temperature);
            return { loss, contrastive_accuracy: accuracy };
          } finally {
            v1.dispose();
            v2.dispose();
          }
        },
        imagesIn: (batch) => 2 * batch.ids.length,
        schedule,
        logEvery: r.logEvery,
        tensorboard: r.tensorboard,
        evaluation: knn?.hook,
        backend: backend.name,
        describeStep: (batch) => `a step of 2 × ${batch.ids.length} views of ${size} px through ${r.model}`,
        formatEpoch: (f) =>
          `loss ${f.loss.toFixed(4)} contrastive acc ${(100 * f.contrastive_accuracy).toFixed(1)} % ${f.images_per_second.toFixed(0)} images/s (${f.epoch_seconds.toFixed(0)} s)` +
          (f.knn_accuracy !== undefined ? ` kNN ${(100 * f.knn_accuracy).toFixed(2)} %` : ''),
        signal: options.signal,
        log,
        onProgress: options.onProgress,
      });
      return {
        checkpoint: run.checkpointDir,
        metricsFile: run.metricsFile,
        metrics: {
          loss: metrics.loss,
          contrastive_accuracy: metrics.contrastive_accuracy ?? NaN,
          images_per_second: metrics.images_per_second,
          epochs: metrics.epochs,
          steps: metrics.steps,
          ...(initial?.knn_accuracy !== undefined ? { [initFrom ? 'knn_accuracy_init_from' : 'knn_accuracy_random_init']: initial.knn_accuracy } : {}),
          ...(metrics.knn_accuracy !== undefined ? { knn_accuracy: metrics.knn_accuracy } : {}),
        },
        backend: backend.name,
        ...(initFrom ? { initFrom } : {}),
      };
    } finally {
      await pool.destroy();
    }
  } finally {
    models.encoder.dispose();
    models.head.dispose();
    optimizer.dispose();
  }
}

/**
 * Warm start: copies the encoder and head weights of another run's checkpoint into `built` (when
 * `load`; a resumed run takes its own checkpoint's instead) after checking the architecture matches.
 * Returns the checkpoint and the sha256 of its index, which the resume key and the manifest record.
 */
async function warmStart(
  path: string,
  built: { encoder: tf.LayersModel; head: tf.LayersModel },
  arch: { model: string; width: number; headLayers: number; projectionDim: number; inputSize: number },
  load: boolean,
): Promise<{ checkpoint: string; sha256: string }> {
  const dir = await requireCheckpoint(path, `pretrain.initFrom ${path}: no pretrain checkpoint there (give OTHER_RUN/pretrain)`);
  const peek = await loadCheckpoint(dir, { models: [] });
  if (!peek.available.includes('encoder') || !peek.available.includes('head')) {
    throw new TrainingInputError(`pretrain.initFrom ${dir}: holds [${peek.available.join(', ')}], not a pretrained encoder and head`);
  }
  const saved = (peek.state as { key?: Partial<typeof arch> }).key ?? {};
  const differ = (Object.keys(arch) as (keyof typeof arch)[]).filter((k) => saved[k] !== arch[k]);
  if (differ.length > 0) {
    throw new TrainingInputError(
      `pretrain.initFrom ${dir}: another architecture (${differ.map((k) => `${k} ${JSON.stringify(saved[k] ?? null)} there, ${JSON.stringify(arch[k])} here`).join('; ')}); warm starts need the same network`,
    );
  }
  if (load) {
    const loaded = await loadCheckpoint(dir, { models: ['encoder', 'head'] });
    try {
      built.encoder.setWeights(loaded.models.encoder.getWeights());
      built.head.setWeights(loaded.models.head.getWeights());
    } finally {
      loaded.models.encoder.dispose();
      loaded.models.head.dispose();
    }
  }
  return { checkpoint: dir, sha256: await sha256File(join(dir, 'checkpoint.json')) };
}

/**
 * The kNN monitor: bank = labeled training rows (at most knnBank, a random subset so every class
 * is in it), queries = the held-out rows; before training (random weights) and every knnEvery epochs.
 */
function knnMonitor(r: Resolved, all: InMemoryImages, train: InMemoryImages, heldOut: number[], model: SimclrModel, log: (line: string) => void) {
  const labeledRows: number[] = [];
  for (let i = 0; i < train.ids.length; i++) if (train.labels[i] >= 0) labeledRows.push(i);
  const bankRows = limitRows(labeledRows, r.knnBank, r.seed);
  if (r.knnEvery === 0) return null;
  if (heldOut.length === 0 || bankRows.length === 0) {
    log('pretrain: kNN monitor off: it needs --knn-holdout N on a labeled dataset');
    return null;
  }
  const bank = gatherImages(train, bankRows);
  const queries = gatherImages(all, heldOut);
  const size = all.height;
  const evaluate = (): number => {
    const bankFeatures = embed(model.encoder, bank.pixels, bank.ids.length, size);
    const queryFeatures = embed(model.encoder, queries.pixels, queries.ids.length, size);
    try {
      const predicted = knnPredict(bankFeatures, bank.labels, queryFeatures, { k: r.knnK, temperature: 0.1, numClasses: all.classes.length });
      return knnAccuracy(predicted, queries.labels);
    } finally {
      bankFeatures.dispose();
      queryFeatures.dispose();
    }
  };
  return {
    hook: {
      every: r.knnEvery,
      atStart: true,
      run: ({ atStart }: { atStart: boolean }) => {
        const t0 = performance.now();
        const knn_accuracy = evaluate();
        if (atStart) {
          log(`pretrain: kNN accuracy with random weights ${(100 * knn_accuracy).toFixed(2)} % (k ${r.knnK}, ${bank.ids.length} bank, ${queries.ids.length} queries, ${((performance.now() - t0) / 1000).toFixed(1)} s)`);
        }
        return { knn_accuracy };
      },
    },
  };
}
