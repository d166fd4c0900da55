import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { useBackend } from '../../models/engine/backend.ts';
import { makeOptimizer } from '../../models/optimizers.ts';
import { buildSimclrModel, embed, pixelsToTensor, simclrStep, trainableVariables } from '../../models/simclr.ts';

describe('simclrStep', () => {
  beforeAll(async () => {
    await useBackend('wasm');
  });

  it('lowers the NT-Xent loss on a fixed batch, updates BN statistics, leaks nothing', () => {
    const model = buildSimclrModel({ encoder: 'resnet20', inputSize: 8, headLayers: 2, projectionDim: 16 });
    const optimizer = makeOptimizer({ name: 'sgd', learningRate: 0.05, momentum: 0.9 });
    const n = 6;
    const v1 = tf.randomUniform([n, 8, 8, 3], 0, 1, 'float32', 1) as tf.Tensor4D;
    const v2 = tf.tidy(() => tf.clipByValue(tf.add(v1, tf.randomNormal([n, 8, 8, 3], 0, 0.05, 'float32', 2)), 0, 1)) as tf.Tensor4D;
    const movingMean = model.encoder.getLayer('stem_bn').getWeights()[2];
    const meanBefore = Array.from(movingMean.dataSync());
    const before = tf.memory().numTensors;
    const first = simclrStep(model, optimizer, v1, v2, 0.5);
    // After the first step the optimizer holds its momentum slots; nothing else may stay behind.
    const afterFirst = tf.memory().numTensors;
    let last = first;
    for (let i = 0; i < 15; i++) last = simclrStep(model, optimizer, v1, v2, 0.5);
    expect(tf.memory().numTensors).toBe(afterFirst);
    expect(afterFirst - before).toBe(trainableVariables(model).length);
    // Bounds: NT-Xent is positive, and with 2N = 12 views an untrained model sits near the
    // all-equal value log(2N − 1) = log 11 (below it here: the views are near-duplicates).
    expect(first.loss).toBeGreaterThan(0);
    expect(first.loss).toBeLessThan(Math.log(11) + 0.5);
    expect(last.loss).toBeLessThan(first.loss - 0.3);
    expect(last.accuracy).toBeGreaterThanOrEqual(first.accuracy);
    expect(last.accuracy).toBeLessThanOrEqual(1);
    const meanAfter = Array.from(model.encoder.getLayer('stem_bn').getWeights()[2].dataSync());
    expect(meanAfter).not.toEqual(meanBefore);
    v1.dispose();
    v2.dispose();
  });

  it('embeds in chunks exactly as in one go, in inference mode', () => {
    const model = buildSimclrModel({ encoder: 'resnet20', inputSize: 8 });
    const pixels = new Uint8Array(5 * 8 * 8 * 3).map((_, i) => (i * 37) % 256);
    const whole = embed(model.encoder, pixels, 5, 8, 5);
    const chunked = embed(model.encoder, pixels, 5, 8, 2);
    expect(whole.shape).toEqual([5, model.featureDim]);
    expect(Array.from(chunked.dataSync())).toEqual(Array.from(whole.dataSync()));
    const x = pixelsToTensor(pixels, 5, 8);
    expect(x.max().dataSync()[0]).toBeCloseTo(255 / 255);
    tf.dispose([whole, chunked, x]);
  });
});
