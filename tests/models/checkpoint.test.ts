// Tests for models/checkpoint.ts: model and optimizer round-trips, plain tfjs loading of the files,
// atomic replacement and crash recovery, clear errors for missing or truncated files, leaks.
import { mkdtemp, readFile, readdir, rename, rm, truncate, writeFile, mkdir, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { BatchNorm } from '../../models/batch-norm.ts';
import { CheckpointError, findCheckpoint, layersModelFiles, loadCheckpoint, saveCheckpoint } from '../../models/checkpoint.ts';
import { buildProjectionHead } from '../../models/head.ts';
import { AdamL2Optimizer, LarsOptimizer } from '../../models/optimizers.ts';
import { expectTensorClose } from '../helpers.ts';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

let root: string;
let ckpt: string;
beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'ckpt-test-'));
  ckpt = join(root, 'pretrain', 'checkpoint');
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

/** A small encoder with conv, BN (moving stats) and pooling: the kinds of weights a ResNet has. */
function buildEncoder(seed: number): tf.LayersModel {
  const input = tf.input({ shape: [6, 6, 3] });
  let x = tf.layers.conv2d({ filters: 4, kernelSize: 3, padding: 'same', kernelInitializer: tf.initializers.glorotNormal({ seed }) }).apply(input) as tf.SymbolicTensor;
  // The project's batch norm: in this process it is the class every loaded BatchNormalization gets.
  x = new BatchNorm().apply(x) as tf.SymbolicTensor;
  x = tf.layers.reLU().apply(x) as tf.SymbolicTensor;
  x = tf.layers.globalAveragePooling2d({}).apply(x) as tf.SymbolicTensor;
  return tf.model({ inputs: input, outputs: x, name: 'encoder' });
}

/** Gives every weight (moving stats included) distinct non-default values, so a mix-up shows. */
function randomiseWeights(model: tf.LayersModel, seed: number): void {
  model.setWeights(model.weights.map((w, i) => tf.tidy(() => tf.add(tf.abs(tf.randomNormal(w.shape as number[], 0, 1, 'float32', seed + i)), 0.1))));
}

function makeModels() {
  const encoder = buildEncoder(1);
  const head = buildProjectionHead({ inputDim: 4, outputDim: 3, seed: 2 });
  randomiseWeights(encoder, 10);
  randomiseWeights(head, 50);
  return { encoder, head };
}

const images = () => tf.randomNormal([2, 6, 6, 3], 0, 1, 'float32', 7);

