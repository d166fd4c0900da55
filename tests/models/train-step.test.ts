import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { useBackend } from '../../models/engine/backend.ts';
import { makeOptimizer } from '../../models/optimizers.ts';
import { trainStep } from '../../models/train-step.ts';
import { expectTensorClose, seededValues } from '../helpers.ts';

describe('trainStep', () => {
  beforeAll(async () => {
    await useBackend('cpu');
  });

  it('applies the gradient of a mean squared error as plain SGD would, returns the extra scalars, leaks nothing', () => {
    // Least squares: loss = mean((Xw − y)²), ∂loss/∂w = (2/N) Xᵀ(Xw − y); SGD: w' = w − η ∂loss/∂w.
    const n = 5;
    const d = 3;
    const x = seededValues(n * d, 1);
    const y = seededValues(n, 2);
    const w0 = seededValues(d, 3);
    const lr = 0.1;
    const w = tf.variable(tf.tensor2d(w0, [d, 1]), true, 'w');
    const X = tf.tensor2d(x, [n, d]);
    const Y = tf.tensor2d(y, [n, 1]);
    const optimizer = makeOptimizer({ name: 'sgd', learningRate: lr, momentum: 0, weightDecay: 0 });
    const before = tf.memory().numTensors;

    const out = trainStep([w], optimizer, () => {
      const residual = tf.sub(tf.matMul(X, w), Y); // [N, 1]
      return { loss: tf.mean(tf.square(residual)) as tf.Scalar, scalars: { maxAbs: tf.max(tf.abs(residual)) as tf.Scalar } };
    });

    // The same in plain JS.
    const residual = Array.from({ length: n }, (_, i) => x[i * d] * w0[0] + x[i * d + 1] * w0[1] + x[i * d + 2] * w0[2] - y[i]);
    const loss = residual.reduce((s, r) => s + r * r, 0) / n;
    const grad = Array.from({ length: d }, (_, j) => (2 / n) * residual.reduce((s, r, i) => s + x[i * d + j] * r, 0));
    expect(out.loss).toBeCloseTo(loss, 5);
    expect(out.maxAbs).toBeCloseTo(Math.max(...residual.map(Math.abs)), 5);
    expect(Object.keys(out).sort()).toEqual(['loss', 'maxAbs']);
    expectTensorClose(w, Array.from(w0, (v, j) => v - lr * grad[j]), { atol: 1e-6 });
    // Only the optimizer's momentum slot (one per variable) stays behind.
    expect(tf.memory().numTensors).toBe(before + 1);
    tf.dispose([w, X, Y]);
    optimizer.dispose();
  });
});
