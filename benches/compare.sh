#!/usr/bin/env bash
# Side-by-side: authwatch vs DuckDB vs jq vs the cost of just reading the bytes, on one
# generated data set, in one run. Prints a table (median of RUNS runs, peak RSS).
#
#   benches/compare.sh [EVENTS]          # default 2,000,000 events (~2.4 GB of JSON Lines)
#   RUNS=5 benches/compare.sh 2000000
#   CORPUS=1 benches/compare.sh          # also the real Kubernetes dataset repeated to volume
#   JQ=0 benches/compare.sh              # without jq (about 30 s a run on 2M events)
#
# Rows: replay on JSON Lines (default threads and --threads 1), the same gzip'd and as a
# cw-export tree; DuckDB's windowed counts on the JSON Lines and on the same .gz; investigate
# (default threads and --threads 1) against DuckDB's GROUP BY for the same top-10 tables. The
# last column is the row's time over authwatch's on the same input (the DuckDB rows: how many
# times faster authwatch is).
#
# Needs cargo, python3 (DuckDB is installed from PyPI into bench-data/.venv), jq, gzip and
# GNU time (/usr/bin/time). Data goes to bench-data/ (git-ignored). authwatch is built with
# FEATURES (default `isal`, as in the container image: gzip inflated by ISA-L, which needs nasm
# and the autotools); FEATURES= builds it without (flate2 on zlib-rs).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-2000000}
RUNS=${RUNS:-3}
DATA=bench-data/compare-$N
BIN=target/release/authwatch
mkdir -p "$DATA"

for tool in jq gzip /usr/bin/time python3; do
  command -v "$tool" >/dev/null || { echo "compare.sh: $tool is required" >&2; exit 1; }
done

FEATURES=${FEATURES-isal}
echo "== building authwatch (release, features: ${FEATURES:-none})" >&2
cargo build --release --quiet -p authwatch ${FEATURES:+--features "$FEATURES"}

if [ ! -s "$DATA/events.jsonl" ]; then
  echo "== generating $N events" >&2
  /usr/bin/time -f "generate jsonl: %e s" "$BIN" generate --events "$N" --seed 42 --out "$DATA/events.jsonl"
  /usr/bin/time -f "generate cw-export: %e s" "$BIN" generate --events "$N" --seed 42 --format cw-export --out "$DATA/cw-export"
  gzip -1 -c "$DATA/events.jsonl" > "$DATA/events.jsonl.gz"
fi
if [ "${CORPUS:-0}" = 1 ] && [ ! -s "$DATA/corpus.jsonl" ]; then
  echo "== the Kubernetes dataset (16,563 events) repeated to ~2M events" >&2
  for _ in $(seq 121); do zcat ../shared/corpus/hkerma_audit_logs.jsonl.gz; done > "$DATA/corpus.jsonl"
fi

if [ ! -x bench-data/.venv/bin/python ]; then
  echo "== installing DuckDB from PyPI" >&2
  python3 -m venv bench-data/.venv
  bench-data/.venv/bin/pip install --quiet duckdb
fi

cat > "$DATA/duckdb_query.py" <<'PY'
# 401/403 per source address and per user in 5-minute windows, like authwatch's rules.
import sys, duckdb
con = duckdb.connect()
con.execute(f"""
CREATE TEMP TABLE denied AS
SELECT requestReceivedTimestamp AS t, sourceIPs, "user".username AS username
FROM read_ndjson('{sys.argv[1]}', columns = {{
  'sourceIPs': 'VARCHAR[]', 'user': 'STRUCT(username VARCHAR)',
  'responseStatus': 'STRUCT(code INTEGER)', 'requestReceivedTimestamp': 'TIMESTAMP'}},
  ignore_errors = true)
WHERE responseStatus.code IN (401, 403)""")
by_ip = con.execute("""SELECT time_bucket(INTERVAL 5 MINUTE, t) AS w, ip, count(*) AS n
  FROM (SELECT t, unnest(sourceIPs) AS ip FROM denied) GROUP BY ALL ORDER BY n DESC""").fetchall()
by_user = con.execute("""SELECT time_bucket(INTERVAL 5 MINUTE, t) AS w, username, count(*) AS n
  FROM denied WHERE username IS NOT NULL GROUP BY ALL ORDER BY n DESC""").fetchall()
print(len(by_ip), "ip windows;", len(by_user), "user windows; top", by_ip[:1])
PY

cat > "$DATA/duckdb_top.py" <<'PY'
# investigate's tables: the 401/403 events' top 10 per dimension and their count per bucket.
import sys, duckdb
con = duckdb.connect()
con.execute(f"""
CREATE TEMP TABLE denied AS
SELECT requestReceivedTimestamp AS t, sourceIPs, "user".username AS username, userAgent,
  verb || ' ' || objectRef.resource AS verb_resource, responseStatus.code AS code
FROM read_ndjson('{sys.argv[1]}', columns = {{
  'sourceIPs': 'VARCHAR[]', 'user': 'STRUCT(username VARCHAR)', 'userAgent': 'VARCHAR',
  'verb': 'VARCHAR', 'objectRef': 'STRUCT(resource VARCHAR)',
  'responseStatus': 'STRUCT(code INTEGER)', 'requestReceivedTimestamp': 'TIMESTAMP'}},
  ignore_errors = true)
WHERE responseStatus.code IN (401, 403)""")
tops = [con.execute(f"SELECT {c} AS v, count(*) AS n FROM {src} GROUP BY ALL ORDER BY n DESC LIMIT 10").fetchall()
        for c, src in [("ip", "(SELECT unnest(sourceIPs) AS ip FROM denied)"), ("username", "denied"),
                       ("userAgent", "denied"), ("verb_resource", "denied"), ("code", "denied")]]
