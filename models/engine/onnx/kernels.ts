// The 'onnxruntime' tfjs backend: the wasm backend with its heavy kernels (convolutions, their
// gradients, matmuls) run by onnxruntime-node's multi-threaded CPU provider, synchronously.
//
// Design. tfjs kernels are synchronous; onnxruntime-node's public InferenceSession.run returns a
// promise, but it is a thin wrapper (dist/backend.js) that calls its native session's run(feeds,
// fetches, options) inside setImmediate: that native call is synchronous. We use the native
// binding directly (dist/binding.js), pinned to the exact onnxruntime-node version we checked it
// against (ORT_PINNED_VERSION) and guarded by a test that fails when it moves.
// Each (op, shapes, attributes) gets a tiny ONNX graph, built in TypeScript (proto.ts), whose
// native session is created once and cached. Inputs are views of the wasm heap (the native side
// wraps them without copying); outputs are preallocated on the wasm heap and passed as fetches, so
// ORT writes results in place. Nothing in JS runs while a native run is in flight, so the heap
// cannot grow (and detach the views) under it.
import * as tf from '@tensorflow/tfjs';
// Imported for its side effect: the wasm backend and its kernels must exist before we copy them.
import '@tensorflow/tfjs-backend-wasm';
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import { encodeModel, OnnxDataType, onnxTensor, type OnnxNode, type OnnxTensor } from './proto.ts';
import type { WasmBackend } from '../wasm/heap.ts';

export const ONNX_BACKEND_NAME = 'onnxruntime';
/** The onnxruntime-node version whose native binding layout this file relies on. */
export const ORT_PINNED_VERSION = '1.30.0';
/** Opset of the generated graphs: Clip with min/max inputs (11+), Slice with steps (10+). */
const OPSET = 17;
const WASM = 'wasm';
/** onnxruntime's contrib domain of blocked-layout (NCHWc) CPU kernels. */
const NCHWC = 'com.microsoft.nchwc';
const FLOAT = OnnxDataType.FLOAT;

type TensorInfo = tf.TensorInfo;
type Pads4 = [top: number, bottom: number, left: number, right: number];


// ---------------------------------------------------------------------------------------------
// The synchronous native path

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
      `onnxruntime-node ${version} is installed; the synchronous path was checked against ${ORT_PINNED_VERSION} only (models/engine/onnx/kernels.ts)`,
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

function firstLine(err: unknown): string {
  return String(err instanceof Error ? err.message : err).split('\n')[0];
}

// ---------------------------------------------------------------------------------------------
// Session cache

export interface OnnxKernelOptions {
  /** ORT intra-op threads per session; default: every core (os.availableParallelism()). */
  threads?: number;
  /**
   * Let ORT's pool threads busy-wait for the next run. Off by default: between two ORT runs the
   * main thread runs wasm kernels, and spinning workers take the cores it needs (measured 20 vs
   * 32 ms for a 3×3 convolution on a loaded 2-core machine).
   */
  spinning?: boolean;
}

interface GraphSpec {
  nodes: OnnxNode[];
  inputs: { name: string; shape: readonly number[] }[];
  outputs: { name: string; shape: readonly number[] }[];
  initializers?: OnnxTensor[];
}

interface CachedSession {
  session: NativeSession;
  inputs: { name: string; shape: readonly number[] }[];
  outputs: { name: string; shape: readonly number[] }[];
}

export interface OnnxKernelStats {
  /** Native sessions created (one per distinct op, shapes and attributes). */
  sessions: number;
  /** Native runs, per tfjs kernel name. */
  runs: Record<string, number>;
  /** MLAS's NCHWc channel block used by the blocked convolutions; null until probed, 0 if absent. */
  blockSize: number | null;
}

class SessionCache {
  private readonly sessions = new Map<string, CachedSession>();
  private readonly runs: Record<string, number> = {};
  private readonly sessionOptions: object;

  constructor(
    private readonly ort: OrtSync,
    { threads = availableParallelism(), spinning = false }: OnnxKernelOptions,
  ) {
    if (!Number.isInteger(threads) || threads < 1) throw new Error(`onnxruntime.threads must be a positive integer, got ${threads}`);
    this.sessionOptions = {
      intraOpNumThreads: threads,
      interOpNumThreads: 1, // one node per graph: nothing to run side by side
      graphOptimizationLevel: 'all',
      executionMode: 'sequential',
      extra: { session: { intra_op: { allow_spinning: spinning ? '1' : '0' } } },
    };
  }

  get(key: string, build: () => GraphSpec): CachedSession {
    let entry = this.sessions.get(key);
    if (entry === undefined) {
      const spec = build();
      const model = encodeModel({
        opset: OPSET,
        extraOpsets: [{ domain: NCHWC, version: 1 }],
        graph: {
          name: key,
          nodes: spec.nodes,
          initializers: spec.initializers,
          inputs: spec.inputs.map(({ name, shape }) => ({ name, elemType: FLOAT, shape })),
          outputs: spec.outputs.map(({ name, shape }) => ({ name, elemType: FLOAT, shape })),
        },
      });
      const session = new this.ort.Session();
      try {
        session.loadModel(model.buffer, model.byteOffset, model.byteLength, this.sessionOptions);
      } catch (err) {
        throw new Error(`onnxruntime could not load the graph for ${key}: ${firstLine(err)}`);
      }
      entry = { session, inputs: spec.inputs, outputs: spec.outputs };
      this.sessions.set(key, entry);
    }
    return entry;
  }

