import { existsSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { buildClassifier } from '../../models/classifier.ts';
import { useBackend } from '../../models/engine/backend.ts';
import { exportOnnx } from '../../models/export-onnx.ts';
import { buildSimclrModel, embed } from '../../models/simclr.ts';
import { loadImages } from '../../data/memory.ts';
import { ingest } from '../../stages/ingest.ts';

const CIFAR = fileURLToPath(new URL('../../../shared/datasets/cifar10/train', import.meta.url));
import { optionalOnnxRuntime, seededValues } from '../helpers.ts';

const ort = optionalOnnxRuntime();

/** Gives every weight (batch-norm statistics included) seeded non-trivial values, so folding is exercised. */
function randomise(model: tf.LayersModel, seed: number): void {
  model.layers.forEach((layer, i) => {
    if ('layers' in layer) return randomise(layer as tf.LayersModel, seed + 100 * i);
    const fresh = layer.getWeights().map((w, j) => {
      const v = seededValues(w.size, seed + 31 * i + j);
      // Variances must stay positive; everything else around 0 with scale ~0.3.
      return tf.tensor(layer.getClassName() === 'BatchNormalization' && j === 3 ? v.map((x) => 0.5 + 0.4 * x) : v.map((x) => 0.3 * x), w.shape);
    });
    layer.setWeights(fresh);
    tf.dispose(fresh);
  });
}

describe.skipIf(ort === null)('exportOnnx', () => {
  beforeAll(async () => {
    await useBackend('cpu');
  });

  it.each([
    ['resnet20', 16, 1],
    ['resnet20', 16, 0],
    // Above 64 px: the 7×7/2 stem and max-pool.
    ['resnet18', 72, 1],
  ])('%s at %i px from head layer %i: onnxruntime gives the tfjs logits within 1e-4', async (encoder, size, k) => {
    const { encoder: enc, head } = buildSimclrModel({ encoder, inputSize: size, headLayers: 2, projectionDim: 8, seed: 1 });
    const classifier = buildClassifier(enc, head, k, 5);
    randomise(classifier, 7);
    const batch = size > 64 ? 1 : 3;
    const x = tf.tensor4d(seededValues(batch * size * size * 3, 9).map((v) => 0.5 + 0.5 * v), [batch, size, size, 3]);
    const expected = Array.from((classifier.predict(x) as tf.Tensor).dataSync());
    const bytes = exportOnnx(classifier, { metadata: { classes: '["a","b","c","d","e"]' } });
    const session = await ort!.InferenceSession.create(bytes);
    expect(session.inputNames).toEqual(['pixels']);
    const result = await session.run({ pixels: new ort!.Tensor('float32', x.dataSync() as Float32Array, [batch, size, size, 3]) });
    const got = Array.from(result.output.data as Float32Array);
    expect(result.output.dims).toEqual([batch, 5]);
    for (let i = 0; i < expected.length; i++) expect(Math.abs(got[i] - expected[i])).toBeLessThan(1e-4 * Math.max(1, Math.abs(expected[i])));
    // Batch norm folded away: the graph has no BatchNormalization node left.
    expect(Buffer.from(bytes).includes(Buffer.from('BatchNormalization'))).toBe(false);
    expect(Buffer.from(bytes).includes(Buffer.from('input_layout'))).toBe(true);
    x.dispose();
    classifier.dispose();
  });

  it('exports an encoder alone (features out) and refuses a layer it does not know', async () => {
    const { encoder, head } = buildSimclrModel({ encoder: 'resnet20', inputSize: 8, headLayers: 1, projectionDim: 8, seed: 2 });
    randomise(encoder, 3);
    const x = tf.tensor4d(seededValues(2 * 8 * 8 * 3, 4).map((v) => 0.5 + 0.5 * v), [2, 8, 8, 3]);
    const expected = Array.from((encoder.predict(x) as tf.Tensor).dataSync());
    const session = await ort!.InferenceSession.create(exportOnnx(encoder));
    const got = Array.from((await session.run({ pixels: new ort!.Tensor('float32', x.dataSync() as Float32Array, [2, 8, 8, 3]) })).output.data as Float32Array);
    for (let i = 0; i < expected.length; i++) expect(Math.abs(got[i] - expected[i])).toBeLessThan(1e-4 * Math.max(1, Math.abs(expected[i])));
    const input = tf.input({ shape: [2, 2, 3] });
    const odd = tf.model({ inputs: input, outputs: tf.layers.flatten({ name: 'odd_flatten' }).apply(input) as tf.SymbolicTensor });
    expect(() => exportOnnx(odd)).toThrow("exportOnnx: layer 'odd_flatten' (Flatten) has no ONNX export");
    x.dispose();
    odd.dispose();
    encoder.dispose();
    head.dispose();
  });

  it.skipIf(!existsSync(CIFAR))('gives the tfjs logits within 1e-4 on real CIFAR-10 images', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'onnx-cifar-'));
    await ingest({ input: CIFAR, outDir: dir, size: 32, limitPerClass: 2, workers: 1 });
    const images = await loadImages(dir);
    const { encoder, head } = buildSimclrModel({ encoder: 'resnet20', inputSize: 32, headLayers: 2, projectionDim: 8, seed: 5 });
    const classifier = buildClassifier(encoder, head, 1, 10);
    randomise(classifier, 11);
    const expected = embed(classifier, images.pixels, images.ids.length, 32);
    const pixels = Float32Array.from(images.pixels, (v) => v / 255);
    const session = await ort!.InferenceSession.create(exportOnnx(classifier));
    const got = (await session.run({ pixels: new ort!.Tensor('float32', pixels, [images.ids.length, 32, 32, 3]) })).output.data as Float32Array;
    const want = expected.dataSync();
    expect(got.length).toBe(20 * 10);
    for (let i = 0; i < want.length; i++) expect(Math.abs(got[i] - want[i])).toBeLessThan(1e-4 * Math.max(1, Math.abs(want[i])));
    expected.dispose();
    classifier.dispose();
  });
});
