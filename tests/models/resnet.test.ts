// The ResNet encoder registry: every model trains on wasm (shape, finiteness, a gradient on every
// weight), known parameter counts, stable layer names, save/load, and the fused BatchNorm layer
// against tf.layers.batchNormalization.
import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { useBackend } from '../../models/engine/backend.ts';
import { BatchNorm, ENCODERS, buildEncoder } from '../../models/resnet.ts';
import { expectTensorClose } from '../helpers.ts';

beforeAll(async () => {
  await useBackend('wasm');
});

function countOf(weights: tf.LayerVariable[]): number {
  return weights.reduce((n, w) => n + (w.shape as number[]).reduce((a, b) => a * b, 1), 0);
}

function allFinite(t: tf.Tensor): boolean {
  return tf.tidy(() => tf.all(tf.isFinite(t)).dataSync()[0] === 1);
}

function maxAbs(t: tf.Tensor): number {
  return tf.tidy(() => tf.max(tf.abs(t)).dataSync()[0]);
}

// The ImageNet family runs at width 1/4 here to keep each case to a few seconds; the full-width
// structure is checked through parameter counts below.
const GRID = Object.keys(ENCODERS).map((name) => ({ name, width: ['resnet18', 'resnet34', 'resnet50'].includes(name) ? 0.25 : 1 }));

describe.each(GRID)('$name (width $width) at 32 px on wasm', ({ name, width }) => {
  it('gives finite [batch, featureDim] features and a nonzero gradient on every trainable weight', () => {
    const { model, featureDim } = ENCODERS[name]({ width, inputSize: 32 });
    const tensorsBefore = tf.memory().numTensors;
    const x = tf.randomNormal([2, 32, 32, 3], 0, 1, 'float32', 1);
    const features = model.apply(x, { training: true }) as tf.Tensor;
    expect(features.shape).toEqual([2, featureDim]);
    expect(allFinite(features)).toBe(true);

    const { value, grads } = tf.variableGrads(
      () => tf.mean(tf.square(model.apply(x, { training: true }) as tf.Tensor)) as tf.Scalar,
      model.trainableWeights.map((w) => (w as unknown as { val: tf.Variable }).val),
    );
    expect(Number.isFinite(value.dataSync()[0])).toBe(true);
    for (const w of model.trainableWeights) {
      const g = grads[(w as unknown as { val: tf.Variable }).val.name];
      expect(g, w.name).toBeDefined();
      expect(allFinite(g), `${w.name} gradient finite`).toBe(true);
      expect(maxAbs(g), `${w.name} gradient nonzero`).toBeGreaterThan(0);
    }
    tf.dispose([x, features, value, ...Object.values(grads)]);
    expect(tf.memory().numTensors).toBe(tensorsBefore);
    model.dispose();
  });
});

describe('parameter counts', () => {
  it('CIFAR ResNet-20 has 0.27M parameters and 72 layers (He et al. 2016, Table 6)', () => {
    const { model, featureDim } = buildEncoder({ name: 'resnet20', inputSize: 32 });
    expect(featureDim).toBe(64);
    const conv3 = (cin: number, cout: number) => 3 * 3 * cin * cout;
    const convs =
      conv3(3, 16) + // stem
      6 * conv3(16, 16) + // stage 1: 3 blocks × 2
      conv3(16, 32) + 5 * conv3(32, 32) + 16 * 32 + // stage 2 + 1×1 projection shortcut
      conv3(32, 64) + 5 * conv3(64, 64) + 32 * 64; // stage 3 + shortcut
    const bnChannels = 16 * 7 + 32 * 7 + 64 * 7; // 19 after convs + 2 shortcut BNs
    expect(countOf(model.trainableWeights)).toBe(convs + 2 * bnChannels); // + γ, β
    expect(countOf(model.trainableWeights)).toBe(271_824);
    expect(model.countParams()).toBe(convs + 4 * bnChannels); // + moving mean and variance
    // input + stem (conv, bn, relu) + 9 blocks × 7 + 2 shortcuts × 2 + pool
    expect(model.layers.length).toBe(1 + 3 + 9 * 7 + 2 * 2 + 1);
    model.dispose();
  });

  it.each([
    // torchvision's counts less the 1000-way classifier (512·1000 + 1000 and 2048·1000 + 1000)
    { name: 'resnet18', trainable: 11_689_512 - 513_000, featureDim: 512 },
    { name: 'resnet50', trainable: 25_557_032 - 2_049_000, featureDim: 2048 },
  ])('$name at 224 px matches torchvision without its classifier', ({ name, trainable, featureDim }) => {
    const encoder = buildEncoder({ name, inputSize: 224 });
    expect(encoder.featureDim).toBe(featureDim);
    expect(countOf(encoder.model.trainableWeights)).toBe(trainable);
    encoder.model.dispose();
  });

  it('width 2 doubles every channel count', () => {
    const { model, featureDim } = buildEncoder({ name: 'resnet20', width: 2, inputSize: 32 });
    expect(featureDim).toBe(128);
    expect(model.getLayer('stage3_block3_conv2').getWeights()[0].shape).toEqual([3, 3, 128, 128]);
    model.dispose();
  });
});

