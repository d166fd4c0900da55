// Dataset manifests (DESIGN.md "Arrow shards"): the manifest.json beside a dataset's shards, written
// atomically, read with validation, verified by re-hashing, and the dataset read back through it.
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { copyFile, link, readFile, readdir, rename, rm, stat } from 'node:fs/promises';
import { isAbsolute, join, resolve } from 'node:path';
import { removeStaleIndexes } from './ingest-index.ts';
import { asidePath, removeDeadLeftoversIn, syncDir, tempPath, writeError, writeFileAtomic } from './files.ts';
import { SCHEMA_NAMES, SCHEMA_VERSION, type ImageShape, type SchemaName } from './schemas.ts';
import { openShard, type OpenShardOptions, type ShardBatch, type ShardFile } from './shards.ts';

export const MANIFEST_FILE = 'manifest.json';

/**
 * What manifest.json holds. Extra keys are kept (a stage runner may add its own fields), but the
 * ones below are checked on read.
 */
export interface DatasetManifest {
  schema_version: number;
  schema: SchemaName;
  rows: number;
  /** Index = label. Empty for unlabeled data. */
  classes: string[];
  /** Class name → rows with that label (unlabeled rows are not counted here). */
  class_counts: Record<string, number>;
  /** [H, W, 3] for the images and views schemas. */
  image_shape?: ImageShape;
  /** Vector length for the embeddings, logits and predictions schemas. */
  dim?: number;
  /** In dataset order; paths relative to the dataset folder. */
  shards: ShardFile[];
  /** Ingest only: files skipped as unusable; their reasons are in rejected.jsonl. */
  rejected?: number;
  [extra: string]: unknown;
}

/** A manifest that is missing, not JSON, or inconsistent; the message names the file and the field. */
export class ManifestError extends Error {
  constructor(
    readonly path: string,
    readonly reason: string,
  ) {
    super(`${path}: ${reason}`);
    this.name = 'ManifestError';
  }
}

function isCount(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 0;
}

/** Checks a parsed manifest object; throws ManifestError naming the first bad field. */
export function validateManifest(value: unknown, path = MANIFEST_FILE): DatasetManifest {
  const fail = (reason: string): never => {
    throw new ManifestError(path, reason);
  };
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return fail('must be a JSON object');
  const m = value as Record<string, unknown>;
  if (m.schema_version !== SCHEMA_VERSION) fail(`schema_version must be ${SCHEMA_VERSION}, got ${JSON.stringify(m.schema_version)}`);
  if (!SCHEMA_NAMES.includes(m.schema as SchemaName)) fail(`schema must be one of ${SCHEMA_NAMES.join(', ')}, got ${JSON.stringify(m.schema)}`);
  if (!isCount(m.rows)) fail(`rows must be a non-negative integer, got ${JSON.stringify(m.rows)}`);
  if (!Array.isArray(m.classes) || !m.classes.every((c) => typeof c === 'string')) fail('classes must be an array of strings');
  const classes = m.classes as string[];
  if (new Set(classes).size !== classes.length) fail('classes has duplicate names');
  if (typeof m.class_counts !== 'object' || m.class_counts === null || Array.isArray(m.class_counts)) fail('class_counts must be an object');
  let labelled = 0;
  for (const [name, count] of Object.entries(m.class_counts as object)) {
    if (!classes.includes(name)) fail(`class_counts names "${name}", which is not in classes`);
    if (!isCount(count)) fail(`class_counts["${name}"] must be a non-negative integer`);
    labelled += count as number;
  }
  if (labelled > (m.rows as number)) fail(`class_counts add up to ${labelled}, more than rows ${m.rows}`);
  if (m.schema === 'images' || m.schema === 'views') {
    const s = m.image_shape;
    if (!Array.isArray(s) || s.length !== 3 || !isCount(s[0]) || !isCount(s[1]) || s[0] === 0 || s[1] === 0 || s[2] !== 3) {
      fail(`image_shape must be [H, W, 3], got ${JSON.stringify(s)}`);
    }
  } else if (!isCount(m.dim) || m.dim === 0) {
    fail(`dim must be a positive integer for the ${m.schema} schema, got ${JSON.stringify(m.dim)}`);
  }
  if (!Array.isArray(m.shards)) fail('shards must be an array');
  let shardRows = 0;
  (m.shards as unknown[]).forEach((s, i) => {
    const sh = s as Record<string, unknown>;
    if (typeof sh !== 'object' || sh === null) fail(`shards[${i}] must be an object`);
    if (typeof sh.path !== 'string' || sh.path === '' || isAbsolute(sh.path) || sh.path.split(/[\\/]/).includes('..')) {
      fail(`shards[${i}].path must be a path inside the dataset folder, got ${JSON.stringify(sh.path)}`);
    }
    if (!isCount(sh.rows)) fail(`shards[${i}].rows must be a non-negative integer`);
    if (sh.bytes !== undefined && !isCount(sh.bytes)) fail(`shards[${i}].bytes must be a non-negative integer`);
    if (typeof sh.sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(sh.sha256)) fail(`shards[${i}].sha256 must be 64 hex digits`);
    shardRows += sh.rows as number;
  });
  if (shardRows !== m.rows) fail(`shards hold ${shardRows} rows but rows is ${m.rows}`);
  if (m.rejected !== undefined && !isCount(m.rejected)) fail('rejected must be a non-negative integer');
  return m as DatasetManifest;
}

