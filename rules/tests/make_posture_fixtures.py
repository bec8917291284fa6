#!/usr/bin/env python3
"""Writes the test events of the bundled posture rules (request bodies: pod specs, bindings,
roles, services) into rules/tests/ and rules/opt-in/tests/. Deterministic: run it from this
directory and the files come out byte for byte the same. Some cases are real events from the
Falco trace files of the shared corpus (../shared/corpus/falco_k8s_audit.jsonl, line numbers
given); they are copied here so the fixtures do not depend on the corpus."""
import copy
import datetime
import json
import os

BASE = datetime.datetime(2026, 11, 20, 10, 0, 0, tzinfo=datetime.timezone.utc)
A = "kube-apiserver-audit-0a1b2c3d4e5f60718293a4b5c6d7e8f9"
CORPUS = os.environ.get("FALCO_CORPUS", "../../../shared/corpus/falco_k8s_audit.jsonl")
FALCO = open(CORPUS).read().splitlines()


def falco(line, **changes):
    """Falco corpus line `line` (1-based), as a dict; `changes` set top-level fields."""
    e = json.loads(FALCO[line - 1])
    for k, v in changes.items():
        e[k] = v
    return e


def ts(sec):
    return (BASE + datetime.timedelta(seconds=sec)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


GROUPS = {"": "", "apps": "apps", "batch": "batch", "rbac": "rbac.authorization.k8s.io",
          "adm": "admissionregistration.k8s.io"}


def ev(tag, i, sec, verb, resource, name, body=None, ns="default", user="alice", code=201,
       sub=None, group="", stage="ResponseComplete", uri=None):
    obj = {"resource": resource, "apiVersion": "v1"}
    if ns:
        obj["namespace"] = ns
    if name:
        obj["name"] = name
    if sub:
        obj["subresource"] = sub
    if group:
        obj["apiGroup"] = GROUPS[group]
    if uri is None:
        prefix = f"/apis/{GROUPS[group]}/v1" if group else "/api/v1"
        uri = prefix + (f"/namespaces/{ns}" if ns else "") + f"/{resource}"
        if name and verb != "create":
            uri += f"/{name}"
        if sub:
            uri += f"/{name}/{sub}" if verb == "create" else f"/{sub}"
    e = {"kind": "Event", "apiVersion": "audit.k8s.io/v1",
         "level": "RequestResponse" if body is not None else "Metadata",
         "auditID": f"{tag}-{i:04d}", "stage": stage, "requestURI": uri, "verb": verb,
         "user": {"username": user, "groups": ["system:authenticated"]} if user else {},
         "sourceIPs": ["192.0.2.10"], "userAgent": "kubectl/v1.30.2 (linux/amd64)",
         "objectRef": obj, "responseStatus": {"metadata": {}, "code": code},
         "requestReceivedTimestamp": ts(sec), "stageTimestamp": ts(sec + 0.002)}
    if body is not None:
        e["requestObject"] = body
    return e


def wrap(e):
    e = {k: v for k, v in e.items() if v is not None}
    return {"log": json.dumps(e, separators=(",", ":")), "host": A}


def write(name, evs, where="."):
    with open(os.path.join(where, name), "w") as f:
        for e in evs:
            f.write(json.dumps(wrap(e), separators=(",", ":")) + "\n")


def container(name="app", image="123456789012.dkr.ecr.eu-west-1.amazonaws.com/app:1.4", sc=None):
    c = {"name": name, "image": image}
    if sc is not None:
        c["securityContext"] = sc
    return c


def pod(containers, **spec):
    return {"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "p"},
            "spec": dict(containers=containers, **spec)}


def deployment(containers, **spec):
    return {"kind": "Deployment", "apiVersion": "apps/v1", "metadata": {"name": "d"},
            "spec": {"replicas": 2, "template": {"spec": dict(containers=containers, **spec)}}}


def cronjob(containers, **spec):
    return {"kind": "CronJob", "apiVersion": "batch/v1", "metadata": {"name": "c"},
            "spec": {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": {
                "spec": dict(containers=containers, **spec)}}}}}


