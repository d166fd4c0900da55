// `npm run quickstart [-- --run-dir DIR --per-class N --backend B --force]`: the whole pipeline
// (`pipeline run all --config configs/quickstart.yaml`) on a synthetic labeled image set made on the
// spot, ending with the table SSL fine-tuned vs supervised baseline vs distilled student.
import { readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { exists } from '../data/files.ts';
import { main } from '../pipeline/cli.ts';
import { makeSyntheticDataset, SYNTHETIC_CLASSES } from './synthetic.ts';

const CONFIG = fileURLToPath(new URL('../configs/quickstart.yaml', import.meta.url));

const { values } = parseArgs({
  options: {
    'run-dir': { type: 'string', default: 'runs/quickstart' },
    'per-class': { type: 'string', default: '120' },
    backend: { type: 'string', default: 'auto' },
    force: { type: 'boolean', default: false },
  },
});

const runDir = resolve(values['run-dir']!);
const perClass = Number(values['per-class']);
const imagesDir = join(runDir, 'synthetic-images');
const started = performance.now();

if (values.force || !(await exists(join(imagesDir, SYNTHETIC_CLASSES[0])))) {
  console.error(`== synthetic images: ${SYNTHETIC_CLASSES.length} classes × ${perClass} (PNG and JPEG, 40 px) in ${imagesDir}`);
  await makeSyntheticDataset({ dir: imagesDir, perClass, size: 40, seed: 0 });
} else {
  console.error(`== synthetic images already in ${imagesDir}`);
}

const args = ['run', 'all', '--config', CONFIG, '--run-dir', runDir, '--set', `ingest.input=${imagesDir}`, '--backend', values.backend!, ...(values.force ? ['--force'] : [])];
console.error(`== pipeline ${args.join(' ')}`);
const code = await main(args);
if (code !== 0) {
  console.error(`quickstart: run all failed with exit code ${code}; the same command resumes it`);
  process.exit(code);
}

const plan: { name: string; stage: string }[] = JSON.parse(await readFile(join(runDir, 'plan.json'), 'utf8')).nodes;
const metrics = async (stage: string): Promise<Record<string, number>> => JSON.parse(await readFile(join(runDir, stage, 'manifest.json'), 'utf8')).metrics;
const pct = (v: number | undefined) => (v === undefined ? '   —  ' : `${(100 * v).toFixed(1).padStart(5)} %`);
const pre = await metrics('pretrain');
const probe = await metrics('evaluate-pretrain');
const lines = [
  '',
  `quickstart finished in ${((performance.now() - started) / 60000).toFixed(1)} min; run directory ${runDir}`,
  `  encoder: kNN ${pct(pre.knn_accuracy_random_init)} with random weights → ${pct(probe.knn_accuracy)} pretrained; linear probe ${pct(probe.linear_accuracy)}`,
  `  held-out top-1 by labels   SSL fine-tuned   supervised baseline   distilled student`,
];
for (const ft of plan.filter((n) => n.stage === 'finetune')) {
  const suffix = ft.name.slice('finetune'.length);
  const labels = JSON.parse(await readFile(join(runDir, ft.name, 'config.json'), 'utf8')).labels as string;
  const [f, b, d] = await Promise.all(['finetune', 'baseline', 'distill'].map((s) => metrics(`evaluate-${s}${suffix}`)));
  lines.push(`  ${labels.padEnd(24)} ${pct(f.accuracy).padStart(14)} ${pct(b.accuracy).padStart(21)} ${pct(d.accuracy).padStart(19)}`);
}
lines.push(`  report: ${join(runDir, 'report', 'index.html')}`, `  look at it: npx pipeline inspect ${runDir}`);
console.log(lines.join('\n'));
