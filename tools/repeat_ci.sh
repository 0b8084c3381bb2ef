#!/usr/bin/env bash
# The whole suite N times in a row, each from a fresh clone of this repository's HEAD, as CI runs
# it (`CI=true bash .ci/run`): does it give the same answer every time?
#   bash tools/repeat_ci.sh 5            # prints one line per run, and keeps each log
set -uo pipefail
runs="${1:-5}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="${TMPDIR:-/tmp}/maaskit-repeat-ci"
mkdir -p "$out"
for i in $(seq 1 "$runs"); do
    clone="$(mktemp -d)"
    git clone -q "$repo" "$clone"
    commit="$(git -C "$clone" rev-parse --short HEAD)"  # each run takes the HEAD of its moment
    start=$(date +%s)
    (cd "$clone" && CI=true bash .ci/run) > "$out/run$i.log" 2>&1
    status=$?
    summary="$(grep -E '^=+ .*(passed|failed).* =+$' "$out/run$i.log" | tail -1)"
    echo "run $i of $runs at $commit: exit $status in $(( $(date +%s) - start )) s: $summary (log: $out/run$i.log)"
    rm -rf "$clone"
done
