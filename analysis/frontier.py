"""Which evaluation points a scaling fit may use, and the compute-efficient frontier among them.

The frontier is the lower envelope of FD against training compute over all trials and
evaluation points (Kaplan et al. 2020, §6; Hoffmann et al. 2022, approach 1): a point is on it
when no point at lower-or-equal compute has a lower-or-equal FD. Scaling laws are fitted to it
because a sweep's other points mostly measure a badly chosen learning rate or an unfinished run,
not what the compute can buy.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from core.records import EXCLUDED_STATUSES



def usable_points(points: pd.DataFrame, metric_key: str) -> tuple[pd.DataFrame, list[str]]:
    """Rows of the tidy table (``runs.load_sweep(...).points``) that a fit may use.

    Drops, with one note each: rows of another metric than ``metric_key``, rows of trials whose
    status is in EXCLUDED_STATUSES (naming the trials), and rows whose ``fd`` or ``train_flops``
    is non-finite or not positive. Returns (kept rows, notes).
    """
    notes: list[str] = []
    other = points["metric_key"] != metric_key
    if other.any():
        keys = ", ".join(sorted(points.loc[other, "metric_key"].astype(str).unique()))
        notes.append(f"left out {int(other.sum())} point(s) measured with another metric ({keys})")
    kept = points[~other]
    bad_status = kept["status"].isin(EXCLUDED_STATUSES)
    if bad_status.any():
        trials = ", ".join(sorted(kept.loc[bad_status, "trial"].unique()))
        notes.append(f"left out {int(bad_status.sum())} point(s) of diverged/failed trials ({trials})")
    kept = kept[~bad_status]
    fd = kept["fd"].to_numpy(dtype=float)
    flops = kept["train_flops"].to_numpy(dtype=float)
    valid = np.isfinite(fd) & np.isfinite(flops) & (fd > 0) & (flops > 0)
    if (~valid).any():
        notes.append(f"left out {int((~valid).sum())} point(s) with a missing, non-finite or "
                     "non-positive FD or training compute")
    return kept[valid], notes


def compute_frontier(points: pd.DataFrame, x: str = "train_flops", y: str = "fd") -> pd.DataFrame:
    """The Pareto-optimal rows (lower envelope of ``y`` against ``x``), sorted by ``x``.

    A row is kept when its ``y`` is strictly below the ``y`` of every row with smaller ``x``
    (ties in ``x`` keep only the lowest ``y``). Expects finite values (see :func:`usable_points`).
    """
    ordered = points.sort_values([x, y], kind="mergesort")
    best_before = ordered[y].astype(float).cummin().shift(1, fill_value=np.inf)
    return ordered[ordered[y] < best_before]


MIN_LAW_SIZES = 3
"""Fewest model sizes on the compute frontier for a cross-size compute law. With fewer the
frontier is one or two models' learning curves: a power law through it measures how one model
trains, not what more compute buys across sizes."""


def frontier_sizes(frontier: pd.DataFrame) -> list[str]:
    """Distinct ``size`` labels on the frontier, in order of first appearance along compute."""
    return [str(s) for s in frontier.sort_values("train_flops")["size"].drop_duplicates()]


def law_refusal(frontier: pd.DataFrame, min_sizes: int = MIN_LAW_SIZES) -> str | None:
    """Why no cross-size law may be fitted to ``frontier`` (None if it may): fewer than
    ``min_sizes`` distinct sizes on it."""
    sizes = frontier_sizes(frontier)
    if len(sizes) >= min_sizes:
        return None
    if not sizes:
        return f"no cross-size law: the compute frontier is empty (need at least {min_sizes} sizes on it)"
    return (f"no cross-size law: the compute frontier holds {len(sizes)} size(s) ({', '.join(sizes)}); "
            f"it shows the learning curve of {', '.join(sizes)}, not a scaling law across sizes "
            f"(need at least {min_sizes} sizes on the frontier)")


def under_trained_sizes(best: pd.DataFrame) -> dict[str, str]:
    """Sizes whose best final FD is worse than that of a smaller size: {size: the smaller size}.

    ``best``: one row per size with columns ``size, g_width, g_depth, final_fd`` (its best trial's
    final FD, ``core.records.final_fd``). Size s' is
    smaller than s when its width and depth are both <= and one is <. A larger model that does
    worse than a smaller one has not been trained to its potential (too few iterations, or a
    badly tuned LR), so its point measures training, not scale. The smaller size named is the
    one with the lowest final FD among those that beat it.
    """
    out = {}
    rows = best[np.isfinite(best["final_fd"].astype(float))]
    for r in rows.itertuples():
        smaller = rows[(rows["g_width"] <= r.g_width) & (rows["g_depth"] <= r.g_depth)
                       & ((rows["g_width"] < r.g_width) | (rows["g_depth"] < r.g_depth))
                       & (rows["final_fd"] < r.final_fd)]
        if len(smaller):
            out[str(r.size)] = str(smaller.sort_values("final_fd")["size"].iloc[0])
    return out
