// The `pipeline` command line (yargs). The only module that reads argv; maps errors to exit codes:
// 0 success, 1 the stage failed at run time, 2 bad usage, config or input.
import yargs, { type Argv } from 'yargs';
import { join, resolve } from 'node:path';
import { BACKEND_NAMES, type BackendName } from '../models/engine/backend.ts';
import { COMMON_OPTIONS, ConfigError, configRunDir, kebab, loadConfigFile, resolveConfig, type OptionSpec, type OptionSpecs } from './config.ts';
import { CONFIG_SECTIONS, RUN_KEYS, withTestSplit } from './graph.ts';
import type { RunAllNodeResult } from './run-all.ts';
import { runStage } from './runner.ts';
import { STAGES, STAGE_NAMES, type StageIO } from './stages.ts';

/** Error classes whose message is one line about bad usage, config or input: exit 2 (YError: yargs' own, e.g. a flag without its value). */
const USAGE_ERROR_NAMES = /(UsageError|YError|InputError|ConfigError|BackendUnavailableError|RunDirLockedError|ShardFormatError|IntegrityError|ManifestError|CheckpointError)$/;

/** The command line itself is wrong (unknown flag or command, missing value). */
class UsageError extends Error {
  override name = 'UsageError';
}

function exitCodeFor(err: unknown): number {
  return err instanceof Error && USAGE_ERROR_NAMES.test(err.name) ? 2 : 1;
}

function addOptions(y: Argv, specs: OptionSpecs, group: string): Argv {
  for (const [key, spec] of Object.entries(specs)) {
    const flag = kebab(key);
    y.option(flag, {
      // Values reach resolveConfig as typed, which checks and converts them: yargs would turn
      // `--epochs abc` into NaN, and the message could not say what was given.
      type: spec.type === 'boolean' ? 'boolean' : 'string',
      // A flag without its value is a usage error (a string flag would silently get its default).
      requiresArg: spec.type !== 'boolean',
      describe: describeSpec(spec),
      group,
      // Defaults are applied by resolveConfig so that the config file can override them.
      default: undefined,
    });
    // Only for --help's [number] label: yargs-parser leaves a string-typed flag's value as given
    // (its string type wins), its help shows the number type (tests/pipeline/cli.test.ts checks both).
    if (spec.type === 'int' || spec.type === 'number') y.number(flag);
  }
  return y;
}

function describeSpec(spec: OptionSpec): string {
  const parts = [spec.describe];
  if (spec.choices) parts.push(`[${spec.choices.join('|')}]`);
  if (spec.default !== undefined) parts.push(`(default ${JSON.stringify(spec.default)})`);
  return parts.join(' ');
}

function pickFlags(argv: Record<string, unknown>, specs: OptionSpecs): Record<string, unknown> {
  const flags: Record<string, unknown> = {};
  for (const key of Object.keys(specs)) flags[key] = argv[key];
  return flags;
}

interface GlobalFlags {
  json: boolean;
  verbose: boolean;
}

