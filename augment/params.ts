// Sampling of per-view augmentation parameters on the main thread: plain records that workers
// apply as a pure function of (pixels, params), following torchvision's get_params for each op.
import { type AugmentOptions, blurKernelSize } from './options.ts';
import { ViewRandom } from './rng.ts';

/** A crop box in source pixels (torchvision's i, j, h, w). */
export interface CropBox {
  top: number;
  left: number;
  height: number;
  width: number;
}

/** Colour-jitter op codes, in the order torchvision's ColorJitter numbers them. */
const JITTER_OPS = ['brightness', 'contrast', 'saturation', 'hue'] as const;
export type JitterOp = (typeof JITTER_OPS)[number];

export interface JitterParams {
  /** Application order: a permutation of the four ops (torch.randperm(4)). */
  order: JitterOp[];
  /** Blend factors (1 = unchanged); null when that op's strength is 0, as torchvision's None. */
  brightness: number | null;
  contrast: number | null;
  saturation: number | null;
  /** Hue rotation in [-0.5, 0.5] turns; null when the hue strength is 0. */
  hue: number | null;
}

export interface ViewParams {
  crop: CropBox;
  flip: boolean;
  jitter: JitterParams | null;
  grayscale: boolean;
  /** Gaussian blur (kernel side odd, σ in pixels), or null. */
  blur: { kernelSize: number; sigma: number } | null;
}

/** Python's round(): half to even, which torchvision's crop sizes go through. */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * torchvision RandomResizedCrop.get_params: up to 10 tries of (area fraction ~ U(scale),
 * log-ratio ~ U(log ratio)), else the centre crop clamped to the ratio range.
 */
export function sampleCrop(
  rng: ViewRandom,
  height: number,
  width: number,
  scale: readonly [number, number],
  ratio: readonly [number, number],
): CropBox {
  const area = height * width;
  const logLo = Math.log(ratio[0]);
  const logHi = Math.log(ratio[1]);
  for (let attempt = 0; attempt < 10; attempt++) {
    const targetArea = area * rng.uniformIn(scale[0], scale[1]);
    const aspect = Math.exp(rng.uniformIn(logLo, logHi));
    const w = roundHalfEven(Math.sqrt(targetArea * aspect));
    const h = roundHalfEven(Math.sqrt(targetArea / aspect));
    if (w > 0 && w <= width && h > 0 && h <= height) {
      const top = rng.intIn(0, height - h + 1);
      const left = rng.intIn(0, width - w + 1);
      return { top, left, height: h, width: w };
    }
  }
  return centerCropForRatio(height, width, ratio);
}

/** torchvision's fallback: the whole image, narrowed to the nearest allowed aspect ratio, centred. */
export function centerCropForRatio(height: number, width: number, ratio: readonly [number, number]): CropBox {
  const inRatio = width / height;
  let w = width;
  let h = height;
  if (inRatio < Math.min(ratio[0], ratio[1])) {
    h = roundHalfEven(w / Math.min(ratio[0], ratio[1]));
  } else if (inRatio > Math.max(ratio[0], ratio[1])) {
    w = roundHalfEven(h * Math.max(ratio[0], ratio[1]));
  }
  return { top: Math.floor((height - h) / 2), left: Math.floor((width - w) / 2), height: h, width: w };
}

/** The eval crop: a centred square of `fraction` × the shorter side (torchvision CenterCrop rounding). */
export function centerSquareCrop(height: number, width: number, fraction: number): CropBox {
  const side = Math.max(1, Math.floor(Math.min(height, width) * fraction));
  // torchvision CenterCrop: int(round((H - h) / 2.0)).
  return { top: roundHalfEven((height - side) / 2), left: roundHalfEven((width - side) / 2), height: side, width: side };
}

/**
 * Draws one view's parameters from its own stream (seed, epoch, index, view). The draw order is
 * fixed (crop, flip, jitter gate, jitter params, grayscale, blur gate, σ), so changing a
 * probability never shifts the crop.
 */
export function sampleViewParams(
  key: { seed: number; epoch: number; index: number; view: number },
  height: number,
  width: number,
  o: AugmentOptions,
): ViewParams {
  if (o.preset === 'eval') {
    return { crop: centerSquareCrop(height, width, o.centerCropFraction), flip: false, jitter: null, grayscale: false, blur: null };
  }
  const rng = new ViewRandom(key);
  const crop = sampleCrop(rng, height, width, [o.minScale, o.maxScale], [o.minRatio, o.maxRatio]);
  const flip = rng.bernoulli(o.flipProbability);
  let jitter: JitterParams | null = null;
  if (rng.bernoulli(o.jitterProbability)) {
    const s = o.colorStrength;
    const order = rng.permutation(4).map((i) => JITTER_OPS[i]);
    // ColorJitter(0.8s, 0.8s, 0.8s, 0.2s): factors ~ U(max(0, 1 - 0.8s), 1 + 0.8s), hue ~ U(-0.2s, 0.2s).
    const factor = (strength: number) => (strength > 0 ? rng.uniformIn(Math.max(0, 1 - strength), 1 + strength) : null);
    const brightness = factor(0.8 * s);
    const contrast = factor(0.8 * s);
    const saturation = factor(0.8 * s);
    const hue = s > 0 ? rng.uniformIn(-0.2 * s, 0.2 * s) : null;
    jitter = { order, brightness, contrast, saturation, hue };
  }
  const grayscale = rng.bernoulli(o.grayscaleProbability);
  let blur: ViewParams['blur'] = null;
  const kernelSize = blurKernelSize(o.outputSize);
  if (kernelSize > 0 && rng.bernoulli(o.blurProbability)) {
    blur = { kernelSize, sigma: rng.uniformIn(o.minBlurSigma, o.maxBlurSigma) };
  }
  return { crop, flip, jitter, grayscale, blur };
}
