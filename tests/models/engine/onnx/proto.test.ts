// The ONNX protobuf encoder (models/engine/onnx/proto.ts): its varints, read back from the bytes
// encodeModel writes, and its refusal of a malformed tensor.
import { describe, expect, it } from 'vitest';
import { encodeModel, onnxTensor } from '../../../../models/engine/onnx/proto.ts';

/** The varint encodeModel writes for ir_version, the model's first field (key 1 << 3 | varint = 0x08). */
function irVersionVarint(value: number): Uint8Array {
  const bytes = encodeModel({ irVersion: value, opset: 17, graph: { name: 'g', nodes: [], inputs: [], outputs: [] } });
  expect(bytes[0]).toBe(0x08);
  let end = 1;
  while (bytes[end] & 0x80) end++; // a varint's last byte has the high bit clear
  expect(bytes[end + 1]).toBe(0x12); // then producer_name: field 2, length-delimited
  return bytes.subarray(1, end + 1);
}

describe('onnx-proto encoder', () => {
  it('writes protobuf varints, negative int64 as 10-byte two\'s complement', () => {
    expect(Array.from(irVersionVarint(0))).toEqual([0]);
    expect(Array.from(irVersionVarint(300))).toEqual([0xac, 0x02]);
    expect(Array.from(irVersionVarint(2 ** 35))).toEqual([0x80, 0x80, 0x80, 0x80, 0x80, 0x01]);
    expect(Array.from(irVersionVarint(-1))).toEqual([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
  });

  it('refuses a tensor whose values do not fill its dims', () => {
    expect(() =>
      encodeModel({ opset: 17, graph: { name: 'g', nodes: [], inputs: [], outputs: [], initializers: [onnxTensor.float('t', [1, 2, 3], [2, 2])] } }),
    ).toThrow(/tensor 't' has 3 values for dims \[2, 2\]/);
  });
});
