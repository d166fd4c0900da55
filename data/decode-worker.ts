// Decode worker (one per Piscina thread): turns a batch of image files into size×size 8-bit sRGB
// RGB pixels (HWC), or a reason per file it cannot use. Pixels go back by transfer, not copy.
import { readFileSync } from 'node:fs';
import { Piscina } from 'piscina';
import sharp from 'sharp';
import { decodeBaselineJpeg, JpegScratch } from './jpeg-baseline.ts';

// One libvips thread per image and no operation cache: the pool provides the parallelism, and
// every file is read once, so caching would only hold memory.
sharp.concurrency(1);
sharp.cache(false);

export interface DecodeTask {
  /** Absolute paths, decoded in this order. */
  paths: string[];
  /** Output side length: shorter side resized to `size`, then centre-cropped to size×size. */
  size: number;
  /** Files with more pixels than this are refused before decoding (sharp's limitInputPixels). */
  maxInputPixels: number;
}

export interface DecodeResult {
  /** paths.length × size × size × 3 bytes; the slot of a failed file is left zero. */
  pixels: Uint8Array;
  /** null where the file decoded, else the reason it was refused. */
  errors: Array<string | null>;
}

/**
 * Transparent pixels are composited onto black: that is what premultiplied alpha means and what
 * PIL's convert('RGB') shows for the usual (0,0,0,0) transparent pixel, so datasets stay close to
 * torchvision's ImageFolder.
 */
const ALPHA_BACKGROUND = { r: 0, g: 0, b: 0 };

/**
 * True for a JPEG that decoding alone turns into the output: 8-bit, 3 components (YCbCr/RGB),
 * exactly size×size, no APP1 (EXIF orientation) and no APP2 (ICC profile). Reads only the
 * headers; anything unusual answers false and takes the general path.
 */
export function isPlainJpeg(b: Uint8Array, size: number): boolean {
  if (b.length < 4 || b[0] !== 0xff || b[1] !== 0xd8) return false;
  let i = 2;
  while (i + 4 <= b.length) {
    if (b[i] !== 0xff) return false;
    const marker = b[i + 1];
    if (marker === 0xff) {
      i++; // fill byte
      continue;
    }
    const len = (b[i + 2] << 8) | b[i + 3];
    if (len < 2) return false;
    if (marker === 0xe1 || marker === 0xe2) return false;
    if (marker === 0xc0 || marker === 0xc1 || marker === 0xc2) {
      if (i + 10 > b.length) return false;
      const precision = b[i + 4];
      const height = (b[i + 5] << 8) | b[i + 6];
      const width = (b[i + 7] << 8) | b[i + 8];
      return precision === 8 && height === size && width === size && b[i + 9] === 3;
    }
    if ((marker >= 0xc3 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc) || marker === 0xda) return false;
    i += 2 + len;
  }
  return false;
}

async function decodeOne(input: Buffer, size: number, maxInputPixels: number, out: Uint8Array, offset: number): Promise<void> {
  // failOn 'warning' makes truncated and corrupt files errors instead of grey-padded images.
  const { data, info } = await sharp(input, { limitInputPixels: maxInputPixels, failOn: 'warning', sequentialRead: true })
    .autoOrient() // EXIF orientation, so the pixels are upright as a viewer shows them
    .resize(size, size, { fit: 'cover', position: 'centre' })
    .flatten({ background: ALPHA_BACKGROUND })
    .toColourspace('srgb') // CMYK, grayscale, 16-bit, palette, ICC profiles → 8-bit sRGB
    .removeAlpha()
    .raw({ depth: 'uchar' })
    .toBuffer({ resolveWithObject: true });
  if (info.width !== size || info.height !== size || info.channels !== 3 || data.length !== size * size * 3) {
    throw new Error(`decoded to ${info.width}×${info.height}×${info.channels}, expected ${size}×${size}×3`);
  }
  out.set(data, offset);
}

/**
 * Decodes plain JPEGs (isPlainJpeg) stacked into one tall image by a single sharp call: about
 * half the CPU of one pipeline per image for small images, and the raw output is already the
 * images' HWC pixels back to back. Throws if any of them fails; the caller then goes one by one.
 */
async function decodeStacked(inputs: Buffer[], size: number, maxInputPixels: number): Promise<Buffer> {
  const data = await sharp(inputs, { join: { across: 1 }, limitInputPixels: maxInputPixels, failOn: 'warning' })
    .toColourspace('srgb')
    .removeAlpha()
    .raw({ depth: 'uchar' })
    .toBuffer();
  if (data.length !== inputs.length * size * size * 3) throw new Error(`stacked decode gave ${data.length} bytes for ${inputs.length} images`);
  return data;
}

/** Reason text for a refused file: the first line of the error. */
function reasonOf(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  const first = message.split('\n')[0];
  // libvips sometimes reports a failOn warning without the warning's text (it lands in another
  // thread's error buffer): say what such a warning means for an image file.
  if (/^Warning treated as error/.test(first)) return `corrupt or truncated image data (${first})`;
  return first;
}

/**
 * What decodeBatch resolves with: a Piscina movable that the pool unwraps into the DecodeResult
 * it carries (read it with `[Piscina.valueSymbol]` when calling the function directly).
 */
export type MovableResult<T> = object & { readonly __carries?: T };

/** Decodes a batch; resolves with a Piscina movable so the pixel buffer is transferred. */
export default async function decodeBatch(task: DecodeTask): Promise<MovableResult<DecodeResult>> {
  const { paths, size, maxInputPixels } = task;
  const stride = size * size * 3;
  // Its own ArrayBuffer (not a slice of Node's Buffer pool), so it can be transferred.
  const pixels = new Uint8Array(paths.length * stride);
  const errors: Array<string | null> = new Array(paths.length).fill(null);
  const inputs: Array<Buffer | null> = paths.map((p, i) => {
    try {
      return readFileSync(p);
    } catch (e) {
      errors[i] = `cannot read: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`;
      return null;
    }
  });
  let general: number[] = [];
  const plain: number[] = [];
  const scratch = new JpegScratch(); // the decoder's buffers, shared by this batch's files
  inputs.forEach((b, i) => {
    if (b === null) return;
    if (stride / 3 > maxInputPixels || !isPlainJpeg(b, size)) general.push(i);
    // The TypeScript decoder gives sharp's pixels exactly, without libvips' per-image overhead
    // (~60 µs against ~1.1 ms per CIFAR image); the files it declines take the sharp path.
    else if (!decodeBaselineJpeg(b, size, size, pixels, i * stride, scratch)) plain.push(i);
  });
  if (plain.length > 0) {
    try {
      const data = await decodeStacked(plain.map((i) => inputs[i]!), size, maxInputPixels);
      plain.forEach((i, k) => pixels.set(data.subarray(k * stride, (k + 1) * stride), i * stride));
    } catch {
      general = general.concat(plain); // one bad file spoils the stack: find it by going one by one
    }
  }
  await Promise.all(
    general.map((i) =>
      decodeOne(inputs[i]!, size, maxInputPixels, pixels, i * stride).catch((e) => {
        errors[i] = reasonOf(e);
      }),
    ),
  );
  const result: DecodeResult = { pixels, errors };
  // Piscina only transfers a movable *top-level* result; this object says what to send and what to move.
  return Piscina.move({
    [Piscina.transferableSymbol]: [pixels.buffer],
    [Piscina.valueSymbol]: result,
  } as never) as MovableResult<DecodeResult>;
}
