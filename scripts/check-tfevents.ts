// Checks data/tfevents.ts against Google's protobuf runtime (python3-protobuf, e.g. `apt-get install
// python3-protobuf`) and an independent CRC32C: parses an events file there, compares the events
// with our reader's, and re-serialises each one to our bytes. npm run check:tfevents [-- EVENTS_FILE]
// (default: a file this script writes). Opt-in; the test suite does not need Python.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { decodeRecords, EventsWriter, readEvents } from '../data/tfevents.ts';

// tensorflow/core/util/event.proto and summary.proto, the fields we write, as a FileDescriptorProto
// (so no .proto compiler is needed); the records' CRCs checked bitwise, apart from our table.
const PYTHON = String.raw`
import json, struct, sys
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
F = descriptor_pb2.FieldDescriptorProto
fdp = descriptor_pb2.FileDescriptorProto(name='event.proto', package='tensorflow', syntax='proto3')
def message(name, fields):
    m = fdp.message_type.add(name=name)
    for fname, number, ftype, label, type_name in fields:
        f = m.field.add(name=fname, number=number, type=ftype, label=label)
        if type_name: f.type_name = type_name
message('Value', [('tag', 1, F.TYPE_STRING, F.LABEL_OPTIONAL, None), ('simple_value', 2, F.TYPE_FLOAT, F.LABEL_OPTIONAL, None)])
fdp.message_type[0].oneof_decl.add(name='value')  # simple_value is in summary.proto's oneof value
fdp.message_type[0].field[1].oneof_index = 0
message('Summary', [('value', 1, F.TYPE_MESSAGE, F.LABEL_REPEATED, '.tensorflow.Value')])
message('Event', [('wall_time', 1, F.TYPE_DOUBLE, F.LABEL_OPTIONAL, None), ('step', 2, F.TYPE_INT64, F.LABEL_OPTIONAL, None),
                  ('file_version', 3, F.TYPE_STRING, F.LABEL_OPTIONAL, None), ('summary', 5, F.TYPE_MESSAGE, F.LABEL_OPTIONAL, '.tensorflow.Summary')])
pool = descriptor_pool.DescriptorPool()
pool.Add(fdp)
desc = pool.FindMessageTypeByName('tensorflow.Event')
Event = message_factory.GetMessageClass(desc) if hasattr(message_factory, 'GetMessageClass') else message_factory.MessageFactory(pool).GetPrototype(desc)
def crc32c(b):
    crc = 0xffffffff
    for x in b:
        crc ^= x
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82f63b78 if crc & 1 else crc >> 1
    return crc ^ 0xffffffff
def masked(b):
    c = crc32c(b)
    return ((((c >> 15) | (c << 17)) & 0xffffffff) + 0xa282ead8) & 0xffffffff
data = open(sys.argv[1], 'rb').read()
at = 0
while at + 12 <= len(data):
    (n,) = struct.unpack_from('<Q', data, at)
    assert struct.unpack_from('<I', data, at + 8)[0] == masked(data[at:at + 8]), 'length CRC at byte %d' % at
    if at + 16 + n > len(data): break
    record = data[at + 12:at + 12 + n]
    assert struct.unpack_from('<I', data, at + 12 + n)[0] == masked(record), 'data CRC at byte %d' % at
    e = Event()
    e.ParseFromString(record)
    print(json.dumps({'wallTime': e.wall_time, 'step': e.step, 'fileVersion': e.file_version or None,
                      'scalars': {v.tag: v.simple_value for v in e.summary.value} if e.HasField('summary') else None,
                      'bytes': e.SerializeToString().hex()}))
    at += 16 + n
`;

async function sampleFile(): Promise<string> {
  const writer = await EventsWriter.open(mkdtempSync(join(tmpdir(), 'check-tfevents-')));
  writer.scalars(1, { loss: 5.25, contrastive_accuracy: 0.0625, lr: 0.0234, images_per_second: 812.7 });
  writer.scalars(2 ** 33, { 'epoch/loss': 4.5, 'epoch/knn_accuracy': 0.31 });
  writer.scalars(3, { 'tag with ünïcode': -1e-30, big: 3.4e38, zero: 0 });
  await writer.close();
  return writer.path;
}

const args = process.argv.slice(2);
if (args.length > 1 || args[0]?.startsWith('-')) {
  console.error('usage: check-tfevents.ts [EVENTS_FILE]');
  process.exit(2);
}
const file = args[0] ? resolve(args[0]) : await sampleFile();
const python = ['/usr/bin/python3', 'python3'].find((p) => {
  try {
    execFileSync(p, ['-c', 'import google.protobuf'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
});
if (python === undefined) {
  console.error('check-tfevents: no python3 with google.protobuf (apt-get install python3-protobuf)');
  process.exit(2);
}
const theirs = execFileSync(python, ['-c', PYTHON, file], { encoding: 'utf8' })
  .trim()
  .split('\n')
  .map((l) => JSON.parse(l) as { wallTime: number; step: number; fileVersion: string | null; scalars: Record<string, number> | null; bytes: string });
const ours = await readEvents(file);
const records = decodeRecords(readFileSync(file), file);
const problems: string[] = [];
if (theirs.length !== ours.length) problems.push(`protobuf read ${theirs.length} events, ours ${ours.length}`);
theirs.forEach((t, i) => {
  const o = ours[i];
  const same = JSON.stringify({ wallTime: t.wallTime, step: t.step, fileVersion: t.fileVersion ?? undefined, scalars: t.scalars ?? undefined }) === JSON.stringify(o);
  if (!same) problems.push(`event ${i}: protobuf read ${JSON.stringify(t)}, ours ${JSON.stringify(o)}`);
  if (t.bytes !== Buffer.from(records[i]).toString('hex')) problems.push(`event ${i}: protobuf serialises it as ${t.bytes}, the file holds ${Buffer.from(records[i]).toString('hex')}`);
});
console.log(`${file}: ${theirs.length} events, ${problems.length === 0 ? 'protobuf reads what we read and writes the same bytes' : 'MISMATCH'}`);
for (const p of problems) console.log(`  ${p}`);
process.exit(problems.length === 0 ? 0 : 1);
