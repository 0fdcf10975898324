"""MLflow tracking of a sweep: one experiment, one parent run, one child run per trial.

The schema (tags, params, metric keys, artifacts) is docs/TRACKING.md. The driver calls
:func:`open_experiment` and :func:`start_parent_run` before any trial starts (a fresh sqlite
database raced when two trials created it); every trial logs through :class:`MlflowReporter`,
which ``core.train.train`` drives. The child run id travels inside each checkpoint
(:meth:`MlflowReporter.state_dict`) and is reattached on retry or resume, so a trial has exactly
one run however often it restarts; a trial that crashed before its first checkpoint finds its run
again by its tags. A trial whose training repeats another trial's exactly gets a copy of that
run (:func:`copy_run`) instead of training again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunStatus, RunTag, ViewType
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from core.config import TrainConfig, flatten
from core.train import Report, Reporter, TrainResult

TAG_ROLE, TAG_SWEEP, TAG_TRIAL = "gat_sweep.role", "gat_sweep.sweep", "gat_sweep.trial"
TAG_STATUS, TAG_SPEC_HASH, TAG_SAME_AS = "gat_sweep.status", "gat_sweep.spec_hash", "gat_sweep.same_as"
TAG_ERROR = "gat_sweep.error"
PARAMS_PER_BATCH, METRICS_PER_BATCH, RUNS_PER_PAGE = 100, 1000, 1000
"""MLflow's limits of params and of metrics per log_batch call; runs per search page."""
ERROR_TAG_CHARS = 5000
"""MLflow's limit on a tag value."""


def open_experiment(tracking_uri: str, name: str, artifact_dir: Path | None) -> str:
    """Id of the experiment ``name``, created if missing (with its tables for a new sqlite file).

    ``artifact_dir``: absolute directory for artifacts of a local store (a server chooses its own).
    Raises ValueError if the experiment exists but was deleted in MLflow.
    """
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = artifact_dir.absolute().as_uri() if artifact_dir is not None else None
        return client.create_experiment(name, artifact_location=location)
    if experiment.lifecycle_stage == "deleted":
        raise ValueError(
            f"MLflow experiment {name!r} at {tracking_uri} is deleted; restore it in the MLflow UI, "
            "remove it for good (`mlflow gc`), or rename the sweep"
        )
    return experiment.experiment_id


def start_parent_run(tracking_uri: str, experiment_id: str, sweep: str, spec_hash: str,
                     artifacts: list[Path]) -> str:
    """Create the sweep's parent run (tags of docs/TRACKING.md), log ``artifacts``; return its id."""
    client = MlflowClient(tracking_uri)
    run = client.create_run(experiment_id, run_name=sweep, tags={
        TAG_ROLE: "parent", TAG_SWEEP: sweep, TAG_SPEC_HASH: spec_hash})
    for path in artifacts:
        client.log_artifact(run.info.run_id, str(path))
    return run.info.run_id


def set_run_status(tracking_uri: str, run_id: str, running: bool, failed: bool = False) -> None:
    """Mark a run RUNNING again (resumed sweep) or terminated (FINISHED, or FAILED)."""
    client = MlflowClient(tracking_uri)
    if running:
        client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
    else:
        client.set_terminated(run_id, "FAILED" if failed else "FINISHED")


@dataclass(frozen=True)
class TrialTracking:
    """Where a trial logs; plain data, sent to Ray workers."""

    tracking_uri: str
    experiment_id: str
    sweep: str
    parent_run_id: str

    def tags(self, trial: str) -> dict[str, str]:
        """The identifying tags of a trial's child run."""
        return {TAG_ROLE: "trial", TAG_SWEEP: self.sweep, TAG_TRIAL: trial, MLFLOW_PARENT_RUN_ID: self.parent_run_id}

    def find_run(self, client: MlflowClient, trial: str) -> Run | None:
        """The (oldest) active child run of ``trial``, or None."""
        filters = [f"tags.`{key}` = '{value}'" for key, value in self.tags(trial).items()]
        runs = client.search_runs([self.experiment_id], " and ".join(filters), run_view_type=ViewType.ACTIVE_ONLY,
                                  max_results=1, order_by=["attributes.start_time ASC"])
        return runs[0] if runs else None


