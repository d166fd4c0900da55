// Training kernels for the tfjs wasm backend: convolution gradients composed from its fast
// XNNPACK forward convolution, so that a ResNet can be trained on wasm at all (and quickly).
import * as tf from '@tensorflow/tfjs';
// Imported for its side effect: wasm's own kernels must be registered before ours replace one.
import '@tensorflow/tfjs-backend-wasm';
import { BATCH_NORM_BACKWARD, BATCH_NORM_FORWARD, RELU_GRAD } from '../kernel-names.ts';
import { wasmBatchNormBackward, wasmBatchNormForward } from './batch-norm.ts';
import { simdKernelsOf, type WasmBackend } from './heap.ts';

type TensorInfo = tf.TensorInfo;
type Backend = tf.KernelBackend;
type Pads = [top: number, bottom: number, left: number, right: number];

const BACKEND = 'wasm';

/** Calls another wasm kernel directly (no engine round trip, nothing recorded on a tape). */
function callKernel(
  backend: Backend,
  kernelName: string,
  inputs: tf.NamedTensorInfoMap,
  attrs: tf.NamedAttrMap = {},
): TensorInfo {
  const kernel = tf.getKernel(kernelName, BACKEND);
  if (kernel === undefined) {
    throw new Error(`wasm training kernels need the wasm kernel '${kernelName}', which is not registered`);
  }
  return kernel.kernelFunc({ inputs, attrs, backend }) as TensorInfo;
}

function dispose(backend: Backend, ...infos: TensorInfo[]): void {
  for (const info of infos) backend.disposeData(info.dataId);
}

function transpose(backend: Backend, x: TensorInfo, perm: number[]): TensorInfo {
  return callKernel(backend, 'Transpose', { x }, { perm });
}

/**
 * Stride-1 NHWC convolution with per-side padding that may be negative: a negative pad crops
 * the input instead, which lets the gradient formulas below be written without special cases
 * for the rows a strided forward convolution never read.
 */
function convWithPads(
  backend: Backend,
  x: TensorInfo,
  filter: TensorInfo,
  dilations: [number, number],
  [top, bottom, left, right]: Pads,
): TensorInfo {
  const crop = [Math.max(0, -top), Math.max(0, -bottom), Math.max(0, -left), Math.max(0, -right)];
  let input = x;
  if (crop.some((c) => c > 0)) {
    const [n, h, w, c] = x.shape;
    input = callKernel(backend, 'Slice', { x }, {
      begin: [0, crop[0], crop[2], 0],
      size: [n, h - crop[0] - crop[1], w - crop[2] - crop[3], c],
    });
  }
  const pad: tf.backend_util.ExplicitPadding = [
    [0, 0],
    [Math.max(0, top), Math.max(0, bottom)],
    [Math.max(0, left), Math.max(0, right)],
    [0, 0],
  ];
  const out = callKernel(backend, 'Conv2D', { x: input, filter }, {
    strides: [1, 1],
    pad,
    dilations,
    dataFormat: 'NHWC',
  });
  if (input !== x) dispose(backend, input);
  return out;
}

/**
 * [B, H, W, C] → [C, H, W, B]. Two transposes that each move whole rows, a 2-D one
 * ([B, H·W·C] → [H·W·C, B]) and [H·W, C, B] → [C, H·W, B], take half the time of wasm's
 * one-step 4-D transpose, whose innermost reads are C floats apart.
 */
function batchLast(backend: Backend, x: TensorInfo): TensorInfo {
  const [b, h, w, c] = x.shape;
  const flat = callKernel(backend, 'Reshape', { x }, { shape: [b, h * w * c] });
  const pixelsFirst = transpose(backend, flat, [1, 0]); // [H·W·C, B]
  const pixels3 = callKernel(backend, 'Reshape', { x: pixelsFirst }, { shape: [h * w, c, b] });
  const channelsFirst = transpose(backend, pixels3, [1, 0, 2]); // [C, H·W, B]
  const out = callKernel(backend, 'Reshape', { x: channelsFirst }, { shape: [c, h, w, b] });
  dispose(backend, flat, pixelsFirst, pixels3, channelsFirst);
  return out;
}

/**
 * Images [start, start + n) of x [B, H, W, C] as [C, H, W, n], in one pass of 4×4 SIMD tile
 * transposes (each pixel's [n, C] block → [C, n]); n and C multiples of 4.
 */
