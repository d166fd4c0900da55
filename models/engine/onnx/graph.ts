// Pieces of the kernels' ONNX graphs: layout transposes, and the bias + activation tail of
// tfjs's fused kernels.
import * as tf from '@tensorflow/tfjs';
import { onnxTensor, type OnnxNode } from './proto.ts';
import type { GraphSpec } from './sessions.ts';

type TensorInfo = tf.TensorInfo;

export const NHWC_TO_NCHW = [0, 3, 1, 2];
export const NCHW_TO_NHWC = [0, 2, 3, 1];
/** tfjs filter [kH, kW, Ci, Co] → ONNX Conv weight [Co, Ci, kH, kW] (also ConvTranspose's [C, M, kH, kW]). */
export const HWIO_TO_OIHW = [3, 2, 0, 1];

export function transposeNode(input: string, output: string, perm: number[]): OnnxNode {
  return { opType: 'Transpose', inputs: [input], outputs: [output], attributes: { perm: { ints: perm } } };
}

export type Activation = 'linear' | 'relu' | 'relu6' | 'elu' | 'sigmoid' | 'leakyrelu' | 'prelu';
export const ACTIVATIONS: readonly string[] = ['linear', 'relu', 'relu6', 'elu', 'sigmoid', 'leakyrelu', 'prelu'];

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
export function biasActivationNodes(spec: GraphSpec, input: string, addBias: boolean, activation: Activation, alpha: number, output: string): void {
  let pre = input;
  if (addBias) {
    spec.nodes.push({ opType: 'Add', inputs: [input, 'bias'], outputs: [`${input}_biased`] });
    pre = `${input}_biased`;
  }
  activationNodes(activation, pre, output, alpha, spec);
}

/** A fused kernel's tensors in its graph's input order: the operands, then bias and PReLU slope where given. */
export function fusedInputs(operands: TensorInfo[], bias: TensorInfo | undefined, slope: TensorInfo | undefined): TensorInfo[] {
  return [...operands, ...(bias === undefined ? [] : [bias]), ...(slope === undefined ? [] : [slope])];
}
