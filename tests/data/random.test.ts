import { describe, expect, it } from 'vitest';
import { epochPermutation, limitRows, philox4x32, seededPermutation } from '../../data/random.ts';

describe('philox4x32', () => {
  // Random123 kat_vectors: counter[4] key[2] → output[4].
  it.each([
    [[0, 0, 0, 0], [0, 0], [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]],
    [[0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff], [0xffffffff, 0xffffffff], [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]],
    [[0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0], [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]],
  ])('matches the Random123 known answer for counter %j', (ctr, key, expected) => {
    expect(Array.from(philox4x32(ctr, key))).toEqual(expected);
  });
});

describe('epochPermutation and limitRows', () => {
  it('permutes deterministically per (seed, epoch)', () => {
    const p = epochPermutation(3, 0, 100);
    expect([...p].sort((a, b) => a - b)).toEqual(Array.from({ length: 100 }, (_, i) => i));
    expect(epochPermutation(3, 0, 100)).toEqual(p);
    expect(epochPermutation(3, 1, 100)).not.toEqual(p);
    expect(epochPermutation(4, 0, 100)).not.toEqual(p);
    expect(seededPermutation(100, 3, 0, 0)).toEqual(p);
    expect(seededPermutation(100, 3, 0, 1)).not.toEqual(p);
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
