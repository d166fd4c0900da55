// Procedural labeled image set (shapes and textures in class folders, PNG and JPEG via sharp), so a
// user with no data of their own, and the tests, can run the real ingest and training on files.
import { mkdir, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import sharp from 'sharp';

export const SYNTHETIC_CLASSES = ['disc', 'square', 'triangle', 'ring', 'hstripes', 'vstripes', 'checker', 'cross'] as const;
export type SyntheticClass = (typeof SYNTHETIC_CLASSES)[number];

export interface SyntheticOptions {
  dir: string;
  perClass?: number;
  /** Side of the square images written. */
  size?: number;
  seed?: number;
  classes?: readonly SyntheticClass[];
}

/** mulberry32: small, fast, seedable; good enough for procedural pictures and test cases. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Does pixel (x, y), in units of the side, belong to the class's figure? */
function inside(cls: SyntheticClass, x: number, y: number, p: { cx: number; cy: number; r: number; period: number; angle: number }): boolean {
  const dx = x - p.cx;
  const dy = y - p.cy;
  const c = Math.cos(p.angle);
  const s = Math.sin(p.angle);
  const u = c * dx + s * dy; // rotated coordinates around the figure centre
  const v = -s * dx + c * dy;
  switch (cls) {
    case 'disc':
      return dx * dx + dy * dy <= p.r * p.r;
    case 'ring': {
      const d = Math.sqrt(dx * dx + dy * dy);
      return d <= p.r && d >= p.r * 0.55;
    }
    case 'square':
      return Math.abs(u) <= p.r * 0.8 && Math.abs(v) <= p.r * 0.8;
    case 'triangle':
      return v <= p.r * 0.7 && v >= -p.r * 0.9 + 1.6 * Math.abs(u) * 1.1;
    case 'cross':
      return (Math.abs(u) <= p.r * 0.25 && Math.abs(v) <= p.r) || (Math.abs(v) <= p.r * 0.25 && Math.abs(u) <= p.r);
    case 'hstripes':
      return Math.floor((y + p.cy) / p.period) % 2 === 0;
    case 'vstripes':
      return Math.floor((x + p.cx) / p.period) % 2 === 0;
    case 'checker':
      return (Math.floor((x + p.cx) / p.period) + Math.floor((y + p.cy) / p.period)) % 2 === 0;
  }
}

/** Renders one image of `cls` as raw RGB bytes. */
export function renderSynthetic(cls: SyntheticClass, size: number, random: () => number): Uint8Array {
  const fg = [0, 1, 2].map(() => 40 + random() * 215);
  const bg = [0, 1, 2].map(() => random() * 200);
  const p = {
    cx: 0.3 + random() * 0.4,
    cy: 0.3 + random() * 0.4,
    r: 0.18 + random() * 0.17,
    period: 0.1 + random() * 0.12,
    angle: random() * Math.PI * 2,
  };
  const out = new Uint8Array(size * size * 3);
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      const hit = inside(cls, (x + 0.5) / size, (y + 0.5) / size, p);
      const noise = (random() - 0.5) * 30;
      for (let ch = 0; ch < 3; ch++) {
        const base = hit ? fg[ch] : bg[ch] + (y / size) * 30;
        out[(y * size + x) * 3 + ch] = Math.max(0, Math.min(255, Math.round(base + noise)));
      }
    }
  }
  return out;
}

/** Writes `perClass` images per class under dir/<class>/; half PNG, half JPEG. Returns the count. */
export async function makeSyntheticDataset({ dir, perClass = 100, size = 40, seed = 0, classes = SYNTHETIC_CLASSES }: SyntheticOptions): Promise<number> {
  if (!Number.isInteger(perClass) || perClass < 1) throw new Error(`synthetic.perClass must be a positive integer, got ${perClass}`);
  if (!Number.isInteger(size) || size < 8) throw new Error(`synthetic.size must be an integer >= 8, got ${size}`);
  let written = 0;
  for (const [c, cls] of classes.entries()) {
    const classDir = join(dir, cls);
    await mkdir(classDir, { recursive: true });
    const random = mulberry32(seed * 1000003 + c * 7919 + 1);
    for (let i = 0; i < perClass; i++) {
      const raw = renderSynthetic(cls, size, random);
      const img = sharp(raw, { raw: { width: size, height: size, channels: 3 } });
      const png = i % 2 === 0;
      const data = png ? await img.png().toBuffer() : await img.jpeg({ quality: 92 }).toBuffer();
      await writeFile(join(classDir, `${String(i).padStart(5, '0')}.${png ? 'png' : 'jpg'}`), data);
      written++;
    }
  }
  return written;
}

// `node bin/run-ts.mjs scripts/synthetic.ts --out DIR [--per-class N] [--size S] [--seed K]`: the folder
// for a quick try or an end-to-end check (scripts/e2e-slurm.sh).
if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const { values } = parseArgs({ options: { out: { type: 'string' }, 'per-class': { type: 'string', default: '100' }, size: { type: 'string', default: '40' }, seed: { type: 'string', default: '0' } } });
  if (!values.out) {
    console.error('usage: synthetic.ts --out DIR [--per-class N] [--size S] [--seed K]');
    process.exit(2);
  }
  const written = await makeSyntheticDataset({ dir: values.out, perClass: Number(values['per-class']), size: Number(values.size), seed: Number(values.seed) });
  console.log(`synthetic: ${written} images in ${SYNTHETIC_CLASSES.length} class folders under ${values.out}`);
}
