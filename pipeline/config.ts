// Resolved configuration of a stage: defaults, then the config file, then `--set`, then flags.
// Every option is declared once here; the CLI builds its flags from these declarations.
import { readFile } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { parse as parseYaml } from 'yaml';
import { BACKEND_NAMES } from '../models/engine/backend.ts';

export type OptionType = 'int' | 'number' | 'string' | 'boolean';

export interface OptionSpec {
  type: OptionType;
  describe: string;
  default?: string | number | boolean;
  choices?: readonly string[];
  /** Inclusive numeric bounds. */
  min?: number;
  max?: number;
  /** Numbers that must be strictly greater than `min`. */
  exclusiveMin?: boolean;
}

export type OptionSpecs = Record<string, OptionSpec>;
export type ResolvedConfig = Record<string, string | number | boolean | undefined>;

/** The value an option resolves to: a number, a boolean, one of its choices or a string. */
export type OptionValue<S extends OptionSpec> = S extends { type: 'int' | 'number' }
  ? number
  : S extends { type: 'boolean' }
    ? boolean
    : S extends { choices: readonly (infer C extends string)[] }
      ? C
      : string;

/** A resolved config typed by its specs: an option with a default is always set, others may be undefined. */
export type ConfigOf<S extends OptionSpecs> = {
  [K in keyof S]: S[K] extends { default: string | number | boolean } ? OptionValue<S[K]> : OptionValue<S[K]> | undefined;
};

/** Declares option specs keeping their literal types, so ConfigOf can type the resolved config. */
export function defineOptions<const S extends OptionSpecs>(specs: S): S {
  return specs;
}

/** A config file, `--set` or flag value that is wrong; the CLI exits 2 with its one-line message. */
export class ConfigError extends Error {
  override name = 'ConfigError';
}

/** Options every stage takes (DESIGN.md: CLI contract). */
export const COMMON_OPTIONS = defineOptions({
  seed: { type: 'int', default: 0, min: 0, describe: 'random seed (augmentation, initialisation, data order)' },
  workers: { type: 'int', min: 1, max: 256, describe: 'augmentation/decoding threads (default: cores)' },
  backend: {
    type: 'string',
    default: 'auto',
    choices: BACKEND_NAMES,
    describe: 'compute backend; auto takes the first that loads',
  },
});

/** `batch_size`, `batch-size` and `batchSize` all name the option `batchSize`. */
export function normaliseKey(key: string): string {
  return key.replace(/[-_]+([a-zA-Z0-9])/g, (_, c: string) => c.toUpperCase());
}

export function kebab(key: string): string {
  return key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
}

/** A value as an error message shows it: strings quoted as typed, anything else as JSON. */
export function shown(raw: unknown): string {
  if (typeof raw === 'string') return `'${raw}'`;
  if (raw === undefined) return 'nothing';
  if (typeof raw === 'number') return String(raw); // NaN and Infinity too, which JSON would call null
  return JSON.stringify(raw) ?? String(raw);
}

/** Converts and checks one value against its spec; `where` names the source for the error. */
function coerceOption(key: string, spec: OptionSpec, raw: unknown, where: string): string | number | boolean {
  const name = `${where} '${kebab(key)}'`;
  let value: string | number | boolean;
  switch (spec.type) {
    case 'int':
    case 'number': {
      const n = typeof raw === 'number' ? raw : typeof raw === 'string' && raw.trim() !== '' ? Number(raw) : NaN;
      if (!Number.isFinite(n)) throw new ConfigError(`${name} must be a number, got ${shown(raw)}`);
      if (spec.type === 'int' && !Number.isInteger(n)) throw new ConfigError(`${name} must be an integer, got ${shown(raw)}`);
      if (spec.min !== undefined && (spec.exclusiveMin ? n <= spec.min : n < spec.min)) {
        throw new ConfigError(`${name} must be ${spec.exclusiveMin ? '>' : '>='} ${spec.min}, got ${n}`);
      }
      if (spec.max !== undefined && n > spec.max) throw new ConfigError(`${name} must be <= ${spec.max}, got ${n}`);
      value = n;
      break;
    }
    case 'boolean': {
      if (typeof raw === 'boolean') value = raw;
      else if (raw === 'true' || raw === '1' || raw === 'yes') value = true;
      else if (raw === 'false' || raw === '0' || raw === 'no') value = false;
      else throw new ConfigError(`${name} must be true or false, got ${shown(raw)}`);
      break;
    }
    case 'string': {
      if (typeof raw !== 'string' && typeof raw !== 'number') {
        throw new ConfigError(`${name} must be a string, got ${shown(raw)}`);
      }
      value = String(raw);
      break;
    }
  }
  if (spec.choices && !spec.choices.includes(String(value))) {
    throw new ConfigError(`${name} must be one of ${spec.choices.join(', ')}, got ${shown(raw)}`);
  }
  return value;
}

export interface ConfigFile {
  path: string;
  /** Top-level keys: common options (and `run-dir`). */
  common: Record<string, unknown>;
  /** Per-stage sections. */
  stages: Record<string, Record<string, unknown>>;
}