  /** Runs synchronously; `outputs` are written in place. Arrays follow the spec's order. */
  run(kernel: string, entry: CachedSession, inputs: Float32Array[], outputs: Float32Array[]): void {
    const feeds: Record<string, object> = {};
    entry.inputs.forEach(({ name, shape }, i) => (feeds[name] = new this.ort.Tensor('float32', inputs[i], shape)));
    const fetches: Record<string, object> = {};
    entry.outputs.forEach(({ name, shape }, i) => (fetches[name] = new this.ort.Tensor('float32', outputs[i], shape)));
    entry.session.run(feeds, fetches);
    this.runs[kernel] = (this.runs[kernel] ?? 0) + 1;
  }

  stats(): OnnxKernelStats {
    return { sessions: this.sessions.size, runs: { ...this.runs }, blockSize: this.blockSizeProbed ?? null };
  }

  private blockSizeProbed: number | undefined;

  /**
   * MLAS's NCHWc channel block (8 with AVX2, 16 with AVX-512), read once from the output shape of
   * a ReorderInput of 4 channels (ORT pads the channels to the block); 0 when the blocked ops are
   * not there, and the convolutions keep their plain-ONNX graphs.
   */
  blockSize(): number {
    if (this.blockSizeProbed === undefined) {
      this.blockSizeProbed = 0;
      try {
        const model = encodeModel({
          opset: OPSET,
          extraOpsets: [{ domain: NCHWC, version: 1 }],
          graph: {
            name: 'block_size_probe',
            nodes: [{ opType: 'ReorderInput', domain: NCHWC, inputs: ['x'], outputs: ['y'], attributes: { channels_last: { int: 1 } } }],
            inputs: [{ name: 'x', elemType: FLOAT, shape: [1, 1, 1, 4] }],
            outputs: [{ name: 'y', elemType: FLOAT, shape: [1, -1, 1, 1] }],
          },
        });
        const session = new this.ort.Session();
        try {
          session.loadModel(model.buffer, model.byteOffset, model.byteLength, this.sessionOptions);
          const out = session.run({ x: new this.ort.Tensor('float32', new Float32Array(4), [1, 1, 1, 4]) }, { y: null }) as {
            y?: { dims?: readonly number[] };
          };
          const block = Number(out.y?.dims?.[1]);
          if (Number.isInteger(block) && block >= 4 && block % 4 === 0) this.blockSizeProbed = block;
        } finally {
          session.dispose();
        }
      } catch {
        // No com.microsoft.nchwc ops in this build: the plain graphs stay.
      }
    }
    return this.blockSizeProbed;
  }

  dispose(): void {
    for (const { session } of this.sessions.values()) session.dispose();
    this.sessions.clear();
  }
}

// ---------------------------------------------------------------------------------------------
// Graph pieces

const NHWC_TO_NCHW = [0, 3, 1, 2];
const NCHW_TO_NHWC = [0, 2, 3, 1];
/** tfjs filter [kH, kW, Ci, Co] → ONNX Conv weight [Co, Ci, kH, kW] (also ConvTranspose's [C, M, kH, kW]). */
const HWIO_TO_OIHW = [3, 2, 0, 1];

function transposeNode(input: string, output: string, perm: number[]): OnnxNode {
  return { opType: 'Transpose', inputs: [input], outputs: [output], attributes: { perm: { ints: perm } } };
}

type Activation = 'linear' | 'relu' | 'relu6' | 'elu' | 'sigmoid' | 'leakyrelu' | 'prelu';
const ACTIVATIONS: readonly string[] = ['linear', 'relu', 'relu6', 'elu', 'sigmoid', 'leakyrelu', 'prelu'];

/**
 * Nodes computing `output = activation(input)` as tfjs's fused kernels define it; PRelu takes
 * its slope from the graph input `slope`, broadcast against the NHWC / [B, M, N] result.
 */
function activationNodes(activation: Activation, input: string, output: string, alpha: number, spec: GraphSpec): void {
  switch (activation) {
    case 'linear':
      spec.nodes.push({ opType: 'Identity', inputs: [input], outputs: [output] });
      return;
    case 'relu':
      spec.nodes.push({ opType: 'Relu', inputs: [input], outputs: [output] });
      return;
    case 'relu6':
      spec.initializers = [...(spec.initializers ?? []), onnxTensor.float('zero', [0], []), onnxTensor.float('six', [6], [])];
      spec.nodes.push({ opType: 'Clip', inputs: [input, 'zero', 'six'], outputs: [output] });
      return;
    case 'elu':
      spec.nodes.push({ opType: 'Elu', inputs: [input], outputs: [output], attributes: { alpha: { float: 1 } } });
      return;
    case 'sigmoid':
      spec.nodes.push({ opType: 'Sigmoid', inputs: [input], outputs: [output] });
      return;
    case 'leakyrelu':
      spec.nodes.push({ opType: 'LeakyRelu', inputs: [input], outputs: [output], attributes: { alpha: { float: alpha } } });
      return;
    case 'prelu':
      spec.nodes.push({ opType: 'PRelu', inputs: [input, 'slope'], outputs: [output] });
      return;
  }
}

/**
 * The tail of a fused kernel (tfjs's _FusedMatMul / FusedConv2D): `input` plus the graph input
 * `bias` when `addBias`, then the activation, written to `output`.
 */