describe('layers', () => {
  it('have unique, readable names', () => {
    const { model } = buildEncoder({ name: 'resnet50', width: 0.25, inputSize: 96 });
    const names = model.layers.map((l) => l.name);
    expect(new Set(names).size).toBe(names.length);
    const pattern = /^(image|stem_(conv|bn|relu|pool)|stage[1-4]_block\d+_(conv[1-3]|bn[1-3]|relu[12]|shortcut_conv|shortcut_bn|add|out)|avg_pool)$/;
    for (const name of names) expect(name).toMatch(pattern);
    expect(names).toContain('stage2_block1_shortcut_conv');
    expect(names).toContain('stage4_block3_conv3');
    model.dispose();
  });

  it('convolutions have no bias (batch norm follows)', () => {
    const { model } = buildEncoder({ name: 'resnet20', inputSize: 32 });
    const convs = model.layers.filter((l) => l.getClassName() === 'Conv2D');
    expect(convs.length).toBe(21);
    for (const conv of convs) expect(conv.getWeights().length).toBe(1);
    model.dispose();
  });

  it.each([
    { inputSize: 64, kernel: 3, pool: false, featureMap: 8 },
    { inputSize: 65, kernel: 7, pool: true, featureMap: 3 },
  ])('stem for $inputSize px: $kernel×$kernel conv, max-pool $pool', ({ inputSize, kernel, pool, featureMap }) => {
    const { model } = buildEncoder({ name: 'resnet18', width: 0.25, inputSize });
    expect(model.getLayer('stem_conv').getWeights()[0].shape.slice(0, 2)).toEqual([kernel, kernel]);
    expect(model.layers.some((l) => l.name === 'stem_pool')).toBe(pool);
    // 64 px: three stride-2 stages → 8; 65 px: stem /2 → 33, pool /2 → 17, stages → 9, 5, 3
    expect(model.getLayer('stage4_block2_out').outputShape).toEqual([null, featureMap, featureMap, 128]);
    model.dispose();
  });

  it('train on wasm through the 7×7 stem and max-pool (their gradients are registered)', () => {
    const { model } = buildEncoder({ name: 'resnet18', width: 0.125, inputSize: 72 });
    const x = tf.randomNormal([2, 72, 72, 3], 0, 1, 'float32', 2);
    const stem = model.getLayer('stem_conv').trainableWeights[0] as unknown as { val: tf.Variable };
    const { grads, value } = tf.variableGrads(() => tf.mean(tf.square(model.apply(x, { training: true }) as tf.Tensor)) as tf.Scalar, [stem.val]);
    expect(maxAbs(grads[stem.val.name])).toBeGreaterThan(0);
    tf.dispose([x, value, ...Object.values(grads)]);
    model.dispose();
  });
});

describe('checkpoints', () => {
  it('save and load back through tf.loadLayersModel with the same names and outputs', async () => {
    const { model } = buildEncoder({ name: 'resnet20', width: 0.5, inputSize: 16 });
    const x = tf.randomNormal([2, 16, 16, 3], 0, 1, 'float32', 3);
    // One training-mode pass moves the BN statistics away from their initial values.
    tf.dispose(model.apply(x, { training: true }) as tf.Tensor);
    let artifacts: tf.io.ModelArtifacts | undefined;
    await model.save(tf.io.withSaveHandler(async (a) => {
      artifacts = a;
      return { modelArtifactsInfo: { dateSaved: new Date(), modelTopologyType: 'JSON' } };
    }));
    const loaded = await tf.loadLayersModel(tf.io.fromMemory(artifacts!));
    expect(loaded.layers.map((l) => l.name)).toEqual(model.layers.map((l) => l.name));
    expect(loaded.getLayer('stage2_block1_bn1').getWeights().map((w) => w.shape)).toEqual([[16], [16], [16], [16]]);
    const expected = model.predict(x) as tf.Tensor;
    const actual = loaded.predict(x) as tf.Tensor;
    expectTensorClose(actual, expected);
    tf.dispose([x, expected, actual]);
    model.dispose();
    loaded.dispose();
  });
});

