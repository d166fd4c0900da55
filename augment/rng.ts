// Counter-based random numbers for augmentation parameters: Philox4x32-10 (data/random.ts) keyed by
// the run seed, with (epoch, image index, view) in the counter, so any view's parameters can be drawn alone.
import { philox4x32 } from '../data/random.ts';

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
