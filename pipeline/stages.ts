// The stages the CLI can run: their options (flags and config keys), their inputs (hashed for the
// skip rule) and how a resolved config becomes a call of the stage function.
import { join } from 'node:path';
import { ENCODERS } from '../models/resnet.ts';
import { OPTIMIZER_NAMES } from '../models/optimizers.ts';
import { augmentStage } from '../stages/augment.ts';
import { ingest } from '../stages/ingest.ts';
import { pretrain } from '../stages/pretrain.ts';
import { ConfigError, type OptionSpecs, type ResolvedConfig } from './config.ts';
import { createProgress } from './progress.ts';
import type { StageContext, StageOutcome } from './runner.ts';

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

export interface StageDefinition {
  describe: string;
  options: OptionSpecs;
  /** Config keys that do not change the result (left out of the config hash). */
  volatile?: readonly string[];
  /** Paths whose content decides whether a completed run is still up to date. */
  inputs(config: ResolvedConfig, runDir: string): Promise<string[]>;
  run(ctx: StageContext, env: StageEnv): Promise<StageOutcome>;
  /** Outside a run dir (`pipeline ingest --out DIR`). */
  standalone?(config: ResolvedConfig, outDir: string, env: StageEnv): Promise<Record<string, unknown>>;
}

/** Part of a distributed job: explicit flags first, then Kubernetes Indexed Jobs, then Slurm arrays. */
export function shardFromEnvironment(config: ResolvedConfig, env: NodeJS.ProcessEnv = process.env): { shardIndex: number; numShards: number } {
  const fromEnv = env.JOB_COMPLETION_INDEX ?? env.SLURM_ARRAY_TASK_ID;
  const shardIndex = (config.shardIndex as number | undefined) ?? (fromEnv !== undefined ? Number(fromEnv) : 0);
  const numShards = (config.numShards as number | undefined) ?? (env.SLURM_ARRAY_TASK_COUNT !== undefined ? Number(env.SLURM_ARRAY_TASK_COUNT) : 1);
  if (!Number.isInteger(shardIndex) || shardIndex < 0) throw new ConfigError(`shard index ${JSON.stringify(fromEnv)} from the environment is not a non-negative integer`);
  if (numShards === 1 && shardIndex > 0) {
    throw new ConfigError(`shard index ${shardIndex} (from --shard-index or the job environment) needs --num-shards`);
  }
  return { shardIndex, numShards };
}

/** Drops undefined options so that the stage's own defaults apply. */
function definedOnly<T extends object>(options: T): T {
  return Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) as T;
}

const ingestOptions: OptionSpecs = {
  input: { type: 'string', describe: 'image folder (class sub-folders = labels) or CSV list with header path,label' },
  size: { type: 'int', default: 32, min: 1, max: 4096, describe: 'output side: shorter side resized to it, centre crop' },
  unlabeled: { type: 'boolean', default: false, describe: 'ignore class folders / labels' },
  limitPerClass: { type: 'int', min: 1, describe: 'keep at most N images per class (first in sorted order)' },
  strict: { type: 'boolean', default: false, describe: 'fail on the first unusable file instead of skipping it' },
  maxInputPixels: { type: 'int', min: 1, describe: 'refuse images with more pixels (default 16383²)' },
  shardIndex: { type: 'int', min: 0, describe: 'this job\'s part (default $JOB_COMPLETION_INDEX or $SLURM_ARRAY_TASK_ID)' },
  numShards: { type: 'int', min: 1, describe: 'number of parts (default $SLURM_ARRAY_TASK_COUNT or 1)' },
};

async function runIngest(config: ResolvedConfig, outDir: string, env: StageEnv) {
  if (!config.input) throw new ConfigError('--input is required (an image folder or a CSV list)');
  const { shardIndex, numShards } = shardFromEnvironment(config);
  let progress: ReturnType<typeof createProgress> | null = null;
  const result = await ingest(definedOnly({
    input: config.input as string,
    outDir,
    size: config.size as number,
    unlabeled: config.unlabeled as boolean,
    limitPerClass: config.limitPerClass as number | undefined,
    strict: config.strict as boolean,
    maxInputPixels: config.maxInputPixels as number | undefined,
    workers: config.workers as number | undefined,
    shardIndex,
    numShards,
    log: env.log,
    onProgress: (done, total) => {
      progress ??= createProgress({ label: 'ingest', total, unit: 'images', stream: env.io.stderrStream, quiet: env.json });
      progress.update(done);
    },
  }));
  (progress as ReturnType<typeof createProgress> | null)?.finish();
  // The stage logs its own summary; add where the rejected files are listed when there are some.
  if (result.rejected.length > 0) env.log(`ingest: ${result.rejected.length} rejected files are listed in ${result.rejectedPath}`);
  return result;
}