function imagesLast(backend: WasmBackend, x: TensorInfo, start: number, n: number): TensorInfo {
  const [, h, w, c] = x.shape;
  const [out, src, dst] = outputAndOffsets(backend, x, start, [c, h, w, n]);
  simdKernelsOf(backend).transpose4(h * w, n, c, src, h * w * c * 4, c * 4, dst, h * w * n * 4, n * 4);
  return out;
}

/** Images [start, start + n) of x [B, H, W, C] as [H, W, n, C]: C-float rows moved by SIMD copies (C a multiple of 4). */
function imagesInner(backend: WasmBackend, x: TensorInfo, start: number, n: number): TensorInfo {
  const [, h, w, c] = x.shape;
  const [out, src, dst] = outputAndOffsets(backend, x, start, [h, w, n, c]);
  simdKernelsOf(backend).copy_rows(n, h * w, c * 4, src, c * 4, h * w * c * 4, dst, n * c * 4, c * 4);
  return out;
}

/** A new float32 output of `shape`, and the heap byte offsets of image `start` of x and of it. */
function outputAndOffsets(backend: WasmBackend, x: TensorInfo, start: number, shape: number[]): [TensorInfo, number, number] {
  const out = backend.makeOutput(shape, 'float32');
  const src = backend.typedArrayFromHeap(x).byteOffset + start * tf.util.sizeFromShape(x.shape.slice(1)) * 4;
  return [out, src, backend.typedArrayFromHeap(out).byteOffset];
}

/**
 * Bytes of dyᵀ (the filter of the filter-gradient convolution) per group of images: XNNPACK
 * streams its packed filter once per tile of output rows, and a filter that stays in cache is
 * streamed faster (batch 512, SIMD transposes either way: 32×32×16 103 → 93 ms, 8×8×64 76 → 64 ms
 * against one convolution over the whole batch; 256 KiB and 4 MiB groups were no better).
 */
let filterGradientGroupBytes = 1 << 20;

/** Sets the group size above (tests use a tiny one to get many groups from a small batch); returns the previous. */
export function setFilterGradientGroupBytes(bytes: number): number {
  const previous = filterGradientGroupBytes;
  filterGradientGroupBytes = bytes;
  return previous;
}

interface GradGeometry {
  strideH: number;
  strideW: number;
  padTop: number;
  padLeft: number;
  inH: number;
  inW: number;
  outH: number;
  outW: number;
  filterH: number;
  filterW: number;
}

function geometry(
  kernelName: string,
  xShape: [number, number, number, number],
  filterShape: [number, number, number, number],
  attrs: tf.NamedAttrMap,
): GradGeometry {
  const { strides, pad, dataFormat, dimRoundingMode } = attrs as unknown as tf.Conv2DBackpropFilterAttrs;
  if (dataFormat !== undefined && dataFormat !== 'NHWC') {
    throw new Error(`${kernelName} on wasm supports dataFormat 'NHWC' only, got '${dataFormat}'`);
  }
  const info = tf.backend_util.computeConv2DInfo(xShape, filterShape, strides, 1, pad, dimRoundingMode);
  return {
    strideH: info.strideHeight,
    strideW: info.strideWidth,
    padTop: info.padInfo.top,
    padLeft: info.padInfo.left,
    inH: info.inHeight,
    inW: info.inWidth,
    outH: info.outHeight,
    outW: info.outWidth,
    filterH: info.filterHeight,
    filterW: info.filterWidth,
  };
}

/**
 * dW[kh,kw,ci,co] = Σ_{b,oh,ow} x[b, oh·s + kh − pt, ow·s + kw − pl, ci] · dy[b,oh,ow,co].
 * Read with ci as the batch, (h, w) as space and b as the channel, that is a convolution of
 * xᵀ [Ci,H,W,B] with the filter dyᵀ [oH,oW,B,Co] dilated by the forward stride, whose output
 * [Ci,kH,kW,Co] transposes into the filter gradient. XNNPACK runs it as one large GEMM.
 * Where batch and channels are multiples of 4 it runs per group of images (see
 * filterGradientGroupBytes), with the transposes done by SIMD loops (imagesLast, imagesInner),
 * and the groups' gradients are summed in float64; elsewhere as one convolution over the batch.
 */
