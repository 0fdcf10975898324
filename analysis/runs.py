"""Load one sweep's runs from MLflow into tidy pandas tables (schema: docs/TRACKING.md).

``load_sweep(sweep, tracking_uri)`` finds the sweep by experiment name or by parent run id and
returns two tables:

* ``points``: one row per evaluation of a trial (the FD/FID named by the trial's
  ``eval.metric_key`` param), with the trial's parameters, the iteration (MLflow step), kimg and
  cumulative training FLOPs at that iteration (``progress/kimg`` and ``compute/train_flops``
  histories, matched by step);
* ``trials``: one row per trial (child run) with its parameters (``lr_mults``: the per-kind LR
  multipliers, ``"d.hidden=1,...,g.vector=1"``), status, latest progress, its final FD
  (``core.records.final_fd``: the geometric mean of its last 3 evaluations, what every "best"
  means), its last and its lowest single FD (``last_fd``, ``best_fd`` at ``best_iter``), the
  precision and recall of its last evaluation (:func:`quality_keys`; NaN where not logged), the
  latest failure-mode diagnostics (``diag/early_skip_rel``,
  ``diag/g_update_rel``) and ``same_as``: for a copied trial (tag ``gat_sweep.same_as``) the
  name of the trial whose training it repeats, else None. ``trained_as(trials)`` maps every
  trial to the trial that actually trained.

Trials may still be running: whatever has been logged so far is loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from core.records import (
    BASE_LR_PARAM,
    BASE_WIDTH_PARAM,
    D_DEPTH_PARAM,
    D_WIDTH_PARAM,
    EARLY_SKIP_REL,
    EVAL_SAMPLES_PARAM,
    EXTRACTOR_PARAM,
    FAILED,
    FINISHED,
    FLOPS_CONVENTION_PARAM,
    FLOPS_PER_ITER_PARAM,
    G_DEPTH_PARAM,
    G_UPDATE_REL,
    G_WIDTH_PARAM,
    ITER,
    KIMG,
    LR_RULE_PARAM,
    METRIC_KEY_PARAM,
    RUNNING,
    SIZE_PARAM,
    STATUSES,
    TAG_ROLE,
    TAG_SAME_AS,
    TAG_STATUS,
    TAG_TRIAL,
    TRAIN_FLOPS,
    final_fd,
    quality_keys,
)

DIAG_KEYS = {"early_skip_rel": EARLY_SKIP_REL, "g_update_rel": G_UPDATE_REL}

# tidy column -> (MLflow param, parser); TRACKING.md "Child run" params.
_PARAMS: dict[str, tuple[str, type]] = {
    "size": (SIZE_PARAM, str),
    "g_width": (G_WIDTH_PARAM, int),
    "g_depth": (G_DEPTH_PARAM, int),
    "d_width": (D_WIDTH_PARAM, int),
    "d_depth": (D_DEPTH_PARAM, int),
    "patch": ("patch", int),
    "lr_rule": (LR_RULE_PARAM, str),
    "base_lr": (BASE_LR_PARAM, float),
    "base_width": (BASE_WIDTH_PARAM, int),
    "lr_g": ("lr_g", float),
    "lr_d": ("lr_d", float),
    "batch": ("batch", int),
    "seed": ("seed", int),
    "iterations": ("iterations", int),
    "flops_per_iter": (FLOPS_PER_ITER_PARAM, float),
    "flops_convention": (FLOPS_CONVENTION_PARAM, str),
    "metric_key": (METRIC_KEY_PARAM, str),
    "eval_extractor": (EXTRACTOR_PARAM, str),
    "eval_num_samples": (EVAL_SAMPLES_PARAM, int),
}
TRIAL_COLUMNS = ["trial", "run_id", "status", "same_as", *_PARAMS, "lr_mults", "n_evals", "last_iter",
                 "last_kimg", "last_train_flops", "final_fd", "last_fd", "best_fd", "best_iter", "precision", "recall",
                 *DIAG_KEYS]
POINT_COLUMNS = ["sweep", "trial", "run_id", "status", "size", "g_width", "g_depth", "d_width",
                 "d_depth", "lr_rule", "base_lr", "base_width", "lr_g", "lr_d", "batch", "seed",
                 "metric_key", "iter", "kimg", "train_flops", "fd"]
"""Columns of ``SweepRuns.points`` (and of the CSV): ``fd`` is the value of ``metric_key``
(an FD in a domain extractor's feature space, or Inception FID), ``train_flops`` is cumulative
training FLOPs under the trial's ``compute.flops_convention``."""
_TRIAL_FIELDS_IN_POINTS = POINT_COLUMNS[1:POINT_COLUMNS.index("iter")]


class SweepNotFound(ValueError):
    """The sweep name / parent run id (or the tracking store itself) does not exist; the message
    names what does."""


@dataclass
class SweepRuns:
    """One sweep loaded from MLflow (see the module docstring for the two tables)."""

    sweep: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str | None
    points: pd.DataFrame
    trials: pd.DataFrame
    metric_key: str | None
    """The FD/FID key most trials use (None before any evaluation)."""
    notes: list[str] = field(default_factory=list)

    def to_csv(self, path: Path) -> Path:
        """Write ``points`` as CSV (one row per evaluation) and return ``path``."""
        self.points.to_csv(path, index=False)
        return path


def load_sweep(sweep: str, tracking_uri: str) -> SweepRuns:
    """Load the sweep called ``sweep`` (experiment name) or with parent run id ``sweep``.

    Raises SweepNotFound naming the sweeps that exist when neither matches, or the database path
    when a ``sqlite:///`` store does not exist (MLflow would silently create an empty one).
    """
    _check_store(tracking_uri)
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(sweep)
    parent_id = None
    if experiment is not None:
        trial_filter = f"tags.`{TAG_ROLE}` = 'trial'"
        parents = _search_all(client, experiment.experiment_id, f"tags.`{TAG_ROLE}` = 'parent'")
        parent_id = parents[0].info.run_id if len(parents) == 1 else None
    else:
        parent = _get_parent_run(client, sweep)
        if parent is None:
            raise SweepNotFound(_not_found_message(client, sweep, tracking_uri))
        experiment = client.get_experiment(parent.info.experiment_id)
        parent_id = parent.info.run_id
        trial_filter = f"tags.`mlflow.parentRunId` = '{parent_id}'"
    runs, notes = _latest_per_trial(_search_all(client, experiment.experiment_id, trial_filter))
    trial_rows, point_frames = [], []
    for run in runs:
        trial, points = _load_trial(client, run)
        trial_rows.append(trial)
        point_frames.append(points)
    trials = pd.DataFrame(trial_rows, columns=TRIAL_COLUMNS)
    frames = [f for f in point_frames if not f.empty]
    points = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=POINT_COLUMNS[1:])
    points.insert(0, "sweep", experiment.name)
    points = points[POINT_COLUMNS].sort_values(["trial", "iter"], ignore_index=True)
    metric_key = None
    keys = trials.loc[trials["n_evals"] > 0, "metric_key"].dropna()
    if len(keys):
        metric_key = str(keys.value_counts().index[0])
    if trials.empty:
        notes.append("the sweep has no trial runs yet")
    return SweepRuns(experiment.name, tracking_uri, experiment.experiment_id, parent_id,
                     points, trials.sort_values("trial", ignore_index=True), metric_key, notes)


