// Baseline JPEG decoder: bit-identical to sharp's raw output on JPEGs from sharp's encoder and from
// a small encoder here (4:2:2, restart intervals, every Cb/Cr pair, extreme coefficients, long
// Huffman codes), and it declines (never throws, never writes) what it does not reproduce.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import sharp, { type JpegOptions } from 'sharp';
import { describe, expect, it } from 'vitest';
import { decodeBaselineJpeg, JpegScratch } from '../../data/jpeg-baseline.ts';
import { mulberry32 } from '../helpers.ts';

sharp.concurrency(1);
sharp.cache(false);

/** HWC RGB with gradients, a hard diagonal edge, saturated patches and noise. */
function testImage(width: number, height: number, seed: number): Buffer {
  const rnd = mulberry32(seed);
  const px = Buffer.alloc(width * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const edge = x + 2 * y > width ? 90 : -60;
      const patch = ((x >> 3) + (y >> 3)) % 5 === 0 ? 255 : 0;
      for (let c = 0; c < 3; c++) {
        const gradient = c === 0 ? (255 * x) / width : c === 1 ? (255 * y) / height : 128 + 100 * Math.sin((x + y) / 3);
        const v = patch && c === (x + y) % 3 ? patch : gradient + edge * (c - 1) + (rnd() - 0.5) * 80;
        px[(y * width + x) * 3 + c] = Math.max(0, Math.min(255, Math.round(v)));
      }
    }
  }
  return px;
}

const encode = (px: Uint8Array, width: number, height: number, options: JpegOptions) =>
  sharp(px, { raw: { width, height, channels: 3 } }).jpeg(options).toBuffer();

/** sharp's pixels, or null where sharp refuses the file (it fails on libjpeg warnings). */
async function sharpPixels(jpeg: Uint8Array): Promise<Buffer | null> {
  try {
    return await sharp(jpeg).raw().toBuffer();
  } catch {
    return null;
  }
}

/**
 * One scratch for every file of the suite, as the decode worker shares one over a batch: files of
 * other sizes, tables and sampling, corrupt ones among them, pass through the same buffers.
 */
const shared = new JpegScratch();

/** Asserts the decoder accepts the file and gives sharp's pixels exactly. */
async function expectSharpPixels(jpeg: Uint8Array, width: number, height: number): Promise<void> {
  const ours = new Uint8Array(width * height * 3);
  expect(decodeBaselineJpeg(jpeg, width, height, ours, 0, shared), 'decoder declined the file').toBe(true);
  const reference = await sharpPixels(jpeg);
  expect(reference, 'sharp refused the file').not.toBeNull();
  expectSameBytes(ours, reference!);
}

/** Asserts the decoder either declines without writing or gives exactly what sharp gives. */
async function expectExactOrDeclined(jpeg: Uint8Array, width: number, height: number): Promise<boolean> {
  const ours = new Uint8Array(width * height * 3 + 6).fill(77);
  let accepted = false;
  expect(() => (accepted = decodeBaselineJpeg(jpeg, width, height, ours, 3, shared))).not.toThrow();
  if (!accepted) {
    expect(ours.every((v) => v === 77), 'wrote output while declining').toBe(true);
    return false;
  }
  const reference = await sharpPixels(jpeg);
  expect(reference, 'accepted a file sharp refuses').not.toBeNull();
  expectSameBytes(ours.subarray(3, ours.length - 3), reference!);
  return true;
}

function expectSameBytes(actual: Uint8Array, expected: Uint8Array): void {
  expect(actual.length).toBe(expected.length);
  const at = actual.findIndex((v, i) => v !== expected[i]);
  if (at >= 0) expect.fail(`byte ${at} (pixel ${Math.floor(at / 3)}, channel ${at % 3}): got ${actual[at]}, sharp gives ${expected[at]}`);
}

// ---- A minimal baseline encoder, for files sharp's encoder does not write -------------------------

/** Natural (row-major) index of each zigzag position. */
const ZIGZAG: number[] = [];
for (let s = 0; s < 15; s++) {
  const rows = [];
  for (let r = Math.max(0, s - 7); r <= Math.min(s, 7); r++) rows.push(r);
  for (const r of s % 2 === 0 ? rows.reverse() : rows) ZIGZAG.push(r * 8 + s - r);
}

