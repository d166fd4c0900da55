// The finetune stage: SimCLRv2's few-label fine-tuning from the first projection-head layer of a
// pretrained encoder, or (`init: 'random'`) the same network trained from scratch as the baseline.
import * as tf from '@tensorflow/tfjs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { AugmentPool, augmentBatches, type AugmentedBatch } from '../augment/pool.ts';
import { writeFileAtomic } from '../data/files.ts';
import { formatLabeledIds, holdoutSplit, parseLabelSpec, selectLabeled } from '../data/labels.ts';
import { datasetHash, readManifest } from '../data/manifest.ts';
import { gatherImages, loadImages } from '../data/memory.ts';
import { epochPermutation } from '../data/random.ts';
import { loadCheckpoint } from '../models/checkpoint.ts';
import { buildClassifier, topOneAccuracy, classifierParts, classifierStep } from '../models/classifier.ts';
import { useBackend } from '../models/engine/backend.ts';
import { buildProjectionHead } from '../models/head.ts';
import { makeOptimizer, type OptimizerName } from '../models/optimizers.ts';
import { buildEncoder } from '../models/resnet.ts';
import { scaledLearningRate, warmupCosine, type LearningRateScaling } from '../models/schedules.ts';
import { embed, pixelsToTensor } from '../models/simclr.ts';
import { withDefaults } from './options.ts';
import { imageBatches } from './training/batches.ts';
import { requireCheckpoint } from './training/checkpoints.ts';
import { openTraining, TrainingInputError, trainingLoop, type TrainingStageOptions } from './training/loop.ts';

export type FinetuneInit = 'pretrained' | 'random';

export interface FinetuneOptions extends TrainingStageOptions {
  /** Labeled images dataset (an ingest output). */
  data: string;
  /** Stage directory: checkpoint/, metrics.jsonl, labeled-ids.txt go here. */
  outDir: string;
  /** Pretrain stage directory (or its checkpoint/); needed for init 'pretrained'; with 'random' it gives the architecture. */
  pretrained?: string;
  /** 'pretrained': SimCLRv2 fine-tuning; 'random': the supervised baseline, same network from scratch. */
  init?: FinetuneInit;
  /** `P%`, `N-per-class`, `N` or an ids file (data/labels.ts). */
  labels?: string;
  /** Hold out the last N labeled images of each class (never trained on), scored every evalEvery epochs. */
  holdout?: number;
  /** Head blocks kept before the classifier: 1 = SimCLRv2's first projection layer, 0 = the encoder output. */
  fromHeadLayer?: number;
  /** Train only the kept head blocks and the classifier; the encoder's batch norm stays in inference mode. */
  freezeEncoder?: boolean;
  /** Default: by the number of labeled images (defaultFinetuneEpochs). */
  epochs?: number;
  batchSize?: number;
  /** Base learning rate; default 0.005 × √batch (LARS, SimCLRv2) or 0.2 × batch/256 (SGD from scratch). */
  lr?: number;
  optimizer?: OptimizerName;
  weightDecay?: number;
  momentum?: number;
  /** Smallest crop area of the random resized crop. */
  minScale?: number;
  /** Architecture of a random-init network when no pretrained checkpoint gives it. */
  model?: string;
  width?: number;
  headLayers?: number;
  /** Score the held-out images every N epochs (and after the last); 0 = only after the last. */
  evalEvery?: number;
}

export interface FinetuneResult {
  checkpoint: string;
  metricsFile: string;
  labeledIds: string;
  classes: string[];
  metrics: {
    loss: number;
    train_accuracy: number;
    images_per_second: number;
    epochs: number;
    steps: number;
    labeled: number;
    /** Top-1 on the held-out images, when there are some. */
    accuracy?: number;
  };
  backend: string;
}

/** Defaults shared by both inits; the optimizer's depend on the init (INIT_DEFAULTS). */
export const FINETUNE_DEFAULTS = {
  init: 'pretrained',
  labels: '10%',
  holdout: 0,
  // SimCLRv2 fine-tunes from the first layer of its 3-layer head (arXiv 2006.10029, §2).
  fromHeadLayer: 1,
  freezeEncoder: false,
  // Few labels: 64 gives a 1 % CIFAR subset (400 images) 6 steps an epoch; SimCLRv2's 1024 needs ImageNet.
  batchSize: 64,
  model: 'resnet20',
  width: 1,
  headLayers: 3,
  seed: 0,
  backend: 'auto',
  resume: false,
  force: false,
  logEvery: 10,
  tensorboard: false,
  evalEvery: 0,
} as const satisfies Partial<FinetuneOptions>;

