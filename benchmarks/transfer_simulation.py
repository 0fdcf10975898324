"""How often is the LR-transfer verdict wrong, and how often does it decide? A simulation study on
synthetic sweeps with a known truth (analysis.simulation): the deciding sweep's design (widths
16/32/64, 5 base LRs a factor 2 apart, rules constant and gat sharing trainings) or the design of
any sweep file (--sweep: its widths, base LRs and base width), a few seeds, Gaussian noise on log
FD, true slope b of log best LR against log width, symmetric or asymmetric valleys (curvature
below the optimum : above it, e.g. "0.1:0.4"), the optimum mid-grid or at a measured LR
(--optimum LR@WIDTH). Run it before paying for a sweep: it says how many seeds decide.

For each setting it prints the rates of the four verdicts, the false-verdict rate (a
conclusive verdict that contradicts the truth: on the tolerance boundary, b = -0.5 over 16-64,
"transfers"; "moves" in the wrong direction or when the truth is 0) and the power (rate of the
correct tolerance verdict). The last line is the whole table as JSON.

    python benchmarks/transfer_simulation.py                     # the table in docs/ANALYSIS.md
    python benchmarks/transfer_simulation.py --reps 20 --boot 50 --seeds 3 --noise 0.2   # smoke
    python benchmarks/transfer_simulation.py --sweep sweeps/width_lr_wide.yaml --optimum 1.07e-2@16 \
        --slopes -0.5 --curvature 0.15 --growth 1,1.4 --noise 0.21 --seeds 8,16   # plan a design
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, replace

from analysis.simulation import DEFAULT_DESIGN, Design, simulate, truth
from core.config import ConfigError
from scaling.spec import load_spec

TRUTH_WORD = {True: "transfers", False: "no", None: "boundary"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=400, help="synthetic sweeps per setting")
    parser.add_argument("--boot", type=int, default=300, help="bootstrap resamples per sweep")
    parser.add_argument("--sweep", help="simulate this sweep file's design (widths, base LRs, base width)")
    parser.add_argument("--optimum", help="LR@WIDTH: the true best actual LR at one width (default: mid-grid)")
    parser.add_argument("--slopes", help="true slopes b (default: 0, -0.25, the tolerance boundary, -0.75, -1)")
    parser.add_argument("--noise", default="0.2", help="SDs of log FD per training")
    parser.add_argument("--seeds", default="4,8", help="seeds per sweep")
    parser.add_argument("--curvature", default="0.5,0.15,0.1:0.4",
                        help="valley curvatures (log FD per log-LR^2); 'below:above' for an asymmetric one")
    parser.add_argument("--growth", default="1,2", help="curvature factors per width doubling")
    args = parser.parse_args()
    floats = lambda s: [float(v) for v in s.split(",")]  # noqa: E731
    design = DEFAULT_DESIGN
    if args.sweep:
        try:
            spec = load_spec(args.sweep)
        except (ConfigError, FileNotFoundError) as err:
            parser.error(str(err))
        if set(spec.lr.rules) != {"constant", "gat"} or not spec.model.widths:
            parser.error(f"--sweep simulates sweeps of rules constant and gat over model.widths; "
                         f"{args.sweep} has rules {spec.lr.rules} and widths {spec.model.widths}")
        design = Design(tuple(spec.model.widths), tuple(spec.lr.base_lrs), spec.lr.base_width)
    if args.optimum:
        lr, _, width = args.optimum.partition("@")
        try:
            design = replace(design, anchor=(float(lr), int(width)))
        except ValueError:   # no "@", or not a number on either side
            parser.error(f"--optimum takes LR@WIDTH, e.g. 1.07e-2@16, not {args.optimum!r}")
    slopes = floats(args.slopes) if args.slopes else [0.0, -0.25, design.boundary(), -0.75, -1.0]
    rows = []
    start = time.perf_counter()
    span = f"{min(design.widths)}-{max(design.widths)}"
    print(f"{args.reps} synthetic sweeps per setting, {args.boot} bootstrap resamples each; "
          f"{design.describe()}; tolerance: shift within x2 over {span}")
    header = ["b", "shift", "truth", "c", "growth", "noise", "seeds", "transfers", "not", "moves", "inconcl.",
              "false", "power"]
    print(("{:>6} {:>6} {:>9} {:>7} {:>6} {:>5} {:>5} {:>9} {:>6} {:>6} {:>8} {:>6} {:>6}").format(*header))
    for b in slopes:
        for curv in args.curvature.split(","):
            lo, _, hi = curv.partition(":")
            c, c_hi = float(lo), float(hi or lo)
            for growth in floats(args.growth):
                for noise in floats(args.noise):
                    for seeds in (int(v) for v in args.seeds.split(",")):
                        r = simulate(b, noise, seeds, n_rep=args.reps, n_boot=args.boot, curvature=c,
                                     curvature_hi=c_hi, growth=growth, design=design, seed=1)
                        rows.append(asdict(r))
                        power = "-" if r.power is None else f"{r.power:.3f}"
                        print(("{:>6.2f} {:>6} {:>9} {:>7} {:>6.2g} {:>5.2f} {:>5d} {:>9.3f} {:>6.3f} {:>6.3f} "
                               "{:>8.3f} {:>6.3f} {:>6}").format(
                                   b, f"x{math.exp(abs(b) * design.log_range):.2f}", TRUTH_WORD[truth(b, design)], curv,
                                   growth, noise, seeds, r.transfers, r.not_transfers, r.moves, r.inconclusive,
                                   r.false_rate, power))
    worst = max(r["false_rate"] for r in rows)
    print(f"worst false-verdict rate {worst:.3f} (bound 0.05); {time.perf_counter() - start:.0f} s")
    print(json.dumps({"design": asdict(design), "reps": args.reps, "boot": args.boot, "worst_false_rate": worst,
                      "rows": rows}))


if __name__ == "__main__":
    main()
