// `pipeline embed`: a pretrained encoder's embeddings of every image of a dataset, as an embeddings
// dataset (id, label, embedding), one shard per input shard, mapped like distillation's teacher
// logits: part jobs (--shard-index/--num-shards) fill it side by side, the run without parts
// computes what no part left and writes the manifest, and a later run recomputes only the input
// shards that changed (an incremental ingest) or all of them for another encoder.
import { datasetHash, readManifest, type DatasetManifest } from '../data/manifest.ts';
import { loadImages } from '../data/memory.ts';
import { loadCheckpoint } from '../models/checkpoint.ts';
import { useBackend, type BackendName } from '../models/engine/backend.ts';
import { checkPart, collectMapped, mapInputShards, type ShardMapSpec } from './shard-map.ts';
import { classifierHash, requireCheckpoint } from './training/checkpoints.ts';
import { TrainingInputError } from './training/loop.ts';

export interface EmbedOptions {
  /** A pretrain stage directory (or its checkpoint/): its encoder. */
  checkpoint: string;
  /** An images dataset. */
  data: string;
  /** The embeddings dataset directory. */
  out: string;
  shardIndex?: number;
  numShards?: number;
  backend?: BackendName;
  log?: (line: string) => void;
  onBackend?: (name: string) => void;
}

export interface EmbedResult {
  out: string;
  /** The embeddings dataset's manifest; null for a part job (the run without parts writes it). */
  manifest: DatasetManifest | null;
  rows: number;
  dim: number;
  computed: number;
  reused: number;
  seconds: number;
  backend: string;
}

const SPEC: ShardMapSpec = {
  schema: 'embeddings',
  what: 'embed: embeddings',
  missingHint: 'run the parts (--shard-index/--num-shards) or embed without them',
  partJobs: (count) => `embed --shard-index I --num-shards ${count}`,
};

export async function embedDataset(options: EmbedOptions): Promise<EmbedResult> {
  const shardIndex = options.shardIndex ?? 0;
  const numShards = options.numShards ?? 1;
  checkPart('embed', shardIndex, numShards);
  const log = options.log ?? (() => {});
  const dir = await requireCheckpoint(options.checkpoint, `embed.checkpoint ${options.checkpoint}: no checkpoint there (give a pretrain stage directory)`);
  const peek = await loadCheckpoint(dir, { models: [] });
  if (!peek.available.includes('encoder')) throw new TrainingInputError(`embed.checkpoint ${dir}: holds [${peek.available.join(', ')}], not an encoder (give a pretrain stage directory)`);
  const data = await readManifest(options.data);
  if (data.schema !== 'images') throw new TrainingInputError(`embed.data ${options.data}: holds ${data.schema}, not images`);
  const backend = await useBackend(options.backend ?? 'auto', log);
  options.onBackend?.(backend.name);
  const all = await loadImages(options.data);
  const encoder = (await loadCheckpoint(dir, { models: ['encoder'] })).models.encoder;
  try {
    const [, h, w] = encoder.inputs[0].shape as number[];
    if (h !== all.height || w !== all.width) throw new TrainingInputError(`embed: ${dir} takes ${h}x${w} px images, ${options.data} holds ${all.height}x${all.width} px`);
    const sha = await classifierHash(dir, 'encoder');
    const done = await mapInputShards(SPEC, encoder, all, data, options.out, sha, { shardIndex, numShards }, log);
    const dim = encoder.outputs[0].shape[1] as number;
    if (numShards > 1) return { out: options.out, manifest: null, rows: 0, dim, ...done, backend: backend.name };
    const { manifest } = await collectMapped(SPEC, all, data, options.out, sha, dim, { encoder_sha256: sha, data_sha256: datasetHash(data) });
    log(`embed: ${manifest.rows} images → ${dim}-d embeddings in ${options.out}`);
    return { out: options.out, manifest, rows: manifest.rows, dim, ...done, backend: backend.name };
  } finally {
    encoder.dispose();
  }
}
