// Tests for models/optimizers.ts: LARS / SGD / Adam steps against plain-JS copies of their formulas,
// BN and bias exclusions, per-step learning rate, state round-trip, leaks.
import * as tf from '@tensorflow/tfjs';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  AdamL2Optimizer,
  isBatchNormOrBias,
  LarsOptimizer,
  makeOptimizer,
  type MakeOptimizerOptions,
  SgdMomentumOptimizer,
  type WeightDecayOptimizer,
} from '../../models/optimizers.ts';
import { expectTensorClose } from '../helpers.ts';

beforeAll(async () => {
  await tf.setBackend('cpu');
});

// Variables live in a global registry by name; every test gets fresh names and frees its own.
let caseId = 0;
let owned: tf.Variable[] = [];
function variable(layerAndWeight: string, values: number[]): tf.Variable {
  const v = tf.variable(tf.tensor1d(values), true, `opt${caseId}_${layerAndWeight}`);
  owned.push(v);
  return v;
}
afterEach(() => {
  tf.dispose(owned);
  owned = [];
  caseId++;
});

function grads(entries: [tf.Variable, number[]][]): { name: string; tensor: tf.Tensor }[] {
  return entries.map(([v, g]) => ({ name: v.name, tensor: tf.tensor1d(g) }));
}

function step(opt: WeightDecayOptimizer, entries: [tf.Variable, number[]][]): void {
  const list = grads(entries);
  opt.applyGradients(list);
  tf.dispose(list.map((e) => e.tensor));
}

const values = (v: tf.Tensor) => Array.from(v.dataSync());
const norm = (x: number[]) => Math.sqrt(x.reduce((s, a) => s + a * a, 0));

interface Rule {
  decay: boolean;
  adapt: boolean;
}

/** simclr's LARSOptimizer (classic momentum) on plain arrays. */
function jsLars(w: number[], g: number[], v: number[], lr: number, o: { momentum: number; eta: number; wd: number } & Rule) {
  const gd = o.decay ? g.map((x, i) => x + o.wd * w[i]) : g;
  const [wn, gn] = [norm(w), norm(gd)];
  const trust = o.adapt && wn > 0 && gn > 0 ? (o.eta * wn) / gn : 1;
  const nv = v.map((x, i) => o.momentum * x + lr * trust * gd[i]);
  return { w: w.map((x, i) => x - nv[i]), v: nv };
}

function jsSgd(w: number[], g: number[], v: number[], lr: number, o: { momentum: number; wd: number; decay: boolean }) {
  const gd = o.decay ? g.map((x, i) => x + o.wd * w[i]) : g;
  const nv = v.map((x, i) => o.momentum * x + gd[i]);
  return { w: w.map((x, i) => x - lr * nv[i]), v: nv };
}

function jsAdam(w: number[], g: number[], m: number[], s: number[], t: number, lr: number, o: { wd: number; decay: boolean }) {
  const [b1, b2, eps] = [0.9, 0.999, 1e-8];
  const gd = o.decay ? g.map((x, i) => x + o.wd * w[i]) : g;
  const nm = m.map((x, i) => b1 * x + (1 - b1) * gd[i]);
  const ns = s.map((x, i) => b2 * x + (1 - b2) * gd[i] ** 2);
  const nw = w.map((x, i) => x - (lr * (nm[i] / (1 - b1 ** t))) / (Math.sqrt(ns[i] / (1 - b2 ** t)) + eps));
  return { w: nw, m: nm, s: ns };
}

