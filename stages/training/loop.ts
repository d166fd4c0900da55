// The loop every training stage runs on: resume at (epoch, step) with the same data order, atomic
// checkpoints per epoch and on a signal, metrics.jsonl, progress, the non-finite-loss and
// out-of-memory stops, an evaluation hook every K epochs, and TensorBoard scalars. A stage brings its step and batches.
import { appendFile, mkdir, readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type * as tf from '@tensorflow/tfjs';
import { writeFileAtomic } from '../../data/files.ts';
import { encodeEventsFile, EventsWriter, isEventsFile, readEvents } from '../../data/tfevents.ts';
import { findCheckpoint, loadCheckpoint, saveCheckpoint, type JsonValue } from '../../models/checkpoint.ts';
import type { BackendName } from '../../models/engine/backend.ts';
import type { WeightDecayOptimizer } from '../../models/optimizers.ts';

/** A bad option, dataset or checkpoint for a training stage: the CLI exits 2. */
export class TrainingInputError extends Error {
  override name = 'TrainingInputError';
}

/** The run stopped on a signal after writing a checkpoint. */
export class TrainingInterruptedError extends Error {
  override name = 'TrainingInterruptedError';
}

/** A training step did not fit in the backend's memory. */
export class TrainingOutOfMemoryError extends Error {
  override name = 'TrainingOutOfMemoryError';
}

/** The loss became NaN or infinite. */
export class NonFiniteLossError extends Error {
  override name = 'NonFiniteLossError';
}

/** The options every training stage takes besides its own. */
export interface TrainingStageOptions {
  seed?: number;
  /** Augmentation threads. */
  workers?: number;
  backend?: BackendName;
  /** Continue from the stage directory's last checkpoint. */
  resume?: boolean;
  /** Start over even though the stage directory holds a checkpoint (without it, that is an error naming --resume). */
  force?: boolean;
  /** Steps between metrics.jsonl lines (there is always one per epoch as well). */
  logEvery?: number;
  /** Also write every metrics.jsonl row as TensorBoard scalars, to an events.out.tfevents.* file in the stage directory. */
  tensorboard?: boolean;
  /** Aborted on SIGINT/SIGTERM: the run checkpoints and stops. */
  signal?: AbortSignal;
  log?: (line: string) => void;
  onProgress?: (info: ProgressInfo) => void;
  /** Called once the backend is chosen. */
  onBackend?: (name: string) => void;
}

/** Where a run stands; saved in every checkpoint's state.json as `train`. */
export interface TrainingState {
  /** Next epoch to run (or the current one, when stepInEpoch > 0). */
  epoch: number;
  /** Steps of `epoch` already taken. */
  stepInEpoch: number;
  globalStep: number;
}

/** A training run's models, optimizer and files, fresh or restored from its last checkpoint. */
export interface TrainingRun<M extends string = string> {
  /** Stage name, for messages (`pretrain`). */
  stage: string;
  models: Record<M, tf.LayersModel>;
  optimizer: WeightDecayOptimizer;
  state: TrainingState;
  /** The stage directory: checkpoint/, metrics.jsonl and the TensorBoard events files. */
  outDir: string;
  checkpointDir: string;
  metricsFile: string;
  /** What must match for the checkpoint to be resumed; saved beside the state. */
  key: Record<string, JsonValue>;
  /** Settings recorded in the checkpoint for a reader (schedule, temperature, ...). */
  config: Record<string, JsonValue>;
}

export interface OpenTrainingOptions<M extends string> {
  stage: string;
  outDir: string;
  /** The freshly built models; replaced (and disposed) by the checkpoint's when resuming. */
  models: Record<M, tf.LayersModel>;
  optimizer: WeightDecayOptimizer;
  /** Everything that shapes the run (data, model, batch, epochs, schedule): a resumed run must match it. */
  key: Record<string, JsonValue>;
  config?: Record<string, JsonValue>;
  resume: boolean;
  /** Start over even though `outDir` holds a checkpoint. */
  force?: boolean;
}

/**
 * Starts a run in `outDir`. With `resume`, restores models, optimizer state and position from
 * `outDir/checkpoint` after checking that it was made with the same `key`, and drops the
 * metrics.jsonl rows and TensorBoard events written after that checkpoint (a killed run wrote them;
 * they are run again). Without it, refuses to replace a checkpoint unless `force`, and empties
 * metrics.jsonl and removes the events files.
 * On failure the models passed in are left to the caller, untouched.
 */
export async function openTraining<M extends string>(options: OpenTrainingOptions<M>): Promise<TrainingRun<M>> {
  const { stage, outDir, key } = options;
  await mkdir(outDir, { recursive: true });
  const checkpointDir = join(outDir, 'checkpoint');
  const metricsFile = join(outDir, 'metrics.jsonl');
  const run: TrainingRun<M> = {
    stage,
    models: options.models,
    optimizer: options.optimizer,
    state: { epoch: 0, stepInEpoch: 0, globalStep: 0 },
    outDir,
    checkpointDir,
    metricsFile,
    key,
    config: options.config ?? {},
  };
  const existing = await findCheckpoint(checkpointDir);
  if (!options.resume) {
    if (existing !== null && !options.force) {
      const { train } = await savedState(checkpointDir);
      throw new TrainingInputError(
        `${stage}: ${checkpointDir} holds the checkpoint of an earlier run (epoch ${train.epoch}, step ${train.globalStep}); ` +
          `continue it with --resume, or start over with --force`,
      );
    }
    // A fresh run replaces the metrics of any earlier one in this directory.
    await writeFileAtomic(metricsFile, '');
    await dropEvents(stage, outDir, null);
    return run;
  }
  if (existing === null) throw new TrainingInputError(`${stage} --resume: no checkpoint in ${checkpointDir} to resume from`);
  // The key first, from the state alone: a checkpoint of another run loads nothing into the optimizer.
  const saved = await savedState(checkpointDir);
  for (const [k, v] of Object.entries(key)) {
    if (saved.key === undefined || !(k in saved.key)) {
      throw new TrainingInputError(`${stage} --resume: the checkpoint in ${checkpointDir} does not record ${k} (an older version wrote it); start over with --force`);
    }
    if (JSON.stringify(saved.key[k]) !== JSON.stringify(v)) {
      throw new TrainingInputError(`${stage} --resume: the checkpoint in ${checkpointDir} was made with ${k} = ${JSON.stringify(saved.key[k])}, this run has ${JSON.stringify(v)}`);
    }
  }
  const loaded = await loadCheckpoint(checkpointDir, { models: Object.keys(options.models), optimizer: options.optimizer });
  for (const m of Object.values<tf.LayersModel>(options.models)) m.dispose();
  run.models = loaded.models as Record<M, tf.LayersModel>;
  run.state = (loaded.state as unknown as { train: TrainingState }).train;
  await writeFileAtomic(metricsFile, (await metricsRows(metricsFile)).filter((r) => r.step <= run.state.globalStep).map((r) => JSON.stringify(r) + '\n').join(''));
  await dropEvents(stage, outDir, run.state.globalStep);
  return run;
}

/** Removes the TensorBoard events files in `outDir` (`afterStep` null), or the events after `afterStep` from each. */
async function dropEvents(stage: string, outDir: string, afterStep: number | null): Promise<void> {
  for (const name of (await readdir(outDir)).filter(isEventsFile)) {
    const file = join(outDir, name);
    if (afterStep === null) {
      await rm(file, { force: true });
      continue;
    }
    let events;
    try {
      events = await readEvents(file);
    } catch (err) {
      throw new TrainingInputError(`${stage} --resume: ${(err as Error).message}; delete that file to resume without its scalars`);
    }
    const kept = events.filter((e) => e.step <= afterStep);
    if (kept.length < events.length) await writeFileAtomic(file, encodeEventsFile(kept));
  }
}

async function savedState(checkpointDir: string): Promise<{ train: TrainingState; key?: Record<string, JsonValue> }> {
  return (await loadCheckpoint(checkpointDir, { models: [] })).state as unknown as { train: TrainingState; key?: Record<string, JsonValue> };
}

type MetricsRow = { epoch: number; step: number; summary?: string } & Record<string, unknown>;

/** The rows of a metrics.jsonl; a line a killed process left half-written is skipped. */
async function metricsRows(file: string): Promise<MetricsRow[]> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  const rows: MetricsRow[] = [];
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    try {
      const row = JSON.parse(line) as MetricsRow;
      if (typeof row.step === 'number') rows.push(row);
    } catch {
      // the torn last line of a killed writer
    }
  }
  return rows;
}

