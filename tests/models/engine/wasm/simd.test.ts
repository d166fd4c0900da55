// The hand-assembled WebAssembly SIMD row loops (models/engine/wasm/simd.ts) against float64 loops in
// plain JS, on row counts around their 128-row blocks and several channel counts.
import { describe, expect, it } from 'vitest';
import { newWasmMemory, simdModuleValidates, simdRowKernels } from '../../../../models/engine/wasm/simd.ts';
import { expectTensorClose, seededValues } from '../../../helpers.ts';

it('the module validates', () => {
  expect(simdModuleValidates()).toBe(true);
});

describe.each(
  [
    { rows: 1, channels: 4 },
    { rows: 127, channels: 16 },
    { rows: 128, channels: 8 },
    { rows: 129, channels: 20 },
    { rows: 1000, channels: 64 },
  ].flatMap((c) => [
    { ...c, shared: false },
    // The threaded tfjs-backend-wasm build's heap (models/engine/wasm/threads.ts).
    { ...c, shared: true },
  ]),
)('$rows rows × $channels channels, shared memory $shared', ({ rows, channels, shared }) => {
  const n = rows * channels;
  const memory = newWasmMemory(Math.ceil((4 * (3 * n + 16 * channels)) / 65536) + 1, shared);
  const k = simdRowKernels(memory);
  const f32 = new Float32Array(memory.buffer);
  // Byte offsets: three [rows, C] operands, then per-channel vectors. Data has a large mean, as
  // activations after a ReLU do, so a loop that did not centre would show.
  const [P, Q, OUT] = [0, 1, 2].map((i) => i * n * 4);
  const vector = (i: number): number => 3 * n * 4 + i * channels * 4;
  const view = (byteOffset: number, length: number): Float32Array => f32.subarray(byteOffset / 4, byteOffset / 4 + length);
  const p = Float32Array.from(seededValues(n, 1), (v) => 3 * v + 2);
  const q = Float32Array.from(seededValues(n, 2), (v) => 2 * v - 1);
  const vecs = [3, 4, 5, 6].map((seed) => seededValues(channels, seed));
  const reset = (): void => {
    f32.fill(Number.NaN); // what a loop fails to write shows
    view(P, n).set(p);
    view(Q, n).set(q);
    vecs.forEach((v, i) => view(vector(i), channels).set(v));
  };
  const sums = (value: (i: number, c: number) => number): Float64Array => {
    const out = new Float64Array(channels);
    for (let i = 0; i < n; i++) out[i % channels] += value(i, i % channels);
    return out;
  };
  const map = (value: (i: number, c: number) => number): Float64Array => Float64Array.from({ length: n }, (_, i) => value(i, i % channels));
  const tol = { atol: 1e-5, rtol: 1e-5 };

  it('sum', () => {
    reset();
    k.sum(rows, channels * 4, P, vector(4), vector(5));
    expectTensorClose(view(vector(4), channels), sums((i) => p[i]), tol);
  });

  it('sum_squared_deviation', () => {
    reset();
    k.sum_squared_deviation(rows, channels * 4, P, vector(0), vector(4), vector(5));
    expectTensorClose(view(vector(4), channels), sums((i, c) => (p[i] - vecs[0][c]) ** 2), tol);
  });

  it('affine and affine_relu', () => {
    reset();
    k.affine(rows, channels * 4, P, OUT, vector(0), vector(1), vector(2));
    const y = map((i, c) => (p[i] - vecs[0][c]) * vecs[1][c] + vecs[2][c]);
    expectTensorClose(view(OUT, n), y, tol);
    expect(Array.from(view(P, n))).toEqual(Array.from(p)); // inputs untouched
    k.affine_relu(rows, channels * 4, P, OUT, vector(0), vector(1), vector(2));
    expectTensorClose(view(OUT, n), y.map((v) => Math.max(v, 0)), tol);
  });

  it('sum_and_sum_product', () => {
    reset();
    k.sum_and_sum_product(rows, channels * 4, P, Q, vector(0), vector(4), vector(5), vector(6), vector(7));
    expectTensorClose(view(vector(4), channels), sums((i) => p[i]), tol);
    expectTensorClose(view(vector(5), channels), sums((i, c) => p[i] * (q[i] - vecs[0][c])), tol);
  });

  it('affine2', () => {
    reset();
    k.affine2(rows, channels * 4, P, Q, OUT, vector(0), vector(1), vector(2), vector(3));
    expectTensorClose(view(OUT, n), map((i, c) => vecs[0][c] * p[i] + vecs[1][c] * (q[i] - vecs[2][c]) + vecs[3][c]), tol);
  });
});

