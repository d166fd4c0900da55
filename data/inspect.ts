// Describing a dataset folder or a single shard as plain data (schema, counts, shards, first rows)
// for `pipeline inspect`, which prints it.
import { stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { checkShard, MANIFEST_FILE, readManifest, type DatasetManifest } from './manifest.ts';
import { SCHEMAS, rowAt, type ColumnKind, type SchemaInfo, type SchemaName } from './schemas.ts';
import { openShard, type ShardFile } from './shards.ts';

export interface FieldDescription {
  name: string;
  type: string;
  nullable: boolean;
  /** Field metadata (e.g. the fixed_shape_tensor tag). */
  metadata: Record<string, string>;
}

/** A short summary of a list column value: its length, range and mean, and the first values. */
export interface ValueSummary {
  length: number;
  min: number;
  max: number;
  mean: number;
  head: number[];
}

export interface RowDescription {
  id: string;
  label: number | null;
  /** Class name of the label, when known. */
  className: string | null;
  /** Other scalar columns (epoch, predicted). */
  scalars: Record<string, number>;
  /** List columns (image, view1, embedding, ...) summarised. */
  values: Record<string, ValueSummary>;
}

export interface Description {
  kind: 'dataset' | 'shard';
  path: string;
  schema: { name: SchemaName; fields: FieldDescription[]; imageShape?: [number, number, 3]; dim?: number };
  rows: number;
  classes: string[];
  /** Class name → rows; unlabeled rows are counted under `unlabeled`. */
  classCounts: Record<string, number>;
  unlabeled: number;
  shards: ShardFile[] | Array<{ path: string; rows: number; batches: number }>;
  /** Dataset only: rejected files at ingest. */
  rejected?: number;
  head: RowDescription[];
}

export interface DescribeOptions {
  /** How many first rows to describe. Default 5. */
  headRows?: number;
}

function summarise(values: Uint8Array | Float32Array): ValueSummary {
  let min = Infinity;
  let max = -Infinity;
  let sum = 0;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (v < min) min = v;
    if (v > max) max = v;
    sum += v;
  }
  return { length: values.length, min, max, mean: values.length ? sum / values.length : NaN, head: Array.from(values.subarray(0, 6)) };
}

function describeFields(info: SchemaInfo): FieldDescription[] {
  return info.arrow.fields.map((f) => ({ name: f.name, type: String(f.type), nullable: f.nullable, metadata: Object.fromEntries(f.metadata) }));
}

/**
 * Describes `path`: a dataset folder (through its manifest; counts come from the manifest) or a
 * single .arrow shard (read batch by batch to count rows and labels).
 */
export async function describePath(path: string, options: DescribeOptions = {}): Promise<Description> {
  const headRows = options.headRows ?? 5;
  const st = await stat(path).catch(() => {
    throw new Error(`${path}: does not exist`);
  });
  if (st.isDirectory()) {
    const manifest = await readManifest(path);
    const shard0 = manifest.shards[0];
    if (shard0) await checkShard(join(path, shard0.path), shard0);
    const first = shard0 ? await sampleShard(join(path, shard0.path), headRows, false) : null;
    const labelled = Object.values(manifest.class_counts).reduce((a, b) => a + b, 0);
    return {
      kind: 'dataset',
      path,
      schema: first?.schema ?? schemaFromManifest(manifest),
      rows: manifest.rows,
      classes: manifest.classes,
      classCounts: manifest.class_counts,
      unlabeled: manifest.schema === 'views' ? 0 : manifest.rows - labelled,
      shards: manifest.shards,
      rejected: manifest.rejected,
      head: first?.head ?? [],
    };
  }
  const listed = await listingOf(path);
  if (listed) await checkShard(path, listed);
  const s = await sampleShard(path, headRows, true);
  return { kind: 'shard', path, schema: s.schema, rows: s.rows, classes: s.classes, classCounts: s.classCounts, unlabeled: s.unlabeled, shards: [{ path, rows: s.rows, batches: s.batches }], head: s.head };
}

/** The entry of a shard in the dataset manifest beside it, if there is one that lists it. */
async function listingOf(shardPath: string): Promise<ShardFile | undefined> {
  const beside = join(dirname(shardPath), MANIFEST_FILE);
  if (!(await stat(beside).then((s) => s.isFile(), () => false))) return undefined;
  try {
    return (await readManifest(beside)).shards.find((s) => s.path === basename(shardPath));
  } catch {
    return undefined; // a stage manifest without dataset fields, or a broken one: nothing to check against
  }
}

function schemaFromManifest(m: DatasetManifest): Description['schema'] {
  // An empty dataset has no shard to read the Arrow schema from; say what the manifest says.
  return { name: m.schema, fields: [], imageShape: m.image_shape, dim: m.dim };
}

async function sampleShard(path: string, headRows: number, countAll: boolean) {
  const reader = await openShard(path);
  const info = reader.schema;
  const kinds = SCHEMAS[info.name] as Record<string, ColumnKind>;
  const head: RowDescription[] = [];
  const counts = new Array<number>(info.classes.length).fill(0);
  let unlabeled = 0;
  let rows = 0;
  let batches = 0;
  try {
    for await (const batch of reader.batches()) {
      batches++;
      rows += batch.numRows;
      const cols = batch.columns as Record<string, unknown>;
      if (countAll && Array.isArray(cols.label)) {
        for (const l of cols.label as Array<number | null>) {
          if (l === null) unlabeled++;
          else if (l >= 0 && l < counts.length) counts[l]++;
        }
      }
      for (let i = 0; i < batch.numRows && head.length < headRows; i++) {
        const row = rowAt(info, batch.columns, i) as Record<string, unknown>;
        const d: RowDescription = { id: row.id as string, label: null, className: null, scalars: {}, values: {} };
        for (const [col, kind] of Object.entries(kinds)) {
          if (kind === 'label') {
            d.label = row[col] as number | null;
            d.className = d.label === null ? null : (info.classes[d.label] ?? null);
          } else if (kind === 'int32') d.scalars[col] = row[col] as number;
          else if (kind === 'image' || kind === 'vector') d.values[col] = summarise(row[col] as Uint8Array | Float32Array);
        }
        head.push(d);
      }
      if (!countAll && head.length >= headRows) break;
    }
  } finally {
    await reader.close();
  }
  const params = info.params as { imageShape?: [number, number, 3]; dim?: number };
  return {
    schema: { name: info.name, fields: describeFields(info), ...(params.imageShape ? { imageShape: params.imageShape } : { dim: params.dim }) },
    rows,
    batches,
    classes: info.classes,
    classCounts: Object.fromEntries(info.classes.map((c, i) => [c, counts[i]])),
    unlabeled: info.name === 'views' ? 0 : unlabeled,
    head,
  };
}

