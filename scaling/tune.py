"""Run a sweep as Ray Tune trials: the driver (:func:`run_sweep`, :func:`run_checked_sweep`) and the
trainable (:func:`run_trial`).

Output directory of a sweep (absolute; on a cluster a path every node sees)::

    <out>/sweep.json, <out>/sweep.yaml, <out>/trials.csv   the sweep's state (scaling/state.py)
    <out>/trials/<trial>/    one run directory per trial (docs/TRACKING.md), + attempts.jsonl
    <out>/tune/<started>/    Ray Tune's files for each invocation of the driver
    <out>/mlflow.db, <out>/mlartifacts/   the default (local) MLflow store
    <out>/sweep.lock, <out>/sweep.lock.json   the driver lock and its holder (scaling/lock.py)

One driver per output directory: :func:`run_checked_sweep` holds ``sweep.lock`` from before it reads
the sweep state until it returns; a second driver is refused at once, told the holder's PID and host.

The run directories are the sweep's state. Rerunning the driver resumes: trials whose
``result.json`` says they ended (finished or diverged) are skipped, all others start again and
``core.gan.train.train`` continues each from its ``checkpoints/latest.pt``. A crashed trial is retried
by Ray Tune (``FailureConfig(max_failures)``) the same way; every failure is appended to the
trial's ``failures.jsonl``. A trial that fails for a configuration reason (``ConfigError``) is not
retried: it ends at once with status ``config_error``.

A sweep grows: a sweep file that adds trials and keeps the existing ones as they were trains only
the new ones, under the same MLflow parent run; one that changes or drops a trial is refused
(:func:`scaling.plan.plan_sweep`).

Trials whose TrainConfig repeats an earlier trial's (``scaling.grid.shared_trainings``, e.g.
``gat`` and ``constant`` at the base width) are not trained again: once the earlier trial has
ended, its run directory files and MLflow run are copied under the repeating trial's name.

While trials run, the driver prints one line per trial event and a status line with an ETA
(:class:`scaling.progress.ProgressLines`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import torch
from mlflow.exceptions import MlflowException
from ray import tune
from rich.console import Console
from rich.markup import escape

from core.cache import DiskFullError
from core.gan.checkpoint import CHECKPOINTS, CheckpointError, resume_state
from core.config import ConfigError, TrainConfig
from core.metrics import MANIFEST, dataset_kind, resolve_metric
from core.records import CONFIG_FILE, DIVERGED, FINISHED, KIMG, RESULT_FILE, STATS_FILE, RunResult
from core.gan.train import Report, train
from scaling.grid import ATTEMPTS_FILE, STATE_FILE, TRIALS_DIR, Trial, is_done
from scaling.display import dataset_problem
from scaling.lock import sweep_lock, writable_directory
from scaling.progress import DROP_RAY_ADVICE, ProgressLines, trial_name
from scaling.plan import Plan, check_settings, plan_sweep
from scaling.spec import Resources, SweepSpec
from scaling.state import (
    CONFIG_ERROR,
    COPY_FILE,
    FAILURES_FILE,
    append_attempt,
    append_failure,
    open_sweep,
    read_jsonl,
)
from scaling.tracking import (
    MlflowReporter,
    TrialTracking,
    copy_run,
    end_open_runs,
    set_run_status,
    store_problems,
)

TUNE_DIR = "tune"
STOP_ALL = "stop_all"
"""Key of a trial's last result: its error stops every trial (:class:`StopOnFullDisk`)."""
ANSI_CODES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
"""Terminal colour codes, which Ray puts into its errors' text (kept out of summaries and records)."""
DDP_POLL_S = 5.0
"""Seconds between two reads of a multi-worker trial's stats.jsonl by its launcher (:func:`relay_stats`)."""
DDP_LAUNCHER_CPU = 0.01
"""CPU share reserved by the Tune trial that launches a multi-worker Ray Train run: it only waits,
so it must not hold back a CPU the DDP workers need."""


# ----------------------------------------------------------------------------------------------
# What a trial gets, and the trainable
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrialContext:
    """Everything a trial needs; plain data, put once into Ray's object store."""

    out: Path
    tracking: TrialTracking
    trials: dict[str, Trial]
    resources: Resources
    flops_per_iter: dict[str, int]
    """Counted by the driver for trials.csv; handed to the trials so they do not count again."""

    def run_dir(self, trial: str) -> Path:
        return self.out / TRIALS_DIR / trial


