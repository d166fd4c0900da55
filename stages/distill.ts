// The distill stage: SimCLRv2's third step. The fine-tuned teacher labels the images (its logits
// cached as a `logits` dataset, or run on each augmented view), a student learns its soft labels.
import * as tf from '@tensorflow/tfjs';
import { join } from 'node:path';
import { AugmentPool, augmentBatches, type AugmentedBatch } from '../augment/pool.ts';
import { writeFileAtomic } from '../data/files.ts';
import { holdoutSplit, parseLabelSpec, selectLabeled } from '../data/labels.ts';
import { datasetHash, readManifest } from '../data/manifest.ts';
import { gatherImages, loadImages } from '../data/memory.ts';
import { epochPermutation } from '../data/random.ts';
import { loadCheckpoint } from '../models/checkpoint.ts';
import { buildClassifier, topOneAccuracy, classifierLogits, classifierParts } from '../models/classifier.ts';
import { useBackend, type BackendName } from '../models/engine/backend.ts';
import { buildProjectionHead, headDepth } from '../models/head.ts';
import { distillationLoss } from '../models/losses.ts';
import { makeOptimizer, type OptimizerName } from '../models/optimizers.ts';
import { buildEncoder, ENCODERS } from '../models/resnet.ts';
import { defaultWarmupEpochs, scaledLearningRate, warmupCosine } from '../models/schedules.ts';
import { pixelsToTensor } from '../models/simclr.ts';
import { trainStep } from '../models/train-step.ts';
import { withDefaults } from './options.ts';
import { checkPart, collectMapped, mapInputShards, type ShardMapSpec } from './shard-map.ts';
import { imageBatches } from './training/batches.ts';
import { classifierHash, requireClassifier } from './training/checkpoints.ts';
import { openTraining, TrainingInputError, trainingLoop, type TrainingStageOptions } from './training/loop.ts';

export type TeacherMode = 'cached' | 'online';

export interface DistillOptions extends TrainingStageOptions {
  /** Images dataset the student learns on (labels not needed). */
  data: string;
  /** Stage directory: checkpoint/, metrics.jsonl, teacher-logits/. */
  outDir: string;
  /** A fine-tuned classifier: a finetune (or distill) stage directory, or its checkpoint/. */
  teacher: string;
  /** Student encoder (registry name); default the teacher's. */
  student?: string;
  studentWidth?: number;
  /** Head blocks under the student's classifier; default the teacher's. */
  studentHeadLayers?: number;
  temperature?: number;
  /** Weight of cross-entropy on the labeled ids: (1 − α)·distill + α·CE. */
  alpha?: number;
  /** The labeled ids for α > 0 (P%, N-per-class, N or a file; default the teacher's labeled-ids.txt). */
  labels?: string;
  /** `cached`: the stored logits of each un-augmented image; `online`: the teacher on the student's view. */
  teacherMode?: TeacherMode;
  /** Leave out the last N labeled images of each class (the test split), scored as held-out accuracy. */
  holdout?: number;
  epochs?: number;
  batchSize?: number;
  /** Base learning rate before √batch scaling (LARS). */
  lr?: number;
  optimizer?: OptimizerName;
  weightDecay?: number;
  momentum?: number;
  evalEvery?: number;
}

export interface DistillResult {
  checkpoint: string;
  metricsFile: string;
  teacherLogits: string;
  classes: string[];
  metrics: {
    loss: number;
    images_per_second: number;
    epochs: number;
    steps: number;
    images: number;
    parameters: number;
    teacher_parameters: number;
    accuracy?: number;
    /** The teacher pass of this run: input shards whose logits it computed, and those an earlier run or part job left. */
    logits_shards_computed: number;
    logits_shards_reused: number;
    logits_seconds: number;
  };
  backend: string;
}

export const DISTILL_DEFAULTS = {
  studentWidth: 1,
  // SimCLRv2 distils at τ = 1 with the distillation loss alone (α = 0) for its best results.
  temperature: 1,
  alpha: 0,
  teacherMode: 'cached',
  holdout: 0,
  epochs: 30,
  batchSize: 128,
  // LARS at 0.3·√batch (square-root scaling): a student from random weights learns its teacher's
  // soft labels far faster than at pretraining's 0.075 (quickstart, 10 % teacher 56.3 %, 20 epochs:
  // 0.075 → 33.1 %, 0.3 → 52.5 %, 0.6 → 56.9 %, 1.2 → 53.8 %; CIFAR-10 at batch 256: README).
  // No weight decay beyond SimCLR's tiny one.
  lr: 0.3,
  optimizer: 'lars',
  weightDecay: 1e-6,
  momentum: 0.9,
  seed: 0,
  backend: 'auto',
  resume: false,
  force: false,
  logEvery: 10,
  tensorboard: false,
  evalEvery: 0,
} as const satisfies Partial<DistillOptions>;


