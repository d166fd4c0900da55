// `npm run nightly-sim [-- --root DIR --per-class N --backend B]`: three simulated nights of a
// nightly job on the quickstart's synthetic images. Night 1 sees all but 20 % of them, night 2 10 %
// more, night 3 the rest with 5 % removed. Each night is `pipeline run all` in its own run dir,
// with the previous night's ingest carried over (hard links: shards are never rewritten in place),
// a warm start from the previous night's encoder and promotion into one models directory.
import { link, mkdir, readdir, readFile, rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { exists } from '../data/files.ts';
import { main } from '../pipeline/cli.ts';
import { makeSyntheticDataset, mulberry32, SYNTHETIC_CLASSES } from './synthetic.ts';

const CONFIG = fileURLToPath(new URL('../configs/quickstart.yaml', import.meta.url));

const { values } = parseArgs({
  options: {
    root: { type: 'string', default: 'runs/nightly-sim' },
    'per-class': { type: 'string', default: '120' },
    backend: { type: 'string', default: 'auto' },
    // Nights after the first train less: they start from yesterday's encoder.
    'warm-epochs': { type: 'string', default: '20' },
  },
});
const root = resolve(values.root!);
const perClass = Number(values['per-class']);
const pool = join(root, 'pool');
const incoming = join(root, 'incoming');
const models = join(root, 'models');

await rm(join(root, 'nights'), { recursive: true, force: true });
await rm(incoming, { recursive: true, force: true });
await rm(models, { recursive: true, force: true });
if (!(await exists(join(pool, SYNTHETIC_CLASSES[0])))) await makeSyntheticDataset({ dir: pool, perClass, size: 40, seed: 0 });

// Which files each night sees: a seeded order per class; night 1 the first 80 %, night 2 90 %, night 3
// all of them minus 5 % drawn from those already there.
const files = new Map<string, string[]>();
for (const cls of SYNTHETIC_CLASSES) {
  const names = (await readdir(join(pool, cls))).sort();
  const random = mulberry32(cls.length * 7919 + names.length);
  for (let i = names.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [names[i], names[j]] = [names[j], names[i]];
  }
  files.set(cls, names);
}
const nightFiles = (night: number): string[] => {
  const out: string[] = [];
  for (const [cls, names] of files) {
    const take = Math.round(names.length * [0.8, 0.9, 1][night - 1]);
    const removed = night === 3 ? new Set(names.slice(0, Math.round(names.length * 0.05))) : new Set<string>();
    for (const n of names.slice(0, take)) if (!removed.has(n)) out.push(`${cls}/${n}`);
  }
  return out;
};

/** Makes `incoming/` hold exactly `wanted` (hard links into the pool, so unchanged files keep their mtime). */
async function syncIncoming(wanted: string[]): Promise<void> {
  const want = new Set(wanted);
  for (const cls of SYNTHETIC_CLASSES) {
    await mkdir(join(incoming, cls), { recursive: true });
    for (const n of await readdir(join(incoming, cls))) if (!want.has(`${cls}/${n}`)) await rm(join(incoming, cls, n));
  }
  for (const id of wanted) if (!(await exists(join(incoming, id)))) await link(join(pool, id), join(incoming, id));
}

/** A copy of a directory tree whose files are hard links (immutable shards and checkpoints). */
async function linkTree(from: string, to: string): Promise<void> {
  await mkdir(to, { recursive: true });
  for (const e of await readdir(from, { withFileTypes: true })) {
    if (e.isDirectory()) await linkTree(join(from, e.name), join(to, e.name));
    else await link(join(from, e.name), join(to, e.name));
  }
}

interface NightRow {
  night: number;
  images: number;
  added: number;
  removed: number;
  decoded: number;
  seconds: Record<string, number>;
  accuracy: number;
  promoted: string;
}
const rows: NightRow[] = [];
let previous: string | null = null;
for (const night of [1, 2, 3]) {
  const wanted = nightFiles(night);
  await syncIncoming(wanted);
  const runDir = join(root, 'nights', `night-${night}`);
  await mkdir(runDir, { recursive: true });
  const set = ['--set', `ingest.input=${incoming}`];
  if (previous) {
    // Yesterday's dataset, updated incrementally; yesterday's encoder as the start.
    await linkTree(join(previous, 'ingest'), join(runDir, 'ingest'));
    set.push('--set', `pretrain.init_from=${join(previous, 'pretrain')}`, '--set', `pretrain.epochs=${values['warm-epochs']}`);
  }
  console.error(`\n== night ${night}: ${wanted.length} images in ${incoming}`);
  const code = await main(['run', 'all', '--config', CONFIG, '--run-dir', runDir, ...set, '--backend', values.backend!, '--promote-to', models]);
  if (code !== 0) process.exit(code);
  const manifest = async (stage: string) => JSON.parse(await readFile(join(runDir, stage, 'manifest.json'), 'utf8'));
  const plan: { name: string }[] = JSON.parse(await readFile(join(runDir, 'plan.json'), 'utf8')).nodes;
  const seconds: Record<string, number> = {};
  for (const n of plan) {
    const m = await manifest(n.name);
    seconds[n.name] = (Date.parse(m.finished_at) - Date.parse(m.started_at)) / 1000;
  }
  const ingest = await manifest('ingest');
  const changes = ingest.changes ?? {};
  const history = (await readFile(join(models, 'history.jsonl'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l));
  const last = history[history.length - 1];
  const logits = plan.filter((n) => n.name.startsWith('distill')).map((n) => n.name);
  rows.push({
    night,
    images: ingest.rows,
    added: changes.added ?? ingest.rows,
    removed: changes.removed ?? 0,
    decoded: changes.decoded ?? ingest.rows,
    seconds: { ingest: seconds.ingest, pretrain: seconds.pretrain, distill: logits.reduce((s, n) => s + seconds[n], 0), all: Object.values(seconds).reduce((a, b) => a + b, 0) },
    accuracy: last.accuracy,
    promoted: last.promoted ? `promoted (${last.reason})` : `kept (${last.reason})`,
  });
  previous = runDir;
}

console.log('\nnight  images  added  removed  decoded  ingest s  pretrain s  distill s  all stages s  student acc  promotion');
for (const r of rows) {
  console.log(
    `${String(r.night).padStart(5)}  ${String(r.images).padStart(6)}  ${String(r.added).padStart(5)}  ${String(r.removed).padStart(7)}  ${String(r.decoded).padStart(7)}  ` +
      `${r.seconds.ingest.toFixed(1).padStart(8)}  ${r.seconds.pretrain.toFixed(1).padStart(10)}  ${r.seconds.distill.toFixed(1).padStart(9)}  ${r.seconds.all.toFixed(1).padStart(12)}  ` +
      `${(100 * r.accuracy).toFixed(1).padStart(9)} %  ${r.promoted}`,
  );
}
console.log(`models: npx pipeline models list ${models}`);
