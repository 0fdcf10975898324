"""Benchmark: wall time of ``gat-sweep run FILE --dry-run`` (target: at most 5 s per sweep file).

Each sweep file's dry run is launched in a subprocess as a user starts it (the CLI of the checkout
this script is in, output discarded), ``--reps`` times in a row: the first with an empty cache
directory (``GAT_SWEEP_CACHE`` = a new temporary directory, so FLOP and parameter counts are
measured, as on a fresh machine or after a change to ``core/``), the others with the cache the
first one filled (counts read from disk; ``core.gan.flops``). Printed per file: the cold time and the
minimum and median of the warm times; the load average before and after (other jobs on the cores
slow every figure); and last one JSON line with all times.

    python benchmarks/dry_run.py                                  # width_lr and imagenet256_gat, 5 reps
    python benchmarks/dry_run.py --reps 3 sweeps/smoke.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = "from scaling.cli import app; app()"
"""The CLI as the console script runs it; ``-c`` puts the current directory (ROOT) first on sys.path."""


def time_dry_run(sweep: Path, cache: Path) -> float:
    """Seconds from launch to exit of one dry run of ``sweep`` with cache directory ``cache``.

    Raises RuntimeError with the command's stderr if it fails.
    """
    env = {**os.environ, "GAT_SWEEP_CACHE": str(cache)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CLI, "run", str(sweep), "--dry-run"], cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"dry run of {sweep} failed:\n{proc.stderr}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweeps", nargs="*", type=Path,
                        default=[ROOT / "sweeps" / "width_lr.yaml", ROOT / "sweeps" / "imagenet256_gat.yaml"])
    parser.add_argument("--reps", type=int, default=5, help="Dry runs per file: 1 cold, the rest warm (>= 2).")
    args = parser.parse_args()
    if args.reps < 2:
        parser.error("--reps must be at least 2 (one cold, one warm)")
    load_before = os.getloadavg()
    print(f"load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}; "
          f"{os.cpu_count()} CPUs; {args.reps} dry runs per file (first with an empty cache)")
    print(f"{'sweep file':<28} {'cold s':>7} {'warm min s':>11} {'warm median s':>14}")
    figures = {}
    for sweep in args.sweeps:
        with tempfile.TemporaryDirectory(prefix="gat-sweep-dry-run-") as cache:
            times = [time_dry_run(sweep, Path(cache)) for _ in range(args.reps)]
        cold, warm = times[0], times[1:]
        print(f"{sweep.name:<28} {cold:7.2f} {min(warm):11.2f} {statistics.median(warm):14.2f}")
        figures[sweep.name] = {"cold_s": cold, "warm_s": warm}
    load_after = os.getloadavg()
    print(f"load average after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    print(json.dumps({"reps": args.reps, "load_before": load_before, "load_after": load_after, "files": figures}))


if __name__ == "__main__":
    main()