class TrialReporter(MlflowReporter):
    """The reporter of a sweep trial: the MLflow child run, a Ray Tune result per logging step,
    and one line in ``<run_dir>/attempts.jsonl`` each time training (re)starts."""

    def __init__(self, context: TrialContext, trial: Trial, to_tune: bool = True) -> None:
        super().__init__(context.tracking, trial.name, trial.sweep_params(), trial.label)
        self.run_dir = context.run_dir(trial.name)
        self.to_tune = to_tune

    def start(self, cfg: TrainConfig, info: dict[str, str], state: dict[str, Any] | None) -> None:
        append_attempt(self.run_dir, resumed=state is not None,
                       node_id=ray.get_runtime_context().get_node_id() if ray.is_initialized() else None)
        super().start(cfg, info, state)

    def report(self, report: Report) -> None:
        super().report(report)
        if self.to_tune:
            tune.report(dict(report.metrics))


def run_trial(config: dict[str, str], context: TrialContext, reporter_cls: type[TrialReporter]) -> None:
    """Ray Tune trainable: train one trial in its run directory (resuming if it has a checkpoint).

    ``config = {"trial": <name>}``. A ConfigError of the trial (recorded in ``failures.jsonl`` and
    its MLflow run, FAILED) ends it at once with the result ``status = config_error`` and the
    error, so Ray Tune does not retry it. Raises whatever else training raises (Ray Tune retries
    the trial), after recording it the same way; a trial started on a node that cannot see the
    sweep's output directory fails with a message saying so.
    """
    trial = context.trials[config["trial"]]
    run_dir = context.run_dir(trial.name)
    if not (context.out / STATE_FILE).exists():
        raise FileNotFoundError(
            f"output_dir {context.out} is not visible on node {socket.gethostname()}: on a cluster the "
            "sweep's output_dir must be a shared filesystem mounted at the same path on every node")
    run_dir.mkdir(parents=True, exist_ok=True)
    failed_before = len(read_jsonl(run_dir / FAILURES_FILE))
    try:
        fit = _train_ddp if context.resources.workers > 1 else _train
        result = fit(context, trial, reporter_cls)
    except Exception as err:
        # A ConfigError raised here, or one rank 0 of a DDP trial recorded in its own process.
        config_errors = [f["error"] for f in read_jsonl(run_dir / FAILURES_FILE)[failed_before:]
                         if f["kind"] == CONFIG_ERROR]
        if isinstance(err, ConfigError):
            config_errors.append(f"{type(err).__name__}: {err}")
        if not config_errors:
            raise
        # A full disk is every trial's: the driver stops the sweep (StopOnFullDisk).
        tune.report({"status": CONFIG_ERROR, "error": config_errors[-1],
                     STOP_ALL: config_errors[-1].startswith(DiskFullError.__name__)})
        return
    tune.report({**result.metrics, "status": result.status, "iterations": result.iterations})


def _train(context: TrialContext, trial: Trial, reporter_cls: type[TrialReporter]) -> RunResult:
    """Train one trial in this process; a failure is recorded before it propagates."""
    torch.set_num_threads(context.resources.torch_threads())
    reporter = reporter_cls(context, trial)
    try:
        return train(trial.config, context.run_dir(trial.name), reporter, progress=False,
                     flops_per_iter=context.flops_per_iter[trial.name])
    except Exception as err:
        _record_failure(context.run_dir(trial.name), reporter, err)
        raise


def _record_failure(run_dir: Path, reporter: TrialReporter, error: Exception) -> None:
    """Append the failure to the run directory's ``failures.jsonl`` (kind ``config_error`` for a
    ConfigError, else ``crash``), then mark the MLflow run FAILED with the error; as far as a full
    disk or an unreachable store allow (the error itself still reaches Ray Tune)."""
    with contextlib.suppress(OSError):
        append_failure(run_dir, CONFIG_ERROR if isinstance(error, ConfigError) else "crash",
                       f"{type(error).__name__}: {error}")
    with contextlib.suppress(MlflowException, OSError):
        reporter.mark_failed(error)


