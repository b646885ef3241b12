"""Inspects built elman wheels: the platform tag auditwheel reports and the Python tag, the
shared libraries each bundles and what its extension needs at run time, the license, its size,
and that no code outside the AVX2 / AVX-512 kernel namespaces uses AVX registers (so that the
wheel runs on any x86-64; the kernels for higher levels are only reached through runtime
dispatch). With --sdist, also checks that the source distribution holds what a build needs and
no build products, wheels or repository tooling.
Usage: python tools/check_wheel.py WHEEL... [--plat TAG] [--pythons 3.9 ...] [--sdist SDIST]
[--max-mb N]. Needs objdump (binutils) and auditwheel (run as `python -m auditwheel`).
"""

import argparse
import pathlib
import re
import subprocess
import sys
import tempfile
import zipfile

# Next to elman/_core: OpenBLAS and, from the manylinux2014 builds of scipy-openblas32, the
# Fortran runtime it loads (names carry the hash auditwheel gave them there).
REQUIRED_LIBS = {"libscipy_openblas.so"}
ALLOWED_LIBS = re.compile(
    r"libscipy_openblas\.so|lib(gfortran|quadmath)-[0-9a-f]{8}\.so\.\d+(\.\d+)*")
# What the extension module may load at run time: glibc's libraries and the bundled OpenBLAS;
# the C++ runtime is linked in statically, so no libstdc++ / libgcc_s.
SYSTEM_NEEDED = {"libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2", "librt.so.1",
                 "ld-linux-x86-64.so.2"}
ISA_NAMESPACES = ("elman::cpu::avx2::", "elman::cpu::avx512::")
# The PEP 600 name auditwheel reports for a legacy alias given with --plat.
LEGACY_PLATS = {"manylinux2014_x86_64": "manylinux_2_17_x86_64",
                "manylinux2010_x86_64": "manylinux_2_12_x86_64"}


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


def needed_libs(so_path):
    dump = subprocess.run(["objdump", "-p", str(so_path)], capture_output=True, text=True,
                          check=True).stdout
    return re.findall(r"^\s*NEEDED\s+(\S+)$", dump, re.M)


SDIST_NEEDS = ("CMakeLists.txt", "pyproject.toml", "README.md", "LICENSE", "csrc/rnn.h",
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


def check_platform(wheel, plat):
    """auditwheel's verdict on the wheel must be exactly the expected tag, and the file name
    must carry it."""
    show = subprocess.run([sys.executable, "-m", "auditwheel", "show", str(wheel)],
                          capture_output=True, text=True)
    text = " ".join(show.stdout.split())
    m = re.search(r'consistent with the following platform tag: "([^"]+)"', text)
    reported = m.group(1) if m else None
    print(f"  auditwheel show: {m.group(0) if m else (show.stdout + show.stderr).strip()}")
    expected = LEGACY_PLATS.get(plat, plat)
    problems = [] if reported == expected else [
        f"{wheel.name}: auditwheel reports platform tag {reported!r}, expected {expected!r}"]
    platform_tags = wheel.name[:-len(".whl")].split("-")[-1].split(".")
    if expected not in platform_tags:
        problems.append(f"{wheel.name}: file name lacks the platform tag {expected}")
    return problems


def check_contents(wheel, z, tmp, python_tag):
    """Bundled libraries, the extension's Python tag and run-time needs, AVX outside the
    kernels, the license."""
    problems = []
    names = z.namelist()
    libs = {pathlib.Path(n).name for n in names if ".so" in pathlib.Path(n).name}
    modules = {n for n in libs if n.startswith("_core.") or n.startswith("_cuda")}
    bundled = libs - modules
    print(f"  extension modules: {sorted(modules)}; bundled libraries: {sorted(bundled)}")
    problems += [f"bundled library {n} is not one elman ships" for n in sorted(bundled)
                 if not ALLOWED_LIBS.fullmatch(n)]
    problems += [f"no bundled {n}" for n in sorted(REQUIRED_LIBS - bundled)]
    problems += [f"a library outside elman/: {n}" for n in names
                 if ".so" in n and not n.startswith("elman/")]
    # cp311 -> the extension suffix CPython 3.11 imports: _core.cpython-311-x86_64-linux-gnu.so
    suffix = f".cpython-{python_tag[2:]}-x86_64-linux-gnu.so"
    cores = [n for n in names if pathlib.Path(n).name.startswith("_core.")]
    if [pathlib.Path(n).name for n in cores] != ["_core" + suffix]:
        problems.append(f"extension modules {cores} != [elman/_core{suffix}] for {python_tag}")
    for n in cores:
        z.extract(n, tmp)
        so = pathlib.Path(tmp) / n
        needed = needed_libs(so)
        print(f"  {n} needs {needed}")
        problems += [f"{n} needs {lib} (neither glibc's nor bundled)" for lib in needed
                     if lib not in SYSTEM_NEEDED and lib not in bundled]
        offenders, counts = check_isa(so)
        print(f"  {n}: {counts['isa']} functions in the AVX2/AVX-512 kernel namespaces, "
              f"{counts['other']} elsewhere; elsewhere using AVX registers: {len(offenders)}")
        problems += [f"AVX registers outside the ISA kernels: {f}" for f in offenders[:20]]
    if not any(re.fullmatch(r"elman-[^/]+\.dist-info/licenses/LICENSE", n) for n in names):
        problems.append("no LICENSE in the wheel's .dist-info/licenses/")
    return problems


def check_wheel(wheel, plat, max_mb):
    """Every check of one wheel; returns (its Python tag, the problems found)."""
    parts = wheel.name[:-len(".whl")].split("-")
    python_tag, abi_tag = (parts[-3], parts[-2]) if len(parts) >= 5 else ("?", "?")
    size_mb = wheel.stat().st_size / 2**20
    print(f"wheel: {wheel.name}, {size_mb:.1f} MB")
    problems = []
    if not re.fullmatch(r"cp3\d+", python_tag) or abi_tag != python_tag:
        problems.append(f"{wheel.name}: Python tag {python_tag!r} / ABI tag {abi_tag!r}, "
                        "expected cp3XY-cp3XY")
    if size_mb > max_mb:
        problems.append(f"wheel is {size_mb:.1f} MB, above the {max_mb} MB limit")
    problems += check_platform(wheel, plat)
    with zipfile.ZipFile(wheel) as z, tempfile.TemporaryDirectory() as tmp:
        problems += check_contents(wheel, z, tmp, python_tag)
    return python_tag, problems


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wheels", nargs="+", type=pathlib.Path)
    parser.add_argument("--plat", default="manylinux2014_x86_64",
                        help="the platform tag auditwheel must report (default: %(default)s)")
    parser.add_argument("--pythons", nargs="*", default=[],
                        help="CPython versions (3.9 ...) that must each have exactly one wheel")
    parser.add_argument("--max-mb", type=float, default=16.0)
    parser.add_argument("--sdist")
    args = parser.parse_args()
    problems = check_sdist(args.sdist) if args.sdist else []
    tags = []
    for wheel in args.wheels:
        tag, found = check_wheel(wheel, args.plat, args.max_mb)
        tags.append(tag)
        problems += found
    for version in args.pythons:
        tag = "cp" + version.replace(".", "")
        if tags.count(tag) != 1:
            problems.append(f"{tags.count(tag)} wheels for CPython {version} ({tag}), expected 1")
    for p in problems:
        print("PROBLEM:", p)
    print(f"wheel check ({len(args.wheels)} wheels):", "FAILED" if problems else "passed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
