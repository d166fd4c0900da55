// Tests for models/head.ts: shapes, layer names, truncation, gradients, option validation.
import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { buildProjectionHead, headDepth, headOutputAt } from '../../models/head.ts';
import { expectTensorClose } from '../helpers.ts';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

describe('buildProjectionHead', () => {
  describe.each([
    { layers: 1, inputDim: 6, hiddenDim: undefined, outputDim: 4 },
    { layers: 2, inputDim: 6, hiddenDim: 5, outputDim: 3 },
    { layers: 3, inputDim: 8, hiddenDim: undefined, outputDim: undefined },
  ])('$layers layers, input $inputDim, hidden $hiddenDim, output $outputDim', ({ layers, inputDim, hiddenDim, outputDim }) => {
    const hidden = hiddenDim ?? inputDim;
    const out = outputDim ?? 128;

    it('maps [B, inputDim] to [B, outputDim] without NaN', () => {
      const head = buildProjectionHead({ inputDim, layers, hiddenDim, outputDim, seed: 3 });
      const y = tf.tidy(() => head.apply(tf.randomNormal([5, inputDim], 0, 1, 'float32', 1), { training: true }) as tf.Tensor);
      expect(y.shape).toEqual([5, out]);
      expect(Array.from(y.dataSync()).every(Number.isFinite)).toBe(true);
      y.dispose();
      head.dispose();
    });

    it('names its layers head_dense_j / head_bn_j / head_relu_j, no dense bias, no ReLU last', () => {
      const head = buildProjectionHead({ inputDim, layers, hiddenDim, outputDim });
      const expected = ['head_input'];
      for (let j = 0; j < layers; j++) {
        expected.push(`head_dense_${j}`, `head_bn_${j}`);
        if (j < layers - 1) expected.push(`head_relu_${j}`);
      }
      expect(head.layers.map((l) => l.name)).toEqual(expected);
      expect(headDepth(head)).toBe(layers);
      // Trainable weights: a kernel per dense layer, gamma + beta per BN; nothing else.
      const trainable = head.trainableWeights.map((w) => w.originalName).sort();
      const expectedTrainable: string[] = [];
      for (let j = 0; j < layers; j++) expectedTrainable.push(`head_dense_${j}/kernel`, `head_bn_${j}/gamma`, `head_bn_${j}/beta`);
      expect(trainable).toEqual(expectedTrainable.sort());
      // Kernel shapes chain input -> hidden ... -> output.
      for (let j = 0; j < layers; j++) {
        const kernel = head.getLayer(`head_dense_${j}`).getWeights()[0];
        expect(kernel.shape).toEqual([j === 0 ? inputDim : hidden, j === layers - 1 ? out : hidden]);
      }
      head.dispose();
    });

    it('has a non-zero gradient on every trainable weight in training mode', () => {
      const head = buildProjectionHead({ inputDim, layers, hiddenDim, outputDim, seed: 5 });
      const x = tf.randomNormal([6, inputDim], 0, 1, 'float32', 2);
      // A random projection of the output: a plain sum would be constant under BN's normalisation.
      const probe = tf.randomNormal([6, out], 0, 1, 'float32', 3);
      const vars = head.trainableWeights.map((w) => w.read() as tf.Variable);
      const { value, grads } = tf.variableGrads(
        () => tf.sum(tf.mul(tf.square(head.apply(x, { training: true }) as tf.Tensor), probe)) as tf.Scalar,
        vars,
      );
      expect(Object.keys(grads).length).toBe(vars.length);
      for (const v of vars) {
        const g = grads[v.name];
        expect(g, v.name).toBeDefined();
        expect(g.shape).toEqual(v.shape);
        const maxAbs = tf.tidy(() => tf.max(tf.abs(g)).dataSync()[0]);
        expect(maxAbs, `gradient of ${v.name}`).toBeGreaterThan(0);
      }
      tf.dispose([x, probe, value, ...Object.values(grads)]);
      head.dispose();
    });
  });

  it('is reproducible with a seed', () => {
    const a = buildProjectionHead({ inputDim: 4, outputDim: 3, seed: 11 });
    const b = buildProjectionHead({ inputDim: 4, outputDim: 3, seed: 11 });
    const [ka, kb] = [a, b].map((m) => m.getLayer('head_dense_1').getWeights()[0]);
    expectTensorClose(ka, kb, { atol: 0, rtol: 0 });
    a.dispose();
    b.dispose();
  });

  it.each([
    [{ inputDim: 0 }, /projectionHead.inputDim must be a positive integer, got 0/],
    [{ inputDim: 8, layers: 0 }, /projectionHead.layers must be a positive integer, got 0/],
    [{ inputDim: 8, hiddenDim: 2.5 }, /projectionHead.hiddenDim must be a positive integer, got 2.5/],
    [{ inputDim: 8, outputDim: -1 }, /projectionHead.outputDim must be a positive integer, got -1/],
    [{ inputDim: 8, seed: 0.5 }, /projectionHead.seed must be an integer, got 0.5/],
  ])('rejects %j by naming the field', (options, message) => {
    expect(() => buildProjectionHead(options)).toThrow(message);
  });
});