/** Huffman code lengths per symbol, in DHT order: a valid table with codes up to 16 bits long. */
const DC_LENGTHS = Array.from({ length: 16 }, (_, s) => [s, s < 8 ? 4 : 10]);
const AC_LENGTHS = Array.from({ length: 256 }, (_, s) => [s, s < 0x40 ? 8 : s < 0xf0 ? 12 : 16]);

/** Canonical codes for [symbol, length] pairs sorted by length, and the DHT payload. */
function huffman(lengths: number[][], tableClass: number, index: number) {
  const sorted = [...lengths].sort((a, b) => a[1] - b[1]);
  const codes = new Map<number, [number, number]>();
  const counts = new Array(16).fill(0);
  let code = 0;
  let length = sorted[0][1];
  for (const [symbol, len] of sorted) {
    code <<= len - length;
    length = len;
    codes.set(symbol, [code++, len]);
    counts[len - 1]++;
  }
  return { codes, dht: [(tableClass << 4) | index, ...counts, ...sorted.map(([s]) => s)] };
}

interface EncoderInput {
  width: number;
  height: number;
  /** Luma sampling factors; chroma is 1×1. */
  luma: [number, number];
  /** Quantized coefficients, natural order, per component: blocksWide × blocksHigh blocks, row-major. */
  blocks: Int32Array[][];
  /** Luma and chroma quantization tables, natural order. */
  quant: [number[], number[]];
  restartInterval?: number;
  jfif?: boolean;
}

/** Writes a baseline JPEG: SOI, [APP0], DQT ×2, SOF0, DHT ×2 segments, [DRI], SOS, data, EOI. */
function encodeBaseline(e: EncoderInput): Uint8Array {
  const out: number[] = [0xff, 0xd8];
  const segment = (marker: number, payload: number[]) => out.push(0xff, marker, (payload.length + 2) >> 8, (payload.length + 2) & 255, ...payload);
  if (e.jfif) segment(0xe0, [0x4a, 0x46, 0x49, 0x46, 0, 1, 1, 0, 0, 1, 0, 1, 0, 0]);
  e.quant.forEach((q, i) => segment(0xdb, [i, ...ZIGZAG.map((n) => q[n])]));
  const [h, v] = e.luma;
  segment(0xc0, [8, e.height >> 8, e.height & 255, e.width >> 8, e.width & 255, 3, 1, (h << 4) | v, 0, 2, 0x11, 1, 3, 0x11, 1]);
  const dc = [huffman(DC_LENGTHS, 0, 0), huffman(DC_LENGTHS, 0, 1)];
  const ac = [huffman(AC_LENGTHS, 1, 0), huffman(AC_LENGTHS, 1, 1)];
  segment(0xc4, [...dc[0].dht, ...ac[0].dht]);
  segment(0xc4, [...dc[1].dht, ...ac[1].dht]);
  if (e.restartInterval) segment(0xdd, [e.restartInterval >> 8, e.restartInterval & 255]);
  segment(0xda, [3, 1, 0x00, 2, 0x11, 3, 0x11, 0, 63, 0]);

  let bits = 0;
  let count = 0;
  const put = (value: number, length: number) => {
    for (let k = length - 1; k >= 0; k--) {
      bits = (bits << 1) | ((value >> k) & 1);
      if (++count === 8) {
        out.push(bits);
        if (bits === 0xff) out.push(0);
        bits = count = 0;
      }
    }
  };
  const flush = () => {
    if (count > 0) put(0x7f, 8 - count); // pad with ones
  };
  const putValue = (value: number, table: Map<number, [number, number]>, run = 0) => {
    const size = value === 0 ? 0 : Math.floor(Math.log2(Math.abs(value))) + 1;
    put(...table.get((run << 4) | size)!);
    if (size > 0) put(value > 0 ? value : value + (1 << size) - 1, size);
  };
  const mcusX = Math.ceil(e.width / (8 * h));
  const mcusY = Math.ceil(e.height / (8 * v));
  const predictions = [0, 0, 0];
  for (let mcu = 0; mcu < mcusX * mcusY; mcu++) {
    if (e.restartInterval && mcu > 0 && mcu % e.restartInterval === 0) {
      flush();
      out.push(0xff, 0xd0 + ((mcu / e.restartInterval - 1) & 7));
      predictions.fill(0);
    }
    const mx = mcu % mcusX;
    const my = Math.floor(mcu / mcusX);
    for (let c = 0; c < 3; c++) {
      const [ch, cv] = c === 0 ? [h, v] : [1, 1];
      for (let by = 0; by < cv; by++) {
        for (let bx = 0; bx < ch; bx++) {
          const block = e.blocks[c][(my * cv + by) * mcusX * ch + mx * ch + bx];
          const t = c === 0 ? 0 : 1;
          putValue(block[0] - predictions[c], dc[t].codes);
          predictions[c] = block[0];
          let run = 0;
          for (let z = 1; z < 64; z++) {
            const value = block[ZIGZAG[z]];
            if (value === 0) {
              run++;
              continue;
            }
            for (; run > 15; run -= 16) put(...ac[t].codes.get(0xf0)!);
            putValue(value, ac[t].codes, run);
            run = 0;
          }
          if (run > 0) put(...ac[t].codes.get(0x00)!);
        }
      }
    }
  }
  flush();
  out.push(0xff, 0xd9);
  return Uint8Array.from(out);
}

