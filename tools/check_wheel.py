"""Inspects a built elman wheel: platform tag, the shared libraries it bundles, its size, and
that no code outside the AVX2 / AVX-512 kernel namespaces uses AVX registers (so that the
wheel runs on any x86-64; the kernels for higher levels are only reached through runtime
dispatch). Usage: python tools/check_wheel.py WHEEL [--sdist SDIST] [--max-mb N]. Needs objdump (binutils).
With --sdist, also checks that the source distribution holds what a build needs and no build
products, wheels or repository tooling.
"""

import argparse
import pathlib
import re
import subprocess
import sys
import tempfile
import zipfile

EXPECTED_LIBS = {"libscipy_openblas.so"}
ISA_NAMESPACES = ("elman::cpu::avx2::", "elman::cpu::avx512::")


def check_isa(so_path):
    """Functions outside the per-ISA namespaces that use AVX: VEX/EVEX instructions (mnemonics
    starting with v) or ymm / zmm / mask registers."""
    dump = subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn", str(so_path)],
                          capture_output=True, text=True, check=True).stdout
    offenders, current, counts = set(), None, {"isa": 0, "other": 0}
    header = re.compile(r"^[0-9a-f]+ <(.*)>:$")
    insn = re.compile(r"^\s+[0-9a-f]+:\s+(\S+)\s*(.*)$")
    avx_reg = re.compile(r"%(ymm|zmm)\d+|%k[0-7]\b")
    in_isa = False
    for line in dump.splitlines():
        m = header.match(line)
        if m:
            current = m.group(1)
            in_isa = any(n in current for n in ISA_NAMESPACES)
            counts["isa" if in_isa else "other"] += 1
            continue
        if current is None or in_isa:
            continue
        m = insn.match(line)
        if m and ((m.group(1).startswith("v") and m.group(1) not in ("verr", "verw"))
                  or avx_reg.search(m.group(2))):
            offenders.add(current)
    return sorted(offenders), counts


SDIST_NEEDS = ("CMakeLists.txt", "pyproject.toml", "README.md", "csrc/rnn.h",
               "csrc/bindings/core.cpp", "python/elman/__init__.py", "bench/shapes.json")
SDIST_FORBIDDEN = re.compile(r"(^|/)(build|dist|wheelhouse|\.ci|examples|tools|__pycache__)/|\.(so|whl|o|a)$")


def check_sdist(path):
    import tarfile
    with tarfile.open(path) as tar:
        names = [n.split("/", 1)[1] for n in tar.getnames() if "/" in n]
    problems = [f"sdist lacks {n}" for n in SDIST_NEEDS if n not in names]
    problems += [f"sdist holds {n}" for n in names if SDIST_FORBIDDEN.search(n)]
    print(f"sdist: {pathlib.Path(path).name}, {len(names)} files")
    return problems


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("wheel")
    parser.add_argument("--max-mb", type=float, default=16.0)
    parser.add_argument("--sdist")
    args = parser.parse_args()
    wheel = pathlib.Path(args.wheel)
    problems = check_sdist(args.sdist) if args.sdist else []
    if "manylinux" not in wheel.name:
        problems.append(f"not a manylinux wheel: {wheel.name}")
    size_mb = wheel.stat().st_size / 2**20
    print(f"wheel: {wheel.name}, {size_mb:.1f} MB")
    if size_mb > args.max_mb:
        problems.append(f"wheel is {size_mb:.1f} MB, above the {args.max_mb} MB limit")
    with zipfile.ZipFile(wheel) as z, tempfile.TemporaryDirectory() as tmp:
        names = z.namelist()
        libs = {pathlib.Path(n).name for n in names if ".so" in pathlib.Path(n).name}
        modules = {n for n in libs if n.startswith("_core.") or n.startswith("_cuda")}
        bundled = libs - modules
        print(f"extension modules: {sorted(modules)}; bundled libraries: {sorted(bundled)}")
        if bundled != EXPECTED_LIBS:
            problems.append(f"bundled libraries {sorted(bundled)} != {sorted(EXPECTED_LIBS)}")
        if not any(n.startswith("_core.") for n in modules):
            problems.append("no elman._core extension module in the wheel")
        for n in names:
            if pathlib.Path(n).name.startswith("_core."):
                z.extract(n, tmp)
                offenders, counts = check_isa(pathlib.Path(tmp) / n)
                print(f"{n}: {counts['isa']} functions in the AVX2/AVX-512 kernel namespaces, "
                      f"{counts['other']} elsewhere; elsewhere using AVX registers: {len(offenders)}")
                for f in offenders[:20]:
                    problems.append(f"AVX registers outside the ISA kernels: {f}")
    for p in problems:
        print("PROBLEM:", p)
    print("wheel check:", "FAILED" if problems else "passed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
