import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { BackendUnavailableError, useBackend } from '../../../models/engine/backend.ts';

/** Whether an optional package loads here; a test that needs it (or its absence) is skipped, not passed, otherwise. */
async function loads(specifier: string): Promise<boolean> {
  try {
    await import(/* @vite-ignore */ specifier);
    return true;
  } catch {
    return false;
  }
}

// tfjs-node(-gpu) are optional extras these test machines do not have; onnxruntime-node is an
// optional dependency that installs with npm ci.
const hasTfjsNode = await loads(['@tensorflow', 'tfjs-node'].join('/'));
const hasTfjsNodeGpu = await loads(['@tensorflow', 'tfjs-node-gpu'].join('/'));
const hasOnnxruntime = await loads('onnxruntime-node');

describe('useBackend', () => {
  it('auto takes the first backend that loads and says which', async () => {
    const lines: string[] = [];
    const choice = await useBackend('auto', (l) => lines.push(l));
    expect(tf.getBackend()).toBe(choice.tfName);
    expect(lines.join('\n')).toMatch(new RegExp(`backend auto: using '${choice.name}'`));
  });

  it.skipIf(hasTfjsNode || hasTfjsNodeGpu)(`without tfjs-node, auto takes ${hasOnnxruntime ? 'onnxruntime (installed)' : 'wasm (onnxruntime-node is not installed)'}`, async () => {
    expect((await useBackend('auto')).name).toBe(hasOnnxruntime ? 'onnxruntime' : 'wasm');
  });

  it.skipIf(hasTfjsNodeGpu)('a named backend that is missing is an error, not a fallback', async () => {
    await expect(useBackend('tensorflow-gpu')).rejects.toThrow(BackendUnavailableError);
    await expect(useBackend('tensorflow-gpu')).rejects.toThrow(/@tensorflow\/tfjs-node-gpu is not installed/);
  });

  it('switches between wasm and cpu and trains a conv on wasm', async () => {
    expect((await useBackend('cpu')).tfName).toBe('cpu');
    expect(tf.getBackend()).toBe('cpu');
    await useBackend('wasm');
    expect(tf.getBackend()).toBe('wasm');
    // Conv2DBackpropFilter is not shipped with tfjs-backend-wasm; our kernels make this work.
    const g = tf.grad((w) => tf.sum(tf.conv2d(tf.ones([1, 4, 4, 1]) as tf.Tensor4D, w as tf.Tensor4D, 1, 'valid')));
    const dw = g(tf.ones([3, 3, 1, 1]));
    // Each filter tap sees the all-ones input at 2×2 output positions.
    expect(Array.from(dw.dataSync())).toEqual(new Array(9).fill(4));
  });

  it('refuses an unknown name', async () => {
    await expect(useBackend('webgpu' as never)).rejects.toThrow(/unknown backend 'webgpu'/);
  });

  it.each(['wasm', 'auto'] as const)('refuses a bad SIMCLR_WASM_THREADS for %s instead of skipping wasm', async (name) => {
    const previous = process.env.SIMCLR_WASM_THREADS;
    process.env.SIMCLR_WASM_THREADS = 'many';
    try {
      await expect(useBackend(name)).rejects.toThrow(/SIMCLR_WASM_THREADS must be a whole number from 1 to 8, got 'many'/);
    } finally {
      if (previous === undefined) delete process.env.SIMCLR_WASM_THREADS;
      else process.env.SIMCLR_WASM_THREADS = previous;
    }
  });
});
