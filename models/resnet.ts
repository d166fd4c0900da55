// ResNet encoders (He et al. 2016, v1 with width multiplier) as tf.LayersModel with stable layer
// names, in a small registry; the output is the global-average-pooled representation. Also the
// BatchNorm layer they use, whose training gradient is written out (fast on wasm).
import * as tf from '@tensorflow/tfjs';

export interface EncoderOptions {
  /** A key of ENCODERS, e.g. 'resnet50' or 'resnet20'. */
  name: string;
  /** Channel multiplier of every layer (SimCLR's ResNet-50 (2×) is width 2). */
  width?: number;
  /** Side of the square input in pixels; picks the stem: up to 64 px a 3×3 stride-1 conv
   * without pooling (CIFAR style), above it a 7×7 stride-2 conv and a 3×3 stride-2 max-pool. */
  inputSize: number;
  /** Channels of the input image. */
  inputChannels?: number;
}

export interface Encoder {
  model: tf.LayersModel;
  /** Length of the representation vector (the model's output is [batch, featureDim]). */
  featureDim: number;
}

type LayerArgs = NonNullable<ConstructorParameters<typeof tf.layers.Layer>[0]>;
type LayerVariable = ReturnType<tf.layers.Layer['addWeight']>;

export interface BatchNormArgs extends LayerArgs {
  /** Weight of the old value in the moving averages of the batch statistics. */
  momentum?: number;
  /** Added to the variance before the square root. */
  epsilon?: number;
}

/** Per-channel sum over batch and space: [B, H, W, C] → [C]. */
function channelSum(x: tf.Tensor4D): tf.Tensor1D {
  const [batch, height, width, channels] = x.shape;
  // A global average pool is one channel-vectorised pass (XNNPACK on wasm), where tf.sum over
  // the leading axes first transposes the whole tensor: ~15× slower there.
  const pooled = tf.avgPool(x, [height, width], 1, 'valid'); // [B, 1, 1, C]
  const perImage = tf.reshape(pooled, [batch, channels]); // [B, C]
  return tf.mul<tf.Tensor1D>(tf.sum(perImage, 0), height * width);
}

/** x · scale + shift per channel. */
function affine(x: tf.Tensor4D, scale: tf.Tensor1D, shift?: tf.Tensor1D): tf.Tensor4D {
  // A 1×1 depthwise convolution with bias is one vectorised pass on wasm; tf.batchNorm and
  // broadcasting mul/add take 3–15× longer there. Only used where tfjs does not differentiate it.
  const filter = tf.reshape(scale, [1, 1, scale.shape[0], 1]) as tf.Tensor4D; // [1, 1, C, 1]
  return tf.fused.depthwiseConv2d({ x, filter, strides: 1, pad: 'valid', bias: shift });
}

/**
 * Training-mode batch normalisation of NHWC x (Ioffe & Szegedy 2015, Alg. 1) with the gradient
 * written out, so a step costs about a dozen passes over x instead of the ~30 that autodiff of
 * tf.moments + tf.batchNorm takes:
 *   y = γ·x̂ + β,  x̂ = (x − μ)/σ,  σ = √(var + ε),  over N = B·H·W values per channel;
 *   dx = (γ/σ)·(dy − Σdy/N − x̂·Σ(dy·x̂)/N),  dγ = Σ dy·x̂,  dβ = Σ dy.
 * Also returns the (biased) batch mean and variance for the moving averages: no gradient flows
 * through those two, they escape tf.tidy, and the caller must dispose them.
 */
