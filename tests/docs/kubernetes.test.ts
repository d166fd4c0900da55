// Every document in docs/kubernetes/*.yaml against the Kubernetes API schema (kubernetes-models):
// its JSON-schema validation (types, enums, required fields), and, since that schema allows
// unknown fields, the models' TypeScript interfaces through the compiler, which refuse any field
// the API does not have. Mutated copies prove that a typo'd field or a wrong type fails.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const DIR = join(ROOT, 'docs', 'kubernetes');

type Doc = { apiVersion: string; kind: string; [key: string]: unknown };

function documents(): [string, Doc][] {
  return readdirSync(DIR)
    .filter((f) => f.endsWith('.yaml'))
    .sort()
    .flatMap((f) =>
      parseAllDocuments(readFileSync(join(DIR, f), 'utf8')).map((d, i): [string, Doc] => {
        if (d.errors.length > 0) throw new Error(`${f} document ${i}: ${d.errors[0].message}`);
        return [`${f}#${i}`, d.toJS() as Doc];
      }),
    );
}

/** The kubernetes-models module of an apiVersion: v1 → kubernetes-models/v1, batch/v1 → kubernetes-models/batch/v1. */
const modelModule = (apiVersion: string) => `kubernetes-models/${apiVersion}`;

/** The API schema's complaint about a document, or null (kubernetes-models validates on validate()). */
async function schemaError(doc: Doc): Promise<string | null> {
  const models = (await import(modelModule(doc.apiVersion))) as Record<string, new (data: unknown) => { validate(): void }>;
  const Model = models[doc.kind];
  if (!Model) return `no ${doc.kind} in ${modelModule(doc.apiVersion)}`;
  try {
    new Model(doc).validate();
    return null;
  } catch (e) {
    return (e as Error).message;
  }
}

/**
 * The TypeScript compiler's complaints about the documents as object literals of the models'
 * interfaces (`I${kind}`): excess property checks reject a field the API does not have, at any depth.
 */
function typeErrors(docs: readonly Doc[]): string[] {
  const file = join(ROOT, '__kubernetes_docs_check__.ts');
  const source = docs.map((d, i) => `import type { I${d.kind} as T${i} } from '${modelModule(d.apiVersion)}';\nexport const doc${i}: T${i} = ${JSON.stringify(d)};\n`).join('');
  const options: ts.CompilerOptions = { strict: true, noEmit: true, target: ts.ScriptTarget.ES2022, module: ts.ModuleKind.NodeNext, moduleResolution: ts.ModuleResolutionKind.NodeNext, skipLibCheck: true, types: [] };
  const host = ts.createCompilerHost(options);
  const getSourceFile = host.getSourceFile.bind(host);
  host.getSourceFile = (name, language) => (name === file ? ts.createSourceFile(name, source, language) : getSourceFile(name, language));
  const fileExists = host.fileExists.bind(host);
  host.fileExists = (name) => name === file || fileExists(name);
  const program = ts.createProgram([file], options, host);
  return ts.getPreEmitDiagnostics(program).map((d) => ts.flattenDiagnosticMessageText(d.messageText, ' '));
}

describe('docs/kubernetes', () => {
  const docs = documents();

  it('has the storage, the Indexed Jobs, the merge and the training Jobs', () => {
    expect(docs.map(([, d]) => `${d.kind}/${(d.metadata as { name: string }).name}`)).toEqual([
      'PersistentVolumeClaim/simclr-runs',
      'PersistentVolumeClaim/simclr-images',
      'Job/simclr-ingest',
      'Job/simclr-ingest-merge',
      'Job/simclr-train',
      'Job/simclr-logits-1pct',
      'Job/simclr-logits-10pct',
      'Job/simclr-finish',
    ]);
    for (const [, d] of docs.filter(([, d]) => d.kind === 'Job' && (d.spec as { completionMode?: string }).completionMode === 'Indexed')) {
      expect(d.spec).toMatchObject({ completions: 4, parallelism: 4, backoffLimitPerIndex: 2, maxFailedIndexes: 0 });
    }
  });

  it.each(documents())('%s validates against the Kubernetes schema', async (_, doc) => {
    expect(await schemaError(doc)).toBeNull();
  });

  it('every document has only fields the Kubernetes API knows', () => {
    expect(typeErrors(docs.map(([, d]) => d))).toEqual([]);
  });

  it('a typo in a field name or a value of the wrong type fails', async () => {
    const job = structuredClone(docs.find(([name]) => name.startsWith('1-ingest-parts'))![1]) as Doc & { spec: Record<string, unknown> & { template: { spec: { containers: Record<string, unknown>[] } } } };
    const typo = structuredClone(job);
    typo.spec.completionMod = typo.spec.completionMode;
    delete typo.spec.completionMode;
    const deep = structuredClone(job);
    deep.spec.template.spec.containers[0].imag = deep.spec.template.spec.containers[0].image;
    const errors = typeErrors([typo, deep]);
    expect(errors).toHaveLength(2);
    expect(errors[0]).toMatch(/'"completionMod"' does not exist in type 'IJobSpec'/);
    expect(errors[1]).toMatch(/'"imag"' does not exist in type 'I\w*Container'/);

    const wrongType = structuredClone(job);
    wrongType.spec.completions = 'four';
    expect(await schemaError(wrongType)).toMatch(/completions must be integer/);
    const badEnum = structuredClone(job);
    badEnum.spec.completionMode = 'Indexd';
    expect(await schemaError(badEnum)).toMatch(/completionMode must be equal to one of the allowed values/);
  }, 60_000);
});