def template_patch(containers=None, **spec):
    """A strategic-merge patch of a workload's pod template (no kind, as kubectl sends it)."""
    s = dict(spec)
    if containers is not None:
        s["containers"] = containers
    return {"spec": {"template": {"spec": s}}}


RS = "system:serviceaccount:kube-system:replicaset-controller"

# privilege-escalation-allowed ---------------------------------------------------------------
write("privilege-escalation-allowed.fires.jsonl", [
    ev("pe", 0, 0, "create", "pods", "p1", pod([container(), container("side", sc={"allowPrivilegeEscalation": True})])),
    ev("pe", 1, 10, "create", "deployments", "d1", deployment([container(sc={"privileged": True})]), group="apps"),
    # A patch that turns the flag on.
    ev("pe", 2, 20, "patch", "deployments", "d2", template_patch([{"name": "app", "securityContext": {"allowPrivilegeEscalation": True}}]), group="apps", code=200),
    # The same deployment again within the cooldown: no second alert.
    ev("pe", 3, 30, "patch", "deployments", "d2", template_patch([{"name": "app", "securityContext": {"privileged": True}}]), group="apps", code=200),
    ev("pe", 4, 40, "create", "cronjobs", "c1", cronjob([container()], initContainers=[container("init", sc={"allowPrivilegeEscalation": True})]), group="batch"),
])
write("privilege-escalation-allowed.quiet.jsonl", [
    ev("peq", 0, 0, "create", "pods", "p1", pod([container(sc={"allowPrivilegeEscalation": False, "privileged": False})])),
    # A patch of the replicas only.
    ev("peq", 1, 10, "patch", "deployments", "d1", {"spec": {"replicas": 5}}, group="apps", code=200),
    # Refused.
    ev("peq", 2, 20, "create", "pods", "p2", pod([container(sc={"privileged": True})]), code=403),
    # The ReplicaSet controller creating a deployment's pods (the deployment is what counts).
    ev("peq", 3, 30, "create", "pods", "p3", pod([container(sc={"privileged": True})]), user=RS),
    # No body (Metadata level).
    ev("peq", 4, 40, "create", "pods", "p4"),
    # A status write carries the spec but cannot change it.
    ev("peq", 5, 50, "update", "pods", "p5", pod([container(sc={"privileged": True})]), sub="status", code=200),
])

# untrusted-image-registry -------------------------------------------------------------------
write("untrusted-image-registry.fires.jsonl", [
    ev("ir", 0, 0, "create", "pods", "p1", pod([container(), container("side", "nginx:1.25")])),
    ev("ir", 1, 10, "create", "deployments", "d1", deployment([container(image="public.ecr.aws/eks/app:1"), container("x", "ghcr.io/evil/miner@sha256:0123456789abcdef")]), group="apps"),
    ev("ir", 2, 20, "patch", "deployments", "d2", template_patch([{"name": "app", "image": "my.registry.example:5000/app:2"}]), group="apps", code=200),
    ev("ir", 3, 30, "patch", "pods", "p2", {"spec": {"ephemeralContainers": [{"name": "debugger", "image": "busybox"}]}}, sub="ephemeralcontainers", code=200),
])
write("untrusted-image-registry.quiet.jsonl", [
    ev("irq", 0, 0, "create", "pods", "p1", pod([container(), container("pause", "registry.k8s.io/pause:3.9")], initContainers=[container("init", "public.ecr.aws/docker/library/busybox:1.36")])),
    ev("irq", 1, 10, "create", "deployments", "d1", deployment([container(image="987654321098.dkr.ecr.us-east-1.amazonaws.com.cn/app")]), group="apps", code=422),
    ev("irq", 2, 20, "patch", "deployments", "d2", {"spec": {"replicas": 1}}, group="apps", code=200),
    ev("irq", 3, 30, "create", "pods", "p3", pod([container(image="nginx")]), user=RS),
])

