// Convolutions in MLAS's blocked NCHWc layout (onnxruntime's com.microsoft.nchwc ops), which
// onnxruntime only picks by itself for constant weights, and ours are graph inputs.
import { NHWC_TO_NCHW, transposeNode } from './graph.ts';
import { onnxTensor } from './proto.ts';
import { NCHWC, type GraphSpec } from './sessions.ts';

export type BlockedRoute = 'blocked' | 'nchw';

/** How an NHWC input of `channels` enters a blocked convolution, or undefined when it cannot. */
export function blockedRoute(channels: number, block: number): BlockedRoute | undefined {
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
 *
 * MLAS's fast convolutions work on activations in NCHWc layout ([N, C/B, H, W, B], B = the
 * block size) with filters reordered to match; onnxruntime's graph optimiser only switches a Conv
 * to them when its weights are constant initializers, which ours (graph inputs) are not. So the
 * graph calls the com.microsoft.nchwc ops itself: ReorderInput from NHWC (channels_last), nchwc
 * Conv with the filter reordered in the graph, ReorderOutput back to NHWC. Measured on a 2-core
 * AVX2 machine, 3×3 convolution at batch 64: 4.9 ms against 11.3 ms for Transpose + Conv +
 * Transpose, the same per layer for 16, 32 and 64 channels.
 */
export function blockedConvNodes(
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
