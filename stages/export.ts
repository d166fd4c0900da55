// `pipeline export`: a trained classifier (finetune, baseline, distill) or encoder (pretrain) as a
// model people can ship: tfjs (model.json + weights.bin) or ONNX, with classes.json and a model card.
import { mkdir, readFile, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { basename, dirname, join } from 'node:path';
import { replaceDir, tempPath, writeFileAtomic } from '../data/files.ts';
import { layersModelFiles, loadCheckpoint } from '../models/checkpoint.ts';
import { exportOnnx } from '../models/export-onnx.ts';
import { requireCheckpoint } from './training/checkpoints.ts';
import { TrainingInputError } from './training/loop.ts';

export const EXPORT_FORMATS = ['tfjs', 'onnx'] as const;
export type ExportFormat = (typeof EXPORT_FORMATS)[number];

export interface ExportOptions {
  /** A finetune, baseline, distill or pretrain stage directory, or its checkpoint/. */
  checkpoint: string;
  format: ExportFormat;
  /** Directory to write; replaced as a whole once the export is complete. */
  out: string;
  log?: (line: string) => void;
}

export interface ModelCard {
  format: ExportFormat;
  kind: 'classifier' | 'encoder';
  architecture: string;
  parameters: number;
  input: { shape: [number, number, number]; layout: 'NHWC'; scaling: string; name?: string };
  output: { name?: string; shape: number[]; meaning: string };
  classes: string[] | null;
  training_data_sha256: string | null;
  /** Figures of the checkpoint's own stage and of any evaluate run on it, from their manifests. */
  evaluation: Record<string, unknown>;
  source: string;
  exported_at: string;
}

export interface ExportResult {
  out: string;
  files: string[];
  card: ModelCard;
}

async function readJson(path: string): Promise<Record<string, unknown> | null> {
  try {
    return JSON.parse(await readFile(path, 'utf8')) as Record<string, unknown>;
  } catch {
    return null;
  }
}

export async function exportModel(options: ExportOptions): Promise<ExportResult> {
  if (!(EXPORT_FORMATS as readonly string[]).includes(options.format)) {
    throw new TrainingInputError(`export.format must be one of ${EXPORT_FORMATS.join(', ')}, got ${JSON.stringify(options.format)}`);
  }
  const log = options.log ?? (() => {});
  const dir = await requireCheckpoint(options.checkpoint, `export.checkpoint ${options.checkpoint}: no checkpoint there (give a finetune, baseline, distill or pretrain stage directory)`);
  const peek = await loadCheckpoint(dir, { models: [] });
  const kind = peek.available.includes('classifier') ? 'classifier' : peek.available.includes('encoder') ? 'encoder' : null;
  if (kind === null) throw new TrainingInputError(`export.checkpoint ${dir}: holds [${peek.available.join(', ')}], neither a classifier nor an encoder`);
  const state = peek.state as { key?: { datasetSha256?: string; model?: string; student?: string }; config?: { classes?: string[] } };
  const classes = state.config?.classes ?? null;
  const stageDir = dirname(dir);

  const model = (await loadCheckpoint(dir, { models: [kind] })).models[kind];
  try {
    const [, h, w, c] = model.inputs[0].shape as number[];
    const outShape = (model.outputs[0].shape as number[]).slice(1);
    const evaluation: Record<string, unknown> = {};
    const own = await readJson(join(stageDir, 'manifest.json'));
    if (own?.metrics) evaluation[String(own.stage ?? basename(stageDir))] = own.metrics;
    const evaluated = await readJson(join(dirname(stageDir), `evaluate-${basename(stageDir)}`, 'manifest.json'));
    if (evaluated?.metrics) evaluation[String(evaluated.stage)] = evaluated.metrics;
    const card: ModelCard = {
      format: options.format,
      kind,
      architecture: model.layers.filter((l) => 'layers' in l).map((l) => l.name).join(' → ') || model.name,
      parameters: model.countParams(),
      input: { shape: [h, w, c], layout: 'NHWC', scaling: 'RGB float32 in [0, 1] (pixel / 255), the image resized (shorter side) and centre-cropped as ingest does', ...(options.format === 'onnx' ? { name: 'pixels' } : {}) },
      output: { ...(options.format === 'onnx' ? { name: 'output' } : {}), shape: outShape, meaning: kind === 'classifier' ? 'logits (softmax gives class probabilities, in the order of classes.json)' : 'encoder features' },
      classes,
      training_data_sha256: state.key?.datasetSha256 ?? null,
      evaluation,
      source: dir,
      exported_at: new Date().toISOString(),
    };

    // Everything goes into a temporary sibling first; `out` is replaced only by a complete export.
    await mkdir(dirname(options.out), { recursive: true });
    const tmp = tempPath(options.out);
    await rm(tmp, { recursive: true, force: true });
    await mkdir(tmp, { recursive: true });
    try {
      const files: string[] = [];
      if (options.format === 'tfjs') {
        await model.save(layersModelFiles(tmp));
        files.push('model.json', 'weights.bin');
        if (kind === 'classifier') {
          await writeFileAtomic(join(tmp, 'demo.html'), await demoPage(tmp, classes, h));
          files.push('demo.html');
        }
      } else {
        const bytes = exportOnnx(model, { metadata: { kind, ...(classes ? { classes: JSON.stringify(classes) } : {}) } });
        await writeFileAtomic(join(tmp, 'model.onnx'), bytes);
        files.push('model.onnx');
      }
      if (classes) {
        await writeFileAtomic(join(tmp, 'classes.json'), JSON.stringify(classes) + '\n');
        files.push('classes.json');
      }
      await writeFileAtomic(join(tmp, 'model-card.json'), JSON.stringify(card, null, 2) + '\n');
      files.push('model-card.json');
      await replaceDir(tmp, options.out);
      log(`export: ${kind} (${card.parameters} parameters, ${h}x${w} px) as ${options.format} → ${options.out} (${files.join(', ')})`);
      return { out: options.out, files, card };
    } catch (err) {
      await rm(tmp, { recursive: true, force: true });
      throw err;
    }
  } finally {
    model.dispose();
  }
}

/**
 * A page that classifies an image dropped on it, in one file that opens from disk with no network:
 * docs/demo/template.html with TensorFlow.js, the exported model.json and its weights inlined.
 */
async function demoPage(exportDir: string, classes: string[] | null, size: number): Promise<string> {
  const template = await readFile(fileURLToPath(new URL('../docs/demo/template.html', import.meta.url)), 'utf8');
  const tfjs = await readFile(createRequire(import.meta.url).resolve('@tensorflow/tfjs/dist/tf.min.js'), 'utf8');
  const modelJson = await readFile(join(exportDir, 'model.json'), 'utf8');
  const weights = (await readFile(join(exportDir, 'weights.bin'))).toString('base64');
  // Function replacers: the inlined sources hold `$` patterns that a replacement string would expand.
  return template
    .replace('/*TFJS*/', () => tfjs.replace(/<\/script/gi, '<\\/script'))
    .replace('/*MODEL_JSON*/', () => modelJson.replace(/<\/script/gi, '<\\/script'))
    .replace('/*WEIGHTS_BASE64*/', () => weights)
    .replace('/*CLASSES*/', () => JSON.stringify(classes))
    .replaceAll('__SIZE__', String(size));
}
