// Weighted k-nearest-neighbour classification of embeddings (Wu et al. 2018, "Unsupervised Feature
// Learning via Non-Parametric Instance Discrimination"): the usual kNN monitor of SSL encoders.
import * as tf from '@tensorflow/tfjs';

export interface KnnOptions {
  /** Neighbours that vote; 200 is the customary value for CIFAR-size sets. */
  k?: number;
  /** Vote weight exp(cos / τ); 0.1 as in InstDisc and the SimCLR/MoCo kNN monitors. */
  temperature?: number;
  numClasses: number;
  /** Query rows per similarity block, bounding memory at chunk × train rows floats. */
  chunk?: number;
}

function validate({ k = 200, temperature = 0.1, numClasses, chunk = 256 }: KnnOptions) {
  if (!Number.isInteger(k) || k < 1) throw new Error(`knn.k must be a positive integer, got ${k}`);
  if (!(temperature > 0)) throw new Error(`knn.temperature must be > 0, got ${temperature}`);
  if (!Number.isInteger(numClasses) || numClasses < 1) throw new Error(`knn.numClasses must be a positive integer, got ${numClasses}`);
  if (!Number.isInteger(chunk) || chunk < 1) throw new Error(`knn.chunk must be a positive integer, got ${chunk}`);
  return { k, temperature, numClasses, chunk };
}

/**
 * Predicts a class for each query row: the k train rows of highest cosine similarity each vote for
 * their label with weight exp(sim / τ). Returns Int32Array predictions [Nq].
 * trainFeatures [Nt, D], trainLabels [Nt] (0..K-1), queryFeatures [Nq, D].
 */
export function knnPredict(trainFeatures: tf.Tensor2D, trainLabels: Int32Array, queryFeatures: tf.Tensor2D, options: KnnOptions): Int32Array {
  const { k, temperature, numClasses, chunk } = validate(options);
  const [nTrain, dim] = trainFeatures.shape;
  if (trainLabels.length !== nTrain) throw new Error(`knn: ${trainLabels.length} labels for ${nTrain} train rows`);
  if (queryFeatures.shape[1] !== dim) throw new Error(`knn: query dim ${queryFeatures.shape[1]} != train dim ${dim}`);
  for (const label of trainLabels) {
    if (label < 0 || label >= numClasses) throw new Error(`knn: train label ${label} outside 0..${numClasses - 1}`);
  }
  const kk = Math.min(k, nTrain);
  const nQuery = queryFeatures.shape[0];
  const predictions = new Int32Array(nQuery);
  const trainNorm = tf.tidy(() => tf.transpose(l2Normalize(trainFeatures))); // [D, Nt]
  const labels = tf.tensor1d(trainLabels, 'int32');
  try {
    for (let start = 0; start < nQuery; start += chunk) {
      const size = Math.min(chunk, nQuery - start);
      const best = tf.tidy(() => {
        const q = l2Normalize(tf.slice(queryFeatures, [start, 0], [size, dim]));
        const sim = tf.matMul(q, trainNorm); // [size, Nt]
        const { values, indices } = tf.topk(sim, kk); // [size, k] each
        const weights = tf.exp(tf.div(values, temperature)); // [size, k]
        const neighbourLabels = tf.gather(labels, indices); // [size, k]
        const votes = tf.mul(tf.oneHot(neighbourLabels, numClasses), tf.expandDims(weights, 2)); // [size, k, K]
        return tf.argMax(tf.sum(votes, 1), 1); // [size]
      });
      predictions.set(best.dataSync() as Int32Array, start);
      best.dispose();
    }
  } finally {
    trainNorm.dispose();
    labels.dispose();
  }
  return predictions;
}

function l2Normalize(x: tf.Tensor2D): tf.Tensor2D {
  return tf.div(x, tf.maximum(tf.norm(x, 2, 1, true), 1e-12));
}

/** Fraction of predictions equal to the labels. */
export function accuracy(predicted: Int32Array, labels: Int32Array): number {
  if (predicted.length !== labels.length) throw new Error(`accuracy: ${predicted.length} predictions for ${labels.length} labels`);
  let hits = 0;
  for (let i = 0; i < labels.length; i++) if (predicted[i] === labels[i]) hits++;
  return labels.length === 0 ? 0 : hits / labels.length;
}
