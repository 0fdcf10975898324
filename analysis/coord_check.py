"""A coordinate check's numbers and figure, from the JSON that ``gat-sweep coord-check`` writes.

The measurement is :mod:`core.gan.coord_check` (Yang et al. 2022, "Tensor Programs V", §7: for each
width, a few training steps of G and D; per layer group, the RMS of its activations on a fixed
probe batch and of their change per optimiser step). The file is
``{"settings": {...}, "quantities": {name: description}, "records": [...]}`` with tidy records
``{rule, network, group, width, seed, step, quantity, value}``. This module reads it without
torch, so the report can embed the figure.

Summary of one curve point (:func:`summarise`): for a (rule, network, group, quantity, width), the
mean over seeds of the mean over steps 1..N (the values after each update; ``rms`` at step 0,
the initialisation, is left out of it). Slope (:func:`slopes`): the least-squares slope of
log(summary) against log(width): 0 = flat in width (the sizes transfer), +1 = grows in proportion
to width (updates blow up as the network widens), negative = vanishes with width.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.figures import DPI, readable_log_axes, width_axis

NETWORK_NAMES = {"g": "G", "d": "D"}
KEYS = ["rule", "network", "group", "quantity"]
"""What identifies one curve of the figure (its points are the widths)."""


def load(path: Path) -> tuple[dict[str, Any], pd.DataFrame]:
    """The file's settings (with its ``quantities`` descriptions under ``"quantities"``) and its
    records as a DataFrame (columns rule, network, group, width, seed, step, quantity, value; value
    NaN where the file has null). Raises FileNotFoundError, or ValueError for a file that is not a
    coordinate check's."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or "records" not in data:
        raise ValueError(f"{path} is not a coordinate check's JSON (no 'records')")
    records = pd.DataFrame(data["records"], columns=["rule", "network", "group", "width", "seed", "step",
                                                     "quantity", "value"])
    records["value"] = records["value"].astype(float)
    return {**data.get("settings", {}), "quantities": data.get("quantities", {})}, records


def _per_seed(records: pd.DataFrame) -> pd.DataFrame:
    """One row per (rule, network, group, quantity, width, seed): ``value`` = the mean over steps >= 1."""
    after = records[records["step"] >= 1]
    return after.groupby([*KEYS, "width", "seed"], sort=False)["value"].mean().reset_index()


def _select(table: pd.DataFrame, key: tuple[str, ...]) -> pd.DataFrame:
    """The rows of ``table`` whose (rule, network, group, quantity) is ``key``."""
    return table[(table[KEYS] == pd.Series(key, index=KEYS)).all(axis=1)]


def summarise(records: pd.DataFrame) -> pd.DataFrame:
    """One row per (rule, network, group, quantity, width): ``value`` = the mean over seeds of each
    seed's mean over steps >= 1, ``seeds`` = how many seeds had a finite value. Rows keep the order
    in which the records name rules, networks and groups."""
    out = _per_seed(records).groupby([*KEYS, "width"], sort=False)["value"].agg(["mean", "count"]).reset_index()
    return out.rename(columns={"mean": "value", "count": "seeds"})


def slopes(records: pd.DataFrame) -> pd.DataFrame:
    """Per (rule, network, group, quantity): ``slope`` of log(summary value) against log(width)
    (least squares over the widths with a positive finite value; NaN with fewer than 2) and
    ``ratio`` = last width's value / first width's (the growth over the range)."""
    rows = []
    for key, curve in summarise(records).groupby(KEYS, sort=False):
        curve = curve[np.isfinite(curve["value"]) & (curve["value"] > 0)].sort_values("width")
        ok = len(curve) >= 2
        slope = np.polyfit(np.log(curve["width"]), np.log(curve["value"]), 1)[0] if ok else np.nan
        ratio = curve["value"].iloc[-1] / curve["value"].iloc[0] if ok else np.nan
        rows.append({**dict(zip(KEYS, key)), "slope": float(slope), "ratio": float(ratio)})
    return pd.DataFrame(rows, columns=[*KEYS, "slope", "ratio"])


