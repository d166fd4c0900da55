// One native onnxruntime session per (op, shapes, attributes): each graph is encoded once
// (proto.ts), loaded once and kept, and run synchronously on tfjs's heap.
import { availableParallelism } from 'node:os';
import { firstLine, type NativeSession, type OrtSync } from './native.ts';
import { encodeModel, OnnxDataType, type OnnxNode, type OnnxTensor } from './proto.ts';

/** Opset of the generated graphs: Clip with min/max inputs (11+), Slice with steps (10+). */
const OPSET = 17;
/** onnxruntime's contrib domain of blocked-layout (NCHWc) CPU kernels. */
export const NCHWC = 'com.microsoft.nchwc';
const FLOAT = OnnxDataType.FLOAT;


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

export interface GraphSpec {
  nodes: OnnxNode[];
  inputs: { name: string; shape: readonly number[] }[];
  outputs: { name: string; shape: readonly number[] }[];
  initializers?: OnnxTensor[];
}

export interface CachedSession {
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

export class SessionCache {
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
