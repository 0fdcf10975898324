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

EXCLUDED_STATUSES = ("diverged", "failed")
"""Trials whose evaluations are never fitted: their numbers near the failure are not trustworthy."""


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
