// `pipeline augment preview`: a PNG contact sheet (original | view1 | view2) of the first images
// of a dataset, for checking by eye what the augmentation does to real data.
import { mkdir } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import type { AugmentOptionsInput } from '../augment/options.ts';
import { renderContactSheet } from '../augment/preview.ts';
import { writeFileAtomic } from '../data/files.ts';
import { ManifestError, readDataset, readManifest } from '../data/manifest.ts';
import { ShardFormatError } from '../data/shards.ts';
import { AugmentInputError } from './augment.ts';

export interface AugmentPreviewOptions extends Omit<AugmentOptionsInput, 'output'> {
  /** images dataset directory. */
  data: string;
  /** PNG file to write (its folder is created). */
  out: string;
  /** Images (rows of the sheet), the dataset's first ones. Default 16. */
  pairs?: number;
  /** Same meaning as in the augment stage: the sheet shows exactly that stage's views. Default 0. */
  seed?: number;
  epoch?: number;
  /** Nearest-neighbour magnification; default: enough for tiles of at least 96 px (3 for CIFAR). */
  scale?: number;
  /** White pixels between tiles, before scaling. Default 2. */
  gap?: number;
}

/** Writes the contact sheet; returns its path and the number of images shown. */
export async function augmentPreview(options: AugmentPreviewOptions): Promise<{ out: string; pairs: number }> {
  const { data, out, pairs = 16, seed = 0, epoch = 0, scale, gap, ...augmentInput } = options;
  if (typeof data !== 'string' || data === '') throw new AugmentInputError('preview.data must be an images dataset folder');
  if (typeof out !== 'string' || !out.toLowerCase().endsWith('.png')) throw new AugmentInputError(`preview.out must be a .png path, got ${JSON.stringify(out)}`);
  if (!Number.isInteger(pairs) || pairs < 1 || pairs > 1024) throw new AugmentInputError(`preview.pairs must be an integer in [1, 1024], got ${JSON.stringify(pairs)}`);

  let height: number;
  let width: number;
  const ids: string[] = [];
  const chunks: Uint8Array[] = [];
  try {
    const manifest = await readManifest(data);
    if (manifest.schema !== 'images') throw new AugmentInputError(`preview.data: ${data} holds the ${manifest.schema} schema, expected images`);
    [height, width] = manifest.image_shape!;
    // Only the first rows are needed: stop reading (closing the shard) once there are enough.
    for await (const batch of readDataset<'images'>(data, { schema: 'images' })) {
      const bytes = height * width * 3;
      const take = Math.min(batch.numRows, pairs - ids.length);
      ids.push(...batch.columns.id.slice(0, take));
      chunks.push(batch.columns.image.slice(0, take * bytes));
      if (ids.length >= pairs) break;
    }
  } catch (e) {
    if (e instanceof ManifestError || e instanceof ShardFormatError) throw new AugmentInputError(`preview.data: ${e.message}`);
    throw e;
  }
  if (ids.length === 0) throw new AugmentInputError(`preview.data: ${data} has no images`);
  const pixels = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) {
    pixels.set(c, at);
    at += c.length;
  }

  const outputSize = augmentInput.outputSize ?? Math.min(height, width); // as the augment stage
  let png: Buffer;
  try {
    png = await renderContactSheet(
      { ids, pixels, height, width },
      { ...augmentInput, outputSize, seed, epoch, gap, scale: scale ?? Math.min(16, Math.max(1, Math.ceil(96 / outputSize))) },
    );
  } catch (e) {
    // Options it refuses are named augment.* / preview.*; anything else is a run-time failure.
    if (e instanceof Error && /^(augment|preview)\./.test(e.message)) throw new AugmentInputError(e.message);
    throw e;
  }

  const path = resolve(out);
  await mkdir(dirname(path), { recursive: true });
  await writeFileAtomic(path, png); // a reader (or a browser refreshing the file) never sees half a PNG
  return { out: path, pairs: ids.length };
}