# privileged-container ----------------------------------------------------------------------
# Falco corpus line 21: the ReplicaSet controller creates a pod whose second container (mysql)
# is privileged; as a person's request (user changed) it fires, as the controller's it is quiet.
# The pod has only a generateName: its key is the name in responseObject (object.name).
f21 = falco(21)
f21_person = falco(21, user={"username": "minikube-user", "groups": ["system:masters", "system:authenticated"]})
write("privileged-container.fires.jsonl", [
    f21_person,
    ev("pc", 0, 0, "create", "daemonsets", "ds1", deployment([container(sc={"privileged": True})]) | {"kind": "DaemonSet"}, group="apps"),
    ev("pc", 1, 10, "patch", "statefulsets", "ss1", template_patch([{"name": "db", "securityContext": {"privileged": True}}]), group="apps", code=200),
    # generateName at Request level (no responseObject): keyed by the prefix.
    ev("pc", 2, 20, "create", "pods", None, pod([container(sc={"privileged": True})]) | {"metadata": {"generateName": "debug-"}}),
    # kubectl patch --type=json: the flag set by a JSON Pointer.
    ev("pc", 3, 30, "patch", "deployments", "web", [{"op": "add", "path": "/spec/template/spec/containers/0/securityContext", "value": {"privileged": True}}], group="apps", code=200),
])
write("privileged-container.quiet.jsonl", [
    f21,
    falco(20),  # hostNetwork, not privileged
    ev("pcq", 0, 0, "create", "pods", "p1", pod([container(sc={"privileged": False})])),
    ev("pcq", 1, 10, "patch", "statefulsets", "ss1", template_patch([{"name": "db", "image": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/db:2"}]), group="apps", code=200),
    ev("pcq", 2, 20, "create", "pods", "p2", pod([container(sc={"privileged": True})]), user="system:node:ip-10-0-1-17.eu-west-1.compute.internal"),
    # A JSON Patch that changes only the replicas, and one that removes the flag.
    ev("pcq", 3, 30, "patch", "deployments", "web", [{"op": "replace", "path": "/spec/replicas", "value": 5}], group="apps", code=200),
    ev("pcq", 4, 40, "patch", "deployments", "web", [{"op": "remove", "path": "/spec/template/spec/containers/0/securityContext/privileged"}], group="apps", code=200),
])

# sensitive-hostpath-mount ------------------------------------------------------------------
# Falco corpus line 25: a pod mounting the host's /etc (user changed from the controller).
f25 = falco(25, user={"username": "minikube-user", "groups": ["system:authenticated"]})
write("sensitive-hostpath-mount.fires.jsonl", [
    f25,
    ev("hp", 0, 0, "create", "pods", "p1", pod([container()], volumes=[{"name": "tmp", "emptyDir": {}}, {"name": "sock", "hostPath": {"path": "/var/run/docker.sock"}}])),
    ev("hp", 1, 10, "create", "daemonsets", "ds1", deployment([container()], volumes=[{"name": "root", "hostPath": {"path": "/"}}]) | {"kind": "DaemonSet"}, group="apps"),
    ev("hp", 2, 20, "patch", "deployments", "d1", template_patch(volumes=[{"name": "k", "hostPath": {"path": "/var/lib/kubelet/pods"}}]), group="apps", code=200),
])
write("sensitive-hostpath-mount.quiet.jsonl", [
    falco(25),  # the ReplicaSet controller's pod (generateName: no objectRef.name either)
    ev("hpq", 3, 30, "create", "pods", "web-7d5b5-x", pod([container()], volumes=[{"name": "etc", "hostPath": {"path": "/etc"}}]), user=RS),
    ev("hpq", 0, 0, "create", "pods", "p1", pod([container()], volumes=[{"name": "certs", "hostPath": {"path": "/etc/ssl/certs"}}, {"name": "logs", "hostPath": {"path": "/var/log/app"}}])),
    ev("hpq", 1, 10, "create", "pods", "p2", pod([container()], volumes=[{"name": "sock", "hostPath": {"path": "/var/run/docker.sock"}}]), code=403),
])

# host-namespaces ---------------------------------------------------------------------------
# Falco corpus line 20: a hostNetwork pod (user changed from the controller).
f20 = falco(20, user={"username": "minikube-user", "groups": ["system:authenticated"]})
write("host-namespaces.fires.jsonl", [
    f20,
    ev("hn", 0, 0, "create", "pods", "p1", pod([container()], hostPID=True)),
    ev("hn", 1, 10, "patch", "daemonsets", "ds1", template_patch(hostIPC=True), group="apps", code=200),
])
write("host-namespaces.quiet.jsonl", [
    falco(20),  # the ReplicaSet controller's pod
    ev("hnq", 0, 0, "create", "pods", "p1", pod([container()], hostNetwork=False, hostPID=False)),
    ev("hnq", 1, 10, "create", "daemonsets", "aws-node", deployment([container()], hostNetwork=True) | {"kind": "DaemonSet"}, ns="kube-system", group="apps", user="eks:addon-manager"),
])

# exec-attach-allowed and exec-attach-kube-system --------------------------------------------
# Falco corpus lines 48 (exec, 13:38:34) and 3 (attach, 13:42:46) into the same pod: one alert.
write("exec-attach-allowed.fires.jsonl", [falco(48), falco(3),
    ev("ea", 0, 0, "create", "pods", "web-1", sub="exec", code=101, stage="ResponseStarted"),
    ev("ea", 0, 1, "create", "pods", "web-1", sub="exec", code=101),
])
write("exec-attach-allowed.quiet.jsonl", [
    ev("eaq", 0, 0, "create", "pods", "web-1", sub="exec", code=403),
    ev("eaq", 1, 10, "get", "pods", "web-1", sub="log", code=200),
    ev("eaq", 2, 20, "create", "pods", "coredns-1", ns="kube-system", sub="exec", code=101),
    ev("eaq", 3, 30, "create", "pods", "web-1", sub="portforward", code=101),
])
write("exec-attach-kube-system.fires.jsonl", [
    ev("ek", 0, 0, "create", "pods", "coredns-5d78c9869d-abcde", ns="kube-system", sub="exec", code=101),
    ev("ek", 1, 10, "create", "pods", "aws-node-x7k2p", ns="kube-system", sub="attach", code=101),
])
write("exec-attach-kube-system.quiet.jsonl", [
    falco(48),  # default namespace
    ev("ekq", 0, 0, "create", "pods", "coredns-5d78c9869d-abcde", ns="kube-system", sub="exec", code=403),
])

# ephemeral-container-added -----------------------------------------------------------------
write("ephemeral-container-added.fires.jsonl", [
    ev("ec", 0, 0, "patch", "pods", "web-1", {"spec": {"ephemeralContainers": [{"name": "debugger-x", "image": "busybox", "targetContainerName": "app"}]}}, sub="ephemeralcontainers", code=200),
    ev("ec", 1, 10, "update", "pods", "web-2", sub="ephemeralcontainers", code=200),
])
write("ephemeral-container-added.quiet.jsonl", [
    ev("ecq", 0, 0, "patch", "pods", "web-1", {"spec": {"ephemeralContainers": [{"name": "debugger-x", "image": "busybox"}]}}, sub="ephemeralcontainers", code=403),
    ev("ecq", 1, 10, "get", "pods", "web-1", sub="ephemeralcontainers", code=200),
    ev("ecq", 2, 20, "patch", "pods", "web-1", {"metadata": {"labels": {"a": "b"}}}, code=200),
])

# cluster-admin-binding ---------------------------------------------------------------------
# Falco corpus line 2: a ClusterRoleBinding to cluster-admin; line 9: one to system:basic-user.
def binding(kind, role, subjects, role_kind="ClusterRole"):
    return {"kind": kind, "apiVersion": "rbac.authorization.k8s.io/v1", "metadata": {"name": "b"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
            "subjects": subjects}


USER = [{"kind": "User", "name": "mallory", "apiGroup": "rbac.authorization.k8s.io"}]
write("cluster-admin-binding.fires.jsonl", [
    falco(2),
    ev("ca", 0, 0, "create", "rolebindings", "ops-admin", binding("RoleBinding", "cluster-admin", USER), ns="payments", group="rbac"),
])
write("cluster-admin-binding.quiet.jsonl", [
    falco(9),
    ev("caq", 0, 0, "create", "rolebindings", "view", binding("RoleBinding", "view", USER), ns="payments", group="rbac"),
    ev("caq", 1, 10, "create", "clusterrolebindings", "x", binding("ClusterRoleBinding", "cluster-admin", USER), ns=None, group="rbac", code=403),
    ev("caq", 2, 20, "create", "clusterrolebindings", "eks:addon-cluster-admin", binding("ClusterRoleBinding", "cluster-admin", USER), ns=None, group="rbac", user="eks:addon-manager"),
])

# binding-to-anonymous ----------------------------------------------------------------------
write("binding-to-anonymous.fires.jsonl", [
    ev("ba", 0, 0, "create", "clusterrolebindings", "anon-view", binding("ClusterRoleBinding", "view", USER + [{"kind": "User", "name": "system:anonymous", "apiGroup": "rbac.authorization.k8s.io"}]), ns=None, group="rbac"),
    ev("ba", 1, 10, "patch", "rolebindings", "pub", {"subjects": [{"kind": "Group", "name": "system:unauthenticated", "apiGroup": "rbac.authorization.k8s.io"}]}, ns="default", group="rbac", code=200),
])
write("binding-to-anonymous.quiet.jsonl", [
    falco(2),
    ev("baq", 0, 0, "create", "clusterrolebindings", "auth-view", binding("ClusterRoleBinding", "view", [{"kind": "Group", "name": "system:authenticated"}]), ns=None, group="rbac"),
    ev("baq", 1, 10, "create", "clusterrolebindings", "anon-view", binding("ClusterRoleBinding", "view", [{"kind": "User", "name": "system:anonymous"}]), ns=None, group="rbac", code=403),
])

# anonymous-request-allowed -----------------------------------------------------------------
# Falco corpus line 1: system:anonymous creates a namespace (201).
write("anonymous-request-allowed.fires.jsonl", [
    falco(1),
    ev("an", 0, 0, "list", "secrets", None, user="system:anonymous", code=200, ns="kube-system"),
    ev("an", 1, 10, "get", "pods", None, user="system:anonymous", code=200),
])
write("anonymous-request-allowed.quiet.jsonl", [
    ev("anq", i, i * 10, "get", "x", None, user="system:anonymous", code=200, uri=u) | {"objectRef": None}
    for i, u in enumerate(["/healthz", "/livez", "/readyz?verbose", "/version", "/version/", "/healthz/etcd", "/.well-known/openid-configuration", "/openid/v1/jwks"])
] + [
    ev("anq", 20, 200, "list", "secrets", None, user="system:anonymous", code=403),
    ev("anq", 21, 210, "list", "secrets", None, user=None, code=401),
])

# wildcard-rbac-role ------------------------------------------------------------------------
# Falco corpus lines 4-8: ClusterRoles with `*` verbs on pods (line 6) or get/list on `*`
# (line 5), never both: quiet.
def role(kind, rules):
    return {"kind": kind, "apiVersion": "rbac.authorization.k8s.io/v1", "metadata": {"name": "r"}, "rules": rules}


write("wildcard-rbac-role.fires.jsonl", [
    ev("wr", 0, 0, "create", "clusterroles", "god", role("ClusterRole", [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]), ns=None, group="rbac"),
    ev("wr", 1, 10, "patch", "roles", "ns-admin", role("Role", [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}, {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]), ns="payments", group="rbac", code=200),
])
write("wildcard-rbac-role.quiet.jsonl", [falco(n) for n in (4, 5, 6, 7, 8)] + [
    ev("wrq", 0, 0, "create", "clusterroles", "god", role("ClusterRole", [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]), ns=None, group="rbac", code=403),
    ev("wrq", 1, 10, "update", "clusterroles", "cluster-admin", role("ClusterRole", [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]), ns=None, group="rbac", code=200, user="system:apiserver"),
])

# nodeport-loadbalancer-service -------------------------------------------------------------
# Falco corpus line 29: a NodePort Service; lines 30 and 34: ClusterIP Services.
write("nodeport-loadbalancer-service.fires.jsonl", [
    falco(29),
    ev("np", 0, 0, "create", "services", "public-lb", {"kind": "Service", "apiVersion": "v1", "spec": {"type": "LoadBalancer", "ports": [{"port": 443}]}}),
    ev("np", 1, 10, "patch", "services", "internal", {"spec": {"type": "NodePort"}}, code=200),
])
write("nodeport-loadbalancer-service.quiet.jsonl", [falco(30), falco(34),
    ev("npq", 0, 0, "create", "services", "headless", {"kind": "Service", "apiVersion": "v1", "spec": {"clusterIP": "None"}}),
    ev("npq", 1, 10, "create", "services", "lb", {"kind": "Service", "apiVersion": "v1", "spec": {"type": "LoadBalancer"}}, code=403),
])

# admission-webhook-changed -----------------------------------------------------------------
def webhook(kind):
    return {"kind": kind, "apiVersion": "admissionregistration.k8s.io/v1", "metadata": {"name": "w"},
            "webhooks": [{"name": "w.example.com", "clientConfig": {"url": "https://203.0.113.9/hook"}}]}


write("admission-webhook-changed.fires.jsonl", [
    ev("wh", 0, 0, "create", "mutatingwebhookconfigurations", "inject", webhook("MutatingWebhookConfiguration"), ns=None, group="adm"),
    ev("wh", 1, 10, "delete", "validatingwebhookconfigurations", "policy", ns=None, group="adm", code=200),
    ev("wh", 2, 20, "patch", "mutatingwebhookconfigurations", "inject", {"webhooks": [{"name": "w.example.com", "failurePolicy": "Ignore"}]}, ns=None, group="adm", code=200),
])
write("admission-webhook-changed.quiet.jsonl", [
    ev("whq", 0, 0, "list", "mutatingwebhookconfigurations", None, ns=None, group="adm", code=200),
    ev("whq", 1, 10, "create", "validatingwebhookconfigurations", "policy", webhook("ValidatingWebhookConfiguration"), ns=None, group="adm", code=403),
    ev("whq", 2, 20, "update", "validatingwebhookconfigurations", "eks-guard", webhook("ValidatingWebhookConfiguration"), ns=None, group="adm", code=200, user="eks:addon-manager"),
])

# opt-in: privilege-escalation-unset ----------------------------------------------------------
write("privilege-escalation-unset.fires.jsonl", [
    ev("pu", 0, 0, "create", "pods", "p1", pod([container(), container("side")])),
    ev("pu", 1, 10, "update", "deployments", "d1", deployment([container(sc={"runAsNonRoot": True})]), group="apps", code=200),
], where="../opt-in/tests")
write("privilege-escalation-unset.quiet.jsonl", [
    ev("puq", 0, 0, "create", "pods", "p1", pod([container(sc={"allowPrivilegeEscalation": False})])),
    # A patch holds only what changes: an unset flag there says nothing.
    ev("puq", 1, 10, "patch", "deployments", "d1", template_patch([{"name": "app", "image": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/app:2"}]), group="apps", code=200),
    ev("puq", 2, 20, "patch", "deployments", "d1", {"spec": {"replicas": 3}}, group="apps", code=200),
    ev("puq", 3, 30, "create", "pods", "p3", pod([container()]), user=RS),
], where="../opt-in/tests")
