// Pixel ops on raw HWC uint8 RGB images in typed arrays, reproducing what torchvision does to a
// PIL image bit for bit (Pillow's fixed-point resampling, float32 blends and HSV conversions).
//
// Typed-array loops rather than sharp (scripts/bench-augment.ts --ops): at 32 px sharp's ~1 ms
// per-call overhead makes it 10–200× slower for every op; at 224 px sharp is faster only for the
// resize (~2.5×) and the blur (~4×), but libvips cannot reproduce Pillow's/torchvision's
// arithmetic there (different resize kernels and rounding, blur kernel sized from σ rather than
// 10 % of the side, σ >= 0.3 only), so those would not stay exact. Batching several images into
// one sharp call does not help: every view has its own crop and colour parameters.
//
// The loops are shaped for V8 (CPU time per 224 px view from a 500x375 photo, against the
// plain version they replaced: ~1.7x overall; hue ~2.6x, brightness ~2x, blur ~1.5-2.5x,
// resize ~1.3x): straight-line code for the common window widths, tables instead of per-pixel
// float work where the result depends on few inputs, hot loops in top-level functions (closure
// variables are not kept in registers), reused scratch buffers, and Uint8ClampedArray stores,
// which are exactly clip8 for integers and torch.round + clip for doubles. Every op still
// produces the bytes of the plain version (tests/augment/fast-ops.test.ts); a fixed-point blur
// would not, and without SIMD in JS it would not be faster either.

import type { CropBox } from './params.ts';

/** An RGB image, HWC, 3 bytes per pixel. */
export interface RgbImage {
  data: Uint8Array;
  height: number;
  width: number;
}

const fround = Math.fround;

// ---------------------------------------------------------------------------------------------
// Resize: Pillow's ImagingResample with the BILINEAR (triangle) filter, which is antialiased:
// when shrinking, the filter support widens by the scale factor. Coefficients are computed in
// double, normalised per output pixel, then quantised to 22 fractional bits exactly as Pillow's
// normalize_coeffs_8bpc; accumulation starts at 2^21 (rounding) and is clipped to [0, 255].
// Horizontal pass first (into a uint8 temporary covering only the rows the vertical pass reads),
// then vertical, as Pillow does; a pass is skipped when its size does not change.
// ---------------------------------------------------------------------------------------------

const PRECISION_BITS = 22;

interface Coeffs {
  /** Taps per output: the widest of Pillow's windows for this size pair. */
  taps: number;
  /** [outSize]: first input index of each output's window. */
  start: Int32Array;
  /** [outSize * taps]: fixed-point weights of the window, zero outside Pillow's own window. */
  kk: Int32Array;
}

// Crop sizes repeat a lot (at 32 px there are only 32 possible crop sides), so cache the tables.
const coeffCache = new Map<number, Coeffs>();

/**
 * Pillow's precompute_coeffs + normalize_coeffs_8bpc, laid out as equal-width windows: every
 * output gets `taps` weights (zeros pad the narrower windows; a window near the end starts
 * earlier so it stays inside the input). Adding w·0 changes no sum, and equal widths let the
 * passes below run straight-line code for the common 2–5 taps instead of a short inner loop.
 */
function precomputeCoeffs(inSize: number, outSize: number): Coeffs {
  const cacheKey = inSize * 65536 + outSize;
  const cached = coeffCache.get(cacheKey);
  if (cached) return cached;
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1);
  const support = 1.0 * filterscale; // bilinear support 1
  const ksize = Math.ceil(support) * 2 + 1;
  const xmins = new Int32Array(outSize);
  const counts = new Int32Array(outSize);
  const pillow = new Int32Array(outSize * ksize);
  const w = new Float64Array(ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1.0 / filterscale;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      const t = Math.abs((x + xmin - center + 0.5) * ss);
      const v = t < 1 ? 1 - t : 0;
      w[x] = v;
      ww += v;
    }
    for (let x = 0; x < xmax; x++) {
      const k = ww !== 0 ? w[x] / ww : w[x];
      // Bilinear weights are never negative, so only Pillow's positive rounding branch applies.
      pillow[xx * ksize + x] = Math.trunc(0.5 + k * (1 << PRECISION_BITS));
    }
    xmins[xx] = xmin;
    counts[xx] = xmax;
  }
  const taps = Math.max(...counts); // <= inSize, since every window lies inside the input
  const start = new Int32Array(outSize);
  const kk = new Int32Array(outSize * taps);
  for (let xx = 0; xx < outSize; xx++) {
    const first = Math.min(xmins[xx], inSize - taps);
    start[xx] = first;
    for (let x = 0; x < counts[xx]; x++) kk[xx * taps + xmins[xx] - first + x] = pillow[xx * ksize + x];
  }
  const coeffs = { taps, start, kk };
  if (coeffCache.size > 4096) coeffCache.clear();
  coeffCache.set(cacheKey, coeffs);
  return coeffs;
}

