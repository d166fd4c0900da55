// Benchmark of the ingest stage on CIFAR-10 train (50,000 32×32 JPEGs): images/s per worker count,
// plus a profile of the phases (scan, worker start, Arrow write + SHA-256) and CPU per image.
// npm run bench:ingest [-- --json] [-- --workers 1,2] [-- --limit N (images per class)]
import { mkdtemp, rm } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { scanInput } from '../data/scan.ts';
import { schemaInfo } from '../data/schemas.ts';
import { ShardWriter } from '../data/shards.ts';
import { ingest } from '../stages/ingest.ts';

const DATASET = join(import.meta.dirname, '..', '..', 'shared', 'datasets', 'cifar10', 'train');

function parseArgs(argv: string[]) {
  const args = { json: false, workers: [1, 2], limit: undefined as number | undefined, size: 32 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--json') args.json = true;
    else if (a === '--workers') args.workers = argv[++i].split(',').map(Number);
    else if (a === '--limit') args.limit = Number(argv[++i]);
    else if (a === '--size') args.size = Number(argv[++i]);
    else {
      console.error(`bench-ingest: unknown argument ${a} (use --json, --workers 1,2, --limit N, --size S)`);
      process.exit(2);
    }
  }
  if (args.workers.some((w) => !Number.isInteger(w) || w < 1)) {
    console.error('bench-ingest: --workers must be a comma-separated list of positive integers');
    process.exit(2);
  }
  return args;
}

const args = parseArgs(process.argv.slice(2));
const results: Array<Record<string, unknown>> = [];
const emit = (r: Record<string, unknown>) => {
  results.push(r);
  if (args.json) console.log(JSON.stringify(r));
};
const round = (x: number, d = 1) => Math.round(x * 10 ** d) / 10 ** d;
const load = () => round(loadavg()[0], 2);

// Scan alone: readdir of the class folders and the sort.
let t = performance.now();
const scan = await scanInput(DATASET);
emit({ bench: 'ingest-profile', phase: 'scan', images: scan.entries.length, ms: round(performance.now() - t), load1: load() });

// Arrow write + SHA-256 alone, on as many synthetic rows as the runs below ingest.
const rows = args.limit === undefined ? scan.entries.length : Math.min(scan.entries.length, args.limit * scan.classes.length);
{
  const dir = await mkdtemp(join(tmpdir(), 'bench-write-'));
  const stride = args.size * args.size * 3;
  const image = new Uint8Array(1024 * stride).map((_, i) => i % 251);
  t = performance.now();
  const writer = new ShardWriter({ dir, schema: schemaInfo('images', { imageShape: [args.size, args.size, 3] }, scan.classes) });
  for (let i = 0; i < rows; i += 1024) {
    const n = Math.min(1024, rows - i);
    await writer.write({ id: scan.entries.slice(i, i + n).map((e) => e.id), label: scan.entries.slice(i, i + n).map((e) => e.label), image: image.subarray(0, n * stride) });
  }
  await writer.close();
  emit({ bench: 'ingest-profile', phase: 'arrow-write+sha256+fsync', images: rows, ms: round(performance.now() - t), load1: load() });
  await rm(dir, { recursive: true, force: true });
}

for (const workers of args.workers) {
  const outDir = await mkdtemp(join(tmpdir(), 'bench-ingest-'));
  const loadBefore = load();
  const cpu0 = process.cpuUsage();
  t = performance.now();
  const r = await ingest({ input: DATASET, outDir, size: args.size, workers, limitPerClass: args.limit });
  const seconds = (performance.now() - t) / 1000;
  const cpu = process.cpuUsage(cpu0);
  emit({
    bench: 'ingest',
    workers,
    size: args.size,
    images: r.rows,
    images_per_second: round(r.rows / seconds, 0),
    seconds: round(seconds, 2),
    // Process-wide CPU (main, worker and libuv threads): 2000 / this = images/s two idle cores could give.
    cpu_ms_per_image: round((cpu.user + cpu.system) / 1000 / r.rows, 3),
    rejected: r.rejected.length,
    load1_before: loadBefore,
    load1_after: load(),
  });
  await rm(outDir, { recursive: true, force: true });
}

if (!args.json) {
  console.log(`ingest benchmark on ${DATASET}`);
  for (const r of results) {
    if (r.bench === 'ingest-profile') console.log(`  profile ${String(r.phase).padEnd(26)} ${String(r.images).padStart(6)} images ${String(r.ms).padStart(9)} ms   load ${r.load1}`);
  }
  console.log('  workers  size  images  images/s  seconds  cpu ms/img  load before→after');
  for (const r of results) {
    if (r.bench !== 'ingest') continue;
    console.log(
      `  ${String(r.workers).padStart(7)}  ${String(r.size).padStart(4)}  ${String(r.images).padStart(6)}  ${String(r.images_per_second).padStart(8)}  ${String(r.seconds).padStart(7)}  ${String(r.cpu_ms_per_image).padStart(10)}  ${r.load1_before}→${r.load1_after}`,
    );
  }
}
