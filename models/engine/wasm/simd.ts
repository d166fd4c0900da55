// Hand-written WebAssembly SIMD loops that import tfjs-backend-wasm's memory and work on tensors
// where they lie; emitted as bytes by the small assembler below (no toolchain, no build step).

type Code = number[];

// --- encoding --------------------------------------------------------------------------------

function uleb(value: number): Code {
  const out: Code = [];
  do {
    let byte = value & 0x7f;
    value >>>= 7;
    if (value !== 0) byte |= 0x80;
    out.push(byte);
  } while (value !== 0);
  return out;
}

function sleb(value: number): Code {
  const out: Code = [];
  for (;;) {
    const byte = value & 0x7f;
    value >>= 7;
    if ((value === 0 && (byte & 0x40) === 0) || (value === -1 && (byte & 0x40) !== 0)) {
      out.push(byte);
      return out;
    }
    out.push(byte | 0x80);
  }
}

const utf8 = (s: string): Code => [...uleb(s.length), ...Buffer.from(s, 'utf8')];
const vec = (items: Code[]): Code => [...uleb(items.length), ...items.flat()];
const section = (id: number, body: Code): Code => [id, ...uleb(body.length), ...body];

const I32 = 0x7f;
const V128 = 0x7b;
const V128_ALIGN = 2; // alignment hint: tensors are 4-byte aligned at least

// --- instructions ----------------------------------------------------------------------------

const get = (local: number): Code => [0x20, ...uleb(local)];
const set = (local: number): Code => [0x21, ...uleb(local)];
const i32 = (value: number): Code => [0x41, ...sleb(value)];
const add = (a: Code, b: Code): Code => [...a, ...b, 0x6a];
const mul = (a: Code, b: Code): Code => [...a, ...b, 0x6c];
const lessThan = (a: Code, b: Code): Code => [...a, ...b, 0x49]; // i32.lt_u
/** a if cond else b. */
const select = (a: Code, b: Code, cond: Code): Code => [...a, ...b, ...cond, 0x1b];
const simd = (opcode: number): Code => [0xfd, ...uleb(opcode)];
const load = (address: Code): Code => [...address, ...simd(0x00), V128_ALIGN, 0];
const store = (address: Code, value: Code): Code => [...address, ...value, ...simd(0x0b), V128_ALIGN, 0];
const zero = (): Code => [...simd(0x0c), ...new Array<number>(16).fill(0)]; // v128.const 0
const ones = (): Code => [...simd(0x0c), ...[0, 0, 0x80, 0x3f, 0, 0, 0x80, 0x3f, 0, 0, 0x80, 0x3f, 0, 0, 0x80, 0x3f]]; // f32x4 1.0
const fne = (a: Code, b: Code): Code => [...a, ...b, ...simd(0x42)];
const fgt = (a: Code, b: Code): Code => [...a, ...b, ...simd(0x44)];
const and = (a: Code, b: Code): Code => [...a, ...b, ...simd(0x4e)];
/** Bits of a where mask is set, of b elsewhere. */
const bitselect = (a: Code, b: Code, mask: Code): Code => [...a, ...b, ...mask, ...simd(0x52)];
const fadd = (a: Code, b: Code): Code => [...a, ...b, ...simd(0xe4)];
const fsub = (a: Code, b: Code): Code => [...a, ...b, ...simd(0xe5)];
const fmul = (a: Code, b: Code): Code => [...a, ...b, ...simd(0xe6)];
const fmax = (a: Code, b: Code): Code => [...a, ...b, ...simd(0xe9)];
/** i8x16.shuffle picking four 32-bit lanes: 0–3 from a, 4–7 from b. */
const shuffle32 = (a: Code, b: Code, lanes: [number, number, number, number]): Code => [
  ...a, ...b, ...simd(0x0d), ...lanes.flatMap((lane) => [4 * lane, 4 * lane + 1, 4 * lane + 2, 4 * lane + 3]),
];

/** for (i = from; i < to; i += step) body — `to` and `step` are re-evaluated each iteration. */
function forLoop(i: number, from: Code, to: Code, step: Code, body: Code): Code {
  return [
    ...from, ...set(i),
    0x02, 0x40, 0x03, 0x40, // block, loop
    ...get(i), ...to, 0x4f, 0x0d, 1, // br_if out when i >= to (i32.ge_u)
    ...body,
    ...add(get(i), step), ...set(i),
    0x0c, 0, 0x0b, 0x0b, // br loop; end loop; end block
  ];
}