function biasActivationNodes(spec: GraphSpec, input: string, addBias: boolean, activation: Activation, alpha: number, output: string): void {
  let pre = input;
  if (addBias) {
    spec.nodes.push({ opType: 'Add', inputs: [input, 'bias'], outputs: [`${input}_biased`] });
    pre = `${input}_biased`;
  }
  activationNodes(activation, pre, output, alpha, spec);
}

/** A fused kernel's tensors in its graph's input order: the operands, then bias and PReLU slope where given. */
function fusedInputs(operands: TensorInfo[], bias: TensorInfo | undefined, slope: TensorInfo | undefined): TensorInfo[] {
  return [...operands, ...(bias === undefined ? [] : [bias]), ...(slope === undefined ? [] : [slope])];
}

// ---------------------------------------------------------------------------------------------
// Blocked (NCHWc) convolutions
//
// MLAS's fast convolutions work on activations in NCHWc layout ([N, C/B, H, W, B], B = the
// block size) with filters reordered to match; onnxruntime's graph optimiser only switches a Conv
// to them when its weights are constant initializers, which ours (graph inputs) are not. So the
// graphs call the com.microsoft.nchwc ops themselves: ReorderInput from NHWC (channels_last),
// nchwc Conv with the filter reordered in the graph, ReorderOutput back to NHWC. Measured on a
// 2-core AVX2 machine, 3×3 convolution at batch 64: 4.9 ms against 11.3 ms for Transpose + Conv +
// Transpose, the same per layer for 16, 32 and 64 channels.

type BlockedRoute = 'blocked' | 'nchw';

/** How an NHWC input of `channels` enters a blocked convolution, or undefined when it cannot. */
function blockedRoute(channels: number, block: number): BlockedRoute | undefined {
  if (block === 0) return undefined;
  if (channels % 4 === 0) return 'blocked'; // ReorderInput pads the channels up to the block
  if (channels < block) return 'nchw'; // read as plain NCHW, with an OIHWBo filter
  return undefined;
}

const roundUp = (n: number, block: number): number => Math.ceil(n / block) * block;

/** Nodes bringing NHWC `input` into the layout the blocked Conv reads; returns its name. */
function blockedInputNodes(spec: GraphSpec, input: string, route: BlockedRoute): string {
  const out = `${input}_blocked`;
  if (route === 'blocked') {
    spec.nodes.push({ opType: 'ReorderInput', domain: NCHWC, inputs: [input], outputs: [out], attributes: { channels_last: { int: 1 } } });
  } else {
    spec.nodes.push(transposeNode(input, out, NHWC_TO_NCHW));
  }
  return out;
}

/**
 * Nodes reordering the HWIO filter `filter` [kH, kW, ci, co] into the blocked Conv's layout,
 * zero-padding the channels to the block: OIHWBiBo [co/B, ci/B, kH, kW, Bi, Bo] for a blocked
 * input, OIHWBo [co/B, ci, kH, kW, Bo] for an NCHW one; returns the name of the result, shaped
 * [coP, ciP (or ci), kH, kW] as the Conv's W input.
 */
function blockedFilterNodes(spec: GraphSpec, filter: string, dims: [kH: number, kW: number, ci: number, co: number], route: BlockedRoute, block: number): string {
  const [kH, kW, ci, co] = dims;
  const coP = roundUp(co, block);
  const ciP = route === 'blocked' ? roundUp(ci, block) : ci;
  let padded = filter;
  if (coP !== co || ciP !== ci) {
    padded = `${filter}_padded`;
    spec.initializers!.push(onnxTensor.int64(`${filter}_pads`, [0, 0, 0, 0, 0, 0, ciP - ci, coP - co]));
    spec.nodes.push({ opType: 'Pad', inputs: [filter, `${filter}_pads`], outputs: [padded] });
  }
  const split = route === 'blocked' ? [kH, kW, ciP / block, block, coP / block, block] : [kH, kW, ci, coP / block, block];
  const perm = route === 'blocked' ? [4, 2, 0, 1, 3, 5] : [3, 2, 0, 1, 4];
  spec.initializers!.push(onnxTensor.int64(`${filter}_split`, split), onnxTensor.int64(`${filter}_oihw`, [coP, ciP, kH, kW]));
  spec.nodes.push(
    { opType: 'Reshape', inputs: [padded, `${filter}_split`], outputs: [`${filter}_split6`] },
    transposeNode(`${filter}_split6`, `${filter}_blocks`, perm),
    { opType: 'Reshape', inputs: [`${filter}_blocks`, `${filter}_oihw`], outputs: [`${filter}_blocked`] },
  );
  return `${filter}_blocked`;
}

/** A per-channel bias [co] zero-padded to the block, as the blocked Conv's B input. */
function blockedBiasNodes(spec: GraphSpec, bias: string, co: number, block: number): string {
  const coP = roundUp(co, block);
  if (coP === co) return bias;
  spec.initializers!.push(onnxTensor.int64(`${bias}_pads`, [0, coP - co]));
  spec.nodes.push({ opType: 'Pad', inputs: [bias, `${bias}_pads`], outputs: [`${bias}_padded`] });
  return `${bias}_padded`;
}

interface BlockedConvAttrs {
  strides: [number, number];
  dilations: [number, number];
  /** ONNX order: [top, left, bottom, right]. */
  pads: [number, number, number, number];
  kernel: [number, number];
  relu: boolean;
}

/**
 * The whole blocked convolution of NHWC `input` (`ci` channels) with HWIO `filter`, written to
 * NHWC `output` with `co` channels; `bias` (per channel) and a fused ReLU are optional.
 */
