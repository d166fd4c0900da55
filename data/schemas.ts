// Typed Arrow schemas of the pipeline's shards (DESIGN.md "Arrow shards"): how each schema is built,
// recognised in a file, and converted between Arrow record batches and plain typed-array columns.
import {
  Field,
  FixedSizeList,
  Float32,
  Int32,
  RecordBatch,
  Schema,
  Struct,
  Type,
  Uint8,
  Utf8,
  makeData,
  type Data,
  type DataType,
} from 'apache-arrow';

/** Bumped when a schema changes incompatibly; recorded in schema metadata and manifests. */
export const SCHEMA_VERSION = 1;

/**
 * Column kinds: `id` Utf8 not null, `label` Int32 nullable, `int32` Int32 not null,
 * `image` FixedSizeList<Uint8>[H·W·3] tagged arrow.fixed_shape_tensor, `vector` FixedSizeList<Float32>[D].
 */
export type ColumnKind = 'id' | 'label' | 'int32' | 'image' | 'vector';

/** Every schema's columns in file order; the single source of truth for writers, readers and types. */
export const SCHEMAS = {
  images: { id: 'id', label: 'label', image: 'image' },
  views: { id: 'id', epoch: 'int32', view1: 'image', view2: 'image' },
  embeddings: { id: 'id', label: 'label', embedding: 'vector' },
  logits: { id: 'id', label: 'label', logits: 'vector' },
  predictions: { id: 'id', label: 'label', predicted: 'int32', probabilities: 'vector' },
} as const satisfies Record<string, Record<string, ColumnKind>>;

export type SchemaName = keyof typeof SCHEMAS;
export const SCHEMA_NAMES = Object.keys(SCHEMAS) as SchemaName[];

/** [H, W, 3]: images are always 8-bit RGB, row-major HWC. */
export type ImageShape = [number, number, 3];

/** What fixes a schema's list sizes: the image shape for pixel schemas, the vector length otherwise. */
export type SchemaParams<S extends SchemaName = SchemaName> = S extends 'images' | 'views'
  ? { imageShape: ImageShape }
  : { dim: number };

type ColumnValues<K extends ColumnKind> = K extends 'id'
  ? string[]
  : K extends 'label'
    ? Array<number | null>
    : K extends 'int32'
      ? Int32Array
      : K extends 'image'
        ? Uint8Array
        : Float32Array;

type ColumnElement<K extends ColumnKind> = K extends 'id'
  ? string
  : K extends 'label'
    ? number | null
    : K extends 'int32'
      ? number
      : K extends 'image'
        ? Uint8Array
        : Float32Array;

/**
 * A batch as plain columns: strings and labels as arrays, list columns as one flat typed array of
 * numRows·listSize values (row-major). What a writer takes and a reader gives back.
 */
export type Columns<S extends SchemaName> = {
  -readonly [C in keyof (typeof SCHEMAS)[S]]: ColumnValues<(typeof SCHEMAS)[S][C] & ColumnKind>;
};

/** One row; list columns are views (subarrays) into the batch's flat arrays. */
export type Row<S extends SchemaName> = {
  -readonly [C in keyof (typeof SCHEMAS)[S]]: ColumnElement<(typeof SCHEMAS)[S][C] & ColumnKind>;
};

/** A schema as the reader found it: which of ours, its list sizes and class names. */
export interface SchemaInfo<S extends SchemaName = SchemaName> {
  name: S;
  params: SchemaParams<S>;
  classes: string[];
  /** The Arrow schema itself, for code that wants to build batches or compare. */
  arrow: Schema;
}

const TENSOR_EXTENSION_NAME = 'arrow.fixed_shape_tensor';
const EXT_NAME_KEY = 'ARROW:extension:name';
const EXT_META_KEY = 'ARROW:extension:metadata';
/** Schema metadata keys; `classes` is the DESIGN contract, the other two let tools name the schema. */
const META_CLASSES = 'classes';
const META_SCHEMA = 'simclr:schema';
const META_SCHEMA_VERSION = 'simclr:schema_version';

/** Number of values a list column of this kind holds per row. */
export function listSize(kind: 'image' | 'vector', params: SchemaParams): number {
  if (kind === 'image') {
    const [h, w, c] = (params as SchemaParams<'images'>).imageShape;
    return h * w * c;
  }
  return (params as SchemaParams<'embeddings'>).dim;
}

