# N denied events from N distinct source addresses (a 401 spray), one JSON line each.
import sys
n = int(sys.argv[1])
w = sys.stdout.write
base = 1763632800  # 2026-11-20T10:00:00Z
for i in range(n):
    t = base + i // 5000
    ip = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}" if i < (1 << 24) else f"11.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
    ts = f"2026-11-20T{10 + (t - base) // 3600:02d}:{((t - base) // 60) % 60:02d}:{(t - base) % 60:02d}.{i % 1000000:06d}Z"
    w('{"kind":"Event","apiVersion":"audit.k8s.io/v1","auditID":"s-%d","verb":"get","requestURI":"/api","user":{},"sourceIPs":["%s"],"userAgent":"spray/1.0","responseStatus":{"code":401},"requestReceivedTimestamp":"%s"}\n' % (i, ip, ts))
