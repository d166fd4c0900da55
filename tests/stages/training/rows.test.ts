import { describe, expect, it } from 'vitest';
import { epochPermutation, limitRows } from '../../../stages/training/rows.ts';

describe('epochPermutation and limitRows', () => {
  it('permutes deterministically per (seed, epoch)', () => {
    const p = epochPermutation(3, 0, 100);
    expect([...p].sort((a, b) => a - b)).toEqual(Array.from({ length: 100 }, (_, i) => i));
    expect(epochPermutation(3, 0, 100)).toEqual(p);
    expect(epochPermutation(3, 1, 100)).not.toEqual(p);
    expect(epochPermutation(4, 0, 100)).not.toEqual(p);
  });

  it('limits to a seeded random subset spread over the classes, not the first rows', () => {
    const rows = Array.from({ length: 1000 }, (_, i) => i); // 10 classes of 100, sorted by class
    const picked = limitRows(rows, 100, 0);
    expect(picked).toHaveLength(100);
    expect(new Set(picked).size).toBe(100);
    expect(picked).toEqual([...picked].sort((a, b) => a - b));
    const classes = new Set(picked.map((r) => Math.floor(r / 100)));
    expect(classes.size).toBe(10);
    expect(limitRows(rows, 100, 0)).toEqual(picked);
    expect(limitRows(rows, 100, 1)).not.toEqual(picked);
    expect(limitRows(rows, 0, 0)).toBe(rows);
  });
});
