// A trained classifier or encoder as a complete ONNX inference graph: the tfjs layers walked in
// order (nested models included), batch norm folded into the convolution or dense layer before it.
import type * as tf from '@tensorflow/tfjs';
import { encodeModel, OnnxDataType, onnxTensor, type OnnxNode, type OnnxTensor } from './engine/onnx/proto.ts';

/** Opset 13: Conv, Gemm, MaxPool, GlobalAveragePool, Flatten, Relu, Add, Transpose, BatchNormalization. */
const OPSET = 13;

export interface OnnxExportOptions {
  /** Written as ModelProto metadata_props (the input layout and scaling are always added). */
  metadata?: Record<string, string>;
}

interface Producer {
  weights: OnnxTensor;
  bias: OnnxTensor;
  /** Axis of the output channels in `weights` (0 for OIHW convolutions, 1 for Gemm's [in, out]). */
  channelAxis: number;
}

type SymbolicTensor = tf.SymbolicTensor & { id: number };

/**
 * Encodes `model` ([B, S, S, 3] float pixels in [0, 1], NHWC as tfjs takes them) as ONNX: the
 * graph transposes to NCHW once and runs the layers as ONNX ops; its output is the model's
 * ([B, K] logits for a classifier, [B, D] features for an encoder). Throws naming a layer it
 * does not know.
 */
