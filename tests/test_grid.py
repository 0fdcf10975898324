"""Grid expansion (scaling/grid.py): trial count, names, per-network LRs, the sweep hash, and the
ImageNet sweep's dry-run numbers (the paper's LRs and parameter counts, docs/METHOD.md §5-§6)."""

import json
from pathlib import Path

import pytest

from core.config import ConfigError, LRMultipliers
from scaling import grid
from scaling.grid import (
    expand,
    shared_trainings,
    sweep_hash,
    training_key,
    trial_cost,
    trial_records,
    trial_rows,
)
from core.lr_rules import apply_rule
from scaling.spec import SweepSpec, load_spec

SWEEPS = Path(__file__).resolve().parent.parent / "sweeps"


def spec(**changes) -> SweepSpec:
    data = {
        "name": "g", "dataset": "random",
        "model": {"widths": [32, 64], "depths": [4], "head_dim": 16},
        "lr": {"base_lrs": [1e-3, 2e-3], "rules": ["gat", "constant"], "base_width": 32},
        "seeds": [0, 1], "budget": {"iterations": 7}, "train": {"d_proj_dim": 32, "batch": 8},
    }
    for key, value in changes.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and key in data else value
    return SweepSpec.model_validate(data)


def test_cross_product_in_grid_order_with_readable_unique_names():
    trials = expand(spec())
    assert len(trials) == 2 * 2 * 2 * 2
    assert [t.name for t in trials[:5]] == [
        "w32-d4-p2_gat_lr0.001_s0", "w32-d4-p2_gat_lr0.001_s1", "w32-d4-p2_gat_lr0.002_s0",
        "w32-d4-p2_gat_lr0.002_s1", "w32-d4-p2_constant_lr0.001_s0"]
    assert len({t.name for t in trials}) == len(trials)
    first = trials[0].config
    assert (first.name, first.g.width, first.g.heads, first.d, first.iterations, first.seed) == (
        trials[0].name, 32, 2, first.g, 7, 0)
    assert trials[0].sweep_params() == {"sweep.size": "w32-d4", "sweep.lr_rule": "gat",
                                        "sweep.base_lr": 1e-3, "sweep.base_width": 32}


def test_run_labels_put_what_differs_first_and_tell_the_default_sweep_apart_in_20_characters():
    # The MLflow UI's runs table showed 'w64-d4-p2_con...' of each trial name: not the rule or the LR.
    trials = expand(load_spec(SWEEPS / "width_lr.yaml"))
    labels = [t.label for t in trials]
    assert labels[:4] == ["gat 4e-3 w16-d4 s0 p2", "gat 8e-3 w16-d4 s0 p2", "gat 1.6e-2 w16-d4 s0 p2",
                          "constant 4e-3 w16-d4 s0 p2"]
    assert len({label[:20] for label in labels}) == len(trials) == 18
    for path in SWEEPS.glob("*.yaml"):  # as unique as the trial names in every shipped sweep
        shipped = expand(load_spec(path))
        assert len({t.label for t in shipped}) == len(shipped), path.name


def test_learning_rates_follow_each_rule_and_network_width():
    trials = {t.name: t.config for t in expand(spec(
        model={"discriminator": {"widths": [128], "depths": [2], "heads": 4}},
        lr={"rules": ["gat", "constant", "mup"], "base_lrs": [1e-3]}, seeds=[0]))}
    gat = trials["Gw64-d4+Dw128-d2-p2_gat_lr0.001_s0"]
    assert (gat.lr_g, gat.lr_d) == (5e-4, 2.5e-4)  # 1e-3 * 32/64 and 1e-3 * 32/128
    assert (gat.g.width, gat.d.width, gat.d.depth) == (64, 128, 2)
    const = trials["Gw64-d4+Dw128-d2-p2_constant_lr0.001_s0"]
    assert (const.lr_g, const.lr_d) == (1e-3, 1e-3)
    mup = trials["Gw64-d4+Dw128-d2-p2_mup_lr0.001_s0"]
    assert (mup.lr_g, mup.lr_d) == (1e-3, 1e-3)
    assert (mup.lr_mult_g, mup.lr_mult_d) == (LRMultipliers(1.0, 0.5, 0.5), LRMultipliers(1.0, 0.25, 0.25))


def test_repeated_trainings_are_found_across_rules():
    """gat at width C and base LR b trains exactly like constant at b * C0 / C, and like constant
    at b at the base width: those trials repeat the earlier one."""
    trials = expand(spec(seeds=[0]))  # widths 32 (= base width) and 64; base LRs 1e-3, 2e-3
    assert shared_trainings(trials) == {
        "w32-d4-p2_constant_lr0.001_s0": "w32-d4-p2_gat_lr0.001_s0",
        "w32-d4-p2_constant_lr0.002_s0": "w32-d4-p2_gat_lr0.002_s0",
        "w64-d4-p2_constant_lr0.001_s0": "w64-d4-p2_gat_lr0.002_s0",  # gat: 2e-3 * 32/64 = 1e-3
    }
    assert training_key(trials[0].config) == training_key(trials[0].config.replace(name="other"))
    assert training_key(trials[0].config) != training_key(trials[0].config.replace(seed=1))
    # extending a sweep: a trial that already trained keeps its training; the earlier new one copies it
    assert shared_trainings(trials, trained={"w64-d4-p2_constant_lr0.001_s0"})["w64-d4-p2_gat_lr0.002_s0"] == \
        "w64-d4-p2_constant_lr0.001_s0"


