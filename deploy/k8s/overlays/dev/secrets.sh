#!/usr/bin/env bash
# Dev only: create the Secrets the dev overlay references, with random passwords. Nothing
# secret is committed; this makes them on your laptop cluster. Idempotent: an existing
# Secret is kept (the in-cluster PostgreSQL set its passwords at first start).
#
#   deploy/k8s/overlays/dev/secrets.sh            # namespace "mall", current kube context
#   NAMESPACE=mall-2 deploy/k8s/overlays/dev/secrets.sh
set -euo pipefail
NAMESPACE="${NAMESPACE:-mall}"
KUBECTL="${KUBECTL:-kubectl}"

random_password() { od -An -N24 -tx1 /dev/urandom | tr -d ' \n'; }

"$KUBECTL" get namespace "$NAMESPACE" >/dev/null 2>&1 || "$KUBECTL" create namespace "$NAMESPACE"

ensure_basic_auth() {  # NAME USERNAME
    if "$KUBECTL" -n "$NAMESPACE" get secret "$1" >/dev/null 2>&1; then
        echo "secret/$1 kept"
        return
    fi
    "$KUBECTL" -n "$NAMESPACE" create secret generic "$1" --type=kubernetes.io/basic-auth \
        --from-literal=username="$2" --from-literal=password="$(random_password)"
}

ensure_basic_auth postgres-superuser postgres
for svc in member points parking coupons; do
    ensure_basic_auth "$svc-db" "$svc"
done
# NATS users (deploy/nats/permissions.yaml): the dev nats-server and the services share them.
for user in gateway member points parking coupons ops; do
    ensure_basic_auth "$user-nats" "$user"
done
