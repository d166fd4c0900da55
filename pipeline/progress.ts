// Progress reporting: a redrawn bar on a TTY, plain periodic log lines otherwise (nightly jobs),
// nothing at all in --json mode (stdout then carries only the summary object).

export interface Progress {
  /** `done` of `total` units; `note` is appended (e.g. "loss 4.12"). */
  update(done: number, note?: string): void;
  /** Ends the bar with a final line. */
  finish(note?: string): void;
}

export interface ProgressOptions {
  label: string;
  total: number;
  unit?: string;
  stream?: NodeJS.WriteStream;
  /** Seconds between plain log lines when not on a TTY. */
  logEverySeconds?: number;
  quiet?: boolean;
  now?: () => number;
}

function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return '?';
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const r = s % 60;
  return h > 0 ? `${h}h${String(m).padStart(2, '0')}m` : m > 0 ? `${m}m${String(r).padStart(2, '0')}s` : `${r}s`;
}

export function createProgress({
  label,
  total,
  unit = 'items',
  stream = process.stderr,
  logEverySeconds = 10,
  quiet = false,
  now = () => performance.now() / 1000,
}: ProgressOptions): Progress {
  const start = now();
  let lastDraw = -Infinity;
  let lastDone = 0;
  const tty = Boolean(stream.isTTY);
  const line = (done: number, note?: string) => {
    const elapsed = now() - start;
    const rate = elapsed > 0 ? done / elapsed : 0;
    const pct = total > 0 ? Math.min(100, (100 * done) / total) : 0;
    const eta = rate > 0 ? (total - done) / rate : Infinity;
    return `${label} ${done}/${total} ${unit} (${pct.toFixed(0)}%) ${rate.toFixed(1)} ${unit}/s elapsed ${formatDuration(elapsed)} eta ${formatDuration(eta)}${note ? ` ${note}` : ''}`;
  };
  return {
    update(done, note) {
      lastDone = done;
      if (quiet) return;
      const t = now();
      if (tty) {
        if (t - lastDraw < 0.1) return;
        lastDraw = t;
        const width = 24;
        const filled = total > 0 ? Math.round((width * Math.min(done, total)) / total) : 0;
        stream.write(`\r[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${line(done, note)}\x1b[K`);
      } else if (t - lastDraw >= logEverySeconds) {
        lastDraw = t;
        stream.write(`${line(done, note)}\n`);
      }
    },
    finish(note) {
      if (quiet) return;
      stream.write(`${tty ? '\r' : ''}${line(lastDone, note)}${tty ? '\x1b[K' : ''}\n`);
    },
  };
}
