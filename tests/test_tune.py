"""Sweeps through Ray Tune (scaling/tune.py) on one local Ray instance shared by this module:
parallel trials with one MLflow child run each, a diverged trial that does not stop the sweep,
a crash retried from its checkpoint into the same run, a trial that keeps failing, resuming,
and a changed sweep file refused. Gaussian latents, width 32, a few iterations."""

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import psutil
import pytest
import ray
import ray.cloudpickle
import torch
from mlflow import MlflowClient
from rich.console import Console
from typer.testing import CliRunner

from core.gan.checkpoint import load_checkpoint
from core.config import TrainConfig
from core.gan.train import train
from scaling import cli
from scaling.display import print_trials
from scaling.grid import ATTEMPTS_FILE
from scaling.spec import Resources, SweepSpec
from scaling.lock import HOLDER_FILE, SweepLockedError, sweep_lock
from scaling.plan import SweepChangedError, plan_sweep
from scaling.state import FAILURES_FILE, read_jsonl
from scaling.tracking import MlflowReporter
from scaling.tune import TrialReporter, max_concurrent, relay_stats, run_sweep
from helpers import attempts, logged

pytestmark = pytest.mark.slow

# Trials run in Ray worker processes: ship this module's reporters by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance (2 CPUs) for every test here."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def make_spec(tmp_path, base_lrs, **changes) -> SweepSpec:
    data = {
        "name": "tune-test", "dataset": "random",
        "model": {"widths": [32], "depths": [4], "head_dim": 16},
        "lr": {"base_lrs": base_lrs, "rules": ["gat", "constant"], "base_width": 64},
        "budget": {"iterations": 6}, "eval": {"every": -1},
        "train": {"d_proj_dim": 32, "batch": 8, "ckpt_every": 3, "log_every": 2, "diag_every": 2},
        "max_concurrent": 2, "max_failures": 1, "output_dir": str(tmp_path / "out"),
    }
    data.update(changes)
    return SweepSpec.model_validate(data)


