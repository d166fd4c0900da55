// The statistics and independence of the per-view streams.
import { describe, expect, it } from 'vitest';
import { ViewRandom } from '../../augment/rng.ts';

describe('ViewRandom', () => {
  const draw = (key: { seed: number; epoch: number; index: number; view: number }, n = 8) => {
    const r = new ViewRandom(key);
    return Array.from({ length: n }, () => r.uint32());
  };

  it('is a pure function of (seed, epoch, index, view)', () => {
    const key = { seed: 42, epoch: 3, index: 1234, view: 1 };
    expect(draw(key)).toEqual(draw(key));
    const base = draw(key);
    for (const other of [
      { ...key, seed: 43 },
      { ...key, seed: 42 + 2 ** 32 }, // high seed bits matter too
      { ...key, epoch: 4 },
      { ...key, index: 1235 },
      { ...key, view: 0 },
    ]) {
      expect(draw(other)).not.toEqual(base);
    }
  });

  it('draws uniform doubles in [0, 1) with mean 1/2 and variance 1/12', () => {
    const r = new ViewRandom({ seed: 7, epoch: 0, index: 0, view: 0 });
    const n = 100_000;
    let sum = 0;
    let sq = 0;
    let min = 1;
    let max = 0;
    for (let i = 0; i < n; i++) {
      const u = r.uniform();
      sum += u;
      sq += u * u;
      min = Math.min(min, u);
      max = Math.max(max, u);
    }
    const mean = sum / n;
    expect(Math.abs(mean - 0.5)).toBeLessThan(4 * Math.sqrt(1 / 12 / n));
    expect(Math.abs(sq / n - mean * mean - 1 / 12)).toBeLessThan(0.002);
    expect(min).toBeGreaterThanOrEqual(0);
    expect(max).toBeLessThan(1);
  });

  it('draws integers evenly over [lo, hi) and permutations evenly over all 24 orders of 4', () => {
    const r = new ViewRandom({ seed: 9, epoch: 1, index: 2, view: 0 });
    const counts = new Array(7).fill(0);
    const n = 70_000;
    for (let i = 0; i < n; i++) counts[r.intIn(3, 10) - 3]++;
    // Chi-square with 6 degrees of freedom; 22.5 is the 0.1 % tail.
    const chi = counts.reduce((a, c) => a + (c - n / 7) ** 2 / (n / 7), 0);
    expect(chi).toBeLessThan(22.5);
    const perms = new Map<string, number>();
    for (let i = 0; i < 24_000; i++) {
      const p = r.permutation(4);
      expect([...p].sort()).toEqual([0, 1, 2, 3]);
      perms.set(p.join(''), (perms.get(p.join('')) ?? 0) + 1);
    }
    expect(perms.size).toBe(24);
    for (const c of perms.values()) expect(Math.abs(c - 1000)).toBeLessThan(4 * Math.sqrt(1000));
  });

  it('names the bad key field', () => {
    expect(() => new ViewRandom({ seed: -1, epoch: 0, index: 0, view: 0 })).toThrow('augment.seed must be an integer');
    expect(() => new ViewRandom({ seed: 0, epoch: 1.5, index: 0, view: 0 })).toThrow('augment.epoch must be an integer');
  });
});