def slope_table(records: pd.DataFrame, quantity: str = "delta_rms") -> dict[str, pd.DataFrame]:
    """{network: DataFrame of ``quantity``'s slopes, one row per rule, one column per group}, in the
    records' order: what ``gat-sweep coord-check`` prints."""
    table = slopes(records)
    table = table[table["quantity"] == quantity]
    return {net: part.pivot(index="rule", columns="group", values="slope")
            .reindex(index=part["rule"].unique(), columns=part["group"].unique())
            for net, part in table.groupby("network", sort=False)}


def plot(records: pd.DataFrame, settings: dict[str, Any], path: Path) -> Path:
    """Write :func:`figure` as a PNG to ``path``; returns ``path``."""
    figure(records, settings).savefig(path, dpi=DPI)
    return Path(path)


def figure(records: pd.DataFrame, settings: dict[str, Any]) -> Figure:
    """The coordinate-check figure: one panel per rule (rows) x network and quantity (columns),
    the summary value against width on log-log axes, one line per layer group (colours run from the
    first group to the last), the per-seed values as faint dots; panels of one column share their
    y axis, so rules compare at a glance. ``settings``: the file's (:func:`load`), for the titles."""
    summary = summarise(records)
    per_seed = _per_seed(records)
    rules = list(records["rule"].unique())
    columns = [(net, q) for net in records["network"].unique() for q in records["quantity"].unique()]
    widths = sorted(records["width"].unique().tolist())
    height = 2.7 * len(rules) + 0.9  # inches: panels, plus room for the title and the x labels
    fig = Figure(figsize=(3.4 * len(columns), height))
    axes = fig.subplots(len(rules), len(columns), squeeze=False, sharey="col")
    cmap = matplotlib.colormaps["viridis"]
    descriptions = settings.get("quantities", {})
    for j, (net, quantity) in enumerate(columns):
        groups = list(records.loc[records["network"] == net, "group"].unique())
        colours = {g: cmap(0.9 * i / max(len(groups) - 1, 1)) for i, g in enumerate(groups)}
        for i, rule in enumerate(rules):
            ax = axes[i, j]
            for group in groups:
                key = (rule, net, group, quantity)
                curve, dots = _select(summary, key), _select(per_seed, key)
                ax.scatter(dots["width"], dots["value"], s=6, color=colours[group], alpha=0.35, lw=0)
                ax.plot(curve["width"], curve["value"], "o-", ms=3, lw=1.2, color=colours[group], label=group)
            ax.set_yscale("log")
            width_axis(ax, widths)
            ax.grid(True, alpha=0.3)
            ax.set_title(f"{rule}: {NETWORK_NAMES.get(net, net)} {descriptions.get(quantity, quantity)}", fontsize=9)
            if j == 0:
                ax.set_ylabel("RMS")
            if i == len(rules) - 1:
                ax.set_xlabel("width")
            if i == 0:
                ax.legend(fontsize=6, ncol=2, title=f"{NETWORK_NAMES.get(net, net)} layer group",
                          title_fontsize=6)
    for ax in axes.flat:
        readable_log_axes(ax, x=False)
    fig.suptitle(_title(settings), fontsize=9)
    # fixed margins in inches (a tight layout would draw the figure once more: seconds on a busy CPU)
    fig.subplots_adjust(left=0.75 / fig.get_figwidth(), right=0.99, top=1 - 0.65 / height, bottom=0.5 / height,
                        wspace=0.3, hspace=0.45)
    return fig


def _title(settings: dict[str, Any]) -> str:
    """The figure's title line from the settings :mod:`core.gan.coord_check`'s caller wrote."""
    parts = [f"coordinate check of {settings['sweep']}" if "sweep" in settings else "coordinate check"]
    for key, label in (("steps", "steps"), ("seeds", "seeds"), ("batch", "batch"), ("base_lr", "base LR"),
                       ("base_width", "base width")):
        value = settings.get(key)
        if value is not None:
            parts.append(f"{label} {value:g}" if isinstance(value, float) else f"{label} {value}")
    return ", ".join(parts) + " (mean over steps 1..N; dots: seeds)"