/** Reads a YAML or JSON config file: common keys at the top, one section per stage. */
export async function loadConfigFile(path: string, stageNames: readonly string[]): Promise<ConfigFile> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new ConfigError(`config file ${path}: cannot read it (${(err as NodeJS.ErrnoException).code ?? err})`);
  }
  let doc: unknown;
  try {
    doc = path.endsWith('.json') ? JSON.parse(text) : parseYaml(text);
  } catch (err) {
    throw new ConfigError(`config file ${path}: not valid ${path.endsWith('.json') ? 'JSON' : 'YAML'}: ${String((err as Error).message).split('\n')[0]}`);
  }
  if (doc === null || doc === undefined) doc = {};
  if (typeof doc !== 'object' || Array.isArray(doc)) throw new ConfigError(`config file ${path}: must hold a mapping of keys`);
  const common: Record<string, unknown> = {};
  const stages: Record<string, Record<string, unknown>> = {};
  for (const [key, value] of Object.entries(doc as Record<string, unknown>)) {
    if (stageNames.includes(key)) {
      if (value === null) continue;
      if (typeof value !== 'object' || Array.isArray(value)) {
        throw new ConfigError(`config file ${path}: section '${key}' must be a mapping`);
      }
      stages[key] = value as Record<string, unknown>;
    } else {
      common[key] = value;
    }
  }
  return { path, common, stages };
}

/** The config file's run directory (`run_dir`, `run-dir` or `runDir` at the top), checked to be a path. */
export function configRunDir(file: ConfigFile): string | undefined {
  const raw = Object.keys(file.common).find((k) => normaliseKey(k) === 'runDir');
  if (raw === undefined) return undefined;
  const value = file.common[raw];
  if (typeof value !== 'string' || value === '') throw new ConfigError(`config file ${file.path}: '${raw}' must be a directory path (a string), got ${shown(value)}`);
  return value;
}

/** Parses `--set key=value` entries; `stage.key=value` addresses one stage's section, which must exist. */
function parseSetEntries(entries: readonly string[], stages: readonly string[]): { stage?: string; key: string; value: string }[] {
  return entries.map((entry) => {
    if (typeof entry !== 'string') throw new ConfigError(`--set must be given key=value, got ${shown(entry)}`);
    const eq = entry.indexOf('=');
    if (eq <= 0) throw new ConfigError(`--set '${entry}' must look like key=value`);
    const path = entry.slice(0, eq);
    const value = entry.slice(eq + 1);
    const dot = path.indexOf('.');
    if (dot <= 0) return { key: path, value };
    const stage = path.slice(0, dot);
    if (!stages.includes(stage)) throw new ConfigError(`--set ${path}: unknown stage '${stage}' (known: ${stages.join(', ')})`);
    return { stage, key: path.slice(dot + 1), value };
  });
}

export interface ResolveInput {
  stage: string;
  specs: OptionSpecs;
  file?: ConfigFile;
  set?: readonly string[];
  /** Every stage's name: a `--set stage.key=value` for another stage is left to it, for no stage is an error. */
  stages: readonly string[];
  /** Flags given on the command line (camelCase keys), undefined when absent. */
  flags: Record<string, unknown>;
  /** Keys the config file may carry that are not options of this stage (e.g. `runDir`). */
  extraFileKeys?: readonly string[];
}

/** defaults ← config file ← --set ← flags; unknown keys and bad values throw ConfigError. */
export function resolveConfig({ stage, specs, file, set = [], stages, flags, extraFileKeys = [] }: ResolveInput): ResolvedConfig {
  const config: ResolvedConfig = {};
  for (const [key, spec] of Object.entries(specs)) config[key] = spec.default;

  const apply = (key: string, raw: unknown, where: string) => {
    const spec = specs[key];
    if (!spec) throw new ConfigError(`${where}: unknown key '${key}' for stage ${stage} (known: ${Object.keys(specs).map(kebab).join(', ')})`);
    config[key] = coerceOption(key, spec, raw, where);
  };

  if (file) {
    for (const [raw, value] of Object.entries(file.common)) {
      const key = normaliseKey(raw);
      if (extraFileKeys.includes(key)) continue;
      // Common keys only apply where the stage knows them; a key no stage knows is an error.
      if (specs[key]) apply(key, value, `config file ${file.path}`);
      else if (!Object.hasOwn(COMMON_OPTIONS, key)) throw new ConfigError(`config file ${file.path}: unknown top-level key '${raw}'`);
    }
    for (const [raw, value] of Object.entries(file.stages[stage] ?? {})) {
      apply(normaliseKey(raw), value, `config file ${file.path} section ${stage}`);
    }
  }
  for (const entry of parseSetEntries(set, stages)) {
    if (entry.stage !== undefined && entry.stage !== stage) continue;
    apply(normaliseKey(entry.key), entry.value, `--set ${entry.stage ? `${entry.stage}.` : ''}${entry.key}`);
  }
  for (const [key, value] of Object.entries(flags)) {
    if (value === undefined) continue;
    apply(key, value, 'flag');
  }
  return config;
}

/** Stable hash of a resolved config: keys sorted, undefined dropped. */
export function configHash(config: ResolvedConfig): string {
  const sorted = Object.fromEntries(
    Object.entries(config)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : 1)),
  );
  return createHash('sha256').update(JSON.stringify(sorted)).digest('hex');
}
