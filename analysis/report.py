"""``make_report``: one sweep's MLflow runs -> CSV, fits (JSON), figures (PNG), HTML report, summary.

This is the entry point of ``gat-sweep plot SWEEP [--out DIR] [--tracking-uri URI]``. It works on a
finished sweep and on one still running (whatever has been logged so far). What the report shows
and the conventions are described in docs/ANALYSIS.md.

Files written into ``out_dir``: ``runs.csv`` (one row per evaluation, columns
``runs.POINT_COLUMNS``), ``fits.json`` (every fitted value, no NaN), ``report.html``
(self-contained: the figures are embedded as base64 data URIs), the figures
``fd_vs_compute.png``, ``fd_vs_kimg.png``, ``lr_transfer.png``, ``diagnostics.png``,
``samples.png``, and the downloaded sample grids under ``samples/``. ``log_report`` then logs
the report back to the sweep's MLflow parent run.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePath

import numpy as np
import pandas as pd
from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient

from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE as MLFLOW_DESCRIPTION

from analysis import coord_check, figures
from analysis.answer import NextSweep, estimate_text
from analysis.answer import answer as make_answer
from analysis.fit import Backtest, Estimate, ScalingFit, backtest_largest, fit_law
from analysis.frontier import compute_frontier, frontier_sizes, under_trained_sizes, usable_points
from analysis.paper import PAPER_LAW
from analysis.runs import SweepRuns, last_sample_grid, load_sweep, parent_artifact, trained_as
from analysis.transfer import PAPER_WIDTHS, SCORE_EVALS, TOLERANCE, RuleTransfer, analyse_transfer
from core.units import fd_text, lr_text
from core.records import EXCLUDED_STATUSES, STATUSES, TAG_SAME_AS, fit_tag, lr_transfer_tag

MODELS = ("saturating", "power")
SUMMARY_COLUMNS = ("size", "trials", "best final FD", "best trial", "actual LR", "rules", "at kimg", "precision",
                   "recall", "flag")
"""Keys of every ``ReportResult.summary_rows`` entry (all values are strings). ``trials``: how
many of the size's trials stand how (``4 finished, 1 diverged``); ``best final FD``: the lowest
final FD of the size's trials (the geometric mean of a trial's last 3 evaluations); ``best trial``
is that trial, ``actual LR`` G's LR it trained with, ``rules`` the rules that training stands for,
``at kimg``, ``precision`` and ``recall`` those of its last evaluation."""
TEXT_COLUMNS = 100
"""The terminal width the plain-text summary's sizes table fits (``gat-sweep plot`` prints it):
wider, it folds into tables of the columns that fit, each led by the size."""
HTML_TABLE_PX, HTML_CHAR_PX, HTML_CELL_PX = 520, 9, 18
"""The width the HTML report's sizes table fits, folded as the text one: MLflow's artifact
preview of the parent run's report.html (in a 1,400-px browser window, beside MLflow's assistant
panel); and about the width of a character and of a cell's padding and border at the table's font."""
REPORT_ARTIFACTS = "report"
"""Artifact folder of the parent run that :func:`log_report` fills."""


@dataclass
class ReportResult:
    """What :func:`make_report` wrote and what to print.

    ``summary_rows``: one dict per model size with the keys ``SUMMARY_COLUMNS`` (strings, ready
    for a table). ``summary``: a plain-text block (the same table, the fits, the LR-transfer
    verdicts and the notes) to print as is. ``notes``: every data-quality note (points left out,
    fits not possible, ...), also shown in the HTML. ``values``: every fitted value, the content of
    ``fits.json``.
    """

    out_dir: Path
    html: Path
    csv: Path
    json: Path
    figures: dict[str, Path]
    summary_rows: list[dict[str, str]]
    summary: str
    notes: list[str]
    values: dict

    @property
    def files(self) -> list[Path]:
        """Every file written (report, CSV, JSON, figures)."""
        return [self.html, self.csv, self.json, *self.figures.values()]


def make_report(sweep: str, tracking_uri: str, out_dir: Path, *, target_fd: float | None = None,
                n_boot: int = 1000, seed: int = 0, tolerance: float = TOLERANCE,
                target_widths: tuple[int, ...] = PAPER_WIDTHS,
                next_sweep_writer: Callable[[NextSweep], str] | None = None) -> ReportResult:
    """Load sweep ``sweep`` (experiment name or parent run id) from ``tracking_uri``, fit, plot
    and write the report files into ``out_dir`` (created if needed).

    ``target_fd``: FD whose required compute is reported (default: half the best FD observed).
    ``n_boot``/``seed``: bootstrap resamples and seed of the fit intervals and of the LR-transfer
    bootstrap over seeds. ``tolerance``: natural log of the largest shift of the best LR over the
    widths that counts as transferring (default log 2, ``analysis.transfer.TOLERANCE``).
    ``target_widths``: widths at which the answer predicts the best LR (default the paper's sizes).
    ``next_sweep_writer``: writes the suggested next sweep (:class:`analysis.answer.NextSweep`) and
    returns the command that runs it, which the answer then names (None: the answer describes it).
    Raises ``analysis.runs.SweepNotFound`` (a ValueError naming the sweeps that exist) when the
    sweep or the sqlite database does not exist, NotADirectoryError when ``out_dir`` is a file.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():  # before the slow loading and fitting
        raise NotADirectoryError(f"report directory {out_dir} is a file: give --out a directory")
    runs = load_sweep(sweep, tracking_uri)
    out_dir.mkdir(parents=True, exist_ok=True)
    notes = list(runs.notes)
    trials = runs.trials
    metric_key = runs.metric_key or "no FD/FID logged yet"
    points = runs.points[runs.points["metric_key"] == metric_key]
    usable, dropped = usable_points(runs.points, metric_key)
    source = trained_as(trials)
    copies = trials.loc[source != trials["trial"], "run_id"]
    if usable["run_id"].isin(copies).any():
        usable = usable[~usable["run_id"].isin(copies)]
        dropped.append(f"{len(copies)} copied trial(s) (tag {TAG_SAME_AS}) repeat another trial's "
                       "training, so their evaluations enter the compute fits once, as those of the run that "
                       "trained.")
    notes += dropped
    front = compute_frontier(usable)
    fits = {m: fit_law(front, m, c_unit="FLOPs", n_boot=n_boot, seed=seed) for m in MODELS}
    notes += [f"{m} fit: {n}" for m, f in fits.items() for n in f.notes]
    lowest_fd = float(usable["fd"].min()) if len(usable) else None
    target = target_fd if target_fd is not None else (lowest_fd / 2 if lowest_fd else None)
    budgets = _size_budgets(trials)
    order = [s for s in _size_order(trials) if s in set(usable["size"])]
    backtests = {m: backtest_largest(usable, order, budgets, m, n_boot=n_boot, seed=seed)
                 for m, f in fits.items() if f.ok}
    c_next, next_note = _next_size_compute(budgets, order)
    if next_note and backtests:
        notes.append(next_note)
    best = _best_per_size(trials, source)
    under = under_trained_sizes(best)
    for size, smaller in under.items():
        fd_big = float(best.loc[best["size"] == size, "final_fd"].iloc[0])
        fd_small = float(best.loc[best["size"] == smaller, "final_fd"].iloc[0])
        notes.append(f"{size} is under-trained: its best final FD {fd_text(fd_big)} is worse than the smaller "
                     f"{smaller}'s {fd_text(fd_small)} (train it longer or tune its LR; its points measure "
                     "training, not scale)")
    transfer = analyse_transfer(points, trials, n_boot=n_boot, seed=seed, tolerance=tolerance)
    seeds = tuple(sorted(int(v) for v in trials["seed"].dropna().unique())) if len(trials) else ()
    base_widths = trials["base_width"].dropna().astype(int).unique() if len(trials) else []
    answer = make_answer(transfer, target_widths=target_widths, seeds=seeds,
                         base_width=int(base_widths[0]) if len(base_widths) == 1 else None)
    if answer.next_sweep is not None:
        command = next_sweep_writer(answer.next_sweep) if next_sweep_writer else None
        answer.lines.append(f"Next: {command} ({answer.next_sweep.why})." if command else
                            f"Next: a sweep of {answer.next_sweep.why}.")

    colours = figures.size_colours(trials)
    shown_next = _shown_next(fits, backtests, c_next)
    grids = _best_grids(runs, best, points, out_dir / "samples")
    figs = {
        "fd_vs_compute": figures.fd_vs_compute(usable, front, fits, colours, metric_key,
                                               out_dir / "fd_vs_compute.png", shown_next, dropped),
        "fd_vs_kimg": figures.fd_vs_kimg(points, trials, colours, metric_key,
                                         out_dir / "fd_vs_kimg.png"),
        "lr_transfer": figures.lr_transfer(transfer, out_dir / "lr_transfer.png"),
        "diagnostics": figures.diagnostics(trials, out_dir / "diagnostics.png"),
        "samples": figures.sample_grids(grids, out_dir / "samples.png"),
    }
    coord = _coord_check(runs, out_dir)
    if coord is not None:
        figs["coord_check"] = coord
    rows = _summary_rows(trials, best, under)
    values = _fitted_values(runs, metric_key, front, fits, backtests, target, c_next, transfer,
                            best, under, notes)
    values["sample_grids"] = [caption for caption, _ in grids]
    values["lr_transfer_tolerance_log"] = tolerance
    values = {"answer": answer.to_dict(), **values}
    values = _no_nan(values)
    json_path = out_dir / "fits.json"
    json_path.write_text(json.dumps(values, indent=2, allow_nan=False))
    csv_path = runs.to_csv(out_dir / "runs.csv")
    summary = _summary_text(runs, rows, values, notes)
    html_path = out_dir / "report.html"
    html_path.write_text(_html(runs, rows, values, figs, notes))
    return ReportResult(out_dir, html_path, csv_path, json_path, figs, rows, summary, notes, values)


def log_report(result: ReportResult) -> str | None:
    """Log a report to its sweep's MLflow parent run (``fits.json``'s ``parent_run_id`` in its
    ``tracking_uri``), so the study's result sits beside its trials in the MLflow UI:

    * artifacts under ``report/``: every file of ``result.files`` (report.html, runs.csv,
      fits.json, the figures);
    * metrics ``fit/<model>/alpha`` of each fitted law and ``lr_transfer/<rule>/slope`` (slope of
      log best LR against log width), each with ``..._lo`` / ``..._hi`` where its interval is
      bounded;
    * tags ``gat_sweep.fit.<model>`` (``ok``, or why no law was fitted) and
      ``gat_sweep.lr_transfer.<rule>`` (the verdict in a few words, e.g. ``does not transfer:
      x0.28 [x0.2, x0.39]``);
    * the run's description (MLflow's ``mlflow.note.content``): the report's answer block.

    A later report replaces the artifacts and tags and logs the metrics again; MLflow cannot delete
    a metric, so one the later report has no value for (a fit no longer possible, an interval no
    longer bounded) keeps its earlier value: the tags say which fits hold now. Returns the parent
    run id, or None when the sweep has no single parent run (then nothing is logged). Raises what
    MLflow's client raises for a store it cannot write (MlflowException, OSError).
    """
    run_id = result.values["parent_run_id"]
    if run_id is None:
        return None
    client = MlflowClient(result.values["tracking_uri"])
    for path in result.files:
        client.log_artifact(run_id, str(path), REPORT_ARTIFACTS)
    metrics, tags = {}, {}
    for model, fit in result.values["fits"].items():
        tags[fit_tag(model)] = "ok" if fit["ok"] else fit["reason"]
        if fit["ok"]:
            metrics.update(_estimate_metrics(f"fit/{model}/alpha", fit["alpha"]))
    for rule, transfer in result.values["lr_transfer"].items():
        tags[lr_transfer_tag(rule)] = result.values["answer"]["short"].get(rule, transfer["outcome"])
        if transfer["slope"] is not None:
            metrics.update(_estimate_metrics(f"lr_transfer/{rule}/slope", transfer["slope"]))
    tags[MLFLOW_DESCRIPTION] = "\n\n".join(result.values["answer"]["lines"])
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(key, value, now, 0) for key, value in metrics.items()],
                     tags=[RunTag(key, value) for key, value in tags.items()])
    return run_id


