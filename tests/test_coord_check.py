"""The coordinate check (core/gan/coord_check.py, analysis/coord_check.py, `gat-sweep coord-check`):
what each rule does to the per-step change of G's and D's hidden tokens as width grows (a measured
regression test), the hooks and records, the slopes and the figure, and the command."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from analysis import coord_check as analysis
from analysis.figures import tick_label_problems
from core.config import NetConfig, TrainConfig
from core.gan.coord_check import captured, measure, probe_points, run
from core.gan.model import build_models
from scaling import cli
from scaling.grid import coord_check_trials
from scaling.spec import SweepFileError, load_spec
from scaling.tracking import open_experiment, start_parent_run

SWEEPS = Path(__file__).resolve().parent.parent / "sweeps"
runner = CliRunner()


def smoke_trials(widths, rules="constant,gat,mup", steps_batch=8, **sets):
    spec = load_spec(SWEEPS / "smoke.yaml", [f"lr.rules=[{rules}]", "lr.base_lrs=[8e-3]", "lr.base_width=16",
                                             *(f"{k}={v}" for k, v in sets.items())])
    return coord_check_trials(spec, widths, seeds=1, batch=steps_batch)


def hidden_change(records: list[dict]) -> pd.DataFrame:
    """Mean over the blocks and steps of the RMS change of the hidden tokens, per rule, network, width."""
    df = pd.DataFrame(records)
    blocks = df[(df["quantity"] == "delta_rms") & df["group"].str.startswith("block")]
    return blocks.groupby(["rule", "network", "width"])["value"].mean().unstack("width")


def test_constant_lr_blows_up_hidden_updates_with_width_and_mup_keeps_them():
    """Measured (sweeps/smoke.yaml's model: depth 4, head dim 16, 4x8x8 random latents; base LR
    8e-3 at base width 16, batch 8, 3 steps; seeds 0-3, 2026-12-07), the RMS change per step of the
    hidden tokens (mean over the 4 blocks and the steps), width 128 over width 16:

    ======== ============ ============
    rule      G            D
    ======== ============ ============
    constant  x5.5 - x18.7 x2.1 - x2.8
    mup       x0.42 - x1.13 x1.00 - x1.19
    gat       x0.22 - x0.59 x0.30 - x0.40
    ======== ============ ============

    Under one LR for all widths the updates blow up as the networks widen; muP's per-kind LRs keep
    D's hidden updates flat and G's from growing; the paper's rule, which also scales vectors and
    embeddings by 1/width, makes them vanish. This test runs seed 0 (G x18.7 / x1.13 / x0.43,
    D x2.1 / x1.00 / x0.30) and asserts bounds that every measured seed clears.
    """
    trials = smoke_trials([16, 128])
    records, info = run([(t.lr_rule, t.config) for t in trials], steps=3)
    assert info["threads"] == 1 and set(info["seconds_per_width"]) == {16, 128}  # resources.cpus: 1
    change = hidden_change(records)
    ratio = (change[128] / change[16]).to_dict()
    assert ratio[("constant", "g")] > 3.0
    assert 0.3 < ratio[("mup", "g")] < 1.6
    assert ratio[("gat", "g")] < 0.8
    assert ratio[("constant", "d")] > 1.6
    assert 0.75 < ratio[("mup", "d")] < 1.4
    assert ratio[("gat", "d")] < 0.6


def test_records_cover_every_group_and_step_and_repeat_exactly():
    (trial,) = smoke_trials([32], rules="mup")
    records = measure(trial.config, "mup", 2, torch.device("cpu"), probe=4)
    g_groups = ["mapping", "block1", "block2", "block3", "block4", "output"]
    d_groups = ["block1", "block2", "block3", "block4", "cls_feature", "logit"]
    keys = [(r["network"], r["group"], r["step"], r["quantity"]) for r in records]
    expected = [(net, group, 0, "rms") for net, groups in (("g", g_groups), ("d", d_groups)) for group in groups]
    for step in (1, 2):
        expected += [(net, group, step, q) for net, groups in (("g", g_groups), ("d", d_groups)) for group in groups
                     for q in ("rms", "delta_rms")]
    assert keys == expected
    assert {(r["rule"], r["width"], r["seed"]) for r in records} == {("mup", 32, 0)}
    assert all(r["value"] > 0 for r in records)
    assert measure(trial.config, "mup", 2, torch.device("cpu"), probe=4) == records  # seeded: the same numbers
    with pytest.raises(ValueError, match="at least 1 step"):
        measure(trial.config, "mup", 0, torch.device("cpu"))


def test_hooks_capture_the_named_tensors_and_are_removed():
    net = NetConfig(width=32, depth=4, heads=2)
    cfg = TrainConfig(dataset="random", g=net, d=net, d_proj_dim=16)
    G, D = build_models(cfg)
    z, y = torch.randn(3, cfg.z_dim), torch.tensor([0, 1, 2])
    x = torch.randn(3, 16, cfg.latent_size, cfg.latent_size)
    points = probe_points(G, D)
    with torch.no_grad(), captured(points) as found:
        levels = G(z, y)
        logit = D(x, y)
    assert torch.equal(found[("g", "output")], levels[-1]) and torch.equal(found[("d", "logit")], logit)
    assert found[("g", "mapping")].shape == (3, 32) and found[("g", "block4")].shape == (3, 16, 32)
    assert found[("d", "block1")].shape == (3, 17, 32) and found[("d", "cls_feature")].shape == (3, 16)
    assert all(not module._forward_hooks for module, _ in points.values())


def synthetic_records(rows):
    return pd.DataFrame([{"rule": rule, "network": "g", "group": group, "width": w, "seed": seed, "step": step,
                          "quantity": "delta_rms", "value": value}
                         for rule, group, w, seed, step, value in rows])


def test_slopes_are_least_squares_over_the_means_of_seeds_and_steps():
    rows = []
    for w in (16, 32, 64):
        for seed in (0, 1):
            rows += [("constant", "block1", w, seed, 1, w / 16 * (1 + seed)),  # grows like width
                     ("constant", "block1", w, seed, 2, w / 16 * (1 + seed)),
                     ("constant", "block1", w, seed, 0, 99.0),  # step 0 is not an update: ignored
                     ("mup", "block1", w, seed, 1, 0.5 + seed)]  # flat
    records = synthetic_records(rows)
    summary = analysis.summarise(records)
    first = summary[(summary["rule"] == "constant") & (summary["width"] == 16)].iloc[0]
    assert (first["value"], first["seeds"]) == (1.5, 2)
    slopes = analysis.slopes(records).set_index("rule")
    assert slopes.loc["constant", "slope"] == pytest.approx(1.0)
    assert slopes.loc["constant", "ratio"] == pytest.approx(4.0)
    assert slopes.loc["mup", "slope"] == pytest.approx(0.0, abs=1e-12)
    table = analysis.slope_table(records)["g"]
    assert list(table.index) == ["constant", "mup"] and list(table.columns) == ["block1"]


def test_figure_has_a_panel_per_rule_network_and_quantity(tmp_path):
    records = []
    for rule in ("constant", "mup"):
        for net, groups in (("g", ["mapping", "block1", "output"]), ("d", ["block1", "logit"])):
            for group in groups:
                for w in (16, 32, 64, 128):
                    for step in (0, 1, 2):
                        records.append({"rule": rule, "network": net, "group": group, "width": w, "seed": 0,
                                        "step": step, "quantity": "rms", "value": 0.5 + w / 100})
                        if step:
                            records.append({"rule": rule, "network": net, "group": group, "width": w, "seed": 0,
                                            "step": step, "quantity": "delta_rms", "value": 1e-3 * w})
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"settings": {"sweep": "s", "steps": 2}, "quantities": {"rms": "activation RMS"},
                                "records": records}))
    settings, loaded = analysis.load(path)
    png = analysis.plot(loaded, settings, tmp_path / "c.png")
    assert png.stat().st_size > 10_000
    fig = analysis.figure(loaded, settings)
    assert len(fig.axes) == 2 * 2 * 2 and tick_label_problems(fig) == []
    assert [ax.get_title() for ax in fig.axes[:4]] == ["constant: G activation RMS", "constant: G delta_rms",
                                                       "constant: D activation RMS", "constant: D delta_rms"]
    with pytest.raises(ValueError, match="not a coordinate check's JSON"):
        (tmp_path / "bad.json").write_text("{}")
        analysis.load(tmp_path / "bad.json")


def test_trials_narrow_the_sweep_to_one_shape_lr_and_the_seeds():
    spec = load_spec(SWEEPS / "width_lr_wide.yaml")  # widths 16-128, base LRs 2e-3 .. 3.2e-2, 8 seeds
    trials = coord_check_trials(spec, seeds=2, batch=16)
    assert len(trials) == 4 * 2 * 2  # widths x rules x seeds
    assert {t.base_lr for t in trials} == {8e-3}  # the middle base LR
    gat64 = next(t for t in trials if t.lr_rule == "gat" and t.config.g.width == 64 and t.config.seed == 1)
    assert (gat64.config.lr_g, gat64.config.lr_d, gat64.config.g, gat64.config.d) == (
        4e-3, 4e-3, NetConfig(64, 4, 4), NetConfig(64, 4, 4))
    assert (gat64.config.batch, gat64.config.num_threads, gat64.config.d_proj_dim) == (16, 1, 256)
    imagenet = coord_check_trials(load_spec(SWEEPS / "imagenet256_gat.yaml"), seeds=1)
    assert [(t.config.g.width, t.config.g.depth, t.config.g.heads) for t in imagenet] == [
        (384, 12, 6), (768, 12, 12), (1024, 12, 16), (1152, 12, 18)]  # the sizes' widths at S's depth and head dim
    with pytest.raises(SweepFileError, match="width 24 is not divisible by head_dim=16"):
        coord_check_trials(spec, [16, 24])


def invoke(*args: str):
    result = runner.invoke(cli.app, list(args))
    assert "Traceback" not in result.output, result.output
    return result


def test_command_dry_run_prints_each_rules_lrs_and_trains_nothing(tmp_path):
    result = invoke("coord-check", str(SWEEPS / "smoke.yaml"), "--set", "lr.rules=[constant,gat,mup,power0.5]",
                    "--widths", "32,128", "--dry-run", "--out", str(tmp_path / "never"))
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split()[1:] for line in result.output.splitlines()
            if line.strip().split()[:1] in (["constant"], ["gat"], ["mup"], ["power0.5"])}
    assert rows["constant"] == ["0.001", "0.001"] and rows["gat"] == ["0.001", "0.00025"]
    assert rows["power0.5"] == ["0.001", "0.0005"]
    assert rows["mup"] == ["0.001", "0.001,", "hidden/output", "0.00025"]
    assert "widths 32, 128 (depth 4, head dim 16, patch 2; D the shape of G)" in result.output
    assert "1 seed(s)" not in result.output and "2 seed(s) x 5 steps at batch 16" in result.output
    assert not (tmp_path / "never").exists()
    bad = invoke("coord-check", str(SWEEPS / "smoke.yaml"), "--widths", "32,x")
    assert bad.exit_code == 2 and "write comma-separated widths, e.g. 16,32,64" in bad.output
    bad = invoke("coord-check", str(SWEEPS / "smoke.yaml"), "--widths", "24", "--dry-run")
    assert bad.exit_code == 2 and "error: coordinate check of sweep smoke" in bad.output and "width 24" in bad.output


def test_command_writes_json_and_figure_and_logs_them_to_the_parent_run(tmp_path):
    out = tmp_path / "sweep"
    uri = f"sqlite:///{out / 'mlflow.db'}"
    out.mkdir()
    experiment = open_experiment(uri, "smoke", out / "mlartifacts")
    parent = start_parent_run(uri, experiment, "smoke", "hash", [])
    (out / "sweep.json").write_text(json.dumps({"tracking_uri": uri, "parent_run_id": parent}))
    result = invoke("coord-check", str(SWEEPS / "smoke.yaml"), "--set", f"output_dir={out}", "--widths", "16,32",
                    "--steps", "2", "--seeds", "1", "--batch", "4")
    assert result.exit_code == 0, result.output
    files = out / "coord_check"
    settings, records = analysis.load(files / "coord_check.json")
    assert (settings["sweep"], settings["widths"], settings["steps"], settings["seeds"], settings["batch"]) == (
        "smoke", [16, 32], 2, 1, 4)
    assert settings["rules"] == ["gat", "constant"] and settings["base_lr"] == 1e-3 and settings["base_width"] == 32
    assert len(records) == 2 * 2 * 12 * (1 + 2 * 2)  # rules x widths x groups x (step 0 + 2 steps x 2 quantities)
    assert (files / "coord_check.png").stat().st_size > 10_000
    assert "G: slope of log(RMS change per step) against log(width)" in result.output
    assert f"logged to MLflow parent run {parent} (artifacts coord_check/)" in result.output
    from mlflow import MlflowClient

    logged = {f.path for f in MlflowClient(uri).list_artifacts(parent, "coord_check")}
    assert logged == {"coord_check/coord_check.json", "coord_check/coord_check.png"}
    again = invoke("coord-check", str(SWEEPS / "smoke.yaml"), "--widths", "16", "--steps", "1", "--seeds", "1",
                   "--batch", "2", "--out", str(tmp_path / "alone"), "--set", f"output_dir={tmp_path / 'none'}")
    assert again.exit_code == 0 and "not logged to MLflow: " in again.output
    assert "holds no run of sweep smoke" in again.output
    assert np.isfinite(analysis.load(tmp_path / "alone" / "coord_check.json")[1]["value"]).all()


def test_the_analysis_module_does_not_import_torch():
    code = "import sys, analysis.coord_check; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
