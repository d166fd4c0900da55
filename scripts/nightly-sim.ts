// `npm run nightly-sim [-- --root DIR --per-class N --backend B --warm-epochs E --set stage.key=value]`: three simulated nights of a
// nightly job on the quickstart's synthetic images. Night 1 sees all but 20 % of them, night 2 10 %
// more, night 3 the rest with 5 % removed. Each night has its own run dir, the previous night's
// stages carried over as hard links (shards and checkpoints are never rewritten in place), and
// promotes into one models directory. Night 1 runs the whole pipeline cold; night 2 is a student
// refresh (incremental ingest, then `run all --from distill`: yesterday's teachers, so only the new
// shards' logits are computed); night 3 a teacher refresh (`run all`, pretraining warm-started from
// yesterday's encoder: new teachers, so every image's logits are computed again).
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
    // Config overrides for every night (`--set distill.epochs=10`), passed to each command.
    set: { type: 'string', multiple: true, default: [] },
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
  kind: string;
  images: number;
  added: number;
  removed: number;
  decoded: number;
  seconds: Record<'ingest' | 'pretrain' | 'finetune' | 'logits' | 'distill' | 'all', number>;
  logits: { computed: number; reused: number };
  accuracy: number;
  promoted: string;
}
type Manifest = { started_at: string; finished_at: string; rows?: number; changes?: Record<string, number>; metrics?: Record<string, number> };
const rows: NightRow[] = [];
let previous: string | null = null;
for (const night of [1, 2, 3]) {
  const wanted = nightFiles(night);
  await syncIncoming(wanted);
  const runDir = join(root, 'nights', `night-${night}`);
  await mkdir(runDir, { recursive: true });
  const set = ['--set', `ingest.input=${incoming}`, ...values.set!.flatMap((kv) => ['--set', kv])];
  const common = ['--config', CONFIG, '--run-dir', runDir, '--backend', values.backend!];
  const began = Date.now();
  let kind: string;
  if (previous === null) {
    kind = 'first (cold)';
    console.error(`\n== night ${night}: ${wanted.length} images, the whole pipeline from random weights`);
    const code = await main(['run', 'all', ...common, ...set, '--promote-to', models]);
    if (code !== 0) process.exit(code);
  } else if (night === 2) {
    // Student refresh: yesterday's dataset updated incrementally, yesterday's teachers kept (so the
    // logits of unchanged shards are reused), the students distilled again on the grown dataset.
    kind = 'student refresh';
    for (const d of await readdir(previous)) {
      if (d === 'ingest' || d === 'pretrain' || d.startsWith('finetune')) await linkTree(join(previous, d), join(runDir, d));
      if (d.startsWith('distill') && (await exists(join(previous, d, 'teacher-logits')))) await linkTree(join(previous, d, 'teacher-logits'), join(runDir, d, 'teacher-logits'));
    }
    console.error(`\n== night ${night}: ${wanted.length} images, incremental ingest, then run all --from distill (teachers kept)`);
    let code = await main(['run', 'ingest', ...common, '--set', `ingest.input=${incoming}`, ...values.set!.filter((kv) => kv.startsWith('ingest.')).flatMap((kv) => ['--set', kv])]);
    if (code === 0) code = await main(['run', 'all', ...common, ...set, '--from', 'distill', '--promote-to', models]);
    if (code !== 0) process.exit(code);
  } else {
    // Teacher refresh: the whole pipeline again, pretraining warm-started from yesterday's encoder.
    kind = 'teacher refresh (warm start)';
    await linkTree(join(previous, 'ingest'), join(runDir, 'ingest'));
    set.push('--set', `pretrain.init_from=${join(previous, 'pretrain')}`, '--set', `pretrain.epochs=${values['warm-epochs']}`);
    console.error(`\n== night ${night}: ${wanted.length} images, run all warm-started from ${join(previous, 'pretrain')}`);
    const code = await main(['run', 'all', ...common, ...set, '--promote-to', models]);
    if (code !== 0) process.exit(code);
  }
  // The stages this night ran (a linked manifest of yesterday's began before tonight).
  const manifests = new Map<string, Manifest>();
  for (const d of await readdir(runDir)) {
    const file = join(runDir, d, 'manifest.json');
    if (!(await exists(file))) continue;
    const m = JSON.parse(await readFile(file, 'utf8')) as Manifest;
    if (Date.parse(m.started_at) >= began) manifests.set(d, m);
  }
  const secs = (m: Manifest) => (Date.parse(m.finished_at) - Date.parse(m.started_at)) / 1000;
  const sum = (prefix: string) => [...manifests].filter(([d]) => d === prefix || d.startsWith(`${prefix}-`)).reduce((s, [, m]) => s + secs(m), 0);
  const distills = [...manifests].filter(([d]) => d.startsWith('distill')).map(([, m]) => m.metrics ?? {});
  const ingest = JSON.parse(await readFile(join(runDir, 'ingest', 'manifest.json'), 'utf8')) as Manifest;
  const changes = manifests.has('ingest') ? (ingest.changes ?? {}) : {};
  const history = (await readFile(join(models, 'history.jsonl'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l));
  const last = history[history.length - 1];
  const logitsSeconds = distills.reduce((s, m) => s + (m.logits_seconds ?? 0), 0);
  rows.push({
    night,
    kind,
    images: ingest.rows ?? 0,
    added: changes.added ?? ingest.rows ?? 0,
    removed: changes.removed ?? 0,
    decoded: changes.decoded ?? ingest.rows ?? 0,
    seconds: {
      ingest: manifests.has('ingest') ? secs(manifests.get('ingest')!) : 0,
      pretrain: sum('pretrain'),
      finetune: sum('finetune') + sum('baseline'),
      logits: logitsSeconds,
      distill: sum('distill') - logitsSeconds,
      all: (Date.now() - began) / 1000,
    },
    logits: { computed: distills.reduce((s, m) => s + (m.logits_shards_computed ?? 0), 0), reused: distills.reduce((s, m) => s + (m.logits_shards_reused ?? 0), 0) },
    accuracy: last.accuracy,
    promoted: last.promoted ? `promoted (${last.reason})` : `kept (${last.reason})`,
  });
  previous = runDir;
}

const header = ['night', 'kind', 'images', 'added', 'removed', 'decoded', 'ingest s', 'pretrain s', 'finetune+baseline s', 'logits s', 'logits shards computed/reused', 'distill training s', 'night s', 'student acc', 'promotion'];
console.log(`\n| ${header.join(' | ')} |\n|${header.map(() => '---').join('|')}|`);
for (const r of rows) {
  const f = (x: number) => x.toFixed(1);
  console.log(
    `| ${[r.night, r.kind, r.images, r.added, r.removed, r.decoded, f(r.seconds.ingest), f(r.seconds.pretrain), f(r.seconds.finetune), f(r.seconds.logits), `${r.logits.computed}/${r.logits.reused}`, f(r.seconds.distill), f(r.seconds.all), `${(100 * r.accuracy).toFixed(1)} %`, r.promoted].join(' | ')} |`,
  );
}
console.log(`models: npx pipeline models list ${models}`);
