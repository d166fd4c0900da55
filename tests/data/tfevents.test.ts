import { mkdtemp, readdir, readFile, writeFile } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  crc32c,
  decodeEvent,
  decodeRecords,
  encodeEvent,
  encodeEventsFile,
  encodeRecord,
  EVENTS_FILE_VERSION,
  EventsWriter,
  maskedCrc32c,
  readEvents,
} from '../../data/tfevents.ts';

const ascii = (s: string) => new TextEncoder().encode(s);
const hexOf = (b: Uint8Array) => Buffer.from(b).toString('hex');

describe('crc32c', () => {
  it('gives the Castagnoli check values', () => {
    expect(crc32c(ascii('123456789'))).toBe(0xe3069283);
    // RFC 3720 (iSCSI) B.4: 32 bytes of zeros and 32 bytes of 0xff.
    expect(crc32c(new Uint8Array(32))).toBe(0x8a9136aa);
    expect(crc32c(new Uint8Array(32).fill(0xff))).toBe(0x62a8ab43);
    expect(crc32c(new Uint8Array(0))).toBe(0);
  });

  it('masks as TFRecord does: rotate right 15, add 0xa282ead8', () => {
    // 0xe3069283 >>> 15 = 0x0001c60d; 0xe3069283 << 17 (mod 2^32) = 0x25060000; or'd: 0x2507c60d;
    // + 0xa282ead8 = 0xc78ab0e5 (no carry out of 32 bits).
    expect(maskedCrc32c(ascii('123456789'))).toBe(0xc78ab0e5);
  });
});

describe('Event encoding', () => {
  it('writes double, int64 and float32 fields little-endian with their keys', () => {
    // wall_time = field 1, fixed64 → key 0x09; 1.5 = 0x3ff8000000000000. proto3 leaves out a step of 0.
    expect(hexOf(encodeEvent({ wallTime: 1.5, step: 0 }))).toBe('09' + '000000000000f83f');
    // step = field 2, varint → key 0x10; 300 = 0b10_0101100 → 0xac 0x02 (a wall_time of 0 is left out too).
    expect(hexOf(encodeEvent({ wallTime: 0, step: 300 }))).toBe('10ac02');
    // 2^40 needs six 7-bit groups: 0x80 × 5, then 2^40 >> 35 = 0x20.
    expect(hexOf(encodeEvent({ wallTime: 0, step: 2 ** 40 }))).toBe('10' + '8080808080' + '20');
    // -1 as int64: ten bytes, 0xff × 9 then 0x01.
    expect(hexOf(encodeEvent({ wallTime: 0, step: -1 }))).toBe('10' + 'ff'.repeat(9) + '01');
    // summary = field 5, bytes → 0x2a, 10 bytes: value = field 1 → 0x0a, 8 bytes: tag "a" (0a 01 61),
    // simple_value = field 2, fixed32 → key 0x15; 0.1 is stored as float32 0x3dcccccd.
    expect(hexOf(encodeEvent({ wallTime: 0, step: 0, scalars: { a: 0.1 } }))).toBe('2a0a' + '0a08' + '0a0161' + '15cdcccc3d');
    // simple_value sits in a oneof: a 0 is written all the same.
    expect(hexOf(encodeEvent({ wallTime: 0, step: 0, scalars: { a: 0 } }))).toBe('2a0a' + '0a08' + '0a0161' + '1500000000');
    expect(() => encodeEvent({ wallTime: 0, step: 1.5 })).toThrow(/int64 field 2 must be a safe integer, got 1.5/);
  });

  it('decodes what it encodes, with float32 rounding and int64 steps beyond 2^32', () => {
    const event = { wallTime: 1_700_000_000.123456, step: 5_000_000_000, scalars: { loss: 0.1, 'epoch/knn_accuracy': 0.75 } };
    expect(decodeEvent(encodeEvent(event))).toEqual({ ...event, scalars: { loss: Math.fround(0.1), 'epoch/knn_accuracy': 0.75 } });
    expect(decodeEvent(encodeEvent({ wallTime: 2, step: -7, fileVersion: EVENTS_FILE_VERSION }))).toEqual({ wallTime: 2, step: -7, fileVersion: 'brain.Event:2' });
  });

  it('skips fields it does not know', () => {
    // field 4 (graph_def, bytes) and field 9 (a varint) before the step.
    const unknown = Uint8Array.from([0x22, 0x02, 0xaa, 0xbb, 0x48, 0x05]);
    const bytes = new Uint8Array([...unknown, ...encodeEvent({ wallTime: 3, step: 4 })]);
    expect(decodeEvent(bytes)).toEqual({ wallTime: 3, step: 4 });
  });
});

