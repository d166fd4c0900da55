import { createRequire } from 'node:module';
import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { layersModelFiles } from '../../models/checkpoint.ts';
import { exportModel } from '../../stages/export.ts';
import { finetune } from '../../stages/finetune.ts';
import { pretrain } from '../../stages/pretrain.ts';
import { optionalOnnxRuntime, plainTfjsPredict, runCli, tinyImagesDataset } from '../helpers.ts';

const require = createRequire(import.meta.url);
const ort = optionalOnnxRuntime();

describe('export', () => {
  let pretrainDir: string;
  let classifierDir: string;
  beforeAll(async () => {
    const data = await tinyImagesDataset({ perClass: 8, size: 8 });
    pretrainDir = await mkdtemp(join(tmpdir(), 'ex-pretrain-'));
    await pretrain({ data, outDir: pretrainDir, epochs: 1, batchSize: 8, headLayers: 2, projectionDim: 16, backend: 'wasm', workers: 1 });
    classifierDir = await mkdtemp(join(tmpdir(), 'ex-finetune-'));
    await finetune({ data, outDir: classifierDir, pretrained: pretrainDir, labels: '4-per-class', epochs: 2, batchSize: 8, backend: 'wasm', workers: 1 });
  });

  it('writes a tfjs classifier plain tfjs loads in a fresh process, with classes and a model card', async () => {
    const out = join(await mkdtemp(join(tmpdir(), 'ex-out-')), 'tfjs');
    const result = await exportModel({ checkpoint: classifierDir, format: 'tfjs', out });
    expect(result.files).toEqual(['model.json', 'weights.bin', 'demo.html', 'classes.json', 'model-card.json']);
    // The demo page is one file: TensorFlow.js, the model and its weights inlined (checked in Chromium by npm run check:demo).
    const demo = await readFile(join(out, 'demo.html'), 'utf8');
    expect(demo).toContain('tf.loadLayersModel(tf.io.fromMemory');
    expect(demo).not.toMatch(/\/\*(TFJS|MODEL_JSON|WEIGHTS_BASE64|CLASSES)\*\/|__SIZE__/);
    const card = JSON.parse(await readFile(join(out, 'model-card.json'), 'utf8'));
    expect(card).toMatchObject({ format: 'tfjs', kind: 'classifier', input: { shape: [8, 8, 3], layout: 'NHWC' }, output: { shape: [4] } });
    expect(card.training_data_sha256).toMatch(/^[0-9a-f]{64}$/);
    expect(card.parameters).toBeGreaterThan(1000);
    // Run outside a run dir, the stage wrote no manifest: no figures to copy.
    expect(card.evaluation).toEqual({});
    expect(JSON.parse(await readFile(join(out, 'classes.json'), 'utf8'))).toHaveLength(4);
    const plain = await plainTfjsPredict(out, 8);
    const model = await tf.loadLayersModel(layersModelFiles(join(classifierDir, 'checkpoint', 'classifier')));
    const n = 2 * 8 * 8 * 3;
    const ours = tf.tidy(() => Array.from((model.predict(tf.div(tf.range(0, n), n).reshape([2, 8, 8, 3])) as tf.Tensor).dataSync()));
    model.dispose();
    plain.y.forEach((v, i) => expect(v).toBeCloseTo(ours[i], 4));
  });

  it.skipIf(ort === null)('writes an ONNX model onnxruntime runs to the tfjs logits, which an independent decoder reads', async () => {
    const out = join(await mkdtemp(join(tmpdir(), 'ex-out-')), 'onnx');
    const cli = await runCli(['export', '--checkpoint', classifierDir, '--format', 'onnx', '--out', out, '--json']);
    expect(cli.code, cli.err).toBe(0);
    expect(JSON.parse(cli.out).files).toEqual(['model.onnx', 'classes.json', 'model-card.json']);
    const bytes = await readFile(join(out, 'model.onnx'));
    // An independent reader (onnx-proto: the ONNX schema compiled by protobufjs).
    const { onnx } = require('onnx-proto') as { onnx: { ModelProto: { decode(b: Uint8Array): { graph: { node: { opType: string }[]; input: { name: string }[] }; metadataProps: { key: string; value: string }[]; opsetImport: { version: { toNumber?: () => number } | number }[] } } } };
    const decoded = onnx.ModelProto.decode(bytes);
    expect(decoded.graph.input.map((i) => i.name)).toEqual(['pixels']);
    const ops = new Set(decoded.graph.node.map((node) => node.opType));
    expect([...ops].sort()).toEqual(expect.arrayContaining(['Add', 'Conv', 'Gemm', 'GlobalAveragePool', 'Relu', 'Transpose']));
    expect(ops.has('BatchNormalization')).toBe(false);
    expect(Object.fromEntries(decoded.metadataProps.map((p) => [p.key, p.value]))).toMatchObject({ input_layout: 'NHWC', kind: 'classifier' });

    const session = await ort!.InferenceSession.create(bytes);
    const model = await tf.loadLayersModel(layersModelFiles(join(classifierDir, 'checkpoint', 'classifier')));
    const x = tf.randomUniform([5, 8, 8, 3], 0, 1, 'float32', 4);
    const expected = Array.from((model.predict(x) as tf.Tensor).dataSync());
    const got = Array.from((await session.run({ pixels: new ort!.Tensor('float32', x.dataSync() as Float32Array, [5, 8, 8, 3]) })).output.data as Float32Array);
    got.forEach((v, i) => expect(Math.abs(v - expected[i])).toBeLessThan(1e-4 * Math.max(1, Math.abs(expected[i]))));
    x.dispose();
    model.dispose();
  });

  it('exports an encoder (features out), and refuses an unknown format or a missing checkpoint', async () => {
    const out = join(await mkdtemp(join(tmpdir(), 'ex-out-')), 'enc');
    const result = await exportModel({ checkpoint: pretrainDir, format: 'tfjs', out });
    expect(result.card).toMatchObject({ kind: 'encoder', classes: null, output: { shape: [64] } });
    await expect(exportModel({ checkpoint: pretrainDir, format: 'keras' as never, out })).rejects.toThrow('export.format must be one of tfjs, onnx, got "keras"');
    await expect(exportModel({ checkpoint: join(out, 'none'), format: 'onnx', out })).rejects.toThrow(/no checkpoint there/);
    const cli = await runCli(['export', '--checkpoint', pretrainDir, '--format', 'keras', '--out', out]);
    expect(cli.code).toBe(2);
  });
});
