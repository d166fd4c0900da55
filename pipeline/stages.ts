// The stages the CLI can run: their options (flags and config keys), their inputs (hashed for the
// skip rule) and how a resolved config becomes a call of the stage function.
import { stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { ENCODERS } from '../models/resnet.ts';
import { OPTIMIZER_NAMES } from '../models/optimizers.ts';
import { MAX_PARTS, type DatasetManifest } from '../data/manifest.ts';
import { AUGMENT_DEFAULTS, augmentStage } from '../stages/augment.ts';
import { INGEST_DEFAULTS, ingest } from '../stages/ingest.ts';
import { DISTILL_DEFAULTS, distill, teacherLogitsPart } from '../stages/distill.ts';
import { EVALUATE_DEFAULTS, evaluate, type EvaluateResult } from '../stages/evaluate.ts';
import { EXPORT_FORMATS, exportModel, type ExportFormat } from '../stages/export.ts';
import { FINETUNE_DEFAULTS, finetune } from '../stages/finetune.ts';
import { PRETRAIN_DEFAULTS, pretrain } from '../stages/pretrain.ts';
import type { ProgressInfo } from '../stages/training/loop.ts';
import { parseLabelSpec } from '../data/labels.ts';
import { COMMON_OPTIONS, ConfigError, defineOptions, type ConfigOf, type OptionSpecs, type ResolvedConfig } from './config.ts';
import { createProgress } from './progress.ts';
import type { StageContext, StageOutcome } from './runner.ts';

type Progress = ReturnType<typeof createProgress>;

export interface StageIO {
  stdout(line: string): void;
  stderr(line: string): void;
  stderrStream: NodeJS.WriteStream;
}

export interface StageEnv {
  log(line: string): void;
  json: boolean;
  io: StageIO;
  /** Aborted on SIGINT/SIGTERM: long stages checkpoint and stop. */
  signal?: AbortSignal;
}

/** A stage's config: the common options and its own, typed by their specs. */
export type StageConfig<S extends OptionSpecs> = ConfigOf<typeof COMMON_OPTIONS & S>;

/** A stage as its own option specs type it. */
export interface TypedStageDefinition<S extends OptionSpecs> {
  describe: string;
  options: S;
  /** Config keys that do not change the result (left out of the config hash). */
  volatile?: readonly (keyof StageConfig<S> & string)[];
  /** Paths whose content decides whether a completed run is still up to date. */
  inputs(config: StageConfig<S>, runDir: string): Promise<string[]>;
  run(ctx: StageContext<StageConfig<S>>, env: StageEnv): Promise<StageOutcome>;
  /** Outside a run dir (`pipeline ingest --out DIR`). */
  standalone?(config: StageConfig<S>, outDir: string, env: StageEnv): Promise<Record<string, unknown>>;
  /** Its directory (and manifest `stage`) in the run dir when not the stage's name. */
  dirName?(config: StageConfig<S>): string;
  /** A part job: it locks only its own directory, so the parts of one map stage run side by side. */
  isPart?(config: StageConfig<S>): boolean;
}

/** A stage as the CLI sees it: configs resolved from its specs by resolveConfig. */
export interface StageDefinition {
  describe: string;
  options: OptionSpecs;
  volatile?: readonly string[];
  inputs(config: ResolvedConfig, runDir: string): Promise<string[]>;
  run(ctx: StageContext, env: StageEnv): Promise<StageOutcome>;
  standalone?(config: ResolvedConfig, outDir: string, env: StageEnv): Promise<Record<string, unknown>>;
  dirName?(config: ResolvedConfig): string;
  isPart?(config: ResolvedConfig): boolean;
}

/**
 * A stage checked against its own specs. The one cast between the two views: the CLI always
 * resolves a stage's config from `COMMON_OPTIONS` and that stage's `options`, so the values have
 * the types ConfigOf gives them.
 */
function defineStage<const S extends OptionSpecs>(definition: TypedStageDefinition<S>): StageDefinition {
  return definition as unknown as StageDefinition;
}

/**
 * Part of a distributed job: explicit flags first, then Kubernetes Indexed Jobs, then Slurm arrays.
 * A count outside [1, MAX_PARTS] or an index outside [0, count) is a ConfigError naming where each came from.
 */
export function shardFromEnvironment(config: { shardIndex?: number; numShards?: number }, env: NodeJS.ProcessEnv = process.env): { shardIndex: number; numShards: number } {
  const indexFrom = config.shardIndex !== undefined ? '--shard-index' : env.JOB_COMPLETION_INDEX !== undefined ? 'JOB_COMPLETION_INDEX' : env.SLURM_ARRAY_TASK_ID !== undefined ? 'SLURM_ARRAY_TASK_ID' : null;
  const countFrom = config.numShards !== undefined ? '--num-shards' : env.SLURM_ARRAY_TASK_COUNT !== undefined ? 'SLURM_ARRAY_TASK_COUNT' : null;
  // Environment values are strings: only plain digits count ('', ' 3' and '1e2' are not an index).
  const fromEnv = (raw: string | undefined) => (raw !== undefined && /^[0-9]+$/.test(raw) ? Number(raw) : Number.NaN);
  const shardIndex = config.shardIndex ?? (indexFrom === null ? 0 : fromEnv(indexFrom === 'JOB_COMPLETION_INDEX' ? env.JOB_COMPLETION_INDEX : env.SLURM_ARRAY_TASK_ID));
  const numShards = config.numShards ?? (countFrom === null ? 1 : fromEnv(env.SLURM_ARRAY_TASK_COUNT));
  const given = (from: string | null, value: number) => (from !== null && from.startsWith('--') ? String(value) : JSON.stringify(from === 'JOB_COMPLETION_INDEX' ? env.JOB_COMPLETION_INDEX : from === 'SLURM_ARRAY_TASK_ID' ? env.SLURM_ARRAY_TASK_ID : env.SLURM_ARRAY_TASK_COUNT));
  if (!Number.isInteger(numShards) || numShards < 1 || numShards > MAX_PARTS) {
    throw new ConfigError(`number of parts (${countFrom}) must be an integer in [1, ${MAX_PARTS}], got ${given(countFrom, numShards)}`);
  }
  if (!Number.isInteger(shardIndex) || shardIndex < 0) throw new ConfigError(`shard index (${indexFrom}) must be a non-negative integer, got ${given(indexFrom, shardIndex)}`);
  if (numShards === 1 && shardIndex > 0) {
    throw new ConfigError(`shard index ${shardIndex} (from ${indexFrom}) needs --num-shards (or SLURM_ARRAY_TASK_COUNT)`);
  }
  if (shardIndex >= numShards) {
    throw new ConfigError(`shard index ${shardIndex} (from ${indexFrom}) must be below the number of parts ${numShards} (from ${countFrom}): parts are 0 to ${numShards - 1} (Slurm: --array=0-${numShards - 1})`);
  }
  return { shardIndex, numShards };
}

/**
 * The distill directory whose teacher-logits/ a part job fills: run all's distill of that teacher
 * (`--teacher RUN_DIR/finetune-10pct` → distill-10pct), else distill.
 */
function distillDirFor(teacher: string | undefined): string {
  const m = teacher === undefined ? null : /^finetune(-[A-Za-z0-9-]+)?$/.exec(basename(teacher.replace(/\/+$/, '')));
  return m ? `distill${m[1] ?? ''}` : 'distill';
}

/** A part job's directory in the run dir (its stage manifest and lock): `ingest-part-2-of-8`. */
export function partDirName(stage: string, shardIndex: number, numShards: number): string {
  return `${stage}-part-${shardIndex}-of-${numShards}`;
}

const ingestOptions = defineOptions({
  input: { type: 'string', describe: 'image folder (class sub-folders = labels) or CSV list with header path,label' },
  size: { type: 'int', default: INGEST_DEFAULTS.size, min: 1, max: 4096, describe: 'output side: shorter side resized to it, centre crop' },
  unlabeled: { type: 'boolean', default: INGEST_DEFAULTS.unlabeled, describe: 'ignore class folders / labels' },
  limitPerClass: { type: 'int', min: 1, describe: 'keep at most N images per class (first in sorted order)' },
  strict: { type: 'boolean', default: INGEST_DEFAULTS.strict, describe: 'fail on the first unusable file instead of skipping it' },
  full: { type: 'boolean', default: INGEST_DEFAULTS.full, describe: 'decode every file again instead of only new or changed ones (--force implies it)' },
  maxInputPixels: { type: 'int', min: 1, describe: 'refuse images with more pixels (default 16383²)' },
  shardIndex: { type: 'int', min: 0, describe: 'this job\'s part (default $JOB_COMPLETION_INDEX or $SLURM_ARRAY_TASK_ID)' },
  numShards: { type: 'int', min: 1, max: MAX_PARTS, describe: 'number of parts; > 1: ingest this part (files part-IIIII-of-NNNNN-* in the dataset dir), then `pipeline merge` (default $SLURM_ARRAY_TASK_COUNT or 1)' },
});

async function runIngest(config: StageConfig<typeof ingestOptions>, outDir: string, env: StageEnv, force = false) {
  if (!config.input) throw new ConfigError('--input is required (an image folder or a CSV list)');
  const { shardIndex, numShards } = shardFromEnvironment(config);
  let progress: Progress | null = null;
  const result = await ingest({
    input: config.input,
    outDir,
    size: config.size,
    unlabeled: config.unlabeled,
    limitPerClass: config.limitPerClass,
    strict: config.strict,
    // --force is "redo it": decode everything rather than trust the previous run's file index.
    full: config.full || force,
    maxInputPixels: config.maxInputPixels,
    workers: config.workers,
    shardIndex,
    numShards,
    log: env.log,
    onProgress: (done, total) => {
      progress ??= createProgress({ label: 'ingest', total, unit: 'images', stream: env.io.stderrStream, quiet: env.json });
      progress.update(done);
    },
  });
  (progress as Progress | null)?.finish();
  // The stage logs its own summary; add where the rejected files are listed when there are some.
  if (result.rejected.length > 0) env.log(`ingest: ${result.rejected.length} rejected files are listed in ${result.rejectedPath}`);
  return result;
}

const augmentOptions = defineOptions({
  data: { type: 'string', describe: 'images dataset directory (default: RUN_DIR/ingest)' },
  epochs: { type: 'int', default: AUGMENT_DEFAULTS.epochs, min: 1, describe: 'epochs of view pairs to materialise' },
  preset: { type: 'string', default: AUGMENT_DEFAULTS.preset, choices: ['simclr', 'finetune'], describe: 'augmentation preset (two views per image)' },
  outputSize: { type: 'int', min: 1, describe: 'side of the views (default: the image side)' },
  colorStrength: { type: 'number', min: 0, exclusiveMin: true, describe: 'colour jitter strength s (default 0.5 for <= 32 px, else 1)' },
  batchSize: { type: 'int', min: 1, describe: 'images per worker task and record batch (default 256, fewer for large views)' },
});

const d = PRETRAIN_DEFAULTS;
const pretrainOptions = defineOptions({
  data: { type: 'string', describe: 'images dataset directory (default: RUN_DIR/ingest)' },
  epochs: { type: 'int', default: d.epochs, min: 1, describe: 'passes over the training images' },
  batchSize: { type: 'int', default: d.batchSize, min: 2, describe: 'images per step (each gives two views: 2N through the encoder)' },
  model: { type: 'string', default: d.model, choices: Object.keys(ENCODERS), describe: 'encoder' },
  width: { type: 'number', default: d.width, min: 0, exclusiveMin: true, describe: 'encoder width multiplier' },
  temperature: { type: 'number', min: 0, exclusiveMin: true, describe: 'NT-Xent temperature (default 0.5 for <= 64 px images, 0.1 above)' },
  lr: { type: 'number', min: 0, exclusiveMin: true, describe: 'base learning rate before batch scaling (default 0.3 linear / 0.075 sqrt; Adam 1e-3)' },
  lrScaling: { type: 'string', default: d.lrScaling, choices: ['linear', 'sqrt'], describe: 'lr = base × batch/256 (linear) or base × √batch (sqrt)' },
  warmupEpochs: { type: 'number', min: 0, describe: 'linear warm-up epochs before cosine decay (default min(10, epochs/10))' },
  optimizer: { type: 'string', default: d.optimizer, choices: OPTIMIZER_NAMES, describe: 'optimizer' },
  weightDecay: { type: 'number', default: d.weightDecay, min: 0, describe: 'L2 weight decay (not on batch norm or biases)' },
  momentum: { type: 'number', default: d.momentum, min: 0, max: 0.999, describe: 'momentum (LARS, SGD)' },
  headLayers: { type: 'int', default: d.headLayers, min: 1, describe: 'projection head layers (SimCLRv2: 3)' },
  projectionDim: { type: 'int', default: d.projectionDim, min: 1, describe: 'projection output size' },
  colorStrength: { type: 'number', min: 0, exclusiveMin: true, describe: 'colour jitter strength s (default 0.5 for <= 32 px, else 1)' },
  minScale: { type: 'number', min: 0, exclusiveMin: true, max: 1, describe: 'smallest random-crop area (default 0.08, SimCLR)' },
  limit: { type: 'int', default: d.limit, min: 0, describe: 'train on at most N images (0 = all)' },
  resume: { type: 'boolean', default: d.resume, describe: 'continue from the last checkpoint of this run dir' },
  logEvery: { type: 'int', default: d.logEvery, min: 1, describe: 'steps between metrics.jsonl lines' },
  tensorboard: { type: 'boolean', default: d.tensorboard, describe: 'also write the metrics as TensorBoard scalars (events.out.tfevents.* in the stage directory)' },
  knnHoldout: { type: 'int', default: d.knnHoldout, min: 0, describe: 'hold out N labeled images per class as kNN queries' },
  knnEvery: { type: 'int', default: d.knnEvery, min: 0, describe: 'kNN accuracy every N epochs (0 = off; needs --knn-holdout)' },
  knnK: { type: 'int', default: d.knnK, min: 1, describe: 'kNN neighbours' },
  knnBank: { type: 'int', default: d.knnBank, min: 1, describe: 'labeled training images in the kNN memory bank, at most' },
  initFrom: { type: 'string', describe: "warm start: another run's pretrain directory (same architecture); its encoder and head, this run's schedule" },
});

const f = FINETUNE_DEFAULTS;
const finetuneOptions = defineOptions({
  data: { type: 'string', describe: 'labeled images dataset (default: RUN_DIR/ingest)' },
  pretrained: { type: 'string', describe: 'pretrain stage directory (default: RUN_DIR/pretrain; with --init random only its architecture is used)' },
  init: { type: 'string', default: f.init, choices: ['pretrained', 'random'], describe: 'pretrained: SimCLRv2 fine-tuning; random: the supervised baseline from scratch (writes RUN_DIR/baseline)' },
  labels: { type: 'string', default: f.labels, describe: 'labeled subset: P%, N-per-class, N or an ids file (one id per line, or CSV id,label)' },
  holdout: { type: 'int', default: f.holdout, min: 0, describe: 'hold out the last N labeled images per class, never trained on, scored as held-out accuracy' },
  fromHeadLayer: { type: 'int', default: f.fromHeadLayer, min: 0, describe: 'projection-head blocks kept under the classifier (SimCLRv2: 1; 0 = encoder output)' },
  freezeEncoder: { type: 'boolean', default: f.freezeEncoder, describe: 'train only the kept head blocks and the classifier' },
  epochs: { type: 'int', min: 1, describe: 'passes over the labeled images (default: 60·(12800/labeled)^0.3, within 10–200)' },
  batchSize: { type: 'int', default: f.batchSize, min: 2, describe: 'images per step' },
  lr: { type: 'number', min: 0, exclusiveMin: true, describe: 'base learning rate (default 0.005·√batch with LARS; 0.2·batch/256 with --init random)' },
  optimizer: { type: 'string', choices: OPTIMIZER_NAMES, describe: 'optimizer (default lars; sgd with --init random)' },
  weightDecay: { type: 'number', min: 0, describe: 'L2 weight decay, not on batch norm or biases (default 0; 5e-4 with --init random)' },
  momentum: { type: 'number', min: 0, max: 0.999, describe: 'momentum (default 0.9)' },
  minScale: { type: 'number', min: 0, exclusiveMin: true, max: 1, describe: 'smallest random-crop area (default 0.08)' },
  model: { type: 'string', default: f.model, choices: Object.keys(ENCODERS), describe: 'encoder of a random-init network when no pretrained checkpoint gives it' },
  width: { type: 'number', default: f.width, min: 0, exclusiveMin: true, describe: 'encoder width of a random-init network' },
  headLayers: { type: 'int', default: f.headLayers, min: 1, describe: 'head blocks of a random-init network' },
  resume: { type: 'boolean', default: f.resume, describe: 'continue from the last checkpoint of this stage' },
  logEvery: { type: 'int', default: f.logEvery, min: 1, describe: 'steps between metrics.jsonl lines' },
  tensorboard: { type: 'boolean', default: f.tensorboard, describe: 'also write the metrics as TensorBoard scalars (events.out.tfevents.* in the stage directory)' },
  evalEvery: { type: 'int', default: f.evalEvery, min: 0, describe: 'score the held-out images every N epochs (0: after the last only)' },
});

const dd = DISTILL_DEFAULTS;
const distillOptions = defineOptions({
  data: { type: 'string', describe: 'images the student learns on, labeled or not (default: RUN_DIR/ingest)' },
  teacher: { type: 'string', describe: 'the fine-tuned teacher: a finetune stage directory (default: RUN_DIR/finetune)' },
  student: { type: 'string', choices: Object.keys(ENCODERS), describe: "student encoder (default: the teacher's)" },
  studentWidth: { type: 'number', default: dd.studentWidth, min: 0, exclusiveMin: true, describe: 'student width multiplier (0.5: about a quarter of the convolution weights)' },
  studentHeadLayers: { type: 'int', min: 0, describe: "head blocks under the student's classifier (default: the teacher's)" },
  temperature: { type: 'number', default: dd.temperature, min: 0, exclusiveMin: true, describe: 'distillation temperature τ (loss τ²·CE(P_T, P_S))' },
  alpha: { type: 'number', default: dd.alpha, min: 0, max: 1, describe: 'weight of cross-entropy on the labeled ids: (1 − α)·distill + α·CE' },
  labels: { type: 'string', describe: "labeled ids for α > 0 (default: the teacher's labeled-ids.txt)" },
  teacherMode: { type: 'string', default: dd.teacherMode, choices: ['cached', 'online'], describe: "cached: the teacher's stored logits of the un-augmented image; online: the teacher on the student's view" },
  holdout: { type: 'int', default: dd.holdout, min: 0, describe: 'leave out the last N labeled images per class (the test split), scored as held-out accuracy' },
  epochs: { type: 'int', default: dd.epochs, min: 1, describe: 'passes over the images' },
  batchSize: { type: 'int', default: dd.batchSize, min: 2, describe: 'images per step' },
  lr: { type: 'number', default: dd.lr, min: 0, exclusiveMin: true, describe: 'base learning rate, × √batch' },
  optimizer: { type: 'string', default: dd.optimizer, choices: OPTIMIZER_NAMES, describe: 'optimizer' },
  weightDecay: { type: 'number', default: dd.weightDecay, min: 0, describe: 'L2 weight decay (not on batch norm or biases)' },
  momentum: { type: 'number', default: dd.momentum, min: 0, max: 0.999, describe: 'momentum' },
  resume: { type: 'boolean', default: dd.resume, describe: 'continue from the last checkpoint of this stage' },
  logEvery: { type: 'int', default: dd.logEvery, min: 1, describe: 'steps between metrics.jsonl lines' },
  tensorboard: { type: 'boolean', default: dd.tensorboard, describe: 'also write the metrics as TensorBoard scalars (events.out.tfevents.* in the stage directory)' },
  evalEvery: { type: 'int', default: dd.evalEvery, min: 0, describe: 'score the held-out images every N epochs (0: after the last only)' },
  shardIndex: { type: 'int', min: 0, describe: "a part job of the teacher pass: this job's part (default $JOB_COMPLETION_INDEX or $SLURM_ARRAY_TASK_ID)" },
  numShards: { type: 'int', min: 1, max: MAX_PARTS, describe: 'parts of the teacher pass; > 1: compute this part of the teacher logits and stop (default $SLURM_ARRAY_TASK_COUNT or 1)' },
});

const e = EVALUATE_DEFAULTS;
const evaluateOptions = defineOptions({
  data: { type: 'string', describe: 'test images dataset (default: RUN_DIR/ingest, with --holdout its last N images per class)' },
  checkpoint: { type: 'string', describe: 'finetune, baseline or pretrain stage directory (default: RUN_DIR/finetune); writes RUN_DIR/evaluate-<that stage>' },
  holdout: { type: 'int', default: e.holdout, min: 0, describe: 'test on the last N labeled images per class of --data (the split of --knn-holdout / finetune --holdout)' },
  trainData: { type: 'string', describe: 'encoder: labeled images for the kNN bank and the linear probe (default: the rest of --data with --holdout)' },
  labels: { type: 'string', default: e.labels, describe: 'encoder: labeled subset of the training images (P%, N-per-class, N or an ids file)' },
  knnK: { type: 'int', default: e.knnK, min: 1, describe: 'encoder: kNN neighbours (votes weighted exp(cos/0.1))' },
  batchSize: { type: 'int', default: e.batchSize, min: 1, describe: 'images per inference batch' },
});

/**
 * The index file of the checkpoint a stage reads, for the up-to-date check: `PATH/checkpoint/checkpoint.json`
 * for a stage directory, `PATH/checkpoint.json` when PATH is the checkpoint itself (its save time makes it change with every save).
 */
export function checkpointIndex(path: string): string {
  return /(^|\/)checkpoint\/*$/.test(path) ? join(path, 'checkpoint.json') : join(path, 'checkpoint', 'checkpoint.json');
}

/** evaluate's directory for a checkpoint: evaluate-finetune, evaluate-baseline, evaluate-pretrain. */
function evaluateDir(checkpoint: string): string {
  const name = basename(checkpoint.replace(/\/+$/, ''));
  return `evaluate-${name === 'checkpoint' ? basename(dirname(checkpoint.replace(/\/+$/, ''))) : name}`;
}

/** A training stage's progress bar per epoch, finished before each log line. */
function trainingProgress(label: string, env: StageEnv) {
  let progress: Progress | null = null;
  let progressEpoch = -1;
  return {
    log: (line: string) => {
      progress?.finish();
      progress = null;
      env.log(line);
    },
    onProgress: ({ epoch, epochs, step, stepsPerEpoch, loss, imagesPerSecond }: ProgressInfo) => {
      if (progress === null || epoch !== progressEpoch) {
        progressEpoch = epoch;
        progress = createProgress({ label: `${label} epoch ${epoch + 1}/${epochs}`, total: stepsPerEpoch, unit: 'steps', stream: env.io.stderrStream, quiet: env.json });
      }
      progress.update(step, Number.isFinite(loss) ? `loss ${loss.toFixed(4)} ${imagesPerSecond.toFixed(0)} img/s` : undefined);
    },
  };
}

/** The finite numbers of a stage result's metrics, for its manifest. */
function finiteMetrics(metrics: object): Record<string, number> {
  return Object.fromEntries(Object.entries(metrics).filter(([, v]) => typeof v === 'number' && Number.isFinite(v)));
}

/** A dataset stage's outputs for its manifest: the shards it wrote and the dataset manifest. */
function datasetOutcome(stageDir: string, manifest: DatasetManifest, metrics: Record<string, number>): StageOutcome {
  return { outputs: manifest.shards.map((s) => ({ path: join(stageDir, s.path), rows: s.rows })), metrics, extra: manifest as unknown as Record<string, unknown> };
}

export const STAGES: Record<string, StageDefinition> = {
  ingest: defineStage({
    describe: 'image folder or CSV list → images dataset (Arrow shards) in RUN_DIR/ingest',
    options: ingestOptions,
    // The parts, merged, hold the one-process rows in order: `pipeline merge` records the parts'
    // config hash as the ingest stage's, so the stages after it see an up-to-date ingest.
    // `full` changes how the rows are made, not which: an incremental and a full run give the same rows by id.
    volatile: ['workers', 'shardIndex', 'numShards', 'full'],
    inputs: async (config) => {
      if (!config.input) throw new ConfigError('--input is required (an image folder or a CSV list)');
      return [config.input];
    },
    // A part job's stage manifest is RUN_DIR/ingest-part-I-of-N; its files go to RUN_DIR/ingest.
    dirName: (config) => {
      const { shardIndex, numShards } = shardFromEnvironment(config);
      return numShards > 1 ? partDirName('ingest', shardIndex, numShards) : 'ingest';
    },
    isPart: (config) => shardFromEnvironment(config).numShards > 1,
    run: async (ctx, env) => {
      if (shardFromEnvironment(ctx.config).numShards > 1) {
        // A part job ingests its part in full (no file index, no incremental rerun).
        const dataset = join(ctx.runDir, 'ingest');
        const result = await runIngest(ctx.config, dataset, env, ctx.force);
        return {
          outputs: [{ path: result.manifestPath, rows: result.rows }, ...result.manifest.shards.map((s) => ({ path: join(dataset, s.path), rows: s.rows }))],
          metrics: { images: result.rows, rejected: result.rejected.length, images_per_second: result.imagesPerSecond },
        };
      }
      const result = await runIngest(ctx.config, ctx.stageDir, env, ctx.force);
      const { mode, reason: _reason, ...counts } = result.changes;
      return datasetOutcome(ctx.stageDir, result.manifest, { images: result.rows, rejected: result.rejected.length, images_per_second: result.imagesPerSecond, incremental: mode === 'incremental' ? 1 : 0, ...counts });
    },
    standalone: async (config, outDir, env) => {
      const result = await runIngest(config, outDir, env);
      return { stage: 'ingest', out_dir: outDir, rows: result.rows, rejected: result.rejected.length, images_per_second: result.imagesPerSecond, changes: result.changes, manifest: result.manifestPath };
    },
  }),
  augment: defineStage({
    describe: 'materialise epochs of augmented view pairs into views shards in RUN_DIR/augment',
    options: augmentOptions,
    volatile: ['workers'],
    inputs: async (config, runDir) => [config.data ?? join(runDir, 'ingest')],
    run: async (ctx, env) => {
      const c = ctx.config;
      let progress: Progress | null = null;
      const result = await augmentStage({
        data: c.data ?? join(ctx.runDir, 'ingest'),
        outDir: ctx.stageDir,
        epochs: c.epochs,
        preset: c.preset,
        outputSize: c.outputSize,
        colorStrength: c.colorStrength,
        batchSize: c.batchSize,
        seed: c.seed,
        workers: c.workers,
        signal: env.signal,
        log: env.log,
        onProgress: (done: number, total: number) => {
          progress ??= createProgress({ label: 'augment', total, unit: 'pairs', stream: env.io.stderrStream, quiet: env.json });
          progress.update(done);
        },
      });
      (progress as Progress | null)?.finish();
      return datasetOutcome(ctx.stageDir, result.manifest, { pairs: result.rows, pairs_per_second: result.pairsPerSecond });
    },
  }),
  pretrain: defineStage({
    describe: 'SimCLR contrastive pretraining of encoder + projection head → RUN_DIR/pretrain/checkpoint',
    options: pretrainOptions,
    volatile: ['workers', 'resume', 'logEvery', 'tensorboard'],
    inputs: async (config, runDir) => [config.data ?? join(runDir, 'ingest'), ...(config.initFrom !== undefined ? [checkpointIndex(config.initFrom)] : [])],
    run: async (ctx, env) => {
      const c = ctx.config;
      const result = await pretrain({
        ...c,
        data: c.data ?? join(ctx.runDir, 'ingest'),
        outDir: ctx.stageDir,
        force: ctx.force,
        signal: env.signal,
        onBackend: ctx.setBackend,
        ...trainingProgress('pretrain', env),
      });
      return {
        outputs: [{ path: result.checkpoint }, { path: result.metricsFile }],
        metrics: finiteMetrics(result.metrics),
        // Always written, so that a run that is no longer warm-started does not keep the last one's.
        extra: { init_from: result.initFrom ?? null },
      };
    },
  }),
  finetune: defineStage({
    describe: 'fine-tune a pretrained encoder on few labels (or --init random: the supervised baseline) → RUN_DIR/finetune/checkpoint',
    options: finetuneOptions,
    volatile: ['workers', 'resume', 'logEvery', 'tensorboard'],
    dirName: (config) => (config.init === 'random' ? 'baseline' : 'finetune'),
    inputs: async (config, runDir) => {
      const pretrained = config.pretrained ?? join(runDir, 'pretrain');
      const paths = [config.data ?? join(runDir, 'ingest')];
      // The random baseline only reads the pretrained checkpoint's architecture, when there is one.
      if (config.init === 'pretrained' || config.pretrained !== undefined) paths.push(checkpointIndex(pretrained));
      if (parseLabelSpec(config.labels).kind === 'file') paths.push(config.labels);
      return paths;
    },
    run: async (ctx, env) => {
      const c = ctx.config;
      const pretrainDir = c.pretrained ?? join(ctx.runDir, 'pretrain');
      const result = await finetune({
        ...c,
        init: c.init,
        data: c.data ?? join(ctx.runDir, 'ingest'),
        pretrained: c.init === 'pretrained' || c.pretrained !== undefined ? pretrainDir : undefined,
        outDir: ctx.stageDir,
        force: ctx.force,
        signal: env.signal,
        onBackend: ctx.setBackend,
        ...trainingProgress(c.init === 'random' ? 'baseline' : 'finetune', env),
      });
      return {
        outputs: [{ path: result.checkpoint }, { path: result.metricsFile }, { path: result.labeledIds, rows: result.metrics.labeled }],
        metrics: finiteMetrics(result.metrics),
        extra: { classes: result.classes },
      };
    },
  }),
  distill: defineStage({
    describe: "distil the fine-tuned teacher into a student on the images (teacher logits cached in RUN_DIR/distill/teacher-logits) → RUN_DIR/distill/checkpoint",
    options: distillOptions,
    // Parts only fill the logits cache: the distill run after them has the same config hash as one without.
    volatile: ['workers', 'resume', 'logEvery', 'tensorboard', 'shardIndex', 'numShards'],
    inputs: async (config, runDir) => {
      const paths = [config.data ?? join(runDir, 'ingest'), checkpointIndex(config.teacher ?? join(runDir, 'finetune'))];
      if (config.labels !== undefined && parseLabelSpec(config.labels).kind === 'file') paths.push(config.labels);
      return paths;
    },
    // A part job of the teacher pass has its own manifest; the logits go to RUN_DIR/distill/teacher-logits.
    dirName: (config) => {
      const { shardIndex, numShards } = shardFromEnvironment(config);
      return numShards > 1 ? partDirName(distillDirFor(config.teacher), shardIndex, numShards) : 'distill';
    },
    isPart: (config) => shardFromEnvironment(config).numShards > 1,
    run: async (ctx, env) => {
      const c = ctx.config;
      const { shardIndex, numShards } = shardFromEnvironment(c);
      const data = c.data ?? join(ctx.runDir, 'ingest');
      const teacher = c.teacher ?? join(ctx.runDir, 'finetune');
      if (numShards > 1) {
        const part = await teacherLogitsPart({ data, teacher, outDir: join(ctx.runDir, distillDirFor(c.teacher)), shardIndex, numShards, backend: c.backend, log: env.log, onBackend: ctx.setBackend });
        return { outputs: [{ path: part.teacherLogits }], metrics: { logits_shards_computed: part.computed, logits_shards_reused: part.reused, logits_seconds: part.seconds } };
      }
      const result = await distill({
        ...c,
        data,
        teacher,
        outDir: ctx.stageDir,
        force: ctx.force,
        signal: env.signal,
        onBackend: ctx.setBackend,
        ...trainingProgress('distill', env),
      });
      return {
        outputs: [{ path: result.checkpoint }, { path: result.metricsFile }, { path: result.teacherLogits, rows: result.metrics.images }],
        metrics: finiteMetrics(result.metrics),
        extra: { classes: result.classes },
      };
    },
  }),
  evaluate: defineStage({
    describe: 'score a classifier (top-1, top-5, per class, confusion) or an encoder (kNN, linear probe) on a test dataset → RUN_DIR/evaluate-<stage>',
    options: evaluateOptions,
    volatile: ['workers', 'batchSize'],
    dirName: (config) => evaluateDir(config.checkpoint ?? 'finetune'),
    inputs: async (config, runDir) => {
      const checkpoint = config.checkpoint ?? join(runDir, 'finetune');
      const paths = [config.data ?? join(runDir, 'ingest'), checkpointIndex(checkpoint)];
      if (config.trainData !== undefined) paths.push(config.trainData);
      if (parseLabelSpec(config.labels).kind === 'file') paths.push(config.labels);
      return paths;
    },
    run: async (ctx, env) => {
      const c = ctx.config;
      const result = await evaluate({
        ...c,
        data: c.data ?? join(ctx.runDir, 'ingest'),
        checkpoint: c.checkpoint ?? join(ctx.runDir, 'finetune'),
        outDir: ctx.stageDir,
        log: env.log,
        onBackend: ctx.setBackend,
      });
      if (!env.json) env.io.stdout(formatEvaluation(result));
      return {
        outputs: [{ path: result.dataset, rows: result.rows }, ...(result.confusion ? [{ path: join(ctx.stageDir, 'confusion.csv') }] : [])],
        metrics: result.metrics,
        extra: { kind: result.kind, classes: result.classes, ...(result.confusion ? { confusion: result.confusion } : {}) },
      };
    },
  }),
};

const exportOptions = defineOptions({
  checkpoint: { type: 'string', describe: 'the stage directory to export (run all: the student, RUN_DIR/distill)' },
  formats: { type: 'string', default: EXPORT_FORMATS.join(','), describe: `comma-separated formats written to RUN_DIR/export/<format> (${EXPORT_FORMATS.join(', ')})` },
});

/** The evaluation of a stage directory, when there is one: the model card quotes it. */
async function evaluationManifest(stageDir: string): Promise<string[]> {
  const path = join(dirname(stageDir), `evaluate-${basename(stageDir)}`, 'manifest.json');
  return (await stat(path).then(() => true, () => false)) ? [path] : [];
}

/** Export as a run-dir stage (run all's last step before the report); `pipeline export` is the standalone command. */
export const EXPORT_STAGE: StageDefinition = defineStage({
  describe: 'export a trained classifier as tfjs and ONNX models with classes.json and model-card.json → RUN_DIR/export',
  options: exportOptions,
  inputs: async (config, runDir) => {
    const checkpoint = config.checkpoint ?? join(runDir, 'distill');
    return [checkpointIndex(checkpoint), ...(await evaluationManifest(checkpoint))];
  },
  run: async (ctx, env) => {
    const formats = ctx.config.formats.split(',').map((f) => f.trim()).filter((f) => f !== '');
    const unknown = formats.find((f) => !(EXPORT_FORMATS as readonly string[]).includes(f));
    if (unknown !== undefined || formats.length === 0) throw new ConfigError(`export.formats must list some of ${EXPORT_FORMATS.join(', ')}, got '${ctx.config.formats}'`);
    const outputs: StageOutcome['outputs'] = [];
    let parameters = 0;
    for (const format of formats as ExportFormat[]) {
      const result = await exportModel({ checkpoint: ctx.config.checkpoint ?? join(ctx.runDir, 'distill'), format, out: join(ctx.stageDir, format), log: env.log });
      outputs.push({ path: result.out });
      parameters = result.card.parameters;
    }
    return { outputs, metrics: { parameters } };
  },
});

/** The evaluation as a table on stdout. */
function formatEvaluation(result: EvaluateResult): string {
  const pct = (v: number) => `${(100 * v).toFixed(2)} %`;
  const lines = [`${result.kind} evaluation on ${result.metrics.images} images`];
  for (const [k, v] of Object.entries(result.metrics)) if (typeof v === 'number' && /accuracy$/.test(k)) lines.push(`  ${k.padEnd(24)} ${pct(v)}`);
  const perClass = result.metrics.per_class_accuracy;
  if (typeof perClass === 'object') {
    lines.push('  per class:');
    for (const [cls, v] of Object.entries(perClass)) lines.push(`    ${cls.padEnd(22)} ${pct(v)}`);
  }
  return lines.join('\n');
}

export const STAGE_NAMES = Object.keys(STAGES);
