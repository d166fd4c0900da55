#!/bin/bash
# Opt-in: `systemd-analyze verify` on docs/nightly's units, with /opt/simclr-pipeline pointed at this
# checkout (so ExecStart exists). Needs systemd-analyze (Debian: systemd). Not part of npm test.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
command -v systemd-analyze >/dev/null || { echo "verify-systemd-units: systemd-analyze not found" >&2; exit 2; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for unit in "$repo"/docs/nightly/*.service "$repo"/docs/nightly/*.timer; do
  sed "s|/opt/simclr-pipeline|$repo|g" "$unit" > "$tmp/$(basename "$unit")"
done
out=$(cd "$tmp" && systemd-analyze verify --man=no ./*.service ./*.timer 2>&1) || { echo "$out"; exit 1; }
# verify exits 0 on some problems (unknown keys are warnings): any output counts as a failure.
if [ -n "$out" ]; then echo "$out"; exit 1; fi
echo "verify-systemd-units: $(ls "$tmp" | tr '\n' ' ')ok"