/** Saves models, optimizer and `state` atomically in the run's checkpoint directory. */
function saveTraining(run: TrainingRun, state: TrainingState): Promise<void> {
  return saveCheckpoint(run.checkpointDir, {
    models: run.models,
    optimizer: run.optimizer,
    state: { train: { ...state }, key: run.key, config: { ...run.key, ...run.config } },
  });
}

export interface StepInfo {
  epoch: number;
  /** Step within the epoch, from 0. */
  step: number;
  globalStep: number;
  lr: number;
}

export interface ProgressInfo {
  epoch: number;
  epochs: number;
  step: number;
  stepsPerEpoch: number;
  loss: number;
  imagesPerSecond: number;
}

/** Metrics computed every `every` epochs, after the last epoch, and (with `atStart`) before a fresh run's first step. */
export interface EvaluationHook {
  every: number;
  atStart?: boolean;
  run(when: { epoch: number; atStart: boolean }): Promise<Record<string, number>> | Record<string, number>;
}

export interface TrainingLoopOptions<B> {
  epochs: number;
  stepsPerEpoch: number;
  /** The batches of `epoch` from step `fromStep` on: the same order on every call, so a resumed run sees what it would have. */
  batches(epoch: number, fromStep: number): AsyncIterable<B> | Iterable<B>;
  /** One optimisation step; returns the loss and the metrics to average beside it, by their metrics.jsonl names. */
  step(batch: B, info: StepInfo): { loss: number } & Record<string, number>;
  /** Images a batch counts for images/s (SimCLR counts both views). */
  imagesIn(batch: B): number;
  /** Learning rate of a global step. */
  schedule(step: number): number;
  /** Steps between metrics.jsonl lines (there is always one per epoch as well). */
  logEvery: number;
  /** Also write each metrics.jsonl row to a TensorBoard events file in the run's directory. */
  tensorboard?: boolean;
  evaluation?: EvaluationHook;
  /** The epoch row's figures (and the evaluation's) as its log line (default: each averaged metric, images/s, seconds). */
  formatEpoch?(figures: Record<string, number>): string;
  /** Backend name and a description of one step, for the out-of-memory advice. */
  backend: string;
  describeStep(batch: B): string;
  signal?: AbortSignal;
  log?: (line: string) => void;
  onProgress?: (info: ProgressInfo) => void;
}

