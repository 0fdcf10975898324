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

from core.checkpoint import CHECKPOINTS
from core.records import DIVERGED, ITER, is_fd_key
from scaling.grid import TRIALS_DIR
from scaling.spec import server_problem
from scaling.state import CONFIG_ERROR

STATUS_EVERY_S = 30.0
"""Seconds between progress lines while trials run."""
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
    the elapsed time and an ETA.

    The ETA comes from measured iteration times: each trial's seconds per iteration between its
    first and latest report (evaluations included), modelled across architectures as
    ``a + b * FLOPs per iteration`` (:func:`seconds_per_iteration`: small models are
    overhead-bound, so time is not proportional to FLOPs), applied to the iterations every unended
    trial has left (``work``: FLOPs per iteration and iterations of each trial to train) and
    divided by the trials seen running at once (or the trials left, if fewer), and never below the
    longest trial left. Start-up is not in it: rough while one architecture is measured, better
    once two are.
    """

    def __init__(self, console: Console, out: Path, total: int, done_before: int,
                 work: dict[str, tuple[int, int]], tracking_uri: str = "") -> None:
        self.console, self.out, self.total, self.done, self.work = console, out, total, done_before, work
        self.tracking_uri = tracking_uri
        self.store_down_since: float | None = None
        """When the status lines first found the MLflow server not answering (None while it does)."""
        self.iters: dict[str, int] = {}
        self.first: dict[str, tuple[int, float]] = {}
        """Per trial: (iteration, time) of its first report."""
        self.latest_time: dict[str, float] = {}
        self.ended: set[str] = set()
        self.slots = 1
        self.started = self.last_status = time.monotonic()

    def eta(self) -> float | None:
        """Seconds left by the measured iteration times, or None before any was measured."""
        measured = [(self.work[n][0], (self.latest_time[n] - t0) / (self.iters[n] - it0))
                    for n, (it0, t0) in self.first.items() if n in self.work and self.iters[n] > it0]
        if not measured:
            return None
        per_iter = seconds_per_iteration(measured)
        left = [per_iter(fpi) * (iters - self.iters.get(n, 0))
                for n, (fpi, iters) in self.work.items() if n not in self.ended and iters > self.iters.get(n, 0)]
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
            name, now = trial_name(trial), time.monotonic()
            self.iters[name] = int(result[ITER])
            self.first.setdefault(name, (self.iters[name], now))
            self.latest_time[name] = now
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
        self._print(f"[red]error[/]     {trial_name(trial)}: {escape(str(trial.error_file or 'see Ray logs'))}")

    def on_step_end(self, iteration, trials, **info) -> None:  # type: ignore[no-untyped-def]
        if time.monotonic() - self.last_status < STATUS_EVERY_S:
            return
        self.last_status = time.monotonic()
        running = [trial_name(t) for t in trials if t.status == "RUNNING"]
        now = ", ".join(f"{n} @ {self.iters.get(n, 0)} it" for n in running)
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
    once two architectures are measured (fixed overhead plus compute), else proportional to FLOPs
    (one architecture: overhead and compute cannot be told apart)."""
    flops = np.maximum(np.array([f for f, _ in measured], dtype=float), 1.0)  # no division by a 0 count
    secs = np.array([t for _, t in measured], dtype=float)
    if len(np.unique(flops)) < 2:
        per_flop = float(np.mean(secs / flops))
        return lambda f: per_flop * f
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