def _estimate_metrics(key: str, estimate: dict) -> dict[str, float]:
    """``{key: value, key_lo: lo, key_hi: hi}`` of an estimate's dict, without the missing ones."""
    named = {key: estimate["value"], f"{key}_lo": estimate["lo"], f"{key}_hi": estimate["hi"]}
    return {k: v for k, v in named.items() if v is not None}


# ---- pieces ----------------------------------------------------------------------------------

def _coord_check(runs: SweepRuns, out_dir: Path) -> Path | None:
    """The coordinate check's figure (``coord_check.png``), drawn from the JSON that
    ``gat-sweep coord-check`` logged to the sweep's parent run; None when it logged none."""
    path = parent_artifact(runs.tracking_uri, runs.parent_run_id, "coord_check/coord_check.json", out_dir / "coord_check")
    if path is None:
        return None
    settings, records = coord_check.load(path)
    return coord_check.plot(records, settings, out_dir / "coord_check.png")


def _size_order(trials: pd.DataFrame) -> list[str]:
    return trials.sort_values(["g_width", "g_depth"])["size"].drop_duplicates().tolist()


def _size_budgets(trials: pd.DataFrame) -> dict[str, float]:
    """Planned training compute per size (FLOPs): the median over its trials of
    ``compute.flops_per_iter`` x ``iterations``, else of the last logged compute."""
    if trials.empty:
        return {}
    planned = trials["flops_per_iter"].astype(float) * trials["iterations"].astype(float)
    budget = planned.where(np.isfinite(planned), trials["last_train_flops"].astype(float))
    per_size = budget.groupby(trials["size"]).median()
    return {str(s): float(v) for s, v in per_size.items() if np.isfinite(v)}


