// The kernels the 'onnxruntime' backend runs with onnxruntime (convolutions, their gradients,
// matmuls), each as a small ONNX graph run in place on the wasm heap; other cases go to wasm's own.
import * as tf from '@tensorflow/tfjs';
import type { WasmBackend } from '../wasm/heap.ts';
import { ACTIVATIONS, biasActivationNodes, fusedInputs, HWIO_TO_OIHW, NCHW_TO_NHWC, NHWC_TO_NCHW, transposeNode, type Activation } from './graph.ts';
import { blockedConvNodes, blockedRoute } from './nchwc.ts';
import { onnxTensor, type OnnxNode, type OnnxTensor } from './proto.ts';
import type { CachedSession, GraphSpec, SessionCache } from './sessions.ts';

export const WASM = 'wasm';

type TensorInfo = tf.TensorInfo;
type Pads4 = [top: number, bottom: number, left: number, right: number];

export interface KernelArgs {
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
 * The native side wraps the input views without copying and writes into the outputs passed as
 * fetches; nothing in JS runs while a native run is in flight, so the heap cannot grow (and
 * detach the views) under it.
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
export function convForward(cache: SessionCache, kernelName: 'Conv2D' | 'FusedConv2D', args: KernelArgs): TensorInfo {
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
 * The HWIO filter input `w` [kH, kW, ...] reversed along both spatial axes, as `w_flipped`: a
 * Slice with steps −1, and its initializers (a fresh array: graph builders append to it).
 */
function filterFlip(kH: number, kW: number): { node: OnnxNode; initializers: OnnxTensor[] } {
  return {
    node: { opType: 'Slice', inputs: ['w', 'flip_starts', 'flip_ends', 'flip_axes', 'flip_steps'], outputs: ['w_flipped'] },
    initializers: [
      onnxTensor.int64('flip_starts', [-1, -1]),
      onnxTensor.int64('flip_ends', [-kH - 1, -kW - 1]), // one before the first element
      onnxTensor.int64('flip_axes', [0, 1]),
      onnxTensor.int64('flip_steps', [-1, -1]),
    ],
  };
}

/**
 * dx of a convolution; strided: ONNX ConvTranspose of dy with the forward weight in OIHW layout (which is
 * ConvTranspose's [C_in = Co, C_out = Ci, kH, kW]). The forward pads become ConvTranspose pads;
 * output_padding adds the trailing rows/columns a strided forward pass never read, so the result
 * is exactly inputShape: H = s·(oH − 1) + out_pad + k − pad_top − pad_bottom.
 */
export function conv2DBackpropInput(cache: SessionCache, args: KernelArgs): TensorInfo {
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
    const fullPads: [number, number, number, number] = [kH - 1 - pads[0], kW - 1 - pads[2], kH - 1 - pads[1], kW - 1 - pads[3]]; // ONNX order
    if (route !== undefined) {
      const build = (): GraphSpec => {
        const flip = filterFlip(kH, kW);
        const spec: GraphSpec = {
          nodes: [
            flip.node,
            transposeNode('w_flipped', 'w_swapped', [0, 1, 3, 2]), // HWIO of the dx convolution: [kH, kW, Co, Ci]
          ],
          inputs: [
            { name: 'dy', shape: dy.shape },
            { name: 'w', shape: filter.shape },
          ],
          outputs: [{ name: 'dx', shape: attrs.inputShape }],
          initializers: flip.initializers,
        };
        blockedConvNodes(
          spec,
          { input: 'dy', filter: 'w_swapped', output: 'dx' },
          [kH, kW, outChannels, inChannels],
          {
            kernel: [kH, kW],
            strides: [1, 1],
            dilations: [1, 1],
            pads: fullPads,
            relu: false,
          },
          route,
          block,
        );
        return spec;
      };
      return runPerImage(cache, 'Conv2DBackpropInput', args.backend, { key: `${key}|nchwc${block}`, build, inputs: [dy, filter], outShape: attrs.inputShape });
    }
    const build = (): GraphSpec => {
      const flip = filterFlip(kH, kW);
      return {
        nodes: [
          transposeNode('dy', 'dy_nchw', NHWC_TO_NCHW),
          flip.node,
          transposeNode('w_flipped', 'w_swapped', [2, 3, 0, 1]), // [Ci, Co, kH, kW]: OIHW of the dx convolution
          {
            opType: 'Conv',
            inputs: ['dy_nchw', 'w_swapped'],
            outputs: ['dx_nchw'],
            attributes: { pads: { ints: fullPads } },
          },
          transposeNode('dx_nchw', 'dx', NCHW_TO_NHWC),
        ],
        inputs: [
          { name: 'dy', shape: dy.shape },
          { name: 'w', shape: filter.shape },
        ],
        outputs: [{ name: 'dx', shape: attrs.inputShape }],
        initializers: flip.initializers,
      };
    };
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
export function conv2DBackpropFilter(cache: SessionCache, args: KernelArgs): TensorInfo {
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
export function matMul(cache: SessionCache, kernelName: 'BatchMatMul' | '_FusedMatMul', args: KernelArgs): TensorInfo {
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
