// Decoder for plain baseline JPEGs (8-bit, 3 components, Huffman, one interleaved scan) whose RGB
// is bit-identical to sharp's (libvips → libjpeg-turbo: islow IDCT, fancy upsampling, table
// YCbCr→RGB). It declines everything else, so the caller falls back to sharp. For a 32×32 image
// libvips' per-image overhead dominates: ~60 µs here against ~1.1 ms per sharp call (check:jpeg).
//
// Exactness notes, each checked against libjpeg-turbo's sources (as built into sharp's mozjpeg):
// - sharp's libjpeg-turbo runs the IDCT in SIMD (x86-64 SSE2/AVX2) with 16-bit lanes: wrapping
//   dequantization, pairs added in 16 bits, saturating packs. Its C version works in 32/64 bits
//   and range-limits with `& 1023` wraparound (an output of 512 gives 0 in C, 255 in SIMD and in
//   sharp). The two agree, and so does this decoder, while dequantized coefficients and the first
//   pass's outputs stay within [-16384, 16383] and the second pass's within [-512, 511]; valid
//   images stay far inside, and a block outside declines the image.
// - Anything libjpeg reports as a warning (corrupt or truncated data, a wrong restart marker,
//   stray bytes, a bad Huffman code) declines too: sharp is called with failOn 'warning'.

/** Zigzag position → natural (row-major) index in an 8×8 block: the order coefficients are coded in. */
const NATURAL_ORDER = (() => {
  const order = new Uint8Array(64);
  let k = 0;
  for (let s = 0; s < 15; s++) {
    // Even anti-diagonals run up and to the right, odd ones down and to the left.
    const lo = Math.max(0, s - 7);
    const hi = Math.min(s, 7);
    for (let j = 0; j <= hi - lo; j++) {
      const row = s % 2 === 0 ? hi - j : lo + j;
      order[k++] = row * 8 + (s - row);
    }
  }
  return order;
})();

// jdcolor.c's YCbCr→RGB tables: 16-bit fixed point, R and B rounded per entry, G's two terms summed
// (with the rounding half folded into the Cb term) before the shift.
const SCALE_BITS = 16;
const ONE_HALF = 1 << (SCALE_BITS - 1);
const fix = (x: number) => Math.floor(x * (1 << SCALE_BITS) + 0.5);
const CR_R = new Int32Array(256);
const CB_B = new Int32Array(256);
const CR_G = new Int32Array(256);
const CB_G = new Int32Array(256);
for (let i = 0; i < 256; i++) {
  const x = i - 128;
  CR_R[i] = (fix(1.402) * x + ONE_HALF) >> SCALE_BITS;
  CB_B[i] = (fix(1.772) * x + ONE_HALF) >> SCALE_BITS;
  CR_G[i] = -fix(0.71414) * x;
  CB_G[i] = -fix(0.34414) * x + ONE_HALF;
}

/** Clamps v ∈ [-256, 511] to a sample: CLAMP[v + 256]. Colour conversion never leaves that range. */
const CLAMP = new Uint8Array(768);
for (let i = 0; i < 768; i++) CLAMP[i] = Math.min(255, Math.max(0, i - 256));

/** Second IDCT pass output x ∈ [-512, 511] → sample: IDCT_SAMPLE[x + 512] = clamp(x + 128). */
const IDCT_SAMPLE = new Uint8Array(1024);
for (let i = 0; i < 1024; i++) IDCT_SAMPLE[i] = Math.min(255, Math.max(0, i - 384));

// jidctint.c's constants: FIX(c) with CONST_BITS = 13.
const F_0_298 = 2446;
const F_0_390 = 3196;
const F_0_541 = 4433;
const F_0_765 = 6270;
const F_0_899 = 7373;
const F_1_175 = 9633;
const F_1_501 = 12299;
const F_1_847 = 15137;
const F_1_961 = 16069;
const F_2_053 = 16819;
const F_2_562 = 20995;
const F_3_072 = 25172;

const LOOKAHEAD = 9;

/** A Huffman decoding table as libjpeg derives it from a DHT entry, with a 9-bit lookahead. */
class HuffmanTable {
  /** Next 9 bits → (code length << 8) | symbol; 0 where the code is longer than 9 bits. */
  readonly lookup = new Uint16Array(1 << LOOKAHEAD);
  /** Largest code of each length 1..16, or -1 if there is none. */
  readonly maxCode = new Int32Array(18);
  /** A code of length l is symbol values[code + valueOffset[l]]. */
  readonly valueOffset = new Int32Array(18);
  readonly values = new Uint8Array(256);
  /** The DHT entry last built from (counts, then symbols): the same bytes need no rebuild. */
  private readonly source = new Uint8Array(16 + 256);
  private sourceLength = -1;