function checkParams(name: SchemaName, params: SchemaParams): void {
  if (name === 'images' || name === 'views') {
    const shape = (params as SchemaParams<'images'>).imageShape;
    const ok =
      Array.isArray(shape) &&
      shape.length === 3 &&
      Number.isInteger(shape[0]) &&
      shape[0] > 0 &&
      Number.isInteger(shape[1]) &&
      shape[1] > 0 &&
      shape[2] === 3;
    if (!ok) throw new Error(`${name} schema: imageShape must be [H, W, 3] with positive integers, got ${JSON.stringify(shape)}`);
  } else {
    const dim = (params as SchemaParams<'embeddings'>).dim;
    if (!Number.isInteger(dim) || dim <= 0) throw new Error(`${name} schema: dim must be a positive integer, got ${dim}`);
  }
}

function columnType(kind: ColumnKind, params: SchemaParams): DataType {
  switch (kind) {
    case 'id':
      return new Utf8();
    case 'label':
    case 'int32':
      return new Int32();
    case 'image':
      // Child nullable, named "item": the storage type pyarrow and arrow-cpp give fixed_shape_tensor.
      return new FixedSizeList(listSize('image', params), new Field('item', new Uint8(), true));
    case 'vector':
      return new FixedSizeList(listSize('vector', params), new Field('item', new Float32(), true));
  }
}

function columnField(column: string, kind: ColumnKind, params: SchemaParams): Field {
  const metadata =
    kind === 'image'
      ? new Map([
          [EXT_NAME_KEY, TENSOR_EXTENSION_NAME],
          [EXT_META_KEY, JSON.stringify({ shape: (params as SchemaParams<'images'>).imageShape })],
        ])
      : null;
  return new Field(column, columnType(kind, params), kind === 'label', metadata);
}

/** Builds the Arrow schema `name` for the given list sizes, with class names in its metadata. */
function buildSchema<S extends SchemaName>(name: S, params: SchemaParams<S>, classes: readonly string[] = []): Schema {
  checkParams(name, params);
  const fields = Object.entries(SCHEMAS[name]).map(([column, kind]) => columnField(column, kind as ColumnKind, params));
  const metadata = new Map([
    [META_CLASSES, JSON.stringify(classes)],
    [META_SCHEMA, name],
    [META_SCHEMA_VERSION, String(SCHEMA_VERSION)],
  ]);
  return new Schema(fields, metadata);
}

function describeType(type: DataType): string {
  return String(type);
}

/**
 * Recognises which of our schemas an Arrow schema is (by column names, then checks every type,
 * nullability and tensor tag). Throws an Error whose message says what does not match.
 */
export function identifySchema(schema: Schema, expected?: SchemaName): SchemaInfo {
  const names = schema.fields.map((f) => f.name);
  const name = SCHEMA_NAMES.find((n) => {
    const cols = Object.keys(SCHEMAS[n]);
    return cols.length === names.length && cols.every((c, i) => c === names[i]);
  });
  if (!name) {
    throw new Error(
      `columns [${names.join(', ')}] match none of the shard schemas ` +
        SCHEMA_NAMES.map((n) => `${n} [${Object.keys(SCHEMAS[n]).join(', ')}]`).join('; '),
    );
  }
  if (expected && expected !== name) throw new Error(`schema is ${name}, expected ${expected}`);

  // The list sizes come from the file; everything else must be exactly what buildSchema makes.
  const kinds = SCHEMAS[name] as Record<string, ColumnKind>;
  let params: SchemaParams;
  const listField = schema.fields.find((f) => kinds[f.name] === 'image' || kinds[f.name] === 'vector')!;
  if (kinds[listField.name] === 'image') {
    const raw = listField.metadata.get(EXT_META_KEY);
    let shape: unknown;
    try {
      shape = raw === undefined ? undefined : JSON.parse(raw).shape;
    } catch {
      throw new Error(`column ${listField.name}: ${EXT_META_KEY} is not JSON: ${raw}`);
    }
    if (!Array.isArray(shape) || shape.length !== 3 || shape[2] !== 3) {
      throw new Error(`column ${listField.name}: expected ${EXT_META_KEY} {"shape":[H,W,3]}, got ${raw ?? 'none'}`);
    }
    params = { imageShape: shape as ImageShape };
  } else {
    const t = listField.type;
    params = { dim: t.typeId === Type.FixedSizeList ? (t as FixedSizeList).listSize : -1 };
  }
  try {
    checkParams(name, params);
  } catch (e) {
    throw new Error(`column ${listField.name}: ${(e as Error).message}`);
  }
  const want = buildSchema(name, params as SchemaParams<typeof name>);
  want.fields.forEach((w, i) => {
    const got = schema.fields[i];
    if (!sameType(got.type, w.type)) {
      throw new Error(`column ${w.name}: type ${describeType(got.type)}, expected ${describeType(w.type)}`);
    }
    if (got.nullable !== w.nullable && !w.nullable) {
      // A nullable column where we promise non-null values would let nulls through unnoticed.
      throw new Error(`column ${w.name}: is nullable, expected not null`);
    }
    const ext = w.metadata.get(EXT_NAME_KEY);
    if (ext && got.metadata.get(EXT_NAME_KEY) !== ext) {
      throw new Error(`column ${w.name}: ${EXT_NAME_KEY} is ${got.metadata.get(EXT_NAME_KEY) ?? 'missing'}, expected ${ext}`);
    }
  });
  return { name, params, classes: parseClasses(schema), arrow: schema };
}