// --- row kernels -----------------------------------------------------------------------------

/**
 * Rows per partial sum in the reductions: each accumulates BLOCK_ROWS rows into a scratch vector,
 * then adds that into the total, so a sum over R rows carries about (128 + R/128)·ε of rounding
 * instead of R·ε.
 */
const BLOCK_ROWS = 128;

/**
 * A loop over [rows, C] row-major float32 operands, C a multiple of 4 (one v128 = 4 channels),
 * with per-channel vectors of C floats.
 */
interface RowKernel {
  name: string;
  /** Row-major [rows, C] operands, read or written; parameters after (rows, rowBytes). */
  streams: number;
  /** Per-channel [C] vectors, read only. */
  vectors: number;
  /** Per-channel sums written: an output vector and a scratch vector of C floats each. */
  sums: number;
  /**
   * One v128 of channels: `stream(k)` loads operand k there, `vector(j)` per-channel vector j,
   * `write(k, v)` stores into operand k, `accumulate(j, v)` adds v into sum j.
   */
  body(h: {
    stream(k: number): Code;
    vector(j: number): Code;
    write(k: number, value: Code): Code;
    accumulate(j: number, value: Code): Code;
  }): Code;
}

/**
 * The function: params (rows, rowBytes, streams…, vectors…, sumOuts…, sumScratch…), all i32
 * (pointers are byte offsets into the memory). Walks rows in blocks of BLOCK_ROWS and each row in
 * steps of 16 bytes.
 */
function rowKernelCode(k: RowKernel): { params: number; code: Code } {
  const ROWS = 0;
  const ROW_BYTES = 1;
  const stream0 = 2;
  const vector0 = stream0 + k.streams;
  const out0 = vector0 + k.vectors;
  const scratch0 = out0 + k.sums;
  const params = scratch0 + k.sums;
  const [r, e, end, c, offset] = [params, params + 1, params + 2, params + 3, params + 4];
  const overChannels = (body: Code): Code => forLoop(c, i32(0), get(ROW_BYTES), i32(16), body);
  const at = (base: number, off: number): Code => add(get(base), get(off));
  const h = {
    stream: (j: number) => load(add(get(stream0 + j), add(get(offset), get(c)))),
    vector: (j: number) => load(at(vector0 + j, c)),
    write: (j: number, value: Code) => store(add(get(stream0 + j), add(get(offset), get(c))), value),
    accumulate: (j: number, value: Code) => store(at(scratch0 + j, c), fadd(load(at(scratch0 + j, c)), value)),
  };
  const sums = Array.from({ length: k.sums }, (_, j) => j);
  const body: Code = [
    ...(k.sums > 0 ? overChannels(sums.flatMap((j) => store(at(out0 + j, c), zero()))) : []),
    ...i32(0), ...set(offset),
    ...forLoop(r, i32(0), get(ROWS), [...get(end), ...get(r), 0x6b], [ // r += end − r
      ...select(add(get(r), i32(BLOCK_ROWS)), get(ROWS), lessThan(add(get(r), i32(BLOCK_ROWS)), get(ROWS))), ...set(end),
      ...(k.sums > 0 ? overChannels(sums.flatMap((j) => store(at(scratch0 + j, c), zero()))) : []),
      ...forLoop(e, get(r), get(end), i32(1), [
        ...overChannels(k.body(h)),
        ...add(get(offset), get(ROW_BYTES)), ...set(offset),
      ]),
      ...(k.sums > 0 ? overChannels(sums.flatMap((j) => store(at(out0 + j, c), fadd(load(at(out0 + j, c)), load(at(scratch0 + j, c)))))) : []),
    ]),
  ];
  const locals = [...uleb(1), ...uleb(5), I32]; // r, e, end, c, offset
  const code = [...locals, ...body, 0x0b];
  return { params, code: [...uleb(code.length), ...code] };
}

