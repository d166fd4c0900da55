// Optimizers for SimCLR training: LARS (pretraining at large batch), SGD with momentum and Adam, all
// with weight decay that skips batch-norm and bias weights, a per-step learning rate, and state
// that can be saved and restored (getWeights/setWeights, the tf.Optimizer contract).
import * as tf from '@tensorflow/tfjs';

/** A tensor with the name it is saved under (tfjs-core's NamedTensor, which tfjs does not re-export). */
export interface NamedTensor {
  name: string;
  tensor: tf.Tensor;
}

/** Selects variables by their tfjs name (`layer/weight`, possibly with a `_N` dedup suffix). */
export type VariableFilter = RegExp | ((name: string) => boolean);

/**
 * The default exclusion from weight decay and from LARS's trust ratio: batch-norm gamma/beta and
 * biases, as google-research/simclr (`exclude_from_weight_decay=['batch_normalization', 'bias']`).
 *
 * tf.layers names weights `<layer>/<weight>` (`head_bn_0/gamma`, `dense_Dense1/bias`) and appends
 * `_1`, `_2` ... when a name is already taken in the process (`head_bn_0/gamma_1`). So this looks
 * at the weight's own name (gamma, beta, bias), and at layer names that mark batch norm
 * (`batch_normalization_3`, `bn1`, `head_bn_0`, `block2/bn`) as whole `_`- or `/`-separated parts,
 * so that a name like `subnet/kernel` is not caught by a bare /bn/. Moving mean and variance are not
 * trainable and never reach an optimizer.
 */
export function isBatchNormOrBias(name: string): boolean {
  const slash = name.lastIndexOf('/');
  const layer = name.slice(0, Math.max(slash, 0));
  const weight = name.slice(slash + 1).replace(/_\d+$/, '');
  if (weight === 'gamma' || weight === 'beta' || weight === 'bias') return true;
  return /(?:^|[/_])(?:batch_normalization|batch_norm|batchnorm|bn)\d*(?:[/_]|$)/i.test(layer);
}

/** Base options of every optimizer here. */
export interface WeightDecayOptions {
  /** Rate of the first step; the training loop changes it per step with setLearningRate. */
  learningRate: number;
  /** L2 coefficient wd: the update uses g + wd·w for every variable not excluded. */
  weightDecay?: number;
  /** Variables without weight decay; default {@link isBatchNormOrBias}. */
  excludeFromWeightDecay?: VariableFilter;
}

function toPredicate(filter: VariableFilter): (name: string) => boolean {
  return filter instanceof RegExp ? (name) => filter.test(name) : filter;
}

/** `layer/kernel_3` -> `layer/kernel`: the name a weight has when it is the first of its name in a process. */
function canonicalName(name: string): string {
  return name.replace(/_\d+$/, '');
}

function check(ok: boolean, message: string): void {
  if (!ok) throw new Error(message);
}

function checkRate(prefix: string, field: string, value: number): void {
  check(Number.isFinite(value) && value >= 0, `${prefix}.${field} must be a finite number >= 0, got ${value}`);
}

function checkUnitInterval(prefix: string, field: string, value: number): void {
  check(Number.isFinite(value) && value >= 0 && value < 1, `${prefix}.${field} must be in [0, 1), got ${value}`);
}

type Slots = Map<string, tf.Variable>;

/**
 * Shared machinery: per-variable slot variables keyed by variable name, weight decay with
 * exclusions, the learning rate as a plain number read at each step, and state save/restore.
 *
 * State (getWeights) is `iter` (int32 step count, first, as every tf.Optimizer) followed by
 * `<variable name>/<slot>` for each variable and slot. setWeights matches restored slots to
 * variables by exact name, else by the name without its `_N` dedup suffix when that is unique, so a
 * resumed process whose models were built in a different order still finds its state; a variable
 * with no match while restored state is still unclaimed is an error, not a silent fresh start.
 */
export abstract class WeightDecayOptimizer extends tf.Optimizer {
  protected lr: number;
  readonly weightDecay: number;
  protected readonly decays: (name: string) => boolean;
  /** Slot names this optimizer keeps per variable, e.g. ['momentum']. */
  protected abstract readonly slotNames: readonly string[];
  private readonly slots = new Map<string, Slots>();
  /** Restored by setWeights and not yet matched to a variable. */
  private restored = new Map<string, Slots>();

