// onnxruntime-node's native session, used synchronously: the binding under its promise-returning
// InferenceSession, pinned to the onnxruntime-node version it was checked against.
import { createRequire } from 'node:module';

/** The onnxruntime-node version whose native binding layout this file relies on. */
export const ORT_PINNED_VERSION = '1.30.0';

/** onnxruntime-common's Tensor constructor, as the native binding expects feeds and fetches. */
type OrtTensorCtor = new (type: 'float32', data: Float32Array, dims: readonly number[]) => object;

/** The native InferenceSession class of onnxruntime_binding.node (1.30.0). */
export interface NativeSession {
  loadModel(buffer: ArrayBufferLike, byteOffset: number, byteLength: number, options: object): void;
  /** Synchronous: runs the graph on the calling thread (plus ORT's intra-op pool) and returns. */
  run(feeds: Record<string, object>, fetches: Record<string, object | null>, options?: object): Record<string, unknown>;
  dispose(): void;
  readonly inputNames?: string[];
  readonly outputNames?: string[];
}

export interface OrtSync {
  version: string;
  Session: new () => NativeSession;
  Tensor: OrtTensorCtor;
}

/** onnxruntime-node is missing, fails to load, or is not the version the sync path was checked on. */
export class OnnxRuntimeUnavailableError extends Error {
  constructor(reason: string) {
    super(reason);
    this.name = 'OnnxRuntimeUnavailableError';
  }
}

/**
 * Loads onnxruntime-node's native binding and returns its synchronous session class. Throws
 * OnnxRuntimeUnavailableError when the package is absent or its internals are not where 1.30.0
 * keeps them (dist/binding.js exporting `binding.InferenceSession` and `initOrt`).
 *
 * tfjs kernels are synchronous; onnxruntime-node's public InferenceSession.run returns a
 * promise, but it is a thin wrapper (dist/backend.js) that calls its native session's run(feeds,
 * fetches, options) inside setImmediate: that native call is synchronous. So the native binding
 * is used directly, pinned to the exact version it was checked against (ORT_PINNED_VERSION) and
 * guarded by a test that fails when it moves.
 */
export function loadOrtSync(): OrtSync {
  const require = createRequire(import.meta.url);
  let version: string;
  let bindingModule: { binding?: { InferenceSession?: unknown }; initOrt?: unknown };
  let Tensor: unknown;
  try {
    version = (require('onnxruntime-node/package.json') as { version: string }).version;
  } catch (err) {
    throw new OnnxRuntimeUnavailableError(`onnxruntime-node is not installed (${firstLine(err)})`);
  }
  if (version !== ORT_PINNED_VERSION) {
    throw new OnnxRuntimeUnavailableError(
      `onnxruntime-node ${version} is installed; the synchronous path was checked against ${ORT_PINNED_VERSION} only (models/engine/onnx/native.ts)`,
    );
  }
  try {
    bindingModule = require('onnxruntime-node/dist/binding.js');
    Tensor = (require('onnxruntime-node') as { Tensor?: unknown }).Tensor;
  } catch (err) {
    throw new OnnxRuntimeUnavailableError(`onnxruntime-node failed to load its native binding (${firstLine(err)})`);
  }
  const Session = bindingModule.binding?.InferenceSession;
  const proto = (Session as { prototype?: Record<string, unknown> } | undefined)?.prototype;
  if (
    typeof Session !== 'function' ||
    typeof bindingModule.initOrt !== 'function' ||
    typeof proto?.loadModel !== 'function' ||
    typeof proto?.run !== 'function' ||
    typeof proto?.dispose !== 'function' ||
    typeof Tensor !== 'function'
  ) {
    throw new OnnxRuntimeUnavailableError(
      `onnxruntime-node ${version}: dist/binding.js no longer exports binding.InferenceSession{loadModel, run, dispose} and initOrt`,
    );
  }
  // Registers the Tensor class the native side builds outputs with, and the log level; once.
  (bindingModule.initOrt as () => void)();
  return { version, Session: Session as new () => NativeSession, Tensor: Tensor as OrtTensorCtor };
}

export function firstLine(err: unknown): string {
  return String(err instanceof Error ? err.message : err).split('\n')[0];
}
