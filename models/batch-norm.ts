// Batch normalisation as a tf.layers layer whose training gradient is written out by hand (about
// 12 passes over the data instead of the ~30 of tfjs's composed gradient: fast on wasm).
import * as tf from '@tensorflow/tfjs';
import { BATCH_NORM_BACKWARD, BATCH_NORM_FORWARD } from './engine/kernel-names.ts';

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
  if (tf.getKernel(BATCH_NORM_FORWARD, tf.getBackend()) !== undefined && tf.getKernel(BATCH_NORM_BACKWARD, tf.getBackend()) !== undefined) {
    return batchNormTrainingFused(x, gamma, beta, epsilon);
  }
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
 * batchNormTraining through the backend's fused kernels: x itself is saved for the gradient (it
 * is alive anyway as the previous layer's output), not a centered copy.
 */
function batchNormTrainingFused(
  x: tf.Tensor4D,
  gamma: tf.Tensor1D,
  beta: tf.Tensor1D,
  epsilon: number,
): { y: tf.Tensor4D; mean: tf.Tensor1D; variance: tf.Tensor1D } {
  let mean: tf.Tensor1D | undefined;
  let variance: tf.Tensor1D | undefined;
  const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [xIn, gammaIn, betaIn, save] = args as [tf.Tensor4D, tf.Tensor1D, tf.Tensor1D, tf.GradSaveFunc];
    const [y, batchMean, batchVariance, invStd] = tf.engine().runKernel(BATCH_NORM_FORWARD, { x: xIn, gamma: gammaIn, beta: betaIn }, { epsilon }) as tf.Tensor[];
    [mean, variance] = [tf.keep(batchMean as tf.Tensor1D), tf.keep(batchVariance as tf.Tensor1D)];
    save([xIn, batchMean, invStd, gammaIn]);
    const gradFunc = (dy: tf.Tensor, saved: tf.Tensor[]): tf.Tensor[] => {
      const [xs, mu, inv, g] = saved;
      return tf.engine().runKernel(BATCH_NORM_BACKWARD, { dy, x: xs, mean: mu, invStd: inv, gamma: g }, {}) as tf.Tensor[];
    };
    return { value: y, gradFunc };
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
