// The speed-restructured pixel ops against plain, obviously-correct versions of the same
// arithmetic (one output at a time, no tables, no padding tricks): the bytes must be identical.
import { describe, expect, it } from 'vitest';
import {
  adjustBrightnessInPlace,
  adjustContrastInPlace,
  adjustHueInPlace,
  adjustSaturationInPlace,
  blendByte,
  gaussianBlurGrayInPlace,
  gaussianBlurInPlace,
  gaussianKernel1d,
  grayscaleInPlace,
  hsvToRgbPil,
  hueShiftByte,
  luma,
  meanLuma,
  reflectIndex,
  resizedCrop,
  rgbToHsvPil,
  type RgbImage,
} from '../../augment/ops.ts';
import type { ViewParams } from '../../augment/params.ts';
import { applyView } from '../../augment/transform.ts';
import { mulberry32 } from '../helpers.ts';

const rand = mulberry32(20240601); // test noise; a failure reproduces from the seed
const int = (lo: number, hi: number) => lo + Math.floor(rand() * (hi - lo + 1));
function noiseImage(height: number, width: number): RgbImage {
  // Half smooth gradient, half noise: exercises both flat and busy regions.
  const data = new Uint8Array(height * width * 3);
  for (let i = 0; i < data.length; i++) data[i] = rand() < 0.5 ? int(0, 255) : ((i * 5) / 3 + (i % 3) * 40) & 255;
  return { data, height, width };
}
function firstDifference(a: Uint8Array, b: Uint8Array): string | null {
  if (a.length !== b.length) return `lengths ${a.length} and ${b.length}`;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return `byte ${i}: ${a[i]} vs ${b[i]}`;
  return null;
}

/** Pillow's ImagingResample (bilinear, 8 bpc) written out one output pixel at a time. */
function plainResizedCrop(src: RgbImage, crop: { top: number; left: number; height: number; width: number }, outH: number, outW: number): Uint8Array {
  const coeffs = (inSize: number, outSize: number) => {
    const scale = inSize / outSize;
    const fs = Math.max(scale, 1);
    return Array.from({ length: outSize }, (_, xx) => {
      const center = (xx + 0.5) * scale;
      const xmin = Math.max(0, Math.trunc(center - fs + 0.5));
      const xmax = Math.min(inSize, Math.trunc(center + fs + 0.5));
      const w = Array.from({ length: xmax - xmin }, (_, x) => Math.max(0, 1 - Math.abs((x + xmin - center + 0.5) / fs)));
      const ww = w.reduce((a, b) => a + b, 0);
      return { xmin, k: w.map((v) => Math.trunc(0.5 + (ww !== 0 ? v / ww : v) * (1 << 22))) };
    });
  };
  const clip = (ss: number) => Math.min(255, Math.max(0, ss >> 22));
  // Horizontal (or a copy), uint8 in between, then vertical (or a copy), as Pillow.
  const cw = crop.width;
  const ch = crop.height;
  const mid = new Uint8Array(ch * outW * 3);
  const hc = cw !== outW ? coeffs(cw, outW) : null;
  for (let y = 0; y < ch; y++) {
    for (let xx = 0; xx < outW; xx++) {
      for (let c = 0; c < 3; c++) {
        const at = (x: number) => src.data[((crop.top + y) * src.width + crop.left + x) * 3 + c];
        mid[(y * outW + xx) * 3 + c] = hc ? clip(hc[xx].k.reduce((ss, k, t) => ss + at(hc[xx].xmin + t) * k, 1 << 21)) : at(xx);
      }
    }
  }
  if (ch === outH) return mid;
  const vc = coeffs(ch, outH);
  const out = new Uint8Array(outH * outW * 3);
  for (let yy = 0; yy < outH; yy++) {
    for (let i = 0; i < outW * 3; i++) out[yy * outW * 3 + i] = clip(vc[yy].k.reduce((ss, k, t) => ss + mid[(vc[yy].xmin + t) * outW * 3 + i] * k, 1 << 21));
  }
  return out;
}

/**
 * The blur's float64 arithmetic one output at a time: per direction centre·k_r, then
 * + (left_t + right_t)·k_t for t = 0…r−1 over reflected neighbours (taps under 1e-10 dropped),
 * then round half to even and clip.
 */
