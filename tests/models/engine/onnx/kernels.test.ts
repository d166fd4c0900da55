// The 'onnxruntime' backend: its synchronous native path, parity of every
// delegated kernel (values and gradients) with the cpu backend, a ResNet-20 loss curve equal to
// wasm's, backend isolation (wasm stays wasm) and no tensor leaks.
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-wasm';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { useBackend } from '../../../../models/engine/backend.ts';
import { loadOrtSync, ORT_PINNED_VERSION } from '../../../../models/engine/onnx/native.ts';
import { DELEGATED_KERNELS, ONNX_BACKEND_NAME, registerOnnxruntimeBackend, type OnnxRuntimeBackend } from '../../../../models/engine/onnx/register.ts';
import { encodeModel, OnnxDataType, onnxTensor } from '../../../../models/engine/onnx/proto.ts';
import { BatchNorm } from '../../../../models/batch-norm.ts';
import { BATCH_NORM_BACKWARD, BATCH_NORM_FORWARD } from '../../../../models/engine/kernel-names.ts';
import { buildEncoder } from '../../../../models/resnet.ts';
import { expectTensorClose, seededValues } from '../../../helpers.ts';

type Backend = 'cpu' | 'wasm' | 'onnxruntime';
// Node has WebAssembly; the project's lib settings leave its type out.
declare const WebAssembly: { Memory: new (descriptor: { initial: number }) => { buffer: ArrayBuffer } };
type Pad = 'same' | 'valid' | [[0, 0], [number, number], [number, number], [0, 0]];

let ort: OnnxRuntimeBackend;

beforeAll(async () => {
  // Through the project's own selection path, as `--backend onnxruntime` does.
  const choice = await useBackend('onnxruntime');
  expect(choice).toEqual({ name: 'onnxruntime', tfName: 'onnxruntime' });
  ort = registerOnnxruntimeBackend(); // the registration useBackend made
});

let tensorsBefore = 0;
beforeEach(() => {
  tensorsBefore = tf.memory().numTensors;
});
afterEach(() => {
  expect(tf.memory().numTensors).toBe(tensorsBefore);
});


function rand(shape: number[], seed: number): tf.Tensor {
  return tf.tensor(seededValues(shape.reduce((a, b) => a * b, 1), seed), shape);
}

/** Runs `f` on `backend` and returns its outputs as plain arrays (nothing left allocated). */
async function on(backend: Backend, f: () => tf.Tensor[]): Promise<{ data: Float32Array; shape: number[] }[]> {
  expect(await tf.setBackend(backend)).toBe(true);
  return tf.tidy(() => f().map((t) => ({ data: t.dataSync() as Float32Array, shape: t.shape })));
}

/** Same computation on cpu and onnxruntime; asserts equal shapes and values, and that ORT ran `kernels`. */
async function expectParity(f: () => tf.Tensor[], kernels: string[], tol = { atol: 1e-4, rtol: 1e-4 }): Promise<void> {
  const expected = await on('cpu', f);
  const runsBefore = ort.stats().runs;
  const actual = await on('onnxruntime', f);
  const runsAfter = ort.stats().runs;
  for (const k of kernels) expect(runsAfter[k] ?? 0, `${k} ran on onnxruntime`).toBeGreaterThan(runsBefore[k] ?? 0);
  expect(actual.length).toBe(expected.length);
  actual.forEach((a, i) => {
    expect(a.shape).toEqual(expected[i].shape);
    expectTensorClose(a.data, expected[i].data, tol);
  });
}

