// tfjs-backend-wasm on several threads under Node: its threaded SIMD build started here, with
// its pthreads' script given as a file (thread-worker.cjs), and the thread count to use.
import * as tf from '@tensorflow/tfjs';
import { BackendWasm, setThreadsCount } from '@tensorflow/tfjs-backend-wasm';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);

/** tfjs-backend-wasm's priority for 'wasm' (WASM_PRIORITY in its source). */
const WASM_PRIORITY = 2;
/** The threaded build creates this many pthread workers up front; more threads cannot start. */
export const MAX_WASM_THREADS = 8;
const THREADS_VARIABLE = 'SIMCLR_WASM_THREADS';

/**
 * Threads for the wasm backend: SIMCLR_WASM_THREADS when set (1 = the single-threaded build),
 * else every core Node reports, at most MAX_WASM_THREADS.
 */
export function wasmThreadCount(env: NodeJS.ProcessEnv = process.env): number {
  const raw = env[THREADS_VARIABLE];
  if (raw === undefined || raw === '') return Math.min(os.availableParallelism(), MAX_WASM_THREADS);
  const threads = Number(raw);
  if (!Number.isInteger(threads) || threads < 1 || threads > MAX_WASM_THREADS) {
    throw new Error(`${THREADS_VARIABLE} must be a whole number from 1 to ${MAX_WASM_THREADS}, got '${raw}'`);
  }
  return threads;
}

interface PThreadWorker {
  ref(): void;
}
interface EmscriptenModule {
  cwrap(name: string, returnType: string | null, argTypes: string[]): (...args: number[]) => number;
  tfjs?: unknown;
  PThread?: { unusedWorkers: PThreadWorker[]; runningWorkers: PThreadWorker[] };
}
type ModuleFactory = (config: Record<string, unknown>) => Promise<EmscriptenModule>;

/** The package's wasm-out folder: the threaded build's script, binary and worker source. */
function wasmOutDir(): string {
  return join(dirname(require.resolve('@tensorflow/tfjs-backend-wasm/package.json')), 'wasm-out');
}

/**
 * Instantiates the threaded SIMD build with `threads` threads and wraps it as tfjs's BackendWasm.
 * The build sizes its pool as min(threads, logical cores / 2) (it assumes two hyper-threads per
 * core, os.cpus().length / 2 under Node, read once while the module starts): for the start only,
 * os.cpus() is made to report enough cores that the count asked for is what runs.
 */
async function threadedBackend(threads: number, workerScript: string): Promise<BackendWasm> {
  const dir = wasmOutDir();
  const script = join(dir, 'tfjs-backend-wasm-threaded-simd.js');
  // A pthread that fails to load throws inside its worker's error event, which no caller can
  // catch: check up front that every file the threads load is there (else the fallback runs).
  for (const file of [script, join(dir, 'tfjs-backend-wasm-threaded-simd.wasm'), join(dir, 'tfjs-backend-wasm-threaded-simd.worker.js'), workerScript]) {
    if (!existsSync(file)) throw new Error(`${file} is missing`);
  }
  const factory = require(script) as ModuleFactory;
  const osModule = os as { cpus: typeof os.cpus };
  const cpus = osModule.cpus;
  osModule.cpus = () => new Array(2 * threads).fill(cpus()[0]);
  let module: EmscriptenModule;
  try {
    module = await factory({
      locateFile: (path: string) => (path.endsWith('.worker.js') ? workerScript : join(dir, path)),
      mainScriptUrlOrBlob: script,
    });
  } finally {
    osModule.cpus = cpus;
  }
  // Emscripten refs a worker while it runs a pthread, and XNNPACK's pool threads run for the
  // life of the process: Node would never exit on its own. They only ever work while the main
  // thread waits for them, so they may stay unref'd.
  for (const worker of [...(module.PThread?.unusedWorkers ?? []), ...(module.PThread?.runningWorkers ?? [])]) {
    worker.ref = () => {};
  }
  // As tfjs-backend-wasm's own loader wraps its module.
  module.tfjs = {
    init: module.cwrap('init', null, []),
    initWithThreadsCount: module.cwrap('init_with_threads_count', null, ['number']),
    getThreadsCount: module.cwrap('get_threads_count', 'number', []),
    registerTensor: module.cwrap('register_tensor', null, ['number', 'number', 'number']),
    disposeData: module.cwrap('dispose_data', null, ['number']),
    dispose: module.cwrap('dispose', null, []),
  };
  setThreadsCount(threads);
  return new BackendWasm(module as unknown as ConstructorParameters<typeof BackendWasm>[0]);
}

let installed = false;

/**
 * Makes the 'wasm' backend start on `threads` threads (when it is first initialised; a backend
 * already running is left as it is). If the threaded build fails to start, the package's own
 * single-threaded factory runs instead and `log` says why.
 *
 * The package ships a threaded SIMD build (XNNPACK's convolutions, matmuls and elementwise ops
 * split over a pthread pool) but only uses it in browsers (tensorflow/tfjs#3830): its loader
 * hands the pthreads their script as a Blob URL, which Node's worker_threads cannot start. So the
 * 'wasm' backend's factory is replaced by one that instantiates that build itself, with the
 * pthread script given as a file and the module's own script path; the BackendWasm class and
 * every registered wasm kernel are the package's own, so nothing else changes.
 */
export function installThreadedWasm(
  threads: number,
  log: (line: string) => void = () => {},
  /** The pthreads' entry script (tests point it elsewhere to see the fallback). */
  workerScript = fileURLToPath(new URL('./thread-worker.cjs', import.meta.url)),
): void {
  if (threads <= 1 || installed || runningWasm() !== undefined) return;
  const stock = tf.findBackendFactory('wasm');
  if (stock === undefined || stock === null) throw new Error("tfjs-backend-wasm has not registered its 'wasm' backend");
  tf.removeBackend('wasm');
  tf.registerBackend(
    'wasm',
    async () => {
      try {
        return await threadedBackend(threads, workerScript);
      } catch (err) {
        log(`wasm: the ${threads}-thread build did not start (${err instanceof Error ? err.message : String(err)}); using one thread`);
        setThreadsCount(1);
        return stock();
      }
    },
    WASM_PRIORITY,
  );
  installed = true;
}

/** The parts of an initialised BackendWasm read here. */
interface RunningWasm {
  wasm?: { tfjs?: { getThreadsCount(): number }; HEAPU8?: Uint8Array };
}

/** The 'wasm' backend if it has been initialised (tfjs's registry; findBackend would start it). */
function runningWasm(): RunningWasm | undefined {
  return (tf.engine().registry as Record<string, RunningWasm | undefined>).wasm;
}

/** Threads the running 'wasm' backend's XNNPACK pool uses (1 when it runs single-threaded). */
export function activeWasmThreads(): number {
  return runningWasm()?.wasm?.tfjs?.getThreadsCount() ?? 1;
}

/** Whether the running 'wasm' backend's heap is a SharedArrayBuffer (the threaded build). */
export function wasmHeapIsShared(): boolean {
  const heap = runningWasm()?.wasm?.HEAPU8;
  return heap !== undefined && typeof SharedArrayBuffer !== 'undefined' && heap.buffer instanceof SharedArrayBuffer;
}
