// Distributions of the sampled view parameters: bounds, probabilities, torchvision's crop rules.
import { describe, expect, it } from 'vitest';
import { resolveAugmentOptions } from '../../augment/options.ts';
import { centerCropForRatio, centerSquareCrop, roundHalfEven, sampleCrop, sampleViewParams, type ViewParams } from '../../augment/params.ts';
import { ViewRandom } from '../../augment/rng.ts';

function draws(n: number, height: number, width: number, outputSize: number): ViewParams[] {
  const o = resolveAugmentOptions({ outputSize });
  return Array.from({ length: n }, (_, index) => sampleViewParams({ seed: 5, epoch: 0, index, view: 0 }, height, width, o));
}

/** |observed − p| within 4.5 binomial standard deviations. */
function expectRate(hits: number, n: number, p: number): void {
  expect(Math.abs(hits / n - p)).toBeLessThan(4.5 * Math.sqrt((p * (1 - p)) / n));
}

describe('roundHalfEven', () => {
  it('rounds like Python round()', () => {
    expect([0.5, 1.5, 2.5, 2.6, 3.49, -0.5, -1.5].map(roundHalfEven)).toEqual([0, 2, 2, 3, 3, -0, -2]);
  });
});

describe('random resized crop parameters', () => {
  const n = 20_000;
  // Square, so crops too tall and too wide to fit are rejected symmetrically.
  const H = 250;
  const W = 250;
  const params = draws(n, H, W, 224);

  it('stays inside the image, with area 8–100 % and aspect 3/4–4/3 up to rounding', () => {
    for (const { crop } of params) {
      expect(crop.top).toBeGreaterThanOrEqual(0);
      expect(crop.left).toBeGreaterThanOrEqual(0);
      expect(crop.top + crop.height).toBeLessThanOrEqual(H);
      expect(crop.left + crop.width).toBeLessThanOrEqual(W);
      // w, h are rounded from sqrt(area·r), sqrt(area/r): allow ±0.5 px on each side.
      const area = crop.width * crop.height;
      expect(area).toBeGreaterThanOrEqual((Math.sqrt(0.08 * H * W * 0.75) - 0.5) * (Math.sqrt((0.08 * H * W) / 0.75) - 0.5) - 1);
      expect(crop.width / crop.height).toBeGreaterThanOrEqual((Math.sqrt(0.08 * H * W * 0.75) - 0.5) / (Math.sqrt((0.08 * H * W) / 0.75) + 0.5));
      expect(crop.width / crop.height).toBeLessThanOrEqual((Math.sqrt(0.08 * H * W * (4 / 3)) + 0.5) / (Math.sqrt((0.08 * H * W) / (4 / 3)) - 0.5));
    }
  });

  it('samples the log aspect ratio symmetrically about 0 and the area fraction over the whole range', () => {
    const logRatios = params.map(({ crop }) => Math.log(crop.width / crop.height));
    const mean = logRatios.reduce((a, b) => a + b, 0) / n;
    expect(Math.abs(mean)).toBeLessThan(0.01);
    const fractions = params.map(({ crop }) => (crop.width * crop.height) / (H * W));
    expect(Math.min(...fractions)).toBeLessThan(0.09);
    expect(Math.max(...fractions)).toBeGreaterThan(0.97);
    // Area ~ U(0.08, 1) would have mean 0.54; large crops with a ratio ≠ 1 do not fit and are
    // redrawn, which lowers it a little.
    const meanFraction = fractions.reduce((a, b) => a + b, 0) / n;
    expect(meanFraction).toBeGreaterThan(0.45);
    expect(meanFraction).toBeLessThan(0.56);
  });

  it('falls back to torchvision’s ratio-clamped centre crop when 10 tries fail', () => {
    // A 4 × 1000 strip: every try wants h ≥ sqrt(0.08·4000·0.75) ≈ 15 > 4 rows.
    const rng = new ViewRandom({ seed: 1, epoch: 0, index: 0, view: 0 });
    expect(sampleCrop(rng, 4, 1000, [0.08, 1], [3 / 4, 4 / 3])).toEqual({ top: 0, left: Math.floor((1000 - 5) / 2), height: 4, width: roundHalfEven(4 * (4 / 3)) });
    expect(centerCropForRatio(1000, 4, [3 / 4, 4 / 3])).toEqual({ top: Math.floor((1000 - 5) / 2), left: 0, height: roundHalfEven(4 / (3 / 4)), width: 4 });
    expect(centerCropForRatio(10, 11, [3 / 4, 4 / 3])).toEqual({ top: 0, left: 0, height: 10, width: 11 });
  });

  it('centre-crops a square for eval', () => {
    expect(centerSquareCrop(256, 300, 0.875)).toEqual({ top: 16, left: 38, height: 224, width: 224 });
    const o = resolveAugmentOptions({ preset: 'eval', outputSize: 32 });
    expect(sampleViewParams({ seed: 0, epoch: 0, index: 0, view: 0 }, 32, 32, o)).toEqual({
      crop: { top: 0, left: 0, height: 32, width: 32 },
      flip: false,
      jitter: null,
      grayscale: false,
      blur: null,
    });
  });
});