def trained_as(trials: pd.DataFrame) -> pd.Series:
    """Per row of ``trials``: the name of the trial that trained it (its ``same_as`` source when
    that source is in the table, else itself). Index and order of ``trials``."""
    names = set(trials["trial"])
    src = trials["same_as"] if "same_as" in trials else pd.Series(None, index=trials.index)
    return pd.Series([s if isinstance(s, str) and s in names else t
                      for t, s in zip(trials["trial"], src)], index=trials.index)


def last_sample_grid(tracking_uri: str, run_id: str, dst_dir: Path) -> Path | None:
    """Download the run's last ``samples/*.png`` artifact into ``dst_dir``; None if it has none
    or the artifact store cannot be read. MLflow's download progress bar is off unless the user
    set ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR``."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    client = MlflowClient(tracking_uri)
    try:
        files = [f.path for f in client.list_artifacts(run_id, "samples") if f.path.endswith(".png")]
        if not files:
            return None
        dst_dir.mkdir(parents=True, exist_ok=True)
        return Path(client.download_artifacts(run_id, sorted(files)[-1], str(dst_dir)))
    except (MlflowException, OSError):
        return None


def parent_artifact(tracking_uri: str, run_id: str | None, path: str, dst_dir: Path) -> Path | None:
    """Download the artifact ``path`` of the sweep's parent run (e.g. the coordinate check's
    ``coord_check/coord_check.json``) into ``dst_dir``; None without a parent run, without that
    artifact, or when the artifact store cannot be read."""
    if run_id is None:
        return None
    client = MlflowClient(tracking_uri)
    folder = path.rpartition("/")[0]
    try:
        if path not in {f.path for f in client.list_artifacts(run_id, folder or None)}:
            return None
        dst_dir.mkdir(parents=True, exist_ok=True)
        return Path(client.download_artifacts(run_id, path, str(dst_dir)))
    except (MlflowException, OSError):
        return None


# ---- helpers ---------------------------------------------------------------------------------

def _check_store(tracking_uri: str) -> None:
    prefix = "sqlite:///"
    if tracking_uri.startswith(prefix):
        path = Path(tracking_uri[len(prefix):])
        if not path.is_file():
            raise SweepNotFound(f"no MLflow database at {path} (tracking URI {tracking_uri}); "
                                "run the sweep first or pass the right --tracking-uri")


def _search_all(client: MlflowClient, experiment_id: str, filter_string: str) -> list[Run]:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _get_parent_run(client: MlflowClient, run_id: str) -> Run | None:
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None
    return run if run.data.tags.get(TAG_ROLE) == "parent" else None


def _not_found_message(client: MlflowClient, sweep: str, tracking_uri: str) -> str:
    lines = []
    for exp in client.search_experiments(max_results=1000):
        for parent in _search_all(client, exp.experiment_id, f"tags.`{TAG_ROLE}` = 'parent'"):
            lines.append(f"{exp.name} (parent run {parent.info.run_id})")
    known = "; ".join(lines) if lines else "none"
    return (f"no sweep named {sweep!r} and no parent run with that id in {tracking_uri}; "
            f"sweeps there: {known}")


def _latest_per_trial(runs: list[Run]) -> tuple[list[Run], list[str]]:
    """Keep the most recently started run per trial name (a sweep restarted from scratch logs a
    trial twice)."""
    by_name: dict[str, Run] = {}
    for run in sorted(runs, key=lambda r: r.info.start_time or 0):
        by_name[_trial_name(run)] = run
    notes = []
    if len(by_name) < len(runs):
        notes.append(f"{len(runs) - len(by_name)} older duplicate trial run(s) ignored "
                     "(kept the latest run per trial name)")
    return list(by_name.values()), notes


def _trial_name(run: Run) -> str:
    return run.data.tags.get(TAG_TRIAL) or run.info.run_name or run.info.run_id


def _status(run: Run) -> str:
    tag = run.data.tags.get(TAG_STATUS)
    if tag in STATUSES:
        return tag
    return {"RUNNING": RUNNING, "SCHEDULED": RUNNING, "FINISHED": FINISHED}.get(run.info.status, FAILED)


def _parse(value: str | None, kind: type):
    if value is None or value == "":
        return None if kind is str else np.nan
    try:
        return kind(float(value)) if kind is int else kind(value)
    except ValueError:
        return None if kind is str else np.nan


def _history(client: MlflowClient, run_id: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of a metric, sorted by step; the latest value wins on a repeated step."""
    metrics = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
    by_step = {m.step: m.value for m in metrics}
    steps = np.array(sorted(by_step), dtype=float)
    return steps, np.array([by_step[s] for s in sorted(by_step)], dtype=float)


