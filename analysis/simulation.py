"""Simulated sweeps with a known truth: how often the LR-transfer verdict is wrong, how often it
decides, and how biased its estimated shift is, on the valley shapes GAN sweeps have.

A synthetic sweep has the shape of a :class:`Design` (widths, base LRs, base width), crossed with the
rules ``constant`` and ``gat`` (actual LR = base LR x base width / width), a few seeds, and one score
per training (width, actual LR, seed), drawn around a valley in the actual LR
(``d = log lr - m_w``, ``m_w = v0 + b log(w / w_ref)``):

    score = log FD = a_w + c d^2 + noise       below the optimum (d < 0), and above it by ``shape``:

* ``symmetric``: the same quadratic;
* ``steep K``: a quadratic K times more curved (a wall);
* ``cliff R``: the same quadratic up to R x the optimum, then the untrained score
  :data:`UNTRAINED` (plus noise): the measured GAN valleys (FD back near its value at
  initialisation one LR step above the best, docs/ANALYSIS.md);
* ``diverge R``: the same quadratic up to R x the optimum, then the training diverges (+inf).

``c`` grows by ``growth`` per width doubling (the measured valleys are more curved at larger
widths); noise is Gaussian with SD ``noise_sd`` per training (the measured seed-to-seed SD is
0.20-0.24). ``v0`` is the design's optimum at ``w_ref`` (by default the middle of its grid, or an
anchor), jittered uniformly by up to half an LR step so the optimum takes every position on the
grid. The fit is the tool's (``transfer.rule_trainings`` + ``transfer.fit_rule`` of ``constant``);
``gat``'s fit of the same trainings is ``constant``'s shifted by exactly ``log(w_max / w_min)`` (its
slope is ``b + 1``, its interval the same), so both verdicts come from one fit.

Truth and verdicts, per rule with true shift ``t``: it "transfers" when ``|t| < log 2`` and "does not
transfer" when ``|t| >= log 2`` (the boundary belongs to non-equivalence, as in any equivalence test).
A *false verdict* is a conclusive verdict that contradicts the truth: the wrong side of the
tolerance, or "moves" in the wrong direction or when ``t = 0`` (the test promises at most 5%);
*power* is the rate of the correct tolerance verdict; *bias* the median of (estimated - true shift),
in log, over the sweeps that reached a verdict. ``benchmarks/transfer_simulation.py`` prints the
table in docs/ANALYSIS.md; ``tests/test_analysis_transfer.py`` checks a reduced grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.fit import Estimate
from analysis.transfer import TOLERANCE, decide, fit_rule, rule_trainings
from core.lr_rules import apply_rule

UNTRAINED = math.log(4800.0)
"""Score (log FD) of a training that learned nothing: the digits generator's FD at initialisation."""


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
WIDE_DESIGN = Design(widths=(16, 32, 64, 128))
"""``sweeps/width_lr_wide.yaml``'s design: widths 16-128, otherwise the default's."""
B_BOUNDARY = DEFAULT_DESIGN.boundary()
"""Slope whose shift over 16-64 is exactly the tolerance (a factor 2): -0.5."""


@dataclass(frozen=True)
class Shape:
    """The valley above the optimum (module docstring): ``kind`` one of symmetric, steep, cliff,
    diverge; ``factor``: the wall's curvature factor (steep) or the LR ratio to the optimum where the
    cliff or divergence starts."""

    kind: str = "symmetric"
    factor: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("symmetric", "steep", "cliff", "diverge") or self.factor < 1:
            raise ValueError(f"unknown valley shape {self.kind} {self.factor}")

    @property
    def name(self) -> str:
        return "symmetric" if self.kind == "symmetric" else f"{self.kind} {self.factor:g}x"

    @classmethod
    def parse(cls, text: str) -> Shape:
        """'symmetric', 'steep4', 'cliff1.5', 'diverge1.5' -> Shape; ValueError otherwise."""
        for kind in ("symmetric", "steep", "cliff", "diverge"):
            if text.startswith(kind):
                rest = text[len(kind):].rstrip("x")
                return cls(kind, float(rest) if rest else 1.0)
        raise ValueError(f"unknown valley shape {text!r}: use symmetric, steepK, cliffR or divergeR")

    def score(self, d: float, low: float) -> float:
        """Score (without noise) at ``d`` = log(lr / optimum), given the low side's ``low`` = c d^2."""
        if d < 0 or self.kind == "symmetric":
            return low
        if self.kind == "steep":
            return self.factor * low
        if d < math.log(self.factor):
            return low
        return math.inf if self.kind == "diverge" else math.nan   # nan: untrained (drawn by the caller)


SHAPES = tuple(Shape.parse(s) for s in ("symmetric", "steep4", "steep8", "cliff1.2", "cliff1.5", "cliff2",
                                        "diverge1.5"))
"""The valley shapes of the study in docs/ANALYSIS.md."""


