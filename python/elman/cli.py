"""Command line: ``elman info`` and ``elman bench`` (also ``python -m elman``)."""

import argparse
import importlib.util
import json
import math
import os
import sys
import tempfile

from . import _backend, _threads


def _install_kind():
    """How this elman was installed: a wheel (with its tags), an editable checkout, or none."""
    import importlib.metadata as md
    try:
        dist = md.distribution("elman")
    except md.PackageNotFoundError:
        return "not installed (imported from a source tree)"
    direct = json.loads(dist.read_text("direct_url.json") or "{}")
    if direct.get("dir_info", {}).get("editable"):
        return f"editable install of {direct.get('url', '?')}"
    tags = [line.split(":", 1)[1].strip() for line in (dist.read_text("WHEEL") or "").splitlines()
            if line.startswith("Tag:")]
    source = direct.get("url", "").rsplit("/", 1)[-1]
    return f"wheel {', '.join(tags) or '?'}" + (f" ({source})" if source else "")


def _blas_threadpools():
    """What threadpoolctl (if installed) sees of the BLAS libraries in this process."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    return [f"{p.get('internal_api')} {p.get('version')} ({p.get('filepath', '?').rsplit('/', 1)[-1]}): "
            f"{p.get('num_threads')} threads" for p in threadpool_info() if p.get("user_api") == "blas"]


def _info(args):
    import numpy as np
    from . import __version__
    print(f"elman {__version__}")
    print(f"installed: {_install_kind()}")
    print(f"backends: {', '.join(_backend.available())}")
    print(f"cuda: {_cuda_line()}")
    if _backend._core is None:
        print(f"compiled kernels: not available ({_backend._core_error})")
        return 0
    info = _backend.core().info()
    print(f"build: {info['build']}")
    print(f"instruction set: {info['isa']} (best this CPU supports: {info['isa_supported']}; "
          f"ELMAN_ISA={os.environ.get('ELMAN_ISA', '') or 'unset'})")
    print(f"threads: {info['threads']} (elman.set_num_threads)")
    print(f"BLAS: {info['blas']}")
    print(f"  {info['blas_config']} (kernels: {info['blas_corename']})")
    pools = _blas_threadpools()
    if pools is not None:
        print("  threadpoolctl sees: " + "; ".join(pools))
    print(f"numpy: {np.__version__}")
    return 0


def _cuda_line():
    """Whether the cuda backend is usable, and why not."""
    usable, why = _backend.cuda_status()
    if _backend._cuda is None:
        return f"not available: {why}"
    cuda = _backend.cuda()
    rt = cuda.runtime_version()
    built = f"built with CUDA runtime {rt // 1000}.{rt % 1000 // 10}"
    if not usable:
        return f"not available: {why} ({built})"
    n = int(why.split()[0])
    names = ", ".join(cuda.device_name(i) for i in range(n))
    return f"available: {names} ({built})"


def _parse_shape(text):
    try:
        parts = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a shape is T,B,I,H (four integers), got {text!r}") from None
    if len(parts) != 4 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"a shape is T,B,I,H (four positive integers), got {text!r}")
    return parts


def _fmt_ms(s):
    return f"{s * 1e3:9.3f}" if s is not None else f"{'-':>9}"


def _table(rows, mode, backends, peak):
    w = {b: max(10, len(b) + 4) for b in backends}  # each column fits "<name> ms" and "vs <name>"
    head = f"{'T':>5} {'B':>4} {'I':>5} {'H':>5} |" + "".join(f"{b + ' ms':>{w[b]}}" for b in backends)
    others = [b for b in backends if b != "cpu"]
    head += " |" + "".join(f"{'vs ' + b:>{w[b]}}" for b in others) + f" |{'GFLOP/s':>9}{'% peak':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        t = {b: r[mode][b]["median_s"] for b in backends if b in r[mode]}
        line = "{:>5} {:>4} {:>5} {:>5} |".format(*r["shape"]) + "".join(
            f"{_fmt_ms(t.get(b)) + ' ':>{w[b]}}" for b in backends)
        line += " |" + "".join(f"{t[b] / t['cpu']:{w[b] - 1}.2f}x" if "cpu" in t and b in t
                               else f"{'-':>{w[b]}}" for b in others)
        if "cpu" in t:
            gf = r[mode + "_gflops"] / t["cpu"]
            line += f" |{gf:9.1f}" + (f"{100 * gf / peak:7.1f}%" if peak else f"{'-':>8}")
        lines.append(line)
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    """Every error is one line on stderr and exit status 2, before any work starts."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _check_writable(parser, option, path):
    """Refuses an output path that cannot be written, by creating (and removing) a temporary
    file next to it: finding out after minutes of benchmarking loses the results."""
    if path is None:
        return
    if os.path.isdir(path):
        parser.error(f"{option} {path!r} is a directory")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, probe = tempfile.mkstemp(prefix=".elman-", dir=folder)
        os.close(fd)
        os.unlink(probe)
        if os.path.exists(path) and not os.access(path, os.W_OK):
            raise PermissionError("the file exists and is read-only")
    except OSError as exc:
        parser.error(f"{option} {path!r} cannot be written ({exc.strerror or exc})")