const TEACHER_LOGITS: ShardMapSpec = {
  schema: 'logits',
  what: 'distill: teacher logits',
  missingHint: 'run the parts (--shard-index/--num-shards) or distill without them',
  partJobs: (count) => `distill-part-I-of-${count}`,
};

const countParameters = (model: tf.LayersModel) => model.countParams();

export async function distill(options: DistillOptions): Promise<DistillResult> {
  const r = withDefaults(DISTILL_DEFAULTS, options);
  const int = (name: 'holdout' | 'epochs' | 'batchSize' | 'seed' | 'logEvery' | 'evalEvery', min: number) => {
    if (!Number.isInteger(r[name]) || r[name] < min) throw new TrainingInputError(`distill.${name} must be an integer >= ${min}, got ${r[name]}`);
  };
  int('holdout', 0);
  int('epochs', 1);
  int('batchSize', 2);
  int('seed', 0);
  int('logEvery', 1);
  int('evalEvery', 0);
  if (!(r.temperature > 0)) throw new TrainingInputError(`distill.temperature must be > 0, got ${r.temperature}`);
  if (!(r.alpha >= 0 && r.alpha <= 1)) throw new TrainingInputError(`distill.alpha must be in [0, 1], got ${r.alpha}`);
  if (r.teacherMode !== 'cached' && r.teacherMode !== 'online') throw new TrainingInputError(`distill.teacherMode must be cached or online, got ${JSON.stringify(r.teacherMode)}`);
  if (r.student !== undefined && !Object.hasOwn(ENCODERS, r.student)) throw new TrainingInputError(`distill.student must be one of ${Object.keys(ENCODERS).join(', ')}, got ${JSON.stringify(r.student)}`);
  if (!(r.lr > 0)) throw new TrainingInputError(`distill.lr must be > 0, got ${r.lr}`);
  const log = r.log ?? (() => {});

  const { dir: teacherDir, classes, state } = await requireClassifier(r.teacher, 'distill.teacher', 'give a finetune stage directory');
  const teacherState = state as { key?: { model?: string } };

  const backend = await useBackend(r.backend, log);
  r.onBackend?.(backend.name);
  const all = await loadImages(r.data);
  const size = all.height;
  if (JSON.stringify(all.classes) !== JSON.stringify(classes) && all.classes.length > 0) {
    throw new TrainingInputError(`distill: ${r.data} has classes [${all.classes.join(', ')}], the teacher was trained on [${classes.join(', ')}]`);
  }
  const { train: trainRows, heldOut } = holdoutSplit({ ...all, classes }, r.holdout, 'distill.holdout');
  const images = gatherImages({ ...all, classes }, trainRows);
  const n = images.ids.length;
  const k = classes.length;

  const teacher = (await loadCheckpoint(teacherDir, { models: ['classifier'] })).models.classifier;
  let student: tf.LayersModel | null = null;
  let optimizer: ReturnType<typeof makeOptimizer> | null = null;
  try {
    const [, th, tw] = teacher.inputs[0].shape as number[];
    if (th !== size || tw !== size) throw new TrainingInputError(`distill: the teacher in ${teacherDir} takes ${th}x${tw} px images, ${r.data} holds ${size}x${all.width} px`);
    const teacherParts = classifierParts(teacher);
    const teacherHeadLayers = teacherParts.head ? headDepth(teacherParts.head) : 0;
    const studentName = r.student ?? teacherState.key?.model ?? 'resnet20';
    const studentHeadLayers = r.studentHeadLayers ?? teacherHeadLayers;
    if (!Number.isInteger(studentHeadLayers) || studentHeadLayers < 0) throw new TrainingInputError(`distill.studentHeadLayers must be an integer >= 0, got ${studentHeadLayers}`);
    let encoder: tf.LayersModel;
    try {
      encoder = buildEncoder({ name: studentName, width: r.studentWidth, inputSize: size, seed: r.seed }).model;
    } catch (err) {
      throw new TrainingInputError(`distill.student: ${(err as Error).message}`);
    }
    // K + 1 blocks cut after K: the kept ones are hidden blocks (width of the encoder, ReLU), as in a fine-tuned teacher.
    const head = buildProjectionHead({ inputDim: encoder.outputs[0].shape[1] as number, layers: studentHeadLayers + 1, seed: r.seed + 7919 });
    student = buildClassifier(encoder, head, studentHeadLayers, k);

    const dataManifest = await readManifest(r.data);
    const hashes = { teacher: await classifierHash(teacherDir), data: datasetHash(dataManifest) };
    const logitsDir = join(r.outDir, 'teacher-logits');
    // Every input shard not yet done (by part jobs or an earlier run) is computed here.
    const teacherPass = await mapInputShards(TEACHER_LOGITS, teacher, { ...all, classes }, dataManifest, logitsDir, hashes.teacher, { shardIndex: 0, numShards: 1 }, log);
    const { values: cached } = await collectMapped(TEACHER_LOGITS, { ...all, classes }, dataManifest, logitsDir, hashes.teacher, k, { teacher_sha256: hashes.teacher, data_sha256: hashes.data });
    const rowOf = new Map(all.ids.map((id, i) => [id, i]));
    // Labeled ids for the α·CE term.
    let labelOf = new Map<string, number>();
    if (r.alpha > 0) {
      const spec = r.labels ?? join(teacherDir, '..', 'labeled-ids.txt');
      const chosen = await selectLabeled(images, parseLabelSpec(spec, 'distill.labels'), r.seed, 'distill.labels');
      labelOf = new Map(chosen.rows.map((row, i) => [images.ids[row], chosen.labels[i]]));
    }

    const batchSize = Math.min(r.batchSize, n);
    const stepsPerEpoch = Math.floor(n / batchSize); // full batches: the last partial one is left out
    const baseLr = scaledLearningRate(r.lr, batchSize, 'sqrt');
    const schedule = warmupCosine({ baseLr, warmupSteps: Math.round(defaultWarmupEpochs(r.epochs) * stepsPerEpoch), totalSteps: stepsPerEpoch * r.epochs });
    optimizer = makeOptimizer({ name: r.optimizer, learningRate: baseLr, momentum: r.momentum, weightDecay: r.weightDecay });
    const key = {
      teacherSha256: hashes.teacher,
      datasetSha256: hashes.data,
      student: studentName,
      studentWidth: r.studentWidth,
      studentHeadLayers,
      temperature: r.temperature,
      alpha: r.alpha,
      teacherMode: r.teacherMode,
      holdout: r.holdout,
      epochs: r.epochs,
      batchSize,
      baseLr,
      seed: r.seed,
      optimizer: r.optimizer,
    };
    const run = await openTraining({ stage: 'distill', outDir: r.outDir, models: { classifier: student }, optimizer, key, config: { classes, totalSteps: stepsPerEpoch * r.epochs }, resume: r.resume, force: r.force });
    student = run.models.classifier;
    const parts = classifierParts(student);
    const parameters = countParameters(student);
    const teacherParameters = countParameters(teacher);
    await writeFileAtomic(join(r.outDir, 'classes.json'), JSON.stringify(classes) + '\n');
    log(
      `distill: teacher ${teacherDir} (${teacherParameters} parameters) → student ${studentName} width ${r.studentWidth} + ${studentHeadLayers} head layer(s) (${parameters} parameters) on ${n} images, ` +
        `τ ${r.temperature}, α ${r.alpha}, teacher ${r.teacherMode}, batch ${batchSize}, ${stepsPerEpoch} steps/epoch × ${r.epochs} epochs, ${r.optimizer} lr ${baseLr.toPrecision(3)}, backend ${backend.name}`,
    );

    const queries = heldOut.length > 0 ? gatherImages({ ...all, classes }, heldOut) : null;
    const score = (): number => topOneAccuracy(student!, queries!.pixels, queries!.labels, queries!.ids.length, size);

    const pool = new AugmentPool({ workers: r.workers });
    try {
      const { metrics } = await trainingLoop<AugmentedBatch>(run, {
        epochs: r.epochs,
        stepsPerEpoch,
        // One crop + flip view of every image, as in fine-tuning.
        batches: (epoch, fromStep) =>
          augmentBatches(imageBatches(images, epochPermutation(r.seed, epoch, n).subarray(0, stepsPerEpoch * batchSize), fromStep * batchSize, batchSize), {
            pool,
            preset: 'finetune',
            outputSize: size,
            output: 'float32',
            batchSize,
            seed: r.seed,
            epoch,
            firstIndex: fromStep * batchSize,
          }),
        step: (batch) => {
          const count = batch.ids.length;
          const x = pixelsToTensor(batch.view1, count, size);
          // Targets outside the gradient tape: nothing is differentiated through the teacher.
          const target =
            r.teacherMode === 'online'
              ? (teacher.apply(x, { training: false }) as tf.Tensor2D)
              : tf.tensor2d(Float32Array.from(batch.ids.flatMap((id) => Array.from(cached.subarray(rowOf.get(id)! * k, (rowOf.get(id)! + 1) * k)))), [count, k]);
          // α·CE on the labeled images of the batch, as a mask (wasm has no gradient for gather).
          const labeled = r.alpha > 0 ? batch.ids.map((id) => labelOf.get(id)) : [];
          const anyLabeled = labeled.some((l) => l !== undefined);
          const labels = anyLabeled ? tf.tensor1d(labeled.map((l) => l ?? 0), 'int32') : null;
          const mask = anyLabeled ? tf.tensor1d(labeled.map((l) => (l === undefined ? 0 : 1)), 'float32') : null;
          try {
            const variables = student!.trainableWeights.map((w) => w.read() as tf.Variable);
            return trainStep(variables, optimizer!, () => {
              const logits = classifierLogits(parts, x, { encoder: true, head: true }); // [B, K]
              let loss = distillationLoss(logits, target, r.temperature);
              if (labels && mask) {
                const picked = tf.sum(tf.mul(tf.logSoftmax(logits), tf.oneHot(labels, k)), 1); // [B]
                const ce = tf.div(tf.neg(tf.sum(tf.mul(picked, mask))), tf.sum(mask)); // mean over the labeled rows
                loss = tf.add(tf.mul(1 - r.alpha, loss), tf.mul(r.alpha, ce)) as tf.Scalar;
              }
              return { loss };
            });
          } finally {
            tf.dispose([x, target, ...(labels ? [labels] : []), ...(mask ? [mask] : [])]);
          }
        },
        imagesIn: (batch) => batch.ids.length,
        schedule,
        logEvery: r.logEvery,
        tensorboard: r.tensorboard,
        evaluation: queries ? { every: r.evalEvery || r.epochs, run: () => ({ accuracy: score() }) } : undefined,
        backend: backend.name,
        describeStep: (batch) => `a step of ${batch.ids.length} images of ${size} px through ${studentName}`,
        formatEpoch: (f) =>
          `loss ${f.loss.toFixed(4)} ${f.images_per_second.toFixed(0)} images/s (${f.epoch_seconds.toFixed(0)} s)` + (f.accuracy !== undefined ? ` held-out acc ${(100 * f.accuracy).toFixed(2)} %` : ''),
        signal: r.signal,
        log,
        onProgress: r.onProgress,
      });
      return {
        checkpoint: run.checkpointDir,
        metricsFile: run.metricsFile,
        teacherLogits: logitsDir,
        classes,
        metrics: {
          loss: metrics.loss,
          images_per_second: metrics.images_per_second,
          epochs: metrics.epochs,
          steps: metrics.steps,
          images: n,
          parameters,
          teacher_parameters: teacherParameters,
          logits_shards_computed: teacherPass.computed,
          logits_shards_reused: teacherPass.reused,
          logits_seconds: teacherPass.seconds,
          ...(metrics.accuracy !== undefined ? { accuracy: metrics.accuracy } : {}),
        },
        backend: backend.name,
      };
    } finally {
      await pool.destroy();
    }
  } finally {
    teacher.dispose();
    student?.dispose();
    optimizer?.dispose();
  }
}

