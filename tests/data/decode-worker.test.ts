// Decode worker: its result moves the pixel buffer (transferred, not copied), the batched plain-JPEG
// path gives exactly the pixels of the one-image-at-a-time path, and failures come back per file.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Piscina } from 'piscina';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import decodeBatch, { isPlainJpeg, type DecodeResult } from '../../data/decode-worker.ts';

let dir: string;
const paths: string[] = [];
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'decode-'));
  for (let k = 0; k < 4; k++) {
    const px = Buffer.alloc(32 * 32 * 3);
    for (let i = 0; i < px.length; i++) px[i] = (i * (k + 3) * 31) % 256;
    const p = join(dir, `img${k}.jpg`);
    await sharp(px, { raw: { width: 32, height: 32, channels: 3 } }).jpeg({ quality: 90 }).toFile(p);
    paths.push(p);
  }
  for (let k = 0; k < 2; k++) {
    const px = Buffer.alloc(32 * 32 * 3);
    for (let i = 0; i < px.length; i++) px[i] = (i * (k + 5) * 17) % 256;
    // Progressive: plain by isPlainJpeg's header test, declined by the TypeScript baseline decoder.
    await sharp(px, { raw: { width: 32, height: 32, channels: 3 } }).jpeg({ quality: 85, progressive: true }).toFile(join(dir, `prog${k}.jpg`));
  }
  await writeFile(join(dir, 'bad.jpg'), 'not a jpeg');
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const unwrap = (moved: object) => (moved as Record<symbol, unknown>)[Piscina.valueSymbol] as DecodeResult;
const transferList = (moved: object) => (moved as Record<symbol, unknown>)[Piscina.transferableSymbol] as ArrayBuffer[];

describe('decodeBatch', () => {
  it('returns a movable whose pixel buffer is transferred, not copied', async () => {
    const moved = await decodeBatch({ paths, size: 32, maxInputPixels: 1e6 });
    const result = unwrap(moved);
    expect(transferList(moved)).toEqual([result.pixels.buffer]);
    // What Piscina does with a movable: post the value with the buffer in the transfer list.
    const received = structuredClone(result, { transfer: transferList(moved) });
    expect(result.pixels.buffer.byteLength).toBe(0); // detached in the sender: it moved
    expect(received.pixels.length).toBe(4 * 32 * 32 * 3);
  });

  it('the plain-JPEG path gives exactly the per-image pipeline pixels', async () => {
    for (const p of paths) expect(isPlainJpeg(await sharp(p).toBuffer(), 32)).toBe(true);
    const { pixels, errors } = unwrap(await decodeBatch({ paths, size: 32, maxInputPixels: 1e6 }));
    expect(errors).toEqual([null, null, null, null]);
    for (let k = 0; k < paths.length; k++) {
      const one = await sharp(paths[k]).autoOrient().resize(32, 32, { fit: 'cover' }).toColourspace('srgb').removeAlpha().raw().toBuffer();
      expect(Buffer.from(pixels.subarray(k * 3072, (k + 1) * 3072)).equals(one), `image ${k}`).toBe(true);
    }
  });

  it('baseline files (TypeScript decoder) and progressive ones (stacked sharp call) mixed in a batch: the per-image pipeline pixels', async () => {
    const mixed = [paths[0], join(dir, 'prog0.jpg'), paths[1], join(dir, 'prog1.jpg')];
    for (const p of mixed) expect(isPlainJpeg(await sharp(p).toBuffer(), 32)).toBe(true);
    const { pixels, errors } = unwrap(await decodeBatch({ paths: mixed, size: 32, maxInputPixels: 1e6 }));
    expect(errors).toEqual([null, null, null, null]);
    for (let k = 0; k < mixed.length; k++) {
      const one = await sharp(mixed[k]).autoOrient().resize(32, 32, { fit: 'cover' }).toColourspace('srgb').removeAlpha().raw().toBuffer();
      expect(Buffer.from(pixels.subarray(k * 3072, (k + 1) * 3072)).equals(one), mixed[k]).toBe(true);
    }
  });

  it('one bad file in a batch fails alone; the others still decode', async () => {
    const { pixels, errors } = unwrap(await decodeBatch({ paths: [paths[0], join(dir, 'bad.jpg'), paths[1], join(dir, 'none.jpg')], size: 32, maxInputPixels: 1e6 }));
    expect(errors[0]).toBeNull();
    expect(errors[1]).toMatch(/unsupported image format/);
    expect(errors[2]).toBeNull();
    expect(errors[3]).toBe('cannot read: ENOENT');
    const first = unwrap(await decodeBatch({ paths: [paths[1]], size: 32, maxInputPixels: 1e6 })).pixels;
    expect(Buffer.from(pixels.subarray(2 * 3072, 3 * 3072)).equals(Buffer.from(first))).toBe(true);
    expect(pixels.subarray(3072, 2 * 3072).every((v) => v === 0)).toBe(true);
  });

  it('isPlainJpeg refuses EXIF-tagged, other-sized and non-JPEG input', async () => {
    const base = sharp({ create: { width: 32, height: 32, channels: 3, background: '#808080' } });
    expect(isPlainJpeg(await base.clone().jpeg().withMetadata({ orientation: 6 }).toBuffer(), 32)).toBe(false);
    expect(isPlainJpeg(await base.clone().jpeg().toBuffer(), 16)).toBe(false);
    expect(isPlainJpeg(await base.clone().png().toBuffer(), 32)).toBe(false);
    expect(isPlainJpeg(await base.clone().toColourspace('b-w').jpeg().toBuffer(), 32)).toBe(false); // 1 component
  });
});
