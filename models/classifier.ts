// The few-label classifier SimCLRv2 fine-tunes: encoder, the first K projection-head layers and a
// new zero-initialised linear layer, as one tf.LayersModel from raw [0, 1] pixels to logits.
import * as tf from '@tensorflow/tfjs';
import { headDepth, headOutputAt } from './head.ts';
import { embed } from './simclr.ts';
import { trainStep, type StepScalars } from './train-step.ts';

export interface ClassifierParts {
  encoder: tf.LayersModel;
  /** The head truncated after its first K blocks; null for K = 0 (the encoder output). */
  head: tf.LayersModel | null;
  logits: tf.layers.Layer;
}

/** Name of the classifier's last layer; its kernel and bias are the linear classifier. */
export const LOGITS_LAYER = 'classifier_logits';

/**
 * Composes `encoder` → `head` cut after `fromHeadLayer` blocks → Dense(numClasses) into one model
 * `[B, S, S, 3] → [B, numClasses]`. The logits layer starts at zero (SimCLRv2's fine-tuning head:
 * every class equally likely, the first gradients come from the features alone). The model takes
 * the encoder's and head's layers, so training it trains them, and owns them: the head blocks past
 * K are disposed here, and disposing the classifier frees the rest.
 */
export function buildClassifier(encoder: tf.LayersModel, head: tf.LayersModel, fromHeadLayer: number, numClasses: number): tf.LayersModel {
  const depth = headDepth(head);
  if (!(Number.isInteger(fromHeadLayer) && fromHeadLayer >= 0 && fromHeadLayer <= depth)) {
    throw new Error(`classifier.fromHeadLayer must be an integer in [0, ${depth}] for this ${depth}-layer head, got ${fromHeadLayer}`);
  }
  if (!(Number.isInteger(numClasses) && numClasses >= 2)) throw new Error(`classifier.numClasses must be an integer >= 2, got ${numClasses}`);
  const [, size, , channels] = encoder.inputs[0].shape as number[];
  const input = tf.input({ shape: [size, size, channels], name: 'pixels' });
  let x = encoder.apply(input) as tf.SymbolicTensor; // [B, D]
  const kept = fromHeadLayer > 0 ? headOutputAt(head, fromHeadLayer) : null;
  if (kept) x = kept.apply(x) as tf.SymbolicTensor; // [B, hidden]
  const inKept = new Set(kept?.layers ?? []);
  for (const layer of head.layers) if (!inKept.has(layer)) layer.dispose();
  const logits = tf.layers.dense({ units: numClasses, kernelInitializer: 'zeros', biasInitializer: 'zeros', name: LOGITS_LAYER }).apply(x) as tf.SymbolicTensor; // [B, K]
  return tf.model({ inputs: input, outputs: logits, name: 'classifier' });
}

/** The parts of a model built by {@link buildClassifier} (or loaded from its checkpoint). */
export function classifierParts(model: tf.LayersModel): ClassifierParts {
  const [, encoder, ...rest] = model.layers;
  const logits = rest.at(-1);
  if (!(encoder instanceof tf.LayersModel) || logits?.name !== LOGITS_LAYER || rest.length > 2 || (rest.length === 2 && !(rest[0] instanceof tf.LayersModel))) {
    throw new Error(`classifierParts: model '${model.name}' is not an encoder → head → ${LOGITS_LAYER} classifier`);
  }
  return { encoder, head: rest.length === 2 ? (rest[0] as tf.LayersModel) : null, logits };
}

/**
 * Logits of `x` through the parts: batch norm in training mode where `training` says so. A frozen
 * encoder runs in inference mode (its moving statistics stay as pretraining left them).
 */
export function classifierLogits(parts: ClassifierParts, x: tf.Tensor4D, training: { encoder: boolean; head: boolean }): tf.Tensor2D {
  let h = parts.encoder.apply(x, { training: training.encoder }) as tf.Tensor2D; // [B, D]
  if (parts.head) h = parts.head.apply(h, { training: training.head }) as tf.Tensor2D; // [B, hidden]
  return parts.logits.apply(h) as tf.Tensor2D; // [B, K]
}

/**
 * Mean softmax cross-entropy of `logits` [B, K] against integer `labels` [B], and the batch's top-1
 * accuracy: −(1/B) Σ_b log softmax(logits_b)[y_b].
 */
export function crossEntropy(logits: tf.Tensor2D, labels: tf.Tensor1D): { loss: tf.Scalar; accuracy: tf.Scalar } {
  return tf.tidy(() => {
    const numClasses = logits.shape[1];
    const logProbs = tf.logSoftmax(logits); // [B, K]
    const picked = tf.sum(tf.mul(logProbs, tf.oneHot(labels, numClasses)), 1); // [B]
    const loss = tf.neg(tf.mean(picked)) as tf.Scalar;
    const accuracy = tf.mean(tf.cast(tf.equal(tf.argMax(logits, 1), labels), 'float32')) as tf.Scalar;
    return { loss, accuracy };
  });
}

/**
 * One supervised step: logits through the parts (a frozen encoder contributes no variables and
 * keeps its batch-norm statistics), cross-entropy, the optimizer's update of every trainable weight.
 */
export function classifierStep(parts: ClassifierParts, optimizer: tf.Optimizer, x: tf.Tensor4D, labels: tf.Tensor1D, freezeEncoder: boolean): StepScalars<'accuracy'> {
  const layers = [...(freezeEncoder ? [] : [parts.encoder]), ...(parts.head ? [parts.head] : []), parts.logits];
  const variables = layers.flatMap((l) => l.trainableWeights).map((w) => w.read() as tf.Variable);
  return trainStep(variables, optimizer, () => {
    const { loss, accuracy } = crossEntropy(classifierLogits(parts, x, { encoder: !freezeEncoder, head: true }), labels);
    return { loss, scalars: { accuracy } };
  });
}

/** Top-1 accuracy of a classifier (inference mode) on `n` images [n, S, S, 3] with integer `labels`. */
export function topOneAccuracy(model: tf.LayersModel, pixels: Uint8Array | Float32Array, labels: ArrayLike<number>, n: number, size: number): number {
  const logits = embed(model, pixels, n, size); // [n, K]
  try {
    const predicted = tf.tidy(() => tf.argMax(logits, 1).dataSync());
    let correct = 0;
    for (let i = 0; i < n; i++) if (predicted[i] === labels[i]) correct++;
    return correct / n;
  } finally {
    logits.dispose();
  }
}