/** Runs the CLI and returns the exit code (never calls process.exit, so it can be tested). */
export async function main(args: readonly string[], io: StageIO = defaultIO()): Promise<number> {
  let exitCode = 0;
  let verbose = args.includes('--verbose');

  const runOne = async (stageName: string, argv: Record<string, unknown> & GlobalFlags) => {
    const stage = STAGES[stageName];
    const specs = { ...COMMON_OPTIONS, ...stage.options };
    const configPath = argv.config as string | undefined;
    const file = configPath ? await loadConfigFile(configPath, CONFIG_SECTIONS) : undefined;
    const config = resolveConfig({
      stage: stageName,
      specs,
      file: withTestSplit(file, stageName, specs),
      set: (argv.set as string[] | undefined) ?? [],
      stages: CONFIG_SECTIONS,
      flags: pickFlags(argv, specs),
      extraFileKeys: RUN_KEYS,
    });
    const runDirRaw = (argv.runDir as string | undefined) || (file && configRunDir(file));
    if (!runDirRaw) throw new ConfigError(`--run-dir is required for 'run ${stageName}' (or run_dir in the config file)`);
    const runDir = resolve(runDirRaw);
    const log = (line: string) => {
      if (!argv.json || verbose) io.stderr(line);
    };
    const inputs = await stage.inputs(config, runDir);
    // A stage may run under another name (finetune --init random → RUN_DIR/baseline).
    const dirName = stage.dirName?.(config) ?? stageName;
    const result = await runStage({
      stage: dirName,
      command: stageName,
      runDir,
      config,
      inputs,
      force: Boolean(argv.force),
      volatile: stage.volatile,
      lockStageDir: stage.isPart?.(config) ?? false,
      log,
      body: (ctx) => withInterruptSignal((signal) => stage.run(ctx, { log, json: argv.json, io, signal }), io),
    });
    const m = result.manifest;
    if (argv.json) {
      io.stdout(JSON.stringify({ stage: dirName, skipped: result.skipped, status: m.status, run_dir: runDir, backend: m.backend, metrics: m.metrics, outputs: m.outputs }));
    } else {
      io.stderr(`${dirName}: ${result.skipped ? 'skipped (up to date)' : m.status}; ${formatMetrics(m.metrics)}; manifest ${join(runDir, dirName, 'manifest.json')}`);
    }
  };

  const runAllCommand = async (argv: Record<string, unknown> & GlobalFlags) => {
    const configPath = argv.config as string | undefined;
    const file = configPath ? await loadConfigFile(configPath, CONFIG_SECTIONS) : undefined;
    const runDirRaw = (argv.runDir as string | undefined) || (file && configRunDir(file));
    if (!runDirRaw) throw new ConfigError(`--run-dir is required for 'run all' (or run_dir in the config file)`);
    const runDir = resolve(runDirRaw);
    const log = (line: string) => {
      if (!argv.json || verbose) io.stderr(line);
    };
    // `--force` alone (no value, or '') redoes every stage; `--force STAGE` that stage and what follows it.
    const given = argv.force as string[] | undefined;
    const force = given === undefined ? [] : given.length === 0 || given.includes('') ? ['all'] : given;
    // A promotion directory that is not one fails now, not after the night's training.
    if (argv.promoteTo !== undefined) await (await import('./promote.ts')).openModelsDir(resolve(argv.promoteTo as string), true);
    const { runAll } = await import('./run-all.ts');
    const result = await withInterruptSignal(
      (signal) =>
        runAll({
          runDir,
          file,
          set: (argv.set as string[] | undefined) ?? [],
          flags: pickFlags(argv, COMMON_OPTIONS),
          force,
          from: argv.from as string | undefined,
          until: argv.until as string | undefined,
          env: { log, json: argv.json, io, signal },
          report: async (dir) => (await (await import('./report.ts')).buildReport({ runDir: dir, log })).path,
        }),
      io,
    );
    let promotion: unknown = null;
    if (argv.promoteTo !== undefined) {
      const { promote } = await import('./promote.ts');
      const margin = argv.promoteMargin === undefined ? 0 : Number(argv.promoteMargin);
      if (!Number.isFinite(margin) || margin < 0) throw new ConfigError(`--promote-margin must be a number >= 0, got '${argv.promoteMargin}'`);
      promotion = await promote({ runDir, modelsDir: argv.promoteTo as string, margin, backend: pickFlags(argv, COMMON_OPTIONS).backend as BackendName | undefined, log });
    }
    if (argv.json) {
      io.stdout(JSON.stringify({ command: 'run all', run_dir: runDir, report: result.report, promotion, stages: result.nodes.map((n) => ({ stage: n.name, result: n.status, status: n.manifest?.status ?? null, metrics: n.manifest?.metrics ?? {} })) }));
    } else {
      io.stderr(formatRunAll(result.nodes));
    }
  };

  const parser = yargs([...args])
    .scriptName('pipeline')
    .usage('$0 <command> [options]\n\nSimCLR / SimCLRv2 contrastive pretraining pipeline.')
    .option('json', { type: 'boolean', default: false, describe: 'print one machine-readable JSON summary on stdout at the end', global: true })
    .option('verbose', { type: 'boolean', default: false, describe: 'log more and show stack traces', global: true })
    .command(
      'ingest',
      'ingest an image folder or CSV list into an images dataset (Arrow shards)',
      (y) =>
        addOptions(y, { ...COMMON_OPTIONS, ...STAGES.ingest.options }, 'Ingest options:')
          .option('out', { type: 'string', describe: 'output dataset directory', demandOption: true })
          .example('$0 ingest --input ../shared/datasets/cifar10/train --out data/cifar10', 'class sub-folders become labels'),
      async (argv) => {
        const specs = { ...COMMON_OPTIONS, ...STAGES.ingest.options };
        const config = resolveConfig({ stage: 'ingest', specs, stages: STAGE_NAMES, flags: pickFlags(argv, specs) });
        const log = (line: string) => {
          if (!argv.json || argv.verbose) io.stderr(line);
        };
        const summary = await STAGES.ingest.standalone!(config, resolve(argv.out as string), { log, json: argv.json as boolean, io });
        if (argv.json) io.stdout(JSON.stringify(summary));
      },
    )
    .command('run', 'run one stage of the pipeline in a run directory', (y) => {
      let r = y
        .option('config', { type: 'string', describe: 'YAML or JSON config file (flags override it)' })
        .option('run-dir', { type: 'string', describe: 'run directory (stages pass data through it)' })
        .option('set', { type: 'string', array: true, describe: 'override a config key: key=value or stage.key=value' });
      for (const name of STAGE_NAMES) {
        const stage = STAGES[name];
        r = r.command(
          name,
          stage.describe,
          (s) =>
            addOptions(s, { ...COMMON_OPTIONS, ...stage.options }, `${name} options:`)
              .option('force', { type: 'boolean', default: false, describe: 'rerun even when the stage is up to date' })
              .strict(),
          async (argv) => runOne(name, argv as unknown as Record<string, unknown> & GlobalFlags),
        );
      }
      r = r.command(
        'all',
        'the whole pipeline: ingest → pretrain → finetune + baseline (per label fraction) → distill → evaluate → export → report; up-to-date stages skipped, a killed run resumed',
        (s) =>
          addOptions(s, COMMON_OPTIONS, 'all options:')
            .option('force', { type: 'string', array: true, describe: 'redo STAGE (a directory name or a stage: finetune, evaluate, ...) and everything after it; alone: every stage' })
            .option('from', { type: 'string', requiresArg: true, describe: 'run only STAGE and what comes after it (what it needs must have completed)' })
            .option('until', { type: 'string', requiresArg: true, describe: 'run only STAGE and what it needs' })
            .option('promote-to', { type: 'string', requiresArg: true, describe: "publish the best student into MODELS_DIR/<time>/ and move MODELS_DIR/current to it, if it scores at least the current model's accuracy on this run's test split" })
            .option('promote-margin', { type: 'string', requiresArg: true, describe: 'promote when accuracy >= current − margin (default 0: not lower)' })
            .example('$0 run all --config configs/cifar10-32px.yaml --run-dir runs/cifar', 'the whole pipeline; the same command again resumes or skips')
            .strict(),
        async (argv) => runAllCommand(argv as unknown as Record<string, unknown> & GlobalFlags),
      );
      return r.demandCommand(1, `choose a stage: ${[...STAGE_NAMES, 'all'].join(', ')}`);
    })
    .command('augment', 'augmentation tools', (y) =>
      y
        .command(
          'preview',
          'PNG contact sheet of original | view 1 | view 2 for the first images of a dataset',
          (p) =>
            p
              .option('data', { type: 'string', demandOption: true, describe: 'images dataset directory' })
              .option('out', { type: 'string', demandOption: true, describe: 'PNG file to write' })
              .option('pairs', { type: 'number', default: 16, describe: 'images (rows) to show' })
              .option('seed', { type: 'number', default: 0, describe: 'seed of the views (as in the augment stage)' })
              .option('epoch', { type: 'number', default: 0, describe: 'epoch of the views' })
              .option('preset', { type: 'string', default: 'simclr', choices: ['simclr', 'finetune', 'eval'], describe: 'augmentation preset' })
              .option('color-strength', { type: 'number', describe: 'colour jitter strength s' }),
          async (argv) => {
            const { augmentPreview } = await import('../stages/augment-preview.ts');
            const result = await augmentPreview({
              data: argv.data as string,
              out: argv.out as string,
              pairs: argv.pairs as number,
              seed: argv.seed as number,
              epoch: argv.epoch as number,
              preset: argv.preset as 'simclr' | 'finetune' | 'eval',
              ...(argv.colorStrength !== undefined ? { colorStrength: argv.colorStrength as number } : {}),
            });
            if (argv.json) io.stdout(JSON.stringify(result));
            else io.stderr(`augment preview: ${result.pairs} images → ${result.out}`);
          },
        )
        .demandCommand(1, 'choose: augment preview'),
    )
    .command(
      'export',
      'a trained classifier or encoder as a model to ship: tfjs (model.json + weights.bin) or ONNX, with classes.json and model-card.json',
      (y) =>
        y
          .option('checkpoint', { type: 'string', demandOption: true, describe: 'a finetune, baseline, distill or pretrain stage directory (or its checkpoint/)' })
          .option('format', { type: 'string', demandOption: true, choices: ['tfjs', 'onnx'], describe: 'tfjs: loadLayersModel in a browser or Node; onnx: any ONNX runtime (batch norm folded, NHWC input)' })
          .option('out', { type: 'string', demandOption: true, describe: 'directory to write (replaced once the export is complete)' }),
      async (argv) => {
        const { exportModel } = await import('../stages/export.ts');
        const result = await exportModel({
          checkpoint: argv.checkpoint as string,
          format: argv.format as 'tfjs' | 'onnx',
          out: resolve(argv.out as string),
          log: (line) => {
            if (!argv.json || argv.verbose) io.stderr(line);
          },
        });
        if (argv.json) io.stdout(JSON.stringify({ command: 'export', out: result.out, files: result.files, card: result.card }));
      },
    )
    .command(
      'predict',
      'apply a trained classifier to new images: one row per image (id, top-k classes and probabilities)',
      (y) =>
        y
          .option('checkpoint', { type: 'string', demandOption: true, describe: 'a finetune, baseline or distill stage directory (or its checkpoint/)' })
          .option('input', { type: 'string', demandOption: true, describe: 'image folder, CSV list (path[,label]) or images dataset' })
          .option('out', { type: 'string', demandOption: true, describe: 'FILE.csv (top-k classes) or FILE.arrow (a predictions shard, all probabilities)' })
          .option('top-k', { type: 'number', default: 3, describe: 'classes per row in the CSV' })
          .option('batch-size', { type: 'number', default: 256, describe: 'images per inference batch' })
          .option('workers', { type: 'number', describe: 'decoding threads (default: cores)' })
          .option('backend', { type: 'string', default: 'auto', choices: BACKEND_NAMES, describe: 'compute backend' })
          .option('shard-index', { type: 'number', describe: 'a part job: this job\'s part of the sorted input (default $JOB_COMPLETION_INDEX or $SLURM_ARRAY_TASK_ID)' })
          .option('num-shards', { type: 'number', describe: 'parts of the input; > 1: predict this part into OUT\'s stem.part-IIIII-of-NNNNN, then `pipeline merge OUT` (default $SLURM_ARRAY_TASK_COUNT or 1)' })
          .example('$0 predict --checkpoint runs/cifar/distill --input new-images/ --out predictions.csv', 'the nightly job on the day\'s new images')
          .example('$0 predict --checkpoint runs/cifar/distill --input new-images/ --out predictions.csv --shard-index 0 --num-shards 4', 'one of 4 array tasks; then: $0 merge predictions.csv'),
      async (argv) => {
        const { predict } = await import('../stages/predict.ts');
        const { createProgress } = await import('./progress.ts');
        let progress: ReturnType<typeof createProgress> | null = null;
        let phase = '';
        const { shardFromEnvironment } = await import('./stages.ts');
        const part = shardFromEnvironment({ shardIndex: argv.shardIndex as number | undefined, numShards: argv.numShards as number | undefined });
        const result = await predict({
          ...part,
          checkpoint: argv.checkpoint as string,
          input: argv.input as string,
          out: resolve(argv.out as string),
          topK: argv.topK as number,
          batchSize: argv.batchSize as number,
          workers: argv.workers as number | undefined,
          backend: argv.backend as BackendName,
          log: (line) => {
            progress?.finish();
            progress = null;
            if (!argv.json || argv.verbose) io.stderr(line);
          },
          onProgress: (done, total, p) => {
            if (progress === null || p !== phase) {
              (progress as ReturnType<typeof createProgress> | null)?.finish();
              phase = p;
              progress = createProgress({ label: `predict ${p}`, total, unit: 'images', stream: io.stderrStream, quiet: Boolean(argv.json) });
            }
            progress.update(done);
          },
        });
        (progress as ReturnType<typeof createProgress> | null)?.finish();
        if (argv.json) io.stdout(JSON.stringify({ command: 'predict', out: result.out, rows: result.rows, rejected: result.rejected, rejected_list: result.rejectedPath, images_per_second: result.imagesPerSecond, backend: result.backend }));
      },
    )
    .command(
      'embed',
      'a pretrained encoder\'s embeddings of every image of a dataset → an embeddings dataset (one shard per input shard; parts with --num-shards)',
      (y) =>
        y
          .option('checkpoint', { type: 'string', demandOption: true, describe: 'a pretrain stage directory (or its checkpoint/)' })
          .option('data', { type: 'string', demandOption: true, describe: 'images dataset' })
          .option('out', { type: 'string', demandOption: true, describe: 'embeddings dataset directory (kept shards of an earlier run for the same encoder are reused)' })
          .option('backend', { type: 'string', default: 'auto', choices: BACKEND_NAMES, describe: 'compute backend' })
          .option('shard-index', { type: 'number', describe: 'a part job: input shards i with i mod N = this (default $JOB_COMPLETION_INDEX or $SLURM_ARRAY_TASK_ID)' })
          .option('num-shards', { type: 'number', describe: 'parts; > 1: embed this part and stop, then `pipeline embed` without parts collects (default $SLURM_ARRAY_TASK_COUNT or 1)' })
          .example('$0 embed --checkpoint runs/cifar/pretrain --data runs/cifar/ingest --out runs/cifar/embeddings', 'every image\'s representation, for search or clustering'),
      async (argv) => {
        const { embedDataset } = await import('../stages/embed.ts');
        const { shardFromEnvironment } = await import('./stages.ts');
        const part = shardFromEnvironment({ shardIndex: argv.shardIndex as number | undefined, numShards: argv.numShards as number | undefined });
        const result = await embedDataset({
          ...part,
          checkpoint: argv.checkpoint as string,
          data: argv.data as string,
          out: resolve(argv.out as string),
          backend: argv.backend as BackendName,
          log: (line) => {
            if (!argv.json || argv.verbose) io.stderr(line);
          },
        });
        if (argv.json) io.stdout(JSON.stringify({ command: 'embed', out: result.out, rows: result.rows, dim: result.dim, shards_computed: result.computed, shards_reused: result.reused, seconds: result.seconds, backend: result.backend, part: part.numShards > 1 ? part : null }));
      },
    )
    .command(
      'merge <dir>',
      'join the parts of a partitioned ingest or predict (--num-shards N): every part present and intact, one config; exit 2 naming what is missing',
      (y) =>
        y
          .positional('dir', { type: 'string', describe: 'the dataset dir the parts wrote (pipeline ingest --out DIR), RUN_DIR / RUN_DIR/ingest, or a predict --out FILE.csv|.arrow' })
          .example('$0 merge runs/cifar', 'after the Indexed Job or Slurm array of `pipeline run ingest --num-shards N`')
          .example('$0 merge predictions.csv', 'after the parts of `pipeline predict --out predictions.csv --num-shards N`'),
      async (argv) => {
        if (/\.(csv|arrow)$/i.test(argv.dir as string)) {
          const { mergePredictionParts } = await import('./merge.ts');
          const merged = await mergePredictionParts({
            out: argv.dir as string,
            log: (line) => {
              if (!argv.json || argv.verbose) io.stderr(line);
            },
          });
          if (argv.json) io.stdout(JSON.stringify({ command: 'merge', out: merged.out, parts: merged.parts, rows: merged.rows, rejected: merged.rejected }));
          return;
        }
        const { mergeParts } = await import('./merge.ts');
        const result = await mergeParts({
          dir: argv.dir as string,
          log: (line) => {
            if (!argv.json || argv.verbose) io.stderr(line);
          },
        });
        if (argv.json) io.stdout(JSON.stringify({ command: 'merge', dir: result.dir, parts: result.parts, rows: result.manifest.rows, shards: result.manifest.shards.length, rejected: result.manifest.rejected ?? 0, run_dir: result.runDir }));
      },
    )
    .command(
      'report',
      'rebuild RUN_DIR/report/index.html from what is on disk (also mid-run): curves, accuracy table, confusion matrices, predictions, timings, configs',
      (y) => y.option('run-dir', { type: 'string', demandOption: true, describe: 'run directory' }).example('$0 report --run-dir runs/cifar', 'prints the path of the page'),
      async (argv) => {
        const { buildReport } = await import('./report.ts');
        const result = await buildReport({
          runDir: argv.runDir as string,
          // Only a section that could not be built is logged (the page shows its error too).
          log: (line) => {
            if (!argv.json || argv.verbose) io.stderr(line);
          },
        });
        if (argv.json) io.stdout(JSON.stringify({ command: 'report', path: result.path, sections: result.sections, stages: result.stages }));
        else io.stdout(result.path);
      },
    )
    .command('models', 'published models of nightly runs (run all --promote-to)', (y) =>
      y
        .command(
          'list <dir>',
          'the models published in a models directory, the current one, and every promotion decision',
          (p) => p.positional('dir', { type: 'string', describe: 'models directory' }),
          async (argv) => {
            const { listModels } = await import('./promote.ts');
            const listing = await listModels(resolve(argv.dir as string));
            if (argv.json) {
              io.stdout(JSON.stringify(listing));
              return;
            }
            const pct = (v: number | null) => (v === null ? '—' : `${(100 * v).toFixed(2)} %`);
            const lines = [`models in ${resolve(argv.dir as string)} (current: ${listing.current ?? 'none'})`];
            for (const m of listing.models) lines.push(`  ${m.current ? '*' : ' '} ${m.name}  ${pct(m.accuracy).padStart(8)}  ${m.stage ?? ''}  ${m.run_dir ?? ''}`);
            lines.push('decisions:');
            for (const h of listing.history) lines.push(`  ${h.at}  ${h.promoted ? 'promoted' : 'kept    '}  ${h.run_dir}  ${h.reason}`);
            io.stdout(lines.join('\n'));
          },
        )
        .demandCommand(1, 'choose: models list'),
    )
    .command(
      'inspect <path>',
      'describe a dataset directory, a shard or a run directory: schema, counts, metrics',
      (y) => y.positional('path', { type: 'string', describe: 'dataset dir, .arrow shard or run dir' }).option('rows', { type: 'number', default: 3, describe: 'rows to show' })
          .option('verify', { type: 'boolean', default: false, describe: 're-hash every shard of every dataset under the path against its manifest' }),
      async (argv) => {
        const { inspectPath } = await import('./inspect.ts');
        await inspectPath(argv.path as string, { rows: argv.rows as number, json: argv.json as boolean, verify: argv.verify as boolean, io });
      },
    )
    .demandCommand(1, 'choose a command (see --help)')
    .strict()
    .exitProcess(false)
    .wrap(Math.min(110, process.stdout.columns || 100))
    .fail((msg, err) => {
      // Throwing here is what stops yargs from running the handler after a validation failure.
      throw err ?? new UsageError(`${msg} (see pipeline --help)`);
    })
    .help()
    .version(false);

  try {
    await parser.parseAsync();
  } catch (err) {
    exitCode = exitCodeFor(err);
    const message = err instanceof Error ? err.message : String(err);
    io.stderr(`pipeline: ${message}`);
    if (verbose && err instanceof Error && err.stack) io.stderr(err.stack);
  }
  return exitCode;
}