def sweep_file(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text("# written by the test; the spec is passed in directly\n")
    return path


def child_runs(outcome):
    client = MlflowClient(outcome.tracking_uri)
    experiment = client.get_experiment_by_name(outcome.name)
    runs = client.search_runs([experiment.experiment_id], "tags.`gat_sweep.role` = 'trial'")
    parents = client.search_runs([experiment.experiment_id], "tags.`gat_sweep.role` = 'parent'")
    return client, {r.data.tags["gat_sweep.trial"]: r for r in runs}, parents


class CrashOnceAtFour(TrialReporter):
    """Crashes the gat trial once at iteration 4, after its checkpoint at 3."""

    def report(self, report):
        super().report(report)
        marker = self.run_dir / "crashed-once"
        if "gat" in self.trial and report.step == 4 and not marker.exists():
            marker.touch()
            raise RuntimeError("injected crash at iteration 4")


class ConstantAlwaysCrashes(TrialReporter):
    def report(self, report):
        super().report(report)
        if "constant" in self.trial:
            raise RuntimeError("constant trial always crashes")


def test_parallel_trials_one_child_run_each_and_diverged_goes_on(ray_local, tmp_path):
    # base LR 1e30 makes the first Adam step overflow: those trials diverge at iteration 1.
    # gat at half the base width doubles the LR, so gat at 1e-3 repeats constant at 2e-3.
    spec = make_spec(tmp_path, [1e-3, 2e-3, 1e30])
    outcome = run_sweep(spec, sweep_file(tmp_path))
    status = {t.name: t.status for t in outcome.trials}
    assert status == {
        "w32-d4-p2_gat_lr0.001_s0": "finished", "w32-d4-p2_gat_lr0.002_s0": "finished",
        "w32-d4-p2_gat_lr1e+30_s0": "diverged", "w32-d4-p2_constant_lr0.001_s0": "finished",
        "w32-d4-p2_constant_lr0.002_s0": "finished", "w32-d4-p2_constant_lr1e+30_s0": "diverged"}
    assert not outcome.failed
    client, runs, parents = child_runs(outcome)
    assert len(parents) == 1 and set(runs) == set(status)
    parent_id = parents[0].info.run_id
    for name, run in runs.items():
        assert run.data.tags["mlflow.parentRunId"] == parent_id
        assert run.data.tags["gat_sweep.status"] == status[name]
        assert run.data.params["g.width"] == "32" and run.data.params["sweep.base_width"] == "64"
    # gat doubles the LR at half the base width; constant keeps it.
    assert runs["w32-d4-p2_gat_lr0.001_s0"].data.params["lr_g"] == "0.002"
    assert runs["w32-d4-p2_constant_lr0.001_s0"].data.params["lr_d"] == "0.001"
    assert runs["w32-d4-p2_gat_lr0.001_s0"].data.metrics["progress/iter"] == 6.0
    # Trials ran in two worker processes at once (max_concurrent 2 on 2 CPUs, actors reused): with
    # max_concurrent 1 every trial would run in the one reused actor. (Overlapping [start, end]
    # spans were checked here before, but a slow actor start can let the other actor finish
    # every short trial first: CI once saw exactly that.)
    trained = [n for n in status if n != "w32-d4-p2_constant_lr0.002_s0"]
    assert len({attempts(outcome.out, n)[0]["pid"] for n in trained}) >= 2

    # The repeated training was not run again: its run and run directory are copies.
    copy, source = runs["w32-d4-p2_constant_lr0.002_s0"], runs["w32-d4-p2_gat_lr0.001_s0"]
    copy_dir = outcome.out / "trials" / "w32-d4-p2_constant_lr0.002_s0"
    assert not (copy_dir / ATTEMPTS_FILE).exists()
    assert json.loads((copy_dir / "same_as.json").read_text())["trial"] == "w32-d4-p2_gat_lr0.001_s0"
    assert copy.data.tags["gat_sweep.same_as"] == "w32-d4-p2_gat_lr0.001_s0"
    assert (copy.data.params["sweep.lr_rule"], copy.data.params["sweep.base_lr"]) == ("constant", "0.002")
    assert copy.data.params["name"] == "w32-d4-p2_constant_lr0.002_s0"
    assert copy.data.params["lr_g"] == source.data.params["lr_g"] == "0.002"
    assert copy.data.params["compute.flops_per_iter"] == source.data.params["compute.flops_per_iter"]
    for key in ("loss/D", "progress/kimg", "diag/g_update_rel"):
        history = [(m.step, m.value) for m in client.get_metric_history(copy.info.run_id, key)]
        assert history == [(m.step, m.value) for m in client.get_metric_history(source.info.run_id, key)]
        assert history
    by_name = {t.name: t for t in outcome.trials}
    assert by_name["w32-d4-p2_constant_lr0.002_s0"].same_as == "w32-d4-p2_gat_lr0.001_s0"
    assert by_name["w32-d4-p2_constant_lr0.002_s0"].metrics == by_name["w32-d4-p2_gat_lr0.001_s0"].metrics


def test_crash_retries_from_checkpoint_then_failing_trial_resumes(ray_local, tmp_path):
    spec = make_spec(tmp_path, [1e-3])
    gat, constant = "w32-d4-p2_gat_lr0.001_s0", "w32-d4-p2_constant_lr0.001_s0"

    outcome = run_sweep(spec, sweep_file(tmp_path), reporter_cls=CrashOnceAtFour)
    assert {t.name: t.status for t in outcome.trials} == {gat: "finished", constant: "finished"}
    tries = attempts(outcome.out, gat)
    assert [a["resumed"] for a in tries] == [False, True]  # the retry resumed from latest.pt
    client, runs, _ = child_runs(outcome)
    assert set(runs) == {gat, constant}
    steps = [m.step for m in client.get_metric_history(runs[gat].info.run_id, "progress/iter")]
    assert steps == [2, 3, 4, 6]

    # A second sweep whose constant trial crashes on every attempt: error after max_failures.
    spec2 = make_spec(tmp_path, [2e-3], name="tune-test-2", output_dir=str(tmp_path / "out2"))
    failing = run_sweep(spec2, sweep_file(tmp_path), reporter_cls=ConstantAlwaysCrashes)
    by_name = {t.name: t for t in failing.trials}
    assert failing.failed
    assert by_name["w32-d4-p2_constant_lr0.002_s0"].status == "error"
    assert "constant trial always crashes" in by_name["w32-d4-p2_constant_lr0.002_s0"].error
    assert by_name["w32-d4-p2_gat_lr0.002_s0"].status == "finished"
    client, runs, _ = child_runs(failing)
    assert runs["w32-d4-p2_constant_lr0.002_s0"].data.tags["gat_sweep.status"] == "failed"

    # Rerunning resumes: the finished trial is not trained again, the failed one completes, and
    # the progress output says it retries a trial that failed before (issue 11, finding 11).
    lines = io.StringIO()
    resumed = run_sweep(spec2, sweep_file(tmp_path), console=Console(file=lines, width=300))
    assert ("retrying  w32-d4-p2_constant_lr0.002_s0, which failed in an earlier run: "
            "RuntimeError: constant trial always crashes") in lines.getvalue()
    assert not resumed.failed
    assert len(attempts(resumed.out, "w32-d4-p2_gat_lr0.002_s0")) == 1
    assert len(attempts(resumed.out, "w32-d4-p2_constant_lr0.002_s0")) == 3  # 2 failed tries + 1
    client, runs, parents = child_runs(resumed)
    assert len(runs) == 2 and len(parents) == 1
    assert runs["w32-d4-p2_constant_lr0.002_s0"].data.tags["gat_sweep.status"] == "finished"
    assert parents[0].info.status == "FINISHED"

    # The same output directory with other trials is refused before anything starts.
    with pytest.raises(SweepChangedError, match="trials dropped: w32-d4-p2_gat_lr0.002_s0, .*a changed sweep is a new sweep"):
        run_sweep(make_spec(tmp_path, [4e-3], name="tune-test-2", output_dir=str(tmp_path / "out2")),
                  sweep_file(tmp_path))


def test_a_grown_sweep_trains_only_its_new_trials_under_the_same_parent(ray_local, tmp_path):
    # Issue 13, finding 7. Base width 64, width 32: gat doubles the base LR, constant keeps it.
    first = run_sweep(make_spec(tmp_path, [2e-3]), sweep_file(tmp_path))
    old = ["w32-d4-p2_gat_lr0.002_s0", "w32-d4-p2_constant_lr0.002_s0"]
    assert [t.status for t in first.trials] == ["finished", "finished"]
    # The dry run says what the output directory holds and what is left: the grown file's 3
    # trainings, 2 of them ended.
    planned = io.StringIO()
    print_trials(plan_sweep(make_spec(tmp_path, [1e-3, 2e-3]), sweep_file(tmp_path)), Console(file=planned, width=300))
    assert (f"{first.out} holds this sweep with 2 trials; this file grows it by 2 trials and keeps the others: "
            "2 of its 3 trainings ended\n") in planned.getvalue()
    assert "The sweep would train 1 runs" in planned.getvalue()
    # Adding base LR 1e-3: gat at 1e-3 trains at 2e-3 exactly like the finished constant trial at
    # 2e-3, which comes later in grid order; it gets a copy, and constant at 1e-3 is trained.
    lines = io.StringIO()
    grown = run_sweep(make_spec(tmp_path, [1e-3, 2e-3]), sweep_file(tmp_path), console=Console(file=lines, width=300))
    assert "sweep tune-test grows by 2 trials; its 2 trials so far are kept as they are" in lines.getvalue()
    assert {t.name: t.status for t in grown.trials} == dict.fromkeys(
        ["w32-d4-p2_gat_lr0.001_s0", *old, "w32-d4-p2_constant_lr0.001_s0"], "finished")
    for name in old:
        assert len(attempts(grown.out, name)) == 1  # not trained again
    assert len(attempts(grown.out, "w32-d4-p2_constant_lr0.001_s0")) == 1
    assert not (grown.out / "trials" / "w32-d4-p2_gat_lr0.001_s0" / ATTEMPTS_FILE).exists()
    assert {t.name: t.same_as for t in grown.trials}["w32-d4-p2_gat_lr0.001_s0"] == "w32-d4-p2_constant_lr0.002_s0"
    client, runs, parents = child_runs(grown)
    assert len(parents) == 1 and len(runs) == 4
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in runs.values())
    state = json.loads((grown.out / "sweep.json").read_text())
    assert parents[0].data.tags["gat_sweep.spec_hash"] == state["spec_hash"] and len(state["trials"]) == 4
    assert len((grown.out / "trials.csv").read_text().splitlines()) == 1 + 4

    # A grow stopped after it wrote the new files but before its state: rerunning the earlier file
    # resumes the earlier sweep and puts its files back.
    (grown.out / "trials.csv").write_text("left by an interrupted grow\n")
    again = run_sweep(make_spec(tmp_path, [1e-3, 2e-3]), sweep_file(tmp_path))
    assert len((again.out / "trials.csv").read_text().splitlines()) == 1 + 4 and not again.failed

    # A sweep begun under an older version, before TrainConfig had a field (here train_pos_embed):
    # its state and run directories lack the key, which ran as the default. It resumes and grows
    # under the new version; nothing is trained again.
    state = json.loads((grown.out / "sweep.json").read_text())
    for record in state["trials"].values():
        del record["train_pos_embed"]
    (grown.out / "sweep.json").write_text(json.dumps(state))
    for config in (grown.out / "trials").glob("*/config.json"):
        config.write_text(json.dumps({k: v for k, v in json.loads(config.read_text()).items()
                                      if k != "train_pos_embed"}))
    upgraded = run_sweep(make_spec(tmp_path, [1e-3, 2e-3, 4e-3]), sweep_file(tmp_path))
    assert not upgraded.failed and [t.status for t in upgraded.trials] == ["finished"] * 6
    assert len(attempts(upgraded.out, "w32-d4-p2_constant_lr0.001_s0")) == 1

    planned = io.StringIO()
    print_trials(plan_sweep(make_spec(tmp_path, [1e-3, 2e-3, 4e-3]), sweep_file(tmp_path)), Console(file=planned, width=300))
    assert f"{first.out} holds this sweep: 4 of its 4 trainings ended" in planned.getvalue()
    assert "The sweep would train 0 runs" in planned.getvalue()

    # Anything else that changes existing trials is refused, naming the fields; the dry run too.
    with pytest.raises(SweepChangedError, match=r"iterations: 6 -> 8 \(6 trial\(s\)\)"):
        print_trials(plan_sweep(make_spec(tmp_path, [1e-3, 2e-3, 4e-3], budget={"iterations": 8}), sweep_file(tmp_path)),
                     Console(file=io.StringIO()))
    with pytest.raises(SweepChangedError, match=r"iterations: 6 -> 8 \(6 trial\(s\)\)"):
        run_sweep(make_spec(tmp_path, [1e-3, 2e-3, 4e-3], budget={"iterations": 8}), sweep_file(tmp_path))
    with pytest.raises(SweepChangedError, match=r"trials dropped: w32-d4-p2_gat_lr0.001_s0, .* and 3 more"):
        run_sweep(make_spec(tmp_path, [1e-3, 2e-3, 4e-3], seeds=[1]), sweep_file(tmp_path))


