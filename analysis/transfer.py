"""Does a learning-rate rule transfer across widths? A noise-aware equivalence test.

For each LR rule, ONE model is fitted to every training the rule can use at once (all widths,
base LRs and seeds; "Which trainings" below):

    log FD = a_w + c_w * (log lr - m_w)**2        (one valley per width w)
    m_w ~ v0 + b * log(w / w_ref)                 (least-squares line through the optima)

with a free offset ``a_w``, curvature ``c_w > 0`` and optimum ``m_w`` (log of the best *base* LR
at width w) per width, and ``b`` the least-squares slope of the optima against log width. ``lr``
is the rule's base LR; ``w_ref`` is the geometric mean of the fitted widths. ``b`` is the
quantity of interest: 0 means the best base LR does not move with width, -1 means it falls as
1/width, which the GAT paper's rule ``lr = base_lr * 768 / width`` corrects (docs/METHOD.md §5).
Each width has its own curvature because the measured valleys differ (width 16's flat, width
64's about twice as curved, docs/PILOTS.md section 7): one curvature shared by all widths would
scale each width's fitted optimum about the centre of the LRs and bias ``b`` (a review's
simulation: 9-18% false "moves" verdicts with curvatures 2-3x apart per width doubling).

Each width's quadratic is linear in its reparametrisation ``a'_w + c_w x**2 + e_w x`` (``x`` =
log lr minus its mean), so the model is fitted exactly by (weighted) least squares and
``m_w = x_mean - e_w / (2 c_w)``; a width needs finite scores at 3 or more LRs. A fit with some
``c_w <= 0`` has no valley there and no optimum.

Uncertainty: a bootstrap over seeds (Efron & Tibshirani 1993, ch. 6 and 12; Field & Welsh 2007
for the cluster bootstrap): seeds are resampled with replacement, keeping every training of a
seed together (trainings of one seed share an initialisation and data order, so they are not
independent), and the model is refitted (as weighted least squares, weight = how often the seed
was drawn). With the 2-6 seeds a sweep can afford, percentile intervals of a cluster bootstrap
are far too narrow (with 3 seeds they are roughly the range of the three single-seed estimates,
which misses the truth 25% of the time). The interval is therefore the bootstrap standard error
with a small-sample t quantile:

    estimate +- t(0.975, n_seeds - 1) * sqrt(n_seeds / (n_seeds - 1)) * SD(bootstrap estimates)

(``sqrt(n/(n-1))`` undoes the bootstrap's ``(n-1)/n`` variance shrinkage, the t quantile the
few-cluster uncertainty of the standard error itself). ``analysis.simulation`` checks by
simulation that the verdicts below are wrong at most 5% of the time (table in docs/ANALYSIS.md).
Resamples whose fit has no valley count as unbounded: if more than 2.5% of them have none, the
interval is open and the verdict inconclusive.

Verdict, an equivalence test (Schuirmann 1987, two one-sided tests, here at the stricter 95%
level) on the shift of the optimum over the sweep's width range, ``shift = b * log(w_max / w_min)``
(natural log), with tolerance ``TOLERANCE = log 2`` (the best LR moves by less than a factor 2,
about one LR-grid step), combined with the ordinary test of "no shift" on the same interval
(Lakens 2018, "Equivalence testing for psychological research", Fig. 1):

* "transfers" when the whole 95% interval of the shift lies within (-log 2, log 2);
* "does not transfer" when it lies entirely above log 2 or entirely below -log 2;
* "moves" when it excludes 0 but overlaps the tolerance: the best LR does move with width, in
  the direction given, and whether by more than a factor 2 is undecided (a true shift near the
  tolerance takes very many seeds to decide, one exactly at it none);
* "inconclusive" otherwise, with the measured seed-to-seed noise and an estimate of the seeds a
  decision would need (the interval's half width scales as 1/sqrt(seeds)).

Which trainings: a rule only decides which actual LR each (width, base LR) trains with, so every
rule is fitted to every distinct training at the same LR setting, its own and those run for
another rule, mapped to its base LRs (``rule_trainings``). The ``gat`` and ``constant`` fits then
use the same data, their slopes differ by exactly 1 and share one interval width, and each width
gets the LRs of both grids (the cliff above the optimum that only one rule's grid reaches no longer
bends one rule's fit alone, docs/PILOTS.md section 5).

It is also inconclusive when a width's fitted optimum lies outside the LRs tried at that width
(``at_edge``: a vertex extrapolated beyond the data is not to be trusted; widen the grid), when
the fit has no valley, or with a single seed (no interval).

Score of a trial (``trial_score``): the mean of log FD over its last ``SCORE_EVALS`` = 3
evaluations (fewer if it has fewer), taken up to the latest evaluation that every live trial of
the same (rule, width) has reached, so a running sweep compares like with like. One evaluation
swings by ~30% between neighbouring checkpoints; the mean of three is steadier and still
describes the end of training. A trial whose status is ``diverged``, or with a non-finite FD among
those evaluations, scores +inf: it is left out of the fit and its LR is marked as failed. A trial
that improved and then blew up (FD 70, 52, 49, 50, 57, 61, 480) scores by its last evaluations
(mean log of 57, 61, 480: FD ~118), i.e. badly: its LR is too high for the planned training,
which is what the test asks. ``failed`` trials (crashed, no verdict on the LR) are left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from scipy import stats

from analysis.fit import Estimate
from core.records import DIVERGED, EXCLUDED_STATUSES

PAPER_EXPECTATION = {
    "constant": "paper: best LR falls with width (negative slope)",
    "gat": "paper: transfers (slope near 0)",
    "mup": "no paper prediction (muP-style rule)",
}
LEVEL = 0.95
TOLERANCE = math.log(2.0)
"""Largest |shift| of the optimum (natural log of the LR factor) over the sweep's width range
that still counts as "transfers": a factor 2."""
SCORE_EVALS = 3
"""Evaluations averaged (in log FD) into a trial's score."""
N_BOOT = 1000
MAX_SEEDS_REPORTED = 100
"""Seed estimates above this are reported as "more than 100"."""
MAX_RANGE_REPORTED = 1e4
"""Widest width ratio the report suggests (a nearly flat slope would ask for absurd ranges)."""
_MAX_UNBOUNDED = (1 - LEVEL) / 2
"""Largest fraction of valley-less bootstrap resamples that still allows a bounded interval."""


