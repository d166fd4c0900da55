// The contact sheet: layout and tiles equal to the views training would see.
import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import { resolveAugmentOptions } from '../../augment/options.ts';
import { sampleViewParams } from '../../augment/params.ts';
import { renderContactSheet } from '../../augment/preview.ts';
import { applyView } from '../../augment/transform.ts';

describe('renderContactSheet', () => {
  it('lays out original | view1 | view2 rows and shows the exact views', async () => {
    const H = 12;
    const W = 16;
    const S = 8;
    const n = 3;
    const gap = 2;
    const pixels = Uint8Array.from({ length: n * H * W * 3 }, (_, i) => (i * 2654435761) >>> 24);
    const png = await renderContactSheet({ ids: ['a', 'b', 'c'], pixels, height: H, width: W }, { outputSize: S, seed: 5, epoch: 1, scale: 2, gap });
    const { data, info } = await sharp(png).raw().toBuffer({ resolveWithObject: true });
    expect([info.width, info.height, info.channels]).toEqual([(3 * S + 4 * gap) * 2, (n * S + (n + 1) * gap) * 2, 3]);
    // Tile of image 1, view 2, read back at the top-left sample of each 2×2 block.
    const o = resolveAugmentOptions({ outputSize: S });
    const expected = applyView({ data: pixels.subarray(H * W * 3, 2 * H * W * 3), height: H, width: W }, sampleViewParams({ seed: 5, epoch: 1, index: 1, view: 1 }, H, W, o), S);
    const top = gap + 1 * (S + gap);
    const left = gap + 2 * (S + gap);
    const tile: number[] = [];
    for (let y = 0; y < S; y++) for (let x = 0; x < S; x++) for (let c = 0; c < 3; c++) tile.push(data[(((top + y) * 2) * info.width + (left + x) * 2) * 3 + c]);
    expect(tile).toEqual(Array.from(expected));
    expect(Array.from(data.subarray(0, 3))).toEqual([255, 255, 255]); // the gap is white
  });

  it('names a bad option', async () => {
    await expect(renderContactSheet({ ids: ['a'], pixels: new Uint8Array(3), height: 1, width: 1 }, { scale: 0 })).rejects.toThrow('preview.scale must be an integer in [1, 16], got 0');
  });
});
