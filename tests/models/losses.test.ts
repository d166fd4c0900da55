// Tests for models/losses.ts: NT-Xent against a nested-loop copy of SimCLR's Algorithm 1, hand
// values, symmetry, finite-difference gradients, contrastive accuracy, leaks.
import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { defaultTemperature, distillationLoss, ntXentLoss } from '../../models/losses.ts';
import { expectTensorClose, mulberry32 } from '../helpers.ts';

beforeAll(async () => {
  await tf.setBackend('cpu');
});


function randomMatrix(rows: number, cols: number, seed: number): number[][] {
  const rand = mulberry32(seed);
  return Array.from({ length: rows }, () => Array.from({ length: cols }, () => rand() * 2 - 1));
}

/**
 * SimCLR Algorithm 1 in float64 with plain loops: views interleaved as in the paper
 * (2k-1, 2k) -> here indices (k, k+N), s_ij cosine similarity, ℓ(i,j) with the sum over k ≠ i.
 */
function referenceNtXent(z1: number[][], z2: number[][], tau: number): { loss: number; accuracy: number } {
  const n = z1.length;
  const z = [...z1, ...z2];
  const norm = (v: number[]) => Math.sqrt(v.reduce((s, x) => s + x * x, 0));
  const sim = (a: number[], b: number[]) => a.reduce((s, x, d) => s + x * b[d], 0) / (norm(a) * norm(b));
  let total = 0;
  let correct = 0;
  for (let i = 0; i < 2 * n; i++) {
    const p = i < n ? i + n : i - n;
    let denom = 0;
    let best = -Infinity;
    let bestK = -1;
    for (let k = 0; k < 2 * n; k++) {
      if (k === i) continue;
      const s = sim(z[i], z[k]) / tau;
      denom += Math.exp(s);
      if (s > best) {
        best = s;
        bestK = k;
      }
    }
    total += -Math.log(Math.exp(sim(z[i], z[p]) / tau) / denom);
    if (bestK === p) correct++;
  }
  return { loss: total / (2 * n), accuracy: correct / (2 * n) };
}

function lossValue(z1: number[][], z2: number[][], tau: number): number {
  const out = tf.tidy(() => ntXentLoss(tf.tensor2d(z1), tf.tensor2d(z2), tau).loss);
  const v = out.dataSync()[0];
  out.dispose();
  return v;
}