def _next_size_compute(budgets: dict[str, float], order: list[str]) -> tuple[float | None, str | None]:
    """Planned training compute of the next larger size, continuing the sweep's geometric
    progression: c_next = c_last**2 / c_prev over the sizes ``order`` (smallest first)."""
    known = [s for s in order if s in budgets]
    if len(known) < 2:
        return None, "no next-size prediction: compute budgets known for fewer than 2 sizes"
    prev, last = budgets[known[-2]], budgets[known[-1]]
    if not last > prev > 0:
        return None, "no next-size prediction: the largest size does not use more compute"
    return float(last**2 / prev), None


def _shown_next(fits: dict[str, ScalingFit], backtests: dict[str, Backtest], c_next: float | None
                ) -> tuple[float, Estimate, str] | None:
    """(compute, predicted FD, backtest text) of the primary fit's next-size prediction, only when
    that fit's backtest succeeded."""
    primary = next((m for m in MODELS if fits[m].ok), None)
    if primary is None or c_next is None or not backtests[primary].ok:
        return None
    return c_next, fits[primary].predict_estimate(c_next), str(backtests[primary])


def _best_per_size(trials: pd.DataFrame, source: pd.Series) -> pd.DataFrame:
    """One row per size: the trained run (never a copy) with the lowest final FD
    (``core.records.final_fd``: what every "best" of the report means), with the LR rules that
    training stands for and the actual LR of G it trained with (a trial's name gives its rule's base
    LR). Columns: size, g_width, g_depth, final_fd, last_iter, trial, run_id, rules, lr_g, batch,
    flops_per_iter, precision, recall (of its last evaluation)."""
    columns = ["size", "g_width", "g_depth", "final_fd", "last_iter", "trial", "run_id", "rules",
               "lr_g", "batch", "flops_per_iter", "precision", "recall"]
    ok = trials[~trials["status"].isin(EXCLUDED_STATUSES)
                & np.isfinite(trials["final_fd"].astype(float))].copy()
    ok["trained"] = source.loc[ok.index]
    ok["is_copy"] = ok["trained"] != ok["trial"]
    rows = []
    for size in _size_order(ok):
        pick = ok[ok["size"] == size].sort_values(["final_fd", "is_copy"]).iloc[0]
        trained = trials[trials["trial"] == pick["trained"]].iloc[0]
        rules = sorted(trials.loc[source == pick["trained"], "lr_rule"].dropna().unique().tolist())
        rows.append({"size": size, "g_width": trained["g_width"], "g_depth": trained["g_depth"],
                     "final_fd": float(pick["final_fd"]), "last_iter": trained["last_iter"],
                     "trial": str(trained["trial"]), "run_id": trained["run_id"],
                     "rules": ", ".join(rules), "lr_g": float(trained["lr_g"]), "batch": trained["batch"],
                     "flops_per_iter": trained["flops_per_iter"], "precision": trained["precision"],
                     "recall": trained["recall"]})
    return pd.DataFrame(rows, columns=columns)


