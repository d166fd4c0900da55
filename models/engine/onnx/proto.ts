// Minimal protobuf encoder for the ONNX messages the onnxruntime kernels build (ModelProto,
// GraphProto, NodeProto, AttributeProto, TensorProto, ValueInfoProto): write-only, no dependency.

const WIRE_VARINT = 0;
const WIRE_LENGTH = 2;
const WIRE_FIXED32 = 5;

/** TensorProto.DataType values used here. */
export const OnnxDataType = { FLOAT: 1, INT32: 6, INT64: 7 } as const;
export type OnnxDataType = (typeof OnnxDataType)[keyof typeof OnnxDataType];

/** AttributeProto.AttributeType values. */
const ATTR_FLOAT = 1;
const ATTR_INT = 2;
const ATTR_STRING = 3;
const ATTR_TENSOR = 4;
const ATTR_FLOATS = 6;
const ATTR_INTS = 7;

export type OnnxAttributeValue =
  | { int: number }
  | { ints: readonly number[] }
  | { float: number }
  | { floats: readonly number[] }
  | { string: string }
  | { tensor: OnnxTensor };

export interface OnnxTensor {
  name?: string;
  dataType: OnnxDataType;
  dims: readonly number[];
  /** Values in the element type's little-endian layout (TensorProto.raw_data). */
  values: Float32Array | Int32Array | BigInt64Array;
}

export interface OnnxNode {
  opType: string;
  inputs: readonly string[];
  outputs: readonly string[];
  attributes?: Record<string, OnnxAttributeValue>;
  domain?: string;
  name?: string;
}

export interface OnnxValueInfo {
  name: string;
  elemType: OnnxDataType;
  /** A number is a fixed dimension, a string a symbolic one. */
  shape: readonly (number | string)[];
}

export interface OnnxGraph {
  name: string;
  nodes: readonly OnnxNode[];
  inputs: readonly OnnxValueInfo[];
  outputs: readonly OnnxValueInfo[];
  initializers?: readonly OnnxTensor[];
}

export interface OnnxModel {
  graph: OnnxGraph;
  /** Version of the default ('ai.onnx') operator set. */
  opset: number;
  /** ONNX IR version; 8 goes with opsets up to 18. */
  irVersion?: number;
  producer?: string;
  /** Further operator sets, e.g. { domain: 'com.microsoft.nchwc', version: 1 } for ORT's blocked-layout ops. */
  extraOpsets?: readonly { domain: string; version: number }[];
  /** ModelProto.metadata_props: key → value strings a reader can look up (input layout, scaling, ...). */
  metadata?: Readonly<Record<string, string>>;
}

const utf8 = new TextEncoder();

/**
 * Growable byte buffer with the protobuf primitives. Wire format: every field is a varint key
 * (field << 3 | wire type) followed by a varint, a fixed 32-bit value or a length-prefixed byte
 * string (strings, bytes and nested messages); field numbers below are onnx/onnx.proto's (IR 8).
 */
class Writer {
  private buf = new Uint8Array(256);
  private len = 0;

