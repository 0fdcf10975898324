"""Sweeps through Ray Tune (scaling/tune.py) on one local Ray instance shared by this module:
parallel trials with one MLflow child run each, a diverged trial that does not stop the sweep,
a crash retried from its checkpoint into the same run, a trial that keeps failing, resuming,
and a changed sweep file refused. Gaussian latents, width 32, a few iterations."""

import itertools
import json
import os
import sys

import pytest
import ray
import ray.cloudpickle
from mlflow import MlflowClient

from scaling.spec import SweepSpec
from scaling.tune import (
    ATTEMPTS_FILE,
    SweepChangedError,
    TrialReporter,
    run_sweep,
)
from helpers import attempts

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
    # Trials ran at the same time (max_concurrent 2 on 2 CPUs): some [start, end] spans overlap.
    trained = [n for n in status if n != "w32-d4-p2_constant_lr0.002_s0"]
    spans = sorted((attempts(outcome.out, n)[0]["time"], (outcome.out / "trials" / n / "result.json").stat().st_mtime)
                   for n in trained)
    assert any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans))

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

    # Rerunning resumes: the finished trial is not trained again, the failed one completes.
    resumed = run_sweep(spec2, sweep_file(tmp_path))
    assert not resumed.failed
    assert len(attempts(resumed.out, "w32-d4-p2_gat_lr0.002_s0")) == 1
    assert len(attempts(resumed.out, "w32-d4-p2_constant_lr0.002_s0")) == 3  # 2 failed tries + 1
    client, runs, parents = child_runs(resumed)
    assert len(runs) == 2 and len(parents) == 1
    assert runs["w32-d4-p2_constant_lr0.002_s0"].data.tags["gat_sweep.status"] == "finished"
    assert parents[0].info.status == "FINISHED"

    # The same output directory with other trials is refused before anything starts.
    with pytest.raises(SweepChangedError, match="A changed sweep is a new sweep"):
        run_sweep(make_spec(tmp_path, [4e-3], name="tune-test-2", output_dir=str(tmp_path / "out2")),
                  sweep_file(tmp_path))