describe('ntXentLoss', () => {
  describe.each([
    { n: 1, d: 3, tau: 0.5, seed: 1 },
    { n: 4, d: 8, tau: 0.5, seed: 2 },
    { n: 7, d: 5, tau: 0.1, seed: 3 },
    { n: 16, d: 32, tau: 1.0, seed: 4 },
  ])('against nested-loop Algorithm 1 (N=$n, D=$d, τ=$tau)', ({ n, d, tau, seed }) => {
    it('gives the same loss and accuracy', () => {
      const z1 = randomMatrix(n, d, seed);
      // Second views = first views plus noise, so positives are usually but not always top-1.
      const noise = randomMatrix(n, d, seed + 100);
      const z2 = z1.map((row, i) => row.map((x, j) => x + 0.8 * noise[i][j]));
      const ref = referenceNtXent(z1, z2, tau);
      const { loss, accuracy } = ntXentLoss(tf.tensor2d(z1), tf.tensor2d(z2), tau);
      expectTensorClose(loss, [ref.loss], { atol: 1e-5, rtol: 1e-5 });
      expectTensorClose(accuracy, [ref.accuracy], { atol: 1e-7, rtol: 0 });
      tf.dispose([loss, accuracy]);
    });
  });

  it('identical views of orthonormal embeddings: ℓ = log(1 + (2N−2)·e^{−1/τ}), accuracy 1', () => {
    const n = 4;
    const tau = 0.5;
    const eye = Array.from({ length: n }, (_, i) => Array.from({ length: n }, (_, j) => (i === j ? 3 : 0)));
    // Positive similarity 1/τ, the 2N−2 negatives 0: every anchor has the same loss.
    const expected = Math.log(1 + (2 * n - 2) * Math.exp(-1 / tau));
    const { loss, accuracy } = ntXentLoss(tf.tensor2d(eye), tf.tensor2d(eye), tau);
    expectTensorClose(loss, [expected], { atol: 1e-6, rtol: 1e-6 });
    expectTensorClose(accuracy, [1]);
    tf.dispose([loss, accuracy]);
  });

  it('all embeddings identical: every similarity equal, loss = log(2N−1) for any τ', () => {
    const n = 5;
    const same = Array.from({ length: n }, () => [0.3, -1.2, 2.0]);
    for (const tau of [0.1, 0.5, 2]) {
      const { loss, accuracy } = ntXentLoss(tf.tensor2d(same), tf.tensor2d(same), tau);
      expectTensorClose(loss, [Math.log(2 * n - 1)], { atol: 1e-5, rtol: 1e-5 });
      tf.dispose([loss, accuracy]);
    }
  });

  it('is scale invariant per row (projections are L2-normalised)', () => {
    const z1 = randomMatrix(3, 4, 5);
    const z2 = randomMatrix(3, 4, 6);
    const scaled = z1.map((row, i) => row.map((x) => x * (i + 1) * 7));
    expect(lossValue(scaled, z2, 0.5)).toBeCloseTo(lossValue(z1, z2, 0.5), 5);
  });

  it('is symmetric in the two views', () => {
    const z1 = randomMatrix(6, 4, 7);
    const z2 = randomMatrix(6, 4, 8);
    expect(lossValue(z2, z1, 0.3)).toBeCloseTo(lossValue(z1, z2, 0.3), 5);
  });

  it('counts contrastive accuracy on a hand case (4 of 6 anchors right)', () => {
    // Unit vectors at angles (degrees). Images 0 and 1 have close views (10° apart); image 2's views
    // (180°, 60°) are 120° apart, so 180° prefers 100° (80° away) and 60° prefers 90° (30° away).
    // Every other anchor's nearest candidate is its partner, 10° away.
    const unit = (deg: number) => [Math.cos((deg * Math.PI) / 180), Math.sin((deg * Math.PI) / 180)];
    const z1 = [unit(0), unit(90), unit(180)];
    const z2 = [unit(10), unit(100), unit(60)];
    const { loss, accuracy } = ntXentLoss(tf.tensor2d(z1), tf.tensor2d(z2), 0.5);
    expectTensorClose(accuracy, [4 / 6]);
    expect(referenceNtXent(z1, z2, 0.5).accuracy).toBeCloseTo(4 / 6, 12);
    tf.dispose([loss, accuracy]);
  });

  it('has the gradient of finite differences (float32 central differences and float64 reference)', () => {
    const n = 3;
    const d = 4;
    const tau = 0.5;
    const z1 = randomMatrix(n, d, 9);
    const z2 = randomMatrix(n, d, 10);
    const [g1, g2] = tf.grads((a: tf.Tensor, b: tf.Tensor) => ntXentLoss(a as tf.Tensor2D, b as tf.Tensor2D, tau).loss)([
      tf.tensor2d(z1),
      tf.tensor2d(z2),
    ]);
    const grad1 = g1.arraySync() as number[][];
    const grad2 = g2.arraySync() as number[][];
    tf.dispose([g1, g2]);
    // float32 forward: h = 1e-2 keeps rounding (~1e-7 / h) and truncation (~h²) both near 1e-4.
    const h32 = 1e-2;
    // float64 reference: h = 1e-5 makes the difference exact to ~1e-9.
    const h64 = 1e-5;
    for (const [which, grad] of [
      [0, grad1],
      [1, grad2],
    ] as const) {
      for (let i = 0; i < n; i++) {
        for (let j = 0; j < d; j++) {
          const perturbed = (delta: number) => {
            const a = z1.map((r) => [...r]);
            const b = z2.map((r) => [...r]);
            (which === 0 ? a : b)[i][j] += delta;
            return [a, b] as const;
          };
          const fd32 = (lossValue(...perturbed(h32), tau) - lossValue(...perturbed(-h32), tau)) / (2 * h32);
          const fd64 =
            (referenceNtXent(...perturbed(h64), tau).loss - referenceNtXent(...perturbed(-h64), tau).loss) / (2 * h64);
          expect(Math.abs(grad[i][j] - fd32)).toBeLessThan(2e-3);
          expect(Math.abs(grad[i][j] - fd64)).toBeLessThan(1e-5);
        }
      }
    }
  });

  it('rejects a non-positive temperature by name', () => {
    const z = tf.zeros([2, 3]) as tf.Tensor2D;
    expect(() => ntXentLoss(z, z, 0)).toThrow(/temperature must be a positive finite number, got 0/);
    expect(() => ntXentLoss(z, z, -0.5)).toThrow(/temperature/);
    expect(() => ntXentLoss(z, z, Number.NaN)).toThrow(/temperature/);
    z.dispose();
  });

  it('rejects mismatched shapes', () => {
    const a = tf.zeros([2, 3]) as tf.Tensor2D;
    const b = tf.zeros([3, 3]) as tf.Tensor2D;
    expect(() => ntXentLoss(a, b, 0.5)).toThrow(/same shape, got \[2,3\] and \[3,3\]/);
    tf.dispose([a, b]);
  });

  it('leaks no tensors, forward or under a gradient', () => {
    const z1 = tf.tensor2d(randomMatrix(4, 3, 11));
    const z2 = tf.tensor2d(randomMatrix(4, 3, 12));
    const before = tf.memory().numTensors;
    const { loss, accuracy } = ntXentLoss(z1, z2, 0.5);
    expect(tf.memory().numTensors).toBe(before + 2);
    tf.dispose([loss, accuracy]);
    const g = tf.grad((a: tf.Tensor) => ntXentLoss(a as tf.Tensor2D, z2, 0.5).loss)(z1);
    g.dispose();
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose([z1, z2]);
  });
});

