// `pipeline run all`: the graph of pipeline/graph.ts run in order under one run-dir lock. A stage
// that is up to date is skipped, a training stage a killed run left behind resumes from its last
// checkpoint, and the report is rebuilt at the end.
import { join } from 'node:path';
import { exists, writeFileAtomic } from '../data/files.ts';
import { ConfigError, type ConfigFile } from './config.ts';
import { downstreamOf, planRun, upstreamOf, type PlanNode } from './graph.ts';
import { acquireRunLock } from './lock.ts';
import { readStageManifest, runStage, stageState, type StageManifest } from './runner.ts';
import type { StageEnv } from './stages.ts';

export interface RunAllOptions {
  runDir: string;
  file?: ConfigFile;
  set?: readonly string[];
  /** Common flags from the command line (seed, workers, backend). */
  flags?: Record<string, unknown>;
  /** Stages (directory names or families) to redo with everything downstream; `all` for every stage. */
  force?: readonly string[];
  /** Run only these stages and what follows them / what they need. */
  from?: string;
  until?: string;
  env: StageEnv;
  /** Rebuilds RUN_DIR/report at the end and returns its path (the CLI passes pipeline/report.ts's). */
  report?: (runDir: string) => Promise<string>;
}

export interface RunAllNodeResult {
  name: string;
  status: 'skipped' | 'completed' | 'resumed' | 'outside';
  manifest: StageManifest | null;
}

export interface RunAllResult {
  nodes: RunAllNodeResult[];
  report: string | null;
}

/** The plan as RUN_DIR/plan.json: what the report lists, run or not yet. */
function planJson(nodes: readonly PlanNode[]): string {
  return JSON.stringify({ nodes: nodes.map((n) => ({ name: n.name, stage: n.family, command: n.command, deps: n.deps })) }, null, 2) + '\n';
}

export async function runAll(options: RunAllOptions): Promise<RunAllResult> {
  const { runDir, env } = options;
  const log = env.log;
  const nodes = planRun({ runDir, file: options.file, set: options.set, flags: options.flags });
  const wanted = new Set(nodes.map((n) => n.name));
  if (options.from !== undefined) for (const n of nodes) if (!downstreamOf(nodes, [options.from], '--from').has(n.name)) wanted.delete(n.name);
  if (options.until !== undefined) for (const n of nodes) if (!upstreamOf(nodes, [options.until], '--until').has(n.name)) wanted.delete(n.name);
  if (wanted.size === 0) throw new ConfigError(`--from ${options.from} --until ${options.until}: no stage lies between them`);
  const forced = options.force?.includes('all') ? new Set(nodes.map((n) => n.name)) : downstreamOf(nodes, options.force ?? [], '--force');

  // The closing table has every stage's figures; the stages' own stdout tables would repeat them.
  const quiet: StageEnv = { ...env, io: { ...env.io, stdout: () => {} } };
  const release = await acquireRunLock(runDir, { log, stage: 'all' });
  try {
    // A slice needs what lies before it finished: say so before anything runs.
    for (const node of nodes.filter((n) => wanted.has(n.name))) {
      for (const dep of node.deps.filter((d) => !wanted.has(d))) {
        const manifest = await readStageManifest(join(runDir, dep));
        if (manifest?.status !== 'completed') {
          throw new ConfigError(`run all${options.from ? ` --from ${options.from}` : ''}: ${node.name} needs ${dep}, which has ${manifest ? `status ${manifest.status}` : 'not run'} in ${runDir}; run it first (or start --from ${dep})`);
        }
      }
    }
    await writeFileAtomic(join(runDir, 'plan.json'), planJson(nodes));
    const results: RunAllNodeResult[] = [];
    const order = nodes.filter((n) => wanted.has(n.name));
    for (const [i, node] of order.entries()) {
      const inputs = await node.definition.inputs(node.config, runDir);
      const state = await stageState({ stage: node.name, runDir, config: node.config, inputs, volatile: node.definition.volatile });
      if (state.upToDate && !forced.has(node.name)) {
        log(`run all [${i + 1}/${order.length}] ${node.name}: up to date, skipped`);
        results.push({ name: node.name, status: 'skipped', manifest: state.previous });
        continue;
      }
      // A training stage that a killed or failed run of this same config left behind carries on from its
      // checkpoint; any other leftover (another config, other inputs, --force) is started over.
      const sameRun = !forced.has(node.name) && state.previous !== null && state.previous.config_hash === state.hash && JSON.stringify(state.previous.inputs) === JSON.stringify(state.inputs);
      const resumable = 'resume' in node.definition.options && sameRun && (await exists(join(runDir, node.name, 'checkpoint', 'checkpoint.json')));
      log(`run all [${i + 1}/${order.length}] ${node.name}${resumable ? ': resuming from its last checkpoint' : ''}`);
      const config = 'resume' in node.definition.options ? { ...node.config, resume: resumable } : node.config;
      const result = await runStage({
        stage: node.name,
        command: node.command,
        runDir,
        config,
        inputs,
        // A training stage not resumed starts over (its checkpoint replaced); any other stage redoes
        // its work from scratch only when asked (--force): a changed folder is ingested incrementally.
        force: 'resume' in node.definition.options ? !resumable : forced.has(node.name),
        volatile: node.definition.volatile,
        lockHeld: true,
        log,
        body: (ctx) => node.definition.run(ctx, quiet),
      });
      results.push({ name: node.name, status: resumable ? 'resumed' : 'completed', manifest: result.manifest });
    }
    for (const node of nodes) if (!wanted.has(node.name)) results.push({ name: node.name, status: 'outside', manifest: await readStageManifest(join(runDir, node.name)) });
    const position = new Map(nodes.map((n, i) => [n.name, i]));
    results.sort((a, b) => position.get(a.name)! - position.get(b.name)!);
    let report: string | null = null;
    if (options.report) {
      report = await options.report(runDir);
      log(`run all: report ${report}`);
    }
    return { nodes: results, report };
  } finally {
    await release();
  }
}