/** Forward DCT (float), quantized: the coefficients of an image for encodeBaseline. */
function imageBlocks(rgb: Buffer, width: number, height: number, luma: [number, number], quant: [number[], number[]]): Int32Array[][] {
  const [h, v] = luma;
  const mcusX = Math.ceil(width / (8 * h));
  const mcusY = Math.ceil(height / (8 * v));
  const at = (x: number, y: number) => (Math.min(y, height - 1) * width + Math.min(x, width - 1)) * 3;
  const ycc = (x: number, y: number, c: number) => {
    const [r, g, b] = [rgb[at(x, y)], rgb[at(x, y) + 1], rgb[at(x, y) + 2]];
    if (c === 0) return 0.299 * r + 0.587 * g + 0.114 * b;
    if (c === 1) return 128 - 0.168736 * r - 0.331264 * g + 0.5 * b;
    return 128 + 0.5 * r - 0.418688 * g - 0.081312 * b;
  };
  return [0, 1, 2].map((c) => {
    const [sx, sy] = c === 0 ? [1, 1] : [h, v]; // chroma: average sx×sy pixels per sample
    const [bw, bh] = c === 0 ? [mcusX * h, mcusY * v] : [mcusX, mcusY];
    const blocks: Int32Array[] = [];
    for (let by = 0; by < bh; by++) {
      for (let bx = 0; bx < bw; bx++) {
        const samples: number[] = [];
        for (let y = 0; y < 8; y++) {
          for (let x = 0; x < 8; x++) {
            let sum = 0;
            for (let dy = 0; dy < sy; dy++) for (let dx = 0; dx < sx; dx++) sum += ycc(((bx * 8 + x) * sx) + dx, ((by * 8 + y) * sy) + dy, c);
            samples.push(sum / (sx * sy) - 128);
          }
        }
        const block = new Int32Array(64);
        for (let u = 0; u < 8; u++) {
          for (let w = 0; w < 8; w++) {
            let f = 0;
            for (let y = 0; y < 8; y++) for (let x = 0; x < 8; x++) f += samples[y * 8 + x] * Math.cos(((2 * x + 1) * w * Math.PI) / 16) * Math.cos(((2 * y + 1) * u * Math.PI) / 16);
            f *= (u === 0 ? Math.SQRT1_2 : 1) * (w === 0 ? Math.SQRT1_2 : 1) / 4;
            block[u * 8 + w] = Math.round(f / quant[c === 0 ? 0 : 1][u * 8 + w]);
          }
        }
        blocks.push(block);
      }
    }
    return blocks;
  });
}

/** A JPEG-ish quantization table: finer at low frequencies, `scale` times the base. */
const quantTable = (scale: number) => Array.from({ length: 64 }, (_, n) => Math.max(1, Math.min(255, Math.round(scale * (4 + 3 * ((n >> 3) + (n & 7)))))));

// ---- Tests ----------------------------------------------------------------------------------------