def test_gat_sweep_run_reads_its_sweep_file_once_and_plans_once(ray_local, tmp_path, monkeypatch):
    # Planning was spread out: the sweep file was read twice with --set, the dry run repeated the
    # driver's planning, and the cluster and tracking checks ran in the command and in the driver.
    import scaling.plan
    import scaling.spec
    import scaling.tune

    assert cli.plan_sweep is scaling.tune.plan_sweep is scaling.plan.plan_sweep  # the dry run's and the driver's
    calls = {"read_yaml": 0, "plan_sweep": 0, "check_tracking_uri": 0, "check_cluster_settings": 0}

    def counted(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(scaling.spec, "read_yaml", counted("read_yaml", scaling.spec.read_yaml))
    monkeypatch.setattr(scaling.plan, "check_tracking_uri", counted("check_tracking_uri", scaling.plan.check_tracking_uri))
    monkeypatch.setattr(SweepSpec, "check_cluster_settings",
                        counted("check_cluster_settings", SweepSpec.check_cluster_settings))
    planning = counted("plan_sweep", scaling.plan.plan_sweep)
    for module in (cli, scaling.tune):
        monkeypatch.setattr(module, "plan_sweep", planning)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(json.dumps(make_spec(tmp_path, [1e-3]).model_dump(mode="json", exclude_defaults=True)))

    result = CliRunner().invoke(cli.app, ["run", str(sweep), "--set", "seeds=[0]"])
    assert result.exit_code == 0, result.output
    assert calls == {"read_yaml": 1, "plan_sweep": 1, "check_tracking_uri": 1, "check_cluster_settings": 1}
    assert "2 trials (0 repeat another's training and are copied), 2 to train" in " ".join(result.output.split())

    calls.update(dict.fromkeys(calls, 0))
    planned = CliRunner().invoke(cli.app, ["run", str(sweep), "--set", "seeds=[0]", "--dry-run"])
    assert planned.exit_code == 0, planned.output
    assert calls == {"read_yaml": 1, "plan_sweep": 1, "check_tracking_uri": 0, "check_cluster_settings": 0}
    assert "holds this sweep: 2 of its 2 trainings ended" in " ".join(planned.output.split())


def test_relay_stats_passes_each_record_once_while_training_runs(tmp_path):
    # Issue 13, finding 8: a DDP trial's launcher reports rank 0's records to Tune as they come.
    stats, fitting, reported = tmp_path / "stats.jsonl", Future(), []
    lines = [json.dumps({"step": s, "progress/iter": float(s), "loss/D": 1.0 / s}) + "\n" for s in (2, 4, 6)]

    def rank0():
        for line in lines:
            with open(stats, "a") as f:
                f.write(line[:10])  # half a line, then the rest
                f.flush()
                time.sleep(0.05)
                f.write(line[10:])
            time.sleep(0.05)
        fitting.set_result(None)

    writer = threading.Thread(target=rank0)
    writer.start()
    relay_stats(stats, fitting, reported.append, poll_s=0.01)
    writer.join()
    assert reported == [{"progress/iter": float(s), "loss/D": 1.0 / s} for s in (2, 4, 6)]


def test_ddp_trial_reports_to_tune_while_it_trains(ray_local, tmp_path):
    # Two gloo DDP workers on CPU (half a CPU each beside the launcher's 0.01): Tune receives
    # rank 0's records at each logging step, not only the final result.
    spec = make_spec(tmp_path, [1e-3], lr={"base_lrs": [1e-3], "rules": ["gat"], "base_width": 64},
                     resources={"cpus": 0.5, "workers": 2}, max_concurrent=None)
    outcome = run_sweep(spec, sweep_file(tmp_path))
    assert [(t.name, t.status, t.iterations) for t in outcome.trials] == [("w32-d4-p2_gat_lr0.001_s0", "finished", 6)]
    results = [json.loads(line) for path in (outcome.out / "tune").rglob("result.json")
               for line in path.read_text().splitlines()]
    assert [r["progress/iter"] for r in results if "progress/iter" in r][:3] == [2.0, 3.0, 4.0]
    client, runs, _ = child_runs(outcome)
    assert [m.step for m in client.get_metric_history(runs["w32-d4-p2_gat_lr0.001_s0"].info.run_id,
                                                      "progress/iter")] == [2, 3, 4, 6]


def test_relay_stats_sends_only_the_newest_record_of_an_earlier_attempt(tmp_path):
    # A retried DDP trial: records 2 and 4 of the crashed attempt are history (all at once they
    # would look like iterations done in no time); 4 is relayed, then what the new attempt logs.
    stats, fitting, reported = tmp_path / "stats.jsonl", Future(), []
    stats.write_text("".join(json.dumps({"step": s, "progress/iter": float(s)}) + "\n" for s in (2, 4)))

    def rank0():
        time.sleep(0.05)
        with open(stats, "a") as f:
            f.write("".join(json.dumps({"step": s, "progress/iter": float(s)}) + "\n" for s in (6, 8)))
        fitting.set_result(None)

    writer = threading.Thread(target=rank0)
    writer.start()
    relay_stats(stats, fitting, reported.append, poll_s=0.01)
    writer.join()
    assert [r["progress/iter"] for r in reported] == [4.0, 6.0, 8.0]


def test_multi_worker_trials_are_bounded_by_the_cluster():
    gpu4 = Resources(cpus=4, gpus=1, workers=4)
    assert max_concurrent(None, gpu4, {"CPU": 64, "GPU": 8}) == 2
    assert max_concurrent(None, gpu4, {"CPU": 64, "GPU": 2}) == 1  # one waits for the others
    assert max_concurrent(None, Resources(cpus=1, workers=2), {"CPU": 5}) == 2
    assert max_concurrent(None, Resources(cpus=1, workers=2), {"CPU": 4}) == 1  # + the launchers' 0.01 CPU
    assert max_concurrent(None, Resources(cpus=4, gpus=1, workers=2), {"CPU": 8, "GPU": 8}) == 1  # CPUs bind
    assert max_concurrent(3, gpu4, {"GPU": 8}) == 3  # the sweep's own setting wins
    assert max_concurrent(None, Resources(cpus=1), {"CPU": 2}) is None  # single-process: as many as fit


class KilledAtFour(TrialReporter):
    """The gat trial's worker process dies (SIGKILL) at iteration 4: nothing in it can record that."""

    def report(self, report):
        super().report(report)
        if "gat" in self.trial and report.step == 4:
            os.kill(os.getpid(), signal.SIGKILL)


class Unreachable(MlflowReporter):
    """An MLflow reporter whose store silently takes nothing."""

    def start(self, cfg, info, state):
        pass

    def report(self, report):
        pass

    def finish(self, result):
        pass


class NoStore(TrialReporter, Unreachable):
    """The sweep reporter (attempts.jsonl, Ray Tune results) on a store that takes nothing."""


def test_config_error_in_trials_is_reported_once_and_not_retried(ray_local, tmp_path):
    # Issue 11, finding 5: a ConfigError raised inside every trial was retried as a crash.
    if torch.cuda.is_available():
        pytest.skip("device: cuda is the configuration error here; it is not one on a GPU machine")
    spec = make_spec(tmp_path, [1e-3], max_failures=2,
                     train={"d_proj_dim": 32, "batch": 8, "ckpt_every": 3, "log_every": 2, "device": "cuda"})
    lines = io.StringIO()
    outcome = run_sweep(spec, sweep_file(tmp_path), console=Console(file=lines, width=300))
    assert outcome.failed and {t.status for t in outcome.trials} == {"config_error"}
    _, runs, _ = child_runs(outcome)
    for t in outcome.trials:
        assert "device='cuda' but CUDA is not available" in t.error
        assert len(read_jsonl(outcome.out / "trials" / t.name / FAILURES_FILE)) == 1  # one attempt, not 3
        assert lines.getvalue().count(f"config_error {t.name}") == 1
        run = runs[t.name]  # created for the error although training never started
        assert run.info.status == "FAILED" and "CUDA is not available" in run.data.tags["gat_sweep.error"]
    assert "retry" not in lines.getvalue()


def test_killed_worker_leaves_no_running_run(ray_local, one_thread, tmp_path):
    # Issue 11, finding 11: the MLflow run of a trial whose worker was killed stayed RUNNING.
    # grad_clip 1e-3 makes clipping bind, where a resumed trial used to leave the trajectory.
    train_settings = {"d_proj_dim": 32, "batch": 8, "ckpt_every": 3, "log_every": 2, "diag_every": 2,
                      "grad_clip": 1e-3}
    spec = make_spec(tmp_path, [1e-3], max_failures=0, train=train_settings)
    outcome = run_sweep(spec, sweep_file(tmp_path), reporter_cls=KilledAtFour)
    status = {t.name: t.status for t in outcome.trials}
    assert status == {"w32-d4-p2_gat_lr0.001_s0": "error", "w32-d4-p2_constant_lr0.001_s0": "finished"}
    _, runs, parents = child_runs(outcome)
    killed = runs["w32-d4-p2_gat_lr0.001_s0"]
    assert killed.info.status == "FAILED" and killed.data.tags["gat_sweep.status"] == "failed"
    assert killed.data.tags["gat_sweep.error"] == outcome.trials[0].error
    assert runs["w32-d4-p2_constant_lr0.001_s0"].info.status == "FINISHED"
    assert parents[0].info.status == "FAILED"
    # The rerun says it retries the trial, and why, although its worker could record nothing.
    lines = io.StringIO()
    rerun = run_sweep(spec, sweep_file(tmp_path), console=Console(file=lines, width=300))
    first_line = outcome.trials[0].error.splitlines()[0]
    assert first_line.startswith("ActorDiedError: ")
    assert f"retrying  w32-d4-p2_gat_lr0.001_s0, which failed in an earlier run: {first_line}\n" in lines.getvalue()
    assert not rerun.failed and {t.status for t in rerun.trials} == {"finished"}
    assert child_runs(rerun)[1]["w32-d4-p2_gat_lr0.001_s0"].info.status == "FINISHED"
    # Issue 11, finding 2: the trial resumed in a fresh worker ends bit-for-bit where the same
    # training uninterrupted (in this process, one thread as in the trial) ends.
    run_dir = rerun.out / "trials" / "w32-d4-p2_gat_lr0.001_s0"
    assert [a["resumed"] for a in attempts(rerun.out, "w32-d4-p2_gat_lr0.001_s0")] == [False, True]
    cfg = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    train(cfg, tmp_path / "straight", progress=False)
    resumed = load_checkpoint(run_dir / "checkpoints" / "latest.pt")
    straight = load_checkpoint(tmp_path / "straight" / "checkpoints" / "latest.pt")
    for net in ("G", "D", "G_ema"):
        for name, tensor in straight[net].items():
            assert torch.equal(tensor, resumed[net][name]), f"{net}.{name} differs after the resume"
    assert logged(run_dir)[0] == logged(tmp_path / "straight")[0]


def test_trials_missing_from_the_store_fail_the_sweep(ray_local, tmp_path):
    # Issue 11, finding 12: trials that never reached MLflow reported "finished" and exit 0.
    spec = make_spec(tmp_path, [2e-3])  # two trainings: gat at 4e-3, constant at 2e-3
    outcome = run_sweep(spec, sweep_file(tmp_path), reporter_cls=NoStore)
    assert {t.status for t in outcome.trials} == {"finished"}
    assert outcome.failed
    assert sorted(outcome.store_problems) == [
        "w32-d4-p2_constant_lr0.002_s0: no MLflow child run", "w32-d4-p2_gat_lr0.002_s0: no MLflow child run"]


def test_sweep_lock_refuses_a_second_holder_and_is_freed_when_the_holder_dies(tmp_path):
    # Issue 11, finding 1 (the lock itself): refusal names the holder; a killed holder's lock is free.
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from scaling.lock import sweep_lock\n"
        f"with sweep_lock(Path({str(tmp_path)!r})):\n    print('locked', flush=True); time.sleep(120)")],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(SweepLockedError) as refused:
            with sweep_lock(tmp_path):
                pass
        assert f"PID {holder.pid} on host {socket.gethostname()}" in str(refused.value)
    finally:
        holder.kill()
        holder.wait()
    assert json.loads((tmp_path / HOLDER_FILE).read_text())["pid"] == holder.pid  # left by the dead holder
    with sweep_lock(tmp_path):  # taken over at once, and the holder record is ours
        assert json.loads((tmp_path / HOLDER_FILE).read_text())["pid"] == os.getpid()


