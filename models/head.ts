// SimCLRv2 projection head (a deep MLP on the encoder features) and its truncation, since SimCLRv2
// fine-tunes from the output of the head's first layer rather than from the encoder.
import * as tf from '@tensorflow/tfjs';
import { BatchNorm } from './batch-norm.ts';

export interface ProjectionHeadOptions {
  /** Width of the encoder features the head reads. */
  inputDim: number;
  /** Number of dense + BN blocks; SimCLRv2 found 3 better than SimCLR's 2 (arXiv 2006.10029, §2). */
  layers?: number;
  /** Width of the hidden blocks; SimCLRv2 keeps the encoder's width. Defaults to inputDim. */
  hiddenDim?: number;
  /** Width of the projection the loss sees; 128 in SimCLR and SimCLRv2. */
  outputDim?: number;
  /** Seed of the dense kernels' initialisers (layer j uses seed + j); random when omitted. */
  seed?: number;
}

/** SimCLR's batch-norm settings (BATCH_NORM_DECAY, BATCH_NORM_EPSILON), not tfjs's 0.99 / 1e-3. */
const BN_MOMENTUM = 0.9;
const BN_EPSILON = 1e-5;

/** SimCLR initialises the head's kernels from N(0, 0.01²); BN right after makes the scale harmless. */
const KERNEL_STDDEV = 0.01;

function checkPositiveInteger(field: string, value: number): void {
  if (!(Number.isInteger(value) && value > 0)) {
    throw new Error(`projectionHead.${field} must be a positive integer, got ${value}`);
  }
}

/**
 * Builds the SimCLRv2 projection head as a functional tf.LayersModel `[B, inputDim] -> [B, outputDim]`.
 *
 * Block j (of `layers`) is `head_dense_j` (no bias) -> `head_bn_j` -> `head_relu_j`, except the last
 * block, which has no ReLU. This is google-research/simclr's `ProjectionHead` in 'nonlinear' mode:
 * every dense layer is followed by BN, which would cancel its bias by the mean subtraction
 * (`use_bias and not use_bn`), so BN's beta is the only offset.
 *
 * One deviation: simclr's last BN has no beta (`center=use_bias=False`); ours keeps one because
 * tfjs-layers 4.22's BatchNormalization reads gamma and beta unconditionally in training mode
 * (`normalizeBatchInTraining(input, this.gamma.read(), this.beta.read(), ...)`), so `center: false`
 * crashes the first training step. The cost is outputDim extra parameters (an offset the loss's
 * L2 normalisation sees); it is excluded from weight decay like every beta.
 */
export function buildProjectionHead(options: ProjectionHeadOptions): tf.LayersModel {
  const { inputDim, layers = 3, hiddenDim = options.inputDim, outputDim = 128, seed } = options;
  checkPositiveInteger('inputDim', inputDim);
  checkPositiveInteger('layers', layers);
  checkPositiveInteger('hiddenDim', hiddenDim);
  checkPositiveInteger('outputDim', outputDim);
  if (seed !== undefined && !Number.isInteger(seed)) throw new Error(`projectionHead.seed must be an integer, got ${seed}`);

  const input = tf.input({ shape: [inputDim], name: 'head_input' });
  let x: tf.SymbolicTensor = input; // [B, inputDim]
  for (let j = 0; j < layers; j++) {
    const last = j === layers - 1;
    x = tf.layers
      .dense({
        units: last ? outputDim : hiddenDim,
        useBias: false,
        kernelInitializer: tf.initializers.randomNormal({ mean: 0, stddev: KERNEL_STDDEV, seed: seed === undefined ? undefined : seed + j }),
        name: `head_dense_${j}`,
      })
      .apply(x) as tf.SymbolicTensor; // [B, hiddenDim] or [B, outputDim] for the last
    // The project's BatchNorm (numerically tfjs's, saved under its name): the class a loaded
    // checkpoint gets, so a resumed run computes exactly what the uninterrupted one did.
    x = new BatchNorm({ momentum: BN_MOMENTUM, epsilon: BN_EPSILON, name: `head_bn_${j}` }).apply(x) as tf.SymbolicTensor;
    if (!last) x = tf.layers.reLU({ name: `head_relu_${j}` }).apply(x) as tf.SymbolicTensor;
  }
  return tf.model({ inputs: input, outputs: x, name: 'projection_head' });
}

/** Number of dense + BN blocks in a head built by {@link buildProjectionHead}. */
export function headDepth(head: tf.LayersModel): number {
  return head.layers.filter((layer) => /^head_dense_\d+$/.test(layer.name)).length;
}

/**
 * The head truncated after its first `k` blocks, `[B, inputDim] -> [B, width]`: k = 0 is the
 * encoder features themselves (SimCLR's fine-tuning point), k = 1 the first block's output after
 * its ReLU (SimCLRv2's), k = depth the full head. The returned model shares its layers, and so its
 * weights, with `head`: fine-tuning it trains the same variables.
 */
export function headOutputAt(head: tf.LayersModel, k: number): tf.LayersModel {
  const depth = headDepth(head);
  if (depth === 0) throw new Error(`headOutputAt: model '${head.name}' has no head_dense_<j> layers; build it with buildProjectionHead`);
  if (!(Number.isInteger(k) && k >= 0 && k <= depth)) {
    throw new Error(`headOutputAt: k must be an integer in [0, ${depth}] for this ${depth}-layer head, got ${k}`);
  }
  const input = head.inputs[0];
  const lastBlock = k === depth;
  const output =
    k === 0
      ? input
      : (head.getLayer(lastBlock ? `head_bn_${k - 1}` : `head_relu_${k - 1}`).output as tf.SymbolicTensor);
  return tf.model({ inputs: input, outputs: output, name: `projection_head_${k}` });
}
