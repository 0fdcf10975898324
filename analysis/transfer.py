"""Does a learning-rate rule transfer across widths? A noise-aware equivalence test.

Per rule, each width's valley of score (log final FD) against log base LR,
``log FD = a_w + c_w (log lr - m_w)^2``, is fitted below its cliff (the highest LRs whose FD lies
far above the valley's continuation, or where most seeds diverged, are left out and bound the
optimum from above); ``b`` is the least-squares slope of the optima ``m_w`` against log width
(0: the best base LR does not move, -1: it falls as 1/width, which the paper's rule corrects,
docs/METHOD.md §5). Every rule is fitted to every training at its width (its own and those run
for another rule at the same actual LR, :func:`rule_trainings`). Intervals come from a bootstrap
over seeds (Efron & Tibshirani 1993; Field & Welsh 2007 for the cluster bootstrap) with a robust
SD and a small-sample t factor; the verdict is an equivalence test on the optimum's shift over
the widths, tolerance a factor 2 (Schuirmann 1987; Lakens 2018, Fig. 1: transfers, does not
transfer, moves, inconclusive). The line of optima also predicts the best LR at other widths,
backtested on the largest width. docs/ANALYSIS.md, "LR transfer", gives every rule and the
simulation study of the verdicts' error rates (``analysis.simulation``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
from scipy import stats

from analysis.fit import Estimate
from core.config import SIZES
from core.records import DIVERGED, EXCLUDED_STATUSES, FINAL_EVALS, TRANSFER_TOLERANCE, final_fd

PAPER_EXPECTATION = {
    "constant": "paper: best LR falls with width (negative slope)",
    "gat": "paper: transfers (slope near 0)",
    "mup": "no paper prediction (muP-style rule)",
}


def expectation(rule: str) -> str:
    """What is expected of ``rule``'s verdict: the paper's expectation, or for a ``power<a>`` rule
    (the exponent an earlier sweep measured) that it transfers if that exponent holds."""
    if rule.startswith("power"):
        exponent = 0.0 - float(rule[len("power"):]) + 0.0  # no "-0"
        return f"transfers if the best LR keeps scaling as width^{exponent:g} (a measured exponent)"
    return PAPER_EXPECTATION.get(rule, "no paper prediction")
LEVEL = 0.95
TOLERANCE = math.log(TRANSFER_TOLERANCE)
"""Largest |shift| of the optimum (natural log of the LR factor) over the sweep's width range
that still counts as "transfers": a factor 2."""
SCORE_EVALS = FINAL_EVALS
"""Evaluations averaged (in log FD) into a trial's score (its final FD's)."""
N_BOOT = 1000
PAPER_WIDTHS = tuple(net.width for net in SIZES.values())
"""Widths of the paper's GAT-S, -B, -L and -XL (384, 768, 1024, 1152; docs/METHOD.md §6): the
default target widths of the LR predictions."""
MAX_SEEDS_REPORTED = 100
"""Seed estimates above this are reported as "more than 100"."""
MAX_RANGE_REPORTED = 1e4
"""Widest width ratio the report suggests (a nearly flat slope would ask for absurd ranges)."""


def trial_score(fd: np.ndarray, status: str) -> float:
    """Score of one trial from its FD history ``fd`` (ascending iteration), in log FD units: the
    log of its final FD (``core.records.final_fd``, the geometric mean of the last
    ``SCORE_EVALS`` evaluations), +inf when ``status == 'diverged'`` or one of those values is
    non-finite or not positive. Raises ValueError for an empty history of a trial that did not diverge.
    """
    if status == DIVERGED:
        return math.inf
    if len(fd) == 0:
        raise ValueError("no evaluation to score")
    return math.log(final_fd(fd))


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

CLIFF_PENALTY = 3.0
"""BIC factor of leaving a usable LR out of a valley: a highest LR leaves it when that lowers the
valley's chi-square (residuals over the seed-to-seed variance) by more than ``CLIFF_PENALTY x
log(trainings at the width)`` (about 11 for 40 trainings: strong evidence, Kass & Raftery 1995)."""
FAILED_SHARE = 0.5
"""An LR at which at least this share of the seeds diverged is failed: it bounds the valley."""


@dataclass(frozen=True)
class Valley:
    """Full-data fit per width of ``log FD = a_w + c_w (log lr - m_w)^2`` below its cliff, and the
    line ``m = v0 + b log(w / w_ref)`` fitted to the optima ``m_w`` by least squares."""

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
    cliffs: tuple[float, ...] = ()
    """Per width, the lowest base LR left out of the valley above its optimum (the cliff: failed,
    or far above the valley's continuation); inf where none was."""

    def log_fd(self, width: int, lr: np.ndarray) -> np.ndarray:
        """Fitted log FD at ``width`` and base LRs ``lr`` (same shape as ``lr``)."""
        j = self.widths.index(width)
        return self.offsets[j] + self.curvatures[j] * (np.log(np.asarray(lr, float)) - self.log_optima[j]) ** 2


@dataclass(frozen=True)
class _WidthFit:
    """One width's valley for every bootstrap row (row 0: the full data)."""

    log_optimum: np.ndarray
    """(B+1,) ``m_w``; NaN where the row has no valley."""
    curvature: float
    offset: float
    lowest: float
    """Log of the lowest LR in the full-data valley."""
    upper: float
    """Log of the highest LR an optimum may have: the full-data cliff, else the highest LR kept."""
    cliff: float
    """Log of the full data's cliff (lowest LR left out above the best), inf without one."""
    left_out: tuple[float, ...]
    """Base LRs the full-data fit left out above the optimum (not failed ones)."""


def _quadratic(x: np.ndarray, weights: np.ndarray, y: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted least squares of ``y ~ p0 + p1 (x - x.mean()) + p2 (x - x.mean())^2`` for every
    row of ``weights`` (B, L) and ``y`` (B, L) (cell means; weight 0 = not used).

    Returns (coefficients (B, 3), chi-square numerator sum w (y - fit)^2 (B,), identifiable (B,)).
    """
    xc = x - x.mean()
    X = np.stack([np.ones_like(x), xc, xc**2], axis=1)
    y = np.where(weights > 0, y, 0.0)
    xtwx = np.einsum("bl,li,lj->bij", weights, X, X)
    xtwy = np.einsum("bl,li,bl->bi", weights, X, y)
    eig = np.linalg.eigvalsh(xtwx)
    ok = eig[:, 0] > 1e-9 * np.maximum(eig[:, -1], 1e-300)
    beta = np.linalg.solve(np.where(ok[:, None, None], xtwx, np.eye(3)), xtwy[..., None])[..., 0]
    sse = np.einsum("bl,bl->b", weights, (y - beta @ X.T) ** 2)
    return beta, sse, ok


def _width_valley(x: np.ndarray, scores: np.ndarray, counts: np.ndarray, variance: float) -> _WidthFit:
    """Fit one width's valley below its cliff, for every bootstrap row of ``counts``.

    ``x``: log base LRs (L,), ascending; ``scores``: (S, L) per seed and LR (log FD; +inf =
    diverged, NaN = not trained); ``counts``: (B+1, S) how often each seed is drawn (row 0: all
    ones); ``variance``: the seed-to-seed variance of a score.

    Per row: an LR is *failed* when at least :data:`FAILED_SHARE` of its drawn seeds diverged. The
    valley is a quadratic in log LR fitted to the cell means (weights: the seeds drawn) of the usable
    LRs below a split above the row's best LR; at most up to the first failed LR above the best,
    and further down when leaving the highest usable LRs out lowers the chi-square by more than
    :data:`CLIFF_PENALTY` x log(trainings) each (the cliff: FD back near its untrained value one
    LR step above the best, docs/ANALYSIS.md). A row whose fit has no positive curvature, or fewer
    than 3 LRs, has no valley (NaN).
    """
    finite, diverged = np.isfinite(scores), np.isinf(scores)
    present = (finite | diverged).astype(float)
    weight = counts @ finite.astype(float)                       # (B+1, L) seeds drawn with a score
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (counts @ np.where(finite, scores, 0.0)) / weight
        failed_share = (counts @ diverged.astype(float)) / (counts @ present)
    usable = (weight > 0) & ~(failed_share >= FAILED_SHARE)
    rows, n_lr = weight.shape
    index = np.arange(n_lr)[None, :]
    best = np.argmin(np.where(usable, mean, np.inf), axis=1)
    failed_above = (index > best[:, None]) & ~usable & (counts @ present > 0)
    first_failed = np.where(failed_above, index, n_lr).min(axis=1)
    penalty = CLIFF_PENALTY * math.log(max(float(present.sum()), 2.0))
    criterion = np.full((rows, n_lr + 1), np.inf)
    optimum = np.full((rows, n_lr + 1), np.nan)
    fits = {}
    for split in range(1, n_lr + 1):                            # LRs at and above `split` are out
        below = usable & (index < split)
        beta, sse, ok = _quadratic(x, np.where(below, weight, 0.0), mean)
        with np.errstate(invalid="ignore", divide="ignore"):
            optimum[:, split] = np.where(beta[:, 2] > 0, x.mean() - beta[:, 1] / (2 * beta[:, 2]), np.nan)
        left_out = (usable & (index >= split) & (index < first_failed[:, None])).sum(axis=1)
        valid = ok & (split > best) & (split <= first_failed) & (below.sum(axis=1) >= 3)
        criterion[:, split] = np.where(valid, sse / variance + penalty * left_out, np.inf)
        fits[split] = beta[0]
    pick = np.argmin(criterion, axis=1)
    chosen = np.where(np.isfinite(criterion[np.arange(rows), pick]), optimum[np.arange(rows), pick], np.nan)
    split = int(pick[0])
    kept = usable[0] & (np.arange(n_lr) < split)
    if not np.isfinite(criterion[0, split]) or not kept.any():
        return _WidthFit(chosen, math.nan, math.nan, math.nan, math.nan, math.inf, ())
    beta = fits[split]
    curvature = float(beta[2])
    offset = float(beta[0] - beta[1] ** 2 / (4 * beta[2])) if curvature > 0 else math.nan
    cliff = float(x[split]) if split < n_lr else math.inf
    left = tuple(float(np.exp(v)) for v in x[(np.arange(n_lr) >= split) & usable[0]])
    return _WidthFit(chosen, curvature, offset, float(x[kept].min()),
                     cliff if split < n_lr else float(x[kept].max()), cliff, left)


def _slopes(log_optima: np.ndarray, z_w: np.ndarray) -> np.ndarray:
    """Least-squares slopes (B,) of the optima (B, W) against centred log widths ``z_w`` (W,);
    NaN where some width has no valley."""
    zc = z_w - z_w.mean()
    return (log_optima - log_optima.mean(axis=1, keepdims=True)) @ zc / (zc @ zc)


def _t_interval(point: float, boot: np.ndarray, n_seeds: int) -> tuple[float | None, float | None]:
    """``point +- t(n_seeds - 1) sqrt(n/(n-1)) SD`` with a robust bootstrap SD: half the distance
    between the 15.9% and 84.1% quantiles of ``boot`` (the SD of a normal distribution), where a
    NaN (a resample with no valley at some width) counts as the most extreme value, half of them on
    each side. (None, None) with one seed, or when those quantiles are infinite (about a third of the
    resamples have no valley: the optimum is not located)."""
    if n_seeds < 2 or len(boot) == 0:
        return None, None
    missing = int(np.isnan(boot).sum())
    ranked = np.concatenate([np.full(missing // 2, -np.inf), np.sort(boot[~np.isnan(boot)]),
                             np.full(missing - missing // 2, np.inf)])
    lo, hi = np.quantile(ranked, [stats.norm.cdf(-1), stats.norm.cdf(1)], method="inverted_cdf")
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return None, None
    half = stats.t.ppf(0.5 + LEVEL / 2, n_seeds - 1) * math.sqrt(n_seeds / (n_seeds - 1)) * (hi - lo) / 2
    return float(point - half), float(point + half)


# ---- predictions ---------------------------------------------------------------------------------

def _shifted(e: Estimate, by: float) -> Estimate:
    """``e`` moved by ``by`` (value and both interval ends)."""
    return Estimate(e.value + by, None if e.lo is None else e.lo + by, None if e.hi is None else e.hi + by)


def _exp(e: Estimate) -> Estimate:
    """exp of a log-scale estimate (overflow: inf)."""
    with np.errstate(over="ignore"):
        return Estimate(float(np.exp(e.value)), None if e.lo is None else float(np.exp(e.lo)),
                        None if e.hi is None else float(np.exp(e.hi)))


@dataclass(frozen=True)
class RuleFactor:
    """A rule's LR factor ``k(w) = lr_g / base_lr`` as a power of width, ``log k = log_k0 + exponent
    log w``, least squares over the rule's own trials (exact for every rule of
    core/lr_rules.py: constant 0, gat -1, ``power<a>`` -a; muP-style rules keep lr_g = base_lr
    and scale per-kind multipliers instead, exponent 0)."""

    log_k0: float
    exponent: float

    def log_at(self, width: float) -> float:
        """log k at ``width``."""
        return self.log_k0 + self.exponent * math.log(width)


def _rule_factor(scores: pd.DataFrame) -> RuleFactor | None:
    """The factor of the rule's own rows (``pooled`` False) of :func:`rule_trainings`; None with
    fewer than 2 widths or without an ``lr`` column."""
    if "lr" not in scores:   # base LRs only (no actual LR logged): no factor
        return None
    own = scores[~scores["pooled"]] if "pooled" in scores else scores
    own = own[np.isfinite(own["lr"].astype(float)) & (own["lr"] > 0) & (own["base_lr"] > 0)]
    if own["width"].nunique() < 2:
        return None
    z = np.log(own["width"].to_numpy(float))
    k = np.log(own["lr"].to_numpy(float) / own["base_lr"].to_numpy(float))
    exponent, log_k0 = np.polyfit(z, k, 1)
    return RuleFactor(float(log_k0), float(exponent))


@dataclass(frozen=True)
class LRPrediction:
    """The best LR a rule's fitted line predicts at one width."""

    width: float
    base_lr: Estimate
    """The rule's best base LR there, with its 95% interval (bootstrap over seeds)."""
    actual_lr: Estimate | None
    """G's actual LR there (base LR x the rule's factor at that width); None without a factor."""
    extrapolation: float
    """``width / largest fitted width``: above 1 the prediction extrapolates the line."""

    def to_dict(self) -> dict:
        return {"width": self.width, "base_lr": self.base_lr.to_dict(),
                "actual_lr": None if self.actual_lr is None else self.actual_lr.to_dict(),
                "extrapolation": self.extrapolation}


def predict_lr(res: RuleTransfer, width: float) -> LRPrediction | None:
    """Best base and actual LR of ``res``'s rule at ``width`` from its line of optima
    ``m = v0 + b log(w / w_ref)``: the point from the full-data fit, the interval from the line
    refitted in every bootstrap resample (robust SD x t, as the slope's). None without a line."""
    valley = res.valley
    if valley is None or not math.isfinite(valley.b) or res.boot_log_optima is None:
        return None
    z_w = np.log(np.array(valley.widths, float) / valley.w_ref)
    z = math.log(width / valley.w_ref)
    point = valley.v0 + valley.b * z
    boot = res.boot_log_optima
    slopes = _slopes(boot, z_w)
    predicted = boot.mean(axis=1) - slopes * z_w.mean() + slopes * z
    base = Estimate(point, *_t_interval(point, predicted, res.n_seeds))
    actual = None if res.factor is None else _exp(_shifted(base, res.factor.log_at(width)))
    return LRPrediction(float(width), _exp(base), actual, float(width) / max(valley.widths))


@dataclass(frozen=True)
class LRBacktest:
    """The largest fitted width's best base LR predicted by the fit without it, against the full fit."""

    held_out: int
    fitted_widths: tuple[int, ...]
    predicted: Estimate
    measured: Estimate
    grid_step: float
    """The LR ratio between neighbouring LRs tried at the held-out width (2 for a factor-2 grid)."""

    @property
    def error(self) -> float:
        """predicted / measured best LR."""
        return self.predicted.value / self.measured.value

    @property
    def grid_steps(self) -> float:
        """The error in LR-grid steps (log error / log grid step)."""
        return math.log(self.error) / math.log(self.grid_step)

    @property
    def covered(self) -> bool | None:
        """Whether the measured optimum lies inside the prediction's interval (None without one)."""
        if self.predicted.lo is None or self.predicted.hi is None:
            return None
        return self.predicted.lo <= self.measured.value <= self.predicted.hi

    def to_dict(self) -> dict:
        return {"held_out": self.held_out, "fitted_widths": list(self.fitted_widths),
                "predicted": self.predicted.to_dict(), "measured": self.measured.to_dict(),
                "error": self.error, "grid_steps": self.grid_steps, "covered": self.covered}


def _local_slopes(log_optima: np.ndarray, widths: list[int], n_seeds: int) -> tuple[tuple[int, int, Estimate], ...]:
    """Slope of log best LR between each pair of consecutive widths, with its interval."""
    out = []
    for i in range(len(widths) - 1):
        span = math.log(widths[i + 1] / widths[i])
        local = (log_optima[:, i + 1] - log_optima[:, i]) / span
        out.append((widths[i], widths[i + 1], Estimate(float(local[0]), *_t_interval(float(local[0]), local[1:], n_seeds))))
    return tuple(out)


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
    """True when the fitted optimum lies outside the LRs of its valley (below the lowest, or at or
    above the cliff; without a cliff, above the highest)."""
    common_iter: int
    left_out_lrs: tuple[float, ...] = ()
    """LRs above the optimum left out of the valley (the cliff and above, failed ones excluded)."""
    pooled_lrs: tuple[float, ...] = ()
    """LRs whose every training was run for another rule (:func:`rule_trainings`)."""


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
    boot_log_optima: np.ndarray | None = field(default=None, repr=False, compare=False)
    """(n_boot, widths of ``valley``) log best base LR per bootstrap resample (NaN: no valley)."""
    factor: RuleFactor | None = None
    """The rule's LR factor ``lr_g / base_lr`` against width, read from its own trials."""
    local_slopes: tuple[tuple[int, int, Estimate], ...] = ()
    """(width, next width, slope of log best LR between them with its interval) for consecutive
    fitted widths: a bend shows as local slopes that differ."""
    backtest: LRBacktest | str | None = None
    """The largest width's optimum predicted from the others (:class:`LRBacktest`), or why not."""

    @property
    def actual_slope(self) -> Estimate | None:
        """Exponent of the best *actual* LR (G's) against width: the slope plus the rule factor's
        exponent (the same for every rule fitted to the same trainings)."""
        if self.slope is None or self.factor is None:
            return None
        return _shifted(self.slope, self.factor.exponent)

    @property
    def slope_ci(self) -> tuple[float, float] | None:
        """(lo, hi) of the slope, None without an interval."""
        if self.slope is None or self.slope.lo is None:
            return None
        return self.slope.lo, self.slope.hi

    def to_dict(self) -> dict:
        """JSON-ready summary (non-finite values become None in report._no_nan)."""
        def est(e: Estimate | None) -> dict | None:
            return None if e is None else e.to_dict()

        return {
            "rule": self.rule, "model": ("log FD = a_w + c_w (log lr - m_w)^2 per width below its cliff; "
                                         "m_w ~ v0 + b log(w/w_ref)"),
            "slope": est(self.slope), "shift": est(self.shift), "tolerance_log": self.tolerance,
            "level": LEVEL, "interval": "bootstrap over seeds, robust SE x t(n_seeds-1) x sqrt(n/(n-1))",
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
                        "diverged_lrs": list(o.diverged_lrs), "left_out_lrs": list(o.left_out_lrs),
                        "pooled_lrs": list(o.pooled_lrs)}
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
    (its standard error is ~ sqrt(2) x a width's optimum's for two widths, whatever their ratio;
    measured on the 8-seed sweeps, docs/RESULTS.md)."""
    if slope == 0 or shift.lo is None or shift.hi is None:
        return None
    log_ratio = (tol + (shift.hi - shift.lo) / 2) / abs(slope)
    if log_ratio <= math.log(max(widths) / min(widths)) or log_ratio > math.log(MAX_RANGE_REPORTED):
        return None     # the sweep's range already suffices, or no practical range would
    return math.exp(log_ratio)


def fit_rule(scores: pd.DataFrame, rule: str = "", *, n_boot: int = N_BOOT, seed: int = 0,
             tolerance: float = TOLERANCE, backtest: bool = True) -> RuleTransfer:
    """Fit the valley model to one rule's trial scores and decide (module docstring).

    Args:
        scores: rows of :func:`trial_scores` for one rule (columns ``width, base_lr, seed,
            score, common_iter``; ``score`` in log FD, +inf = diverged).
        rule: the rule's name (for the paper expectation).
        n_boot: bootstrap resamples over seeds (the test suite uses fewer).
        seed: seed of the resampling (same seed, same intervals).
        tolerance: largest |shift| (natural log) that counts as transferring; default log 2.
        backtest: with 3 or more fitted widths, also refit without the largest and predict its
            optimum (:class:`LRBacktest`).

    Never raises on thin data: it returns a RuleTransfer whose verdict says what is missing.
    """
    expected = expectation(rule)
    n_pooled = int(scores["pooled"].sum()) if "pooled" in scores else 0
    finite = scores[np.isfinite(scores["score"].astype(float))]   # an empty column is of dtype object
    seeds = sorted(scores["seed"].unique().tolist())
    n_seeds = len(finite["seed"].unique())
    noise_sd = _pooled_cell_sd(finite)
    counts = np.ones((1, len(seeds)))
    if n_seeds >= 2 and n_boot > 0:
        draws = np.random.default_rng(seed).integers(0, len(seeds), size=(n_boot, len(seeds)))
        counts = np.vstack([counts, np.stack([(draws == s).sum(axis=1) for s in range(len(seeds))], axis=1)])
    tables = {}
    for width, group in scores.groupby("width"):
        table = group.pivot_table(index="seed", columns="base_lr", values="score", aggfunc="mean")
        tables[int(width)] = table.reindex(index=seeds)
    variance = noise_sd**2 if noise_sd else _residual_variance(tables)
    fits = {w: _width_valley(np.log(t.columns.to_numpy(float)), t.to_numpy(float), counts, variance)
            for w, t in tables.items()}

    optima, widths = [], []
    for w, table in tables.items():
        lrs = tuple(float(v) for v in table.columns)
        cells = table.to_numpy(float)
        with np.errstate(invalid="ignore"):
            means = [np.mean(c[np.isfinite(c)]) if np.isfinite(c).any() else math.inf for c in cells.T]
        per_lr = tuple(float(np.exp(v)) for v in means)
        diverged = tuple(lr for lr, c in zip(lrs, cells.T) if np.isinf(c).any())
        common = int(scores.loc[scores["width"] == w, "common_iter"].iloc[0]) if "common_iter" in scores else -1
        fit = fits[w]
        m = float(fit.log_optimum[0])
        best = None
        if np.isfinite(m):
            widths.append(w)
            lo, hi = _t_interval(m, fit.log_optimum[1:], n_seeds)
            with np.errstate(over="ignore"):  # an optimum far outside the grid: inf, and at_edge
                best = Estimate(float(np.exp(m)), None if lo is None else float(np.exp(lo)),
                                None if hi is None else float(np.exp(hi)))
        edge = best is not None and not (fit.lowest - 1e-9 <= m <= fit.upper + 1e-9)
        at_width = scores[scores["width"] == w]
        pooled = at_width.groupby("base_lr")["pooled"].all() if "pooled" in at_width else pd.Series(dtype=bool)
        optima.append(WidthOptimum(w, lrs, per_lr, diverged, best, float(min(per_lr)), edge, common,
                                   fit.left_out, tuple(float(lr) for lr, p in pooled.items() if p)))
    optima = tuple(optima)

    factor = _rule_factor(scores)

    def plain(verdict_text: str, valley: Valley | None = None) -> RuleTransfer:
        return RuleTransfer(rule, optima, None, None, None, verdict_text, expected, n_seeds, noise_sd,
                            None, None, valley, 0, tolerance, "inconclusive", n_pooled, factor=factor)

    fitted_widths = [w for w, f in fits.items() if np.isfinite(f.curvature)]
    if len(fitted_widths) < 2:
        return plain(f"insufficient data: a valley (finite scores at 3 or more distinct LRs) at "
                     f"{len(fitted_widths)} width(s); need at least 2 such widths")
    w_ref = float(np.exp(np.mean(np.log(fitted_widths))))
    z_w = np.log(np.array(fitted_widths, float) / w_ref)
    log_optima = np.stack([fits[w].log_optimum for w in fitted_widths], axis=1)     # (B+1, W)
    b = _slopes(log_optima, z_w)
    valley = Valley(tuple(fitted_widths), tuple(fits[w].offset for w in fitted_widths),
                    tuple(fits[w].curvature for w in fitted_widths), tuple(log_optima[0].tolist()),
                    float(np.mean(log_optima[0]) - b[0] * np.mean(z_w)) if np.isfinite(b[0]) else math.nan,
                    float(b[0]), w_ref, tuple(float(np.exp(fits[w].cliff)) for w in fitted_widths))
    if not np.isfinite(b[0]):
        flat = ", ".join(f"{w} (fitted curvature {fits[w].curvature:.3g}, not > 0)" for w in fitted_widths
                         if not fits[w].curvature > 0)
        return plain(f"inconclusive: no valley at width {flat}: FD does not rise "
                     "on both sides of any LR tried there; widen the LR grid or train longer", valley)

    span = math.log(max(fitted_widths) / min(fitted_widths))
    slope = Estimate(float(b[0]), *_t_interval(float(b[0]), b[1:], n_seeds))
    shift = Estimate(float(b[0]) * span, *(None if v is None else v * span for v in (slope.lo, slope.hi)))
    noise = f"seed-to-seed SD of log FD {noise_sd:.2f}" if noise_sd is not None else "noise unknown (one seed)"
    edges = [o.width for o in optima if o.at_edge]
    d = decide(shift, slope, fitted_widths, n_seeds, noise, edges, tolerance)
    result = RuleTransfer(rule, optima, slope, shift, d.transfers, d.text, expected, n_seeds, noise_sd,
                          _residual_sd(tables, fits), d.seeds_needed, valley, len(counts) - 1, tolerance,
                          d.outcome, n_pooled, log_optima[1:], factor,
                          _local_slopes(log_optima, fitted_widths, n_seeds))
    if backtest and len(fitted_widths) >= 3:
        result = replace(result, backtest=_backtest(scores, result, n_boot=n_boot, seed=seed))
    return result


def _backtest(scores: pd.DataFrame, full: RuleTransfer, *, n_boot: int, seed: int) -> LRBacktest | str:
    """Refit ``full``'s rule without its largest fitted width and predict that width's optimum
    (:class:`LRBacktest`); a sentence saying why not when the smaller fit has no line."""
    largest = max(full.valley.widths)
    smaller = fit_rule(scores[scores["width"] != largest], full.rule, n_boot=n_boot, seed=seed, backtest=False)
    predicted = predict_lr(smaller, largest)
    measured = next(o for o in full.optima if o.width == largest)
    if predicted is None or measured.best_lr is None:
        return f"no backtest: without width {largest}, {smaller.verdict}"
    step = float(np.exp(np.median(np.diff(np.log(measured.lrs))))) if len(measured.lrs) > 1 else 2.0
    return LRBacktest(largest, smaller.valley.widths, predicted.base_lr, measured.best_lr, step)


def _residual_variance(tables: dict[int, pd.DataFrame]) -> float:
    """Variance of the scores around a quadratic per width with no LR left out (with one seed the
    seed-to-seed variance is unknown; this one includes misfit, so it leaves out fewer LRs);
    inf when there is no residual degree of freedom."""
    sse, dof = 0.0, 0
    for table in tables.values():
        x = np.log(table.columns.to_numpy(float))
        cells = table.to_numpy(float)
        weight = np.isfinite(cells).sum(axis=0)[None, :].astype(float)
        with np.errstate(invalid="ignore"):
            mean = np.nanmean(np.where(np.isfinite(cells), cells, np.nan), axis=0)[None, :]
        _, chi, ok = _quadratic(x, np.where(weight > 0, weight, 0.0), np.nan_to_num(mean))
        if ok[0]:
            sse += float(chi[0]) + float(np.nansum((np.where(np.isfinite(cells), cells, np.nan) - mean) ** 2))
            dof += int(weight.sum()) - 3
    return sse / dof if dof > 0 else math.inf


def _residual_sd(tables: dict[int, pd.DataFrame], fits: dict[int, _WidthFit]) -> float | None:
    """SD of the scores in the fitted valleys around them (noise plus misfit), None without dof."""
    sse, n, params = 0.0, 0, 0
    for w, table in tables.items():
        fit = fits[w]
        if not fit.curvature > 0:
            continue
        x = np.log(table.columns.to_numpy(float))
        inside = (x >= fit.lowest - 1e-9) & (x < fit.cliff - 1e-9)
        cells = table.to_numpy(float)[:, inside]
        model = fit.offset + fit.curvature * (x[inside] - fit.log_optimum[0]) ** 2
        ok = np.isfinite(cells)
        sse += float(((cells - model[None, :])[ok] ** 2).sum())
        n, params = n + int(ok.sum()), params + 3
    return math.sqrt(sse / (n - params)) if n > params else None


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
