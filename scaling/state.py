"""A sweep's state on disk: what its output directory records about the sweep, and the files a
sweep adds to each trial's run directory.

In the output directory (the rest of it: :mod:`scaling.tune`)::

    <out>/sweep.json     spec hash, tracking URI, MLflow experiment and parent run ids, and each
                         trial's flattened config and ``sweep.*`` coordinates
    <out>/sweep.yaml     the sweep file as run (with any --set);  <out>/trials.csv  the expanded grid

In a trial's run directory ``<out>/trials/<trial>/``, beside what ``core.train`` writes:
``attempts.jsonl`` (one line per (re)start of training), ``failures.jsonl`` (one line per failed
attempt) and, for a trial that repeats another's training, ``same_as.json``.

A sweep grows: a sweep file that keeps every trial of the sweep in its output directory as it was
(``sweep.json`` keeps each trial's flattened config and ``sweep.*`` coordinates) and adds others
(widths, LRs, seeds) trains only the new ones, under the same MLflow parent run. A sweep file
that changes or drops an existing trial is refused, naming the fields, instead of mixing two
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
from core.config import ConfigError, TrainConfig, flatten
from core.metrics import fd_metric_key
from scaling.grid import ATTEMPTS_FILE, STATE_FILE, Trial, trial_rows
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


class SweepChangedError(ConfigError):
    """The output directory holds a sweep whose trials differ from the sweep file's."""


# ----------------------------------------------------------------------------------------------
# A trial's records in its run directory
# ----------------------------------------------------------------------------------------------
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
# The sweep in its output directory
# ----------------------------------------------------------------------------------------------
def existing_state(spec: SweepSpec, out: Path, digest: str, records: dict[str, dict[str, Any]],
                   tracking_uri: str, sweep_file: Path) -> tuple[dict[str, Any] | None, list[str]]:
    """The sweep state in ``out`` if this sweep was started before, and the trials the sweep file
    adds to it (empty unless it extends the sweep: every existing trial unchanged, new ones added).

    Raises SweepChangedError naming the sweep's name when the sweep file renames it, or every
    changed field and dropped trial when it changes existing trials; ConfigError when it logs to
    another tracking URI.
    """
    path = out / STATE_FILE
    if not path.exists():
        return None, []
    state = json.loads(path.read_text())
    if state["name"] != spec.name:
        raise SweepChangedError(
            f"{out} holds sweep {state['name']!r}, and this run calls it {spec.name!r} (name: or --set name=). A "
            f"sweep keeps its name, which names its MLflow experiment and what `gat-sweep plot` looks for: run it "
            f"as {state['name']!r}, or give sweep {spec.name!r} an output_dir of its own")
    if state["tracking_uri"] != tracking_uri:
        raise ConfigError(
            f"tracking_uri: this sweep logs to {state['tracking_uri']} (recorded in {path}); got "
            f"{tracking_uri}. Use the same tracking URI to resume it")
    if state["spec_hash"] == digest:
        return state, []
    changes = _changes(state, records)
    if changes:
        raise SweepChangedError(
            f"{out} holds sweep {state['name']!r} (spec hash {state['spec_hash']}), and {sweep_file} "
            f"changes its trials: {'; '.join(changes)}. A sweep file may add trials to a sweep (more "
            f"widths, LRs or seeds, the rest unchanged); a changed sweep is a new sweep: give it a new "
            f"name or output_dir, or delete {out} to start over")
    return state, [name for name in records if name not in state["trials"]]


def _changes(state: dict[str, Any], records: dict[str, dict[str, Any]]) -> list[str]:
    """What keeps ``records`` from extending the sweep ``state``: each changed field of an existing
    trial (``field: old -> new``, with how many trials) and the dropped trials."""
    if "trials" not in state:
        return ["its state (sweep.json) has no per-trial record, so no trial can be checked"]
    old = state["trials"]
    defaults = flatten(TrainConfig().to_dict())  # a field added since the sweep began ran as its default
    changed: dict[str, tuple[Any, Any, int]] = {}
    for trial in (t for t in old if t in records):  # in grid order: the same message every run
        for key in sorted(old[trial].keys() | records[trial].keys()):
            before, after = old[trial].get(key, defaults.get(key)), records[trial].get(key)
            if before != after:
                first = changed.get(key, (before, after, 0))
                changed[key] = (first[0], first[1], first[2] + 1)
    problems = [f"{key}: {before} -> {after} ({n} trial(s))" for key, (before, after, n) in sorted(changed.items())]
    dropped = [trial for trial in old if trial not in records]
    if dropped:
        more = f" and {len(dropped) - 3} more" if len(dropped) > 3 else ""
        problems.append(f"trials dropped: {', '.join(dropped[:3])}{more}")
    return problems


def recorded_parent_run(out: Path) -> tuple[str, str] | None:
    """(tracking URI, parent run id) of the sweep whose state ``out`` holds (``sweep.json``), or
    None when it holds none (the sweep has not been run)."""
    path = out / STATE_FILE
    if not path.is_file():
        return None
    state = json.loads(path.read_text())
    return state["tracking_uri"], state["parent_run_id"]


def open_sweep(spec: SweepSpec, sweep_file: Path, digest: str, records: dict[str, dict[str, Any]],
               trials: list[Trial], repeats: dict[str, str], out: Path, tracking_uri: str,
               state: dict[str, Any] | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Count every trial's FLOPs (trials.csv and the order of trials), then create the output
    directory, MLflow experiment and parent run, or bring an existing sweep to the sweep file
    (grown, or its files written anew where they differ; runs named by their trial get their label,
    :func:`scaling.tracking.name_runs`), and mark its parent run running; either way the
    experiment gets its runs-page view (:func:`scaling.tracking.set_runs_view`). Returns (trial
    rows, sweep state). Raises ConfigError naming ``tracking_uri`` if the store refuses."""
    rows = trial_rows(trials, repeats)
    files = _sweep_files(spec, sweep_file, rows)
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
