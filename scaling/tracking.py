"""MLflow tracking of a sweep: one experiment, one parent run, one child run per trial.

The schema (tags, params, metric keys, artifacts) is docs/TRACKING.md. The driver calls
:func:`open_experiment` and :func:`start_parent_run` before any trial starts (a fresh sqlite
database raced when two trials created it); every trial logs through :class:`MlflowReporter`,
which ``core.gan.train.train`` drives. The child run id travels inside each checkpoint
(:meth:`MlflowReporter.state_dict`) and is reattached on retry or resume, so a trial has exactly
one run however often it restarts; a trial that crashed before its first checkpoint finds its run
again by its tags. A trial whose training repeats another trial's exactly gets a copy of that
run (:func:`copy_run`) instead of training again.

For the MLflow UI: a child run is named by its trial's label (``scaling.grid.Trial.label``), what
tells the trials apart, while the trial's name, its key everywhere else, is its
``gat_sweep.trial`` tag (:func:`name_runs` renames the runs of a sweep begun before labels); the
experiment holds the runs-page view that the printed link opens (:func:`set_runs_view`).

The runs carry what MLflow's own ``start_run`` would add: the context tags (user, source, git
commit; resolved once in the driver and copied to every child run, whose Ray worker process knows
neither) and MLflow's system metrics of each trial's process.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunStatus, RunTag, ViewType
from mlflow.environment_variables import MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.git_utils import get_git_branch, get_git_commit, get_git_repo_url
from mlflow.utils.mlflow_tags import (
    MLFLOW_GIT_BRANCH,
    MLFLOW_GIT_COMMIT,
    MLFLOW_GIT_REPO_URL,
    MLFLOW_PARENT_RUN_ID,
    MLFLOW_RUN_NOTE,
    MLFLOW_SOURCE_NAME,
    MLFLOW_SOURCE_TYPE,
    MLFLOW_USER,
)
from PIL import Image

from core.config import TrainConfig, flatten
from core.records import (
    BASE_LR_PARAM,
    BEST_STEP,
    FAILED,
    G_DEPTH_PARAM,
    G_WIDTH_PARAM,
    ITER,
    LR_RULE_PARAM,
    METRIC_KEY_PARAM,
    RUNNING,
    RUNS_VIEW_TAG,
    TAG_ERROR,
    TAG_ROLE,
    TAG_SAME_AS,
    TAG_SPEC_HASH,
    TAG_STATUS,
    TAG_SWEEP,
    TAG_TRIAL,
    RunResult,
    best_key,
    final_key,
)
from core.gan.train import Report, Reporter

PARAMS_PER_BATCH, METRICS_PER_BATCH, RUNS_PER_PAGE = 100, 1000, 1000
"""MLflow's limits of params and of metrics per log_batch call; runs per search page."""
ERROR_TAG_CHARS = 5000
"""MLflow's limit on a tag value."""
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
"""The experiment tag with which MLflow UIs that pick an experiment's pages by its kind open it on
its training runs (the value is their kind for custom model training). MLflow 3.18's UI goes by
the link's ``workflowType`` instead (``scaling.display.runs_page``)."""
CONTEXT_TAGS = (MLFLOW_USER, MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE, MLFLOW_GIT_COMMIT, MLFLOW_GIT_BRANCH,
                MLFLOW_GIT_REPO_URL)
"""The context tags of the parent run that every child run repeats."""
SAMPLES_KEY = "samples"
"""``log_image`` key of the EMA sample grids."""


def context_tags() -> dict[str, str]:
    """The tags MLflow's ``start_run`` adds for this process (``mlflow.user``,
    ``mlflow.source.name`` = the entry point, ``mlflow.source.type``, the entry point's git commit,
    branch and repository URL, and any registered context provider's). When the entry point is in
    no git repository (a console script in a virtual environment outside the checkout), the git
    tags are those of the checkout holding this package, if any (an editable install)."""
    tags = resolve_tags()
    if MLFLOW_GIT_COMMIT not in tags:
        here = str(Path(__file__).resolve().parent)
        git = {MLFLOW_GIT_COMMIT: get_git_commit(here), MLFLOW_GIT_BRANCH: get_git_branch(here),
               MLFLOW_GIT_REPO_URL: get_git_repo_url(here)}
        tags.update({key: value for key, value in git.items() if value})
    return tags


