// tfjs-backend-wasm's backend as the project's kernels see it: the WasmBackend type, float32
// views of its heap, and the SIMD loops (simd.ts) instantiated on that heap.
import * as tf from '@tensorflow/tfjs';
import { isWasmMemory, simdRowKernels, type SimdRowKernels } from './simd.ts';

type TensorInfo = tf.TensorInfo;

/** The parts of tfjs-backend-wasm's BackendWasm the project's kernels use beyond the KernelBackend interface. */
export interface WasmBackend extends tf.KernelBackend {
  makeOutput(shape: number[], dtype: tf.DataType): TensorInfo;
  typedArrayFromHeap(info: TensorInfo): Float32Array | Int32Array | Uint8Array;
}

/** The backend, with the emscripten module that owns its heap. */
interface WasmBackendWithHeap extends WasmBackend {
  /** The single-threaded build exports its memory; the threaded one imports it (wasmMemory). */
  wasm: { asm?: { memory?: unknown }; wasmMemory?: unknown };
}

/** A float32 tensor's data on the heap, as a view (take views after the last allocation). */
export function heapF32(backend: WasmBackend, info: TensorInfo): Float32Array {
  return backend.typedArrayFromHeap(info) as Float32Array;
}

/** The SIMD loops (simd.ts) instantiated on the backend's own heap. */
export function simdKernelsOf(backend: WasmBackend): SimdRowKernels {
  const { wasm } = backend as WasmBackendWithHeap;
  const memory = wasm?.asm?.memory ?? wasm?.wasmMemory;
  if (!isWasmMemory(memory)) throw new Error('wasm SIMD kernels: the backend does not expose its WebAssembly.Memory (tfjs-backend-wasm 4.22 does)');
  return simdRowKernels(memory);
}
