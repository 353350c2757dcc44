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
  exists and exposes that port. Empty values (the feature is off), ``$(VAR)`` references
  and hosts outside the cluster are not checked.

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
    """(object, variable, value) for every *_GRPC_TARGET a ConfigMap or a container sets."""
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


def problems(objs: list[Obj]) -> list[str]:
    pods = [p for p in (pod_template(o) for o in objs) if p is not None]
    found = [line for pod in pods for line in check_probes(pod)]
    found += check_services(objs, pods)
    found += check_pdbs_and_hpas(objs, pods)
    found += check_grpc_targets(objs)
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
