"""MLflow tracking (scaling/tracking.py) driven by the real training loop on Gaussian latents:
the child run's tags, params, metrics and artifacts (docs/TRACKING.md), and exactly one run per
trial when training crashes and resumes, before or after its first checkpoint. Also what MLflow's
UI relies on: the experiment kind, log_image grids, best/ metrics, context tags, the note and
system metrics."""

import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.utils.git_utils import get_git_commit
from PIL import Image

from core.gan.checkpoint import load_checkpoint
from core.config import NetConfig, TrainConfig
from core.records import RunResult
from core.gan.train import Report, train
from scaling.tracking import (
    MlflowReporter,
    TrialTracking,
    context_tags,
    copy_run,
    open_experiment,
    start_parent_run,
)

SMALL = NetConfig(width=32, depth=4, heads=2)
CFG = TrainConfig(name="w32_gat", dataset="random", g=SMALL, d=SMALL, d_proj_dim=32, batch=8,
                  iterations=6, ckpt_every=4, log_every=2, diag_every=2, eval_every=-1, lr_g=5e-4)
SWEEP = {"sweep.size": "w32-d4", "sweep.lr_rule": "gat", "sweep.base_lr": 1e-3, "sweep.base_width": 64}
DESCRIPTION = "Width x LR grid of the tracking tests."
FD = "eval/fd_digits_1k"
CHECKOUT_COMMIT = get_git_commit(str(Path(__file__).parent))