describe('isBatchNormOrBias', () => {
  it('matches the names tf.layers gives BN gamma/beta and biases, also when deduplicated', () => {
    const build = () => {
      // Fixed layer names, so the second build gets deduplicated variable names (`conv/kernel_1`).
      const input = tf.input({ shape: [4, 4, 2] });
      const conv = tf.layers.conv2d({ filters: 2, kernelSize: 3, name: 'conv' }).apply(input) as tf.SymbolicTensor;
      const bn = tf.layers.batchNormalization({ name: 'batch_normalization' }).apply(conv) as tf.SymbolicTensor;
      const out = tf.layers.dense({ units: 2, name: 'fc' }).apply(tf.layers.flatten().apply(bn)) as tf.SymbolicTensor;
      return tf.model({ inputs: input, outputs: out });
    };
    const [a, b] = [build(), build()];
    const named = b.trainableWeights.map((w) => w.name);
    expect(named).toContain('batch_normalization/gamma_1');
    for (const model of [a, b]) {
      for (const w of model.trainableWeights) {
        const expected = /\/(gamma|beta|bias)(_\d+)?$/.test(w.name);
        expect(isBatchNormOrBias(w.name), w.name).toBe(expected);
      }
      expect(model.trainableWeights.filter((w) => isBatchNormOrBias(w.name)).length).toBe(4); // conv bias, gamma, beta, dense bias
    }
    a.dispose();
    b.dispose();
  });

  it.each([
    ['head_bn_0/gamma_3', true],
    ['batch_normalization_3/beta', true],
    ['block2/bn/gamma', true],
    ['stem_bn1/scale', true],
    ['dense_Dense1/bias_1', true],
    ['head_dense_0/kernel', false],
    ['conv2d_Conv2D3/kernel_2', false],
    ['subnet/kernel', false],
    ['embedding/kernel', false],
  ])('%s -> %s', (name, expected) => {
    expect(isBatchNormOrBias(name)).toBe(expected);
  });
});