describe('saveCheckpoint / loadCheckpoint', () => {
  it('round-trips models: identical weights and predictions', async () => {
    const { encoder, head } = makeModels();
    await saveCheckpoint(ckpt, { models: { encoder, head }, state: { epoch: 3, step: 120, rng: [1, 2, 3, 4] } });
    expect((await readdir(ckpt)).sort()).toEqual(['checkpoint.json', 'encoder', 'head', 'state.json']);
    expect((await readdir(join(ckpt, 'encoder'))).sort()).toEqual(['model.json', 'weights.bin']);

    const loaded = await loadCheckpoint(ckpt);
    expect(loaded.path).toBe(ckpt);
    expect(loaded.state).toEqual({ epoch: 3, step: 120, rng: [1, 2, 3, 4] });
    for (const [name, original] of Object.entries({ encoder, head })) {
      const copy = loaded.models[name];
      expect(copy.weights.map((w) => w.originalName)).toEqual(original.weights.map((w) => w.originalName));
      copy.weights.forEach((w, i) => expectTensorClose(w.read(), original.weights[i].read(), { atol: 0, rtol: 0 }));
    }
    const x = images();
    const predict = (m: { encoder: tf.LayersModel; head: tf.LayersModel }) => tf.tidy(() => m.head.predict(m.encoder.predict(x) as tf.Tensor) as tf.Tensor);
    const [a, b] = [predict({ encoder, head }), predict(loaded.models as { encoder: tf.LayersModel; head: tf.LayersModel })];
    expect(a.shape).toEqual([2, 3]);
    expectTensorClose(b, a, { atol: 0, rtol: 0 });
    tf.dispose([x, a, b]);
    [encoder, head, ...Object.values(loaded.models)].forEach((m) => m.dispose());
  });

  it('writes files that plain tf.loadLayersModel(tf.io.fromMemory(...)) reads', async () => {
    const { encoder, head } = makeModels();
    await saveCheckpoint(ckpt, { models: { encoder, head } });
    const modelJson = JSON.parse(await readFile(join(ckpt, 'encoder', 'model.json'), 'utf8'));
    expect(modelJson.format).toBe('layers-model');
    expect(modelJson.weightsManifest).toHaveLength(1);
    expect(modelJson.weightsManifest[0].paths).toEqual(['weights.bin']);
    const bin = await readFile(join(ckpt, 'encoder', 'weights.bin'));
    const weightData = bin.buffer.slice(bin.byteOffset, bin.byteOffset + bin.byteLength);
    const plain = await tf.loadLayersModel(tf.io.fromMemory({ modelTopology: modelJson.modelTopology, weightSpecs: modelJson.weightsManifest[0].weights, weightData }));
    const x = images();
    const [a, b] = [encoder.predict(x) as tf.Tensor, plain.predict(x) as tf.Tensor];
    expectTensorClose(b, a, { atol: 0, rtol: 0 });
    // And the handler on its own is a load handler for tfjs too.
    const viaHandler = await tf.loadLayersModel(layersModelFiles(join(ckpt, 'encoder')));
    const c = viaHandler.predict(x) as tf.Tensor;
    expectTensorClose(c, a, { atol: 0, rtol: 0 });
    tf.dispose([x, a, b, c]);
    [encoder, head, plain, viaHandler].forEach((m) => m.dispose());
  });

  it('round-trips optimizer state: the resumed run takes the identical next step', async () => {
    const x = tf.randomNormal([8, 4], 0, 1, 'float32', 3);
    const probe = tf.randomNormal([8, 3], 0, 1, 'float32', 4);
    const lossOf = (head: tf.LayersModel) => () =>
      tf.sum(tf.mul(tf.square(head.apply(x, { training: true }) as tf.Tensor), probe)) as tf.Scalar;
    const trainStep = (head: tf.LayersModel, opt: tf.Optimizer) =>
      opt.minimize(lossOf(head), false, head.trainableWeights.map((w) => w.read() as tf.Variable));

    const head = buildProjectionHead({ inputDim: 4, outputDim: 3, seed: 9 });
    const lars = new LarsOptimizer({ learningRate: 0.5, weightDecay: 1e-3 });
    trainStep(head, lars);
    trainStep(head, lars);
    await saveCheckpoint(ckpt, { models: { head }, optimizer: lars, state: { step: 2 } });
    const optimizerJson = JSON.parse(await readFile(join(ckpt, 'optimizer.json'), 'utf8'));
    expect(optimizerJson.class_name).toBe('LARS');
    expect(optimizerJson.weights[0].name).toBe('iter');
    trainStep(head, lars);
    const expected = head.getWeights().map((w) => Array.from(w.dataSync()));

    // A fresh process would load the same names; here the originals still exist, so the loaded
    // variables are deduplicated (`head_dense_0/kernel_1`) and the optimizer matches them by base name.
    const resumedLars = new LarsOptimizer({ learningRate: 0.5, weightDecay: 1e-3 });
    const loaded = await loadCheckpoint(ckpt, { optimizer: resumedLars });
    expect(resumedLars.iterations).toBe(2);
    trainStep(loaded.models.head, resumedLars);
    loaded.models.head.getWeights().forEach((w, i) => expectTensorClose(w, expected[i], { atol: 0, rtol: 0 }));

    // A fresh optimizer (no momentum) would have stepped elsewhere: the comparison can fail.
    const again = await loadCheckpoint(ckpt);
    const fresh = new LarsOptimizer({ learningRate: 0.5, weightDecay: 1e-3 });
    trainStep(again.models.head, fresh);
    const k = again.models.head.getLayer('head_dense_0').getWeights()[0].dataSync()[0];
    expect(Math.abs(k - expected[0][0])).toBeGreaterThan(1e-7);

    tf.dispose([x, probe]);
    [head, loaded.models.head, again.models.head].forEach((m) => m.dispose());
    [lars, resumedLars, fresh].forEach((o) => o.dispose());
  });

  it('restores state of tfjs built-in optimizers too', async () => {
    const head = buildProjectionHead({ inputDim: 4, outputDim: 3, seed: 9 });
    const momentum = tf.train.momentum(0.1, 0.9);
    const x = tf.randomNormal([8, 4], 0, 1, 'float32', 3);
    momentum.minimize(() => tf.sum(tf.square(head.apply(x, { training: true }) as tf.Tensor)) as tf.Scalar);
    const before = tf.memory().numTensors;
    await saveCheckpoint(ckpt, { models: { head }, optimizer: momentum });
    expect(tf.memory().numTensors).toBe(before); // the iter scalar was freed, the live variables kept
    const restored = tf.train.momentum(0.1, 0.9);
    const loaded = await loadCheckpoint(ckpt, { optimizer: restored, models: [] });
    expect(restored.iterations).toBe(1);
    const [saved, back] = [await momentum.getWeights(), await restored.getWeights()];
    expect(back.map((w) => w.name)).toEqual(saved.map((w) => w.name));
    back.forEach((w, i) => expectTensorClose(w.tensor, saved[i].tensor, { atol: 0, rtol: 0 }));
    expect(loaded.models).toEqual({});
    x.dispose();
    head.dispose();
    momentum.dispose();
    restored.dispose();
  });

  it('refuses optimizer state of another class, or when none was saved, naming optimizer.json', async () => {
    const head = buildProjectionHead({ inputDim: 4, outputDim: 3 });
    await saveCheckpoint(ckpt, { models: { head } });
    const adam = new AdamL2Optimizer({ learningRate: 0.1 });
    await expect(loadCheckpoint(ckpt, { optimizer: adam })).rejects.toThrow(/optimizer\.json: is missing: the checkpoint was saved without optimizer state/);
    const lars = new LarsOptimizer({ learningRate: 0.1 });
    await saveCheckpoint(ckpt, { models: { head }, optimizer: lars });
    await expect(loadCheckpoint(ckpt, { optimizer: adam })).rejects.toThrow(/optimizer\.json: holds state of a 'LARS' optimizer, not of the 'AdamL2' given/);
    head.dispose();
    adam.dispose();
    lars.dispose();
  });

  it('loads a subset of the models and names a model that is not there', async () => {
    const { encoder, head } = makeModels();
    await saveCheckpoint(ckpt, { models: { encoder, head } });
    const onlyEncoder = await loadCheckpoint(ckpt, { models: ['encoder'] });
    expect(Object.keys(onlyEncoder.models)).toEqual(['encoder']);
    await expect(loadCheckpoint(ckpt, { models: ['student'] })).rejects.toThrow(/student: is missing: the checkpoint holds models \[encoder, head\]/);
    [encoder, head, onlyEncoder.models.encoder].forEach((m) => m.dispose());
  });

  it('leaks no tensors: loading then disposing the models returns to the start', async () => {
    const { encoder, head } = makeModels();
    const lars = new LarsOptimizer({ learningRate: 0.1 });
    await saveCheckpoint(ckpt, { models: { encoder, head }, optimizer: lars });
    const start = tf.memory().numTensors;
    const loaded = await loadCheckpoint(ckpt, { optimizer: lars });
    Object.values(loaded.models).forEach((m) => m.dispose());
    expect(tf.memory().numTensors).toBe(start);
    [encoder, head].forEach((m) => m.dispose());
    lars.dispose();
  });

  it('validates its arguments by name', async () => {
    const head = buildProjectionHead({ inputDim: 4, outputDim: 3 });
    await expect(saveCheckpoint(ckpt, { models: {} })).rejects.toThrow(/contents.models must name at least one model/);
    await expect(saveCheckpoint(ckpt, { models: { 'a/b': head } })).rejects.toThrow(/model name 'a\/b' must use only letters/);
    head.dispose();
  });
});