function blockedConvNodes(
  spec: GraphSpec,
  io: { input: string; filter: string; bias?: string; output: string },
  dims: [kH: number, kW: number, ci: number, co: number],
  attrs: BlockedConvAttrs,
  route: BlockedRoute,
  block: number,
): void {
  const co = dims[3];
  const x = blockedInputNodes(spec, io.input, route);
  const w = blockedFilterNodes(spec, io.filter, dims, route, block);
  const inputs = [x, w];
  if (io.bias !== undefined) inputs.push(blockedBiasNodes(spec, io.bias, co, block));
  spec.nodes.push(
    {
      opType: 'Conv',
      domain: NCHWC,
      inputs,
      outputs: [`${io.output}_blocked`],
      attributes: {
        kernel_shape: { ints: attrs.kernel },
        strides: { ints: attrs.strides },
        dilations: { ints: attrs.dilations },
        pads: { ints: attrs.pads },
        ...(attrs.relu ? { activation: { string: 'Relu' } } : {}),
      },
    },
    {
      opType: 'ReorderOutput',
      domain: NCHWC,
      inputs: [`${io.output}_blocked`],
      outputs: [io.output],
      attributes: { channels_last: { int: 1 }, channels: { int: co } },
    },
  );
}

// ---------------------------------------------------------------------------------------------
// Kernels

interface KernelArgs {
  inputs: tf.NamedTensorInfoMap;
  backend: tf.KernelBackend;
  attrs: tf.NamedAttrMap;
}

/** Runs the stock wasm kernel instead (dtype, layout or geometry the ORT graphs do not cover). */
function wasmKernel(kernelName: string, args: KernelArgs): TensorInfo {
  const kernel = tf.getKernel(kernelName, WASM);
  if (kernel === undefined) throw new Error(`onnxruntime backend: the wasm kernel '${kernelName}' is not registered`);
  return kernel.kernelFunc(args as unknown as Parameters<tf.KernelFunc>[0]) as TensorInfo;
}

function allFloat32(...infos: (TensorInfo | undefined)[]): boolean {
  return infos.every((i) => i === undefined || (i.dtype === 'float32' && i.shape.every((d) => d > 0)));
}

/**
 * Allocates the outputs on the wasm heap (tfjs shapes `outShapes`; the graph may view the same
 * bytes in another shape), then takes all heap views (allocation may move the heap), then runs.
 */
function runIntoMany(cache: SessionCache, kernel: string, backend: tf.KernelBackend, entry: CachedSession, inputs: TensorInfo[], outShapes: number[][]): TensorInfo[] {
  const wasm = backend as WasmBackend;
  const outs = outShapes.map((shape) => wasm.makeOutput(shape, 'float32'));
  const views = inputs.map((i) => wasm.typedArrayFromHeap(i) as Float32Array);
  cache.run(kernel, entry, views, outs.map((o) => wasm.typedArrayFromHeap(o) as Float32Array));
  return outs;
}

/** runIntoMany for a graph with one output, in the graph's own shape. */
function runInto(cache: SessionCache, kernel: string, backend: tf.KernelBackend, entry: CachedSession, inputs: TensorInfo[]): TensorInfo {
  return runIntoMany(cache, kernel, backend, entry, inputs, [entry.outputs[0].shape as number[]])[0];
}

/**
 * Largest output one native run writes. onnxruntime-node copies every output into a fresh
 * ArrayBuffer (even a preallocated one); past glibc's 32 MiB mmap ceiling each of those is a new
 * mapping, faulted in page by page and unmapped again (8,193 faults per 32 MiB output). ResNet-20
 * at batch 512 (SimCLR batch 256, two views), interleaved A/B: 3.47 s per step with outputs of at
 * most 8 MiB, 4.00 s without (2 MiB: no better than whole); neutral at batch 256.
 */
const MAX_OUTPUT_BYTES = 8 << 20;

/**
 * runInto for a graph that treats each image on its own (a convolution, its input gradient):
 * when the output would pass MAX_OUTPUT_BYTES, the same graph built for a slice of the batch
 * runs on consecutive slices of the first input (views of the heap) into consecutive slices of
 * the output; the other inputs (filter, per-channel bias) are passed whole to every run.
 */
function runPerImage(
  cache: SessionCache,
  kernel: string,
  backend: tf.KernelBackend,
  { key, build, inputs, outShape }: { key: string; build: () => GraphSpec; inputs: TensorInfo[]; outShape: number[] },
): TensorInfo {
  const batch = outShape[0];
  const imageFloats = tf.util.sizeFromShape(outShape) / batch;
  let slice = batch;
  while (slice > 1 && slice * imageFloats * 4 > MAX_OUTPUT_BYTES) slice--;
  while (batch % slice !== 0) slice--;
  const batchSized = inputs.slice(1).some((i) => i.shape.length === 4 && i.shape[0] === batch);
  if (slice === batch || batchSized) return runInto(cache, kernel, backend, cache.get(key, build), inputs);
  const entry = cache.get(`${key}|batch${slice}`, () => {
    const spec = build();
    const withBatch = (shape: readonly number[]): number[] => [slice, ...shape.slice(1)];
    return {
      ...spec,
      inputs: spec.inputs.map((input, i) => (i === 0 ? { ...input, shape: withBatch(input.shape) } : input)),
      outputs: [{ ...spec.outputs[0], shape: withBatch(spec.outputs[0].shape) }],
    };
  });
  const wasm = backend as WasmBackend;
  const out = wasm.makeOutput(outShape, 'float32');
  const views = inputs.map((i) => wasm.typedArrayFromHeap(i) as Float32Array);
  const outView = wasm.typedArrayFromHeap(out) as Float32Array;
  const inFloats = views[0].length / batch;
  for (let start = 0; start < batch; start += slice) {
    const first = views[0].subarray(start * inFloats, (start + slice) * inFloats);
    cache.run(kernel, entry, [first, ...views.slice(1)], [outView.subarray(start * imageFloats, (start + slice) * imageFloats)]);
  }
  return out;
}