  /**
   * Builds the table from the DHT entry at b[at..] (the number of codes of each length 1..16,
   * then the symbols). False where libjpeg rejects the table: codes that overflow their length
   * (the all-ones code included), or a DC symbol above 15.
   */
  build(b: Uint8Array, at: number, isDC: boolean): boolean {
    let total = 0;
    for (let k = 0; k < 16; k++) total += b[at + k];
    const length = 16 + total;
    if (length === this.sourceLength) {
      let same = true;
      for (let k = 0; k < length && same; k++) same = b[at + k] === this.source[k];
      if (same) return true;
    }
    this.sourceLength = -1;
    const { lookup, maxCode, valueOffset, values } = this;
    for (let p = 0; p < total; p++) {
      values[p] = b[at + 16 + p];
      if (isDC && values[p] > 15) return false;
    }
    lookup.fill(0);
    let code = 0;
    let p = 0;
    for (let len = 1; len <= 16; len++) {
      const n = b[at + len - 1];
      valueOffset[len] = p - code;
      maxCode[len] = n > 0 ? code + n - 1 : -1;
      for (let j = 0; j < n; j++, code++, p++) {
        if (len > LOOKAHEAD) continue;
        // Every 9-bit window that starts with this code.
        const shift = LOOKAHEAD - len;
        const entry = (len << 8) | values[p];
        for (let w = code << shift; w < (code + 1) << shift; w++) lookup[w] = entry;
      }
      if (code >= 1 << len) return false;
      code <<= 1;
    }
    this.source.set(b.subarray(at, at + length));
    this.sourceLength = length;
    return true;
  }
}

/**
 * Buffers a caller reuses from call to call (one per thread: decoding is synchronous), grown on
 * demand; each call writes what it reads. Allocating them per image cost more than decoding a
 * 32×32 image, so the decode worker makes one per batch. Buffers over SCRATCH_KEEP bytes are not
 * kept, so that one large image does not pin its planes.
 */
export class JpegScratch {
  readonly dc = [0, 1, 2, 3].map(() => new HuffmanTable());
  readonly ac = [0, 1, 2, 3].map(() => new HuffmanTable());
  readonly quant = [0, 1, 2, 3].map(() => new Int32Array(64));
  readonly block = new Int32Array(64);
  readonly work = new Int32Array(64);
  /** Entropy-coded data, unstuffed. */
  data = new Uint8Array(0);
  /** Sample planes of the three components. */
  samples = new Uint8Array(0);
  /** Chroma column sums of one row, Cb then Cr. */
  sums = new Uint16Array(0);
}
const SCRATCH_KEEP = 1 << 22;

interface Component {
  id: number;
  h: number;
  v: number;
  quantIndex: number;
}

/** What the headers say, up to the start of the scan's entropy-coded data. */
interface Header {
  width: number;
  height: number;
  /** Y, Cb, Cr in frame order (also the scan's order). */
  components: Component[];
  /** Dequantization per component, natural order. */
  quant: Int32Array[];
  dc: HuffmanTable[];
  ac: HuffmanTable[];
  /** MCUs per restart interval; 0 for none. */
  restartInterval: number;
  /** Offset of the first entropy-coded byte. */
  scanStart: number;
}

const ascii = (b: Uint8Array, at: number, text: string) => {
  for (let k = 0; k < text.length; k++) if (b[at + k] !== text.charCodeAt(k)) return false;
  return true;
};

/**
 * Reads the markers from SOI to the end of SOS; null for anything but one baseline/extended
 * sequential Huffman frame of three YCbCr components, h1v1/h2v1/h2v2 luma with 1×1 chroma, and a
 * single scan holding all three.
 */
