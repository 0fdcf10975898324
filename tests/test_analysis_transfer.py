"""LR-transfer analysis (analysis.transfer): best-LR interpolation, width slope, verdicts, and the
scoring of trials from the tidy tables (diverged, running and failed trials)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.transfer import analyse_transfer, interpolate_best_lr, verdict, width_slope

LRS = np.array([1e-4, 2e-4, 4e-4, 8e-4, 1.6e-3])


def parabola_scores(best: float, lrs: np.ndarray = LRS) -> np.ndarray:
    """FD whose log is a parabola in log LR with its minimum (FD 5) at ``best``."""
    return 5.0 * np.exp(0.4 * np.log(lrs / best) ** 2)


def test_best_lr_is_the_parabola_vertex_between_grid_points():
    best, at_edge = interpolate_best_lr(LRS, parabola_scores(3.1e-4))
    assert best == pytest.approx(3.1e-4, rel=1e-9) and not at_edge


def test_best_lr_at_the_grid_edge_or_next_to_a_diverged_lr():
    assert interpolate_best_lr(LRS, parabola_scores(5e-5)) == (1e-4, True)
    scores = parabola_scores(1.3e-3)
    scores[-1] = np.inf  # the largest LR diverged: no parabola, the grid point is returned
    assert interpolate_best_lr(LRS, scores) == (8e-4, False)
    with pytest.raises(ValueError, match="every LR diverged"):
        interpolate_best_lr(LRS, np.full(5, np.inf))


def test_width_slope_recovered_from_synthetic_optima():
    rng = np.random.default_rng(0)
    widths = np.array([64, 128, 256, 512, 1024])
    optima = 1e-3 * (widths / 64.0) ** -0.7 * np.exp(rng.normal(0, 0.05, 5))
    # the optima are found by interpolation on a grid, as in a real sweep
    grid = np.geomspace(1e-5, 1e-2, 13)
    best = [interpolate_best_lr(grid, parabola_scores(o, grid))[0] for o in optima]
    slope, (lo, hi) = width_slope(widths, best)
    assert slope == pytest.approx(-0.7, abs=0.05) and lo < -0.7 < hi
    assert verdict(slope, (lo, hi))[0] is False
    assert width_slope([64, 128], [1e-3, 5e-4]) == (pytest.approx(-1.0), None)


@pytest.mark.parametrize("slope, ci, transfers, words", [
    (0.02, (-0.1, 0.15), True, "lies within"),
    (-0.2, (-0.8, 0.4), True, "contains 0 and excludes"),
    (-0.95, (-1.2, -0.7), False, "falls with width"),
    (0.6, (0.3, 0.9), False, "grows with width"),
    (-0.4, (-1.5, 0.7), None, "inconclusive"),
    (0.1, None, True, "2 widths only"),
    (None, None, None, "insufficient data"),
])
def test_verdicts(slope, ci, transfers, words):
    got, text = verdict(slope, ci)
    assert got is transfers and words in text


def synthetic_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Trials at 3 widths x 5 LRs x 2 rules: constant (best LR ~ 1/width) and gat (best LR fixed)."""
    trials, points = [], []
    for rule in ("constant", "gat"):
        for width in (64, 128, 256):
            best = 4e-4 * 64 / width if rule == "constant" else 4e-4
            for lr in LRS:
                name = f"{rule}-{width}-{lr:g}"
                status = "finished"
                iters = [100, 200, 300]
                if (rule, width, lr) == ("gat", 256, 1.6e-3):
                    status = "diverged"
                if (rule, width, lr) == ("gat", 128, 1e-4):
                    status, iters = "running", [100, 200]   # the group is compared at iter 200
                if (rule, width, lr) == ("constant", 64, 1e-4):
                    status, iters = "failed", []
                trials.append({"trial": name, "run_id": name, "status": status, "lr_rule": rule,
                               "g_width": width, "base_lr": lr, "lr_g": lr})
                for it in iters:
                    # progress multiplies every FD by the same factor; running trial is ahead at 200
                    fd = parabola_scores(best, np.array([lr]))[0] * (300 / it)
                    points.append({"run_id": name, "iter": it, "fd": fd})
    return pd.DataFrame(points), pd.DataFrame(trials)


def test_analyse_transfer_on_synthetic_sweep():
    points, trials = synthetic_tables()
    result = analyse_transfer(points, trials)
    assert set(result) == {"constant", "gat"}
    const, gat = result["constant"], result["gat"]
    assert [o.best_lr for o in const.optima] == pytest.approx([4e-4, 2e-4, 1e-4], rel=1e-9)
    assert const.slope == pytest.approx(-1.0) and const.transfers is False
    assert const.optima[2].at_edge  # best LR 1e-4 is the smallest tried at width 256
    assert "widen the grid" in const.verdict and "negative slope" in const.expected
    assert gat.slope == pytest.approx(0.0, abs=1e-9) and gat.transfers is True
    by_width = {o.width: o for o in gat.optima}
    assert by_width[256].scores[-1] == np.inf              # diverged LR scores +inf
    assert by_width[128].common_iter == 200 and by_width[64].common_iter == 300
    assert by_width[128].best_score == pytest.approx(5.0 * 300 / 200)
    assert 1e-4 not in result["constant"].optima[0].lrs    # the failed trial is left out