function shapeKey(...infos: (TensorInfo | undefined)[]): string {
  return infos.map((i) => (i === undefined ? '-' : i.shape.join('x'))).join(',');
}

interface ConvGeometry {
  info: tf.backend_util.Conv2DInfo;
  pads: Pads4;
}

function convGeometry(
  xShape: number[],
  filterShape: number[],
  attrs: tf.NamedAttrMap,
): ConvGeometry | undefined {
  const { strides, pad, dataFormat, dilations, dimRoundingMode } = attrs as unknown as tf.Conv2DAttrs;
  if (dataFormat !== undefined && dataFormat !== 'NHWC') return undefined;
  const info = tf.backend_util.computeConv2DInfo(
    xShape as [number, number, number, number],
    filterShape as [number, number, number, number],
    strides,
    dilations ?? 1,
    pad,
    dimRoundingMode,
  );
  const { top, bottom, left, right } = info.padInfo;
  // ONNX sizes outputs with floor(); a pad given with a ceil/round dimRoundingMode may differ.
  const onnxOut = (size: number, before: number, after: number, k: number, s: number): number => Math.floor((size + before + after - k) / s) + 1;
  if (
    onnxOut(info.inHeight, top, bottom, info.effectiveFilterHeight, info.strideHeight) !== info.outHeight ||
    onnxOut(info.inWidth, left, right, info.effectiveFilterWidth, info.strideWidth) !== info.outWidth ||
    Math.min(top, bottom, left, right) < 0
  ) {
    return undefined;
  }
  return { info, pads: [top, bottom, left, right] };
}

/**
 * Conv2D and FusedConv2D: the blocked NCHWc convolution where the input channels allow it (a
 * per-channel bias as the Conv's B input, a ReLU fused into it), else NHWC → NCHW transposes
 * around ONNX Conv; other activations, and a bias that is not per channel, applied afterwards in
 * NHWC (where a PReLU slope broadcasts as in tfjs).
 */
function convForward(cache: SessionCache, kernelName: 'Conv2D' | 'FusedConv2D', args: KernelArgs): TensorInfo {
  const { x, filter, bias, preluActivationWeights } = args.inputs as unknown as Record<string, TensorInfo | undefined>;
  const attrs = args.attrs as unknown as tf.FusedConv2DAttrs;
  const activation = (attrs.activation ?? 'linear') as Activation;
  const alpha = attrs.leakyreluAlpha ?? 0.2;
  const geometry = convGeometry(x!.shape, filter!.shape, args.attrs);
  if (geometry === undefined || !allFloat32(x, filter, bias, preluActivationWeights) || !ACTIVATIONS.includes(activation)) {
    return wasmKernel(kernelName, args);
  }
  const { info, pads } = geometry;
  const outChannels = filter!.shape[3];
  const channelBias = bias !== undefined && bias.shape.length === 1 && bias.shape[0] === outChannels;
  const block = cache.blockSize();
  const route = blockedRoute(x!.shape[3], block);
  const key = `${kernelName}|${shapeKey(x, filter, bias, preluActivationWeights)}|s${info.strideHeight},${info.strideWidth}|d${info.dilationHeight},${info.dilationWidth}|p${pads}|${activation}|${alpha}${route === undefined ? '' : `|nchwc${block}`}`;
  const build = (): GraphSpec => {
    const spec: GraphSpec = {
      nodes: [],
      inputs: [
        { name: 'x', shape: x!.shape },
        { name: 'w', shape: filter!.shape },
      ],
      outputs: [{ name: 'y', shape: info.outShape }],
      initializers: [],
    };
    if (bias !== undefined) spec.inputs.push({ name: 'bias', shape: bias.shape });
    if (preluActivationWeights !== undefined) spec.inputs.push({ name: 'slope', shape: preluActivationWeights.shape });
    const onlyChannelBias = bias === undefined || channelBias;
    const fuseRelu = route !== undefined && activation === 'relu' && onlyChannelBias;
    const convOnly = onlyChannelBias && (activation === 'linear' || fuseRelu); // nothing left to apply after the Conv
    const convOut = convOnly ? 'y' : 'y_conv';
    const onnxPads: [number, number, number, number] = [pads[0], pads[2], pads[1], pads[3]]; // ONNX: [top, left, bottom, right]
    if (route !== undefined) {
      blockedConvNodes(
        spec,
        { input: 'x', filter: 'w', bias: channelBias ? 'bias' : undefined, output: convOut },
        filter!.shape as [number, number, number, number],
        {
          kernel: [info.filterHeight, info.filterWidth],
          strides: [info.strideHeight, info.strideWidth],
          dilations: [info.dilationHeight, info.dilationWidth],
          pads: onnxPads,
          relu: fuseRelu,
        },
        route,
        block,
      );
    } else {
      spec.nodes.push(
        transposeNode('x', 'x_nchw', NHWC_TO_NCHW),
        transposeNode('w', 'w_oihw', HWIO_TO_OIHW),
        {
          opType: 'Conv',
          inputs: channelBias ? ['x_nchw', 'w_oihw', 'bias'] : ['x_nchw', 'w_oihw'],
          outputs: ['y_nchw'],
          attributes: {
            strides: { ints: [info.strideHeight, info.strideWidth] },
            dilations: { ints: [info.dilationHeight, info.dilationWidth] },
            pads: { ints: onnxPads },
          },
        },
        transposeNode('y_nchw', convOut, NCHW_TO_NHWC),
      );
    }
    if (!convOnly) biasActivationNodes(spec, convOut, !onlyChannelBias, activation, alpha, 'y');
    return spec;
  };
  return runPerImage(cache, kernelName, args.backend, { key, build, inputs: fusedInputs([x!, filter!], bias, preluActivationWeights), outShape: info.outShape });
}

