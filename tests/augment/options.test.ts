// Augmentation presets, paper defaults and validation messages.
import { describe, expect, it } from 'vitest';
import { blurKernelSize, resolveAugmentOptions, viewsPerImage } from '../../augment/options.ts';

describe('resolveAugmentOptions', () => {
  it('gives the SimCLR defaults, with s = 0.5 and no blur at CIFAR size', () => {
    const o = resolveAugmentOptions({ outputSize: 32 });
    expect(o).toMatchObject({
      preset: 'simclr',
      minScale: 0.08,
      maxScale: 1,
      minRatio: 3 / 4,
      maxRatio: 4 / 3,
      flipProbability: 0.5,
      jitterProbability: 0.8,
      colorStrength: 0.5,
      grayscaleProbability: 0.2,
      blurProbability: 0,
      minBlurSigma: 0.1,
      maxBlurSigma: 2,
      output: 'uint8',
    });
    const big = resolveAugmentOptions({ outputSize: 224 });
    expect(big.colorStrength).toBe(1);
    expect(big.blurProbability).toBe(0.5);
  });

  it('keeps only crop + flip for finetune and only the centre crop for eval', () => {
    expect(resolveAugmentOptions({ preset: 'finetune', outputSize: 224 })).toMatchObject({
      flipProbability: 0.5,
      jitterProbability: 0,
      grayscaleProbability: 0,
      blurProbability: 0,
    });
    expect(resolveAugmentOptions({ preset: 'eval' })).toMatchObject({ flipProbability: 0, jitterProbability: 0 });
    expect([viewsPerImage('simclr'), viewsPerImage('finetune'), viewsPerImage('eval')]).toEqual([2, 1, 1]);
  });

  it('lets given fields override the preset', () => {
    expect(resolveAugmentOptions({ outputSize: 96, colorStrength: 0.5, minScale: 0.2 })).toMatchObject({ colorStrength: 0.5, minScale: 0.2 });
  });

  it.each([
    [{ minScale: 0 }, 'augment.minScale must be in (0, 1], got 0'],
    [{ maxScale: 1.5 }, 'augment.maxScale must be in (0, 1], got 1.5'],
    [{ minScale: 0.9, maxScale: 0.5 }, 'augment.minScale must be <= augment.maxScale'],
    [{ minRatio: -1 }, 'augment.minRatio must be in (0, Infinity)'],
    [{ flipProbability: 2 }, 'augment.flipProbability must be in [0, 1]'],
    [{ colorStrength: 3 }, 'augment.colorStrength must be in [0, 2.5]'],
    [{ minBlurSigma: 0 }, 'augment.minBlurSigma must be in (0, Infinity)'],
    [{ outputSize: 32, blurProbability: 0.5 }, 'augment.blurProbability must be 0 for outputSize <= 32'],
    [{ outputSize: 0 }, 'augment.outputSize must be an integer in [1, 4096]'],
    [{ preset: 'fancy' }, 'augment.preset must be one of simclr, finetune, eval'],
    [{ output: 'int16' }, 'augment.output must be uint8 or float32'],
    [{ minscale: 0.1 }, 'augment.minscale is not an augmentation option'],
  ])('rejects %j', (input, message) => {
    expect(() => resolveAugmentOptions(input as never)).toThrow(message);
  });
});

describe('blurKernelSize', () => {
  it('is 10 % of the side made odd, and off up to 32 px', () => {
    expect(blurKernelSize(224)).toBe(22 + 1);
    expect(blurKernelSize(96)).toBe(9);
    expect(blurKernelSize(64)).toBe(7);
    expect(blurKernelSize(32)).toBe(0);
  });
});
