#!/usr/bin/env python3
"""Writes the test events of the bundled rules (rules/tests/*.jsonl). Deterministic: run it
from this directory and the files come out byte for byte the same."""
import datetime
import json

BASE = datetime.datetime(2026, 11, 20, 10, 0, 0, tzinfo=datetime.timezone.utc)
A = "kube-apiserver-audit-0a1b2c3d4e5f60718293a4b5c6d7e8f9"
B = "kube-apiserver-audit-f9e8d7c6b5a4938271605f4e3d2c1b0a"


def ts(sec):
    return (BASE + datetime.timedelta(seconds=sec)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def ev(i, sec, ip, user, code, stream, tag, verb="list", resource="secrets", sub=None,
       message=None, ns="default"):
    obj = {"resource": resource, "namespace": ns, "apiVersion": "v1"}
    if sub:
        obj["subresource"] = sub
    status = {"metadata": {}, "code": code}
    if message:
        status["message"] = message
    e = {"kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
         "auditID": f"{tag}-{i:04d}", "stage": "ResponseComplete",
         "requestURI": f"/api/v1/namespaces/{ns}/{resource}" + (f"/x/{sub}" if sub else ""),
         "verb": verb,
         "user": ({"username": user, "groups": ["system:authenticated"]} if user else {}),
         "sourceIPs": ip if isinstance(ip, list) else [ip], "userAgent": "curl/8.5.0",
         "objectRef": obj, "responseStatus": status,
         "requestReceivedTimestamp": ts(sec), "stageTimestamp": ts(sec + 0.002)}
    return {"log": json.dumps(e, separators=(",", ":")), "host": stream}


def write(name, evs):
    with open(name, "w") as f:
        for e in evs:
            f.write(json.dumps(e, separators=(",", ":")) + "\n")


# denied-by-source-ip: 25 denials (401 and 403, X-Forwarded-For + peer) in 5 min -> fires at the 20th.
write("denied-by-source-ip.fires.jsonl", [ev(i, i * 12, ["198.51.100.7", "10.0.0.5"], None if i % 4 == 0 else "alice", 401 if i % 4 == 0 else 403, A if i % 2 else B, "ip") for i in range(25)])
# 19 denials in 5 minutes, then the 20th just after the first left the window -> quiet.
write("denied-by-source-ip.quiet.jsonl", [ev(i, i * 15, "198.51.100.8", "bob", 403, A, "ipq") for i in range(19)] + [ev(19, 300, "198.51.100.8", "bob", 403, A, "ipq")])
# denied-by-user: 20 403s in 5 minutes by one service account from rotating addresses -> fires.
write("denied-by-user.fires.jsonl", [ev(i, i * 10, f"10.0.7.{i}", "system:serviceaccount:default:scanner", 403, A, "u") for i in range(20)])
# 401s carry no user: 30 of them never fire the user rule.
write("denied-by-user.quiet.jsonl", [ev(i, i * 5, f"203.0.113.{i}", None, 401, A, "uq") for i in range(30)])
# denied-by-host: 100 denials on one API server from 100 addresses and 50 users -> fires.
write("denied-by-host.fires.jsonl", [ev(i, i * 2.5, f"203.0.113.{i % 100}", f"user-{i % 50}", 403, A, "h") for i in range(100)] + [ev(100 + i, i * 3, "192.0.2.1", "carol", 200, B, "h") for i in range(50)])
# 99 denials on one API server and 99 on another -> quiet (per host).
write("denied-by-host.quiet.jsonl", [ev(i, i * 3, f"203.0.113.{i % 100}", f"user-{i % 50}", 403, A if i < 99 else B, "hq") for i in range(198)])
# anonymous: 12 unauthenticated requests (401, and 403 as system:anonymous) from one address.
write("anonymous-denied-by-source-ip.fires.jsonl", [ev(i, i * 20, "203.0.113.66", None if i % 3 else "system:anonymous", 401 if i % 3 else 403, A, "an", verb="get", resource="namespaces") for i in range(12)])
# 9 from one address, and 30 denials of an authenticated user from another -> quiet.
write("anonymous-denied-by-source-ip.quiet.jsonl", [ev(i, i * 20, "203.0.113.67", None, 401, A, "anq") for i in range(9)] + [ev(100 + i, i * 5, "10.0.9.9", "dave", 403, A, "anq") for i in range(30)])
# secret access denied for one service account: secrets and configmaps, 5 in 10 minutes.
write("secret-access-denied-for-service-account.fires.jsonl", [ev(i, i * 60, "10.0.3.3", "system:serviceaccount:payments:api", 403, A, "sa", verb="get", resource=["secrets", "configmaps"][i % 2], ns=["payments", "kube-system"][i % 2]) for i in range(6)])
# A person (not a service account) and pods (not secrets) -> quiet.
write("secret-access-denied-for-service-account.quiet.jsonl", [ev(i, i * 30, "10.0.3.4", "erin", 403, A, "saq", verb="get") for i in range(8)] + [ev(100 + i, i * 30, "10.0.3.5", "system:serviceaccount:payments:api", 403, A, "saq", verb="get", resource="pods") for i in range(8)])
# enumeration: one address denied on 15 different resources within 10 minutes.
RES = ["secrets", "configmaps", "pods", "services", "deployments", "daemonsets", "statefulsets", "nodes", "namespaces", "serviceaccounts", "roles", "rolebindings", "clusterroles", "clusterrolebindings", "persistentvolumes", "ingresses", "cronjobs"]
write("enumeration-by-source-ip.fires.jsonl", [ev(i, i * 20, "198.51.100.23", "system:serviceaccount:default:default", 403, A, "en", resource=RES[i]) for i in range(17)])
# The scheduler starting before its RBAC is in place (as in the Kubernetes dataset): excluded.
write("enumeration-by-source-ip.quiet.jsonl", [ev(i, i * 2, "10.0.0.10", "system:kube-scheduler", 403, A, "enq", resource=RES[i]) for i in range(17)] + [ev(100 + i, i * 20, "198.51.100.24", "frank", 403, A, "enq", resource=RES[i % 14]) for i in range(30)])
# exec / attach / port-forward denied: one is enough.
write("exec-attach-portforward-denied.fires.jsonl", [ev(0, 0, "192.0.2.50", "mallory", 403, A, "ex", verb="create", resource="pods", sub="exec"), ev(1, 30, "192.0.2.50", "mallory", 403, A, "ex", verb="create", resource="pods", sub="portforward")])
# Allowed execs, and a denied log read -> quiet.
write("exec-attach-portforward-denied.quiet.jsonl", [ev(i, i * 10, "192.0.2.51", "oscar", 101, A, "exq", verb="create", resource="pods", sub="exec") for i in range(5)] + [ev(10, 60, "192.0.2.51", "oscar", 403, A, "exq", verb="get", resource="pods", sub="log")])
IMP = 'users "system:admin" is forbidden: User "mallory" cannot impersonate resource "users" in API group "" at the cluster scope'
write("impersonation-denied.fires.jsonl", [ev(0, 0, "192.0.2.60", "mallory", 403, A, "im", verb="impersonate", resource="users", message=IMP)])
# An admin impersonating bob, and bob being denied (the audit2rbac pattern): not a denied impersonation.
write("impersonation-denied.quiet.jsonl", [ev(i, i * 10, "::1", "system:admin", 403, A, "imq", message='pods is forbidden: User "bob" cannot list resource "pods" in API group "" in the namespace "default"') for i in range(5)])
# A node reading secrets and pods it is not bound to.
write("node-denied-outside-scope.fires.jsonl", [ev(i, i * 30, "10.0.1.17", "system:node:ip-10-0-1-17.eu-west-1.compute.internal", 403, A, "nd", verb="get", resource=["secrets", "pods"][i % 2], ns=f"team-{i}") for i in range(12)])
# Node start-up: watches and a few lists denied while the node authorizer catches up -> quiet.
write("node-denied-outside-scope.quiet.jsonl", [ev(i, i, "10.0.1.18", "system:node:ip-10-0-1-18.eu-west-1.compute.internal", 403, A, "ndq", verb="watch", resource="configmaps") for i in range(20)] + [ev(100 + i, i * 5, "10.0.1.18", "system:node:ip-10-0-1-18.eu-west-1.compute.internal", 403, A, "ndq", verb="list", resource="configmaps") for i in range(6)])
# cluster-wide spike: 70 minutes at 1 denial a minute, then 150 in 5 minutes.
base = [ev(i, i * 60, f"10.0.{i % 5}.1", f"svc-{i % 7}", 403, A, "sp") for i in range(70)]
burst = [ev(1000 + i, 4200 + i * 2, f"203.0.113.{i % 200}", None, 401, B, "sp") for i in range(150)]
write("cluster-denied-spike.fires.jsonl", base + burst)
# Busy but steady: 22 denials a minute for 72 minutes -> quiet (no rise over the hour's rate).
write("cluster-denied-spike.quiet.jsonl", [ev(i, i * 2.7, f"10.0.{i % 5}.1", f"svc-{i % 7}", 403, A, "spq") for i in range(1600)])