function readHeader(b: Uint8Array, scratch: JpegScratch): Header | null {
  const n = b.length;
  if (n < 4 || b[0] !== 0xff || b[1] !== 0xd8) return null;
  const quantDefined = [false, false, false, false];
  const huffman: Array<number | undefined> = []; // where each DHT entry's counts start; DC 0..3, AC 4..7
  let frame: { width: number; height: number; components: Component[] } | null = null;
  let restartInterval = 0;
  let jfif = false;
  let adobe = false;
  let i = 2;
  for (;;) {
    if (i >= n || b[i] !== 0xff) return null; // stray bytes between segments: a libjpeg warning
    while (i < n && b[i] === 0xff) i++; // fill bytes
    if (i + 2 >= n) return null;
    const marker = b[i];
    const length = (b[i + 1] << 8) | b[i + 2];
    const start = i + 3;
    const end = i + 1 + length;
    if (length < 2 || end > n) return null;
    i = end;
    switch (marker) {
      case 0xc0: // baseline
      case 0xc1: {
        // extended sequential, Huffman: decoded the same way
        if (frame !== null || length < 8) return null;
        const count = b[start + 5];
        if (b[start] !== 8 || count !== 3 || length !== 8 + 3 * count) return null;
        const height = (b[start + 1] << 8) | b[start + 2];
        const width = (b[start + 3] << 8) | b[start + 4];
        if (height === 0 || width === 0) return null; // height 0 means a DNL marker follows the scan
        const components: Component[] = [];
        for (let c = 0; c < count; c++) {
          const p = start + 6 + 3 * c;
          components.push({ id: b[p], h: b[p + 1] >> 4, v: b[p + 1] & 15, quantIndex: b[p + 2] });
        }
        const [y, cb, cr] = components;
        const chromaOk = cb.h === 1 && cb.v === 1 && cr.h === 1 && cr.v === 1;
        const lumaOk = (y.h === 1 && y.v === 1) || (y.h === 2 && y.v === 1) || (y.h === 2 && y.v === 2);
        const idsDistinct = y.id !== cb.id && y.id !== cr.id && cb.id !== cr.id;
        if (!chromaOk || !lumaOk || !idsDistinct || components.some((c) => c.quantIndex > 3)) return null;
        // Fancy upsampling needs more than 2 chroma columns; libjpeg replicates pixels below that.
        if (y.h === 2 && Math.ceil(width / 2) <= 2) return null;
        frame = { width, height, components };
        break;
      }
      case 0xc4: {
        let p = start;
        while (p < end) {
          const tcth = b[p];
          if (p + 17 > end || (tcth & 0xec) !== 0) return null; // class 0/1, index 0..3
          let total = 0;
          for (let k = 1; k <= 16; k++) total += b[p + k];
          if (total > 256 || p + 17 + total > end) return null;
          huffman[(tcth >> 4) * 4 + (tcth & 3)] = p + 1;
          p += 17 + total;
        }
        break;
      }
      case 0xdb: {
        let p = start;
        while (p < end) {
          const precision = b[p] >> 4;
          const index = b[p] & 15;
          const size = precision === 0 ? 64 : 128;
          if (precision > 1 || index > 3 || p + 1 + size > end) return null;
          const table = scratch.quant[index];
          for (let k = 0; k < 64; k++) table[NATURAL_ORDER[k]] = precision === 0 ? b[p + 1 + k] : (b[p + 1 + 2 * k] << 8) | b[p + 2 + 2 * k];
          quantDefined[index] = true;
          p += 1 + size;
        }
        break;
      }
      case 0xdd:
        if (length !== 4) return null;
        restartInterval = (b[start] << 8) | b[start + 1];
        break;
      case 0xe0:
        if (length - 2 >= 14 && ascii(b, start, 'JFIF\0')) {
          if (b[start + 5] !== 1) return null; // a major version other than 1 is a libjpeg warning
          jfif = true;
        }
        break;
      case 0xe1: // EXIF: orientation
      case 0xe2: // ICC profile
        return null;
      case 0xee:
        if (length - 2 >= 12 && ascii(b, start, 'Adobe')) {
          if (b[start + 11] !== 1) return null; // transform 0 is RGB; others are warnings
          adobe = true;
        }
        break;
      case 0xda: {
        if (frame === null) return null;
        const count = b[start];
        if (count !== 3 || length !== 6 + 2 * count) return null;
        const dc: HuffmanTable[] = [];
        const ac: HuffmanTable[] = [];
        const quant: Int32Array[] = [];
        let built = 0; // one bit per table slot, DC 0..3 then AC 0..3: chroma shares its tables
        for (let c = 0; c < count; c++) {
          const component = frame.components[c];
          const selectors = b[start + 2 + 2 * c];
          if (b[start + 1 + 2 * c] !== component.id || (selectors & 0xcc) !== 0) return null;
          const dcAt = huffman[selectors >> 4];
          const acAt = huffman[4 + (selectors & 3)];
          if (dcAt === undefined || acAt === undefined || !quantDefined[component.quantIndex]) return null;
          const dcTable = scratch.dc[selectors >> 4];
          const acTable = scratch.ac[selectors & 3];
          const dcBit = 1 << (selectors >> 4);
          const acBit = 16 << (selectors & 3);
          if (!(built & dcBit) && !dcTable.build(b, dcAt, true)) return null;
          if (!(built & acBit) && !acTable.build(b, acAt, false)) return null;
          built |= dcBit | acBit;
          dc.push(dcTable);
          ac.push(acTable);
          quant.push(scratch.quant[component.quantIndex]);
        }
        // Spectral selection 0..63 and no successive approximation: sequential.
        const p = start + 1 + 2 * count;
        if (b[p] !== 0 || b[p + 1] !== 63 || b[p + 2] !== 0) return null;
        // Without JFIF or Adobe markers libjpeg guesses the colour space from the component ids.
        const [y, cb, cr] = frame.components;
        if (!jfif && !adobe && y.id === 0x52 && cb.id === 0x47 && cr.id === 0x42) return null; // 'R','G','B'
        return { width: frame.width, height: frame.height, components: frame.components, quant, dc, ac, restartInterval, scanStart: end };
      }
      default:
        // Other APPn and COM carry nothing the decoder needs; everything else (progressive,
        // lossless, arithmetic coding, a second SOI, EOI before any scan, ...) is declined.
        if ((marker >= 0xe3 && marker <= 0xef) || marker === 0xfe) break;
        return null;
    }
  }
}