DRIVER_SWEEP = """
name: locked
dataset: random
model: {widths: [32], depths: [4], head_dim: 16}
lr: {base_lrs: [1e-3], rules: [gat], base_width: 32}
budget: {iterations: 6}
eval: {every: -1}
train: {d_proj_dim: 32, batch: 8, ckpt_every: 3, log_every: 2, diag_every: 2}
max_concurrent: 1
"""
TRIAL = "w32-d4-p2_gat_lr0.001_s0"


def driver(sweep: Path, out: Path) -> subprocess.Popen:
    """`gat-sweep run` in its own process (its own local Ray instance)."""
    return subprocess.Popen([str(Path(sys.executable).parent / "gat-sweep"), "run", str(sweep), "--output-dir", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})


def one_run_per_trial(out: Path) -> None:
    """Nothing duplicated: one parent run, one child run and one start of the trial."""
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("locked").experiment_id
    assert len(client.search_runs([experiment], "tags.`gat_sweep.role` = 'parent'")) == 1
    children = client.search_runs([experiment], "tags.`gat_sweep.role` = 'trial'")
    assert [r.data.tags["gat_sweep.trial"] for r in children] == [TRIAL]
    assert len(attempts(out, TRIAL)) == 1


def test_second_driver_on_a_running_sweep_refuses_within_seconds(tmp_path):
    # Issue 11, finding 1: a second driver re-trained the running trials into the same directories.
    sweep = tmp_path / "locked.yaml"
    sweep.write_text(DRIVER_SWEEP)
    out = tmp_path / "out"
    first = driver(sweep, out)
    try:
        deadline = time.monotonic() + 60
        while not (out / HOLDER_FILE).exists():
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.1)
        started = time.monotonic()
        second = driver(sweep, out)
        _, err = second.communicate(timeout=60)
        refused_after = time.monotonic() - started
        assert first.poll() is None  # the first driver is still running
    finally:
        stdout, stderr = first.communicate(timeout=120)
    assert second.returncode == 2 and refused_after < 5, (refused_after, err)  # before torch and Ray load
    assert len(err.strip().splitlines()) == 1, err  # one message, no traceback
    assert f"error: another driver is running this sweep (PID {first.pid} on host {socket.gethostname()}" in err
    assert first.returncode == 0 and "1 finished" in stdout, stdout + stderr
    one_run_per_trial(out)