/**
 * dx of a convolution; strided: ONNX ConvTranspose of dy with the forward weight in OIHW layout (which is
 * ConvTranspose's [C_in = Co, C_out = Ci, kH, kW]). The forward pads become ConvTranspose pads;
 * output_padding adds the trailing rows/columns a strided forward pass never read, so the result
 * is exactly inputShape: H = s·(oH − 1) + out_pad + k − pad_top − pad_bottom.
 */
function conv2DBackpropInput(cache: SessionCache, args: KernelArgs): TensorInfo {
  const { dy, filter } = args.inputs as unknown as { dy: TensorInfo; filter: TensorInfo };
  const attrs = args.attrs as unknown as tf.Conv2DBackpropInputAttrs;
  const geometry = convGeometry(attrs.inputShape, filter.shape, args.attrs);
  if (geometry === undefined || !allFloat32(dy, filter)) return wasmKernel('Conv2DBackpropInput', args);
  const { info, pads } = geometry;
  const axis = (size: number, outSize: number, k: number, s: number, before: number, after: number): [number, number] => {
    const full = s * (outSize - 1) + k - before; // rows ConvTranspose yields with no trailing pad
    return full >= size ? [full - size, 0] : [0, size - full]; // [pad after, output_padding]
  };
  const [padBottom, extraH] = axis(info.inHeight, info.outHeight, info.filterHeight, info.strideHeight, pads[0], pads[1]);
  const [padRight, extraW] = axis(info.inWidth, info.outWidth, info.filterWidth, info.strideWidth, pads[2], pads[3]);
  const key = `Conv2DBackpropInput|${shapeKey(dy, filter)}|in${attrs.inputShape}|s${info.strideHeight},${info.strideWidth}|p${pads}`;
  const stride1 = info.strideHeight === 1 && info.strideWidth === 1;
  if (stride1 && Math.max(pads[0], pads[1]) < info.filterHeight && Math.max(pads[2], pads[3]) < info.filterWidth) {
    // Stride 1: dx is the 'full' correlation of dy with the flipped, channel-swapped filter, a
    // plain Conv (measured ~15 % less CPU than ConvTranspose on ResNet-20's stride-1 layers).
    const [kH, kW, inChannels, outChannels] = filter.shape;
    const block = cache.blockSize();
    const route = blockedRoute(outChannels, block); // dy, with the filter's output channels, is the input here
    if (route !== undefined) {
      const build = (): GraphSpec => {
        const spec: GraphSpec = {
          nodes: [
            { opType: 'Slice', inputs: ['w', 'flip_starts', 'flip_ends', 'flip_axes', 'flip_steps'], outputs: ['w_flipped'] },
            transposeNode('w_flipped', 'w_swapped', [0, 1, 3, 2]), // HWIO of the dx convolution: [kH, kW, Co, Ci]
          ],
          inputs: [
            { name: 'dy', shape: dy.shape },
            { name: 'w', shape: filter.shape },
          ],
          outputs: [{ name: 'dx', shape: attrs.inputShape }],
          initializers: [
            onnxTensor.int64('flip_starts', [-1, -1]),
            onnxTensor.int64('flip_ends', [-kH - 1, -kW - 1]),
            onnxTensor.int64('flip_axes', [0, 1]),
            onnxTensor.int64('flip_steps', [-1, -1]),
          ],
        };
        blockedConvNodes(
          spec,
          { input: 'dy', filter: 'w_swapped', output: 'dx' },
          [kH, kW, outChannels, inChannels],
          {
            kernel: [kH, kW],
            strides: [1, 1],
            dilations: [1, 1],
            pads: [kH - 1 - pads[0], kW - 1 - pads[2], kH - 1 - pads[1], kW - 1 - pads[3]],
            relu: false,
          },
          route,
          block,
        );
        return spec;
      };
      return runPerImage(cache, 'Conv2DBackpropInput', args.backend, { key: `${key}|nchwc${block}`, build, inputs: [dy, filter], outShape: attrs.inputShape });
    }
    const build = (): GraphSpec => ({
      nodes: [
        transposeNode('dy', 'dy_nchw', NHWC_TO_NCHW),
        { opType: 'Slice', inputs: ['w', 'flip_starts', 'flip_ends', 'flip_axes', 'flip_steps'], outputs: ['w_flipped'] },
        transposeNode('w_flipped', 'w_swapped', [2, 3, 0, 1]), // [Ci, Co, kH, kW]: OIHW of the dx convolution
        {
          opType: 'Conv',
          inputs: ['dy_nchw', 'w_swapped'],
          outputs: ['dx_nchw'],
          attributes: { pads: { ints: [kH - 1 - pads[0], kW - 1 - pads[2], kH - 1 - pads[1], kW - 1 - pads[3]] } },
        },
        transposeNode('dx_nchw', 'dx', NCHW_TO_NHWC),
      ],
      inputs: [
        { name: 'dy', shape: dy.shape },
        { name: 'w', shape: filter.shape },
      ],
      outputs: [{ name: 'dx', shape: attrs.inputShape }],
      initializers: [
        onnxTensor.int64('flip_starts', [-1, -1]),
        onnxTensor.int64('flip_ends', [-kH - 1, -kW - 1]), // one before the first element
        onnxTensor.int64('flip_axes', [0, 1]),
        onnxTensor.int64('flip_steps', [-1, -1]),
      ],
    });
    return runPerImage(cache, 'Conv2DBackpropInput', args.backend, { key, build, inputs: [dy, filter], outShape: attrs.inputShape });
  }
  const build = (): GraphSpec => ({
    nodes: [
      transposeNode('dy', 'dy_nchw', NHWC_TO_NCHW),
      transposeNode('w', 'w_oihw', HWIO_TO_OIHW),
      {
        opType: 'ConvTranspose',
        inputs: ['dy_nchw', 'w_oihw'],
        outputs: ['dx_nchw'],
        attributes: {
          strides: { ints: [info.strideHeight, info.strideWidth] },
          pads: { ints: [pads[0], pads[2], padBottom, padRight] },
          output_padding: { ints: [extraH, extraW] },
        },
      },
      transposeNode('dx_nchw', 'dx', NCHW_TO_NHWC),
    ],
    inputs: [
      { name: 'dy', shape: dy.shape },
      { name: 'w', shape: filter.shape },
    ],
    outputs: [{ name: 'dx', shape: attrs.inputShape }],
  });
  return runPerImage(cache, 'Conv2DBackpropInput', args.backend, { key, build, inputs: [dy, filter], outShape: attrs.inputShape });
}

