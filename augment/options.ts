// Augmentation options: the SimCLR paper's defaults, the three presets and validation that names
// the field at fault (`augment.minScale must be in (0, 1]`).

/** simclr: two fully augmented views; finetune: crop + flip, one view; eval: centre crop, one view. */
export type AugmentPreset = 'simclr' | 'finetune' | 'eval';
export const AUGMENT_PRESETS: readonly AugmentPreset[] = ['simclr', 'finetune', 'eval'];
/** SimCLR's two-view transform unless a preset is named. */
export const DEFAULT_PRESET: AugmentPreset = 'simclr';

export interface AugmentOptions {
  preset: AugmentPreset;
  /** Side S of the square output views. */
  outputSize: number;
  /** Random resized crop: fraction of the image area, sampled uniformly (Inception-style crop). */
  minScale: number;
  maxScale: number;
  /** Random resized crop: aspect ratio w/h, sampled log-uniformly. */
  minRatio: number;
  maxRatio: number;
  flipProbability: number;
  /** Probability that colour jitter is applied to a view (RandomApply around ColorJitter). */
  jitterProbability: number;
  /** Colour strength s: brightness, contrast, saturation 0.8·s, hue 0.2·s. */
  colorStrength: number;
  grayscaleProbability: number;
  /** Probability of the Gaussian blur; forced to 0 for outputSize <= 32 (see blurKernelSize). */
  blurProbability: number;
  minBlurSigma: number;
  maxBlurSigma: number;
  /** eval preset: side of the centred square crop as a fraction of the shorter side (0.875 = 224/256). */
  centerCropFraction: number;
  /** uint8 HWC views, or float32 HWC in [0, 1] (x / 255, what ToTensor gives). */
  output: 'uint8' | 'float32';
}

/** The options as a caller may give them: anything left out takes the preset's default. */
export type AugmentOptionsInput = Partial<AugmentOptions>;

/** Number of views each preset produces per image. */
export function viewsPerImage(preset: AugmentPreset): 1 | 2 {
  return preset === 'simclr' ? 2 : 1;
}

/**
 * Gaussian-blur kernel side for an output side S: 10 % of S made odd (SimCLR's choice, as in
 * `int(0.1 * S)` bumped to odd for torchvision), or 0 for S <= 32, where SimCLR turns blur off
 * because a 3-pixel kernel on CIFAR-size images only destroys detail.
 */
export function blurKernelSize(outputSize: number): number {
  if (outputSize <= 32) return 0;
  const k = Math.floor(0.1 * outputSize);
  return k % 2 === 0 ? k + 1 : k;
}

function presetDefaults(preset: AugmentPreset, outputSize: number): AugmentOptions {
  const simclr: AugmentOptions = {
    preset,
    outputSize,
    minScale: 0.08, // Inception crop, as SimCLR (Chen et al. 2020, appendix A)
    maxScale: 1,
    minRatio: 3 / 4,
    maxRatio: 4 / 3,
    flipProbability: 0.5,
    jitterProbability: 0.8,
    // The paper uses s = 1 on ImageNet and s = 0.5 on CIFAR-10 (appendix B.9).
    colorStrength: outputSize <= 32 ? 0.5 : 1,
    grayscaleProbability: 0.2,
    blurProbability: blurKernelSize(outputSize) > 0 ? 0.5 : 0,
    minBlurSigma: 0.1,
    maxBlurSigma: 2.0,
    centerCropFraction: 1,
    output: 'uint8',
  };
  if (preset === 'simclr') return simclr;
  // Fine-tuning and distillation use crop + flip only (SimCLRv2, appendix).
  const cropFlip = { ...simclr, jitterProbability: 0, grayscaleProbability: 0, blurProbability: 0 };
  if (preset === 'finetune') return cropFlip;
  return { ...cropFlip, flipProbability: 0 };
}

/** Merges `input` over the preset's defaults and validates every field; throws naming the field. */
export function resolveAugmentOptions(input: AugmentOptionsInput = {}): AugmentOptions {
  const preset = input.preset ?? DEFAULT_PRESET;
  if (!AUGMENT_PRESETS.includes(preset)) {
    throw new Error(`augment.preset must be one of ${AUGMENT_PRESETS.join(', ')}, got ${String(preset)}`);
  }
  const outputSize = input.outputSize ?? 32;
  if (!Number.isInteger(outputSize) || outputSize < 1 || outputSize > 4096) {
    throw new Error(`augment.outputSize must be an integer in [1, 4096], got ${outputSize}`);
  }
  const defined = Object.fromEntries(Object.entries(input).filter(([, v]) => v !== undefined));
  const o: AugmentOptions = { ...presetDefaults(preset, outputSize), ...defined };
  for (const key of Object.keys(o)) {
    if (!(key in presetDefaults('simclr', 32))) throw new Error(`augment.${key} is not an augmentation option`);
  }
  const inRange = (name: keyof AugmentOptions, lo: number, hi: number, loOpen: boolean, text: string) => {
    const v = o[name] as number;
    if (typeof v !== 'number' || !Number.isFinite(v) || (loOpen ? v <= lo : v < lo) || v > hi) {
      throw new Error(`augment.${name} must be in ${text}, got ${String(v)}`);
    }
  };
  inRange('minScale', 0, 1, true, '(0, 1]');
  inRange('maxScale', 0, 1, true, '(0, 1]');
  if (o.minScale > o.maxScale) throw new Error(`augment.minScale must be <= augment.maxScale, got ${o.minScale} > ${o.maxScale}`);
  inRange('minRatio', 0, Infinity, true, '(0, Infinity)');
  inRange('maxRatio', 0, Infinity, true, '(0, Infinity)');
  if (o.minRatio > o.maxRatio) throw new Error(`augment.minRatio must be <= augment.maxRatio, got ${o.minRatio} > ${o.maxRatio}`);
  for (const p of ['flipProbability', 'jitterProbability', 'grayscaleProbability', 'blurProbability'] as const) {
    inRange(p, 0, 1, false, '[0, 1]');
  }
  // 0.8·s <= 1 keeps the contrast/saturation factors' lower bound at 0 rather than negative;
  // torchvision allows brightness etc. up to any value, but hue must stay in [-0.5, 0.5].
  inRange('colorStrength', 0, 2.5, false, '[0, 2.5]');
  inRange('minBlurSigma', 0, Infinity, true, '(0, Infinity)');
  inRange('maxBlurSigma', 0, Infinity, true, '(0, Infinity)');
  if (o.minBlurSigma > o.maxBlurSigma) {
    throw new Error(`augment.minBlurSigma must be <= augment.maxBlurSigma, got ${o.minBlurSigma} > ${o.maxBlurSigma}`);
  }
  if (o.blurProbability > 0 && blurKernelSize(outputSize) === 0) {
    throw new Error(`augment.blurProbability must be 0 for outputSize <= 32 (no blur on CIFAR-size images), got ${o.blurProbability}`);
  }
  inRange('centerCropFraction', 0, 1, true, '(0, 1]');
  if (o.output !== 'uint8' && o.output !== 'float32') {
    throw new Error(`augment.output must be uint8 or float32, got ${String(o.output)}`);
  }
  return o;
}