def test_two_drivers_started_at_once_exactly_one_runs(tmp_path):
    # Issue 11, finding 1: started at the same moment, one driver died in a SQLAlchemy traceback.
    sweep = tmp_path / "locked.yaml"
    sweep.write_text(DRIVER_SWEEP)
    out = tmp_path / "out"
    started = time.monotonic()
    drivers = [driver(sweep, out), driver(sweep, out)]
    while all(d.poll() is None for d in drivers) and time.monotonic() - started < 120:
        time.sleep(0.05)
    first_end = time.monotonic() - started
    outputs = [d.communicate(timeout=120) for d in drivers]
    results = [(d.pid, d.returncode, *output) for d, output in zip(drivers, outputs)]
    codes = sorted(code for _, code, _, _ in results)
    assert codes == [0, 2], results
    # Issue 23, finding 8: the loser was refused after 28 s, once torch, Ray and MLflow had loaded.
    assert first_end < 5, first_end
    (winner,) = [pid for pid, code, _, _ in results if code == 0]
    (refusal,) = [err for _, code, _, err in results if code == 2]
    assert len(refusal.strip().splitlines()) == 1 and f"(PID {winner} on host" in refusal, refusal
    one_run_per_trial(out)


def test_a_damaged_checkpoint_costs_no_retry_and_an_intact_one_is_resumed(ray_local, tmp_path):
    # A truncated latest.pt failed the trial on every retry (exit 1, two tracebacks), without naming
    # the file and without trying the intact numbered checkpoint beside it.
    sweep = tmp_path / "locked.yaml"
    sweep.write_text(DRIVER_SWEEP)
    args = ["run", str(sweep), "--output-dir", str(tmp_path / "out")]
    assert CliRunner().invoke(cli.app, args).exit_code == 0
    run_dir = tmp_path / "out" / "trials" / TRIAL
    before = logged(run_dir)
    (run_dir / "result.json").unlink()  # as if the driver had stopped after the last checkpoint
    for name in ("latest.pt", "iter_0000006.pt"):
        path = run_dir / "checkpoints" / name
        path.write_bytes(path.read_bytes()[:100])

    resumed = CliRunner().invoke(cli.app, args)
    assert resumed.exit_code == 0, resumed.output
    lines = " ".join(resumed.output.split())
    assert (f"damaged {TRIAL}: checkpoint {run_dir / 'checkpoints' / 'latest.pt'} cannot be read: 100 bytes that "
            "are not a checkpoint") in lines
    assert "it resumes from iter_0000003.pt" in lines and "1 finished" in lines
    assert [a["resumed"] for a in attempts(tmp_path / "out", TRIAL)] == [False, True]
    assert not (run_dir / FAILURES_FILE).exists() and logged(run_dir) == before

    (run_dir / "result.json").unlink()
    for path in (run_dir / "checkpoints").glob("*.pt"):
        path.write_bytes(b"")
    refused = CliRunner().invoke(cli.app, args)
    assert refused.exit_code == 2, refused.output
    message = " ".join(refused.output.split())
    assert message.startswith(f"error: {TRIAL}: checkpoint {run_dir / 'checkpoints' / 'latest.pt'} cannot be "
                              "read: the file is empty") and "Traceback" not in refused.output
    assert len(attempts(tmp_path / "out", TRIAL)) == 2  # nothing started


