// Contrastive losses for SimCLR pretraining: NT-Xent over a batch of paired projections, and the
// temperature default that goes with the image size.
import * as tf from '@tensorflow/tfjs';

/** Subtracted from each anchor's self-similarity so that it never wins the softmax (SimCLR's LARGE_NUM). */
const SELF_MASK = 1e9;

/** Floor under the squared norm before normalising, as tf.math.l2_normalize: a zero vector stays zero, no NaN. */
const NORM_EPSILON = 1e-12;

export interface NtXentResult {
  /** Mean NT-Xent over the 2N anchors; differentiable. */
  loss: tf.Scalar;
  /**
   * Fraction of the 2N anchors whose most similar candidate (among the 2N-1 others) is its positive.
   * Ties go to the lowest index, as argMax. A monitoring metric: it carries no gradient.
   */
  accuracy: tf.Scalar;
}

/**
 * NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen et al. 2020,
 * arXiv 2002.05709, Algorithm 1 and eq. 1), also used unchanged by SimCLRv2 (arXiv 2006.10029).
 *
 * With z = [z1; z2] the 2N projections, u_k = z_k / ||z_k|| and s_ij = u_i·u_j:
 *
 *   ℓ(i, j) = -log( exp(s_ij / τ) / Σ_{k≠i} exp(s_ik / τ) )
 *   L = 1/(2N) Σ_{i=1..2N} ℓ(i, p(i)),   p(i) = i + N for i < N, i − N otherwise
 *
 * i.e. each of the 2N views is an anchor whose positive is the other view of its image and whose
 * negatives are the 2(N−1) views of the other images. google-research/simclr sums its two
 * N-anchor halves (loss_a + loss_b), which is exactly twice this mean; the paper's 1/(2N) is kept
 * so that the value reads against its bounds: 0 (perfect) and log(2N−1) (all similarities equal).
 *
 * @param z1 [N, D] projections of the first views.
 * @param z2 [N, D] projections of the second views; row i is the positive of z1's row i.
 * @param temperature τ > 0; see {@link defaultTemperature}.
 */
export function ntXentLoss(z1: tf.Tensor2D, z2: tf.Tensor2D, temperature: number): NtXentResult {
  if (!(Number.isFinite(temperature) && temperature > 0)) {
    throw new Error(`ntXentLoss: temperature must be a positive finite number, got ${temperature}`);
  }
  if (z1.rank !== 2 || z2.rank !== 2) {
    throw new Error(`ntXentLoss: z1 and z2 must be [N, D], got [${z1.shape}] and [${z2.shape}]`);
  }
  if (z1.shape[0] !== z2.shape[0] || z1.shape[1] !== z2.shape[1]) {
    throw new Error(`ntXentLoss: z1 and z2 must have the same shape, got [${z1.shape}] and [${z2.shape}]`);
  }
  const n = z1.shape[0];
  if (n < 1) throw new Error('ntXentLoss: the batch must hold at least one pair (N >= 1)');

  return tf.tidy(() => {
    const z = tf.concat([z1, z2], 0); // [2N, D]
    const sumSq = tf.sum(tf.square(z), 1, true); // [2N, 1]
    const u = tf.mul(z, tf.rsqrt(tf.maximum(sumSq, NORM_EPSILON))); // [2N, D]
    const similarity = tf.matMul(u, u, false, true); // [2N, 2N]
    const selfMask = tf.mul(tf.eye(2 * n), SELF_MASK); // [2N, 2N]
    const logits = tf.sub(tf.div(similarity, temperature), selfMask); // [2N, 2N]

    // Positive of anchor i is i + N (first views) or i − N (second views).
    const positiveIndex = tf.concat([tf.range(n, 2 * n, 1, 'int32'), tf.range(0, n, 1, 'int32')]); // [2N]
    const target = tf.oneHot(positiveIndex, 2 * n); // [2N, 2N]
    const logProb = tf.logSoftmax(logits, 1); // [2N, 2N]
    const loss = tf.neg(tf.mean(tf.sum(tf.mul(target, logProb), 1))) as tf.Scalar;

    // argMax has no gradient and nothing flows from the accuracy into the loss, so backprop
    // from `loss` never visits these ops.
    const predicted = tf.argMax(logits, 1); // [2N]
    const accuracy = tf.mean(tf.cast(tf.equal(predicted, positiveIndex), 'float32')) as tf.Scalar;
    return { loss, accuracy };
  });
}

/**
 * SimCLR's temperature for the image size. SimCLR (Appendix B.9) used τ = 0.5 for CIFAR-10
 * (32 px); SimCLRv2 used τ = 0.1 on ImageNet (224 px), where the larger model and batch make the
 * sharper distribution pay off. Between the two we switch at 64 px: small images stay with the
 * CIFAR setting that was tuned for them.
 */
export function defaultTemperature(imageSize: number): number {
  if (!(Number.isFinite(imageSize) && imageSize > 0)) {
    throw new Error(`defaultTemperature: imageSize must be a positive number of pixels, got ${imageSize}`);
  }
  return imageSize <= 64 ? 0.5 : 0.1;
}

/**
 * Distillation loss of SimCLRv2's third step (arXiv 2006.10029, eq. 3; Hinton et al. 2015): the
 * student matches the teacher's softened class distribution,
 *
 *   L = τ² · (1/B) Σ_b −Σ_y P_T(y | x_b; τ) · log P_S(y | x_b; τ),   P(· | x; τ) = softmax(logits / τ)
 *
 * The τ² keeps the gradient's size comparable across temperatures (∂L/∂s = τ·(P_S − P_T)/B), as
 * google-research/simclr's distillation code does. The teacher's logits are targets: compute them
 * outside the gradient tape (tfjs has no stop_gradient), so nothing is differentiated through them.
 *
 * @param student [B, K] student logits.
 * @param teacher [B, K] teacher logits.
 * @param temperature τ > 0.
 */
export function distillationLoss(student: tf.Tensor2D, teacher: tf.Tensor2D, temperature: number): tf.Scalar {
  if (!(Number.isFinite(temperature) && temperature > 0)) throw new Error(`distillationLoss: temperature must be a positive finite number, got ${temperature}`);
  if (student.rank !== 2 || student.shape[0] !== teacher.shape[0] || student.shape[1] !== teacher.shape[1]) {
    throw new Error(`distillationLoss: student and teacher logits must both be [B, K], got [${student.shape}] and [${teacher.shape}]`);
  }
  return tf.tidy(() => {
    const target = tf.softmax(tf.div(teacher, temperature)); // [B, K]
    const logProb = tf.logSoftmax(tf.div(student, temperature)); // [B, K]
    const crossEntropy = tf.neg(tf.mean(tf.sum(tf.mul(target, logProb), 1))); // []
    return tf.mul(crossEntropy, temperature * temperature) as tf.Scalar;
  });
}
