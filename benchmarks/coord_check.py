"""Benchmark: wall time of a coordinate check (``gat-sweep coord-check``), width by width.

Runs, in this process, the runs ``gat-sweep coord-check`` would run for a sweep file (default:
sweeps/width_lr.yaml under the rules constant, gat and mup at widths 16-256, with the command's
default steps, seeds and batch; the target is under 60 s on 2 CPU cores) and prints per width the
number of runs, their wall-clock seconds and the CPU seconds this process spent on them side by
side, then the time to write the JSON and draw the figure, the total, and the load average before
and after (other jobs on the cores slow the wall-clock figures; with one torch thread the CPU
seconds are what the check costs on an idle core); last one JSON line with all times.

    python benchmarks/coord_check.py
    python benchmarks/coord_check.py --widths 16,32,64 --steps 2 --seeds 1
    python benchmarks/coord_check.py --sweep sweeps/width_lr_wide.yaml --rules gat,power0.62 --batch 64
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    from scaling.grid import COORD_CHECK_BATCH, COORD_CHECK_SEEDS, COORD_CHECK_STEPS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", type=Path, default=ROOT / "sweeps" / "width_lr.yaml")
    parser.add_argument("--rules", default="constant,gat,mup", help="LR rules, comma-separated")
    parser.add_argument("--widths", default="16,32,64,128,256")
    parser.add_argument("--steps", type=int, default=COORD_CHECK_STEPS)
    parser.add_argument("--seeds", type=int, default=COORD_CHECK_SEEDS)
    parser.add_argument("--batch", type=int, default=COORD_CHECK_BATCH)
    args = parser.parse_args()

    from analysis import coord_check as analysis
    from core.gan.coord_check import run, save
    from scaling.grid import coord_check_trials
    from scaling.spec import load_spec

    spec = load_spec(args.sweep, [f"lr.rules=[{args.rules}]"])
    trials = coord_check_trials(spec, [int(w) for w in args.widths.split(",")], seeds=args.seeds, batch=args.batch)
    load_before = os.getloadavg()
    print(f"load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}; {os.cpu_count()} CPUs; "
          f"{args.sweep.name}, rules {args.rules}, {args.seeds} seed(s) x {args.steps} steps at batch {args.batch}")
    print(f"{'width':>6} {'runs':>5} {'wall s':>8} {'CPU s':>8}")
    cpu_seconds: dict[int, float] = {}
    cpu_mark = [time.process_time()]

    def report(width: int, runs: int, seconds: float) -> None:
        cpu_seconds[width] = time.process_time() - cpu_mark[0]
        cpu_mark[0] += cpu_seconds[width]
        print(f"{width:>6} {runs:>5} {seconds:>8.2f} {cpu_seconds[width]:>8.2f}", flush=True)

    start, cpu_start = time.perf_counter(), time.process_time()
    records, info = run([(t.lr_rule, t.config) for t in trials], args.steps, report=report)
    measured, measured_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    with tempfile.TemporaryDirectory(prefix="gat-sweep-coord-") as tmp:
        path = save(Path(tmp) / "coord_check.json", records, {"sweep": spec.name, "steps": args.steps})
        settings, loaded = analysis.load(path)
        analysis.plot(loaded, settings, Path(tmp) / "coord_check.png")
    total = time.perf_counter() - start
    load_after = os.getloadavg()
    print(f"measurement {measured:.2f} s ({measured_cpu:.2f} s CPU), files and figure {total - measured:.2f} s, "
          f"total {total:.2f} s on {info['device']} ({info['threads']} torch threads)")
    print(f"load average after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    print(json.dumps({"sweep": args.sweep.name, "rules": args.rules.split(","), "steps": args.steps,
                      "seeds": args.seeds, "batch": args.batch, "device": info["device"], "threads": info["threads"],
                      "seconds_per_width": info["seconds_per_width"], "cpu_seconds_per_width": cpu_seconds,
                      "measurement_s": measured, "measurement_cpu_s": measured_cpu, "total_s": total,
                      "load_before": load_before, "load_after": load_after}))


if __name__ == "__main__":
    main()
