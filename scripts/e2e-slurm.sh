#!/bin/bash
# Opt-in end-to-end check on a one-node Slurm started here (controller and node on localhost):
# the ingest array + merge of docs/slurm on a small synthetic folder must give the rows of a
# one-process ingest, byte for byte. Needs root and Debian's slurm-wlm and munge:
#   apt-get update && apt-get install -y slurm-wlm munge && scripts/e2e-slurm.sh
# E2E_DIR (default /tmp/simclr-e2e-slurm) holds the config, daemons' state and logs, the images and
# the run dir; NUM_SHARDS (default 3); E2E_KEEP=1 leaves the daemons running.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
dir=${E2E_DIR:-/tmp/simclr-e2e-slurm}
shards=${NUM_SHARDS:-3}
for tool in munged slurmctld slurmd sbatch scontrol sinfo; do
  command -v "$tool" >/dev/null || { echo "e2e-slurm: $tool not found (apt-get install slurm-wlm munge)" >&2; exit 2; }
done
rm -rf "$dir" && mkdir -p "$dir"/{state,spool,munge}
host=$(hostname -s)

# The node as slurmd itself sees it: the machine's real CPU count, sockets, cores and memory.
node_line=$(slurmd -C | head -1 | sed "s/^NodeName=[^ ]*/NodeName=$host NodeAddr=127.0.0.1/")
cat > "$dir/slurm.conf" <<CONF
ClusterName=e2e
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=3600
$node_line State=UNKNOWN
PartitionName=e2e Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$dir/slurm.conf

# munge: a key of our own and a socket of our own, so a munged already on the machine is left alone.
dd if=/dev/urandom bs=1 count=1024 of="$dir/munge/munge.key" status=none
chmod 400 "$dir/munge/munge.key"
socket=$dir/munge/munge.socket
munged --force --key-file="$dir/munge/munge.key" --socket="$socket" --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/munge.seed"
# Slurm's auth/munge plugin finds the socket through AuthInfo.
sed -i "s|^AuthType=auth/munge|AuthType=auth/munge\nAuthInfo=socket=$socket|" "$SLURM_CONF"
stop() {
  if [ "${E2E_KEEP:-0}" != 1 ]; then
    for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munge/munged.pid"; do
      [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
    done
  fi
}
trap stop EXIT
slurmctld
slurmd -N "$host"
for _ in $(seq 60); do
  state=$(sinfo -h -n "$host" -o %T 2>/dev/null || true)
  [ "$state" = idle ] && break
  sleep 1
done
[ "$state" = idle ] || { echo "e2e-slurm: node $host is '$state', not idle; see $dir/slurmctld.log, $dir/slurmd.log" >&2; exit 1; }
echo "e2e-slurm: Slurm up: $(sinfo -h -o '%P %D nodes %N %T, CPUs %c, memory %m MB')"

images=$dir/images
node "$repo/bin/run-ts.mjs" "$repo/scripts/synthetic.ts" --out "$images" --per-class 5 --size 20 # 40 images

# The docs' own chain, stopped after the merge.
out=$(RUN_DIR=$dir/run INPUT=$images NUM_SHARDS=$shards UNTIL=merge SBATCH_ARGS="--cpus-per-task=1" "$repo/docs/slurm/submit.sh")
echo "$out"
ingest=$(echo "$out" | sed -n 's/^ingest array: \([0-9]*\).*/\1/p')
merge=$(echo "$out" | sed -n 's/^merge: \([0-9]*\)/\1/p')
for _ in $(seq 300); do
  [ -z "$(squeue -h -j "$ingest,$merge" 2>/dev/null)" ] && break
  sleep 1
done
scontrol show job "$ingest" | grep -E '^JobId|JobState|NodeList=|ExitCode' | sed 's/^ */  /' || true
scontrol show job "$merge" | grep -E '^JobId|JobState|NodeList=|ExitCode' | sed 's/^ */  /' || true
for f in "$dir/run/slurm/simclr-ingest-$ingest"_*.out; do echo "--- $(basename "$f")"; grep -E '^ingest(-part)?' "$f" | grep -v 'images (' ; done
echo "--- merge job output"; cat "$dir/run/slurm/simclr-merge-$merge.out"
grep -q 'JobState=COMPLETED' <(scontrol show job "$merge") || { echo "e2e-slurm: the merge job did not complete" >&2; exit 1; }

# The same folder ingested by one process, outside Slurm; then the rows compared.
node "$repo/bin/pipeline.mjs" ingest --input "$images" --out "$dir/one-process"
node "$repo/bin/run-ts.mjs" "$repo/scripts/compare-datasets.ts" "$dir/run/ingest" "$dir/one-process"