  private reserve(n: number): void {
    if (this.len + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.len + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
  }

  /** Unsigned varint of a non-negative safe integer (7 bits a byte, low bits first). */
  private uvarint(value: number): void {
    this.reserve(10);
    let v = value;
    while (v >= 0x80) {
      this.buf[this.len++] = (v % 0x80) | 0x80;
      v = Math.floor(v / 0x80);
    }
    this.buf[this.len++] = v;
  }

  /** int64/int32 varint: negative values are their 64-bit two's complement (10 bytes). */
  varint(value: number): void {
    if (!Number.isSafeInteger(value)) throw new Error(`onnx-proto: ${value} is not an integer that int64 can carry exactly`);
    if (value >= 0) {
      this.uvarint(value);
      return;
    }
    this.reserve(10);
    let v = BigInt.asUintN(64, BigInt(value));
    while (v >= 0x80n) {
      this.buf[this.len++] = Number(v & 0x7fn) | 0x80;
      v >>= 7n;
    }
    this.buf[this.len++] = Number(v);
  }

  key(field: number, wire: number): void {
    this.uvarint((field << 3) | wire);
  }

  bytes(field: number, data: Uint8Array): void {
    this.key(field, WIRE_LENGTH);
    this.uvarint(data.length);
    this.reserve(data.length);
    this.buf.set(data, this.len);
    this.len += data.length;
  }

  string(field: number, value: string): void {
    this.bytes(field, utf8.encode(value));
  }

  int(field: number, value: number): void {
    this.key(field, WIRE_VARINT);
    this.varint(value);
  }

  float(field: number, value: number): void {
    this.key(field, WIRE_FIXED32);
    this.reserve(4);
    new DataView(this.buf.buffer).setFloat32(this.len, value, true);
    this.len += 4;
  }

  message(field: number, encode: (w: Writer) => void): void {
    const inner = new Writer();
    encode(inner);
    this.bytes(field, inner.finish());
  }

  finish(): Uint8Array {
    return this.buf.slice(0, this.len);
  }
}

function writeTensor(w: Writer, t: OnnxTensor): void {
  for (const d of t.dims) w.int(1, d); // dims
  w.int(2, t.dataType); // data_type
  if (t.name !== undefined) w.string(8, t.name); // name
  const expected = t.dims.reduce((a, b) => a * b, 1);
  if (t.values.length !== expected) {
    throw new Error(`onnx-proto: tensor '${t.name ?? ''}' has ${t.values.length} values for dims [${t.dims.join(', ')}]`);
  }
  // raw_data is the element type's little-endian bytes, which is what typed arrays hold on
  // every platform Node runs on (all little-endian).
  w.bytes(9, new Uint8Array(t.values.buffer, t.values.byteOffset, t.values.byteLength));
}

function writeAttribute(w: Writer, name: string, value: OnnxAttributeValue): void {
  w.string(1, name);
  if ('int' in value) {
    w.int(3, value.int);
    w.int(20, ATTR_INT);
  } else if ('ints' in value) {
    // Unpacked repeated fields: onnx.proto is proto2, where that is the default encoding.
    for (const v of value.ints) w.int(8, v);
    w.int(20, ATTR_INTS);
  } else if ('float' in value) {
    w.float(2, value.float);
    w.int(20, ATTR_FLOAT);
  } else if ('floats' in value) {
    for (const v of value.floats) w.float(7, v);
    w.int(20, ATTR_FLOATS);
  } else if ('string' in value) {
    w.string(4, value.string);
    w.int(20, ATTR_STRING);
  } else {
    w.message(5, (m) => writeTensor(m, value.tensor));
    w.int(20, ATTR_TENSOR);
  }
}

function writeNode(w: Writer, node: OnnxNode): void {
  for (const i of node.inputs) w.string(1, i);
  for (const o of node.outputs) w.string(2, o);
  if (node.name !== undefined) w.string(3, node.name);
  w.string(4, node.opType);
  for (const [name, value] of Object.entries(node.attributes ?? {})) w.message(5, (m) => writeAttribute(m, name, value));
  if (node.domain !== undefined) w.string(7, node.domain);
}

function writeValueInfo(w: Writer, info: OnnxValueInfo): void {
  w.string(1, info.name);
  w.message(2, (type) =>
    // TypeProto.tensor_type → TypeProto.Tensor { elem_type, shape { dim* } }
    type.message(1, (tensor) => {
      tensor.int(1, info.elemType);
      tensor.message(2, (shape) => {
        for (const d of info.shape) {
          shape.message(1, (dim) => (typeof d === 'number' ? dim.int(1, d) : dim.string(2, d)));
        }
      });
    }),
  );
}

function writeGraph(w: Writer, g: OnnxGraph): void {
  for (const n of g.nodes) w.message(1, (m) => writeNode(m, n));
  w.string(2, g.name);
  for (const t of g.initializers ?? []) w.message(5, (m) => writeTensor(m, t));
  for (const i of g.inputs) w.message(11, (m) => writeValueInfo(m, i));
  for (const o of g.outputs) w.message(12, (m) => writeValueInfo(m, o));
}

/** Serialises a ModelProto. */
export function encodeModel(model: OnnxModel): Uint8Array {
  const w = new Writer();
  w.int(1, model.irVersion ?? 8); // ir_version
  w.string(2, model.producer ?? 'simclr-pipeline'); // producer_name
  w.message(7, (m) => writeGraph(m, model.graph)); // graph
  // opset_import: OperatorSetIdProto { domain, version }, the default domain '' (ai.onnx) first
  for (const { domain, version } of [{ domain: '', version: model.opset }, ...(model.extraOpsets ?? [])]) {
    w.message(8, (m) => {
      m.string(1, domain);
      m.int(2, version);
    });
  }
  for (const [key, value] of Object.entries(model.metadata ?? {})) {
    w.message(14, (m) => {
      m.string(1, key);
      m.string(2, value);
    });
  }
  return w.finish();
}

/** Convenience constructors for initializers. */
export const onnxTensor = {
  int64(name: string, values: readonly number[], dims: readonly number[] = [values.length]): OnnxTensor {
    return { name, dataType: OnnxDataType.INT64, dims, values: BigInt64Array.from(values, (v) => BigInt(v)) };
  },
  float(name: string, values: readonly number[], dims: readonly number[] = [values.length]): OnnxTensor {
    return { name, dataType: OnnxDataType.FLOAT, dims, values: Float32Array.from(values) };
  },
};