describe('LarsOptimizer', () => {
  it('takes a hand-worked first and second step', () => {
    const w = variable('dense/kernel', [3, 4]); // ‖w‖ = 5
    const opt = new LarsOptimizer({ learningRate: 2, weightDecay: 0, momentum: 0.9, eta: 1e-3 });
    step(opt, [[w, [0.6, 0.8]]]); // ‖g‖ = 1, trust = 1e-3 · 5 / 1
    const v1 = [2 * 0.005 * 0.6, 2 * 0.005 * 0.8];
    expectTensorClose(w, [3 - v1[0], 4 - v1[1]], { atol: 1e-7, rtol: 1e-6 });
    // w is now 0.998 · [3, 4], so ‖w‖ = 4.99 and trust = 1e-3 · 4.99.
    step(opt, [[w, [0.6, 0.8]]]);
    const v2 = [0.9 * v1[0] + 2 * 0.00499 * 0.6, 0.9 * v1[1] + 2 * 0.00499 * 0.8];
    expectTensorClose(w, [3 - v1[0] - v2[0], 4 - v1[1] - v2[1]], { atol: 1e-7, rtol: 1e-6 });
    expect(opt.iterations).toBe(2);
    opt.dispose();
  });

  it('matches plain JS over two steps with decay, exclusions and a rate change', () => {
    const o = { momentum: 0.9, eta: 0.01, wd: 0.1 };
    const init = {
      kernel: [0.5, -1.5, 2.0, 0.25, -0.75, 1.0],
      bias: [0.1, -0.2, 0.3],
      gamma: [1.0, 0.9, 1.1],
      beta: [0.0, 0.05, -0.05],
    };
    const g = [
      { kernel: [0.1, 0.2, -0.3, 0.05, 0.0, -0.1], bias: [0.3, -0.1, 0.2], gamma: [-0.2, 0.1, 0.05], beta: [0.02, -0.04, 0.06] },
      { kernel: [-0.05, 0.1, 0.2, -0.1, 0.3, 0.0], bias: [-0.1, 0.2, 0.1], gamma: [0.1, -0.3, 0.2], beta: [-0.05, 0.01, 0.0] },
    ];
    const lrs = [0.5, 0.2];
    const vars = {
      kernel: variable('dense/kernel', init.kernel),
      bias: variable('dense/bias', init.bias),
      gamma: variable('bn/gamma', init.gamma),
      beta: variable('bn/beta', init.beta),
    };
    const opt = new LarsOptimizer({ learningRate: lrs[0], weightDecay: o.wd, momentum: o.momentum, eta: o.eta });
    const keys = ['kernel', 'bias', 'gamma', 'beta'] as const;
    const js = Object.fromEntries(keys.map((k) => [k, { w: init[k], v: init[k].map(() => 0) }]));
    for (let s = 0; s < 2; s++) {
      opt.setLearningRate(lrs[s]);
      step(opt, keys.map((k) => [vars[k], g[s][k]] as [tf.Variable, number[]]));
      for (const k of keys) {
        const rule = k === 'kernel' ? { decay: true, adapt: true } : { decay: false, adapt: false };
        js[k] = jsLars(js[k].w, g[s][k], js[k].v, lrs[s], { ...o, ...rule });
      }
    }
    for (const k of keys) expectTensorClose(vars[k], js[k].w, { atol: 1e-6, rtol: 1e-5 });
    // The exclusion is what makes bias differ from the kernel rule: with decay + trust it would be elsewhere.
    let wrong = { w: init.bias, v: [0, 0, 0] };
    for (let s = 0; s < 2; s++) wrong = jsLars(wrong.w, g[s].bias, wrong.v, lrs[s], { ...o, decay: true, adapt: true });
    expect(Math.abs(values(vars.bias)[0] - wrong.w[0])).toBeGreaterThan(1e-2);
    opt.dispose();
  });

  it('uses trust ratio 1 when ‖w‖ = 0 or ‖g‖ = 0', () => {
    const zeroW = variable('a/kernel', [0, 0]);
    const zeroG = variable('b/kernel', [1, 2]);
    const opt = new LarsOptimizer({ learningRate: 0.5, weightDecay: 0 });
    step(opt, [
      [zeroW, [2, -4]],
      [zeroG, [0, 0]],
    ]);
    expectTensorClose(zeroW, [-0.5 * 2, 0.5 * 4], { atol: 1e-7 });
    expectTensorClose(zeroG, [1, 2], { atol: 0, rtol: 0 });
    opt.dispose();
  });

  it('takes custom exclusion filters for decay and for adaptation separately', () => {
    const o = { momentum: 0.9, eta: 0.01, wd: 0.5 };
    const k = variable('dense/kernel', [1, -2, 3]);
    const b = variable('dense/bias', [0.5, 0.5, -1]);
    const gk = [0.3, 0.1, -0.2];
    const gb = [0.1, 0.2, 0.3];
    // Kernel: no decay but adapted; bias: decayed but not adapted.
    const opt = new LarsOptimizer({
      learningRate: 1,
      weightDecay: o.wd,
      eta: o.eta,
      excludeFromWeightDecay: /kernel/,
      excludeFromLayerAdaptation: (name) => name.endsWith('/bias'),
    });
    step(opt, [
      [k, gk],
      [b, gb],
    ]);
    expectTensorClose(k, jsLars([1, -2, 3], gk, [0, 0, 0], 1, { ...o, decay: false, adapt: true }).w, { atol: 1e-6 });
    expectTensorClose(b, jsLars([0.5, 0.5, -1], gb, [0, 0, 0], 1, { ...o, decay: true, adapt: false }).w, { atol: 1e-6 });
    opt.dispose();
  });

  it('defaults to SimCLR: momentum 0.9, eta 1e-3, weight decay 1e-6', () => {
    const opt = new LarsOptimizer({ learningRate: 1 });
    expect(opt.getConfig()).toEqual({ learningRate: 1, momentum: 0.9, eta: 1e-3, weightDecay: 1e-6 });
    expect(opt.getClassName()).toBe('LARS');
    opt.dispose();
  });
});

