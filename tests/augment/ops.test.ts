// Pixel ops pinned to hand-computed values (Pillow's resampling, blends, HSV and luma arithmetic).
import { describe, expect, it } from 'vitest';
import {
  adjustBrightnessInPlace,
  adjustContrastInPlace,
  adjustHueInPlace,
  adjustSaturationInPlace,
  blendByte,
  gaussianBlurInPlace,
  gaussianKernel1d,
  grayscaleInPlace,
  hflipInPlace,
  hsvToRgbPil,
  hueShiftByte,
  luma,
  meanLuma,
  reflectIndex,
  resizedCrop,
  rgbToHsvPil,
  type RgbImage,
} from '../../augment/ops.ts';

/** An RGB image whose three channels all hold `grey[i]` (keeps expected values one number per pixel). */
function greyImage(grey: number[], height: number, width: number): RgbImage {
  return { data: Uint8Array.from(grey.flatMap((v) => [v, v, v])), height, width };
}
function rgb(pixels: number[][], height: number, width: number): RgbImage {
  return { data: Uint8Array.from(pixels.flat()), height, width };
}
function channel0(data: Uint8Array): number[] {
  return Array.from(data.filter((_, i) => i % 3 === 0));
}

describe('resizedCrop (Pillow bilinear with antialias)', () => {
  it('is the identity when the crop already has the output size', () => {
    const src = greyImage([1, 2, 3, 4, 5, 6, 7, 8, 9], 3, 3);
    expect(Array.from(resizedCrop(src, { top: 0, left: 0, height: 3, width: 3 }, 3, 3))).toEqual(Array.from(src.data));
  });

  it('takes the crop box from the right place', () => {
    const src = greyImage([...Array(16).keys()], 4, 4); // value = 4·row + col
    const out = resizedCrop(src, { top: 1, left: 2, height: 2, width: 2 }, 2, 2);
    expect(channel0(out)).toEqual([4 * 1 + 2, 4 * 1 + 3, 4 * 2 + 2, 4 * 2 + 3]);
  });

  it('shrinks with a triangle filter widened by the scale (antialias): 4 → 2', () => {
    // scale 2 → support 2. Output 0: centre 1, taps x = 0..2 at distances 0.5, 0.5, 1.5 (÷2) →
    // weights 0.75, 0.75, 0.25 → 3/7, 3/7, 1/7. Output 1: centre 3, taps 1..3 → 1/7, 3/7, 3/7.
    const out = resizedCrop(greyImage([10, 20, 30, 40], 1, 4), { top: 0, left: 0, height: 1, width: 4 }, 1, 2);
    expect(channel0(out)).toEqual([Math.round((3 * 10 + 3 * 20 + 1 * 30) / 7), Math.round((1 * 20 + 3 * 30 + 3 * 40) / 7)]);
  });

  it('enlarges with plain linear interpolation at pixel centres: 2 → 4', () => {
    // Output centres 0.25, 0.75, 1.25, 1.75 in input pixels; edges clamp to the end pixel.
    const out = resizedCrop(greyImage([0, 200], 1, 2), { top: 0, left: 0, height: 1, width: 2 }, 1, 4);
    expect(channel0(out)).toEqual([0, 0.75 * 0 + 0.25 * 200, 0.25 * 0 + 0.75 * 200, 200]);
  });

  it('rounds after the horizontal pass, as Pillow does (two passes, uint8 between them)', () => {
    // Rows [0, 1] and [0, 0]: horizontal averages 0.5 → 1 (half up) and 0; vertical (1 + 0)/2 → 1.
    // A one-pass 2-D filter would give round(0.25) = 0.
    const out = resizedCrop(greyImage([0, 1, 0, 0], 2, 2), { top: 0, left: 0, height: 2, width: 2 }, 1, 1);
    expect(channel0(out)).toEqual([1]);
  });

  it('stays within 1 of an exact float computation on random crops', () => {
    const h = 17;
    const w = 23;
    const src = { data: Uint8Array.from({ length: h * w * 3 }, (_, i) => (i * 7919) % 256), height: h, width: w };
    const weights = (inSize: number, outSize: number, o: number) => {
      const scale = inSize / outSize;
      const fs = Math.max(1, scale);
      const c = (o + 0.5) * scale;
      const ws = Array.from({ length: inSize }, (_, x) => Math.max(0, 1 - Math.abs((x + 0.5 - c) / fs)));
      const sum = ws.reduce((a, b) => a + b, 0);
      return ws.map((v) => v / sum);
    };
    for (const [crop, S] of [
      [{ top: 2, left: 3, height: 11, width: 15 }, 8],
      [{ top: 0, left: 0, height: 17, width: 23 }, 30],
      [{ top: 5, left: 1, height: 3, width: 7 }, 5],
    ] as const) {
      const out = resizedCrop(src, crop, S, S);
      for (let oy = 0; oy < S; oy++) {
        const wy = weights(crop.height, S, oy);
        for (let ox = 0; ox < S; ox++) {
          const wx = weights(crop.width, S, ox);
          for (let c = 0; c < 3; c++) {
            let v = 0;
            for (let y = 0; y < crop.height; y++) {
              for (let x = 0; x < crop.width; x++) v += wy[y] * wx[x] * src.data[((crop.top + y) * w + crop.left + x) * 3 + c];
            }
            expect(Math.abs(out[(oy * S + ox) * 3 + c] - v)).toBeLessThanOrEqual(1);
          }
        }
      }
    }
  });

  it('rejects a crop outside the image', () => {
    expect(() => resizedCrop(greyImage([0, 0, 0, 0], 2, 2), { top: 1, left: 0, height: 2, width: 2 }, 2, 2)).toThrow(/outside the 2x2 image/);
  });
});

