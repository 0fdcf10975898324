"""What a researcher sees in the MLflow UI between `gat-sweep run` and `gat-sweep plot`, on a real
small sweep run through the command line (tiny digits data, evaluated): the printed link opens the
experiment's runs page in the sweep's view (the runs sorted by final FD, lowest first, with the key
columns, on MLflow's model-training pages); runs are named by what tells them apart; a copied run
says which run it copies; sample grids start at step 0, where the UI's image slider opens. Where
Chromium is installed, the printed link is opened in it against `mlflow ui` and the best trial is
the first row."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from core.records import RUNS_VIEW_TAG
from helpers import free_ports
from scaling.grid import expand
from scaling.spec import load_spec

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
SWEEP = """
name: ui_check
dataset: digits
model: {widths: [16, 32], depths: [4], head_dim: 16}
lr: {base_lrs: [2e-3, 4e-3], rules: [gat, constant], base_width: 32}
budget: {iterations: 4}
eval: {every: 2, samples: 64}
train: {d_proj_dim: 32, batch: 8, ckpt_every: 2, log_every: 2, diag_every: 2}
resources: {cpus: 1}
max_concurrent: 2
"""
FINAL = "final/fd_digits_64"
LINK = re.compile(r"then open http://127\.0\.0\.1:5000/(#/experiments/(\d+)/runs\?\S+)")


def gat_sweep(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "COLUMNS": "100"}
    return subprocess.run([str(BIN / "gat-sweep"), *args], capture_output=True, text=True, env=env, timeout=900,
                          check=False)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_digits_cache):
    """The sweep run once through `gat-sweep run`: 8 trials, 5 trainings (gat and constant coincide
    at the base width 32, and gat at 2e-3 on width 16 is constant at 4e-3)."""
    root = tmp_path_factory.mktemp("ui_check")
    path = root / "ui_check.yaml"
    path.write_text(SWEEP + f"output_dir: {root / 'out'}\n")
    done = gat_sweep("run", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    spec = load_spec(path)
    return {"path": path, "stdout": done.stdout, "client": MlflowClient(spec.tracking()), "uri": spec.tracking(),
            "labels": {t.name: t.label for t in expand(spec)}}


def trial_runs(sweep) -> dict[str, object]:
    client = sweep["client"]
    experiment = client.get_experiment_by_name("ui_check")
    runs = client.search_runs([experiment.experiment_id], "tags.`gat_sweep.role` = 'trial'")
    return {r.data.tags["gat_sweep.trial"]: r for r in runs}


def test_the_printed_link_opens_the_runs_sorted_by_final_fd_with_the_key_columns(sweep):
    # The README's link opened one folded row and no metric columns; the best trial took three clicks.
    page, experiment_id = LINK.search(sweep["stdout"]).groups()
    assert page == f"#/experiments/{experiment_id}/runs?viewStateShareKey=gat-sweep&workflowType=machine_learning"
    view = json.loads(sweep["client"].get_experiment(experiment_id).tags[RUNS_VIEW_TAG])
    assert (view["orderByKey"], view["orderByAsc"]) == (f"metrics.`{FINAL}`", True)
    assert view["selectedColumns"][:2] == [f"metrics.`{FINAL}`", "metrics.`best/fd_digits_64`"]
    assert {"params.`sweep.lr_rule`", "params.`sweep.base_lr`", "params.`g.width`", "params.`seed`",
            "tags.`gat_sweep.status`"} <= set(view["selectedColumns"])
    assert view["columnWidths"]["attributes.`Run Name`"] >= 7 * max(map(len, sweep["labels"].values()))
    # what the view's order shows first: the trial with the lowest final FD
    ordered = sweep["client"].search_runs([experiment_id], order_by=[f"metrics.`{FINAL}` ASC"], max_results=1)
    finals = {name: run.data.metrics[FINAL] for name, run in trial_runs(sweep).items()}
    assert ordered[0].data.metrics[FINAL] == min(finals.values())


def test_runs_are_named_by_what_tells_them_apart_and_older_runs_are_renamed(sweep):
    runs = trial_runs(sweep)
    assert {name: run.info.run_name for name, run in runs.items()} == sweep["labels"]
    assert sweep["labels"]["w16-d4-p2_constant_lr0.004_s0"] == "constant 4e-3 w16-d4 s0 p2"
    # A sweep begun before runs had labels named them by the trial: its next run renames them.
    client, run = sweep["client"], runs["w16-d4-p2_gat_lr0.002_s0"]
    client.update_run(run.info.run_id, name="w16-d4-p2_gat_lr0.002_s0")
    again = gat_sweep("run", str(sweep["path"]))
    assert again.returncode == 0 and "0 to train" in again.stdout, again.stdout + again.stderr
    assert client.get_run(run.info.run_id).info.run_name == "gat 2e-3 w16-d4 s0 p2"


def test_a_copied_run_says_which_run_it_copies_and_keeps_its_times(sweep):
    # Copies showed a duration of 1.1 s (the copying) and nothing said what they were.
    runs = trial_runs(sweep)
    copy, source = runs["w32-d4-p2_constant_lr0.002_s0"], runs["w32-d4-p2_gat_lr0.002_s0"]
    assert copy.data.tags["gat_sweep.same_as"] == "w32-d4-p2_gat_lr0.002_s0"
    assert copy.data.tags["mlflow.note.content"].startswith(
        f"A copy of the run 'gat 2e-3 w32-d4 s0 p2' (trial w32-d4-p2_gat_lr0.002_s0, run {source.info.run_id})")
    assert (copy.info.start_time, copy.info.end_time) == (source.info.start_time, source.info.end_time)
    assert "mlflow.note.content" not in source.data.tags


def test_sample_grids_start_at_step_0_where_the_image_slider_opens(sweep):
    # The slider started at step 0 while the grids began at the first evaluation: a blank panel.
    client = sweep["client"]
    for name, run in trial_runs(sweep).items():
        files = [a.path.split("/")[-1] for a in client.list_artifacts(run.info.run_id, "images")]
        steps = sorted(int(f.split("+")[2]) for f in files if f.startswith("samples+") and f.endswith(".png"))
        assert steps == [0, 2, 4], name
        grids = [a.path for a in client.list_artifacts(run.info.run_id, "samples")]
        assert grids == ["samples/iter_0000000.png", "samples/iter_0000002.png", "samples/iter_0000004.png"]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Chromium (headless)")
def test_chromium_opens_the_link_on_the_runs_list_with_the_best_trial_first(sweep, tmp_path):
    port = free_ports(1)[0]
    server = subprocess.Popen([str(BIN / "mlflow"), "ui", "--backend-store-uri", sweep["uri"], "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True,
                              env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"})
    try:
        deadline = time.monotonic() + 180
        while not _answers(f"http://127.0.0.1:{port}/health"):
            assert time.monotonic() < deadline and server.poll() is None, "mlflow ui did not start"
            time.sleep(1)
        page = LINK.search(sweep["stdout"]).group(1)
        dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,900",
                              f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=60000",
                              "--dump-dom", f"http://127.0.0.1:{port}/{page}"],
                             capture_output=True, text=True, timeout=300, check=False).stdout
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    labels = set(sweep["labels"].values())
    rows = {}  # row index -> run name, from the table's pinned run-name column
    for match in re.finditer(r'row-index="(\d+)"', dom):
        names = [n for n in re.findall(r">([^<>]+)</span></a>", dom[match.end():match.end() + 3000]) if n in labels]
        rows.setdefault(int(match.group(1)), names[0] if names else None)
    finals = {sweep["labels"][name]: run.data.metrics[FINAL] for name, run in trial_runs(sweep).items()}
    shown = [rows[i] for i in sorted(rows) if rows[i] is not None]
    assert sorted(shown) == sorted(labels), dom[:2000]  # every trial a row of its own: not folded under the parent
    assert [finals[name] for name in shown] == sorted(finals.values())  # the best trial first
    assert f"metrics.`{FINAL}`" in dom and "params.`sweep.lr_rule`" in dom  # the key columns shown


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False