function conv2DBackpropFilter(args: { inputs: tf.NamedTensorInfoMap; backend: Backend; attrs: tf.NamedAttrMap }): TensorInfo {
  const { inputs, backend, attrs } = args;
  const { x, dy } = inputs as unknown as { x: TensorInfo; dy: TensorInfo };
  const filterShape = (attrs as unknown as tf.Conv2DBackpropFilterAttrs).filterShape;
  const g = geometry('Conv2DBackpropFilter', x.shape as [number, number, number, number], filterShape, attrs);

  // Bottom/right pads make the output exactly kH × kW; negative ones crop the input rows and
  // columns a strided 'valid' convolution never reached.
  const padBottom = g.filterH + (g.outH - 1) * g.strideH - g.inH - g.padTop;
  const padRight = g.filterW + (g.outW - 1) * g.strideW - g.inW - g.padLeft;
  const pads: Pads = [g.padTop, padBottom, g.padLeft, padRight];
  const [batch, , , inC] = x.shape;
  const outC = dy.shape[3];
  if (batch % 4 !== 0 || inC % 4 !== 0 || outC % 4 !== 0 || x.dtype !== 'float32' || dy.dtype !== 'float32') {
    const xT = batchLast(backend, x); // [Ci, H, W, B]
    const dyT = transpose(backend, dy, [1, 2, 0, 3]); // [oH, oW, B, Co]
    const gradT = convWithPads(backend, xT, dyT, [g.strideH, g.strideW], pads); // [Ci, kH, kW, Co]
    const grad = transpose(backend, gradT, [1, 2, 0, 3]); // [kH, kW, Ci, Co]
    dispose(backend, xT, dyT, gradT);
    return grad;
  }
  const wasm = backend as WasmBackend;
  if (g.filterH === 1 && g.filterW === 1 && g.padTop === 0 && g.padLeft === 0 && g.inH === g.outH * g.strideH && g.inW === g.outW * g.strideW) {
    return pointwiseFilterGradient(wasm, x, dy, g);
  }
  // Groups of images (a multiple of 4), each group's gradient summed in float64.
  const perImage = g.outH * g.outW * outC * 4;
  const group = Math.min(batch, Math.max(4, 4 * Math.floor(filterGradientGroupBytes / perImage / 4)));
  const taps = g.filterH * g.filterW;
  const sum = new Float64Array(taps * inC * outC); // [Ci, kH·kW, Co], as gradT
  for (let start = 0; start < batch; start += group) {
    const n = Math.min(group, batch - start);
    const xT = imagesLast(wasm, x, start, n); // [Ci, H, W, n]
    const dyT = imagesInner(wasm, dy, start, n); // [oH, oW, n, Co]
    const gradT = convWithPads(backend, xT, dyT, [g.strideH, g.strideW], pads);
    const part = wasm.typedArrayFromHeap(gradT) as Float32Array;
    for (let i = 0; i < sum.length; i++) sum[i] += part[i];
    dispose(backend, xT, dyT, gradT);
  }
  const grad = wasm.makeOutput([g.filterH, g.filterW, inC, outC], 'float32');
  const out = wasm.typedArrayFromHeap(grad) as Float32Array;
  for (let ci = 0; ci < inC; ci++) {
    for (let t = 0; t < taps; t++) {
      const from = (ci * taps + t) * outC;
      const to = (t * inC + ci) * outC;
      for (let co = 0; co < outC; co++) out[to + co] = sum[from + co];
    }
  }
  return grad;
}

/**
 * 1×1 filter gradient (projection shortcuts, bottleneck layers): dW[0, 0] = xsᵀ · dy over the
 * B·oH·oW pixels the convolution read, xs = x at every stride-th row and column. The pixels are
 * gathered (strided rows) and transposed by SIMD loops, then one XNNPACK GEMM. Needs the input
 * to be exactly stride × output in each axis, no padding, and the channels and pixels multiples
 * of 4 (as the caller checks).
 */