describe('flip and grayscale', () => {
  it('mirrors each row', () => {
    const img = rgb([[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]], 2, 2);
    hflipInPlace(img);
    expect(Array.from(img.data)).toEqual([4, 5, 6, 1, 2, 3, 10, 11, 12, 7, 8, 9]);
  });

  it("uses Pillow's rounded 16.16 fixed-point ITU-R 601-2 luma", () => {
    expect(luma(255, 0, 0)).toBe(Math.floor((255 * 19595 + 32768) / 65536)); // 76 (255·0.299 = 76.2)
    expect(luma(255, 255, 255)).toBe(255);
    expect(luma(10, 200, 30)).toBe(Math.floor((10 * 19595 + 200 * 38470 + 30 * 7471 + 32768) / 65536));
    expect(luma(10, 200, 30)).toBe(Math.round(10 * 0.299 + 200 * 0.587 + 30 * 0.114)); // 123.81 → 124
  });

  it('writes L into all three channels', () => {
    const img = rgb([[200, 100, 0]], 1, 1);
    grayscaleInPlace(img);
    const l = Math.floor((200 * 19595 + 100 * 38470 + 32768) / 65536);
    expect(Array.from(img.data)).toEqual([l, l, l]);
  });
});

describe('colour jitter blends (Pillow ImageEnhance, float32, truncating)', () => {
  it('computes in float32 like Pillow, not in double', () => {
    // float32(0.7)·90 rounds to exactly 63 in float32; in double 0.7·90 = 62.99999999999999 → 62.
    expect(blendByte(0, 90, 0.7)).toBe(63);
    expect(Math.trunc(0.7 * 90)).toBe(62);
  });

  it('brightness scales towards black, truncates and clips', () => {
    const img = greyImage([100, 101, 200], 1, 3);
    adjustBrightnessInPlace(img, 1.5);
    expect(channel0(img.data)).toEqual([150, Math.trunc(151.5), 255]);
    const dim = greyImage([101], 1, 1);
    adjustBrightnessInPlace(dim, 0.5);
    expect(channel0(dim.data)).toEqual([Math.trunc(50.5)]);
  });

  it('contrast blends with the rounded mean of the grayscale image', () => {
    // L mean of 0 and 200 is 100.
    const img = greyImage([0, 200], 1, 2);
    expect(meanLuma(img)).toBe(100);
    const low = greyImage([0, 200], 1, 2);
    adjustContrastInPlace(low, 0.5);
    expect(channel0(low.data)).toEqual([100 + 0.5 * (0 - 100), 100 + 0.5 * (200 - 100)]);
    adjustContrastInPlace(img, 2);
    expect(channel0(img.data)).toEqual([0, 255]); // 100 ± 200, clipped
    // mean 0.5 → int(0.5 + 0.5) = 1
    expect(meanLuma(greyImage([0, 1], 1, 2))).toBe(1);
  });

  it('saturation blends each channel with the pixel luma', () => {
    const l = luma(200, 100, 0);
    const zero = rgb([[200, 100, 0]], 1, 1);
    adjustSaturationInPlace(zero, 0);
    expect(Array.from(zero.data)).toEqual([l, l, l]);
    const twice = rgb([[200, 100, 0]], 1, 1);
    adjustSaturationInPlace(twice, 2);
    expect(Array.from(twice.data)).toEqual([255, Math.trunc(l + 2 * (100 - l)), 0]);
    const half = rgb([[200, 100, 0]], 1, 1);
    adjustSaturationInPlace(half, 0.5);
    expect(Array.from(half.data)).toEqual([Math.trunc(l + 0.5 * (200 - l)), Math.trunc(l + 0.5 * (100 - l)), Math.trunc(l + 0.5 * (0 - l))]);
  });
});