/** The kernels; their exports take the parameters rowKernelCode documents. */
const ROW_KERNELS: RowKernel[] = [
  {
    // sums[0] = Σ x
    name: 'sum', streams: 1, vectors: 0, sums: 1,
    body: (h) => h.accumulate(0, h.stream(0)),
  },
  {
    // sums[0] = Σ (x − mean)²;  vectors: mean
    name: 'sum_squared_deviation', streams: 1, vectors: 1, sums: 1,
    body: (h) => {
      const d = fsub(h.stream(0), h.vector(0));
      return h.accumulate(0, fmul(d, d));
    },
  },
  {
    // y = (x − centre)·scale + shift;  streams: x, y; vectors: centre, scale, shift
    name: 'affine', streams: 2, vectors: 3, sums: 0,
    body: (h) => h.write(1, fadd(fmul(fsub(h.stream(0), h.vector(0)), h.vector(1)), h.vector(2))),
  },
  {
    // y = max((x − centre)·scale + shift, 0)
    name: 'affine_relu', streams: 2, vectors: 3, sums: 0,
    body: (h) => h.write(1, fmax(fadd(fmul(fsub(h.stream(0), h.vector(0)), h.vector(1)), h.vector(2)), zero())),
  },
  {
    // sums[0] = Σ dy, sums[1] = Σ dy·(x − mean);  streams: dy, x; vectors: mean
    name: 'sum_and_sum_product', streams: 2, vectors: 1, sums: 2,
    body: (h) => [...h.accumulate(0, h.stream(0)), ...h.accumulate(1, fmul(h.stream(0), fsub(h.stream(1), h.vector(0))))],
  },
  {
    // out = a·p + b·(q − centre) + d;  streams: p, q, out; vectors: a, b, centre, d
    name: 'affine2', streams: 3, vectors: 4, sums: 0,
    body: (h) => h.write(2, fadd(fadd(fmul(h.stream(0), h.vector(0)), fmul(fsub(h.stream(1), h.vector(2)), h.vector(1))), h.vector(3))),
  },
];

// --- layout and elementwise kernels --------------------------------------------------------------------------

/** A function with `params` i32 parameters and the given extra locals. */
interface LayoutKernel {
  name: string;
  params: number;
  code: Code;
}

/** Encodes a function body: `locals` as [count, type] runs. */
function functionCode(locals: [number, number][], body: Code): Code {
  const code = [...vec(locals.map(([count, type]) => [...uleb(count), type])), ...body, 0x0b];
  return [...uleb(code.length), ...code];
}

/**
 * transpose4(count, rows, cols, src, srcRowBytes, srcStep, dst, dstRowBytes, dstStep): for each
 * of `count` blocks k, dst_k[c][r] = src_k[r][c] for a [rows, cols] float32 matrix (both multiples
 * of 4) whose rows lie srcRowBytes apart at src + k·srcStep, written as [cols, rows] with rows
 * dstRowBytes apart at dst + k·dstStep. 4×4 tiles, transposed in registers by lane shuffles.
 */
function transpose4(): LayoutKernel {
  const [COUNT, ROWS, COLS, SRC, SRC_ROW, SRC_STEP, DST, DST_ROW, DST_STEP] = [0, 1, 2, 3, 4, 5, 6, 7, 8];
  const [k, r, c, s, d] = [9, 10, 11, 12, 13];
  const [a, b, e, f, t0, t1, t2, t3] = [14, 15, 16, 17, 18, 19, 20, 21];
  const row = (i: number): Code => load(add(get(s), mul(get(SRC_ROW), i32(i))));
  const put = (i: number, value: Code): Code => store(add(get(d), mul(get(DST_ROW), i32(i))), value);
  const tile: Code = [
    ...add(add(get(SRC), mul(get(k), get(SRC_STEP))), add(mul(get(r), get(SRC_ROW)), mul(get(c), i32(4)))), ...set(s),
    ...row(0), ...set(a), ...row(1), ...set(b), ...row(2), ...set(e), ...row(3), ...set(f),
    ...shuffle32(get(a), get(b), [0, 4, 1, 5]), ...set(t0), // a0 b0 a1 b1
    ...shuffle32(get(a), get(b), [2, 6, 3, 7]), ...set(t1), // a2 b2 a3 b3
    ...shuffle32(get(e), get(f), [0, 4, 1, 5]), ...set(t2), // e0 f0 e1 f1
    ...shuffle32(get(e), get(f), [2, 6, 3, 7]), ...set(t3), // e2 f2 e3 f3
    ...add(add(get(DST), mul(get(k), get(DST_STEP))), add(mul(get(c), get(DST_ROW)), mul(get(r), i32(4)))), ...set(d),
    ...put(0, shuffle32(get(t0), get(t2), [0, 1, 4, 5])), // column 0: a0 b0 e0 f0
    ...put(1, shuffle32(get(t0), get(t2), [2, 3, 6, 7])),
    ...put(2, shuffle32(get(t1), get(t3), [0, 1, 4, 5])),
    ...put(3, shuffle32(get(t1), get(t3), [2, 3, 6, 7])),
  ];
  const body = forLoop(k, i32(0), get(COUNT), i32(1), forLoop(r, i32(0), get(ROWS), i32(4), forLoop(c, i32(0), get(COLS), i32(4), tile)));
  return { name: 'transpose4', params: 9, code: functionCode([[5, I32], [8, V128]], body) };
}

