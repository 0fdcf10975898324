"""LR rules (scaling/lr_rules.py): the base-width invariant, the paper's values, muP multipliers,
and that the multipliers reach the optimiser's parameter groups."""

import pytest

from core.config import ConfigError, LRMultipliers, NetConfig, TrainConfig
from core.model import build_models
from core.presets import PAPER_BASE_LR, PAPER_BASE_WIDTH
from core.step import make_optimizer
from scaling.lr_rules import RULES, apply_rule, constant, gat, mup


@pytest.mark.parametrize("rule", sorted(RULES))
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
