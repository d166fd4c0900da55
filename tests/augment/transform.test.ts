// applyView composes the ops in torchvision's order and honours the sampled jitter order.
import { describe, expect, it } from 'vitest';
import { adjustBrightnessInPlace, adjustContrastInPlace, grayscaleInPlace, hflipInPlace, resizedCrop } from '../../augment/ops.ts';
import type { ViewParams } from '../../augment/params.ts';
import { applyView } from '../../augment/transform.ts';

const H = 6;
const W = 8;
const src = { data: Uint8Array.from({ length: H * W * 3 }, (_, i) => (i * 53 + 7) % 256), height: H, width: W };
const crop = { top: 1, left: 2, height: 4, width: 5 };
const none: ViewParams = { crop, flip: false, jitter: null, grayscale: false, blur: null };

describe('applyView', () => {
  it('is the resized crop when nothing else is drawn', () => {
    expect(applyView(src, none, 4)).toEqual(resizedCrop(src, crop, 4, 4));
  });

  it('flips and grays after the crop', () => {
    const expected = resizedCrop(src, crop, 4, 4);
    const img = { data: expected, height: 4, width: 4 };
    hflipInPlace(img);
    grayscaleInPlace(img);
    expect(applyView(src, { ...none, flip: true, grayscale: true }, 4)).toEqual(expected);
  });

  it('applies the jitter ops in the sampled order (the order changes the result)', () => {
    const jitter = { brightness: 1.8, contrast: 0.3, saturation: null, hue: null };
    const bc = applyView(src, { ...none, jitter: { ...jitter, order: ['brightness', 'contrast', 'saturation', 'hue'] } }, 4);
    const cb = applyView(src, { ...none, jitter: { ...jitter, order: ['contrast', 'hue', 'saturation', 'brightness'] } }, 4);
    const expected = resizedCrop(src, crop, 4, 4);
    const img = { data: expected, height: 4, width: 4 };
    adjustBrightnessInPlace(img, 1.8);
    adjustContrastInPlace(img, 0.3);
    expect(bc).toEqual(expected);
    expect(cb).not.toEqual(bc);
  });
});