export function batchNormTraining(
  x: tf.Tensor4D,
  gamma: tf.Tensor1D,
  beta: tf.Tensor1D,
  epsilon: number,
): { y: tf.Tensor4D; mean: tf.Tensor1D; variance: tf.Tensor1D } {
  const [batch, height, width] = x.shape;
  const count = batch * height * width;
  let mean: tf.Tensor1D | undefined;
  let variance: tf.Tensor1D | undefined;
  const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [xIn, gammaIn, betaIn, save] = args as [tf.Tensor4D, tf.Tensor1D, tf.Tensor1D, tf.GradSaveFunc];
    const batchMean = tf.div<tf.Tensor1D>(channelSum(xIn), count);
    const centered = affine(xIn, tf.onesLike(batchMean), tf.neg(batchMean)); // x − μ
    const batchVariance = tf.div<tf.Tensor1D>(channelSum(tf.square(centered)), count);
    const invStd = tf.rsqrt(tf.add(batchVariance, epsilon)); // 1/σ
    // customGrad disposes what its forward function creates; keep the statistics for the caller.
    [mean, variance] = [tf.keep(batchMean), tf.keep(batchVariance)];
    save([centered, invStd, gammaIn]);
    const value = affine(centered, tf.mul(gammaIn, invStd), betaIn);
    const gradFunc = (dy: tf.Tensor, saved: tf.Tensor[]): tf.Tensor[] => {
      const [c, inv, g] = saved as [tf.Tensor4D, tf.Tensor1D, tf.Tensor1D];
      const dy4 = dy as tf.Tensor4D;
      const sumDy = channelSum(dy4); // Σ dy = dβ
      const sumDyCentered = channelSum(tf.mul(dy4, c)); // Σ dy·(x − μ) = σ·dγ
      // dy − Σdy/N − x̂·Σ(dy·x̂)/N, with x̂·Σ(dy·x̂) = (x − μ)·Σ(dy·(x − μ))/σ²
      const inner = tf.add<tf.Tensor4D>(dy4, affine(c, tf.div<tf.Tensor1D>(tf.mul(tf.square(inv), sumDyCentered), -count), tf.div<tf.Tensor1D>(sumDy, -count)));
      return [affine(inner, tf.mul<tf.Tensor1D>(g, inv)), tf.mul(sumDyCentered, inv), sumDy];
    };
    return { value, gradFunc };
  });
  const y = op(x, gamma, beta) as tf.Tensor4D;
  return { y, mean: mean as unknown as tf.Tensor1D, variance: variance as unknown as tf.Tensor1D };
}

/**
 * Inference-mode batch normalisation y = x·s + t with s = γ/√(movingVar + ε) and
 * t = β − movingMean·s; differentiable in x, γ and β (fine-tuning with frozen statistics).
 */
function batchNormInference(
  x: tf.Tensor4D,
  gamma: tf.Tensor1D,
  beta: tf.Tensor1D,
  movingMean: tf.Tensor1D,
  movingVariance: tf.Tensor1D,
  epsilon: number,
): tf.Tensor4D {
  const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [xIn, gammaIn, betaIn, save] = args as [tf.Tensor4D, tf.Tensor1D, tf.Tensor1D, tf.GradSaveFunc];
    const invStd = tf.rsqrt(tf.add<tf.Tensor1D>(movingVariance, epsilon)) as tf.Tensor1D;
    const scale = tf.mul<tf.Tensor1D>(gammaIn, invStd);
    // Saved, not captured: what this function creates is disposed before the gradient runs.
    save([xIn, scale, invStd, movingMean]);
    const value = affine(xIn, scale, tf.sub<tf.Tensor1D>(betaIn, tf.mul(movingMean, scale)));
    const gradFunc = (dy: tf.Tensor, saved: tf.Tensor[]): tf.Tensor[] => {
      const [xs, sc, inv, mu] = saved as [tf.Tensor4D, tf.Tensor1D, tf.Tensor1D, tf.Tensor1D];
      const dy4 = dy as tf.Tensor4D;
      const sumDy = channelSum(dy4);
      // dγ = Σ dy·(x − movingMean)/σ
      const dGamma = tf.mul(tf.sub(channelSum(tf.mul(dy4, xs)), tf.mul(mu, sumDy)), inv);
      return [affine(dy4, sc), dGamma, sumDy];
    };
    return { value, gradFunc };
  });
  return op(x, gamma, beta) as tf.Tensor4D;
}

/**
 * Batch normalisation over every axis but the last, as tf.layers.batchNormalization computes
 * it (same weights: gamma, beta, moving_mean, moving_variance; biased batch variance in the
 * moving average), but with the fused kernels above: on wasm the stock layer's gradient took
 * ~40 % of a ResNet-20 training step.
 */
