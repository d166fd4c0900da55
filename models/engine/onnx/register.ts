// Registers the 'onnxruntime' tfjs backend: the wasm backend's instance under a second name, with
// wasm's kernels except DELEGATED_KERNELS, which run on onnxruntime-node (kernels.ts).
import * as tf from '@tensorflow/tfjs';
// Imported for its side effect: the wasm backend and its kernels must exist before we copy them.
import '@tensorflow/tfjs-backend-wasm';
import { availableParallelism } from 'node:os';
import { conv2DBackpropFilter, conv2DBackpropInput, convForward, matMul, WASM, type KernelArgs } from './kernels.ts';
import { loadOrtSync } from './native.ts';
import { SessionCache, type OnnxKernelOptions, type OnnxKernelStats } from './sessions.ts';

export const ONNX_BACKEND_NAME = 'onnxruntime';

type TensorInfo = tf.TensorInfo;

/** The kernels run by onnxruntime; every other kernel of the backend is wasm's own. */
export const DELEGATED_KERNELS = [
  'Conv2D',
  'FusedConv2D',
  'Conv2DBackpropInput',
  'Conv2DBackpropFilter',
  'BatchMatMul',
  '_FusedMatMul',
] as const;

function delegatedKernel(cache: SessionCache, name: (typeof DELEGATED_KERNELS)[number]): tf.KernelFunc {
  const run = (args: KernelArgs): TensorInfo => {
    switch (name) {
      case 'Conv2D':
      case 'FusedConv2D':
        return convForward(cache, name, args);
      case 'Conv2DBackpropInput':
        return conv2DBackpropInput(cache, args);
      case 'Conv2DBackpropFilter':
        return conv2DBackpropFilter(cache, args);
      case 'BatchMatMul':
      case '_FusedMatMul':
        return matMul(cache, name, args);
    }
  };
  return run as unknown as tf.KernelFunc;
}

/**
 * The wasm backend instance seen under a second name. Everything is forwarded (one heap, one
 * data map, so tensors pass between 'wasm' and 'onnxruntime' without copies) except dispose():
 * the 'wasm' registration owns the instance, and tf.removeBackend('onnxruntime') or an engine
 * reset must not free it twice.
 */
function aliasBackend(target: tf.KernelBackend): tf.KernelBackend {
  const bound = new Map<PropertyKey, { original: unknown; bound: unknown }>();
  return new Proxy(target, {
    get(t, prop) {
      if (prop === 'dispose') return () => {};
      const value: unknown = Reflect.get(t, prop, t);
      if (typeof value !== 'function') return value;
      let cached = bound.get(prop);
      if (cached?.original !== value) {
        cached = { original: value, bound: (value as (...a: unknown[]) => unknown).bind(t) };
        bound.set(prop, cached);
      }
      return cached.bound;
    },
    set(t, prop, value) {
      return Reflect.set(t, prop, value, t);
    },
  });
}

export interface OnnxRuntimeBackend {
  /** The registered tfjs backend name ('onnxruntime'). */
  name: string;
  ortVersion: string;
  threads: number;
  stats(): OnnxKernelStats;
}

// The tfjs kernel registry is process-global, so the registration (and the session cache its
// kernels close over) is too: a second call returns the first registration.
let registered: OnnxRuntimeBackend | undefined;

/**
 * Registers the tfjs backend 'onnxruntime': the already initialised wasm backend's instance under
 * a second name, with all of wasm's kernels (including the project's training kernels, so call
 * registerWasmTrainingKernels() first) and the DELEGATED_KERNELS replaced by onnxruntime ones.
 * `--backend wasm` keeps wasm's own kernels: registrations are per backend name.
 * Throws OnnxRuntimeUnavailableError when onnxruntime-node cannot be used. A second call returns
 * the first registration (its options stand: kernels and sessions are per process).
 */
export function registerOnnxruntimeBackend(options: OnnxKernelOptions = {}): OnnxRuntimeBackend {
  if (registered !== undefined) return registered;
  const ort = loadOrtSync();
  const wasmInstance = tf.findBackend(WASM);
  if (wasmInstance === null || wasmInstance === undefined) {
    throw new Error("registerOnnxruntimeBackend: initialise the 'wasm' backend first (await tf.setBackend('wasm'))");
  }
  const cache = new SessionCache(ort, options);
  const alias = aliasBackend(wasmInstance);
  // Priority 0: never picked by tfjs on its own; only by name.
  tf.registerBackend(ONNX_BACKEND_NAME, () => alias, 0);
  const delegated = new Set<string>(DELEGATED_KERNELS);
  for (const config of tf.getKernelsForBackend(WASM)) {
    if (delegated.has(config.kernelName)) continue;
    if (tf.getKernel(config.kernelName, ONNX_BACKEND_NAME) !== undefined) continue;
    tf.registerKernel({ ...config, backendName: ONNX_BACKEND_NAME });
  }
  for (const name of DELEGATED_KERNELS) {
    if (tf.getKernel(name, ONNX_BACKEND_NAME) !== undefined) tf.unregisterKernel(name, ONNX_BACKEND_NAME);
    tf.registerKernel({ kernelName: name, backendName: ONNX_BACKEND_NAME, kernelFunc: delegatedKernel(cache, name) });
  }
  registered = {
    name: ONNX_BACKEND_NAME,
    ortVersion: ort.version,
    threads: options.threads ?? availableParallelism(),
    stats: () => cache.stats(),
  };
  return registered;
}
