// The threaded tfjs-backend-wasm build under Node (models/engine/wasm/threads.ts): the thread count
// setting, and in a process of its own, `--backend wasm` on 2 threads computing what the cpu
// backend computes, refusing onnxruntime afterwards, and exiting by itself.
import * as tf from '@tensorflow/tfjs';
import { execFile } from 'node:child_process';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { BatchNorm } from '../../../../models/batch-norm.ts';
import { activeWasmThreads, installThreadedWasm, MAX_WASM_THREADS, wasmHeapIsShared, wasmThreadCount } from '../../../../models/engine/wasm/threads.ts';
import { expectTensorClose } from '../../../helpers.ts';

describe('wasmThreadCount', () => {
  it('takes SIMCLR_WASM_THREADS, else the cores Node reports (at most 8)', () => {
    expect(wasmThreadCount({ SIMCLR_WASM_THREADS: '1' })).toBe(1);
    expect(wasmThreadCount({ SIMCLR_WASM_THREADS: '3' })).toBe(3);
    const cores = wasmThreadCount({});
    expect(cores).toBeGreaterThanOrEqual(1);
    expect(cores).toBeLessThanOrEqual(MAX_WASM_THREADS);
  });

  it.each(['0', '9', '1.5', 'two'])('refuses SIMCLR_WASM_THREADS=%s, naming it', (value) => {
    expect(() => wasmThreadCount({ SIMCLR_WASM_THREADS: value })).toThrow(/SIMCLR_WASM_THREADS must be a whole number from 1 to 8/);
  });
});

describe('when the threaded build cannot start', () => {
  it("falls back to the package's single-threaded build and says why", async () => {
    await import('@tensorflow/tfjs-backend-wasm');
    const lines: string[] = [];
    installThreadedWasm(2, (line) => lines.push(line), '/nonexistent/wasm-thread-worker.cjs');
    expect(await tf.setBackend('wasm')).toBe(true);
    expect(activeWasmThreads()).toBe(1);
    expect(wasmHeapIsShared()).toBe(false);
    expect(lines).toEqual([expect.stringMatching(/^wasm: the 2-thread build did not start \(\/nonexistent\/wasm-thread-worker\.cjs is missing\); using one thread$/)]);
    const y = tf.conv2d(tf.ones([1, 4, 4, 2]) as tf.Tensor4D, tf.ones([3, 3, 2, 1]) as tf.Tensor4D, 1, 'valid');
    expect(Array.from(y.dataSync())).toEqual([18, 18, 18, 18]);
    await tf.setBackend('cpu');
  });
});

describe('--backend wasm on 2 threads, in a process of its own', () => {
  it('computes what cpu computes, refuses onnxruntime after it, and exits by itself', async () => {
    const child = fileURLToPath(new URL('./fixtures/threaded-wasm-child.ts', import.meta.url));
    // A timeout, not a hang, if the pthreads kept Node alive.
    const { stdout } = await promisify(execFile)(process.execPath, ['--import', 'tsx', child], {
      env: { ...process.env, SIMCLR_WASM_THREADS: '2' },
      timeout: 45_000,
    });
    const out = JSON.parse(stdout.trim().split('\n').pop()!);
    expect(out.backend).toBe('wasm');
    expect(out.threads).toBe(2);
    expect(out.shared).toBe(true);
    expect(out.log).toEqual(['backend wasm: 2 threads (SIMCLR_WASM_THREADS sets it)']); // no fallback to one thread

    await tf.setBackend('cpu');
    const values = (n: number, seed: number): Float32Array => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.37 + seed));
    const x = tf.tensor4d(values(2 * 9 * 9 * 8, 1), [2, 9, 9, 8]);
    const w = tf.tensor4d(values(3 * 3 * 8 * 4, 2), [3, 3, 8, 4]);
    const [dx, dw] = tf.grads((a: tf.Tensor, b: tf.Tensor) => tf.sum(tf.square(tf.conv2d(a as tf.Tensor4D, b as tf.Tensor4D, 1, 'same'))))([x, w]);
    const normed = new BatchNorm({ name: 'bn' }).apply(tf.conv2d(x, w, 1, 'same'), { training: true }) as tf.Tensor;
    expectTensorClose(out.dx, dx.dataSync(), { atol: 1e-3, rtol: 1e-4 });
    expectTensorClose(out.dw, dw.dataSync(), { atol: 1e-3, rtol: 1e-4 });
    expectTensorClose(out.normed, normed.dataSync(), { atol: 1e-4, rtol: 1e-4 });

    let ortInstalled = true;
    try {
      createRequire(import.meta.url).resolve('onnxruntime-node');
    } catch {
      ortInstalled = false;
    }
    if (ortInstalled) expect(out.onnxruntime).toMatch(/already runs multi-threaded.*SIMCLR_WASM_THREADS=1/);
    else expect(out.onnxruntime).toMatch(/onnxruntime-node/);
  });
});