const augmentOptions: OptionSpecs = {
  data: { type: 'string', describe: 'images dataset directory (default: RUN_DIR/ingest)' },
  epochs: { type: 'int', default: 1, min: 1, describe: 'epochs of view pairs to materialise' },
  preset: { type: 'string', default: 'simclr', choices: ['simclr', 'finetune'], describe: 'augmentation preset (two views per image)' },
  outputSize: { type: 'int', min: 1, describe: 'side of the views (default: the image side)' },
  colorStrength: { type: 'number', min: 0, exclusiveMin: true, describe: 'colour jitter strength s (default 0.5 for <= 32 px, else 1)' },
  batchSize: { type: 'int', min: 1, describe: 'images per worker task and record batch (default 256, fewer for large views)' },
};

const pretrainOptions: OptionSpecs = {
  data: { type: 'string', describe: 'images dataset directory (default: RUN_DIR/ingest)' },
  epochs: { type: 'int', default: 100, min: 1, describe: 'passes over the training images' },
  // 128, not SimCLR's 256+: the 2 × 256 views of a ResNet-20 step need more than the 4 GB heap
  // of the wasm backends.
  batchSize: { type: 'int', default: 128, min: 2, describe: 'images per step (each gives two views: 2N through the encoder)' },
  model: { type: 'string', default: 'resnet20', choices: Object.keys(ENCODERS), describe: 'encoder' },
  width: { type: 'number', default: 1, min: 0, exclusiveMin: true, describe: 'encoder width multiplier' },
  temperature: { type: 'number', min: 0, exclusiveMin: true, describe: 'NT-Xent temperature (default 0.5 for <= 64 px images, 0.1 above)' },
  lr: { type: 'number', min: 0, exclusiveMin: true, describe: 'base learning rate before batch scaling (default 0.3 linear / 0.075 sqrt; Adam 1e-3)' },
  lrScaling: { type: 'string', default: 'linear', choices: ['linear', 'sqrt'], describe: 'lr = base × batch/256 (linear) or base × √batch (sqrt)' },
  warmupEpochs: { type: 'number', min: 0, describe: 'linear warm-up epochs before cosine decay (default min(10, epochs/10))' },
  optimizer: { type: 'string', default: 'lars', choices: OPTIMIZER_NAMES, describe: 'optimizer' },
  weightDecay: { type: 'number', default: 1e-6, min: 0, describe: 'L2 weight decay (not on batch norm or biases)' },
  momentum: { type: 'number', default: 0.9, min: 0, max: 0.999, describe: 'momentum (LARS, SGD)' },
  headLayers: { type: 'int', default: 3, min: 1, describe: 'projection head layers (SimCLRv2: 3)' },
  projectionDim: { type: 'int', default: 128, min: 1, describe: 'projection output size' },
  colorStrength: { type: 'number', min: 0, exclusiveMin: true, describe: 'colour jitter strength s (default 0.5 for <= 32 px, else 1)' },
  minScale: { type: 'number', min: 0, exclusiveMin: true, max: 1, describe: 'smallest random-crop area (default 0.08, SimCLR)' },
  limit: { type: 'int', default: 0, min: 0, describe: 'train on at most N images (0 = all)' },
  resume: { type: 'boolean', default: false, describe: 'continue from the last checkpoint of this run dir' },
  logEvery: { type: 'int', default: 10, min: 1, describe: 'steps between metrics.jsonl lines' },
  knnHoldout: { type: 'int', default: 0, min: 0, describe: 'hold out N labeled images per class as kNN queries' },
  knnEvery: { type: 'int', default: 0, min: 0, describe: 'kNN accuracy every N epochs (0 = off; needs --knn-holdout)' },
  knnK: { type: 'int', default: 200, min: 1, describe: 'kNN neighbours' },
  knnBank: { type: 'int', default: 10000, min: 1, describe: 'labeled training images in the kNN memory bank, at most' },
};

