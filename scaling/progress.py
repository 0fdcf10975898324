"""The sweep driver's console while trials run: one line per trial event (start, result, retry,
error), and every STATUS_EVERY_S a status line with the elapsed time and an ETA (and, while an
MLflow tracking server does not answer, a line saying so instead of an ETA); Ray Tune's own
closing advice is dropped, since the sweep's summary replaces it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from ray import tune
from rich.console import Console
from rich.markup import escape

from core.gan.checkpoint import CHECKPOINTS
from core.records import DIVERGED, ITER, is_fd_key
from scaling.grid import TRIALS_DIR
from scaling.spec import server_problem
from scaling.state import CONFIG_ERROR

STATUS_EVERY_S = 30.0
"""Seconds between progress lines while trials run."""
RATE_WINDOW_S = 60.0
"""Seconds of recent reports over which the ETA measures how fast each trial trains."""
STORE_PROBE_S = 5.0
"""Timeout of the status line's probe of an MLflow tracking server (:func:`scaling.spec.server_problem`)."""

RAY_ADVICE = ("Experiment has been interrupted", "Trials did not complete")
"""Starts of Ray Tune's closing log lines that the sweep's summary replaces: its resume advice
(``Tuner.restore(...)``; a sweep resumes by running the same command again) and its list of
unfinished trials (the summary names each with its status and reason)."""


class _DropRayAdvice(logging.Filter):
    """A filter for Ray Tune's logger that drops the :data:`RAY_ADVICE` lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(RAY_ADVICE)


DROP_RAY_ADVICE = _DropRayAdvice()


def duration(seconds: float) -> str:
    """Seconds as a short clock reading: 45 -> '45s', 192 -> '3m12s', 3720 -> '1h02m'."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class ProgressLines(tune.Callback):
    """Readable progress: one line per trial event, and a status line every STATUS_EVERY_S with
    the elapsed time (from ``started``: the command's start, data preparation included) and an ETA.

    The ETA comes from the rate the running trials train at now: each trial's seconds per iteration
    over its last RATE_WINDOW_S of reports (evaluations included), so that a machine that slows
    down (or speeds up) shows within one window. A trial not running yet is costed by the trials
    measured (:func:`seconds_per_iteration`: across architectures ``a + b * FLOPs per iteration``,
    since small models are overhead-bound), each trial's iterations left (``work``: FLOPs per
    iteration and iterations of each trial to train) are summed and divided by the trials seen
    running at once (or the trials left, if fewer), and the ETA is never less than the longest
    trial left. Start-up is not in it.
    """

    def __init__(self, console: Console, out: Path, total: int, done_before: int,
                 work: dict[str, tuple[int, int]], tracking_uri: str = "", started: float | None = None) -> None:
        self.console, self.out, self.total, self.done, self.work = console, out, total, done_before, work
        self.tracking_uri = tracking_uri
        self.store_down_since: float | None = None
        """When the status lines first found the MLflow server not answering (None while it does)."""
        self.reports: dict[str, list[tuple[float, int]]] = {}
        """Per trial: (time, iteration) of its reports in the last RATE_WINDOW_S, and the one before."""
        self.ended: set[str] = set()
        self.slots = 1
        self.started = time.monotonic() if started is None else started
        self.last_status = time.monotonic()

    def seconds_per_iter(self) -> dict[str, float]:
        """Each trial's seconds per iteration over its last RATE_WINDOW_S (trials reported twice at
        least); only the running trials' once any of them is measured."""
        rates = {n: (r[-1][0] - r[0][0]) / (r[-1][1] - r[0][1])
                 for n, r in self.reports.items() if n in self.work and r[-1][1] > r[0][1]}
        running = {n: rate for n, rate in rates.items() if n not in self.ended}
        return running or rates

    def eta(self) -> float | None:
        """Seconds left at the measured rates, or None before any was measured."""
        rates = self.seconds_per_iter()
        if not rates:
            return None
        per_iter = seconds_per_iteration([(self.work[n][0], rate) for n, rate in rates.items()])
        done = {n: r[-1][1] for n, r in self.reports.items()}
        left = [rates.get(n, per_iter(fpi)) * (iters - done.get(n, 0))
                for n, (fpi, iters) in self.work.items() if n not in self.ended and iters > done.get(n, 0)]
        if not left:
            return 0.0
        # No faster than the longest trial left, nor than the trials left can share the slots.
        return max(sum(left) / min(self.slots, len(left)), max(left))

    def __getstate__(self) -> dict[str, Any]:
        # Ray Tune pickles callbacks into its experiment state; a console does not pickle.
        return {**self.__dict__, "console": None}

    def _print(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text, highlight=False, soft_wrap=True)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:  # type: ignore[no-untyped-def]
        self._print(f"[cyan]start[/]     {trial_name(trial)}")

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:  # type: ignore[no-untyped-def]
        if ITER in result:
            name, now, it = trial_name(trial), time.monotonic(), int(result[ITER])
            reports = self.reports.setdefault(name, [])
            if reports and it < reports[-1][1]:  # restarted from a checkpoint: measure it afresh
                reports.clear()
            reports.append((now, it))
            while len(reports) > 2 and reports[1][0] <= now - RATE_WINDOW_S:  # keep one report before the window
                reports.pop(0)
            self.slots = max(self.slots, sum(t.status == "RUNNING" for t in trials))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:  # type: ignore[no-untyped-def]
        self.done += 1
        self.ended.add(trial_name(trial))
        result = trial.last_result or {}
        status = result.get("status", "done")
        if status == CONFIG_ERROR:
            self._print(f"[red]{status}[/] {trial_name(trial)}  ({self.done}/{self.total}), not retried: "
                        f"{escape(result.get('error', ''))}")
            return
        evals = "  ".join(f"{k}={v:.4g}" for k, v in result.items() if is_fd_key(k))
        style = "red" if status == DIVERGED else "green"
        self._print(f"[{style}]{status:<9}[/] {trial_name(trial)}  ({self.done}/{self.total})  {evals}")

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:  # type: ignore[no-untyped-def]
        name = trial_name(trial)
        checkpoint = any((self.out / TRIALS_DIR / name / CHECKPOINTS).glob("*.pt"))
        how = "resuming from its checkpoint" if checkpoint else "starting again (no checkpoint yet)"
        self._print(f"[yellow]retry[/]     {name} crashed; {how}")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:  # type: ignore[no-untyped-def]
        self.ended.add(trial_name(trial))  # its retries are used up
        self._print(f"[red]error[/]     {trial_name(trial)}: {escape(str(trial.error_file or 'see Ray logs'))}")

    def on_step_end(self, iteration, trials, **info) -> None:  # type: ignore[no-untyped-def]
        if time.monotonic() - self.last_status < STATUS_EVERY_S:
            return
        self.last_status = time.monotonic()
        running = [trial_name(t) for t in trials if t.status == "RUNNING"]
        now = ", ".join(f"{n} @ {self.reports[n][-1][1] if self.reports.get(n) else 0} it" for n in running)
        down = self._store_problem()
        eta = self.eta()
        left = ", time left unknown" if down else f", about {duration(eta)} left" if eta is not None else ""
        self._print(f"[dim]{self.done}/{self.total} done; running: {now or '-'}; "
                    f"elapsed {duration(time.monotonic() - self.started)}{left}[/]")
        if down:
            self._print(f"[yellow]MLflow[/]    {escape(self.tracking_uri)}: {escape(down)}, for "
                        f"{duration(time.monotonic() - self.store_down_since)}; the trials wait while their MLflow "
                        "clients retry (about 4 minutes per request at MLflow's defaults), then crash and are retried "
                        "from their checkpoints")

    def _store_problem(self) -> str | None:
        """Why the MLflow server of an http(s) tracking URI does not answer now, or None (also for a
        local store); keeps :attr:`store_down_since`."""
        if not self.tracking_uri.startswith(("http://", "https://")):
            return None
        problem = server_problem(self.tracking_uri, STORE_PROBE_S)
        if problem is None:
            self.store_down_since = None
        elif self.store_down_since is None:
            self.store_down_since = time.monotonic()
        return problem