const SIZES: Array<[number, number]> = [
  [8, 8],
  [16, 16],
  [32, 32],
  [31, 17],
  [40, 24],
  [64, 48],
];

describe('decodeBaselineJpeg on sharp-encoded files', () => {
  describe.each(['4:2:0', '4:4:4'] as const)('chroma %s', (chromaSubsampling) => {
    it.each([50, 75, 92, 100])('quality %i, every size', async (quality) => {
      for (const [w, h] of SIZES) {
        const jpeg = await encode(testImage(w, h, w * h + quality), w, h, { quality, chromaSubsampling });
        await expectSharpPixels(jpeg, w, h);
      }
    });
  });

  it.each([
    ['standard Huffman tables', { optimiseCoding: false }],
    ['trellis quantisation', { trellisQuantisation: true, overshootDeringing: true }],
    ...[0, 1, 2, 3, 4, 5, 6, 7, 8].map((t) => [`quantisation table ${t}`, { quantisationTable: t }] as const),
  ] as Array<[string, JpegOptions]>)('%s', async (_, options) => {
    for (const [w, h] of [[32, 32], [31, 17]]) {
      for (const chromaSubsampling of ['4:2:0', '4:4:4']) {
        const jpeg = await encode(testImage(w, h, 7), w, h, { quality: 85, chromaSubsampling, ...options });
        await expectSharpPixels(jpeg, w, h);
      }
    }
  });

  it('flat and saturated images (DC-only blocks, clamped colours)', async () => {
    for (const colour of [[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 255], [12, 200, 99]]) {
      const px = Buffer.alloc(24 * 16 * 3).map((_, i) => colour[i % 3]);
      for (const quality of [50, 100]) await expectSharpPixels(await encode(px, 24, 16, { quality }), 24, 16);
    }
  });
});

