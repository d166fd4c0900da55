// glibc malloc settings for the pipeline's processes, applied by running the command again as a
// child process with them in its environment (glibc reads them once, at start-up).
//
// Why: onnxruntime-node copies every kernel output into a fresh ArrayBuffer; at SimCLR batch 256
// that is hundreds of MB per step, freed in bulk by V8's GC. glibc then hands the freed memory
// back to the kernel (trimming the heap, unmapping big blocks) and faults it in again, page by
// page, on the next step: ~1.7 M page faults and a quarter of the CPU time in the kernel.
// With blocks up to 32 MiB kept on the heap and no trimming below 4 GiB of free heap,
// `npm run bench:pretrain -- --config resnet20:256 --backend onnxruntime` went from 109–122 to
// 130–139 images/s (interleaved runs, 2-core machine); peak RSS moved by < 2 %.
//
// Set SIMCLR_MALLOC_TUNING=0 to run in-process with glibc's defaults; a MALLOC_MMAP_THRESHOLD_ or
// MALLOC_TRIM_THRESHOLD_ the user sets also stops the relaunch. Signals: SIGTERM, SIGHUP and
// SIGQUIT sent to the launcher are passed on; a terminal's Ctrl-C reaches the child directly (same
// process group), so a SIGINT sent to the launcher's pid alone is not passed on (it would arrive
// twice on Ctrl-C, and a second SIGINT makes the pipeline exit without its checkpoint): stop a
// run from a script with SIGTERM, which checkpoints too. A launcher killed outright (SIGKILL, a
// crash) cannot pass anything on, so the child watches a pipe from it (see watchParent).
import { spawn } from 'node:child_process';
import { constants } from 'node:os';
import { Worker } from 'node:worker_threads';

const TUNING = {
  MALLOC_MMAP_THRESHOLD_: String(32 * 1024 * 1024), // glibc's ceiling for this setting
  MALLOC_TRIM_THRESHOLD_: String(4 * 1024 * 1024 * 1024),
};
const MARK = 'SIMCLR_MALLOC_TUNING';
/** Signals passed on to the child; SIGINT from a terminal reaches both (one process group). */
const FORWARDED = ['SIGTERM', 'SIGHUP', 'SIGQUIT'];
/** Names the child's end of the launcher's pipe (a file descriptor); read once and removed, so grandchildren never see it. */
const PARENT_PIPE = 'SIMCLR_PARENT_PIPE';
const PARENT_FD = 3;
/**
 * How long a child whose launcher died may take to stop after its SIGTERM (a training run
 * finishes its step and checkpoints) before it is killed: long enough for a small model's step
 * and checkpoint, short enough that the run dir is free again within seconds.
 */
export const ORPHAN_GRACE_MS = 3000;

/**
 * In the tuned child: when the launcher's end of the pipe closes (it exited or was killed, even
 * with SIGKILL), sends this process SIGTERM (a stage checkpoints and stops) and SIGKILL
 * ORPHAN_GRACE_MS later. The watch runs on its own thread, so a long synchronous step on the
 * main thread cannot delay the kill; it keeps neither the process nor the pipe's reader alive.
 */
function watchParent() {
  const fd = Number(process.env[PARENT_PIPE]);
  delete process.env[PARENT_PIPE];
  if (!Number.isInteger(fd)) return;
  const code = `
    const { workerData } = require('node:worker_threads');
    const { Socket } = require('node:net');
    const pipe = new Socket({ fd: workerData.fd, readable: true, writable: false });
    pipe.on('data', () => {});
    pipe.on('error', () => {});
    pipe.on('close', () => {
      process.kill(process.pid, 'SIGTERM');
      setTimeout(() => process.kill(process.pid, 'SIGKILL'), workerData.graceMs);
    });`;
  const worker = new Worker(code, { eval: true, workerData: { fd, graceMs: ORPHAN_GRACE_MS }, stdout: false, stderr: false });
  worker.unref();
}

/**
 * The --backend value on the command line, if any. The settings help onnxruntime only: on wasm
 * they cost 5–7 % (ResNet-20 batch-64 step 1,273/1,318 ms against 1,186/1,232 without), so a run
 * that names only other backends keeps glibc's defaults.
 */
function namesOnlyOtherBackends(argv) {
  for (let i = 0; i < argv.length; i++) {
    const value = argv[i] === '--backend' ? argv[i + 1] : argv[i].startsWith('--backend=') ? argv[i].slice('--backend='.length) : undefined;
    if (value !== undefined) return !value.split(',').some((b) => b === 'onnxruntime' || b === 'auto');
  }
  return false;
}

function isGlibc() {
  if (process.platform !== 'linux') return false;
  const header = process.report?.getReport?.()?.header;
  return typeof header?.glibcVersionRuntime === 'string';
}

/**
 * When tuning applies and this process is not already the tuned child: runs the same command as
 * a child with the settings, waits for it and resolves to its exit code (the caller exits with
 * it). Otherwise resolves to undefined and the caller goes on in-process.
 */
export async function runTunedChild() {
  const env = process.env;
  if (env[PARENT_PIPE] !== undefined) watchParent();
  if (env[MARK] !== undefined || Object.keys(TUNING).some((k) => env[k] !== undefined) || namesOnlyOtherBackends(process.argv.slice(2)) || !isGlibc()) {
    return undefined;
  }
  const child = spawn(process.execPath, [...process.execArgv, ...process.argv.slice(1)], {
    // fd 3: a pipe the parent never writes; the child sees it close when the parent dies.
    stdio: ['inherit', 'inherit', 'inherit', 'pipe'],
    env: { ...env, ...TUNING, [MARK]: '1', [PARENT_PIPE]: String(PARENT_FD) },
  });
  // A terminal's Ctrl-C goes to the whole foreground process group, the child included: the
  // parent only waits. Another signal sent to the parent alone is passed on.
  const ignore = () => {};
  process.on('SIGINT', ignore);
  const forwards = FORWARDED.map((signal) => {
    const forward = () => child.kill(signal);
    process.on(signal, forward);
    return [signal, forward];
  });
  try {
    return await new Promise((resolve, reject) => {
      child.on('error', reject);
      child.on('exit', (code, signal) => resolve(code ?? 128 + (constants.signals[signal] ?? 1)));
    });
  } finally {
    process.off('SIGINT', ignore);
    for (const [signal, forward] of forwards) process.off(signal, forward);
  }
}