/**
 * copy_rows(count, rows, rowBytes, src, srcRowStride, srcStep, dst, dstRowStride, dstStep): for
 * each block k and row r, copies rowBytes (a multiple of 16) from src + k·srcStep + r·srcRowStride
 * to dst + k·dstStep + r·dstRowStride: a transpose of whole rows, e.g. [B, HW, C] → [HW, B, C].
 */
function copyRows(): LayoutKernel {
  const [COUNT, ROWS, ROW_BYTES, SRC, SRC_ROW, SRC_STEP, DST, DST_ROW, DST_STEP] = [0, 1, 2, 3, 4, 5, 6, 7, 8];
  const [k, r, o, s, d] = [9, 10, 11, 12, 13];
  const body = forLoop(k, i32(0), get(COUNT), i32(1), forLoop(r, i32(0), get(ROWS), i32(1), [
    ...add(add(get(SRC), mul(get(k), get(SRC_STEP))), mul(get(r), get(SRC_ROW))), ...set(s),
    ...add(add(get(DST), mul(get(k), get(DST_STEP))), mul(get(r), get(DST_ROW))), ...set(d),
    ...forLoop(o, i32(0), get(ROW_BYTES), i32(16), store(add(get(d), get(o)), load(add(get(s), get(o))))),
  ]));
  return { name: 'copy_rows', params: 9, code: functionCode([[5, I32]], body) };
}

/**
 * relu_grad(bytes, dy, y, dx): dx = dy · step(y) over `bytes` (a multiple of 16) of float32, in
 * one pass — step(y) = 1 where y > 0, 0 where not, NaN where y is NaN, as tfjs's Step, so the
 * result is bit for bit tfjs's Multiply(dy, Step(y)).
 */
function reluGrad(): LayoutKernel {
  const [BYTES, DY, Y, DX] = [0, 1, 2, 3];
  const [o, v] = [4, 5];
  const body = forLoop(o, i32(0), get(BYTES), i32(16), [
    ...load(add(get(Y), get(o))), ...set(v),
    ...store(add(get(DX), get(o)), fmul(load(add(get(DY), get(o))), bitselect(get(v), and(fgt(get(v), zero()), ones()), fne(get(v), get(v))))),
  ]);
  return { name: 'relu_grad', params: 4, code: functionCode([[1, I32], [1, V128]], body) };
}

const LAYOUT_KERNELS: LayoutKernel[] = [transpose4(), copyRows(), reluGrad()];

/** Largest wasm32 memory, in 64 KiB pages: the declared maximum of a shared memory import. */
const MAX_PAGES = 65536;

/**
 * The module's bytes. A shared memory (tfjs-backend-wasm's threaded build) must be imported as
 * shared, with a maximum; a plain one as plain.
 */
function moduleBytes(sharedMemory: boolean): Uint8Array {
  const functions = [...ROW_KERNELS.map(rowKernelCode), ...LAYOUT_KERNELS];
  const names = [...ROW_KERNELS, ...LAYOUT_KERNELS].map(({ name }) => name);
  const types = functions.map(({ params }) => [0x60, ...vec(new Array<Code>(params).fill([I32])), 0]);
  const bytes: Code = [
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
    ...section(1, vec(types)),
    ...section(2, vec([[...utf8('env'), ...utf8('memory'), 0x02, ...(sharedMemory ? [0x03, ...uleb(1), ...uleb(MAX_PAGES)] : [0x00, ...uleb(1)])]])),
    ...section(3, vec(functions.map((_, i) => uleb(i)))),
    ...section(7, vec(names.map((name, i) => [...utf8(name), 0x00, ...uleb(i)]))),
    ...section(10, vec(functions.map(({ code }) => code))),
  ];
  return Uint8Array.from(bytes);
}

// --- the instance ------------------------------------------------------------------------------

type I32Fn = (...args: number[]) => void;