describe('hue (Pillow 8-bit HSV round trip)', () => {
  it('converts like Pillow rgb2hsv / hsv2rgb', () => {
    // (255,128,0): s = 1, h = (1 − 127/255)/6 = 0.0837 → 21
    expect(Array.from(rgbToHsvPil(255, 128, 0))).toEqual([Math.trunc(((1 - 127 / 255) / 6) * 255), 255, 255]);
    // back: i = 0, f = 21·6/255, t = round(255·f) = 126
    expect(Array.from(hsvToRgbPil(21, 255, 255))).toEqual([255, Math.round(255 * ((21 * 6) / 255)), 0]);
  });

  it('shifts H by trunc(hue·255) mod 256', () => {
    expect(hueShiftByte(1 / 3)).toBe(85);
    expect(hueShiftByte(-1 / 3)).toBe(256 - 85);
    expect(hueShiftByte(0.001)).toBe(0);
  });

  it('rotates pure red to green by +1/3 and to (nearly) blue by −1/3', () => {
    const img = rgb([[255, 0, 0], [255, 128, 0]], 1, 2);
    adjustHueInPlace(img, 1 / 3);
    expect(Array.from(img.data.subarray(0, 3))).toEqual([0, 255, 0]); // H 0 + 85 → i = 2, f = 0
    const back = rgb([[255, 0, 0]], 1, 1);
    adjustHueInPlace(back, -1 / 3);
    // H = 171 → i = 4, f = 171·6/255 − 4, r = round(255·f) = 6: the quantised HSV lands off pure blue.
    expect(Array.from(back.data)).toEqual([Math.round(255 * ((171 * 6) / 255 - 4)), 0, 255]);
  });

  it('is lossy even with a zero shift, as torchvision on PIL is', () => {
    const img = rgb([[255, 128, 0], [7, 7, 7]], 1, 2);
    adjustHueInPlace(img, 0);
    expect(Array.from(img.data)).toEqual([255, 126, 0, 7, 7, 7]);
  });

  it('the inlined loop agrees with the per-pixel Pillow functions on a dense colour grid', () => {
    const values: number[] = [];
    for (let v = 0; v < 256; v += 5) values.push(v);
    values.push(254, 255);
    const pixels: number[][] = [];
    for (const r of values) for (const g of values) for (const b of values) pixels.push([r, g, b]);
    for (const hue of [0, 0.1, -0.37, 0.5]) {
      const img = rgb(pixels, 1, pixels.length);
      adjustHueInPlace(img, hue);
      const shift = hueShiftByte(hue);
      for (let i = 0; i < pixels.length; i++) {
        const [h, s, v] = rgbToHsvPil(pixels[i][0], pixels[i][1], pixels[i][2]);
        const expected = Array.from(hsvToRgbPil((h + shift) & 255, s, v));
        if (img.data[i * 3] !== expected[0] || img.data[i * 3 + 1] !== expected[1] || img.data[i * 3 + 2] !== expected[2]) {
          expect.fail(`hue ${hue} pixel ${pixels[i]}: got ${Array.from(img.data.subarray(i * 3, i * 3 + 3))}, expected ${expected}`);
        }
      }
    }
  });
});

