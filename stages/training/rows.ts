// Which rows a training stage visits, and in what order: a per-epoch permutation that depends only
// on (seed, epoch), so a resumed run sees the batches it would have seen, and seeded subsets.
import { philox4x32 } from '../../augment/rng.ts';

/** Permutation key of the --limit subset: an "epoch" no training run reaches. */
const SUBSET_EPOCH = 0xffffffff;

/**
 * A permutation of 0..n-1 that depends only on (seed, epoch): Fisher–Yates on Philox words, one
 * counter per position. Not ViewRandom.permutation: one view stream holds 262,144 draws, fewer
 * than a large dataset's permutation needs.
 */
export function epochPermutation(seed: number, epoch: number, n: number): Uint32Array {
  const perm = new Uint32Array(n);
  for (let i = 0; i < n; i++) perm[i] = i;
  const key = new Uint32Array([seed >>> 0, Math.floor(seed / 4294967296) >>> 0]);
  const ctr = new Uint32Array([epoch >>> 0, 0, 0, 0x5eed0e0c]);
  const words = new Uint32Array(4);
  for (let i = n - 1; i > 0; i--) {
    ctr[1] = i;
    philox4x32(ctr, key, words);
    // 53 random bits scaled to [0, i]: the bias of a 2^53 range over n <= 2^32 is negligible.
    const u = ((words[0] >>> 5) * 67108864 + (words[1] >>> 6)) / 9007199254740992;
    const j = Math.floor(u * (i + 1));
    const t = perm[i];
    perm[i] = perm[j];
    perm[j] = t;
  }
  return perm;
}

/**
 * At most `limit` of `rows` (0 = all), a seeded random subset in dataset order: not the first rows,
 * because datasets are sorted by class folder and the first rows would be one class.
 */
export function limitRows(rows: number[], limit: number, seed: number): number[] {
  if (limit === 0 || limit >= rows.length) return rows;
  const pick = epochPermutation(seed, SUBSET_EPOCH, rows.length).subarray(0, limit);
  return Array.from(pick, (i) => rows[i]).sort((a, b) => a - b);
}