def synthetic_scores(b: float, noise_sd: float, n_seeds: int, rng: np.random.Generator, *,
                     curvature: float = 0.15, shape: Shape = Shape(), growth: float = 1.0,
                     design: Design = DEFAULT_DESIGN, jitter: float = 0.5) -> pd.DataFrame:
    """One synthetic sweep's trial scores (rows of ``transfer.trial_scores``), rules ``constant``
    (actual LR = base LR) and ``gat`` (actual LR = base LR x base width / width); one draw per
    training, shared by the two rules where their actual LRs coincide.

    ``b``: true slope of log best actual LR on log width; ``noise_sd``: SD of log FD per training;
    ``curvature``: ``c`` below the optimum in log FD per (natural log LR)^2 at ``w_ref`` (0.15: a
    factor-2 step costs 0.07, about as measured), times ``growth`` per width doubling; ``shape``:
    the valley above the optimum; ``jitter``: the optimum at w_ref moves uniformly by up to this
    fraction of an LR step. Offsets a_w fall with width (wider is better): log FD 7.7 at width 16.
    """
    widths, lrs = design.widths, sorted(design.base_lrs)
    step = math.log(lrs[1] / lrs[0])
    v0 = design.log_centre(b) + rng.uniform(-jitter, jitter) * step
    drawn: dict[tuple[int, float, int], float] = {}
    rows = []
    for rule in ("constant", "gat"):
        for width in widths:
            m = v0 + b * math.log(width / design.w_ref)
            a = 7.7 - 0.4 * math.log(width / min(widths))
            c = curvature * growth ** math.log2(width / design.w_ref)
            for base in lrs:
                lr = apply_rule(rule, base, width, design.base_width).lr
                d = math.log(lr) - m
                for seed in range(n_seeds):
                    key = (width, round(math.log(lr), 9), seed)
                    if key not in drawn:
                        mean = shape.score(d, c * d * d)
                        noise = rng.normal(0.0, noise_sd)
                        drawn[key] = (UNTRAINED if math.isnan(mean) else a + mean) + noise
                    rows.append({"lr_rule": rule, "width": width, "size": f"w{width}", "base_lr": base,
                                 "lr": lr, "lr_d_ratio": 1.0, "lr_mults": "", "seed": seed,
                                 "trial": f"{rule}-w{width}-lr{base:g}-s{seed}", "score": drawn[key],
                                 "n_scored": 3, "common_iter": 1000})
    return pd.DataFrame(rows)


def truth(shift: float, tol: float = TOLERANCE) -> bool | None:
    """True verdict for a true shift (natural log): True (transfers), False (does not), None (on
    the boundary, where "transfers" is false and "does not transfer" is not counted as false)."""
    if math.isclose(abs(shift), tol, rel_tol=1e-9):
        return None
    return abs(shift) < tol


@dataclass(frozen=True)
class SimResult:
    """Verdict rates of one rule over ``n_rep`` synthetic sweeps of one setting."""

    rule: str
    b: float
    """True slope of the best *actual* LR (the ``constant`` rule's)."""
    true_shift: float
    """The rule's true shift over the design's widths (natural log)."""
    shape: str
    noise_sd: float
    n_seeds: int
    curvature: float
    growth: float
    design: str
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
    bias: float | None
    """Median of (estimated - true shift) over sweeps with a conclusive verdict; None without one."""


def _shifted(e: Estimate, by: float) -> Estimate:
    return Estimate(e.value + by, None if e.lo is None else e.lo + by, None if e.hi is None else e.hi + by)


def simulate(b: float, noise_sd: float, n_seeds: int, *, n_rep: int = 200, n_boot: int = 300,
             curvature: float = 0.15, shape: Shape = Shape(), growth: float = 1.0,
             design: Design = DEFAULT_DESIGN, seed: int = 0) -> dict[str, SimResult]:
    """Run the transfer test on ``n_rep`` synthetic sweeps of ``design`` (seeded) and count the
    verdicts of ``constant`` and ``gat``. Returns {rule: SimResult}."""
    rng = np.random.default_rng(seed)
    span = design.log_range
    outcomes: dict[str, list[str]] = {"constant": [], "gat": []}
    errors: dict[str, list[float]] = {"constant": [], "gat": []}
    wrong_moves = {"constant": 0, "gat": 0}
    true = {"constant": b * span, "gat": (b + 1) * span}
    for rep in range(n_rep):
        scores = synthetic_scores(b, noise_sd, n_seeds, rng, curvature=curvature, shape=shape, growth=growth,
                                  design=design)
        res = fit_rule(rule_trainings(scores, "constant"), "constant", n_boot=n_boot, seed=rep)
        for rule, offset in (("constant", 0.0), ("gat", span)):
            if res.shift is None:
                outcome, estimate = "inconclusive", None
            else:
                shift, slope = _shifted(res.shift, offset), _shifted(res.slope, offset / span)
                edges = [o.width for o in res.optima if o.at_edge]
                outcome = decide(shift, slope, list(res.valley.widths), res.n_seeds, "", edges).outcome
                estimate = shift.value
            outcomes[rule].append(outcome)
            if outcome != "inconclusive":
                errors[rule].append(estimate - true[rule])
            if outcome == "moves" and (true[rule] == 0 or np.sign(estimate) != np.sign(true[rule])):
                wrong_moves[rule] += 1
    results = {}
    for rule, got in outcomes.items():
        frac = {k: got.count(k) / n_rep for k in ("transfers", "does not transfer", "moves", "inconclusive")}
        verdict = truth(true[rule])
        if verdict is None:
            false_rate, power = frac["transfers"], None
        else:
            false_rate = frac["does not transfer" if verdict else "transfers"]
            power = frac["transfers" if verdict else "does not transfer"]
        results[rule] = SimResult(
            rule, b, true[rule], shape.name, noise_sd, n_seeds, curvature, growth,
            f"{min(design.widths)}-{max(design.widths)}", n_rep, frac["transfers"], frac["does not transfer"],
            frac["moves"], frac["inconclusive"], false_rate + wrong_moves[rule] / n_rep, power,
            float(np.median(errors[rule])) if errors[rule] else None)
    return results