export function exportOnnx(model: tf.LayersModel, options: OnnxExportOptions = {}): Uint8Array {
  const nodes: OnnxNode[] = [];
  const initializers: OnnxTensor[] = [];
  const producers = new Map<string, Producer>();
  const consumers = new Map<string, number>();
  let counter = 0;
  const fresh = (base: string) => `${base.replace(/[^A-Za-z0-9_]/g, '_')}_${counter++}`;

  // Count every symbolic tensor's consumers first: a batch norm folds into its producer only when it is the one reader.
  const countUses = (m: tf.LayersModel) => {
    for (const layer of m.layers) {
      const node = nodeIn(m, layer);
      for (const t of node.inputTensors as SymbolicTensor[]) consumers.set(String(t.id), (consumers.get(String(t.id)) ?? 0) + 1);
      if (isModel(layer)) countUses(layer);
    }
  };
  countUses(model);

  const emit = (m: tf.LayersModel, inputNames: string[]): string[] => {
    const names = new Map<number, string>();
    (m.inputs as SymbolicTensor[]).forEach((t, i) => names.set(t.id, inputNames[i]));
    for (const layer of m.layers) {
      const className = layer.getClassName();
      if (className === 'InputLayer') continue;
      const node = nodeIn(m, layer);
      const ins = (node.inputTensors as SymbolicTensor[]).map((t) => {
        const name = names.get(t.id);
        if (name === undefined) throw new Error(`exportOnnx: layer '${layer.name}' reads a tensor that no earlier layer produced`);
        return name;
      });
      const outs = node.outputTensors as SymbolicTensor[];
      if (isModel(layer)) {
        emit(layer, ins).forEach((name, i) => names.set(outs[i].id, name));
        continue;
      }
      const out = fresh(layer.name);
      names.set(outs[0].id, out);
      // A layer's own activation (Conv2D / Dense config) follows it as a node; its output is the layer's.
      const fusedActivation = (name: string, kind: string, input: string, id: number) => {
        if (kind === 'linear' || kind === undefined || kind === null) return;
        const act = fresh(`${name}_${kind}`);
        nodes.push(activation(name, kind, input, act));
        names.set(id, act);
      };
      const config = layer.getConfig() as Record<string, unknown>;
      const weights = layer.getWeights();
      switch (className) {
        case 'Conv2D': {
          const [kernel, bias] = weights; // [kH, kW, Ci, Co], [Co]
          const [kH, kW, ci, co] = kernel.shape;
          const strides = config.strides as number[];
          const [, h, w] = inputShape(layer);
          const w0 = initializer(fresh(`${layer.name}_w`), transposeHwioToOihw(kernel.dataSync() as Float32Array, kH, kW, ci, co), [co, ci, kH, kW]);
          const b0 = initializer(fresh(`${layer.name}_b`), bias ? Float32Array.from(bias.dataSync()) : new Float32Array(co), [co]);
          initializers.push(w0, b0);
          const dilation = config.dilationRate as number[];
          if (dilation.some((d) => d !== 1)) throw new Error(`exportOnnx: layer '${layer.name}': dilated convolutions are not exported`);
          nodes.push({
            opType: 'Conv',
            inputs: [ins[0], w0.name!, b0.name!],
            outputs: [out],
            attributes: { kernel_shape: { ints: [kH, kW] }, strides: { ints: strides }, pads: { ints: pads(config.padding as string, [h, w], [kH, kW], strides) } },
          });
          producers.set(out, { weights: w0, bias: b0, channelAxis: 0 });
          fusedActivation(layer.name, config.activation as string, out, outs[0].id);
          break;
        }
        case 'Dense': {
          const [kernel, bias] = weights; // [in, out], [out]
          const [din, dout] = kernel.shape;
          const w0 = initializer(fresh(`${layer.name}_w`), Float32Array.from(kernel.dataSync()), [din, dout]);
          const b0 = initializer(fresh(`${layer.name}_b`), bias ? Float32Array.from(bias.dataSync()) : new Float32Array(dout), [dout]);
          initializers.push(w0, b0);
          nodes.push({ opType: 'Gemm', inputs: [ins[0], w0.name!, b0.name!], outputs: [out] });
          producers.set(out, { weights: w0, bias: b0, channelAxis: 1 });
          fusedActivation(layer.name, config.activation as string, out, outs[0].id);
          break;
        }
        case 'BatchNormalization': {
          const [gamma, beta, mean, variance] = weights.map((t) => t.dataSync() as Float32Array);
          const epsilon = config.epsilon as number;
          const scale = Float32Array.from(gamma, (g, c) => g / Math.sqrt(variance[c] + epsilon));
          const shift = Float32Array.from(beta, (b, c) => b - mean[c] * scale[c]);
          const producer = producers.get(ins[0]);
          if (producer && consumers.get(String((node.inputTensors as SymbolicTensor[])[0].id)) === 1) {
            // Folded: W' = W·s per output channel, b' = b·s + (β − μ·s).
            foldScale(producer, scale, shift);
            names.set(outs[0].id, ins[0]);
            break;
          }
          const s = initializer(fresh(`${layer.name}_scale`), scale, [scale.length]);
          const sh = initializer(fresh(`${layer.name}_shift`), shift, [shift.length]);
          const zero = initializer(fresh(`${layer.name}_mean`), new Float32Array(scale.length), [scale.length]);
          const one = initializer(fresh(`${layer.name}_var`), new Float32Array(scale.length).fill(1), [scale.length]);
          initializers.push(s, sh, zero, one);
          nodes.push({ opType: 'BatchNormalization', inputs: [ins[0], s.name!, sh.name!, zero.name!, one.name!], outputs: [out], attributes: { epsilon: { float: 0 } } });
          break;
        }
        case 'ReLU':
          if (config.maxValue !== null && config.maxValue !== undefined) throw new Error(`exportOnnx: layer '${layer.name}': a capped ReLU is not exported`);
          nodes.push({ opType: 'Relu', inputs: ins, outputs: [out] });
          break;
        case 'Activation':
          nodes.push(activation(layer.name, config.activation as string, ins[0], out));
          break;
        case 'Add': {
          let sum = ins[0];
          for (let i = 1; i < ins.length; i++) {
            const next = i === ins.length - 1 ? out : fresh(`${layer.name}_partial`);
            nodes.push({ opType: 'Add', inputs: [sum, ins[i]], outputs: [next] });
            sum = next;
          }
          break;
        }
        case 'MaxPooling2D': {
          const pool = config.poolSize as number[];
          const strides = config.strides as number[];
          const [, h, w] = inputShape(layer);
          nodes.push({ opType: 'MaxPool', inputs: ins, outputs: [out], attributes: { kernel_shape: { ints: pool }, strides: { ints: strides }, pads: { ints: pads(config.padding as string, [h, w], pool, strides) } } });
          break;
        }
        case 'GlobalAveragePooling2D': {
          const pooled = fresh(`${layer.name}_nc11`);
          nodes.push({ opType: 'GlobalAveragePool', inputs: ins, outputs: [pooled] }); // [B, C, 1, 1]
          nodes.push({ opType: 'Flatten', inputs: [pooled], outputs: [out], attributes: { axis: { int: 1 } } }); // [B, C]
          break;
        }
        default:
          throw new Error(`exportOnnx: layer '${layer.name}' (${className}) has no ONNX export`);
      }
    }
    return (m.outputs as SymbolicTensor[]).map((t) => names.get(t.id)!);
  };

  const [, size, , channels] = model.inputs[0].shape as number[];
  nodes.push({ opType: 'Transpose', inputs: ['pixels'], outputs: ['pixels_nchw'], attributes: { perm: { ints: [0, 3, 1, 2] } } });
  const [output] = emit(model, ['pixels_nchw']);
  nodes.push({ opType: 'Identity', inputs: [output], outputs: ['output'] });
  const outDim = (model.outputs[0].shape as number[])[1];
  return encodeModel({
    opset: OPSET,
    graph: {
      name: model.name,
      nodes,
      inputs: [{ name: 'pixels', elemType: OnnxDataType.FLOAT, shape: ['batch', size, size, channels] }],
      outputs: [{ name: 'output', elemType: OnnxDataType.FLOAT, shape: ['batch', outDim] }],
      initializers,
    },
    metadata: { input_layout: 'NHWC', input_scaling: 'RGB float32 in [0, 1] (pixel / 255)', input_name: 'pixels', ...options.metadata },
  });
}