function pointwiseFilterGradient(backend: WasmBackend, x: TensorInfo, dy: TensorInfo, g: GradGeometry): TensorInfo {
  const [batch, , , inC] = x.shape;
  const outC = dy.shape[3];
  const pixels = batch * g.outH * g.outW;
  const simd = simdKernelsOf(backend);
  let picked = x; // [pixels, Ci]
  if (g.strideH !== 1 || g.strideW !== 1) {
    picked = backend.makeOutput([pixels, inC], 'float32');
    const [src, dst] = [x, picked].map((info) => backend.typedArrayFromHeap(info).byteOffset);
    // Row k = (b, oh) of the output grid reads input row oh·sH of image b: k·sH·W pixels on.
    simd.copy_rows(batch * g.outH, g.outW, inC * 4, src, g.strideW * inC * 4, g.strideH * g.inW * inC * 4, dst, inC * 4, g.outW * inC * 4);
  }
  const xsT = backend.makeOutput([inC, pixels], 'float32');
  const [src, dst] = [picked, xsT].map((info) => backend.typedArrayFromHeap(info).byteOffset);
  simd.transpose4(1, pixels, inC, src, inC * 4, 0, dst, pixels * 4, 0); // [Ci, pixels]
  if (picked !== x) dispose(backend, picked);
  const dy2 = callKernel(backend, 'Reshape', { x: dy }, { shape: [pixels, outC] });
  const product = callKernel(backend, 'BatchMatMul', { a: xsT, b: dy2 }, { transposeA: false, transposeB: false }); // [1, Ci, Co]
  const grad = callKernel(backend, 'Reshape', { x: product }, { shape: [1, 1, inC, outC] });
  dispose(backend, xsT, dy2, product);
  return grad;
}

/** Per spatial axis geometry of the sub-pixel input gradient (see conv2DBackpropInput). */
interface PhaseAxis {
  /** Taps of each phase filter: ⌈k / s⌉. */
  taps: number;
  /** Conv padding before/after along this axis (negative crops). */
  padBefore: number;
  padAfter: number;
  /** Rows of the interleaved result to drop at the start, and rows to keep. */
  crop: number;
  size: number;
}

function phaseAxis(filter: number, stride: number, padBefore: number, inSize: number, outSize: number): PhaseAxis {
  const taps = Math.ceil(filter / stride);
  // Input row h is phase (h + p) mod s of block q = ⌊(h + p) / s⌋; only blocks holding a real row are computed.
  const firstBlock = Math.floor(padBefore / stride);
  const blocks = Math.floor((padBefore + inSize - 1) / stride) + 1 - firstBlock;
  const before = taps - 1 - firstBlock;
  return {
    taps,
    padBefore: before,
    padAfter: blocks - outSize - before + taps - 1,
    crop: padBefore - firstBlock * stride,
    size: inSize,
  };
}

/**
 * The phase filter [tH, tW, Co, sH·sW·Ci] of the sub-pixel input gradient: for output phase
 * (rh, rw) and tap (th, tw) it holds W[rh + (tH − 1 − th)·sH, rw + (tW − 1 − tw)·sW, ci, co]
 * (flipped, in/out channels swapped), zero where that lies outside the filter.
 */
function phaseFilter(backend: WasmBackend, filter: TensorInfo, strideH: number, strideW: number, tapsH: number, tapsW: number): TensorInfo {
  const [kH, kW, inC, outC] = filter.shape;
  const phases = strideH * strideW;
  const out = backend.makeOutput([tapsH, tapsW, outC, phases * inC], 'float32');
  // Views are taken after makeOutput: an allocation may grow (and so detach) the wasm heap.
  const w = backend.typedArrayFromHeap(filter);
  const f = backend.typedArrayFromHeap(out);
  f.fill(0);
  for (let th = 0; th < tapsH; th++) {
    for (let tw = 0; tw < tapsW; tw++) {
      for (let rh = 0; rh < strideH; rh++) {
        const kh = rh + (tapsH - 1 - th) * strideH;
        if (kh >= kH) continue;
        for (let rw = 0; rw < strideW; rw++) {
          const kw = rw + (tapsW - 1 - tw) * strideW;
          if (kw >= kW) continue;
          const phase = rh * strideW + rw;
          for (let ci = 0; ci < inC; ci++) {
            const src = ((kh * kW + kw) * inC + ci) * outC;
            let dst = ((th * tapsW + tw) * outC) * phases * inC + phase * inC + ci;
            for (let co = 0; co < outC; co++, dst += phases * inC) f[dst] = w[src + co];
          }
        }
      }
    }
  }
  return out;
}

