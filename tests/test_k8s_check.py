"""`make k8s-check` (scripts/k8s-check.sh): green on the real deploy/k8s, red on a broken copy.

The script installs its tools into .tools once (later runs reuse them), renders every
overlay, validates it offline, runs scripts/k8s_lint.py and checkov. A broken manifest must
fail it with a message naming the problem.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "k8s-check.sh"
K8S = REPO / "deploy" / "k8s"

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def run_check(k8s_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), str(k8s_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )


def broken_copy(tmp_path: Path, file: str, old: str, new: str) -> Path:
    """deploy/k8s copied to tmp_path with one edit in one file (which must apply once)."""
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    target = copy / file
    text = target.read_text()
    assert text.count(old) == 1, f"{file}: the edit must match exactly once"
    target.write_text(text.replace(old, new))
    return copy


def test_the_real_manifests_pass_and_custom_resources_are_listed() -> None:
    result = run_check(K8S)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "k8s-check passed" in output
    # CloudNativePG and Prometheus Operator kinds are named as unvalidated, not skipped.
    assert "UNVALIDATED" in output
    assert "postgresql.cnpg.io/v1 Cluster/mall-pg" in output
    assert "monitoring.coreos.com/v1 PrometheusRule/mall-circle" in output


def test_a_probe_on_a_port_no_container_exposes_fails(tmp_path: Path) -> None:
    k8s = broken_copy(
        tmp_path,
        "base/member.yaml",
        "readinessProbe:\n            grpc:\n              port: 50061",
        "readinessProbe:\n            grpc:\n              port: 50099",
    )
    result = run_check(k8s)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert (
        "Deployment/member (namespace mall): container 'serve' readinessProbe probes port "
        "50099, which no container of the pod exposes"
    ) in output
    assert "structural checks" in output


def test_a_service_selecting_no_pods_fails(tmp_path: Path) -> None:
    k8s = broken_copy(
        tmp_path,
        "base/parking.yaml",
        "  type: ClusterIP\n  selector:\n    app.kubernetes.io/name: parking\n"
        "    app.kubernetes.io/component: serve\n",
        "  type: ClusterIP\n  selector:\n    app.kubernetes.io/name: parking\n"
        "    app.kubernetes.io/component: server\n",
    )
    result = run_check(k8s)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Service/parking (namespace mall): selector" in output
    assert "selects no pod template" in output


def test_a_grpc_target_on_a_port_its_service_does_not_expose_fails(tmp_path: Path) -> None:
    k8s = broken_copy(
        tmp_path,
        "base/gateway.yaml",
        "PARKING_GRPC_TARGET: dns:///parking-grpc:50063",
        "PARKING_GRPC_TARGET: dns:///parking-grpc:50099",
    )
    result = run_check(k8s)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert (
        "ConfigMap/gateway (namespace mall): PARKING_GRPC_TARGET='dns:///parking-grpc:50099': "
        "Service/parking-grpc (namespace mall) has no port 50099 (ports: [50063])"
    ) in output
    assert "structural checks" in output


def load_lint() -> ModuleType:
    spec = importlib.util.spec_from_file_location("k8s_lint", REPO / "scripts" / "k8s_lint.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def service(name: str, namespace: str, port: int, *, headless: bool = True) -> dict[str, Any]:
    spec: dict[str, Any] = {"ports": [{"name": "grpc", "port": port}]}
    if headless:
        spec["clusterIP"] = "None"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def test_grpc_targets_must_name_an_existing_service_by_any_in_cluster_spelling() -> None:
    lint = load_lint()
    config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "caller", "namespace": "mall"},
        "data": {
            "POINTS_GRPC_TARGET": "points:50062",  # ok
            "MEMBER_GRPC_TARGET": "member.mall.svc.cluster.local:50061",  # ok
            "COUPONS_GRPC_TARGET": "",  # off: not checked
            "CRM_GRPC_TARGET": "crm.example.com:443",  # outside the cluster: not checked
            "PARKING_GRPC_TARGET": "parkin:50063",  # a typo
            "AUDIT_GRPC_TARGET": "audit.ops:50070",  # another namespace, no such Service
            "LEDGER_GRPC_TARGET": "ledger:50071",  # a ClusterIP Service: pinned to one pod
        },
    }
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "tool", "namespace": "mall"},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "run",
                            "env": [{"name": "POINTS_GRPC_TARGET", "value": "dns:///points:5"}],
                        }
                    ]
                }
            }
        },
    }
    objs = [
        config,
        job,
        service("points", "mall", 50062),
        service("member", "mall", 50061),
        service("parking", "other", 50063),  # same name, another namespace
        service("ledger", "mall", 50071, headless=False),
    ]
    assert lint.problems(objs) == [
        "ConfigMap/caller (namespace mall): PARKING_GRPC_TARGET='parkin:50063' names "
        "Service/parkin (namespace mall), which does not exist",
        "ConfigMap/caller (namespace mall): AUDIT_GRPC_TARGET='audit.ops:50070' names "
        "Service/audit (namespace ops), which does not exist",
        "ConfigMap/caller (namespace mall): LEDGER_GRPC_TARGET='ledger:50071': "
        "Service/ledger (namespace mall) is not headless (clusterIP: None), so each "
        "client's one connection sticks to one of its pods",
        "Job/tool (namespace mall): POINTS_GRPC_TARGET (container 'run')='dns:///points:5': "
        "Service/points (namespace mall) has no port 5 (ports: [50062])",
    ]


def test_a_grpc_target_the_network_policies_block_fails(tmp_path: Path) -> None:
    k8s = broken_copy(
        tmp_path,
        "components/network-policies/backends.yaml",
        "              app.kubernetes.io/name: parking\n            matchExpressions:",
        "              app.kubernetes.io/name: parkin\n            matchExpressions:",
    )
    result = run_check(k8s)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert (
        "ConfigMap/parking (namespace mall): POINTS_GRPC_TARGET='dns:///points-grpc:50062': "
        "Deployment/parking-worker (namespace mall) cannot reach Deployment/points "
        "(namespace mall) on port 50062: no ingress rule of the policies selecting "
        "Deployment/points (namespace mall) allows it"
    ) in output


def workload(
    kind: str, name: str, labels: dict[str, str], container: dict[str, Any]
) -> dict[str, Any]:
    template = {"metadata": {"labels": labels}, "spec": {"containers": [container]}}
    return {
        "apiVersion": "batch/v1" if kind == "Job" else "apps/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": "mall"},
        "spec": {"template": template},
    }


def policy(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": "mall"},
        "spec": spec,
    }


def test_grpc_targets_must_be_open_both_ways_for_every_pod_that_reads_them() -> None:
    lint = load_lint()
    reads_config: dict[str, Any] = {"envFrom": [{"configMapRef": {"name": "caller"}}]}
    objs: list[Any] = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "caller", "namespace": "mall"},
            "data": {"POINTS_GRPC_TARGET": "points:50062"},
        },
        workload("Deployment", "caller", {"app": "caller"}, {"name": "serve"} | reads_config),
        workload("Deployment", "other", {"app": "other"}, {"name": "serve"} | reads_config),
        workload("Job", "caller-migrate", {"app": "migrate"}, {"name": "migrate"} | reads_config),
        workload(
            "Deployment",
            "points",
            {"app": "points"},
            {"name": "serve", "ports": [{"name": "grpc", "containerPort": 50062}]},
        ),
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "points", "namespace": "mall"},
            "spec": {
                "clusterIP": "None",
                "selector": {"app": "points"},
                "ports": [{"port": 50062, "targetPort": "grpc"}],
            },
        },
        policy("deny", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        # caller may send to points by the port's name; "other" has no egress rule.
        policy(
            "caller-out",
            {
                "podSelector": {"matchLabels": {"app": "caller"}},
                "policyTypes": ["Egress"],
                "egress": [{"ports": [{"port": "grpc"}]}],
            },
        ),
        policy(
            "other-out",
            {
                "podSelector": {"matchLabels": {"app": "other"}},
                "policyTypes": ["Egress"],
                "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}],
            },
        ),
        # points lets in the whole namespace on 50060-50069.
        policy(
            "points-in",
            {
                "podSelector": {"matchLabels": {"app": "points"}},
                "ingress": [
                    {
                        "from": [
                            {
                                "namespaceSelector": {
                                    "matchLabels": {"kubernetes.io/metadata.name": "mall"}
                                }
                            }
                        ],
                        "ports": [{"port": 50060, "endPort": 50069}],
                    }
                ],
            },
        ),
    ]
    # The Job reads the ConfigMap but is no caller; ipBlock matches no pod.
    assert lint.problems(objs) == [
        "ConfigMap/caller (namespace mall): POINTS_GRPC_TARGET='points:50062': "
        "Deployment/other (namespace mall) cannot reach Deployment/points (namespace mall) "
        "on port 50062: no egress rule of the policies selecting Deployment/other "
        "(namespace mall) allows it"
    ]
    # Narrow points' ingress to another port range: now caller is refused on the way in.
    objs[-1]["spec"]["ingress"][0]["ports"] = [{"port": 50070, "endPort": 50079}]
    found = lint.problems(objs)
    assert (
        "ConfigMap/caller (namespace mall): POINTS_GRPC_TARGET='points:50062': "
        "Deployment/caller (namespace mall) cannot reach Deployment/points (namespace mall) "
        "on port 50062: no ingress rule of the policies selecting Deployment/points "
        "(namespace mall) allows it"
    ) in found


def test_admin_ports_are_exposed_by_no_service_and_admitted_by_no_policy() -> None:
    lint = load_lint()
    ports = [
        {"name": "grpc", "containerPort": 50062},
        {"name": "grpc-admin", "containerPort": 50072},
    ]
    objs: list[Any] = [
        workload("Deployment", "points", {"app": "points"}, {"name": "serve", "ports": ports}),
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "points", "namespace": "mall"},
            "spec": {
                "selector": {"app": "points"},
                "ports": [{"port": 50062, "targetPort": "grpc"}],
            },
        },
        policy(
            "points-in",
            {
                "podSelector": {"matchLabels": {"app": "points"}},
                "ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": 50062}]}],
            },
        ),
    ]
    assert lint.problems(objs) == []

    # A Service port on it, by name or by number.
    objs[1]["spec"]["ports"].append({"name": "admin", "port": 50072, "targetPort": "grpc-admin"})
    objs[1]["spec"]["ports"].append({"name": "raw", "port": 50072})
    assert lint.problems(objs) == [
        "Service/points (namespace mall): port 'admin' exposes Deployment/points (namespace "
        "mall)'s grpc-admin port 50072 (ops reach it by port-forward only)",
        "Service/points (namespace mall): port 'raw' exposes Deployment/points (namespace "
        "mall)'s grpc-admin port 50072 (ops reach it by port-forward only)",
    ]
    del objs[1]["spec"]["ports"][1:]

    # A rule that admits every port, or a range that takes the admin port in.
    admitted = (
        "NetworkPolicy/points-in (namespace mall): an ingress rule admits Deployment/points "
        "(namespace mall)'s grpc-admin port 50072 (ops reach it by port-forward only)"
    )
    rule = objs[2]["spec"]["ingress"][0]
    for opened in ([], [{"port": 50060, "endPort": 50079}], [{"port": "grpc-admin"}]):
        rule["ports"] = opened
        assert lint.problems(objs) == [admitted], opened

    # No ingress policy selects the pod at all: every port of it is open.
    objs[2]["spec"]["podSelector"] = {"matchLabels": {"app": "other"}}
    assert lint.problems(objs) == [
        "Deployment/points (namespace mall): no NetworkPolicy selects its pods for ingress, "
        "so its grpc-admin port 50072 is open to every pod"
    ]


def test_a_policy_admitting_an_admin_port_fails(tmp_path: Path) -> None:
    k8s = broken_copy(
        tmp_path,
        "components/partner-grpc/network-policy.yaml",
        "        - protocol: TCP\n          port: 50064\n",
        "        - protocol: TCP\n          port: 50064\n"
        "        - protocol: TCP\n          port: 50074\n",
    )
    result = run_check(k8s)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert (
        "NetworkPolicy/partner-grpc-from-ingress (namespace mall): an ingress rule admits "
        "Deployment/coupons (namespace mall)'s grpc-admin port 50074"
    ) in output


def test_a_grpc_ingress_routes_only_to_pods_whose_ops_apis_have_a_port_of_their_own() -> None:
    lint = load_lint()
    ports = [
        {"name": "grpc", "containerPort": 50064},
        {"name": "grpc-admin", "containerPort": 50074},
    ]
    ingress: dict[str, Any] = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {
            "name": "partner-grpc",
            "namespace": "mall",
            "annotations": {"nginx.ingress.kubernetes.io/backend-protocol": "GRPC"},
        },
        "spec": {
            "rules": [
                {
                    "http": {
                        "paths": [
                            {
                                "path": "/mall.coupons.v1.CouponsService/CreateStock",
                                "pathType": "Exact",
                                "backend": {
                                    "service": {"name": "coupons", "port": {"name": "grpc"}}
                                },
                            }
                        ]
                    }
                }
            ]
        },
    }
    objs: list[Any] = [
        workload("Deployment", "coupons", {"app": "coupons"}, {"name": "serve", "ports": ports}),
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "coupons", "namespace": "mall"},
            "spec": {
                "selector": {"app": "coupons"},
                "clusterIP": "None",
                "ports": [{"name": "grpc", "port": 50064, "targetPort": "grpc"}],
            },
        },
        ingress,
    ]
    assert lint.problems(objs) == []

    del ports[1]  # ADMIN_GRPC_PORT unset: ops calls would be taken on the routed port
    assert lint.problems(objs) == [
        "Ingress/partner-grpc (namespace mall): routes gRPC from outside to Service/coupons, "
        "whose pods (Deployment/coupons (namespace mall)) have no grpc-admin port: their ops "
        "APIs would answer on the routed one (set ADMIN_GRPC_PORT)"
    ]
    ingress["metadata"]["annotations"] = {}  # not gRPC: not this check's
    assert lint.problems(objs) == []
