// The SimCLR model (encoder + projection head) and its training step: both views go through the
// encoder as one batch of 2N, so batch norm sees both, and NT-Xent pulls each pair together.
import * as tf from '@tensorflow/tfjs';
import { buildProjectionHead } from './head.ts';
import { ntXentLoss } from './losses.ts';
import { buildEncoder } from './resnet.ts';
import { trainStep } from './train-step.ts';

export interface SimclrModelOptions {
  /** Encoder registry name (models/resnet.ts). */
  encoder: string;
  width?: number;
  inputSize: number;
  /** SimCLRv2's deeper head: 3 layers (the paper's best trade-off for fine-tuning from layer 1). */
  headLayers?: number;
  /** Projection output size; 128 in both papers. */
  projectionDim?: number;
  /** Seed of the initial weights; random when omitted. */
  seed?: number;
}

export interface SimclrModel {
  encoder: tf.LayersModel;
  head: tf.LayersModel;
  featureDim: number;
}

export function buildSimclrModel({ encoder, width = 1, inputSize, headLayers = 3, projectionDim = 128, seed }: SimclrModelOptions): SimclrModel {
  const enc = buildEncoder({ name: encoder, width, inputSize, seed });
  // The head's layers draw from seed + j; an offset keeps them apart from the encoder's streams.
  const head = buildProjectionHead({ inputDim: enc.featureDim, layers: headLayers, outputDim: projectionDim, seed: seed === undefined ? undefined : seed + 7919 });
  return { encoder: enc.model, head, featureDim: enc.featureDim };
}

/** Every trainable variable of encoder and head, in a stable order. */
export function trainableVariables(model: SimclrModel): tf.Variable[] {
  return [...model.encoder.trainableWeights, ...model.head.trainableWeights].map((w) => w.read() as tf.Variable);
}

/**
 * Pixels as the encoder takes them: float32 NHWC in [0, 1] (SimCLR feeds [0, 1] images, no
 * per-channel standardisation). Uint8 input is scaled here; float32 input is taken as already scaled.
 */
export function pixelsToTensor(pixels: Uint8Array | Float32Array, n: number, size: number): tf.Tensor4D {
  if (pixels.length !== n * size * size * 3) throw new Error(`pixelsToTensor: ${pixels.length} values for [${n}, ${size}, ${size}, 3]`);
  if (pixels instanceof Float32Array) return tf.tensor4d(pixels, [n, size, size, 3]);
  const scaled = new Float32Array(pixels.length);
  for (let i = 0; i < pixels.length; i++) scaled[i] = pixels[i] / 255;
  return tf.tensor4d(scaled, [n, size, size, 3]);
}

export interface StepResult {
  loss: number;
  accuracy: number;
}

/**
 * One SimCLR step: encoder and head on concat(view1, view2) in training mode (batch-norm statistics
 * over all 2N images, moving averages updated), NT-Xent on the split projections, gradients of
 * every trainable weight applied by `optimizer`. view1, view2: [N, S, S, 3].
 */
export function simclrStep(model: SimclrModel, optimizer: tf.Optimizer, view1: tf.Tensor4D, view2: tf.Tensor4D, temperature: number): StepResult {
  const x = tf.concat([view1, view2], 0); // [2N, S, S, 3]
  try {
    return trainStep(trainableVariables(model), optimizer, () => {
      const h = model.encoder.apply(x, { training: true }) as tf.Tensor2D; // [2N, D]
      const z = model.head.apply(h, { training: true }) as tf.Tensor2D; // [2N, 128]
      const [z1, z2] = tf.split(z, 2, 0) as [tf.Tensor2D, tf.Tensor2D]; // [N, 128] each
      const { loss, accuracy } = ntXentLoss(z1, z2, temperature);
      return { loss, scalars: { accuracy } };
    });
  } finally {
    x.dispose();
  }
}

/**
 * Encoder representations (inference mode: batch-norm moving statistics) of [N, S, S, 3] images,
 * in chunks of `batchSize`; returns a [N, D] tensor the caller disposes.
 */
export function embed(encoder: tf.LayersModel, pixels: Uint8Array | Float32Array, n: number, size: number, batchSize = 256): tf.Tensor2D {
  const per = size * size * 3;
  const parts: tf.Tensor2D[] = [];
  try {
    for (let start = 0; start < n; start += batchSize) {
      const count = Math.min(batchSize, n - start);
      parts.push(
        tf.tidy(() => {
          const x = pixelsToTensor(pixels.subarray(start * per, (start + count) * per), count, size);
          return encoder.apply(x, { training: false }) as tf.Tensor2D;
        }),
      );
    }
    return tf.tidy(() => (parts.length === 1 ? parts[0].clone() : tf.concat(parts, 0)));
  } finally {
    for (const p of parts) p.dispose();
  }
}