/** Same physical type; list child nullability and name are ignored (implementations differ there). */
function sameType(a: DataType, b: DataType): boolean {
  if (a.typeId !== b.typeId) return false;
  if (a.typeId === Type.FixedSizeList) {
    const fa = a as FixedSizeList;
    const fb = b as FixedSizeList;
    return fa.listSize === fb.listSize && sameType(fa.valueType, fb.valueType);
  }
  if (a.typeId === Type.Int || a.typeId === Type.Float) return String(a) === String(b);
  return true;
}

function parseClasses(schema: Schema): string[] {
  const raw = schema.metadata.get(META_CLASSES);
  if (raw === undefined) return [];
  let classes: unknown;
  try {
    classes = JSON.parse(raw);
  } catch {
    throw new Error(`schema metadata "${META_CLASSES}" is not JSON: ${raw.slice(0, 80)}`);
  }
  if (!Array.isArray(classes) || !classes.every((c) => typeof c === 'string')) {
    throw new Error(`schema metadata "${META_CLASSES}" must be a JSON array of strings`);
  }
  return classes;
}

const encoder = new TextEncoder();

function utf8Data(ids: string[]): Data<Utf8> {
  const offsets = new Int32Array(ids.length + 1);
  const parts: Uint8Array[] = new Array(ids.length);
  let total = 0;
  for (let i = 0; i < ids.length; i++) {
    if (typeof ids[i] !== 'string') throw new Error(`id[${i}] must be a string, got ${typeof ids[i]}`);
    parts[i] = encoder.encode(ids[i]);
    total += parts[i].length;
    offsets[i + 1] = total;
  }
  const bytes = new Uint8Array(total);
  for (let i = 0; i < parts.length; i++) bytes.set(parts[i], offsets[i]);
  return makeData({ type: new Utf8(), length: ids.length, valueOffsets: offsets, data: bytes, nullCount: 0 });
}

function labelData(column: string, labels: Array<number | null>): Data<Int32> {
  const values = new Int32Array(labels.length);
  const bitmap = new Uint8Array((labels.length + 7) >> 3);
  let nulls = 0;
  for (let i = 0; i < labels.length; i++) {
    const v = labels[i];
    if (v === null || v === undefined) {
      nulls++;
    } else {
      if (!Number.isInteger(v) || v < -2147483648 || v > 2147483647) throw new Error(`${column}[${i}] must be an int32 or null, got ${v}`);
      values[i] = v;
      bitmap[i >> 3] |= 1 << (i & 7);
    }
  }
  // Arrow allows omitting the bitmap when nothing is null, which keeps the file minimal.
  return makeData({
    type: new Int32(),
    length: labels.length,
    data: values,
    nullBitmap: nulls > 0 ? bitmap : undefined,
    nullCount: nulls,
  });
}

/**
 * Builds a record batch of schema `schema` (from buildSchema) from plain columns without copying
 * the list columns' typed arrays. Throws naming the column whose length does not fit.
 */