def _ddp_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: one DDP rank of a trial (``core.gan.train`` sees torch.distributed); rank 0
    records a failure."""
    import ray.train

    context, trial, reporter_cls = config["context"], config["trial"], config["reporter_cls"]
    rank = ray.train.get_context().get_world_rank()
    reporter = reporter_cls(context, trial, to_tune=False) if rank == 0 else None
    try:
        train(trial.config, context.run_dir(trial.name), reporter, progress=False,
              flops_per_iter=context.flops_per_iter[trial.name])
    except Exception as err:
        if reporter is not None:
            _record_failure(context.run_dir(trial.name), reporter, err)
        raise


def relay_stats(stats: Path, fitting: Future, report: Callable[[dict[str, Any]], None],
                poll_s: float = DDP_POLL_S) -> None:
    """Pass each new record of rank 0's ``stats.jsonl`` (its ``step`` dropped) to ``report`` until
    ``fitting`` is done, then the records written last: how a multi-worker trial reports to Tune
    while it trains. It runs in the trial's launcher, since ``ray.train.report`` is a barrier that
    every rank would have to call at the same steps while only rank 0 logs.

    A record is new when its step is past the last one relayed. A retried trial's file already
    holds an earlier attempt's records: of those only the newest is relayed (all at once they would
    look like iterations done in no time to the ETA; MLflow has them), and once rank 0 has cut the
    file back to its checkpoint, records flow again past that step. A line still being written (no
    newline yet) waits for the next poll.
    """
    backlog = _complete_records(stats)
    last = backlog[-1]["step"] - 1 if backlog else -1
    while True:
        finished = fitting.done()  # read before the file: the final records are then on disk
        for record in _complete_records(stats):
            step = record.pop("step")
            if step > last:
                last = step
                report(record)
        if finished:
            return
        wait([fitting], timeout=poll_s)


def _complete_records(stats: Path) -> list[dict[str, Any]]:
    """The records of a stats.jsonl up to its last complete line (empty if it does not exist)."""
    if not stats.exists():
        return []
    lines = stats.read_text().splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines.pop()  # still being written
    return [json.loads(line) for line in lines]


def _train_ddp(context: TrialContext, trial: Trial, reporter_cls: type[TrialReporter]) -> RunResult:
    """Train one trial on ``resources.workers`` DDP processes through Ray Train's TorchTrainer."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    res = context.resources
    trainer = TorchTrainer(
        _ddp_worker,
        train_loop_config={"context": context, "trial": trial, "reporter_cls": reporter_cls},
        scaling_config=ScalingConfig(num_workers=res.workers, use_gpu=res.gpus > 0,
                                     resources_per_worker={"CPU": res.cpus, "GPU": res.gpus}),
        run_config=RunConfig(name=trial.name, storage_path=str(context.out / "ray_train"),
                             failure_config=FailureConfig(max_failures=0)),
    )
    with ThreadPoolExecutor(max_workers=1) as pool:
        fitting = pool.submit(trainer.fit)
        relay_stats(context.run_dir(trial.name) / STATS_FILE, fitting, tune.report)
        fitting.result()  # a worker's exception surfaces here; Tune then retries the whole trial
    return RunResult.load(context.run_dir(trial.name))


# ----------------------------------------------------------------------------------------------
# The driver
# ----------------------------------------------------------------------------------------------
@dataclass
class TrialOutcome:
    """How one trial stands after a driver run."""

    name: str
    status: str
    """'finished', 'diverged', 'error' (failed more than max_failures times), 'config_error'
    (stopped by a configuration error, not retried) or 'incomplete'."""
    iterations: int = 0
    """Iterations trained: at the end, or for an incomplete trial the last step it logged."""
    kimg: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    same_as: str | None = None
    """The trial whose training this one repeats (its results are a copy), if any."""
    reason: str | None = None
    """Why a diverged trial was stopped (``result.json``)."""
    starts: int = 0
    """Times training started or restarted over the sweep's history (``attempts.jsonl``)."""
    failures: list[str] = field(default_factory=list)
    """The errors of its failed attempts over the sweep's history (``failures.jsonl``)."""


@dataclass
class SweepOutcome:
    """How a sweep stands after a driver run: every trial, and where its results are."""

    name: str
    out: Path
    tracking_uri: str
    experiment_id: str
    trials: list[TrialOutcome]
    store_problems: list[str] = field(default_factory=list)
    """Ended trials the MLflow store disagrees with (no, several or an unfinished child run)."""
    stopped_for: str | None = None
    """The error for which the driver stopped every trial (a full disk), if any."""

    @property
    def failed(self) -> bool:
        """True if any trial ended in error or a configuration error, or the store disagrees."""
        return bool(self.store_problems) or any(t.status in ("error", CONFIG_ERROR) for t in self.trials)

    @property
    def interrupted(self) -> bool:
        """True if trials did not end because the driver was interrupted (Ctrl-C, SIGTERM)."""
        return self.stopped_for is None and any(t.status == "incomplete" for t in self.trials)


