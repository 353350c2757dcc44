#!/usr/bin/env bash
# Lint the protos with buf (rules in protos/buf.yaml: STANDARD plus comments on every service,
# rpc, message and enum). buf comes from the npm registry through npx, pinned here; set BUF to
# use a buf binary you already have.
#
# usage: scripts/protos-lint.sh
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
buf_version=1.75.0
cd "$root"
if [[ -n "${BUF:-}" ]]; then
    "$BUF" lint protos
elif command -v buf >/dev/null 2>&1; then
    buf lint protos
else
    npx --yes "@bufbuild/buf@$buf_version" lint protos
fi
echo "protos-lint: protos/ are lint-clean"