export interface TeacherLogitsPartOptions {
  data: string;
  teacher: string;
  /** The distill stage directory; the logits go to its teacher-logits/. */
  outDir: string;
  /** Input shards i with i mod numShards = shardIndex are this job's. */
  shardIndex: number;
  numShards: number;
  backend?: BackendName;
  log?: (line: string) => void;
  onBackend?: (name: string) => void;
}

/**
 * One part job of distillation's teacher pass (a Kubernetes Indexed Job or Slurm array task):
 * the teacher's logits of this part's input shards, skipping those already done. A later
 * `distill` without parts finds them and trains.
 */
export async function teacherLogitsPart(options: TeacherLogitsPartOptions): Promise<{ teacherLogits: string; computed: number; reused: number; seconds: number; backend: string }> {
  const { shardIndex, numShards } = options;
  checkPart('distill', shardIndex, numShards);
  const log = options.log ?? (() => {});
  const { dir: teacherDir, classes } = await requireClassifier(options.teacher, 'distill.teacher', 'give a finetune stage directory');
  const backend = await useBackend(options.backend ?? 'auto', log);
  options.onBackend?.(backend.name);
  const all = await loadImages(options.data);
  const dataManifest = await readManifest(options.data);
  const teacher = (await loadCheckpoint(teacherDir, { models: ['classifier'] })).models.classifier;
  try {
    const logitsDir = join(options.outDir, 'teacher-logits');
    const done = await mapInputShards(TEACHER_LOGITS, teacher, { ...all, classes }, dataManifest, logitsDir, await classifierHash(teacherDir), { shardIndex, numShards }, log);
    return { teacherLogits: logitsDir, ...done, backend: backend.name };
  } finally {
    teacher.dispose();
  }
}