/** A Uint8ClampedArray over the same bytes: storing an integer clips it to [0, 255] for free. */
function clampedView(a: Uint8Array): Uint8ClampedArray {
  return new Uint8ClampedArray(a.buffer, a.byteOffset, a.length);
}

// Per-thread scratch buffers, grown on demand, so a 224 px view does not allocate (and zero)
// ~0.2 MB for the resize and ~0.1 MB for the blur's row ring on every call. The ops are
// synchronous, so one call never sees another's use of them.
let scratchBytes = new Uint8Array(0);
let scratchFloats = new Float64Array(0);
function scratchU8(n: number): Uint8Array {
  if (scratchBytes.length < n) scratchBytes = new Uint8Array(Math.max(n, scratchBytes.length * 2));
  return scratchBytes.subarray(0, n);
}
function scratchF64(n: number): Float64Array {
  if (scratchFloats.length < n) scratchFloats = new Float64Array(Math.max(n, scratchFloats.length * 2));
  return scratchFloats.subarray(0, n);
}

/**
 * torchvision `resized_crop(img, top, left, h, w, [outH, outW], BILINEAR)` on a PIL image:
 * crop, then Pillow's antialiased bilinear resize. Writes into `out` ([outH, outW, 3]).
 */
export function resizedCrop(src: RgbImage, crop: CropBox, outH: number, outW: number, out: Uint8Array = new Uint8Array(outH * outW * 3)): Uint8Array {
  const { top, left, height: ch, width: cw } = crop;
  if (top < 0 || left < 0 || ch < 1 || cw < 1 || top + ch > src.height || left + cw > src.width) {
    throw new Error(`crop ${JSON.stringify(crop)} is outside the ${src.height}x${src.width} image`);
  }
  const srcStride = src.width * 3;
  const cropStart = (top * src.width + left) * 3;
  const needH = cw !== outW;
  const needV = ch !== outH;
  if (!needH && !needV) {
    for (let y = 0; y < ch; y++) out.set(src.data.subarray(cropStart + y * srcStride, cropStart + y * srcStride + cw * 3), y * cw * 3);
    return out;
  }
  if (!needV) {
    horizontalPass(src.data, cropStart, srcStride, ch, precomputeCoeffs(cw, outW), outW, clampedView(out));
    return out;
  }
  const vert = precomputeCoeffs(ch, outH);
  if (!needH) {
    // The vertical pass reads the crop in place, with the source image's row stride.
    verticalPass(src.data, cropStart, srcStride, vert, outH, outW * 3, clampedView(out));
    return out;
  }
  // Only the crop rows that the vertical windows read go through the horizontal pass, into a
  // uint8 temporary as in Pillow (its ybox_first..ybox_last).
  const yFirst = vert.start[0];
  const yLast = vert.start[outH - 1] + vert.taps;
  const rowLen = outW * 3;
  const tmp = scratchU8((yLast - yFirst) * rowLen);
  horizontalPass(src.data, cropStart + yFirst * srcStride, srcStride, yLast - yFirst, precomputeCoeffs(cw, outW), outW, clampedView(tmp));
  verticalPass(tmp, -yFirst * rowLen, rowLen, vert, outH, rowLen, clampedView(out));
  return out;
}

// The two passes below keep Pillow's integer arithmetic. Coefficients are positive and sum to
// about 2^22, so a sum stays below 2^21 + 255·2^22 < 2^31: exact in doubles, and `>>` (ToInt32)
// never wraps. Storing into a Uint8ClampedArray is Pillow's clip8 after the shift.

