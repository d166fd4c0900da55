// Checks the TypeScript baseline JPEG decoder against sharp on every JPEG under a folder (default
// CIFAR-10 train): how many decode identically, how many it declines, how many differ, and the
// time per image of each. npm run check:jpeg [-- FOLDER]
import { readFileSync, readdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import sharp, { type OutputInfo } from 'sharp';
import { decodeBaselineJpeg, JpegScratch } from '../data/jpeg-baseline.ts';

// As the decode worker runs it: one libvips thread, no cache.
sharp.concurrency(1);
sharp.cache(false);

const DEFAULT = join(import.meta.dirname, '..', '..', 'shared', 'datasets', 'cifar10', 'train');
const args = process.argv.slice(2);
if (args.length > 1 || args[0]?.startsWith('-')) {
  console.error('usage: check-jpeg-baseline.ts [FOLDER]');
  process.exit(2);
}
const root = resolve(args[0] ?? DEFAULT);

function* jpegFiles(dir: string): Generator<string> {
  for (const entry of readdirSync(dir, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) yield* jpegFiles(path);
    else if (/\.jpe?g$/i.test(entry.name)) yield path;
  }
}

let files = 0;
let identical = 0;
let refused = 0;
let mismatched = 0;
let sharpRefused = 0;
let oursMs = 0;
let sharpMs = 0;
const scratch = new JpegScratch(); // reused over every file, as the decode worker does over a batch
for (const path of jpegFiles(root)) {
  files++;
  const bytes = readFileSync(path);
  let t = performance.now();
  let reference: { data: Buffer; info: OutputInfo } | null = null;
  try {
    reference = await sharp(bytes).raw().toBuffer({ resolveWithObject: true });
  } catch {
    sharpRefused++;
  }
  sharpMs += performance.now() - t;
  // sharp gives the size to ask for; a file sharp refuses is tried at its SOF size (any will do:
  // the decoder must decline it).
  const width = reference?.info.width ?? 32;
  const height = reference?.info.height ?? 32;
  const ours = new Uint8Array(width * height * 3);
  t = performance.now();
  const accepted = decodeBaselineJpeg(bytes, width, height, ours, 0, scratch);
  oursMs += performance.now() - t;
  if (!accepted) refused++;
  else if (reference !== null && reference.info.channels === 3 && Buffer.from(ours.buffer).equals(reference.data)) identical++;
  else {
    mismatched++;
    if (mismatched <= 10) console.error(`mismatch: ${path}`);
  }
}

const perImage = (ms: number) => Math.round((ms * 1000 * 10) / Math.max(files, 1)) / 10;
console.log(
  JSON.stringify({
    folder: root,
    files,
    identical,
    refused,
    mismatched,
    sharp_refused: sharpRefused,
    our_us_per_image: perImage(oursMs),
    sharp_us_per_image: perImage(sharpMs),
  }),
);
if (mismatched > 0) process.exitCode = 1;
