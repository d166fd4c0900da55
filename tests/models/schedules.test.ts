// Tests for models/schedules.ts: hand values of batch scaling, warmup + cosine decay, warmup epochs.
import { describe, expect, it } from 'vitest';
import { defaultWarmupEpochs, scaledLearningRate, warmupCosine } from '../../models/schedules.ts';

describe('scaledLearningRate', () => {
  it.each([
    { base: 0.3, batch: 256, scaling: 'linear' as const, expected: 0.3 },
    { base: 0.3, batch: 4096, scaling: 'linear' as const, expected: (0.3 * 4096) / 256 },
    { base: 0.3, batch: 64, scaling: 'linear' as const, expected: 0.3 / 4 },
    { base: 0.075, batch: 4096, scaling: 'sqrt' as const, expected: 0.075 * 64 },
    { base: 0.075, batch: 100, scaling: 'sqrt' as const, expected: 0.075 * 10 },
  ])('$scaling: base $base, batch $batch', ({ base, batch, scaling, expected }) => {
    expect(scaledLearningRate(base, batch, scaling)).toBeCloseTo(expected, 12);
  });

  it('names the bad argument', () => {
    expect(() => scaledLearningRate(0.3, 0, 'linear')).toThrow(/batchSize must be a positive integer, got 0/);
    expect(() => scaledLearningRate(-1, 8, 'linear')).toThrow(/base must be/);
    expect(() => scaledLearningRate(0.3, 8, 'cube' as never)).toThrow(/scaling must be 'linear' or 'sqrt', got 'cube'/);
  });
});

describe('warmupCosine', () => {
  const lr = warmupCosine({ baseLr: 2, warmupSteps: 4, totalSteps: 12 });

  it('warms up linearly from 0', () => {
    expect(lr(0)).toBe(0);
    expect(lr(1)).toBeCloseTo(2 / 4, 12);
    expect(lr(3)).toBeCloseTo((2 * 3) / 4, 12);
  });

  it('then decays along a half cosine to 0', () => {
    expect(lr(4)).toBeCloseTo(2, 12); // peak at the end of warmup
    // 8 decay steps: a quarter of the way, cos(π/4); half way, cos(π/2) = 0 so half the peak.
    expect(lr(6)).toBeCloseTo(2 * 0.5 * (1 + Math.cos(Math.PI / 4)), 12);
    expect(lr(8)).toBeCloseTo(1, 12);
    expect(lr(11)).toBeCloseTo(2 * 0.5 * (1 + Math.cos((Math.PI * 7) / 8)), 12);
    expect(lr(12)).toBe(0);
    expect(lr(100)).toBe(0);
  });

  it('is monotone up then down', () => {
    const values = Array.from({ length: 13 }, (_, s) => lr(s));
    for (let s = 1; s <= 4; s++) expect(values[s]).toBeGreaterThan(values[s - 1]);
    for (let s = 5; s <= 12; s++) expect(values[s]).toBeLessThan(values[s - 1]);
  });

  it('without warmup starts at the peak', () => {
    const noWarmup = warmupCosine({ baseLr: 0.5, warmupSteps: 0, totalSteps: 10 });
    expect(noWarmup(0)).toBe(0.5);
    expect(noWarmup(5)).toBeCloseTo(0.25, 12);
  });

  it('names the bad option', () => {
    expect(() => warmupCosine({ baseLr: 1, warmupSteps: 11, totalSteps: 10 })).toThrow(/warmupSteps \(11\) must not exceed totalSteps \(10\)/);
    expect(() => warmupCosine({ baseLr: 1, warmupSteps: 1.5, totalSteps: 10 })).toThrow(/warmupSteps must be an integer >= 0, got 1.5/);
    expect(() => warmupCosine({ baseLr: Number.NaN, warmupSteps: 1, totalSteps: 10 })).toThrow(/baseLr/);
    expect(() => warmupCosine({ baseLr: 1, warmupSteps: 0, totalSteps: 0 })).toThrow(/totalSteps must be a positive integer/);
    expect(() => lr(-1)).toThrow(/step must be an integer >= 0, got -1/);
  });
});

describe('defaultWarmupEpochs', () => {
  it.each([
    { total: 1000, expected: 10 },
    { total: 100, expected: 10 },
    { total: 50, expected: 5 },
    { total: 3, expected: 3 / 10 },
  ])('$total epochs -> $expected', ({ total, expected }) => {
    expect(defaultWarmupEpochs(total)).toBeCloseTo(expected, 12);
  });

  it('rejects a non-positive epoch count', () => {
    expect(() => defaultWarmupEpochs(0)).toThrow(/totalEpochs must be a positive number, got 0/);
  });
});
