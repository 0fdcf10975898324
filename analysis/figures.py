"""Matplotlib figures of a sweep (PNG through the Agg renderer). Each function writes one file
and returns its path. Figures are built with ``matplotlib.figure.Figure`` (no pyplot), so no
global backend or figure state is touched.

Log axes get explicit, readable ticks (plain numbers such as 3, 4, 6 or 2e+15) even when the data
span less than a decade, where matplotlib's default shows no labelled tick at all.
"""

from __future__ import annotations

import math

from pathlib import Path

import matplotlib
import matplotlib.image as mpimg
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedFormatter, FixedLocator, MaxNLocator, NullFormatter

from analysis.fit import Estimate, ScalingFit
from analysis.transfer import SCORE_EVALS, RuleTransfer
from core.records import EARLY_SKIP_REL, G_UPDATE_REL, final_fd

DPI = 110
RULE_COLOURS = {"constant": "tab:red", "gat": "tab:blue", "mup": "tab:green"}


def rule_colour(rule: str, default: str = "k"):
    """A rule's colour: its own in :data:`RULE_COLOURS`; a ``power<a>`` rule's between constant's
    red (a = 0) and gat's blue (a = 1), by its exponent (clipped to that range)."""
    if rule in RULE_COLOURS:
        return RULE_COLOURS[rule]
    if rule.startswith("power"):
        try:
            a = min(max(float(rule[len("power"):]), 0.0), 1.0)
        except ValueError:
            return default
        red, blue = np.array(matplotlib.colors.to_rgb("tab:red")), np.array(matplotlib.colors.to_rgb("tab:blue"))
        return tuple((1 - a) * red + a * blue)
    return default


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

    Decades over >= 3 decades (at most 8); below that 1-2-5 where it gives at least 3 ticks, else
    every integer mantissa (whose labels crowd at the top of a decade: 0.008 and 0.01 touch), and
    round linear steps (matplotlib's MaxNLocator) when even those give fewer than 3: over such a
    narrow range a log axis is nearly linear.
    """
    exps = range(int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi))) + 1)

    def at(subs) -> list[float]:
        return [m * 10.0**e for e in exps for m in subs if lo <= m * 10.0**e <= hi]

    ticks = at((1,)) if np.log10(hi / lo) >= 3 else at((1, 2, 5))
    if len(ticks) < 3:
        ticks = at(range(1, 10))
    if len(ticks) > 8:
        ticks = ticks[:: int(np.ceil(len(ticks) / 8))]
    if len(ticks) < 3:
        linear = MaxNLocator(nbins=4, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)
        ticks = [float(t) for t in linear if lo <= t <= hi and t > 0]
    return ticks


MIN_LOG_RANGE = 2.0
"""Smallest hi/lo ratio a log axis is given: a narrower range (e.g. every width has the same best
LR, so all points coincide) is widened about its geometric centre, so ticks exist."""


def readable_log_axes(ax: Axes, x: bool = True, y: bool = True) -> None:
    """Give the log-scaled axes of ``ax`` explicit ticks from :func:`log_ticks` (call after plotting).

    An axis whose range spans less than a factor ``MIN_LOG_RANGE`` is first widened to that factor
    about its geometric centre (a degenerate range would have no tick at all).
    """
    for use, axis, get, set_ in ((x, ax.xaxis, ax.get_xlim, ax.set_xlim),
                                 (y, ax.yaxis, ax.get_ylim, ax.set_ylim)):
        if not use or axis.get_scale() != "log":
            continue
        lo, hi = sorted(get())
        if not (lo > 0 and hi / lo >= MIN_LOG_RANGE):
            centre = np.sqrt(lo * hi) if lo > 0 else max(hi, 1e-12)
            lo, hi = centre / np.sqrt(MIN_LOG_RANGE), centre * np.sqrt(MIN_LOG_RANGE)
        ticks = log_ticks(lo, hi)
        axis.set_major_locator(FixedLocator(ticks))
        axis.set_major_formatter(FixedFormatter([_tick_label(t) for t in ticks]))
        axis.set_minor_formatter(NullFormatter())
        set_(lo, hi)


def _labels(axis) -> list:
    """Visible, non-empty major tick labels of ``axis`` inside its axes' view (after a draw)."""
    lo, hi = sorted(axis.get_view_interval())
    return [t.label1 for t in axis.get_major_ticks()
            if t.label1.get_visible() and t.label1.get_text() and lo <= t.get_loc() <= hi]


LABEL_GAP = 0.4
"""Least gap between two tick labels of one axis, in units of their font size: labels closer
than this read as one (``0.0080.01``) although their boxes do not overlap."""


def _overlaps(labels: list, renderer) -> bool:
    """True when two of ``labels`` overlap or come closer than LABEL_GAP font sizes."""
    boxes = [lab.get_window_extent(renderer) for lab in labels]
    pads = [LABEL_GAP * lab.get_fontsize() * renderer.points_to_pixels(1.0) / 2 for lab in labels]
    boxes = [box.padded(pad) for box, pad in zip(boxes, pads)]
    return any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def tick_label_problems(fig: Figure) -> list[str]:
    """Draw ``fig`` and list its tick-label problems: a log axis with no labelled tick, or two
    labels of one axis that overlap. Empty when the figure reads cleanly (the figures here
    guarantee that; tests check it)."""
    renderer = _renderer(fig)
    problems = []
    for k, ax in enumerate(fig.axes):
        for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
            if not axis.get_visible() or not ax.axison:
                continue
            labels = _labels(axis)
            if axis.get_scale() == "log" and not labels:
                problems.append(f"axes {k} {name}: no tick label")
            if _overlaps(labels, renderer):
                problems.append(f"axes {k} {name}: overlapping tick labels "
                                f"{[lab.get_text() for lab in labels]}")
    return problems


def _renderer(fig: Figure):
    if fig.canvas is None or not hasattr(fig.canvas, "get_renderer"):
        FigureCanvasAgg(fig)
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def declutter_ticks(fig: Figure) -> None:
    """Thin the explicit (FixedLocator) ticks of every axis whose labels overlap, keeping every
    second one (the lowest kept) until none overlap."""
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            locator, formatter = axis.get_major_locator(), axis.get_major_formatter()
            if not isinstance(locator, FixedLocator) or not isinstance(formatter, FixedFormatter):
                continue
            ticks, texts = list(locator.locs), list(formatter.seq)
            while len(ticks) > 2 and _overlaps(_labels(axis), _renderer(fig)):
                ticks, texts = ticks[::2], texts[::2]
                axis.set_major_locator(FixedLocator(ticks))
                axis.set_major_formatter(FixedFormatter(texts))


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
    declutter_ticks(fig)
    fig.savefig(path, dpi=DPI)
    return path


def fd_vs_compute(points: pd.DataFrame, frontier: pd.DataFrame, fits: dict[str, ScalingFit],
                  colours: dict[str, tuple], metric_key: str, path: Path,
                  next_size: tuple[float, Estimate, str] | None = None,
                  notes: list[str] | None = None) -> Path:
    """FD against cumulative training FLOPs, log-log: every usable evaluation (colour per size),
    the frontier, the primary fit (saturating if it succeeded, else the power law) with its 95%
    bootstrap band and the other fit dashed grey, each drawn over the compute span it was fitted
    to only; ``next_size`` = (compute, predicted FD, backtest text) adds the next size's
    prediction, which the report passes only with a successful backtest."""
    fig = Figure(figsize=(11, 5.2))
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
    for fit in (f for f in fits.values() if f.ok):
        is_primary = fit is primary
        colour = "tab:purple" if is_primary else "grey"
        label = (f"{_FIT_LABEL[fit.model]}: alpha {fit.alpha}" + (f", E {fit.E.value:.3g}"
                 if fit.model == "saturating" else ""))
        grid = np.geomspace(*fit.c_range, 200)
        ax.plot(grid, fit.predict(grid), color=colour, lw=2 if is_primary else 1,
                ls="-" if is_primary else "--", label=label)
        band = fit.predict_interval(grid) if is_primary else None
        if band is not None:
            ax.fill_between(grid, band[0], band[1], color=colour, alpha=0.15, lw=0,
                            label="95% bootstrap band")
    if primary is not None and next_size is not None:
        c_next, est, backtest = next_size
        yerr = None if est.lo is None else [[est.value - est.lo], [est.hi - est.value]]
        ax.errorbar([c_next], [est.value], yerr=yerr, fmt="D", color="tab:purple", capsize=4,
                    label=f"next size ({_FIT_LABEL[primary.model]}): {est}")
        fig.text(0.01, 0.995, backtest, fontsize=7, va="top", ha="left", wrap=True)
    if not any(f.ok for f in fits.values()):
        reason = next(iter(fits.values())).reason if fits else "no fit"
        ax.text(0.02, 0.02, reason, transform=ax.transAxes, fontsize=7, va="bottom", wrap=True)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training compute C (FLOPs, cumulative)")
    ax.set_ylabel(metric_key)
    ax.set_title("FD vs training compute (fits drawn over their fitted span)")
    ax.grid(True, which="major", alpha=0.3)
    readable_log_axes(ax)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the axes: inside, it covered points
    fig.tight_layout(rect=(0, 0, 0.97, 0.96 if next_size is not None else 1))
    return _save(fig, path, notes)


_FIT_LABEL = {"saturating": "E + A C^-alpha", "power": "A C^-alpha"}


def fd_vs_kimg(points: pd.DataFrame, trials: pd.DataFrame, colours: dict[str, tuple],
               metric_key: str, path: Path) -> Path:
    """FD against kimg, one panel per LR rule, colour per size: every trial as a thin line through
    its evaluations (faint when a panel holds many), and per size one bold line, the geometric
    mean over seeds of its best base LR (the best final FD; :func:`best_seed_mean_curves`). The last
    evaluation of a diverged trial is an x, of a running trial an open circle (in the legend only when there is one)."""
    rules = sorted(trials["lr_rule"].dropna().unique()) if len(trials) else []
    fig = Figure(figsize=(5 * max(len(rules), 1), 4.2))
    axes = fig.subplots(1, max(len(rules), 1), squeeze=False, sharey=True)
    finite = points[np.isfinite(points["fd"].astype(float)) & (points["fd"].astype(float) > 0)]
    if finite.empty:
        _empty(axes[0, 0], "no evaluations yet")
        return _save(fig, path)
    markers_used = set()
    for ax, rule in zip(axes[0], rules):
        in_rule = trials[trials["lr_rule"] == rule]
        faint = len(in_rule) > 24
        for trial in in_rule.itertuples():
            pts = finite[finite["run_id"] == trial.run_id]
            if pts.empty:
                continue
            colour = colours.get(trial.size, "grey")
            ax.plot(pts["kimg"], pts["fd"], "-" if faint else ".-", color=colour, lw=0.6 if faint else 1,
                    ms=3, alpha=0.25 if faint else 0.8)
            marker = {"diverged": "x", "running": "o"}.get(trial.status)
            if marker:
                markers_used.add(marker)
                ax.plot(pts["kimg"].iloc[-1], pts["fd"].iloc[-1], marker, color=colour,
                        mfc="none" if marker == "o" else colour, ms=8)
        curves = best_seed_mean_curves(finite[finite["lr_rule"] == rule])
        order = {size: i for i, size in enumerate(colours)}  # the legend lists sizes as the colours do
        for (size, base_lr, n), curve in sorted(curves.items(), key=lambda kv: order.get(kv[0][0], len(order))):
            ax.plot(curve["kimg"], curve["fd"], "o-", color=colours.get(size, "grey"), lw=2.2, ms=4,
                    label=f"{size}: base LR {base_lr:.3g}, {n} seed(s)")
        ax.set_title(f"LR rule: {rule} (bold: per size, the base LR of the best final FD, geo. mean over seeds)",
                     fontsize=9)
        ax.set_xlabel("kimg")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        readable_log_axes(ax, x=False)
        ax.legend(fontsize=6, loc="upper right")
    axes[0, 0].set_ylabel(metric_key)
    handles = [Line2D([], [], color=c, label=f"size {s}") for s, c in colours.items()]
    handles += [Line2D([], [], color="k", marker="x", ls="", label="diverged")] if "x" in markers_used else []
    handles += ([Line2D([], [], color="k", marker="o", mfc="none", ls="", label="running")]
                if "o" in markers_used else [])
    fig.legend(handles=handles, fontsize=7, loc="lower center", ncol=len(handles), frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return _save(fig, path)


def best_seed_mean_curves(points: pd.DataFrame) -> dict[tuple[str, float, int], pd.DataFrame]:
    """Per size, the training curve of its best base LR averaged over seeds.

    ``points``: rows of one LR rule (columns ``size``, ``base_lr``, ``seed``, ``iter``, ``kimg``,
    ``fd``; finite, positive ``fd``). For each (size, base LR) the geometric mean of ``fd`` over
    seeds at every iteration that all of its seeds reached; the best base LR of a size has the
    lowest geometric mean over seeds of the trials' final FDs (``core.records.final_fd``, the
    report's one meaning of best). Returns ``{(size, base LR, seeds): frame with columns iter,
    kimg, fd}``, sizes in their order of appearance.
    """
    out = {}
    for size, of_size in points.groupby("size", sort=False):
        best = None
        for base_lr, group in of_size.groupby("base_lr"):
            n = group["seed"].nunique()
            per_iter = group.groupby("iter").agg(kimg=("kimg", "first"), log_fd=("fd", lambda v: np.log(v).mean()),
                                                 seeds=("seed", "nunique"))
            common = per_iter[per_iter["seeds"] == n]
            if common.empty:
                continue
            score = float(np.mean([np.log(final_fd(g.sort_values("iter")["fd"])) for _, g in group.groupby("seed")]))
            if best is None or score < best[3]:
                best = (float(base_lr), n, common, score)
        if best is not None:
            curve = best[2].reset_index()
            out[(str(size), best[0], best[1])] = pd.DataFrame(
                {"iter": curve["iter"], "kimg": curve["kimg"], "fd": np.exp(curve["log_fd"])})
    return out


_POINT_KINDS = (
    ("own", dict(marker="o", color="k", ls=""), "trained for this rule"),
    ("pooled", dict(marker="o", mfc="none", color="k", ls=""), "trained for another rule (same actual LR)"),
    ("left_out", dict(marker="^", color="k", ls=""), "left out of the valley (beyond its cliff)"),
    ("diverged", dict(marker="x", color="k", ls="", mew=2), "diverged (top of the panel)"),
)
"""How the LR-transfer panels mark an LR, and the legend entry of each kind."""


def lr_transfer_figure(transfer: dict[str, RuleTransfer]) -> Figure:
    """The LR-transfer figure (see :func:`lr_transfer`), not yet saved."""
    rules = list(transfer)
    lines = {rule: res for rule, res in transfer.items()
             if res.valley is not None and sum(o.best_lr is not None for o in res.optima) >= 2}
    panels = len(rules) + (1 if lines else 0)   # the best-LR panel only when a rule has a line to show
    fig = Figure(figsize=(4.8 * max(panels, 1), 4.8))
    axes = fig.subplots(1, max(panels, 1), squeeze=False)
    widths = sorted({o.width for r in transfer.values() for o in r.optima})
    all_lrs = [lr for r in transfer.values() for o in r.optima for lr in o.lrs]
    cmap = matplotlib.colormaps["plasma"]
    wcol = {w: cmap(0.85 * i / max(len(widths) - 1, 1)) for i, w in enumerate(widths)}
    kinds_used: set[str] = set()
    for ax, rule in zip(axes[0], rules):
        res = transfer[rule]
        if not res.optima:
            _empty(ax, f"{rule}: no scored trials yet")
            continue
        for o in res.optima:
            lrs, scores = np.array(o.lrs), np.array(o.scores)
            ok = np.isfinite(scores)
            kind = np.array(["left_out" if lr in o.left_out_lrs else "pooled" if lr in o.pooled_lrs else "own"
                             for lr in o.lrs])
            for name, style, _ in _POINT_KINDS[:3]:
                sel = ok & (kind == name)
                if sel.any():
                    kinds_used.add(name)
                    ax.plot(lrs[sel], scores[sel], **{**style, "color": wcol[o.width]}, ms=5)
            ax.plot([], [], "o", color=wcol[o.width], label=f"width {o.width}")
            if o.diverged_lrs:  # diverged LRs: an x near the top of the panel
                kinds_used.add("diverged")
                ax.plot(o.diverged_lrs, np.full(len(o.diverged_lrs), 0.96), "x", color=wcol[o.width],
                        ms=9, mew=2, transform=ax.get_xaxis_transform())
            valley = res.valley
            if valley is not None and o.width in valley.widths and valley.curvatures[valley.widths.index(o.width)] > 0:
                inside = ok & (kind != "left_out")
                if inside.any():
                    grid = np.geomspace(lrs[inside].min(), lrs[inside].max(), 60)
                    ax.plot(grid, np.exp(valley.log_fd(o.width, grid)), "-", color=wcol[o.width], lw=1)
            if o.best_lr is not None:
                ax.axvline(o.best_lr.value, color=wcol[o.width], ls="--", lw=1)
                if o.best_lr.lo is not None:
                    ax.axvspan(o.best_lr.lo, o.best_lr.hi, color=wcol[o.width], alpha=0.12, lw=0)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"base LR ({rule})")
        ax.set_ylabel(f"final FD (geo. mean of last {SCORE_EVALS} evals, over seeds)")
        ax.set_title(f"{rule}: {res.outcome}", fontsize=11)
        ax.grid(True, alpha=0.3)
        readable_log_axes(ax)
        ax.legend(fontsize=7, loc="upper left")
    if lines:
        _best_lr_panel(axes[0, -1], lines, widths, all_lrs)
    handles = [Line2D([], [], ms=6, label=label, **style) for name, style, label in _POINT_KINDS if name in kinds_used]
    if handles:
        fig.legend(handles=handles, fontsize=8, loc="lower center", ncol=len(handles), frameon=False)
    fig.tight_layout(rect=(0, 0.07 if handles else 0, 1, 1))
    return fig


def _best_lr_panel(ax: Axes, lines: dict[str, RuleTransfer], widths: list[int], all_lrs: list[float]) -> None:
    """Fitted best base LR against width per rule, with intervals, the fitted line and the shift."""
    for rule, res in lines.items():
        opt = [o for o in res.optima if o.best_lr is not None]
        w = np.array([o.width for o in opt], float)
        lr = np.array([o.best_lr.value for o in opt])
        colour = rule_colour(rule)
        has_ci = all(o.best_lr.lo is not None for o in opt)
        yerr = ([lr - [o.best_lr.lo for o in opt], [o.best_lr.hi for o in opt] - lr] if has_ci else None)
        shift = res.shift
        label = (f"{rule}: x{np.exp(shift.value):.2f}" + (f" [x{np.exp(shift.lo):.2f}, x{np.exp(shift.hi):.2f}]"
                 if shift.lo is not None else " (no interval)") + " over widths" if shift is not None
                 else f"{rule}: no line")
        ax.errorbar(w, lr, yerr=yerr, fmt="o", color=colour, capsize=3, label=label)
        if shift is not None:
            line = np.exp(res.valley.v0 + res.valley.b * np.log(w / res.valley.w_ref))
            ax.plot(w, line, "-", color=colour, lw=1)
    ax.set_yscale("log")
    if all_lrs:  # show the whole LR grid, so a flat line (transfers) still has ticks
        lo, hi = ax.get_ylim()
        ax.set_ylim(min(lo, min(all_lrs) / 1.2), max(hi, max(all_lrs) * 1.2))
    readable_log_axes(ax, x=False)
    width_axis(ax, widths)
    ax.set_xlabel("width")
    ax.set_ylabel("best base LR (fitted, 95% interval)")
    tol = next(iter(lines.values())).tolerance
    ax.set_title(f"best LR vs width (flat = transfers; tolerance x{math.exp(tol):.3g})", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)


def lr_transfer(transfer: dict[str, RuleTransfer], path: Path) -> Path:
    """Per rule: final FD against base LR (one colour per width; filled: trained for the rule,
    hollow: trained for another rule at the same actual LR, triangle: left out of the valley
    beyond its cliff, x: diverged; line: the fitted valley over the LRs it holds; dashed: the
    fitted optimum with its 95% band); last panel, when some rule has a line of optima: fitted
    best base LR against width with intervals and the fitted line per rule."""
    return _save(lr_transfer_figure(transfer), path)


def diagnostics(trials: pd.DataFrame, path: Path) -> Path:
    """Write :func:`diagnostics_figure` to ``path``."""
    return _save(diagnostics_figure(trials), path)


def diagnostics_figure(trials: pd.DataFrame) -> Figure:
    """The paper's two failure-mode diagnostics (docs/METHOD.md §7) against width, latest value
    per training (the iterations it was logged at in each panel's title; column ``last_iter``),
    colour per LR rule, grey for a training several rules share (a copied trial is drawn once, as
    its original): early-block use (``diag/early_skip_rel``) and the relative output change per
    optimiser step (``diag/g_update_rel``)."""
    fig = Figure(figsize=(10, 4.2))
    axes = fig.subplots(1, 2, squeeze=False)
    panels = (("early_skip_rel", f"{EARLY_SKIP_REL}\n(small = early blocks under-used)"),
              ("g_update_rel", f"{G_UPDATE_REL}\n(output change per step)"))
    trained = trials[trials["same_as"].isna()].copy() if "same_as" in trials else trials.copy()
    if "same_as" in trials:   # a copy repeats its original's training: draw the training once, for all its rules
        copies = trials.dropna(subset=["same_as"]).groupby("same_as")["lr_rule"].agg(set)
        trained["lr_rule"] = [" + ".join(sorted(str(r) for r in {rule} | copies.get(trial, set())))
                              for trial, rule in zip(trained["trial"], trained["lr_rule"])]
    for ax, (col, label) in zip(axes[0], panels):
        data = trained[np.isfinite(trained[col].astype(float)) & (trained[col].astype(float) > 0)]
        if data.empty:
            _empty(ax, f"{col}: not logged yet")
            continue
        for rule, group in data.groupby("lr_rule"):
            ax.scatter(group["g_width"], group[col], color=rule_colour(rule, "grey"), s=20,
                       alpha=0.7, label=rule if "+" not in rule else f"{rule} (one training)")
        ax.set_yscale("log")
        ax.set_xlabel("width")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        readable_log_axes(ax, x=False)
        width_axis(ax, sorted(data["g_width"].astype(int).unique()))
        ax.legend(fontsize=7, title="LR rule")
        last = data["last_iter"].dropna().astype(int)
        if len(last):
            at = f"{last.min()}" if last.min() == last.max() else f"{last.min()}-{last.max()}"
            ax.set_title(f"each trial's latest value (iteration {at})", fontsize=9)
    fig.tight_layout()
    return fig


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