function plainBlur(img: RgbImage, kernelSize: number, sigma: number): Uint8Array {
  const { data, height: h, width: w } = img;
  const full = gaussianKernel1d(kernelSize, sigma);
  const R = (kernelSize - 1) / 2;
  let r = R;
  while (r > 0 && full[R - r] < 1e-10) r--;
  const k = full.slice(R - r, R + r + 1);
  const along = (get: (j: number) => number, at: number, n: number) => {
    let sum = get(at) * k[r];
    for (let t = 0; t < r; t++) sum += (get(reflectIndex(at - r + t, n)) + get(reflectIndex(at + r - t, n))) * k[t];
    return sum;
  };
  const tmp = new Float64Array(h * w * 3);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) for (let c = 0; c < 3; c++) tmp[(y * w + x) * 3 + c] = along((j) => data[(y * w + j) * 3 + c], x, w);
  const out = new Uint8Array(h * w * 3);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      for (let c = 0; c < 3; c++) {
        const v = along((j) => tmp[(j * w + x) * 3 + c], y, h);
        let q = Math.round(v);
        if (q - v === 0.5 && q % 2 !== 0) q -= 1;
        out[(y * w + x) * 3 + c] = Math.min(255, Math.max(0, q));
      }
    }
  }
  return out;
}

describe('resizedCrop equals the one-pixel-at-a-time Pillow resample', () => {
  it('on random crops, shrinking (up to 9 taps) and enlarging, one or both directions', () => {
    const src = noiseImage(61, 83);
    const cases: Array<[{ top: number; left: number; height: number; width: number }, number, number]> = [
      [{ top: 0, left: 0, height: 61, width: 83 }, 17, 9], // 3.6× / 9.2× shrink: wide windows, the generic loops
      [{ top: 2, left: 9, height: 44, width: 44 }, 20, 20], // 2.2× shrink: 5-tap windows
      [{ top: 2, left: 9, height: 36, width: 28 }, 20, 20], // 1.8× / 1.4× shrink: 4 and 3 taps
      [{ top: 3, left: 5, height: 20, width: 40 }, 20, 31], // vertical unchanged
      [{ top: 7, left: 2, height: 44, width: 29 }, 13, 29], // horizontal unchanged
      [{ top: 1, left: 1, height: 1, width: 1 }, 5, 4], // one pixel enlarged
      [{ top: 50, left: 70, height: 11, width: 13 }, 11, 13], // identity
    ];
    for (let i = 0; i < 40; i++) {
      const height = int(1, 61);
      const width = int(1, 83);
      cases.push([{ top: int(0, 61 - height), left: int(0, 83 - width), height, width }, int(1, 70), int(1, 70)]);
    }
    for (const [crop, outH, outW] of cases) {
      const diff = firstDifference(resizedCrop(src, crop, outH, outW), plainResizedCrop(src, crop, outH, outW));
      expect(diff, `${JSON.stringify(crop)} → ${outH}x${outW}`).toBeNull();
    }
  });
});