/**
 * Writes `manifest` as dir/manifest.json (or `file`) atomically: a temporary file renamed over the
 * final name, so readers see the old manifest or the new one, never half of one. Validates first.
 */
export async function writeManifest(dir: string, manifest: DatasetManifest, file = MANIFEST_FILE): Promise<string> {
  const path = join(dir, file);
  validateManifest(manifest, path);
  await writeFileAtomic(path, JSON.stringify(manifest, null, 2) + '\n');
  return path;
}

/**
 * Puts a new dataset in place of the one `dir/file` describes, such that a crash or a failure at
 * any point leaves one of them readable through that manifest. `shards` are complete and flushed
 * at their temporary names (ShardWriter.finish()). Old shards whose names the new ones take are
 * first hard-linked aside (`<name>.old-<pid>`) and an interim manifest points at those; then the
 * new shards are renamed into place, the new manifest written, and the old shards it does not
 * list removed. On failure the old manifest and shard names are restored (best effort; else the
 * interim manifest still reads the old data) and the error is rethrown.
 */
export async function publishDataset(dir: string, shards: readonly ShardFile[], manifest: DatasetManifest, file = MANIFEST_FILE): Promise<string> {
  const manifestPath = join(dir, file);
  validateManifest(manifest, manifestPath);
  let old: DatasetManifest | null = null;
  let oldText = '';
  try {
    oldText = await readFile(manifestPath, 'utf8');
    old = validateManifest(JSON.parse(oldText), manifestPath);
  } catch {
    old = null; // nothing readable to keep (none, a stage's running manifest, or a broken one)
  }
  const names = new Set(shards.map((s) => s.path));
  const taken = (old?.shards ?? []).filter((s) => names.has(s.path));
  const aside = new Map(taken.map((s) => [s.path, asidePath(s.path)]));
  const linked: string[] = [];
  const renamed: string[] = [];
  let interim = false;
  try {
    for (const [name, to] of aside) {
      await rm(join(dir, to), { force: true });
      await link(join(dir, name), join(dir, to)).catch(() => copyFile(join(dir, name), join(dir, to)));
      linked.push(name);
    }
    if (old && aside.size > 0) {
      await syncDir(dir);
      await writeFileAtomic(manifestPath, JSON.stringify({ ...old, shards: old.shards.map((s) => ({ ...s, path: aside.get(s.path) ?? s.path })) }, null, 2) + '\n');
      interim = true;
    }
    for (const s of shards) {
      const to = join(dir, s.path);
      await rename(tempPath(to), to).catch((e) => {
        throw writeError(to, e);
      });
      renamed.push(s.path);
    }
    await syncDir(dir);
    await writeManifest(dir, manifest, file);
  } catch (err) {
    for (const name of renamed) if (!aside.has(name)) await rm(join(dir, name), { force: true }).catch(() => undefined);
    if (interim) {
      for (const name of linked) await rename(join(dir, aside.get(name)!), join(dir, name)).catch(() => undefined);
      await writeFileAtomic(manifestPath, oldText).catch(() => undefined);
    } else {
      for (const name of linked) await rm(join(dir, aside.get(name)!), { force: true }).catch(() => undefined);
    }
    throw err;
  }
  const keep = new Set(manifest.shards.map((s) => s.path));
  for (const s of old?.shards ?? []) if (!keep.has(s.path)) await rm(join(dir, s.path), { force: true });
  for (const to of aside.values()) await rm(join(dir, to), { force: true });
  return manifestPath;
}

/**
 * Removes what killed writers left in a dataset folder: temporary and set-aside files
 * (`<name>.tmp-<pid>`, `<name>.old-<pid>`) of dead processes for the names `owns` accepts, except
 * shards the current manifest `dir/file` still lists (an interim manifest of an interrupted
 * {@link publishDataset}). Returns the paths removed.
 */