def trial_score(fd: np.ndarray, status: str) -> float:
    """Score of one trial from its FD history ``fd`` (ascending iteration), in log FD units.

    Returns the mean of ``log fd`` over the last ``SCORE_EVALS`` evaluations (fewer if there are
    fewer), +inf when ``status == 'diverged'`` or one of those values is non-finite or not
    positive. Raises ValueError for an empty history of a trial that did not diverge.
    """
    if status == DIVERGED:
        return math.inf
    fd = np.asarray(fd, dtype=float)
    if fd.size == 0:
        raise ValueError("no evaluation to score")
    last = fd[-SCORE_EVALS:]
    if not (np.isfinite(last).all() and (last > 0).all()):
        return math.inf
    return float(np.log(last).mean())


def trial_scores(points: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """One row per scored trial: ``lr_rule, width, size, base_lr, lr, lr_d_ratio, lr_mults, seed,
    trial, score, n_scored, common_iter``; ``score`` is a log FD (``trial_score``) or +inf
    (diverged), ``lr`` the actual LR of G (``lr_g``), ``lr_d_ratio`` = lr_d / lr_g.

    ``points``/``trials``: the tidy tables of ``runs.load_sweep`` (``points`` of one metric).
    Trials without an evaluation yet (at or before their width's common iteration: the latest
    evaluation every live trial of that width has reached, whatever its rule) and failed trials
    are left out. The base LR is ``base_lr``, or ``lr_g`` when no base LR was logged (and ``lr``
    is ``base_lr`` when no ``lr_g`` was); missing ``lr_d`` / ``lr_mults`` / ``size`` columns
    default to ``lr_g`` / "" / ``w<width>-d<g_depth>``; ``size`` gets ``-p<patch>`` where a
    patch column exists, so trainings of different architectures never merge.
    """
    columns = ["lr_rule", "width", "size", "base_lr", "lr", "lr_d_ratio", "lr_mults", "seed", "trial",
               "score", "n_scored", "common_iter"]
    rows = []
    finite = points[np.isfinite(points["fd"].astype(float))]
    by_run = {run: g.sort_values("iter") for run, g in points.groupby("run_id")}
    for width, group in trials.groupby("g_width"):
        live = group[~group["status"].isin(EXCLUDED_STATUSES)]
        reached = finite[finite["run_id"].isin(live["run_id"])].groupby("run_id")["iter"].max()
        common = int(reached.min()) if len(reached) else -1
        for trial in group.to_dict("records"):
            if trial["status"] == "failed":
                continue
            base = trial.get("base_lr", np.nan)
            lr = trial["lr_g"] if np.isfinite(trial.get("lr_g", np.nan)) else base
            base = base if np.isfinite(base) else lr
            seed = int(trial["seed"]) if np.isfinite(trial.get("seed", np.nan)) else 0
            evals = by_run.get(trial["run_id"])
            evals = evals[evals["iter"] <= common] if evals is not None else None
            if trial["status"] == DIVERGED:
                score, n = math.inf, 0 if evals is None else min(len(evals), SCORE_EVALS)
            elif evals is None or evals.empty:
                continue
            else:
                score = trial_score(evals["fd"].to_numpy(), trial["status"])
                n = min(len(evals), SCORE_EVALS)
            lr_d = trial.get("lr_d", lr)
            size = trial.get("size") or f"w{int(width)}-d{trial.get('g_depth', '?')}"
            patch = trial.get("patch")
            rows.append({"lr_rule": trial["lr_rule"], "width": int(width),
                         "size": str(size) + ("" if patch is None or pd.isna(patch) else f"-p{int(patch)}"),
                         "base_lr": float(base),
                         "lr": float(lr), "lr_d_ratio": float(lr_d) / float(lr) if np.isfinite(lr_d) else 1.0,
                         "lr_mults": str(trial.get("lr_mults") or ""), "seed": seed,
                         "trial": trial["trial"], "score": score, "n_scored": n, "common_iter": common})
    return pd.DataFrame(rows, columns=columns)


def _lr_key(lr: pd.Series) -> pd.Series:
    """LRs as keys that ignore float rounding (1e-9 relative): 0.004 * 32 / 16 == 0.008."""
    return np.log(lr.astype(float)).round(9)


def rule_trainings(scores: pd.DataFrame, rule: str) -> pd.DataFrame:
    """Every distinct training of a sweep that ``rule`` can use, in the rule's base-LR coordinates.

    A rule only picks which actual LR each (width, base LR) trains with, so a training of another
    rule at the same width, seed and learning-rate setting is the same training (the sweep runs
    it once and copies it, ``same_as``). At each width where the rule's own trials have one
    factor ``k = lr / base_lr``, one ``lr_d / lr_g`` and one set of per-kind multipliers, every
    training of that width with the same ratio and multipliers enters once, at ``base_lr = lr / k``
    (e.g. under ``gat`` at width 16, base width 32, the ``constant`` trial at LR 2e-3 is base LR
    1e-3). Widths where the factor is not unique keep the rule's own trials. Rows are those of
    :func:`trial_scores` with ``lr_rule = rule`` and a bool column ``pooled`` (from another rule).
    """
    own = scores[scores["lr_rule"] == rule]
    parts = []
    for width, mine in own.groupby("width"):
        factors = mine["lr"] / mine["base_lr"]
        same = mine[["lr_d_ratio", "lr_mults"]].round({"lr_d_ratio": 9}).drop_duplicates()
        pool = mine
        if _lr_key(factors).nunique() == 1 and len(same) == 1:
            d_ratio, mults = same.iloc[0]
            at_width = scores[scores["width"] == width]
            pool = at_width[(at_width["lr_d_ratio"].round(9) == d_ratio) & (at_width["lr_mults"] == mults)]
            mapped = (pool["lr"] / float(factors.iloc[0])).map(lambda v: float(f"{v:.12g}"))
            pool = pool.assign(base_lr=mapped)  # 12 digits: 0.004 / 2 is 0.002, not 0.0019999999991
        pool = pool.assign(pooled=pool["lr_rule"] != rule, _key=_lr_key(pool["lr"]))
        parts.append(pool.sort_values("pooled", kind="stable").drop_duplicates(["size", "_key", "seed"]))
    if not parts:
        return own.assign(pooled=False)
    return pd.concat(parts, ignore_index=True).drop(columns="_key").assign(lr_rule=rule)


# ---- the model ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Valley:
    """Full-data fit of ``log FD = a_w + c_w (log lr - m_w)^2`` per width, and the line
    ``m = v0 + b log(w / w_ref)`` fitted to the optima ``m_w`` by least squares."""

    widths: tuple[int, ...]
    offsets: tuple[float, ...]
    """``a_w`` per width (log FD at the optimum)."""
    curvatures: tuple[float, ...]
    """``c_w`` per width (log FD per (log LR)^2); the fit has a valley only when all are > 0."""
    log_optima: tuple[float, ...]
    """``m_w`` per width: log of the best base LR (NaN where ``c_w <= 0``)."""
    v0: float
    """The line's log best base LR at ``w_ref``."""
    b: float
    w_ref: float

    def log_fd(self, width: int, lr: np.ndarray) -> np.ndarray:
        """Fitted log FD at ``width`` and base LRs ``lr`` (same shape as ``lr``)."""
        j = self.widths.index(width)
        return self.offsets[j] + self.curvatures[j] * (np.log(np.asarray(lr, float)) - self.log_optima[j]) ** 2


def _design(x: np.ndarray, width_idx: np.ndarray, n_widths: int) -> np.ndarray:
    """Design matrix (n, 3 n_widths): per width, its indicator times 1, x^2 and x (x = centred
    log LR), i.e. one quadratic per width."""
    onehot = np.eye(n_widths)[width_idx]
    return np.column_stack([onehot, onehot * (x**2)[:, None], onehot * x[:, None]])


def _solve(X: np.ndarray, y: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least squares for a batch of weight vectors ``weights`` (B, n).

    Returns (coefficients (B, p), identifiable (B,) bool); rank-deficient rows (e.g. a resample
    without any training of some width) are not identifiable.
    """
    xtwx = np.einsum("bn,ni,nj->bij", weights, X, X)
    xtwy = np.einsum("bn,ni,n->bi", weights, X, y)
    eig = np.linalg.eigvalsh(xtwx)
    ok = eig[:, 0] > 1e-9 * np.maximum(eig[:, -1], 1e-300)
    safe = np.where(ok[:, None, None], xtwx, np.eye(X.shape[1]))
    return np.linalg.solve(safe, xtwy[..., None])[..., 0], ok


def _vertex(beta: np.ndarray, n_widths: int, x_mean: float, z_w: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(c (B, W), b (B,), m (B, W)) from coefficients (B, 3W): the optimum of each width's
    quadratic, ``m_w = x_mean - e_w / (2 c_w)`` (NaN where ``c_w <= 0``: no valley there), and the
    least-squares slope ``b`` of ``m_w`` on ``z_w`` (NaN unless every width has a valley)."""
    c, e = beta[:, n_widths:2 * n_widths], beta[:, 2 * n_widths:]
    with np.errstate(divide="ignore", invalid="ignore"):
        m = np.where(c > 0, x_mean - e / (2 * c), np.nan)
    zc = z_w - z_w.mean()
    b = (m - m.mean(axis=1, keepdims=True)) @ zc / (zc @ zc)
    return c, b, m


def _t_interval(point: float, boot: np.ndarray, n_seeds: int) -> tuple[float | None, float | None]:
    """``point +- t(n_seeds - 1) sqrt(n/(n-1)) SD(boot)``; (None, None) when more than 2.5% of
    ``boot`` are NaN (valley-less resamples: unbounded) or there is a single seed."""
    if n_seeds < 2 or len(boot) == 0 or np.isnan(boot).mean() > _MAX_UNBOUNDED:
        return None, None
    sd = float(np.nanstd(boot, ddof=1)) if np.isfinite(boot).sum() > 1 else 0.0
    half = stats.t.ppf(0.5 + LEVEL / 2, n_seeds - 1) * math.sqrt(n_seeds / (n_seeds - 1)) * sd
    return point - half, point + half


# ---- results -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WidthOptimum:
    """Best base LR of one (rule, width)."""

    width: int
    lrs: tuple[float, ...]
    """Base LRs tried, ascending."""
    scores: tuple[float, ...]
    """FD per LR: geometric mean over the seeds that did not diverge of exp(score); inf when
    every seed diverged."""
    diverged_lrs: tuple[float, ...]
    """LRs at which at least one seed diverged (excluded from the fit, marked as failed)."""
    best_lr: Estimate | None
    """Fitted optimum exp(m_w) with its 95% interval; None without a valley."""
    best_score: float
    """Lowest per-LR FD observed (``min(scores)``)."""
    at_edge: bool
    """True when the fitted optimum lies outside the LRs (with a finite score) tried at this width."""
    common_iter: int


@dataclass(frozen=True)
class RuleTransfer:
    """LR-transfer analysis of one rule (see the module docstring)."""

    rule: str
    optima: tuple[WidthOptimum, ...]
    slope: Estimate | None
    """b = d log(best base LR) / d log(width), with its 95% interval; None without a fit."""
    shift: Estimate | None
    """b * log(w_max / w_min): log of the factor the optimum moves over the widths."""
    transfers: bool | None
    """True = transfers, False = does not transfer, None = inconclusive."""
    verdict: str
    expected: str
    n_seeds: int = 0
    noise_sd: float | None = None
    """Seed-to-seed SD of the score (log FD) within a (width, LR) cell, pooled; None with 1 seed."""
    residual_sd: float | None = None
    """Residual SD of log FD around the fitted model (noise plus misfit)."""
    seeds_needed: int | None = None
    """Estimated seeds for a conclusive verdict (when inconclusive for lack of precision)."""
    valley: Valley | None = None
    n_boot: int = 0
    tolerance: float = TOLERANCE
    outcome: str = "inconclusive"
    """One of ``OUTCOMES`` (:func:`decide`); ``verdict`` starts with it."""
    n_pooled: int = 0
    """Trainings fitted that were run for another rule at the same actual LR (:func:`rule_trainings`)."""

    @property
    def slope_ci(self) -> tuple[float, float] | None:
        """(lo, hi) of the slope, None without an interval."""
        if self.slope is None or self.slope.lo is None:
            return None
        return self.slope.lo, self.slope.hi

    def to_dict(self) -> dict:
        """JSON-ready summary (non-finite values become None in report._no_nan)."""
        est = (lambda e: None if e is None else e.to_dict())
        return {
            "rule": self.rule, "model": "log FD = a_w + c_w (log lr - m_w)^2 per width; m_w ~ v0 + b log(w/w_ref)",
            "slope": est(self.slope), "shift": est(self.shift), "tolerance_log": self.tolerance,
            "level": LEVEL, "interval": "bootstrap over seeds, SE x t(n_seeds-1) x sqrt(n/(n-1))",
            "n_boot": self.n_boot, "n_seeds": self.n_seeds, "noise_sd_log": self.noise_sd,
            "residual_sd_log": self.residual_sd, "seeds_needed": self.seeds_needed,
            "curvatures": None if self.valley is None else list(self.valley.curvatures),
            "w_ref": None if self.valley is None else self.valley.w_ref,
            "transfers": self.transfers, "outcome": self.outcome, "verdict": self.verdict,
            "expected": self.expected, "n_trainings_pooled": self.n_pooled,
            "score": f"mean log FD of the last {SCORE_EVALS} evaluations; diverged = +inf (excluded)",
            "optima": [{"width": o.width, "best_lr": est(o.best_lr), "best_fd": o.best_score,
                        "at_edge": o.at_edge, "common_iter": o.common_iter, "lrs": list(o.lrs),
                        "fd": [s if np.isfinite(s) else None for s in o.scores],
                        "diverged_lrs": list(o.diverged_lrs)}
                       for o in self.optima],
        }


def _pooled_cell_sd(df: pd.DataFrame) -> float | None:
    """Pooled within-(width, LR) SD of finite scores across seeds; None if no cell has 2."""
    g = df.groupby(["width", "base_lr"])["score"]
    dev = df["score"] - g.transform("mean")
    dof = int((g.transform("size") - 1).groupby([df["width"], df["base_lr"]]).first().sum())
    return math.sqrt(float((dev**2).sum()) / dof) if dof > 0 else None


def _seeds_needed(shift: float, lo: float, hi: float, n_seeds: int, tol: float) -> int | None:
    """Seeds for the interval to clear the tolerance, scaling its half width by sqrt(n / n')."""
    half = (hi - lo) / 2
    gap = abs(abs(shift) - tol)
    if gap <= 0:
        return None
    need = math.ceil(n_seeds * (half / gap) ** 2)
    return max(need, n_seeds + 1)


def _range_needed(slope: float, shift: Estimate, widths: list[int], tol: float) -> float | None:
    """Width ratio ``w_max / w_min`` at which the fitted slope moves the best LR by the tolerance
    plus the interval's present half width: ``exp((tol + half) / |b|)``, if that is wider than the
    sweep's range and at most ``MAX_RANGE_REPORTED``; None otherwise (also for a zero slope or no
    interval).

    The shift's interval keeps about its width when the range grows with the seeds unchanged
    (its standard error is ~ sqrt(2) x a width's optimum's for two widths, whatever their ratio);
    measured: 16-64 and 16-128 on the same 8 seeds, docs/PILOTS.md section 9."""
    if slope == 0 or shift.lo is None or shift.hi is None:
        return None
    log_ratio = (tol + (shift.hi - shift.lo) / 2) / abs(slope)
    if log_ratio <= math.log(max(widths) / min(widths)) or log_ratio > math.log(MAX_RANGE_REPORTED):
        return None     # the sweep's range already suffices, or no practical range would
    return math.exp(log_ratio)


def fit_rule(scores: pd.DataFrame, rule: str = "", *, n_boot: int = N_BOOT, seed: int = 0,
             tolerance: float = TOLERANCE) -> RuleTransfer:
    """Fit the valley model to one rule's trial scores and decide (module docstring).

    Args:
        scores: rows of :func:`trial_scores` for one rule (columns ``width, base_lr, seed,
            score, common_iter``; ``score`` in log FD, +inf = diverged).
        rule: the rule's name (for the paper expectation).
        n_boot: bootstrap resamples over seeds (the test suite uses fewer).
        seed: seed of the resampling (same seed, same intervals).
        tolerance: largest |shift| (natural log) that counts as transferring; default log 2.

    Never raises on thin data: it returns a RuleTransfer whose verdict says what is missing.
    """
    expected = PAPER_EXPECTATION.get(rule, "no paper prediction")
    optima_raw = []
    finite_all = np.isfinite(scores["score"].to_numpy(float))
    for width, group in scores.groupby("width"):
        ok = finite_all[scores["width"].to_numpy() == width]
        fin = group[ok]
        means = fin.groupby("base_lr")["score"].mean()
        lrs = tuple(sorted(group["base_lr"].unique()))
        per_lr = tuple(float(np.exp(means[lr])) if lr in means.index else math.inf for lr in lrs)
        diverged = tuple(sorted(group.loc[~ok, "base_lr"].unique()))
        tried = (float(means.index.min()), float(means.index.max())) if len(means) else None
        common = int(group["common_iter"].iloc[0]) if "common_iter" in group else -1
        optima_raw.append((int(width), lrs, per_lr, diverged, tried, common))
    fitted = scores[np.isfinite(scores["score"])]
    n_pooled = int(scores["pooled"].sum()) if "pooled" in scores else 0
    curved = fitted.groupby("width")["base_lr"].nunique()
    fitted = fitted[fitted["width"].isin(curved.index[curved >= 3])]  # a quadratic needs 3 LRs
    widths = sorted(fitted["width"].unique().tolist())
    seeds = sorted(fitted["seed"].unique().tolist())
    n_seeds = len(seeds)

    def plain(verdict_text: str) -> RuleTransfer:
        optima = tuple(WidthOptimum(w, lrs, sc, dv, None, float(min(sc)), False, ci)
                       for w, lrs, sc, dv, _, ci in optima_raw)
        return RuleTransfer(rule, optima, None, None, None, verdict_text, expected, n_seeds,
                            _pooled_cell_sd(fitted), None, None, None, 0, tolerance, "inconclusive", n_pooled)

    if len(widths) < 2:
        return plain(f"insufficient data: finite scores at 3 or more distinct LRs at {len(widths)} "
                     "width(s); need at least 2 such widths")

    log_lr = np.log(fitted["base_lr"].to_numpy(float))
    x_mean = float(log_lr.mean())
    x = log_lr - x_mean
    w_ref = float(np.exp(np.mean(np.log(widths))))
    z_w = np.log(np.array(widths, float) / w_ref)
    widx = np.searchsorted(widths, fitted["width"].to_numpy())
    X = _design(x, widx, len(widths))
    y = fitted["score"].to_numpy(float)
    beta, ok = _solve(X, y, np.ones((1, len(y))))
    if not ok[0]:
        return plain("insufficient data: the model is not identifiable from these trainings")
    c, b, m = _vertex(beta, len(widths), x_mean, z_w)
    resid = y - X @ beta[0]
    dof = len(y) - X.shape[1]
    residual_sd = math.sqrt(float(resid @ resid) / dof) if dof > 0 else None
    noise_sd = _pooled_cell_sd(fitted)
    span = math.log(max(widths) / min(widths))
    # the per-width intercepts are a_w + c_w (m_w - x_mean)^2 (the square expanded in centred x)
    offsets = beta[0, :len(widths)] - np.where(c[0] > 0, c[0] * (m[0] - x_mean) ** 2, 0.0)
    valley = Valley(tuple(widths), tuple(offsets.tolist()), tuple(c[0].tolist()), tuple(m[0].tolist()),
                    float(np.mean(m[0]) - b[0] * np.mean(z_w)) if np.isfinite(b[0]) else math.nan,
                    float(b[0]), w_ref)
    if not (c[0] > 0).all():
        flat = ", ".join(f"{w} ({cw:.3g})" for w, cw in zip(widths, c[0]) if not cw > 0)
        out = plain(f"inconclusive: no valley at width {flat} (fitted curvature <= 0): FD does not rise "
                    "on both sides of any LR tried there; widen the LR grid or train longer")
        return replace(out, residual_sd=residual_sd, valley=valley)

    # bootstrap over seeds: weight of a training = how often its seed was drawn
    seed_idx = np.searchsorted(seeds, fitted["seed"].to_numpy())
    boot_b = np.empty(0)
    boot_m = np.empty((0, len(widths)))
    if n_seeds >= 2 and n_boot > 0:
        rng = np.random.default_rng(seed)
        draws = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
        counts = np.stack([(draws == s).sum(axis=1) for s in range(n_seeds)], axis=1)
        bbeta, bok = _solve(X, y, counts[:, seed_idx].astype(float))
        _, boot_b, boot_m = _vertex(bbeta, len(widths), x_mean, z_w)
        boot_b = np.where(bok, boot_b, np.nan)
        boot_m = np.where(np.isfinite(boot_b)[:, None], boot_m, np.nan)  # a resample needs every valley

    slope = Estimate(float(b[0]), *_t_interval(float(b[0]), boot_b, n_seeds))
    shift = Estimate(float(b[0]) * span, *(None if v is None else v * span for v in (slope.lo, slope.hi)))
    optima = []
    for k, (w, lrs, sc, dv, tried, ci) in enumerate(optima_raw):
        if w not in widths:
            optima.append(WidthOptimum(w, lrs, sc, dv, None, float(min(sc)), False, ci))
            continue
        j = widths.index(w)
        lo, hi = _t_interval(float(m[0, j]), boot_m[:, j], n_seeds)
        with np.errstate(over="ignore"):  # an optimum far outside the grid: inf, and at_edge
            best = Estimate(float(np.exp(m[0, j])), None if lo is None else float(np.exp(lo)),
                            None if hi is None else float(np.exp(hi)))
        edge = tried is None or not (tried[0] <= best.value <= tried[1])
        optima.append(WidthOptimum(w, lrs, sc, dv, best, float(min(sc)), edge, ci))

    noise = (f"seed-to-seed SD of log FD {noise_sd:.2f}" if noise_sd is not None
             else f"residual SD of log FD {residual_sd:.2f}" if residual_sd is not None else "noise unknown")
    edges = [o.width for o in optima if o.at_edge]
    d = decide(shift, slope, widths, n_seeds, noise, edges, tolerance)
    return RuleTransfer(rule, tuple(optima), slope, shift, d.transfers, d.text, expected, n_seeds,
                        noise_sd, residual_sd, d.seeds_needed, valley, n_boot if n_seeds >= 2 else 0,
                        tolerance, d.outcome, n_pooled)


def factor_text(log_factor: float) -> str:
    """A shift given in natural log as a factor, "x1.89"; beyond float range (an optimum
    extrapolated from a nearly flat valley) "x>1e300" / "x<1e-300"."""
    if log_factor > 690:
        return "x>1e300"
    if log_factor < -690:
        return "x<1e-300"
    return f"x{math.exp(log_factor):.3g}"


OUTCOMES = ("transfers", "does not transfer", "moves", "inconclusive")
"""The four verdicts of the combined equivalence and difference test (Lakens 2018, Fig. 1)."""


@dataclass(frozen=True)
class Decision:
    """What :func:`decide` concludes about one rule."""

    outcome: str
    """One of ``OUTCOMES``."""
    transfers: bool | None
    """The equivalence answer: True = within the tolerance, False = beyond it, None = undecided
    (also for "moves")."""
    text: str
    seeds_needed: int | None


def decide(shift: Estimate, slope: Estimate, widths: list[int], n_seeds: int, noise: str,
           edges: list[int], tolerance: float = TOLERANCE) -> Decision:
    """The equivalence test on ``shift`` (log LR factor over the widths, with its interval),
    combined with the test of "no shift at all" (Lakens 2018, "Equivalence testing for
    psychological research", Fig. 1: a difference can be significant and yet too small to
    matter, or significant with its size undecided):

    * "transfers": the 95% interval lies within (-tolerance, tolerance);
    * "does not transfer": it lies entirely beyond the tolerance, on one side;
    * "moves": it excludes 0 (the best LR does move with width, in a known direction) but
      overlaps the tolerance, so whether it moves by more than the tolerance is undecided;
    * "inconclusive": it overlaps both 0 and the tolerance (or there is no interval).

    ``edges``: widths whose fitted optimum lies outside the LRs tried; they make any verdict
    "inconclusive". The sentence gives the shift, interval, slope, noise and, where undecided,
    the seeds a decision against the tolerance would need (half width ~ 1/sqrt(seeds)).
    """
    text = f"shift of the best LR over widths {min(widths)}-{max(widths)} {factor_text(shift.value)}"
    needed = None
    if shift.lo is None:
        outcome, transfers = "inconclusive", None
        why = ("one seed, no interval (the bootstrap over seeds needs at least 2)" if n_seeds < 2
               else "unbounded interval (some resamples have no valley)")
        text = f"inconclusive: {text} (slope {slope.value:.2f}); {why}; {noise}; run more seeds"
    else:
        text += (f" [{factor_text(shift.lo)}, {factor_text(shift.hi)}], slope {slope}, "
                 f"tolerance {factor_text(tolerance)}")
        direction = "falls" if shift.value < 0 else "grows"
        if -tolerance < shift.lo and shift.hi < tolerance:
            outcome, transfers, text = "transfers", True, "transfers: " + text
        elif shift.lo > tolerance or shift.hi < -tolerance:
            outcome, transfers = "does not transfer", False
            text = f"does not transfer (best LR {direction} with width): " + text
        else:
            transfers = None
            needed = _seeds_needed(shift.value, shift.lo, shift.hi, n_seeds, tolerance)
            need = ("no number of seeds decides a shift exactly at the tolerance" if needed is None
                    else f"about {needed} seeds would decide against the tolerance"
                    if needed <= MAX_SEEDS_REPORTED
                    else f"more than {MAX_SEEDS_REPORTED} seeds would be needed")
            ratio = _range_needed(slope.value, shift, widths, tolerance)
            if ratio is not None and (needed is None or needed > MAX_SEEDS_REPORTED):
                need += (f"; a wider width range would: at slope {slope.value:.2f}, widths spanning "
                         f"{ratio:.2g}x or more ({min(widths)}-{round(min(widths) * ratio)}) move the best LR "
                         "beyond the tolerance by this interval's half width")
            if shift.lo > 0 or shift.hi < 0:
                outcome = "moves"
                text = (f"moves (best LR {direction} with width; whether by more than "
                        f"{factor_text(tolerance)} is undecided): {text}; {noise}, {n_seeds} seeds; {need}")
            else:
                outcome = "inconclusive"
                text = f"inconclusive: {text}; {noise}, {n_seeds} seeds; {need}"
    if edges:
        if outcome != "inconclusive":
            text = "inconclusive: " + text.split(": ", 1)[1]
        outcome, transfers = "inconclusive", None
        text += (f" (fitted optimum outside the LRs tried at width {', '.join(map(str, edges))}: "
                 "not trusted; widen the LR grid)")
    return Decision(outcome, transfers, text, needed)


def analyse_transfer(points: pd.DataFrame, trials: pd.DataFrame, *, n_boot: int = N_BOOT,
                     seed: int = 0, tolerance: float = TOLERANCE) -> dict[str, RuleTransfer]:
    """LR-transfer analysis per rule from the tidy tables of ``runs.load_sweep``.

    Each rule is fitted to every distinct training it can use (:func:`rule_trainings`: its own and
    the other rules' at the same actual LR setting), so with the same bootstrap seed the rules'
    slopes differ by exactly their LR factors' exponent (gat = constant + 1) and share one
    interval width. ``tolerance``: natural log of the largest shift that counts as transferring.
    Returns {rule: RuleTransfer}; rules whose every trial diverged or has no evaluation yet get a
    RuleTransfer with no fit and an "insufficient data" verdict.
    """
    scores = trial_scores(points, trials)
    return {rule: fit_rule(rule_trainings(scores, rule), rule, n_boot=n_boot, seed=seed,
                           tolerance=tolerance)
            for rule in sorted(trials["lr_rule"].dropna().unique())}