describe('decodeBaselineJpeg on hand-made files', () => {
  const LUMA: Array<[string, [number, number]]> = [
    ['4:4:4', [1, 1]],
    ['4:2:2', [2, 1]],
    ['4:2:0', [2, 2]],
  ];

  it.each(LUMA)('%s, several sizes and quantizers, with and without JFIF', async (_, luma) => {
    for (const [w, h] of [[32, 32], [31, 17], [40, 24], [13, 29]]) {
      for (const scale of [0.25, 1, 3]) {
        const quant: [number[], number[]] = [quantTable(scale), quantTable(scale * 1.5)];
        const blocks = imageBlocks(testImage(w, h, w + h), w, h, luma, quant);
        await expectSharpPixels(encodeBaseline({ width: w, height: h, luma, blocks, quant, jfif: scale === 1 }), w, h);
      }
    }
  });

  it.each(LUMA)('%s with restart intervals (RST0..7 wrapping, last interval partial)', async (_, luma) => {
    const [w, h] = [72, 56];
    const quant: [number[], number[]] = [quantTable(0.5), quantTable(1)];
    const blocks = imageBlocks(testImage(w, h, 3), w, h, luma, quant);
    for (const restartInterval of [1, 2, 5, 7]) {
      await expectSharpPixels(encodeBaseline({ width: w, height: h, luma, blocks, quant, restartInterval }), w, h);
    }
  });

  it('every Cb/Cr pair through the colour conversion (DC-only 4:4:4 blocks)', async () => {
    // Block (cb, cr) is flat with those chroma values and a luma that sweeps 0..255 along the way.
    const [w, h] = [256 * 8, 256 * 8];
    const ones: number[] = new Array(64).fill(1);
    const dcBlock = (value: number) => {
      const b = new Int32Array(64);
      b[0] = 8 * (value - 128); // IDCT of a DC-only block: value exactly
      return b;
    };
    const blocks: Int32Array[][] = [[], [], []];
    for (let cr = 0; cr < 256; cr++) {
      for (let cb = 0; cb < 256; cb++) {
        blocks[0].push(dcBlock((cb * 7 + cr * 13) & 255));
        blocks[1].push(dcBlock(cb));
        blocks[2].push(dcBlock(cr));
      }
    }
    await expectSharpPixels(encodeBaseline({ width: w, height: h, luma: [1, 1], blocks, quant: [ones, ones] }), w, h);
  });

  it('IDCT outputs at the edge of the range where libjpeg C and SIMD agree decode exactly', async () => {
    // A DC-only block of dequantized DC d gives x = (4d + 16) >> 5, then clamp(x + 128). The C
    // code range-limits x with `& 1023` (x = 512 wraps to 0), SIMD saturates (255): they agree on
    // x ∈ [-512, 511], i.e. d ∈ [-4096, 4091], and the decoder declines the rest.
    const ones: number[] = new Array(64).fill(1);
    const file = (dcs: number[]) => {
      const blocks: Int32Array[][] = [[], [], []];
      for (const d of dcs) {
        for (let c = 0; c < 3; c++) {
          const b = new Int32Array(64);
          b[0] = c === 0 ? d : 0;
          blocks[c].push(b);
        }
      }
      return encodeBaseline({ width: 8 * dcs.length, height: 8, luma: [1, 1], blocks, quant: [ones, ones] });
    };
    const inside = [4091, 4087, -4096, -4080, 2047, -2048, 300];
    await expectSharpPixels(file(inside), 8 * inside.length, 8);
    for (const d of [4092, 4095, -4097]) expect(decodeBaselineJpeg(file([d]), 8, 8, new Uint8Array(192), 0), `DC ${d}`).toBe(false);
  });

  it('extreme coefficients: exact where accepted, declined where C and SIMD libjpeg could differ', async () => {
    const rnd = mulberry32(11);
    let accepted = 0;
    let declined = 0;
    for (let trial = 0; trial < 40; trial++) {
      const scale = [1, 4, 16, 64][trial % 4];
      const blocks: Int32Array[][] = [0, 1, 2].map(() =>
        Array.from({ length: 4 }, () => {
          const b = new Int32Array(64);
          for (let n = 0; n < 64; n++) if (rnd() < 0.3) b[n] = Math.round((rnd() - 0.5) * 2 * scale * (n === 0 ? 8 : 2));
          return b;
        }),
      );
      const q = Array.from({ length: 64 }, () => 1 + Math.floor(rnd() * 40));
      const jpeg = encodeBaseline({ width: 16, height: 16, luma: [1, 1], blocks, quant: [q, q] });
      if (await expectExactOrDeclined(jpeg, 16, 16)) accepted++;
      else declined++;
    }
    expect(accepted).toBeGreaterThan(5);
    expect(declined).toBeGreaterThan(5);
  });
});