describe('defaultTemperature', () => {
  it('is SimCLR-CIFAR 0.5 up to 64 px and SimCLRv2-ImageNet 0.1 above', () => {
    expect(defaultTemperature(32)).toBe(0.5);
    expect(defaultTemperature(64)).toBe(0.5);
    expect(defaultTemperature(65)).toBe(0.1);
    expect(defaultTemperature(224)).toBe(0.1);
  });

  it('rejects a bad size by name', () => {
    expect(() => defaultTemperature(0)).toThrow(/imageSize must be a positive number/);
  });
});

describe('distillationLoss', () => {
  /** τ² · mean_b −Σ_y softmax(t_b/τ)_y · log softmax(s_b/τ)_y in float64. */
  function reference(s: number[][], t: number[][], tau: number): number {
    const softmax = (v: number[]) => {
      const m = Math.max(...v.map((x) => x / tau));
      const e = v.map((x) => Math.exp(x / tau - m));
      const z = e.reduce((a, b) => a + b, 0);
      return e.map((x) => x / z);
    };
    let total = 0;
    for (let b = 0; b < s.length; b++) {
      const ps = softmax(s[b]);
      const pt = softmax(t[b]);
      total -= pt.reduce((acc, p, y) => acc + p * Math.log(ps[y]), 0);
    }
    return (tau * tau * total) / s.length;
  }

  it.each([0.5, 1, 2, 4])('matches a plain-JS computation at τ = %s', (tau) => {
    const s = randomMatrix(5, 7, 11).map((r) => r.map((x) => 3 * x));
    const t = randomMatrix(5, 7, 12).map((r) => r.map((x) => 3 * x));
    const loss = distillationLoss(tf.tensor2d(s), tf.tensor2d(t), tau);
    expect(loss.dataSync()[0]).toBeCloseTo(reference(s, t, tau), 5);
    loss.dispose();
  });

  it('is τ²·log K for all-equal logits, and its minimum over the student is the teacher entropy', () => {
    const zeros = tf.zeros([3, 10]) as tf.Tensor2D;
    expect(distillationLoss(zeros, zeros, 2).dataSync()[0]).toBeCloseTo(4 * Math.log(10), 5);
    // Student = teacher: cross-entropy = entropy of P_T, the smallest value the student can reach.
    const t = tf.tensor2d(randomMatrix(4, 6, 3));
    const atTeacher = distillationLoss(t, t, 1).dataSync()[0];
    const elsewhere = distillationLoss(tf.add(t, tf.tensor2d(randomMatrix(4, 6, 4))) as tf.Tensor2D, t, 1).dataSync()[0];
    expect(elsewhere).toBeGreaterThan(atTeacher);
    tf.dispose([zeros, t]);
  });

  it('has the gradient τ·(P_S − P_T)/B, checked by finite differences too', () => {
    const tau = 2;
    const s = randomMatrix(3, 4, 21);
    const t = randomMatrix(3, 4, 22);
    const teacher = tf.tensor2d(t);
    const grad = tf.grad((x: tf.Tensor) => distillationLoss(x as tf.Tensor2D, teacher, tau))(tf.tensor2d(s));
    const g = grad.arraySync() as number[][];
    const softmax = (v: number[]) => {
      const e = v.map((x) => Math.exp(x / tau));
      const z = e.reduce((a, b) => a + b, 0);
      return e.map((x) => x / z);
    };
    const h = 1e-3;
    for (let b = 0; b < 3; b++) {
      const ps = softmax(s[b]);
      const pt = softmax(t[b]);
      for (let y = 0; y < 4; y++) {
        expect(g[b][y]).toBeCloseTo((tau * (ps[y] - pt[y])) / 3, 5);
        const plus = s.map((r) => [...r]);
        const minus = s.map((r) => [...r]);
        plus[b][y] += h;
        minus[b][y] -= h;
        expect(g[b][y]).toBeCloseTo((reference(plus, t, tau) - reference(minus, t, tau)) / (2 * h), 4);
      }
    }
    tf.dispose([teacher, grad]);
  });

  it('refuses τ <= 0 and mismatched shapes, and leaks nothing', () => {
    const a = tf.zeros([2, 3]) as tf.Tensor2D;
    const wide = tf.zeros([2, 4]) as tf.Tensor2D;
    const before = tf.memory().numTensors;
    expect(() => distillationLoss(a, a, 0)).toThrow('distillationLoss: temperature must be a positive finite number, got 0');
    expect(() => distillationLoss(a, wide, 1)).toThrow(/must both be \[B, K\]/);
    distillationLoss(a, a, 1).dispose();
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose([a, wide]);
  });
});
