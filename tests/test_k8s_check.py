"""`make k8s-check` (scripts/k8s-check.sh): green on the real deploy/k8s, red on a broken copy.

The script installs its tools into .tools once (later runs reuse them), renders every
overlay, validates it offline, runs scripts/k8s_lint.py and checkov. A broken manifest must
fail it with a message naming the problem.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

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
        "    app.kubernetes.io/component: serve\n  ports:",
        "    app.kubernetes.io/component: server\n  ports:",
    )
    result = run_check(k8s)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Service/parking (namespace mall): selector" in output
    assert "selects no pod template" in output
