"""Scaling-law fits of FD/FID against training compute, with bootstrap intervals.

Two models, both fitted in log space to the compute-efficient frontier (see ``frontier.py``):

* ``saturating``: ``FD(C) = E + A * C**(-alpha)`` (irreducible term E, as in Kaplan et al. 2020 /
  Hoffmann et al. 2022, "Chinchilla", eq. 2, with compute as the only variable);
* ``power``: ``FD(C) = A * C**(-alpha)`` (the form of the GAT paper's compute law, ICML version:
  FID ~ 3.52e5 * C^-0.456, C in GFLOPs).

Estimator: minimise ``sum_i huber(log FD_model(C_i) - log FD_i)`` (Huber, 1964; scipy's
``least_squares(loss='huber', f_scale=HUBER_SCALE)``), so one bad evaluation cannot drag the fit.
Compute is divided by its geometric mean ``c_ref`` before fitting: the optimisation is then the same
problem whatever the unit of C (FLOPs, GFLOPs, PFLOP-days), so ``alpha`` and ``E`` do not depend on
it and only ``A`` is rescaled, ``A = A_norm * c_ref**alpha``. Parameters are bounded
(``0 <= alpha <= ALPHA_MAX``, ``0 <= E <= min FD``) and the point estimate is the best of several
starts.

Intervals are percentile intervals of a seeded case bootstrap (Efron & Tibshirani 1993, ch. 13):
resample the frontier points with replacement, refit, take the 2.5/97.5 percentiles. The refits
run vectorised over all resamples (``_huber_gauss_newton``), starting from the full-data optimum;
a test checks that they agree with scipy's solver. Resamples with too few distinct compute values
to identify the model are skipped and counted (``n_boot_ok``).

Nothing here returns NaN: unusable input gives a ``ScalingFit`` with ``ok=False`` and a ``reason``;
excluded points are listed in ``notes``; unbounded or undefined quantities are ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from analysis.frontier import MIN_LAW_SIZES, compute_frontier, law_refusal

Model = Literal["saturating", "power"]

HUBER_SCALE = 0.1
"""Huber threshold in log-FD units: residuals beyond ~10% of the FD count linearly, not squared."""
ALPHA_MAX = 5.0
"""Upper bound of the exponent (scaling exponents seen in practice are 0.05 - 1)."""
MIN_POINTS: dict[str, int] = {"power": 3, "saturating": 4}
"""Fewest usable points per model: one more than its parameter count, so a fit has a residual."""
N_PARAMS: dict[str, int] = {"power": 2, "saturating": 3}
LEVEL = 0.95
"""Confidence level of every interval."""
MIN_BOOT_FRACTION = 0.5
"""Intervals are reported only if at least this fraction of the resamples could be refitted."""


# ---- model in normalised units: p = (a, alpha, E), FD = E + exp(a) * x**(-alpha), x = C / c_ref ----

def _model_log(p: np.ndarray, lx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log FD and its Jacobian for parameters ``p`` (..., 3) at ``lx = log x`` (..., n).

    Returns (log FD (..., n), d log FD / d p (..., n, 3)). The power law is ``E = 0``.
    """
    a, alpha, e = p[..., 0:1], p[..., 1:2], p[..., 2:3]
    term = np.exp(a - alpha * lx)
    total = e + term
    frac = term / total
    jac = np.stack([frac, -lx * frac, 1.0 / total], axis=-1)
    return np.log(total), jac


def _huber(r: np.ndarray, scale: float) -> np.ndarray:
    """Huber loss of residuals ``r`` (same as scipy's ``loss='huber'`` up to a constant factor)."""
    ar = np.abs(r)
    return np.where(ar <= scale, 0.5 * r**2, scale * ar - 0.5 * scale**2)


