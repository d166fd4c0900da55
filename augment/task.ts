// The unit of work a pool worker receives (a whole batch of raw images plus every view's
// parameters) and the pure function that turns it into view tensors.
import type { ViewParams } from './params.ts';
import { applyView } from './transform.ts';

export interface AugmentTask {
  /** Image ids, for error messages. */
  ids: readonly string[];
  /** [N, H, W, 3] uint8; transferred to the worker, so the sender's copy is detached. */
  pixels: Uint8Array;
  height: number;
  width: number;
  outputSize: number;
  output: 'uint8' | 'float32';
  /** params[view][image]. */
  params: ViewParams[][];
}

/** One [N, S, S, 3] array per view. */
export interface AugmentResult {
  views: Array<Uint8Array | Float32Array>;
}

/**
 * Augments every image of the task; a failure names the image id and view. Pure: the result
 * depends only on (pixels, params, outputSize, output).
 */
export function runAugmentTask(task: AugmentTask): AugmentResult {
  const { ids, pixels, height, width, outputSize: S, output, params } = task;
  const n = ids.length;
  const imageBytes = height * width * 3;
  if (pixels.length !== n * imageBytes) {
    throw new Error(`augment: batch of ${n} images ${height}x${width}x3 needs ${n * imageBytes} bytes, got ${pixels.length}`);
  }
  const viewBytes = S * S * 3;
  const scratch = new Uint8Array(viewBytes);
  const views = params.map((perImage, v) => {
    if (perImage.length !== n) throw new Error(`augment: view ${v + 1} has ${perImage.length} parameter records for ${n} images`);
    const out = output === 'uint8' ? new Uint8Array(n * viewBytes) : new Float32Array(n * viewBytes);
    for (let i = 0; i < n; i++) {
      const src = { data: pixels.subarray(i * imageBytes, (i + 1) * imageBytes), height, width };
      try {
        if (out instanceof Uint8Array) {
          applyView(src, perImage[i], S, out.subarray(i * viewBytes, (i + 1) * viewBytes));
        } else {
          applyView(src, perImage[i], S, scratch);
          // ToTensor's x / 255 in float32.
          const o = i * viewBytes;
          for (let k = 0; k < viewBytes; k++) out[o + k] = scratch[k] / 255;
        }
      } catch (err) {
        throw new Error(`augment: image ${ids[i]} (view ${v + 1}): ${(err as Error).message}`);
      }
    }
    return out;
  });
  return { views };
}