STOPPED_SWEEP = """
name: stopped
dataset: random
model: {widths: [32], depths: [4], head_dim: 16}
lr: {base_lrs: [1e-3, 2e-3], rules: [constant]}
budget: {iterations: 5000}
eval: {every: -1}
train: {d_proj_dim: 32, batch: 8, ckpt_every: 5, log_every: 2, diag_every: 50}
max_concurrent: 2
"""


class Descendants(threading.Thread):
    """Every process below ``pid`` seen while it runs (polled every 0.1 s until stopped)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.root, self.seen, self.done = psutil.Process(pid), {}, threading.Event()
        self.start()

    def run(self) -> None:
        while not self.done.is_set():
            with contextlib.suppress(psutil.Error):
                for child in self.root.children(recursive=True):
                    self.seen.setdefault(child.pid, child)
            time.sleep(0.1)

    def alive(self) -> list[str]:
        return [f"{p.pid} {p.name()}" for p in self.seen.values()
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

    def gone_within(self, seconds: float) -> list[str]:
        """Stop watching; the processes still alive after ``seconds``."""
        self.done.set()
        deadline = time.monotonic() + seconds
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        return self.alive()


def stoppable_driver(sweep: Path, out: Path) -> subprocess.Popen:
    """`gat-sweep run` that takes SIGINT as a terminal's Ctrl-C does (a process started from a
    script inherits SIGINT ignored)."""
    return subprocess.Popen([str(Path(sys.executable).parent / "gat-sweep"), "run", str(sweep), "--output-dir", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def logged_steps(out: Path) -> list[int]:
    """The last logged step of every trial that logged one."""
    steps = []
    for stats in (out / "trials").glob("*/stats.jsonl"):
        lines = [line for line in stats.read_text().splitlines() if line.endswith("}")]
        steps += [json.loads(lines[-1])["step"]] if lines else []
    return steps


def test_sigterm_stops_a_sweep_as_ctrl_c_does_and_ray_listens_on_loopback_only(tmp_path):
    # Issue 23, findings 3, 7 and 9: SIGTERM (SLURM, Kubernetes) ended the driver with exit 134 and
    # Ray's stack dump, runs left RUNNING; an interrupted summary said 0 iterations; the local
    # Ray instance listened on every interface.
    sweep, out = tmp_path / "stopped.yaml", tmp_path / "out"
    sweep.write_text(STOPPED_SWEEP)
    driver_ = stoppable_driver(sweep, out)
    processes = Descendants(driver_.pid)
    deadline = time.monotonic() + 300
    while not (len(logged_steps(out)) == 2 and min(logged_steps(out)) >= 10):
        assert driver_.poll() is None and time.monotonic() < deadline, driver_.communicate()
        time.sleep(0.2)
    listening = [(p.name(), c.laddr.ip) for p in [psutil.Process(driver_.pid), *processes.seen.values()]
                 if p.is_running() for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert listening and all(ip in ("127.0.0.1", "::ffff:127.0.0.1", "::1") for _, ip in listening), listening

    driver_.send_signal(signal.SIGTERM)
    stdout, stderr = driver_.communicate(timeout=180)
    assert driver_.returncode == 143, stdout + stderr
    assert "SIGTERM received" not in stderr and "Traceback" not in stdout + stderr
    assert "Run the same command again to resume" in stdout
    rows = {line.split()[0]: line.split() for line in stdout.splitlines() if line.strip().startswith("w32")}
    assert {row[1] for row in rows.values()} == {"incomplete"} and all(int(row[2]) >= 10 for row in rows.values()), rows
    assert not processes.gone_within(10)  # no Ray process outlives the driver
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("stopped").experiment_id
    assert {r.info.status for r in client.search_runs([experiment])} == {"KILLED"}  # the parent and both trials
    # The state is consistent: the dry run reads it, and every trial resumes from a checkpoint.
    planned = CliRunner().invoke(cli.app, ["run", str(sweep), "--output-dir", str(out), "--dry-run"])
    assert f"{out} holds this sweep: 0 of its 2 trainings ended" in " ".join(planned.output.split())
    for run_dir in (out / "trials").iterdir():
        assert load_checkpoint(run_dir / "checkpoints" / "latest.pt")["iteration"] >= 5


def test_ctrl_c_while_ray_starts_leaves_no_ray_process_and_no_running_run(tmp_path):
    # Finding 3: Ctrl-C 12 s into Ray's start-up left ray::DashboardAgent and ray::RuntimeEnvAgent
    # running for over 50 s after the driver ended.
    sweep, out = tmp_path / "stopped.yaml", tmp_path / "out"
    sweep.write_text(STOPPED_SWEEP)
    driver_ = stoppable_driver(sweep, out)
    processes = Descendants(driver_.pid)
    deadline = time.monotonic() + 300
    while not any(p.name() == "gcs_server" for p in processes.seen.values()):  # Ray has begun to start
        assert driver_.poll() is None and time.monotonic() < deadline, driver_.communicate()
        time.sleep(0.05)
    driver_.send_signal(signal.SIGINT)
    stdout, stderr = driver_.communicate(timeout=180)
    assert driver_.returncode == 130, stdout + stderr
    assert "Traceback" not in stdout + stderr and "Run the same command again to resume" in stdout
    assert not processes.gone_within(10)
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("stopped").experiment_id
    assert "RUNNING" not in {r.info.status for r in client.search_runs([experiment])}


FULL_SWEEP = """
name: full
dataset: random
model: {widths: [32], depths: [4], head_dim: 16}
lr: {base_lrs: [1e-3, 2e-3], rules: [constant]}
budget: {iterations: 6}
eval: {every: -1}
train: {d_proj_dim: 32, batch: 8, ckpt_every: 3, log_every: 2, diag_every: 2}
max_concurrent: 1
max_failures: 2
"""


def test_a_full_disk_is_one_message_leaves_no_running_run_and_the_rerun_says_why(ray_local, tmp_path):
    # Issue 23, finding 4: on a small tmpfs a sweep ended in a traceback of append_failure (ENOSPC),
    # without a summary, with runs RUNNING and failures.jsonl empty; after space was freed the rerun
    # recovered but said "0 failed".
    out = tmp_path / "small"
    out.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(out)], capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        sweep = tmp_path / "full.yaml"
        sweep.write_text(FULL_SWEEP)
        args = ["run", str(sweep), "--output-dir", str(out)]
        full = CliRunner().invoke(cli.app, args)  # a checkpoint (2.2 MB, twice) fits once, not twice
        assert full.exit_code == 1 and "Traceback" not in full.output, full.output
        lines = [" ".join(line.split()) for line in full.output.splitlines()]
        first, second = "w32-d4-p2_constant_lr0.001_s0", "w32-d4-p2_constant_lr0.002_s0"
        ckpt = out / "trials" / first / "checkpoints"
        message = (f"DiskFullError: no space for checkpoint iter_0000006.pt (the numbered file and latest.pt) in "
                   f"{ckpt}: its device has ")
        assert [line for line in lines if line.startswith(f"config error {first}: {message}")], full.output
        assert sum(message in line for line in lines) == 1, full.output  # one message
        assert f"{second} incomplete 0 0 - -" in lines  # stopped with the sweep, never started
        client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
        experiment = client.get_experiment_by_name("full").experiment_id
        assert "RUNNING" not in {r.info.status for r in client.search_runs([experiment])}
        assert load_checkpoint(ckpt / "latest.pt")["iteration"] == 3  # the last checkpoint is intact
        assert [f["kind"] for f in read_jsonl(out / "trials" / first / FAILURES_FILE)] == ["config_error"]

        subprocess.run(["mount", "-o", "remount,size=64m", str(out)], check=True)  # space freed
        rerun = CliRunner().invoke(cli.app, args)
        assert rerun.exit_code == 0, rerun.output
        lines = [" ".join(line.split()) for line in rerun.output.splitlines()]
        assert "2 finished" in lines
        assert [line for line in lines if line.startswith(f"retried {first} (2 starts, 1 failed): {message}")]
    finally:
        subprocess.run(["umount", "-l", str(out)], check=False)


def test_a_retried_trial_whose_worker_was_killed_is_reported_with_the_cause(ray_local, tmp_path):
    # Issue 23, finding 7: a trial whose worker was killed and which then finished on its retry
    # was summarised as "(2 starts, 0 failed): resumed after the driver stopped".
    sweep = tmp_path / "killed.yaml"
    sweep.write_text(DRIVER_SWEEP.replace("iterations: 6", "iterations: 300").replace("ckpt_every: 3", "ckpt_every: 10")
                     + "max_failures: 1\n")
    run_dir = tmp_path / "out" / "trials" / TRIAL

    def kill_the_worker_after_a_checkpoint() -> None:
        deadline = time.monotonic() + 240
        while not (run_dir / "checkpoints" / "iter_0000010.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(attempts(tmp_path / "out", TRIAL)[0]["pid"], signal.SIGKILL)  # as the OOM killer would

    killer = threading.Thread(target=kill_the_worker_after_a_checkpoint)
    killer.start()
    result = CliRunner().invoke(cli.app, ["run", str(sweep), "--output-dir", str(tmp_path / "out")])
    killer.join()
    assert result.exit_code == 0, result.output
    lines = [" ".join(line.split()) for line in result.output.splitlines()]
    assert (f"retried {TRIAL} (2 starts, 1 failed): The actor died unexpectedly before finishing this task."
            in lines), result.output
    assert [f["kind"] for f in read_jsonl(run_dir / FAILURES_FILE)] == ["crash"]
