// TensorBoard event files (`events.out.tfevents.*`): TFRecord framing around tensorflow.Event
// protobufs, the scalar subset only; a writer and the reader that inverts it.
import { open, readFile, type FileHandle } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';

/** One tensorflow.Event as far as scalars go: `fileVersion` in a file's first event, `scalars` (tag → value) in the rest. */
export interface TfEvent {
  /** Seconds since the epoch (a double). */
  wallTime: number;
  /** An int64; exact up to 2^53. */
  step: number;
  fileVersion?: string;
  /** Summary values, each a float32 `simple_value`. */
  scalars?: Record<string, number>;
}

/** The file_version TensorBoard expects in the first event of a file. */
export const EVENTS_FILE_VERSION = 'brain.Event:2';

/** A record whose length or data does not match its CRC, or an event that is not valid protobuf. */
export class TfEventsError extends Error {
  override name = 'TfEventsError';
}

// CRC32C (Castagnoli), reflected polynomial 0x82f63b78: TFRecord's checksum.
const CRC32C_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

/** CRC32C of `bytes`, unsigned; crc32c(ascii "123456789") = 0xe3069283. */
export function crc32c(bytes: Uint8Array): number {
  let crc = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) crc = CRC32C_TABLE[(crc ^ bytes[i]) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

/** TFRecord's masked CRC: rotate right by 15 and add 0xa282ead8, mod 2^32 (a CRC of data that holds CRCs is weak otherwise). */
export function maskedCrc32c(bytes: Uint8Array): number {
  const crc = crc32c(bytes);
  return ((((crc >>> 15) | (crc << 17)) >>> 0) + 0xa282ead8) >>> 0;
}

/** One TFRecord: uint64 LE length, masked CRC of those 8 bytes, the data, masked CRC of the data. */
export function encodeRecord(data: Uint8Array): Uint8Array {
  const out = new Uint8Array(8 + 4 + data.length + 4);
  const view = new DataView(out.buffer);
  view.setBigUint64(0, BigInt(data.length), true);
  view.setUint32(8, maskedCrc32c(out.subarray(0, 8)), true);
  out.set(data, 12);
  view.setUint32(12 + data.length, maskedCrc32c(data), true);
  return out;
}

/**
 * The records of a TFRecord file's bytes, both CRCs checked (`file` names it in errors). A record
 * cut short at the end, the one a killed writer was appending, is left out, as TensorBoard does.
 */
export function decodeRecords(bytes: Uint8Array, file: string): Uint8Array[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const records: Uint8Array[] = [];
  let offset = 0;
  while (offset + 12 <= bytes.length) {
    const length = view.getBigUint64(offset, true);
    const lengthCrc = view.getUint32(offset + 8, true);
    const expectedLengthCrc = maskedCrc32c(bytes.subarray(offset, offset + 8));
    if (lengthCrc !== expectedLengthCrc) {
      throw new TfEventsError(`${file}: record at byte ${offset}: length CRC is ${hex(lengthCrc)}, the length bytes give ${hex(expectedLengthCrc)}`);
    }
    const end = offset + 12 + Number(length) + 4;
    if (end > bytes.length) break;
    const data = bytes.subarray(offset + 12, end - 4);
    const dataCrc = view.getUint32(end - 4, true);
    const expectedDataCrc = maskedCrc32c(data);
    if (dataCrc !== expectedDataCrc) {
      throw new TfEventsError(`${file}: record at byte ${offset}: data CRC is ${hex(dataCrc)}, its ${data.length} bytes give ${hex(expectedDataCrc)}`);
    }
    records.push(data);
    offset = end;
  }
  return records;
}

const hex = (v: number) => `0x${v.toString(16).padStart(8, '0')}`;

// Protobuf wire types and the field numbers of tensorflow/core/util/event.proto and summary.proto.
const VARINT = 0;
const FIXED64 = 1;
const LENGTH_DELIMITED = 2;
const FIXED32 = 5;
const EVENT = { wallTime: 1, step: 2, fileVersion: 3, summary: 5 } as const;
const SUMMARY = { value: 1 } as const;
const VALUE = { tag: 1, simpleValue: 2 } as const;

/** Appends protobuf fields to a growing byte list. */
class ProtoWriter {
  private readonly bytes: number[] = [];

  private varint(v: bigint): void {
    let u = BigInt.asUintN(64, v); // a negative int64 is its 10-byte two's complement
    while (u >= 0x80n) {
      this.bytes.push(Number(u & 0x7fn) | 0x80);
      u >>= 7n;
    }
    this.bytes.push(Number(u));
  }

  private key(field: number, wireType: number): void {
    this.varint(BigInt((field << 3) | wireType));
  }

  int64(field: number, v: number): void {
    if (!Number.isSafeInteger(v)) throw new TfEventsError(`int64 field ${field} must be a safe integer, got ${v}`);
    this.key(field, VARINT);
    this.varint(BigInt(v));
  }

  double(field: number, v: number): void {
    this.key(field, FIXED64);
    const b = new Uint8Array(8);
    new DataView(b.buffer).setFloat64(0, v, true);
    this.bytes.push(...b);
  }

  float(field: number, v: number): void {
    this.key(field, FIXED32);
    const b = new Uint8Array(4);
    new DataView(b.buffer).setFloat32(0, v, true);
    this.bytes.push(...b);
  }

  bytesField(field: number, v: Uint8Array): void {
    this.key(field, LENGTH_DELIMITED);
    this.varint(BigInt(v.length));
    this.bytes.push(...v);
  }

  string(field: number, v: string): void {
    this.bytesField(field, new TextEncoder().encode(v));
  }

  finish(): Uint8Array {
    return Uint8Array.from(this.bytes);
  }
}

/** The protobuf bytes of one Event: wall_time, step, then file_version or the summary of scalars (each value's simple_value, in a oneof, always written). */
export function encodeEvent(event: TfEvent): Uint8Array {
  const w = new ProtoWriter();
  // proto3 leaves out scalars at their default, 0; protobuf's own serialiser then gives the same bytes.
  if (event.wallTime !== 0) w.double(EVENT.wallTime, event.wallTime);
  if (event.step !== 0) w.int64(EVENT.step, event.step);
  if (event.fileVersion !== undefined) w.string(EVENT.fileVersion, event.fileVersion);
  if (event.scalars !== undefined) {
    const summary = new ProtoWriter();
    for (const [tag, value] of Object.entries(event.scalars)) {
      const v = new ProtoWriter();
      v.string(VALUE.tag, tag);
      v.float(VALUE.simpleValue, value);
      summary.bytesField(SUMMARY.value, v.finish());
    }
    w.bytesField(EVENT.summary, summary.finish());
  }
  return w.finish();
}

/** Calls `onField` for each field of a message; a value is a bigint (varint), a DataView (fixed32/64) or bytes. */
function readFields(bytes: Uint8Array, onField: (field: number, value: bigint | DataView | Uint8Array) => void): void {
  let i = 0;
  const varint = (): bigint => {
    let v = 0n;
    for (let shift = 0n; ; shift += 7n) {
      if (i >= bytes.length || shift > 63n) throw new TfEventsError(`a varint runs past byte ${i} of a ${bytes.length}-byte message`);
      const b = bytes[i++];
      v |= BigInt(b & 0x7f) << shift;
      if (b < 0x80) return v;
    }
  };
  const take = (n: number): number => {
    if (i + n > bytes.length) throw new TfEventsError(`a field of ${n} bytes at byte ${i} runs past the ${bytes.length}-byte message`);
    const at = i;
    i += n;
    return at;
  };
  while (i < bytes.length) {
    const key = Number(varint());
    const field = key >>> 3;
    const wireType = key & 7;
    if (wireType === VARINT) onField(field, varint());
    else if (wireType === FIXED64) onField(field, new DataView(bytes.buffer, bytes.byteOffset + take(8), 8));
    else if (wireType === FIXED32) onField(field, new DataView(bytes.buffer, bytes.byteOffset + take(4), 4));
    else if (wireType === LENGTH_DELIMITED) {
      const n = Number(varint());
      const at = take(n);
      onField(field, bytes.subarray(at, at + n));
    } else throw new TfEventsError(`field ${field} has wire type ${wireType}, which this reader does not take (at byte ${i} of ${bytes.length})`);
  }
}

/** The inverse of {@link encodeEvent}; fields it does not know (graphs, images, ...) are skipped. */
export function decodeEvent(bytes: Uint8Array): TfEvent {
  const event: TfEvent = { wallTime: 0, step: 0 };
  readFields(bytes, (field, value) => {
    if (field === EVENT.wallTime && value instanceof DataView) event.wallTime = value.getFloat64(0, true);
    else if (field === EVENT.step && typeof value === 'bigint') event.step = Number(BigInt.asIntN(64, value));
    else if (field === EVENT.fileVersion && value instanceof Uint8Array) event.fileVersion = new TextDecoder().decode(value);
    else if (field === EVENT.summary && value instanceof Uint8Array) {
      const scalars = (event.scalars ??= {});
      readFields(value, (f, v) => {
        if (f !== SUMMARY.value || !(v instanceof Uint8Array)) return;
        let tag: string | undefined;
        let simple: number | undefined;
        readFields(v, (g, x) => {
          if (g === VALUE.tag && x instanceof Uint8Array) tag = new TextDecoder().decode(x);
          else if (g === VALUE.simpleValue && x instanceof DataView) simple = x.getFloat32(0, true);
        });
        if (tag !== undefined && simple !== undefined) scalars[tag] = simple;
      });
    }
  });
  return event;
}

/** A whole events file's bytes from its events, the file_version event first. */
export function encodeEventsFile(events: TfEvent[]): Uint8Array {
  const records = events.map((e) => encodeRecord(encodeEvent(e)));
  const out = new Uint8Array(records.reduce((n, r) => n + r.length, 0));
  let at = 0;
  for (const r of records) {
    out.set(r, at);
    at += r.length;
  }
  return out;
}

/** The events of a file, its first (the file_version event) included; see {@link decodeRecords} for what is checked. */
export async function readEvents(file: string): Promise<TfEvent[]> {
  const bytes = await readFile(file);
  return decodeRecords(bytes, file).map((record, i) => {
    try {
      return decodeEvent(record);
    } catch (err) {
      throw new TfEventsError(`${file}: record ${i}: ${(err as Error).message}`);
    }
  });
}

/** Whether a file name is an events file, as TensorBoard tells them (it reads every file with "tfevents" in its name). */
export function isEventsFile(name: string): boolean {
  return name.startsWith('events.out.tfevents.');
}

/**
 * Writes scalars to `DIR/events.out.tfevents.<unix seconds>.<hostname>.<pid>`; records collect in
 * memory until {@link flush}. A file of that name already there is appended to (TensorBoard reads
 * a second file_version event as it reads the first).
 */
export class EventsWriter {
  private pending: Uint8Array[] = [];

  private constructor(
    readonly path: string,
    private readonly handle: FileHandle,
  ) {}

  static async open(dir: string, wallTime = Date.now() / 1000): Promise<EventsWriter> {
    const path = join(dir, `events.out.tfevents.${Math.floor(wallTime)}.${hostname()}.${process.pid}`);
    const writer = new EventsWriter(path, await open(path, 'a'));
    writer.pending.push(encodeRecord(encodeEvent({ wallTime, step: 0, fileVersion: EVENTS_FILE_VERSION })));
    await writer.flush();
    return writer;
  }

  /** One event of scalars at `step` (each stored as a float32). */
  scalars(step: number, values: Record<string, number>, wallTime = Date.now() / 1000): void {
    this.pending.push(encodeRecord(encodeEvent({ wallTime, step, scalars: values })));
  }

  async flush(): Promise<void> {
    const records = this.pending;
    this.pending = [];
    for (const r of records) await this.handle.write(r);
  }

  async close(): Promise<void> {
    try {
      await this.flush();
    } finally {
      await this.handle.close();
    }
  }
}