def _check_inputs(cfg: TrainConfig) -> None:
    """Check every local file the trials will read, before anything is created or started: the
    dataset directory, and unless trials neither evaluate nor write sample grids the VAE its
    manifest names (for the embedded
    digits, :func:`_prepare_data` makes both), the Inception weights of eval metric 'fid', and with
    ``repa`` the DINOv2 encoder and the dataset's raw images.

    Raises FileNotFoundError for a missing dataset directory or manifest (with the command that
    makes it, :func:`scaling.display.dataset_problem`), ConfigError naming a
    weights file that is missing or cannot be loaded, a dataset without the images repa needs, or
    a folder with fewer than 2 classes for a domain FD (:func:`core.evaluation.domain.check_classes`).
    """
    from core.evaluation.fidelity import check_inception_weights

    kind = dataset_kind(cfg.dataset)
    if kind == "random":
        return
    evaluates = cfg.eval_every >= 0
    kept_images = kind == "digits"  # the digits keep theirs; a folder when encoded with --keep-images
    if kind == "encoded":
        root = Path(cfg.dataset)
        missing = dataset_problem(cfg)
        if missing:
            raise FileNotFoundError(missing)
        manifest = root / MANIFEST
        written = json.loads(manifest.read_text())
        kept_images = bool(written.get("keep_images"))
        if evaluates and resolve_metric(cfg.eval_metric, kind, cfg.inception_weights) == "fd_domain":
            from core.evaluation.domain import check_classes

            check_classes(root, written)
        if evaluates or cfg.sample_every >= 0:
            from core.data.vae import load_vae

            vae = written["vae"]
            try:
                load_vae(vae)
            except Exception as err:  # diffusers and safetensors raise many types for a missing or bad file
                raise ConfigError(f"the VAE {vae} named in {manifest} (evaluations and sample grids decode "
                                  f"samples with it; train.sample_every: -1 and eval.every: -1 need none) "
                                  f"cannot be loaded: {type(err).__name__}: {err}") from err
    if cfg.repa:
        import torch

        from core.gan.repa import load_encoder, require_images

        require_images(kind, cfg.dataset, kept_images)
        load_encoder(cfg.repa_encoder, cfg.repa_dim, torch.device("cpu"))
    if evaluates and resolve_metric(cfg.eval_metric, kind, cfg.inception_weights) == "fid":
        check_inception_weights(cfg.inception_weights)


def _prepare_data(cfg: TrainConfig) -> None:
    """Prepare what all trials share before any starts, so that trials do not repeat or race for
    it: the embedded digits dataset and its reference statistics, or an encoded folder's domain
    classifier (each cached on first use)."""
    if cfg.dataset == "digits":
        from core.evaluation.evaluate import make_evaluator
        from core.data.latents import load_latents

        data = load_latents(cfg)  # builds the embedded dataset's cache on first use
        if cfg.eval_every >= 0:
            make_evaluator(cfg, data, torch.device("cpu"))  # caches the reference statistics
    elif cfg.eval_every >= 0 and resolve_metric(cfg.eval_metric, "encoded", cfg.inception_weights) == "fd_domain":
        from core.evaluation.domain import prepare_folder_classifier

        prepare_folder_classifier(Path(cfg.dataset))  # not load_latents: the driver needs no latents


def _check_tracking_store(tracking_uri: str) -> None:
    """Check that this process can write a local sqlite tracking store's directory and file.

    Raises ConfigError naming ``tracking_uri``.
    """
    if tracking_uri.startswith("sqlite:"):
        # SQLAlchemy's form: sqlite:///relative.db, sqlite:////absolute.db, optional ?query
        db = Path(tracking_uri.removeprefix("sqlite:///").partition("?")[0]).absolute()
        writable_directory(db.parent, f"tracking_uri: {tracking_uri} (its directory {db.parent})")
        if db.exists() and not os.access(db, os.W_OK):
            raise ConfigError(f"tracking_uri: {tracking_uri}: {db} is not writable by this user")


def run_sweep(spec: SweepSpec, sweep_file: Path, reporter_cls: type[TrialReporter] = TrialReporter,
              console: Console | None = None, started: float | None = None) -> SweepOutcome:
    """Run (or resume) a sweep to the end and return how every trial stands.

    Before anything starts: the sweep's settings are checked (:func:`scaling.plan.check_settings`:
    cluster storage, the tracking URI), then :func:`run_checked_sweep` runs it.

    Raises ConfigError / SweepChangedError / SweepLockedError / FileNotFoundError for settings the
    user must fix (a tracking URI that is a path or a server that does not answer:
    :func:`scaling.spec.check_tracking_uri`), or another running driver; no trial is started then,
    and an output directory this call created is removed again.
    """
    check_settings(spec)
    return run_checked_sweep(spec, sweep_file, reporter_cls, console, started)