export class BatchNorm extends tf.layers.Layer {
  /**
   * Serialised under the stock layer's name with a config the stock layer accepts, so a saved
   * encoder loads with plain @tensorflow/tfjs (in a browser, say) as ordinary batch norm; in this
   * process the registration below maps the name to this faster, numerically equal class.
   */
  static className = 'BatchNormalization';
  readonly momentum: number;
  readonly epsilon: number;
  private gamma!: LayerVariable;
  private beta!: LayerVariable;
  private movingMean!: LayerVariable;
  private movingVariance!: LayerVariable;

  constructor(args: BatchNormArgs = {}) {
    super(args);
    this.momentum = args.momentum ?? 0.99;
    this.epsilon = args.epsilon ?? 1e-3;
    if (!(this.momentum >= 0 && this.momentum < 1)) {
      throw new Error(`BatchNorm.momentum must be in [0, 1), got ${this.momentum}`);
    }
    if (!(this.epsilon > 0)) throw new Error(`BatchNorm.epsilon must be positive, got ${this.epsilon}`);
  }

  override build(inputShape: tf.Shape | tf.Shape[]): void {
    const shape = (Array.isArray(inputShape[0]) ? inputShape[0] : inputShape) as tf.Shape;
    const channels = shape[shape.length - 1];
    if (channels == null) throw new Error(`BatchNorm '${this.name}' needs a known channel count, got shape [${shape}]`);
    this.gamma = this.addWeight('gamma', [channels], 'float32', tf.initializers.ones());
    this.beta = this.addWeight('beta', [channels], 'float32', tf.initializers.zeros());
    this.movingMean = this.addWeight('moving_mean', [channels], 'float32', tf.initializers.zeros(), undefined, false);
    this.movingVariance = this.addWeight('moving_variance', [channels], 'float32', tf.initializers.ones(), undefined, false);
    this.built = true;
  }

  override call(inputs: tf.Tensor | tf.Tensor[], kwargs: Record<string, unknown>): tf.Tensor {
    return tf.tidy(() => {
      const x = Array.isArray(inputs) ? inputs[0] : inputs;
      const channels = x.shape[x.shape.length - 1];
      // Any rank: the statistics run over all leading axes, so fold them into NHWC's batch axis.
      const x4 = (x.rank === 4 ? x : tf.reshape(x, [-1, 1, 1, channels])) as tf.Tensor4D; // [N, 1, 1, C]
      const gamma = this.gamma.read() as tf.Tensor1D;
      const beta = this.beta.read() as tf.Tensor1D;
      let y: tf.Tensor4D;
      if (kwargs.training === true) {
        const out = batchNormTraining(x4, gamma, beta, this.epsilon);
        y = out.y;
        this.updateMovingAverage(this.movingMean, out.mean);
        this.updateMovingAverage(this.movingVariance, out.variance);
        tf.dispose([out.mean, out.variance]);
      } else {
        y = batchNormInference(x4, gamma, beta, this.movingMean.read() as tf.Tensor1D, this.movingVariance.read() as tf.Tensor1D, this.epsilon);
      }
      return x.rank === 4 ? y : tf.reshape(y, x.shape);
    });
  }

  private updateMovingAverage(variable: LayerVariable, batchValue: tf.Tensor1D): void {
    tf.tidy(() => {
      const old = variable.read();
      variable.write(tf.sub(old, tf.mul(tf.sub(old, batchValue), 1 - this.momentum)));
    });
  }

  override getConfig(): tf.serialization.ConfigDict {
    // The stock BatchNormalization's fields, so that plain tfjs rebuilds an equivalent layer.
    return { ...super.getConfig(), axis: -1, momentum: this.momentum, epsilon: this.epsilon, center: true, scale: true };
  }
}
// Makes tf.loadLayersModel rebuild batch-norm layers with this class (when this module is loaded).
tf.serialization.registerClass(BatchNorm);

type BlockKind = 'basic' | 'bottleneck';

