#!/usr/bin/env bash
# Builds the fuzz seed corpora in fuzz/corpus/<target>/ from the shared corpus
# (../shared/corpus), the demo export and the bundled rules. Generated, not committed
# (fuzz/.gitignore); re-running it replaces the seeds and keeps what the fuzzer added.
#   usage: fuzz/seed.sh [SHARED_CORPUS_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="${1:-../shared/corpus}"
if [ ! -d "$SHARED" ]; then
  echo "error: $SHARED is missing (the shared audit-event corpus)" >&2
  exit 1
fi
exec python3 - "$SHARED" <<'PY'
import base64, glob, gzip, hashlib, json, os, sys

shared = sys.argv[1]
out = "fuzz/corpus"

def put(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    name = "seed-" + hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

def lines(path, opener=open):
    with opener(path, "rb") as f:
        return [l.rstrip(b"\n") for l in f if l.strip()]

events = []
events += lines(os.path.join(shared, "audit2rbac_demo.jsonl"))
events += lines(os.path.join(shared, "falco_k8s_audit.jsonl"))
hk = lines(os.path.join(shared, "hkerma_audit_logs.jsonl.gz"), gzip.open)
# Every 403, the first 200 lines, and every 100th: a few hundred seeds, not 16,563.
events += [l for l in hk if b'"code":403' in l or b'"code": 403' in l]
events += hk[:200] + hk[::100]
events = list(dict.fromkeys(events))

demo = []
for p in sorted(glob.glob("samples/demo/*/*/*.gz")):
    demo += lines(p, gzip.open)[:150]

for e in events:
    put("decode_event", e)
    put("framing_jsonl_line", e)
    put("framing_jsonl_line", json.dumps({"log": e.decode("utf-8", "replace"), "host": "ip-10-0-1-2"}))
put("framing_jsonl_line", b'{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[' + b",".join(events[:3]) + b"]}")

for l in demo:
    put("framing_cw_export_line", l)
for i, e in enumerate(events[:200]):
    put("framing_cw_export_line", b"2026-11-20T10:%02d:%02d.%03dZ " % (i // 60 % 60, i % 60, i) + e)

def cw_events(chunk, base=1763632800000):
    return [{"id": str(36000000000000000000 + i), "timestamp": base + i * 1000,
             "message": e.decode("utf-8", "replace")} for i, e in enumerate(chunk)]

for k in range(0, min(len(events), 400), 8):
    chunk = events[k:k + 8]
    evs = cw_events(chunk)
    fle = {"events": [{"logStreamName": "kube-apiserver-audit-%d" % (k % 3), "timestamp": e["timestamp"],
                       "message": e["message"], "ingestionTime": e["timestamp"] + 500, "eventId": e["id"]} for e in evs],
           "searchedLogStreams": [], "nextToken": "t/%d" % k}
    put("framing_filter_log_events_doc", json.dumps(fle, indent=4 if k % 16 == 0 else None))
    sub = {"messageType": "DATA_MESSAGE", "owner": "123456789012", "logGroup": "/aws/eks/prod/cluster",
           "logStream": "kube-apiserver-audit-%d" % (k % 3), "subscriptionFilters": ["authwatch"], "logEvents": evs}
    plain = json.dumps(sub).encode()
    put("framing_subscription_payload", plain)
    put("framing_subscription_payload", gzip.compress(plain, mtime=0))
    put("framing_subscription_payload", base64.b64encode(gzip.compress(plain, mtime=0)))
put("framing_subscription_payload", json.dumps({"messageType": "CONTROL_MESSAGE", "owner": "CloudwatchLogs",
    "logGroup": "", "logStream": "", "subscriptionFilters": [], "logEvents": []}))

for p in sorted(glob.glob("rules/*.yaml") + glob.glob("tests/rules/*.yaml")):
    with open(p, "rb") as f:
        put("rule_file", f.read())

# The engine: runs of events, one per line (first byte: the lateness bound in seconds).
denied = [e for e in events if b"403" in e or b"401" in e]
for k in range(0, len(events), 25):
    put("engine", b"\x78" + b"\n".join(events[k:k + 25]))
for k in range(0, len(denied), 20):
    put("engine", b"\x05" + b"\n".join(denied[k:k + 40]))
for k in range(0, len(demo), 40):
    put("engine", b"\x3c" + b"\n".join(l.split(b" ", 1)[-1] for l in demo[k:k + 40]))

# Kept crash inputs are seeds too.
for target in os.listdir("fuzz/regressions") if os.path.isdir("fuzz/regressions") else []:
    for p in glob.glob(os.path.join("fuzz/regressions", target, "*")):
        if not p.endswith(".md"):
            with open(p, "rb") as f:
                put(target, f.read())

for t in sorted(os.listdir(out)):
    files = os.listdir(os.path.join(out, t))
    size = sum(os.path.getsize(os.path.join(out, t, f)) for f in files)
    print(f"{t}: {len(files)} files, {size} bytes")
PY
