// ResNet encoders (He et al. 2016, v1 with width multiplier) as tf.LayersModel with stable layer
// names, in a small registry; the output is the global-average-pooled representation.
import * as tf from '@tensorflow/tfjs';
import { BatchNorm } from './batch-norm.ts';

export { BatchNorm, batchNormTraining } from './batch-norm.ts';

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
  /** Seed of the convolution kernels' He-normal initialisation; random when omitted. */
  seed?: number;
}

export interface Encoder {
  model: tf.LayersModel;
  /** Length of the representation vector (the model's output is [batch, featureDim]). */
  featureDim: number;
}


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
  const encoder = ENCODERS[name](options);
  if (options.seed !== undefined) seedConvKernels(encoder.model, options.seed);
  return encoder;
}

/**
 * Re-draws every convolution kernel from He-normal initialisers seeded by (seed, layer position),
 * so that the same seed builds the same weights: reproducible runs, and a run and its resumed twin
 * start alike. (Batch-norm weights start at constants, so they need nothing.)
 */
function seedConvKernels(model: tf.LayersModel, seed: number): void {
  if (!Number.isSafeInteger(seed) || seed < 0) throw new Error(`encoder.seed must be a non-negative integer, got ${seed}`);
  model.layers.forEach((layer, position) => {
    if (layer.getClassName() !== 'Conv2D') return;
    const [kernel] = layer.getWeights();
    const fresh = tf.initializers.heNormal({ seed: (seed * 1009 + position) % 2147483647 }).apply(kernel.shape, 'float32');
    layer.setWeights([fresh]);
    fresh.dispose();
  });
}

function resolveOptions(options: EncoderOptions): Required<Omit<EncoderOptions, 'seed'>> {
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

function buildResNet(name: string, spec: ResNetSpec, { width, inputSize, inputChannels }: Required<Omit<EncoderOptions, 'seed'>>): Encoder {
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