interface ResNetSpec {
  block: BlockKind;
  /** Blocks per stage. */
  depths: readonly number[];
  /** Base channels of each stage before the width multiplier (inner width for bottlenecks). */
  channels: readonly number[];
}

/** Output channels of a bottleneck block are 4× its inner width (He et al., Table 1). */
const BOTTLENECK_EXPANSION = 4;
/** Inputs up to this side get the CIFAR stem (3×3 stride 1, no pool), as SimCLR does for CIFAR. */
const SMALL_INPUT_MAX = 64;
// PyTorch/SimCLR batch-norm defaults: Keras' momentum 0.99 adapts too slowly for short runs.
const BN_MOMENTUM = 0.9;
const BN_EPSILON = 1e-5;

const SPECS: Record<string, ResNetSpec> = {
  // ImageNet family (He et al. Table 1): 64-128-256-512 channels.
  resnet18: { block: 'basic', depths: [2, 2, 2, 2], channels: [64, 128, 256, 512] },
  resnet34: { block: 'basic', depths: [3, 4, 6, 3], channels: [64, 128, 256, 512] },
  resnet50: { block: 'bottleneck', depths: [3, 4, 6, 3], channels: [64, 128, 256, 512] },
  // CIFAR family (He et al. §4.2): 6n+2 layers, 16-32-64 channels.
  resnet20: { block: 'basic', depths: [3, 3, 3], channels: [16, 32, 64] },
  resnet32: { block: 'basic', depths: [5, 5, 5], channels: [16, 32, 64] },
  resnet56: { block: 'basic', depths: [9, 9, 9], channels: [16, 32, 64] },
};

export type EncoderBuilder = (options: Omit<EncoderOptions, 'name'>) => Encoder;

/** Every registered encoder: name → builder. */
export const ENCODERS: Readonly<Record<string, EncoderBuilder>> = Object.fromEntries(
  Object.entries(SPECS).map(([name, spec]) => [
    name,
    (options: Omit<EncoderOptions, 'name'>) => buildResNet(name, spec, resolveOptions({ ...options, name })),
  ]),
);

/** Builds the encoder `options.name` (a key of ENCODERS). */
export function buildEncoder(options: EncoderOptions): Encoder {
  const { name } = options;
  if (typeof name !== 'string' || !Object.hasOwn(ENCODERS, name)) {
    throw new Error(`encoder.name must be one of ${Object.keys(ENCODERS).join(', ')}, got ${JSON.stringify(name)}`);
  }
  return ENCODERS[name](options);
}

function resolveOptions(options: EncoderOptions): Required<EncoderOptions> {
  const resolved = { width: 1, inputChannels: 3, ...options };
  const { name, width, inputSize, inputChannels } = resolved;
  if (typeof name !== 'string' || !Object.hasOwn(SPECS, name)) {
    throw new Error(`encoder.name must be one of ${Object.keys(SPECS).join(', ')}, got ${JSON.stringify(name)}`);
  }
  if (typeof width !== 'number' || !Number.isFinite(width) || width <= 0) {
    throw new Error(`encoder.width must be a positive number, got ${JSON.stringify(width)}`);
  }
  if (Math.round(Math.min(...SPECS[name].channels) * width) < 1) {
    throw new Error(`encoder.width ${width} leaves ${name} a layer with no channels`);
  }
  if (!Number.isInteger(inputSize) || inputSize < 1) {
    throw new Error(`encoder.inputSize must be a positive integer (pixels), got ${JSON.stringify(inputSize)}`);
  }
  if (!Number.isInteger(inputChannels) || inputChannels < 1) {
    throw new Error(`encoder.inputChannels must be a positive integer, got ${JSON.stringify(inputChannels)}`);
  }
  return resolved;
}

function conv(filters: number, kernelSize: number, strides: number, name: string): tf.layers.Layer {
  return tf.layers.conv2d({
    filters,
    kernelSize,
    strides,
    padding: 'same',
    useBias: false, // the batch norm that follows has its own shift
    kernelInitializer: 'heNormal',
    name,
  });
}

