// Pixel ops on raw HWC uint8 RGB images in typed arrays, reproducing what torchvision does to a
// PIL image bit for bit (Pillow's fixed-point resampling, float32 blends and HSV conversions).
//
// Typed-array loops rather than sharp (scripts/bench-augment.ts --ops): at 32 px sharp's ~1 ms
// per-call overhead makes it 10–200× slower for every op; at 224 px sharp is faster only for the
// resize (~2.5×) and the blur (~4×), but libvips cannot reproduce Pillow's/torchvision's
// arithmetic there (different resize kernels and rounding, blur kernel sized from σ rather than
// 10 % of the side, σ >= 0.3 only), so those would not stay exact. Batching several images into
// one sharp call does not help: every view has its own crop and colour parameters.

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
  ksize: number;
  bounds: Int32Array; // [outSize * 2]: xmin, count
  kk: Int32Array; // [outSize * ksize], fixed point
}

// Crop sizes repeat a lot (at 32 px there are only 32 possible crop sides), so cache the tables.
const coeffCache = new Map<number, Coeffs>();

function precomputeCoeffs(inSize: number, outSize: number): Coeffs {
  const cacheKey = inSize * 65536 + outSize;
  const cached = coeffCache.get(cacheKey);
  if (cached) return cached;
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1);
  const support = 1.0 * filterscale; // bilinear support 1
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Int32Array(outSize * ksize);
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
      kk[xx * ksize + x] = Math.trunc(0.5 + k * (1 << PRECISION_BITS));
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  const coeffs = { ksize, bounds, kk };
  if (coeffCache.size > 4096) coeffCache.clear();
  coeffCache.set(cacheKey, coeffs);
  return coeffs;
}