  protected constructor(
    protected readonly prefix: string,
    options: WeightDecayOptions,
  ) {
    super();
    checkRate(prefix, 'learningRate', options.learningRate);
    checkRate(prefix, 'weightDecay', options.weightDecay ?? 0);
    this.lr = options.learningRate;
    this.weightDecay = options.weightDecay ?? 0;
    const excluded = toPredicate(options.excludeFromWeightDecay ?? isBatchNormOrBias);
    this.decays = (name) => this.weightDecay > 0 && !excluded(name);
  }

  get learningRate(): number {
    return this.lr;
  }

  /** Sets the rate used from the next applyGradients on (the schedule calls this every step). */
  setLearningRate(learningRate: number): void {
    checkRate(this.prefix, 'learningRate', learningRate);
    this.lr = learningRate;
  }

  /**
   * Returns the variable's next value; runs inside tf.tidy. `g` already includes weight decay where
   * it applies; `step` is 1 for the first update.
   */
  protected abstract update(name: string, w: tf.Variable, g: tf.Tensor, slots: Slots, step: number): tf.Tensor;

  override applyGradients(variableGradients: tf.NamedTensorMap | NamedTensor[]): void {
    const entries: [string, tf.Tensor][] = Array.isArray(variableGradients)
      ? variableGradients.map(({ name, tensor }) => [name, tensor])
      : Object.entries(variableGradients);
    const registered = tf.engine().registeredVariables;
    const work: { name: string; w: tf.Variable; g: tf.Tensor; slots: Slots }[] = [];
    // Resolve every variable and its state before touching any, so a mismatch leaves all unchanged.
    for (const [name, g] of entries) {
      if (g == null) continue;
      const w = registered[name];
      check(w != null, `${this.prefix}: no variable named '${name}' is registered`);
      work.push({ name, w, g, slots: this.slotsFor(name, w) });
    }
    const step = this.iterations + 1;
    for (const { name, w, g, slots } of work) {
      tf.tidy(() => {
        const decayed = this.decays(name) ? tf.add(g, tf.mul(w, this.weightDecay)) : g;
        w.assign(this.update(name, w, decayed, slots, step));
      });
    }
    this.incrementIterations();
  }

  private slotsFor(name: string, w: tf.Variable): Slots {
    const live = this.slots.get(name);
    if (live) return live;
    let key: string | undefined = this.restored.has(name) ? name : undefined;
    if (key === undefined) {
      const same = [...this.restored.keys()].filter((k) => canonicalName(k) === canonicalName(name));
      if (same.length === 1) key = same[0];
    }
    let slots: Slots;
    if (key !== undefined) {
      slots = this.restored.get(key)!;
      this.restored.delete(key);
      for (const [slot, v] of slots) {
        check(
          tf.util.arraysEqual(v.shape, w.shape),
          `${this.prefix}: restored state '${key}/${slot}' has shape [${v.shape}] but variable '${name}' has [${w.shape}]`,
        );
      }
    } else {
      check(
        this.restored.size === 0,
        `${this.prefix}: optimizer state was restored for [${[...this.restored.keys()].slice(0, 5).join(', ')}${this.restored.size > 5 ? ', ...' : ''}] ` +
          `but has none for variable '${name}'; variable names must match those at save time`,
      );
      slots = new Map(this.slotNames.map((slot) => [slot, tf.tidy(() => tf.variable(tf.zerosLike(w), false))]));
    }
    this.slots.set(name, slots);
    return slots;
  }

  /** The state as fresh tensors (the caller disposes all of them): `iter`, then `<variable>/<slot>`. */
  override async getWeights(): Promise<NamedTensor[]> {
    const state: NamedTensor[] = [await this.saveIterations()];
    for (const table of [this.slots, this.restored]) {
      for (const [name, slots] of table) {
        for (const [slot, v] of slots) state.push({ name: `${name}/${slot}`, tensor: tf.clone(v) });
      }
    }
    return state;
  }