describe('synchronous native path (pinned onnxruntime-node internals)', () => {
  it('is the pinned version, with binding.InferenceSession{loadModel, run, dispose} in dist/binding.js', () => {
    const require = createRequire(import.meta.url);
    expect((require('onnxruntime-node/package.json') as { version: string }).version).toBe(ORT_PINNED_VERSION);
    const sync = loadOrtSync();
    expect(sync.version).toBe(ORT_PINNED_VERSION);
    for (const method of ['loadModel', 'run', 'dispose']) {
      expect(typeof (sync.Session.prototype as unknown as Record<string, unknown>)[method], method).toBe('function');
    }
    // The public async run is that native run deferred by setImmediate; if this wrapper changes,
    // re-check that the native call is still synchronous before moving the pin.
    const wrapper = readFileSync(require.resolve('onnxruntime-node/dist/backend.js'), 'utf8');
    expect(wrapper).toMatch(/setImmediate\(\(\) => \{\s*try \{\s*resolve\(__classPrivateFieldGet\(this, _OnnxruntimeSessionHandler_inferenceSession, "f"\)\.run\(feeds, fetches, options\)\);/);
  });

  it('runs synchronously and writes a preallocated output in place', () => {
    const sync = loadOrtSync();
    // y = a · b + c, c an initializer: checks the encoder and the native run together.
    const model = encodeModel({
      opset: 17,
      graph: {
        name: 'madd',
        nodes: [
          { opType: 'MatMul', inputs: ['a', 'b'], outputs: ['ab'] },
          { opType: 'Add', inputs: ['ab', 'c'], outputs: ['y'] },
        ],
        initializers: [onnxTensor.float('c', [10, 20], [2])],
        inputs: [
          { name: 'a', elemType: OnnxDataType.FLOAT, shape: [2, 3] },
          { name: 'b', elemType: OnnxDataType.FLOAT, shape: [3, 2] },
        ],
        outputs: [{ name: 'y', elemType: OnnxDataType.FLOAT, shape: [2, 2] }],
      },
    });
    const session = new sync.Session();
    session.loadModel(model.buffer, model.byteOffset, model.byteLength, { intraOpNumThreads: 1 });
    // Inputs and output on a WebAssembly memory, as the kernels pass wasm heap views.
    const heap = new WebAssembly.Memory({ initial: 1 }).buffer;
    const a = new Float32Array(heap, 0, 6);
    a.set([1, 2, 3, 4, 5, 6]);
    const b = new Float32Array(heap, 64, 6);
    b.set([1, 0, 0, 1, 1, 1]);
    const y = new Float32Array(heap, 128, 4);
    const result = session.run(
      { a: new sync.Tensor('float32', a, [2, 3]), b: new sync.Tensor('float32', b, [3, 2]) },
      { y: new sync.Tensor('float32', y, [2, 2]) },
    );
    expect(typeof (result as { then?: unknown }).then).toBe('undefined'); // not a promise
    // [1 2 3; 4 5 6]·[1 0; 0 1; 1 1] = [4 5; 10 11], plus [10 20]
    expect(Array.from(y)).toEqual([14, 25, 20, 31]);
    session.dispose();
  });
});

// ResNets use strides 1 and 2, kernels 1, 3 and 7, 'same' padding; 'valid' and explicit pads
// cover the other geometry paths. 7×9 inputs make rows and columns differ and leave remainders.
const CONV_CASES: { k: number; s: number; pad: Pad }[] = [];
for (const k of [1, 3, 7]) {
  for (const s of [1, 2]) {
    for (const pad of ['same', 'valid'] as Pad[]) CONV_CASES.push({ k, s, pad });
  }
}
CONV_CASES.push({ k: 3, s: 2, pad: [[0, 0], [1, 2], [2, 0], [0, 0]] });

describe.each(CONV_CASES)('convolution k=$k stride=$s pad=$pad', ({ k, s, pad }) => {
  const xShape = [3, 7, 9, 5];
  const wShape = [k, k, 5, 4];

  it('Conv2D and its input and filter gradients match cpu', async () => {
    await expectParity(
      () => {
        const x = rand(xShape, 1) as tf.Tensor4D;
        const w = rand(wShape, 2) as tf.Tensor4D;
        const y = tf.conv2d(x, w, s, pad);
        const r = rand(y.shape, 3); // dy = r: not uniform
        const [dx, dw] = tf.grads((a: tf.Tensor, b: tf.Tensor) => tf.sum(tf.mul(tf.conv2d(a as tf.Tensor4D, b as tf.Tensor4D, s, pad), r)))([x, w]);
        return [y, dx, dw];
      },
      ['Conv2D', 'Conv2DBackpropInput', 'Conv2DBackpropFilter'],
    );
  });

  it('FusedConv2D with a per-channel bias, and its gradients, match cpu', async () => {
    await expectParity(
      () => {
        const x = rand(xShape, 4) as tf.Tensor4D;
        const w = rand(wShape, 5) as tf.Tensor4D;
        const bias = rand([4], 6);
        const f = (a: tf.Tensor, b: tf.Tensor, c: tf.Tensor): tf.Tensor =>
          tf.fused.conv2d({ x: a as tf.Tensor4D, filter: b as tf.Tensor4D, strides: s, pad, bias: c });
        const y = f(x, w, bias);
        const r = rand(y.shape, 7);
        const [dx, dw, db] = tf.grads((a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) => tf.sum(tf.mul(f(a, b, c), r)))([x, w, bias]);
        return [y, dx, dw, db];
      },
      ['FusedConv2D', 'Conv2DBackpropInput', 'Conv2DBackpropFilter'],
    );
  });
});

// Channel counts steer the blocked (NCHWc) graphs: a multiple of 4 is reordered and padded to
// MLAS's block (8 or 16), fewer channels than the block are read as NCHW, others take plain Conv.
describe.each([
  { ci: 16, co: 16 },
  { ci: 12, co: 20 },
  { ci: 8, co: 3 },
  { ci: 3, co: 8 },
  { ci: 20, co: 6 },
])('convolution channels $ci → $co', ({ ci, co }) => {
  it.each([1, 2])('FusedConv2D (bias, relu) and its gradients match cpu at stride %i', async (s) => {
    await expectParity(
      () => {
        const x = rand([2, 7, 9, ci], 21) as tf.Tensor4D;
        const w = rand([3, 3, ci, co], 22) as tf.Tensor4D;
        const bias = rand([co], 23);
        const f = (a: tf.Tensor, b: tf.Tensor, c: tf.Tensor): tf.Tensor =>
          tf.fused.conv2d({ x: a as tf.Tensor4D, filter: b as tf.Tensor4D, strides: s, pad: 'same', bias: c, activation: 'relu' });
        const y = f(x, w, bias);
        const r = rand(y.shape, 24);
        const [dx, dw, db] = tf.grads((a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) => tf.sum(tf.mul(f(a, b, c), r)))([x, w, bias]);
        return [y, dx, dw, db];
      },
      ['FusedConv2D', 'Conv2DBackpropInput', 'Conv2DBackpropFilter'],
    );
  });
});

describe('convolutions with outputs over 8 MiB run in slices of the batch', () => {
  it('Conv2D and its input gradient match wasm, two native runs each', async () => {
    const xShape = [34, 64, 64, 16]; // output 8.9 MB: two slices of 17 images
    const f = (): tf.Tensor[] => {
      const x = rand(xShape, 51) as tf.Tensor4D;
      const w = rand([3, 3, 16, 16], 52) as tf.Tensor4D;
      const r = rand(xShape, 53);
      const y = tf.conv2d(x, w, 1, 'same');
      const [dx] = tf.grads((a: tf.Tensor) => tf.sum(tf.mul(tf.conv2d(a as tf.Tensor4D, w, 1, 'same'), r)))([x]);
      return [y, dx];
    };
    const expected = await on('wasm', f);
    const before = ort.stats().runs;
    const actual = await on('onnxruntime', f);
    const after = ort.stats().runs;
    expect((after.Conv2D ?? 0) - (before.Conv2D ?? 0)).toBe(4); // y, and again inside tf.grads
    expect((after.Conv2DBackpropInput ?? 0) - (before.Conv2DBackpropInput ?? 0)).toBe(2);
    actual.forEach((a, i) => expectTensorClose(a.data, expected[i].data, { atol: 1e-4, rtol: 1e-4 }));
  }, 240_000); // the wasm reference of an 8.9 MB convolution took 102 s with four training jobs on the 2 cores
});

describe('fused training batch norm (wasm\'s SIMD kernels, shared by onnxruntime)', () => {
  it.each([
    [[4, 5, 3, 6]],
    [[7, 12]],
    [[2, 16, 16, 16]],
  ])('forward, statistics and gradients of shape %j match the composed path on cpu', async (shape) => {
    const channels = shape[shape.length - 1];
    await expectParity(
      () => {
        const x = tf.add(tf.mul(rand(shape, 31), 3), 1.5);
        const gamma = rand([channels], 32);
        const beta = rand([channels], 33);
        const r = rand(shape, 34);
        const layer = new BatchNorm({ epsilon: 1e-3, momentum: 0.9 });
        const f = (a: tf.Tensor): tf.Tensor => layer.apply(a, { training: true }) as tf.Tensor;
        layer.build(shape);
        layer.setWeights([gamma, beta, tf.zeros([channels]), tf.ones([channels])]);
        const y = f(x);
        const [dx] = tf.grads((a: tf.Tensor) => tf.sum(tf.mul(f(a), r)))([x]);
        const { grads } = tf.variableGrads(() => tf.sum(tf.mul(f(x), r)) as tf.Scalar, layer.trainableWeights.map((w) => (w as unknown as { val: tf.Variable }).val));
        const [movingMean, movingVariance] = layer.getWeights().slice(2).map((t) => t.clone());
        const out = [y, dx, ...Object.values(grads), movingMean, movingVariance];
        for (const w of layer.weights) (w as unknown as { dispose(): void }).dispose();
        return out;
      },
      [],
    );
    expect(tf.getKernel(BATCH_NORM_FORWARD, 'onnxruntime')?.kernelFunc).toBe(tf.getKernel(BATCH_NORM_FORWARD, 'wasm')?.kernelFunc);
    expect(tf.getKernel(BATCH_NORM_BACKWARD, 'onnxruntime')?.kernelFunc).toBe(tf.getKernel(BATCH_NORM_BACKWARD, 'wasm')?.kernelFunc);
  });
});

it('probes the NCHWc block size of this machine', () => {
  expect([0, 8, 16]).toContain(ort.stats().blockSize);
});

describe('FusedConv2D activations and dilation', () => {
  const activations = ['relu', 'relu6', 'elu', 'sigmoid', 'leakyrelu', 'prelu'] as const;
  it.each(activations)('%s with a bias (per channel and broadcast) matches cpu', async (activation) => {
    await expectParity(
      () => {
        const x = rand([2, 7, 9, 3], 8) as tf.Tensor4D;
        const w = tf.mul(rand([3, 3, 3, 4], 9), 3) as tf.Tensor4D; // values past relu6's clip
        const common = { x, filter: w, strides: 2, pad: 'same' as const, activation, leakyreluAlpha: 0.3 };
        const slope = activation === 'prelu' ? rand([4], 10) : undefined;
        return [
          tf.fused.conv2d({ ...common, bias: rand([4], 11), preluActivationWeights: slope }),
          tf.fused.conv2d({ ...common, bias: rand([1], 12), preluActivationWeights: slope }),
        ];
      },
      ['FusedConv2D'],
    );
  });

  it('dilation 2 (stride 1) matches cpu', async () => {
    await expectParity(() => [tf.conv2d(rand([2, 9, 7, 3], 13) as tf.Tensor4D, rand([3, 3, 3, 2], 14) as tf.Tensor4D, 1, 'same', 'NHWC', 2)], ['Conv2D']);
  });
});

describe('matmul kernels', () => {
  it.each([
    [false, false],
    [true, false],
    [false, true],
    [true, true],
  ])('BatchMatMul transposeA=%s transposeB=%s (batched, broadcast) and its gradients match cpu', async (ta, tb) => {
    await expectParity(
      () => {
        const a = rand(ta ? [3, 5, 7] : [3, 7, 5], 15);
        const b = rand(tb ? [3, 6, 5] : [3, 5, 6], 16);
        const y = tf.matMul(a, b, ta, tb);
        const r = rand(y.shape, 17);
        const [da, db] = tf.grads((p: tf.Tensor, q: tf.Tensor) => tf.sum(tf.mul(tf.matMul(p, q, ta, tb), r)))([a, b]);
        // A batch of 1 broadcasts against 3 (forward only: tfjs's own gradient refuses it).
        const yBroadcast = tf.matMul(a, rand(tb ? [1, 6, 5] : [1, 5, 6], 18), ta, tb);
        const y2 = tf.matMul(rand([7, 5], 19) as tf.Tensor2D, rand([5, 6], 20) as tf.Tensor2D);
        return [y, da, db, yBroadcast, y2];
      },
      ['BatchMatMul'],
    );
  });

  it.each(['linear', 'relu', 'elu', 'prelu'] as const)('_FusedMatMul with bias and %s matches cpu', async (activation) => {
    await expectParity(
      () => {
        const a = rand([9, 6], 20) as tf.Tensor2D;
        const b = rand([6, 4], 21) as tf.Tensor2D;
        const bias = rand([4], 22);
        const slope = activation === 'prelu' ? rand([4], 23) : undefined;
        return [tf.fused.matMul({ a, b, bias, activation, preluActivationWeights: slope, transposeB: false })];
      },
      ['_FusedMatMul'],
    );
  });
});

describe('backend isolation', () => {
  it("keeps 'wasm' pure wasm in the same process, and says which backend runs", async () => {
    expect(await tf.setBackend('wasm')).toBe(true);
    expect(tf.getBackend()).toBe('wasm');
    const before = ort.stats().runs;
    tf.tidy(() => tf.conv2d(rand([1, 5, 5, 2], 24) as tf.Tensor4D, rand([3, 3, 2, 2], 25) as tf.Tensor4D, 1, 'same').dataSync());
    expect(ort.stats().runs).toEqual(before);
    for (const name of DELEGATED_KERNELS) {
      expect(tf.getKernel(name, 'wasm')?.kernelFunc).not.toBe(tf.getKernel(name, ONNX_BACKEND_NAME)?.kernelFunc);
    }
    expect(await tf.setBackend('onnxruntime')).toBe(true);
    expect(tf.getBackend()).toBe('onnxruntime');
  });

  it('shares tensors with wasm without copies and survives tf.removeBackend-style dispose', async () => {
    expect(await tf.setBackend('wasm')).toBe(true);
    const t = tf.tensor1d([1, 2, 3]);
    expect(await tf.setBackend('onnxruntime')).toBe(true);
    expect(Array.from(tf.tidy(() => tf.mul(t, 2).dataSync()))).toEqual([2, 4, 6]);
    tf.findBackend('onnxruntime').dispose(); // a no-op on the alias: wasm owns the instance
    expect(Array.from(t.dataSync())).toEqual([1, 2, 3]);
    t.dispose();
  });
});

describe('ResNet-20 training', () => {
  /** 20 steps of forward + backward + SGD-momentum on `backend` from `weights`; the losses. */
  async function lossCurve(backend: Backend, model: tf.LayersModel, weights: tf.Tensor[], x: Float32Array, shape: number[]): Promise<number[]> {
    expect(await tf.setBackend(backend)).toBe(true);
    model.setWeights(weights);
    // Plain SGD (tfjs 4.22's momentum optimizer leaves a tensor behind after dispose() on every
    // backend), at a rate where the loss falls smoothly.
    const optimizer = tf.train.sgd(0.01);
    const input = tf.tensor(x, shape);
    const losses: number[] = [];
    for (let i = 0; i < 20; i++) {
      const loss = optimizer.minimize(() => tf.mean(tf.square(model.apply(input, { training: true }) as tf.Tensor)) as tf.Scalar, true) as tf.Scalar;
      losses.push(loss.dataSync()[0]);
      loss.dispose();
    }
    input.dispose();
    optimizer.dispose();
    return losses;
  }

  it('gives every weight the same gradient as wasm (one forward + backward pass)', async () => {
    expect(await tf.setBackend('wasm')).toBe(true);
    // Seeded, so the test is the same every run: unseeded it failed now and then (seeds 1–8: 7
    // pass, one has a weight off by 1.6e-3 relative; a ReLU or a statistic over the 4×4×4 values
    // of the last stage tips differently when wasm and onnxruntime sum in different orders).
    const { model } = buildEncoder({ name: 'resnet20', inputSize: 16, seed: 3 });
    const x = seededValues(4 * 16 * 16 * 3, 27);
    const gradsOn = async (backend: Backend): Promise<Float32Array[]> => {
      expect(await tf.setBackend(backend)).toBe(true);
      return tf.tidy(() => {
        const input = tf.tensor(x, [4, 16, 16, 3]);
        const { grads } = tf.variableGrads(() => tf.mean(tf.square(model.apply(input, { training: true }) as tf.Tensor)) as tf.Scalar);
        return Object.keys(grads).sort().map((name) => grads[name].dataSync() as Float32Array);
      });
    };
    try {
      const onWasm = await gradsOn('wasm');
      const onOrt = await gradsOn('onnxruntime');
      expect(onOrt.length).toBe(onWasm.length);
      expect(onOrt.length).toBeGreaterThan(40);
      onOrt.forEach((g, i) => expectTensorClose(g, onWasm[i], { atol: 1e-5, rtol: 1e-3 }));
    } finally {
      model.dispose();
    }
  });

  it('gives the same 20-step loss curve as wasm from the same initial weights', async () => {
    expect(await tf.setBackend('wasm')).toBe(true);
    // Seeded, so the test is the same every run: over 12 unseeded initialisations the step 0–1
    // difference was ≤ 4.4e-7 relative in 11 and 1.5e-5 in one (onnxruntime's fused batch norm
    // sums in another order than wasm's composed one), which made the test fail now and then.
    const { model } = buildEncoder({ name: 'resnet20', inputSize: 16, seed: 2 });
    // Built once; the initial weights are copied so both runs start from the same point.
    const initial = model.getWeights().map((w) => w.clone());
    try {
      const shape = [6, 16, 16, 3];
      const x = seededValues(6 * 16 * 16 * 3, 26);
      const onWasm = await lossCurve('wasm', model, initial, x, shape);
      const runsBefore = ort.stats().runs.Conv2DBackpropFilter ?? 0;
      const onOrt = await lossCurve('onnxruntime', model, initial, x, shape);
      expect(ort.stats().runs.Conv2DBackpropFilter ?? 0).toBeGreaterThan(runsBefore);
      expect(onWasm[19]).toBeLessThan(0.8 * onWasm[0]); // it trains at all
      // Step 0 is the forward pass from the shared weights and step 1 follows one update: both
      // agree to float rounding (the gradient test above checks every weight's gradient). Later
      // a ReLU or a batch-norm statistic over few values tips differently and the curves part a
      // little (wasm and onnxruntime sum in different orders): up to 2.6e-3 relative by step 20
      // over 12 seeds.
      expectTensorClose(onOrt.slice(0, 2), onWasm.slice(0, 2), { atol: 1e-6, rtol: 1e-5 });
      expectTensorClose(onOrt, onWasm, { atol: 1e-5, rtol: 5e-3 });
    } finally {
      for (const w of initial) w.dispose();
      model.dispose();
    }
  });
});
