// Names of the project's own tfjs kernels: the networks and gradients run them where a backend
// has registered them (wasm, and so onnxruntime: wasm/kernels.ts), and fall back to stock ops.

/**
 * Training batch norm as one fused step each way (models/batch-norm.ts runs them). Forward:
 * {x, gamma, beta}, {epsilon} → [y, mean, variance, invStd]; backward: {dy, x, mean, invStd,
 * gamma} → [dx, dGamma, dBeta].
 */
export const BATCH_NORM_FORWARD = 'SimclrBatchNormForward';
export const BATCH_NORM_BACKWARD = 'SimclrBatchNormBackward';

/** Kernel {dy, y} → dy · step(y), ReLU's gradient from its output, in one pass (gradients.ts runs it). */
export const RELU_GRAD = 'SimclrReluGrad';