/** Horizontal resample of `rows` rows from byte `start` (row stride `stride`) into dst ([rows, outW, 3]). */
function horizontalPass(s: Uint8Array, start: number, stride: number, rows: number, coeffs: Coeffs, outW: number, dst: Uint8ClampedArray): void {
  const { taps, start: first, kk } = coeffs;
  const half = 1 << (PRECISION_BITS - 1);
  const P = PRECISION_BITS;
  let o = 0;
  for (let y = 0; y < rows; y++) {
    const rowBase = start + y * stride;
    for (let xx = 0; xx < outW; xx++, o += 3) {
      const p = rowBase + first[xx] * 3;
      const kb = xx * taps;
      const k0 = kk[kb];
      if (taps === 2) {
        const k1 = kk[kb + 1];
        dst[o] = (half + s[p] * k0 + s[p + 3] * k1) >> P;
        dst[o + 1] = (half + s[p + 1] * k0 + s[p + 4] * k1) >> P;
        dst[o + 2] = (half + s[p + 2] * k0 + s[p + 5] * k1) >> P;
      } else if (taps === 3) {
        const k1 = kk[kb + 1];
        const k2 = kk[kb + 2];
        dst[o] = (half + s[p] * k0 + s[p + 3] * k1 + s[p + 6] * k2) >> P;
        dst[o + 1] = (half + s[p + 1] * k0 + s[p + 4] * k1 + s[p + 7] * k2) >> P;
        dst[o + 2] = (half + s[p + 2] * k0 + s[p + 5] * k1 + s[p + 8] * k2) >> P;
      } else if (taps === 4) {
        const k1 = kk[kb + 1];
        const k2 = kk[kb + 2];
        const k3 = kk[kb + 3];
        dst[o] = (half + s[p] * k0 + s[p + 3] * k1 + s[p + 6] * k2 + s[p + 9] * k3) >> P;
        dst[o + 1] = (half + s[p + 1] * k0 + s[p + 4] * k1 + s[p + 7] * k2 + s[p + 10] * k3) >> P;
        dst[o + 2] = (half + s[p + 2] * k0 + s[p + 5] * k1 + s[p + 8] * k2 + s[p + 11] * k3) >> P;
      } else if (taps === 5) {
        const k1 = kk[kb + 1];
        const k2 = kk[kb + 2];
        const k3 = kk[kb + 3];
        const k4 = kk[kb + 4];
        dst[o] = (half + s[p] * k0 + s[p + 3] * k1 + s[p + 6] * k2 + s[p + 9] * k3 + s[p + 12] * k4) >> P;
        dst[o + 1] = (half + s[p + 1] * k0 + s[p + 4] * k1 + s[p + 7] * k2 + s[p + 10] * k3 + s[p + 13] * k4) >> P;
        dst[o + 2] = (half + s[p + 2] * k0 + s[p + 5] * k1 + s[p + 8] * k2 + s[p + 11] * k3 + s[p + 14] * k4) >> P;
      } else {
        let s0 = half;
        let s1 = half;
        let s2 = half;
        for (let x = 0, q = p; x < taps; x++, q += 3) {
          const k = kk[kb + x];
          s0 += s[q] * k;
          s1 += s[q + 1] * k;
          s2 += s[q + 2] * k;
        }
        dst[o] = s0 >> P;
        dst[o + 1] = s1 >> P;
        dst[o + 2] = s2 >> P;
      }
    }
  }
}