/**
 * dW[kh,kw,ci,co] = Σ_{b,oh,ow} x[b, oh·s + kh − pt, ow·s + kw − pl, ci] · dy[b,oh,ow,co]: per tap
 * (kh, kw) the GEMM dyᵀ [Co, K] × x_tap [K, Ci] with K = B·oH·oW (split in row blocks, below), where x_tap is the strided
 * slice of the padded x that tap reads, all in NHWC (no activation transposes). Measured against
 * the batch/channel-swapped convolution (xᵀ convolved with a stride-dilated dyᵀ, as the wasm
 * kernel does): 1.5–2.5× less CPU time on ResNet-20's layers, whose N = kH·kW = 9 GEMM columns
 * suit MLAS badly.
 */
function conv2DBackpropFilter(cache: SessionCache, args: KernelArgs): TensorInfo {
  const { x, dy } = args.inputs as unknown as { x: TensorInfo; dy: TensorInfo };
  const attrs = args.attrs as unknown as tf.Conv2DBackpropFilterAttrs;
  const geometry = convGeometry(x.shape, attrs.filterShape, args.attrs);
  if (geometry === undefined || !allFloat32(x, dy)) return wasmKernel('Conv2DBackpropFilter', args);
  const { info, pads } = geometry;
  const [batch, , , inChannels] = x.shape;
  const [kH, kW, , outChannels] = attrs.filterShape;
  const { strideHeight: sH, strideWidth: sW, outHeight: oH, outWidth: oW } = info;
  const rows = batch * oH * oW; // K
  // Padded extent the last tap reads: (k − 1) + (o − 1)·s + 1 rows; rows past it are never read.
  const padBottom = Math.max(0, kH + (oH - 1) * sH - info.inHeight - pads[0]);
  const padRight = Math.max(0, kW + (oW - 1) * sW - info.inWidth - pads[2]);
  // K is split into `parts` row blocks, one batched MatMul per tap: MLAS then spreads a tap over
  // the threads (a single [Co, K] × [K, Ci] GEMM with Co, Ci = 16 runs on one), and each block's
  // operands are smaller. Measured at batch 256 (32×32×16 layer): 113 → 68 ms.
  const parts = [8, 4, 2, 1].find((p) => rows % p === 0)!;
  const key = `Conv2DBackpropFilter|${shapeKey(x, dy)}|f${attrs.filterShape}|s${sH},${sW}|p${pads}|k${parts}`;
  const entry = cache.get(key, () => {
    const spec: GraphSpec = {
      nodes: [
        { opType: 'Reshape', inputs: ['dy', 'dy_shape'], outputs: ['dy_3d'] }, // [parts, K/parts, Co]
        transposeNode('dy_3d', 'dy_t', [0, 2, 1]), // [parts, Co, K/parts]
      ],
      inputs: [
        { name: 'x', shape: x.shape },
        { name: 'dy', shape: dy.shape },
      ],
      outputs: [{ name: 'dw', shape: attrs.filterShape }],
      initializers: [
        onnxTensor.int64('dy_shape', [parts, rows / parts, outChannels]),
        onnxTensor.int64('tap_shape', [parts, rows / parts, inChannels]),
        onnxTensor.int64('slice_axes', [1, 2]),
        onnxTensor.int64('slice_steps', [sH, sW]),
        onnxTensor.int64('axis0', [0]),
        onnxTensor.int64('axis1', [1]),
        onnxTensor.int64('dw_shape', attrs.filterShape),
      ],
    };
    let padded = 'x';
    if (pads[0] > 0 || pads[2] > 0 || padBottom > 0 || padRight > 0) {
      spec.initializers!.push(onnxTensor.int64('x_pads', [0, pads[0], pads[2], 0, 0, padBottom, padRight, 0]));
      spec.nodes.push({ opType: 'Pad', inputs: ['x', 'x_pads'], outputs: ['x_padded'] });
      padded = 'x_padded';
    }
    const taps: string[] = [];
    for (let kh = 0; kh < kH; kh++) {
      for (let kw = 0; kw < kW; kw++) {
        const t = `tap${kh}_${kw}`;
        spec.initializers!.push(
          onnxTensor.int64(`${t}_starts`, [kh, kw]),
          onnxTensor.int64(`${t}_ends`, [kh + (oH - 1) * sH + 1, kw + (oW - 1) * sW + 1]),
        );
        spec.nodes.push(
          { opType: 'Slice', inputs: [padded, `${t}_starts`, `${t}_ends`, 'slice_axes', 'slice_steps'], outputs: [`${t}_x`] }, // [B, oH, oW, Ci]
          { opType: 'Reshape', inputs: [`${t}_x`, 'tap_shape'], outputs: [`${t}_3d`] }, // [parts, K/parts, Ci]
          { opType: 'MatMul', inputs: ['dy_t', `${t}_3d`], outputs: [`${t}_dw`] }, // [parts, Co, Ci]
          { opType: 'Unsqueeze', inputs: [`${t}_dw`, 'axis0'], outputs: [`${t}_dw1`] }, // [1, parts, Co, Ci]
        );
        taps.push(`${t}_dw1`);
      }
    }
    spec.nodes.push(
      { opType: 'Concat', inputs: taps, outputs: ['dw_taps'], attributes: { axis: { int: 0 } } }, // [kH·kW, parts, Co, Ci]
      { opType: 'ReduceSum', inputs: ['dw_taps', 'axis1'], outputs: ['dw_sum'], attributes: { keepdims: { int: 0 } } }, // [kH·kW, Co, Ci]
      transposeNode('dw_sum', 'dw_taps_t', [0, 2, 1]), // [kH·kW, Ci, Co]
      { opType: 'Reshape', inputs: ['dw_taps_t', 'dw_shape'], outputs: ['dw'] }, // [kH, kW, Ci, Co]
    );
    return spec;
  });
  return runInto(cache, 'Conv2DBackpropFilter', args.backend, entry, [x, dy]);
}

