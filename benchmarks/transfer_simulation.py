"""How often is the LR-transfer verdict wrong? A simulation study on synthetic sweeps with a
known truth (analysis.simulation): the deciding sweep's design (widths 16/32/64, 5 base LRs a
factor 2 apart, rules constant and gat sharing trainings), a few seeds, Gaussian noise on log FD,
true slope b of log best LR against log width, symmetric or asymmetric valleys (curvature below
the optimum : above it, e.g. "0.1:0.4").

For each setting it prints the rates of the four verdicts, the false-verdict rate (a
conclusive verdict that contradicts the truth: on the tolerance boundary b = -0.5 "transfers";
"moves" in the wrong direction or when the truth is 0) and the power (rate of the correct
tolerance verdict). The last line is the whole table as JSON.

    python benchmarks/transfer_simulation.py                     # the table in docs/ANALYSIS.md
    python benchmarks/transfer_simulation.py --reps 20 --boot 50 --seeds 3 --noise 0.2   # smoke
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict

from analysis.simulation import B_BOUNDARY, simulate, truth

TRUTH_WORD = {True: "transfers", False: "no", None: "boundary"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=400, help="synthetic sweeps per setting")
    parser.add_argument("--boot", type=int, default=300, help="bootstrap resamples per sweep")
    parser.add_argument("--slopes", default=f"0,-0.25,{B_BOUNDARY},-0.75,-1", help="true slopes b")
    parser.add_argument("--noise", default="0.2", help="SDs of log FD per training")
    parser.add_argument("--seeds", default="4,8", help="seeds per sweep")
    parser.add_argument("--curvature", default="0.5,0.15,0.1:0.4",
                        help="valley curvatures (log FD per log-LR^2); 'below:above' for an asymmetric one")
    parser.add_argument("--growth", default="1,2", help="curvature factors per width doubling")
    args = parser.parse_args()
    floats = lambda s: [float(v) for v in s.split(",")]  # noqa: E731
    rows = []
    start = time.perf_counter()
    print(f"{args.reps} synthetic sweeps per setting, {args.boot} bootstrap resamples each; "
          "widths 16/32/64, 5 LRs x2 apart, gat + constant; tolerance: shift within x2 over 16-64")
    header = ["b", "shift", "truth", "c", "growth", "noise", "seeds", "transfers", "not", "moves", "inconcl.",
              "false", "power"]
    print(("{:>6} {:>6} {:>9} {:>7} {:>6} {:>5} {:>5} {:>9} {:>6} {:>6} {:>8} {:>6} {:>6}").format(*header))
    for b in floats(args.slopes):
        for curv in args.curvature.split(","):
            lo, _, hi = curv.partition(":")
            c, c_hi = float(lo), float(hi or lo)
            for growth in floats(args.growth):
                for noise in floats(args.noise):
                    for seeds in (int(v) for v in args.seeds.split(",")):
                        r = simulate(b, noise, seeds, n_rep=args.reps, n_boot=args.boot, curvature=c,
                                     curvature_hi=c_hi, growth=growth, seed=1)
                        rows.append(asdict(r))
                        power = "-" if r.power is None else f"{r.power:.3f}"
                        print(("{:>6.2f} {:>6} {:>9} {:>7} {:>6.2g} {:>5.2f} {:>5d} {:>9.3f} {:>6.3f} {:>6.3f} "
                               "{:>8.3f} {:>6.3f} {:>6}").format(
                                   b, f"x{math.exp(abs(b) * math.log(4)):.2f}", TRUTH_WORD[truth(b)], curv,
                                   growth, noise, seeds, r.transfers, r.not_transfers, r.moves, r.inconclusive,
                                   r.false_rate, power))
    worst = max(r["false_rate"] for r in rows)
    print(f"worst false-verdict rate {worst:.3f} (bound 0.05); {time.perf_counter() - start:.0f} s")
    print(json.dumps({"reps": args.reps, "boot": args.boot, "worst_false_rate": worst, "rows": rows}))


if __name__ == "__main__":
    main()