def seconds_per_iteration(measured: list[tuple[float, float]]) -> Callable[[float], float]:
    """Seconds per iteration as a function of FLOPs per iteration, from measured trials
    ``[(flops_per_iter, seconds_per_iter), ...]``: least squares ``a + b * flops`` with a, b >= 0
    once two architectures are measured (fixed overhead plus compute). With one architecture,
    overhead and compute cannot be told apart: a smaller model is taken to cost as much (small
    models are overhead-bound: at 16-64 wide an iteration costs about the same), a larger one in
    proportion to its FLOPs."""
    flops = np.maximum(np.array([f for f, _ in measured], dtype=float), 1.0)  # no division by a 0 count
    secs = np.array([t for _, t in measured], dtype=float)
    if len(np.unique(flops)) < 2:
        measured_flops, per_iter = float(flops[0]), float(np.mean(secs))
        return lambda f: per_iter * max(1.0, f / measured_flops)
    b, a = np.polyfit(flops, secs, 1)
    if a < 0:  # no overhead to see: through the origin
        a, b = 0.0, float(flops @ secs / (flops @ flops))
    elif b < 0:  # no growth with FLOPs to see: a constant
        a, b = float(secs.mean()), 0.0
    return lambda f: a + b * f


def trial_name(trial: Any) -> str:
    """A Ray Tune trial's name: the sweep trial it trains (its ``config["trial"]``); also the
    name of its Tune directory."""
    return trial.config["trial"]
