#!/bin/bash
# Submits the pipeline as a chain of Slurm jobs: ingest array → merge → train → teacher-logits
# arrays → finish, each --dependency=afterok on the one before; prints the job ids.
#   RUN_DIR=/shared/runs/cifar CONFIG=configs/cifar10-32px.yaml NUM_SHARDS=8 \
#   TEACHERS="finetune-1pct finetune-10pct" docs/slurm/submit.sh
# UNTIL=merge stops the chain after the merge. Extra sbatch options: SBATCH_ARGS="--partition=gpu".
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export SIMCLR_REPO=${SIMCLR_REPO:-$(cd "$here/../.." && pwd)}
export RUN_DIR=${RUN_DIR:?set RUN_DIR (on storage every node sees)} CONFIG=${CONFIG:-} INPUT=${INPUT:-}
export NUM_SHARDS=${NUM_SHARDS:-4}
TEACHERS=${TEACHERS:-finetune}
UNTIL=${UNTIL:-finish}
mkdir -p "$RUN_DIR/slurm"
cd "$RUN_DIR/slurm" # the jobs' %x-%j.out logs
sb() { sbatch --parsable ${SBATCH_ARGS:-} "$@"; }
last=$(sb --array=0-$((NUM_SHARDS - 1)) "$here/ingest-array.sbatch")
echo "ingest array: $last (${NUM_SHARDS} tasks)"
last=$(sb --dependency=afterok:"$last" "$here/merge.sbatch")
echo "merge: $last"
[ "$UNTIL" = merge ] && exit 0
train=$(sb --dependency=afterok:"$last" "$here/train.sbatch")
echo "train: $train"
deps=""
for teacher in $TEACHERS; do
  id=$(sb --export=ALL,TEACHER="$teacher" --dependency=afterok:"$train" --array=0-$((NUM_SHARDS - 1)) "$here/logits-array.sbatch")
  echo "teacher logits of $teacher: $id (${NUM_SHARDS} tasks)"
  deps="$deps:$id"
done
echo "finish: $(sb --dependency=afterok"$deps" "$here/finish.sbatch")"
