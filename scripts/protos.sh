#!/usr/bin/env bash
# Generate the Python contracts from protos/mall/**/*.proto into OUTDIR/mall:
# messages (*_pb2.py), gRPC stubs (*_pb2_grpc.py, for protos with a service) and their type stubs (*.pyi, mypy-protobuf),
# plus an empty __init__.py in every package and mall/py.typed, so that the proto package is the
# Python import path (`from mall.points.v1 import points_service_pb2`).
#
# OUTDIR/mall is replaced as a whole: it holds generated code only (scripts/protos-check.sh
# fails on anything else). The output depends only on the protos and the tool versions pinned in
# uv.lock (grpcio-tools, mypy-protobuf), so running it twice gives identical files.
#
# usage: scripts/protos.sh OUTDIR        (the committed copy: scripts/protos.sh libs/contracts)
set -euo pipefail
export LC_ALL=C
umask 022

if [[ $# -ne 1 ]]; then
    echo "usage: $0 OUTDIR   (e.g. $0 libs/contracts)" >&2
    exit 2
fi

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$1"
out=$(cd "$1" && pwd)
venv_bin="$root/.venv/bin"

for tool in python protoc-gen-mypy protoc-gen-mypy_grpc; do
    if [[ ! -x "$venv_bin/$tool" ]]; then
        echo "protos.sh: $venv_bin/$tool is missing; run 'uv sync' first" >&2
        exit 1
    fi
done

cd "$root"
mapfile -t protos < <(find protos/mall -name '*.proto' -type f | sort)
if [[ ${#protos[@]} -eq 0 ]]; then
    echo "protos.sh: no .proto files under protos/mall" >&2
    exit 1
fi

# Generate next to the target (same file system), then swap it in.
staging=$(mktemp -d "$out/.mall-gen.XXXXXX")
trap 'rm -rf "$staging"' EXIT

"$venv_bin/python" -m grpc_tools.protoc \
    -I protos \
    --plugin=protoc-gen-mypy="$venv_bin/protoc-gen-mypy" \
    --plugin=protoc-gen-mypy_grpc="$venv_bin/protoc-gen-mypy_grpc" \
    --python_out="$staging" \
    --grpc_python_out="$staging" \
    --mypy_out=quiet:"$staging" \
    --mypy_grpc_out=quiet,generate_concrete_servicer_stubs:"$staging" \
    "${protos[@]}"

# protoc-gen-grpc_python writes a *_pb2_grpc.py even for protos without a service (events,
# resources); drop those empty modules and their stubs so only real services have one.
find "$staging/mall" -name '*_pb2_grpc.py' -type f | sort | while read -r grpc_py; do
    if ! grep -q '^class ' "$grpc_py"; then
        rm -f "$grpc_py" "${grpc_py}i"
    fi
done

# Every generated directory is a regular package; mall/ is typed (PEP 561).
find "$staging/mall" -type d -exec touch {}/__init__.py \;
touch "$staging/mall/py.typed"

rm -rf "$out/mall"
mv "$staging/mall" "$out/mall"
echo "protos.sh: generated $(find "$out/mall" -name '*.py' -o -name '*.pyi' | grep -c _pb2) files from ${#protos[@]} protos into ${out#"$root"/}/mall"