/** The kernels of one instance, bound to one memory; pointers are byte offsets into it. */
export interface SimdRowKernels {
  /** out[c] = Σ_r x[r, c]. */
  sum(rows: number, rowBytes: number, x: number, out: number, scratch: number): void;
  /** out[c] = Σ_r (x[r, c] − mean[c])². */
  sum_squared_deviation(rows: number, rowBytes: number, x: number, mean: number, out: number, scratch: number): void;
  /** y = (x − centre)·scale + shift per channel. */
  affine(rows: number, rowBytes: number, x: number, y: number, centre: number, scale: number, shift: number): void;
  /** y = max((x − centre)·scale + shift, 0) per channel. */
  affine_relu(rows: number, rowBytes: number, x: number, y: number, centre: number, scale: number, shift: number): void;
  /** sumDy[c] = Σ dy, sumProduct[c] = Σ dy·(x − mean). */
  sum_and_sum_product(rows: number, rowBytes: number, dy: number, x: number, mean: number, sumDy: number, sumProduct: number, scratch0: number, scratch1: number): void;
  /** out = a·p + b·(q − centre) + d per channel. */
  affine2(rows: number, rowBytes: number, p: number, q: number, out: number, a: number, b: number, centre: number, d: number): void;
  /** count × ([rows, cols] → [cols, rows]); rows and cols multiples of 4 (see transpose4()). */
  transpose4(count: number, rows: number, cols: number, src: number, srcRowBytes: number, srcStep: number, dst: number, dstRowBytes: number, dstStep: number): void;
  /** dx = dy · step(y) over `bytes` (a multiple of 16) of float32 (see reluGrad()). */
  relu_grad(bytes: number, dy: number, y: number, dx: number): void;
  /** count × rows copies of rowBytes (a multiple of 16) between strided places (see copyRows()). */
  copy_rows(count: number, rows: number, rowBytes: number, src: number, srcRowStride: number, srcStep: number, dst: number, dstRowStride: number, dstStep: number): void;
}

/** A WebAssembly.Memory. */
export interface WasmMemory {
  readonly buffer: ArrayBuffer;
}

/** The part of the WebAssembly JS API used here (the tsconfig's libs, without DOM, do not declare it). */
const WebAssemblyApi = (globalThis as unknown as {
  WebAssembly: {
    Module: new (bytes: Uint8Array) => object;
    Instance: new (module: object, imports: object) => { exports: Record<string, unknown> };
    Memory: new (descriptor: { initial: number; maximum?: number; shared?: boolean }) => WasmMemory;
    validate(bytes: Uint8Array): boolean;
  };
}).WebAssembly;

export function isWasmMemory(value: unknown): value is WasmMemory {
  return value instanceof WebAssemblyApi.Memory;
}

/** Compiled modules: [plain memory, shared memory]. */
const compiled: [object | undefined, object | undefined] = [undefined, undefined];
const instances = new WeakMap<WasmMemory, SimdRowKernels>();

function isShared(memory: WasmMemory): boolean {
  return typeof SharedArrayBuffer !== 'undefined' && memory.buffer instanceof SharedArrayBuffer;
}

/** The row kernels working on `memory` (instantiated once per memory). */
export function simdRowKernels(memory: WasmMemory): SimdRowKernels {
  let kernels = instances.get(memory);
  if (kernels === undefined) {
    const shared = isShared(memory);
    const module = (compiled[Number(shared)] ??= new WebAssemblyApi.Module(moduleBytes(shared)));
    const instance = new WebAssemblyApi.Instance(module, { env: { memory } });
    kernels = Object.fromEntries([...ROW_KERNELS, ...LAYOUT_KERNELS].map(({ name }) => [name, instance.exports[name] as I32Fn])) as unknown as SimdRowKernels;
    instances.set(memory, kernels);
  }
  return kernels;
}

/** Whether the engine accepts the module (tests; the module needs WebAssembly SIMD). */
export function simdModuleValidates(): boolean {
  return WebAssemblyApi.validate(moduleBytes(false)) && WebAssemblyApi.validate(moduleBytes(true));
}

/** A fresh memory of `pages` × 64 KiB (shared: backed by a SharedArrayBuffer), for tests. */
export function newWasmMemory(pages: number, shared = false): WasmMemory {
  return new WebAssemblyApi.Memory(shared ? { initial: pages, maximum: MAX_PAGES, shared: true } : { initial: pages });
}