COLLAPSE_RECALL = 0.05
"""Recall below which a sample grid's rows are expected to repeat one image per class (partial
mode collapse), as in every measured digits run below ~1,000 iterations (docs/RESULTS.md)."""


def _trained_as(lr_g: float | None, rules: str, once: str = "") -> str:
    """'actual LR 4e-3; <once>rules constant, gat' (the LR when known, the rules only when the
    training stands for several; '' when neither): what a trial's name does not say about the run
    shown."""
    parts = ([] if lr_g is None else [f"actual LR {lr_text(lr_g)}"]) + ([f"{once}rules {rules}"] if "," in rules else [])
    return "; ".join(parts)


def _grid_caption(size: str, trial: str, rules: str, path: Path, points: pd.DataFrame,
                  run_id: str, final: float, recall: float = math.nan, lr_g: float | None = None) -> str:
    """Caption of a sample grid: the trial, the actual LR ``lr_g`` it trained with and the rules
    it stands for, the iteration of the grid (from its file name ``iter_<n>.png``), the FD at that
    iteration (the latest evaluation at or before it), the run's final FD and, when its last
    evaluation's ``recall`` is below ``COLLAPSE_RECALL``, that rows of near-identical images are
    expected."""
    match = re.search(r"(\d+)$", path.stem)
    trained_as = _trained_as(lr_g, rules, "trained once for ")
    head = f"{size}: {trial}" + (f"\n({trained_as})" if trained_as else "")
    collapse = (f"\nrecall {recall:.2f}: expect rows of one image\n(G uses z weakly this early)"
                if recall < COLLAPSE_RECALL else "")
    final_text = f"final FD {fd_text(final)}"
    if match is None:
        return f"{head}\ngrid {path.stem}; {final_text}{collapse}"
    it = int(match.group(1))
    evals = points[(points["run_id"] == run_id) & (points["iter"] <= it)].sort_values("iter")
    fd = f"FD {fd_text(evals['fd'].iloc[-1])}" if len(evals) else "no FD logged yet"
    if len(evals) and int(evals["iter"].iloc[-1]) != it:
        fd += f" (at iter {int(evals['iter'].iloc[-1])})"
    return f"{head}\ngrid at iter {it}: {fd}; {final_text}{collapse}"