/** Vertical resample: output row yy sums the input rows of its window, read from s at `start + row · stride`. */
function verticalPass(s: Uint8Array, start: number, stride: number, coeffs: Coeffs, outH: number, rowLen: number, dst: Uint8ClampedArray): void {
  const { taps, start: first, kk } = coeffs;
  const half = 1 << (PRECISION_BITS - 1);
  const P = PRECISION_BITS;
  for (let yy = 0; yy < outH; yy++) {
    const a = start + first[yy] * stride;
    const b = a + stride;
    const c = b + stride;
    const d = c + stride;
    const kb = yy * taps;
    const k0 = kk[kb];
    const o = yy * rowLen;
    // One straight-line loop per common window width (2–5 taps: shrinking up to ~2.5×), chosen once per output row.
    if (taps === 2) {
      const k1 = kk[kb + 1];
      for (let i = 0; i < rowLen; i++) dst[o + i] = (half + s[a + i] * k0 + s[b + i] * k1) >> P;
    } else if (taps === 3) {
      const k1 = kk[kb + 1];
      const k2 = kk[kb + 2];
      for (let i = 0; i < rowLen; i++) dst[o + i] = (half + s[a + i] * k0 + s[b + i] * k1 + s[c + i] * k2) >> P;
    } else if (taps === 4) {
      const k1 = kk[kb + 1];
      const k2 = kk[kb + 2];
      const k3 = kk[kb + 3];
      for (let i = 0; i < rowLen; i++) dst[o + i] = (half + s[a + i] * k0 + s[b + i] * k1 + s[c + i] * k2 + s[d + i] * k3) >> P;
    } else if (taps === 5) {
      const e = d + stride;
      const k1 = kk[kb + 1];
      const k2 = kk[kb + 2];
      const k3 = kk[kb + 3];
      const k4 = kk[kb + 4];
      for (let i = 0; i < rowLen; i++) dst[o + i] = (half + s[a + i] * k0 + s[b + i] * k1 + s[c + i] * k2 + s[d + i] * k3 + s[e + i] * k4) >> P;
    } else {
      for (let i = 0; i < rowLen; i++) {
        let ss = half;
        for (let y = 0, q = a + i; y < taps; y++, q += stride) ss += s[q] * kk[kb + y];
        dst[o + i] = ss >> P;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Flip, grayscale
// ---------------------------------------------------------------------------------------------

/** Mirrors the image left-right in place (RandomHorizontalFlip). */
export function hflipInPlace(img: RgbImage): void {
  const { data, height, width } = img;
  for (let y = 0; y < height; y++) {
    for (let a = y * width * 3, b = a + (width - 1) * 3; a < b; a += 3, b -= 3) {
      const r = data[a];
      const g = data[a + 1];
      const bl = data[a + 2];
      data[a] = data[b];
      data[a + 1] = data[b + 1];
      data[a + 2] = data[b + 2];
      data[b] = r;
      data[b + 1] = g;
      data[b + 2] = bl;
    }
  }
}

/**
 * Pillow's RGB→L (ITU-R 601-2 luma, L = R·299/1000 + G·587/1000 + B·114/1000) as Pillow computes
 * it: in 16.16 fixed point with rounding, (R·19595 + G·38470 + B·7471 + 0x8000) >> 16.
 */
export function luma(r: number, g: number, b: number): number {
  return (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16;
}

/** RandomGrayscale with num_output_channels=3: every channel becomes Pillow's L. */
export function grayscaleInPlace(img: RgbImage): void {
  const d = img.data;
  for (let p = 0; p < d.length; p += 3) {
    const l = luma(d[p], d[p + 1], d[p + 2]);
    d[p] = l;
    d[p + 1] = l;
    d[p + 2] = l;
  }
}

// ---------------------------------------------------------------------------------------------
// Colour jitter: torchvision's PIL path uses ImageEnhance, i.e. Image.blend(degenerate, img, f)
// computed by Pillow in float32: out = (uint8)(in1 + f·(in2 − in1)), truncating, with clipping
// to [0, 255] when f is outside [0, 1]. f == 0 and f == 1 are exact copies.
// ---------------------------------------------------------------------------------------------

/** Pillow's ImagingBlend of one byte: `base` (degenerate image) towards `value` by float32 `alpha`. */
export function blendByte(base: number, value: number, alpha: number): number {
  const a = fround(alpha);
  if (a === 0) return base;
  if (a === 1) return value;
  const t = fround(base + fround(a * (value - base)));
  if (a >= 0 && a <= 1) return Math.trunc(t);
  return t <= 0 ? 0 : t >= 255 ? 255 : Math.trunc(t);
}

function blendLut(base: number, alpha: number): Uint8Array {
  const lut = new Uint8Array(256);
  for (let v = 0; v < 256; v++) lut[v] = blendByte(base, v, alpha);
  return lut;
}

/**
 * d[i] = lut[d[i]], four bytes per step through a Uint32 view of the aligned middle (~1.8× fewer
 * memory operations). Each byte is mapped in place within its word, so endianness is irrelevant.
 */
function applyLut(d: Uint8Array, lut: Uint8Array): void {
  const head = Math.min(d.length, (4 - (d.byteOffset & 3)) & 3);
  const words = (d.length - head) >> 2;
  for (let i = 0; i < head; i++) d[i] = lut[d[i]];
  const w = new Uint32Array(d.buffer, d.byteOffset + head, words);
  for (let i = 0; i < words; i++) {
    const v = w[i];
    w[i] = lut[v & 255] | (lut[(v >>> 8) & 255] << 8) | (lut[(v >>> 16) & 255] << 16) | (lut[v >>> 24] << 24);
  }
  for (let i = head + words * 4; i < d.length; i++) d[i] = lut[d[i]];
}

/** adjust_brightness: blend with black (ImageEnhance.Brightness). */
export function adjustBrightnessInPlace(img: RgbImage, factor: number): void {
  applyLut(img.data, blendLut(0, factor));
}

/** Mean of Pillow's L image rounded to an integer, as ImageEnhance.Contrast: int(mean + 0.5). */
export function meanLuma(img: RgbImage): number {
  const d = img.data;
  let sum = 0;
  for (let p = 0; p < d.length; p += 3) sum += luma(d[p], d[p + 1], d[p + 2]);
  return Math.trunc(sum / (d.length / 3) + 0.5);
}

/** adjust_contrast: blend with a flat grey image at the (rounded) mean luma (ImageEnhance.Contrast). */
export function adjustContrastInPlace(img: RgbImage, factor: number): void {
  applyLut(img.data, blendLut(meanLuma(img), factor));
}

/** adjust_saturation: blend with the image's own grayscale (ImageEnhance.Color). */
export function adjustSaturationInPlace(img: RgbImage, factor: number): void {
  const d = img.data;
  const a = fround(factor);
  if (a === 1) return;
  // blendByte(l, v, a) for every pixel, with its float32 product a·(v − l) taken from a table
  // over v − l ∈ [−255, 255]; the clamped store of trunc(t) is blendByte's truncate-and-clip.
  const product = new Float64Array(511);
  for (let diff = -255; diff <= 255; diff++) product[diff + 255] = fround(a * diff);
  const out = clampedView(d);
  for (let p = 0; p < d.length; p += 3) {
    const r = d[p];
    const g = d[p + 1];
    const b = d[p + 2];
    const l = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16; // luma(), inlined
    const base = l - 255;
    out[p] = Math.trunc(fround(l + product[r - base]));
    out[p + 1] = Math.trunc(fround(l + product[g - base]));
    out[p + 2] = Math.trunc(fround(l + product[b - base]));
  }
}

// ---------------------------------------------------------------------------------------------
// Hue: torchvision converts to Pillow's 8-bit HSV, adds np.uint8(hue·255) to H (wrapping mod 256)
// and converts back. Both conversions are lossy, so even a zero shift changes some pixels; we
// reproduce Pillow's rgb2hsv_row / hsv2rgb including their float32 intermediates.
// ---------------------------------------------------------------------------------------------

/** The byte added to Pillow's H channel for a hue factor: trunc(hue·255) wrapped to uint8. */
export function hueShiftByte(hue: number): number {
  return ((Math.trunc(hue * 255) % 256) + 256) % 256;
}

/** Pillow rgb2hsv_row for one pixel → [h, s, v] bytes. */
export function rgbToHsvPil(r: number, g: number, b: number, out: Uint8Array | number[] = [0, 0, 0]): Uint8Array | number[] {
  const maxc = r > g ? (r > b ? r : b) : g > b ? g : b;
  const minc = r < g ? (r < b ? r : b) : g < b ? g : b;
  out[2] = maxc;
  if (minc === maxc) {
    out[0] = 0;
    out[1] = 0;
    return out;
  }
  const cr = maxc - minc;
  const s = fround(cr / maxc);
  const rc = fround((maxc - r) / cr);
  const gc = fround((maxc - g) / cr);
  const bc = fround((maxc - b) / cr);
  let h: number;
  if (r === maxc) h = fround(bc - gc);
  else if (g === maxc) h = fround(2.0 + rc - bc);
  else h = fround(4.0 + gc - rc);
  h = fround((h / 6.0 + 1.0) % 1.0);
  out[0] = clampByte(Math.trunc(h * 255.0));
  out[1] = clampByte(Math.trunc(s * 255.0));
  return out;
}

/** C round(): half away from zero. */
function cRound(x: number): number {
  return x < 0 ? -Math.floor(-x + 0.5) : Math.floor(x + 0.5);
}

function clampByte(v: number): number {
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

/** Pillow hsv2rgb for one pixel → [r, g, b] bytes. */
export function hsvToRgbPil(h: number, s: number, v: number, out: Uint8Array | number[] = [0, 0, 0]): Uint8Array | number[] {
  if (s === 0) {
    out[0] = v;
    out[1] = v;
    out[2] = v;
    return out;
  }
  const i = Math.floor((h * 6.0) / 255.0);
  const f = fround((h * 6.0) / 255.0 - i);
  const fs = fround(s / 255.0);
  const p = clampByte(cRound(v * (1.0 - fs)));
  const q = clampByte(cRound(v * (1.0 - fround(fs * f))));
  const t = clampByte(cRound(v * (1.0 - fs * (1.0 - f))));
  switch (i % 6) {
    case 0: out[0] = v; out[1] = t; out[2] = p; break;
    case 1: out[0] = q; out[1] = v; out[2] = p; break;
    case 2: out[0] = p; out[1] = v; out[2] = t; break;
    case 3: out[0] = p; out[1] = q; out[2] = v; break;
    case 4: out[0] = t; out[1] = p; out[2] = v; break;
    default: out[0] = v; out[1] = p; out[2] = q; break;
  }
  return out;
}

/**
 * adjust_hue (torchvision PIL path): HSV round trip with H += np.uint8(hue·255). The same
 * arithmetic as rgbToHsvPil / hsvToRgbPil (the tests pin the two against each other on a dense
 * colour grid), restructured for speed: the forward conversion's H and S bytes come from tables
 * (see hsvTables), and the backward one evaluates Pillow's expressions on tabled f and fs.
 */
export function adjustHueInPlace(img: RgbImage, hue: number): void {
  if (!(hue >= -0.5 && hue <= 0.5)) throw new Error(`hue factor must be in [-0.5, 0.5], got ${hue}`);
  const shift = hueShiftByte(hue);
  const d = img.data;
  const { hueR, hueG, hueB, sat, sector, frac, fsat } = hsvTables();
  for (let p = 0; p < d.length; p += 3) {
    const r = d[p];
    const g = d[p + 1];
    const b = d[p + 2];
    let hb: number;
    let v: number;
    let minc: number;
    if (r >= g && r >= b) {
      if (g === b && r === g) continue; // grey: s = 0, so H is irrelevant and the round trip is exact
      v = r;
      minc = g < b ? g : b;
      hb = hueR[(r - g) * 256 + (r - b)];
    } else if (g >= b) {
      v = g;
      minc = r < b ? r : b;
      hb = hueG[(g - r) * 256 + (g - b)];
    } else {
      v = b;
      minc = r < g ? r : g;
      hb = hueB[(b - g) * 256 + (b - r)];
    }
    const sb = sat[(v - minc) * 256 + v];
    if (sb === 0) {
      d[p] = v;
      d[p + 1] = v;
      d[p + 2] = v;
      continue;
    }
    hb = (hb + shift) & 255;
    const f = frac[hb];
    const fs = fsat[sb];
    // Pillow's hsv2rgb: C round() of v times each factor; the products lie in [0, 255].
    const pv = Math.floor(v * (1.0 - fs) + 0.5);
    const qv = Math.floor(v * (1.0 - fround(fs * f)) + 0.5);
    const tv = Math.floor(v * (1.0 - fs * (1.0 - f)) + 0.5);
    switch (sector[hb]) {
      case 0: d[p] = v; d[p + 1] = tv; d[p + 2] = pv; break;
      case 1: d[p] = qv; d[p + 1] = v; d[p + 2] = pv; break;
      case 2: d[p] = pv; d[p + 1] = v; d[p + 2] = tv; break;
      case 3: d[p] = pv; d[p + 1] = qv; d[p + 2] = v; break;
      case 4: d[p] = tv; d[p + 1] = pv; d[p + 2] = v; break;
      default: d[p] = v; d[p + 1] = pv; d[p + 2] = qv; break;
    }
  }
}

interface HsvTables {
  /** H byte when R is the maximum, by (R − G)·256 + (R − B). */
  hueR: Uint8Array;
  /** H byte when G is the maximum (R below it), by (G − R)·256 + (G − B). */
  hueG: Uint8Array;
  /** H byte when B is the maximum (R, G below it), by (B − G)·256 + (B − R). */
  hueB: Uint8Array;
  /** S byte by (max − min)·256 + max. */
  sat: Uint8Array;
  /** hsv2rgb's sector i mod 6, by H byte. */
  sector: Uint8Array;
  /** hsv2rgb's float32 f, by H byte. */
  frac: Float64Array;
  /** hsv2rgb's float32 fs = s / 255, by S byte. */
  fsat: Float64Array;
}

let hsvTablesCache: HsvTables | null = null;

/**
 * Pillow's rgb2hsv depends on a pixel only through its maximum channel (which case of the
 * formula applies) and the other two channels' distances below it, because max − min is the
 * larger of those distances; so H is a table lookup per case. The tables are filled with exactly
 * the float32 expressions of rgbToHsvPil, once per thread (~0.3 MB).
 */
function hsvTables(): HsvTables {
  if (hsvTablesCache) return hsvTablesCache;
  const div = float32Quotients();
  const hueByte = (h: number) => {
    // fmod(y, 1) for y = h/6 + 1 in (0, 2): y − floor(y) is exact there.
    const y = h / 6.0 + 1.0;
    const hb = Math.trunc(fround(y - Math.floor(y)) * 255.0);
    return hb > 255 ? 255 : hb;
  };
  const hueR = new Uint8Array(65536);
  const hueG = new Uint8Array(65536);
  const hueB = new Uint8Array(65536);
  const sat = new Uint8Array(65536);
  for (let d1 = 0; d1 < 256; d1++) {
    for (let d2 = 0; d2 < 256; d2++) {
      const cr = d1 > d2 ? d1 : d2;
      if (cr === 0) continue;
      const at = d1 * 256 + d2;
      // rc, gc, bc = (max − channel) / cr in float32, as rgb2hsv_row.
      hueR[at] = hueByte(fround(div[d2 * 256 + cr] - div[d1 * 256 + cr])); // d1 = max − g, d2 = max − b: bc − gc
      hueG[at] = hueByte(fround(2.0 + div[d1 * 256 + cr] - div[d2 * 256 + cr])); // d1 = max − r, d2 = max − b: 2 + rc − bc
      hueB[at] = hueByte(fround(4.0 + div[d1 * 256 + cr] - div[d2 * 256 + cr])); // d1 = max − g, d2 = max − r: 4 + gc − rc
    }
  }
  for (let cr = 0; cr < 256; cr++) {
    for (let max = 1; max < 256; max++) {
      const sb = Math.trunc(div[cr * 256 + max] * 255.0);
      sat[cr * 256 + max] = sb > 255 ? 255 : sb;
    }
  }
  const sector = new Uint8Array(256);
  const frac = new Float64Array(256);
  const fsat = new Float64Array(256);
  for (let h = 0; h < 256; h++) {
    const x6 = (h * 6.0) / 255.0;
    const i = Math.floor(x6);
    sector[h] = i % 6;
    frac[h] = fround(x6 - i);
    fsat[h] = fround(h / 255.0);
  }
  hsvTablesCache = { hueR, hueG, hueB, sat, sector, frac, fsat };
  return hsvTablesCache;
}

let quotients: Float32Array | null = null;

/** quotients[a·256 + b] = float32(a / b) for bytes a, b (b > 0): Pillow's float divisions, once per thread. */
function float32Quotients(): Float32Array {
  if (quotients) return quotients;
  const q = new Float32Array(65536);
  for (let a = 0; a < 256; a++) for (let b = 1; b < 256; b++) q[a * 256 + b] = a / b;
  quotients = q;
  return q;
}

// ---------------------------------------------------------------------------------------------
// Gaussian blur: torchvision's gaussian_blur on the tensor of a PIL image: a normalised kernel
// exp(−x²/2σ²) at x = −(k−1)/2 … (k−1)/2, reflect padding (edge pixel not repeated), and
// torch.round (half to even) back to uint8. torchvision convolves with the float32 outer-product
// kernel; we run the same kernel separably in float64, which can differ only where the exact
// result lies within float32 rounding error of a .5 boundary. Any σ > 0 works (no 0.3 floor).
// ---------------------------------------------------------------------------------------------

/** torchvision _get_gaussian_kernel1d (in float64). */
export function gaussianKernel1d(kernelSize: number, sigma: number): Float64Array {
  const half = (kernelSize - 1) * 0.5;
  const k = new Float64Array(kernelSize);
  let sum = 0;
  for (let i = 0; i < kernelSize; i++) {
    const x = i - half; // torch.linspace(-half, half, k) has unit steps for odd k
    k[i] = Math.exp(-0.5 * (x / sigma) ** 2);
    sum += k[i];
  }
  for (let i = 0; i < kernelSize; i++) k[i] /= sum;
  return k;
}

/** torch 'reflect' padding index: mirror about the edge pixel (…2 1 | 0 1 2 … n−1 | n−2 …). */
export function reflectIndex(i: number, n: number): number {
  if (n === 1) return 0;
  const period = 2 * (n - 1);
  let j = ((i % period) + period) % period;
  if (j >= n) j = period - j;
  return j;
}

/**
 * GaussianBlur(kernelSize, σ) in place. Taps whose weight is below 1e-10 are skipped (they add
 * at most 255·23·1e-10 ≈ 6e-7 per pixel, far below torchvision's own float32 error); that keeps
 * only ±6.8σ and roughly halves the work for the typical σ ≈ 1.
 *
 * Every output is the same float64 expression, evaluated in the same order, as in the plain
 * two-pass version this replaced (centre·k_r, then + (left_t + right_t)·k_t for t = 0…r−1), so
 * the bytes are identical; only the loop structure changed for speed: reflect indices come from
 * tables, the horizontal pass accumulates in a register, the vertical pass streams two taps per
 * sweep over the row accumulator, buffers are reused, and the Uint8ClampedArray store is exactly
 * torch.round (half to even) plus the clip to [0, 255].
 */
export function gaussianBlurInPlace(img: RgbImage, kernelSize: number, sigma: number): void {
  blurInterleaved(img.data, img.height, img.width, 3, kernelSize, sigma);
}

/**
 * gaussianBlurInPlace for an image whose three channels are equal (after RandomGrayscale):
 * blurs one plane and copies it back to all three. Each channel is blurred independently with
 * the same arithmetic, so the bytes equal gaussianBlurInPlace's, at a third of the work.
 */
export function gaussianBlurGrayInPlace(img: RgbImage, kernelSize: number, sigma: number): void {
  const d = img.data;
  const n = img.height * img.width;
  const plane = new Uint8Array(n);
  for (let i = 0, p = 0; i < n; i++, p += 3) plane[i] = d[p];
  blurInterleaved(plane, img.height, img.width, 1, kernelSize, sigma);
  for (let i = 0, p = 0; i < n; i++, p += 3) {
    const v = plane[i];
    d[p] = v;
    d[p + 1] = v;
    d[p + 2] = v;
  }
}

/** The blur on `ch` interleaved channels (3 for RGB, 1 for a single plane). */
function blurInterleaved(data: Uint8Array, h: number, w: number, ch: number, kernelSize: number, sigma: number): void {
  if (kernelSize % 2 !== 1 || !(sigma > 0)) throw new Error(`blur needs an odd kernel and σ > 0, got ${kernelSize}, ${sigma}`);
  const full = gaussianKernel1d(kernelSize, sigma);
  const R = (kernelSize - 1) / 2;
  let r = R;
  while (r > 0 && full[R - r] < 1e-10) r--;
  const taps = 2 * r + 1;
  const k = full.slice(R - r, R + r + 1);
  const kc = k[r];
  const rowLen = w * ch;
  const paddedLen = (w + 2 * r) * ch;
  // The horizontal results live in a ring of `ring` rows rather than a whole [h, w, ch] float64
  // image: output row y reads source rows y−r … y+r (reflected, so never outside that span), so
  // computing each source row just before its first use keeps the working set ~0.1 MB instead
  // of ~1.2 MB at 224 px. With h <= taps the ring simply holds every row.
  const ring = Math.min(h, taps);
  const scratch = scratchF64(ring * rowLen + paddedLen + rowLen);
  const tmp = scratch.subarray(0, ring * rowLen);
  const padded = scratch.subarray(ring * rowLen, ring * rowLen + paddedLen);
  const acc = scratch.subarray(ring * rowLen + paddedLen);

  const columns = new Int32Array(w + 2 * r); // padded column → source offset in the row
  for (let x = -r; x < w + r; x++) columns[x + r] = reflectIndex(x, w) * ch;
  const rows = new Int32Array(h + 2 * r); // padded row → ring offset of the source row it reflects to
  for (let y = -r; y < h + r; y++) rows[y + r] = (reflectIndex(y, h) % ring) * rowLen;
  const out = clampedView(data);
  let ready = 0; // source rows [0, ready) have been through the horizontal pass
  for (let y = 0; y < h; y++) {
    for (const need = Math.min(h, y + r + 1); ready < need; ready++) blurRow(data, ready * rowLen, columns, ch, k, padded, tmp, (ready % ring) * rowLen, rowLen);
    const c = rows[y + r];
    const o = y * rowLen;
    // Vertical pass, two tap pairs per sweep over the row: the first sweep starts from the centre
    // tap, the last one stores. The additions happen in the same order as one tap at a time.
    if (r === 0) {
      for (let i = 0; i < rowLen; i++) out[o + i] = tmp[c + i] * kc;
      continue;
    }
    const a0 = rows[y];
    const b0 = rows[y + taps - 1];
    const k0 = k[0];
    if (r === 1) {
      for (let i = 0; i < rowLen; i++) out[o + i] = tmp[c + i] * kc + (tmp[a0 + i] + tmp[b0 + i]) * k0;
      continue;
    }
    const a1 = rows[y + 1];
    const b1 = rows[y + taps - 2];
    const k1 = k[1];
    if (r === 2) {
      for (let i = 0; i < rowLen; i++) out[o + i] = tmp[c + i] * kc + (tmp[a0 + i] + tmp[b0 + i]) * k0 + (tmp[a1 + i] + tmp[b1 + i]) * k1;
      continue;
    }
    for (let i = 0; i < rowLen; i++) acc[i] = tmp[c + i] * kc + (tmp[a0 + i] + tmp[b0 + i]) * k0 + (tmp[a1 + i] + tmp[b1 + i]) * k1;
    let t = 2;
    for (; r - t > 2; t += 2) {
      const a2 = rows[y + t];
      const b2 = rows[y + taps - 1 - t];
      const a3 = rows[y + t + 1];
      const b3 = rows[y + taps - 2 - t];
      const k2 = k[t];
      const k3 = k[t + 1];
      for (let i = 0; i < rowLen; i++) acc[i] = acc[i] + (tmp[a2 + i] + tmp[b2 + i]) * k2 + (tmp[a3 + i] + tmp[b3 + i]) * k3;
    }
    const a2 = rows[y + t];
    const b2 = rows[y + taps - 1 - t];
    const k2 = k[t];
    if (r - t === 1) {
      for (let i = 0; i < rowLen; i++) out[o + i] = acc[i] + (tmp[a2 + i] + tmp[b2 + i]) * k2;
    } else {
      const a3 = rows[y + t + 1];
      const b3 = rows[y + taps - 2 - t];
      const k3 = k[t + 1];
      for (let i = 0; i < rowLen; i++) out[o + i] = acc[i] + (tmp[a2 + i] + tmp[b2 + i]) * k2 + (tmp[a3 + i] + tmp[b3 + i]) * k3;
    }
  }
}

/**
 * Horizontal blur of the row at `row` into tmp at `dst`, in float64 (torchvision does not round
 * between the two directions). A top-level function so V8 keeps its arrays in registers.
 */
function blurRow(data: Uint8Array, row: number, columns: Int32Array, ch: number, k: Float64Array, padded: Float64Array, tmp: Float64Array, dst: number, rowLen: number): void {
  const r = (k.length - 1) / 2;
  const kc = k[r];
  for (let x = 0, to = 0; x < columns.length; x++) {
    const from = row + columns[x];
    for (let c = 0; c < ch; c++) padded[to++] = data[from + c];
  }
  const centre = r * ch;
  const last = 2 * r * ch;
  const step2 = 2 * ch;
  for (let i = 0; i < rowLen; i++) {
    // Tap pairs t and taps−1−t share a weight (the kernel is symmetric): one multiply per pair.
    let sum = padded[centre + i] * kc;
    let t = 0;
    let a = i;
    let b = i + last;
    for (; t + 1 < r; t += 2, a += step2, b -= step2) sum = sum + (padded[a] + padded[b]) * k[t] + (padded[a + ch] + padded[b - ch]) * k[t + 1];
    if (t < r) sum += (padded[a] + padded[b]) * k[t];
    tmp[dst + i] = sum;
  }
}