/**
 * dx[h] = Σ_{oh·s + kh − p = h} dy[oh] · W[kh]. Writing h + p = q·s + r splits dx into s²
 * phases r, each a stride-1 convolution of dy (no inserted zeros) with the taps kh ≡ r (mod s)
 * of the flipped, channel-swapped filter. All phases run as ONE convolution whose output
 * channels are (rh, rw, ci), followed by a depth-to-space interleave and a crop of the padding.
 * Compared with convolving a zero-dilated dy this skips the (s² − 1)/s² of products with zeros.
 */
function conv2DBackpropInput(args: { inputs: tf.NamedTensorInfoMap; backend: Backend; attrs: tf.NamedAttrMap }): TensorInfo {
  const { inputs, attrs } = args;
  const backend = args.backend as WasmBackend;
  const { dy, filter } = inputs as unknown as { dy: TensorInfo; filter: TensorInfo };
  const inputShape = (attrs as unknown as tf.Conv2DBackpropInputAttrs).inputShape;
  const g = geometry('Conv2DBackpropInput', inputShape, filter.shape as [number, number, number, number], attrs);
  const [batch, , , inChannels] = inputShape;
  const rows = phaseAxis(g.filterH, g.strideH, g.padTop, g.inH, g.outH);
  const cols = phaseAxis(g.filterW, g.strideW, g.padLeft, g.inW, g.outW);

  const phaseW = phaseFilter(backend, filter, g.strideH, g.strideW, rows.taps, cols.taps); // [tH, tW, Co, sH·sW·Ci]
  const phased = convWithPads(backend, dy, phaseW, [1, 1], [rows.padBefore, rows.padAfter, cols.padBefore, cols.padAfter]);
  dispose(backend, phaseW);
  if (g.strideH === 1 && g.strideW === 1 && rows.crop === 0 && cols.crop === 0) return phased; // already [B, H, W, Ci]

  const [, blocksH, blocksW] = phased.shape; // phased: [B, blocksH, blocksW, sH·sW·Ci]
  const phased6 = callKernel(backend, 'Reshape', { x: phased }, { shape: [batch, blocksH, blocksW, g.strideH, g.strideW, inChannels] });
  const interleaved6 = transpose(backend, phased6, [0, 1, 3, 2, 4, 5]); // [B, blocksH, sH, blocksW, sW, Ci]
  const interleaved = callKernel(backend, 'Reshape', { x: interleaved6 }, {
    shape: [batch, blocksH * g.strideH, blocksW * g.strideW, inChannels],
  });
  dispose(backend, phased, phased6, interleaved6);
  if (rows.crop === 0 && cols.crop === 0 && interleaved.shape[1] === g.inH && interleaved.shape[2] === g.inW) {
    return interleaved;
  }
  const dx = callKernel(backend, 'Slice', { x: interleaved }, {
    begin: [0, rows.crop, cols.crop, 0],
    size: [batch, rows.size, cols.size, inChannels],
  });
  dispose(backend, interleaved);
  return dx;
}

/**
 * Tile by block copies: the innermost row is copied once, then each level of the result is
 * replicated by doubling copyWithin calls. wasm's own Tile computes an index per element and
 * made batch norm's gradient (which tiles 1/σ over the whole activation) take most of a step.
 */
function tile(args: { inputs: tf.NamedTensorInfoMap; backend: Backend; attrs: tf.NamedAttrMap }): TensorInfo {
  const backend = args.backend as WasmBackend;
  const { x } = args.inputs as unknown as { x: TensorInfo };
  const reps = (args.attrs as unknown as tf.TileAttrs).reps;
  if (x.dtype === 'string' || x.dtype === 'complex64') {
    throw new Error(`Tile on wasm supports numeric tensors only, got dtype ${x.dtype}`);
  }
  const rank = x.shape.length;
  const outShape = x.shape.map((d, i) => d * reps[i]);
  const out = backend.makeOutput(outShape, x.dtype);
  const src = backend.typedArrayFromHeap(x);
  const dst = backend.typedArrayFromHeap(out);
  if (rank === 0 || dst.length === 0) {
    dst.set(src.subarray(0, dst.length));
    return out;
  }
  const srcStrides = tf.util.computeStrides(x.shape);
  const outBlock = [...tf.util.computeStrides(outShape), 1]; // elements per step along each axis
  const fill = (axis: number, srcOffset: number, dstOffset: number): void => {
    if (axis === rank - 1) {
      dst.set(src.subarray(srcOffset, srcOffset + x.shape[axis]), dstOffset);
    } else {
      for (let i = 0; i < x.shape[axis]; i++) fill(axis + 1, srcOffset + i * srcStrides[axis], dstOffset + i * outBlock[axis]);
    }
    const once = x.shape[axis] * outBlock[axis];
    const total = once * reps[axis];
    for (let done = once; done < total; done += Math.min(done, total - done)) {
      dst.copyWithin(dstOffset + done, dstOffset, dstOffset + Math.min(done, total - done));
    }
  };
  fill(0, 0, 0);
  return out;
}

