// The checkpoints stages read from one another: a stage directory (or its checkpoint/) that must
// hold a checkpoint, and a fine-tuned classifier with the class names it was trained on.
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { findStageCheckpoint, loadCheckpoint, type JsonValue } from '../../models/checkpoint.ts';
import { TrainingInputError } from './loop.ts';

/** The checkpoint at `path` (a stage directory or its checkpoint/); `missing` is the error when there is none. */
export async function requireCheckpoint(path: string, missing: string): Promise<string> {
  const dir = await findStageCheckpoint(path);
  if (dir === null) throw new TrainingInputError(missing);
  return dir;
}

/**
 * A classifier checkpoint at `path` and its classes (recorded in its state by finetune and
 * distill); `flag` names the option in errors, `hint` says what to give instead.
 */
export async function requireClassifier(path: string, flag: string, hint: string): Promise<{ dir: string; classes: string[]; state: JsonValue }> {
  const dir = await requireCheckpoint(path, `${flag} ${path}: no checkpoint there (${hint})`);
  const peek = await loadCheckpoint(dir, { models: [] });
  if (!peek.available.includes('classifier')) throw new TrainingInputError(`${flag} ${dir}: holds [${peek.available.join(', ')}], not a classifier (${hint})`);
  const classes = (peek.state as { config?: { classes?: string[] } }).config?.classes;
  if (!classes) throw new TrainingInputError(`${flag} ${dir}: the checkpoint does not record its classes`);
  return { dir, classes, state: peek.state };
}

/** Identity of one model of a checkpoint (its classifier by default): the sha256 of its topology and weights. */
export async function classifierHash(checkpointDir: string, model = 'classifier'): Promise<string> {
  const hash = createHash('sha256');
  for (const file of ['model.json', 'weights.bin']) hash.update(await readFile(join(checkpointDir, model, file)));
  return hash.digest('hex');
}
