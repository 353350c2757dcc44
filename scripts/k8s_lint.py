"""Structural checks of rendered Kubernetes manifests that schemas cannot make.

Usage (scripts/k8s-check.sh runs it on each rendered overlay):

    python scripts/k8s_lint.py split RENDERED BUILTIN_OUT   # built-in kinds -> BUILTIN_OUT,
                                                          # custom resources listed on stdout
    python scripts/k8s_lint.py check RENDERED               # the checks below

Checks (each problem is one line naming the object; exit status 1 if there is any):

- every probe port is a port that a container of the pod exposes (a named port must be
  one of the probed container's own, as the kubelet resolves it there);
- every Service with a selector selects at least one pod template in its namespace, and
  every named targetPort exists on the pods it selects;
- every PodDisruptionBudget selects a pod template, and every HorizontalPodAutoscaler
  targets a workload that exists;
- every ``*_GRPC_TARGET`` (a ConfigMap key, or a container's literal ``env``) that names an
  in-cluster host (``svc``, ``svc.ns``, ``svc.ns.svc[.cluster.local]``) names a Service that
  exists and exposes that port, and that this Service is headless (``clusterIP: None``): a
  gRPC client keeps one HTTP/2 connection, which a ClusterIP would pin to one pod, while a
  headless name gives kit's round_robin channels every replica. Empty values (the feature
  is off), ``$(VAR)`` references and hosts outside the cluster are not checked;
- and the NetworkPolicies let each pod that reads such a target (through ``envFrom`` of the
  ConfigMap, or its own ``env``) reach the pods behind that Service on that port: an egress
  rule of the caller's policies and an ingress rule of the target's, when policies select
  them. Jobs are not taken as callers (migrations read the service's ConfigMap but call
  no one). ``ipBlock`` peers are taken to match no pod;
- a container port named ``grpc-admin`` (a service's admin APIs, ADMIN_GRPC_PORT: ops reach
  it by port-forward only) is the target of no Service port, and no ingress rule of the
  NetworkPolicies selecting its pod admits it (a rule without ports admits every port), nor
  is the pod left without an ingress policy, when the manifests have any;
- every pod behind a Service that a gRPC Ingress (``backend-protocol: GRPC``) routes to has
  a ``grpc-admin`` port: its ops APIs are off the port reached from outside.

Built-in kinds are told from custom resources by API group: core, the unsuffixed built-in
groups, and ``*.k8s.io`` (reserved for Kubernetes itself). PyYAML comes from the check's
own tool environment (.tools/k8s), so this file imports it at run time.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Obj = Mapping[str, Any]

BUILTIN_GROUPS = frozenset({"", "apps", "batch", "policy", "autoscaling"})
WORKLOADS = frozenset(
    {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}
)
PROBES = ("livenessProbe", "readinessProbe", "startupProbe")


def load(path: Path) -> list[Obj]:
    try:
        yaml = importlib.import_module("yaml")
    except ModuleNotFoundError:
        sys.exit("k8s_lint: PyYAML is missing; run me with .tools/k8s/bin/python")
    with path.open() as f:
        return [doc for doc in yaml.safe_load_all(f) if isinstance(doc, dict)]


def dump(objs: list[Obj], path: Path) -> None:
    yaml = importlib.import_module("yaml")
    with path.open("w") as f:
        yaml.safe_dump_all(objs, f, sort_keys=False)


def group_of(obj: Obj) -> str:
    api_version = str(obj.get("apiVersion", ""))
    return api_version.rpartition("/")[0] if "/" in api_version else ""


def is_builtin(obj: Obj) -> bool:
    group = group_of(obj)
    return group in BUILTIN_GROUPS or group.endswith(".k8s.io")


def ref(obj: Obj) -> str:
    meta = obj.get("metadata", {})
    namespace = meta.get("namespace")
    where = f" (namespace {namespace})" if namespace else ""
    return f"{obj.get('kind')}/{meta.get('name')}{where}"


@dataclass(frozen=True)
class PodTemplate:
    owner: Obj
    namespace: str | None
    labels: Mapping[str, str]
    spec: Obj

    def containers(self) -> Iterator[Obj]:
        yield from self.spec.get("initContainers") or []
        yield from self.spec.get("containers") or []

    def port_names(self) -> set[str]:
        return {p["name"] for c in self.containers() for p in c.get("ports") or [] if "name" in p}


def pod_template(obj: Obj) -> PodTemplate | None:
    kind = obj.get("kind")
    if kind not in WORKLOADS:
        return None
    if kind == "Pod":
        meta, spec = obj.get("metadata", {}), obj.get("spec", {})
    else:
        spec = obj.get("spec", {})
        if kind == "CronJob":
            spec = spec.get("jobTemplate", {}).get("spec", {})
        template = spec.get("template", {})
        meta, spec = template.get("metadata", {}), template.get("spec", {})
    namespace = obj.get("metadata", {}).get("namespace")
    return PodTemplate(obj, namespace, meta.get("labels") or {}, spec)


def probe_port(probe: Obj) -> int | str | None:
    for handler in ("httpGet", "tcpSocket", "grpc"):
        if handler in probe:
            port = probe[handler].get("port")
            return port if isinstance(port, int | str) else None
    return None


def check_probes(pod: PodTemplate) -> Iterator[str]:
    numbers = {p.get("containerPort") for c in pod.containers() for p in c.get("ports") or []}
    for container in pod.containers():
        own_names = {p.get("name") for p in container.get("ports") or []}
        for kind in PROBES:
            probe = container.get(kind)
            if not probe:
                continue
            port = probe_port(probe)
            if port is None:
                continue  # exec probes have no port
            if isinstance(port, str) and not port.isdigit():
                if port not in own_names:
                    yield (
                        f"{ref(pod.owner)}: container {container.get('name')!r} {kind} uses "
                        f"port name {port!r}, which the container does not declare "
                        f"(it declares {sorted(n for n in own_names if n) or 'none'})"
                    )
            elif int(port) not in numbers:
                yield (
                    f"{ref(pod.owner)}: container {container.get('name')!r} {kind} probes "
                    f"port {port}, which no container of the pod exposes "
                    f"(exposed: {sorted(n for n in numbers if n is not None) or 'none'})"
                )


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def label_selector_matches(selector: Obj, labels: Mapping[str, str]) -> bool:
    """A metav1.LabelSelector (matchLabels + matchExpressions) against a label set."""
    if not selects(selector.get("matchLabels") or {}, labels):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        present = key in labels
        if op == "In" and (not present or labels[key] not in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def check_services(objs: list[Obj], pods: list[PodTemplate]) -> Iterator[str]:
    for svc in (o for o in objs if o.get("kind") == "Service" and group_of(o) == ""):
        selector = svc.get("spec", {}).get("selector") or {}
        if not selector:
            continue  # ExternalName, or endpoints managed by hand
        namespace = svc.get("metadata", {}).get("namespace")
        chosen = [p for p in pods if p.namespace == namespace and selects(selector, p.labels)]
        if not chosen:
            yield f"{ref(svc)}: selector {dict(selector)} selects no pod template"
            continue
        for port in svc.get("spec", {}).get("ports") or []:
            target = port.get("targetPort")
            if isinstance(target, str) and not target.isdigit():
                missing = [p for p in chosen if target not in p.port_names()]
                for pod in missing:
                    yield (
                        f"{ref(svc)}: targetPort {target!r} is not a port name of the pods of "
                        f"{ref(pod.owner)}"
                    )


def check_pdbs_and_hpas(objs: list[Obj], pods: list[PodTemplate]) -> Iterator[str]:
    workloads = {
        (o.get("kind"), o.get("metadata", {}).get("namespace"), o.get("metadata", {}).get("name"))
        for o in objs
        if o.get("kind") in WORKLOADS
    }
    for obj in objs:
        namespace = obj.get("metadata", {}).get("namespace")
        if obj.get("kind") == "PodDisruptionBudget":
            selector = obj.get("spec", {}).get("selector") or {}
            if not any(
                p.namespace == namespace and label_selector_matches(selector, p.labels)
                for p in pods
            ):
                yield f"{ref(obj)}: selector selects no pod template"
        elif obj.get("kind") == "HorizontalPodAutoscaler":
            target = obj.get("spec", {}).get("scaleTargetRef", {})
            if (target.get("kind"), namespace, target.get("name")) not in workloads:
                yield f"{ref(obj)}: scales {target.get('kind')}/{target.get('name')}, not found"


GRPC_TARGET_SUFFIX = "_GRPC_TARGET"
CLUSTER_DOMAIN_SUFFIXES = (".svc.cluster.local", ".svc")


def grpc_targets(objs: list[Obj]) -> Iterator[tuple[Obj, str, str]]:
    """(object, variable, value) for every *_GRPC_TARGET a ConfigMap or a container sets
    (the object is the ConfigMap, or the workload whose container sets it)."""
    for obj in objs:
        if obj.get("kind") == "ConfigMap" and group_of(obj) == "":
            for key, value in (obj.get("data") or {}).items():
                if str(key).endswith(GRPC_TARGET_SUFFIX):
                    yield obj, str(key), str(value)
        pod = pod_template(obj)
        if pod is None:
            continue
        for container in pod.containers():
            for var in container.get("env") or []:
                name = str(var.get("name", ""))
                if name.endswith(GRPC_TARGET_SUFFIX) and "value" in var:
                    yield obj, f"{name} (container {container.get('name')!r})", str(var["value"])


def in_cluster_service(target: str, namespace: str | None) -> tuple[str, str | None, str] | None:
    """(service, namespace, port) that a gRPC target names in this cluster, else None."""
    target = target.removeprefix("dns:///").removeprefix("dns:")
    if not target or "$(" in target or "/" in target:
        return None
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    for suffix in CLUSTER_DOMAIN_SUFFIXES:
        if host.endswith(suffix):
            host = host.removesuffix(suffix)
            break
    else:
        if host.count(".") > 1:
            return None  # a host outside the cluster
    parts = host.split(".")
    if len(parts) > 2 or not all(parts) or host.replace(".", "").isdigit():
        return None
    return parts[0], parts[1] if len(parts) == 2 else namespace, port


def check_grpc_targets(objs: list[Obj]) -> Iterator[str]:
    services = {
        (o.get("metadata", {}).get("namespace"), o.get("metadata", {}).get("name")): o
        for o in objs
        if o.get("kind") == "Service" and group_of(o) == ""
    }
    for obj, variable, value in grpc_targets(objs):
        named = in_cluster_service(value, obj.get("metadata", {}).get("namespace"))
        if named is None:
            continue
        name, namespace, port = named
        where = f" (namespace {namespace})" if namespace else ""
        svc = services.get((namespace, name))
        if svc is None:
            yield (
                f"{ref(obj)}: {variable}={value!r} names Service/{name}{where}, "
                "which does not exist"
            )
            continue
        ports = sorted(p.get("port") for p in svc.get("spec", {}).get("ports") or [])
        if int(port) not in ports:
            yield (
                f"{ref(obj)}: {variable}={value!r}: Service/{name}{where} has no port {port} "
                f"(ports: {ports or 'none'})"
            )
        if svc.get("spec", {}).get("clusterIP") != "None":
            yield (
                f"{ref(obj)}: {variable}={value!r}: Service/{name}{where} is not headless "
                "(clusterIP: None), so each client's one connection sticks to one of its pods"
            )


def callers(obj: Obj, pods: list[PodTemplate]) -> list[PodTemplate]:
    """Pod templates that read a target set in ``obj`` (a ConfigMap or a workload); Jobs are
    left out (migrations call no one)."""
    if obj.get("kind") != "ConfigMap":
        return [p for p in pods if p.owner is obj]
    name = obj.get("metadata", {}).get("name")
    namespace = obj.get("metadata", {}).get("namespace")
    return [
        p
        for p in pods
        if p.namespace == namespace
        and p.owner.get("kind") not in ("Job", "CronJob")
        and any(
            (source.get("configMapRef") or {}).get("name") == name
            for c in p.containers()
            for source in c.get("envFrom") or []
        )
    ]


def target_port(svc: Obj, port: int, pod: PodTemplate) -> tuple[int, str | None] | None:
    """The pod's (containerPort, name) behind the Service's ``port``, if the pod has it."""
    for sp in svc.get("spec", {}).get("ports") or []:
        if sp.get("port") != port:
            continue
        target = sp.get("targetPort", port)
        for c in pod.containers():
            for cp in c.get("ports") or []:
                if cp.get("name") == target or cp.get("containerPort") == target:
                    return int(cp["containerPort"]), cp.get("name")
        if isinstance(target, int):
            return target, None
    return None


def namespace_labels(objs: list[Obj]) -> dict[str | None, dict[str, str]]:
    found: dict[str | None, dict[str, str]] = {}
    for obj in objs:
        if obj.get("kind") == "Namespace" and group_of(obj) == "":
            name = obj.get("metadata", {}).get("name")
            labels = dict(obj.get("metadata", {}).get("labels") or {})
            found[name] = labels | {"kubernetes.io/metadata.name": str(name)}
    return found


def peer_matches(
    peer: Obj, policy_ns: str | None, pod: PodTemplate, ns_labels: dict[str | None, dict[str, str]]
) -> bool:
    if "ipBlock" in peer:
        return False
    ns_selector, pod_selector = peer.get("namespaceSelector"), peer.get("podSelector")
    if ns_selector is None:
        ns_ok = pod.namespace == policy_ns
    else:
        labels = ns_labels.get(pod.namespace, {"kubernetes.io/metadata.name": str(pod.namespace)})
        ns_ok = label_selector_matches(ns_selector, labels)
    return ns_ok and (pod_selector is None or label_selector_matches(pod_selector, pod.labels))


def port_matches(rule_ports: list[Obj] | None, number: int, name: str | None) -> bool:
    if not rule_ports:
        return True
    for rp in rule_ports:
        if rp.get("protocol", "TCP") != "TCP":
            continue
        port = rp.get("port")
        if port is None:
            return True
        if isinstance(port, int) or str(port).isdigit():
            if int(port) <= number <= int(rp.get("endPort") or port):
                return True
        elif name is not None and port == name:
            return True
    return False


def policy_types(policy: Obj) -> list[str]:
    spec = policy.get("spec", {})
    return spec.get("policyTypes") or (["Ingress"] + (["Egress"] if "egress" in spec else []))


def allows(
    policies: list[Obj],
    direction: str,
    subject: PodTemplate,
    peer: PodTemplate,
    port: tuple[int, str | None],
    ns_labels: dict[str | None, dict[str, str]],
) -> bool:
    """Whether the policies let ``subject`` send to (Egress) / receive from (Ingress) ``peer``
    on ``port`` of the receiving pod. Not selected by any policy of that direction: open."""
    rules_key, peers_key = ("egress", "to") if direction == "Egress" else ("ingress", "from")
    selecting = [
        p
        for p in policies
        if p.get("metadata", {}).get("namespace") == subject.namespace
        and direction in policy_types(p)
        and label_selector_matches(p.get("spec", {}).get("podSelector") or {}, subject.labels)
    ]
    if not selecting:
        return True
    for policy in selecting:
        policy_ns = policy.get("metadata", {}).get("namespace")
        for rule in policy.get("spec", {}).get(rules_key) or []:
            peers = rule.get(peers_key)
            if peers and not any(peer_matches(p, policy_ns, peer, ns_labels) for p in peers):
                continue
            if port_matches(rule.get("ports"), *port):
                return True
    return False


def check_grpc_reachable(objs: list[Obj], pods: list[PodTemplate]) -> Iterator[str]:
    policies = [
        o for o in objs if o.get("kind") == "NetworkPolicy" and group_of(o) == "networking.k8s.io"
    ]
    if not policies:
        return
    ns_labels = namespace_labels(objs)
    services = {
        (o.get("metadata", {}).get("namespace"), o.get("metadata", {}).get("name")): o
        for o in objs
        if o.get("kind") == "Service" and group_of(o) == ""
    }
    for obj, variable, value in grpc_targets(objs):
        named = in_cluster_service(value, obj.get("metadata", {}).get("namespace"))
        if named is None:
            continue
        name, namespace, number = named
        svc = services.get((namespace, name))
        if svc is None:
            continue  # check_grpc_targets reports a missing Service
        selector = svc.get("spec", {}).get("selector") or {}
        targets = [p for p in pods if p.namespace == namespace and selects(selector, p.labels)]
        for caller in callers(obj, pods):
            for target in targets:
                port = target_port(svc, int(number), target)
                if port is None:
                    continue  # check_services / check_grpc_targets report the port
                if not allows(policies, "Egress", caller, target, port, ns_labels):
                    blocked = f"no egress rule of the policies selecting {ref(caller.owner)}"
                elif not allows(policies, "Ingress", target, caller, port, ns_labels):
                    blocked = f"no ingress rule of the policies selecting {ref(target.owner)}"
                else:
                    continue
                yield (
                    f"{ref(obj)}: {variable}={value!r}: {ref(caller.owner)} cannot reach "
                    f"{ref(target.owner)} on port {port[0]}: {blocked} allows it"
                )
                break


ADMIN_PORT_NAME = "grpc-admin"


def check_admin_ports(objs: list[Obj], pods: list[PodTemplate]) -> Iterator[str]:
    policies = [
        o for o in objs if o.get("kind") == "NetworkPolicy" and group_of(o) == "networking.k8s.io"
    ]
    services = [o for o in objs if o.get("kind") == "Service" and group_of(o) == ""]
    for pod in pods:
        numbers = [
            int(p["containerPort"])
            for c in pod.containers()
            for p in c.get("ports") or []
            if p.get("name") == ADMIN_PORT_NAME and "containerPort" in p
        ]
        for number in numbers:
            for svc in services:
                selector = svc.get("spec", {}).get("selector") or {}
                if not selector or svc.get("metadata", {}).get("namespace") != pod.namespace:
                    continue
                if not selects(selector, pod.labels):
                    continue
                for sp in svc.get("spec", {}).get("ports") or []:
                    if sp.get("targetPort", sp.get("port")) in (ADMIN_PORT_NAME, number):
                        yield (
                            f"{ref(svc)}: port {sp.get('name') or sp.get('port')!r} exposes "
                            f"{ref(pod.owner)}'s {ADMIN_PORT_NAME} port {number} (ops reach it "
                            "by port-forward only)"
                        )
            if not policies:
                continue
            selecting = [
                p
                for p in policies
                if p.get("metadata", {}).get("namespace") == pod.namespace
                and "Ingress" in policy_types(p)
                and label_selector_matches(p.get("spec", {}).get("podSelector") or {}, pod.labels)
            ]
            if not selecting:
                yield (
                    f"{ref(pod.owner)}: no NetworkPolicy selects its pods for ingress, so its "
                    f"{ADMIN_PORT_NAME} port {number} is open to every pod"
                )
            for policy in selecting:
                for rule in policy.get("spec", {}).get("ingress") or []:
                    if port_matches(rule.get("ports"), number, ADMIN_PORT_NAME):
                        yield (
                            f"{ref(policy)}: an ingress rule admits {ref(pod.owner)}'s "
                            f"{ADMIN_PORT_NAME} port {number} (ops reach it by port-forward only)"
                        )
                        break


GRPC_BACKEND = "nginx.ingress.kubernetes.io/backend-protocol"


def check_grpc_ingresses(objs: list[Obj], pods: list[PodTemplate]) -> Iterator[str]:
    """A gRPC server reached from outside keeps its ops APIs on a port of their own: some
    RPCs (coupons' stock RPCs) take a call without a credential as ops where no admin port
    is set, and an ingress routes by path to the main port only."""
    services = {
        (o.get("metadata", {}).get("namespace"), o.get("metadata", {}).get("name")): o
        for o in objs
        if o.get("kind") == "Service" and group_of(o) == ""
    }
    for ingress in objs:
        if ingress.get("kind") != "Ingress" or group_of(ingress) != "networking.k8s.io":
            continue
        annotations = ingress.get("metadata", {}).get("annotations") or {}
        if str(annotations.get(GRPC_BACKEND, "")).upper() != "GRPC":
            continue
        namespace = ingress.get("metadata", {}).get("namespace")
        names = {
            path.get("backend", {}).get("service", {}).get("name")
            for rule in ingress.get("spec", {}).get("rules") or []
            for path in (rule.get("http") or {}).get("paths") or []
        }
        for name in sorted(n for n in names if n):
            svc = services.get((namespace, name))
            selector = (svc or {}).get("spec", {}).get("selector") or {}
            for pod in pods:
                if pod.namespace != namespace or not selector or not selects(selector, pod.labels):
                    continue
                if ADMIN_PORT_NAME not in pod.port_names():
                    yield (
                        f"{ref(ingress)}: routes gRPC from outside to Service/{name}, whose "
                        f"pods ({ref(pod.owner)}) have no {ADMIN_PORT_NAME} port: their ops "
                        "APIs would answer on the routed one (set ADMIN_GRPC_PORT)"
                    )


def problems(objs: list[Obj]) -> list[str]:
    pods = [p for p in (pod_template(o) for o in objs) if p is not None]
    found = [line for pod in pods for line in check_probes(pod)]
    found += check_services(objs, pods)
    found += check_pdbs_and_hpas(objs, pods)
    found += check_grpc_targets(objs)
    found += check_grpc_reachable(objs, pods)
    found += check_admin_ports(objs, pods)
    found += check_grpc_ingresses(objs, pods)
    return found


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "split":
        objs = load(Path(argv[1]))
        dump([o for o in objs if is_builtin(o)], Path(argv[2]))
        for obj in objs:
            if not is_builtin(obj):
                print(f"{obj.get('apiVersion')} {ref(obj)}")
        return 0
    if len(argv) == 2 and argv[0] == "check":
        found = problems(load(Path(argv[1])))
        for line in found:
            print(f"  {line}")
        return 1 if found else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
