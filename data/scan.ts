// Finding the images to ingest: an image folder (class sub-folders = labels) or a CSV list
// (`path,label`), turned into one deterministic, sorted list of {id, path, label}.
import { readFile, readdir, stat } from 'node:fs/promises';
import { dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import { splitCsvLine } from './csv.ts';

/** Extensions taken as images (case-insensitive); other files are counted as ignored, not decoded. */
const IMAGE_EXTENSIONS = ['.jpg', '.jpeg', '.png', '.webp', '.gif', '.tif', '.tiff', '.avif', '.heic', '.heif', '.jp2', '.jxl', '.svg'];

export interface ScanEntry {
  /** Stable id: the path relative to the input folder (or as written in the CSV), '/' separators. */
  id: string;
  /** Absolute path to read. */
  path: string;
  /** Index into `classes`, or null when unlabeled. */
  label: number | null;
}

export interface ScanRejected {
  path: string;
  reason: string;
}

export interface ScanResult {
  kind: 'folder' | 'csv';
  /** Sorted by id (code-unit order, so it does not depend on the locale). */
  entries: ScanEntry[];
  /** Sorted class names; index = label. Empty when unlabeled. */
  classes: string[];
  /** Entries that can never become rows (outside a class folder, duplicate CSV rows). */
  rejected: ScanRejected[];
  /** Files skipped because their extension is not an image's (README, .DS_Store, ...). */
  ignored: number;
}

/** The input cannot be scanned at all: missing, empty, or a malformed CSV. One line, names the path. */
export class ScanInputError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ScanInputError';
  }
}

export interface ScanOptions {
  /** Give every image label null even when there are class folders or a label column. */
  unlabeled?: boolean;
}

const byCodeUnit = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

function isImageName(name: string): boolean {
  const dot = name.lastIndexOf('.');
  return dot > 0 && IMAGE_EXTENSIONS.includes(name.slice(dot).toLowerCase());
}

/** Every file under `dir` (recursive, hidden entries skipped), as paths relative to `root`. */
async function listFiles(root: string, dir: string, out: string[]): Promise<void> {
  const entries = await readdir(dir, { withFileTypes: true });
  for (const e of entries) {
    if (e.name.startsWith('.')) continue;
    const full = join(dir, e.name);
    if (e.isDirectory()) await listFiles(root, full, out);
    else if (e.isFile() || e.isSymbolicLink()) out.push(relative(root, full).split(sep).join('/'));
  }
}

/**
 * The image files of a folder as the scan reads them: relative ids ('/' separators), sorted, hidden
 * entries skipped, symlinks included (and followed when read). The stage runner hashes this same
 * listing to decide whether an ingest is up to date. `all` counts every file listed, images or not.
 */
export async function listImageFiles(root: string): Promise<{ images: string[]; all: number }> {
  const files: string[] = [];
  await listFiles(root, root, files);
  return { images: files.filter(isImageName).sort(byCodeUnit), all: files.length };
}

/**
 * Scans an image folder. With sub-folders, each top-level sub-folder is a class (sorted by name;
 * nested folders inside a class belong to it) and image files directly in the root are rejected
 * as "not inside a class folder". Without sub-folders (or with `unlabeled`), every image is label null.
 */
async function scanImageFolder(root: string, options: ScanOptions = {}): Promise<ScanResult> {
  const abs = resolve(root);
  let st;
  try {
    st = await stat(abs);
  } catch {
    throw new ScanInputError(`input folder ${root} does not exist`);
  }
  if (!st.isDirectory()) throw new ScanInputError(`input ${root} is not a folder (or a .csv list)`);
  const top = (await readdir(abs, { withFileTypes: true })).filter((e) => !e.name.startsWith('.'));
  const classDirs = top.filter((e) => e.isDirectory()).map((e) => e.name).sort(byCodeUnit);
  const { images, all } = await listImageFiles(abs);
  const ignored = all - images.length;
  if (images.length === 0) throw new ScanInputError(`input folder ${root} has no image files (${IMAGE_EXTENSIONS.join(' ')})`);

  const labelled = classDirs.length > 0 && !options.unlabeled;
  const classes = labelled ? classDirs : [];
  const classIndex = new Map(classes.map((c, i) => [c, i]));
  const entries: ScanEntry[] = [];
  const rejected: ScanRejected[] = [];
  for (const id of images) {
    const slash = id.indexOf('/');
    if (labelled && slash < 0) {
      rejected.push({ path: id, reason: 'not inside a class folder' });
      continue;
    }
    entries.push({ id, path: join(abs, id), label: labelled ? classIndex.get(id.slice(0, slash))! : null });
  }
  return { kind: 'folder', entries, classes, rejected, ignored };
}