  /** Replaces the state with a copy of `weightValues` (as getWeights returns); the caller keeps ownership of them. */
  override async setWeights(weightValues: NamedTensor[]): Promise<void> {
    check(weightValues.length > 0 && weightValues[0].name === 'iter', `${this.prefix}: optimizer state must start with 'iter', got '${weightValues[0]?.name}'`);
    const restored = new Map<string, Slots>();
    try {
      for (const { name, tensor } of weightValues.slice(1)) {
        const cut = name.lastIndexOf('/');
        const variable = name.slice(0, cut);
        const slot = name.slice(cut + 1);
        check(cut > 0 && this.slotNames.includes(slot), `${this.prefix}: optimizer state '${name}' is not '<variable>/<slot>' with slot in [${this.slotNames}]`);
        if (!restored.has(variable)) restored.set(variable, new Map());
        const slots = restored.get(variable)!;
        check(!slots.has(slot), `${this.prefix}: optimizer state '${name}' appears twice`);
        // tidy frees the cast copy; the variable keeps its own reference to the data.
        slots.set(slot, tf.tidy(() => tf.variable(tf.cast(tensor, 'float32'), false)));
      }
      for (const [variable, slots] of restored) {
        for (const slot of this.slotNames) check(slots.has(slot), `${this.prefix}: optimizer state for '${variable}' lacks slot '${slot}'`);
      }
    } catch (err) {
      for (const slots of restored.values()) tf.dispose([...slots.values()]);
      throw err;
    }
    await this.extractIterations(weightValues);
    this.disposeSlots();
    this.restored = restored;
  }

  private disposeSlots(): void {
    for (const table of [this.slots, this.restored]) {
      for (const slots of table.values()) tf.dispose([...slots.values()]);
      table.clear();
    }
  }

  override dispose(): void {
    this.disposeSlots();
  }
}

export interface LarsOptions extends WeightDecayOptions {
  /** 0.9 in SimCLR. */
  momentum?: number;
  /** Trust coefficient η; 0.001 as in simclr's EETA_DEFAULT. */
  eta?: number;
  /** Variables updated with the plain learning rate (trust ratio 1); defaults to excludeFromWeightDecay, as simclr. */
  excludeFromLayerAdaptation?: VariableFilter;
}

/**
 * LARS (You et al. 2017, arXiv 1708.03888) exactly as google-research/simclr's `LARSOptimizer`
 * with its default `classic_momentum=True`, no Nesterov. Per variable w with gradient g:
 *
 *   g ← g + wd·w                                              (unless excluded from weight decay)
 *   trust = η·‖w‖ / ‖g‖  if ‖w‖ > 0 and ‖g‖ > 0, else 1      (1 if excluded from adaptation)
 *   v ← momentum·v + lr·trust·g
 *   w ← w − v
 *
 * The norm in the trust ratio is of the decayed gradient, and the rate sits inside the momentum
 * buffer (classic momentum), so a schedule change affects v gradually, as there. SimCLR uses
 * weight decay 1e-6 for pretraining (the default here) and excludes BN and biases from both.
 */
export class LarsOptimizer extends WeightDecayOptimizer {
  static className = 'LARS';
  protected readonly slotNames = ['momentum'] as const;
  readonly momentum: number;
  readonly eta: number;
  private readonly adapts: (name: string) => boolean;

  constructor(options: LarsOptions) {
    super('lars', { ...options, weightDecay: options.weightDecay ?? 1e-6 });
    this.momentum = options.momentum ?? 0.9;
    this.eta = options.eta ?? 1e-3;
    checkUnitInterval('lars', 'momentum', this.momentum);
    check(Number.isFinite(this.eta) && this.eta > 0, `lars.eta must be a finite number > 0, got ${this.eta}`);
    const excluded = toPredicate(options.excludeFromLayerAdaptation ?? options.excludeFromWeightDecay ?? isBatchNormOrBias);
    this.adapts = (name) => !excluded(name);
  }

  protected update(name: string, w: tf.Variable, g: tf.Tensor, slots: Slots): tf.Tensor {
    const v = slots.get('momentum')!;
    let scaledLr: tf.Tensor = tf.scalar(this.lr);
    if (this.adapts(name)) {
      const wNorm = tf.norm(w);
      const gNorm = tf.norm(g);
      const bothPositive = tf.logicalAnd(tf.greater(wNorm, 0), tf.greater(gNorm, 0));
      // tf.where picks per element; the division's inf for ‖g‖ = 0 is never selected.
      const trust = tf.where(bothPositive, tf.div(tf.mul(wNorm, this.eta), gNorm), tf.onesLike(wNorm));
      scaledLr = tf.mul(scaledLr, trust);
    }
    const nextV = tf.add(tf.mul(v, this.momentum), tf.mul(g, scaledLr));
    v.assign(nextV);
    return tf.sub(w, nextV);
  }

  override getConfig(): tf.serialization.ConfigDict {
    return { learningRate: this.lr, momentum: this.momentum, eta: this.eta, weightDecay: this.weightDecay };
  }
}

export interface SgdOptions extends WeightDecayOptions {
  /** 0.9, SimCLR's fine-tuning and linear-evaluation setting. */
  momentum?: number;
}