series = con.execute("SELECT time_bucket(INTERVAL 30 SECOND, t) AS b, count(*) FROM denied GROUP BY ALL ORDER BY b").fetchall()
print([len(t) for t in tops], len(series), "buckets; top address", tops[0][:1])
PY

# measure NAME INPUT_LABEL EVENTS BYTES -- command...
ROWS=()
measure() {
  local name=$1 label=$2 events=$3 bytes=$4; shift 5
  local times=() rss=0
  for _ in $(seq "$RUNS"); do
    /usr/bin/time -f "%e %M" -o "$DATA/.time" "$@" > /dev/null 2> "$DATA/.stderr" || {
      echo "compare.sh: $name failed:" >&2; cat "$DATA/.stderr" >&2; exit 1; }
    read -r secs kb < "$DATA/.time"
    times+=("$secs")
    [ "$kb" -gt "$rss" ] && rss=$kb
  done
  local median
  median=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  ROWS+=("$name|$label|$median|$events|$bytes|$rss")
  echo "  $name on $label: runs ${times[*]} s, median $median s, peak RSS $((rss / 1024)) MiB" >&2
}

size() { du -sb "$1" | cut -f1; }
JSONL=$DATA/events.jsonl
echo "== timing ($RUNS runs each)" >&2
measure "cat (floor)" "jsonl" "$N" "$(size "$JSONL")" -- cat "$JSONL"
measure "zcat (floor)" "jsonl.gz" "$N" "$(size "$DATA/events.jsonl.gz")" -- zcat "$DATA/events.jsonl.gz"
GZ=$DATA/events.jsonl.gz
measure "authwatch replay" "jsonl" "$N" "$(size "$JSONL")" -- "$BIN" replay -q "$JSONL"
measure "authwatch replay --threads 1" "jsonl" "$N" "$(size "$JSONL")" -- "$BIN" replay -q --threads 1 "$JSONL"
measure "authwatch replay" "jsonl.gz" "$N" "$(size "$GZ")" -- "$BIN" replay -q "$GZ"
measure "authwatch replay" "cw-export" "$N" "$(size "$DATA/cw-export")" -- "$BIN" replay -q "$DATA/cw-export"
measure "duckdb" "jsonl" "$N" "$(size "$JSONL")" -- bench-data/.venv/bin/python "$DATA/duckdb_query.py" "$JSONL"
measure "duckdb" "jsonl.gz" "$N" "$(size "$GZ")" -- bench-data/.venv/bin/python "$DATA/duckdb_query.py" "$GZ"
measure "authwatch investigate" "investigate jsonl" "$N" "$(size "$JSONL")" -- "$BIN" investigate --format json "$JSONL"
measure "authwatch investigate --threads 1" "investigate jsonl" "$N" "$(size "$JSONL")" -- "$BIN" investigate --format json --threads 1 "$JSONL"
measure "duckdb top-10 tables" "investigate jsonl" "$N" "$(size "$JSONL")" -- bench-data/.venv/bin/python "$DATA/duckdb_top.py" "$JSONL"
if [ "${JQ:-1}" = 1 ]; then
  measure "jq" "jsonl" "$N" "$(size "$JSONL")" -- jq -n 'reduce (inputs | select(.responseStatus.code == 401 or .responseStatus.code == 403) | .sourceIPs[]) as $ip ({}; .[$ip] += 1)' "$JSONL"
fi
if [ "${CORPUS:-0}" = 1 ]; then
  C=$DATA/corpus.jsonl; CN=$(wc -l < "$C")
  measure "cat (floor)" "corpus" "$CN" "$(size "$C")" -- cat "$C"
  measure "authwatch replay" "corpus" "$CN" "$(size "$C")" -- "$BIN" replay -q "$C"
  measure "duckdb" "corpus" "$CN" "$(size "$C")" -- bench-data/.venv/bin/python "$DATA/duckdb_query.py" "$C"
  if [ "${JQ:-1}" = 1 ]; then
    measure "jq" "corpus" "$CN" "$(size "$C")" -- jq -n 'reduce (inputs | select(.responseStatus.code == 401 or .responseStatus.code == 403) | .sourceIPs[]?) as $ip ({}; .[$ip] += 1)' "$C"
  fi
fi

# authwatch's time per input, for the ratio column.
declare -A AW
for r in "${ROWS[@]}"; do
  IFS='|' read -r name label secs _ _ _ <<< "$r"
  case $name in "authwatch replay" | "authwatch investigate") AW[$label]=$secs ;; esac
done
AW[jsonl.gz]=${AW[jsonl.gz]:-${AW[jsonl]}}
echo
echo "$N events, $(nproc) cores, $(date -u +%Y-%m-%d), median of $RUNS runs"
echo
echo "| tool | input | seconds | events/s | MB/s | peak RSS MiB | time ÷ authwatch's |"
echo "|---|---|---|---|---|---|---|"
for r in "${ROWS[@]}"; do
  IFS='|' read -r name label secs events bytes rss <<< "$r"
  base=${AW[$label]:-${AW[jsonl]}}
  awk -v n="$name" -v l="$label" -v s="$secs" -v e="$events" -v b="$bytes" -v r="$rss" -v a="$base" \
    'BEGIN { printf "| %s | %s | %.2f | %.0f | %.0f | %.0f | %.2f |\n", n, l, s, e / s, b / s / 1e6, r / 1024, s / a }'
done
