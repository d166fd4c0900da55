// Parity of the wasm training kernels (convolution gradients, Tile; batch norm is checked in
// resnet.test.ts against tf.layers.batchNormalization) with the cpu backend, with
// float64 finite differences of a plain-JS convolution, and checks that they leak nothing.
// They run on the threaded wasm build with 2 threads (models/engine/wasm/threads.ts), as `--backend
// wasm` does; the single-threaded build under them is covered by onnx/kernels.test.ts.
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-wasm';
import { beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { BatchNorm } from '../../../../models/batch-norm.ts';
import { installLowMemoryGradients } from '../../../../models/engine/gradients.ts';
import { registerWasmTrainingKernels, setFilterGradientGroupBytes } from '../../../../models/engine/wasm/kernels.ts';
import { activeWasmThreads, installThreadedWasm, wasmHeapIsShared } from '../../../../models/engine/wasm/threads.ts';
import { expectTensorClose, seededValues } from '../../../helpers.ts';

type Pad = 'same' | 'valid' | [[0, 0], [number, number], [number, number], [0, 0]];

beforeAll(async () => {
  registerWasmTrainingKernels();
  installThreadedWasm(2);
  expect(await tf.setBackend('wasm')).toBe(true);
  expect(activeWasmThreads()).toBe(2);
  expect(wasmHeapIsShared()).toBe(true);
});

/** tf.grads for a function of two rank-4 tensors. */
function grads2(f: (a: tf.Tensor4D, b: tf.Tensor4D) => tf.Tensor): (xs: tf.Tensor[]) => tf.Tensor[] {
  return tf.grads((...t: tf.Tensor[]) => f(t[0] as tf.Tensor4D, t[1] as tf.Tensor4D));
}


interface ConvResult {
  y: Float32Array;
  dx: Float32Array;
  dw: Float32Array;
  yShape: number[];
}

/** conv2d and the gradients of Σ r·conv2d(x, w) (r fixed, so dy = r is not uniform) on `backend`. */
async function convAndGrads(
  backend: 'cpu' | 'wasm',
  xShape: [number, number, number, number],
  wShape: [number, number, number, number],
  strides: [number, number],
  pad: Pad,
): Promise<ConvResult> {
  await tf.setBackend(backend);
  return tf.tidy(() => {
    const x = tf.tensor4d(seededValues(xShape.reduce((a, b) => a * b), 1), xShape);
    const w = tf.tensor4d(seededValues(wShape.reduce((a, b) => a * b), 2), wShape);
    const y = tf.conv2d(x, w, strides, pad);
    const r = tf.tensor(seededValues(y.size, 3), y.shape);
    const [dx, dw] = grads2((a, b) => tf.sum(tf.mul(tf.conv2d(a, b, strides, pad), r)))([x, w]);
    return { y: y.dataSync() as Float32Array, dx: dx.dataSync() as Float32Array, dw: dw.dataSync() as Float32Array, yShape: y.shape };
  });
}

const KERNELS = [1, 3, 7];
const STRIDES = [1, 2];
const PADS: Pad[] = ['same', 'valid', [[0, 0], [1, 2], [2, 0], [0, 0]]];
const GRID = KERNELS.flatMap((k) => STRIDES.flatMap((s) => PADS.map((pad) => ({ k, s, pad }))));

// Two routes for the filter gradient: batch and channels multiples of 4 go by groups of images
// with SIMD transposes (here 3 groups of 4: the group size is set tiny), the rest as one
// convolution with tfjs's transposes.
const ROUTES = [
  { route: 'whole batch', batch: 2, inC: 3, outC: 5 },
  { route: 'groups of 4 images', batch: 12, inC: 4, outC: 8 },
];

describe.each(GRID.flatMap((g) => ROUTES.map((r) => ({ ...g, ...r }))))('conv2d gradients on wasm match cpu: kernel $k, stride $s, pad $pad, $route', ({ k, s, pad, batch, inC, outC }) => {
  // Odd, non-square input, batch > 1 and in ≠ out channels catch transposed or mirrored axes.
  const xShape: [number, number, number, number] = [batch, 7, 9, inC];
  const wShape: [number, number, number, number] = [k, k, inC, outC];

  it('values, dL/dx and dL/dw', async () => {
    const previous = setFilterGradientGroupBytes(1); // groups of 4 images
    onTestFinished(() => void setFilterGradientGroupBytes(previous));
    const cpu = await convAndGrads('cpu', xShape, wShape, [s, s], pad);
    const wasm = await convAndGrads('wasm', xShape, wShape, [s, s], pad);
    expect(wasm.yShape).toEqual(cpu.yShape);
    expectTensorClose(wasm.y, cpu.y, { atol: 1e-5 });
    expectTensorClose(wasm.dx, cpu.dx, { atol: 1e-5 });
    expectTensorClose(wasm.dw, cpu.dw, { atol: 1e-4 });
  });
});

describe.each([
  { name: 'unequal strides [1, 2], same', xShape: [2, 7, 9, 3], wShape: [3, 3, 3, 4], strides: [1, 2], pad: 'same' as Pad },
  { name: 'unequal strides [2, 1], 7×7 valid', xShape: [2, 9, 8, 2], wShape: [7, 7, 2, 3], strides: [2, 1], pad: 'valid' as Pad },
  // Even size with stride 2 'valid': the last row and column are never read by the forward pass.
  { name: 'stride 2 valid on even size', xShape: [3, 8, 10, 4], wShape: [1, 1, 4, 6], strides: [2, 2], pad: 'valid' as Pad },
  // The 1×1 route (gathered pixels, one GEMM): a projection shortcut, and stride 1 as in bottlenecks.
  { name: '1×1 stride 2 same on even size, batch 8', xShape: [8, 8, 10, 4], wShape: [1, 1, 4, 8], strides: [2, 2], pad: 'same' as Pad },
  { name: '1×1 stride [2, 1] valid, batch 4', xShape: [4, 6, 5, 8], wShape: [1, 1, 8, 4], strides: [2, 1], pad: 'valid' as Pad },
  { name: '1×1 stride 1, batch 4', xShape: [4, 5, 7, 12], wShape: [1, 1, 12, 16], strides: [1, 1], pad: 'same' as Pad },
  { name: 'ResNet stem 7×7 stride 2 same', xShape: [2, 16, 16, 3], wShape: [7, 7, 3, 8], strides: [2, 2], pad: 'same' as Pad },
  { name: 'ResNet downsampling 3×3 stride 2, 32 channels', xShape: [4, 8, 8, 16], wShape: [3, 3, 16, 32], strides: [2, 2], pad: 'same' as Pad },
  { name: 'single-image batch', xShape: [1, 5, 6, 2], wShape: [3, 3, 2, 2], strides: [2, 2], pad: 'same' as Pad },
])('conv2d gradients on wasm match cpu: $name', ({ xShape, wShape, strides, pad }) => {
  it('values, dL/dx and dL/dw', async () => {
    const args = [xShape, wShape, strides, pad] as [[number, number, number, number], [number, number, number, number], [number, number], Pad];
    const cpu = await convAndGrads('cpu', ...args);
    const wasm = await convAndGrads('wasm', ...args);
    expectTensorClose(wasm.y, cpu.y, { atol: 1e-5 });
    expectTensorClose(wasm.dx, cpu.dx, { atol: 1e-5 });
    expectTensorClose(wasm.dw, cpu.dw, { atol: 1e-4 });
  });
});

/** Plain float64 NHWC convolution with explicit per-side padding: the independent reference. */
function naiveConv(
  x: Float64Array, [n, h, w, c]: number[],
  f: Float64Array, [kh, kw, , co]: number[],
  stride: number, padTop: number, padLeft: number, outH: number, outW: number,
): Float64Array {
  const y = new Float64Array(n * outH * outW * co);
  for (let b = 0; b < n; b++)
    for (let oh = 0; oh < outH; oh++)
      for (let ow = 0; ow < outW; ow++)
        for (let o = 0; o < co; o++) {
          let acc = 0;
          for (let i = 0; i < kh; i++)
            for (let j = 0; j < kw; j++) {
              const ih = oh * stride + i - padTop;
              const iw = ow * stride + j - padLeft;
              if (ih < 0 || ih >= h || iw < 0 || iw >= w) continue;
              for (let ci = 0; ci < c; ci++) acc += x[((b * h + ih) * w + iw) * c + ci] * f[((i * kw + j) * c + ci) * co + o];
            }
          y[((b * outH + oh) * outW + ow) * co + o] = acc;
        }
  return y;
}

describe('finite differences', () => {
  it('wasm gradients of ½Σ conv(x, w)² match central differences of a float64 convolution', async () => {
    await tf.setBackend('wasm');
    const xShape = [2, 5, 6, 2];
    const wShape = [3, 3, 2, 3];
    // stride 2, 'same' on 5×6: out 3×3, padding (top 1, left 0) as tfjs computes it
    const [stride, padTop, padLeft, outH, outW] = [2, 1, 0, 3, 3];
    const x32 = seededValues(120, 11);
    const w32 = seededValues(54, 12);
    const [dx, dw] = tf.tidy(() =>
      grads2((a, b) => tf.mul(tf.sum(tf.square(tf.conv2d(a, b, stride, 'same'))), 0.5))([
        tf.tensor4d(x32, xShape as [number, number, number, number]),
        tf.tensor4d(w32, wShape as [number, number, number, number]),
      ]).map((g) => g.dataSync()),
    );
    const loss = (x: Float64Array, w: Float64Array): number =>
      naiveConv(x, xShape, w, wShape, stride, padTop, padLeft, outH, outW).reduce((a, v) => a + 0.5 * v * v, 0);
    // The loss is quadratic, so central differences are exact up to rounding.
    const eps = 1e-3;
    const numeric = (which: 'x' | 'w'): number[] => {
      const base = { x: Float64Array.from(x32), w: Float64Array.from(w32) };
      return Array.from(base[which], (v, i) => {
        base[which][i] = v + eps;
        const up = loss(base.x, base.w);
        base[which][i] = v - eps;
        const down = loss(base.x, base.w);
        base[which][i] = v;
        return (up - down) / (2 * eps);
      });
    };
    expectTensorClose(dx, numeric('x'), { atol: 1e-4, rtol: 1e-4 });
    expectTensorClose(dw, numeric('w'), { atol: 1e-4, rtol: 1e-4 });
  });
});

describe.each([
  { name: 'batch-norm pattern [1,1,1,C] → [B,H,W,C]', shape: [1, 1, 1, 4], reps: [3, 5, 7, 1], dtype: 'float32' as const },
  { name: 'every axis repeated', shape: [2, 3, 2], reps: [2, 3, 4], dtype: 'float32' as const },
  { name: 'int32 rank 2', shape: [3, 2], reps: [1, 4], dtype: 'int32' as const },
  { name: 'bool rank 1', shape: [3], reps: [3], dtype: 'bool' as const },
  { name: 'rank 5, some reps 1', shape: [2, 1, 3, 1, 2], reps: [1, 2, 1, 3, 2], dtype: 'float32' as const },
  { name: 'no repetition', shape: [2, 3], reps: [1, 1], dtype: 'float32' as const },
])('Tile on wasm matches cpu: $name', ({ shape, reps, dtype }) => {
  it('values and shape', async () => {
    const data = Array.from(seededValues(shape.reduce((a, b) => a * b, 1), 5), (v) => (dtype === 'float32' ? v : dtype === 'int32' ? Math.round(v * 10) : Number(v > 0)));
    const run = async (backend: string) => {
      await tf.setBackend(backend);
      return tf.tidy(() => {
        const t = tf.tile(tf.tensor(data, shape, dtype), reps);
        return { shape: t.shape, data: Array.from(t.dataSync()) };
      });
    };
    const cpu = await run('cpu');
    const wasm = await run('wasm');
    expect(wasm.shape).toEqual(cpu.shape);
    expect(wasm.data).toEqual(cpu.data);
  });
});

describe('registration and memory', () => {
  it('is idempotent and replaces the wasm kernels', () => {
    registerWasmTrainingKernels();
    const names = ['Identity', 'Conv2DBackpropFilter', 'Conv2DBackpropInput', 'Tile'];
    const before = names.map((n) => tf.getKernel(n, 'wasm')?.kernelFunc);
    registerWasmTrainingKernels();
    const after = names.map((n) => tf.getKernel(n, 'wasm')?.kernelFunc);
    expect(after).toEqual(before);
    expect(before.every((f) => typeof f === 'function')).toBe(true);
    // wasm's own Conv2DBackpropInput and Tile bind C++ functions in a setupFunc; ours need none.
    for (const name of names) expect(tf.getKernel(name, 'wasm')?.setupFunc, name).toBeUndefined();
  });

  it('Identity shares the buffer: the copy outlives its source, and the buffer goes with the last one', async () => {
    await tf.setBackend('wasm');
    const buffers = tf.engine().backend.numDataIds();
    const x = tf.tensor2d([1, 2, 3, 4, 5, 6], [2, 3]);
    const y = tf.clone(x); // runs the Identity kernel
    expect(y.shape).toEqual([2, 3]);
    expect(tf.engine().backend.numDataIds()).toBe(buffers + 1); // one buffer, two tensors
    x.dispose();
    expect(Array.from(y.dataSync())).toEqual([1, 2, 3, 4, 5, 6]);
    // Gradients of add pass through Identity: still right, and leave nothing behind.
    const a = tf.tensor1d([1, 2]);
    const [da] = tf.grads((t: tf.Tensor) => tf.sum(tf.mul(tf.add(t, t), tf.tensor1d([3, 5]))))([a]);
    expect(Array.from(da.dataSync())).toEqual([6, 10]);
    tf.dispose([y, a, da]);
    expect(tf.engine().backend.numDataIds()).toBe(buffers);
  });

  it.each([
    { route: 'whole batch', batch: 2, inC: 3, k: 3 },
    { route: 'groups of 4 images', batch: 8, inC: 4, k: 3 },
    { route: '1×1, gathered pixels', batch: 8, inC: 4, k: 1 },
  ])('leaves no tensors and no wasm buffers behind ($route)', async ({ batch, inC, k }) => {
    await tf.setBackend('wasm');
    const previous = setFilterGradientGroupBytes(1);
    onTestFinished(() => void setFilterGradientGroupBytes(previous));
    // 10 × 8: even, so the 1×1 stride-2 convolutions take the gathered-pixel route.
    const x = tf.tensor4d(seededValues(batch * 10 * 8 * inC, 7), [batch, 10, 8, inC]);
    const w = tf.tensor4d(seededValues(k * k * inC * 4, 8), [k, k, inC, 4]);
    const grad = grads2((a, b) => tf.sum(tf.conv2d(a, b, 2, 'same')));
    tf.dispose(grad([x, w])); // first call may allocate lazily
    const tensors = tf.memory().numTensors;
    const buffers = tf.engine().backend.numDataIds();
    for (const pad of ['same', 'valid'] as const) {
      const [dx, dw] = grads2((a, b) => tf.sum(tf.conv2d(a, b, 2, pad)))([x, w]);
      tf.dispose([dx, dw, tf.tile(w, [1, 2, 1, 1])]);
    }
    expect(tf.memory().numTensors).toBe(tensors);
    expect(tf.engine().backend.numDataIds()).toBe(buffers);
    tf.dispose([x, w]);
  });

  it('training batch norm leaves no tensors and no wasm buffers behind', async () => {
    await tf.setBackend('wasm');
    const layer = new BatchNorm();
    const x = tf.tensor4d(seededValues(2 * 5 * 5 * 8, 9), [2, 5, 5, 8]);
    const run = (): void => {
      const [dx] = tf.grads((a: tf.Tensor) => tf.sum(layer.apply(a, { training: true }) as tf.Tensor))([x]);
      dx.dispose();
    };
    run(); // builds the layer's weights
    const tensors = tf.memory().numTensors;
    const buffers = tf.engine().backend.numDataIds();
    for (let i = 0; i < 3; i++) run();
    expect(tf.memory().numTensors).toBe(tensors);
    expect(tf.engine().backend.numDataIds()).toBe(buffers);
    x.dispose();
    for (const w of layer.weights) (w as unknown as { dispose(): void }).dispose();
  });
});

describe('ReLU gradient (SimclrReluGrad on wasm)', () => {
  // The project's ReLU gradient (from the output), as every backend trains with it.
  beforeAll(() => {
    expect(installLowMemoryGradients()).toBe(true);
  });

  // 4·5·7 = 140 values, then 3 more: the SIMD body and the JS tail; NaN and ±0 among them.
  const values = (n: number, seed: number): Float32Array => Float32Array.from(seededValues(n, seed), (v, i) => (i === 5 ? Number.NaN : i === 6 ? -0 : i === 7 ? 0 : v));

  it.each([140, 143])('matches cpu (tfjs Step × Multiply) on %i values, NaN kept', async (n) => {
    const grad = (): Float32Array =>
      tf.tidy(() => {
        const x = tf.tensor1d(values(n, 4));
        const r = tf.tensor1d(seededValues(n, 5));
        return tf.grad((a: tf.Tensor) => tf.sum(tf.mul(tf.relu(a), r)))(x).dataSync() as Float32Array;
      });
    await tf.setBackend('cpu');
    const cpu = grad();
    await tf.setBackend('wasm');
    const wasm = grad();
    const profile = await tf.profile(() => void grad());
    expect(profile.kernelNames).toContain('SimclrReluGrad');
    expect(profile.kernelNames).not.toContain('Step');
    expect(Number.isNaN(wasm[5])).toBe(true);
    expect(Array.from(wasm)).toEqual(Array.from(cpu));
  });

  it('leaves no tensors and no wasm buffers behind', async () => {
    await tf.setBackend('wasm');
    const x = tf.tensor2d(values(143, 6), [11, 13]);
    const g = tf.grad((a: tf.Tensor) => tf.sum(tf.relu(a)));
    g(x).dispose();
    const tensors = tf.memory().numTensors;
    const buffers = tf.engine().backend.numDataIds();
    for (let i = 0; i < 3; i++) g(x).dispose();
    expect(tf.memory().numTensors).toBe(tensors);
    expect(tf.engine().backend.numDataIds()).toBe(buffers);
    x.dispose();
  });
});