describe('gaussianBlurInPlace equals the one-output-at-a-time float64 blur', () => {
  it.each([
    [3, 1, 1, 0.8], // a single pixel reflects onto itself
    [1, 9, 5, 1.5], // one row: the kernel is wider than the image in one direction
    [7, 5, 23, 2], // the image is smaller than the kernel in both directions
    [12, 17, 5, 0.1], // σ so small that only the centre tap remains
    [30, 26, 9, 1.3],
    [40, 33, 23, 2], // all 23 taps
    [40, 33, 23, 0.6],
  ])('%ix%i image, kernel %i, σ %f', (h, w, kernel, sigma) => {
    const img = noiseImage(h, w);
    const expected = plainBlur(img, kernel, sigma);
    gaussianBlurInPlace(img, kernel, sigma);
    expect(firstDifference(img.data, expected)).toBeNull();
  });

  it('blurs a grayscale image to the same bytes through the one-plane path', () => {
    const img = noiseImage(29, 37);
    grayscaleInPlace(img);
    const before = img.data.slice();
    const viaRgb = { ...img, data: img.data.slice() };
    gaussianBlurInPlace(viaRgb, 5, 1.1);
    gaussianBlurGrayInPlace(img, 5, 1.1);
    expect(firstDifference(img.data, viaRgb.data)).toBeNull();
    expect(firstDifference(img.data, before)).not.toBeNull(); // it did blur
  });

  it('applyView takes the one-plane path for grayscale views without changing them', () => {
    const src = noiseImage(48, 40);
    const params: ViewParams = { crop: { top: 4, left: 3, height: 40, width: 30 }, flip: true, jitter: null, grayscale: true, blur: { kernelSize: 7, sigma: 1.7 } };
    const expected = resizedCrop(src, params.crop, 36, 36);
    const img = { data: expected, height: 36, width: 36 };
    // The plain sequence, RGB blur included.
    for (let y = 0; y < 36; y++) for (let x = 0; x < 18; x++) for (let c = 0; c < 3; c++) {
      const a = (y * 36 + x) * 3 + c;
      const b = (y * 36 + 35 - x) * 3 + c;
      [expected[a], expected[b]] = [expected[b], expected[a]];
    }
    grayscaleInPlace(img);
    gaussianBlurInPlace(img, 7, 1.7);
    expect(firstDifference(applyView(src, params, 36), expected)).toBeNull();
  });
});

describe('colour ops equal their per-pixel definitions', () => {
  it('brightness and contrast map every byte through blendByte, also in unaligned views of odd length', () => {
    const buffer = noiseImage(1, 700).data;
    for (const [offset, pixels] of [[0, 700], [1, 333], [2, 5], [3, 1], [5, 98]]) {
      for (const factor of [0.3, 1.45]) {
        const img = { data: buffer.slice().subarray(offset, offset + pixels * 3), height: 1, width: pixels };
        const original = img.data.slice();
        adjustBrightnessInPlace(img, factor);
        expect(firstDifference(img.data, original.map((v) => blendByte(0, v, factor))), `brightness at ${offset}`).toBeNull();
        const mean = meanLuma({ ...img, data: original });
        img.data.set(original);
        adjustContrastInPlace(img, factor);
        expect(firstDifference(img.data, original.map((v) => blendByte(mean, v, factor))), `contrast at ${offset}`).toBeNull();
      }
    }
  });

  it('adjustSaturationInPlace is blendByte(luma, channel, factor) for every channel', () => {
    const img = noiseImage(64, 64);
    for (const factor of [0, 0.2, 0.7, 1.0001, 1.4, 1.8, 2.5]) {
      const out = { ...img, data: img.data.slice() };
      adjustSaturationInPlace(out, factor);
      const d = img.data;
      const expected = new Uint8Array(d.length);
      for (let p = 0; p < d.length; p += 3) {
        const l = luma(d[p], d[p + 1], d[p + 2]);
        for (let c = 0; c < 3; c++) expected[p + c] = blendByte(l, d[p + c], factor);
      }
      expect(firstDifference(out.data, expected), `factor ${factor}`).toBeNull();
    }
  });

  it('adjustHueInPlace is the rgbToHsvPil / hsvToRgbPil round trip on random colours and every shift byte', () => {
    const n = 20_000;
    const img = noiseImage(1, n);
    for (let i = 0; i < 60; i++) {
      // Ties between channels pick the formula's case: make plenty of them.
      const p = int(0, n - 1) * 3;
      img.data[p + int(0, 2)] = img.data[p + int(0, 2)];
    }
    for (const hue of [0, 0.5, -0.5, ...Array.from({ length: 12 }, () => rand() - 0.5)]) {
      const out = { ...img, data: img.data.slice() };
      adjustHueInPlace(out, hue);
      const shift = hueShiftByte(hue);
      const expected = new Uint8Array(img.data.length);
      for (let p = 0; p < expected.length; p += 3) {
        const [h, s, v] = rgbToHsvPil(img.data[p], img.data[p + 1], img.data[p + 2]);
        expected.set(hsvToRgbPil((h + shift) & 255, s, v), p);
      }
      expect(firstDifference(out.data, expected), `hue ${hue}`).toBeNull();
    }
  });
});