def _check_plot(parser, path):
    if path is None:
        return
    if importlib.util.find_spec("matplotlib") is None:
        parser.error("--plot needs matplotlib (pip install matplotlib)")
    ext = os.path.splitext(path)[1][1:].lower()
    if ext:
        from matplotlib.backend_bases import FigureCanvasBase
        formats = FigureCanvasBase.get_supported_filetypes()
        if ext not in formats:
            parser.error(f"--plot {path!r}: matplotlib cannot write .{ext} files; it writes "
                         f"{', '.join('.' + f for f in sorted(formats))}")
    _check_writable(parser, "--plot", path)


def _check_shape_memory(parser, shapes):
    """A shape whose arrays (input, outputs, gradients, weights; float64 at most, two copies
    for the reference) cannot fit in this machine's memory is refused before anything runs."""
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not every system reports it
        return
    for T, B, I, H in shapes or ():
        need = 2 * 8 * (T * B * (I + 4 * H) + 3 * H * (I + H))
        if need > physical:
            parser.error(f"--shapes {T},{B},{I},{H} needs about {need / 2**30:.1f} GiB, this "
                         f"machine has {physical / 2**30:.1f} GiB")


def _check_bench_args(parser, args):
    """Every argument of ``elman bench``, checked before any work starts."""
    cap = _threads.max_num_threads()
    if args.threads is not None and not 1 <= args.threads <= cap:
        parser.error(f"--threads must be from 1 to {cap} (4 x the CPUs, at least 4), got "
                     f"{args.threads}")
    if args.rounds is not None and args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    if not (math.isfinite(args.block) and args.block > 0):
        parser.error(f"--block must be a finite number of seconds > 0, got {args.block}")
    if not (math.isfinite(args.gap) and args.gap >= 0):
        parser.error(f"--gap must be a finite number of seconds >= 0, got {args.gap}")
    _check_shape_memory(parser, args.shapes)
    _check_writable(parser, "--json", args.json)
    _check_plot(parser, args.plot)


def _bench(args):
    from . import _bench as B
    backends = B.available_backends()
    if args.backends:
        unknown = set(args.backends) - set(backends)
        if unknown:
            print(f"elman bench: backends not available here: {sorted(unknown)}; available: {backends}",
                  file=sys.stderr)
            return 2
        backends = args.backends
    if "cpu" in backends and args.threads is not None:
        _threads.set_num_threads(args.threads)
    if "torch" in backends:
        import torch
        torch.set_num_threads(args.threads or _backend.core().get_num_threads())
    shapes = args.shapes or B.load_shapes("quick" if args.quick else "default")
    dtypes = args.dtype or (["float32"] if args.quick else ["float32", "float64"])
    rounds = args.rounds or (3 if args.quick else 7)
    info = B.machine_info()
    single, peak = B.blas_peak() if "cpu" in backends else (None, None)
    print("elman bench: one RNN layer (tanh), median of alternating timed blocks")
    for k, v in info.items():
        print(f"  {k}: {v}")
    if peak:
        print(f"  peak: {peak:.1f} GFLOP/s (2 x {single:.1f}, the best single-thread float32 "
              f"matrix-product rate of elman's BLAS in 9 blocks, measured now)")
    if "OPENBLAS_CORETYPE" in info.get("env_OPENBLAS_CORETYPE", "") or "env_OPENBLAS_CORETYPE" in info:
        print("  note: OPENBLAS_CORETYPE is set; it forces an older OpenBLAS kernel and slows every BLAS")
    rows = B.run(shapes, dtypes, backends, rounds=rounds, target_s=args.block, progress=args.progress,
                 gap_s=args.gap)
    for dtype in dtypes:
        sub = [r for r in rows if r["dtype"] == dtype]
        bad = [(r["shape"], b, e) for r in sub for b, (ok, e) in r["check"].items() if not ok]
        status = "all backends agree with the float64 reference" if not bad else f"MISMATCH: {bad}"
        print(f"\ncheck ({dtype}): {status}")
        for mode, title in (("forward", "forward"), ("forward_backward", "forward + backward")):
            print(f"\n{title}, {dtype} (GFLOP/s and % peak for cpu; peak is float32)")
            print(_table(sub, mode, backends, peak if dtype == "float32" else None))
    cell_rows = []
    if not args.no_cell and ("cpu" in backends or "torch" in backends):
        cell_rows = B.run_cell(B.load_shapes("cell"), backends, rounds=rounds, target_s=args.block)
        print("\nstreaming inference: one RNNCell step per call from Python, float32")
        for r in cell_rows:
            t = r["times"]
            line = "  B,I,H={}: ".format(",".join(map(str, r["shape"])))
            line += ", ".join(f"{k} {v * 1e6:.2f} us" for k, v in t.items())
            if "cpu" in t and "torch" in t:
                line += f"  (cpu is {t['torch'] / t['cpu']:.1f}x faster)"
            print(line)
    regime_rows = []
    if not args.no_regimes and "cpu" in backends:
        from . import _bench_regimes as R
        print("\nregimes: where training scripts spend their time (torch: the faster of 1 and 2 "
              "threads)")
        regime_rows = R.run_regimes(args.quick, rounds, args.block, args.gap)
        for r in regime_rows:
            print(R.format_row(r))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "peak_gflops": peak, "single_thread_gflops": single,
                       "rows": rows, "cell": cell_rows, "regimes": regime_rows}, f, indent=1,
                      default=str)
        print(f"\nraw numbers written to {args.json}")
    if args.plot:
        _plot(rows, backends, args.plot)
        print(f"plot written to {args.plot}")
    failed = any(not ok for r in rows for ok, _ in r["check"].values())
    return 1 if failed else 0


