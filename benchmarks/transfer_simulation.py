"""How often is the LR-transfer verdict wrong, how often does it decide, and how biased is its shift?
A simulation study on synthetic sweeps with a known truth (analysis.simulation): the designs of
sweeps/width_lr_full.yaml (widths 16-64) and sweeps/width_lr_wide.yaml (16-128), or any sweep file's
(--sweep), rules constant and gat sharing trainings, a few seeds, Gaussian noise on log FD, true slope
b of the best actual LR against width, and the valley shapes GAN sweeps have above the optimum:
symmetric, a steep wall (steepK: K times the curvature), a cliff to the untrained score at R times
the optimum (cliffR), divergence there (divergeR). The optimum's position is jittered across the grid
(by up to half an LR step), or placed where a pilot measured it (--optimum LR@WIDTH).

For each setting and rule it prints the rates of the four verdicts, the false-verdict rate (a
conclusive verdict that contradicts the truth), the power (rate of the correct tolerance verdict) and
the bias (median of estimated - true shift, in log, where a verdict was reached). The last line is the
whole table as JSON. Run it before paying for a sweep: it says how many seeds decide.

    python benchmarks/transfer_simulation.py --jobs 2            # the table in docs/ANALYSIS.md
    python benchmarks/transfer_simulation.py --reps 20 --boot 50 --seeds 4 --shapes symmetric,cliff1.5  # smoke
    python benchmarks/transfer_simulation.py --sweep sweeps/width_lr_wide.yaml --optimum 1.07e-2@16 \\
        --slopes=-0.62 --shapes cliff1.5,steep4 --seeds 8,16   # plan a design
"""

from __future__ import annotations

import argparse
import json
import math
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace

from analysis.simulation import DEFAULT_DESIGN, SHAPES, WIDE_DESIGN, Design, Shape, simulate
from analysis.simulation import truth as true_verdict
from core.config import ConfigError
from core.records import TRANSFER_TOLERANCE
from scaling.spec import load_spec

COLUMNS = ("design", "b", "shape", "seeds", "rule", "shift", "truth", "transfers", "not", "moves", "inconcl.",
           "false", "power", "bias")


def _row(r) -> str:
    truth = "boundary" if r.power is None else ("transfers" if true_verdict(r.true_shift) else "no")
    power = "-" if r.power is None else f"{r.power:.3f}"
    bias = "-" if r.bias is None else f"{r.bias:+.2f}"
    return (f"{r.design:>7} {r.b:>5.2f} {r.shape:>12} {r.n_seeds:>5d} {r.rule:>8} "
            f"{'x' + format(math.exp(r.true_shift), '.2f'):>6} {truth:>9} {r.transfers:>9.3f} {r.not_transfers:>6.3f} "
            f"{r.moves:>6.3f} {r.inconclusive:>8.3f} {r.false_rate:>6.3f} {power:>6} {bias:>6}")


def _cell(args: tuple) -> list:
    b, shape, seeds, design, kw = args
    return list(simulate(b, n_seeds=seeds, shape=shape, design=design, **kw).values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=200, help="synthetic sweeps per setting")
    parser.add_argument("--boot", type=int, default=300, help="bootstrap resamples per sweep")
    parser.add_argument("--sweep", help="simulate this sweep file's design (widths, base LRs, base width) "
                                        "instead of widths 16-64 and 16-128")
    parser.add_argument("--optimum", help="LR@WIDTH: the true best actual LR at one width (default: mid-grid)")
    parser.add_argument("--slopes", default="0,-0.5,-1", help="true slopes b of the best actual LR")
    parser.add_argument("--shapes", default=",".join(s.name.replace(" ", "") for s in SHAPES),
                        help="valley shapes above the optimum: symmetric, steepK, cliffR, divergeR")
    parser.add_argument("--noise", type=float, default=0.24, help="SD of log FD per training")
    parser.add_argument("--seeds", default="4,8", help="seeds per sweep")
    parser.add_argument("--curvature", type=float, default=0.15, help="valley curvature below the optimum")
    parser.add_argument("--growth", type=float, default=1.0, help="curvature factor per width doubling")
    parser.add_argument("--jobs", type=int, default=1, help="settings simulated in parallel (processes)")
    args = parser.parse_args()
    designs = [DEFAULT_DESIGN, WIDE_DESIGN]
    if args.sweep:
        try:
            spec = load_spec(args.sweep)
        except (ConfigError, FileNotFoundError) as err:
            parser.error(str(err))
        if set(spec.lr.rules) != {"constant", "gat"} or not spec.model.widths:
            parser.error(f"--sweep simulates sweeps of rules constant and gat over model.widths; "
                         f"{args.sweep} has rules {spec.lr.rules} and widths {spec.model.widths}")
        designs = [Design(tuple(spec.model.widths), tuple(spec.lr.base_lrs), spec.lr.base_width)]
    if args.optimum:
        lr, _, width = args.optimum.partition("@")
        try:
            designs = [replace(d, anchor=(float(lr), int(width))) for d in designs]
        except ValueError:   # no "@", or not a number on either side
            parser.error(f"--optimum takes LR@WIDTH, e.g. 1.07e-2@16, not {args.optimum!r}")
    try:
        shapes = [Shape.parse(s) for s in args.shapes.split(",")]
    except ValueError as err:
        parser.error(str(err))
    kw = dict(noise_sd=args.noise, n_rep=args.reps, n_boot=args.boot, curvature=args.curvature,
              growth=args.growth, seed=1)
    cells = [(float(b), shape, int(seeds), design, kw) for design in designs for b in args.slopes.split(",")
             for shape in shapes for seeds in args.seeds.split(",")]
    start = time.perf_counter()
    print(f"{args.reps} synthetic sweeps per setting, {args.boot} bootstrap resamples each; noise {args.noise}, "
          f"curvature {args.curvature} below the optimum, growth {args.growth} per width doubling; "
          + "; ".join(d.describe() for d in designs) + f"; tolerance: shift within x{TRANSFER_TOLERANCE:g}")
    print(("{:>7} {:>5} {:>12} {:>5} {:>8} {:>6} {:>9} {:>9} {:>6} {:>6} {:>8} {:>6} {:>6} {:>6}").format(*COLUMNS))
    rows = []
    with ProcessPoolExecutor(args.jobs) if args.jobs > 1 else _Serial() as pool:
        for results in pool.map(_cell, cells):
            for r in results:
                rows.append(asdict(r))
                print(_row(r), flush=True)
    worst = max(r["false_rate"] for r in rows)
    biased = [r for r in rows if r["bias"] is not None and abs(r["bias"]) > 0.1]
    print(f"worst false-verdict rate {worst:.3f} (bound 0.05); {len(biased)} of {len(rows)} rows with |bias| > 0.1; "
          f"{time.perf_counter() - start:.0f} s")
    print(json.dumps({"designs": [asdict(d) for d in designs], "reps": args.reps, "boot": args.boot,
                      "worst_false_rate": worst, "rows": rows}))


class _Serial:
    """``map`` in this process (``--jobs 1``), with the executor's context-manager interface."""

    def __enter__(self) -> _Serial:
        return self

    def __exit__(self, *exc) -> None:
        return None

    @staticmethod
    def map(fn, items):
        return map(fn, items)


if __name__ == "__main__":
    main()