/**
 * SimCLRv2's fine-tuning recipe for 'pretrained' (LARS, lr 0.005 × √batch, no weight decay, no
 * warm-up) and what usually suits training from scratch for 'random' (SGD with momentum 0.9,
 * 0.2 × batch/256 = 0.05 at batch 64, weight decay 5e-4); cosine decay for both.
 */
export const INIT_DEFAULTS = {
  pretrained: { optimizer: 'lars', lr: 0.005, lrScaling: 'sqrt', weightDecay: 0, momentum: 0.9 },
  random: { optimizer: 'sgd', lr: 0.2, lrScaling: 'linear', weightDecay: 5e-4, momentum: 0.9 },
} as const satisfies Record<FinetuneInit, { optimizer: OptimizerName; lr: number; lrScaling: LearningRateScaling; weightDecay: number; momentum: number }>;

/**
 * Epochs for `n` labeled images: SimCLRv2 fine-tunes 60 epochs on 1 % of ImageNet (12.8k images)
 * and 30 on 10 % (128k); the power law through those two points, epochs = 60 · (12,800 / n)^0.301,
 * kept within [10, 200]: 170 epochs for 400 images (1 % of 40,000), 85 for 4,000.
 */
export function defaultFinetuneEpochs(n: number): number {
  return Math.min(200, Math.max(10, Math.round(60 * (12_800 / n) ** Math.log10(2))));
}

interface PretrainKey {
  model: string;
  width: number;
  headLayers: number;
  projectionDim: number;
  inputSize: number;
  datasetSha256?: string;
}

