"""Simulated sweeps with a known truth, to measure how often the LR-transfer verdict is wrong and
how many seeds a design needs before it is paid for.

A synthetic sweep has the shape of a :class:`Design`: widths, base LRs and a base width, crossed with
the rules ``constant`` and ``gat`` (actual LR = base LR x base width / width), a few seeds, and one
score per training (width, actual LR, seed), drawn from a valley in the actual LR:

    score = log FD = a_w + c(d) d^2 + noise,   d = log lr - m_w,   m_w = v0 + b log(w / w_ref)

``w_ref`` is the geometric mean of the widths. ``c(d)`` is ``curvature`` below the optimum and
``curvature_hi`` above it (default: the same; an asymmetric valley, gentle below and steep above as
the measured sweeps show, tests the symmetric valleys ``analysis.transfer`` fits under
misspecification), both times ``growth`` per width doubling (the measured valleys are more curved at
larger widths), with independent Gaussian noise of SD ``noise_sd`` per training (the seed-to-seed SD
of the score measured on real sweeps is ~0.2, docs/PILOTS.md). ``v0`` is the design's optimum at
``w_ref`` (by default the middle of its base-LR grid), jittered by up to half an LR step per
replicate so the optimum does not always sit on a grid point. The rule under test is ``constant``,
fitted as the tool fits it: to its own trainings plus those the ``gat`` rule ran at other actual LRs
of the same width (``transfer.rule_trainings``), so ``b`` is its slope. (``gat`` sees the mirror
image, slope ``b + 1``.)

Truth and verdicts: the true shift is ``b log(w_max / w_min)``. It "transfers" when |shift| < log 2
and "does not transfer" when |shift| >= log 2: as in any equivalence test the boundary belongs to
the hypothesis of non-equivalence, so on it "transfers" is the false verdict (the worst case of the
test's error rate). A *false verdict* is a conclusive verdict that contradicts the truth: the wrong
side of the tolerance, or "moves" in the wrong direction or when the true shift is 0 (the test
promises at most 5%); *power* is the rate of the correct tolerance verdict (transfers / does not
transfer), and ``moves`` the rate of "moves". ``benchmarks/transfer_simulation.py`` prints the
table in docs/ANALYSIS.md (and, with ``--sweep``, the same for any sweep file's design);
``tests/test_analysis_transfer.py`` checks the bound with fewer replicates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.transfer import TOLERANCE, fit_rule, rule_trainings


@dataclass(frozen=True)
class Design:
    """The shape of a synthetic sweep. The default is ``sweeps/width_lr_full.yaml``'s: widths
    16/32/64, 5 base LRs a factor 2 apart at base width 32, the optimum in the middle of the grid.

    Raises ValueError for fewer than 2 distinct widths or 3 base LRs (no slope, no valley)."""

    widths: tuple[int, ...] = (16, 32, 64)
    """Model widths (d_model) of the sweep."""
    base_lrs: tuple[float, ...] = (2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2)
    """Base LRs, evenly spaced in log (the jitter is half of one step)."""
    base_width: int = 32
    """Width at which ``gat`` trains the base LR unchanged."""
    anchor: tuple[float, int] | None = None
    """``(lr, width)``: the true best actual LR at one width (e.g. a measured optimum), from which
    the optimum at every other width follows by the true slope (and, like the mid-grid one, is
    jittered by up to half an LR step per replicate); None: the optimum at ``w_ref`` is the
    geometric middle of the base-LR grid."""

    def __post_init__(self) -> None:
        if len(set(self.widths)) < 2 or len(set(self.base_lrs)) != len(self.base_lrs) or len(self.base_lrs) < 3:
            raise ValueError(f"a design needs 2 or more widths and 3 or more distinct base LRs, got widths "
                             f"{list(self.widths)} and base LRs {list(self.base_lrs)}")

    @property
    def w_ref(self) -> float:
        """Geometric mean of the widths: where the synthetic line of optima is anchored."""
        return math.exp(float(np.mean(np.log(self.widths))))

    @property
    def log_range(self) -> float:
        """``log(w_max / w_min)``: the shift of the optimum is ``b`` times this."""
        return math.log(max(self.widths) / min(self.widths))

    def boundary(self, tol: float = TOLERANCE) -> float:
        """The (negative) slope whose shift over the widths is exactly the tolerance: -0.5 for
        16-64 and a factor 2."""
        return -tol / self.log_range

    def log_centre(self, b: float) -> float:
        """Log of the true best actual LR at ``w_ref`` for slope ``b``."""
        if self.anchor is None:
            return float(np.mean(np.log(self.base_lrs)))
        lr, width = self.anchor
        return math.log(lr) + b * math.log(self.w_ref / width)

    def describe(self) -> str:
        """One line: widths, base LRs, base width and where the optimum sits."""
        where = ("optimum mid-grid" if self.anchor is None
                 else f"optimum {self.anchor[0]:g} at width {self.anchor[1]}")
        return (f"widths {'/'.join(map(str, self.widths))}, {len(self.base_lrs)} base LRs "
                f"{min(self.base_lrs):g}..{max(self.base_lrs):g} at base width {self.base_width}, "
                f"gat + constant, {where}")


DEFAULT_DESIGN = Design()
B_BOUNDARY = DEFAULT_DESIGN.boundary()
"""Slope whose shift over 16-64 is exactly the tolerance (a factor 2): -0.5."""


def synthetic_scores(b: float, noise_sd: float, n_seeds: int, rng: np.random.Generator, *,
                     curvature: float = 0.5, curvature_hi: float | None = None, growth: float = 1.0,
                     design: Design = DEFAULT_DESIGN, jitter: float = 0.5) -> pd.DataFrame:
    """One synthetic sweep's trial scores (rows of ``transfer.trial_scores``), rules ``constant``
    (actual LR = base LR) and ``gat`` (actual LR = base LR x base width / width); one draw per
    training, shared by the two rules where their actual LRs coincide.

    ``b``: true slope of log best (actual = constant's base) LR on log width; ``noise_sd``: SD of
    log FD per training; ``curvature``/``curvature_hi``: ``c`` in log FD per (natural log LR)^2
    below/above the optimum (0.5: one factor-2 step costs 0.24 in log FD, ~27% in FD);
    ``growth``: both curvatures grow by this factor per width doubling (about 1.4 measured, 2 as a
    stress case; they are the values at ``w_ref``); ``jitter``: the optimum at w_ref moves
    uniformly by up to this fraction of an LR step. Offsets a_w fall with width (wider is better).
    """
    c_hi = curvature if curvature_hi is None else curvature_hi
    widths, lrs = design.widths, sorted(design.base_lrs)
    step = math.log(lrs[1] / lrs[0])
    v0 = design.log_centre(b) + rng.uniform(-jitter, jitter) * step
    drawn: dict[tuple[int, float, int], float] = {}
    rows = []
    for rule in ("constant", "gat"):
        for width in widths:
            m = v0 + b * math.log(width / design.w_ref)
            a = 7.0 - 0.3 * math.log(width / min(widths))
            scale = growth ** math.log2(width / design.w_ref)
            for base in lrs:
                lr = base * (design.base_width / width if rule == "gat" else 1.0)
                d = math.log(lr) - m
                for seed in range(n_seeds):
                    key = (width, round(math.log(lr), 9), seed)
                    if key not in drawn:
                        c = scale * (curvature if d < 0 else c_hi)
                        drawn[key] = a + c * d * d + rng.normal(0.0, noise_sd)
                    rows.append({"lr_rule": rule, "width": width, "size": f"w{width}", "base_lr": base,
                                 "lr": lr, "lr_d_ratio": 1.0, "lr_mults": "", "seed": seed,
                                 "trial": f"{rule}-w{width}-lr{base:g}-s{seed}", "score": drawn[key],
                                 "n_scored": 3, "common_iter": 1000})
    return pd.DataFrame(rows)


def truth(b: float, design: Design = DEFAULT_DESIGN, tol: float = TOLERANCE) -> bool | None:
    """True verdict for slope ``b``: True (transfers), False (does not), None (on the boundary,
    where "transfers" is false and "does not transfer" is not counted as false)."""
    shift = abs(b) * design.log_range
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
    curvature_hi: float
    growth: float
    n_rep: int
    transfers: float
    """Fraction of "transfers" verdicts."""
    not_transfers: float
    """Fraction of "does not transfer" verdicts."""
    moves: float
    """Fraction of "moves" verdicts (a significant shift whose size against the tolerance is undecided)."""
    inconclusive: float
    false_rate: float
    """Fraction of conclusive verdicts that contradict the truth (module docstring)."""
    power: float | None
    """Fraction of correct tolerance verdicts; None on the boundary."""


def simulate(b: float, noise_sd: float, n_seeds: int, *, n_rep: int = 200, n_boot: int = 200,
             curvature: float = 0.5, curvature_hi: float | None = None, growth: float = 1.0,
             design: Design = DEFAULT_DESIGN, seed: int = 0) -> SimResult:
    """Run the transfer test (rule ``constant``, pooled as the tool pools it) on ``n_rep``
    synthetic sweeps of ``design`` (seeded) and count its verdicts."""
    rng = np.random.default_rng(seed)
    c_hi = curvature if curvature_hi is None else curvature_hi
    counts = {"transfers": 0, "does not transfer": 0, "moves": 0, "inconclusive": 0}
    wrong_moves = 0
    for rep in range(n_rep):
        scores = synthetic_scores(b, noise_sd, n_seeds, rng, curvature=curvature, curvature_hi=c_hi,
                                  growth=growth, design=design)
        res = fit_rule(rule_trainings(scores, "constant"), "constant", n_boot=n_boot, seed=rep)
        counts[res.outcome] += 1
        if res.outcome == "moves" and (b == 0 or np.sign(res.shift.value) != np.sign(b)):
            wrong_moves += 1
    frac = {k: v / n_rep for k, v in counts.items()}
    true = truth(b, design)
    if true is None:
        false_rate, power = frac["transfers"], None
    else:
        side = "does not transfer" if true else "transfers"
        false_rate = frac[side]
        power = frac["transfers" if true else "does not transfer"]
    false_rate += wrong_moves / n_rep
    return SimResult(b, noise_sd, n_seeds, curvature, c_hi, growth, n_rep, frac["transfers"],
                     frac["does not transfer"], frac["moves"], frac["inconclusive"], false_rate, power)