/**
 * Identity without the copy: the output shares the input's heap buffer (reference counted, as
 * tfjs's cpu backend does it and wasm's own Reshape). Autodiff routes every Add's gradient and
 * every layer's pass-through through Identity; wasm's kernel copies the whole tensor each time
 * (~5 % of a ResNet-20 step). tfjs kernels never write into their inputs, so sharing is safe.
 */
function identity(args: { inputs: { x: tf.TensorInfo }; backend: WasmBackend }): tf.TensorInfo {
  const { x } = args.inputs;
  args.backend.incRef(x.dataId);
  return { dataId: x.dataId, shape: [...x.shape], dtype: x.dtype };
}

/** dy · step(y) in one SIMD pass (tfjs: a Step and a Multiply); the last n mod 4 in JS. */
function reluGrad(args: { inputs: tf.NamedTensorInfoMap; backend: Backend }): TensorInfo {
  const backend = args.backend as WasmBackend;
  const { dy, y } = args.inputs as unknown as { dy: TensorInfo; y: TensorInfo };
  if (dy.dtype !== 'float32' || y.dtype !== 'float32') throw new Error(`${RELU_GRAD} on wasm: float32 only, got ${dy.dtype} and ${y.dtype}`);
  const out = backend.makeOutput(y.shape, 'float32');
  const [g, v, dx] = [dy, y, out].map((info) => backend.typedArrayFromHeap(info) as Float32Array);
  const body = v.length - (v.length % 4);
  simdKernelsOf(backend).relu_grad(body * 4, g.byteOffset, v.byteOffset, dx.byteOffset);
  for (let i = body; i < v.length; i++) dx[i] = g[i] * (Number.isNaN(v[i]) ? Number.NaN : v[i] > 0 ? 1 : 0);
  return out;
}

const TRAINING_KERNELS: tf.KernelConfig[] = [
  { kernelName: 'Identity', backendName: BACKEND, kernelFunc: identity as unknown as tf.KernelFunc },
  { kernelName: 'Conv2DBackpropFilter', backendName: BACKEND, kernelFunc: conv2DBackpropFilter as unknown as tf.KernelFunc },
  { kernelName: 'Conv2DBackpropInput', backendName: BACKEND, kernelFunc: conv2DBackpropInput as unknown as tf.KernelFunc },
  { kernelName: 'Tile', backendName: BACKEND, kernelFunc: tile as unknown as tf.KernelFunc },
  { kernelName: RELU_GRAD, backendName: BACKEND, kernelFunc: reluGrad as unknown as tf.KernelFunc },
  { kernelName: BATCH_NORM_FORWARD, backendName: BACKEND, kernelFunc: wasmBatchNormForward as unknown as tf.KernelFunc },
  { kernelName: BATCH_NORM_BACKWARD, backendName: BACKEND, kernelFunc: wasmBatchNormBackward as unknown as tf.KernelFunc },
];

/**
 * Registers the training kernels for the 'wasm' backend, replacing any kernel registered under
 * the same name (wasm's own naive Conv2DBackpropInput). Safe to call more than once.
 */
export function registerWasmTrainingKernels(): void {
  for (const config of TRAINING_KERNELS) {
    const existing = tf.getKernel(config.kernelName, BACKEND);
    if (existing?.kernelFunc === config.kernelFunc) continue;
    if (existing !== undefined) tf.unregisterKernel(config.kernelName, BACKEND);
    tf.registerKernel(config);
  }
}