function clip8(ss: number): number {
  const v = ss >> PRECISION_BITS;
  return v < 0 ? 0 : v > 255 ? 255 : v;
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
  const s = src.data;
  const sw = src.width;
  const needH = cw !== outW;
  const needV = ch !== outH;
  const vert = needV ? precomputeCoeffs(ch, outH) : null;
  // Rows of the crop that the vertical pass reads (Pillow's ybox_first..ybox_last).
  const yFirst = vert ? vert.bounds[0] : 0;
  const yLast = vert ? vert.bounds[(outH - 1) * 2] + vert.bounds[(outH - 1) * 2 + 1] : ch;
  const rows = yLast - yFirst;
  let tmp: Uint8Array; // [rows, outW, 3], the crop rows yFirst..yLast after the horizontal pass
  if (needH) {
    const { ksize, bounds, kk } = precomputeCoeffs(cw, outW);
    tmp = needV ? new Uint8Array(rows * outW * 3) : out;
    const half = 1 << (PRECISION_BITS - 1);
    for (let y = 0; y < rows; y++) {
      const rowBase = ((top + yFirst + y) * sw + left) * 3;
      let o = y * outW * 3;
      for (let xx = 0; xx < outW; xx++) {
        const xmin = bounds[xx * 2];
        const n = bounds[xx * 2 + 1];
        const kb = xx * ksize;
        let s0 = half;
        let s1 = half;
        let s2 = half;
        let p = rowBase + xmin * 3;
        for (let x = 0; x < n; x++, p += 3) {
          const k = kk[kb + x];
          s0 += s[p] * k;
          s1 += s[p + 1] * k;
          s2 += s[p + 2] * k;
        }
        tmp[o++] = clip8(s0);
        tmp[o++] = clip8(s1);
        tmp[o++] = clip8(s2);
      }
    }
    if (!needV) return out;
  } else {
    // No horizontal change: the vertical pass reads the crop directly (copied so it is contiguous).
    tmp = new Uint8Array(rows * outW * 3);
    for (let y = 0; y < rows; y++) {
      const from = ((top + yFirst + y) * sw + left) * 3;
      tmp.set(s.subarray(from, from + cw * 3), y * cw * 3);
    }
    if (!needV) {
      out.set(tmp);
      return out;
    }
  }
  const { ksize, bounds, kk } = vert!;
  const rowLen = outW * 3;
  const half = 1 << (PRECISION_BITS - 1);
  // Tap-outer order: each tap streams a whole row, which V8 compiles to a tight loop.
  const acc = new Int32Array(rowLen);
  for (let yy = 0; yy < outH; yy++) {
    const ymin = bounds[yy * 2] - yFirst;
    const n = bounds[yy * 2 + 1];
    const kb = yy * ksize;
    acc.fill(half);
    for (let y = 0; y < n; y++) {
      const k = kk[kb + y];
      const base = (ymin + y) * rowLen;
      for (let i = 0; i < rowLen; i++) acc[i] += tmp[base + i] * k;
    }
    const o = yy * rowLen;
    for (let i = 0; i < rowLen; i++) out[o + i] = clip8(acc[i]);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Flip, grayscale
// ---------------------------------------------------------------------------------------------

/** Mirrors the image left-right in place (RandomHorizontalFlip). */
export function hflipInPlace(img: RgbImage): void {
  const { data, height, width } = img;
  for (let y = 0; y < height; y++) {
    let a = y * width * 3;
    let b = a + (width - 1) * 3;
    for (; a < b; a += 3, b -= 3) {
      for (let c = 0; c < 3; c++) {
        const t = data[a + c];
        data[a + c] = data[b + c];
        data[b + c] = t;
      }
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

function applyLut(d: Uint8Array, lut: Uint8Array): void {
  for (let i = 0; i < d.length; i++) d[i] = lut[d[i]];
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
  for (let p = 0; p < d.length; p += 3) {
    const l = luma(d[p], d[p + 1], d[p + 2]);
    d[p] = blendByte(l, d[p], a);
    d[p + 1] = blendByte(l, d[p + 1], a);
    d[p + 2] = blendByte(l, d[p + 2], a);
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
 * arithmetic as rgbToHsvPil / hsvToRgbPil, inlined because this is the costliest colour op
 * (the tests pin the two against each other on every colour of a dense grid).
 */
export function adjustHueInPlace(img: RgbImage, hue: number): void {
  if (!(hue >= -0.5 && hue <= 0.5)) throw new Error(`hue factor must be in [-0.5, 0.5], got ${hue}`);
  const shift = hueShiftByte(hue);
  const d = img.data;
  const div = float32Quotients();
  for (let p = 0; p < d.length; p += 3) {
    const r = d[p];
    const g = d[p + 1];
    const b = d[p + 2];
    const maxc = r > g ? (r > b ? r : b) : g > b ? g : b;
    const minc = r < g ? (r < b ? r : b) : g < b ? g : b;
    if (minc === maxc) continue; // grey: s = 0, so H is irrelevant and the round trip is exact
    const cr = maxc - minc;
    const s = div[cr * 256 + maxc];
    let hf: number;
    if (r === maxc) hf = fround(div[(maxc - b) * 256 + cr] - div[(maxc - g) * 256 + cr]);
    else if (g === maxc) hf = fround(2.0 + div[(maxc - r) * 256 + cr] - div[(maxc - b) * 256 + cr]);
    else hf = fround(4.0 + div[(maxc - g) * 256 + cr] - div[(maxc - r) * 256 + cr]);
    // fmod(y, 1) for y = h/6 + 1 in (0, 2): y − floor(y) is exact there and avoids V8's slow %.
    const y = hf / 6.0 + 1.0;
    hf = fround(y - Math.floor(y));
    let hb = Math.trunc(hf * 255.0);
    hb = hb > 255 ? 255 : hb;
    let sb = Math.trunc(s * 255.0);
    sb = sb > 255 ? 255 : sb;
    const v = maxc;
    hb = (hb + shift) & 255;
    if (sb === 0) {
      d[p] = v;
      d[p + 1] = v;
      d[p + 2] = v;
      continue;
    }
    const x6 = (hb * 6.0) / 255.0;
    const i = Math.floor(x6);
    const f = fround(x6 - i);
    const fs = fround(sb / 255.0);
    const pv = cRoundByte(v * (1.0 - fs));
    const qv = cRoundByte(v * (1.0 - fround(fs * f)));
    const tv = cRoundByte(v * (1.0 - fs * (1.0 - f)));
    let o0: number, o1: number, o2: number;
    switch (i % 6) {
      case 0: o0 = v; o1 = tv; o2 = pv; break;
      case 1: o0 = qv; o1 = v; o2 = pv; break;
      case 2: o0 = pv; o1 = v; o2 = tv; break;
      case 3: o0 = pv; o1 = qv; o2 = v; break;
      case 4: o0 = tv; o1 = pv; o2 = v; break;
      default: o0 = v; o1 = pv; o2 = qv; break;
    }
    d[p] = o0;
    d[p + 1] = o1;
    d[p + 2] = o2;
  }
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

/** C round() then CLIP8, for the non-negative products of hsv2rgb. */
function cRoundByte(x: number): number {
  const r = Math.floor(x + 0.5);
  return r < 0 ? 0 : r > 255 ? 255 : r;
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

function roundHalfEvenByte(x: number): number {
  let r = Math.round(x);
  if (r - x === 0.5 && r % 2 !== 0) r -= 1; // Math.round sends .5 up; torch.round sends it to even
  return r < 0 ? 0 : r > 255 ? 255 : r;
}

/**
 * GaussianBlur(kernelSize, σ) in place. Taps whose weight is below 1e-10 are skipped (they add
 * at most 255·23·1e-10 ≈ 6e-7 per pixel, far below torchvision's own float32 error); that keeps
 * only ±6.8σ and roughly halves the work for the typical σ ≈ 1.
 */
export function gaussianBlurInPlace(img: RgbImage, kernelSize: number, sigma: number): void {
  if (kernelSize % 2 !== 1 || !(sigma > 0)) throw new Error(`blur needs an odd kernel and σ > 0, got ${kernelSize}, ${sigma}`);
  const { data, height: h, width: w } = img;
  const full = gaussianKernel1d(kernelSize, sigma);
  const R = (kernelSize - 1) / 2;
  let r = R;
  while (r > 0 && full[R - r] < 1e-10) r--;
  const taps = 2 * r + 1;
  const k = full.subarray(R - r, R + r + 1);
  const rowLen = w * 3;
  // Horizontal pass into float64 (torchvision does not round between the two directions).
  // Each row is first reflect-padded, then every tap streams over the whole row.
  const tmp = new Float64Array(h * rowLen);
  const padded = new Float64Array((w + 2 * r) * 3);
  for (let y = 0; y < h; y++) {
    const row = y * rowLen;
    for (let x = -r; x < w + r; x++) {
      const from = row + reflectIndex(x, w) * 3;
      const to = (x + r) * 3;
      padded[to] = data[from];
      padded[to + 1] = data[from + 1];
      padded[to + 2] = data[from + 2];
    }
    // The kernel is symmetric: pair tap t with tap taps−1−t to halve the multiplications.
    const kc = k[r];
    const centre = r * 3;
    for (let i = 0; i < rowLen; i++) tmp[row + i] = padded[centre + i] * kc;
    for (let t = 0; t < r; t++) {
      const kt = k[t];
      const a = t * 3;
      const b = (taps - 1 - t) * 3;
      for (let i = 0; i < rowLen; i++) tmp[row + i] += (padded[a + i] + padded[b + i]) * kt;
    }
  }
  const rowIndex = new Int32Array(h + 2 * r);
  for (let y = -r; y < h + r; y++) rowIndex[y + r] = reflectIndex(y, h) * rowLen;
  const acc = new Float64Array(rowLen);
  for (let y = 0; y < h; y++) {
    const centre = rowIndex[y + r];
    const kc = k[r];
    for (let i = 0; i < rowLen; i++) acc[i] = tmp[centre + i] * kc;
    for (let t = 0; t < r; t++) {
      const a = rowIndex[y + t];
      const b = rowIndex[y + taps - 1 - t];
      const kt = k[t];
      for (let i = 0; i < rowLen; i++) acc[i] += (tmp[a + i] + tmp[b + i]) * kt;
    }
    const o = y * rowLen;
    for (let i = 0; i < rowLen; i++) data[o + i] = roundHalfEvenByte(acc[i]);
  }
}
