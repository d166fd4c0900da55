// Seeded random numbers and row orders that depend only on their keys: Philox4x32-10 (Salmon et
// al., SC'11, "Random123"), the per-epoch permutation a resumed run replays, and seeded subsets.

const M0 = 0xd2511f53;
const M1 = 0xcd9e8d57;
const W0 = 0x9e3779b9;
const W1 = 0xbb67ae85;

/** High 32 bits of the 64-bit product of two uint32 (JS doubles lose bits above 2^53). */
function mulhi32(a: number, b: number): number {
  const aL = a & 0xffff;
  const aH = a >>> 16;
  const bL = b & 0xffff;
  const bH = b >>> 16;
  const ll = aL * bL;
  const lh = aL * bH;
  const hl = aH * bL;
  const mid = (ll >>> 16) + (lh & 0xffff) + (hl & 0xffff);
  return (aH * bH + (lh >>> 16) + (hl >>> 16) + Math.floor(mid / 65536)) >>> 0;
}

/**
 * Philox4x32-10: the 4-word counter `ctr` under the 2-word key `key` → 4 uint32 words (written to `out`).
 * All words are uint32 numbers.
 */
export function philox4x32(ctr: ArrayLike<number>, key: ArrayLike<number>, out: Uint32Array = new Uint32Array(4)): Uint32Array {
  let c0 = ctr[0] >>> 0;
  let c1 = ctr[1] >>> 0;
  let c2 = ctr[2] >>> 0;
  let c3 = ctr[3] >>> 0;
  let k0 = key[0] >>> 0;
  let k1 = key[1] >>> 0;
  for (let round = 0; round < 10; round++) {
    if (round > 0) {
      k0 = (k0 + W0) >>> 0;
      k1 = (k1 + W1) >>> 0;
    }
    const hi0 = mulhi32(M0, c0);
    const lo0 = Math.imul(M0, c0) >>> 0;
    const hi1 = mulhi32(M1, c2);
    const lo1 = Math.imul(M1, c2) >>> 0;
    c0 = (hi1 ^ c1 ^ k0) >>> 0;
    c1 = lo1;
    c2 = (hi0 ^ c3 ^ k1) >>> 0;
    c3 = lo0;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
  return out;
}

/** Permutation key of the --limit subset: an "epoch" no training run reaches. */
const SUBSET_EPOCH = 0xffffffff;

/**
 * A permutation of 0..n-1 that depends only on (seed, epoch): Fisher–Yates on Philox words, one
 * counter per position. Not ViewRandom.permutation: one view stream holds 262,144 draws, fewer
 * than a large dataset's permutation needs.
 */
export function epochPermutation(seed: number, epoch: number, n: number): Uint32Array {
  return seededPermutation(n, seed, epoch, 0);
}

/**
 * A permutation of 0..n-1 drawn from the Philox stream (stream, substream) under `seed`: Fisher–Yates,
 * one counter per position. Epochs use substream 0; label subsets one substream per class.
 */
export function seededPermutation(n: number, seed: number, stream: number, substream: number): Uint32Array {
  const perm = new Uint32Array(n);
  for (let i = 0; i < n; i++) perm[i] = i;
  const key = new Uint32Array([seed >>> 0, Math.floor(seed / 4294967296) >>> 0]);
  const ctr = new Uint32Array([stream >>> 0, 0, substream >>> 0, 0x5eed0e0c]);
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