def _at_steps(history: tuple[np.ndarray, np.ndarray], steps: np.ndarray) -> np.ndarray:
    """A cumulative metric at ``steps``: linear interpolation inside its logged range, NaN outside."""
    hs, hv = history
    out = np.full(len(steps), np.nan)
    if len(hs):
        inside = (steps >= hs[0]) & (steps <= hs[-1])
        out[inside] = np.interp(steps[inside], hs, hv)
    return out


def _value_at(client: MlflowClient, run_id: str, key: str, step: float) -> float:
    """The metric ``key`` logged at ``step`` exactly, or NaN."""
    steps, values = _history(client, run_id, key)
    found = values[steps == step]
    return float(found[0]) if len(found) else np.nan


def _load_trial(client: MlflowClient, run: Run) -> tuple[dict, pd.DataFrame]:
    params, metrics = run.data.params, run.data.metrics
    info = {col: _parse(params.get(key), kind) for col, (key, kind) in _PARAMS.items()}
    if info["size"] is None:
        info["size"] = f"w{info['g_width']}-d{info['g_depth']}"
    # the per-parameter-kind LR multipliers (lr_mult_g.hidden, ...), e.g. "d.hidden=1,...": two
    # trainings with the same lr_g and lr_d differ when these do (muP-style rules)
    info["lr_mults"] = ",".join(f"{key.removeprefix('lr_mult_')}={float(value):g}"
                                for key, value in sorted(params.items()) if key.startswith("lr_mult_"))
    run_id = run.info.run_id
    trial = {"trial": _trial_name(run), "run_id": run_id, "status": _status(run),
             "same_as": run.data.tags.get(TAG_SAME_AS) or None, **info}

    steps, fd = (_history(client, run_id, info["metric_key"]) if info["metric_key"]
                 else (np.array([]), np.array([])))
    kimg = _at_steps(_history(client, run_id, KIMG), steps)
    kimg = np.where(np.isnan(kimg), steps * info["batch"] / 1000.0, kimg)
    flops = _at_steps(_history(client, run_id, TRAIN_FLOPS), steps)
    flops = np.where(np.isnan(flops), steps * info["flops_per_iter"], flops)
    points = pd.DataFrame({**{c: trial[c] for c in _TRIAL_FIELDS_IN_POINTS},
                           "iter": steps.astype(int), "kimg": kimg, "train_flops": flops, "fd": fd})

    finite = np.isfinite(fd)
    best = int(np.argmin(np.where(finite, fd, np.inf))) if finite.any() else None
    quality = dict.fromkeys(("precision", "recall"), np.nan)
    if len(steps):  # of the last evaluation, where the final FD is
        quality = {col: _value_at(client, run_id, key, steps[-1])
                   for col, key in zip(quality, quality_keys(info["metric_key"]))}
    trial.update({
        "n_evals": len(steps),
        "last_iter": metrics.get(ITER, steps[-1] if len(steps) else np.nan),
        "last_kimg": metrics.get(KIMG, np.nan),
        "last_train_flops": metrics.get(TRAIN_FLOPS, np.nan),
        "final_fd": final_fd(fd) if len(fd) else np.nan,
        "last_fd": fd[-1] if len(fd) else np.nan,
        "best_fd": fd[best] if best is not None else np.nan,
        "best_iter": steps[best] if best is not None else np.nan,
        **quality,
        **{col: metrics.get(key, np.nan) for col, key in DIAG_KEYS.items()},
    })
    return trial, points
