// Raw image batches for a training stage: the rows of an in-memory dataset in an epoch's order.
import type { RawImageBatch } from '../../augment/pool.ts';
import { gatherImages, type InMemoryImages } from '../../data/memory.ts';

/** Batches of `images` in `perm` order from position `from` on, `chunk` rows each (the last may be short). */
export function* imageBatches(images: InMemoryImages, perm: Uint32Array, from: number, chunk: number): Generator<RawImageBatch> {
  const n = images.ids.length;
  for (let start = from; start < n; start += chunk) {
    const batch = gatherImages(images, perm.subarray(start, Math.min(n, start + chunk)));
    yield { ids: batch.ids, pixels: batch.pixels, height: images.height, width: images.width };
  }
}
