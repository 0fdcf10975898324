"""Does a learning-rate rule transfer across widths?

For each LR rule and width, the sweep tried several base LRs. The best base LR of a width is
interpolated in log LR (a parabola through the lowest log FD and its two neighbours, vertex
clipped to that bracket). A rule *transfers* when the best base LR does not move with width:
the slope of log(best base LR) against log(width) is 0. A slope of -1 means the best LR falls
as 1/width, which is what the GAT paper's width-aware rule ``lr = base_lr * 768 / width``
corrects (GAT_METHOD.md §5): under ``constant`` LR the paper predicts a negative slope, under
``gat`` a slope near 0.

Verdict from the 95% interval of the slope (ordinary least squares, t interval, >= 3 widths)
and a tolerance TOLERANCE = 0.25 (|slope| < 0.25 moves the best LR by less than 2x, one typical
LR-grid step, over a 16x range of widths):

* "transfers" if the interval lies inside (-0.25, 0.25), or contains 0 and lies inside (-1, 1)
  (it excludes the 1/width law);
* "does not transfer" if the interval lies entirely outside [-0.25, 0.25];
* "inconclusive" otherwise (add widths or seeds).

With 2 widths there is no interval: |slope| < 0.25 decides, and the verdict says so.

Scores: each trial is scored by its FD at the latest evaluation that every live trial of the
same (rule, width) has reached (so a running sweep compares like with like); a diverged trial
scores +inf (its LR is too high); failed trials are left out; seeds are combined by the median.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from analysis.frontier import EXCLUDED_STATUSES

PAPER_EXPECTATION = {
    "constant": "paper: best LR falls with width (negative slope)",
    "gat": "paper: transfers (slope near 0)",
    "mup": "no paper prediction (muP-style rule)",
}
LEVEL = 0.95
TOLERANCE = 0.25
"""|slope| below which the best LR counts as unchanged (less than 2x over 16x in width)."""


@dataclass(frozen=True)
class WidthOptimum:
    """Best base LR of one (rule, width)."""

    width: int
    lrs: tuple[float, ...]
    """Base LRs tried, ascending."""
    scores: tuple[float, ...]
    """FD per LR at ``common_iter`` (median over seeds; inf = diverged)."""
    best_lr: float
    best_score: float
    """Lowest FD observed (at the grid LR nearest ``best_lr``)."""
    at_edge: bool
    """True when the lowest FD is at the smallest or largest LR tried: the optimum may lie outside."""
    common_iter: int


@dataclass(frozen=True)
class RuleTransfer:
    """LR-transfer analysis of one rule."""

    rule: str
    optima: tuple[WidthOptimum, ...]
    slope: float | None
    """d log(best base LR) / d log(width); None with fewer than 2 widths."""
    slope_ci: tuple[float, float] | None
    transfers: bool | None
    """None when inconclusive."""
    verdict: str
    expected: str

    def to_dict(self) -> dict:
        return {
            "rule": self.rule, "slope": self.slope,
            "slope_ci": list(self.slope_ci) if self.slope_ci else None, "level": LEVEL,
            "transfers": self.transfers, "verdict": self.verdict, "expected": self.expected,
            "optima": [{"width": o.width, "best_lr": o.best_lr, "best_fd": o.best_score,
                        "at_edge": o.at_edge, "common_iter": o.common_iter,
                        "lrs": list(o.lrs),
                        "fd": [s if np.isfinite(s) else None for s in o.scores]}
                       for o in self.optima],
        }


def interpolate_best_lr(lrs: np.ndarray, scores: np.ndarray) -> tuple[float, bool]:
    """Best LR from FD ``scores`` (inf = diverged) at ascending ``lrs``; returns (best LR, at_edge).

    With the lowest finite score at index i and finite neighbours i-1, i+1, fits a parabola to
    (log lr, log score) through those three points and returns its vertex, clipped to
    [lr[i-1], lr[i+1]]. Otherwise returns lr[i]; ``at_edge`` is True if i is the first or last LR.
    Raises ValueError if no score is finite.
    """
    lrs = np.asarray(lrs, float)
    x, y = np.log(lrs), np.log(np.asarray(scores, float))
    finite = np.isfinite(y)
    if not finite.any():
        raise ValueError("no finite FD: every LR diverged or failed")
    i = int(np.argmin(np.where(finite, y, np.inf)))
    at_edge = i == 0 or i == len(x) - 1
    if at_edge or not (finite[i - 1] and finite[i + 1]):
        return float(lrs[i]), at_edge
    (x0, x1, x2), (y0, y1, y2) = x[i - 1:i + 2], y[i - 1:i + 2]
    # vertex of the parabola through three points (divided differences)
    d01, d12 = (y1 - y0) / (x1 - x0), (y2 - y1) / (x2 - x1)
    curvature = (d12 - d01) / (x2 - x0)
    vertex = x1 if curvature <= 0 else 0.5 * (x0 + x1) - d01 / (2 * curvature)
    return float(np.exp(np.clip(vertex, x0, x2))), False


def width_slope(widths: np.ndarray, best_lrs: np.ndarray) -> tuple[float, tuple[float, float] | None]:
    """OLS slope of log(best LR) on log(width) and its LEVEL t interval (None with < 3 widths).

    Standard error ``sqrt(SSR / (n - 2) / Sxx)`` (any textbook on linear regression); identical
    optima give slope 0 with the interval [0, 0].
    """
    x, y = np.log(np.asarray(widths, float)), np.log(np.asarray(best_lrs, float))
    dx = x - x.mean()
    slope = float((dx * (y - y.mean())).sum() / (dx**2).sum())
    if len(x) < 3:
        return slope, None
    resid = y - y.mean() - slope * dx
    stderr = np.sqrt((resid**2).sum() / (len(x) - 2) / (dx**2).sum())
    half = float(stats.t.ppf(0.5 + LEVEL / 2, len(x) - 2) * stderr)
    return slope, (slope - half, slope + half)


def verdict(slope: float | None, ci: tuple[float, float] | None) -> tuple[bool | None, str]:
    """(transfers, sentence) from the slope and its interval (rules in the module docstring)."""
    if slope is None:
        return None, "insufficient data: best LRs at fewer than 2 widths"
    if ci is None:
        ok = abs(slope) < TOLERANCE
        word = "transfers" if ok else "does not transfer"
        return ok, f"{word}: slope {slope:.2f} (2 widths only, no interval; tolerance {TOLERANCE})"
    lo, hi = ci
    text = f"slope {slope:.2f} [{lo:.2f}, {hi:.2f}]"
    if -TOLERANCE < lo and hi < TOLERANCE:
        return True, f"transfers: {text} lies within +-{TOLERANCE}"
    if lo <= 0 <= hi and -1 < lo and hi < 1:
        return True, f"transfers: {text} contains 0 and excludes +-1"
    if hi < -TOLERANCE or lo > TOLERANCE:
        direction = "falls" if hi < 0 else "grows"
        return False, f"does not transfer: best LR {direction} with width ({text})"
    return None, f"inconclusive: {text}; add widths or seeds"


def trial_scores(points: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """One row per scored trial: lr_rule, width, base_lr, trial, score (FD or inf), common_iter.

    See the module docstring for how trials are scored; trials without an evaluation yet and
    failed trials are left out.
    """
    rows = []
    finite = points[np.isfinite(points["fd"].astype(float))]
    for (rule, width), group in trials.groupby(["lr_rule", "g_width"]):
        live = group[~group["status"].isin(EXCLUDED_STATUSES)]
        reached = finite[finite["run_id"].isin(live["run_id"])].groupby("run_id")["iter"].max()
        common = int(reached.min()) if len(reached) else -1
        for trial in group.itertuples():
            lr = trial.base_lr if np.isfinite(trial.base_lr) else trial.lr_g
            if trial.status == "failed":
                continue
            if trial.status == "diverged":
                score = np.inf
            else:
                evals = points[(points["run_id"] == trial.run_id) & (points["iter"] <= common)]
                if evals.empty:
                    continue
                score = float(evals.sort_values("iter")["fd"].iloc[-1])
                score = score if np.isfinite(score) else np.inf  # NaN FD: diverged, not yet tagged
            rows.append({"lr_rule": rule, "width": int(width), "base_lr": float(lr),
                         "trial": trial.trial, "score": score, "common_iter": common})
    return pd.DataFrame(rows, columns=["lr_rule", "width", "base_lr", "trial", "score", "common_iter"])


def analyse_transfer(points: pd.DataFrame, trials: pd.DataFrame) -> dict[str, RuleTransfer]:
    """LR-transfer analysis per rule from the tidy tables of ``runs.load_sweep``.

    Returns {rule: RuleTransfer}; rules whose every trial diverged or has no evaluation yet get a
    RuleTransfer with no optima and an "insufficient data" verdict.
    """
    scores = trial_scores(points, trials)
    out = {}
    for rule in sorted(trials["lr_rule"].dropna().unique()):
        optima = []
        for width, group in scores[scores["lr_rule"] == rule].groupby("width"):
            per_lr = group.groupby("base_lr")["score"].median().sort_index()
            if not np.isfinite(per_lr.to_numpy()).any():
                continue
            best_lr, at_edge = interpolate_best_lr(per_lr.index.to_numpy(), per_lr.to_numpy())
            optima.append(WidthOptimum(int(width), tuple(per_lr.index), tuple(per_lr.to_numpy()),
                                       best_lr, float(per_lr.min()), at_edge,
                                       int(group["common_iter"].iloc[0])))
        slope, ci = (width_slope([o.width for o in optima], [o.best_lr for o in optima])
                     if len(optima) >= 2 else (None, None))
        transfers, text = verdict(slope, ci)
        edges = [str(o.width) for o in optima if o.at_edge]
        if edges:
            text += f" (best LR at the edge of the LR grid for width {', '.join(edges)}: widen the grid)"
        out[rule] = RuleTransfer(rule, tuple(optima), slope, ci, transfers, text,
                                 PAPER_EXPECTATION.get(rule, "no paper prediction"))
    return out
