"""A sweep's state on disk: what its output directory records about the sweep, and the files a
sweep adds to each trial's run directory.

In the output directory (the rest of it: :mod:`scaling.tune`)::

    <out>/sweep.json     spec hash, tracking URI, MLflow experiment and parent run ids, and each
                         trial's flattened config and ``sweep.*`` coordinates
    <out>/sweep.yaml     the sweep file as run (with any --set);  <out>/trials.csv  the expanded grid

In a trial's run directory ``<out>/trials/<trial>/``, beside what ``core.gan.train`` writes:
``attempts.jsonl`` (one line per (re)start of training), ``failures.jsonl`` (one line per failed
attempt) and, for a trial that repeats another's training, ``same_as.json``.

A sweep grows: a sweep file that keeps every trial of the sweep in its output directory as it was
(``sweep.json`` keeps each trial's flattened config and ``sweep.*`` coordinates) and adds others
(widths, LRs, seeds) trains only the new ones, under the same MLflow parent run. Whether a sweep
file starts, resumes or grows the sweep is decided by :func:`scaling.plan.plan_sweep`; a file that
changes or drops an existing trial is refused there, naming the fields, instead of mixing two
sweeps (adding the first width-aware rule to a constant-only sweep is such a change: it sets its
trials' ``sweep.base_width``).
"""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException

from core.cache import atomic_write_bytes
from core.config import ConfigError
from core.metrics import fd_metric_key
from scaling.grid import ATTEMPTS_FILE, STATE_FILE, trial_rows
from scaling.plan import Plan
from scaling.spec import SweepSpec, is_local_store
from scaling.tracking import (
    TrialTracking,
    log_sweep_files,
    name_runs,
    open_experiment,
    set_run_status,
    set_runs_view,
    start_parent_run,
)

COPY_FILE = "same_as.json"
"""In the run directory of a trial that repeats another's training: which trial it copies."""
FAILURES_FILE = "failures.jsonl"
"""In a run directory: one line per failed attempt (time, host, pid, kind, error)."""
CONFIG_ERROR = "config_error"
"""Status (and failure kind) of a trial stopped by a ConfigError: not retried."""


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (empty if it does not exist)."""
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def append_attempt(run_dir: Path, resumed: bool, node_id: str | None) -> None:
    """One line in ``attempts.jsonl`` as training (re)starts: time, host, pid, the Ray node id
    (None outside Ray) and whether it resumed from a checkpoint."""
    _append_record(run_dir / ATTEMPTS_FILE, {"node_id": node_id, "resumed": resumed})


def append_failure(run_dir: Path, kind: str, error: str) -> None:
    """One line in ``failures.jsonl``: time, host, pid of the process writing it, kind
    (:data:`CONFIG_ERROR` or ``crash``), error."""
    _append_record(run_dir / FAILURES_FILE, {"kind": kind, "error": error})


def _append_record(path: Path, fields: dict[str, Any]) -> None:
    """Append one JSON line: time, host and pid of the process writing it, then ``fields``."""
    record = {"time": time.time(), "host": socket.gethostname(), "pid": os.getpid(), **fields}
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


# ----------------------------------------------------------------------------------------------
# The sweep in its output directory and its MLflow store
# ----------------------------------------------------------------------------------------------
def open_sweep(plan: Plan) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Count every trial's FLOPs (trials.csv and the order of trials), then create the output
    directory, MLflow experiment and parent run, or bring an existing sweep to the sweep file
    (grown, or its files written anew where they differ; runs named by their trial get their label,
    :func:`scaling.tracking.name_runs`), and mark its parent run running; either way the
    experiment gets its runs-page view (:func:`scaling.tracking.set_runs_view`). Returns (trial
    rows, sweep state). Raises ConfigError naming ``tracking_uri`` if the store refuses."""
    spec, trials, state, digest, records = plan.spec, plan.trials, plan.state, plan.digest, plan.records
    out, tracking_uri = spec.output_path(), spec.tracking()
    rows = trial_rows(trials, plan.repeats)
    files = _sweep_files(spec, plan.sweep_file, rows)
    try:
        if state is None:
            state = _create_sweep(spec, files, digest, records, out, tracking_uri)
        else:
            stale = any(not (out / name).is_file() or (out / name).read_text() != text for name, text in files.items())
            if state["spec_hash"] != digest or stale:
                state = _update_sweep(files, digest, records, out, state)
            set_run_status(tracking_uri, state["parent_run_id"], "RUNNING")
            name_runs(TrialTracking(tracking_uri, state["experiment_id"], spec.name, state["parent_run_id"]),
                      {t.name: t.label for t in trials})
        set_runs_view(tracking_uri, state["experiment_id"], fd_metric_key(trials[0].config), [t.label for t in trials])
    except MlflowException as err:
        raise ConfigError(f"tracking_uri: the MLflow store {tracking_uri} refused the sweep's experiment or "
                          f"parent run: {err}") from None
    return rows, state


def _sweep_files(spec: SweepSpec, sweep_file: Path, rows: list[dict[str, Any]]) -> dict[str, str]:
    """The text of ``sweep.yaml`` (the file as run: with any --set) and ``trials.csv``."""
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return {"sweep.yaml": spec.file_text() or Path(sweep_file).read_text(), "trials.csv": table.getvalue()}


def _write_sweep_files(out: Path, files: dict[str, str]) -> list[Path]:
    """Write :func:`_sweep_files` into ``out``; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (out / name).write_text(text)
    return [out / name for name in files]


def _save_state(out: Path, state: dict[str, Any]) -> None:
    atomic_write_bytes(out / STATE_FILE, json.dumps(state, indent=2).encode())


def _create_sweep(spec: SweepSpec, files: dict[str, str], digest: str, records: dict[str, dict[str, Any]],
                  out: Path, tracking_uri: str) -> dict[str, Any]:
    """Write the output directory's sweep files and create the MLflow experiment and parent run."""
    paths = _write_sweep_files(out, files)
    artifact_dir = out / "mlartifacts" if is_local_store(tracking_uri) else None
    experiment_id = open_experiment(tracking_uri, spec.name, artifact_dir)
    parent = start_parent_run(tracking_uri, experiment_id, spec.name, digest, paths, spec.description)
    state = {"name": spec.name, "spec_hash": digest, "tracking_uri": tracking_uri,
             "experiment_id": experiment_id, "parent_run_id": parent, "trials": records}
    _save_state(out, state)
    return state


def _update_sweep(files: dict[str, str], digest: str, records: dict[str, dict[str, Any]], out: Path,
                  state: dict[str, Any]) -> dict[str, Any]:
    """Bring the sweep in ``out`` to the sweep file as run: its files, the parent run's copy of
    them and spec hash, and last the state (a driver stopped before that does it again; a rerun of
    the earlier file puts the earlier files back)."""
    paths = _write_sweep_files(out, files)
    log_sweep_files(state["tracking_uri"], state["parent_run_id"], digest, paths)
    state = {**state, "spec_hash": digest, "trials": records}
    _save_state(out, state)
    return state
