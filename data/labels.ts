// Few-label subsets of a labeled images dataset (`--labels 1%|10%|N-per-class|N|FILE`): class-
// balanced and seed-deterministic, or read from an id list; written as labeled-ids.txt for reuse.
import { readFile } from 'node:fs/promises';
import { seededPermutation } from './random.ts';
import { csvField, splitCsvLine } from './csv.ts';

/** A bad `--labels` value, ids file or dataset for it; the CLI exits 2 with its one-line message. */
export class LabelSubsetInputError extends Error {
  override name = 'LabelSubsetInputError';
}

export type LabelSpec =
  | { kind: 'percent'; percent: number }
  | { kind: 'perClass'; perClass: number }
  | { kind: 'count'; count: number }
  | { kind: 'file'; path: string };

/** Parses `1%`, `10%`, `25-per-class`, `4000` or a file path; `flag` names the option in errors. */
export function parseLabelSpec(text: string, flag = '--labels'): LabelSpec {
  const value = text.trim();
  let m = /^(\d+(?:\.\d+)?)\s*%$/.exec(value);
  if (m) {
    const percent = Number(m[1]);
    if (!(percent > 0 && percent <= 100)) throw new LabelSubsetInputError(`${flag} ${value}: a percentage must be in (0, 100]`);
    return { kind: 'percent', percent };
  }
  m = /^(\d+)-per-class$/.exec(value);
  if (m) {
    const perClass = Number(m[1]);
    if (perClass < 1) throw new LabelSubsetInputError(`${flag} ${value}: at least 1 image per class`);
    return { kind: 'perClass', perClass };
  }
  if (/^\d+$/.test(value)) {
    const count = Number(value);
    if (count < 1) throw new LabelSubsetInputError(`${flag} ${value}: at least 1 image`);
    return { kind: 'count', count };
  }
  if (/^-?\d/.test(value) || value === '') {
    throw new LabelSubsetInputError(`${flag} ${JSON.stringify(text)}: expected P% (0 < P <= 100), N-per-class, N or an ids file`);
  }
  return { kind: 'file', path: value };
}

/** What a subset is chosen from: the dataset's ids, labels (-1 = none) and class names. */
export interface LabeledRows {
  ids: readonly string[];
  labels: ArrayLike<number>;
  classes: readonly string[];
}

export interface LabeledSubset {
  /** Dataset rows of the subset, ascending. */
  rows: number[];
  /** Label of each row of `rows` (from the ids file where it gives one, else the dataset's). */
  labels: number[];
  /** Class name → images picked. */
  perClass: Record<string, number>;
}

/** Stream of the label-subset permutations, apart from the epochs' (0, 1, ...) and --limit's. */
const SUBSET_STREAM = 0xfffffffe;

/**
 * The labeled subset `spec` names. Picked subsets are stratified: `P%` and `N` take the same share
 * of every class (largest remainders, so `N` is exact), `N-per-class` exactly N of each; which
 * images depends only on (seed, class). A file gives ids (one per line, or CSV `id,label`, with or
 * without a header, LF or CRLF); its labels are class names or indices and override the dataset's.
 */
export async function selectLabeled(data: LabeledRows, spec: LabelSpec, seed: number, flag = '--labels'): Promise<LabeledSubset> {
  if (spec.kind === 'file') return fromFile(data, spec.path, flag);
  const byClass: number[][] = data.classes.map(() => []);
  for (let i = 0; i < data.ids.length; i++) if (data.labels[i] >= 0) byClass[data.labels[i]].push(i);
  const labeled = byClass.reduce((s, rows) => s + rows.length, 0);
  if (data.classes.length === 0 || labeled === 0) throw new LabelSubsetInputError(`${flag}: the dataset has no labels; give an ids file with labels (CSV id,label)`);
  const empty = data.classes.filter((_, c) => byClass[c].length === 0);
  if (empty.length > 0) throw new LabelSubsetInputError(`${flag}: class ${empty[0]} has no labeled images`);

  let take: number[];
  if (spec.kind === 'perClass') {
    take = byClass.map(() => spec.perClass);
  } else {
    const total = spec.kind === 'percent' ? Math.round((spec.percent / 100) * labeled) : spec.count;
    if (total > labeled) throw new LabelSubsetInputError(`${flag} ${describe(spec)}: the dataset has only ${labeled} labeled images`);
    take = apportion(byClass.map((rows) => rows.length), total);
  }
  const short = data.classes.findIndex((_, c) => take[c] < 1 || take[c] > byClass[c].length);
  if (short >= 0) {
    throw new LabelSubsetInputError(
      take[short] < 1
        ? `${flag} ${describe(spec)}: too few images to give class ${data.classes[short]} one (it would get ${take[short]})`
        : `${flag} ${describe(spec)}: class ${data.classes[short]} has only ${byClass[short].length} labeled images, ${take[short]} wanted`,
    );
  }
  const rows: number[] = [];
  byClass.forEach((classRows, c) => {
    const perm = seededPermutation(classRows.length, seed, SUBSET_STREAM, c);
    for (let i = 0; i < take[c]; i++) rows.push(classRows[perm[i]]);
  });
  rows.sort((a, b) => a - b);
  return subset(data, rows, rows.map((r) => data.labels[r]));
}

