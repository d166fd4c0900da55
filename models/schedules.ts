// Learning-rate schedules as pure functions of the step (SimCLR's batch scaling, linear warmup,
// cosine decay); the training loop asks for the rate of each step and hands it to the optimizer.

export type LearningRateScaling = 'linear' | 'sqrt';

/**
 * SimCLR's batch-size scaling of the base learning rate (arXiv 2002.05709, Appendix B.1):
 * `linear` = base × batch / 256 (base 0.3 with LARS), `sqrt` = base × √batch (base 0.075),
 * the latter better for small batches and long runs.
 */
export function scaledLearningRate(base: number, batchSize: number, scaling: LearningRateScaling): number {
  if (!(Number.isFinite(base) && base >= 0)) throw new Error(`scaledLearningRate: base must be a finite number >= 0, got ${base}`);
  if (!(Number.isInteger(batchSize) && batchSize > 0)) {
    throw new Error(`scaledLearningRate: batchSize must be a positive integer, got ${batchSize}`);
  }
  switch (scaling) {
    case 'linear':
      return (base * batchSize) / 256;
    case 'sqrt':
      return base * Math.sqrt(batchSize);
    default:
      throw new Error(`scaledLearningRate: scaling must be 'linear' or 'sqrt', got '${String(scaling)}'`);
  }
}

export interface WarmupCosineOptions {
  /** Peak rate, reached at the end of the warmup (already batch-scaled). */
  baseLr: number;
  /** Steps of linear warmup from 0; 0 starts at the peak. */
  warmupSteps: number;
  /** Total training steps; the rate reaches 0 here and stays 0 after. */
  totalSteps: number;
}

/**
 * Linear warmup from 0 to `baseLr` over `warmupSteps`, then cosine decay to 0 at `totalSteps`, as
 * google-research/simclr's `WarmUpAndCosineDecay` (step = number of updates already applied, so
 * the very first update uses rate 0 when there is a warmup, exactly as there):
 *
 *   lr(s) = baseLr · s / W                                   for s < W
 *   lr(s) = baseLr · ½ (1 + cos(π (s − W) / (T − W)))        for W ≤ s < T, and 0 for s ≥ T
 */
export function warmupCosine(options: WarmupCosineOptions): (step: number) => number {
  const { baseLr, warmupSteps, totalSteps } = options;
  if (!(Number.isFinite(baseLr) && baseLr >= 0)) throw new Error(`warmupCosine: baseLr must be a finite number >= 0, got ${baseLr}`);
  if (!(Number.isInteger(warmupSteps) && warmupSteps >= 0)) {
    throw new Error(`warmupCosine: warmupSteps must be an integer >= 0, got ${warmupSteps}`);
  }
  if (!(Number.isInteger(totalSteps) && totalSteps > 0)) {
    throw new Error(`warmupCosine: totalSteps must be a positive integer, got ${totalSteps}`);
  }
  if (warmupSteps > totalSteps) {
    throw new Error(`warmupCosine: warmupSteps (${warmupSteps}) must not exceed totalSteps (${totalSteps})`);
  }
  return (step: number): number => {
    if (!(Number.isInteger(step) && step >= 0)) throw new Error(`warmupCosine: step must be an integer >= 0, got ${step}`);
    if (step < warmupSteps) return (baseLr * step) / warmupSteps;
    if (step >= totalSteps) return 0;
    const progress = (step - warmupSteps) / (totalSteps - warmupSteps);
    return baseLr * 0.5 * (1 + Math.cos(Math.PI * progress));
  };
}

/**
 * Warmup length in epochs: SimCLR warms up for 10 epochs, which is 10 % of its shortest (100-epoch)
 * runs. Short runs keep that 10 % rather than spending most of a smoke test warming up, so
 * min(10, totalEpochs / 10); the result may be fractional (convert with
 * `Math.round(epochs × stepsPerEpoch)`), so even a 3-epoch run gets a short warmup, which LARS's
 * large scaled rates need.
 */
export function defaultWarmupEpochs(totalEpochs: number): number {
  if (!(Number.isFinite(totalEpochs) && totalEpochs > 0)) {
    throw new Error(`defaultWarmupEpochs: totalEpochs must be a positive number, got ${totalEpochs}`);
  }
  return Math.min(10, totalEpochs / 10);
}
