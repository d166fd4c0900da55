// Contact sheet of augmented pairs for eyeballing the augmentation: one row per image,
// original | view1 | view2, as a PNG (what `pipeline augment preview` writes).
import sharp, { type OverlayOptions } from 'sharp';
import { resolveAugmentOptions, viewsPerImage, type AugmentOptionsInput } from './options.ts';
import { sampleViewParams } from './params.ts';
import type { RawImageBatch } from './pool.ts';
import { applyView } from './transform.ts';

export interface PreviewOptions extends AugmentOptionsInput {
  seed?: number;
  epoch?: number;
  /** Integer nearest-neighbour magnification of the finished sheet (CIFAR tiles are 32 px). */
  scale?: number;
  /** Pixels of white between tiles (before scaling). */
  gap?: number;
}

/**
 * Renders the sheet on the main thread (a preview has a handful of images, so no pool). The
 * original is squashed to S×S for display only; views are exactly what training sees for
 * (seed, epoch, index).
 */
export async function renderContactSheet(images: RawImageBatch, options: PreviewOptions = {}): Promise<Buffer> {
  const { seed = 0, epoch = 0, scale = 1, gap = 2, ...augmentInput } = options;
  if (!Number.isInteger(scale) || scale < 1 || scale > 16) throw new Error(`preview.scale must be an integer in [1, 16], got ${scale}`);
  if (!Number.isInteger(gap) || gap < 0) throw new Error(`preview.gap must be a non-negative integer, got ${gap}`);
  const o = resolveAugmentOptions(augmentInput);
  const S = o.outputSize;
  const { ids, pixels, height, width } = images;
  const bytes = height * width * 3;
  if (ids.length === 0 || pixels.length !== ids.length * bytes) throw new Error(`preview: ${ids.length} images of ${height}x${width}x3 need ${ids.length * bytes} bytes, got ${pixels.length}`);
  const columns = 1 + viewsPerImage(o.preset);
  const sheetW = columns * S + (columns + 1) * gap;
  const sheetH = ids.length * S + (ids.length + 1) * gap;
  const raw = { width: S, height: S, channels: 3 as const };
  const tiles: OverlayOptions[] = [];
  for (let i = 0; i < ids.length; i++) {
    const src = { data: pixels.subarray(i * bytes, (i + 1) * bytes), height, width };
    const top = gap + i * (S + gap);
    const original = await sharp(src.data, { raw: { width, height, channels: 3 } }).resize(S, S, { fit: 'fill' }).raw().toBuffer();
    tiles.push({ input: original, raw, top, left: gap });
    for (let v = 0; v < columns - 1; v++) {
      const view = applyView(src, sampleViewParams({ seed, epoch, index: i, view: v }, height, width, o), S);
      tiles.push({ input: Buffer.from(view.buffer, view.byteOffset, view.byteLength), raw, top, left: gap + (v + 1) * (S + gap) });
    }
  }
  const sheet = await sharp({ create: { width: sheetW, height: sheetH, channels: 3, background: { r: 255, g: 255, b: 255 } } })
    .composite(tiles)
    .removeAlpha() // composite works in RGBA
    .raw()
    .toBuffer();
  return sharp(sheet, { raw: { width: sheetW, height: sheetH, channels: 3 } })
    .resize(sheetW * scale, sheetH * scale, { kernel: 'nearest' })
    .png()
    .toBuffer();
}
