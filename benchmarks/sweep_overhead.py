"""Benchmark: how much of a sweep's wall time reaches training, beside in-process training.

The same N short trials (random latents, no evaluation, checkpoints and stats files as usual) run
twice in one benchmark run:

1. in-process: ``core.gan.train.train`` on each trial's TrainConfig, one after another in this
   process (one torch thread, no Ray, no MLflow). Their summed wall time is the reference.
2. as a sweep: ``gat-sweep run`` in a subprocess, exactly as a user starts it (local Ray, MLflow
   in a sqlite file, one CPU per trial, ``--concurrent`` trials at a time).

Printed: the sweep's wall time over the in-process sum (the sweep overhead; 1.00 = none; with
``--concurrent 1`` trials run one at a time as in the reference), the time from launching
``gat-sweep run`` to the first trial's first iteration, the start-up cost of the CLI alone
(``gat-sweep --help``), and the CPU the driver process (Ray Tune's controller loop and the MLflow
client) used in all and while trials trained, read from /proc.

    python benchmarks/sweep_overhead.py                        # 8 trials of about 30 s, one at a time
    python benchmarks/sweep_overhead.py --trials 4 --concurrent 2
    python benchmarks/sweep_overhead.py --trials 2 --iterations 20 --keep /tmp/overhead   # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from core.config import TrainConfig
from core.gan.train import Reporter, train
from scaling.grid import expand
from scaling.spec import load_spec

BIN = Path(sys.executable).parent
SWEEP = """\
name: overhead
description: sweep-overhead benchmark (random latents, width 64, one architecture)
dataset: random
model:
  widths: [64]
  depths: [4]
  head_dim: 16
  patch: 2
lr:
  base_lrs: {lrs}
  rules: [constant]
  base_width: 64
seeds: [0]
budget:
  iterations: {iterations}
eval:
  every: -1
train:
  latent_size: 8
  batch: 32
  d_proj_dim: 256
  ckpt_every: 100
  log_every: 10
  diag_every: 40
resources:
  cpus: 1
max_concurrent: {concurrent}
max_failures: 0
"""


class StartTime(Reporter):
    """Remembers when training reached its first iteration (``start`` is called right before it)."""

    def start(self, cfg: TrainConfig, info: dict[str, str], state: dict[str, Any] | None) -> None:
        self.first_iteration = time.perf_counter()


def in_process(sweep_file: Path, out: Path) -> list[tuple[str, float, float]]:
    """Train every trial here, one after another: [(name, setup seconds, total seconds)]."""
    torch.set_num_threads(1)
    rows = []
    for trial in expand(load_spec(sweep_file)):
        reporter = StartTime()
        start = time.perf_counter()
        train(trial.config, out / trial.name, reporter, progress=False)
        rows.append((trial.name, reporter.first_iteration - start, time.perf_counter() - start))
    return rows


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a live process from /proc (Linux), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def as_sweep(sweep_file: Path, out: Path) -> tuple[float, float, float | None, float | None]:
    """Run ``gat-sweep run``: (wall seconds, seconds to the first iteration, driver CPU seconds in
    all, driver CPU seconds per wall second while trials trained)."""
    launched = time.time()
    proc = subprocess.Popen([str(BIN / "gat-sweep"), "run", str(sweep_file), "--output-dir", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    samples: list[tuple[float, float]] = []  # (seconds since launch, driver CPU seconds)
    while proc.poll() is None:
        cpu = cpu_seconds(proc.pid)
        if cpu is not None:
            samples.append((time.time() - launched, cpu))
        time.sleep(0.5)
    wall = time.time() - launched
    output = proc.stdout.read() if proc.stdout else ""
    if proc.returncode != 0:
        raise SystemExit(f"gat-sweep run failed (exit {proc.returncode}):\n{output}")
    starts = [json.loads(line)["time"] for path in (out / "trials").glob("*/attempts.jsonl")
              for line in path.read_text().splitlines()]
    first = min(starts) - launched
    if not samples:
        return wall, first, None, None
    training = [(t, cpu) for t, cpu in samples if t >= first]
    rate = (training[-1][1] - training[0][1]) / (training[-1][0] - training[0][0]) if len(training) > 1 else None
    return wall, first, samples[-1][1], rate


def cli_startup() -> float:
    """Seconds for ``gat-sweep --help``: interpreter start and the CLI's imports."""
    start = time.perf_counter()
    subprocess.run([str(BIN / "gat-sweep"), "--help"], capture_output=True, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8, help="number of trials (learning rates)")
    parser.add_argument("--iterations", type=int, default=150, help="iterations per trial (about 30 s here)")
    parser.add_argument("--concurrent", type=int, default=1, help="trials at a time in the sweep")
    parser.add_argument("--keep", type=Path, help="keep the run directories here (default: a temporary dir)")
    args = parser.parse_args()

    root = args.keep or Path(tempfile.mkdtemp(prefix="gat-sweep-overhead-"))
    root.mkdir(parents=True, exist_ok=True)
    lrs = [round(1e-3 * 2**i, 6) for i in range(args.trials)]
    sweep_file = root / "overhead.yaml"
    sweep_file.write_text(SWEEP.format(lrs=lrs, iterations=args.iterations, concurrent=args.concurrent))
    try:
        startup = cli_startup()
        rows = in_process(sweep_file, root / "in_process")
        wall, first, driver_cpu, driver_rate = as_sweep(sweep_file, root / "sweep")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)

    total = sum(r[2] for r in rows)
    print(f"{args.trials} trials x {args.iterations} iterations (width 64, depth 4, batch 32, random latents), "
          f"{args.concurrent} at a time in the sweep; torch {torch.__version__}")
    print(f"{'trial':<28} {'setup s':>8} {'train s':>8}")
    for name, setup, seconds in rows:
        print(f"{name:<28} {setup:>8.2f} {seconds:>8.2f}")
    print(f"in-process sum                  {total:8.1f} s")
    print(f"gat-sweep run wall              {wall:8.1f} s")
    print(f"sweep overhead (wall / sum)     {wall / total:8.3f}")
    print(f"launch -> first iteration       {first:8.1f} s   (in-process: {rows[0][1]:.1f} s; "
          f"CLI start-up alone {startup:.1f} s)")
    if driver_cpu is not None:
        busy = "" if driver_rate is None else f"; {driver_rate:.0%} of one core while trials trained"
        print(f"driver CPU                      {driver_cpu:8.1f} s   ({driver_cpu / wall:.0%} of one core overall{busy})")
    print(json.dumps({"trials": args.trials, "iterations": args.iterations, "concurrent": args.concurrent,
                      "in_process_s": round(total, 2), "sweep_wall_s": round(wall, 2),
                      "overhead": round(wall / total, 4), "first_iteration_s": round(first, 2),
                      "cli_startup_s": round(startup, 2),
                      "driver_cpu_s": None if driver_cpu is None else round(driver_cpu, 2),
                      "driver_cpu_share_training": None if driver_rate is None else round(driver_rate, 3)}))


if __name__ == "__main__":
    main()