/**
 * The entropy-coded data with byte stuffing removed, cut at the restart markers; null unless the
 * markers in it are RST0..7 in sequence and it ends with EOI.
 */
function unstuff(b: Uint8Array, start: number, scratch: JpegScratch): { data: Uint8Array; segmentEnds: number[] } | null {
  const n = b.length;
  let data = scratch.data;
  if (data.length < n - start) {
    data = new Uint8Array(n - start);
    if (data.length <= SCRATCH_KEEP) scratch.data = data;
  }
  const segmentEnds: number[] = [];
  let size = 0;
  let i = start;
  while (i < n) {
    const byte = b[i++];
    if (byte !== 0xff) {
      data[size++] = byte;
      continue;
    }
    while (i < n && b[i] === 0xff) i++; // libjpeg reads FF FF … 00 as one stuffed FF too
    if (i >= n) return null;
    const marker = b[i++];
    if (marker === 0) {
      data[size++] = 0xff;
    } else if (marker === 0xd0 + (segmentEnds.length & 7)) {
      segmentEnds.push(size);
    } else if (marker === 0xd9) {
      segmentEnds.push(size);
      return { data, segmentEnds };
    } else {
      return null; // a wrong RSTn, DNL, a second scan, ...
    }
  }
  return null; // no EOI: truncated
}

/**
 * Reads bits MSB-first from one restart segment. Past its end it reads zeros, as libjpeg does,
 * and counts them, so that a segment that needed them can be declined.
 */
class BitReader {
  pos = 0;
  end = 0;
  /** The last bits read; the low `count` of them are not consumed yet. */
  bits = 0;
  count = 0;
  /** Zero bits appended past the end of the segment. */
  padding = 0;

  constructor(readonly data: Uint8Array) {}

  startSegment(start: number, end: number): void {
    this.pos = start;
    this.end = end;
    this.bits = 0;
    this.count = 0;
    this.padding = 0;
  }

  /** True when the segment's data was used up exactly: no padding read, no whole byte left over. */
  segmentDone(): boolean {
    const left = this.count - this.padding + 8 * (this.end - this.pos);
    return left >= 0 && left < 8;
  }

  /** Tops the buffer up to at least 25 bits. */
  fill(): void {
    while (this.count <= 24) {
      let byte = 0;
      if (this.pos < this.end) byte = this.data[this.pos++];
      else this.padding += 8;
      this.bits = (this.bits << 8) | byte;
      this.count += 8;
    }
  }

  /** The next Huffman symbol, or -1 for a code the table does not have. */
  decode(t: HuffmanTable): number {
    if (this.count < 16) this.fill();
    const entry = t.lookup[(this.bits >>> (this.count - LOOKAHEAD)) & ((1 << LOOKAHEAD) - 1)];
    if (entry !== 0) {
      this.count -= entry >> 8;
      return entry & 0xff;
    }
    const next16 = (this.bits >>> (this.count - 16)) & 0xffff;
    for (let len = LOOKAHEAD + 1; len <= 16; len++) {
      const code = next16 >>> (16 - len);
      if (code <= t.maxCode[len]) {
        this.count -= len;
        return t.values[(code + t.valueOffset[len]) & 0xff];
      }
    }
    return -1;
  }

