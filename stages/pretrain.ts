// The pretrain stage: SimCLR/SimCLRv2 contrastive pretraining of a ResNet encoder + projection head
// on an images dataset, with per-epoch atomic checkpoints, exact resume and a kNN monitor.
import { appendFile, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { AugmentPool, augmentBatches, type RawImageBatch } from '../augment/pool.ts';
import { philox4x32 } from '../augment/rng.ts';
import { gatherImages, loadImages, type InMemoryImages } from '../data/memory.ts';
import type * as tf from '@tensorflow/tfjs';
import { useBackend, type BackendName } from '../models/engine/backend.ts';
import { findCheckpoint, loadCheckpoint, saveCheckpoint, type JsonValue } from '../models/checkpoint.ts';
import { accuracy as knnAccuracy, knnPredict } from '../models/knn.ts';
import { defaultTemperature } from '../models/losses.ts';
import { makeOptimizer, type OptimizerName, type WeightDecayOptimizer } from '../models/optimizers.ts';
import { defaultWarmupEpochs, scaledLearningRate, warmupCosine, type LearningRateScaling } from '../models/schedules.ts';
import { buildSimclrModel, embed, pixelsToTensor, simclrStep, type SimclrModel } from '../models/simclr.ts';

export interface PretrainOptions {
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
  seed?: number;
  workers?: number;
  backend?: BackendName;
  resume?: boolean;
  /** Steps between metrics.jsonl lines (there is always one per epoch as well). */
  logEvery?: number;
  /** Hold out this many labeled images per class from training, as kNN queries (0 = none). */
  knnHoldout?: number;
  /** Compute kNN accuracy every this many epochs (and before training and at the end); 0 = off. */
  knnEvery?: number;
  knnK?: number;
  /** Labeled training images used as the kNN memory bank, at most. */
  knnBank?: number;
  signal?: AbortSignal;
  log?: (line: string) => void;
  onProgress?: (info: { epoch: number; step: number; stepsPerEpoch: number; loss: number; imagesPerSecond: number }) => void;
  /** Called once the backend is chosen. */
  onBackend?: (name: string) => void;
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
    knn_accuracy_random_init?: number;
  };
  backend: string;
}

/** A bad option, dataset or checkpoint for this stage: the CLI exits 2. */
export class PretrainInputError extends Error {
  override name = 'PretrainInputError';
}

/** The run stopped on a signal after writing a checkpoint. */
export class PretrainInterruptedError extends Error {
  override name = 'PretrainInterruptedError';
}

/** A training step did not fit in the backend's memory. */
export class PretrainOutOfMemoryError extends Error {
  override name = 'PretrainOutOfMemoryError';
}

/** The loss became NaN or infinite. */
export class NonFiniteLossError extends Error {
  override name = 'NonFiniteLossError';
}

interface Resolved extends Required<Omit<PretrainOptions, 'temperature' | 'lr' | 'warmupEpochs' | 'colorStrength' | 'minScale' | 'signal' | 'log' | 'onProgress' | 'onBackend' | 'workers'>> {
  minScale?: number;
  temperature?: number;
  lr?: number;
  warmupEpochs?: number;
  colorStrength?: number;
  workers?: number;
}

function resolve(options: PretrainOptions): Resolved {
  const r: Resolved = {
    epochs: 100,
    // SimCLR uses 256 and more; 128 leaves room in the wasm backends' heap (4 GB at most) for the
    // larger encoders (ResNet-18 at 2 × 128 views of 32 px: ~2.7 GB peak RSS on wasm); ResNet-20
    // at 256 needs ~1.7 GB.
    batchSize: 128,
    model: 'resnet20',
    width: 1,
    lrScaling: 'linear',
    optimizer: 'lars',
    weightDecay: 1e-6,
    momentum: 0.9,
    headLayers: 3,
    projectionDim: 128,
    limit: 0,
    seed: 0,
    backend: 'auto',
    resume: false,
    logEvery: 10,
    knnHoldout: 0,
    knnEvery: 0,
    knnK: 200,
    knnBank: 10_000,
    ...Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)),
  } as Resolved;
  const int = (name: keyof Resolved, min: number) => {
    const v = r[name] as number;
    if (!Number.isInteger(v) || v < min) throw new PretrainInputError(`pretrain.${name} must be an integer >= ${min}, got ${v}`);
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
    if (v !== undefined && !(Number.isFinite(v) && v > 0)) throw new PretrainInputError(`pretrain.${name} must be > 0, got ${v}`);
  };
  positive('width');
  positive('temperature');
  positive('lr');
  positive('colorStrength');
  positive('minScale');
  if (r.minScale !== undefined && r.minScale > 1) throw new PretrainInputError(`pretrain.minScale must be in (0, 1], got ${r.minScale}`);
  if (r.warmupEpochs !== undefined && !(r.warmupEpochs >= 0 && r.warmupEpochs <= r.epochs)) {
    throw new PretrainInputError(`pretrain.warmupEpochs must be in [0, epochs], got ${r.warmupEpochs}`);
  }
  if (!(r.weightDecay >= 0)) throw new PretrainInputError(`pretrain.weightDecay must be >= 0, got ${r.weightDecay}`);
  if (!(r.momentum >= 0 && r.momentum < 1)) throw new PretrainInputError(`pretrain.momentum must be in [0, 1), got ${r.momentum}`);
  return r;
}

