// Shard writer/reader: round trip per schema, rollover, atomic rename, refusal of bad files, and
// that a second Arrow implementation (arrow-rs via parquet-wasm) reads what we write.
import { mkdtemp, readdir, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { tableFromIPC, type FixedSizeList } from 'apache-arrow';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { schemaInfo, type Columns, type SchemaInfo, type SchemaName, type SchemaParams } from '../../data/schemas.ts';
import { ShardFormatError, ShardWriter, openShard, readShard, shardFileName, writeShards, type ShardFile } from '../../data/shards.ts';

// parquet-wasm's node build is CommonJS and untyped for ESM import; require keeps it simple.
const require = createRequire(import.meta.url);
const parquet = require('parquet-wasm/node') as typeof import('parquet-wasm/node');

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'shards-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Deterministic, row-dependent values so a shifted or swapped row shows up. */
function makeColumns<S extends SchemaName>(info: SchemaInfo<S>, n: number, start = 0): Columns<S> {
  const id = Array.from({ length: n }, (_, i) => `class-${(start + i) % 3}/img-${start + i}.png`);
  const label = Array.from({ length: n }, (_, i) => ((start + i) % 4 === 3 ? null : (start + i) % 3));
  const pixels = (size: number, salt: number) => Uint8Array.from({ length: n * size }, (_, k) => (k + start * size + salt) % 251);
  const floats = (size: number) => Float32Array.from({ length: n * size }, (_, k) => (k + start * size) / 7 - 3.25);
  switch (info.name) {
    case 'images':
      return { id, label, image: pixels(2 * 3 * 3, 0) } as Columns<S>;
    case 'views':
      return { id, epoch: Int32Array.from({ length: n }, (_, i) => start + i), view1: pixels(18, 1), view2: pixels(18, 2) } as Columns<S>;
    case 'embeddings':
      return { id, label, embedding: floats(5) } as Columns<S>;
    case 'logits':
      return { id, label, logits: floats(4) } as Columns<S>;
    default:
      return { id, label, predicted: Int32Array.from({ length: n }, (_, i) => (start + i) % 4), probabilities: floats(4) } as Columns<S>;
  }
}

const PARAMS: { [S in SchemaName]: SchemaParams<S> } = {
  images: { imageShape: [2, 3, 3] },
  views: { imageShape: [2, 3, 3] },
  embeddings: { dim: 5 },
  logits: { dim: 4 },
  predictions: { dim: 4 },
};

/** Concatenates read-back batches into one Columns object for comparison with what was written. */
async function readAll<S extends SchemaName>(paths: string[], name: S): Promise<Record<string, unknown[]>> {
  const out: Record<string, unknown[]> = {};
  for (const p of paths) {
    for await (const batch of readShard(p, { schema: name })) {
      for (const [k, v] of Object.entries(batch.columns)) {
        (out[k] ??= []).push(...Array.from(v as ArrayLike<unknown>));
      }
    }
  }
  return out;
}

function plain(columns: object): Record<string, unknown[]> {
  return Object.fromEntries(Object.entries(columns).map(([k, v]) => [k, Array.from(v as ArrayLike<unknown>)]));
}

describe.each(Object.keys(PARAMS) as SchemaName[])('%s shards', (name) => {
  const info = () => schemaInfo(name, PARAMS[name] as never, ['cat', 'dog', 'emu']);

  it('round-trips: read back equals written, list columns as typed arrays', async () => {
    const sch = info();
    const a = makeColumns(sch, 7, 0);
    const b = makeColumns(sch, 5, 7);
    const files = await writeShards({ dir, schema: sch }, [a, b]);
    expect(files).toHaveLength(1);
    expect(files[0].rows).toBe(12);
    const reader = await openShard(join(dir, files[0].path), { schema: name });
    expect(reader.schema.name).toBe(name);
    expect(reader.schema.params).toEqual(PARAMS[name]);
    expect(reader.schema.classes).toEqual(['cat', 'dog', 'emu']);
    const batches = [];
    for await (const batch of reader.batches()) batches.push(batch);
    await reader.close();
    expect(batches.map((x) => x.numRows)).toEqual([7, 5]);
    expect(plain(batches[0].columns)).toEqual(plain(a));
    expect(plain(batches[1].columns)).toEqual(plain(b));
    for (const [col, v] of Object.entries(a)) {
      const got = (batches[0].columns as Record<string, unknown>)[col];
      if (!Array.isArray(v)) expect((got as object).constructor).toBe((v as object).constructor);
    }
  });

  it('is read by arrow-rs (parquet-wasm) with the same rows and values, also through Parquet', async () => {
    const sch = info();
    const cols = makeColumns(sch, 9, 0);
    const [file] = await writeShards({ dir, schema: sch }, [cols]);
    const bytes = await readFile(join(dir, file.path));
    // An IPC file is magic(8) + a complete IPC stream + footer + int32 length + magic(6).
    const footerLength = bytes.readInt32LE(bytes.length - 10);
    const stream = bytes.subarray(8, bytes.length - 10 - footerLength);
    const table = parquet.Table.fromIPCStream(stream);
    expect(table.recordBatches().reduce((n, b) => n + b.numRows, 0)).toBe(9);
    expect(JSON.parse(table.schema.metadata().get('classes')!)).toEqual(['cat', 'dog', 'emu']);
    const viaParquet = parquet.readParquet(parquet.writeParquet(table));
    const back = tableFromIPC(viaParquet.intoIPCStream());
    expect(back.numRows).toBe(9);
    for (const [col, v] of Object.entries(plain(cols))) {
      const vector = back.getChild(col)!;
      const values = vector.type.typeId === 16 ? Array.from(vector.data.flatMap((d) => Array.from(d.children[0].values as ArrayLike<number>))) : [...vector];
      expect(Array.from(values as ArrayLike<unknown>), col).toEqual(v);
      if (col === 'image' || col === 'view1') {
        const field = back.schema.fields.find((f) => f.name === col)!;
        expect(field.metadata.get('ARROW:extension:name')).toBe('arrow.fixed_shape_tensor');
        expect(JSON.parse(field.metadata.get('ARROW:extension:metadata')!)).toEqual({ shape: [2, 3, 3] });
        expect((field.type as FixedSizeList).listSize).toBe(18);
      }
    }
  });
});

describe('ShardWriter', () => {
  const images = () => schemaInfo('images', { imageShape: [2, 3, 3] }, ['a', 'b', 'c']);

  it('rolls over at maxRows, splitting batches, and keeps row order across shards', async () => {
    const sch = images();
    const batches = [makeColumns(sch, 7, 0), makeColumns(sch, 7, 7), makeColumns(sch, 7, 14)];
    const files = await writeShards({ dir, schema: sch, maxRows: 5 }, batches);
    expect(files.map((f) => f.rows)).toEqual([5, 5, 5, 5, 1]);
    expect(files.map((f) => f.path)).toEqual([0, 1, 2, 3, 4].map((i) => shardFileName('shard', i)));
    const all = await readAll(files.map((f) => join(dir, f.path)), 'images');
    expect(all).toEqual(plain(makeColumns(sch, 21, 0)));
    expect((await readdir(dir)).sort()).toEqual(files.map((f) => f.path));
  });

  it('rolls over at maxBytes', async () => {
    const sch = images();
    // 18 pixel bytes + 4 label bytes + ~20 id bytes ≈ 45 bytes a row: 200 bytes hold 4 rows.
    const files = await writeShards({ dir, schema: sch, maxBytes: 200 }, [makeColumns(sch, 10, 0)]);
    expect(files.length).toBeGreaterThan(1);
    expect(files.reduce((n, f) => n + f.rows, 0)).toBe(10);
    expect(Math.max(...files.map((f) => f.rows))).toBeLessThan(10);
  });

  it('reports the sha256 of each file', async () => {
    const { createHash } = await import('node:crypto');
    const files = await writeShards({ dir, schema: images() }, [makeColumns(images(), 3)]);
    const bytes = await readFile(join(dir, files[0].path));
    expect(files[0].sha256).toBe(createHash('sha256').update(bytes).digest('hex'));
  });

  it('has no final-named file until the whole output is complete, and only the final names after', async () => {
    const sch = images();
    const writer = new ShardWriter({ dir, schema: sch, maxRows: 10 });
    await writer.write(makeColumns(sch, 4));
    const during = await readdir(dir);
    expect(during).toHaveLength(1);
    expect(during[0]).toBe(`shard-00000.arrow.tmp-${process.pid}`);
    await writer.write(makeColumns(sch, 8, 4)); // fills shard 0: complete, but still temporary
    expect((await readdir(dir)).sort()).toEqual([`shard-00000.arrow.tmp-${process.pid}`, `shard-00001.arrow.tmp-${process.pid}`]);
    const files = await writer.close();
    expect(files.map((f) => f.rows)).toEqual([10, 2]);
    expect((await readdir(dir)).sort()).toEqual(['shard-00000.arrow', 'shard-00001.arrow']);
  });

  it('abort deletes temporary and finished shards', async () => {
    const sch = images();
    const writer = new ShardWriter({ dir, schema: sch, maxRows: 3 });
    await writer.write(makeColumns(sch, 5));
    expect((await readdir(dir)).length).toBe(2);
    await writer.abort();
    expect(await readdir(dir)).toEqual([]);
  });

  it('numbers shards from startIndex and starts a new one at cut()', async () => {
    const writer = new ShardWriter({ dir, schema: images(), maxRows: 10, startIndex: 7 });
    await writer.write(makeColumns(images(), 3));
    await writer.cut();
    await writer.cut(); // between shards: nothing to cut
    expect(writer.shardCount).toBe(1);
    await writer.write(makeColumns(images(), 2, 3));
    const shards = await writer.close();
    expect(shards.map((s) => [s.path, s.rows])).toEqual([[shardFileName('shard', 7), 3], [shardFileName('shard', 8), 2]]);
    expect(() => new ShardWriter({ dir, schema: images(), startIndex: -1 })).toThrow(/startIndex must be a non-negative integer/);
  });

  it('writes nothing for zero rows', async () => {
    expect(await writeShards({ dir, schema: images() }, [])).toEqual([]);
    expect(await readdir(dir)).toEqual([]);
  });

  it('refuses columns of the wrong length, naming the column', async () => {
    const sch = images();
    const cols = makeColumns(sch, 3);
    cols.image = cols.image.subarray(0, 10);
    const writer = new ShardWriter({ dir, schema: sch });
    await expect(writer.write(cols)).rejects.toThrow(/column image must be a Uint8Array of 3×18/);
    await writer.abort();
  });

  it('validates options with the field name', () => {
    expect(() => new ShardWriter({ dir, schema: images(), maxRows: 0 })).toThrow(/maxRows must be a positive integer/);
    expect(() => new ShardWriter({ dir, schema: images(), prefix: '../x' })).toThrow(/prefix/);
  });
});

describe('openShard refuses bad files', () => {
  const images = () => schemaInfo('images', { imageShape: [2, 3, 3] }, []);
  let file: ShardFile;
  beforeEach(async () => {
    [file] = await writeShards({ dir, schema: images() }, [makeColumns(images(), 6, 0), makeColumns(images(), 6, 6)]);
  });

  it('a truncated file, naming the file', async () => {
    const path = join(dir, file.path);
    const { size } = await import('node:fs/promises').then((fs) => fs.stat(path));
    await truncate(path, size - 50);
    const err = await openShard(path).catch((e) => e);
    expect(err).toBeInstanceOf(ShardFormatError);
    expect(err.message).toContain(path);
    expect(err.message).toMatch(/truncated/);
  });

  it('a file cut in the middle of the data but with its tail intact', async () => {
    // Splices out bytes from the middle: the footer then points past the end of the data.
    const path = join(dir, file.path);
    const bytes = await readFile(path);
    await writeFile(path, Buffer.concat([bytes.subarray(0, 300), bytes.subarray(bytes.length - 400)]));
    const err = await openShard(path).catch((e) => e);
    expect(err).toBeInstanceOf(ShardFormatError);
    expect(err.message).toContain(path);
  });

  it('a foreign file', async () => {
    const path = join(dir, 'photo.arrow');
    await writeFile(path, 'this is plainly not an Arrow file, just some text\n');
    await expect(openShard(path)).rejects.toThrow(`${path}: not an Arrow IPC file`);
  });

  it('an empty file', async () => {
    const path = join(dir, 'empty.arrow');
    await writeFile(path, '');
    await expect(openShard(path)).rejects.toThrow(/empty file/);
  });

  it('a missing file', async () => {
    await expect(openShard(join(dir, 'nope.arrow'))).rejects.toThrow(/nope\.arrow: cannot open: ENOENT/);
  });

  it('an Arrow file of another schema than expected', async () => {
    const path = join(dir, file.path);
    await expect(openShard(path, { schema: 'embeddings' })).rejects.toThrow(`${path}: wrong schema: schema is images, expected embeddings`);
  });

  it('an Arrow file that is none of our schemas', async () => {
    const { tableFromArrays, tableToIPC } = await import('apache-arrow');
    const path = join(dir, 'foreign.arrow');
    await writeFile(path, tableToIPC(tableFromArrays({ id: ['a', 'b'], score: Float64Array.of(1, 2) }), 'file'));
    await expect(openShard(path)).rejects.toThrow(/foreign\.arrow: wrong schema: columns \[id, score\] match none/);
  });

  it('an images file whose image column has the wrong element type', async () => {
    const { Field, FixedSizeList, Float32, Int32, Schema, Utf8, RecordBatch, RecordBatchFileWriter, makeData, Struct } = await import('apache-arrow');
    const floatList = new FixedSizeList(18, new Field('item', new Float32(), true));
    const fields = [
      new Field('id', new Utf8(), false),
      new Field('label', new Int32(), true),
      new Field('image', floatList, false, new Map([['ARROW:extension:name', 'arrow.fixed_shape_tensor'], ['ARROW:extension:metadata', '{"shape":[2,3,3]}']])),
    ];
    const schema = new Schema(fields);
    const child = makeData({ type: new Float32(), length: 18, data: new Float32Array(18) });
    const struct = makeData({
      type: new Struct(fields),
      length: 1,
      children: [
        makeData({ type: new Utf8(), length: 1, valueOffsets: Int32Array.of(0, 1), data: Uint8Array.of(97) }),
        makeData({ type: new Int32(), length: 1, data: Int32Array.of(0) }),
        makeData({ type: floatList, length: 1, child }),
      ],
    });
    const path = join(dir, 'float-images.arrow');
    await writeFile(path, RecordBatchFileWriter.writeAll([new RecordBatch(schema, struct)]).toUint8Array(true));
    await expect(openShard(path)).rejects.toThrow(/float-images\.arrow: wrong schema: column image: type FixedSizeList\[18\]<Float32>/);
  });

  it('an Arrow IPC stream (not file)', async () => {
    const { tableFromArrays, tableToIPC } = await import('apache-arrow');
    const path = join(dir, 'stream.arrow');
    await writeFile(path, tableToIPC(tableFromArrays({ id: ['a'] }), 'stream'));
    await expect(openShard(path)).rejects.toThrow(/Arrow IPC stream, not an Arrow IPC file/);
  });
});

describe('reader is lazy and zero-copy', () => {
  it('gives list columns as views of the batch buffer Arrow read, one batch at a time', async () => {
    const sch = schemaInfo('embeddings', { dim: 5 }, []);
    const [file] = await writeShards({ dir, schema: sch }, [makeColumns(sch, 4, 0), makeColumns(sch, 4, 4)]);
    const reader = await openShard(join(dir, file.path), { schema: 'embeddings' });
    const buffers = [];
    for await (const batch of reader.batches()) {
      const arrowValues = batch.recordBatch.getChild('embedding')!.data[0].children[0].values as Float32Array;
      expect(batch.columns.embedding).toBeInstanceOf(Float32Array);
      expect(batch.columns.embedding.buffer).toBe(arrowValues.buffer);
      expect(batch.columns.embedding.byteOffset).toBe(arrowValues.byteOffset);
      buffers.push(batch.columns.embedding.buffer);
    }
    await reader.close();
    // Each batch is read into its own buffer (no whole-file buffer behind them).
    expect(buffers[0]).not.toBe(buffers[1]);
    expect(buffers[0].byteLength).toBeLessThan((await readFile(join(dir, file.path))).length);
  });
});