def _best_grids(runs: SweepRuns, best: pd.DataFrame, points: pd.DataFrame, dst: Path
                ) -> list[tuple[str, Path]]:
    """Last sample grid of each size's best trained run (``_best_per_size``), captioned."""
    grids = []
    for r in best.itertuples():
        path = last_sample_grid(runs.tracking_uri, r.run_id, dst / str(r.trial).replace("/", "_"))
        if path is not None:
            grids.append((_grid_caption(r.size, r.trial, r.rules, path, points, r.run_id, r.final_fd,
                                        float(r.recall), r.lr_g), path))
    return grids


def _fmt(v, spec: str = ".3g") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return format(v, spec)


def _summary_rows(trials: pd.DataFrame, best: pd.DataFrame, under: dict[str, str]) -> list[dict[str, str]]:
    rows = []
    by_size = best.set_index("size") if len(best) else best
    for size in _size_order(trials):
        group = trials[trials["size"] == size]
        counts = group["status"].value_counts()
        b = by_size.loc[size] if size in by_size.index else None
        at = None if b is None else (b["last_iter"] * b["batch"] / 1000.0)
        rows.append({
            "size": str(size), "trials": ", ".join(f"{int(counts[s])} {s}" for s in STATUSES if counts.get(s, 0)),
            "best final FD": fd_text(None if b is None else float(b["final_fd"])),
            "best trial": "-" if b is None else str(b["trial"]),
            "actual LR": "-" if b is None else lr_text(float(b["lr_g"])),
            "rules": "-" if b is None else str(b["rules"]),
            "at kimg": _fmt(at, "g"),
            "precision": _fmt(None if b is None else float(b["precision"]), ".2f"),
            "recall": _fmt(None if b is None else float(b["recall"]), ".2f"),
            "flag": f"under-trained (worse than {under[size]})" if size in under else "",
        })
    return [{k: r[k] for k in SUMMARY_COLUMNS} for r in rows]


def _weights_key(extractor: str) -> str:
    """``eval.extractor`` without the cache directory: ``'digits-cnn (/any/cache/digits/KEY/file)'``
    -> ``'digits-cnn (KEY/file)'``, so trials that read the same weights from two caches (two
    machines, or $GAT_SWEEP_CACHE set for some runs) name one extractor."""
    name, sep, path = extractor.rpartition(" (")
    if not sep or not path.endswith(")"):
        return extractor
    parts = PurePath(path[:-1]).parts
    return f"{name} ({'/'.join(parts[-2:])})" if len(parts) > 2 else extractor


def _fitted_values(runs: SweepRuns, metric_key: str, front: pd.DataFrame, fits: dict[str, ScalingFit],
                   backtests: dict[str, Backtest], target: float | None, c_next: float | None,
                   transfer: dict[str, RuleTransfer], best: pd.DataFrame, under: dict[str, str],
                   notes: list[str]) -> dict:
    """Everything fitted, as plain JSON types (the content of fits.json)."""
    trials = runs.trials
    fit_values = {}
    for model, fit in fits.items():
        entry = fit.to_dict()
        if fit.ok:
            reach = fit.compute_for(target) if target else None
            entry["target_fd"] = target
            entry["compute_for_target"] = None if reach is None else reach.to_dict()
            bt = backtests[model]
            entry["backtest"] = bt.to_dict()
            entry["next_size"] = (None if c_next is None or not bt.ok else
                                  {"compute": c_next, "fd": fit.predict_estimate(c_next).to_dict()})
        fit_values[model] = entry
    return {
        "sweep": runs.sweep, "tracking_uri": runs.tracking_uri, "parent_run_id": runs.parent_run_id,
        "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "metric_key": metric_key,
        "eval_extractor": sorted({_weights_key(e) for e in trials["eval_extractor"].dropna()}),
        "eval_num_samples": sorted(int(v) for v in trials["eval_num_samples"].dropna().unique()),
        "flops_convention": sorted(trials["flops_convention"].dropna().unique().tolist()),
        "status_counts": {s: int((trials["status"] == s).sum()) for s in STATUSES},
        "frontier": [{"trial": r.trial, "size": r.size, "iter": int(r.iter), "kimg": float(r.kimg),
                      "train_flops": float(r.train_flops), "fd": float(r.fd)}
                     for r in front.itertuples()],
        "frontier_sizes": frontier_sizes(front),
        "best_per_size": [{"size": r.size, "trial": r.trial, "rules": r.rules.split(", "), "lr_g": r.lr_g,
                           "final_fd": r.final_fd, "precision": r.precision, "recall": r.recall,
                           "under_trained_vs": under.get(r.size)}
                          for r in best.itertuples()],
        "fits": fit_values,
        "lr_transfer": {rule: res.to_dict() for rule, res in transfer.items()},
        "paper_law": PAPER_LAW,
        "notes": notes,
    }


