"""LR rules (core/lr_rules.py): the base-width invariant, the paper's values, muP multipliers,
the power<a> family and its names, and that the multipliers reach the optimiser's parameter
groups."""

import re

import pytest

from core.config import ConfigError, LRMultipliers, NetConfig, TrainConfig
from core.gan.model import build_models
from core.presets import PAPER_BASE_LR, PAPER_BASE_WIDTH
from core.gan.step import make_optimizer
from core.lr_rules import RULES, apply_rule, constant, gat, mup, needs_base_width, rule_name


@pytest.mark.parametrize("rule", [*sorted(RULES), "power0", "power0.62", "power1", "power-0.25"])
@pytest.mark.parametrize("base_lr, base_width", [(2e-4, 768), (1e-3, 64), (3.7e-5, 1152)])
def test_every_rule_returns_the_base_lr_at_the_base_width(rule, base_lr, base_width):
    out = apply_rule(rule, base_lr, base_width, base_width)
    assert out.lr == base_lr
    assert out.mult == LRMultipliers(1.0, 1.0, 1.0)


@pytest.mark.parametrize("width, expected", [(384, 4e-4), (768, 2e-4), (1024, 1.5e-4), (1152, 1.3333e-4)])
def test_gat_rule_gives_the_papers_learning_rates(width, expected):
    out = gat(PAPER_BASE_LR, width, PAPER_BASE_WIDTH)
    assert out.lr == pytest.approx(expected, rel=1e-4)
    assert out.mult == LRMultipliers()


def test_constant_rule_ignores_width():
    assert {constant(5e-4, w, 64).lr for w in (16, 32, 64, 128, 4096)} == {5e-4}


def test_mup_scales_hidden_and_output_matrices_only():
    out = mup(1e-3, 256, 64)
    assert out.lr == 1e-3
    assert out.mult == LRMultipliers(vector=1.0, hidden=0.25, output=0.25)
    narrow = mup(1e-3, 32, 64)
    assert narrow.mult == LRMultipliers(vector=1.0, hidden=2.0, output=2.0)


def test_gat_and_mup_differ_only_on_vectors():
    """Both give matrices base_lr * C0 / C; gat also scales vectors and embeddings, mup does not."""
    g, m = gat(2e-4, 512, 128), mup(2e-4, 512, 128)
    for kind in ("hidden", "output"):
        assert g.lr * getattr(g.mult, kind) == m.lr * getattr(m.mult, kind) == 5e-5
    assert (g.lr * g.mult.vector, m.lr * m.mult.vector) == (5e-5, 2e-4)


def test_bad_arguments_raise_config_error():
    with pytest.raises(ConfigError, match="unknown LR rule 'sqrt'"):
        apply_rule("sqrt", 1e-4, 64, 64)
    with pytest.raises(ConfigError, match="positive"):
        gat(-1e-4, 64, 64)
    with pytest.raises(ConfigError, match="positive"):
        mup(1e-4, 0, 64)


def test_mup_multipliers_reach_the_optimizer_groups():
    net = NetConfig(width=64, depth=4, heads=4)
    rule = mup(1e-3, 64, 32)  # twice the base width: hidden and output at half the LR
    cfg = TrainConfig(dataset="random", g=net, d=net, d_proj_dim=32, lr_g=rule.lr, lr_mult_g=rule.mult)
    G, _ = build_models(cfg)
    groups = {g["kind"]: g["lr"] for g in make_optimizer(G, cfg.lr_g, cfg.lr_mult_g, cfg).param_groups}
    assert groups == {"vector": 1e-3, "hidden": 5e-4, "output": 5e-4}


def test_power_rule_scales_the_lr_by_the_width_ratio_to_the_power():
    assert apply_rule("power0.5", 1e-3, 128, 32).lr == 5e-4  # 4x the base width: base_lr / 2
    assert apply_rule("power0.5", 1e-3, 8, 32).lr == 2e-3  # a quarter: base_lr * 2
    assert apply_rule("power2", 1e-3, 64, 32).lr == 2.5e-4
    assert apply_rule("power-0.25", 1e-3, 512, 32).lr == pytest.approx(2e-3, rel=1e-12)  # 16^0.25 = 2
    assert apply_rule("power0.62", 1e-3, 128, 32).lr == pytest.approx(1e-3 * 4 ** -0.62, rel=1e-12)
    assert apply_rule("power0.62", 1e-3, 128, 32).mult == LRMultipliers()


@pytest.mark.parametrize("width", [8, 16, 24, 32, 48, 64, 100, 768, 1152, 4096])
def test_power1_is_gat_and_power0_is_constant_at_every_width(width):
    assert apply_rule("power1", 2e-4, width, 32) == gat(2e-4, width, 32)
    assert apply_rule("power0", 2e-4, width, 32) == constant(2e-4, width, 32)


def test_power_rule_names_are_spelt_one_way():
    """A power rule's name is kept as written but for the spelling of its number, so that one rule
    has one name in trial names and in sweep.lr_rule."""
    assert [rule_name(n) for n in ("gat", "power0.5", "power0.50", "power00.5", "power1.0", "power100.00",
                                   "power-0", "power-0.250")] == [
        "gat", "power0.5", "power0.5", "power0.5", "power1", "power100", "power0", "power-0.25"]
    for bad in ("powerx", "power", "power.5", "power1e-1", "power+1", "Power1", "power 1", "power0.5x"):
        with pytest.raises(ConfigError, match=f"unknown LR rule {re.escape(repr(bad))}; choose constant, gat, mup, or power<a> "
                                              r"with a decimal exponent a.*e\.g\. power0\.5, power1, power-0\.25"):
            apply_rule(bad, 1e-4, 64, 64)


def test_power_rules_need_a_base_width():
    assert [needs_base_width(r) for r in ("constant", "gat", "mup", "power0", "power0.5")] == [
        False, True, True, True, True]
    with pytest.raises(ConfigError, match=r"lr.base_width is required .* \(gat, mup, power<a>\)"):
        apply_rule("power0.5", 1e-3, 64, None)
