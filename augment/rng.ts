// Counter-based random numbers for augmentation parameters: Philox4x32-10 keyed by the run seed,
// with (epoch, image index, view) in the counter, so any view's parameters can be drawn alone.
//
// Why counter-based: the pool samples on the main thread in source order, but a stage
// materialising shards (or a resumed run) must be able to draw view (epoch e, index i) without
// replaying everything before it. Philox (Salmon et al., SC'11, "Random123") is a bijection of
// the 128-bit counter under a 64-bit key, passes BigCrush, and has published known-answer
// vectors (tested in tests/augment/rng.test.ts).

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

/** Where a view's random stream lives: one independent stream per (seed, epoch, index, view). */
export interface StreamKey {
  seed: number;
  epoch: number;
  index: number;
  view: number;
}

const TWO_32 = 4294967296;

/**
 * The random stream of one view. Counter words: [epoch, index, view·2^16 + block, 0xA11C0DE5]
 * (the constant separates augmentation streams from any other Philox user of the same seed);
 * key: the seed's low and high 32 bits. Each block yields 4 words.
 */
export class ViewRandom {
  private readonly ctr = new Uint32Array(4);
  private readonly key = new Uint32Array(2);
  private readonly words = new Uint32Array(4);
  private readonly view: number;
  private next = 4;
  private block = 0;

  constructor({ seed, epoch, index, view }: StreamKey) {
    checkWord('seed', seed, Number.MAX_SAFE_INTEGER);
    checkWord('epoch', epoch, TWO_32 - 1);
    checkWord('index', index, TWO_32 - 1);
    checkWord('view', view, 0xffff);
    this.key[0] = seed >>> 0;
    this.key[1] = Math.floor(seed / TWO_32) >>> 0;
    this.ctr[0] = epoch;
    this.ctr[1] = index;
    this.ctr[3] = 0xa11c0de5;
    this.view = view;
  }

  /** The next uint32 of the stream. */
  uint32(): number {
    if (this.next === 4) {
      if (this.block > 0xffff) throw new Error('ViewRandom: stream exhausted (more than 262,144 draws for one view)');
      this.ctr[2] = this.view * 65536 + this.block++;
      philox4x32(this.ctr, this.key, this.words);
      this.next = 0;
    }
    return this.words[this.next++];
  }

  /** Uniform double in [0, 1) with 53 random bits. */
  uniform(): number {
    const hi = this.uint32() >>> 5; // 27 bits
    const lo = this.uint32() >>> 6; // 26 bits
    return (hi * 67108864 + lo) / 9007199254740992;
  }

  /** Uniform in [lo, hi). */
  uniformIn(lo: number, hi: number): number {
    return lo + (hi - lo) * this.uniform();
  }

  /** Integer uniform in [lo, hi) (hi > lo), by rejection so there is no modulo bias. */
  intIn(lo: number, hi: number): number {
    const n = hi - lo;
    if (!(n >= 1 && n <= TWO_32)) throw new Error(`ViewRandom.intIn: bad range [${lo}, ${hi})`);
    const limit = TWO_32 - (TWO_32 % n);
    for (;;) {
      const u = this.uint32();
      if (u < limit) return lo + (u % n);
    }
  }

  /** True with probability p. */
  bernoulli(p: number): boolean {
    return this.uniform() < p;
  }

  /** A uniformly random permutation of 0..n-1 (Fisher–Yates). */
  permutation(n: number): number[] {
    const a = Array.from({ length: n }, (_, i) => i);
    for (let i = n - 1; i > 0; i--) {
      const j = this.intIn(0, i + 1);
      const t = a[i];
      a[i] = a[j];
      a[j] = t;
    }
    return a;
  }
}

function checkWord(name: string, value: number, max: number): void {
  if (!Number.isInteger(value) || value < 0 || value > max) {
    throw new Error(`augment.${name} must be an integer in [0, ${max}], got ${value}`);
  }
}