/**
 * The node by which `layer` belongs to `m`'s graph: a nested model (or a layer shared by two
 * models, as a truncated head shares its layers) has several inbound nodes, one per graph it is in.
 */
function nodeIn(m: tf.LayersModel, layer: tf.layers.Layer) {
  const keys = (m as unknown as { containerNodes: Set<string> }).containerNodes;
  const index = layer.inboundNodes.findIndex((_, i) => keys.has(`${layer.name}_ib-${i}`));
  if (index < 0) throw new Error(`exportOnnx: layer '${layer.name}' has no node in model '${m.name}'`);
  return layer.inboundNodes[index];
}

function isModel(layer: tf.layers.Layer): layer is tf.LayersModel {
  return 'layers' in layer && Array.isArray((layer as tf.LayersModel).layers);
}

/** [B, H, W, C] of the layer's input. */
function inputShape(layer: tf.layers.Layer): number[] {
  // Every node of a layer sees the same shapes.
  return (layer.inboundNodes[0].inputTensors[0] as tf.SymbolicTensor).shape as number[];
}

function initializer(name: string, values: Float32Array, dims: number[]): OnnxTensor {
  return { ...onnxTensor.float(name, [], dims), values };
}

function transposeHwioToOihw(k: Float32Array, kH: number, kW: number, ci: number, co: number): Float32Array {
  const out = new Float32Array(k.length);
  for (let y = 0; y < kH; y++) for (let x = 0; x < kW; x++) for (let i = 0; i < ci; i++) for (let o = 0; o < co; o++) out[((o * ci + i) * kH + y) * kW + x] = k[((y * kW + x) * ci + i) * co + o];
  return out;
}

/** ONNX pads [top, left, bottom, right] for tfjs 'same' (extra padding after, as TensorFlow) or 'valid'. */
function pads(padding: string, [h, w]: number[], [kH, kW]: number[], [sH, sW]: number[]): number[] {
  if (padding === 'valid') return [0, 0, 0, 0];
  const total = (n: number, k: number, s: number) => Math.max((Math.ceil(n / s) - 1) * s + k - n, 0);
  const th = total(h, kH, sH);
  const tw = total(w, kW, sW);
  return [Math.floor(th / 2), Math.floor(tw / 2), th - Math.floor(th / 2), tw - Math.floor(tw / 2)];
}

function foldScale(p: Producer, scale: Float32Array, shift: Float32Array): void {
  const w = p.weights.values as Float32Array;
  const channels = scale.length;
  if (p.channelAxis === 0) {
    const per = w.length / channels;
    for (let c = 0; c < channels; c++) for (let j = 0; j < per; j++) w[c * per + j] *= scale[c];
  } else {
    for (let i = 0; i < w.length; i++) w[i] *= scale[i % channels];
  }
  const b = p.bias.values as Float32Array;
  for (let c = 0; c < channels; c++) b[c] = b[c] * scale[c] + shift[c];
}

function activation(layerName: string, name: string, input: string, output: string): OnnxNode {
  const ops: Record<string, string> = { relu: 'Relu', sigmoid: 'Sigmoid', tanh: 'Tanh', softmax: 'Softmax' };
  const op = ops[name];
  if (!op) throw new Error(`exportOnnx: layer '${layerName}': activation '${name}' has no ONNX export`);
  return { opType: op, inputs: [input], outputs: [output], ...(op === 'Softmax' ? { attributes: { axis: { int: -1 } } } : {}) };
}