describe('atomicity and damage', () => {
  const DEAD_PID = 99_999_999; // above Linux's pid_max, so never a live process

  async function saveStep(step: number): Promise<void> {
    const head = buildProjectionHead({ inputDim: 4, outputDim: 3, seed: step });
    await saveCheckpoint(ckpt, { models: { head }, state: { step } });
    head.dispose();
  }

  async function loadedStep(): Promise<unknown> {
    const loaded = await loadCheckpoint(ckpt);
    Object.values(loaded.models).forEach((m) => m.dispose());
    return (loaded.state as { step: number }).step;
  }

  it('replaces the previous checkpoint and leaves no tmp/old directories behind', async () => {
    await saveStep(1);
    await saveStep(2);
    expect(await loadedStep()).toBe(2);
    expect((await readdir(join(root, 'pretrain'))).sort()).toEqual(['checkpoint']);
  });

  it('a crash while writing (a half-written tmp dir) leaves the previous checkpoint in force', async () => {
    await saveStep(1);
    const tmp = join(root, 'pretrain', `checkpoint.tmp-${DEAD_PID}`);
    await mkdir(join(tmp, 'head'), { recursive: true });
    await writeFile(join(tmp, 'head', 'model.json'), '{"modelTopology": {');
    expect(await loadedStep()).toBe(1);
    // The next save clears the dead process's leftovers.
    await saveStep(2);
    expect(await loadedStep()).toBe(2);
    expect((await readdir(join(root, 'pretrain'))).sort()).toEqual(['checkpoint']);
  });

  it('a crash between the two renames is recovered from <dir>.old-<pid>', async () => {
    await saveStep(1);
    const old = join(root, 'pretrain', `checkpoint.old-${DEAD_PID}`);
    await rename(ckpt, old);
    await mkdir(join(root, 'pretrain', `checkpoint.tmp-${DEAD_PID}`));
    expect(await findCheckpoint(ckpt)).toBe(old);
    expect(await loadedStep()).toBe(1);
    await saveStep(2);
    expect(await loadedStep()).toBe(2);
    expect((await readdir(join(root, 'pretrain'))).sort()).toEqual(['checkpoint']);
  });

  it('a save that fails part-way leaves the previous checkpoint and no tmp dir', async () => {
    await saveStep(1);
    const head = buildProjectionHead({ inputDim: 4, outputDim: 3 });
    const failing = { getWeights: async () => Promise.reject(new Error('disk full')), getClassName: () => 'X', getConfig: () => ({}) };
    await expect(saveCheckpoint(ckpt, { models: { head }, optimizer: failing as unknown as tf.Optimizer, state: { step: 2 } })).rejects.toThrow(/disk full/);
    expect(await loadedStep()).toBe(1);
    expect((await readdir(join(root, 'pretrain'))).sort()).toEqual(['checkpoint']);
    head.dispose();
  });

  it('names a missing checkpoint', async () => {
    await expect(loadCheckpoint(ckpt)).rejects.toThrow(CheckpointError);
    await expect(loadCheckpoint(ckpt)).rejects.toThrow(/checkpoint file .*pretrain\/checkpoint: is missing: no checkpoint has been saved there/);
  });

  it('names a truncated weights.bin', async () => {
    await saveStep(1);
    const weights = join(ckpt, 'head', 'weights.bin');
    const size = (await stat(weights)).size;
    await truncate(weights, size - 4);
    await expect(loadCheckpoint(ckpt)).rejects.toThrow(`checkpoint file ${weights}: has ${size - 4} bytes but checkpoint.json records ${size}`);
  });

  it('names a truncated weights.bin even without the index (model.json manifest check)', async () => {
    await saveStep(1);
    const dir = join(ckpt, 'head');
    const size = (await stat(join(dir, 'weights.bin'))).size;
    await truncate(join(dir, 'weights.bin'), size - 8);
    await expect(tf.loadLayersModel(layersModelFiles(dir))).rejects.toThrow(`has ${size - 8} bytes but model.json describes ${size}`);
  });

  it('names a missing state.json and a missing index', async () => {
    await saveStep(1);
    await rm(join(ckpt, 'state.json'));
    await expect(loadCheckpoint(ckpt)).rejects.toThrow(/state\.json: is missing \(listed in checkpoint\.json\)/);
    await rm(join(ckpt, 'checkpoint.json'));
    await expect(loadCheckpoint(ckpt)).rejects.toThrow(/checkpoint\.json: is missing, so the checkpoint is incomplete/);
  });

  it('names a corrupt model.json', async () => {
    await saveStep(1);
    const dir = join(ckpt, 'head');
    await writeFile(join(dir, 'model.json'), '{"modelTopology": ');
    await expect(tf.loadLayersModel(layersModelFiles(dir))).rejects.toThrow(/model\.json: is not valid JSON/);
  });
});
