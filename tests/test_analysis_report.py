"""analysis.runs + analysis.report against a real sqlite MLflow store holding a synthetic sweep
written with the MLflow client exactly as docs/TRACKING.md describes; the HTML report is opened
in headless Chromium."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from analysis import figures
from analysis.report import SUMMARY_COLUMNS, log_report, make_report
from analysis.runs import POINT_COLUMNS, SweepNotFound, load_sweep
from core.units import fd_text, lr_text

SWEEP = "synth"
KEY = "eval/fd_digits_1k"
WIDTHS = (32, 64, 128)
LRS = (1.25e-4, 2.5e-4, 5e-4, 1e-3, 2e-3)
ITERS, EVAL_EVERY, BATCH = 1000, 200, 32
# ground truth of the synthetic sweep: frontier FD(C) = E + A C^-alpha, times an LR penalty
ALPHA, E_TRUE = 0.5, 2.0
A_TRUE = 40.0 * 1e10**ALPHA  # FD 42 at C = 1e10 FLOPs
PENALTY = 0.5                # log FD rises by PENALTY * (ln lr - ln lr*)^2
SEEDS = (0, 1)
DIVERGED = ("constant", 128, 2e-3)   # these three apply to seed 0
RUNNING = ("gat", 128, 2e-3)
FAILED = ("gat", 32, 1.25e-4)
# At width 32 = base width both rules give the same actual LR: the constant-rule trials there are
# copies of the gat trials (tag gat_sweep.same_as), as scaling.tune records them.
N_TRIALS = 2 * len(WIDTHS) * len(LRS) * len(SEEDS)


def flops_per_iter(width: int) -> float:
    return 1e8 * (width / 32) ** 2


def best_lr(rule: str, width: int) -> float:
    """Optimal *base* LR: 1e-3 * 32/width under constant LR (slope -1), 1e-3 under the GAT rule."""
    return 1e-3 * 32 / width if rule == "constant" else 1e-3


def true_fd(rule: str, width: int, lr: float, flops: np.ndarray) -> np.ndarray:
    return (E_TRUE + A_TRUE * flops**-ALPHA) * np.exp(PENALTY * np.log(lr / best_lr(rule, width)) ** 2)


def trial_name(rule: str, width: int, lr: float, seed: int = 0) -> str:
    return f"{rule}-w{width}-lr{lr:g}-s{seed}"


def write_synthetic_sweep(uri: str, artifacts: Path, scratch: Path) -> str:
    """Write the sweep (parent + 60 child runs: 2 rules x 3 widths x 5 LRs x 2 seeds) and return
    the parent run id."""
    client = MlflowClient(uri)
    exp = client.create_experiment(SWEEP, artifact_location=artifacts.as_uri())
    parent = client.create_run(exp, run_name=SWEEP, tags={
        "gat_sweep.role": "parent", "gat_sweep.sweep": SWEEP, "gat_sweep.spec_hash": "abc123"})
    pid = parent.info.run_id
    rng = np.random.default_rng(0)
    grid = scratch / "iter_0001000.png"
    trained = {}  # (width, actual lr, seed) -> (trial name, status, metrics)
    for rule in ("gat", "constant"):
        for width in WIDTHS:
            for lr in LRS:
                for seed in SEEDS:
                    key = (rule, width, lr)
                    name = trial_name(rule, width, lr, seed)
                    status = "finished" if seed else ("diverged" if key == DIVERGED else "running"
                                                      if key == RUNNING else "failed" if key == FAILED
                                                      else "finished")
                    actual_lr = lr if rule == "constant" else lr * 32 / width
                    tags = {"mlflow.parentRunId": pid, "gat_sweep.role": "trial",
                            "gat_sweep.sweep": SWEEP, "gat_sweep.trial": name}
                    source = trained.get((width, actual_lr, seed))
                    if source is not None:
                        tags["gat_sweep.same_as"] = source[0]
                        status, metrics = source[1], source[2]
                    tags["gat_sweep.status"] = status
                    run = client.create_run(exp, run_name=name, tags=tags)
                    params = {"g.width": width, "g.depth": 4, "g.heads": 4, "d.width": width, "d.depth": 4,
                              "lr_g": actual_lr, "lr_d": actual_lr, "lr_mult_g.hidden": 1.0, "lr_mult_d.hidden": 1.0,
                              "batch": BATCH, "patch": 2, "seed": seed,
                              "iterations": ITERS, "sweep.size": f"w{width}", "sweep.lr_rule": rule,
                              "sweep.base_lr": lr, "sweep.base_width": 32,
                              "compute.flops_per_iter": flops_per_iter(width),
                              "compute.flops_convention": "synthetic: 2 x MACs x (fwd + bwd)",
                              "eval.metric_key": KEY,
                              "eval.extractor": f"digits-cnn (/cache{width % 3}/digits/full-0a1b/cnn.safetensors)",
                              "eval.num_samples": 1000, "eval.reference": "train", "eval.ema": True,
                              "eval.truncation_psi": 0.0}
                    last = 0 if status == "failed" else 600 if status == "running" else ITERS
                    if source is None:
                        metrics = []
                        for it in range(100, last + 1, 100):
                            metrics += [Metric("progress/iter", it, 0, it),
                                        Metric("progress/kimg", it * BATCH / 1000, 0, it),
                                        Metric("diag/early_skip_rel", 0.3 * (32 / width) ** 0.5, 0, it),
                                        Metric("diag/g_update_rel", 0.01 * actual_lr / 1e-3 * width / 32, 0, it)]
                            if it % 300 == 0 or it == 100 or it == last:  # interpolation needed in between
                                metrics.append(Metric("compute/train_flops", it * flops_per_iter(width), 0, it))
                        for it in range(EVAL_EVERY, last + 1, EVAL_EVERY):
                            noise = np.exp(rng.normal(0, 0.01))
                            fd = float(true_fd(rule, width, lr, it * flops_per_iter(width)) * noise)
                            if status == "diverged" and it == last:
                                fd = float("nan")
                            if status == "diverged" and it == last - EVAL_EVERY:
                                fd = 0.5  # spuriously good value just before divergence: must not be fitted
                            metrics.append(Metric(KEY, fd, 0, it))
                            metrics += [Metric("eval/precision_digits_1k", 0.5, 0, it),
                                        Metric("eval/recall_digits_1k", it / 10000 * width / 32, 0, it)]
                        trained[(width, actual_lr, seed)] = (name, status, metrics)
                    client.log_batch(run.info.run_id, metrics=metrics,
                                     params=[Param(k, str(v)) for k, v in params.items()],
                                     tags=[RunTag("mlflow.runName", name)])
                    if last:
                        mpimg.imsave(grid, np.full((16, 16, 3), width / 255.0))
                        client.log_artifact(run.info.run_id, str(grid), "samples")
                    if status != "running":
                        client.set_terminated(run.info.run_id, "FAILED" if status == "failed" else "FINISHED")
    return pid


def write_fresh_sweep(uri: str, artifacts: Path) -> None:
    """A sweep whose only trial has just started: no params, no metrics yet."""
    client = MlflowClient(uri)
    exp = client.create_experiment("fresh", artifact_location=artifacts.as_uri())
    pid = client.create_run(exp, run_name="fresh", tags={"gat_sweep.role": "parent"}).info.run_id
    client.create_run(exp, run_name="t0", tags={"mlflow.parentRunId": pid, "gat_sweep.role": "trial",
                                                "gat_sweep.status": "running"})


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    pid = write_synthetic_sweep(uri, root / "artifacts", root)
    write_fresh_sweep(uri, root / "artifacts-fresh")
    return uri, pid


@pytest.fixture(scope="module")
def report(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return make_report(SWEEP, store[0], out)


def test_loader_reads_the_schema(store):
    runs = load_sweep(SWEEP, store[0])
    assert runs.parent_run_id == store[1]
    assert runs.metric_key == KEY
    assert len(runs.trials) == N_TRIALS
    # the running and the failed seed-0 gat trials each have a constant-rule copy
    assert runs.trials["status"].value_counts().to_dict() == {"finished": 55, "diverged": 1,
                                                              "running": 2, "failed": 2}
    assert list(runs.points.columns) == POINT_COLUMNS
    # 55 finished x 5 evals + diverged 5 + running 2 x 3 (failed: none)
    assert len(runs.points) == 55 * 5 + 5 + 2 * 3
    copies = runs.trials.dropna(subset=["same_as"])
    # equal actual LR (gat: base x 32 / width, constant: base): 5 pairs at w32, 4 at w64, 3 at w128
    assert len(copies) == (5 + 4 + 3) * len(SEEDS) and set(copies["lr_rule"]) == {"constant"}
    assert copies.set_index("trial").loc[trial_name("constant", 64, 1.25e-4), "same_as"] == \
        trial_name("gat", 64, 2.5e-4)
    one = runs.points[runs.points["trial"] == trial_name("gat", 64, 5e-4)]
    assert one["iter"].tolist() == [200, 400, 600, 800, 1000]
    assert one["kimg"].tolist() == [6.4, 12.8, 19.2, 25.6, 32.0]
    # compute/train_flops was logged at 100, 300, 600, 900, 1000 only: linear interpolation is exact
    np.testing.assert_allclose(one["train_flops"], one["iter"] * flops_per_iter(64), rtol=1e-12)
    assert one["lr_rule"].unique().tolist() == ["gat"] and one["g_width"].unique().tolist() == [64]
    assert one["base_lr"].iloc[0] == 5e-4 and one["lr_g"].iloc[0] == pytest.approx(2.5e-4)
    assert set(runs.trials["lr_mults"]) == {"d.hidden=1,g.hidden=1"}
    running = runs.trials.set_index("trial").loc[trial_name(*RUNNING)]
    assert running["n_evals"] == 3 and running["last_iter"] == 600
    diverged = runs.points[runs.points["trial"] == trial_name(*DIVERGED)]
    assert math.isnan(diverged["fd"].iloc[-1]) and diverged["fd"].iloc[-2] == 0.5
    row = runs.trials.set_index("trial").loc[trial_name("constant", 32, 1e-3)]
    assert row["early_skip_rel"] == pytest.approx(0.3) and row["g_update_rel"] == pytest.approx(0.01)


def test_loader_by_parent_run_id_matches_by_name(store):
    by_id = load_sweep(store[1], store[0])
    by_name = load_sweep(SWEEP, store[0])
    pd.testing.assert_frame_equal(by_id.points, by_name.points)


def test_unknown_sweep_names_what_exists(store, tmp_path):
    known = rf"sweeps there: .*{SWEEP} \(parent run {store[1]}\)"
    with pytest.raises(SweepNotFound, match=rf"no sweep named 'nope'.*{known}"):
        load_sweep("nope", store[0])
    missing = tmp_path / "none.db"
    with pytest.raises(SweepNotFound, match=re.escape(str(missing))):
        load_sweep(SWEEP, f"sqlite:///{missing}")
    assert not missing.exists()  # we did not let MLflow create an empty database


def test_report_writes_every_file(report):
    names = {p.name for p in report.files}
    assert names == {"report.html", "runs.csv", "fits.json", "fd_vs_compute.png", "fd_vs_kimg.png",
                     "lr_transfer.png", "diagnostics.png", "samples.png"}
    for path in report.files:
        assert path.is_file() and path.stat().st_size > 0
    for path in report.figures.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = report.html.read_text()
    assert html.count('src="data:image/png;base64,') == 5 and "<img src=\"report" not in html
    csv = pd.read_csv(report.csv)
    assert list(csv.columns) == POINT_COLUMNS and len(csv) == 55 * 5 + 5 + 2 * 3
    # 3 sizes, one sample grid per size downloaded from the artifact store
    assert len(list((report.out_dir / "samples").rglob("*.png"))) == 3


def test_report_fits_and_verdicts(report):
    values = json.loads(report.json.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert all(p["trial"] != trial_name(*DIVERGED) for p in values["frontier"])
    assert any("diverged/failed" in n and trial_name(*DIVERGED) in n for n in report.notes)
    sat = values["fits"]["saturating"]
    assert sat["ok"] and abs(sat["alpha"]["value"] - ALPHA) < 0.02
    assert sat["alpha"]["lo"] <= ALPHA <= sat["alpha"]["hi"]
    assert sat["n_boot"] == 1000 and values["frontier_sizes"] == ["w32", "w64", "w128"]
    # 3 sizes: a law, but no next-size prediction, since its backtest (a law without w128) would
    # rest on 2 sizes
    assert sat["next_size"] is None and not sat["backtest"]["ok"]
    assert "without the largest size (w128)" in sat["backtest"]["reason"] and "2 size(s) (w32, w64)" in sat["backtest"]["reason"]
    assert "no next-size prediction" in report.summary and "next size (" not in report.summary
    verdicts = values["lr_transfer"]
    assert verdicts["gat"]["transfers"] is True and verdicts["constant"]["transfers"] is False
    assert verdicts["constant"]["slope"]["value"] == pytest.approx(-1.0, abs=0.05)
    assert verdicts["gat"]["slope"]["value"] == pytest.approx(0.0, abs=0.05)
    assert verdicts["constant"]["n_seeds"] == 2 and verdicts["constant"]["noise_sd_log"] < 0.03
    const_opt = {o["width"]: o for o in verdicts["constant"]["optima"]}
    assert const_opt[128]["diverged_lrs"] == [2e-3]    # excluded from the fit, marked as failed
    assert [const_opt[w]["best_lr"]["value"] for w in WIDTHS] == pytest.approx([1e-3, 5e-4, 2.5e-4], rel=0.05)
    assert "does not transfer (best LR falls with width)" in verdicts["constant"]["verdict"]
    assert [r["size"] for r in report.summary_rows] == ["w32", "w64", "w128"]
    assert all(set(r) == set(SUMMARY_COLUMNS) for r in report.summary_rows)
    assert report.summary_rows[2]["trials"] == "2 running, 17 finished, 1 diverged"  # of the size's 20
    assert all(r["flag"] == "" for r in report.summary_rows)  # wider is better: none under-trained
    # precision and recall of each size's best trial's last evaluation (iteration 1000; recall = it/1e4 * width/32)
    assert [(r["precision"], r["recall"]) for r in report.summary_rows] == [("0.50", "0.10"), ("0.50", "0.20"),
                                                                             ("0.50", "0.40")]
    assert "precision  recall" in report.summary
    assert "does not transfer" in report.summary and "gat: transfers: shift" in report.summary
    # the exponent of the best actual LR (1/width in this sweep) opens the report, with the rule it implies
    exponent = re.search(r"the best actual LR scales as width\^(-?[\d.]+) \[", report.summary)
    assert exponent and float(exponent.group(1)) == pytest.approx(-1.0, abs=0.05)
    assert exponent.group(0) in report.html.read_text()
    assert report.summary.index("ANSWER") < report.summary.index("sizes (final FD")
    implied = values["answer"]["implied_rule"]
    assert implied["rule"] == f"power{-implied['exponent']['value']:.2f}".rstrip("0")
    assert implied["exponent"]["value"] == pytest.approx(-1.0, abs=0.05) and implied["base_width"] == 32
    assert sorted(values["answer"]["short"]) == ["constant", "gat"]
    assert values["answer"]["short"]["constant"].startswith("does not transfer: x0.2")
    assert values["answer"]["short"]["gat"].startswith("transfers: x1")


def test_report_names_the_rule_of_each_transfer_line_and_one_extractor(report):
    """The HTML shows the verdicts in a table and the per-rule detail lines below it: each detail
    line names its rule (they once followed each other unlabelled). Trials that read the same
    classifier from two cache directories name one extractor."""
    html = report.html.read_text()
    assert "constant, best base LR per width: 32: " in html and "gat, best base LR per width: 32: " in html
    assert "constant, diverged (excluded from the fit): 128: 2e-3" in html
    assert html.count(", also fitted to ") == 2  # each rule borrows the other's trainings at its own base LRs
    values = json.loads(report.json.read_text())
    assert values["eval_extractor"] == ["digits-cnn (full-0a1b/cnn.safetensors)"]
    fit_line = next(line for line in report.summary.splitlines() if line.strip().startswith("FD = E + A"))
    assert "; to reach FD " in fit_line and " needs " not in fit_line


def test_training_curves_average_the_best_base_lr_over_seeds():
    """The bold curve per size of fd_vs_kimg.png: the geometric mean over seeds, at iterations
    every seed reached, of the base LR with the best final FD (geometric mean over seeds of each
    trial's final FD: 1e-3 sqrt(400 x 100) = 200 for both seeds; 2e-3 sqrt(300 x 150) = 212 and
    (300 x 150 x 10)^(1/3) = 76.6)."""
    rows = []
    for base_lr, fds in ((1e-3, {0: [400, 100], 1: [100, 400]}), (2e-3, {0: [300, 150], 1: [300, 150, 10]})):
        for seed, series in fds.items():
            rows += [{"size": "w32", "base_lr": base_lr, "seed": seed, "iter": 100 * (k + 1),
                      "kimg": 3.2 * (k + 1), "fd": fd} for k, fd in enumerate(series)]
    curves = figures.best_seed_mean_curves(pd.DataFrame(rows))
    assert list(curves) == [("w32", 2e-3, 2)]   # its curve stops at the iterations both seeds reached
    curve = curves[("w32", 2e-3, 2)]
    assert curve["iter"].tolist() == [100, 200] and curve["fd"].tolist() == pytest.approx([300, 150])


def test_report_refuses_a_file_as_its_directory_before_loading(tmp_path):
    out = tmp_path / "report.out"
    out.write_text("")
    with pytest.raises(NotADirectoryError, match="give --out a directory"):
        make_report(SWEEP, f"sqlite:///{tmp_path / 'never-opened.db'}", out)


def test_sample_grid_captions_give_the_iteration_and_fd_of_the_grid(report):
    captions = json.loads(report.json.read_text())["sample_grids"]
    assert len(captions) == 3
    runs = load_sweep(SWEEP, json.loads(report.json.read_text())["tracking_uri"])
    for caption, size in zip(captions, ("w32", "w64", "w128")):
        trial = caption.split("\n")[0].split(": ")[1]
        fd_1000 = runs.points[(runs.points["trial"] == trial) & (runs.points["iter"] == 1000)]["fd"].iloc[0]
        lr = runs.trials.set_index("trial").loc[trial, "lr_g"]
        assert caption.startswith(f"{size}: gat-")
        assert f"\n(actual LR {lr_text(lr)}; trained once for rules constant, gat)\n" in caption
        assert f"grid at iter 1000: FD {fd_text(fd_1000)}; final FD" in caption
        assert "rows of one image" not in caption       # recall 0.1-0.4 here: no collapse expected


def test_a_grid_of_a_collapsed_generator_says_so(tmp_path):
    from analysis.report import _grid_caption

    points = pd.DataFrame({"run_id": ["r"] * 2, "iter": [400, 800], "fd": [2000.0, 1285.0]})
    low = _grid_caption("w16", "t", "gat", tmp_path / "iter_0000800.png", points, "r", 1285.0, 0.002)
    assert low == ("w16: t\ngrid at iter 800: FD 1,285; final FD 1,285\nrecall 0.00: "
                   "expect rows of one image\n(G uses z weakly this early)")
    assert "one image" not in _grid_caption("w16", "t", "gat", tmp_path / "iter_0000800.png", points, "r", 1285.0, 0.3)
    assert "one image" not in _grid_caption("w16", "t", "gat", tmp_path / "iter_0000800.png", points, "r", 1285.0)


def test_report_never_names_a_copy_as_best(report):
    # every best trial is a trained run (a gat trial here), listed with the rules it stands for
    values = json.loads(report.json.read_text())
    for row, best in zip(report.summary_rows, values["best_per_size"]):
        assert best["trial"].startswith("gat-") and best["rules"] == ["constant", "gat"]
        assert row["best trial"] == best["trial"] and row["rules"] == "constant, gat"
        assert row["actual LR"] == lr_text(best["lr_g"])
        base_lr = float(re.search(r"-lr([^-]+)-", best["trial"]).group(1))
        assert best["lr_g"] == pytest.approx(base_lr * 32 / int(best["size"][1:]))  # gat: base x 32 / width
    assert any("copied trial(s)" in n for n in report.notes)
    assert all(not p["trial"].startswith("constant-w32") for p in values["frontier"])


def test_report_on_a_sweep_with_no_evaluations_yet(store, tmp_path):
    result = make_report("fresh", store[0], tmp_path / "out")
    assert all(p.is_file() for p in result.files)
    values = json.loads(result.json.read_text())
    assert values["fits"]["power"]["ok"] is False and "need at least 3" in values["fits"]["power"]["reason"]
    assert values["status_counts"]["running"] == 1 and values["lr_transfer"] == {}


def test_log_report_fills_the_parent_run(report, store):
    client = MlflowClient(store[0])
    assert log_report(report) == store[1]
    logged = sorted(a.path for a in client.list_artifacts(store[1], "report"))
    assert logged == sorted(f"report/{p.name}" for p in report.files)
    run = client.get_run(store[1]).data
    values = json.loads(report.json.read_text())
    alpha = values["fits"]["saturating"]["alpha"]
    assert run.metrics["fit/saturating/alpha"] == pytest.approx(alpha["value"])
    assert (run.metrics["fit/saturating/alpha_lo"], run.metrics["fit/saturating/alpha_hi"]) == pytest.approx(
        (alpha["lo"], alpha["hi"]))
    assert run.metrics["lr_transfer/constant/slope"] == pytest.approx(-1.0, abs=0.05)
    assert run.tags["gat_sweep.fit.saturating"] == "ok"
    # short verdicts in the tags (the rule in the key), the whole answer in the run's description
    assert run.tags["gat_sweep.lr_transfer.gat"] == values["answer"]["short"]["gat"] == "transfers: x1.01 [x0.94, x1.08]"
    assert run.tags["mlflow.note.content"] == "\n\n".join(values["answer"]["lines"])
    # a second report replaces the files and logs the metrics again
    assert log_report(report) == store[1]
    assert sorted(a.path for a in client.list_artifacts(store[1], "report")) == logged
    assert len(client.get_metric_history(store[1], "fit/saturating/alpha")) == 2


def test_plot_logs_to_the_parent_run_unless_told_not_to(store, tmp_path):
    from typer.testing import CliRunner

    from scaling.cli import app

    client = MlflowClient(store[0])
    parent = client.search_runs([client.get_experiment_by_name("fresh").experiment_id],
                                "tags.`gat_sweep.role` = 'parent'")[0].info.run_id
    quiet = CliRunner().invoke(app, ["plot", "fresh", "--tracking-uri", store[0], "--out", str(tmp_path / "a"), "--no-log"])
    assert quiet.exit_code == 0 and "logged to MLflow" not in quiet.output
    assert client.list_artifacts(parent, "report") == []
    result = CliRunner().invoke(app, ["plot", "fresh", "--tracking-uri", store[0], "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    assert f"logged to MLflow parent run {parent} (artifacts report/)" in result.output
    assert "report/report.html" in {a.path for a in client.list_artifacts(parent, "report")}
    assert "need at least 3 sizes" in client.get_run(parent).data.tags["gat_sweep.fit.power"]


def test_plots_sizes_table_fits_100_columns_without_a_broken_cell(store, report, monkeypatch, tmp_path):
    # At 120 and 160 columns the sizes table broke every row mid-cell (one row was 170 wide). It folds
    # into tables that fit, each led by the size; every cell stays whole on its size's line.
    from rich.console import Console
    from typer.testing import CliRunner

    from scaling import cli

    monkeypatch.setattr(cli, "console", Console(width=100))
    result = CliRunner().invoke(cli.app, ["plot", SWEEP, "--tracking-uri", store[0], "--out", str(tmp_path), "--no-log"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    table = lines[next(i for i, line in enumerate(lines) if line.startswith("sizes (")) + 1:
                  next(i for i, line in enumerate(lines) if line.startswith("fits ("))]
    assert max(map(len, table)) <= 100 and sum(line.startswith("  size ") for line in table) == 2  # two folds
    for row in report.summary_rows:
        own = [line for line in table if line.startswith(f"  {row['size']} ")]
        assert len(own) == 2, own
        assert all(any(row[c] in line for line in own) for c in SUMMARY_COLUMNS), (row, own)


def test_plot_takes_the_transfer_tolerance_from_the_user(store, tmp_path):
    from typer.testing import CliRunner

    from scaling.cli import app

    result = CliRunner().invoke(app, ["plot", SWEEP, "--tracking-uri", store[0], "--out", str(tmp_path),
                                      "--no-log", "--tolerance", "1.25"])
    assert result.exit_code == 0, result.output
    # the equivalence margin is the user's: x1.25 instead of x2 throughout the report
    assert "transfers if within x1.25," in result.output
    fits = json.loads((tmp_path / "fits.json").read_text())
    assert fits["lr_transfer_tolerance_log"] == fits["lr_transfer"]["gat"]["tolerance_log"] == \
        pytest.approx(math.log(1.25))
    assert "tolerance x1.25" in fits["lr_transfer"]["gat"]["verdict"]
    assert "tolerance x1.25" in (tmp_path / "report.html").read_text()
    refused = CliRunner().invoke(app, ["plot", SWEEP, "--tracking-uri", store[0], "--tolerance", "1"])
    assert refused.exit_code == 2 and "must be a factor above 1" in refused.output


def test_plot_says_why_the_report_was_not_logged(tmp_path):
    from typer.testing import CliRunner

    from scaling.cli import app

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    client = MlflowClient(uri)
    exp = client.create_experiment("unwritable", artifact_location=(blocker / "artifacts").as_uri())
    client.create_run(exp, run_name="unwritable", tags={"gat_sweep.role": "parent"})
    result = CliRunner().invoke(app, ["plot", "unwritable", "--tracking-uri", uri, "--out", str(tmp_path / "r")])
    assert result.exit_code == 0 and "Traceback" not in result.output
    assert (tmp_path / "r" / "report.html").is_file()  # the report on disk stands
    assert f"not logged to MLflow ({uri}): " in result.output


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHECK_SCRIPT = """<script>
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.setAttribute('data-images', ok + '/' + imgs.length);
});
</script></body>"""


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    # A copy of the report with a probe script that records how many images decoded.
    probe = tmp_path / "probe.html"
    probe.write_text(report.html.read_text().replace("</body>", CHECK_SCRIPT))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom",
           probe.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    match = re.search(r'data-images="(\d+)/(\d+)"', dom)
    assert match, f"probe did not run; chromium printed: {dom[:300]!r}"
    assert match.group(1) == match.group(2) == "5"


def test_analysis_does_not_import_torch():
    code = ("import sys, analysis.report, analysis.paper, analysis.figures, analysis.transfer; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---- figures that cannot mislead ---------------------------------------------------------------

def _one_width_transfer():
    """A rule scored at one width only: no line of optima to draw."""
    from analysis.transfer import fit_rule
    rows = [{"width": 32, "base_lr": lr, "seed": s, "common_iter": 100, "lr": lr, "pooled": False,
             "score": 1.0 + 0.3 * (math.log(lr) - math.log(5e-4)) ** 2} for lr in LRS for s in (0, 1)]
    return {"gat": fit_rule(pd.DataFrame(rows), "gat", n_boot=20)}


def test_the_lr_transfer_figure_has_no_empty_panel():
    fig = figures.lr_transfer_figure(_one_width_transfer())
    assert len(fig.axes) == 1                                  # the rule's panel, no empty best-LR box
    assert not any("no fitted optimum" in t.get_text() for ax in fig.axes for t in ax.texts)


def test_borrowed_and_left_out_points_are_drawn_apart_and_in_the_legend(report):
    values = json.loads(report.json.read_text())
    pooled = [lr for o in values["lr_transfer"]["gat"]["optima"] for lr in o["pooled_lrs"]]
    assert pooled   # gat borrows constant's trainings at actual LRs its own grid lacks
    from analysis.transfer import analyse_transfer
    runs = load_sweep(SWEEP, values["tracking_uri"])
    fig = figures.lr_transfer_figure(analyse_transfer(runs.points, runs.trials, n_boot=50))
    legend = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert "trained for another rule (same actual LR)" in legend and "trained for this rule" in legend
    hollow = [line for ax in fig.axes[:2] for line in ax.get_lines() if line.get_markerfacecolor() == "none"]
    assert sum(len(line.get_xdata()) for line in hollow) == len(pooled) + sum(
        len(o["pooled_lrs"]) for o in values["lr_transfer"]["constant"]["optima"])
    assert fig.axes[0].yaxis.label.get_fontsize() >= 10


def test_the_diagnostics_draw_each_training_once(tmp_path):
    trials = pd.DataFrame({
        "trial": ["gat-a", "constant-a", "gat-b"], "lr_rule": ["gat", "constant", "gat"],
        "same_as": [None, "gat-a", None], "g_width": [32, 32, 64], "last_iter": [100, 100, 100],
        "early_skip_rel": [0.3, 0.3, 0.2], "g_update_rel": [0.01, 0.01, 0.02]})
    fig = figures.diagnostics_figure(trials)
    for ax in fig.axes:
        assert sum(len(c.get_offsets()) for c in ax.collections) == 2     # gat-a once, gat-b once
        assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == ["constant + gat (one training)", "gat"]
    assert figures.diagnostics(trials, tmp_path / "d.png").is_file()


def test_fd_is_written_as_a_whole_number(report):
    assert "e+0" not in report.summary.split("fits (")[0]     # the answer and the sizes table
    for row in report.summary_rows:
        assert re.fullmatch(r"[\d,]+|\d+\.\d\d|-", row["best final FD"])
    note = next(n for n in report.notes if "copied trial(s)" in n)
    assert note.endswith("as those of the run that trained.")


def test_the_report_embeds_the_coordinate_check_logged_to_the_parent_run(store, tmp_path):
    """`gat-sweep coord-check` logs coord_check/coord_check.json to the sweep's parent run; the
    report draws it and shows it (a sixth figure)."""
    records = [{"rule": rule, "network": net, "group": "block1", "width": w, "seed": 0, "step": step,
                "quantity": quantity, "value": 0.5 + w / 100}
               for rule in ("constant", "gat") for net in ("g", "d") for w in (32, 64, 128) for step in (1, 2)
               for quantity in ("rms", "delta_rms")]
    path = tmp_path / "coord_check.json"
    path.write_text(json.dumps({"settings": {"sweep": SWEEP, "steps": 2}, "quantities": {}, "records": records}))
    client = MlflowClient(store[0])
    client.log_artifact(store[1], str(path), "coord_check")
    try:
        report = make_report(SWEEP, store[0], tmp_path / "out", n_boot=50)
        assert "coord_check" in report.figures and report.figures["coord_check"].is_file()
        html = report.html.read_text()
        assert "Coordinate check (gat-sweep coord-check)" in html and html.count('src="data:image/png;base64,') == 6
    finally:   # the store is shared by this module's tests: take the artifact away again
        artifacts = client.get_run(store[1]).info.artifact_uri.removeprefix("file://")
        shutil.rmtree(Path(artifacts) / "coord_check")