describe('headOutputAt', () => {
  it('truncates after block k, sharing the weights of the full head', () => {
    const head = buildProjectionHead({ inputDim: 6, hiddenDim: 5, outputDim: 3, layers: 3, seed: 7 });
    const x = tf.randomNormal([4, 6], 0, 1, 'float32', 4);

    const t0 = headOutputAt(head, 0);
    const y0 = t0.predict(x) as tf.Tensor;
    expectTensorClose(y0, x, { atol: 0, rtol: 0 }); // k = 0 is the encoder features

    const t1 = headOutputAt(head, 1);
    expect(t1.layers.map((l) => l.name)).toEqual(['head_input', 'head_dense_0', 'head_bn_0', 'head_relu_0']);
    const y1 = t1.predict(x) as tf.Tensor;
    expect(y1.shape).toEqual([4, 5]);
    // Inference-mode block 0 by hand: relu(gamma (xW - mean) / sqrt(var + eps) + beta).
    const [kernel] = head.getLayer('head_dense_0').getWeights();
    const [gamma, beta, mean, variance] = head.getLayer('head_bn_0').getWeights();
    const manual = tf.tidy(() =>
      tf.relu(tf.add(tf.mul(gamma, tf.div(tf.sub(tf.matMul(x, kernel), mean), tf.sqrt(tf.add(variance, 1e-5)))), beta)),
    );
    expectTensorClose(y1, manual);
    expect(Array.from(y1.dataSync()).every((v) => v >= 0)).toBe(true);

    const t3 = headOutputAt(head, 3);
    const full = head.predict(x) as tf.Tensor;
    const y3 = t3.predict(x) as tf.Tensor;
    expect(y3.shape).toEqual([4, 3]);
    expectTensorClose(y3, full, { atol: 0, rtol: 0 });

    // Shared weights: changing the head's first kernel changes the truncated model's output.
    head.getLayer('head_dense_0').setWeights([tf.mul(kernel, 2)]);
    const y1After = t1.predict(x) as tf.Tensor;
    expect(tf.tidy(() => tf.max(tf.abs(tf.sub(y1After, y1))).dataSync()[0])).toBeGreaterThan(0);

    tf.dispose([x, y0, y1, manual, full, y3, y1After]);
    head.dispose();
  });

  it('names the allowed range when k is out of it', () => {
    const head = buildProjectionHead({ inputDim: 4, outputDim: 2, layers: 2 });
    expect(() => headOutputAt(head, 3)).toThrow(/k must be an integer in \[0, 2\] for this 2-layer head, got 3/);
    expect(() => headOutputAt(head, -1)).toThrow(/got -1/);
    const other = tf.sequential({ layers: [tf.layers.dense({ units: 2, inputShape: [3] })] });
    expect(() => headOutputAt(other, 1)).toThrow(/has no head_dense_<j> layers/);
    head.dispose();
    other.dispose();
  });
});