def open_experiment(tracking_uri: str, name: str, artifact_dir: Path | None) -> str:
    """Id of the experiment ``name``, created if missing (with its tables for a new sqlite file),
    tagged ``mlflow.experimentKind = custom_model_development`` unless it has a kind already.

    ``artifact_dir``: absolute directory for artifacts of a local store (a server chooses its own).
    Raises ValueError if the experiment exists but was deleted in MLflow.
    """
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = artifact_dir.absolute().as_uri() if artifact_dir is not None else None
        return client.create_experiment(name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    if experiment.lifecycle_stage == "deleted":
        raise ValueError(
            f"MLflow experiment {name!r} at {tracking_uri} is deleted; restore it in the MLflow UI, "
            "remove it for good (`mlflow gc`), or rename the sweep"
        )
    if EXPERIMENT_KIND_TAG not in experiment.tags:  # made before the tag existed; a kind chosen in the UI stays
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment.experiment_id


VIEW_PARAMS = (LR_RULE_PARAM, BASE_LR_PARAM, G_WIDTH_PARAM, G_DEPTH_PARAM, "seed", "lr_g", "lr_d")
"""The params the runs-page view shows beside the FDs: the trial's coordinates and actual LRs."""
CHAR_PX, NAME_EXTRA_PX, METRIC_PX = 7, 40, 110
"""Widths in MLflow's runs table (px): of a character of a run name, of the rest of its cell, and
of a metric column (MLflow writes every digit of a float)."""


def runs_view(metric_key: str | None, labels: list[str]) -> dict[str, Any]:
    """The runs-page view of a sweep's experiment, as MLflow's UI shares a view (its search facets
    and table state in one JSON object): for a sweep that evaluates, the runs sorted by final FD,
    lowest first (sorted by a metric, the UI lists child runs flat, not folded under their
    parent), with the final and the best FD, the trial's coordinates and LRs and its status as
    columns; the run-name column as wide as the longest of ``labels``."""
    name = "attributes.`Run Name`"
    metrics = [] if metric_key is None else [f"metrics.`{final_key(metric_key)}`", f"metrics.`{best_key(metric_key)}`"]
    columns = [*metrics, *(f"params.`{key}`" for key in VIEW_PARAMS), f"tags.`{TAG_STATUS}`"]
    widths = {name: CHAR_PX * max(map(len, labels), default=10) + NAME_EXTRA_PX,
              **{column: METRIC_PX for column in metrics}}
    order = {"orderByKey": metrics[0], "orderByAsc": True} if metrics else {}
    return {**order, "selectedColumns": columns, "columnOrder": [name, *columns], "columnWidths": widths}


def set_runs_view(tracking_uri: str, experiment_id: str, metric_key: str | None, labels: list[str]) -> None:
    """Store :func:`runs_view` as the experiment's view :data:`core.records.RUNS_VIEW` (the
    experiment tag :data:`core.records.RUNS_VIEW_TAG`), which the runs-page link that the sweep
    prints opens (``scaling.display.runs_page``)."""
    MlflowClient(tracking_uri).set_experiment_tag(experiment_id, RUNS_VIEW_TAG,
                                                  json.dumps(runs_view(metric_key, labels)))


def start_parent_run(tracking_uri: str, experiment_id: str, sweep: str, spec_hash: str,
                     artifacts: list[Path], description: str = "") -> str:
    """Create the sweep's parent run (tags of docs/TRACKING.md, :func:`context_tags`, the sweep's
    ``description`` as the run's note), log ``artifacts``; return its id."""
    client = MlflowClient(tracking_uri)
    note = {MLFLOW_RUN_NOTE: description} if description else {}
    run = client.create_run(experiment_id, run_name=sweep, tags={**context_tags(), TAG_ROLE: "parent", TAG_SWEEP: sweep, **note})
    log_sweep_files(tracking_uri, run.info.run_id, spec_hash, artifacts)
    return run.info.run_id


def log_sweep_files(tracking_uri: str, run_id: str, spec_hash: str, artifacts: list[Path]) -> None:
    """Tag the parent run ``run_id`` with the sweep's spec hash and log ``artifacts`` (the sweep
    file as run, trials.csv) to it; a sweep that grows replaces both."""
    client = MlflowClient(tracking_uri)
    client.set_tag(run_id, TAG_SPEC_HASH, spec_hash)
    for path in artifacts:
        client.log_artifact(run_id, str(path))


def log_files(tracking_uri: str, run_id: str, paths: list[Path], artifact_path: str) -> None:
    """Log ``paths`` as artifacts of run ``run_id`` under ``artifact_path`` (a file logged again
    replaces the earlier one)."""
    client = MlflowClient(tracking_uri)
    for path in paths:
        client.log_artifact(run_id, str(path), artifact_path)


def set_run_status(tracking_uri: str, run_id: str, status: str) -> None:
    """Mark a run RUNNING again (a resumed sweep), or terminated: FINISHED, FAILED or KILLED (the
    driver was stopped before its trials ended)."""
    client = MlflowClient(tracking_uri)
    if status == "RUNNING":
        client.update_run(run_id, status=status)
    else:
        client.set_terminated(run_id, status)


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

    def create_run(self, client: MlflowClient, trial: str, label: str, tags: dict[str, str] | None = None,
                   start_time: int | None = None) -> str:
        """Create the child run of ``trial``, named ``label`` (``scaling.grid.Trial.label``), with
        its identifying tags, the parent run's :data:`CONTEXT_TAGS` and ``tags``, started at
        ``start_time`` (ms since the epoch; default now); return its id."""
        parent = client.get_run(self.parent_run_id).data.tags
        context = {key: parent[key] for key in CONTEXT_TAGS if key in parent}
        run = client.create_run(self.experiment_id, run_name=label, start_time=start_time,
                                tags={**context, **self.tags(trial), **(tags or {})})
        return run.info.run_id

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


def copy_run(tracking: TrialTracking, source: str, trial: str, label: str, config: TrainConfig,
             params: dict[str, Any], samples: list[Path]) -> str:
    """Log the run of trial ``source`` again as the child run of ``trial`` (named ``label``), whose
    training is identical (the same TrainConfig but for the name): its params with this trial's
    config and sweep coordinates, every metric history, ``config.json`` and the sample grids
    ``samples`` (the source's run directory files ``iter_XXXXXXX.png``, logged as the reporter logs
    them); tagged ``gat_sweep.same_as = source``, with a description naming the run it copies, and
    the start and end times of that run (its duration is the training's, not the copy's). A
    partial copy left by an interrupted driver is replaced. Returns the new run id; raises
    LookupError if ``source`` has no run.
    """
    client = MlflowClient(tracking.tracking_uri)
    original = tracking.find_run(client, source)
    if original is None:
        raise LookupError(f"no MLflow run of trial {source} to copy for {trial}")
    stale = tracking.find_run(client, trial)
    if stale is not None:
        client.delete_run(stale.info.run_id)
    note = (f"A copy of the run {original.info.run_name!r} (trial {source}, run {original.info.run_id}): this "
            f"trial's training is identical to that one (the same config but for the name), so it was not "
            f"trained again. Its metrics, sample grids, start and end are that run's.")
    run_id = tracking.create_run(client, trial, label, {TAG_SAME_AS: source, TAG_STATUS: original.data.tags[TAG_STATUS],
                                                        MLFLOW_RUN_NOTE: note}, start_time=original.info.start_time)
    _log_params(client, run_id, {**original.data.params, **flatten(config.to_dict()), **params})
    for key in original.data.metrics:
        history = client.get_metric_history(original.info.run_id, key)
        for i in range(0, len(history), METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=history[i:i + METRICS_PER_BATCH])
    client.log_dict(run_id, config.to_dict(), "config.json")
    for path in samples:
        _log_grid(client, run_id, path, int(path.stem.removeprefix("iter_")))
    client.set_terminated(run_id, "FINISHED", end_time=original.info.end_time)
    return run_id


def _log_grid(client: MlflowClient, run_id: str, path: Path, step: int) -> None:
    """Log a sample grid twice: the file under ``samples/`` (what the report reads) and a
    ``log_image`` image of key ``samples`` at ``step`` (the UI's image slider and comparison)."""
    client.log_artifact(run_id, str(path), "samples")
    with Image.open(path) as grid:
        client.log_image(run_id, grid, key=SAMPLES_KEY, step=step, synchronous=True)


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


def name_runs(tracking: TrialTracking, labels: dict[str, str]) -> list[str]:
    """Name every child run of the trials in ``labels``, ``{trial: label}``, by its label
    (``scaling.grid.Trial.label``) where it has another name: the runs of a sweep begun before
    runs were named by their labels (they were named by the trial). Their trial tag, which
    everything else finds them by, stays. Returns the trials whose runs were renamed."""
    client = MlflowClient(tracking.tracking_uri)
    renamed = []
    for trial, runs in child_runs(tracking).items():
        for run in runs:
            if trial in labels and run.info.run_name != labels[trial]:
                client.update_run(run.info.run_id, name=labels[trial])
                renamed.append(trial)
    return renamed


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
                client.log_batch(run.info.run_id, tags=[RunTag(TAG_STATUS, FAILED),
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


def start_system_metrics(tracking_uri: str, run_id: str) -> Any | None:
    """Start MLflow's system-metrics monitor on ``run_id`` (a daemon thread of this process:
    ``system/cpu_utilization_percentage``, ``system/system_memory_usage_megabytes``, disk, network
    and, where NVML finds NVIDIA GPUs, ``system/gpu_<i>_...``; one sample every
    ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` seconds, default 10, its own step counter, which a
    resumed run continues; GPU metrics need the ``gpu`` extra, nvidia-ml-py). Returns the monitor
    (call ``finish()``), or None when ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING`` is set false (as
    ``mlflow.disable_system_metrics_logging()`` does). The monitor stops by itself once the run is
    no longer RUNNING. Its INFO lines are silenced (warnings still show)."""
    if MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING.is_set() and not MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING.get():
        return None
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor  # imports psutil

    # Its start/stop/no-GPU lines at INFO would be 4 lines per trial in the sweep's output.
    logging.getLogger(SystemMetricsMonitor.__module__).setLevel(logging.WARNING)
    monitor = SystemMetricsMonitor(run_id, resume_logging=True, tracking_uri=tracking_uri)
    monitor.start()
    return monitor


class MlflowReporter(Reporter):
    """Logs one training run to its MLflow child run (docs/TRACKING.md).

    Metrics go with ``step = iteration``, and ``best/<metric>`` / ``best/step`` whenever an
    evaluation improves on the best so far; sample grids become artifacts under ``samples/`` and
    ``log_image`` images (key ``samples``, step = iteration); the config becomes ``config.json``;
    system metrics come from :func:`start_system_metrics` while the run trains. After a restart,
    steps already logged by the earlier attempt are not logged twice (the resumed run repeats them
    deterministically), and the best so far is the one the run logged.
    """

    def __init__(self, tracking: TrialTracking, trial: str, params: dict[str, Any] | None = None,
                 label: str | None = None) -> None:
        self.tracking = tracking
        self.trial = trial
        self.label = label or trial
        """The run's name (``scaling.grid.Trial.label``; the trial name by default)."""
        self.params = dict(params or {})
        self.client = MlflowClient(tracking.tracking_uri)
        self.run_id: str | None = None
        self._logged_until = -1
        self._metric_key: str | None = None
        self._best = math.inf
        self._monitor: Any | None = None

    # -- Reporter interface ----------------------------------------------------------------------
    def start(self, cfg: TrainConfig, info: dict[str, str], state: dict[str, Any] | None) -> None:
        """Create the child run, or reattach the one named in ``state`` or found by its tags."""
        found = None if state else self.tracking.find_run(self.client, self.trial)
        self.run_id = (state or {}).get("mlflow_run_id") or (found.info.run_id if found else self._create_run())
        self.client.update_run(self.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        self.client.set_tag(self.run_id, TAG_STATUS, RUNNING)
        _log_params(self.client, self.run_id, {**flatten(cfg.to_dict()), **self.params, **info})
        self.client.log_dict(self.run_id, cfg.to_dict(), "config.json")
        history = self.client.get_metric_history(self.run_id, ITER)
        self._logged_until = max((m.step for m in history), default=-1)
        self._metric_key = info.get(METRIC_KEY_PARAM)
        if self._metric_key is not None:
            logged = self.client.get_run(self.run_id).data.metrics
            self._best = logged.get(self._best_key(), math.inf)
        self._monitor = start_system_metrics(self.tracking.tracking_uri, self.run_id)

    def report(self, report: Report) -> None:
        if report.step <= self._logged_until:
            return
        metrics = dict(report.metrics)
        value = metrics.get(self._metric_key, math.inf)
        if value < self._best:
            self._best = value
            metrics.update({self._best_key(): value, BEST_STEP: float(report.step)})
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key, float(v), now, report.step) for key, v in metrics.items()])
        for image in report.images:
            _log_grid(self.client, self.run_id, image, report.step)

    def state_dict(self) -> dict[str, Any]:
        return {"mlflow_run_id": self.run_id}

    def finish(self, result: RunResult) -> None:
        """Tag the run finished or diverged and close it."""
        self._stop_system_metrics()
        self.client.set_tag(self.run_id, TAG_STATUS, result.status)
        self.client.set_terminated(self.run_id, "FINISHED")

    # -- outside the training loop -------------------------------------------------------------
    def mark_failed(self, error: BaseException) -> None:
        """Record a crash or a configuration error in the child run, FAILED (a retry reattaches
        it). A trial that failed before training started gets its run here, found by its tags or
        created, so that the error is in MLflow too."""
        self._stop_system_metrics()
        if self.run_id is None:
            found = self.tracking.find_run(self.client, self.trial)
            self.run_id = found.info.run_id if found else self._create_run()
        self.client.log_batch(self.run_id, tags=[
            RunTag(TAG_STATUS, FAILED), RunTag(TAG_ERROR, f"{type(error).__name__}: {error}"[:ERROR_TAG_CHARS])])
        self.client.set_terminated(self.run_id, "FAILED")

    def _create_run(self) -> str:
        return self.tracking.create_run(self.client, self.trial, self.label)

    def _best_key(self) -> str:
        return best_key(self._metric_key)

    def _stop_system_metrics(self) -> None:
        if self._monitor is not None:
            self._monitor.finish()
            self._monitor = None