def run_checked_sweep(spec: SweepSpec, sweep_file: Path, reporter_cls: type[TrialReporter] = TrialReporter,
                      console: Console | None = None, started: float | None = None) -> SweepOutcome:
    """:func:`run_sweep` for a spec whose settings :func:`scaling.plan.check_settings` passed
    (``gat-sweep run`` checks them before it imports Ray and torch, for a quick answer).

    The sweep lock is taken (creating the output directory) and held until the end, the sweep
    planned (:func:`scaling.plan.plan_sweep`: the trials' memory, whether the output directory
    holds the sweep), then every local file the trials read (dataset, VAE, Inception weights), a
    local tracking store's writability and the checkpoints the trials resume from are checked.
    After the trials, child runs of trials that did not end are closed (FAILED or KILLED) and the
    store is checked against the trials that ended (``SweepOutcome.store_problems``); the parent
    run ends FINISHED, FAILED or KILLED.

    Ctrl-C (and SIGTERM, which the command line turns into it) stops the trials (Ray Tune stops
    them on the first, at once on the second) and returns with them ``incomplete``; during Ray's
    start-up it waits for Ray to be up, then stops it whole. The driver's own Ray instance is
    stopped before this returns.

    ``reporter_cls`` is the hook for a different reporter (a subclass of TrialReporter).
    ``started``: when the command began (``time.monotonic()``; default: now), from which the
    progress lines count the elapsed time. Raises as :func:`run_sweep` does.
    """
    console = console or Console()
    started = time.monotonic() if started is None else started
    with sweep_lock(spec.output_path()):
        plan = plan_sweep(spec, sweep_file)
        _check_inputs(plan.trials[0].config)  # every trial shares the dataset and the evaluation settings
        _check_tracking_store(spec.tracking())
        return _drive(plan, reporter_cls, console, started)


def _drive(plan: Plan, reporter_cls: type[TrialReporter], console: Console, started: float) -> SweepOutcome:
    """The body of :func:`run_checked_sweep`, under the sweep lock: open the sweep, fit, copy, collect, check."""
    spec, trials, repeats, added = plan.spec, plan.trials, plan.repeats, plan.added
    out, tracking_uri = spec.output_path(), spec.tracking()
    _prepare_data(trials[0].config)
    _check_checkpoints(out, plan.pending, console)
    starting = _RayInstance(spec.ray_target()) if plan.pending and not ray.is_initialized() else None
    failed: dict[str, tuple[str, str]] = {}
    try:
        rows, state, interrupted = _open_sweep_while_ray_starts(plan, starting)
        context = TrialContext(out, TrialTracking(tracking_uri, state["experiment_id"], spec.name, state["parent_run_id"]),
                               {t.name: t for t in trials}, spec.resources,
                               {row["name"]: row["flops_per_iter"] for row in rows})
        # Train each distinct config once; start the most expensive first (the shortest overall
        # time for a fixed pool of workers).
        cost = {row["name"]: row["total_flops"] for row in rows}
        todo = [] if interrupted else sorted((t.name for t in plan.pending), key=lambda n: -cost[n])
        if added:
            console.print(f"sweep [bold]{spec.name}[/] grows by {len(added)} trials; its "
                          f"{len(trials) - len(added)} trials so far are kept as they are (a report and "
                          "verdicts logged before cover those only: make the report again)")
        if interrupted:
            console.print("interrupted while Ray started: Ray is stopped again and no trial starts")
        else:
            console.print(f"sweep [bold]{spec.name}[/]: {len(trials)} trials ({len(repeats)} repeat another's "
                          f"training and are copied), {len(todo)} to train; output {escape(str(out))}")
        for name in todo:
            failures = read_jsonl(context.run_dir(name) / FAILURES_FILE)
            if failures:
                reason = failures[-1]["error"].splitlines()[0]  # a Ray error's first line names it
                console.print(f"[yellow]retrying[/]  {name}, which failed in an earlier run: {escape(reason)}",
                              highlight=False, soft_wrap=True)
        if todo:
            work = {name: (context.flops_per_iter[name], context.trials[name].config.iterations) for name in todo}
            progress = ProgressLines(console, out, len(trials) - len(repeats), len(trials) - len(repeats) - len(todo), work,
                                     tracking_uri, started)
            recorded = {name: len(read_jsonl(context.run_dir(name) / FAILURES_FILE)) for name in todo}
            try:
                failed = _fit(context, spec, todo, reporter_cls, progress)
            except KeyboardInterrupt:  # a second Ctrl-C (or SIGTERM): Ray Tune stopped at once
                failed = {}
            for name, (status, error) in failed.items():
                if status == "error" and len(read_jsonl(context.run_dir(name) / FAILURES_FILE)) == recorded[name]:
                    with contextlib.suppress(OSError):  # a full disk: the summary has it all the same
                        append_failure(context.run_dir(name), "crash", error)  # its worker died unrecorded
    finally:
        if starting is not None:
            with _interrupts_ignored():
                starting.stop()
    with _interrupts_ignored():  # the store and the run directories agree before the driver ends
        by_name = {t.name: t for t in trials}
        for name, source in repeats.items():
            if not is_done(by_name[name], context.run_dir(name)) and is_done(by_name[source], context.run_dir(source)):
                with contextlib.suppress(OSError):  # a full disk: incomplete, copied by the next run
                    _copy_trial(context, by_name[name], source)
        outcome = _collect(spec, context, trials, failed, repeats)
        outcome.stopped_for = next((error for _, error in failed.values() if error.startswith(DiskFullError.__name__)),
                                   None)
        end_open_runs(context.tracking, {
            t.name: ("KILLED", "the trial did not end: the driver stopped before it finished")
            if t.status == "incomplete" else ("FAILED", t.error or t.status)
            for t in outcome.trials if t.status not in (FINISHED, DIVERGED)})
        outcome.store_problems = _check_store(context, outcome)
        stopped = any(t.status == "incomplete" for t in outcome.trials)
        set_run_status(tracking_uri, state["parent_run_id"],
                       "FAILED" if outcome.failed else "KILLED" if stopped else "FINISHED")
    return outcome