function bn(name: string): tf.layers.Layer {
  return new BatchNorm({ momentum: BN_MOMENTUM, epsilon: BN_EPSILON, name });
}

function relu(name: string): tf.layers.Layer {
  return tf.layers.reLU({ name });
}

type Sym = tf.SymbolicTensor;

function apply(layer: tf.layers.Layer, x: Sym | Sym[]): Sym {
  return layer.apply(x) as Sym;
}

/** Two 3×3 convolutions; the first carries the stride. */
function basicBlock(x: Sym, filters: number, strides: number, prefix: string): Sym {
  let y = apply(conv(filters, 3, strides, `${prefix}_conv1`), x);
  y = apply(relu(`${prefix}_relu1`), apply(bn(`${prefix}_bn1`), y));
  y = apply(bn(`${prefix}_bn2`), apply(conv(filters, 3, 1, `${prefix}_conv2`), y));
  return merge(x, y, filters, strides, prefix);
}

/** 1×1 reduce, 3×3 (carrying the stride, as torchvision and SimCLR do), 1×1 expand. */
function bottleneckBlock(x: Sym, filters: number, strides: number, prefix: string): Sym {
  let y = apply(conv(filters, 1, 1, `${prefix}_conv1`), x);
  y = apply(relu(`${prefix}_relu1`), apply(bn(`${prefix}_bn1`), y));
  y = apply(conv(filters, 3, strides, `${prefix}_conv2`), y);
  y = apply(relu(`${prefix}_relu2`), apply(bn(`${prefix}_bn2`), y));
  y = apply(bn(`${prefix}_bn3`), apply(conv(filters * BOTTLENECK_EXPANSION, 1, 1, `${prefix}_conv3`), y));
  return merge(x, y, filters * BOTTLENECK_EXPANSION, strides, prefix);
}

/** Residual sum and ReLU; a projection shortcut (1×1 conv + BN) where the shape changes. */
function merge(x: Sym, y: Sym, outChannels: number, strides: number, prefix: string): Sym {
  const inChannels = x.shape[x.shape.length - 1];
  let shortcut = x;
  if (strides !== 1 || inChannels !== outChannels) {
    shortcut = apply(bn(`${prefix}_shortcut_bn`), apply(conv(outChannels, 1, strides, `${prefix}_shortcut_conv`), x));
  }
  const sum = apply(tf.layers.add({ name: `${prefix}_add` }), [y, shortcut]);
  return apply(relu(`${prefix}_out`), sum);
}

function buildResNet(name: string, spec: ResNetSpec, { width, inputSize, inputChannels }: Required<EncoderOptions>): Encoder {
  const channels = spec.channels.map((c) => Math.max(1, Math.round(c * width)));
  const input = tf.input({ shape: [inputSize, inputSize, inputChannels], name: 'image' });

  let x: Sym;
  if (inputSize <= SMALL_INPUT_MAX) {
    // Small images would lose most of their pixels to a stride-4 stem.
    x = apply(conv(channels[0], 3, 1, 'stem_conv'), input);
    x = apply(relu('stem_relu'), apply(bn('stem_bn'), x));
  } else {
    x = apply(conv(channels[0], 7, 2, 'stem_conv'), input);
    x = apply(relu('stem_relu'), apply(bn('stem_bn'), x));
    x = apply(tf.layers.maxPooling2d({ poolSize: 3, strides: 2, padding: 'same', name: 'stem_pool' }), x);
  }

  const block = spec.block === 'basic' ? basicBlock : bottleneckBlock;
  spec.depths.forEach((depth, stage) => {
    for (let b = 0; b < depth; b++) {
      const strides = stage > 0 && b === 0 ? 2 : 1;
      x = block(x, channels[stage], strides, `stage${stage + 1}_block${b + 1}`);
    }
  });
  const features = apply(tf.layers.globalAveragePooling2d({ name: 'avg_pool' }), x); // [B, featureDim]
  const featureDim = features.shape[1] as number;
  const widthTag = width === 1 ? '' : `_w${width}`;
  return { model: tf.model({ inputs: input, outputs: features, name: `${name}${widthTag}` }), featureDim };
}
