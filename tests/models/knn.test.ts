import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { accuracy, knnPredict } from '../../models/knn.ts';
import { mulberry32 } from '../helpers.ts';

/** Plain-JS weighted kNN: cosine similarity, top k, votes exp(sim / τ). */
function referenceKnn(train: number[][], labels: number[], query: number[][], k: number, t: number, classes: number): number[] {
  const norm = (v: number[]) => {
    const n = Math.sqrt(v.reduce((s, x) => s + x * x, 0));
    return v.map((x) => x / n);
  };
  const tn = train.map(norm);
  return query.map((q0) => {
    const q = norm(q0);
    const sims = tn.map((r, i) => ({ s: r.reduce((acc, x, j) => acc + x * q[j], 0), i }));
    sims.sort((a, b) => b.s - a.s);
    const votes = new Array(classes).fill(0);
    for (const { s, i } of sims.slice(0, k)) votes[labels[i]] += Math.exp(s / t);
    return votes.indexOf(Math.max(...votes));
  });
}

function randomMatrix(rows: number, cols: number, seed: number): number[][] {
  const rand = mulberry32(seed);
  const r = () => rand() * 2 - 1;
  return Array.from({ length: rows }, () => Array.from({ length: cols }, r));
}

describe('knnPredict', () => {
  beforeAll(async () => {
    await tf.setBackend('cpu');
  });

  it('matches a plain-JS weighted kNN across chunk boundaries', () => {
    const train = randomMatrix(60, 5, 7);
    const labels = train.map((_, i) => i % 4);
    const query = randomMatrix(23, 5, 11);
    const expected = referenceKnn(train, labels, query, 7, 0.1, 4);
    const before = tf.memory().numTensors;
    const tt = tf.tensor2d(train);
    const qt = tf.tensor2d(query);
    const got = knnPredict(tt, Int32Array.from(labels), qt, { k: 7, temperature: 0.1, numClasses: 4, chunk: 5 });
    tt.dispose();
    qt.dispose();
    expect(Array.from(got)).toEqual(expected);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('classifies points next to well separated clusters perfectly', () => {
    const centres = [[1, 0, 0], [0, 1, 0], [0, 0, 1]];
    const noise = randomMatrix(90, 3, 3);
    const train = noise.map((n, i) => centres[i % 3].map((c, j) => c + 0.1 * n[j]));
    const labels = Int32Array.from(train.map((_, i) => i % 3));
    const query = tf.tensor2d([[0.9, 0.1, 0], [0, 0.1, 2], [0.1, 3, 0.2]]);
    const pred = knnPredict(tf.tensor2d(train), labels, query, { k: 10, numClasses: 3 });
    expect(Array.from(pred)).toEqual([0, 2, 1]);
    expect(accuracy(pred, Int32Array.from([0, 2, 1]))).toBe(1);
    expect(accuracy(pred, Int32Array.from([0, 0, 0]))).toBeCloseTo(1 / 3);
  });

  it('names bad options', () => {
    const x = tf.zeros([2, 2]) as tf.Tensor2D;
    expect(() => knnPredict(x, Int32Array.from([0, 1]), x, { k: 0, numClasses: 2 })).toThrow('knn.k must be a positive integer');
    expect(() => knnPredict(x, Int32Array.from([0, 5]), x, { numClasses: 2 })).toThrow('train label 5 outside 0..1');
  });
});