def test_power_rules_name_trials_as_spelt_and_repeat_the_rules_they_equal():
    """power1 trains exactly like gat and power0 like constant, so those trials are copies; the
    names carry the canonical spelling (power0.50 -> power0.5)."""
    trials = expand(spec(lr={"rules": ["gat", "constant", "power1", "power0", "power0.50", "power-0.5"],
                             "base_lrs": [1e-3]}, seeds=[0]))
    by_name = {t.name: t for t in trials}
    half, minus = by_name["w64-d4-p2_power0.5_lr0.001_s0"], by_name["w64-d4-p2_power-0.5_lr0.001_s0"]
    assert (half.config.lr_g, half.config.lr_d) == (1e-3 * 0.5 ** 0.5, 1e-3 * 0.5 ** 0.5)
    assert minus.config.lr_g == pytest.approx(1e-3 * 2 ** 0.5, rel=1e-12)
    assert half.sweep_params() == {"sweep.size": "w64-d4", "sweep.lr_rule": "power0.5", "sweep.base_lr": 1e-3,
                                   "sweep.base_width": 32}
    repeats = shared_trainings(trials)
    assert repeats["w64-d4-p2_power1_lr0.001_s0"] == "w64-d4-p2_gat_lr0.001_s0"
    assert repeats["w64-d4-p2_power0_lr0.001_s0"] == "w64-d4-p2_constant_lr0.001_s0"
    assert "w64-d4-p2_power0.5_lr0.001_s0" not in repeats and "w64-d4-p2_power-0.5_lr0.001_s0" not in repeats


def test_trial_records_are_flat_json_values():
    trials = expand(spec(seeds=[0]))
    record = trial_records(trials)["w64-d4-p2_gat_lr0.002_s0"]
    assert record["g.width"] == 64 and record["lr_g"] == 1e-3 and record["sweep.lr_rule"] == "gat"
    assert record == json.loads(json.dumps(record))


def test_hash_tracks_trials_not_execution_settings():
    base = sweep_hash(expand(spec()))
    assert base == sweep_hash(expand(spec()))
    assert base == sweep_hash(expand(spec(resources={"cpus": 2}, max_concurrent=7, output_dir="/x",
                                          tracking_uri="http://h:5000", ray_address="auto")))
    assert base != sweep_hash(expand(spec(lr={"base_lrs": [1e-3, 4e-3]})))
    assert base != sweep_hash(expand(spec(train={"d_proj_dim": 64})))


def test_colliding_names_and_impossible_points_raise():
    with pytest.raises(ConfigError, match="trial names collide: w32-d4-p2_gat_lr0.001_s0, w64-d4-p2_gat_lr0.001_s0 "):
        expand(spec(lr={"base_lrs": [1e-3, 1.0001e-3], "rules": ["gat"]}, seeds=[0]))


def test_trial_cost_counts_parameters_and_flops():
    trial = expand(spec())[0]
    cost = trial_cost(trial.config)
    assert cost.g_params > 0 and cost.d_params > 0
    assert cost.total_flops == cost.flops_per_iter * 7
    # LRs and seeds do not change the work of an iteration: the measurement is shared.
    assert trial_cost(trial.config.replace(lr_g=0.5, seed=9)) == cost


def test_imagenet_sweep_dry_run_matches_the_paper(monkeypatch):
    """docs/METHOD.md §5 (LRs at base 2e-4, width 768) and §6 (parameter counts, /2, within 0.1%;
    D's counts there exclude the REPA projector the sweep trains with).

    FLOP counting of paper-size models takes minutes on 2 cores and has its own tests (core);
    here a stand-in count proportional to width checks that the rows carry it through.
    """
    monkeypatch.setattr(grid, "train_flops_per_iter", lambda cfg: 10**9 * cfg.g.width)
    trials = expand(load_spec(SWEEPS / "imagenet256_gat.yaml"))
    rows = {r["size"]: r for r in trial_rows(trials, shared_trainings(trials))}
    lrs = {"S": 4e-4, "B": 2e-4, "L": 1.5e-4, "XL": 1.3333e-4}
    g_params = {"S": 29.36e6, "B": 116.75e6, "L": 408.75e6, "XL": 602.25e6}
    d_params = {"S": 32.65e6, "B": 97.33e6, "L": 315.17e6, "XL": 459.55e6}  # without the REPA projector
    widths = {"S": 384, "B": 768, "L": 1024, "XL": 1152}
    projector = {s: w * 2048 + 2048 + 2048 * 2048 + 2048 + 2048 * 768 + 768 for s, w in widths.items()}
    assert sorted(rows) == sorted(lrs)
    for size, row in rows.items():
        assert row["lr_g"] == row["lr_d"] == pytest.approx(lrs[size], rel=1e-4)
        assert row["g_params"] == pytest.approx(g_params[size], rel=1e-3)
        assert row["d_params"] - projector[size] == pytest.approx(d_params[size], rel=1e-3)  # repa: true
        assert (row["batch"], row["iterations"], row["patch"]) == (512, 50_000, 2)
        assert row["total_flops"] == row["flops_per_iter"] * 50_000
        assert row["flops_per_iter"] == 10**9 * row["g_width"]


def test_constant_only_sweep_logs_no_base_width_and_width_aware_rules_need_one():
    # Issue 11, finding 9: the base width is only where a rule uses it, never a silent default.
    trials = expand(spec(lr={"rules": ["constant"], "base_lrs": [1e-3], "base_width": None}, seeds=[0]))
    assert [t.config.lr_g for t in trials] == [1e-3, 1e-3]
    assert "sweep.base_width" not in trials[0].sweep_params()
    with pytest.raises(ConfigError, match="lr.base_width is required by the width-aware LR rules"):
        apply_rule("gat", 1e-3, 64, None)
