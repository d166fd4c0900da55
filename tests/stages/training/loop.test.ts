import { appendFile, mkdtemp, readdir, readFile, readlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { useBackend } from '../../../models/engine/backend.ts';
import { makeOptimizer } from '../../../models/optimizers.ts';
import { trainStep } from '../../../models/train-step.ts';
import {
  NonFiniteLossError,
  openTraining,
  TrainingInputError,
  TrainingInterruptedError,
  trainingLoop,
  TrainingOutOfMemoryError,
  type TrainingLoopOptions,
} from '../../../stages/training/loop.ts';
import { epochPermutation } from '../../../data/random.ts';
import { encodeEvent, encodeRecord, isEventsFile, readEvents, type TfEvent } from '../../../data/tfevents.ts';
import { seededValues } from '../../helpers.ts';

// A least-squares problem small enough to train in milliseconds: 12 rows of 3 features, batch 4.
const N = 12;
const D = 3;
const BATCH = 4;
const X = seededValues(N * D, 11);
const Y = seededValues(N, 12);

interface Batch {
  rows: Uint32Array;
}

function linearModel(): tf.LayersModel {
  return tf.sequential({ layers: [tf.layers.dense({ units: 1, inputShape: [D], kernelInitializer: tf.initializers.glorotUniform({ seed: 5 }) })] });
}

/** A fresh model and optimizer opened in `outDir`, and loop options whose step trains it. */
async function setUp(outDir: string, resume = false, lr = 0.05, force = false) {
  const optimizer = makeOptimizer({ name: 'sgd', learningRate: lr, momentum: 0.9 });
  const run = await openTraining({ stage: 'toy', outDir, models: { net: linearModel() }, optimizer, key: { rows: N, batch: BATCH }, resume, force });
  const seen: string[] = [];
  const options: TrainingLoopOptions<Batch> = {
    epochs: 3,
    stepsPerEpoch: N / BATCH,
    batches: function* (epoch, fromStep) {
      const perm = epochPermutation(7, epoch, N);
      for (let s = fromStep; s < N / BATCH; s++) yield { rows: perm.subarray(s * BATCH, (s + 1) * BATCH) };
    },
    step: (batch, info) => {
      seen.push(`${info.epoch}:${info.step}:${Array.from(batch.rows).join(',')}`);
      const net = run.models.net;
      const x = tf.tensor2d(Array.from(batch.rows).flatMap((r) => Array.from(X.subarray(r * D, (r + 1) * D))), [BATCH, D]);
      const y = tf.tensor2d(Array.from(batch.rows, (r) => Y[r]), [BATCH, 1]);
      try {
        return trainStep(net.trainableWeights.map((w) => w.read() as tf.Variable), optimizer, () => {
          const err = tf.sub(net.apply(x) as tf.Tensor2D, y); // [B, 1]
          return { loss: tf.mean(tf.square(err)) as tf.Scalar, scalars: { max_error: tf.max(tf.abs(err)) as tf.Scalar } };
        });
      } finally {
        tf.dispose([x, y]);
      }
    },
    imagesIn: (batch) => batch.rows.length,
    schedule: (step) => lr / (1 + step),
    logEvery: 2,
    backend: 'cpu',
    describeStep: (batch) => `a step of ${batch.rows.length} rows`,
  };
  return { run, options, optimizer, seen };
}

const readRows = async (dir: string) => (await readFile(join(dir, 'metrics.jsonl'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l));

describe('trainingLoop', () => {
  beforeAll(async () => {
    await useBackend('cpu');
  });

  it('writes window and epoch rows, evaluates every K epochs and at the start, checkpoints each epoch, leaks nothing', async () => {
    const outDir = await mkdtemp(join(tmpdir(), 'loop-'));
    const before = tf.memory().numTensors;
    const { run, options, optimizer } = await setUp(outDir);
    const evaluatedAt: string[] = [];
    const lines: string[] = [];
    const losses: number[] = [];
    const result = await trainingLoop(run, {
      ...options,
      step: (b, info) => {
        const out = options.step(b, info);
        losses.push(out.loss);
        return out;
      },
      log: (l) => lines.push(l),
      evaluation: { every: 2, atStart: true, run: ({ epoch, atStart }) => (evaluatedAt.push(`${epoch}${atStart ? '*' : ''}`), { probe: epoch / 10 }) },
    });
    // Before the first step, after epoch 2 (every 2) and after the last epoch.
    expect(evaluatedAt).toEqual(['0*', '2', '3']);
    expect(result.initial).toEqual({ probe: 0 });
    expect(result.metrics).toMatchObject({ epochs: 3, steps: 9, probe: 0.3 });
    expect(result.metrics.loss).toBeGreaterThan(0);
    expect(result.metrics.max_error).toBeGreaterThan(0);
    const rows = await readRows(outDir);
    // The start row, then per epoch of 3 steps: a window row after 2 (windows start with the epoch) and the epoch row.
    expect(rows.map((r) => [r.step, r.summary ?? ''])).toEqual([
      [0, ''], [2, ''], [3, 'epoch'], [5, ''], [6, 'epoch'], [8, ''], [9, 'epoch'],
    ]);
    const epochRows = rows.filter((r) => r.summary === 'epoch');
    expect(epochRows.map((r) => r.probe)).toEqual([undefined, 0.2, 0.3]);
    for (const r of epochRows) expect(Object.keys(r)).toEqual(expect.arrayContaining(['loss', 'max_error', 'lr', 'images_per_second', 'epoch_seconds']));
    // Window and epoch rows are means of their steps' losses.
    expect(rows[1].loss).toBeCloseTo((losses[0] + losses[1]) / 2, 10);
    expect(epochRows[0].loss).toBeCloseTo((losses[0] + losses[1] + losses[2]) / 3, 10);
    expect(result.metrics.loss).toBeCloseTo((losses[6] + losses[7] + losses[8]) / 3, 10);
    // lr of the epoch row = the schedule at its last step.
    expect(epochRows[0].lr).toBeCloseTo(0.05 / 3);
    expect(lines.filter((l) => /^toy: epoch \d\/3 loss /.test(l))).toHaveLength(3);
    const state = JSON.parse(await readFile(join(outDir, 'checkpoint', 'state.json'), 'utf8'));
    expect(state.train).toEqual({ epoch: 3, stepInEpoch: 0, globalStep: 9 });
    expect(state.key).toEqual({ rows: N, batch: BATCH });
    run.models.net.dispose();
    optimizer.dispose();
    expect(tf.memory().numTensors).toBe(before);
  });

  it('resumes an interrupted run on the same batches to the same weights, bit for bit', async () => {
    const straightDir = await mkdtemp(join(tmpdir(), 'loop-straight-'));
    const straight = await setUp(straightDir);
    await trainingLoop(straight.run, straight.options);
    const expected = straight.run.models.net.getWeights().map((w) => Array.from(w.dataSync()));

    const dir = await mkdtemp(join(tmpdir(), 'loop-resumed-'));
    const first = await setUp(dir);
    const controller = new AbortController();
    let steps = 0;
    await expect(
      trainingLoop(first.run, {
        ...first.options,
        signal: controller.signal,
        onProgress: ({ step }) => {
          if (step > 0 && ++steps === 4) controller.abort();
        },
      }),
    ).rejects.toThrow(new TrainingInterruptedError('toy interrupted at epoch 2 step 1 of 3; checkpoint written to ' + join(dir, 'checkpoint') + '; continue with the same command plus --resume'));
    first.run.models.net.dispose();
    first.optimizer.dispose();

    const second = await setUp(dir, true);
    expect(second.run.state).toEqual({ epoch: 1, stepInEpoch: 1, globalStep: 4 });
    const result = await trainingLoop(second.run, second.options);
    expect(result.metrics).toMatchObject({ epochs: 3, steps: 9 });
    // It took up exactly the batches the straight run took from its fifth step on.
    expect(second.seen).toEqual(straight.seen.slice(4));
    expect(second.run.models.net.getWeights().map((w) => Array.from(w.dataSync()))).toEqual(expected);
    // The weights moved: the comparison is not of two untouched initialisations.
    const initial = linearModel();
    expect(initial.getWeights()[0].dataSync()).not.toEqual(new Float32Array(expected[0]));
    initial.dispose();
    for (const s of [straight, second]) {
      s.run.models.net.dispose();
      s.optimizer.dispose();
    }
  });

  it('refuses to resume without a checkpoint or from one made with another key', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'loop-key-'));
    const optimizer = makeOptimizer({ name: 'sgd', learningRate: 0.1 });
    const net = linearModel();
    await expect(openTraining({ stage: 'toy', outDir: dir, models: { net }, optimizer, key: {}, resume: true })).rejects.toThrow(
      new TrainingInputError(`toy --resume: no checkpoint in ${join(dir, 'checkpoint')} to resume from`),
    );
    const { run, options } = await setUp(dir);
    await trainingLoop(run, { ...options, epochs: 1 });
    const before = tf.memory().numTensors;
    await expect(openTraining({ stage: 'toy', outDir: dir, models: { net }, optimizer, key: { rows: N, batch: 8 }, resume: true })).rejects.toThrow(
      /toy --resume: the checkpoint in .* was made with batch = 4, this run has 8/,
    );
    // Nothing was loaded, not even into the optimizer; the caller's models are untouched.
    expect(tf.memory().numTensors).toBe(before);
    expect(net.getWeights()[0].isDisposed).toBe(false);
    net.dispose();
    run.models.net.dispose();
    optimizer.dispose();
  });

  it('stops on a non-finite loss naming the step and the last good checkpoint', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'loop-nan-'));
    const { run, options, optimizer } = await setUp(dir);
    const step = options.step;
    const failing = { ...options, step: (b: Batch, info: Parameters<typeof step>[1]) => (info.globalStep === 4 ? { loss: NaN } : step(b, info)) };
    await expect(trainingLoop(run, failing)).rejects.toThrow(
      new NonFiniteLossError(`toy: loss is NaN at epoch 2 step 2 (global step 5, lr 0.0100); last good checkpoint: ${join(dir, 'checkpoint')} (resume with --resume, perhaps with a lower --lr)`),
    );
    run.models.net.dispose();
    optimizer.dispose();
  });

  it('turns a wasm heap abort into the out-of-memory advice; other errors pass through', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'loop-oom-'));
    const { run, options, optimizer } = await setUp(dir);
    const abort = Object.assign(new Error('Aborted(OOM)'), { name: 'RuntimeError' });
    await expect(trainingLoop(run, { ...options, step: () => { throw abort; } })).rejects.toThrow(
      new TrainingOutOfMemoryError('toy: the cpu backend ran out of memory (its heap is at most 4 GB) in a step of 4 rows; use a smaller --batch-size (about half)'),
    );
    await expect(trainingLoop(run, { ...options, step: () => { throw new TypeError('not memory'); } })).rejects.toThrow(TypeError);
    run.models.net.dispose();
    optimizer.dispose();
  });
  it('starts over in a directory with a checkpoint only with force, and says how to resume', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'loop-force-'));
    const first = await setUp(dir);
    await trainingLoop(first.run, { ...first.options, epochs: 1 });
    const net = linearModel();
    const optimizer = makeOptimizer({ name: 'sgd', learningRate: 0.1 });
    await expect(openTraining({ stage: 'toy', outDir: dir, models: { net }, optimizer, key: {}, resume: false })).rejects.toThrow(
      new TrainingInputError(`toy: ${join(dir, 'checkpoint')} holds the checkpoint of an earlier run (epoch 1, step 3); continue it with --resume, or start over with --force`),
    );
    const again = await setUp(dir, false, 0.05, true);
    expect(again.run.state).toEqual({ epoch: 0, stepInEpoch: 0, globalStep: 0 });
    expect(await readFile(join(dir, 'metrics.jsonl'), 'utf8')).toBe('');
    for (const m of [first.run.models.net, again.run.models.net, net]) m.dispose();
    for (const o of [first.optimizer, again.optimizer, optimizer]) o.dispose();
  });

  it('after a kill and --resume, metrics.jsonl has each step once', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'loop-kill-'));
    const first = await setUp(dir);
    await trainingLoop(first.run, { ...first.options, epochs: 1 });
    // What a run killed with SIGKILL in epoch 2 leaves: rows past the checkpoint (step 3) and a torn line.
    await appendFile(join(dir, 'metrics.jsonl'), JSON.stringify({ epoch: 2, step: 5, loss: 1 }) + '\n{"epoch": 2, "st');
    const second = await setUp(dir, true);
    await trainingLoop(second.run, second.options);
    const rows = await readRows(dir);
    expect(rows.map((r) => [r.step, r.summary ?? ''])).toEqual([[2, ''], [3, 'epoch'], [5, ''], [6, 'epoch'], [8, ''], [9, 'epoch']]);
    expect(rows[2].loss).not.toBe(1);
    for (const s of [first, second]) {
      s.run.models.net.dispose();
      s.optimizer.dispose();
    }
  });

  it('resuming a finished run trains nothing, says so and reports the last epoch', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'loop-done-'));
    const first = await setUp(dir);
    const done = await trainingLoop(first.run, first.options);
    const before = await readFile(join(dir, 'metrics.jsonl'), 'utf8');
    const second = await setUp(dir, true);
    const lines: string[] = [];
    const again = await trainingLoop(second.run, { ...second.options, step: () => expect.fail('no step may run'), log: (l) => lines.push(l) });
    expect(again.metrics).toEqual(done.metrics);
    expect(lines).toEqual([`toy: the checkpoint in ${join(dir, 'checkpoint')} has finished all 3 epochs; nothing left to train`]);
    expect(await readFile(join(dir, 'metrics.jsonl'), 'utf8')).toBe(before);
    for (const s of [first, second]) {
      s.run.models.net.dispose();
      s.optimizer.dispose();
    }
  });
});

