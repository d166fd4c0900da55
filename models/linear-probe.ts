// The linear probe of a frozen encoder: multinomial logistic regression on standardised embeddings,
// trained full-batch to convergence, as SSL papers report it (SimCLR's linear evaluation protocol).
import * as tf from '@tensorflow/tfjs';

export interface LinearProbeOptions {
  numClasses: number;
  /** L2 penalty on the weights (not the bias), λ/2·‖W‖²; small, so the probe measures the features. */
  l2?: number;
  /** Adam step size on the standardised features. */
  learningRate?: number;
  maxSteps?: number;
  /** Converged when the loss fell by less than this fraction over the last 50 steps. */
  tolerance?: number;
}

export interface LinearProbe {
  /** Per-feature mean and standard deviation of the training embeddings. */
  mean: Float32Array;
  std: Float32Array;
  weights: tf.Tensor2D; // [D, K]
  bias: tf.Tensor1D; // [K]
  /** Training-set loss and top-1 accuracy at the end, so a reader can see it fit. */
  trainLoss: number;
  trainAccuracy: number;
  steps: number;
  converged: boolean;
  dispose(): void;
}

/** Standardises `x` [N, D] with a probe's mean and std. */
function standardise(x: tf.Tensor2D, mean: Float32Array, std: Float32Array): tf.Tensor2D {
  return tf.tidy(() => tf.div(tf.sub(x, tf.tensor1d(mean)), tf.tensor1d(std)) as tf.Tensor2D);
}

/**
 * Fits W, b minimising mean cross-entropy(softmax(z W + b), y) + λ/2·‖W‖² on z = standardised
 * `features` [N, D] (each feature to zero mean, unit variance over the training rows), full batch
 * with Adam until the loss stops falling (or maxSteps).
 */
export function trainLinearProbe(features: tf.Tensor2D, labels: Int32Array, options: LinearProbeOptions): LinearProbe {
  const { numClasses, l2 = 5e-4, learningRate = 0.1, maxSteps = 2000, tolerance = 1e-4 } = options;
  const [n, d] = features.shape;
  if (labels.length !== n) throw new Error(`linearProbe: ${labels.length} labels for ${n} rows`);
  const { mean, std } = tf.tidy(() => {
    const m = tf.mean(features, 0); // [D]
    const s = tf.sqrt(tf.add(tf.mean(tf.square(tf.sub(features, m)), 0), 1e-8)); // [D]
    return { mean: m.dataSync() as Float32Array, std: s.dataSync() as Float32Array };
  });
  const z = standardise(features, mean, std); // [N, D]
  const y = tf.tidy(() => tf.oneHot(tf.tensor1d(labels, 'int32'), numClasses)); // [N, K]
  // In a tidy: tf.variable keeps its own reference to the zeros, which would otherwise stay behind.
  const weights = tf.tidy(() => tf.variable(tf.zeros([d, numClasses]) as tf.Tensor2D)); // [D, K]
  const bias = tf.tidy(() => tf.variable(tf.zeros([numClasses]) as tf.Tensor1D)); // [K]
  const optimizer = tf.train.adam(learningRate);
  const lossOf = () =>
    tf.tidy(() => {
      const logits = tf.add(tf.matMul(z, weights), bias); // [N, K]
      const ce = tf.neg(tf.mean(tf.sum(tf.mul(y, tf.logSoftmax(logits)), 1)));
      return tf.add(ce, tf.mul(l2 / 2, tf.sum(tf.square(weights)))) as tf.Scalar;
    });
  const history: number[] = [];
  let steps = 0;
  let converged = false;
  try {
    while (steps < maxSteps) {
      const loss = optimizer.minimize(lossOf, true, [weights, bias])!;
      history.push(loss.dataSync()[0]);
      loss.dispose();
      steps++;
      const then = history[history.length - 51];
      if (then !== undefined && then - history[history.length - 1] < tolerance * then) {
        converged = true;
        break;
      }
    }
    const { trainLoss, trainAccuracy } = tf.tidy(() => {
      const predicted = tf.argMax(tf.add(tf.matMul(z, weights), bias), 1);
      const acc = tf.mean(tf.cast(tf.equal(predicted, tf.tensor1d(labels, 'int32')), 'float32'));
      return { trainLoss: lossOf().dataSync()[0], trainAccuracy: acc.dataSync()[0] };
    });
    const w = tf.keep(weights.clone()) as tf.Tensor2D;
    const b = tf.keep(bias.clone()) as tf.Tensor1D;
    return { mean, std, weights: w, bias: b, trainLoss, trainAccuracy, steps, converged, dispose: () => tf.dispose([w, b]) };
  } finally {
    tf.dispose([z, y, weights, bias]);
    optimizer.dispose();
  }
}

/** Class predictions [N] of the probe for embeddings [N, D]. */
export function probePredict(probe: LinearProbe, features: tf.Tensor2D): Int32Array {
  return tf.tidy(() => tf.argMax(tf.add(tf.matMul(standardise(features, probe.mean, probe.std), probe.weights), probe.bias), 1).dataSync() as Int32Array);
}