def _log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    """Log ``params`` (sorted, values as strings) in batches of MLflow's per-request limit."""
    items = [Param(key, str(value)) for key, value in sorted(params.items())]
    for i in range(0, len(items), PARAMS_PER_BATCH):
        client.log_batch(run_id, params=items[i:i + PARAMS_PER_BATCH])


def copy_run(tracking: TrialTracking, source: str, trial: str, config: TrainConfig, params: dict[str, Any],
             samples: list[Path]) -> str:
    """Log the run of trial ``source`` again as the child run of ``trial``, whose training is
    identical (the same TrainConfig but for the name): its params with this trial's config and
    sweep coordinates, every metric history, ``config.json`` and the sample grids ``samples``;
    tagged ``gat_sweep.same_as = source``. A partial copy left by an interrupted driver is
    replaced. Returns the new run id; raises LookupError if ``source`` has no run.
    """
    client = MlflowClient(tracking.tracking_uri)
    original = tracking.find_run(client, source)
    if original is None:
        raise LookupError(f"no MLflow run of trial {source} to copy for {trial}")
    stale = tracking.find_run(client, trial)
    if stale is not None:
        client.delete_run(stale.info.run_id)
    tags = {**tracking.tags(trial), TAG_SAME_AS: source, TAG_STATUS: original.data.tags[TAG_STATUS]}
    run_id = client.create_run(tracking.experiment_id, run_name=trial, tags=tags).info.run_id
    _log_params(client, run_id, {**original.data.params, **flatten(config.to_dict()), **params})
    for key in original.data.metrics:
        history = client.get_metric_history(original.info.run_id, key)
        for i in range(0, len(history), METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=history[i:i + METRICS_PER_BATCH])
    client.log_dict(run_id, config.to_dict(), "config.json")
    for path in samples:
        client.log_artifact(run_id, str(path), "samples")
    client.set_terminated(run_id, "FINISHED")
    return run_id


def child_runs(tracking: TrialTracking) -> dict[str, list[Run]]:
    """Every active child run of the sweep's parent run, by trial name, oldest first."""
    client = MlflowClient(tracking.tracking_uri)
    query = f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{tracking.parent_run_id}' and tags.`{TAG_ROLE}` = 'trial'"
    by_trial: dict[str, list[Run]] = {}
    token = None
    while True:
        page = client.search_runs([tracking.experiment_id], query, run_view_type=ViewType.ACTIVE_ONLY,
                                  max_results=RUNS_PER_PAGE, order_by=["attributes.start_time ASC"],
                                  page_token=token)
        for run in page:
            by_trial.setdefault(run.data.tags.get(TAG_TRIAL, ""), []).append(run)
        token = page.token
        if not token:
            return by_trial


def end_open_runs(tracking: TrialTracking, reasons: dict[str, tuple[str, str]]) -> list[str]:
    """Close the child runs that are still RUNNING of the trials in ``reasons`` (trials that did not
    end: their worker was killed, or the driver stopped them), ``{trial: (MLflow status, reason)}``
    with status FAILED or KILLED: tagged ``gat_sweep.status = failed`` and ``gat_sweep.error``.
    A rerun reattaches them. Returns the trials whose run was closed."""
    client = MlflowClient(tracking.tracking_uri)
    closed = []
    for trial, runs in child_runs(tracking).items():
        for run in runs:
            if trial in reasons and run.info.status == RunStatus.to_string(RunStatus.RUNNING):
                status, reason = reasons[trial]
                client.log_batch(run.info.run_id, tags=[RunTag(TAG_STATUS, "failed"),
                                                        RunTag(TAG_ERROR, reason[:ERROR_TAG_CHARS])])
                client.set_terminated(run.info.run_id, status)
                closed.append(trial)
    return closed