export async function removeDatasetLeftovers(dir: string, owns: (name: string) => boolean, file = MANIFEST_FILE): Promise<string[]> {
  let listed: string[] = [];
  try {
    listed = (await readManifest(join(dir, file))).shards.map((s) => s.path);
  } catch {
    // no readable dataset here: nothing to keep
  }
  return removeDeadLeftoversIn(dir, owns, new Set(listed));
}

/** Reads and validates dir/manifest.json (or a manifest file path given directly). */
export async function readManifest(dirOrFile: string): Promise<DatasetManifest> {
  let path = dirOrFile;
  try {
    if ((await stat(dirOrFile)).isDirectory()) path = join(dirOrFile, MANIFEST_FILE);
  } catch (e) {
    throw new ManifestError(dirOrFile, `cannot read: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new ManifestError(path, code === 'ENOENT' ? 'no manifest (not a dataset folder, or its writer did not finish)' : `cannot read: ${code}`);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new ManifestError(path, `not valid JSON: ${(e as Error).message}`);
  }
  return validateManifest(value, path);
}

/** SHA-256 of a file, streamed so a 256 MB shard is never held whole. */
export async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/**
 * A shard whose bytes are not the ones its manifest recorded (size or sha256), or that is gone:
 * damaged after it was written. One line: the file, expected and actual, and the repair.
 */
export class ShardIntegrityError extends Error {
  constructor(
    readonly path: string,
    readonly reason: string,
  ) {
    super(`${path}: ${reason}; re-run the stage that produced it with --force`);
    this.name = 'ShardIntegrityError';
  }
}

/**
 * Shards this process has hashed and found intact, keyed by absolute path, with the file's
 * identity (device, inode, size, mtime, ctime) and the expected sha256: a memo of facts about
 * files, so a dataset read every epoch is hashed once per process; any write changes the key.
 */
const intactShards = new Map<string, string>();

export interface CheckShardOptions {
  /** Trust an earlier check of the unchanged file in this process. Default true; `inspect --verify` re-hashes. */
  memo?: boolean;
}

/**
 * Checks the shard file at `path` against its manifest entry: its size (when recorded) and its
 * sha256, streamed. Throws ShardIntegrityError naming the file, the expected and the actual value.
 */
export async function checkShard(path: string, shard: ShardFile, { memo = true }: CheckShardOptions = {}): Promise<void> {
  const abs = resolve(path);
  let info;
  try {
    info = await stat(abs, { bigint: true });
  } catch (e) {
    throw new ShardIntegrityError(path, `missing or unreadable (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  if (shard.bytes !== undefined && info.size !== BigInt(shard.bytes)) {
    throw new ShardIntegrityError(path, `size ${info.size} bytes differs from the manifest's ${shard.bytes}`);
  }
  const key = `${info.dev}:${info.ino}:${info.size}:${info.mtimeNs}:${info.ctimeNs}:${shard.sha256}`;
  if (memo && intactShards.get(abs) === key) return;
  let actual: string;
  try {
    actual = await sha256File(abs);
  } catch (e) {
    throw new ShardIntegrityError(path, `missing or unreadable (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  if (actual !== shard.sha256) {
    intactShards.delete(abs);
    throw new ShardIntegrityError(path, `sha256 ${actual} differs from the manifest's ${shard.sha256}`);
  }
  intactShards.set(abs, key);
}

export interface VerifyResult {
  ok: boolean;
  /** One line per problem, naming the shard: missing, or its size or hash differs. */
  problems: string[];
}

/** Re-hashes every shard of the dataset in `dir` (no memo) and compares with the manifest. */
export async function verifyManifest(dir: string, manifest?: DatasetManifest): Promise<VerifyResult> {
  const m = manifest ?? (await readManifest(dir));
  const problems: string[] = [];
  for (const shard of m.shards) {
    try {
      await checkShard(join(dir, shard.path), shard, { memo: false });
    } catch (e) {
      if (!(e instanceof ShardIntegrityError)) throw e;
      problems.push(e.message);
    }
  }
  return { ok: problems.length === 0, problems };
}

export interface TreeVerifyResult {
  /** Folders whose dataset manifests were checked. */
  datasets: string[];
  /** Distinct shard files checked. */
  shards: number;
  /** One line per problem: a shard missing or differing, or a dataset manifest that does not validate. */
  problems: string[];
}

/**
 * Finds every dataset manifest under `root` (manifest.json and part-*.manifest.json at any depth;
 * a stage manifest without dataset fields is skipped) and re-hashes each shard they list once.
 */
export async function verifyTree(root: string): Promise<TreeVerifyResult> {
  const entries = await readdir(root, { recursive: true, withFileTypes: true });
  const files = entries
    .filter((e) => e.isFile() && (e.name === MANIFEST_FILE || /^part-\d{5}-of-\d{5}\.manifest\.json$/.test(e.name)))
    .map((e) => join(e.parentPath, e.name))
    .sort();
  const result: TreeVerifyResult = { datasets: [], shards: 0, problems: [] };
  const seen = new Set<string>();
  for (const file of files) {
    let value: unknown;
    try {
      value = JSON.parse(await readFile(file, 'utf8'));
    } catch (e) {
      result.problems.push(`${file}: unreadable manifest (${(e as Error).message})`);
      continue;
    }
    if (typeof value !== 'object' || value === null || !('schema_version' in value || 'shards' in value)) continue;
    let m: DatasetManifest;
    try {
      m = validateManifest(value, file);
    } catch (e) {
      result.problems.push((e as Error).message);
      continue;
    }
    const dir = join(file, '..');
    if (!result.datasets.includes(dir)) result.datasets.push(dir);
    const fresh = m.shards.filter((s) => !seen.has(resolve(dir, s.path)));
    for (const s of fresh) seen.add(resolve(dir, s.path));
    result.shards += fresh.length;
    result.problems.push(...(await verifyManifest(dir, { ...m, shards: fresh })).problems);
  }
  return result;
}

/**
 * Reads a whole dataset batch by batch, shard after shard in manifest order. Each shard is checked
 * against the manifest (size, sha256: {@link checkShard}) before any of its rows is yielded, and
 * refused when its schema differs from the manifest's. Only one batch is in memory at a time.
 */
export async function* readDataset<S extends SchemaName = SchemaName>(
  dir: string,
  options: OpenShardOptions<S> = {},
): AsyncGenerator<ShardBatch<S> & { shard: string }> {
  const m = await readManifest(dir);
  if (options.schema && options.schema !== m.schema) throw new ManifestError(join(dir, MANIFEST_FILE), `schema is ${m.schema}, expected ${options.schema}`);
  for (const shard of m.shards) {
    await checkShard(join(dir, shard.path), shard);
    const reader = await openShard<S>(join(dir, shard.path), { schema: m.schema as S });
    try {
      for await (const batch of reader.batches()) yield { ...batch, shard: shard.path };
    } finally {
      await reader.close();
    }
  }
}

/** Part indices are written with five digits: `part-IIIII-of-NNNNN`. */
export const MAX_PARTS = 99_999;

/** Part p of n of a partitioned job writes `${partPrefix(p, n)}.manifest.json` etc. (see ingest). */
export function partPrefix(index: number, count: number): string {
  return `part-${String(index).padStart(5, '0')}-of-${String(count).padStart(5, '0')}`;
}

const PART_MANIFEST = /^part-(\d{5})-of-(\d{5})\.manifest\.json$/;

/** What a part of a partitioned ingest records of the job that wrote it (stages/ingest.ts). */
interface PartInfo {
  index?: number;
  count?: number;
  config_sha256?: string;
  listing_sha256?: string;
  listing_images?: number;
}

/** The fields every part of one partitioned job must agree on, with how to show each. */
const PART_AGREEMENT: [string, (m: DatasetManifest) => unknown][] = [
  ['schema', (m) => m.schema],
  ['classes', (m) => m.classes],
  ['image_shape', (m) => m.image_shape ?? null],
  ['dim', (m) => m.dim ?? null],
  ['source', (m) => m.source ?? null],
  ['config (part.config_sha256)', (m) => (m.part as PartInfo | undefined)?.config_sha256 ?? null],
  ['input listing (part.listing_sha256)', (m) => (m.part as PartInfo | undefined)?.listing_sha256 ?? null],
];

/**
 * Combines the part manifests of a partitioned job (`part-IIIII-of-NNNNN.manifest.json`, all N of
 * them) in `dir` into one manifest.json and their `.rejected.jsonl` lists into rejected.jsonl.
 * Each part's shards are re-hashed first. Shards stay where they are; rows are in part order
 * (a one-process run's order: parts are contiguous). Throws one line naming the missing parts,
 * a damaged shard, or the first field in which two parts differ (parts of two configs).
 */
export async function mergePartManifests(dir: string): Promise<DatasetManifest> {
  const found = (await readdir(dir)).map((f) => PART_MANIFEST.exec(f)).filter((m) => m !== null);
  if (found.length === 0) throw new ManifestError(dir, 'no part-*-of-*.manifest.json files to merge');
  const counts = [...new Set(found.map((m) => Number(m[2])))].sort((a, b) => a - b);
  if (counts.length > 1) {
    throw new ManifestError(dir, `cannot merge: parts of ${counts.map((c) => `${c}`).join(' and ')} parts in one directory (two partitioned runs); remove the part-*-of-* files of the one that is not current`);
  }
  const count = counts[0];
  const have = new Set(found.map((m) => Number(m[1])));
  const missing: number[] = [];
  for (let p = 0; p < count; p++) if (!have.has(p)) missing.push(p);
  if (missing.length > 0) {
    throw new ManifestError(dir, `cannot merge: ${missing.length} of ${count} parts missing or unfinished: ${missing.join(', ')} (${missing.slice(0, 3).map((p) => partPrefix(p, count)).join(', ')}${missing.length > 3 ? ', ...' : ''}); re-run those parts (--shard-index I --num-shards ${count})`);
  }
  const names = Array.from({ length: count }, (_, p) => `${partPrefix(p, count)}.manifest.json`);
  const parts = await Promise.all(names.map((n) => readManifest(join(dir, n))));
  const first = parts[0];
  for (let p = 0; p < count; p++) {
    const m = parts[p];
    const path = join(dir, names[p]);
    const info = m.part as PartInfo | undefined;
    if (info && (info.index !== p || info.count !== count)) throw new ManifestError(path, `records part ${info.index} of ${info.count}, not ${p} of ${count}`);
    for (const [field, value] of PART_AGREEMENT) {
      const [a, b] = [JSON.stringify(value(m)), JSON.stringify(value(first))];
      if (a !== b) throw new ManifestError(path, `cannot merge: its ${field} is ${a}, ${names[0]}'s is ${b} (parts of two different runs); re-run the parts with one config`);
    }
    const { problems } = await verifyManifest(dir, m);
    if (problems.length > 0) throw new ManifestError(path, `cannot merge part ${p}: ${problems[0]}${problems.length > 1 ? ` (and ${problems.length - 1} more)` : ''}`.replace(/; re-run the stage that produced it with --force/, `; re-run part ${p} (--shard-index ${p} --num-shards ${count})`));
  }
  const merged: DatasetManifest = { ...first, rows: 0, class_counts: {}, shards: [], rejected: 0 };
  delete merged.part;
  delete merged.changes; // what one part's ingest did, not the merged dataset's
  delete merged.files_index; // parts are full ingests and keep no file index; the next single ingest builds one
  const info = first.part as PartInfo | undefined;
  merged.parts = { count, ...(info?.config_sha256 ? { config_sha256: info.config_sha256, listing_sha256: info.listing_sha256 } : {}) };
  const rejectedLines: string[] = [];
  for (let p = 0; p < count; p++) {
    const m = parts[p];
    merged.rows += m.rows;
    merged.shards.push(...m.shards);
    merged.rejected = (merged.rejected ?? 0) + (m.rejected ?? 0);
    for (const [k, v] of Object.entries(m.class_counts)) merged.class_counts[k] = (merged.class_counts[k] ?? 0) + v;
    try {
      const text = await readFile(join(dir, `${partPrefix(p, count)}.rejected.jsonl`), 'utf8');
      if (text) rejectedLines.push(text.endsWith('\n') ? text : text + '\n');
    } catch {
      // a part without rejected files may have no list
    }
  }
  // The shards of a one-process dataset this merge replaces go once the new manifest is in place.
  let old: DatasetManifest | null = null;
  try {
    old = await readManifest(join(dir, MANIFEST_FILE));
  } catch {
    old = null;
  }
  await writeFileAtomic(join(dir, 'rejected.jsonl'), rejectedLines.join(''));
  await writeManifest(dir, merged);
  const keep = new Set(merged.shards.map((s) => s.path));
  for (const s of old?.shards ?? []) if (!keep.has(s.path)) await rm(join(dir, s.path), { force: true });
  // So does its file index (files-*.jsonl): the merged dataset has none, the next single ingest is full.
  await removeStaleIndexes(dir, null);
  return merged;
}

/**
 * Identity of a dataset's content: its schema, shape, classes and each shard's rows and sha256, in
 * order; not its timestamps or paths, so re-ingesting the same images gives the same hash.
 */
export function datasetHash(manifest: DatasetManifest): string {
  const content = {
    schema: manifest.schema,
    image_shape: manifest.image_shape ?? null,
    dim: manifest.dim ?? null,
    classes: manifest.classes,
    shards: manifest.shards.map((s) => [s.rows, s.sha256]),
  };
  return createHash('sha256').update(JSON.stringify(content)).digest('hex');
}