describe('decodeBaselineJpeg declines what it does not reproduce', () => {
  const refuses = (jpeg: Uint8Array, w: number, h: number) => {
    const out = new Uint8Array(w * h * 3).fill(9);
    expect(decodeBaselineJpeg(jpeg, w, h, out, 0)).toBe(false);
    expect(out.every((v) => v === 9)).toBe(true);
  };
  const px = testImage(32, 32, 5);

  it('progressive, grayscale, CMYK, EXIF and ICC files', async () => {
    refuses(await encode(px, 32, 32, { progressive: true }), 32, 32);
    refuses(await encode(px, 32, 32, { mozjpeg: true }), 32, 32); // progressive too
    const image = sharp(px, { raw: { width: 32, height: 32, channels: 3 } });
    refuses(await image.clone().toColourspace('b-w').jpeg().toBuffer(), 32, 32);
    refuses(await image.clone().toColourspace('cmyk').jpeg().toBuffer(), 32, 32);
    refuses(await image.clone().jpeg().withMetadata({ orientation: 1 }).toBuffer(), 32, 32);
    refuses(await image.clone().jpeg().withIccProfile('p3').toBuffer(), 32, 32);
  });

  it('another size than expected, and an output buffer too small', async () => {
    const jpeg = await encode(px, 32, 32, {});
    refuses(jpeg, 32, 31);
    refuses(jpeg, 31, 32);
    refuses(jpeg, 64, 64);
    expect(decodeBaselineJpeg(jpeg, 32, 32, new Uint8Array(32 * 32 * 3), 1)).toBe(false);
    expect(decodeBaselineJpeg(jpeg, 32, 32, new Uint8Array(32 * 32 * 3 + 1), 1)).toBe(true);
  });

  it('subsampled images 4 or fewer pixels wide (libjpeg does not fancy-upsample those)', async () => {
    for (const w of [1, 2, 3, 4]) refuses(await encode(testImage(w, 8, w), w, 8, { chromaSubsampling: '4:2:0' }), w, 8);
    await expectSharpPixels(await encode(testImage(4, 8, 1), 4, 8, { chromaSubsampling: '4:4:4' }), 4, 8);
    // Any height is fine: the first and last chroma rows stand in for their missing neighbours.
    for (const [w, h] of [[5, 1], [6, 2], [7, 3]]) await expectSharpPixels(await encode(testImage(w, h, 4), w, h, { chromaSubsampling: '4:2:0' }), w, h);
  });

  it('every truncation of a file', async () => {
    const jpeg = await encode(px, 32, 32, { quality: 90 });
    for (let n = 0; n < jpeg.length; n++) refuses(jpeg.subarray(0, n), 32, 32);
  });

  it('a marker in the wrong place, a wrong restart number, an Adobe RGB transform, JFIF 2.0', async () => {
    const quant: [number[], number[]] = [quantTable(1), quantTable(1)];
    const blocks = imageBlocks(px, 32, 32, [2, 2], quant);
    const good = encodeBaseline({ width: 32, height: 32, luma: [2, 2], blocks, quant, restartInterval: 1, jfif: true });
    await expectSharpPixels(good, 32, 32);
    const rst = good.findIndex((v, i) => v === 0xff && good[i + 1] === 0xd1);
    const wrongRst = good.slice();
    wrongRst[rst + 1] = 0xd2;
    refuses(wrongRst, 32, 32);
    const dnl = good.slice();
    dnl[rst + 1] = 0xdc;
    refuses(dnl, 32, 32);
    const jfif2 = good.slice();
    jfif2[2 + 2 + 2 + 5] = 2; // SOI, APP0 marker, length, "JFIF\0", major version
    refuses(jfif2, 32, 32);
    // An Adobe APP14 segment with transform 0 (RGB) right after SOI.
    const adobe = (transform: number) => Uint8Array.from([0xff, 0xd8, 0xff, 0xee, 0, 14, 0x41, 0x64, 0x6f, 0x62, 0x65, 0, 100, 0, 0, 0, 0, transform, ...good.subarray(2)]);
    refuses(adobe(0), 32, 32);
    await expectSharpPixels(adobe(1), 32, 32);
  });

  it('corrupted files: exact where accepted, never a throw', async () => {
    const rnd = mulberry32(99);
    const files = [await encode(px, 32, 32, { quality: 75 }), await encode(testImage(40, 24, 2), 40, 24, { quality: 95, chromaSubsampling: '4:4:4' })];
    const sizes = [[32, 32], [40, 24]];
    let accepted = 0;
    for (let trial = 0; trial < 300; trial++) {
      const which = trial % 2;
      const jpeg = files[which].slice();
      // Mostly in the entropy-coded data, a quarter anywhere after SOI (tables, sizes, markers).
      const scan = jpeg.findIndex((v, i) => v === 0xff && jpeg[i + 1] === 0xda);
      const from = trial % 4 === 3 ? 2 : scan + 14;
      for (let flips = 1 + Math.floor(rnd() * 3); flips > 0; flips--) {
        const at = from + Math.floor(rnd() * (jpeg.length - from - 2));
        jpeg[at] ^= 1 << Math.floor(rnd() * 8);
      }
      if (await expectExactOrDeclined(jpeg, sizes[which][0], sizes[which][1])) accepted++;
    }
    expect(accepted).toBeGreaterThan(0); // some flips still make a valid, different stream
  });
});

const CIFAR = join(import.meta.dirname, '..', '..', '..', 'shared', 'datasets', 'cifar10', 'train');

describe.skipIf(!existsSync(CIFAR))('decodeBaselineJpeg on CIFAR-10', () => {
  it('gives sharp’s pixels for 300 training images', async () => {
    for (const cls of readdirSync(CIFAR).sort()) {
      for (const name of readdirSync(join(CIFAR, cls)).sort().slice(0, 30)) {
        await expectSharpPixels(readFileSync(join(CIFAR, cls, name)), 32, 32);
      }
    }
  });
});
