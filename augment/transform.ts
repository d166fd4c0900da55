// One augmented view from raw pixels and its sampled parameters, in torchvision's SimCLR order:
// RandomResizedCrop → RandomHorizontalFlip → ColorJitter (random op order) → RandomGrayscale → GaussianBlur.
import {
  adjustBrightnessInPlace,
  adjustContrastInPlace,
  adjustHueInPlace,
  adjustSaturationInPlace,
  gaussianBlurGrayInPlace,
  gaussianBlurInPlace,
  grayscaleInPlace,
  hflipInPlace,
  resizedCrop,
  type RgbImage,
} from './ops.ts';
import type { ViewParams } from './params.ts';

/**
 * Applies `params` to `src`, writing the S×S view into `out` ([S, S, 3] uint8). Every op after
 * the crop works in place on `out`, so a view costs one buffer. Returns `out`.
 */
export function applyView(src: RgbImage, params: ViewParams, outputSize: number, out: Uint8Array = new Uint8Array(outputSize * outputSize * 3)): Uint8Array {
  resizedCrop(src, params.crop, outputSize, outputSize, out);
  const view: RgbImage = { data: out, height: outputSize, width: outputSize };
  if (params.flip) hflipInPlace(view);
  const j = params.jitter;
  if (j) {
    for (const op of j.order) {
      // Each op clips to [0, 255] as it writes uint8, as torchvision clips after each step.
      if (op === 'brightness' && j.brightness !== null) adjustBrightnessInPlace(view, j.brightness);
      else if (op === 'contrast' && j.contrast !== null) adjustContrastInPlace(view, j.contrast);
      else if (op === 'saturation' && j.saturation !== null) adjustSaturationInPlace(view, j.saturation);
      else if (op === 'hue' && j.hue !== null) adjustHueInPlace(view, j.hue);
    }
  }
  if (params.grayscale) grayscaleInPlace(view);
  if (params.blur) {
    // A grayscale view has three equal channels: blurring one plane gives the same bytes at a third of the cost.
    const blur = params.grayscale ? gaussianBlurGrayInPlace : gaussianBlurInPlace;
    blur(view, params.blur.kernelSize, params.blur.sigma);
  }
  return out;
}