def _no_nan(obj):
    """Replace non-finite floats by None and numpy scalars by Python ones (strict JSON)."""
    if isinstance(obj, dict):
        return {k: _no_nan(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_no_nan(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def _est(d: dict, spec: str = ".4g") -> str:
    if d["lo"] is None and d["hi"] is None:
        return f"{format(d['value'], spec)} (no interval)"
    lo = "-inf" if d["lo"] is None else format(d["lo"], spec)
    hi = "inf" if d["hi"] is None else format(d["hi"], spec)
    return f"{format(d['value'], spec)} [{lo}, {hi}]"


def _fit_lines(values: dict) -> list[str]:
    lines = []
    for model, fit in values["fits"].items():
        if not fit["ok"]:
            if fit["reason"] not in lines:  # the same refusal for both models is said once
                lines.append(fit["reason"])
            continue
        text = f"{fit['formula']} (C in FLOPs, {fit['n_points']} frontier points): alpha {_est(fit['alpha'])}"
        if model == "saturating":
            text += f", E {_est(fit['E'])}"
        text += f", A {_est(fit['A'])}; R^2(log) {fit['r2_log']:.3f}, RMSE(log) {fit['rmse_log']:.3f}"
        if fit.get("target_fd") is not None:
            reach = fit["compute_for_target"]
            text += f"; to reach FD {fd_text(fit['target_fd'])}: " + (
                "unreachable under this law (below its floor E)" if reach is None else f"{_est(reach, '.3g')} FLOPs")
        lines.append(text)
        bt = fit["backtest"]
        if not bt["ok"]:
            line = f"  no next-size prediction: {bt['reason']}"
            if line not in lines:
                lines.append(line)
            continue
        inside = {True: "inside", False: "outside", None: "no"}[bt["covered"]]
        predicted = bt["predicted"]
        lines.append(f"  backtest: fitted without {bt['held_out']}, the law predicted its best FD at "
                     f"{fd_text(predicted['value'])} [{fd_text(predicted['lo'])}, {fd_text(predicted['hi'])}] "
                     f"at {bt['compute']:.3g} FLOPs; observed {fd_text(bt['observed'])}: error "
                     f"{100 * bt['error']:+.0f}% ({inside} the interval)")
        if fit.get("next_size"):
            nxt = fit["next_size"]["fd"]
            lines.append(f"  next size ({fit['next_size']['compute']:.3g} FLOPs): FD {fd_text(nxt['value'])} "
                         f"[{fd_text(nxt['lo'])}, {fd_text(nxt['hi'])}] (judge it by the backtest error above)")
    return lines


def _tolerance_text(values: dict) -> str:
    """The LR-transfer tolerance as a factor, e.g. "x2"."""
    return f"x{math.exp(values.get('lr_transfer_tolerance_log', TOLERANCE)):.3g}"


def _rule_details(t: dict) -> list[str]:
    """The lines under one rule's LR-transfer verdict: its best base LR per width, the LRs that
    diverged, and the other rules' trainings it was also fitted to."""
    out = []
    opt = [f"{o['width']}: {estimate_text(Estimate(**o['best_lr']))}"
           + (" (outside its valley's LRs)" if o["at_edge"] else "")
           for o in t["optima"] if o["best_lr"] is not None]
    if opt:
        out.append(f"best base LR per width: {'; '.join(opt)}")
    failed = [f"{o['width']}: {', '.join(lr_text(v) for v in o['diverged_lrs'])}"
              for o in t["optima"] if o["diverged_lrs"]]
    if failed:
        out.append(f"diverged (excluded from the fit): {'; '.join(failed)}")
    cliff = [f"{o['width']}: {', '.join(lr_text(v) for v in o['left_out_lrs'])}"
             for o in t["optima"] if o.get("left_out_lrs")]
    if cliff:
        out.append(f"left out of the valley as beyond its cliff (FD far above the valley's continuation): "
                   f"{'; '.join(cliff)}")
    if t["n_trainings_pooled"]:
        out.append(f"also fitted to {t['n_trainings_pooled']} training(s) of other rules at actual LRs "
                   "this rule did not run, each placed at the base LR this rule would give it (base LRs "
                   "its own grid does not hold)")
    return out


def _transfer_lines(values: dict) -> list[str]:
    out = []
    for rule, t in values["lr_transfer"].items():
        out.append(f"{rule}: {t['verdict']} - {t['expected']}")
        out += [f"  {line}" for line in _rule_details(t)]
    return out


def _fold(width_of: Callable[[str], int], budget: int) -> list[list[str]]:
    """:data:`SUMMARY_COLUMNS` in groups, each led by the size column, whose widths (``width_of``
    a column, with what separates it from the next) sum to at most ``budget`` where they can (a
    column wider than that alone gets a group of its own): the tables the sizes table folds into."""
    key = SUMMARY_COLUMNS[0]
    groups = [[key]]
    for column in SUMMARY_COLUMNS[1:]:
        if len(groups[-1]) > 1 and sum(map(width_of, [*groups[-1], column])) > budget:
            groups.append([key])
        groups[-1].append(column)
    return groups


def _table_text(rows: list[dict[str, str]], width: int) -> list[str]:
    """The sizes table as text lines of at most ``width`` characters where its cells allow: folded
    (:func:`_fold`) into tables separated by an empty line; columns two spaces apart."""
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) if rows else len(c) for c in SUMMARY_COLUMNS}
    lines: list[str] = []
    for columns in _fold(lambda c: widths[c] + 2, width + 2):
        lines += [""] if lines else []
        lines.append("  ".join(c.ljust(widths[c]) for c in columns).rstrip())
        lines += ["  ".join(r[c].ljust(widths[c]) for c in columns).rstrip() for r in rows]
    return lines


def _summary_text(runs: SweepRuns, rows: list[dict[str, str]], values: dict, notes: list[str]) -> str:
    out = [f"sweep {runs.sweep} - metric {values['metric_key']}", "",
           "ANSWER (LR transfer; 95% intervals from a bootstrap over seeds):",
           *(f"  {line}" for line in values["answer"]["lines"]), "",
           f"sizes (final FD: the geometric mean of a trial's last {SCORE_EVALS} evaluations; best = lowest):",
           *(f"  {line}".rstrip() for line in _table_text(rows, TEXT_COLUMNS - 2)), "",
           "fits (95% bootstrap intervals; 'to reach FD X': compute for a target FD, by default half the best):"]
    out += [f"  {line}" for line in _fit_lines(values)]
    tol = _tolerance_text(values)
    out += ["", f"LR transfer in detail (shift of the best base LR over the widths; transfers if within {tol}, "
                f"does not transfer if beyond, moves if it excludes x1 only; score: final FD):"]
    out += [f"  {line}" for line in _transfer_lines(values)]
    if notes:
        out += ["", "notes:", *(f"  - {n}" for n in notes)]
    return "\n".join(out)


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


LINE_BREAKS = re.compile(r" |(?<=_)")
"""Where a table cell of the HTML report may break its line: at spaces and after underscores
(trial names), never inside a word such as ``w16-d4`` or ``1.6e-2``."""


def _pieces(text: str) -> list[str]:
    """The parts of a cell's text between its line breaks (:data:`LINE_BREAKS`)."""
    return LINE_BREAKS.split(text)


def _cell(text: str) -> str:
    """A table cell's text as HTML that breaks lines only at :data:`LINE_BREAKS`."""
    words = ("<wbr>".join(f"<span class='nw'>{html.escape(p)}</span>" for p in _pieces(w)) for w in text.split(" "))
    return " ".join(words)


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_cell(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}td,th{border:1px solid #ccc;padding:3px 8px}
th{background:#f2f2f2}.nw{white-space:nowrap}img{max-width:100%;border:1px solid #eee}.note{color:#8a4b00}code{background:#f5f5f5}
.answer{background:#f4f8ff;border:1px solid #b8cbe8;padding:0.2em 1em;margin:1em 0}.answer li{margin:0.4em 0}
.provenance{color:#666;font-size:0.85em}"""


def _html(runs: SweepRuns, rows: list[dict[str, str]], values: dict, figs: dict[str, Path],
          notes: list[str]) -> str:
    esc = html.escape

    def html_width(column: str) -> int:
        """About the px a column of the sizes table takes: its longest part that cannot wrap."""
        return HTML_CELL_PX + HTML_CHAR_PX * max(len(p) for text in (column, *(r[column] for r in rows))
                                                 for p in _pieces(text))

    counts = ", ".join(f"{n} {s}" for s, n in values["status_counts"].items())
    provenance = (f"metric <code>{esc(values['metric_key'])}</code> "
                  f"(extractor: {esc(', '.join(values['eval_extractor']) or 'not logged')}, "
                  f"samples: {esc(', '.join(map(str, values['eval_num_samples'])) or 'not logged')}); "
                  f"compute convention: {esc('; '.join(values['flops_convention']) or 'not logged')}")
    transfer_rows = [[rule, t["verdict"], t["expected"]] for rule, t in values["lr_transfer"].items()]
    # the table holds the verdicts; each detail line below it names its rule
    detail = [f"{rule}, {line}" for rule, t in values["lr_transfer"].items() for line in _rule_details(t)]
    transfer_detail = "<br>".join(esc(line) for line in detail)
    answer = "".join(f"<li>{esc(line)}</li>" for line in values["answer"]["lines"])
    alphas = [f"{m}: alpha {f['alpha']['value']:.3f}" + (" (failed its backtest)" if f["backtest"]["covered"] is False
                                                         else "")
              for m, f in values["fits"].items() if f["ok"]]
    paper = (f"The GAT paper reports FID ~ {PAPER_LAW['A']:.3g} C^-{PAPER_LAW['alpha']} (C in GFLOPs, "
             f"ImageNet-256, FID-50K); this sweep: {'; '.join(alphas) or 'no fit yet'}. Only an exponent "
             "could be compared across datasets, metrics and training lengths, and loosely at that.")
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>gat-sweep report: {esc(runs.sweep)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Scaling report: {esc(runs.sweep)}</h1>",
        f"<div class='answer'><h2>The answer</h2><ul>{answer}</ul></div>",
        "<h2>Sizes</h2>",
        f"<p>Final FD: the geometric mean of a trial's last {SCORE_EVALS} evaluations (the LR-transfer score); a "
        "size's best trial has the lowest.</p>",
        *(_table(columns, [[r[c] for c in columns] for r in rows]) for columns in _fold(html_width, HTML_TABLE_PX)),
        "<h2>FD against training compute</h2>", _img(figs["fd_vs_compute"], "FD vs compute"),
        "<p>Fits on the compute-efficient frontier, Huber loss in log space, 95% intervals from a "
        "seeded bootstrap of the frontier points (docs/ANALYSIS.md); 'to reach FD X': the compute the law "
        "needs for a target FD X, by default half the best FD observed.</p>",
        "<ul>" + "".join(f"<li>{esc(line)}</li>" for line in _fit_lines(values)) + "</ul>",
        f"<p>{esc(paper)}</p>",
        "<h2>Learning-rate transfer</h2>", _img(figs["lr_transfer"], "LR transfer"),
        _table(["rule", "verdict", "expectation"], transfer_rows),
        f"<p>{transfer_detail}</p>" if transfer_detail else "",
        f"<p>Model per rule: log FD = a_w + c_w (log lr - m_w)^2 per width below its cliff (the highest "
        "LRs whose FD lies far above the valley's continuation, or that diverged, are left out and bound "
        "the optimum from above), b = slope of m_w against log width, fitted to every training; score = "
        f"the log of a trial's final FD; interval: bootstrap over seeds with a small-sample t factor; "
        f"equivalence test with tolerance {_tolerance_text(values)} (docs/ANALYSIS.md).</p>",
        "<h2>Training curves</h2>", _img(figs["fd_vs_kimg"], "FD vs kimg"),
        "<h2>Failure-mode diagnostics</h2>", _img(figs["diagnostics"], "diagnostics"),
        *(["<h2>Coordinate check (gat-sweep coord-check)</h2>", _img(figs["coord_check"], "coordinate check"),
           "<p>RMS of each layer group's activations and of their change per optimiser step against width, per "
           "rule and network: flat curves mean the rule keeps updates the same size at every width (docs/ANALYSIS.md, "
           "Coordinate check).</p>"] if "coord_check" in figs else []),
        "<h2>Samples of the best trial per size</h2>", _img(figs["samples"], "sample grids"),
        "<ul>" + "".join(f"<li>{esc(c)}</li>" for c in values.get("sample_grids", [])) + "</ul>",
        "<h2>Notes</h2><ul>" + ("".join(f"<li class='note'>{esc(n)}</li>" for n in notes)
                                or "<li>none</li>") + "</ul>",
        f"<p class='provenance'>Generated {esc(values['generated'])} from <code>{esc(runs.tracking_uri)}</code>. "
        f"Trials: {esc(counts)}. {provenance}.</p>",
        "</body></html>",
    ]
    return "\n".join(parts)
