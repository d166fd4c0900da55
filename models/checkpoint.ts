// Training checkpoints on disk: models in the tfjs LayersModel format (model.json + weights.bin),
// optimizer state and run state, written atomically so a crash never leaves half a checkpoint.
//
// Layout of `<stage>/checkpoint/` (the directory the caller names):
//   <model>/model.json, <model>/weights.bin   one sub-directory per named model (`encoder`, `head`),
//                                             each loadable on its own by tf.loadLayersModel
//   optimizer.json, optimizer.bin             optimizer class, config and state (if one was given)
//   state.json                                the caller's JSON (epoch, step, rng state, ...)
//   checkpoint.json                           index: models, files and their byte sizes; written last
// Sub-directories rather than one combined model because the stages need the parts separately
// (fine-tuning takes the encoder and a truncated head, distillation replaces the head) and a
// combined functional model would have to be taken apart by layer names after loading.
// The one thing models/ imports of ours: data/files.ts, the project's atomic-write helpers.
import { mkdir, readFile, rm, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { exists, leftovers, removeStaleLeftovers, replaceDir, syncDir, tempPath, writeFileSynced } from '../data/files.ts';

export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

export interface CheckpointContents {
  /** Models by name; a name becomes a sub-directory, so letters, digits, `_` and `-` only. */
  models: Record<string, tf.LayersModel>;
  /** Its getWeights() are saved; tfjs's own optimizers work too. */
  optimizer?: tf.Optimizer;
  /** Anything JSON: epoch, step, rng state. */
  state?: JsonValue;
}

export interface LoadCheckpointOptions {
  /** Models to load (default: all in the checkpoint); each must be there. */
  models?: string[];
  /** Receives the saved optimizer state via setWeights; must be of the saved class. */
  optimizer?: tf.Optimizer;
}

export interface LoadedCheckpoint {
  models: Record<string, tf.LayersModel>;
  state: JsonValue;
  /** The directory actually read: `dir`, or the previous checkpoint an interrupted save left aside. */
  path: string;
  /** Names of every model the checkpoint holds (loaded or not). */
  available: string[];
}

/** A checkpoint that is missing, incomplete or corrupt; `file` is the file at fault. */
export class CheckpointError extends Error {
  constructor(
    readonly file: string,
    problem: string,
  ) {
    super(`checkpoint file ${file}: ${problem}`);
    this.name = 'CheckpointError';
  }
}

const INDEX = 'checkpoint.json';
const STATE = 'state.json';
const OPTIMIZER_JSON = 'optimizer.json';
const OPTIMIZER_BIN = 'optimizer.bin';
const MODEL_JSON = 'model.json';
const WEIGHTS_BIN = 'weights.bin';
const FORMAT = 'simclr-pipeline-checkpoint';
const FORMAT_VERSION = 1;

interface CheckpointIndex {
  format: typeof FORMAT;
  version: number;
  saved_at: string;
  models: string[];
  optimizer: { class_name: string } | null;
  files: { path: string; bytes: number }[];
}

interface OptimizerJson {
  class_name: string;
  config: unknown;
  weights_path: string;
  weights: tf.io.WeightsManifestEntry[];
}

async function readRequired(path: string): Promise<Buffer> {
  try {
    return await readFile(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new CheckpointError(path, code === 'ENOENT' ? 'is missing' : `cannot be read (${code ?? String(err)})`);
  }
}

async function readJson<T>(path: string): Promise<T> {
  const text = (await readRequired(path)).toString('utf8');
  try {
    return JSON.parse(text) as T;
  } catch (err) {
    throw new CheckpointError(path, `is not valid JSON (${(err as Error).message}); the file is truncated or corrupt`);
  }
}

const BYTES_PER_VALUE: Record<string, number> = { float32: 4, float16: 2, int32: 4, uint16: 2, uint8: 1, bool: 1, complex64: 8 };

/** Bytes the specs occupy in a weights file, or null for string weights (variable length). */
function specBytes(specs: tf.io.WeightsManifestEntry[]): number | null {
  let total = 0;
  for (const spec of specs) {
    const perValue = BYTES_PER_VALUE[spec.quantization?.dtype ?? spec.dtype];
    if (perValue === undefined) return null;
    total += tf.util.sizeFromShape(spec.shape) * perValue;
  }
  return total;
}

function checkLength(file: string, data: ArrayBuffer | Uint8Array, specs: tf.io.WeightsManifestEntry[], describedBy: string): void {
  const expected = specBytes(specs);
  if (expected !== null && data.byteLength !== expected) {
    throw new CheckpointError(file, `has ${data.byteLength} bytes but ${describedBy} describes ${expected}; the file is truncated or corrupt`);
  }
}

function toArrayBuffer(data: Buffer): ArrayBuffer {
  return data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength) as ArrayBuffer;
}

/**
 * A tf.io handler for a directory holding `model.json` + `weights.bin`, the layout of tfjs's own
 * `file://` handler (which only tfjs-node has): `model.save(layersModelFiles(dir))` and
 * `tf.loadLayersModel(layersModelFiles(dir))`. Load checks the weight bytes against the manifest and
 * names the file at fault.
 */
export function layersModelFiles(modelDir: string): tf.io.IOHandler {
  const jsonPath = join(modelDir, MODEL_JSON);
  return {
    async save(artifacts: tf.io.ModelArtifacts): Promise<tf.io.SaveResult> {
      if (artifacts.modelTopology instanceof ArrayBuffer) {
        throw new Error(`layersModelFiles(${modelDir}): binary (graph-model) topologies are not supported`);
      }
      const weightData = tf.io.CompositeArrayBuffer.join(artifacts.weightData ?? []);
      const modelJson: tf.io.ModelJSON = {
        modelTopology: artifacts.modelTopology ?? {},
        format: artifacts.format,
        generatedBy: artifacts.generatedBy,
        convertedBy: artifacts.convertedBy,
        weightsManifest: [{ paths: [WEIGHTS_BIN], weights: artifacts.weightSpecs ?? [] }],
        ...(artifacts.trainingConfig ? { trainingConfig: artifacts.trainingConfig } : {}),
        ...(artifacts.userDefinedMetadata ? { userDefinedMetadata: artifacts.userDefinedMetadata } : {}),
      };
      await mkdir(modelDir, { recursive: true });
      await writeFileSynced(join(modelDir, WEIGHTS_BIN), new Uint8Array(weightData));
      await writeFileSynced(jsonPath, JSON.stringify(modelJson));
      return { modelArtifactsInfo: tf.io.getModelArtifactsInfoForJSON(artifacts) };
    },

    async load(): Promise<tf.io.ModelArtifacts> {
      const modelJson = await readJson<tf.io.ModelJSON>(jsonPath);
      if (modelJson.modelTopology == null || !Array.isArray(modelJson.weightsManifest)) {
        throw new CheckpointError(jsonPath, 'lacks modelTopology or weightsManifest; not a tfjs LayersModel model.json');
      }
      return tf.io.getModelArtifactsForJSON(modelJson, async (manifest) => {
        const specs: tf.io.WeightsManifestEntry[] = [];
        const buffers: ArrayBuffer[] = [];
        for (const group of manifest) {
          const groupData = await Promise.all(group.paths.map((p) => readRequired(join(modelDir, p))));
          const joined = Buffer.concat(groupData);
          checkLength(join(modelDir, group.paths.join('+')), joined, group.weights, MODEL_JSON);
          specs.push(...group.weights);
          buffers.push(toArrayBuffer(joined));
        }
        return [specs, tf.io.CompositeArrayBuffer.join(buffers)];
      });
    },
  };
}

const MODEL_NAME = /^[A-Za-z0-9_-]+$/;

/**
 * Saves a checkpoint to `dir` (e.g. `<run>/pretrain/checkpoint`), replacing any previous one
 * atomically: everything is written and flushed into `<dir>.tmp-<pid>`, the old `dir` is renamed
 * to `<dir>.old-<pid>`, the new one renamed to `dir`, and only then the old one removed. A crash
 * leaves either the old or the new checkpoint at `dir`, or (between the two renames) none at `dir`
 * and the old one at `<dir>.old-<pid>`, where {@link loadCheckpoint} finds it.
 */
export async function saveCheckpoint(dir: string, contents: CheckpointContents): Promise<void> {
  const names = Object.keys(contents.models);
  if (names.length === 0) throw new Error('saveCheckpoint: contents.models must name at least one model');
  for (const name of names) {
    if (!MODEL_NAME.test(name)) throw new Error(`saveCheckpoint: model name '${name}' must use only letters, digits, '_' and '-'`);
  }
  const stateText = JSON.stringify(contents.state ?? null, null, 2);
  if (stateText === undefined) throw new Error('saveCheckpoint: contents.state must be JSON-serialisable');

  const tmp = tempPath(dir);
  await mkdir(dirname(dir), { recursive: true });
  await rm(tmp, { recursive: true, force: true });
  await mkdir(tmp);
  try {
    const files: CheckpointIndex['files'] = [];
    const record = async (relative: string) => files.push({ path: relative, bytes: (await stat(join(tmp, relative))).size });

    for (const name of names) {
      await contents.models[name].save(layersModelFiles(join(tmp, name)));
      await record(join(name, MODEL_JSON));
      await record(join(name, WEIGHTS_BIN));
    }

    let optimizerInfo: CheckpointIndex['optimizer'] = null;
    if (contents.optimizer) {
      const optimizer = contents.optimizer;
      const weights = await optimizer.getWeights();
      try {
        const { data, specs } = await tf.io.encodeWeights(weights);
        await writeFileSynced(join(tmp, OPTIMIZER_BIN), new Uint8Array(tf.io.CompositeArrayBuffer.join(data)));
        const json: OptimizerJson = { class_name: optimizer.getClassName(), config: optimizer.getConfig(), weights_path: OPTIMIZER_BIN, weights: specs };
        await writeFileSynced(join(tmp, OPTIMIZER_JSON), JSON.stringify(json, null, 2));
      } finally {
        // tfjs's own optimizers hand out their live variables; ours hand out copies.
        tf.dispose(weights.map((w) => w.tensor).filter((t) => !(t instanceof tf.Variable)));
      }
      await record(OPTIMIZER_BIN);
      await record(OPTIMIZER_JSON);
      optimizerInfo = { class_name: optimizer.getClassName() };
    }

    await writeFileSynced(join(tmp, STATE), stateText);
    await record(STATE);

    const index: CheckpointIndex = { format: FORMAT, version: FORMAT_VERSION, saved_at: new Date().toISOString(), models: names, optimizer: optimizerInfo, files };
    await writeFileSynced(join(tmp, INDEX), JSON.stringify(index, null, 2));
    for (const name of names) await syncDir(join(tmp, name));
    await syncDir(tmp);
  } catch (err) {
    await rm(tmp, { recursive: true, force: true });
    throw err;
  }

  await replaceDir(tmp, dir);
  await removeStaleLeftovers(dir);
}

/** The directory holding the last complete checkpoint for `dir`, or null when there is none. */
export async function findCheckpoint(dir: string): Promise<string | null> {
  if (await exists(dir)) return dir;
  // Between saveCheckpoint's two renames the previous checkpoint sits at <dir>.old-<pid>.
  const candidates: { path: string; mtime: number }[] = [];
  for (const { path, kind } of await leftovers(dir)) {
    if (kind === 'old' && (await exists(join(path, INDEX)))) candidates.push({ path, mtime: (await stat(join(path, INDEX))).mtimeMs });
  }
  candidates.sort((a, b) => b.mtime - a.mtime);
  return candidates[0]?.path ?? null;
}

/**
 * Loads a checkpoint written by {@link saveCheckpoint}: checks the index and every file's size,
 * loads the models, restores the optimizer state into `options.optimizer` and returns the state.
 * Throws a {@link CheckpointError} naming the file when anything is missing, truncated or corrupt.
 * The caller owns (and disposes) the returned models.
 */
export async function loadCheckpoint(dir: string, options: LoadCheckpointOptions = {}): Promise<LoadedCheckpoint> {
  const path = await findCheckpoint(dir);
  if (path === null) throw new CheckpointError(dir, 'is missing: no checkpoint has been saved there');
  const indexPath = join(path, INDEX);
  if (!(await exists(indexPath))) throw new CheckpointError(indexPath, 'is missing, so the checkpoint is incomplete');
  const index = await readJson<CheckpointIndex>(indexPath);
  if (index.format !== FORMAT || index.version !== FORMAT_VERSION || !Array.isArray(index.models) || !Array.isArray(index.files)) {
    throw new CheckpointError(indexPath, `is not a ${FORMAT} version ${FORMAT_VERSION} index`);
  }
  for (const file of index.files) {
    const filePath = join(path, file.path);
    let size: number;
    try {
      size = (await stat(filePath)).size;
    } catch {
      throw new CheckpointError(filePath, `is missing (listed in ${INDEX})`);
    }
    if (size !== file.bytes) throw new CheckpointError(filePath, `has ${size} bytes but ${INDEX} records ${file.bytes}; the file is truncated or corrupt`);
  }

  const wanted = options.models ?? index.models;
  for (const name of wanted) {
    if (!index.models.includes(name)) throw new CheckpointError(join(path, name), `is missing: the checkpoint holds models [${index.models.join(', ')}]`);
  }
  const state = await readJson<JsonValue>(join(path, STATE));

  const models: Record<string, tf.LayersModel> = {};
  try {
    for (const name of wanted) models[name] = await tf.loadLayersModel(layersModelFiles(join(path, name)));
    if (options.optimizer) await restoreOptimizer(path, index, options.optimizer);
  } catch (err) {
    for (const model of Object.values(models)) model.dispose();
    throw err;
  }
  return { models, state, path, available: [...index.models] };
}

async function restoreOptimizer(path: string, index: CheckpointIndex, optimizer: tf.Optimizer): Promise<void> {
  const jsonPath = join(path, OPTIMIZER_JSON);
  if (index.optimizer === null) throw new CheckpointError(jsonPath, 'is missing: the checkpoint was saved without optimizer state');
  const json = await readJson<OptimizerJson>(jsonPath);
  if (json.class_name !== optimizer.getClassName()) {
    throw new CheckpointError(jsonPath, `holds state of a '${json.class_name}' optimizer, not of the '${optimizer.getClassName()}' given`);
  }
  const binPath = join(path, json.weights_path);
  const data = await readRequired(binPath);
  checkLength(binPath, data, json.weights, OPTIMIZER_JSON);
  const decoded = tf.io.decodeWeights(toArrayBuffer(data), json.weights);
  // decodeWeights returns a map; the specs keep the order getWeights gave ('iter' first).
  const ordered = json.weights.map((spec) => ({ name: spec.name, tensor: decoded[spec.name] }));
  try {
    await optimizer.setWeights(ordered);
  } finally {
    tf.dispose(Object.values(decoded));
  }
}

/**
 * The checkpoint a stage reads from `path`: `path/checkpoint` for a stage directory (RUN_DIR/finetune),
 * or `path` itself when it is a checkpoint; null when neither holds one.
 */
export async function findStageCheckpoint(path: string): Promise<string | null> {
  for (const dir of [join(path, 'checkpoint'), path]) if ((await findCheckpoint(dir)) !== null) return dir;
  return null;
}
