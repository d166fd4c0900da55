// Arrow IPC file shards: a writer that streams record batches into size-capped, atomically renamed
// shard files, and its inverse, a reader that validates a shard and yields its batches lazily.
import { createHash, type Hash } from 'node:crypto';
import { closeSync, fdatasyncSync, openSync, writeSync } from 'node:fs';
import { open, rename, rm, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import {
  RecordBatch,
  RecordBatchFileWriter,
  RecordBatchReader,
  type Schema,
  util as arrowUtil,
  type AsyncRecordBatchFileReader,
  type Data,
} from 'apache-arrow';
import { Message } from 'apache-arrow/ipc/metadata/message';
import { syncDir, tempPath, writeError } from './files.ts';
import {
  fromRecordBatch,
  identifySchema,
  toRecordBatch,
  type Columns,
  type SchemaInfo,
  type SchemaName,
} from './schemas.ts';

/** DESIGN.md: shards hold at most ~10,000 rows or 256 MB. */
export const DEFAULT_MAX_ROWS = 10_000;
export const DEFAULT_MAX_BYTES = 256 * 1024 * 1024;

/** A finished shard: `path` is relative to the writer's `dir` (as manifests record it). */
export interface ShardFile {
  path: string;
  rows: number;
  sha256: string;
  /** File size; absent in manifests written before it was recorded. */
  bytes?: number;
}

export interface ShardWriterOptions<S extends SchemaName> {
  /** Folder the shards go into; must exist. */
  dir: string;
  /** What is written; from schemaInfo(name, params, classes). */
  schema: SchemaInfo<S>;
  /** Shard i is named `${prefix}-${i padded to 5}.arrow`. Default 'shard'. */
  prefix?: string;
  /** Number of the first shard, so an incremental writer never takes the name of a shard already published. Default 0. */
  startIndex?: number;
  /** Start a new shard before exceeding this many rows. Default 10,000. */
  maxRows?: number;
  /** Start a new shard before exceeding this many bytes (estimated from the batch buffers). Default 256 MiB. */
  maxBytes?: number;
  /** fdatasync each shard before its rename, and the folder after it, so a crash cannot leave a complete-looking torn file. Default true. */
  sync?: boolean;
}

/**
 * apache-arrow's file writer leaves the schema message out of the file body (it is only in the
 * footer). The format spec puts a complete IPC stream after the leading magic, and arrow-cpp and
 * arrow-rs write one, so we add the schema message back: the body then also reads as a stream.
 */
class SpecFileWriter extends RecordBatchFileWriter {
  protected override _writeSchema(schema: Schema): this {
    return this._writeMagic()._writePadding(2)._writeMessage(Message.from(schema));
  }
}

/** Shard file name for index i; exported so cleaners and tests agree with the writer. */
export function shardFileName(prefix: string, index: number): string {
  return `${prefix}-${String(index).padStart(5, '0')}.arrow`;
}

/** Sum of the body buffers of a batch slice: what the IPC body will roughly take. */
function dataBytes(data: Data): number {
  let n = 0;
  for (const b of [data.values, data.valueOffsets, data.nullBitmap]) if (b) n += (b as ArrayBufferView).byteLength;
  for (const c of data.children) n += dataBytes(c);
  return n;
}

interface OpenShard {
  name: string;
  tmpPath: string;
  fd: number;
  hash: Hash;
  rows: number;
  bytes: number;
  writer: SpecFileWriter;
  /** Drains the Arrow writer's byte queue into the file; settles when the writer is closed. */
  pump: Promise<void>;
  pumpError: Error | null;
}

/**
 * Streams record batches into Arrow IPC file shards (uncompressed: apache-arrow 21's compressed
 * writer produces files other implementations reject). Each shard is written as its tempPath,
 * `<name>.tmp-<pid>`, and keeps that name until the whole output is complete: close() then renames
 * them all, or finish() leaves the renaming to the caller (data/manifest.ts publishDataset, which
 * replaces a previous dataset only when the new one is whole). A failed write throws a
 * FileWriteError naming the shard and the errno. One writer per output; write() is not reentrant.
 */
export class ShardWriter<S extends SchemaName> {
  readonly dir: string;
  readonly schema: SchemaInfo<S>;
  private readonly prefix: string;
  private readonly startIndex: number;
  private readonly maxRows: number;
  private readonly maxBytes: number;
  private readonly sync: boolean;
  private current: OpenShard | null = null;
  /** Complete shards, still under their temporary names until published. */
  private readonly done: ShardFile[] = [];
  /** Final paths this writer renamed shards to (close()): what abort() must remove besides temporaries. */
  private readonly published: string[] = [];
  private closed = false;

  constructor(options: ShardWriterOptions<S>) {
    const o = { prefix: 'shard', startIndex: 0, maxRows: DEFAULT_MAX_ROWS, maxBytes: DEFAULT_MAX_BYTES, sync: true, ...options };
    if (typeof o.dir !== 'string' || o.dir === '') throw new Error('shardWriter.dir must be a non-empty path');
    if (!Number.isInteger(o.maxRows) || o.maxRows <= 0) throw new Error(`shardWriter.maxRows must be a positive integer, got ${o.maxRows}`);
    if (!(o.maxBytes > 0)) throw new Error(`shardWriter.maxBytes must be positive, got ${o.maxBytes}`);
    if (!Number.isInteger(o.startIndex) || o.startIndex < 0) throw new Error(`shardWriter.startIndex must be a non-negative integer, got ${o.startIndex}`);
    if (!/^[A-Za-z0-9._-]+$/.test(o.prefix)) throw new Error(`shardWriter.prefix must be a plain file name prefix, got ${JSON.stringify(o.prefix)}`);
    this.dir = o.dir;
    this.schema = o.schema;
    this.prefix = o.prefix;
    this.startIndex = o.startIndex;
    this.maxRows = o.maxRows;
    this.maxBytes = o.maxBytes;
    this.sync = o.sync;
  }

  /** Rows written so far, over all shards. */
  get rows(): number {
    return this.done.reduce((n, s) => n + s.rows, 0) + (this.current?.rows ?? 0);
  }

  /** Shards completed so far (the one being written not counted). */
  get shardCount(): number {
    return this.done.length;
  }

  /** Completes the shard being written, so the next row starts a new one (a no-op between shards). */
  async cut(): Promise<void> {
    if (this.closed) throw new Error(`shard writer for ${this.dir} is closed`);
    await this.finishShard();
  }

  /** Appends a batch (plain columns or a record batch of this writer's schema), rolling over shards as needed. */
  async write(batch: Columns<S> | RecordBatch): Promise<void> {
    if (this.closed) throw new Error(`shard writer for ${this.dir} is closed`);
    let rest = batch instanceof RecordBatch ? batch : toRecordBatch(this.schema, batch);
    if (batch instanceof RecordBatch && !arrowUtil.compareSchemas(batch.schema, this.schema.arrow)) {
      throw new Error(`record batch schema does not match the ${this.schema.name} schema this writer writes`);
    }
    while (rest.numRows > 0) {
      const shard = this.current ?? this.startShard();
      const perRow = dataBytes(rest.data) / rest.numRows;
      const fitRows = this.maxRows - shard.rows;
      const fitBytes = Math.floor((this.maxBytes - shard.bytes) / Math.max(perRow, 1));
      let take = Math.min(rest.numRows, fitRows, fitBytes);
      if (take <= 0) {
        if (shard.rows > 0) {
          await this.finishShard();
          continue;
        }
        take = 1; // a single row larger than maxBytes still has to go somewhere
      }
      const part = take === rest.numRows ? rest : rest.slice(0, take);
      shard.writer.write(part);
      // The pump only awaits microtasks, so one macrotask turn drains everything just queued;
      // afterwards shard.bytes is exact and memory stays bounded by one batch.
      await new Promise<void>((resolve) => setImmediate(resolve));
      if (shard.pumpError) throw shard.pumpError;
      shard.rows += take;
      rest = take === rest.numRows ? rest.slice(0, 0) : rest.slice(take);
      if (shard.rows >= this.maxRows || shard.bytes >= this.maxBytes) await this.finishShard();
    }
  }

  /**
   * Finishes the last shard and returns every shard written, in order, each complete and flushed
   * but still at `tempPath(join(dir, path))`. Writes nothing for zero rows.
   */
  async finish(): Promise<ShardFile[]> {
    if (!this.closed) {
      await this.finishShard();
      this.closed = true;
    }
    return [...this.done];
  }

  /** finish(), then renames every shard to its final name (for outputs no reader holds yet). */
  async close(): Promise<ShardFile[]> {
    const shards = await this.finish();
    for (const s of shards) {
      const path = join(this.dir, s.path);
      if (this.published.includes(path)) continue;
      await rename(tempPath(path), path).catch((e) => {
        throw writeError(path, e);
      });
      this.published.push(path);
    }
    if (this.sync && shards.length > 0) await syncDir(this.dir);
    return shards;
  }

  /**
   * Stops writing and deletes everything this writer created: its temporary files and the shards
   * it renamed into place. Never throws, so the error that led here is the one reported.
   */
  async abort(): Promise<void> {
    this.closed = true;
    const shard = this.current;
    this.current = null;
    if (shard) {
      try {
        shard.writer.abort();
      } catch {
        // the byte queue is already closed when the pump failed
      }
      await shard.pump.catch(() => undefined);
      try {
        closeSync(shard.fd);
      } catch {
        // already closed
      }
      await rm(shard.tmpPath, { force: true }).catch(() => undefined);
    }
    for (const s of this.done) await rm(tempPath(join(this.dir, s.path)), { force: true }).catch(() => undefined);
    for (const p of this.published) await rm(p, { force: true }).catch(() => undefined);
    this.done.length = 0;
    this.published.length = 0;
  }

  private startShard(): OpenShard {
    const name = shardFileName(this.prefix, this.startIndex + this.done.length);
    const tmpPath = tempPath(join(this.dir, name));
    let fd: number;
    try {
      fd = openSync(tmpPath, 'w');
    } catch (e) {
      throw writeError(join(this.dir, name), e);
    }
    const writer = new SpecFileWriter();
    const shard: OpenShard = { name, tmpPath, fd, hash: createHash('sha256'), rows: 0, bytes: 0, writer, pump: Promise.resolve(), pumpError: null };
    shard.pump = (async () => {
      try {
        for await (const chunk of writer) {
          shard.hash.update(chunk);
          let off = 0;
          while (off < chunk.byteLength) off += writeSync(fd, chunk, off, chunk.byteLength - off);
          shard.bytes += chunk.byteLength;
        }
      } catch (e) {
        shard.pumpError = writeError(join(this.dir, name), e);
      }
    })();
    this.current = shard;
    return shard;
  }

  private async finishShard(): Promise<void> {
    const shard = this.current;
    if (!shard) return;
    this.current = null;
    try {
      // The footer and trailing magic; after a failed pump the byte queue is closed and this throws.
      if (!shard.pumpError) shard.writer.close();
      await shard.pump;
      if (shard.pumpError) throw shard.pumpError;
      if (this.sync) fdatasyncSync(shard.fd);
    } catch (e) {
      this.current = shard; // abort() removes its temporary file
      throw shard.pumpError ?? writeError(join(this.dir, shard.name), e);
    }
    closeSync(shard.fd);
    this.done.push({ path: shard.name, rows: shard.rows, sha256: shard.hash.digest('hex'), bytes: shard.bytes });
  }
}

/** Writes all batches into shards in `dir` and returns them; convenience over ShardWriter. */
export async function writeShards<S extends SchemaName>(
  options: ShardWriterOptions<S>,
  batches: Iterable<Columns<S> | RecordBatch> | AsyncIterable<Columns<S> | RecordBatch>,
): Promise<ShardFile[]> {
  const writer = new ShardWriter(options);
  try {
    for await (const b of batches) await writer.write(b);
    return await writer.close();
  } catch (e) {
    await writer.abort();
    throw e;
  }
}

/** A shard that is not a complete Arrow IPC file of one of our schemas. */
export class ShardFormatError extends Error {
  constructor(
    readonly path: string,
    readonly reason: string,
  ) {
    super(`${path}: ${reason}`);
    this.name = 'ShardFormatError';
  }
}

/** One record batch of a shard as plain columns (list columns are views of the read buffer). */
export interface ShardBatch<S extends SchemaName> {
  /** Position of the batch in the file. */
  index: number;
  numRows: number;
  columns: Columns<S>;
  /** The Arrow batch the columns view, for code that wants Arrow's own API. */
  recordBatch: RecordBatch;
}

export interface ShardReader<S extends SchemaName> {
  readonly path: string;
  readonly schema: SchemaInfo<S>;
  readonly numBatches: number;
  /** Reads the file batch by batch: one batch's bytes in memory at a time. */
  batches(): AsyncGenerator<ShardBatch<S>>;
  close(): Promise<void>;
}

export interface OpenShardOptions<S extends SchemaName> {
  /** Refuse the file unless it holds this schema. */
  schema?: S;
}

const MAGIC = Buffer.from('ARROW1');
const STREAM_CONTINUATION = 0xffffffff;

/**
 * Opens and validates a shard: Arrow IPC file magic at both ends, a readable footer, every record
 * batch inside the file, and one of our schemas (the expected one when given). Throws
 * ShardFormatError naming the file and the reason.
 */
export async function openShard<S extends SchemaName = SchemaName>(path: string, options: OpenShardOptions<S> = {}): Promise<ShardReader<S>> {
  let fh: FileHandle;
  try {
    fh = await open(path, 'r');
  } catch (e) {
    throw new ShardFormatError(path, `cannot open: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  try {
    const info = await validateShard(fh, path, options.schema);
    return makeReader(fh, path, info.reader, info.schema as SchemaInfo<S>);
  } catch (e) {
    await fh.close().catch(() => undefined);
    throw e;
  }
}

async function readExactly(fh: FileHandle, position: number, length: number): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  const { bytesRead } = await fh.read(buf, 0, length, position);
  return buf.subarray(0, bytesRead);
}

async function validateShard(fh: FileHandle, path: string, expected: SchemaName | undefined) {
  const { size } = await fh.stat();
  const head = await readExactly(fh, 0, 8);
  if (head.length < 6 || !head.subarray(0, 6).equals(MAGIC)) {
    const reason =
      size === 0
        ? 'empty file, not an Arrow IPC file'
        : head.length >= 4 && head.readUInt32LE(0) === STREAM_CONTINUATION
          ? 'is an Arrow IPC stream, not an Arrow IPC file (Feather v2)'
          : 'not an Arrow IPC file (no ARROW1 magic at the start)';
    throw new ShardFormatError(path, reason);
  }
  // Layout: magic(6) pad(2) messages... footer, int32 footer length, magic(6).
  const tail = size >= 18 ? await readExactly(fh, size - 10, 10) : Buffer.alloc(0);
  if (tail.length < 10 || !tail.subarray(4).equals(MAGIC)) {
    throw new ShardFormatError(path, `truncated: no Arrow file footer (file of ${size} bytes does not end with ARROW1 magic; was it written completely?)`);
  }
  const footerLength = tail.readInt32LE(0);
  const dataEnd = size - 10 - footerLength;
  if (footerLength <= 0 || dataEnd < 8) throw new ShardFormatError(path, `corrupt footer length ${footerLength} in a file of ${size} bytes`);

  let reader: AsyncRecordBatchFileReader;
  try {
    const r = await RecordBatchReader.from(fh);
    reader = (await r.open()) as AsyncRecordBatchFileReader;
    if (!reader.isFile()) throw new Error('not read as a file');
  } catch (e) {
    throw new ShardFormatError(path, `unreadable Arrow footer: ${(e as Error).message}`);
  }
  for (let i = 0; i < reader.numRecordBatches; i++) {
    const block = reader.footer!.getRecordBatch(i)!;
    const end = Number(block.offset) + block.metaDataLength + Number(block.bodyLength);
    if (end > dataEnd) throw new ShardFormatError(path, `truncated or corrupt: record batch ${i} ends at byte ${end}, past the data end ${dataEnd}`);
  }
  let schema: SchemaInfo;
  try {
    schema = identifySchema(reader.schema, expected);
  } catch (e) {
    throw new ShardFormatError(path, `wrong schema: ${(e as Error).message}`);
  }
  return { reader, schema };
}

function makeReader<S extends SchemaName>(fh: FileHandle, path: string, reader: AsyncRecordBatchFileReader, schema: SchemaInfo<S>): ShardReader<S> {
  let closed = false;
  const close = async () => {
    if (closed) return;
    closed = true;
    await fh.close().catch(() => undefined);
  };
  return {
    path,
    schema,
    numBatches: reader.numRecordBatches,
    close,
    async *batches() {
      for (let index = 0; index < reader.numRecordBatches; index++) {
        if (closed) throw new Error(`${path}: reader is closed`);
        let recordBatch: RecordBatch | null;
        try {
          recordBatch = await reader.readRecordBatch(index);
        } catch (e) {
          throw new ShardFormatError(path, `record batch ${index} is corrupt: ${(e as Error).message}`);
        }
        if (!recordBatch) throw new ShardFormatError(path, `record batch ${index} is missing`);
        yield { index, numRows: recordBatch.numRows, columns: fromRecordBatch(schema, recordBatch), recordBatch };
      }
    },
  };
}

/** Reads every batch of one shard, closing the file at the end or on early exit. */
export async function* readShard<S extends SchemaName = SchemaName>(path: string, options: OpenShardOptions<S> = {}): AsyncGenerator<ShardBatch<S>> {
  const reader = await openShard(path, options);
  try {
    yield* reader.batches();
  } finally {
    await reader.close();
  }
}
