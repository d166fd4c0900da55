// Training batch norm as two kernels (BATCH_NORM_FORWARD / BATCH_NORM_BACKWARD of kernel-names.ts)
// for tfjs-backend-wasm, and so for 'onnxruntime', which shares its heap: SIMD loops on the heap.
import * as tf from '@tensorflow/tfjs';
import { heapF32, simdKernelsOf, type WasmBackend } from './heap.ts';

type TensorInfo = tf.TensorInfo;

interface KernelArgs {
  inputs: tf.NamedTensorInfoMap;
  backend: tf.KernelBackend;
  attrs: tf.NamedAttrMap;
}

/** [rows, channels] of an NHWC-like tensor whose statistics run over every leading axis. */
function rowsAndChannels(x: TensorInfo): [number, number] {
  const channels = x.shape[x.shape.length - 1];
  return [tf.util.sizeFromShape(x.shape) / channels, channels];
}

function checkFloat32(kernel: string, inputs: Record<string, TensorInfo>): void {
  for (const [name, info] of Object.entries(inputs)) {
    if (info.dtype !== 'float32') throw new Error(`${kernel}: '${name}' must be float32, got ${info.dtype}`);
  }
}

/**
 * {x, gamma, beta}, {epsilon} → [y, batch mean, biased batch variance, 1/√(variance + ε)], the
 * statistics over every axis but the last, in 3 passes over x (Σx, Σ(x − μ)², y). The composed
 * path took ~12 passes on wasm; onnxruntime's graphs ~7 each way plus a copy of each output.
 */
export function wasmBatchNormForward({ inputs, backend, attrs }: KernelArgs): TensorInfo[] {
  const { x, gamma, beta } = inputs as Record<string, TensorInfo>;
  checkFloat32('batch norm forward', { x, gamma, beta });
  const { epsilon } = attrs as unknown as { epsilon: number };
  const wasm = backend as WasmBackend;
  const [rows, channels] = rowsAndChannels(x);
  const y = wasm.makeOutput(x.shape, 'float32');
  const stats = [0, 1, 2].map(() => wasm.makeOutput([channels], 'float32')); // mean, variance, invStd
  const scratch = wasm.makeOutput([3 * channels], 'float32'); // partial sums, scale, shift
  // Views after every allocation: allocating may grow (and so move) the heap.
  const [xs, ys, mean, variance, invStd, scr, g, b] = [x, y, ...stats, scratch, gamma, beta].map((info) => heapF32(wasm, info));
  const scale = scr.subarray(channels, 2 * channels);
  const shift = scr.subarray(2 * channels);
  const simd = channels % 4 === 0 ? simdKernelsOf(wasm) : undefined;
  if (simd !== undefined) simd.sum(rows, channels * 4, xs.byteOffset, mean.byteOffset, scr.byteOffset);
  else plainSums(rows, channels, (r, c) => xs[r * channels + c], mean);
  for (let c = 0; c < channels; c++) mean[c] /= rows;
  if (simd !== undefined) simd.sum_squared_deviation(rows, channels * 4, xs.byteOffset, mean.byteOffset, variance.byteOffset, scr.byteOffset);
  else plainSums(rows, channels, (r, c) => (xs[r * channels + c] - mean[c]) ** 2, variance);
  for (let c = 0; c < channels; c++) {
    variance[c] /= rows;
    invStd[c] = 1 / Math.sqrt(variance[c] + epsilon);
    scale[c] = g[c] * invStd[c];
    shift[c] = b[c];
  }
  if (simd !== undefined) simd.affine(rows, channels * 4, xs.byteOffset, ys.byteOffset, mean.byteOffset, scale.byteOffset, shift.byteOffset);
  else for (let i = 0; i < rows * channels; i++) ys[i] = (xs[i] - mean[i % channels]) * scale[i % channels] + shift[i % channels];
  wasm.disposeData(scratch.dataId);
  return [y, ...stats];
}

/**
 * {dy, x, mean, invStd, gamma} → [dx, dγ, dβ] with x̂ = (x − μ)·invStd over N = rows:
 *   dβ = Σdy,  dγ = Σdy·x̂,  dx = γ·invStd·(dy − dβ/N − x̂·dγ/N)
 *      = a·dy + b·(x − μ) + d,  a = γ·invStd,  b = −a·invStd²·Σdy(x − μ)/N,  d = −a·dβ/N,
 * in 2 passes over dy and x (Σdy and Σdy·(x − μ), dx).
 */
export function wasmBatchNormBackward({ inputs, backend }: KernelArgs): TensorInfo[] {
  const { dy, x, mean, invStd, gamma } = inputs as Record<string, TensorInfo>;
  checkFloat32('batch norm backward', { dy, x, mean, invStd, gamma });
  const wasm = backend as WasmBackend;
  const [rows, channels] = rowsAndChannels(x);
  const dx = wasm.makeOutput(x.shape, 'float32');
  const dGamma = wasm.makeOutput([channels], 'float32');
  const dBeta = wasm.makeOutput([channels], 'float32');
  const scratch = wasm.makeOutput([5 * channels], 'float32'); // 2 partial sums, a, b, d
  const [dys, xs, mu, inv, g, dxs, dg, db, scr] = [dy, x, mean, invStd, gamma, dx, dGamma, dBeta, scratch].map((info) => heapF32(wasm, info));
  const [a, b, d] = [2, 3, 4].map((k) => scr.subarray(k * channels, (k + 1) * channels));
  const simd = channels % 4 === 0 ? simdKernelsOf(wasm) : undefined;
  // dγ first holds Σ dy·(x − μ)
  if (simd !== undefined) {
    simd.sum_and_sum_product(rows, channels * 4, dys.byteOffset, xs.byteOffset, mu.byteOffset, db.byteOffset, dg.byteOffset, scr.byteOffset, scr.byteOffset + channels * 4);
  } else {
    plainSums(rows, channels, (r, c) => dys[r * channels + c], db);
    plainSums(rows, channels, (r, c) => dys[r * channels + c] * (xs[r * channels + c] - mu[c]), dg);
  }
  for (let c = 0; c < channels; c++) {
    a[c] = g[c] * inv[c];
    b[c] = (-a[c] * inv[c] * inv[c] * dg[c]) / rows;
    d[c] = (-a[c] * db[c]) / rows;
    dg[c] *= inv[c];
  }
  if (simd !== undefined) {
    simd.affine2(rows, channels * 4, dys.byteOffset, xs.byteOffset, dxs.byteOffset, a.byteOffset, b.byteOffset, mu.byteOffset, d.byteOffset);
  } else {
    for (let i = 0; i < rows * channels; i++) {
      const c = i % channels;
      dxs[i] = a[c] * dys[i] + b[c] * (xs[i] - mu[c]) + d[c];
    }
  }
  wasm.disposeData(scratch.dataId);
  return [dx, dGamma, dBeta];
}

/** out[c] = Σ_r value(r, c) in double precision (channel counts the SIMD loops do not take). */
function plainSums(rows: number, channels: number, value: (r: number, c: number) => number, out: Float32Array): void {
  const sums = new Float64Array(channels);
  for (let r = 0; r < rows; r++) for (let c = 0; c < channels; c++) sums[c] += value(r, c);
  out.set(sums);
}