describe('options', () => {
  it.each([
    [{ name: 'resnet19', inputSize: 32 }, /encoder\.name must be one of resnet18, .*resnet20/],
    [{ name: 'resnet20', inputSize: 0 }, /encoder\.inputSize must be a positive integer/],
    [{ name: 'resnet20', inputSize: 31.5 }, /encoder\.inputSize/],
    [{ name: 'resnet20', width: 0, inputSize: 32 }, /encoder\.width must be a positive number/],
    [{ name: 'resnet20', width: Number.NaN, inputSize: 32 }, /encoder\.width/],
    [{ name: 'resnet20', width: 0.01, inputSize: 32 }, /encoder\.width 0\.01 leaves resnet20 a layer with no channels/],
    [{ name: 'resnet20', inputSize: 32, inputChannels: 0 }, /encoder\.inputChannels/],
  ])('%o is rejected', (options, message) => {
    expect(() => buildEncoder(options)).toThrow(message);
  });
});

describe('BatchNorm matches tf.layers.batchNormalization', () => {
  describe.each(['cpu', 'wasm'])('on %s', (backend) => {
    it.each([
      { shape: [3, 5, 7, 4], training: true },
      { shape: [3, 5, 7, 4], training: false },
      { shape: [6, 4], training: true },
      { shape: [4, 9, 9, 8], training: true }, // 324 rows: past the SIMD loops' 128-row blocks
      { shape: [3, 5, 7, 6], training: true }, // 6 channels: the plain (non-SIMD) loops on wasm
      { shape: [5, 10], training: true },
    ])('shape $shape, training $training: output, gradients and moving statistics', async ({ shape, training }) => {
      await tf.setBackend(backend);
      const channels = shape[shape.length - 1];
      const ours = new BatchNorm({ momentum: 0.9, epsilon: 1e-5 });
      const stock = tf.layers.batchNormalization({ momentum: 0.9, epsilon: 1e-5 });
      ours.build(shape);
      stock.build(shape);
      const init = [
        tf.randomNormal([channels], 1, 0.5, 'float32', 4),
        tf.randomNormal([channels], 0, 1, 'float32', 5),
        tf.randomNormal([channels], 0, 1, 'float32', 6),
        tf.randomUniform([channels], 0.5, 2, 'float32', 7),
      ];
      ours.setWeights(init);
      stock.setWeights(init);
      // x has a large mean, as activations after ReLU do, so centring errors would show.
      const x = tf.add(tf.mul(tf.randomNormal(shape, 0, 1, 'float32', 8), 2), 3);
      const r = tf.randomNormal(shape, 0, 1, 'float32', 9);
      const results = [ours, stock].map((layer) => {
        const variables = layer.trainableWeights.map((w) => (w as unknown as { val: tf.Variable }).val);
        const loss = (input: tf.Tensor) => tf.sum(tf.mul(layer.apply(input, { training }) as tf.Tensor, r)) as tf.Scalar;
        const y = layer.apply(x, { training }) as tf.Tensor;
        const dx = tf.grad(loss)(x);
        const { grads, value } = tf.variableGrads(() => loss(x), variables);
        value.dispose();
        // getWeights() hands out the variables themselves: clone what is compared and disposed.
        return [y, dx, ...variables.map((v) => grads[v.name]), ...layer.getWeights().slice(2).map((w) => w.clone())];
      });
      // y, dx, dγ, dβ, then the moving mean and variance after three training-mode calls
      results[0].forEach((t, i) => expectTensorClose(t, results[1][i], { atol: 1e-5, rtol: 1e-4 }));
      tf.dispose([...init, x, r, ...results.flat()]);
      // Layers applied eagerly cannot be disposed as layers; free their variables.
      for (const w of [...ours.weights, ...stock.weights]) w.dispose();
    });
  });

  it('rejects a momentum outside [0, 1)', () => {
    expect(() => new BatchNorm({ momentum: 1 })).toThrow(/BatchNorm\.momentum must be in \[0, 1\)/);
  });
});