describe('flip, jitter, grayscale and blur parameters', () => {
  const n = 20_000;
  const big = draws(n, 64, 64, 224);
  const cifar = draws(n, 32, 32, 32);

  it('applies each op with its probability', () => {
    expectRate(big.filter((p) => p.flip).length, n, 0.5);
    expectRate(big.filter((p) => p.jitter).length, n, 0.8);
    expectRate(big.filter((p) => p.grayscale).length, n, 0.2);
    expectRate(big.filter((p) => p.blur).length, n, 0.5);
    expect(cifar.filter((p) => p.blur).length).toBe(0);
  });

  it('keeps jitter factors in torchvision’s ranges for s = 1 and s = 0.5', () => {
    for (const [params, s] of [[big, 1], [cifar, 0.5]] as const) {
      const jitters = params.flatMap((p) => (p.jitter ? [p.jitter] : []));
      for (const key of ['brightness', 'contrast', 'saturation'] as const) {
        const values = jitters.map((j) => j[key]!);
        expect(Math.min(...values)).toBeGreaterThanOrEqual(Math.max(0, 1 - 0.8 * s));
        expect(Math.max(...values)).toBeLessThan(1 + 0.8 * s);
        expect(Math.min(...values)).toBeLessThan(Math.max(0, 1 - 0.8 * s) + 0.01);
        expect(Math.max(...values)).toBeGreaterThan(1 + 0.8 * s - 0.01);
      }
      const hues = jitters.map((j) => j.hue!);
      expect(Math.min(...hues)).toBeGreaterThanOrEqual(-0.2 * s);
      expect(Math.max(...hues)).toBeLessThan(0.2 * s);
      expect(Math.abs(hues.reduce((a, b) => a + b, 0) / hues.length)).toBeLessThan(0.005);
      // Each op comes first in about a quarter of the views.
      for (const op of ['brightness', 'contrast', 'saturation', 'hue'] as const) {
        expectRate(jitters.filter((j) => j.order[0] === op).length, jitters.length, 0.25);
      }
    }
  });

  it('draws σ ~ U(0.1, 2) with the 10 % kernel', () => {
    const blurs = big.flatMap((p) => (p.blur ? [p.blur] : []));
    const sigmas = blurs.map((b) => b.sigma);
    expect(Math.min(...sigmas)).toBeGreaterThanOrEqual(0.1);
    expect(Math.max(...sigmas)).toBeLessThan(2);
    expect(Math.abs(sigmas.reduce((a, b) => a + b, 0) / sigmas.length - 1.05)).toBeLessThan(0.02);
    expect(new Set(blurs.map((b) => b.kernelSize))).toEqual(new Set([23]));
  });

  it('gives the same parameters for the same key and new ones for another epoch or view', () => {
    const o = resolveAugmentOptions({ outputSize: 224 });
    const key = { seed: 11, epoch: 2, index: 17, view: 0 };
    expect(sampleViewParams(key, 100, 100, o)).toEqual(sampleViewParams({ ...key }, 100, 100, o));
    expect(sampleViewParams({ ...key, epoch: 3 }, 100, 100, o)).not.toEqual(sampleViewParams(key, 100, 100, o));
    expect(sampleViewParams({ ...key, view: 1 }, 100, 100, o)).not.toEqual(sampleViewParams(key, 100, 100, o));
  });
});
