"""The sweep driver's progress lines (scaling/progress.py ProgressLines): elapsed time and an ETA from
the measured rate, and Ray Tune's misleading closing advice dropped (issue 13, finding 9). No Ray
instance: the callback is fed stand-in trials."""

import io
import logging
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from scaling import progress as progress_mod
from scaling.progress import DROP_RAY_ADVICE, STATUS_EVERY_S, ProgressLines, duration, seconds_per_iteration


class Clock:
    """A stand-in for time.monotonic that the test advances."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def trial(name: str, status: str = "RUNNING") -> SimpleNamespace:
    return SimpleNamespace(config={"trial": name}, status=status, last_result={"status": "finished"})


def test_status_line_has_elapsed_time_and_eta_from_measured_iterations(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(progress_mod.time, "monotonic", clock)
    text = io.StringIO()
    # a: 100 iterations of 1 FLOP, b: 100 iterations of 3 FLOPs
    progress = ProgressLines(Console(file=text, width=200), Path("/x"), 2, 0, {"a": (1, 100), "b": (3, 100)})
    a, b = trial("a"), trial("b")
    assert progress.eta() is None  # nothing measured yet
    clock.now += 5  # start-up
    progress.on_trial_result(0, [a, b], a, {"progress/iter": 10})
    progress.on_trial_result(0, [a, b], b, {"progress/iter": 10})
    clock.now += 10
    progress.on_trial_result(0, [a, b], a, {"progress/iter": 30})
    clock.now += 10
    progress.on_trial_result(0, [a, b], b, {"progress/iter": 30})
    # measured: a 0.5 s/it (1 FLOP), b 1.0 s/it (3 FLOPs) -> 0.25 + 0.25 * FLOPs; left 70 + 70
    # iterations on 2 trials at once: (70 * 0.5 + 70 * 1.0) / 2 = 52.5 s, but b alone needs 70 s
    assert progress.eta() == pytest.approx(70.0)
    progress.work["c"] = (3, 200)  # a 200 s trial bounds it: (35 + 70 + 200) / 2 is less
    assert progress.eta() == pytest.approx(200.0)
    progress.work["d"] = (3, 200)  # two of them: sharing the 2 slots is the bound
    assert progress.eta() == pytest.approx((35 + 70 + 200 + 200) / 2)
    del progress.work["c"], progress.work["d"]
    clock.now += STATUS_EVERY_S
    progress.on_step_end(0, [a, b])
    assert text.getvalue().strip() == (f"0/2 done; running: a @ 30 it, b @ 30 it; elapsed "
                                       f"{duration(25 + STATUS_EVERY_S)}, about {duration(progress.eta())} left")
    progress.on_trial_complete(0, [a, b], a)
    assert "finished  a  (1/2)" in text.getvalue()
    assert progress.eta() == pytest.approx(70 * 1.0)  # a's rest no longer counts; b alone uses one slot


def test_eta_of_unmeasured_small_models_keeps_their_overhead():
    # Measured: 2 s/it at 2 FLOPs, 3 s/it at 4 FLOPs (1 s overhead + 0.5 s per FLOP). A 1-FLOP model
    # not yet started costs 1.5 s/it, not the 0.75 s/it that proportional-to-FLOPs would give.
    per_iter = seconds_per_iteration([(2, 2.0), (4, 3.0), (4, 3.0)])
    assert (per_iter(1), per_iter(8)) == pytest.approx((1.5, 5.0))
    assert seconds_per_iteration([(4, 3.0)])(2) == pytest.approx(1.5)  # one architecture: proportional
    assert seconds_per_iteration([(2, 1.0), (4, 1.0)])(100) == pytest.approx(1.0)  # flat: a constant
    assert seconds_per_iteration([(2, 0.0), (4, 2.0)])(1) == pytest.approx(0.4)  # negative overhead: through the origin


def test_duration_reads_like_a_clock():
    assert [duration(s) for s in (0, 45, 192, 3720)] == ["0s", "45s", "3m12s", "1h02m"]


def test_ray_tunes_resume_advice_is_dropped():
    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("ray.tune.tune", logging.WARNING, __file__, 1, message, (), None)

    assert not DROP_RAY_ADVICE.filter(record(
        "Experiment has been interrupted, but the most recent state was saved.\n"
        "Resume experiment with: Tuner.restore(path=\"/x\", trainable=...)"))
    assert not DROP_RAY_ADVICE.filter(record("Trials did not complete: [a, b]"))
    assert DROP_RAY_ADVICE.filter(record("Stop signal received (e.g. via SIGINT/Ctrl+C), ending Ray Tune run."))


def test_a_tracking_server_that_does_not_answer_replaces_the_eta(monkeypatch):
    # Issue 23, finding 5 (the line itself; the killed server: tests/test_cluster.py).
    clock = Clock()
    monkeypatch.setattr(progress_mod.time, "monotonic", clock)
    text = io.StringIO()
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{closed.getsockname()[1]}"
    progress = ProgressLines(Console(file=text, width=400), Path("/x"), 1, 0, {"a": (1, 100)}, uri)
    a = trial("a")
    progress.on_trial_result(0, [a], a, {"progress/iter": 10})
    clock.now += 10
    progress.on_trial_result(0, [a], a, {"progress/iter": 30})
    for _ in range(2):
        clock.now += STATUS_EVERY_S
        progress.on_step_end(0, [a])
    lines = text.getvalue().splitlines()
    assert lines[-2].endswith("time left unknown") and "about" not in lines[-2]
    assert lines[-1].startswith(f"MLflow    {uri}: no MLflow server answers there (")
    assert f"for {duration(STATUS_EVERY_S)}; the trials wait while their MLflow clients retry" in lines[-1]
    progress.tracking_uri = "sqlite:////x/mlflow.db"  # a local store is never down
    clock.now += STATUS_EVERY_S
    progress.on_step_end(0, [a])
    assert text.getvalue().splitlines()[-1].endswith("left")
