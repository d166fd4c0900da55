// Backpropagation that frees memory as it goes: a replacement for tfjs's engine.gradients with
// the same results, and ReLU's gradient taken from its output.
import * as tf from '@tensorflow/tfjs';
import { RELU_GRAD } from './kernel-names.ts';

/** The tfjs-core version whose engine internals this file was written against. */
export const GRADIENTS_PINNED_CORE_VERSION = '4.22.0';

interface TapeNode {
  id: number;
  kernelName: string;
  inputs: Record<string, tf.Tensor>;
  outputs: tf.Tensor[];
  saved?: tf.Tensor[];
  gradient?: (dys: (tf.Tensor | null)[]) => Record<string, () => tf.Tensor>;
}

interface EngineInternals {
  state: { activeTape: TapeNode[] | null; gradientDepth: number };
  scopedRun<T>(start: () => void, end: () => void, f: () => T): T;
  startTape(): void;
  endTape(): void;
  tidy<T extends tf.TensorContainer>(nameOrFn: string | (() => T), fn?: () => T): T;
  gradients(f: () => tf.Tensor, xs: tf.Tensor[], dy?: tf.Tensor, allowNoGradients?: boolean): { value: tf.Tensor; grads: tf.Tensor[] };
}

/**
 * The tape nodes on a path from one of `xs` to `y`, in tape order, each with its inputs pruned to
 * those that depend on `xs` (the only ones that get a gradient).
 */
function nodesFromXsToY(tape: TapeNode[], xs: tf.Tensor[], y: tf.Tensor): TapeNode[] {
  const fromXs = new Set<number>(xs.map((x) => x.id));
  const nodeFromXs = new Set<number>();
  for (const node of tape) {
    if (Object.values(node.inputs).some((t) => fromXs.has(t.id))) {
      nodeFromXs.add(node.id);
      for (const out of node.outputs) fromXs.add(out.id);
    }
  }
  const leadsToY = new Set<number>([y.id]);
  const nodeToY = new Set<number>();
  for (let i = tape.length - 1; i >= 0; i--) {
    const node = tape[i];
    if (node.outputs.some((o) => leadsToY.has(o.id))) {
      nodeToY.add(node.id);
      for (const t of Object.values(node.inputs)) leadsToY.add(t.id);
    }
  }
  const path: TapeNode[] = [];
  for (const node of tape) {
    if (!nodeFromXs.has(node.id) || !nodeToY.has(node.id)) continue;
    const inputs: Record<string, tf.Tensor> = {};
    for (const [name, t] of Object.entries(node.inputs)) if (fromXs.has(t.id)) inputs[name] = t;
    path.push({ ...node, inputs });
  }
  return path;
}

/**
 * engine.gradients, freeing as it goes. tfjs's own (tfjs-core 4.22) keeps every gradient it
 * computes, and every tensor a kernel saved for its gradient, until the whole backward pass ends:
 * the peak is about twice the forward activations (measured on a SimCLR ResNet-20 step: 3.8 MB
 * of saved tensors per image after the forward pass, 8.7 MB per image of wasm heap at the end of
 * the step), which caps the batch a 4 GB wasm heap can train. Walking the tape backwards, once a
 * node's input gradients are computed neither its outputs' gradients nor its saved tensors are
 * needed again (the tape is in creation order, so every consumer of an output was processed
 * before its producer): both are freed there. The results are the stock ones, tensor for tensor.
 */