function describe(spec: LabelSpec): string {
  return spec.kind === 'percent' ? `${spec.percent}%` : spec.kind === 'perClass' ? `${spec.perClass}-per-class` : spec.kind === 'count' ? String(spec.count) : spec.path;
}

/** `total` split over classes in proportion to `sizes`, largest remainders first (ties: lower class index). */
function apportion(sizes: number[], total: number): number[] {
  const sum = sizes.reduce((s, n) => s + n, 0);
  const exact = sizes.map((n) => (n * total) / sum);
  const take = exact.map(Math.floor);
  let left = total - take.reduce((s, n) => s + n, 0);
  const order = exact.map((e, c) => [e - Math.floor(e), c] as const).sort((a, b) => b[0] - a[0] || a[1] - b[1]);
  for (const [, c] of order) {
    if (left === 0) break;
    take[c]++;
    left--;
  }
  return take;
}

function subset(data: LabeledRows, rows: number[], labels: number[]): LabeledSubset {
  const perClass: Record<string, number> = Object.fromEntries(data.classes.map((c) => [c, 0]));
  for (const l of labels) perClass[data.classes[l]]++;
  return { rows, labels, perClass };
}

async function fromFile(data: LabeledRows, path: string, flag: string): Promise<LabeledSubset> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new LabelSubsetInputError(`${flag} ${path}: cannot read it (${(err as NodeJS.ErrnoException).code ?? err})`);
  }
  const rowOf = new Map(data.ids.map((id, i) => [id, i]));
  const classOf = new Map(data.classes.map((c, i) => [c, i]));
  const picked = new Map<number, number>();
  const lines = text.split(/\r?\n/);
  lines.forEach((raw, n) => {
    const line = raw.trim();
    if (line === '') return;
    const where = `${flag} ${path} line ${n + 1}`;
    const cells = splitCsvLine(line);
    if (cells === null || cells.length > 2) throw new LabelSubsetInputError(`${where}: expected an id or id,label, got ${JSON.stringify(line)}`);
    const id = cells[0].trim();
    const labelText = cells[1]?.trim();
    if (n === 0 && id === 'id' && !rowOf.has('id')) return; // the header
    const row = rowOf.get(id);
    if (row === undefined) throw new LabelSubsetInputError(`${where}: id ${JSON.stringify(id)} is not in the dataset`);
    let label: number;
    if (labelText === undefined || labelText === '') {
      label = data.labels[row];
      if (!(label >= 0)) throw new LabelSubsetInputError(`${where}: ${id} has no label in the dataset and the file gives none`);
    } else {
      const named = classOf.get(labelText);
      const index = /^\d+$/.test(labelText) ? Number(labelText) : undefined;
      label = named ?? (index !== undefined && index < data.classes.length ? index : -1);
      if (label < 0) throw new LabelSubsetInputError(`${where}: label ${JSON.stringify(labelText)} is not one of the classes (${data.classes.join(', ')})`);
    }
    if (picked.has(row) && picked.get(row) !== label) throw new LabelSubsetInputError(`${where}: ${id} is listed twice with different labels`);
    picked.set(row, label);
  });
  if (picked.size === 0) throw new LabelSubsetInputError(`${flag} ${path}: lists no ids`);
  const rows = [...picked.keys()].sort((a, b) => a - b);
  return subset(data, rows, rows.map((r) => picked.get(r)!));
}

/** labeled-ids.txt: a CSV with header `id,label` (class names), readable back as an ids file. */
export function formatLabeledIds(data: LabeledRows, chosen: LabeledSubset): string {
  return 'id,label\n' + chosen.rows.map((r, i) => `${csvField(data.ids[r])},${csvField(data.classes[chosen.labels[i]])}\n`).join('');
}

/**
 * Splits rows into training rows and `perClass` held-out rows of every class: the last ones in
 * dataset order (ingest sorts by id), so the split is the same for every stage and seed. Unlabeled
 * rows all train. `flag` names the option in errors.
 */
export function holdoutSplit(data: LabeledRows, perClass: number, flag: string): { train: number[]; heldOut: number[] } {
  if (perClass === 0) return { train: data.ids.map((_, i) => i), heldOut: [] };
  const byClass = new Map<number, number[]>();
  const train: number[] = [];
  for (let i = 0; i < data.ids.length; i++) {
    const label = data.labels[i];
    if (label < 0) train.push(i);
    else if (byClass.has(label)) byClass.get(label)!.push(i);
    else byClass.set(label, [i]);
  }
  if (byClass.size === 0) throw new LabelSubsetInputError(`${flag} needs a labeled dataset, and this one has no labels`);
  const heldOut: number[] = [];
  for (const [label, rows] of [...byClass.entries()].sort((a, b) => a[0] - b[0])) {
    if (rows.length <= perClass) {
      throw new LabelSubsetInputError(`${flag} ${perClass} leaves no training images of class ${data.classes[label]} (${rows.length} images)`);
    }
    train.push(...rows.slice(0, rows.length - perClass));
    heldOut.push(...rows.slice(rows.length - perClass));
  }
  return { train: train.sort((a, b) => a - b), heldOut };
}
