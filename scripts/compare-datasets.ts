// `node bin/run-ts.mjs scripts/compare-datasets.ts A B`: do two images datasets hold the same rows
// in the same order (ids, labels, pixels) and classes, whatever their shard files? Exit 0 or 1.
import { readDataset, readManifest } from '../data/manifest.ts';

interface Row {
  id: string;
  label: number | null;
  image: Uint8Array;
}

async function* rows(dir: string): AsyncGenerator<Row> {
  for await (const batch of readDataset<'images'>(dir, { schema: 'images' })) {
    const per = batch.columns.image.length / Math.max(1, batch.numRows);
    for (let i = 0; i < batch.numRows; i++) yield { id: batch.columns.id[i], label: batch.columns.label[i], image: batch.columns.image.subarray(i * per, (i + 1) * per) };
  }
}

/** The first difference between the datasets in `a` and `b`, or null and the row count when they agree. */
export async function compareDatasets(a: string, b: string): Promise<{ difference: string | null; rows: number }> {
  const [ma, mb] = [await readManifest(a), await readManifest(b)];
  for (const key of ['schema', 'classes', 'image_shape', 'rows', 'class_counts'] as const) {
    if (JSON.stringify(ma[key]) !== JSON.stringify(mb[key])) return { difference: `${key}: ${JSON.stringify(ma[key])} vs ${JSON.stringify(mb[key])}`, rows: 0 };
  }
  const ib = rows(b);
  let n = 0;
  for await (const ra of rows(a)) {
    const { value: rb, done } = await ib.next();
    if (done) return { difference: `row ${n}: ${b} has no more rows`, rows: n };
    if (ra.id !== rb.id) return { difference: `row ${n}: id ${ra.id} vs ${rb.id}`, rows: n };
    if (ra.label !== rb.label) return { difference: `row ${n} (${ra.id}): label ${ra.label} vs ${rb.label}`, rows: n };
    if (Buffer.compare(Buffer.from(ra.image.buffer, ra.image.byteOffset, ra.image.byteLength), Buffer.from(rb.image.buffer, rb.image.byteOffset, rb.image.byteLength)) !== 0) {
      return { difference: `row ${n} (${ra.id}): pixels differ`, rows: n };
    }
    n++;
  }
  if (!(await ib.next()).done) return { difference: `row ${n}: ${a} has no more rows`, rows: n };
  return { difference: null, rows: n };
}

if (process.argv[1]?.endsWith('compare-datasets.ts')) {
  const [a, b] = process.argv.slice(2);
  if (!a || !b) {
    console.error('usage: compare-datasets.ts DATASET_A DATASET_B');
    process.exit(2);
  }
  const { difference, rows: count } = await compareDatasets(a, b);
  if (difference === null) console.log(`same: ${count} rows (ids, labels, pixels) in the same order in ${a} and ${b}`);
  else console.log(`different: ${difference}`);
  process.exitCode = difference === null ? 0 : 1;
}