function lowMemoryGradients(
  this: EngineInternals,
  f: () => tf.Tensor,
  xs: tf.Tensor[],
  dy?: tf.Tensor,
  allowNoGradients = false,
): { value: tf.Tensor; grads: tf.Tensor[] } {
  if (xs.length === 0) throw new Error('gradients() received an empty list of xs.');
  if (dy != null && dy.dtype !== 'float32') throw new Error(`dy must have 'float32' dtype, but has '${dy.dtype}'`);
  const y = this.scopedRun(
    () => this.startTape(),
    () => this.endTape(),
    () => this.tidy('forward', f),
  );
  if (!(y instanceof tf.Tensor)) throw new Error('The result y returned by f() must be a tensor.');
  const path = nodesFromXsToY(this.state.activeTape ?? [], xs, y);
  if (!allowNoGradients && path.length === 0) {
    throw new Error('Cannot compute gradient of y=f(x) with respect to x. Make sure that the f you passed encloses all operations that lead from x to y.');
  }
  const freeSaved = this.state.gradientDepth === 0; // higher-order gradients re-read the tape
  return this.tidy('backward', () => {
    const grads = new Map<number, tf.Tensor>([[y.id, dy ?? tf.ones(y.shape)]]);
    const requested = new Set<number>([y.id, ...xs.map((x) => x.id)]);
    // A gradient function may hand back its dy (or one tensor for two inputs): free a tensor
    // only when no other entry still holds it.
    const held = (t: tf.Tensor): boolean => {
      for (const g of grads.values()) if (g === t) return true;
      return false;
    };
    for (let i = path.length - 1; i >= 0; i--) {
      const node = path[i];
      if (node.gradient == null) throw new Error(`Cannot compute gradient: gradient function not found for ${node.kernelName}.`);
      const inputGradients = node.gradient(node.outputs.map((o) => grads.get(o.id) ?? null));
      for (const [name, x] of Object.entries(node.inputs)) {
        const gradientOf = inputGradients[name];
        if (gradientOf === undefined) {
          throw new Error(`Cannot backprop through input ${name}. Available gradients found: ${Object.keys(inputGradients)}.`);
        }
        const dx = this.tidy(gradientOf);
        if (dx.dtype !== 'float32') {
          throw new Error(`Error in gradient for op ${node.kernelName}. The gradient of input ${name} must have 'float32' dtype, but has '${dx.dtype}'`);
        }
        if (!tf.util.arraysEqual(dx.shape, x.shape)) {
          throw new Error(`Error in gradient for op ${node.kernelName}. The gradient of input '${name}' has shape '${dx.shape}', which does not match the shape of the input '${x.shape}'`);
        }
        const current = grads.get(x.id);
        if (current === undefined) {
          grads.set(x.id, dx);
        } else {
          grads.set(x.id, tf.add(current, dx));
          if (!held(current)) current.dispose();
          if (!held(dx)) dx.dispose();
        }
      }
      // Every consumer of this node's outputs has been processed: their gradients are final and
      // were just used for the last time.
      for (const o of node.outputs) {
        const g = grads.get(o.id);
        if (g === undefined || requested.has(o.id)) continue;
        grads.delete(o.id);
        if (!held(g)) g.dispose();
      }
      if (freeSaved) for (const t of node.saved ?? []) t.dispose();
    }
    const result = xs.map((x) => grads.get(x.id) as tf.Tensor);
    if (this.state.gradientDepth === 0) {
      for (const node of this.state.activeTape ?? []) for (const t of node.saved ?? []) t.dispose();
      this.state.activeTape = null;
    }
    return { value: y, grads: result };
  });
}

let stockGradients: EngineInternals['gradients'] | undefined;

/**
 * ReLU's gradient from its output instead of its input (y > 0 exactly where x > 0, NaN where x
 * is NaN): the output is saved anyway as the next layer's input, so the pre-activation (a batch
 * norm's output, one full activation per conv layer) no longer has to be kept for backprop; and
 * no float32 → float32 Cast (a copy on wasm) of the mask. Same values as tfjs's own.
 */
function registerReluGradientFromOutput(): void {
  tf.registerGradient({
    kernelName: 'Relu',
    outputsToSave: [true],
    gradFunc: (dy: tf.Tensor | tf.Tensor[], saved: tf.Tensor[]) => {
      const [y] = saved;
      return {
        x: () =>
          // One pass where a backend has it (wasm, onnxruntime: models/engine/wasm/kernels.ts).
          tf.getKernel(RELU_GRAD, tf.getBackend()) !== undefined
            ? (tf.engine().runKernel(RELU_GRAD, { dy: dy as tf.Tensor, y }) as tf.Tensor)
            : tf.mul(dy as tf.Tensor, tf.step(y)),
      };
    },
  });
}

/**
 * Makes tf.grads / tf.variableGrads / optimizer.minimize free gradients and saved tensors during
 * backprop, and ReLU keep its output rather than its input (process-wide: the engine is). Returns false, changing nothing, on another tfjs-core
 * version than the one this was checked against. Safe to call more than once.
 */
export function installLowMemoryGradients(): boolean {
  if (tf.version_core !== GRADIENTS_PINNED_CORE_VERSION) return false;
  const engine = tf.engine() as unknown as EngineInternals;
  if (stockGradients === undefined) {
    stockGradients = engine.gradients;
    registerReluGradientFromOutput();
  }
  engine.gradients = lowMemoryGradients as EngineInternals['gradients'];
  return true;
}

/** Puts tfjs's own engine.gradients back (tests compare the two). */
export function uninstallLowMemoryGradients(): void {
  if (stockGradients !== undefined) (tf.engine() as unknown as EngineInternals).gradients = stockGradients;
}
