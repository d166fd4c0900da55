// DESIGN.md's import rules, checked on the source: imports point one way, and the compute engine
// knows nothing of the networks.
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const SOURCE_FOLDERS = ['pipeline', 'stages', 'augment', 'models', 'data'];

/** Source files (relative to the root) and the project files each imports, statically or by import(). */
function importGraph(): Map<string, string[]> {
  const graph = new Map<string, string[]>();
  for (const folder of SOURCE_FOLDERS) {
    for (const entry of readdirSync(join(ROOT, folder), { recursive: true, withFileTypes: true })) {
      if (!entry.isFile() || !/\.(ts|mjs|cjs)$/.test(entry.name)) continue;
      const file = relative(ROOT, join(entry.parentPath, entry.name));
      const text = readFileSync(join(ROOT, file), 'utf8');
      const specifiers = [...text.matchAll(/(?:\bfrom\s+|\bimport\s*\(\s*|\brequire\s*\(\s*|^import\s+)['"](\.{1,2}\/[^'"]+)['"]/gm)].map((m) => m[1]);
      graph.set(file, specifiers.map((s) => relative(ROOT, resolve(ROOT, dirname(file), s))));
    }
  }
  return graph;
}

/** What each part may import besides itself (DESIGN.md, Layout). */
const ALLOWED: [part: RegExp, may: RegExp][] = [
  [/^data\//, /^data\//],
  [/^augment\//, /^(augment|data)\//],
  [/^models\/engine\//, /^models\/engine\//],
  // The networks use the engine's kernel names and backends, and data/'s atomic file writer for checkpoints.
  [/^models\//, /^(models\/|data\/files\.ts$)/],
  [/^stages\//, /^(stages|augment|models|data)\//],
  [/^pipeline\//, /^(pipeline|stages|augment|models|data)\//],
];

describe('import rules', () => {
  const graph = importGraph();

  it('finds the source files and their imports', () => {
    expect(graph.size).toBeGreaterThan(40);
    expect(graph.get('stages/pretrain.ts')).toContain('stages/training/loop.ts');
  });

  it.each(ALLOWED.map(([part, may]) => [part.source, may] as const))('%s imports only what it may', (part, may) => {
    const wrong: string[] = [];
    for (const [file, imports] of graph) {
      if (!new RegExp(part).test(file) || ALLOWED.find(([p]) => p.test(file))![0].source !== part) continue;
      for (const target of imports) if (!may.test(target)) wrong.push(`${file} → ${target}`);
    }
    expect(wrong).toEqual([]);
  });

  it('has no import cycles', () => {
    const cycles: string[] = [];
    const state = new Map<string, 'open' | 'done'>();
    const visit = (file: string, path: string[]) => {
      if (state.get(file) === 'done') return;
      if (state.get(file) === 'open') {
        cycles.push([...path.slice(path.indexOf(file)), file].join(' → '));
        return;
      }
      state.set(file, 'open');
      for (const target of graph.get(file) ?? []) visit(target, [...path, file]);
      state.set(file, 'done');
    };
    for (const file of graph.keys()) visit(file, []);
    expect(cycles).toEqual([]);
  });
});