it('one instance per memory', () => {
  const memory = newWasmMemory(1);
  expect(simdRowKernels(memory)).toBe(simdRowKernels(memory));
  expect(simdRowKernels(newWasmMemory(1))).not.toBe(simdRowKernels(memory));
});

describe.each([false, true])('layout loops, shared memory %s', (shared) => {
  const memory = newWasmMemory(8, shared); // 131,072 floats
  const k = simdRowKernels(memory);
  const f32 = new Float32Array(memory.buffer);
  const OUT = 65536; // float index of the destination

  it('transpose4: count × [rows, cols] → [cols, rows], strided blocks', () => {
    // As the filter gradient uses it: x [n, HW, C] → [C, HW, n], one [n, C] block per pixel.
    const [n, hw, c] = [8, 5, 12];
    f32.fill(Number.NaN);
    const x = seededValues(n * hw * c, 7);
    f32.set(x);
    k.transpose4(hw, n, c, 0, hw * c * 4, c * 4, OUT * 4, hw * n * 4, n * 4);
    const expected = new Float32Array(n * hw * c);
    for (let b = 0; b < n; b++) for (let p = 0; p < hw; p++) for (let ch = 0; ch < c; ch++) expected[(ch * hw + p) * n + b] = x[(b * hw + p) * c + ch];
    expect(Array.from(f32.subarray(OUT, OUT + n * hw * c))).toEqual(Array.from(expected));
    expect(Number.isNaN(f32[OUT + n * hw * c])).toBe(true); // nothing written past the end
  });

  it('copy_rows: [n, HW, C] → [HW, n, C] by whole rows', () => {
    const [n, hw, c] = [3, 7, 8];
    f32.fill(Number.NaN);
    const x = seededValues(n * hw * c, 8);
    f32.set(x);
    k.copy_rows(n, hw, c * 4, 0, c * 4, hw * c * 4, OUT * 4, n * c * 4, c * 4);
    const expected = new Float32Array(n * hw * c);
    for (let b = 0; b < n; b++) for (let p = 0; p < hw; p++) for (let ch = 0; ch < c; ch++) expected[(p * n + b) * c + ch] = x[(b * hw + p) * c + ch];
    expect(Array.from(f32.subarray(OUT, OUT + n * hw * c))).toEqual(Array.from(expected));
    expect(Number.isNaN(f32[OUT + n * hw * c])).toBe(true);
  });
});

describe.each([false, true])('relu_grad, shared memory %s', (shared) => {
  it("dy · step(y) as tfjs's Step and Multiply: 0 where y ≤ 0, NaN where y is NaN", () => {
    const memory = newWasmMemory(1, shared);
    const k = simdRowKernels(memory);
    const f32 = new Float32Array(memory.buffer);
    const y = Float32Array.from([1, 0, -0, -2, Number.NaN, 3e-39, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY]);
    const dy = Float32Array.from([2, 3, 4, 5, 6, 7, Number.POSITIVE_INFINITY, Number.POSITIVE_INFINITY]);
    f32.fill(Number.NaN);
    f32.set(dy, 0);
    f32.set(y, 8);
    k.relu_grad(32, 0, 32, 64);
    // 3e-39 is a positive subnormal: > 0. ∞ · 0 = NaN, as Multiply gives.
    expect(Array.from(f32.subarray(16, 24))).toEqual([2, 0, 0, 0, Number.NaN, 7, Number.POSITIVE_INFINITY, Number.NaN]);
    expect(Number.isNaN(f32[24])).toBe(true); // nothing past the end
  });
});