def _huber_gauss_newton(lx: np.ndarray, y: np.ndarray, p0: np.ndarray, lower: np.ndarray,
                        upper: np.ndarray, free: np.ndarray, max_iter: int = 200,
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Minimise the Huber cost for a batch of independent problems at once.

    Gauss-Newton on the Huber cost (gradient ``J^T psi(r)``, curvature ``J^T J`` over the
    residuals inside the Huber threshold) with Levenberg-Marquardt damping (Marquardt 1963),
    projection onto the box bounds and an active set (a variable at a bound that the gradient
    pushes outwards is frozen for the step); a step is kept only if it lowers that problem's
    Huber cost.
    Shapes: ``lx, y`` (B, n); ``p0, lower, upper`` (B, 3); ``free`` (3,) bool, False entries stay
    at ``p0`` (E for the power law). Returns (parameters (B, 3), converged (B,) bool).
    """
    p = np.clip(p0, lower, upper)
    k = int(free.sum())
    cost = _huber(_model_log(p, lx)[0] - y, HUBER_SCALE).sum(axis=1)
    damping = np.full(len(p), 1e-3)
    done = np.zeros(len(p), dtype=bool)
    for _ in range(max_iter):
        log_fd, jac = _model_log(p, lx)
        r = log_fd - y
        jac = jac[..., free]
        # Huber: gradient J^T psi(r); Gauss-Newton curvature only from residuals in the quadratic zone
        inlier = np.abs(r) <= HUBER_SCALE
        psi = np.where(inlier, r, HUBER_SCALE * np.sign(r))
        jt = np.swapaxes(jac, 1, 2)                                  # (B, k, n)
        hess = (jt * inlier[:, None, :]) @ jac                       # (B, k, k)
        grad = (jt @ psi[..., None])[..., 0]                         # (B, k)
        scale = np.maximum(np.diagonal(jt @ jac, axis1=1, axis2=2), 1e-12)  # Marquardt scaling
        # Variables held at a bound by the gradient are frozen for this step (active set).
        pf, lf, uf = p[:, free], lower[:, free], upper[:, free]
        active = ((pf <= lf) & (grad > 0)) | ((pf >= uf) & (grad < 0))
        eye = np.eye(k)
        keep = (~active)[:, :, None] & (~active)[:, None, :]
        hess = np.where(keep, hess, 0.0) + active[:, :, None] * eye
        grad = np.where(active, 0.0, grad)
        system = hess + damping[:, None, None] * (scale[:, :, None] * eye)
        step = np.linalg.solve(system, grad[..., None])[..., 0]
        trial = p.copy()
        trial[:, free] = p[:, free] - step
        trial = np.clip(trial, lower, upper)
        trial_cost = _huber(_model_log(trial, lx)[0] - y, HUBER_SCALE).sum(axis=1)
        better = (trial_cost < cost) & ~done
        negligible = (cost - trial_cost <= 1e-10 * (1.0 + cost)) | (
            np.abs(trial - p).max(axis=1) <= 1e-9 * (1.0 + np.abs(p).max(axis=1)))
        stalled = ~better & (damping > 1e10)  # no step lowers the cost even heavily damped: a minimum
        done |= (better & negligible) | stalled
        p = np.where(better[:, None], trial, p)
        cost = np.where(better, trial_cost, cost)
        damping = np.where(better, damping / 3.0, damping * 3.0)
        if done.all():
            break
    return p, done


def _bounds(model: Model, fd_min: np.ndarray, lx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Box bounds (B, 3) for problems whose smallest FD is ``fd_min`` (B,)."""
    span = float(np.abs(lx).max()) * ALPHA_MAX
    n = len(fd_min)
    lower = np.column_stack([np.full(n, -50.0 - span), np.zeros(n), np.zeros(n)])
    e_max = fd_min if model == "saturating" else np.zeros(n)
    upper = np.column_stack([np.full(n, 50.0 + span), np.full(n, ALPHA_MAX), e_max])
    return lower, upper


def _fit_point(model: Model, lx: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Best of several scipy ``least_squares`` (Huber) starts on the full data; returns p (3,)."""
    lower, upper = _bounds(model, np.array([np.exp(y.min())]), lx)
    free = np.array([True, True, model == "saturating"])
    lower, upper = lower[0, free], upper[0, free]

    def full(q: np.ndarray) -> np.ndarray:  # (a, alpha[, E]) -> (a, alpha, E), E = 0 if fixed
        p = np.zeros(3)
        p[free] = q
        return p

    def residual(q: np.ndarray) -> np.ndarray:
        return _model_log(full(q), lx)[0] - y

    def jacobian(q: np.ndarray) -> np.ndarray:
        return _model_log(full(q), lx)[1][:, free]

    fd_mid, fd_min = float(np.exp(y.mean())), float(np.exp(y.min()))
    best = None
    for alpha0 in (0.05, 0.2, 0.5, 1.0, 2.0):
        for e0 in ((0.0, 0.5 * fd_min, 0.9 * fd_min) if model == "saturating" else (0.0,)):
            start = np.array([np.log(max(fd_mid - e0, 1e-3 * fd_mid)), alpha0, e0])[free]
            sol = least_squares(residual, np.clip(start, lower, upper), jac=jacobian,
                                bounds=(lower, upper), loss="huber", f_scale=HUBER_SCALE, x_scale="jac",
                                ftol=1e-12, xtol=1e-12, gtol=1e-12)
            if best is None or sol.cost < best.cost:
                best = sol
    return full(best.x)


@dataclass(frozen=True)
class Estimate:
    """A fitted quantity and its bootstrap interval (``lo``/``hi`` None if unavailable or unbounded)."""

    value: float
    lo: float | None
    hi: float | None

    def to_dict(self) -> dict[str, float | None]:
        return {"value": self.value, "lo": self.lo, "hi": self.hi}

    def __str__(self) -> str:
        if self.lo is None and self.hi is None:
            return f"{self.value:.4g}"
        lo = "-inf" if self.lo is None else f"{self.lo:.4g}"
        hi = "inf" if self.hi is None else f"{self.hi:.4g}"
        return f"{self.value:.4g} [{lo}, {hi}]"


def _finite_or_none(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


def _interval(samples: np.ndarray) -> tuple[float | None, float | None]:
    """Percentile interval at LEVEL (no interpolation, so +inf samples give an open end: None)."""
    if len(samples) == 0:
        return None, None
    q = (1 - LEVEL) / 2
    lo, hi = np.quantile(samples, [q, 1 - q], method="inverted_cdf")
    return _finite_or_none(lo), _finite_or_none(hi)


@dataclass(frozen=True)
class ScalingFit:
    """Result of :func:`fit_scaling`. If ``ok`` is False only ``reason``, ``notes`` and
    ``n_points`` are meaningful and every estimate is None.

    ``A`` is for compute in ``c_unit``; ``alpha`` and ``E`` (FD units) do not depend on the unit.
    """

    model: Model
    ok: bool
    reason: str
    n_points: int
    c_unit: str
    alpha: Estimate | None = None
    A: Estimate | None = None
    E: Estimate | None = None
    r2_log: float | None = None
    """Coefficient of determination of log FD (1 = perfect)."""
    rmse_log: float | None = None
    """Root-mean-square residual of log FD (0.05 ~ 5% typical error)."""
    c_ref: float | None = None
    """Geometric mean of the fitted compute values (unit ``c_unit``); the internal normalisation."""
    c_range: tuple[float, float] | None = None
    """Smallest and largest fitted compute (unit ``c_unit``)."""
    n_boot: int = 0
    n_boot_ok: int = 0
    notes: tuple[str, ...] = ()
    params: np.ndarray | None = field(default=None, repr=False)
    """Full-data parameters (a, alpha, E) in normalised units (C / c_ref), shape (3,)."""
    boot: np.ndarray | None = field(default=None, repr=False)
    """Refitted normalised parameters of the usable resamples, shape (n_boot_ok, 3)."""

    def _predict_norm(self, p: np.ndarray, compute: np.ndarray) -> np.ndarray:
        x = np.asarray(compute, dtype=float) / self.c_ref
        return p[..., 2:3] + np.exp(p[..., 0:1]) * x ** (-p[..., 1:2])

    def predict(self, compute: float | np.ndarray) -> np.ndarray:
        """Fitted FD at ``compute`` (unit ``c_unit``), shape of ``compute`` (at least 1-D).

        Raises ValueError if the fit is not ``ok``.
        """
        self._require_ok()
        return self._predict_norm(self.params, np.atleast_1d(compute))

    def predict_interval(self, compute: float | np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Bootstrap percentile band (lo, hi) of the FD at ``compute``; None without a bootstrap."""
        self._require_ok()
        if self.boot is None or len(self.boot) == 0:
            return None
        preds = self._predict_norm(self.boot, np.atleast_1d(compute))  # (n_boot_ok, m)
        q = (1 - LEVEL) / 2
        return np.quantile(preds, q, axis=0), np.quantile(preds, 1 - q, axis=0)

    def predict_estimate(self, compute: float) -> Estimate:
        """FD predicted at one compute value, with its bootstrap interval."""
        value = float(self.predict(compute)[0])
        band = self.predict_interval(compute)
        if band is None:
            return Estimate(value, None, None)
        return Estimate(value, float(band[0][0]), float(band[1][0]))

    def compute_for(self, target: float) -> Estimate | None:
        """Compute (unit ``c_unit``) at which the fitted FD reaches ``target``, inverting
        ``target = E + A C^-alpha``. None if the point estimate never reaches it (target <= E, or
        alpha = 0); an interval end is None where resamples never reach it (unbounded).
        """
        self._require_ok()
        value = self._invert(self.params[None], target)[0]
        if not np.isfinite(value):
            return None
        lo, hi = _interval(self._invert(self.boot, target)) if self.boot is not None else (None, None)
        return Estimate(float(value), lo, hi)

    def _invert(self, p: np.ndarray, target: float) -> np.ndarray:
        a, alpha, e = p[:, 0], p[:, 1], p[:, 2]
        gap = target - e
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            x = np.exp((a - np.log(gap)) / alpha)
        reachable = (gap > 0) & (alpha > 1e-9)
        return np.where(reachable, self.c_ref * x, np.inf)

    def _require_ok(self) -> None:
        if not self.ok:
            raise ValueError(f"no {self.model} fit to use: {self.reason}")

    def to_dict(self) -> dict:
        """JSON-ready summary (no NaN: missing values are None)."""
        out = {"model": self.model, "formula": _FORMULA[self.model], "ok": self.ok, "reason": self.reason,
               "n_points": self.n_points, "c_unit": self.c_unit, "notes": list(self.notes)}
        if self.ok:
            out.update({"alpha": self.alpha.to_dict(), "A": self.A.to_dict(), "E": self.E.to_dict(),
                        "r2_log": self.r2_log, "rmse_log": self.rmse_log, "c_ref": self.c_ref,
                        "c_range": list(self.c_range), "n_boot": self.n_boot, "n_boot_ok": self.n_boot_ok,
                        "level": LEVEL, "huber_scale_log": HUBER_SCALE})
        return out


_FORMULA = {"saturating": "FD = E + A * C^-alpha", "power": "FD = A * C^-alpha"}


def fit_scaling(compute: np.ndarray, fd: np.ndarray, model: Model = "saturating", *,
                c_unit: str = "FLOPs", n_boot: int = 1000, seed: int = 0) -> ScalingFit:
    """Fit ``model`` to points (compute, FD) with a Huber loss in log space; bootstrap intervals.

    Args:
        compute: training compute per point, shape (n,), any positive unit (named by ``c_unit``).
        fd: FD/FID per point, shape (n,).
        model: ``'saturating'`` (E + A C^-alpha) or ``'power'`` (A C^-alpha).
        n_boot: bootstrap resamples (0 = point estimate only); the paper-quality default is 1000.
        seed: seed of the resampling (same seed, same intervals).

    Points with a non-finite or non-positive value are dropped and listed in ``notes``. Fewer
    than ``MIN_POINTS[model]`` usable points (or too few distinct compute values) give
    ``ok=False`` with the reason. Raises ValueError only for an unknown ``model`` or arrays of
    different lengths (programming errors).
    """
    if model not in _FORMULA:
        raise ValueError(f"unknown model {model!r}; choose 'saturating' or 'power'")
    c = np.asarray(compute, dtype=float).ravel()
    f = np.asarray(fd, dtype=float).ravel()
    if c.shape != f.shape:
        raise ValueError(f"compute and fd differ in length: {c.shape[0]} vs {f.shape[0]}")
    keep = np.isfinite(c) & np.isfinite(f) & (c > 0) & (f > 0)
    notes = []
    if (~keep).any():
        notes.append(f"dropped {int((~keep).sum())} point(s) with non-finite or non-positive compute/FD")
    c, f = c[keep], f[keep]
    n = len(c)
    need = MIN_POINTS[model]
    distinct = len(np.unique(c))
    if n < need or distinct < need:
        reason = (f"cannot fit {_FORMULA[model]}: {n} usable point(s) at {distinct} distinct compute "
                  f"value(s); need at least {need}")
        return ScalingFit(model, False, reason, n, c_unit, notes=tuple(notes))

    c_ref = float(np.exp(np.mean(np.log(c))))
    lx, y = np.log(c / c_ref), np.log(f)
    p = _fit_point(model, lx, y)
    resid = _model_log(p, lx)[0] - y
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else None
    rmse = float(np.sqrt((resid**2).mean()))

    boot = np.empty((0, 3))
    if n_boot > 0:
        boot = _bootstrap(model, lx, y, p, n_boot, seed)
        if len(boot) < MIN_BOOT_FRACTION * n_boot:
            notes.append(f"only {len(boot)} of {n_boot} bootstrap resamples could be refitted: no intervals")
    with_ci = n_boot > 0 and len(boot) >= MIN_BOOT_FRACTION * n_boot

    def estimate(values: np.ndarray, point: float) -> Estimate:
        return Estimate(float(point), *(_interval(values) if with_ci else (None, None)))

    a_unit = np.exp(boot[:, 0]) * c_ref ** boot[:, 1]  # A for C in c_unit
    return ScalingFit(
        model=model, ok=True, reason="", n_points=n, c_unit=c_unit,
        alpha=estimate(boot[:, 1], p[1]),
        A=estimate(a_unit, np.exp(p[0]) * c_ref ** p[1]),
        E=estimate(boot[:, 2], p[2]),
        r2_log=r2, rmse_log=rmse, c_ref=c_ref, c_range=(float(c.min()), float(c.max())),
        n_boot=n_boot, n_boot_ok=len(boot), notes=tuple(notes), params=p,
        boot=boot if with_ci else None,
    )


def _bootstrap(model: Model, lx: np.ndarray, y: np.ndarray, p: np.ndarray, n_boot: int,
               seed: int) -> np.ndarray:
    """Case-bootstrap refits, shape (n_usable, 3); skips resamples that cannot identify the model."""
    rng = np.random.default_rng(seed)
    n = len(lx)
    idx = rng.integers(0, n, size=(n_boot, n))
    distinct = np.array([len(np.unique(row)) for row in idx])
    idx = idx[distinct >= N_PARAMS[model]]
    blx, by = lx[idx], y[idx]
    lower, upper = _bounds(model, np.exp(by.min(axis=1)), lx)
    free = np.array([True, True, model == "saturating"])
    params, converged = _huber_gauss_newton(blx, by, np.tile(p, (len(idx), 1)), lower, upper, free)
    return params[converged]


# ---- cross-size laws: refusal and backtest -------------------------------------------------------

def fit_law(frontier: pd.DataFrame, model: Model = "saturating", *, c_unit: str = "FLOPs",
            n_boot: int = 1000, seed: int = 0, min_sizes: int = MIN_LAW_SIZES) -> ScalingFit:
    """A cross-size compute law: :func:`fit_scaling` of ``frontier`` (columns ``train_flops``,
    ``fd``, ``size``), refused (``ok=False``, reason from ``frontier.law_refusal``) when fewer
    than ``min_sizes`` model sizes lie on the frontier."""
    refusal = law_refusal(frontier, min_sizes)
    if refusal is not None:
        return ScalingFit(model, False, refusal, len(frontier), c_unit)
    return fit_scaling(frontier["train_flops"], frontier["fd"], model, c_unit=c_unit,
                       n_boot=n_boot, seed=seed)


@dataclass(frozen=True)
class Backtest:
    """A law fitted without the largest size, checked against that size.

    ``error`` = predicted / observed - 1 (e.g. -0.2: the law promised a 20% lower FD than the
    size reached); ``covered``: the observed best FD lies inside the predicted interval (None
    without an interval). If ``ok`` is False only ``held_out`` and ``reason`` are meaningful.
    """

    ok: bool
    reason: str
    held_out: str
    compute: float | None = None
    """Compute at which the held-out size is predicted: its planned training compute."""
    predicted: Estimate | None = None
    observed: float | None = None
    """The held-out size's best FD (lowest usable evaluation)."""
    error: float | None = None
    covered: bool | None = None

    def to_dict(self) -> dict:
        return {"ok": self.ok, "reason": self.reason, "held_out": self.held_out,
                "compute": self.compute,
                "predicted": None if self.predicted is None else self.predicted.to_dict(),
                "observed": self.observed, "error": self.error, "covered": self.covered}

    def __str__(self) -> str:
        if not self.ok:
            return self.reason
        inside = {True: "inside", False: "outside", None: "no"}[self.covered]
        return (f"backtest: fitted without {self.held_out}, the law predicts its best FD "
                f"{self.predicted} at {self.compute:.3g} FLOPs; observed {self.observed:.4g}: error "
                f"{100 * self.error:+.0f}% ({inside} the interval)")


def backtest_largest(usable: pd.DataFrame, order: list[str], budgets: dict[str, float],
                     model: Model = "saturating", *, n_boot: int = 1000, seed: int = 0,
                     min_sizes: int = MIN_LAW_SIZES) -> Backtest:
    """Fit ``model`` without the largest size ``order[-1]`` and predict that size's best FD.

    Args:
        usable: fittable evaluation points (``frontier.usable_points``; columns ``size``,
            ``train_flops``, ``fd``).
        order: size labels from smallest to largest.
        budgets: planned training compute per size (FLOPs); the held-out size is predicted at its
            budget (else at its largest logged compute).

    The law without the largest size obeys the same rule as any law (:func:`fit_law`: at least
    ``min_sizes`` sizes on its frontier), so a backtest needs ``min_sizes + 1`` sizes. Returns a
    Backtest with ``ok=False`` and the reason when it cannot be made.
    """
    if not order:
        return Backtest(False, "no backtest: no sizes", "")
    held = order[-1]
    own = usable[usable["size"] == held]
    if own.empty:
        return Backtest(False, f"no backtest: {held} has no usable evaluation", held)
    rest = compute_frontier(usable[usable["size"] != held])
    fit = fit_law(rest, model, n_boot=n_boot, seed=seed, min_sizes=min_sizes)
    if not fit.ok:
        return Backtest(False, f"no backtest: the law refitted without the largest size ({held}) would rest on "
                               f"a smaller frontier, which gives {fit.reason}", held)
    c = budgets.get(held)
    c = float(c) if c is not None and np.isfinite(c) and c > 0 else float(own["train_flops"].max())
    pred = fit.predict_estimate(c)
    observed = float(own["fd"].min())
    covered = None if pred.lo is None else bool(pred.lo <= observed <= pred.hi)
    return Backtest(True, "", held, c, pred, observed, pred.value / observed - 1.0, covered)