class _RayInstance:
    """Ray started (or joined) by ``ray.init`` in a thread of its own, which lives until
    :meth:`stop`.

    Off the main thread Ray installs no signal handlers (it does only there), so Ctrl-C and
    SIGTERM keep meaning "stop" to the driver while Ray starts; and the thread must outlive Ray's
    processes, since Linux sends a child its parent-death signal when the *thread* that started it
    ends. :meth:`stop` waits for the start-up to end before it shuts Ray down: stopped halfway
    through its start-up, Ray left processes behind.
    """

    def __init__(self, address: str) -> None:
        self.ready: Future = Future()
        self._release = threading.Event()
        logging.getLogger("ray._private.worker").addFilter(DROP_THREAD_WARNING)
        self._thread = threading.Thread(target=self._run, args=(address,), name="ray-init", daemon=True)
        self._thread.start()

    def _run(self, address: str) -> None:
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        except BaseException as err:  # handed to the thread that waits for Ray
            self.ready.set_exception(err)
            return
        self.ready.set_result(None)
        self._release.wait()

    def stop(self) -> None:
        """Wait for the start-up to end, shut Ray down (its processes on this machine end), and
        let the thread end."""
        wait([self.ready])
        if ray.is_initialized():
            ray.shutdown()
        self._release.set()
        self._thread.join()