export async function finetune(options: FinetuneOptions): Promise<FinetuneResult> {
  const r = withDefaults(FINETUNE_DEFAULTS, options);
  const init = r.init;
  if (init !== 'pretrained' && init !== 'random') throw new TrainingInputError(`finetune.init must be pretrained or random, got ${JSON.stringify(init)}`);
  const o = withDefaults(INIT_DEFAULTS[init], options);
  const int = (name: 'holdout' | 'fromHeadLayer' | 'batchSize' | 'seed' | 'logEvery' | 'evalEvery' | 'headLayers', min: number) => {
    if (!Number.isInteger(r[name]) || r[name] < min) throw new TrainingInputError(`finetune.${name} must be an integer >= ${min}, got ${r[name]}`);
  };
  int('holdout', 0);
  int('fromHeadLayer', 0);
  int('batchSize', 2);
  int('seed', 0);
  int('logEvery', 1);
  int('evalEvery', 0);
  int('headLayers', 1);
  if (options.epochs !== undefined && !(Number.isInteger(options.epochs) && options.epochs >= 1)) throw new TrainingInputError(`finetune.epochs must be an integer >= 1, got ${options.epochs}`);
  if (!(o.lr > 0)) throw new TrainingInputError(`finetune.lr must be > 0, got ${o.lr}`);
  if (!(o.weightDecay >= 0)) throw new TrainingInputError(`finetune.weightDecay must be >= 0, got ${o.weightDecay}`);
  if (!(o.momentum >= 0 && o.momentum < 1)) throw new TrainingInputError(`finetune.momentum must be in [0, 1), got ${o.momentum}`);
  if (init === 'pretrained' && !r.pretrained) throw new TrainingInputError('finetune.pretrained is required (a pretrain stage directory) unless init is random');
  const labelSpec = parseLabelSpec(r.labels, 'finetune.labels');
  const log = r.log ?? (() => {});

  // The pretrained network and what it was trained on, checked against this dataset.
  const pretrainedDir = r.pretrained
    ? await requireCheckpoint(r.pretrained, `finetune.pretrained ${r.pretrained}: no pretrain checkpoint there (run pretrain first, or give RUN_DIR/pretrain)`)
    : null;
  const savedKey = pretrainedDir ? (((await loadCheckpoint(pretrainedDir, { models: [] })).state as { key?: PretrainKey }).key ?? null) : null;
  if (pretrainedDir && savedKey === null) throw new TrainingInputError(`finetune.pretrained ${pretrainedDir}: the checkpoint does not record its architecture (state.json key)`);

  const backend = await useBackend(r.backend, log);
  r.onBackend?.(backend.name);
  const all = await loadImages(r.data);
  const size = all.height;
  if (all.width !== size) throw new TrainingInputError(`finetune: images in ${r.data} are ${all.height}x${all.width}; square images are expected (ingest with --size)`);
  if (savedKey && savedKey.inputSize !== size) {
    throw new TrainingInputError(`finetune: ${pretrainedDir} was pretrained on ${savedKey.inputSize} px images, ${r.data} holds ${size} px images`);
  }
  if (all.classes.length < 2) throw new TrainingInputError(`finetune: ${r.data} has ${all.classes.length} classes; a classifier needs at least 2`);
  const { train: trainRows, heldOut } = holdoutSplit(all, r.holdout, 'finetune.holdout');
  const pool = gatherImages(all, trainRows);
  const chosen = await selectLabeled(pool, labelSpec, r.seed, 'finetune.labels');
  const labeled = gatherImages(pool, chosen.rows);
  labeled.labels.set(chosen.labels);
  const n = chosen.rows.length;
  const labelOf = new Map(labeled.ids.map((id, i) => [id, labeled.labels[i]]));
  const labeledIds = join(r.outDir, 'labeled-ids.txt');
  const labeledText = formatLabeledIds(pool, chosen);

  const epochs = r.epochs ?? defaultFinetuneEpochs(n);
  const batchSize = Math.min(r.batchSize, n);
  // A last batch of one image would give batch norm a zero variance: it is left out of the epoch.
  const stepsPerEpoch = n % batchSize === 1 ? Math.floor(n / batchSize) : Math.ceil(n / batchSize);
  const used = Math.min(n, stepsPerEpoch * batchSize); // images per epoch
  const baseLr = scaledLearningRate(o.lr, batchSize, o.lrScaling);
  const schedule = warmupCosine({ baseLr, warmupSteps: 0, totalSteps: stepsPerEpoch * epochs });

  const arch = savedKey ?? { model: r.model, width: r.width, headLayers: r.headLayers, projectionDim: 128, inputSize: size };
  if (r.fromHeadLayer > arch.headLayers) throw new TrainingInputError(`finetune.fromHeadLayer ${r.fromHeadLayer} is deeper than the ${arch.headLayers}-layer head`);
  let encoder: tf.LayersModel;
  let head: tf.LayersModel;
  if (init === 'pretrained') {
    const loaded = await loadCheckpoint(pretrainedDir!, { models: ['encoder', 'head'] });
    ({ encoder, head } = loaded.models);
  } else {
    encoder = buildEncoder({ name: arch.model, width: arch.width, inputSize: size, seed: r.seed }).model;
    head = buildProjectionHead({ inputDim: encoder.outputs[0].shape[1] as number, layers: arch.headLayers, outputDim: arch.projectionDim, seed: r.seed + 7919 });
  }
  let classifier = buildClassifier(encoder, head, r.fromHeadLayer, all.classes.length);
  const optimizer = makeOptimizer({ name: o.optimizer, learningRate: baseLr, momentum: o.momentum, weightDecay: o.weightDecay });
  const labeledSha256 = createHash('sha256').update(labeledText).digest('hex');
  const key = {
    init,
    pretrainedDatasetSha256: savedKey?.datasetSha256 ?? null,
    model: arch.model,
    width: arch.width,
    headLayers: arch.headLayers,
    fromHeadLayer: r.fromHeadLayer,
    freezeEncoder: r.freezeEncoder,
    inputSize: size,
    datasetSha256: datasetHash(await readManifest(r.data)),
    labeledSha256,
    batchSize,
    epochs,
    seed: r.seed,
    optimizer: o.optimizer,
    baseLr,
    weightDecay: o.weightDecay,
    momentum: o.momentum,
    minScale: r.minScale ?? null,
  };
  try {
    const run = await openTraining({ stage: 'finetune', outDir: r.outDir, models: { classifier }, optimizer, key, config: { classes: all.classes, totalSteps: stepsPerEpoch * epochs }, resume: r.resume, force: r.force });
    // The classifier owns the encoder and head it was built on (openTraining disposed it when resuming).
    classifier = run.models.classifier;
    const parts = classifierParts(classifier);
    await writeFileAtomic(labeledIds, labeledText);
    await writeFileAtomic(join(r.outDir, 'classes.json'), JSON.stringify(all.classes) + '\n');
    if (r.resume) log(`finetune: resuming from ${run.checkpointDir} at epoch ${run.state.epoch + 1}, step ${run.state.stepInEpoch} of ${stepsPerEpoch}`);
    log(
      `finetune: ${init === 'pretrained' ? `from ${pretrainedDir}` : 'random init (supervised baseline)'}, ${arch.model} + ${r.fromHeadLayer} head layer(s) → ${all.classes.length} classes, ` +
        `${n} labeled images (${labelSpecText(r.labels)}; ${Object.entries(chosen.perClass).map(([c, k]) => `${c} ${k}`).join(', ')}), batch ${batchSize}, ${stepsPerEpoch} steps/epoch × ${epochs} epochs, ` +
        `${o.optimizer} lr ${baseLr.toPrecision(3)} (cosine), weight decay ${o.weightDecay}${r.freezeEncoder ? ', encoder frozen' : ''}, backend ${backend.name}`,
    );

    const queries = heldOut.length > 0 ? gatherImages(all, heldOut) : null;
    const score = (): number => topOneAccuracy(classifier, queries!.pixels, queries!.labels, queries!.ids.length, size);

    const workers = new AugmentPool({ workers: r.workers });
    try {
      const { metrics } = await trainingLoop<AugmentedBatch>(run, {
        epochs,
        stepsPerEpoch,
        // One crop + flip view of every labeled image (SimCLRv2 fine-tunes without colour distortion or blur).
        batches: (epoch, fromStep) =>
          augmentBatches(imageBatches(labeled, epochPermutation(r.seed, epoch, n).subarray(0, used), fromStep * batchSize, batchSize), {
            pool: workers,
            preset: 'finetune',
            outputSize: size,
            output: 'float32',
            ...(r.minScale !== undefined ? { minScale: r.minScale } : {}),
            batchSize,
            seed: r.seed,
            epoch,
            firstIndex: fromStep * batchSize,
          }),
        step: (batch) => {
          const count = batch.ids.length;
          const x = pixelsToTensor(batch.view1, count, size);
          const y = tf.tensor1d(batch.ids.map((id) => labelOf.get(id)!), 'int32');
          try {
            const { loss, accuracy } = classifierStep(parts, optimizer, x, y, r.freezeEncoder);
            return { loss, train_accuracy: accuracy };
          } finally {
            x.dispose();
            y.dispose();
          }
        },
        imagesIn: (batch) => batch.ids.length,
        schedule,
        logEvery: r.logEvery,
        tensorboard: r.tensorboard,
        evaluation: queries ? { every: r.evalEvery || epochs, run: () => ({ accuracy: score() }) } : undefined,
        backend: backend.name,
        describeStep: (batch) => `a step of ${batch.ids.length} images of ${size} px through ${arch.model}`,
        formatEpoch: (f) =>
          `loss ${f.loss.toFixed(4)} train acc ${(100 * f.train_accuracy).toFixed(1)} % ${f.images_per_second.toFixed(0)} images/s (${f.epoch_seconds.toFixed(0)} s)` +
          (f.accuracy !== undefined ? ` held-out acc ${(100 * f.accuracy).toFixed(2)} %` : ''),
        signal: r.signal,
        log,
        onProgress: r.onProgress,
      });
      return {
        checkpoint: run.checkpointDir,
        metricsFile: run.metricsFile,
        labeledIds,
        classes: all.classes,
        metrics: {
          loss: metrics.loss,
          train_accuracy: metrics.train_accuracy ?? NaN,
          images_per_second: metrics.images_per_second,
          epochs: metrics.epochs,
          steps: metrics.steps,
          labeled: n,
          ...(metrics.accuracy !== undefined ? { accuracy: metrics.accuracy } : {}),
        },
        backend: backend.name,
      };
    } finally {
      await workers.destroy();
    }
  } finally {
    classifier.dispose();
    optimizer.dispose();
  }
}

function labelSpecText(labels: string): string {
  return /%$|-per-class$|^\d+$/.test(labels.trim()) ? labels.trim() : `from ${labels}`;
}
