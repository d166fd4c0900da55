// One optimisation step of any network: the loss and its extra scalars from a loss function, the
// gradients of the given variables, the optimizer's update, the scalars read back. No leaks.
import * as tf from '@tensorflow/tfjs';

/** What a loss function returns: the differentiable loss and scalars to report beside it (accuracy, ...). */
export interface LossOutput<S extends string = never> {
  loss: tf.Scalar;
  scalars?: Record<S, tf.Scalar>;
}

/** The loss and each extra scalar as a number. */
export type StepScalars<S extends string = never> = { loss: number } & Record<S, number>;

/**
 * Runs `lossFn` under a gradient tape, applies the gradients of `variables` with `optimizer` and
 * returns the loss and the extra scalars as numbers (one read-back per step). Everything the loss
 * function makes is freed, so are the gradients; the optimizer keeps only its own slots.
 */
export function trainStep<S extends string = never>(variables: tf.Variable[], optimizer: tf.Optimizer, lossFn: () => LossOutput<S>): StepScalars<S> {
  let scalars: Record<string, tf.Scalar> = {};
  const lossTensor = tf.tidy(() => {
    const { value, grads } = tf.variableGrads(() => {
      const out = lossFn();
      scalars = Object.fromEntries(Object.entries<tf.Scalar>(out.scalars ?? {}).map(([k, v]) => [k, tf.keep(v)]));
      return out.loss;
    }, variables);
    optimizer.applyGradients(grads);
    return value;
  });
  try {
    const result: Record<string, number> = { loss: (lossTensor.dataSync() as Float32Array)[0] };
    for (const [k, v] of Object.entries(scalars)) result[k] = v.dataSync()[0];
    return result as StepScalars<S>;
  } finally {
    lossTensor.dispose();
    for (const v of Object.values(scalars)) v.dispose();
  }
}