describe('gaussian blur (torchvision kernel, reflect padding)', () => {
  const e = Math.exp(-0.5);
  const w0 = e / (1 + 2 * e);
  const w1 = 1 / (1 + 2 * e);

  it('builds the normalised kernel exp(−x²/2σ²)', () => {
    const k = gaussianKernel1d(3, 1);
    expect(k[0]).toBeCloseTo(w0, 12);
    expect(k[1]).toBeCloseTo(w1, 12);
    expect(k[2]).toBeCloseTo(w0, 12);
  });

  it('spreads an impulse as the outer product of the kernel', () => {
    const grey = Array(25).fill(0);
    grey[12] = 255;
    const img = greyImage(grey, 5, 5);
    gaussianBlurInPlace(img, 3, 1);
    const out = channel0(img.data);
    expect(out[12]).toBe(Math.round(255 * w1 * w1)); // 52.07
    expect(out[7]).toBe(Math.round(255 * w0 * w1)); // 31.58
    expect(out[6]).toBe(Math.round(255 * w0 * w0)); // 19.15
    expect(out[0]).toBe(0);
  });

  it('reflects at the border without repeating the edge pixel', () => {
    expect([-2, -1, 0, 4, 5, 6].map((i) => reflectIndex(i, 5))).toEqual([2, 1, 0, 4, 3, 2]);
    const grey = Array(25).fill(0);
    grey[0] = 255; // corner impulse: its mirror images lie at −1 → 1, i.e. on zero pixels
    const img = greyImage(grey, 5, 5);
    gaussianBlurInPlace(img, 3, 1);
    const out = channel0(img.data);
    expect(out[0]).toBe(Math.round(255 * w1 * w1));
    // Pixel (0,1) gets the impulse from its left neighbour and, mirrored, nothing else.
    expect(out[1]).toBe(Math.round(255 * w0 * w1));
  });

  it('keeps a flat image flat and handles σ below sharp’s 0.3 floor', () => {
    const flat = greyImage(Array(49).fill(77), 7, 7);
    gaussianBlurInPlace(flat, 5, 1.7);
    expect(channel0(flat.data)).toEqual(Array(49).fill(77));
    // σ = 0.1: the off-centre weights are exp(−50) ≈ 2e−22, so the image is unchanged.
    const grey = Array.from({ length: 49 }, (_, i) => (i * 37) % 256);
    const img = greyImage(grey, 7, 7);
    gaussianBlurInPlace(img, 5, 0.1);
    expect(channel0(img.data)).toEqual(grey);
    // σ = 0.25 visibly blurs: centre weight 1/(1 + 2·exp(−8)).
    const imp = greyImage([0, 0, 0, 0, 255, 0, 0, 0, 0], 3, 3);
    gaussianBlurInPlace(imp, 3, 0.25);
    const c = 1 / (1 + 2 * Math.exp(-8));
    expect(channel0(imp.data)[4]).toBe(Math.round(255 * c * c)); // 254
  });
});