/**
 * Runs `body` with a signal that SIGINT/SIGTERM abort, so a long stage can checkpoint and stop;
 * a second signal exits at once.
 */
async function withInterruptSignal<T>(body: (signal: AbortSignal) => Promise<T>, io: StageIO): Promise<T> {
  const controller = new AbortController();
  const onSignal = (name: NodeJS.Signals) => {
    if (controller.signal.aborted) {
      io.stderr(`pipeline: second ${name}, exiting without waiting`);
      process.exit(130);
    }
    io.stderr(`pipeline: ${name} received, stopping after the current step (again to exit at once)`);
    controller.abort(new Error(`interrupted by ${name}`));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    return await body(controller.signal);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

/** run all's closing table: each stage, what happened, its headline figures. */
function formatRunAll(nodes: readonly RunAllNodeResult[]): string {
  const lines = ['run all:'];
  for (const n of nodes) {
    const m = n.manifest?.metrics ?? {};
    const shown = Object.entries(m).filter((e): e is [string, number] => typeof e[1] === 'number' && /accuracy$/.test(e[0]));
    const what = n.status === 'outside' ? (n.manifest ? `not run now (${n.manifest.status})` : 'not run') : n.status;
    lines.push(`  ${n.name.padEnd(30)} ${what.padEnd(10)} ${shown.map(([k, v]) => `${k} ${(100 * v).toFixed(2)} %`).join(', ')}`);
  }
  return lines.join('\n');
}

function formatMetrics(metrics: Record<string, number | Record<string, number>>): string {
  // Per-class objects stay in the manifest; the summary line has the scalars.
  const entries = Object.entries(metrics).filter((e): e is [string, number] => typeof e[1] === 'number');
  if (entries.length === 0) return 'no metrics';
  return entries.map(([k, v]) => `${k} ${Number.isInteger(v) ? v : v.toPrecision(4)}`).join(', ');
}

function defaultIO(): StageIO {
  return {
    stdout: (line) => process.stdout.write(`${line}\n`),
    stderr: (line) => process.stderr.write(`${line}\n`),
    stderrStream: process.stderr,
  };
}