  /** The next `size` (1..15) bits as a signed coefficient value (JPEG's EXTEND). */
  receive(size: number): number {
    if (this.count < size) this.fill();
    this.count -= size;
    const v = (this.bits >>> this.count) & ((1 << size) - 1);
    return v < 1 << (size - 1) ? v - (1 << size) + 1 : v;
  }
}

/** Dequantized coefficients must stay in [-16384, 16383]: (v + 16384) fits in 15 bits. */
const outOfRange15 = (v: number) => (v + 16384) >>> 15 !== 0;

/**
 * jidctint.c's accurate integer IDCT of one dequantized block (natural order) into `out`
 * at `at` with row `stride`, as clamp(x + 128). The odd part is grouped as libjpeg-turbo's SIMD
 * code groups it (the same integer sums), which keeps every intermediate within 32 bits for the
 * input range allowed. False where SIMD and C libjpeg-turbo could disagree (the block's samples
 * are then garbage, and the image is declined).
 */
function idctBlock(block: Int32Array, work: Int32Array, out: Uint8Array, at: number, stride: number): boolean {
  // Pass 1: columns → work, scaled up by 2^PASS1_BITS (2), descaled by CONST_BITS - PASS1_BITS.
  let range = 0;
  for (let c = 0; c < 8; c++) {
    const in0 = block[c];
    const in1 = block[8 + c];
    const in2 = block[16 + c];
    const in3 = block[24 + c];
    const in4 = block[32 + c];
    const in5 = block[40 + c];
    const in6 = block[48 + c];
    const in7 = block[56 + c];
    if ((in1 | in2 | in3 | in4 | in5 | in6 | in7) === 0) {
      const dc = in0 * 4; // what the full formula gives: AC-free columns are common
      for (let r = 0; r < 64; r += 8) work[r + c] = dc;
      range |= dc + 16384;
      continue;
    }
    const even0 = (in0 + in4) * 8192;
    const even1 = (in0 - in4) * 8192;
    const even3 = in2 * (F_0_541 + F_0_765) + in6 * F_0_541;
    const even2 = in2 * F_0_541 + in6 * (F_0_541 - F_1_847);
    const t10 = even0 + even3;
    const t13 = even0 - even3;
    const t11 = even1 + even2;
    const t12 = even1 - even2;
    const z3 = in7 + in3;
    const z4 = in5 + in1;
    const zz3 = z3 * (F_1_175 - F_1_961) + z4 * F_1_175;
    const zz4 = z3 * F_1_175 + z4 * (F_1_175 - F_0_390);
    const odd0 = in7 * (F_0_298 - F_0_899) - in1 * F_0_899 + zz3;
    const odd1 = in5 * (F_2_053 - F_2_562) - in3 * F_2_562 + zz4;
    const odd2 = in3 * (F_3_072 - F_2_562) - in5 * F_2_562 + zz3;
    const odd3 = in1 * (F_1_501 - F_0_899) - in7 * F_0_899 + zz4;
    const w0 = (t10 + odd3 + 1024) >> 11;
    const w7 = (t10 - odd3 + 1024) >> 11;
    const w1 = (t11 + odd2 + 1024) >> 11;
    const w6 = (t11 - odd2 + 1024) >> 11;
    const w2 = (t12 + odd1 + 1024) >> 11;
    const w5 = (t12 - odd1 + 1024) >> 11;
    const w3 = (t13 + odd0 + 1024) >> 11;
    const w4 = (t13 - odd0 + 1024) >> 11;
    work[c] = w0;
    work[8 + c] = w1;
    work[16 + c] = w2;
    work[24 + c] = w3;
    work[32 + c] = w4;
    work[40 + c] = w5;
    work[48 + c] = w6;
    work[56 + c] = w7;
    range |= (w0 + 16384) | (w1 + 16384) | (w2 + 16384) | (w3 + 16384) | (w4 + 16384) | (w5 + 16384) | (w6 + 16384) | (w7 + 16384);
  }
  // SIMD packs pass 1 to 16 bits and adds pairs of them in 16 bits.
  if ((range & ~0x7fff) !== 0) return false;

  // Pass 2: rows → samples, descaled by CONST_BITS + PASS1_BITS + 3 (18), biased by 512.
  range = 0;
  for (let r = 0, o = at; r < 64; r += 8, o += stride) {
    const in0 = work[r];
    const in1 = work[r + 1];
    const in2 = work[r + 2];
    const in3 = work[r + 3];
    const in4 = work[r + 4];
    const in5 = work[r + 5];
    const in6 = work[r + 6];
    const in7 = work[r + 7];
    if ((in1 | in2 | in3 | in4 | in5 | in6 | in7) === 0) {
      const x = ((in0 + 16) >> 5) + 512;
      out.fill(IDCT_SAMPLE[x & 1023], o, o + 8);
      range |= x;
      continue;
    }
    const even0 = (in0 + in4) * 8192;
    const even1 = (in0 - in4) * 8192;
    const even3 = in2 * (F_0_541 + F_0_765) + in6 * F_0_541;
    const even2 = in2 * F_0_541 + in6 * (F_0_541 - F_1_847);
    const t10 = even0 + even3;
    const t13 = even0 - even3;
    const t11 = even1 + even2;
    const t12 = even1 - even2;
    const z3 = in7 + in3;
    const z4 = in5 + in1;
    const zz3 = z3 * (F_1_175 - F_1_961) + z4 * F_1_175;
    const zz4 = z3 * F_1_175 + z4 * (F_1_175 - F_0_390);
    const odd0 = in7 * (F_0_298 - F_0_899) - in1 * F_0_899 + zz3;
    const odd1 = in5 * (F_2_053 - F_2_562) - in3 * F_2_562 + zz4;
    const odd2 = in3 * (F_3_072 - F_2_562) - in5 * F_2_562 + zz3;
    const odd3 = in1 * (F_1_501 - F_0_899) - in7 * F_0_899 + zz4;
    const x0 = ((t10 + odd3 + 131072) >> 18) + 512;
    const x7 = ((t10 - odd3 + 131072) >> 18) + 512;
    const x1 = ((t11 + odd2 + 131072) >> 18) + 512;
    const x6 = ((t11 - odd2 + 131072) >> 18) + 512;
    const x2 = ((t12 + odd1 + 131072) >> 18) + 512;
    const x5 = ((t12 - odd1 + 131072) >> 18) + 512;
    const x3 = ((t13 + odd0 + 131072) >> 18) + 512;
    const x4 = ((t13 - odd0 + 131072) >> 18) + 512;
    out[o] = IDCT_SAMPLE[x0 & 1023];
    out[o + 1] = IDCT_SAMPLE[x1 & 1023];
    out[o + 2] = IDCT_SAMPLE[x2 & 1023];
    out[o + 3] = IDCT_SAMPLE[x3 & 1023];
    out[o + 4] = IDCT_SAMPLE[x4 & 1023];
    out[o + 5] = IDCT_SAMPLE[x5 & 1023];
    out[o + 6] = IDCT_SAMPLE[x6 & 1023];
    out[o + 7] = IDCT_SAMPLE[x7 & 1023];
    range |= x0 | x1 | x2 | x3 | x4 | x5 | x6 | x7;
  }
  // C range-limits with `& 1023` wraparound, SIMD saturates: the same only on [-512, 511].
  return (range & ~1023) === 0;
}