/** Permutation key of the --limit subset: an "epoch" no training run reaches. */
const SUBSET_EPOCH = 0xffffffff;

/**
 * A permutation of 0..n-1 that depends only on (seed, epoch): Fisher–Yates on Philox words, one
 * counter per position. Not ViewRandom.permutation: one view stream holds 262,144 draws, fewer
 * than a large dataset's permutation needs.
 */
export function epochPermutation(seed: number, epoch: number, n: number): Uint32Array {
  const perm = new Uint32Array(n);
  for (let i = 0; i < n; i++) perm[i] = i;
  const key = new Uint32Array([seed >>> 0, Math.floor(seed / 4294967296) >>> 0]);
  const ctr = new Uint32Array([epoch >>> 0, 0, 0, 0x5eed0e0c]);
  const words = new Uint32Array(4);
  for (let i = n - 1; i > 0; i--) {
    ctr[1] = i;
    philox4x32(ctr, key, words);
    // 53 random bits scaled to [0, i]: the bias of a 2^53 range over n <= 2^32 is negligible.
    const u = ((words[0] >>> 5) * 67108864 + (words[1] >>> 6)) / 9007199254740992;
    const j = Math.floor(u * (i + 1));
    const t = perm[i];
    perm[i] = perm[j];
    perm[j] = t;
  }
  return perm;
}

/** Splits labeled rows into training rows and `perClass` held-out rows per class (the last ones by id order). */
export function holdoutSplit(images: InMemoryImages, perClass: number): { train: number[]; heldOut: number[] } {
  if (perClass === 0) return { train: images.ids.map((_, i) => i), heldOut: [] };
  const byClass = new Map<number, number[]>();
  const train: number[] = [];
  images.labels.forEach((label, i) => {
    if (label < 0) train.push(i);
    else byClass.set(label, [...(byClass.get(label) ?? []), i]);
  });
  if (byClass.size === 0) throw new PretrainInputError('pretrain.knnHoldout needs a labeled dataset, and this one has no labels');
  const heldOut: number[] = [];
  for (const [label, rows] of [...byClass.entries()].sort((a, b) => a[0] - b[0])) {
    if (rows.length <= perClass) {
      throw new PretrainInputError(`pretrain.knnHoldout ${perClass} leaves no training images of class ${images.classes[label]} (${rows.length} images)`);
    }
    train.push(...rows.slice(0, rows.length - perClass));
    heldOut.push(...rows.slice(rows.length - perClass));
  }
  return { train: train.sort((a, b) => a - b), heldOut };
}

/**
 * At most `limit` of `rows` (0 = all), a seeded random subset in dataset order: not the first rows,
 * because datasets are sorted by class folder and the first rows would be one class.
 */
export function limitRows(rows: number[], limit: number, seed: number): number[] {
  if (limit === 0 || limit >= rows.length) return rows;
  const pick = epochPermutation(seed, SUBSET_EPOCH, rows.length).subarray(0, limit);
  return Array.from(pick, (i) => rows[i]).sort((a, b) => a - b);
}

function defaultBaseLr(optimizer: OptimizerName, scaling: LearningRateScaling): number {
  if (optimizer === 'adam') return 1e-3;
  // SimCLR: 0.3 × B/256 with linear scaling, 0.075 × √B with square-root scaling.
  return scaling === 'linear' ? 0.3 : 0.075;
}

interface TrainState {
  /** Next epoch to run (or the current one, when stepInEpoch > 0). */
  epoch: number;
  /** Steps of `epoch` already taken. */
  stepInEpoch: number;
  globalStep: number;
}