def store_problems(tracking: TrialTracking, ended: dict[str, str]) -> list[str]:
    """Check the store against the trials that ended, ``{trial: 'finished' | 'diverged'}``: each
    needs exactly one FINISHED child run tagged with that status. Returns one line per problem
    (empty when the store agrees)."""
    runs = child_runs(tracking)
    problems = []
    for trial, status in ended.items():
        found = runs.get(trial, [])
        if not found:
            problems.append(f"{trial}: no MLflow child run")
        elif len(found) > 1:
            problems.append(f"{trial}: {len(found)} MLflow child runs ({', '.join(r.info.run_id for r in found)})")
        elif found[0].info.status != "FINISHED" or found[0].data.tags.get(TAG_STATUS) != status:
            problems.append(f"{trial}: MLflow child run {found[0].info.run_id} is {found[0].info.status} "
                            f"({TAG_STATUS} = {found[0].data.tags.get(TAG_STATUS)}), not FINISHED ({status})")
    return problems


class MlflowReporter(Reporter):
    """Logs one training run to its MLflow child run (docs/TRACKING.md).

    Metrics go with ``step = iteration``; sample grids become artifacts under ``samples/``; the
    config becomes ``config.json``. After a restart, steps already logged by the earlier attempt
    are not logged twice (the resumed run repeats them deterministically).
    """

    def __init__(self, tracking: TrialTracking, trial: str, params: dict[str, Any] | None = None) -> None:
        self.tracking = tracking
        self.trial = trial
        self.params = dict(params or {})
        self.client = MlflowClient(tracking.tracking_uri)
        self.run_id: str | None = None
        self._logged_until = -1

    # -- Reporter interface ----------------------------------------------------------------------
    def start(self, cfg: TrainConfig, info: dict[str, str], state: dict[str, Any] | None) -> None:
        """Create the child run, or reattach the one named in ``state`` or found by its tags."""
        found = None if state else self.tracking.find_run(self.client, self.trial)
        self.run_id = (state or {}).get("mlflow_run_id") or (found.info.run_id if found else self._create_run())
        self.client.update_run(self.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        self.client.set_tag(self.run_id, TAG_STATUS, "running")
        _log_params(self.client, self.run_id, {**flatten(cfg.to_dict()), **self.params, **info})
        self.client.log_dict(self.run_id, cfg.to_dict(), "config.json")
        history = self.client.get_metric_history(self.run_id, "progress/iter")
        self._logged_until = max((m.step for m in history), default=-1)

    def report(self, report: Report) -> None:
        if report.step <= self._logged_until:
            return
        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, report.step) for key, value in report.metrics.items()]
        self.client.log_batch(self.run_id, metrics=metrics)
        for image in report.images:
            self.client.log_artifact(self.run_id, str(image), "samples")

    def state_dict(self) -> dict[str, Any]:
        return {"mlflow_run_id": self.run_id}

    def finish(self, result: TrainResult) -> None:
        """Tag the run finished or diverged and close it."""
        self.client.set_tag(self.run_id, TAG_STATUS, result.status)
        self.client.set_terminated(self.run_id, "FINISHED")

    # -- outside the training loop -------------------------------------------------------------
    def mark_failed(self, error: BaseException) -> None:
        """Record a crash or a configuration error in the child run, FAILED (a retry reattaches
        it). A trial that failed before training started gets its run here, found by its tags or
        created, so that the error is in MLflow too."""
        if self.run_id is None:
            found = self.tracking.find_run(self.client, self.trial)
            self.run_id = found.info.run_id if found else self._create_run()
        self.client.log_batch(self.run_id, tags=[
            RunTag(TAG_STATUS, "failed"), RunTag(TAG_ERROR, f"{type(error).__name__}: {error}"[:ERROR_TAG_CHARS])])
        self.client.set_terminated(self.run_id, "FAILED")

    def _create_run(self) -> str:
        run = self.client.create_run(self.tracking.experiment_id, run_name=self.trial,
                                     tags=self.tracking.tags(self.trial))
        return run.info.run_id
