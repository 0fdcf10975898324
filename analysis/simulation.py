"""Simulated sweeps with a known truth, to measure how often the LR-transfer verdict is wrong.

A synthetic sweep has the default design's shape (widths 16/32/64, 5 base LRs a factor 2 apart,
a few seeds) and trial scores drawn from the model that ``analysis.transfer`` fits:

    score = log FD = a_w + c (log lr - m_w)^2 + noise,   m_w = v0 + b log(w / w_ref)

with independent Gaussian noise of SD ``noise_sd`` per training (the seed-to-seed SD of log FD
measured on real sweeps is ~0.15-0.25). ``v0`` is jittered by up to half an LR step per
replicate so the optimum does not always sit on a grid point.

Truth and verdicts: the true shift is ``b log(w_max / w_min)``. It "transfers" when
|shift| < log 2 and "does not transfer" when |shift| >= log 2: as in any equivalence test the
boundary belongs to the hypothesis of non-equivalence, so on it "transfers" is the false verdict
(the worst case of the test's error rate) and "does not transfer" is reported beside it. A
*false verdict* is a conclusive verdict that contradicts the truth (the test promises at most
5%); *power* is the rate of the correct conclusive verdict. ``benchmarks/transfer_simulation.py`` prints the table in
docs/ANALYSIS.md; ``tests/test_analysis_transfer.py`` checks the bound with fewer replicates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.transfer import TOLERANCE, fit_rule

WIDTHS = (16, 32, 64)
LRS = (2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2)
CENTRE_LR = 8e-3
"""Optimum at the geometric-mean width (32): the middle of the LR grid."""
B_BOUNDARY = -TOLERANCE / math.log(WIDTHS[-1] / WIDTHS[0])
"""Slope whose shift over 16-64 is exactly the tolerance (a factor 2): -0.5."""


def synthetic_scores(b: float, noise_sd: float, n_seeds: int, rng: np.random.Generator, *,
                     curvature: float = 0.5, widths: tuple[int, ...] = WIDTHS,
                     lrs: tuple[float, ...] = LRS, jitter: float = 0.5) -> pd.DataFrame:
    """One synthetic sweep's trial scores (columns of ``transfer.trial_scores``).

    ``b``: true slope of log best LR on log width; ``noise_sd``: SD of log FD per training;
    ``curvature``: ``c`` in log FD per (natural log LR)^2 (0.5: one factor-2 step from the
    optimum costs 0.24 in log FD, ~27% in FD); ``jitter``: the optimum at w_ref moves uniformly
    by up to this fraction of an LR step. Offsets a_w fall with width (wider is better).
    """
    w_ref = math.exp(np.mean(np.log(widths)))
    step = math.log(lrs[1] / lrs[0])
    v0 = math.log(CENTRE_LR) + rng.uniform(-jitter, jitter) * step
    rows = []
    for width in widths:
        m = v0 + b * math.log(width / w_ref)
        a = 7.0 - 0.3 * math.log(width / widths[0])
        for lr in lrs:
            mean = a + curvature * (math.log(lr) - m) ** 2
            for seed in range(n_seeds):
                rows.append({"lr_rule": "sim", "width": width, "base_lr": lr, "seed": seed,
                             "trial": f"w{width}-lr{lr:g}-s{seed}",
                             "score": mean + rng.normal(0.0, noise_sd), "n_scored": 3,
                             "common_iter": 1000})
    return pd.DataFrame(rows)


def truth(b: float, widths: tuple[int, ...] = WIDTHS, tol: float = TOLERANCE) -> bool | None:
    """True verdict for slope ``b``: True (transfers), False (does not), None (on the boundary,
    where "transfers" is false and "does not transfer" is not counted as false)."""
    shift = abs(b) * math.log(widths[-1] / widths[0])
    if math.isclose(shift, tol, rel_tol=1e-9):
        return None
    return shift < tol


@dataclass(frozen=True)
class SimResult:
    """Verdict rates over ``n_rep`` synthetic sweeps of one setting."""

    b: float
    noise_sd: float
    n_seeds: int
    curvature: float
    n_rep: int
    transfers: float
    """Fraction of "transfers" verdicts."""
    not_transfers: float
    """Fraction of "does not transfer" verdicts."""
    inconclusive: float
    false_rate: float
    """Fraction of conclusive verdicts that contradict the truth ("transfers" on the boundary)."""
    power: float | None
    """Fraction of correct conclusive verdicts; None on the boundary."""


def simulate(b: float, noise_sd: float, n_seeds: int, *, n_rep: int = 200, n_boot: int = 200,
             curvature: float = 0.5, seed: int = 0) -> SimResult:
    """Run the transfer test on ``n_rep`` synthetic sweeps (seeded) and count its verdicts."""
    rng = np.random.default_rng(seed)
    counts = {True: 0, False: 0, None: 0}
    for rep in range(n_rep):
        scores = synthetic_scores(b, noise_sd, n_seeds, rng, curvature=curvature)
        counts[fit_rule(scores, "sim", n_boot=n_boot, seed=rep).transfers] += 1
    frac = {k: v / n_rep for k, v in counts.items()}
    true = truth(b)
    if true is None:
        false_rate, power = frac[True], None
    else:
        false_rate, power = frac[not true], frac[true]
    return SimResult(b, noise_sd, n_seeds, curvature, n_rep, frac[True], frac[False], frac[None],
                     false_rate, power)