describe('TFRecord framing', () => {
  it('frames an event as length, masked length CRC, data, masked data CRC', () => {
    // Event { wall_time 1.5, step 3, summary { value { tag "loss", simple_value 0.5 } } }:
    //   09 000000000000f83f              wall_time (9 bytes)
    //   10 03                            step (2)
    //   2a 0d                            summary, 13 bytes:
    //     0a 0b                            value, 11 bytes:
    //       0a 04 6c6f7373                   tag "loss" (6)
    //       15 0000003f                      simple_value 0.5 = float32 0x3f000000 (5)
    // 9 + 2 + 2 + 13 = 26 = 0x1a bytes of data.
    const data = '09000000000000f83f' + '1003' + '2a0d' + '0a0b' + '0a046c6f7373' + '150000003f';
    const event = encodeEvent({ wallTime: 1.5, step: 3, scalars: { loss: 0.5 } });
    expect(hexOf(event)).toBe(data);
    // The CRCs, little-endian: masked crc32c of 1a00000000000000 = 0x2dd89b12 and of the data
    // = 0xe35e6580 (computed apart from this code, by a bitwise Python crc32c).
    expect(hexOf(encodeRecord(event))).toBe('1a00000000000000' + '129bd82d' + data + '80655ee3');
    expect(decodeRecords(encodeRecord(event), 'x')).toEqual([event]);
  });

  it('rejects a corrupted CRC, naming the file and the offset', () => {
    const records = encodeEventsFile([{ wallTime: 1, step: 0, fileVersion: EVENTS_FILE_VERSION }, { wallTime: 2, step: 1, scalars: { loss: 1 } }]);
    const second = encodeRecord(encodeEvent({ wallTime: 1, step: 0, fileVersion: EVENTS_FILE_VERSION })).length;
    const dataCrc = records.slice();
    dataCrc[dataCrc.length - 1] ^= 1;
    expect(() => decodeRecords(dataCrc, '/runs/a/events.out.tfevents.1')).toThrow(
      new RegExp(`^/runs/a/events\\.out\\.tfevents\\.1: record at byte ${second}: data CRC is 0x[0-9a-f]{8}, its \\d+ bytes give 0x[0-9a-f]{8}$`),
    );
    const lengthCrc = records.slice();
    lengthCrc[8] ^= 1;
    expect(() => decodeRecords(lengthCrc, 'f')).toThrow(/^f: record at byte 0: length CRC is 0x[0-9a-f]{8}, the length bytes give 0x[0-9a-f]{8}$/);
    // A flipped data byte is caught by the data CRC.
    const flipped = records.slice();
    flipped[second + 14] ^= 0x40;
    expect(() => decodeRecords(flipped, 'f')).toThrow(`f: record at byte ${second}: data CRC`);
  });

  it('leaves out a record cut short at the end (a killed writer), as TensorBoard does', () => {
    const whole = encodeEventsFile([{ wallTime: 1, step: 0, fileVersion: EVENTS_FILE_VERSION }, { wallTime: 2, step: 1, scalars: { loss: 1 } }]);
    const first = decodeRecords(whole, 'f')[0];
    for (const cut of [1, 5, 20]) expect(decodeRecords(whole.subarray(0, whole.length - cut), 'f')).toEqual([first]);
  });
});

describe('EventsWriter', () => {
  it('writes a file TensorBoard finds that the reader reads back', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'tfevents-'));
    const writer = await EventsWriter.open(dir, 1_700_000_000.5);
    expect(writer.path).toBe(join(dir, `events.out.tfevents.1700000000.${hostname()}.${process.pid}`));
    writer.scalars(10, { loss: 2.5, lr: 0.3, images_per_second: 1234.5 }, 1_700_000_001);
    await writer.flush();
    writer.scalars(20, { 'epoch/loss': 1.25 }, 1_700_000_002);
    await writer.close();
    expect(await readdir(dir)).toEqual([`events.out.tfevents.1700000000.${hostname()}.${process.pid}`]);
    expect(await readEvents(writer.path)).toEqual([
      { wallTime: 1_700_000_000.5, step: 0, fileVersion: 'brain.Event:2' },
      { wallTime: 1_700_000_001, step: 10, scalars: { loss: 2.5, lr: Math.fround(0.3), images_per_second: 1234.5 } },
      { wallTime: 1_700_000_002, step: 20, scalars: { 'epoch/loss': 1.25 } },
    ]);
    // The bytes are exactly the records of those events.
    expect(new Uint8Array(await readFile(writer.path))).toEqual(encodeEventsFile(await readEvents(writer.path)));
  });

  it('appends to a file of the same name', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'tfevents-'));
    const a = await EventsWriter.open(dir, 100);
    a.scalars(1, { x: 1 }, 100);
    await a.close();
    const b = await EventsWriter.open(dir, 100.25);
    b.scalars(2, { x: 2 }, 101);
    await b.close();
    expect(b.path).toBe(a.path);
    expect((await readEvents(a.path)).map((e) => [e.step, e.fileVersion ?? e.scalars])).toEqual([
      [0, 'brain.Event:2'],
      [1, { x: 1 }],
      [0, 'brain.Event:2'],
      [2, { x: 2 }],
    ]);
  });

  it('names the file in a reader error', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'tfevents-'));
    const file = join(dir, 'events.out.tfevents.1.h.1');
    const bytes = encodeEventsFile([{ wallTime: 1, step: 0, fileVersion: EVENTS_FILE_VERSION }]);
    bytes[bytes.length - 2] ^= 0xff;
    await writeFile(file, bytes);
    await expect(readEvents(file)).rejects.toThrow(`${file}: record at byte 0: data CRC`);
  });
});
