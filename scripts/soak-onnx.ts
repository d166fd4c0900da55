// Soak test of the onnxruntime backend's native memory: runs many ResNet training steps and
// reports resident set size (RSS) growth, which tf.memory() cannot see (ORT's arenas, sessions).
// usage: node bin/run-ts.mjs scripts/soak-onnx.ts [--steps 500] [--batch 32] [--model resnet20] [--every 50]
import * as tf from '@tensorflow/tfjs';
import { loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import { useBackend } from '../models/engine/backend.ts';
import { registerOnnxruntimeBackend } from '../models/engine/onnx/register.ts';
import { buildEncoder } from '../models/resnet.ts';

const MB = 1024 * 1024;

function positiveInt(flag: string, value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new Error(`--${flag} must be a positive integer, got '${value}'`);
  return n;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      steps: { type: 'string', default: '500' },
      batch: { type: 'string', default: '32' },
      model: { type: 'string', default: 'resnet20' },
      every: { type: 'string', default: '50' },
    },
  });
  const steps = positiveInt('steps', values.steps);
  const batch = positiveInt('batch', values.batch);
  const every = positiveInt('every', values.every);

  await useBackend('onnxruntime');
  const ort = registerOnnxruntimeBackend(); // the registration useBackend made: for its stats
  const { model } = buildEncoder({ name: values.model, inputSize: 32 });
  const optimizer = tf.train.momentum(0.01, 0.9);
  const x = tf.randomNormal([batch, 32, 32, 3], 0, 1, 'float32', 0);
  const step = (): number => {
    const loss = optimizer.minimize(() => tf.mean(tf.square(model.apply(x, { training: true }) as tf.Tensor)) as tf.Scalar, true) as tf.Scalar;
    const value = loss.dataSync()[0];
    loss.dispose();
    if (!Number.isFinite(value)) throw new Error(`loss is ${value}`);
    return value;
  };

  // RSS after the first steps, when every session exists and ORT's arenas have their working
  // size: growth from there on is what a long run would accumulate.
  const warmup = Math.min(5, steps);
  for (let i = 0; i < warmup; i++) step();
  const base = process.memoryUsage();
  const tensors = tf.memory().numTensors;
  console.log(
    `${values.model} batch ${batch} on ${tf.getBackend()} (onnxruntime-node ${ort.ortVersion}, ${ort.threads} threads); ` +
      `load ${loadavg().map((l) => l.toFixed(2)).join(' ')}; after ${warmup} warm-up steps: RSS ${(base.rss / MB).toFixed(1)} MB, ` +
      `${ort.stats().sessions} sessions, ${tensors} tensors`,
  );
  const start = performance.now();
  let peak = base.rss;
  for (let i = 1; i <= steps; i++) {
    const loss = step();
    const rss = process.memoryUsage().rss;
    peak = Math.max(peak, rss);
    if (i % every === 0 || i === steps) {
      console.log(
        `step ${String(i).padStart(5)}  loss ${loss.toFixed(5)}  RSS ${(rss / MB).toFixed(1)} MB (${((rss - base.rss) / MB >= 0 ? '+' : '')}${((rss - base.rss) / MB).toFixed(1)})  ` +
          `tensors ${tf.memory().numTensors}  ${((performance.now() - start) / i).toFixed(0)} ms/step`,
      );
    }
  }
  const end = process.memoryUsage();
  console.log(
    JSON.stringify({
      soak: 'onnxruntime',
      model: values.model,
      batch,
      steps,
      rss_start_mb: Number((base.rss / MB).toFixed(1)),
      rss_end_mb: Number((end.rss / MB).toFixed(1)),
      rss_peak_mb: Number((peak / MB).toFixed(1)),
      rss_growth_mb: Number(((end.rss - base.rss) / MB).toFixed(1)),
      tensor_growth: tf.memory().numTensors - tensors,
      sessions: ort.stats().sessions,
    }),
  );
  x.dispose();
  optimizer.dispose();
  model.dispose();
}

main().catch((err: unknown) => {
  console.error(`soak-onnx: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
});