/** Decoded sample planes, each padded to whole MCUs. */
interface Planes {
  samples: Uint8Array;
  /** Offset and row stride of each component's plane in `samples`. */
  offsets: number[];
  strides: number[];
}

/** Huffman-decodes the scan and runs the IDCT into sample planes; null for any inconsistency. */
function decodeScan(bytes: Uint8Array, header: Header, scratch: JpegScratch): Planes | null {
  const { width, height, components, quant, dc, ac, restartInterval } = header;
  const hMax = components[0].h;
  const vMax = components[0].v;
  const mcusX = Math.ceil(width / (8 * hMax));
  const mcusY = Math.ceil(height / (8 * vMax));
  const mcuCount = mcusX * mcusY;
  const segmentCount = restartInterval === 0 ? 1 : Math.ceil(mcuCount / restartInterval);
  const coded = unstuff(bytes, header.scanStart, scratch);
  if (coded === null || coded.segmentEnds.length !== segmentCount) return null;

  const offsets: number[] = [];
  const strides: number[] = [];
  let total = 0;
  for (const c of components) {
    offsets.push(total);
    strides.push(mcusX * c.h * 8);
    total += mcusX * c.h * 8 * mcusY * c.v * 8;
  }
  let samples = scratch.samples;
  if (samples.length < total) {
    samples = new Uint8Array(total);
    if (total <= SCRATCH_KEEP) scratch.samples = samples;
  }

  // The blocks of one MCU in coding order: each component's h×v blocks in raster order.
  const blockComponent: number[] = [];
  const blockOffset: number[] = []; // within the MCU's corner in the component's plane
  components.forEach((c, ci) => {
    for (let by = 0; by < c.v; by++) {
      for (let bx = 0; bx < c.h; bx++) {
        blockComponent.push(ci);
        blockOffset.push(by * 8 * strides[ci] + bx * 8);
      }
    }
  });

  const reader = new BitReader(coded.data);
  const { block, work } = scratch;
  block.fill(0);
  const predictions = [0, 0, 0];
  let segment = 0;
  for (let mcu = 0; mcu < mcuCount; mcu++) {
    if (mcu === 0 || (restartInterval !== 0 && mcu % restartInterval === 0)) {
      if (mcu !== 0 && !reader.segmentDone()) return null;
      reader.startSegment(segment === 0 ? 0 : coded.segmentEnds[segment - 1], coded.segmentEnds[segment]);
      segment++;
      predictions[0] = predictions[1] = predictions[2] = 0;
    }
    const mx = mcu % mcusX;
    const my = (mcu - mx) / mcusX;
    for (let k = 0; k < blockComponent.length; k++) {
      const ci = blockComponent[k];
      const q = quant[ci];
      const acTable = ac[ci];
      const c = components[ci];
      // DC: the difference from the previous block's DC of this component.
      const dcSize = reader.decode(dc[ci]);
      if (dcSize < 0) return null;
      const prediction = predictions[ci] + (dcSize === 0 ? 0 : reader.receive(dcSize));
      predictions[ci] = prediction;
      const dcValue = prediction * q[0];
      if (prediction > 32767 || prediction < -32768 || outOfRange15(dcValue)) return null;
      block[0] = dcValue;
      // AC: (zero run, size) symbols until EOB; run 15 size 0 (ZRL) skips 16 zeros.
      for (let z = 1; z < 64; z++) {
        const symbol = reader.decode(acTable);
        if (symbol < 0) return null;
        const run = symbol >> 4;
        const size = symbol & 15;
        if (size === 0) {
          if (run !== 15) break;
          z += 15;
          continue;
        }
        z += run;
        if (z > 63) return null; // libjpeg would write it to position 63
        const natural = NATURAL_ORDER[z];
        const value = reader.receive(size) * q[natural];
        if (outOfRange15(value)) return null;
        block[natural] = value;
      }
      const at = offsets[ci] + (my * c.v * 8) * strides[ci] + mx * c.h * 8 + blockOffset[k];
      if (!idctBlock(block, work, samples, at, strides[ci])) return null;
      block.fill(0);
    }
  }
  if (!reader.segmentDone()) return null;
  return { samples, offsets, strides };
}