export const STAGES: Record<string, StageDefinition> = {
  ingest: {
    describe: 'image folder or CSV list → images dataset (Arrow shards) in RUN_DIR/ingest',
    options: ingestOptions,
    volatile: ['workers'],
    inputs: async (config) => {
      if (!config.input) throw new ConfigError('--input is required (an image folder or a CSV list)');
      return [config.input as string];
    },
    run: async (ctx, env) => {
      const result = await runIngest(ctx.config, ctx.stageDir, env);
      return {
        outputs: result.manifest.shards.map((s) => ({ path: join(ctx.stageDir, s.path), rows: s.rows })),
        metrics: { images: result.rows, rejected: result.rejected.length, images_per_second: result.imagesPerSecond },
        extra: result.manifest,
      };
    },
    standalone: async (config, outDir, env) => {
      const result = await runIngest(config, outDir, env);
      return { stage: 'ingest', out_dir: outDir, rows: result.rows, rejected: result.rejected.length, images_per_second: result.imagesPerSecond, manifest: result.manifestPath };
    },
  },
  augment: {
    describe: 'materialise epochs of augmented view pairs into views shards in RUN_DIR/augment',
    options: augmentOptions,
    volatile: ['workers'],
    inputs: async (config, runDir) => [(config.data as string | undefined) ?? join(runDir, 'ingest')],
    run: async (ctx, env) => {
      const c = ctx.config;
      let progress: ReturnType<typeof createProgress> | null = null;
      const result = await augmentStage(
        definedOnly({
          data: (c.data as string | undefined) ?? join(ctx.runDir, 'ingest'),
          outDir: ctx.stageDir,
          epochs: c.epochs as number,
          preset: c.preset as 'simclr' | 'finetune',
          outputSize: c.outputSize as number | undefined,
          colorStrength: c.colorStrength as number | undefined,
          batchSize: c.batchSize as number | undefined,
          seed: c.seed as number,
          workers: c.workers as number | undefined,
          signal: env.signal,
          log: env.log,
          onProgress: (done: number, total: number) => {
            progress ??= createProgress({ label: 'augment', total, unit: 'pairs', stream: env.io.stderrStream, quiet: env.json });
            progress.update(done);
          },
        }),
      );
      (progress as ReturnType<typeof createProgress> | null)?.finish();
      return {
        outputs: result.manifest.shards.map((s) => ({ path: join(ctx.stageDir, s.path), rows: s.rows })),
        metrics: { pairs: result.rows, pairs_per_second: result.pairsPerSecond },
        extra: result.manifest,
      };
    },
  },
  pretrain: {
    describe: 'SimCLR contrastive pretraining of encoder + projection head → RUN_DIR/pretrain/checkpoint',
    options: pretrainOptions,
    volatile: ['workers', 'resume', 'logEvery'],
    inputs: async (config, runDir) => [(config.data as string | undefined) ?? join(runDir, 'ingest')],
    run: async (ctx, env) => {
      const c = ctx.config;
      let progress: ReturnType<typeof createProgress> | null = null;
      let progressEpoch = -1;
      const result = await pretrain(definedOnly({
        data: (c.data as string | undefined) ?? join(ctx.runDir, 'ingest'),
        outDir: ctx.stageDir,
        epochs: c.epochs as number,
        batchSize: c.batchSize as number,
        model: c.model as string,
        width: c.width as number,
        temperature: c.temperature as number | undefined,
        lr: c.lr as number | undefined,
        lrScaling: c.lrScaling as 'linear' | 'sqrt',
        warmupEpochs: c.warmupEpochs as number | undefined,
        optimizer: c.optimizer as 'lars' | 'sgd' | 'adam',
        weightDecay: c.weightDecay as number,
        momentum: c.momentum as number,
        headLayers: c.headLayers as number,
        projectionDim: c.projectionDim as number,
        colorStrength: c.colorStrength as number | undefined,
        minScale: c.minScale as number | undefined,
        limit: c.limit as number,
        seed: c.seed as number,
        workers: c.workers as number | undefined,
        backend: c.backend as never,
        resume: c.resume as boolean,
        logEvery: c.logEvery as number,
        knnHoldout: c.knnHoldout as number,
        knnEvery: c.knnEvery as number,
        knnK: c.knnK as number,
        knnBank: c.knnBank as number,
        signal: env.signal,
        log: (line) => {
          progress?.finish();
          progress = null;
          env.log(line);
        },
        onBackend: ctx.setBackend,
        onProgress: ({ epoch, step, stepsPerEpoch, loss, imagesPerSecond }) => {
          if (progress === null || epoch !== progressEpoch) {
            progressEpoch = epoch;
            progress = createProgress({ label: `pretrain epoch ${epoch + 1}/${c.epochs}`, total: stepsPerEpoch, unit: 'steps', stream: env.io.stderrStream, quiet: env.json });
          }
          progress.update(step, Number.isFinite(loss) ? `loss ${loss.toFixed(4)} ${imagesPerSecond.toFixed(0)} img/s` : undefined);
        },
      }));
      return {
        outputs: [{ path: result.checkpoint }, { path: result.metricsFile }],
        metrics: Object.fromEntries(Object.entries(result.metrics).filter(([, v]) => typeof v === 'number' && Number.isFinite(v))) as Record<string, number>,
      };
    },
  },
};

export const STAGE_NAMES = Object.keys(STAGES);