/**
 * Scans a CSV list with a header `path` or `path,label`. Paths are relative to the CSV's folder
 * (absolute paths are kept); an empty label means null; classes are the sorted distinct labels.
 * A path listed twice is rejected from its second row on.
 */
async function scanCsvList(csvPath: string, options: ScanOptions = {}): Promise<ScanResult> {
  let text: string;
  try {
    text = await readFile(csvPath, 'utf8');
  } catch (e) {
    throw new ScanInputError(`input list ${csvPath} cannot be read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  const lines = text.replace(/^\uFEFF/, '').split(/\r?\n/);
  const header = splitCsvLine(lines[0] ?? '')?.map((h) => h.trim().toLowerCase());
  if (!header || header[0] !== 'path' || (header.length > 1 && header[1] !== 'label') || header.length > 2) {
    throw new ScanInputError(`input list ${csvPath}: the first line must be the header "path,label" (or "path"), got "${lines[0] ?? ''}"`);
  }
  const base = dirname(resolve(csvPath));
  const rows: Array<{ id: string; path: string; label: string }> = [];
  const rejected: ScanRejected[] = [];
  const seen = new Map<string, number>();
  for (let n = 1; n < lines.length; n++) {
    if (lines[n].trim() === '') continue;
    const cells = splitCsvLine(lines[n]);
    if (!cells || cells.length > header.length || cells[0].trim() === '') {
      throw new ScanInputError(`input list ${csvPath} line ${n + 1}: expected ${header.join(',')}, got "${lines[n]}"`);
    }
    const raw = cells[0].trim();
    const id = raw.split('\\').join('/').replace(/^(\.\/)+/, '');
    const path = isAbsolute(raw) ? raw : join(base, id);
    if (seen.has(id)) {
      rejected.push({ path: id, reason: `listed again (first on line ${seen.get(id)})` });
      continue;
    }
    seen.set(id, n + 1);
    rows.push({ id, path, label: (cells[1] ?? '').trim() });
  }
  if (rows.length === 0) throw new ScanInputError(`input list ${csvPath} lists no images`);
  const classes = options.unlabeled ? [] : [...new Set(rows.map((r) => r.label).filter((l) => l !== ''))].sort(byCodeUnit);
  const classIndex = new Map(classes.map((c, i) => [c, i]));
  const entries = rows
    .map((r) => ({ id: r.id, path: r.path, label: options.unlabeled || r.label === '' ? null : classIndex.get(r.label)! }))
    .sort((a, b) => byCodeUnit(a.id, b.id));
  return { kind: 'csv', entries, classes, rejected, ignored: 0 };
}

/** Scans `input`: a .csv file is a list, anything else must be an image folder. */
export async function scanInput(input: string, options: ScanOptions = {}): Promise<ScanResult> {
  return input.toLowerCase().endsWith('.csv') ? scanCsvList(input, options) : scanImageFolder(input, options);
}

/**
 * Keeps at most `limit` entries per label (first in sorted order; unlabeled entries count as one
 * group), so a limited run takes the same images every time.
 */
export function limitPerClass(entries: ScanEntry[], limit: number): ScanEntry[] {
  const taken = new Map<number | null, number>();
  return entries.filter((e) => {
    const n = taken.get(e.label) ?? 0;
    taken.set(e.label, n + 1);
    return n < limit;
  });
}

/**
 * Part `index` of `count` disjoint, contiguous parts of the list (sizes differ by at most one):
 * parts joined in order are the list itself, so a merged partitioned ingest has the rows of a
 * one-process ingest in the same order (and trains the same with the same seed).
 */
export function takePart<T>(entries: T[], index: number, count: number): T[] {
  return count === 1 ? entries : entries.slice(...partRange(entries.length, index, count));
}

/** The [from, to) positions of part `index` of `count` of a list of `length` (see takePart). */
export function partRange(length: number, index: number, count: number): [number, number] {
  return [Math.floor((index * length) / count), Math.floor(((index + 1) * length) / count)];
}