/**
 * BatchMatMul and _FusedMatMul: a [Ba, M, K] (or [Ba, K, M] transposed) times b; ONNX MatMul
 * broadcasts the batch dimension as tfjs does; bias is added with broadcasting, then the activation.
 */
function matMul(cache: SessionCache, kernelName: 'BatchMatMul' | '_FusedMatMul', args: KernelArgs): TensorInfo {
  const { a, b, bias, preluActivationWeights } = args.inputs as unknown as Record<string, TensorInfo | undefined>;
  const attrs = args.attrs as unknown as { transposeA: boolean; transposeB: boolean; activation?: string; leakyreluAlpha?: number };
  const activation = (attrs.activation ?? 'linear') as Activation;
  const alpha = attrs.leakyreluAlpha ?? 0.2;
  if (a!.shape.length !== 3 || b!.shape.length !== 3 || !allFloat32(a, b, bias, preluActivationWeights) || !ACTIVATIONS.includes(activation)) {
    return wasmKernel(kernelName, args);
  }
  const [batchA, rowsA, colsA] = a!.shape;
  const [batchB, rowsB, colsB] = b!.shape;
  const m = attrs.transposeA ? colsA : rowsA;
  const n = attrs.transposeB ? rowsB : colsB;
  const outShape = [Math.max(batchA, batchB), m, n];
  const key = `${kernelName}|${shapeKey(a, b, bias, preluActivationWeights)}|t${attrs.transposeA ? 1 : 0}${attrs.transposeB ? 1 : 0}|${activation}|${alpha}`;
  const entry = cache.get(key, () => {
    const spec: GraphSpec = {
      nodes: [],
      inputs: [
        { name: 'a', shape: a!.shape },
        { name: 'b', shape: b!.shape },
      ],
      outputs: [{ name: 'y', shape: outShape }],
    };
    if (bias !== undefined) spec.inputs.push({ name: 'bias', shape: bias.shape });
    if (preluActivationWeights !== undefined) spec.inputs.push({ name: 'slope', shape: preluActivationWeights.shape });
    let left = 'a';
    let right = 'b';
    if (attrs.transposeA) {
      spec.nodes.push(transposeNode('a', 'a_t', [0, 2, 1]));
      left = 'a_t';
    }
    if (attrs.transposeB) {
      spec.nodes.push(transposeNode('b', 'b_t', [0, 2, 1]));
      right = 'b_t';
    }
    spec.nodes.push({ opType: 'MatMul', inputs: [left, right], outputs: ['ab'] });
    biasActivationNodes(spec, 'ab', bias !== undefined, activation, alpha, 'y');
    return spec;
  });
  return runInto(cache, kernelName, args.backend, entry, fusedInputs([a!, b!], bias, preluActivationWeights));
}

// ---------------------------------------------------------------------------------------------
// Batch normalisation (training mode), forward and backward as one graph each


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

// ---------------------------------------------------------------------------------------------
// Backend registration

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
