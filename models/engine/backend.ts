// Compute backend selection: loads the requested TensorFlow.js backend (or the first that loads,
// for `auto`), registers the project's training kernels where the backend lacks them.
import * as tf from '@tensorflow/tfjs';
import { installLowMemoryGradients } from './gradients.ts';

export const BACKEND_NAMES = ['auto', 'tensorflow-gpu', 'tensorflow', 'onnxruntime', 'wasm', 'cpu'] as const;
export type BackendName = (typeof BACKEND_NAMES)[number];
export type ConcreteBackend = Exclude<BackendName, 'auto'>;

/** Order in which `auto` tries backends: fastest first, the pure-JS one last. */
export const AUTO_ORDER: readonly ConcreteBackend[] = ['tensorflow-gpu', 'tensorflow', 'onnxruntime', 'wasm', 'cpu'];

/** A backend that was asked for by name and cannot be loaded on this machine. */
export class BackendUnavailableError extends Error {
  constructor(
    readonly backend: ConcreteBackend,
    readonly reason: string,
  ) {
    super(`backend '${backend}' is not available: ${reason}`);
    this.name = 'BackendUnavailableError';
  }
}

export interface BackendChoice {
  /** The name the user knows (`wasm`, `tensorflow-gpu`, ...). */
  name: ConcreteBackend;
  /** The name tfjs registered it under (`wasm`, `tensorflow`, `cpu`). */
  tfName: string;
}

async function importOptional(pkg: string): Promise<unknown> {
  // A variable specifier keeps bundlers and type checkers from requiring the optional package.
  return import(/* @vite-ignore */ pkg);
}

async function load(name: ConcreteBackend, log: (line: string) => void): Promise<BackendChoice> {
  switch (name) {
    case 'tensorflow-gpu':
    case 'tensorflow': {
      const pkg = name === 'tensorflow-gpu' ? '@tensorflow/tfjs-node-gpu' : '@tensorflow/tfjs-node';
      try {
        await importOptional(pkg);
      } catch (err) {
        throw new BackendUnavailableError(name, `${pkg} is not installed or failed to load (${firstLine(err)}); see README "GPU and native TensorFlow"`);
      }
      if (!(await tf.setBackend('tensorflow'))) {
        throw new BackendUnavailableError(name, `${pkg} loaded but its 'tensorflow' backend did not initialise`);
      }
      return { name, tfName: 'tensorflow' };
    }
    case 'wasm': {
      await startWasm(log, true);
      if (!(await tf.setBackend('wasm'))) {
        throw new BackendUnavailableError(name, 'the wasm backend did not initialise');
      }
      const { activeWasmThreads } = await import('./wasm/threads.ts');
      const threads = activeWasmThreads();
      log(`backend wasm: ${threads} thread${threads === 1 ? '' : 's'} (SIMCLR_WASM_THREADS sets it)`);
      return { name, tfName: 'wasm' };
    }
    case 'onnxruntime': {
      // The wasm backend with its heavy kernels run by onnxruntime-node (onnx/);
      // it shares wasm's instance, so wasm is initialised first, single-threaded: onnxruntime-node
      // takes no views of the threaded build's shared heap, and runs the heavy kernels on every
      // core itself. onnxruntime-node is checked first, so that `auto` falling back to wasm
      // still gets wasm's threads.
      const { loadOrtSync } = await import('./onnx/native.ts');
      const { registerOnnxruntimeBackend } = await import('./onnx/register.ts');
      try {
        loadOrtSync();
      } catch (err) {
        throw new BackendUnavailableError(name, `${firstLine(err)} (onnxruntime-node is an optional dependency)`);
      }
      await startWasm(log, false);
      if (!(await tf.setBackend('wasm'))) {
        throw new BackendUnavailableError(name, 'the wasm backend it builds on did not initialise');
      }
      const { wasmHeapIsShared } = await import('./wasm/threads.ts');
      if (wasmHeapIsShared()) {
        throw new BackendUnavailableError(
          name,
          'the wasm backend already runs multi-threaded in this process (its shared heap cannot be handed to onnxruntime-node); choose onnxruntime before wasm, or set SIMCLR_WASM_THREADS=1',
        );
      }
      try {
        registerOnnxruntimeBackend();
      } catch (err) {
        throw new BackendUnavailableError(name, `${firstLine(err)} (onnxruntime-node is an optional dependency)`);
      }
      if (!(await tf.setBackend('onnxruntime'))) {
        throw new BackendUnavailableError(name, "its 'onnxruntime' backend did not initialise");
      }
      return { name, tfName: 'onnxruntime' };
    }
    case 'cpu': {
      await tf.setBackend('cpu');
      return { name, tfName: 'cpu' };
    }
  }
}

/**
 * Loads tfjs-backend-wasm with the project's training kernels; with `threaded`, its first start
 * uses wasmThreadCount() threads (wasm/threads.ts).
 */
async function startWasm(log: (line: string) => void, threaded: boolean): Promise<void> {
  await import('@tensorflow/tfjs-backend-wasm');
  const { registerWasmTrainingKernels } = await import('./wasm/kernels.ts');
  registerWasmTrainingKernels();
  if (threaded) {
    const { installThreadedWasm, wasmThreadCount } = await import('./wasm/threads.ts');
    installThreadedWasm(wasmThreadCount(), log);
  }
}

function firstLine(err: unknown): string {
  return String(err instanceof Error ? err.message : err).split('\n')[0];
}

/**
 * Makes `requested` the active tfjs backend. `auto` takes the first of AUTO_ORDER that loads and
 * reports the choice through `log`; a named backend that cannot load throws BackendUnavailableError.
 */
export async function useBackend(
  requested: BackendName,
  log: (line: string) => void = () => {},
): Promise<BackendChoice> {
  if (!(BACKEND_NAMES as readonly string[]).includes(requested)) {
    throw new Error(`unknown backend '${requested}' (choose from ${BACKEND_NAMES.join(', ')})`);
  }
  // Every backend trains with the backprop that frees as it goes (gradients.ts).
  installLowMemoryGradients();
  if (requested === 'wasm' || requested === 'auto') {
    // A bad SIMCLR_WASM_THREADS is an error here, not a reason for `auto` to skip wasm.
    const { wasmThreadCount } = await import('./wasm/threads.ts');
    wasmThreadCount();
  }
  if (requested !== 'auto') {
    const choice = await load(requested, log);
    await tf.ready();
    return choice;
  }
  const skipped: string[] = [];
  for (const name of AUTO_ORDER) {
    try {
      const choice = await load(name, log);
      await tf.ready();
      log(`backend auto: using '${name}'${skipped.length ? ` (${skipped.join('; ')})` : ''}`);
      return choice;
    } catch (err) {
      skipped.push(`${name} unavailable`);
    }
  }
  throw new Error('no tfjs backend could be loaded');
}