def _plot(rows, backends, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("elman bench --plot needs matplotlib (pip install matplotlib)") from None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, mode in zip(axes, ("forward", "forward_backward")):
        for b in (b for b in backends if b != "cpu"):
            for dtype, marker in (("float32", "o"), ("float64", "s")):
                pts = sorted((r[mode + "_gflops"], r[mode][b]["median_s"] / r[mode]["cpu"]["median_s"])
                             for r in rows if r["dtype"] == dtype and b in r[mode] and "cpu" in r[mode])
                if pts:
                    ax.plot(*zip(*pts), marker=marker, label=f"vs {b} ({dtype})")
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("work per call (GFLOP)")
        ax.set_title(mode.replace("_", " + "))
        ax.legend(fontsize=8)
    axes[0].set_ylabel("speed-up of elman cpu")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    from . import __version__
    parser = _Parser(prog="elman", description="elman: fast Elman RNNs for NumPy")
    parser.add_argument("--version", action="version", version=f"elman {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="version, backends, kernels, BLAS and threads")
    pb = sub.add_parser("bench", help="time elman against NumPy and torch.nn.RNN")
    pb.add_argument("--quick", action="store_true", help="a small shape set, float32 only (< 1 minute)")
    pb.add_argument("--shapes", nargs="+", type=_parse_shape, metavar="T,B,I,H", help="shapes to time")
    pb.add_argument("--dtype", nargs="+", choices=["float32", "float64"])
    pb.add_argument("--backends", nargs="+", help="subset of: cpu numpy torch")
    pb.add_argument("--threads", type=int, help="threads for elman and torch (default: elman's default)")
    pb.add_argument("--rounds", type=int, help="alternating timed blocks per backend (median taken)")
    pb.add_argument("--block", type=float, default=0.05, help="seconds per timed block (default 0.05)")
    pb.add_argument("--gap", type=float, default=0.15,
                    help="idle seconds before each timed block and its one untimed call, so that "
                         "the previous library's spinning threads have stopped (default 0.15)")
    pb.add_argument("--json", metavar="FILE", help="write the raw numbers as JSON")
    pb.add_argument("--plot", metavar="FILE.png", help="plot speed-up against work (needs matplotlib)")
    pb.add_argument("--no-cell", action="store_true", help="skip the RNNCell streaming measurement")
    pb.add_argument("--no-regimes", action="store_true",
                    help="skip the regimes section (vanishing gradients, short sequences, cell "
                         "loops, stacked and bidirectional layers at B = 1, each against torch)")
    pb.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="progress bar on stderr (default: when stderr is a terminal)")
    args = parser.parse_args(argv)
    if args.command == "info":
        return _info(args)
    _check_bench_args(pb, args)
    return _bench(args)


if __name__ == "__main__":
    sys.exit(main())
