#!/usr/bin/env bash
# Builds the fuzz targets and runs each one for SECONDS (default 30) on fuzz/corpus/<target>/
# (seeded by fuzz/seed.sh). Exits non-zero on the first crash, leak, timeout or OOM; the
# failing input is left in fuzz/artifacts/<target>/. Logs: target/fuzz-logs/<target>.log.
#   usage: fuzz/run.sh [SECONDS] [TARGET...]
# Stable toolchain: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its -Z flags (sanitizer, coverage).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET="${1:-30}"
shift || true
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
fuzz/seed.sh > /dev/null
cargo fuzz build -O
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi
mkdir -p target/fuzz-logs
for t in "${targets[@]}"; do
  echo "== fuzz ${t} for ${SECONDS_PER_TARGET}s"
  log="target/fuzz-logs/${t}.log"
  # -rss_limit_mb: a hostile input must not need more than this; -timeout: per input.
  if ! cargo fuzz run -O "${t}" "fuzz/corpus/${t}" -- \
      -max_total_time="${SECONDS_PER_TARGET}" -rss_limit_mb=2048 -timeout=20 \
      -print_final_stats=1 > "${log}" 2>&1; then
    tail -n 60 "${log}" >&2
    echo "error: fuzz target ${t} failed; input in fuzz/artifacts/${t}/" >&2
    exit 1
  fi
  grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::average_exec_per_sec|Done [0-9]+ runs)' "${log}" || true
done
echo "fuzz: all targets ran clean"