describe('SgdMomentumOptimizer and AdamL2Optimizer', () => {
  const init = { kernel: [0.5, -1.5, 2.0], bias: [0.1, -0.2, 0.3] };
  const g = [
    { kernel: [0.1, 0.2, -0.3], bias: [0.3, -0.1, 0.2] },
    { kernel: [-0.05, 0.1, 0.2], bias: [-0.1, 0.2, 0.1] },
  ];
  const lrs = [0.1, 0.05];
  const wd = 0.2;

  it('SGD matches plain JS with L2 decay on the kernel only', () => {
    const vars = { kernel: variable('dense/kernel', init.kernel), bias: variable('dense/bias', init.bias) };
    const opt = new SgdMomentumOptimizer({ learningRate: lrs[0], weightDecay: wd, momentum: 0.9 });
    const js = { kernel: { w: init.kernel, v: [0, 0, 0] }, bias: { w: init.bias, v: [0, 0, 0] } };
    for (let s = 0; s < 2; s++) {
      opt.setLearningRate(lrs[s]);
      step(opt, [
        [vars.kernel, g[s].kernel],
        [vars.bias, g[s].bias],
      ]);
      js.kernel = jsSgd(js.kernel.w, g[s].kernel, js.kernel.v, lrs[s], { momentum: 0.9, wd, decay: true });
      js.bias = jsSgd(js.bias.w, g[s].bias, js.bias.v, lrs[s], { momentum: 0.9, wd, decay: false });
    }
    expectTensorClose(vars.kernel, js.kernel.w, { atol: 1e-6 });
    expectTensorClose(vars.bias, js.bias.w, { atol: 1e-6 });
    // One hand value: first kernel element, step 1: v = 0.1 + 0.2·0.5 = 0.2, w = 0.5 − 0.1·0.2.
    expect(jsSgd([0.5], [0.1], [0], 0.1, { momentum: 0.9, wd, decay: true }).w[0]).toBeCloseTo(0.5 - 0.1 * 0.2, 12);
    opt.dispose();
  });

  it('Adam matches plain JS with bias correction and L2 decay on the kernel only', () => {
    const vars = { kernel: variable('dense/kernel', init.kernel), bias: variable('dense/bias', init.bias) };
    const opt = new AdamL2Optimizer({ learningRate: lrs[0], weightDecay: wd });
    const zeros = [0, 0, 0];
    const js = { kernel: { w: init.kernel, m: zeros, s: zeros }, bias: { w: init.bias, m: zeros, s: zeros } };
    for (let s = 0; s < 2; s++) {
      opt.setLearningRate(lrs[s]);
      step(opt, [
        [vars.kernel, g[s].kernel],
        [vars.bias, g[s].bias],
      ]);
      js.kernel = jsAdam(js.kernel.w, g[s].kernel, js.kernel.m, js.kernel.s, s + 1, lrs[s], { wd, decay: true });
      js.bias = jsAdam(js.bias.w, g[s].bias, js.bias.m, js.bias.s, s + 1, lrs[s], { wd, decay: false });
    }
    expectTensorClose(vars.kernel, js.kernel.w, { atol: 1e-6 });
    expectTensorClose(vars.bias, js.bias.w, { atol: 1e-6 });
    // Hand value: Adam's first step moves each weight by lr · sign(g) (up to ε).
    expect(jsAdam([1], [-0.3], [0], [0], 1, 0.1, { wd: 0, decay: false }).w[0]).toBeCloseTo(1 + 0.1, 6);
    opt.dispose();
  });
});

const FACTORY_CASES: MakeOptimizerOptions[] = [
  { name: 'lars', learningRate: 0.8, weightDecay: 0.01 },
  { name: 'sgd', learningRate: 0.1, weightDecay: 0.01 },
  { name: 'adam', learningRate: 0.01, weightDecay: 0.01 },
];