class CrashOnce(MlflowReporter):
    """Raises once when the loop reports ``crash_at`` (a crash inside training)."""

    def __init__(self, *args, crash_at: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.crash_at = crash_at

    def report(self, report):
        super().report(report)
        if report.step == self.crash_at:
            raise RuntimeError("injected crash")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One sqlite store, experiment and parent run for the module (creating the schema is slow)."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    experiment = open_experiment(uri, "tracking-test", root / "artifacts")
    sweep_file = root / "sweep.yaml"
    sweep_file.write_text("name: tracking-test\n")
    parent = start_parent_run(uri, experiment, "tracking-test", "abc123", [sweep_file], DESCRIPTION)
    return TrialTracking(uri, experiment, "tracking-test", parent)


def children(store):
    client = MlflowClient(store.tracking_uri)
    return client, client.search_runs([store.experiment_id], "tags.`gat_sweep.role` = 'trial'")


def sample_grid(path):
    """A small RGB PNG like the trainer's sample grids."""
    Image.new("RGB", (24, 16), (200, 30, 30)).save(path)
    return path


def image_steps(client, run_id):
    """Steps of the run's log_image files of key 'samples' (MLflow's images/ naming)."""
    names = [a.path.split("/")[-1] for a in client.list_artifacts(run_id, "images")]
    return sorted(int(n.split("+")[2]) for n in names if n.startswith("samples+") and n.endswith(".png"))


def run_trial(store, run_dir, name, reporter=None):
    reporter = reporter or MlflowReporter(store, name, SWEEP)
    return reporter, train(CFG.replace(name=name), run_dir, reporter, progress=False)


def test_open_experiment_is_idempotent_and_parent_is_tagged(store):
    assert open_experiment(store.tracking_uri, "tracking-test", None) == store.experiment_id
    parent = MlflowClient(store.tracking_uri).get_run(store.parent_run_id)
    assert parent.info.run_name == "tracking-test"
    assert parent.data.tags["gat_sweep.role"] == "parent"
    assert parent.data.tags["gat_sweep.spec_hash"] == "abc123"
    artifacts = [a.path for a in MlflowClient(store.tracking_uri).list_artifacts(store.parent_run_id)]
    assert artifacts == ["sweep.yaml"]


def test_experiment_kind_opens_the_ui_on_training_runs(store):
    client = MlflowClient(store.tracking_uri)
    assert client.get_experiment(store.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    older = client.create_experiment("made-before-the-kind")  # an earlier gat-sweep made it untagged
    chosen = client.create_experiment("kind-chosen-in-the-ui", tags={"mlflow.experimentKind": "finetuning"})
    assert open_experiment(store.tracking_uri, "made-before-the-kind", None) == older
    open_experiment(store.tracking_uri, "kind-chosen-in-the-ui", None)
    assert client.get_experiment(older).tags["mlflow.experimentKind"] == "custom_model_development"
    assert client.get_experiment(chosen).tags["mlflow.experimentKind"] == "finetuning"


def test_parent_and_children_carry_context_tags_and_the_note(store, tmp_path):
    reporter, _ = run_trial(store, tmp_path / "ctx", "trial_ctx")
    client = MlflowClient(store.tracking_uri)
    parent, child = client.get_run(store.parent_run_id).data.tags, client.get_run(reporter.run_id).data.tags
    assert parent["mlflow.note.content"] == DESCRIPTION and "mlflow.note.content" not in child
    assert parent["mlflow.source.type"] == "LOCAL" and parent["mlflow.source.name"] == sys.argv[0]
    assert parent["mlflow.user"] and CHECKOUT_COMMIT and parent["mlflow.source.git.commit"] == CHECKOUT_COMMIT
    for key in ("mlflow.user", "mlflow.source.name", "mlflow.source.type", "mlflow.source.git.commit"):
        assert child[key] == parent[key]  # the Ray worker's own context (default_worker.py) is not the sweep's


def test_context_tags_name_this_checkout_when_the_entry_point_is_outside_it(monkeypatch, tmp_path):
    script = tmp_path / "bin" / "gat-sweep"  # a console script of a venv outside the checkout
    monkeypatch.setattr(sys, "argv", [str(script), "run"])
    tags = context_tags()
    assert tags["mlflow.source.name"] == str(script)
    assert tags["mlflow.source.git.commit"] == CHECKOUT_COMMIT


def test_child_run_follows_the_schema(store, tmp_path):
    reporter, result = run_trial(store, tmp_path / "a", "trial_a")
    client = MlflowClient(store.tracking_uri)
    run = client.get_run(reporter.run_id)
    tags, params = run.data.tags, run.data.params
    assert run.info.run_name == "trial_a" and run.info.status == "FINISHED"
    assert tags["mlflow.parentRunId"] == store.parent_run_id
    assert (tags["gat_sweep.role"], tags["gat_sweep.trial"], tags["gat_sweep.status"]) == ("trial", "trial_a", "finished")
    assert (params["g.width"], params["d.heads"], params["lr_g"], params["batch"]) == ("32", "2", "0.0005", "8")
    assert (params["sweep.lr_rule"], params["sweep.base_width"], params["lr_mult_g.hidden"]) == ("gat", "64", "1.0")
    assert int(params["model.g_params"]) > 0 and int(params["compute.flops_per_iter"]) > 0
    assert "compute.flops_convention" in params
    history = client.get_metric_history(reporter.run_id, "progress/iter")
    assert [(m.step, m.value) for m in history] == [(2, 2.0), (4, 4.0), (6, 6.0)]
    # The last iteration checkpoints although 6 is not a multiple of ckpt_every=4.
    assert load_checkpoint(tmp_path / "a" / "checkpoints" / "latest.pt")["iteration"] == 6
    assert sorted(p.name for p in (tmp_path / "a" / "checkpoints").glob("iter_*.pt")) == [
        "iter_0000004.pt", "iter_0000006.pt"]
    kimg = client.get_metric_history(reporter.run_id, "progress/kimg")
    assert kimg[-1].value == pytest.approx(6 * 8 / 1000)
    assert run.data.metrics["loss/D"] == pytest.approx(result.metrics["loss/D"])
    assert [a.path for a in client.list_artifacts(reporter.run_id)] == ["config.json"]
    assert not any(key.startswith("best/") for key in run.data.metrics)  # nothing evaluated


def test_sample_grids_are_logged_as_images_with_their_step(store, tmp_path):
    reporter = MlflowReporter(store, "grids", SWEEP)
    reporter.start(CFG, {}, None)
    for step in (2, 4):
        reporter.report(Report(step, {"progress/iter": float(step)}, [sample_grid(tmp_path / f"iter_{step:07d}.png")]))
    reporter.finish(RunResult("finished", 4, 0.032, {}, tmp_path))
    client = MlflowClient(store.tracking_uri)
    assert image_steps(client, reporter.run_id) == [2, 4]
    assert client.get_run(reporter.run_id).data.tags["mlflow.loggedImages"] == "True"
    # the plain files stay: analysis.runs.last_sample_grid reads samples/ for the report
    assert [a.path for a in client.list_artifacts(reporter.run_id, "samples")] == [
        "samples/iter_0000002.png", "samples/iter_0000004.png"]


def test_best_metric_and_step_follow_the_evaluations_across_a_resume(store):
    info, cfg = {"eval.metric_key": FD}, CFG.replace(iterations=10)
    first = MlflowReporter(store, "best", SWEEP)
    first.start(cfg, info, None)
    for step, fd in ((2, 50.0), (4, 40.0), (6, 45.0)):
        first.report(Report(step, {"progress/iter": float(step), FD: fd}))
    second = MlflowReporter(store, "best", SWEEP)  # resumed from the checkpoint at 4
    second.start(cfg, info, first.state_dict())
    for step, fd in ((6, 45.0), (8, 42.0), (10, 30.0)):
        second.report(Report(step, {"progress/iter": float(step), FD: fd}))
    second.finish(RunResult("finished", 10, 0.08, {}, None))
    client = MlflowClient(store.tracking_uri)
    best = client.get_metric_history(first.run_id, "best/fd_digits_1k")
    assert [(m.step, m.value) for m in best] == [(2, 50.0), (4, 40.0), (10, 30.0)]
    metrics = client.get_run(first.run_id).data.metrics
    assert (metrics["best/fd_digits_1k"], metrics["best/step"]) == (30.0, 10.0)
    # sortable in the UI and the search API
    runs = client.search_runs([store.experiment_id], "metrics.`best/fd_digits_1k` < 35")
    assert [r.info.run_id for r in runs] == [first.run_id]


def test_system_metrics_are_logged_while_the_run_trains(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.05")
    reporter = MlflowReporter(store, "system", SWEEP)
    reporter.start(CFG, {}, None)
    client = MlflowClient(store.tracking_uri)
    deadline = time.monotonic() + 20  # a loaded machine samples late: wait for two samples
    while len(client.get_metric_history(reporter.run_id, "system/cpu_utilization_percentage")) < 2:
        assert time.monotonic() < deadline, "no two system-metric samples within 20 s"
        time.sleep(0.05)
    reporter.finish(RunResult("finished", 0, 0.0, {}, None))
    metrics = client.get_run(reporter.run_id).data.metrics
    assert metrics["system/cpu_utilization_percentage"] >= 0
    assert metrics["system/system_memory_usage_megabytes"] > 0
    steps = [m.step for m in client.get_metric_history(reporter.run_id, "system/cpu_utilization_percentage")]
    assert steps == list(range(len(steps))) and len(steps) >= 2

    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")  # mlflow.disable_system_metrics_logging()
    off = MlflowReporter(store, "system-off", SWEEP)
    off.start(CFG, {}, None)
    time.sleep(0.2)
    off.finish(RunResult("finished", 0, 0.0, {}, None))
    assert not any(k.startswith("system/") for k in client.get_run(off.run_id).data.metrics)


@pytest.mark.parametrize("crash_at", [2, 4], ids=["before-first-checkpoint", "after-checkpoint"])
def test_crash_and_resume_log_to_one_run_without_duplicate_steps(store, tmp_path, crash_at):
    name = f"crash_{crash_at}"
    first = CrashOnce(store, name, SWEEP, crash_at=crash_at)
    with pytest.raises(RuntimeError, match="injected crash"):
        run_trial(store, tmp_path / name, name, first)
    first.mark_failed(RuntimeError("injected crash"))
    client, runs = children(store)
    failed = client.get_run(first.run_id)
    assert failed.info.status == "FAILED" and failed.data.tags["gat_sweep.status"] == "failed"
    assert failed.data.tags["gat_sweep.error"] == "RuntimeError: injected crash"

    second, result = run_trial(store, tmp_path / name, name)  # a fresh process would do the same
    assert result.status == "finished"
    assert second.run_id == first.run_id
    client, runs = children(store)
    assert [r.info.run_id for r in runs if r.data.tags["gat_sweep.trial"] == name] == [first.run_id]
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["gat_sweep.status"] == "finished"
    steps = [m.step for m in client.get_metric_history(first.run_id, "progress/iter")]
    assert steps == [2, 4, 6]


def test_diverged_result_is_tagged(store):
    reporter = MlflowReporter(store, "diverging", SWEEP)
    reporter.start(CFG, {}, None)
    reporter.finish(RunResult("diverged", 3, 0.024, {}, None))
    run = MlflowClient(store.tracking_uri).get_run(reporter.run_id)
    assert run.data.tags["gat_sweep.status"] == "diverged" and run.info.status == "FINISHED"
    assert reporter.state_dict() == {"mlflow_run_id": reporter.run_id}


def test_copy_run_repeats_a_run_under_another_trial_once(store, tmp_path):
    source = MlflowReporter(store, "source", SWEEP)
    source.start(CFG, {"model.g_params": "123"}, None)
    grid = sample_grid(tmp_path / "iter_0000002.png")
    source.report(Report(2, {"loss/D": 1.5, "progress/iter": 2.0}, [grid]))
    source.report(Report(4, {"loss/D": 1.25, "progress/iter": 4.0}))
    source.finish(RunResult("finished", 4, 0.032, {}, tmp_path))
    cfg = CFG.replace(name="repeat")
    params = {**SWEEP, "sweep.lr_rule": "constant"}
    label = "constant 1e-3 w32-d4 s0 p2"
    first = copy_run(store, "source", "repeat", label, cfg, params, [grid])
    second = copy_run(store, "source", "repeat", label, cfg, params, [grid])  # an interrupted copy is redone
    client, runs = children(store)
    copies = [r for r in runs if r.data.tags["gat_sweep.trial"] == "repeat"]
    assert [r.info.run_id for r in copies] == [second] and first != second
    run = copies[0]
    assert run.info.run_name == label and run.data.tags["gat_sweep.trial"] == "repeat"
    assert run.data.tags["gat_sweep.same_as"] == "source" and run.data.tags["gat_sweep.status"] == "finished"
    assert run.data.tags["mlflow.parentRunId"] == store.parent_run_id and run.info.status == "FINISHED"
    assert (run.data.params["name"], run.data.params["sweep.lr_rule"], run.data.params["model.g_params"]) == (
        "repeat", "constant", "123")
    assert [(m.step, m.value) for m in client.get_metric_history(second, "loss/D")] == [(2, 1.5), (4, 1.25)]
    assert sorted(a.path for a in client.list_artifacts(second, "samples")) == ["samples/iter_0000002.png"]
    assert image_steps(client, second) == [2] and run.data.tags["mlflow.loggedImages"] == "True"
    with pytest.raises(LookupError, match="no MLflow run of trial ghost"):
        copy_run(store, "ghost", "repeat2", "repeat2", cfg, params, [])
