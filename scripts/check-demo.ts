// Opt-in check of the export's demo page (`npm run check:demo`): trains a tiny classifier on
// synthetic images, exports it as tfjs (demo.html beside the model), opens the page in headless
// Chromium (Debian's `chromium`) once per test image and compares its predicted class with the
// classifier's own in Node. Needs /usr/bin/chromium (apt-get install chromium); prints one line per image.
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import sharp from 'sharp';
import * as tf from '@tensorflow/tfjs';
import { loadImages } from '../data/memory.ts';
import { layersModelFiles } from '../models/checkpoint.ts';
import { exportModel } from '../stages/export.ts';
import { finetune } from '../stages/finetune.ts';
import { ingest } from '../stages/ingest.ts';
import { pretrain } from '../stages/pretrain.ts';
import { makeSyntheticDataset, SYNTHETIC_CLASSES } from './synthetic.ts';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
if (!existsSync(CHROMIUM)) {
  console.error(`check-demo: ${CHROMIUM} not found (apt-get install chromium, or set CHROMIUM)`);
  process.exit(2);
}
const work = await mkdtemp(join(tmpdir(), 'check-demo-'));
const SIZE = 16;
await makeSyntheticDataset({ dir: join(work, 'images'), perClass: 24, size: 40, classes: SYNTHETIC_CLASSES.slice(0, 4) });
await ingest({ input: join(work, 'images'), outDir: join(work, 'data'), size: SIZE, log: () => {} });
await pretrain({ data: join(work, 'data'), outDir: join(work, 'pretrain'), epochs: 3, batchSize: 32, headLayers: 2, projectionDim: 32, log: () => {} });
await finetune({ data: join(work, 'data'), outDir: join(work, 'finetune'), pretrained: join(work, 'pretrain'), labels: '12-per-class', holdout: 4, epochs: 20, batchSize: 16, log: () => {} });
const { out } = await exportModel({ checkpoint: join(work, 'finetune'), format: 'tfjs', out: join(work, 'export') });
const page = pathToFileURL(join(out, 'demo.html')).href;

const images = await loadImages(join(work, 'data'));
const model = await tf.loadLayersModel(layersModelFiles(join(out)));
const per = SIZE * SIZE * 3;
let failures = 0;
// The last image of each class: one the classifier was not trained on.
for (let c = 0; c < images.classes.length; c++) {
  const row = images.labels.lastIndexOf(c);
  const pixels = images.pixels.subarray(row * per, (row + 1) * per);
  const expected = tf.tidy(() => (model.predict(tf.tensor4d(Float32Array.from(pixels, (v) => v / 255), [1, SIZE, SIZE, 3])) as tf.Tensor).argMax(1).dataSync()[0]);
  const png = await sharp(Buffer.from(pixels), { raw: { width: SIZE, height: SIZE, channels: 3 } }).png().toBuffer();
  const url = `${page}?src=${encodeURIComponent(`data:image/png;base64,${png.toString('base64')}`)}`;
  const dom = execFileSync(
    CHROMIUM,
    ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync',
      `--user-data-dir=${join(work, `chromium-${c}`)}`, '--virtual-time-budget=30000', '--dump-dom', url],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 120_000, maxBuffer: 64 << 20 }, // the DOM holds the inlined tfjs
  );
  const predicted = /<output id="predicted">([^<]*)<\/output>/.exec(dom)?.[1] ?? '(none)';
  const ok = predicted === images.classes[expected];
  if (!ok) failures++;
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${images.ids[row]}: page says ${predicted}, the classifier in Node says ${images.classes[expected]} (true class ${images.classes[c]})`);
}
model.dispose();
console.log(failures === 0 ? `check-demo: the page agrees with the classifier on all ${images.classes.length} images (${page.split('?')[0]})` : `check-demo: ${failures} disagreement(s)`);
process.exit(failures === 0 ? 0 : 1);