export interface TrainingResult {
  /** Epoch means of the last epoch run (loss, the step's metrics, images_per_second), the epochs and steps done, the last evaluation. */
  metrics: { loss: number; images_per_second: number; epochs: number; steps: number } & Record<string, number>;
  /** What the evaluation hook gave before the first step (fresh runs with atStart only). */
  initial?: Record<string, number>;
}

/** When the wasm heap (4 GB at most) cannot grow, emscripten aborts or a kernel writes out of bounds; the instance is unusable afterwards. */
function isOutOfMemory(err: unknown): boolean {
  return err instanceof Error && err.name === 'RuntimeError' && /^Aborted|memory access out of bounds/.test(err.message);
}

/** Runs `run` from where it stands to `epochs`; see TrainingLoopOptions. Throws the errors above. */
export async function trainingLoop<B>(run: TrainingRun, options: TrainingLoopOptions<B>): Promise<TrainingResult> {
  const { stage, checkpointDir, optimizer } = run;
  const { epochs, stepsPerEpoch, logEvery, evaluation } = options;
  const metrics: TrainingResult['metrics'] = { loss: NaN, images_per_second: NaN, epochs: 0, steps: run.state.globalStep };
  const result: TrainingResult = { metrics };

  if (run.state.epoch >= epochs) {
    // Resumed after its last epoch (killed before its manifest was written, or run again): the
    // figures are those of the last epoch row.
    const rows = await metricsRows(run.metricsFile);
    const last = rows.filter((r) => r.summary === 'epoch').at(-1);
    const start = rows.find((r) => r.step === 0 && r.summary === undefined);
    for (const [k, v] of Object.entries(last ?? {})) if (typeof v === 'number' && !['epoch', 'step', 'lr', 'epoch_seconds'].includes(k)) metrics[k] = v;
    Object.assign(metrics, { epochs: last?.epoch ?? run.state.epoch, steps: run.state.globalStep });
    if (start) result.initial = Object.fromEntries(Object.entries(start).filter(([k, v]) => typeof v === 'number' && k !== 'epoch' && k !== 'step')) as Record<string, number>;
    options.log?.(`${stage}: the checkpoint in ${checkpointDir} has finished all ${epochs} epochs; nothing left to train`);
    return result;
  }

  // A resumed run writes a new events file beside the earlier ones (openTraining cut them at the
  // checkpoint's step): TensorBoard reads a directory's files as one run.
  const events = options.tensorboard ? await EventsWriter.open(run.outDir) : null;
  /** Appends a row to metrics.jsonl and, with TensorBoard on, its figures (tags under `prefix`) at its step. */
  const writeMetrics = async (row: { step: number } & Record<string, unknown>, prefix = '') => {
    await appendFile(run.metricsFile, JSON.stringify(row) + '\n');
    if (events === null) return;
    events.scalars(row.step, rowScalars(row, prefix));
    await events.flush();
  };
  let interrupted = false;
  const onAbort = () => {
    interrupted = true;
  };
  try {
    if (evaluation?.atStart && run.state.globalStep === 0) {
      result.initial = await evaluation.run({ epoch: 0, atStart: true });
      // Under epoch/ in TensorBoard: the first point of the evaluations the epoch rows carry.
      await writeMetrics({ epoch: 0, step: 0, ...result.initial }, 'epoch/');
    }
    options.signal?.addEventListener('abort', onAbort, { once: true });
    for (let epoch = run.state.epoch; epoch < epochs; epoch++) {
      const skip = epoch === run.state.epoch ? run.state.stepInEpoch : 0;
      const epochSums = new Map<string, number>();
      const windowSums = new Map<string, number>();
      let epochSteps = 0;
      let epochImages = 0;
      let windowSteps = 0;
      let windowImages = 0;
      let windowStart = performance.now();
      const epochStart = performance.now();
      let stepInEpoch = skip;
      options.onProgress?.({ epoch, epochs, step: stepInEpoch, stepsPerEpoch, loss: NaN, imagesPerSecond: NaN });
      for await (const batch of options.batches(epoch, skip)) {
        const lr = options.schedule(run.state.globalStep);
        optimizer.setLearningRate(lr);
        let scalars;
        try {
          scalars = options.step(batch, { epoch, step: stepInEpoch, globalStep: run.state.globalStep, lr });
        } catch (err) {
          if (!isOutOfMemory(err)) throw err;
          throw new TrainingOutOfMemoryError(
            `${stage}: the ${options.backend} backend ran out of memory (its heap is at most 4 GB) in ${options.describeStep(batch)}; ` +
              `use a smaller --batch-size (about half)${(await findCheckpoint(checkpointDir)) ? ` and --resume from ${checkpointDir}` : ''}`,
          );
        }
        if (!Number.isFinite(scalars.loss)) {
          const last = await findCheckpoint(checkpointDir);
          throw new NonFiniteLossError(
            `${stage}: loss is ${scalars.loss} at epoch ${epoch + 1} step ${stepInEpoch + 1} (global step ${run.state.globalStep + 1}, lr ${lr.toPrecision(3)}); ` +
              (last ? `last good checkpoint: ${last} (resume with --resume, perhaps with a lower --lr)` : 'no checkpoint was written yet; try a lower --lr'),
          );
        }
        stepInEpoch++;
        run.state = { epoch, stepInEpoch, globalStep: run.state.globalStep + 1 };
        for (const [k, v] of Object.entries(scalars)) {
          epochSums.set(k, (epochSums.get(k) ?? 0) + v);
          windowSums.set(k, (windowSums.get(k) ?? 0) + v);
        }
        const images = options.imagesIn(batch);
        epochSteps++;
        epochImages += images;
        windowSteps++;
        windowImages += images;
        const imagesPerSecond = windowImages / ((performance.now() - windowStart) / 1000);
        options.onProgress?.({ epoch, epochs, step: stepInEpoch, stepsPerEpoch, loss: scalars.loss, imagesPerSecond });
        if (windowSteps === logEvery) {
          await writeMetrics({ epoch: epoch + 1, step: run.state.globalStep, ...means(windowSums, windowSteps), lr, images_per_second: imagesPerSecond });
          windowSums.clear();
          windowSteps = windowImages = 0;
          windowStart = performance.now();
        }
        if (interrupted) break;
      }
      if (interrupted) {
        const s = run.state;
        await saveTraining(run, s.stepInEpoch === stepsPerEpoch ? { epoch: epoch + 1, stepInEpoch: 0, globalStep: s.globalStep } : s);
        throw new TrainingInterruptedError(
          `${stage} interrupted at epoch ${epoch + 1} step ${s.stepInEpoch} of ${stepsPerEpoch}; checkpoint written to ${checkpointDir}; ` +
            `continue with the same command plus --resume`,
        );
      }
      const seconds = (performance.now() - epochStart) / 1000;
      run.state = { epoch: epoch + 1, stepInEpoch: 0, globalStep: run.state.globalStep };
      Object.assign(metrics, means(epochSums, Math.max(1, epochSteps)), {
        images_per_second: epochImages / seconds,
        epochs: epoch + 1,
        steps: run.state.globalStep,
      });
      const figures: { epoch: number; step: number } & Record<string, number> = {
        epoch: epoch + 1,
        step: run.state.globalStep,
        ...means(epochSums, Math.max(1, epochSteps)),
        lr: options.schedule(run.state.globalStep - 1),
        images_per_second: metrics.images_per_second,
        epoch_seconds: seconds,
      };
      const row: { step: number } & Record<string, unknown> = { ...figures, summary: 'epoch' };
      if (evaluation && ((epoch + 1) % evaluation.every === 0 || epoch + 1 === epochs)) {
        const evaluated = await evaluation.run({ epoch: epoch + 1, atStart: false });
        Object.assign(metrics, evaluated);
        Object.assign(row, evaluated);
        Object.assign(figures, evaluated);
      }
      await writeMetrics(row, 'epoch/');
      await saveTraining(run, run.state);
      const summary =
        options.formatEpoch?.(figures) ??
        [...epochSums.keys()].map((k) => `${k} ${figures[k].toFixed(4)}`).join(' ') + ` ${metrics.images_per_second.toFixed(0)} images/s (${seconds.toFixed(0)} s)`;
      options.log?.(`${stage}: epoch ${epoch + 1}/${epochs} ${summary}`);
    }
  } finally {
    options.signal?.removeEventListener('abort', onAbort);
    await events?.close();
  }
  return result;
}

/** A metrics row's figures as TensorBoard scalars: every finite number but the step (the event's own), tagged `prefix + name`. */
function rowScalars(row: Record<string, unknown>, prefix: string): Record<string, number> {
  const scalars: Record<string, number> = {};
  for (const [k, v] of Object.entries(row)) if (k !== 'step' && typeof v === 'number' && Number.isFinite(v)) scalars[prefix + k] = v;
  return scalars;
}

function means(sums: Map<string, number>, count: number): Record<string, number> {
  return Object.fromEntries([...sums].map(([k, v]) => [k, v / count]));
}