/** The events files of `dir`, by name (TensorBoard's order), and their scalar events in that order. */
async function eventsIn(dir: string): Promise<{ files: string[]; events: TfEvent[] }> {
  const files = (await readdir(dir)).filter(isEventsFile).sort();
  const events: TfEvent[] = [];
  for (const f of files) events.push(...(await readEvents(join(dir, f))).filter((e) => e.fileVersion === undefined));
  return { files, events };
}

/** What a metrics.jsonl row should be in TensorBoard: every finite number but the step, as a float32, under `prefix`. */
function expectedEvent(row: Record<string, unknown>, prefix: string): { step: unknown; scalars: Record<string, number> } {
  const scalars: Record<string, number> = {};
  for (const [k, v] of Object.entries(row)) if (k !== 'step' && typeof v === 'number' && Number.isFinite(v)) scalars[prefix + k] = Math.fround(v);
  return { step: row.step, scalars };
}

/** How many of this process's file descriptors are open on `path` (Linux /proc). */
async function openDescriptors(path: string): Promise<number> {
  let n = 0;
  for (const fd of await readdir('/proc/self/fd')) if ((await readlink(`/proc/self/fd/${fd}`).catch(() => '')) === path) n++;
  return n;
}

describe.runIf(process.platform === 'linux')('trainingLoop with tensorboard', () => {
  beforeAll(async () => {
    await useBackend('cpu');
  });

  it('writes every metrics.jsonl row as scalars at its step (epoch rows and the start evaluation under epoch/), finite numbers only, and closes the file', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'loop-tb-'));
    const { run, options, optimizer } = await setUp(dir);
    // `unknown` is NaN: null in metrics.jsonl, no scalar in TensorBoard.
    await trainingLoop(run, { ...options, tensorboard: true, evaluation: { every: 1, atStart: true, run: ({ epoch }) => ({ probe: epoch / 10, unknown: NaN }) } });
    const rows = await readRows(dir);
    const { files, events } = await eventsIn(dir);
    expect(files).toHaveLength(1);
    expect(files[0]).toMatch(/^events\.out\.tfevents\.\d+\..+\.\d+$/);
    expect(events.map((e) => ({ step: e.step, scalars: e.scalars }))).toEqual(rows.map((r) => expectedEvent(r, r.summary === 'epoch' || r.step === 0 ? 'epoch/' : '')));
    expect(events[0].scalars).toEqual({ 'epoch/epoch': 0, 'epoch/probe': 0 });
    expect(Object.keys(events[1].scalars!)).toEqual(['epoch', 'loss', 'max_error', 'lr', 'images_per_second']);
    expect(Object.keys(events[2].scalars!)).toEqual(['epoch/epoch', 'epoch/loss', 'epoch/max_error', 'epoch/lr', 'epoch/images_per_second', 'epoch/epoch_seconds', 'epoch/probe']);
    expect(rows[2].unknown).toBeNull();
    expect(await openDescriptors(join(dir, files[0]))).toBe(0);
    run.models.net.dispose();
    optimizer.dispose();
  });

  it('writes nothing without the option, and a fresh run removes an earlier run\'s events files', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'loop-tb-off-'));
    const first = await setUp(dir);
    await trainingLoop(first.run, { ...first.options, epochs: 1, tensorboard: true });
    expect((await eventsIn(dir)).files).toHaveLength(1);
    const second = await setUp(dir, false, 0.05, true);
    await trainingLoop(second.run, { ...second.options, epochs: 1 });
    expect((await eventsIn(dir)).files).toEqual([]);
    for (const s of [first, second]) {
      s.run.models.net.dispose();
      s.optimizer.dispose();
    }
  });

  it('closes the file on an interrupt and on a non-finite loss; after a kill and --resume each step is there once', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'loop-tb-resume-'));
    const first = await setUp(dir);
    const controller = new AbortController();
    await expect(
      trainingLoop(first.run, { ...first.options, tensorboard: true, signal: controller.signal, onProgress: ({ epoch, step }) => epoch === 1 && step === 1 && controller.abort() }),
    ).rejects.toThrow(TrainingInterruptedError);
    const [file] = (await eventsIn(dir)).files;
    expect(await openDescriptors(join(dir, file))).toBe(0);
    expect((await eventsIn(dir)).events.map((e) => e.step)).toEqual([2, 3]);
    // What a run killed after the checkpoint at step 4 leaves: an event past it and a torn record.
    const past = encodeRecord(encodeEvent({ wallTime: 1, step: 5, scalars: { loss: 1 } }));
    await appendFile(join(dir, file), new Uint8Array([...past, ...past.subarray(0, 10)]));

    const second = await setUp(dir, true);
    const step = second.options.step;
    const failing = { ...second.options, tensorboard: true, step: (b: Batch, info: Parameters<typeof step>[1]) => (info.globalStep === 7 ? { loss: Infinity } : step(b, info)) };
    await expect(trainingLoop(second.run, failing)).rejects.toThrow(NonFiniteLossError);
    for (const f of (await eventsIn(dir)).files) expect(await openDescriptors(join(dir, f))).toBe(0);

    const third = await setUp(dir, true);
    await trainingLoop(third.run, { ...third.options, tensorboard: true });
    const rows = await readRows(dir);
    const { files, events } = await eventsIn(dir);
    expect(files.length).toBeGreaterThanOrEqual(1);
    // The killed run's step 5 is gone; the resumed epoch's window (from step 4) closed at step 6, with the epoch.
    expect(events.map((e) => e.step)).toEqual([2, 3, 6, 6, 8, 9]);
    expect(events.map((e) => ({ step: e.step, scalars: e.scalars }))).toEqual(rows.map((r) => expectedEvent(r, r.summary === 'epoch' ? 'epoch/' : '')));
    for (const s of [first, second, third]) {
      s.run.models.net.dispose();
      s.optimizer.dispose();
    }
  });
});
