"""The plan of a sweep: its trials against what its output directory already holds.

:func:`plan_sweep` is the one place that works out what ``gat-sweep run`` would do (the dry run
prints it, the driver carries it out): the trials, which of them repeat another's training, the
trainings still to run, and whether the sweep file starts a sweep, resumes it or grows it.
:func:`check_settings` holds the checks of a sweep's settings that need no trial. Neither imports
MLflow, Ray or torch's training code, so the dry run answers in about a second.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import ConfigError, TrainConfig, flatten
from scaling.grid import (
    STATE_FILE,
    Trial,
    check_trials_fit,
    expand,
    pending_trainings,
    shared_trainings,
    started_trials,
    sweep_hash,
    trial_records,
)
from scaling.spec import SweepSpec, check_tracking_uri


class SweepChangedError(ConfigError):
    """The sweep file changes the trials of the sweep already in the output directory."""


@dataclass(frozen=True)
class Plan:
    """One sweep file against its output directory (:func:`plan_sweep`)."""

    spec: SweepSpec
    sweep_file: Path
    trials: list[Trial]
    """Every trial of the sweep, in grid order (:func:`scaling.grid.expand`)."""
    digest: str
    """:func:`scaling.grid.sweep_hash` of the trials."""
    records: dict[str, dict[str, Any]]
    """:func:`scaling.grid.trial_records`: what ``sweep.json`` keeps of each trial."""
    state: dict[str, Any] | None
    """The output directory's ``sweep.json``; None for a sweep not started yet."""
    added: list[str]
    """Trials this file adds to the sweep in the output directory (empty unless it grows it)."""
    repeats: dict[str, str]
    """{trial: the trial whose training it repeats} (:func:`scaling.grid.shared_trainings`)."""
    pending: list[Trial]
    """Trainings still to run: trials neither copied nor ended (:func:`scaling.grid.pending_trainings`)."""

    def held(self) -> str:
        """What the output directory holds of this sweep, in words ('' for a new sweep)."""
        if self.state is None:
            return ""
        out = self.spec.output_path()
        if self.added:
            return (f"{out} holds this sweep with {len(self.trials) - len(self.added)} trials; this file grows it by "
                    f"{len(self.added)} trials and keeps the others")
        return f"{out} holds this sweep"


def check_settings(spec: SweepSpec) -> None:
    """The checks of a sweep's settings that need no trial: storage a Ray cluster's nodes can
    reach (:meth:`scaling.spec.SweepSpec.check_cluster_settings`) and a tracking URI that is one
    (:func:`scaling.spec.check_tracking_uri`, which asks a server whether it answers).

    Raises ConfigError / FileNotFoundError naming the setting to fix.
    """
    spec.check_cluster_settings()
    check_tracking_uri(spec.tracking())


def plan_sweep(spec: SweepSpec, sweep_file: Path) -> Plan:
    """Expand ``spec`` into trials and set them against its output directory.

    Raises ConfigError for trials too large for this machine (:func:`scaling.grid.check_trials_fit`),
    SweepChangedError for a file that renames the sweep in the output directory or changes or
    drops its trials, ConfigError for one that logs it to another tracking URI
    (:func:`existing_state`).
    """
    trials = expand(spec)
    check_trials_fit(spec, trials)
    out = spec.output_path()
    digest, records = sweep_hash(trials), trial_records(trials)
    state, added = existing_state(spec, out, digest, records, sweep_file)
    repeats = shared_trainings(trials, started_trials(out, trials))
    return Plan(spec, Path(sweep_file), trials, digest, records, state, added, repeats,
                pending_trainings(out, trials, repeats))


def existing_state(spec: SweepSpec, out: Path, digest: str, records: dict[str, dict[str, Any]],
                   sweep_file: Path) -> tuple[dict[str, Any] | None, list[str]]:
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
    tracking_uri = spec.tracking()
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
