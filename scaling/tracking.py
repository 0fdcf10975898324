"""MLflow tracking of a sweep: one experiment, one parent run, one child run per trial.

The schema (tags, params, metric keys, artifacts) is docs/TRACKING.md. The driver calls
:func:`open_experiment` and :func:`start_parent_run` before any trial starts (a fresh sqlite
database raced when two trials created it); every trial logs through :class:`MlflowReporter`,
which ``core.train.train`` drives. The child run id travels inside each checkpoint
(:meth:`MlflowReporter.state_dict`) and is reattached on retry or resume, so a trial has exactly
one run however often it restarts; a trial that crashed before its first checkpoint finds its run
again by its tags.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag, ViewType
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from core.config import TrainConfig, flatten
from core.train import Report, Reporter, TrainResult

TAG_ROLE, TAG_SWEEP, TAG_TRIAL = "gat_sweep.role", "gat_sweep.sweep", "gat_sweep.trial"
TAG_STATUS, TAG_SPEC_HASH = "gat_sweep.status", "gat_sweep.spec_hash"
STATUSES = ("running", "finished", "diverged", "failed")
"""Values of the ``gat_sweep.status`` tag of a child run."""
PARAMS_PER_BATCH = 100
"""MLflow's limit of params per log_batch call."""


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
    parent_run_id: str | None = None


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
        self.run_id = (state or {}).get("mlflow_run_id") or self._find_run() or self._create_run()
        self.client.update_run(self.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        self.client.set_tag(self.run_id, TAG_STATUS, "running")
        params = {**flatten(cfg.to_dict()), **self.params, **info}
        items = [Param(key, str(value)) for key, value in sorted(params.items())]
        for i in range(0, len(items), PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[i:i + PARAMS_PER_BATCH])
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
        """Record a crash (the trial may still be retried, which reattaches this run)."""
        if self.run_id is None:
            return
        self.client.log_batch(self.run_id, tags=[
            RunTag(TAG_STATUS, "failed"), RunTag("gat_sweep.error", f"{type(error).__name__}: {error}"[:5000])])
        self.client.set_terminated(self.run_id, "FAILED")

    def _tags(self) -> dict[str, str]:
        tags = {TAG_ROLE: "trial", TAG_SWEEP: self.tracking.sweep, TAG_TRIAL: self.trial}
        if self.tracking.parent_run_id:
            tags[MLFLOW_PARENT_RUN_ID] = self.tracking.parent_run_id
        return tags

    def _find_run(self) -> str | None:
        """The run an earlier attempt of this trial created (same parent and trial name)."""
        filters = [f"tags.`{key}` = '{value}'" for key, value in self._tags().items()]
        runs = self.client.search_runs([self.tracking.experiment_id], " and ".join(filters),
                                       run_view_type=ViewType.ACTIVE_ONLY, max_results=1,
                                       order_by=["attributes.start_time ASC"])
        return runs[0].info.run_id if runs else None

    def _create_run(self) -> str:
        run = self.client.create_run(self.tracking.experiment_id, run_name=self.trial, tags=self._tags())
        return run.info.run_id