/** jdcolor.c's ycc_rgb_convert of one pixel into out[at..at+2]. */
function putRgb(out: Uint8Array, at: number, y: number, cb: number, cr: number): void {
  const l = y + 256; // CLAMP's offset
  out[at] = CLAMP[l + CR_R[cr]];
  out[at + 1] = CLAMP[l + ((CB_G[cb] + CR_G[cr]) >> SCALE_BITS)];
  out[at + 2] = CLAMP[l + CB_B[cb]];
}

/**
 * Converts one output row whose chroma is h2-subsampled, upsampling it on the way as jdsample.c's
 * fancy upsamplers do. `cbs`/`crs` hold, per chroma column, 3× the nearer chroma row plus the
 * farther (h2v2), or 4× the one row (h2v1). Each column becomes two pixels, 3/4 of itself and 1/4
 * of its left or right neighbour (itself at the edges), >> 4 with libjpeg's rounding biases:
 * 8 and 7 for h2v2, and for h2v1 4 and 8 (its (3a + b + 1) >> 2 and (3a + b + 2) >> 2, scaled
 * by 4). `n` (> 2) columns are real.
 */
function convertRowH2(y: Uint8Array, yAt: number, cbs: Uint16Array, crs: Uint16Array, n: number, biasLeft: number, biasRight: number, width: number, out: Uint8Array, at: number): void {
  for (let x = 0; x < n; x++, at += 6) {
    const left = x === 0 ? 0 : x - 1;
    const right = x === n - 1 ? x : x + 1;
    const cb3 = 3 * cbs[x];
    const cr3 = 3 * crs[x];
    putRgb(out, at, y[yAt + 2 * x], (cb3 + cbs[left] + biasLeft) >> 4, (cr3 + crs[left] + biasLeft) >> 4);
    if (2 * x + 1 < width) putRgb(out, at + 3, y[yAt + 2 * x + 1], (cb3 + cbs[right] + biasRight) >> 4, (cr3 + crs[right] + biasRight) >> 4);
  }
}

