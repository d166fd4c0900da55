// Backprop that frees gradients and saved tensors as it goes: the same gradients as tfjs's own
// engine.gradients, a lower peak, nothing leaked, higher-order gradients still right.
import * as tf from '@tensorflow/tfjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { useBackend } from '../../../models/engine/backend.ts';
import { installLowMemoryGradients, uninstallLowMemoryGradients } from '../../../models/engine/gradients.ts';
import { ntXentLoss } from '../../../models/losses.ts';
import { buildSimclrModel, trainableVariables } from '../../../models/simclr.ts';
import { seededValues } from '../../helpers.ts';

beforeAll(async () => {
  await useBackend('wasm');
});
afterAll(() => {
  installLowMemoryGradients(); // leave the process as useBackend sets it up
});

/** Gradients of a SimCLR loss (ResNet-20 + head, NT-Xent) w.r.t. every weight, and the peak bytes. */
async function simclrGradients(): Promise<{ grads: Float32Array[]; peakBytes: number; loss: number }> {
  const model = buildSimclrModel({ encoder: 'resnet20', inputSize: 16, seed: 3 });
  const x = tf.tensor4d(seededValues(16 * 16 * 16 * 3, 5), [16, 16, 16, 3]);
  let out: { grads: Float32Array[]; loss: number } = { grads: [], loss: NaN };
  const tensorsBefore = tf.memory().numTensors;
  const before = tf.memory().numBytes;
  const info = await tf.profile(() => {
    tf.tidy(() => {
      const { value, grads } = tf.variableGrads(() => {
        const h = model.encoder.apply(x, { training: true }) as tf.Tensor2D;
        const z = model.head.apply(h, { training: true }) as tf.Tensor2D;
        const [z1, z2] = tf.split(z, 2, 0) as [tf.Tensor2D, tf.Tensor2D];
        const r = ntXentLoss(z1, z2, 0.5);
        r.accuracy.dispose();
        return r.loss;
      }, trainableVariables(model));
      out = { grads: trainableVariables(model).map((v) => grads[v.name].dataSync() as Float32Array), loss: value.dataSync()[0] };
    });
  });
  expect(tf.memory().numTensors).toBe(tensorsBefore);
  x.dispose();
  model.encoder.dispose();
  model.head.dispose();
  return { ...out, peakBytes: info.peakBytes - before };
}

describe('low-memory gradients', () => {
  it('give exactly the stock gradients of a SimCLR step, with a much lower peak', async () => {
    uninstallLowMemoryGradients();
    const stock = await simclrGradients();
    const stockPeak = stock.peakBytes;
    expect(installLowMemoryGradients()).toBe(true);
    const low = await simclrGradients();
    expect(low.loss).toBe(stock.loss);
    expect(low.grads.length).toBe(stock.grads.length);
    low.grads.forEach((g, i) => expect(g).toEqual(stock.grads[i]));
    expect(stockPeak).toBeGreaterThan(0);
    // Measured: 32.3 → 27.6 MB with the fused batch-norm kernels, which save only x (with the
    // composed batch norm, which saves more per layer, the drop was over 25 %).
    expect(low.peakBytes).toBeLessThan(0.9 * stockPeak);
  });

  it('keep a gradient that a gradient function hands to two inputs', () => {
    installLowMemoryGradients();
    const sameDyTwice = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
      const [a, b] = args as [tf.Tensor, tf.Tensor];
      return { value: tf.add(a, b), gradFunc: (dy: tf.Tensor) => [dy, dy] };
    });
    const a = tf.tensor1d([1, 2, 3]);
    const b = tf.tensor1d([4, 5, 6]);
    const c = tf.tensor1d([7, 8, 9]);
    const before = tf.memory().numTensors;
    const [da, db] = tf.grads((p: tf.Tensor, q: tf.Tensor) => tf.sum(tf.mul(tf.relu(sameDyTwice(p, q) as tf.Tensor), c)))([a, b]);
    expect(Array.from(da.dataSync())).toEqual([7, 8, 9]);
    expect(Array.from(db.dataSync())).toEqual([7, 8, 9]);
    tf.dispose([da, db]);
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose([a, b, c]);
  });

  it('take ReLU\'s gradient from its output: the mask of x > 0, NaN kept', () => {
    installLowMemoryGradients();
    const x = tf.tensor1d([-2, -0, 0, 0.5, 3, NaN]);
    const dy = tf.tensor1d([1, 2, 3, 4, 5, 6]);
    const [dx] = tf.grads((t: tf.Tensor) => tf.relu(t))([x], dy);
    expect(Array.from(dx.dataSync())).toEqual([0, 0, 0, 4, 5, NaN]);
    tf.dispose([x, dy, dx]);
  });

  it('still take higher-order gradients', () => {
    installLowMemoryGradients();
    const x = tf.tensor1d([1, 2, -3]);
    const d2 = tf.grad(tf.grad((t: tf.Tensor) => tf.sum(tf.pow(t, 3))))(x); // 6x
    expect(Array.from(d2.dataSync())).toEqual([6, 12, -18]);
    tf.dispose([x, d2]);
  });
});
