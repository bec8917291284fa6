#!/usr/bin/env bash
# What the posture rules cost (issue #17): replay of one generated data set with the whole
# bundled rule set against the denial rules alone, side by side in one run, median of RUNS.
# Prints events/s for both and the ratio (the target: the whole set costs at most 1.25x).
#
#   benches/posture-cost.sh [EVENTS]      # default 1,000,000 generated events
#   RUNS=5 benches/posture-cost.sh
#
# Data goes to bench-data/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}
RUNS=${RUNS:-3}
DATA=bench-data/posture-$N
BIN=target/release/authwatch
mkdir -p "$DATA"
cargo build --release --quiet -p authwatch
if [ ! -s "$DATA/events.jsonl" ]; then
  "$BIN" generate --events "$N" --seed 42 --out "$DATA/events.jsonl"
fi
# The denial rules: the bundled files that count 401/403 responses.
rm -rf "$DATA/denial-rules" && mkdir -p "$DATA/denial-rules/tests"
for f in rules/*.yaml; do
  if grep -q 'responseStatus.code: \[401, 403\]\|responseStatus.code: 403\|code: \[401, 403\]' "$f"; then
    cp "$f" "$DATA/denial-rules/"
  fi
done
cp rules/tests/* "$DATA/denial-rules/tests/"
echo "denial rules: $(ls "$DATA/denial-rules"/*.yaml | wc -l); whole set: $(ls rules/*.yaml | wc -l) files" >&2

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
run() { # $1: label, rest: replay args
  local label=$1; shift
  for _ in $(seq "$RUNS"); do
    local s e
    s=$(date +%s.%N)
    "$BIN" replay "$DATA/events.jsonl" --quiet --no-progress "$@" > /dev/null
    e=$(date +%s.%N)
    echo "$e - $s" | bc
  done | median
}
denial=$(run denial --rules "$DATA/denial-rules")
whole=$(run whole)
printf '| rules | seconds (median of %s) | events/s |\n|---|---|---|\n' "$RUNS"
printf '| denial rules alone | %.2f | %.0f |\n' "$denial" "$(echo "$N / $denial" | bc -l)"
printf '| the whole bundled set | %.2f | %.0f |\n' "$whole" "$(echo "$N / $whole" | bc -l)"
printf 'whole / denial: %.2fx\n' "$(echo "$whole / $denial" | bc -l)"
