"""Markdown tables of an `elman bench --json` run against the performance targets (float32,
forward + backward and forward alone). Usage: python bench/report.py RUN.json"""

import json
import sys

# (T, B, I, H): (speed-up over torch.nn.RNN, over the NumPy program, share of peak or None)
TARGETS = {
    (1000, 1, 8, 8): (100, 20, None),
    (100, 1, 32, 64): (30, 8, None),
    (100, 32, 64, 128): (5, 2.5, 70),
    (1000, 16, 64, 128): (5, 2.5, 70),
    (200, 64, 128, 256): (2, 1.5, 85),
    (100, 128, 512, 512): (1.5, 1.3, 90),
    (50, 32, 1024, 1024): (1.6, 1.4, 90),
}


def mark(value, target, unit, digits=2):
    """The value with its unit, and a cross when it misses the target."""
    return f"{value:.{digits}f}{unit}" + ("" if target is None or value >= target else " ✗")


def table(run, mode):
    peak = run["peak_gflops"]
    lines = ["| T, B, I, H | elman ms | NumPy ms | torch ms | vs torch (target) | vs NumPy (target) "
             "| GFLOP/s | % of peak (target) |",
             "|---|---|---|---|---|---|---|---|"]
    for row in run["rows"]:
        if row["dtype"] != "float32":
            continue
        shape = tuple(row["shape"])
        t = {b: v["median_s"] for b, v in row[mode].items()}
        tt, tn, tp = TARGETS.get(shape, (None, None, None))
        gf = row[mode + "_gflops"] / t["cpu"]
        share = 100 * gf / peak
        lines.append(
            f"| {', '.join(map(str, shape))} | {1e3 * t['cpu']:.3f} | {1e3 * t['numpy']:.3f} | "
            f"{1e3 * t['torch']:.3f} | {mark(t['torch'] / t['cpu'], tt, 'x')} ({tt}x) | "
            f"{mark(t['numpy'] / t['cpu'], tn, 'x')} ({tn}x) | {gf:.0f} | "
            + (f"{mark(share, tp, '%', 1)} ({tp}%) |" if tp else f"{share:.1f}% (n/a) |"))
    return "\n".join(lines)


def main():
    run = json.load(open(sys.argv[1]))
    m = run["machine"]
    print(f"Machine: {m.get('processor')}, {m.get('cpus')} CPUs, elman {m.get('elman')} "
          f"(ISA {m.get('elman_isa')}, {m.get('elman_threads')} threads), torch {m.get('torch')} "
          f"({m.get('torch_threads')} threads), NumPy {m.get('numpy')}; peak "
          f"{run['peak_gflops']:.0f} GFLOP/s = 2 x {run['single_thread_gflops']:.0f}.\n")
    print("Forward + backward, float32:\n")
    print(table(run, "forward_backward"))
    print("\nForward, float32:\n")
    print(table(run, "forward"))
    for c in run.get("cell", []):
        t = c["times"]
        print(f"\nRNNCell one step, B, I, H = {', '.join(map(str, c['shape']))}: "
              + ", ".join(f"{k} {1e6 * v:.2f} us" for k, v in t.items()))


if __name__ == "__main__":
    main()
