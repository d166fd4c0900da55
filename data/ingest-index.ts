// The file index beside an ingested dataset (`files-<hash>.jsonl`): each source file's size, mtime,
// label and the shard row holding it (or why it was rejected), so a re-ingest diffs without decoding.
import { createHash } from 'node:crypto';
import { readFile, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from './files.ts';

/** Bumped when the index or what a row holds changes meaning: an older index then means a full ingest. */
export const INDEX_VERSION = 1;

/** `files-<16 hex of its sha256>.jsonl`: a new index never overwrites the one the current manifest names. */
export const INDEX_FILE = /^files-[0-9a-f]{16}\.jsonl$/;

export interface IndexedFile {
  /** The scan's id (relative path). */
  id: string;
  /** Bytes and modification time (ms) when it was read; null when it could not be stat'ed. */
  size: number | null;
  mtimeMs: number | null;
  label: number | null;
  /** Where its row is (shard path relative to the dataset, row within it); absent when rejected. */
  shard?: string;
  row?: number;
  /** Why it is not a row (the decoder's reason), kept so an unchanged bad file is not decoded again. */
  rejected?: string;
}

export interface FileIndex {
  version: number;
  /** What decides a row's pixels and label besides the file (input, size, labels, decoder versions). */
  settings: Record<string, unknown>;
  classes: string[];
  /** Sorted by id. */
  files: IndexedFile[];
}

/** How the manifest names its index: a file in the dataset folder and its sha256. */
export interface IndexRef {
  path: string;
  sha256: string;
  files: number;
}

/** An index that is missing, altered or malformed: the next ingest is a full one. */
export class IndexError extends Error {
  override name = 'IndexError';
}

/** One JSON header line ({version, settings, classes}), then one line per file. */
export function formatIndex(index: FileIndex): string {
  const { files, ...header } = index;
  return [JSON.stringify(header), ...files.map((f) => JSON.stringify(f))].join('\n') + '\n';
}

/** Writes the index atomically under its content-derived name; returns the reference for the manifest. */
export async function writeIndex(dir: string, index: FileIndex): Promise<IndexRef> {
  const text = formatIndex(index);
  const sha256 = createHash('sha256').update(text).digest('hex');
  const path = `files-${sha256.slice(0, 16)}.jsonl`;
  await writeFileAtomic(join(dir, path), text);
  return { path, sha256, files: index.files.length };
}

/** Reads the index a manifest names, checking its sha256 and shape; throws IndexError with the reason. */
export async function readIndex(dir: string, ref: unknown): Promise<FileIndex> {
  const r = ref as Partial<IndexRef> | null;
  if (typeof r !== 'object' || r === null || typeof r.path !== 'string' || !INDEX_FILE.test(r.path) || typeof r.sha256 !== 'string') {
    throw new IndexError(`the manifest's files_index is malformed (${JSON.stringify(ref)})`);
  }
  let text: string;
  try {
    text = await readFile(join(dir, r.path), 'utf8');
  } catch (e) {
    throw new IndexError(`its file index ${r.path} cannot be read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  if (createHash('sha256').update(text).digest('hex') !== r.sha256) throw new IndexError(`its file index ${r.path} differs from the sha256 the manifest records`);
  const lines = text.split('\n').filter((l) => l !== '');
  const header = JSON.parse(lines[0] ?? 'null') as Omit<FileIndex, 'files'> | null;
  if (!header || header.version !== INDEX_VERSION || !Array.isArray(header.classes) || typeof header.settings !== 'object') {
    throw new IndexError(`its file index ${r.path} is of another version (${JSON.stringify(header?.version)}, this one reads ${INDEX_VERSION})`);
  }
  return { ...header, files: lines.slice(1).map((l) => JSON.parse(l) as IndexedFile) };
}

/** Removes index files other than `keep` (those of earlier or interrupted runs). */
export async function removeStaleIndexes(dir: string, keep: string | null): Promise<void> {
  for (const f of await readdir(dir)) if (INDEX_FILE.test(f) && f !== keep) await rm(join(dir, f), { force: true });
}

/** A file as the scan finds it now. */
export type SourceFile = Pick<IndexedFile, 'id' | 'size' | 'mtimeMs' | 'label'>;

export interface IndexDiff {
  /** Previous entries whose file is unchanged: rows kept as they are, rejections kept without a retry. */
  unchanged: IndexedFile[];
  /** Ids to decode: new (`added`) or changed (another size, mtime or label). */
  decode: Set<string>;
  /** Ids whose previous row must go from its shard: removed or changed files. */
  drop: Set<string>;
  counts: { added: number; changed: number; removed: number; unchanged: number };
}

/**
 * Compares the files found now with the previous index by id, size, mtime and label (a CSV can
 * relabel a file), as make and rsync do: cheap (a stat per file, no read), and blind to an edit
 * that keeps both size and mtime.
 */
export function diffIndex(previous: readonly IndexedFile[], current: readonly SourceFile[]): IndexDiff {
  const before = new Map(previous.map((f) => [f.id, f]));
  const diff: IndexDiff = { unchanged: [], decode: new Set(), drop: new Set(), counts: { added: 0, changed: 0, removed: 0, unchanged: 0 } };
  const now = new Set<string>();
  for (const f of current) {
    now.add(f.id);
    const p = before.get(f.id);
    if (p && p.size === f.size && p.mtimeMs === f.mtimeMs && p.label === f.label) {
      diff.unchanged.push(p);
      diff.counts.unchanged++;
      continue;
    }
    diff.decode.add(f.id);
    if (p) {
      diff.counts.changed++;
      if (p.shard !== undefined) diff.drop.add(f.id);
    } else diff.counts.added++;
  }
  for (const p of previous) {
    if (now.has(p.id)) continue;
    diff.counts.removed++;
    if (p.shard !== undefined) diff.drop.add(p.id);
  }
  return diff;
}