describe.each(FACTORY_CASES)('state of $name', (options) => {
  const gradsAt = (s: number): number[][] => [
    [0.1 * (s + 1), -0.2, 0.05 * s],
    [0.3, 0.1 * s, -0.1],
  ];

  it('round-trips: a restored optimizer takes the identical next step', async () => {
    const w = variable('dense/kernel', [0.4, -0.3, 0.9]);
    const b = variable('dense/bias', [0.1, 0.2, -0.1]);
    const vars = [w, b];
    const run = (opt: WeightDecayOptimizer, s: number) => step(opt, vars.map((v, i) => [v, gradsAt(s)[i]] as [tf.Variable, number[]]));
    const first = makeOptimizer(options);
    run(first, 0);
    first.setLearningRate(options.learningRate / 2);
    run(first, 1);
    const state = await first.getWeights();
    expect(state[0].name).toBe('iter');
    expect(state.map((s) => s.name)).toContain(`${w.name}/${options.name === 'adam' ? 'v' : 'momentum'}`);
    const snapshot = vars.map((v) => values(v));

    run(first, 2);
    const continued = vars.map((v) => values(v));

    const resumed = makeOptimizer(options);
    await resumed.setWeights(state);
    tf.dispose(state.map((s) => s.tensor)); // setWeights copied them
    expect(resumed.iterations).toBe(2);
    resumed.setLearningRate(options.learningRate / 2);
    vars.forEach((v, i) => v.assign(tf.tensor1d(snapshot[i])));
    run(resumed, 2);
    vars.forEach((v, i) => expectTensorClose(v, continued[i], { atol: 0, rtol: 0 }));

    // Without the state the step differs, so the comparison above could fail.
    const fresh = makeOptimizer(options);
    fresh.setLearningRate(options.learningRate / 2);
    vars.forEach((v, i) => v.assign(tf.tensor1d(snapshot[i])));
    run(fresh, 2);
    expect(Math.abs(values(w)[0] - continued[0][0])).toBeGreaterThan(1e-6);
    [first, resumed, fresh].forEach((o) => o.dispose());
  });

  it('finds state saved under a deduplicated variable name (layer/kernel vs layer/kernel_3)', async () => {
    const saved = variable('x/kernel', [1, 2, 3]);
    const first = makeOptimizer(options);
    step(first, [[saved, [0.1, 0.2, 0.3]]]);
    const state = await first.getWeights();
    const renamed = variable('x/kernel_3', values(saved));
    const stranger = variable('y/kernel', [1, 2, 3]);

    const resumed = makeOptimizer(options);
    await resumed.setWeights(state);
    // A variable with no saved state while saved state is unclaimed: refuse and move nothing.
    expect(() => step(resumed, [[stranger, [0.1, 0.2, 0.3]]])).toThrow(/has none for variable '.*y\/kernel'; variable names must match/);
    expectTensorClose(stranger, [1, 2, 3], { atol: 0, rtol: 0 });

    step(first, [[saved, [0.1, 0.2, 0.3]]]);
    step(resumed, [[renamed, [0.1, 0.2, 0.3]]]);
    expectTensorClose(renamed, values(saved), { atol: 0, rtol: 0 });
    tf.dispose(state.map((s) => s.tensor));
    [first, resumed].forEach((o) => o.dispose());
  });

  it('frees its tensors: steady count across steps, back to the start after dispose', async () => {
    const w = variable('dense/kernel', [0.4, -0.3, 0.9]);
    const start = tf.memory().numTensors;
    const opt = makeOptimizer(options);
    step(opt, [[w, [0.1, 0.2, 0.3]]]);
    const afterFirst = tf.memory().numTensors;
    step(opt, [[w, [0.3, 0.2, 0.1]]]);
    expect(tf.memory().numTensors).toBe(afterFirst);
    const state = await opt.getWeights();
    tf.dispose(state.map((s) => s.tensor));
    expect(tf.memory().numTensors).toBe(afterFirst);
    const other = makeOptimizer(options);
    const again = await opt.getWeights();
    await other.setWeights(again);
    tf.dispose(again.map((s) => s.tensor));
    other.dispose();
    opt.dispose();
    expect(tf.memory().numTensors).toBe(start);
  });

  it('minimizes a small model through tf.Optimizer.minimize', () => {
    const x = tf.randomNormal([32, 3], 0, 1, 'float32', 1);
    const y = tf.matMul(x, tf.tensor2d([[1], [-2], [0.5]])); // [32, 1]
    const model = tf.sequential({
      layers: [
        tf.layers.dense({ units: 8, inputShape: [3], kernelInitializer: tf.initializers.glorotNormal({ seed: 2 }) }),
        tf.layers.batchNormalization(),
        tf.layers.dense({ units: 1, kernelInitializer: tf.initializers.glorotNormal({ seed: 3 }) }),
      ],
    });
    // LARS moves kernels by about lr·η of their norm per step but excluded biases and BN weights by
    // plain lr steps, so its rate is capped by those (1 diverges here with momentum 0.9).
    const opt = makeOptimizer({ ...options, learningRate: options.name === 'lars' ? 0.5 : options.learningRate });
    const loss = () => tf.losses.meanSquaredError(y, model.apply(x, { training: true }) as tf.Tensor) as tf.Scalar;
    const before = tf.tidy(() => loss().dataSync()[0]);
    for (let s = 0; s < 40; s++) opt.minimize(loss, false, model.trainableWeights.map((w) => w.read() as tf.Variable));
    const after = tf.tidy(() => loss().dataSync()[0]);
    expect(after).toBeLessThan(before * 0.7);
    tf.dispose([x, y]);
    model.dispose();
    opt.dispose();
  });
});