/** What must match for a checkpoint to be resumed by the same run. */
function resumeKey(r: Resolved, size: number, trainRows: number) {
  return {
    model: r.model,
    width: r.width,
    headLayers: r.headLayers,
    projectionDim: r.projectionDim,
    batchSize: r.batchSize,
    seed: r.seed,
    optimizer: r.optimizer,
    inputSize: size,
    trainRows,
  };
}

export async function pretrain(options: PretrainOptions): Promise<PretrainResult> {
  const r = resolve(options);
  const log = options.log ?? (() => {});
  const backend = await useBackend(r.backend, log);
  options.onBackend?.(backend.name);

  const all = await loadImages(options.data);
  if (all.height !== all.width) throw new PretrainInputError(`pretrain: images in ${options.data} are ${all.height}x${all.width}; square images are expected (ingest with --size)`);
  const size = all.height;
  const { train: trainRowsAll, heldOut } = holdoutSplit(all, r.knnHoldout);
  const trainRows = limitRows(trainRowsAll, r.limit, r.seed);
  const train = gatherImages(all, trainRows);
  const n = train.ids.length;
  if (n < r.batchSize) {
    throw new PretrainInputError(`pretrain.batchSize ${r.batchSize} is larger than the ${n} training images in ${options.data}`);
  }
  const temperature = r.temperature ?? defaultTemperature(size);
  const stepsPerEpoch = Math.floor(n / r.batchSize); // the last partial batch is dropped: NT-Xent wants full batches
  const totalSteps = stepsPerEpoch * r.epochs;
  const baseLr = scaledLearningRate(r.lr ?? defaultBaseLr(r.optimizer, r.lrScaling), r.batchSize, r.lrScaling);
  const warmupSteps = Math.round((r.warmupEpochs ?? defaultWarmupEpochs(r.epochs)) * stepsPerEpoch);
  const schedule = warmupCosine({ baseLr, warmupSteps, totalSteps });

  await mkdir(options.outDir, { recursive: true });
  const checkpointDir = join(options.outDir, 'checkpoint');
  const metricsFile = join(options.outDir, 'metrics.jsonl');
  const key = resumeKey(r, size, n);

  let model: SimclrModel = buildSimclrModel({ encoder: r.model, width: r.width, inputSize: size, headLayers: r.headLayers, projectionDim: r.projectionDim, seed: r.seed });
  const optimizer: WeightDecayOptimizer = makeOptimizer({ name: r.optimizer, learningRate: baseLr, momentum: r.momentum, weightDecay: r.weightDecay } as never);
  let state: TrainState = { epoch: 0, stepInEpoch: 0, globalStep: 0 };
  // Everything below holds the model and optimizer: free them however the run ends.
  try {
    if (r.resume) {
      if ((await findCheckpoint(checkpointDir)) === null) {
        throw new PretrainInputError(`pretrain --resume: no checkpoint in ${checkpointDir} to resume from`);
      }
      const loaded = await loadCheckpoint(checkpointDir, { models: ['encoder', 'head'], optimizer });
      const saved = loaded.state as unknown as { train: TrainState; key: Record<string, unknown> };
      for (const [k, v] of Object.entries(key)) {
        if (saved.key?.[k] !== v) {
          for (const m of Object.values(loaded.models)) m.dispose();
          throw new PretrainInputError(`pretrain --resume: the checkpoint in ${checkpointDir} was made with ${k} = ${JSON.stringify(saved.key?.[k])}, this run has ${JSON.stringify(v)}`);
        }
      }
      model.encoder.dispose();
      model.head.dispose();
      model = { encoder: loaded.models.encoder, head: loaded.models.head, featureDim: model.featureDim };
      state = saved.train;
      log(`pretrain: resuming from ${checkpointDir} at epoch ${state.epoch + 1}, step ${state.stepInEpoch} of ${stepsPerEpoch}`);
    } else {
      // A fresh run replaces the metrics of any earlier one in this directory.
      await writeFile(metricsFile, '');
    }

    const writeMetrics = (row: Record<string, unknown>) => appendFile(metricsFile, JSON.stringify(row) + '\n');
    const saveState = (s: TrainState) =>
      saveCheckpoint(checkpointDir, {
        models: { encoder: model.encoder, head: model.head },
        optimizer,
        state: { train: s, key, config: { ...key, temperature, baseLr, warmupSteps, totalSteps } } as unknown as JsonValue,
      });

    // kNN monitor: bank = labeled training rows (at most knnBank), queries = held-out rows.
    const labeledRows: number[] = [];
    for (let i = 0; i < n; i++) if (train.labels[i] >= 0) labeledRows.push(i);
    const bankRows = limitRows(labeledRows, r.knnBank, r.seed); // random, so every class is in it
    const knnEnabled = r.knnEvery > 0 && heldOut.length > 0 && bankRows.length > 0;
    if (r.knnEvery > 0 && !knnEnabled) log('pretrain: kNN monitor off: it needs --knn-holdout N on a labeled dataset');
    const bank = knnEnabled ? gatherImages(train, bankRows) : null;
    const queries = knnEnabled ? gatherImages(all, heldOut) : null;
    const evaluateKnn = (): number => {
      const bankFeatures = embed(model.encoder, bank!.pixels, bank!.ids.length, size);
      const queryFeatures = embed(model.encoder, queries!.pixels, queries!.ids.length, size);
      try {
        const predicted = knnPredict(bankFeatures, bank!.labels, queryFeatures, { k: r.knnK, temperature: 0.1, numClasses: all.classes.length });
        return knnAccuracy(predicted, queries!.labels);
      } finally {
        bankFeatures.dispose();
        queryFeatures.dispose();
      }
    };

    const metrics: PretrainResult['metrics'] = { loss: NaN, contrastive_accuracy: NaN, images_per_second: NaN, epochs: 0, steps: state.globalStep };
    if (knnEnabled && state.globalStep === 0) {
      const t0 = performance.now();
      metrics.knn_accuracy_random_init = evaluateKnn();
      log(`pretrain: kNN accuracy with random weights ${(100 * metrics.knn_accuracy_random_init).toFixed(2)} % (k ${r.knnK}, ${bank!.ids.length} bank, ${queries!.ids.length} queries, ${((performance.now() - t0) / 1000).toFixed(1)} s)`);
      await writeMetrics({ epoch: 0, step: 0, knn_accuracy: metrics.knn_accuracy_random_init });
    }

    log(
      `pretrain: ${r.model} (width ${r.width}) + ${r.headLayers}-layer head on ${n} images of ${size}px, batch ${r.batchSize}, ${stepsPerEpoch} steps/epoch × ${r.epochs} epochs, ` +
        `${r.optimizer} lr ${baseLr.toPrecision(3)} (warm-up ${warmupSteps} steps, cosine), τ ${temperature}, backend ${backend.name}`,
    );

    const pool = new AugmentPool({ workers: r.workers });
    const source = (perm: Uint32Array, from: number): Iterable<RawImageBatch> => ({
      *[Symbol.iterator]() {
        const chunk = r.batchSize;
        for (let start = from; start < n; start += chunk) {
          const rows = perm.subarray(start, Math.min(n, start + chunk));
          const batch = gatherImages(train, rows);
          yield { ids: batch.ids, pixels: batch.pixels, height: size, width: size };
        }
      },
    });

    let interrupted = false;
    const onAbort = () => {
      interrupted = true;
    };
    options.signal?.addEventListener('abort', onAbort, { once: true });
    try {
      for (let epoch = state.epoch; epoch < r.epochs; epoch++) {
        const perm = epochPermutation(r.seed, epoch, n);
        const skip = epoch === state.epoch ? state.stepInEpoch : 0;
        let epochLoss = 0;
        let epochAcc = 0;
        let epochSteps = 0;
        let windowLoss = 0;
        let windowAcc = 0;
        let windowSteps = 0;
        let windowStart = performance.now();
        const epochStart = performance.now();
        const batches = augmentBatches(source(perm, skip * r.batchSize), {
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
          firstIndex: skip * r.batchSize,
        });
        let stepInEpoch = skip;
        options.onProgress?.({ epoch, step: stepInEpoch, stepsPerEpoch, loss: NaN, imagesPerSecond: NaN });
        for await (const batch of batches) {
          const lr = schedule(state.globalStep);
          optimizer.setLearningRate(lr);
          const count = batch.ids.length;
          let v1: tf.Tensor4D | null = null;
          let v2: tf.Tensor4D | null = null;
          let result;
          try {
            v1 = pixelsToTensor(batch.view1, count, size);
            v2 = pixelsToTensor(batch.view2!, count, size);
            result = simclrStep(model, optimizer, v1, v2, temperature);
          } catch (err) {
            // When the wasm heap (4 GB at most) cannot grow, emscripten aborts or a kernel writes out
            // of bounds: the step's activations for 2 × batch views did not fit. The wasm instance
            // is unusable afterwards.
            if (err instanceof Error && err.name === 'RuntimeError' && /^Aborted|memory access out of bounds/.test(err.message)) {
              throw new PretrainOutOfMemoryError(
                `pretrain: the ${backend.name} backend ran out of memory (its heap is at most 4 GB) in a step of 2 × ${count} views of ${size} px through ${r.model}; ` +
                  `use a smaller --batch-size (about half)${(await findCheckpoint(checkpointDir)) ? ` and --resume from ${checkpointDir}` : ''}`,
              );
            }
            throw err;
          } finally {
            v1?.dispose();
            v2?.dispose();
          }
          if (!Number.isFinite(result.loss)) {
            const last = await findCheckpoint(checkpointDir);
            throw new NonFiniteLossError(
              `pretrain: loss is ${result.loss} at epoch ${epoch + 1} step ${stepInEpoch + 1} (global step ${state.globalStep + 1}, lr ${lr.toPrecision(3)}); ` +
                (last ? `last good checkpoint: ${last} (resume with --resume, perhaps with a lower --lr)` : 'no checkpoint was written yet; try a lower --lr'),
            );
          }
          stepInEpoch++;
          state = { epoch, stepInEpoch, globalStep: state.globalStep + 1 };
          epochLoss += result.loss;
          epochAcc += result.accuracy;
          epochSteps++;
          windowLoss += result.loss;
          windowAcc += result.accuracy;
          windowSteps++;
          const now = performance.now();
          const imagesPerSecond = (2 * count * windowSteps) / ((now - windowStart) / 1000);
          options.onProgress?.({ epoch, step: stepInEpoch, stepsPerEpoch, loss: result.loss, imagesPerSecond });
          if (windowSteps === r.logEvery) {
            await writeMetrics({
              epoch: epoch + 1,
              step: state.globalStep,
              loss: windowLoss / windowSteps,
              contrastive_accuracy: windowAcc / windowSteps,
              lr,
              images_per_second: imagesPerSecond,
            });
            windowLoss = windowAcc = windowSteps = 0;
            windowStart = performance.now();
          }
          if (interrupted) break;
        }
        if (interrupted) {
          await saveState(state.stepInEpoch === stepsPerEpoch ? { epoch: epoch + 1, stepInEpoch: 0, globalStep: state.globalStep } : state);
          throw new PretrainInterruptedError(
            `pretrain interrupted at epoch ${epoch + 1} step ${state.stepInEpoch} of ${stepsPerEpoch}; checkpoint written to ${checkpointDir}; ` +
              `continue with the same command plus --resume`,
          );
        }
        const seconds = (performance.now() - epochStart) / 1000;
        state = { epoch: epoch + 1, stepInEpoch: 0, globalStep: state.globalStep };
        metrics.loss = epochLoss / Math.max(1, epochSteps);
        metrics.contrastive_accuracy = epochAcc / Math.max(1, epochSteps);
        metrics.images_per_second = (2 * r.batchSize * epochSteps) / seconds;
        metrics.epochs = epoch + 1;
        metrics.steps = state.globalStep;
        const row: Record<string, unknown> = {
          epoch: epoch + 1,
          step: state.globalStep,
          loss: metrics.loss,
          contrastive_accuracy: metrics.contrastive_accuracy,
          lr: schedule(state.globalStep - 1),
          images_per_second: metrics.images_per_second,
          epoch_seconds: seconds,
          summary: 'epoch',
        };
        if (knnEnabled && ((epoch + 1) % r.knnEvery === 0 || epoch + 1 === r.epochs)) {
          metrics.knn_accuracy = evaluateKnn();
          row.knn_accuracy = metrics.knn_accuracy;
        }
        await writeMetrics(row);
        await saveState(state);
        log(
          `pretrain: epoch ${epoch + 1}/${r.epochs} loss ${metrics.loss.toFixed(4)} contrastive acc ${(100 * metrics.contrastive_accuracy).toFixed(1)} % ` +
            `${metrics.images_per_second.toFixed(0)} images/s (${seconds.toFixed(0)} s)` +
            (row.knn_accuracy !== undefined ? ` kNN ${(100 * (row.knn_accuracy as number)).toFixed(2)} %` : ''),
        );
      }
    } finally {
      options.signal?.removeEventListener('abort', onAbort);
      await pool.destroy();
    }
    return { checkpoint: checkpointDir, metricsFile, metrics, backend: backend.name };
  } finally {
    model.encoder.dispose();
    model.head.dispose();
    optimizer.dispose();
  }
}