/** Upsamples the chroma planes as libjpeg does (edge rows and columns replicated) and converts. */
function writeRgb(planes: Planes, header: Header, out: Uint8Array, offset: number, scratch: JpegScratch): void {
  const { width, height } = header;
  const { samples, offsets, strides } = planes;
  const [yAt, cbAt, crAt] = offsets;
  const [yStride, cStride] = strides;
  const h2 = header.components[0].h === 2;
  const v2 = header.components[0].v === 2;
  if (!h2) {
    for (let row = 0, at = offset; row < height; row++) {
      const yRow = yAt + row * yStride;
      const cRow = row * cStride;
      for (let x = 0; x < width; x++, at += 3) putRgb(out, at, samples[yRow + x], samples[cbAt + cRow + x], samples[crAt + cRow + x]);
    }
    return;
  }
  // Real (not padding) chroma columns and rows: libjpeg's downsampled width and height.
  const chromaWidth = Math.ceil(width / 2);
  const chromaHeight = v2 ? Math.ceil(height / 2) : height;
  if (scratch.sums.length < 2 * chromaWidth) scratch.sums = new Uint16Array(2 * chromaWidth);
  const sums = scratch.sums;
  const sumCb = sums.subarray(0, chromaWidth);
  const sumCr = sums.subarray(chromaWidth, 2 * chromaWidth);
  for (let row = 0; row < height; row++) {
    // Vertically, h2v2 takes 3/4 of the nearer chroma row and 1/4 of the one above (even output
    // rows) or below (odd), the first and last rows standing in for their missing neighbours;
    // h2v1 sums its one row with itself.
    const near = v2 ? row >> 1 : row;
    const far = !v2 ? row : row & 1 ? Math.min(near + 1, chromaHeight - 1) : Math.max(near - 1, 0);
    const nearAt = near * cStride;
    const farAt = far * cStride;
    for (let x = 0; x < chromaWidth; x++) {
      sumCb[x] = 3 * samples[cbAt + nearAt + x] + samples[cbAt + farAt + x];
      sumCr[x] = 3 * samples[crAt + nearAt + x] + samples[crAt + farAt + x];
    }
    const yRow = yAt + row * yStride;
    const at = offset + row * width * 3;
    if (v2) convertRowH2(samples, yRow, sumCb, sumCr, chromaWidth, 8, 7, width, out, at);
    else convertRowH2(samples, yRow, sumCb, sumCr, chromaWidth, 4, 8, width, out, at);
  }
}

/**
 * Decodes a plain baseline JPEG of exactly width×height into `out` at `offset` as HWC RGB
 * (width·height·3 bytes), bit-identical to sharp's raw output. Returns false, without writing
 * to `out`, for anything it does not reproduce exactly: other sizes, progressive, lossless,
 * arithmetic or 12-bit coding, other than 3 components, RGB or CMYK colour, EXIF or ICC
 * segments, other sampling than 4:4:4/4:2:2/4:2:0, DNL, and corrupt or truncated data.
 * Pass the same `scratch` to a run of calls to spare the allocation of its buffers each time.
 */
export function decodeBaselineJpeg(
  bytes: Uint8Array,
  width: number,
  height: number,
  out: Uint8Array,
  offset: number,
  scratch: JpegScratch = new JpegScratch(),
): boolean {
  if (!Number.isInteger(width) || !Number.isInteger(height) || !Number.isInteger(offset)) return false;
  if (width < 1 || height < 1 || offset < 0 || offset + width * height * 3 > out.length) return false;
  const header = readHeader(bytes, scratch);
  if (header === null || header.width !== width || header.height !== height) return false;
  const planes = decodeScan(bytes, header, scratch);
  if (planes === null) return false;
  writeRgb(planes, header, out, offset, scratch);
  return true;
}
