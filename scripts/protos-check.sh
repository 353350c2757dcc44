#!/usr/bin/env bash
# Fail when the committed contracts (libs/contracts/mall) differ from what the protos generate,
# i.e. someone edited a .proto without running `scripts/protos.sh libs/contracts`, or edited
# generated code by hand.
#
# usage: scripts/protos-check.sh
set -euo pipefail
export LC_ALL=C

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
committed="$root/libs/contracts/mall"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$root/scripts/protos.sh" "$tmp" >/dev/null

if [[ ! -d "$committed" ]]; then
    echo "protos-check: $committed does not exist; run: scripts/protos.sh libs/contracts" >&2
    exit 1
fi

if ! diff -r -x __pycache__ "$tmp/mall" "$committed"; then
    echo >&2
    echo "protos-check: FAILED: libs/contracts/mall is out of date with protos/ (diff above:" \
        "< generated now, > committed)." >&2
    echo "protos-check: regenerate with: scripts/protos.sh libs/contracts" >&2
    exit 1
fi
echo "protos-check: libs/contracts/mall matches protos/"