/**
 * SGD with (heavy-ball) momentum, PyTorch/tfjs convention: v ← momentum·v + g, w ← w − lr·v, with
 * g including L2 weight decay g + wd·w where not excluded. L2 rather than decoupled decay because
 * that is what simclr does for its non-LARS optimizers (an L2 term added to the loss).
 */
export class SgdMomentumOptimizer extends WeightDecayOptimizer {
  static className = 'SGDMomentum';
  protected readonly slotNames = ['momentum'] as const;
  readonly momentum: number;

  constructor(options: SgdOptions) {
    super('sgd', options);
    this.momentum = options.momentum ?? 0.9;
    checkUnitInterval('sgd', 'momentum', this.momentum);
  }

  protected update(_name: string, w: tf.Variable, g: tf.Tensor, slots: Slots): tf.Tensor {
    const v = slots.get('momentum')!;
    const nextV = tf.add(tf.mul(v, this.momentum), g);
    v.assign(nextV);
    return tf.sub(w, tf.mul(nextV, this.lr));
  }

  override getConfig(): tf.serialization.ConfigDict {
    return { learningRate: this.lr, momentum: this.momentum, weightDecay: this.weightDecay };
  }
}

export interface AdamOptions extends WeightDecayOptions {
  beta1?: number;
  beta2?: number;
  epsilon?: number;
}

/**
 * Adam (Kingma & Ba 2015) with bias correction and L2 weight decay folded into the gradient
 * (g + wd·w, not AdamW's decoupled decay), for the same reason and with the same exclusions as
 * {@link SgdMomentumOptimizer}:
 *
 *   m ← β1·m + (1−β1)·g,  s ← β2·s + (1−β2)·g²,  w ← w − lr·(m / (1−β1^t)) / (√(s / (1−β2^t)) + ε)
 */
export class AdamL2Optimizer extends WeightDecayOptimizer {
  static className = 'AdamL2';
  protected readonly slotNames = ['m', 'v'] as const;
  readonly beta1: number;
  readonly beta2: number;
  readonly epsilon: number;

  constructor(options: AdamOptions) {
    super('adam', options);
    this.beta1 = options.beta1 ?? 0.9;
    this.beta2 = options.beta2 ?? 0.999;
    this.epsilon = options.epsilon ?? 1e-8;
    checkUnitInterval('adam', 'beta1', this.beta1);
    checkUnitInterval('adam', 'beta2', this.beta2);
    check(Number.isFinite(this.epsilon) && this.epsilon > 0, `adam.epsilon must be a finite number > 0, got ${this.epsilon}`);
  }

  protected update(_name: string, w: tf.Variable, g: tf.Tensor, slots: Slots, step: number): tf.Tensor {
    const m = slots.get('m')!;
    const s = slots.get('v')!;
    const nextM = tf.add(tf.mul(m, this.beta1), tf.mul(g, 1 - this.beta1));
    const nextS = tf.add(tf.mul(s, this.beta2), tf.mul(tf.square(g), 1 - this.beta2));
    m.assign(nextM);
    s.assign(nextS);
    const mHat = tf.div(nextM, 1 - this.beta1 ** step);
    const sHat = tf.div(nextS, 1 - this.beta2 ** step);
    return tf.sub(w, tf.mul(tf.div(mHat, tf.add(tf.sqrt(sHat), this.epsilon)), this.lr));
  }

  override getConfig(): tf.serialization.ConfigDict {
    return { learningRate: this.lr, beta1: this.beta1, beta2: this.beta2, epsilon: this.epsilon, weightDecay: this.weightDecay };
  }
}

export type OptimizerName = 'lars' | 'sgd' | 'adam';
export const OPTIMIZER_NAMES: readonly OptimizerName[] = ['lars', 'sgd', 'adam'];

export type MakeOptimizerOptions =
  | ({ name: 'lars' } & LarsOptions)
  | ({ name: 'sgd' } & SgdOptions)
  | ({ name: 'adam' } & AdamOptions);

/** The optimizer the config names, each with its own defaults (see the classes). */
export function makeOptimizer(options: MakeOptimizerOptions): WeightDecayOptimizer {
  switch (options.name) {
    case 'lars':
      return new LarsOptimizer(options);
    case 'sgd':
      return new SgdMomentumOptimizer(options);
    case 'adam':
      return new AdamL2Optimizer(options);
    default:
      throw new Error(`optimizer.name must be one of ${OPTIMIZER_NAMES.join(', ')}, got '${(options as { name: unknown }).name}'`);
  }
}
