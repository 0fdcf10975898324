"""The sweep driver's progress lines (scaling/progress.py ProgressLines): elapsed time from the
command's start and an ETA from the rate the trials train at now, and Ray Tune's misleading
closing advice dropped. No Ray instance: the callback is fed stand-in trials on a fake clock."""

import io
import logging
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from scaling import progress as progress_mod
from scaling.progress import (DROP_RAY_ADVICE, RATE_WINDOW_S, STATUS_EVERY_S, ProgressLines, duration,
                              seconds_per_iteration)


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


def test_eta_follows_a_slowdown_within_one_window_and_never_jumps(monkeypatch):
    # Four trials of 900 iterations, two at a time, each reporting every 10 iterations. Each runs at
    # 2 it/s until the machine slows down 2x at 300 s (a and b at 600 iterations), at 1 it/s after:
    # a and b end at 600 s, c and d at 1,500 s. Under load (mean 3.9) an ETA from whole-run averages
    # said 13m16 left where about 20m were.
    clock = Clock()
    monkeypatch.setattr(progress_mod.time, "monotonic", clock)
    t0, prep = clock.now, 64.0  # the data preparation before the trials
    text = io.StringIO()
    names = ["a", "b", "c", "d"]
    progress = ProgressLines(Console(file=text, width=300), Path("/x"), 4, 0, {n: (1, 900) for n in names},
                             started=t0 - prep)
    trials = {n: trial(n, "PENDING") for n in names}
    done = dict.fromkeys(names, 0.0)
    etas = []
    for second in range(1, 1501):
        clock.now = t0 + second
        running = [n for n in names if done[n] < 900][:2]
        for n in running:
            if trials[n].status == "PENDING":
                trials[n].status = "RUNNING"
                progress.on_trial_start(0, list(trials.values()), trials[n])
            before, done[n] = done[n], done[n] + (2.0 if second <= 300 else 1.0)
            if int(done[n]) // 10 > int(before) // 10:
                progress.on_trial_result(0, list(trials.values()), trials[n], {"progress/iter": int(done[n])})
            if done[n] >= 900:
                trials[n].status = "TERMINATED"
                progress.on_trial_complete(0, list(trials.values()), trials[n])
        lines = len(text.getvalue().splitlines())
        progress.on_step_end(0, list(trials.values()))
        if len(text.getvalue().splitlines()) > lines and progress.eta() is not None and second < 1500:
            etas.append((second, progress.eta()))
    assert len(etas) >= 45 and [t for t, _ in etas[:2]] == [30, 60]
    first_line = next(line for line in text.getvalue().splitlines() if line.startswith("0/4 done"))
    assert f"elapsed {duration(prep + 30)}" in first_line  # from the command's start
    for second, eta in etas:
        if second >= 300 + RATE_WINDOW_S:  # one window after the slowdown: within 25% of the truth
            assert abs(eta - (1500 - second)) <= 0.25 * (1500 - second), (second, eta)
    for (_, before), (second, after) in zip(etas, etas[1:]):
        assert 0.5 <= after / before <= 2.0, (second, before, after)


def test_eta_of_unmeasured_small_models_keeps_their_overhead():
    # Measured: 2 s/it at 2 FLOPs, 3 s/it at 4 FLOPs (1 s overhead + 0.5 s per FLOP). A 1-FLOP model
    # not yet started costs 1.5 s/it, not the 0.75 s/it that proportional-to-FLOPs would give.
    per_iter = seconds_per_iteration([(2, 2.0), (4, 3.0), (4, 3.0)])
    assert (per_iter(1), per_iter(8)) == pytest.approx((1.5, 5.0))
    # One architecture: a smaller one costs as much (overhead-bound), a larger one in proportion to its FLOPs.
    # Proportional throughout, the ETA of a sweep measured first on width 64 jumped from 3m59 to 9m06
    # when its width-32 trials started and proved no faster.
    assert (seconds_per_iteration([(4, 3.0)])(2), seconds_per_iteration([(4, 3.0)])(8)) == pytest.approx((3.0, 6.0))
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
