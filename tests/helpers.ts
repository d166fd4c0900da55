// Shared test helpers: tensor comparison, the tests' seeded random numbers, tiny datasets.
import { execFileSync } from 'node:child_process';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import * as tf from '@tensorflow/tfjs';
import { expect } from 'vitest';
import { writeManifest } from '../data/manifest.ts';
import { SCHEMA_VERSION, schemaInfo } from '../data/schemas.ts';
import { writeShards } from '../data/shards.ts';
import { mulberry32, renderSynthetic, SYNTHETIC_CLASSES } from '../scripts/synthetic.ts';

/**
 * The tests' one seeded generator, uniform in [0, 1): mulberry32, the same function that draws the
 * synthetic demo dataset, so a failure reproduces from its seed.
 */
export { mulberry32 } from '../scripts/synthetic.ts';

/** Asserts two tensors (or arrays) have the same shape and values within atol + rtol·|expected|. */
export function expectTensorClose(
  actual: tf.Tensor | ArrayLike<number>,
  expected: tf.Tensor | ArrayLike<number>,
  { atol = 1e-5, rtol = 1e-4 }: { atol?: number; rtol?: number } = {},
): void {
  if (actual instanceof tf.Tensor && expected instanceof tf.Tensor) {
    expect(actual.shape).toEqual(expected.shape);
  }
  const a = actual instanceof tf.Tensor ? actual.dataSync() : actual;
  const e = expected instanceof tf.Tensor ? expected.dataSync() : expected;
  expect(a.length).toBe(e.length);
  let worst = 0;
  let worstAt = -1;
  for (let i = 0; i < a.length; i++) {
    const excess = Math.abs(a[i] - e[i]) - (atol + rtol * Math.abs(e[i]));
    if (!(excess <= worst)) {
      worst = excess;
      worstAt = i;
    }
  }
  if (worstAt >= 0) {
    expect.fail(`tensors differ at flat index ${worstAt}: got ${a[worstAt]}, expected ${e[worstAt]} (atol ${atol}, rtol ${rtol})`);
  }
}

/**
 * Deterministic values in [-1, 1) (an LCG), so every backend in a parity test sees the same numbers.
 * Kept as its own LCG: on mulberry32 it would yield other numbers than those the parity tests were written against.
 */
export function seededValues(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = s / 2 ** 31 - 1;
  }
  return out;
}

/** A tiny labeled images dataset written straight to shards: 4 synthetic classes × perClass images of `size` px. */
export async function tinyImagesDataset({ perClass, size, seed = 7, maxRows }: { perClass: number; size: number; seed?: number; maxRows?: number }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'tiny-images-'));
  const classes = SYNTHETIC_CLASSES.slice(0, 4);
  const random = mulberry32(seed);
  const ids: string[] = [];
  const labels: number[] = [];
  const pixels = new Uint8Array(classes.length * perClass * size * size * 3);
  classes.forEach((cls, c) => {
    for (let i = 0; i < perClass; i++) {
      pixels.set(renderSynthetic(cls, size, random), ids.length * size * size * 3);
      ids.push(`${cls}/${i}`);
      labels.push(c);
    }
  });
  const info = schemaInfo('images', { imageShape: [size, size, 3] }, [...classes]);
  const shards = await writeShards({ dir, schema: info, ...(maxRows ? { maxRows } : {}) }, [{ id: ids, label: labels, image: pixels }]);
  await writeManifest(dir, {
    schema_version: SCHEMA_VERSION,
    schema: 'images',
    rows: ids.length,
    classes: [...classes],
    class_counts: Object.fromEntries(classes.map((c) => [c, perClass])),
    image_shape: [size, size, 3],
    shards,
  });
  return dir;
}

/** Runs the `pipeline` CLI in-process and captures what it prints. */
export async function runCli(args: string[]): Promise<{ code: number; out: string; err: string }> {
  // Loaded here, not at the top: most tests using these helpers never need the CLI and its stages.
  const { main } = await import('../pipeline/cli.ts');
  const out: string[] = [];
  const err: string[] = [];
  const code = await main(args, { stdout: (l) => out.push(l), stderr: (l) => err.push(l), stderrStream: { isTTY: false, write: () => true } as unknown as NodeJS.WriteStream });
  return { code, out: out.join('\n'), err: err.join('\n') };
}

/**
 * Loads the tfjs model in `modelDir` (model.json + weights.bin) in a fresh Node process that has
 * only plain @tensorflow/tfjs (stock layers, cpu backend) and runs it on [2, size, size, 3] ramp
 * pixels in [0, 1); returns its layer classes and flat outputs.
 */
export async function plainTfjsPredict(modelDir: string, size: number): Promise<{ layers: string[]; y: number[] }> {
  const script = join(await mkdtemp(join(tmpdir(), 'plain-tfjs-')), 'plain-load.mjs');
  const n = 2 * size * size * 3;
  await writeFile(
    script,
    `import * as tf from ${JSON.stringify(pathToFileURL(createRequire(import.meta.url).resolve('@tensorflow/tfjs')).href)};
import { readFileSync } from 'node:fs';
const dir = ${JSON.stringify(modelDir)};
const json = JSON.parse(readFileSync(dir + '/model.json', 'utf8'));
const weights = readFileSync(dir + '/weights.bin');
const model = await tf.loadLayersModel(tf.io.fromMemory({ modelTopology: json.modelTopology, weightSpecs: json.weightsManifest[0].weights, weightData: weights.buffer.slice(weights.byteOffset, weights.byteOffset + weights.byteLength) }));
const x = tf.div(tf.range(0, ${n}), ${n}).reshape([2, ${size}, ${size}, 3]);
console.log(JSON.stringify({ layers: model.layers.map((l) => l.getClassName()), y: Array.from(model.predict(x).dataSync()) }));
`,
  );
  return JSON.parse(execFileSync(process.execPath, [script], { encoding: 'utf8' }).trim().split('\n').pop()!);
}

/** onnxruntime-node (an optional dependency), or null where it is not installed: for `describe.skipIf`. */
export function optionalOnnxRuntime(): typeof import('onnxruntime-node') | null {
  try {
    return createRequire(import.meta.url)('onnxruntime-node') as typeof import('onnxruntime-node');
  } catch {
    return null;
  }
}