class _DropThreadWarning(logging.Filter):
    """Drops Ray's warning that it sets no SIGTERM handler off the main thread (on purpose here)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("SIGTERM handler is not set")


DROP_THREAD_WARNING = _DropThreadWarning()


def _open_sweep_while_ray_starts(plan: Plan, starting: _RayInstance | None
                                 ) -> tuple[list[dict[str, Any]], dict[str, Any], bool]:
    """Open the sweep (:func:`scaling.state.open_sweep`: FLOP counts, MLflow experiment and parent
    run) while Ray starts (``starting``; its start-up is mostly waiting for its processes, so this
    takes seconds off the time to the first iteration), and wait for both. An interrupt (Ctrl-C,
    or SIGTERM through the command line) waits for both too, so that Ray can be stopped whole and
    the trials closed in the store. Returns (trial rows, sweep state, whether the driver was
    interrupted meanwhile); raises the error of either.
    """
    interrupted = False
    with ThreadPoolExecutor(max_workers=1) as pool:
        futures = [pool.submit(open_sweep, plan)]
        futures += [starting.ready] if starting is not None else []
        while not all(f.done() for f in futures):
            try:
                wait(futures)
            except KeyboardInterrupt:
                interrupted = True
    for future in futures[1:]:
        future.result()
    rows, state = futures[0].result()
    return rows, state, interrupted


@contextlib.contextmanager
def _interrupts_ignored() -> Iterator[None]:
    """Ignore Ctrl-C for the block (in the main thread; SIGTERM follows it through the command
    line's handler), so that a repeated interrupt cannot leave runs RUNNING or Ray half stopped."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _check_checkpoints(out: Path, pending: list[Trial], console: Console) -> None:
    """Read the checkpoint each pending trial will resume from, as its training will
    (:func:`core.gan.checkpoint.resume_state`; tensors mapped, not read), and say which trials resume
    from an older checkpoint because a newer one is damaged.

    Raises CheckpointError naming every trial none of whose checkpoints can be read: no retry
    could read them, so nothing starts.
    """
    unreadable = []
    for trial in pending:
        try:
            found = resume_state(out / TRIALS_DIR / trial.name / CHECKPOINTS, mmap=True)
        except CheckpointError as err:
            unreadable.append(f"{trial.name}: {err}")
            continue
        if found is not None and found[2]:
            console.print(f"[yellow]damaged[/]   {trial.name}: {escape('; '.join(found[2]))}; it resumes from "
                          f"{found[1].name}", highlight=False, soft_wrap=True)
    if unreadable:
        raise CheckpointError("\n".join(unreadable))


def _check_store(context: TrialContext, outcome: SweepOutcome) -> list[str]:
    """The store checked against the trials that ended (:func:`scaling.tracking.store_problems`);
    a store that cannot be read is one problem."""
    ended = {t.name: t.status for t in outcome.trials if t.status in (FINISHED, DIVERGED)}
    try:
        return store_problems(context.tracking, ended)
    except MlflowException as err:
        return [f"cannot read the MLflow store {context.tracking.tracking_uri}: {err}"]


def _copy_trial(context: TrialContext, trial: Trial, source: str) -> None:
    """Give ``trial`` the results of ``source``, whose training it repeats: the MLflow run, then the
    run directory's files (config.json of its own, stats, samples, ``same_as.json``, and
    result.json last, which marks the copy complete)."""
    src, dst = context.run_dir(source), context.run_dir(trial.name)
    samples = sorted((src / "samples").glob("*.png"))
    run_id = copy_run(context.tracking, source, trial.name, trial.label, trial.config, trial.sweep_params(), samples)
    (dst / "samples").mkdir(parents=True, exist_ok=True)
    for path in samples:
        shutil.copyfile(path, dst / "samples" / path.name)
    (dst / CONFIG_FILE).write_text(json.dumps(trial.config.to_dict(), indent=2))
    shutil.copyfile(src / STATS_FILE, dst / STATS_FILE)
    (dst / COPY_FILE).write_text(json.dumps({"trial": source, "mlflow_run_id": run_id}, indent=2))
    shutil.copyfile(src / RESULT_FILE, dst / RESULT_FILE)


def max_concurrent(setting: int | None, res: Resources, cluster: dict[str, float]) -> int | None:
    """Trials run at once: the sweep's ``max_concurrent``; without one, None (as many as fit) for
    single-process trials, and for multi-worker trials as many as the cluster's CPUs and GPUs can
    hold at once (each trial: its workers plus its launcher's DDP_LAUNCHER_CPU), at least 1: each
    waiting launcher would otherwise hold a Ray Train run queued for workers (Ray's guide to Train
    inside Tune bounds it the same way). ``cluster``: ``ray.cluster_resources()``."""
    if setting is not None or res.workers == 1:
        return setting
    need = {"CPU": res.cpus * res.workers + DDP_LAUNCHER_CPU}
    if res.gpus:
        need["GPU"] = res.gpus * res.workers
    return max(1, int(min(cluster.get(kind, 0.0) // amount for kind, amount in need.items())))


def _fit(context: TrialContext, spec: SweepSpec, todo: list[str], reporter_cls: type[TrialReporter],
         progress: ProgressLines) -> dict[str, tuple[str, str]]:
    """Run the trials ``todo`` as one Ray Tune experiment; return ``{trial: (status, error)}`` of
    those that failed: 'error' (retries used up) or 'config_error'."""
    res = spec.resources
    request = {"cpu": res.cpus, "gpu": res.gpus} if res.workers == 1 else {"cpu": DDP_LAUNCHER_CPU}
    trainable = tune.with_resources(tune.with_parameters(run_trial, context=context, reporter_cls=reporter_cls), request)
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(todo)},
        tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent(spec.max_concurrent, res, ray.cluster_resources()),
                                    reuse_actors=True,
                                    trial_name_creator=trial_name,
                                    trial_dirname_creator=trial_name),
        run_config=tune.RunConfig(
            name=time.strftime("%Y%m%d-%H%M%S"), storage_path=str(context.out / TUNE_DIR), verbose=0,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            stop=StopOnFullDisk(), callbacks=[progress, RecordLostFailures(context.out)]),
    )
    logging.getLogger("ray.tune.tune").addFilter(DROP_RAY_ADVICE)  # adding it again is a no-op
    failed = {}
    for r in tuner.fit():
        if r.error is not None:
            failed[r.config["trial"]] = ("error", ANSI_CODES.sub("", f"{type(r.error).__name__}: {r.error}"))
        elif (r.metrics or {}).get("status") == CONFIG_ERROR:
            failed[r.config["trial"]] = (CONFIG_ERROR, r.metrics["error"])
    return failed


class RecordLostFailures(tune.Callback):
    """Adds to a retried trial's ``failures.jsonl`` the failed attempt its worker could not record
    (killed by the OOM killer or a signal), with the first line of Ray Tune's error, so that the
    summary and the next run name the cause of every restart (the summary said "resumed after the
    driver stopped"). The last attempt of a trial that fails for good is recorded after the
    trials, with Ray's exception."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.recorded: dict[str, int] = {}
        """Per trial, the failures its file held when the current attempt started."""

    def _count(self, name: str) -> int:
        return len(read_jsonl(self.out / TRIALS_DIR / name / FAILURES_FILE))

    def on_trial_start(self, iteration, trials, trial, **info) -> None:  # type: ignore[no-untyped-def]
        self.recorded[trial_name(trial)] = self._count(trial_name(trial))

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:  # type: ignore[no-untyped-def]
        name = trial_name(trial)
        if self._count(name) == self.recorded.get(name):
            errors = Path(trial.error_file).read_text() if trial.error_file else ""  # "Failure # N (...)" blocks
            latest = ANSI_CODES.sub("", errors).rpartition("Failure # ")[2].splitlines()[1:]
            lines = [line.strip() for line in latest if line.strip()]
            with contextlib.suppress(OSError):  # a full disk: the trial is retried all the same
                append_failure(self.out / TRIALS_DIR / name, "crash", lines[0] if lines else "its worker died")
        self.recorded[name] = self._count(name)


class StopOnFullDisk(tune.Stopper):
    """Stops the sweep once a trial reports :data:`STOP_ALL` (a full disk, which the trials share):
    the running trials stop and the others do not start, all ``incomplete``, instead of each
    failing in turn."""

    def __init__(self) -> None:
        self.stopping = False

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        self.stopping = self.stopping or bool(result.get(STOP_ALL))
        return False

    def stop_all(self) -> bool:
        return self.stopping


def _collect(spec: SweepSpec, context: TrialContext, trials: list[Trial], failed: dict[str, tuple[str, str]],
             repeats: dict[str, str]) -> SweepOutcome:
    """How every trial stands: its result.json if it ended, else its failure in this run (or the
    failure of the trial it repeats), else incomplete with the iterations it reached (its last
    logged step); with its starts and failures so far."""
    outcomes = []
    for t in trials:
        run_dir = context.run_dir(t.name)
        result = RunResult.load(run_dir)
        same_as = repeats.get(t.name)
        history = {"same_as": same_as, "starts": len(read_jsonl(run_dir / ATTEMPTS_FILE)),
                   "failures": [f["error"] for f in read_jsonl(run_dir / FAILURES_FILE)]}
        if result is not None and is_done(t, run_dir):
            outcomes.append(TrialOutcome(t.name, result.status, result.iterations, result.kimg,
                                         result.metrics, reason=result.reason, **history))
        elif t.name in failed:
            status, error = failed[t.name]
            outcomes.append(TrialOutcome(t.name, status, error=error, **history))
        elif same_as in failed:
            status, _ = failed[same_as]
            outcomes.append(TrialOutcome(t.name, status, error=f"repeats the training of {same_as}, which failed",
                                         **history))
        else:
            reached = _complete_records(run_dir / STATS_FILE)[-1:]  # the last logged step, if any
            outcomes.append(TrialOutcome(t.name, "incomplete", int(reached[0]["step"]) if reached else 0,
                                         reached[0].get(KIMG, 0.0) if reached else 0.0, **history))
    return SweepOutcome(spec.name, context.out, context.tracking.tracking_uri, context.tracking.experiment_id, outcomes)