describe('setWeights validation', () => {
  it('names what is wrong with a state list', async () => {
    const iter = { name: 'iter', tensor: tf.scalar(3, 'int32') };
    const m = { name: 'dense/kernel/m', tensor: tf.zeros([2]) };
    const bad = { name: 'dense/kernel/velocity', tensor: tf.zeros([2]) };
    const adam = new AdamL2Optimizer({ learningRate: 0.1 });
    await expect(adam.setWeights([m])).rejects.toThrow(/must start with 'iter', got 'dense\/kernel\/m'/);
    await expect(adam.setWeights([iter, m])).rejects.toThrow(/state for 'dense\/kernel' lacks slot 'v'/);
    await expect(adam.setWeights([iter, bad])).rejects.toThrow(/'dense\/kernel\/velocity' is not '<variable>\/<slot>' with slot in \[m,v\]/);
    expect(adam.iterations).toBe(0); // a refused state changes nothing
    tf.dispose([iter.tensor, m.tensor, bad.tensor]);
    adam.dispose();
  });

  it('refuses restored state of the wrong shape by name', async () => {
    const w = variable('dense/kernel', [1, 2, 3]);
    const lars = new LarsOptimizer({ learningRate: 1 });
    const state = [
      { name: 'iter', tensor: tf.scalar(1, 'int32') },
      { name: `${w.name}/momentum`, tensor: tf.zeros([2]) },
    ];
    await lars.setWeights(state);
    expect(() => step(lars, [[w, [1, 1, 1]]])).toThrow(/restored state '.*dense\/kernel\/momentum' has shape \[2\] but variable '.*dense\/kernel' has \[3\]/);
    tf.dispose(state.map((s) => s.tensor));
    lars.dispose();
  });
});

describe('makeOptimizer', () => {
  it('builds each kind', () => {
    const made = FACTORY_CASES.map(makeOptimizer);
    expect(made[0]).toBeInstanceOf(LarsOptimizer);
    expect(made[1]).toBeInstanceOf(SgdMomentumOptimizer);
    expect(made[2]).toBeInstanceOf(AdamL2Optimizer);
    expect(made.map((o) => o.learningRate)).toEqual([0.8, 0.1, 0.01]);
    made.forEach((o) => o.dispose());
  });

  it.each([
    [{ name: 'lars', learningRate: -1 }, /lars.learningRate must be a finite number >= 0, got -1/],
    [{ name: 'lars', learningRate: 1, momentum: 1 }, /lars.momentum must be in \[0, 1\), got 1/],
    [{ name: 'lars', learningRate: 1, eta: 0 }, /lars.eta must be a finite number > 0, got 0/],
    [{ name: 'sgd', learningRate: 1, weightDecay: -0.1 }, /sgd.weightDecay must be a finite number >= 0, got -0.1/],
    [{ name: 'adam', learningRate: 1, beta2: 1.5 }, /adam.beta2 must be in \[0, 1\), got 1.5/],
    [{ name: 'adam', learningRate: 1, epsilon: 0 }, /adam.epsilon must be a finite number > 0, got 0/],
    [{ name: 'rmsprop', learningRate: 1 }, /optimizer.name must be one of lars, sgd, adam, got 'rmsprop'/],
  ])('rejects %j by naming the field', (options, message) => {
    expect(() => makeOptimizer(options as MakeOptimizerOptions)).toThrow(message);
  });

  it('rejects a bad per-step rate', () => {
    const opt = makeOptimizer({ name: 'sgd', learningRate: 0.1 });
    expect(() => opt.setLearningRate(Number.NaN)).toThrow(/sgd.learningRate must be a finite number >= 0, got NaN/);
    opt.dispose();
  });
});