export function toRecordBatch<S extends SchemaName>(info: SchemaInfo<S>, columns: Columns<S>): RecordBatch {
  const kinds = SCHEMAS[info.name] as Record<string, ColumnKind>;
  const cols = columns as Record<string, unknown>;
  const ids = cols['id'];
  if (!Array.isArray(ids)) throw new Error(`${info.name} batch: column id must be an array of strings`);
  const n = ids.length;
  const children: Data[] = [];
  for (const field of info.arrow.fields) {
    const kind = kinds[field.name];
    const value = cols[field.name];
    if (value === undefined) throw new Error(`${info.name} batch: column ${field.name} is missing`);
    switch (kind) {
      case 'id':
        children.push(utf8Data(value as string[]));
        break;
      case 'label':
        if (!Array.isArray(value) || value.length !== n) throw new Error(`${info.name} batch: column ${field.name} must be an array of ${n} labels`);
        children.push(labelData(field.name, value));
        break;
      case 'int32':
        if (!(value instanceof Int32Array) || value.length !== n) throw new Error(`${info.name} batch: column ${field.name} must be an Int32Array of ${n} values`);
        children.push(makeData({ type: new Int32(), length: n, data: value, nullCount: 0 }));
        break;
      case 'image':
      case 'vector': {
        const size = listSize(kind, info.params);
        const Ctor = kind === 'image' ? Uint8Array : Float32Array;
        if (!(value instanceof Ctor) || value.length !== n * size) {
          throw new Error(`${info.name} batch: column ${field.name} must be a ${Ctor.name} of ${n}×${size} = ${n * size} values, got ${(value as ArrayLike<number>)?.length} ${(value as object)?.constructor?.name}`);
        }
        const type = field.type as FixedSizeList;
        const child = makeData({ type: type.valueType, length: n * size, data: value, nullCount: 0 } as never);
        children.push(makeData({ type, length: n, child, nullCount: 0 }));
        break;
      }
    }
  }
  const struct = makeData({ type: new Struct(info.arrow.fields), length: n, children, nullCount: 0 });
  return new RecordBatch(info.arrow, struct);
}

function childValues(data: Data, size: number): Uint8Array | Float32Array {
  // Zero copy: a view of the buffer the batch was decoded from (or built on). Arrow JS slices
  // `values` (and a FixedSizeList's child) eagerly, so index 0 is already the slice's first row.
  const values = data.children[0].values as Uint8Array | Float32Array;
  return values.subarray(0, data.length * size);
}

/**
 * The inverse of toRecordBatch: plain columns of a record batch. List and int32 columns are
 * views of the batch's own buffers (no copy); ids and labels are decoded into arrays.
 */
export function fromRecordBatch<S extends SchemaName>(info: SchemaInfo<S>, batch: RecordBatch): Columns<S> {
  const kinds = SCHEMAS[info.name] as Record<string, ColumnKind>;
  const out: Record<string, unknown> = {};
  batch.schema.fields.forEach((field, i) => {
    const data = batch.data.children[i];
    switch (kinds[field.name]) {
      case 'id': {
        const vector = batch.getChildAt(i)!;
        out[field.name] = vector.toArray() as string[];
        break;
      }
      case 'label': {
        const values = data.values as Int32Array; // already sliced; getValid applies data.offset to the bitmap
        const labels: Array<number | null> = new Array(data.length);
        for (let r = 0; r < data.length; r++) labels[r] = data.getValid(r) ? values[r] : null;
        out[field.name] = labels;
        break;
      }
      case 'int32':
        out[field.name] = (data.values as Int32Array).subarray(0, data.length);
        break;
      case 'image':
      case 'vector':
        out[field.name] = childValues(data, (field.type as FixedSizeList).listSize);
        break;
    }
  });
  return out as Columns<S>;
}

/** Row `i` of plain columns; list values are subarray views, not copies. */
export function rowAt<S extends SchemaName>(info: SchemaInfo<S>, columns: Columns<S>, i: number): Row<S> {
  const kinds = SCHEMAS[info.name] as Record<string, ColumnKind>;
  const cols = columns as Record<string, ArrayLike<unknown> & { subarray?: (a: number, b: number) => unknown }>;
  const row: Record<string, unknown> = {};
  for (const [column, kind] of Object.entries(kinds)) {
    if (kind === 'image' || kind === 'vector') {
      const size = listSize(kind, info.params);
      row[column] = cols[column].subarray!(i * size, (i + 1) * size);
    } else {
      row[column] = cols[column][i];
    }
  }
  return row as Row<S>;
}

/** SchemaInfo for writing, built from the schema name, list sizes and classes. */
export function schemaInfo<S extends SchemaName>(name: S, params: SchemaParams<S>, classes: readonly string[] = []): SchemaInfo<S> {
  return { name, params, classes: [...classes], arrow: buildSchema(name, params, classes) };
}
