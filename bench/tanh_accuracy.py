"""Exhaustive accuracy of elman's vectorized float32 tanh: every one of the 2^32 float32 inputs,
for each instruction-set level this CPU supports, against tanh in float64 (NumPy), in units of
the float32 ulp of the true value. Usage: python bench/tanh_accuracy.py [--step N] (N > 1 checks
every N-th bit pattern). About 30 s per level on one core at --step 1.
"""

import argparse
import sys
import time

import numpy as np

from elman import _backend


def ulp_errors(x):
    core = _backend.core()
    y = core._testing.tanh(x)
    t = np.tanh(x.astype(np.float64))
    ulp = np.spacing(np.abs(t).astype(np.float32)).astype(np.float64)
    finite = np.isfinite(x)
    err = np.zeros(x.shape)
    err[finite] = np.abs(y[finite].astype(np.float64) - t[finite]) / ulp[finite]
    bad_special = (np.isnan(x) & ~np.isnan(y)).sum() + (np.isinf(x) & (y != np.sign(x))).sum()
    return err, y, int(bad_special)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--step", type=int, default=1, help="check every N-th bit pattern")
    args = parser.parse_args()
    core = _backend.core()
    levels = ["baseline", "avx2", "avx512"]
    best = core.info()["isa_supported"]
    levels = levels[: levels.index(best) + 1]
    chunk = 1 << 24
    worst_overall = 0.0
    for level in levels:
        core.set_isa(level)
        t0 = time.time()
        worst, worst_x, specials = 0.0, None, 0
        for start in range(0, 1 << 32, chunk):
            bits = np.arange(start, start + chunk, args.step, dtype=np.uint64).astype(np.uint32)
            x = bits.view(np.float32)
            err, _, bad = ulp_errors(x)
            specials += bad
            i = int(np.argmax(err))
            if err[i] > worst:
                worst, worst_x = float(err[i]), float(x[i])
        print(f"{level:9s} max error {worst:.3f} ulp at x = {worst_x!r} "
              f"({specials} special-value failures), {time.time() - t0:.0f} s")
        worst_overall = max(worst_overall, worst)
        sys.stdout.flush()
    core.set_isa(best)
    return 0 if worst_overall <= 4.0 else 1


if __name__ == "__main__":
    sys.exit(main())
