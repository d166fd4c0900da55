// Benchmark: milliseconds per training step (forward + backward + SGD-momentum update) of the
// CIFAR ResNet-20 per backend and batch size, with the kernels that take the most of a step.
// usage: npm run bench:train-step [-- --json] [-- --backend wasm,onnxruntime,cpu] [-- --batch 64,256]
//        (several backends: one child process each)
//        [-- --model resnet20,resnet18]   (ResNet-18 at 32 px gets the CIFAR stem; e.g. --model resnet18 --batch 128)
import * as tf from '@tensorflow/tfjs';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { loadavg } from 'node:os';
import { useBackend, type BackendName } from '../models/engine/backend.ts';
import { buildEncoder } from '../models/resnet.ts';

const DEFAULT_MODELS = 'resnet20';
const INPUT_SIZE = 32; // CIFAR images
const TOP_KERNELS = 8;
// As /work/shared/reference/step_ref.py: SGD lr 0.01, momentum 0.9, loss mean(features²).
const LEARNING_RATE = 0.01;
const MOMENTUM = 0.9;

interface Result {
  bench: 'train-step';
  model: string;
  batch: number;
  backend: string;
  ms_per_step: number;
  /** CPU time of this process per step: on a machine shared with other jobs, closer than wall
   * time to what the step costs on an idle one (CPU above wall time: several threads). */
  cpu_ms_per_step: number;
  /** CPU ms of one inference forward pass of the same model and batch: the step's yardstick,
   * since step / forward changes little with machine load. */
  forward_cpu_ms: number;
  /** The same forward pass built with tf.layers.batchNormalization, i.e. what tfjs ships: the
   * 1000 ms target was set when this took ~236 ms, so it calibrates for machine load. */
  stock_forward_cpu_ms: number;
  steps: number;
  top_kernels: { kernel: string; share: number; ms_per_step: number }[];
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

function parseList(flag: string, value: string): string[] {
  const items = value.split(',').map((s) => s.trim()).filter(Boolean);
  if (items.length === 0) throw new Error(`--${flag} must be a comma-separated list, got '${value}'`);
  return items;
}

async function measure(modelName: string, backend: string, batch: number, warmup: number, steps: number): Promise<Result> {
  await useBackend(backend as BackendName);
  const { model } = buildEncoder({ name: modelName, inputSize: INPUT_SIZE });
  const optimizer = tf.train.momentum(LEARNING_RATE, MOMENTUM);
  const x = tf.randomNormal([batch, INPUT_SIZE, INPUT_SIZE, 3], 0, 1, 'float32', 0);
  const step = (): number => {
    const loss = optimizer.minimize(
      () => tf.mean(tf.square(model.apply(x, { training: true }) as tf.Tensor)) as tf.Scalar,
      true,
    ) as tf.Scalar;
    const value = loss.dataSync()[0]; // waits for the step on asynchronous backends
    loss.dispose();
    if (!Number.isFinite(value)) throw new Error(`loss is ${value} on ${backend}, batch ${batch}`);
    return value;
  };

  for (let i = 0; i < warmup; i++) step();
  const times: number[] = [];
  const cpuTimes: number[] = [];
  for (let i = 0; i < steps; i++) {
    const start = performance.now();
    const cpuStart = process.cpuUsage();
    step();
    const cpu = process.cpuUsage(cpuStart);
    times.push(performance.now() - start);
    cpuTimes.push((cpu.user + cpu.system) / 1000);
  }

  const forwardCpuMs = (m: tf.LayersModel): number => {
    const samples: number[] = [];
    for (let i = 0; i < Math.max(3, steps) + 1; i++) {
      const cpuStart = process.cpuUsage();
      const features = m.predict(x) as tf.Tensor;
      features.dataSync();
      const cpu = process.cpuUsage(cpuStart);
      features.dispose();
      if (i > 0) samples.push((cpu.user + cpu.system) / 1000); // the first call packs the filters
    }
    return median(samples);
  };
  const forwardMs = forwardCpuMs(model);
  // The same topology and weights with tfjs' own batch-norm layer.
  const topology = model.toJSON(null, false) as unknown as { config: { layers: { class_name: string }[] } };
  for (const layer of topology.config.layers) {
    if (layer.class_name === 'BatchNorm') layer.class_name = 'BatchNormalization';
  }
  const stock = await tf.models.modelFromJSON(topology as unknown as Parameters<typeof tf.models.modelFromJSON>[0]);
  stock.setWeights(model.getWeights());
  const stockForwardMs = forwardCpuMs(stock);
  stock.dispose();

  // One more step under the profiler; its per-kernel times give the shares (of the summed
  // kernel time, which is nearly all of a step on wasm and cpu).
  const profile = await tf.profile(() => {
    step();
  });
  const perKernel = new Map<string, number>();
  const backendName = tf.getBackend();
  for (const k of profile.kernels) {
    // Op-level entries (customGrad ops such as fusedConv2d__op) wrap kernels listed on their own.
    if (tf.getKernel(k.name, backendName) === undefined) continue;
    perKernel.set(k.name, (perKernel.get(k.name) ?? 0) + (k.kernelTimeMs as number));
  }
  const total = [...perKernel.values()].reduce((a, b) => a + b, 0);
  const top = [...perKernel.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, TOP_KERNELS)
    .map(([kernel, ms]) => ({ kernel, share: Number((ms / total).toFixed(3)), ms_per_step: Number(ms.toFixed(1)) }));

  x.dispose();
  optimizer.dispose(); // and its momentum accumulators
  model.dispose();
  return {
    bench: 'train-step',
    model: modelName,
    batch,
    backend,
    ms_per_step: Number(median(times).toFixed(1)),
    cpu_ms_per_step: Number(median(cpuTimes).toFixed(1)),
    forward_cpu_ms: Number(forwardMs.toFixed(1)),
    stock_forward_cpu_ms: Number(stockForwardMs.toFixed(1)),
    steps,
    top_kernels: top,
  };
}

function printTable(r: Result): void {
  console.log(
    `${r.model}  batch ${r.batch}  ${r.backend}: ${r.ms_per_step} ms/step wall, ${r.cpu_ms_per_step} ms/step CPU ` +
      `(median of ${r.steps}); inference forward ${r.forward_cpu_ms} ms CPU, with tfjs' batch norm ${r.stock_forward_cpu_ms} ms`,
  );
  for (const k of r.top_kernels) {
    console.log(`    ${k.kernel.padEnd(24)} ${(100 * k.share).toFixed(1).padStart(5)} %  ${k.ms_per_step.toFixed(1).padStart(8)} ms`);
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      json: { type: 'boolean', default: false },
      backend: { type: 'string', default: 'wasm' },
      batch: { type: 'string', default: '64,256' },
      model: { type: 'string', default: DEFAULT_MODELS },
      warmup: { type: 'string', default: '2' },
      steps: { type: 'string', default: '5' },
    },
  });
  const backends = parseList('backend', values.backend);
  const models = parseList('model', values.model);
  const batches = parseList('batch', values.batch).map((b) => {
    const n = Number(b);
    if (!Number.isInteger(n) || n < 1) throw new Error(`--batch entries must be positive integers, got '${b}'`);
    return n;
  });
  const warmup = Number(values.warmup);
  const steps = Number(values.steps);
  if (!Number.isInteger(warmup) || warmup < 0) throw new Error(`--warmup must be a non-negative integer, got '${values.warmup}'`);
  if (!Number.isInteger(steps) || steps < 1) throw new Error(`--steps must be a positive integer, got '${values.steps}'`);

  if (backends.length > 1) {
    // One process per backend: a backend cannot be measured after another in the same process
    // (onnxruntime keeps wasm single-threaded, and wasm's threads rule out onnxruntime after it).
    const launcher = fileURLToPath(new URL('../bin/run-ts.mjs', import.meta.url));
    const script = fileURLToPath(import.meta.url);
    const args = process.argv.slice(2).filter((a, i, all) => a !== '--backend' && all[i - 1] !== '--backend' && !a.startsWith('--backend='));
    for (const backend of backends) {
      execFileSync(process.execPath, [launcher, script, ...args, '--backend', backend], { stdio: 'inherit' });
    }
    return;
  }
  if (!values.json) {
    // Timings on a shared machine are only comparable together with its load.
    console.log(`load average ${loadavg().map((l) => l.toFixed(2)).join(' ')}; warm-up ${warmup}, median of ${steps} steps`);
  }
  for (const modelName of models) {
    for (const backend of backends) {
      for (const batch of batches) {
        const result = await measure(modelName, backend, batch, warmup, steps);
        if (values.json) console.log(JSON.stringify(result));
        else printTable(result);
      }
    }
  }
}

main().catch((err: unknown) => {
  console.error(`bench-train-step: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
});
