"""Matplotlib figures of a sweep (PNG through the Agg renderer). Each function writes one file
and returns its path. Figures are built with ``matplotlib.figure.Figure`` (no pyplot), so no
global backend or figure state is touched.

Log axes get explicit, readable ticks (plain numbers such as 3, 4, 6 or 2e+15) even when the data
span less than a decade, where matplotlib's default shows no labelled tick at all.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.image as mpimg
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedFormatter, FixedLocator, MaxNLocator, NullFormatter

from analysis.fit import ScalingFit
from analysis.transfer import RuleTransfer

DPI = 110
RULE_COLOURS = {"constant": "tab:red", "gat": "tab:blue", "mup": "tab:green"}


def size_colours(trials: pd.DataFrame) -> dict[str, tuple]:
    """One colour per size label, ordered by generator width (small = dark)."""
    sizes = (trials.sort_values(["g_width", "g_depth"])["size"].drop_duplicates().tolist()
             if len(trials) else [])
    cmap = matplotlib.colormaps["viridis"]
    return {s: cmap(0.85 * i / max(len(sizes) - 1, 1)) for i, s in enumerate(sizes)}


def _tick_label(v: float) -> str:
    if 1e-3 <= abs(v) < 1e4:
        return f"{v:g}"
    mantissa, exponent = f"{v:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def log_ticks(lo: float, hi: float) -> list[float]:
    """At least 3 readable tick positions in [lo, hi] on a log axis (lo > 0) where possible.

    Decades over >= 3 decades (at most 8), 1-2-5 over 1-3 decades, every integer mantissa below
    that, and round linear steps (matplotlib's MaxNLocator) when even those give fewer than 3:
    over such a narrow range a log axis is nearly linear.
    """
    decades = np.log10(hi / lo)
    exps = range(int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi))) + 1)
    subs = (1,) if decades >= 3 else (1, 2, 5) if decades >= 1 else range(1, 10)
    ticks = [m * 10.0**e for e in exps for m in subs if lo <= m * 10.0**e <= hi]
    if len(ticks) > 8:
        ticks = ticks[:: int(np.ceil(len(ticks) / 8))]
    if len(ticks) < 3:
        linear = MaxNLocator(nbins=4, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)
        ticks = [float(t) for t in linear if lo <= t <= hi and t > 0]
    return ticks


def readable_log_axes(ax: Axes, x: bool = True, y: bool = True) -> None:
    """Give the log-scaled axes of ``ax`` explicit ticks from :func:`log_ticks` (call after plotting)."""
    for use, axis, get, set_ in ((x, ax.xaxis, ax.get_xlim, ax.set_xlim),
                                 (y, ax.yaxis, ax.get_ylim, ax.set_ylim)):
        if not use or axis.get_scale() != "log":
            continue
        lo, hi = sorted(get())
        ticks = log_ticks(lo, hi)
        axis.set_major_locator(FixedLocator(ticks))
        axis.set_major_formatter(FixedFormatter([_tick_label(t) for t in ticks]))
        axis.set_minor_formatter(NullFormatter())
        set_(lo, hi)


def width_axis(ax: Axes, widths: list[int]) -> None:
    """Log x axis ticked at exactly the sweep's widths."""
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(sorted(widths)))
    ax.xaxis.set_major_formatter(FixedFormatter([str(w) for w in sorted(widths)]))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _empty(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _save(fig: Figure, path: Path, notes: list[str] | None = None) -> Path:
    if notes:
        fig.text(0.01, 0.005, "\n".join(notes), fontsize=7, va="bottom", ha="left", wrap=True)
        fig.subplots_adjust(bottom=0.12 + 0.035 * len(notes))
    fig.savefig(path, dpi=DPI)
    return path


def fd_vs_compute(points: pd.DataFrame, frontier: pd.DataFrame, fits: dict[str, ScalingFit],
                  colours: dict[str, tuple], metric_key: str, path: Path,
                  c_next: float | None = None, notes: list[str] | None = None) -> Path:
    """FD against cumulative training FLOPs, log-log: every usable evaluation (colour per size),
    the frontier, the primary fit (saturating if it succeeded, else the power law) with its 95%
    bootstrap band, the other fit dashed grey, and the extrapolation up to ``c_next`` dashed."""
    fig = Figure(figsize=(7.5, 5.2))
    ax = fig.subplots()
    if points.empty:
        _empty(ax, "no usable evaluations yet")
        return _save(fig, path, notes)
    for size, colour in colours.items():
        group = points[points["size"] == size]
        if len(group):
            ax.scatter(group["train_flops"], group["fd"], s=14, alpha=0.55, color=colour,
                       label=f"size {size}")
    ax.plot(frontier["train_flops"], frontier["fd"], "k.-", lw=1, ms=7, label="frontier")
    primary = next((f for f in (fits.get("saturating"), fits.get("power")) if f and f.ok), None)
    c_lo, c_hi = points["train_flops"].min(), points["train_flops"].max()
    c_end = max(c_hi, c_next or c_hi)
    grid = np.geomspace(c_lo, c_end, 200)
    inside = grid <= c_hi
    for fit in (f for f in fits.values() if f.ok):
        is_primary = fit is primary
        colour = "tab:purple" if is_primary else "grey"
        label = (f"{_FIT_LABEL[fit.model]}: alpha {fit.alpha}" + (f", E {fit.E.value:.3g}"
                 if fit.model == "saturating" else ""))
        pred = fit.predict(grid)
        ax.plot(grid[inside], pred[inside], color=colour, lw=2 if is_primary else 1,
                ls="-" if is_primary else "--", label=label)
        ax.plot(grid[~inside], pred[~inside], color=colour, lw=2 if is_primary else 1, ls=":")
        band = fit.predict_interval(grid) if is_primary else None
        if band is not None:
            ax.fill_between(grid, band[0], band[1], color=colour, alpha=0.15, lw=0,
                            label="95% bootstrap band")
    if primary is not None and c_next is not None and c_next > c_hi:
        est = primary.predict_estimate(c_next)
        yerr = None if est.lo is None else [[est.value - est.lo], [est.hi - est.value]]
        ax.errorbar([c_next], [est.value], yerr=yerr, fmt="D", color="tab:purple", capsize=4,
                    label=f"next size (predicted) {est}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training compute C (FLOPs, cumulative)")
    ax.set_ylabel(metric_key)
    ax.set_title("FD vs training compute (dotted: extrapolation)")
    ax.grid(True, which="major", alpha=0.3)
    readable_log_axes(ax)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _save(fig, path, notes)


_FIT_LABEL = {"saturating": "E + A C^-alpha", "power": "A C^-alpha"}


def fd_vs_kimg(points: pd.DataFrame, trials: pd.DataFrame, colours: dict[str, tuple],
               metric_key: str, path: Path) -> Path:
    """FD against kimg, one line per trial (colour per size), one panel per LR rule;
    the last evaluation of a diverged trial is an x, of a running trial an open circle."""
    rules = sorted(trials["lr_rule"].dropna().unique()) if len(trials) else []
    fig = Figure(figsize=(5 * max(len(rules), 1), 4.2))
    axes = fig.subplots(1, max(len(rules), 1), squeeze=False, sharey=True)
    finite = points[np.isfinite(points["fd"].astype(float)) & (points["fd"].astype(float) > 0)]
    if finite.empty:
        _empty(axes[0, 0], "no evaluations yet")
        return _save(fig, path)
    for ax, rule in zip(axes[0], rules):
        for trial in trials[trials["lr_rule"] == rule].itertuples():
            pts = finite[finite["run_id"] == trial.run_id]
            if pts.empty:
                continue
            colour = colours.get(trial.size, "grey")
            ax.plot(pts["kimg"], pts["fd"], "-", color=colour, lw=1, alpha=0.8)
            marker = {"diverged": "x", "running": "o"}.get(trial.status)
            if marker:
                ax.plot(pts["kimg"].iloc[-1], pts["fd"].iloc[-1], marker, color=colour,
                        mfc="none" if marker == "o" else colour, ms=8)
        ax.set_title(f"LR rule: {rule}")
        ax.set_xlabel("kimg")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        readable_log_axes(ax, x=False)
    axes[0, 0].set_ylabel(metric_key)
    handles = [Line2D([], [], color=c, label=f"size {s}") for s, c in colours.items()]
    handles += [Line2D([], [], color="k", marker="x", ls="", label="diverged"),
                Line2D([], [], color="k", marker="o", mfc="none", ls="", label="running")]
    axes[0, -1].legend(handles=handles, fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def lr_transfer(transfer: dict[str, RuleTransfer], path: Path) -> Path:
    """Per rule: FD against base LR, one line per width, the interpolated best LR dashed and
    diverged LRs as x at the top; last panel: log best LR against log width with the OLS line."""
    rules = list(transfer)
    fig = Figure(figsize=(4.6 * (len(rules) + 1), 4.2))
    axes = fig.subplots(1, len(rules) + 1, squeeze=False)
    widths = sorted({o.width for r in transfer.values() for o in r.optima})
    cmap = matplotlib.colormaps["plasma"]
    wcol = {w: cmap(0.85 * i / max(len(widths) - 1, 1)) for i, w in enumerate(widths)}
    for ax, rule in zip(axes[0], rules):
        res = transfer[rule]
        if not res.optima:
            _empty(ax, f"{rule}: no scored trials yet")
            continue
        for o in res.optima:
            lrs, scores = np.array(o.lrs), np.array(o.scores)
            ok = np.isfinite(scores)
            ax.plot(lrs[ok], scores[ok], "o-", color=wcol[o.width], ms=4, label=f"width {o.width}")
            if (~ok).any():  # diverged LRs: an x near the top of the panel
                ax.plot(lrs[~ok], np.full((~ok).sum(), 0.96), "x", color=wcol[o.width], ms=9, mew=2,
                        transform=ax.get_xaxis_transform())
            ax.axvline(o.best_lr, color=wcol[o.width], ls="--", lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("base LR")
        ax.set_ylabel("FD at common progress")
        word = {True: "transfers", False: "does not transfer", None: "inconclusive"}[res.transfers]
        ax.set_title(f"{rule}: {word}", fontsize=10)
        ax.grid(True, alpha=0.3)
        readable_log_axes(ax)
        ax.legend(fontsize=7)
    ax = axes[0, -1]
    drawn = False
    for rule, res in transfer.items():
        if len(res.optima) < 2:
            continue
        w = np.array([o.width for o in res.optima], float)
        lr = np.array([o.best_lr for o in res.optima])
        colour = RULE_COLOURS.get(rule, "k")
        ci = "" if res.slope_ci is None else f" [{res.slope_ci[0]:.2f}, {res.slope_ci[1]:.2f}]"
        ax.plot(w, lr, "o", color=colour, label=f"{rule}: slope {res.slope:.2f}{ci}")
        line = np.exp(np.polyval(np.polyfit(np.log(w), np.log(lr), 1), np.log(w)))
        ax.plot(w, line, "-", color=colour, lw=1)
        drawn = True
    if drawn:
        ax.set_yscale("log")
        readable_log_axes(ax, x=False)
        width_axis(ax, widths)
        ax.set_xlabel("width")
        ax.set_ylabel("best base LR")
        ax.set_title("best LR vs width (slope 0 = transfers)", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    else:
        _empty(ax, "best LRs at fewer than 2 widths")
    fig.tight_layout()
    return _save(fig, path)


def diagnostics(trials: pd.DataFrame, path: Path) -> Path:
    """The paper's two failure-mode diagnostics (GAT_METHOD.md §7) against width, latest value
    per trial, colour per LR rule: early-block use (``diag/early_skip_rel``) and the relative
    output change per optimiser step (``diag/g_update_rel``)."""
    fig = Figure(figsize=(10, 4.2))
    axes = fig.subplots(1, 2, squeeze=False)
    panels = (("early_skip_rel", "diag/early_skip_rel\n(small = early blocks under-used)"),
              ("g_update_rel", "diag/g_update_rel\n(output change per step)"))
    for ax, (col, label) in zip(axes[0], panels):
        data = trials[np.isfinite(trials[col].astype(float)) & (trials[col].astype(float) > 0)]
        if data.empty:
            _empty(ax, f"{col}: not logged yet")
            continue
        for rule, group in data.groupby("lr_rule"):
            ax.scatter(group["g_width"], group[col], color=RULE_COLOURS.get(rule, "k"), s=20,
                       alpha=0.7, label=rule)
        ax.set_yscale("log")
        ax.set_xlabel("width")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        readable_log_axes(ax, x=False)
        width_axis(ax, sorted(data["g_width"].astype(int).unique()))
        ax.legend(fontsize=7, title="LR rule")
    fig.tight_layout()
    return _save(fig, path)


def sample_grids(grids: list[tuple[str, Path]], path: Path) -> Path:
    """The given sample-grid PNGs side by side, each titled with its caption."""
    fig = Figure(figsize=(3.6 * max(len(grids), 1), 4.2), layout="constrained")
    axes = fig.subplots(1, max(len(grids), 1), squeeze=False)
    if not grids:
        _empty(axes[0, 0], "no sample grids logged yet")
    for ax, (caption, image) in zip(axes[0], grids):
        ax.imshow(mpimg.imread(image))
        ax.set_title(caption, fontsize=8)
        ax.axis("off")
    return _save(fig, path)
