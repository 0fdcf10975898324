"""Scaling-law fits (analysis.fit), the frontier (analysis.frontier), the paper's points
(analysis.paper) and the log-axis ticks of the figures."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from analysis.figures import (declutter_ticks, log_ticks, lr_transfer_figure, readable_log_axes,
                              tick_label_problems)
from analysis.fit import (HUBER_SCALE, _bounds, _fit_point, _huber, _huber_gauss_newton, _model_log,
                          backtest_largest, fit_law, fit_scaling)
from analysis.frontier import compute_frontier, under_trained_sizes, usable_points
from analysis.paper import (CONVENTION, PAPER_LAW, fit_paper, implied_flops_per_mac, paper_points,
                            train_flops_per_image)

PFLOP_DAY = 1e15 * 86400  # FLOPs
ALPHA, E, A = 0.45, 2.0, 2.7e8  # FD from ~50 at 1e15 FLOPs to ~2.5 at 1e19


def synthetic(seed: int = 0, n: int = 15, noise: float = 0.03):
    rng = np.random.default_rng(seed)
    c = np.logspace(15, 19, n)
    return c, (E + A * c**-ALPHA) * np.exp(rng.normal(0.0, noise, n))


def test_recovers_known_parameters_from_noisy_data():
    c, fd = synthetic()
    fit = fit_scaling(c, fd, "saturating")
    assert fit.ok and fit.n_points == 15 and fit.n_boot_ok >= 900
    assert abs(fit.alpha.value - ALPHA) < 0.02
    assert fit.alpha.lo < ALPHA < fit.alpha.hi and abs(fit.E.value - E) < 0.25
    assert fit.r2_log > 0.99 and fit.rmse_log < 0.05
    # the pure power law recovers a pure power law
    pure = fit_scaling(c, A * c**-ALPHA * np.exp(np.random.default_rng(1).normal(0, 0.03, 15)), "power")
    assert abs(pure.alpha.value - ALPHA) < 0.02 and pure.E.value == 0.0


def test_same_alpha_and_e_in_flops_or_pflop_days():
    c, fd = synthetic()
    for model in ("saturating", "power"):
        flops = fit_scaling(c, fd, model, c_unit="FLOPs")
        days = fit_scaling(c / PFLOP_DAY, fd, model, c_unit="PFLOP-days")
        for name in ("alpha", "E"):
            a, b = getattr(flops, name), getattr(days, name)
            assert a.value == pytest.approx(b.value, rel=1e-6, abs=1e-9)
            assert (a.lo, a.hi) == pytest.approx((b.lo, b.hi), rel=1e-6, abs=1e-9)
        # only A changes, by the unit factor: A_days = A_flops * PFLOP_DAY**-alpha
        assert days.A.value == pytest.approx(flops.A.value * PFLOP_DAY**-flops.alpha.value, rel=1e-6)
        target = float(np.median(fd))
        assert days.compute_for(target).value * PFLOP_DAY == pytest.approx(
            flops.compute_for(target).value, rel=1e-6)


def test_diverged_trial_outlier_is_excluded_and_huber_resists_one_bad_point():
    c, fd = synthetic()
    points = pd.DataFrame({"trial": "good", "status": "finished", "metric_key": "eval/fid5k",
                           "train_flops": c, "fd": fd})
    bad = pd.DataFrame({"trial": "lr-too-high", "status": "diverged", "metric_key": "eval/fid5k",
                        "train_flops": [3e16, 1e17, 3e17], "fd": [0.3, np.nan, 1e4]})
    usable, notes = usable_points(pd.concat([points, bad], ignore_index=True), "eval/fid5k")
    assert len(usable) == 15 and (usable["trial"] == "good").all()
    assert notes == ["left out 3 point(s) of diverged/failed trials (lr-too-high)"]
    front = compute_frontier(usable)
    assert abs(fit_scaling(front["train_flops"], front["fd"]).alpha.value - ALPHA) < 0.02
    # one evaluation 3x too high among 15 (not flagged): the Huber loss keeps alpha close
    spoiled = fd.copy()
    spoiled[7] *= 3.0
    assert abs(fit_scaling(c, spoiled, "power").alpha.value
               - fit_scaling(c, fd, "power").alpha.value) < 0.02


def test_cannot_fit_is_a_clear_result_not_nan():
    fit = fit_scaling([1e15, 1e16, np.nan, 1e17], [10.0, 5.0, 4.0, np.inf], "power")
    assert not fit.ok and fit.n_points == 2
    assert "2 usable point(s)" in fit.reason and "need at least 3" in fit.reason
    assert fit.notes == ("dropped 2 point(s) with non-finite or non-positive compute/FD",)
    assert json.loads(json.dumps(fit.to_dict(), allow_nan=False))["ok"] is False
    with pytest.raises(ValueError, match="no power fit to use"):
        fit.predict(1e18)
    # the saturating model needs 4 points; 3 distinct compute values are not enough
    fit = fit_scaling([1e15, 1e15, 1e16, 1e17], [10.0, 9.0, 5.0, 3.0], "saturating")
    assert not fit.ok and "3 distinct compute value(s); need at least 4" in fit.reason


def test_prediction_and_compute_for_target_invert_each_other():
    c = np.logspace(15, 19, 10)
    fit = fit_scaling(c, E + A * c**-ALPHA, "saturating", n_boot=200)
    assert fit.alpha.value == pytest.approx(ALPHA, abs=1e-4) and fit.E.value == pytest.approx(E, abs=1e-3)
    need = fit.compute_for(3.0)
    assert float(fit.predict(need.value)[0]) == pytest.approx(3.0, rel=1e-9)
    assert need.value == pytest.approx((A / (3.0 - E)) ** (1 / ALPHA), rel=1e-2)
    assert fit.compute_for(1.5) is None  # below the irreducible term E
    est = fit.predict_estimate(1e20)
    assert est.lo <= est.value <= est.hi and est.value == pytest.approx(E + A * 1e20**-ALPHA, rel=1e-3)
    values = fit.to_dict()
    assert json.dumps(values, allow_nan=False) and values["alpha"]["value"] == fit.alpha.value


def _huber_cost(p, lx, y):
    return _huber(_model_log(p, lx)[0] - y, HUBER_SCALE).sum(axis=-1)


@pytest.mark.parametrize("outlier", [False, True])
def test_vectorised_bootstrap_solver_agrees_with_scipy(outlier):
    c, fd = synthetic(seed=3, n=10, noise=0.03)
    if outlier:  # residuals in the linear part of the Huber loss; the minimum may then be a flat set
        fd[4] *= 2.5
    lx, y = np.log(c / np.exp(np.log(c).mean())), np.log(fd)
    idx = np.random.default_rng(0).integers(0, 10, size=(6, 10))
    for model in ("saturating", "power"):
        start = _fit_point(model, lx, y)
        lower, upper = _bounds(model, np.exp(y[idx].min(axis=1)), lx)
        free = np.array([True, True, model == "saturating"])
        batched, done = _huber_gauss_newton(lx[idx], y[idx], np.tile(start, (6, 1)), lower, upper, free)
        reference = np.array([_fit_point(model, lx[i], y[i]) for i in idx])
        assert done.all()
        np.testing.assert_allclose(_huber_cost(batched, lx[idx], y[idx]),
                                   [_huber_cost(r, lx[i], y[i]) for r, i in zip(reference, idx)],
                                   rtol=1e-9, atol=1e-12)
        if not outlier and model == "saturating":  # every residual in the quadratic zone: unique
            np.testing.assert_allclose(batched, reference, atol=1e-4)


def test_frontier_is_the_lower_envelope():
    pts = pd.DataFrame({"train_flops": [1, 2, 2, 3, 4, 5, 6], "fd": [10, 12, 8, 9, 7, 7, 5]})
    front = compute_frontier(pts)
    assert list(zip(front["train_flops"], front["fd"])) == [(1, 10), (2, 8), (4, 7), (6, 5)]


def test_copied_trials_enter_the_frontier_once():
    # A sweep's copied runs (tag gat_sweep.same_as) repeat their source's (compute, FD) exactly.
    pts = pd.DataFrame({"train_flops": [1, 1, 2, 2], "fd": [9, 9, 6, 6], "trial": ["a", "a-copy", "b", "b-copy"]})
    assert compute_frontier(pts)["trial"].tolist() == ["a", "b"]


def test_paper_points_compute_and_fit():
    pts = paper_points()
    assert pts["size"].tolist() == ["S", "B", "L", "XL"]
    # 2 FLOPs/MAC x (4 + 15) forward-equivalents x G-blocks MACs x 512 x 50K
    assert train_flops_per_image(1.0, 1.0) == 38.0
    assert pts["train_flops"].tolist() == pytest.approx(
        [38 * g * 1e9 * 512 * 50_000 for g in (6.1, 23, 80, 118)], rel=1e-12)
    assert pts["train_gflops"].iloc[0] == pytest.approx(5.934e9, rel=1e-3)
    assert "estimated" in CONVENTION
    fit = fit_paper("power")
    assert fit.ok and fit.c_unit == "GFLOPs" and fit.n_boot_ok >= 900
    assert fit.alpha.value == pytest.approx(0.4655, abs=5e-4)
    assert fit.alpha.lo == pytest.approx(0.354, abs=0.01) and fit.alpha.hi == pytest.approx(0.582, abs=0.01)
    assert fit.alpha.lo < PAPER_LAW["alpha"] < fit.alpha.hi  # the paper's exponent is inside
    assert fit.A.value == pytest.approx(5.66e5, rel=0.01)
    assert fit.r2_log == pytest.approx(0.988, abs=1e-3)
    # the paper's A (3.52e5, same exponent) corresponds to ~22 FLOPs per G-forward MAC, not 38
    assert implied_flops_per_mac() == pytest.approx(22.2, abs=0.1)


@pytest.mark.parametrize("lo, hi, expected", [
    (0.145, 0.315, [0.15, 0.2, 0.25, 0.3]),     # less than a decade, few integer mantissas
    (3.6, 6.2, [4.0, 5.0, 6.0]),
    (4.1, 4.4, [4.1, 4.2, 4.3, 4.4]),           # very narrow: round linear steps
    (20.0, 300.0, [20.0, 50.0, 100.0, 200.0]),  # 1-3 decades: 1-2-5
    (1e10, 1e19, [1e10, 1e12, 1e14, 1e16, 1e18]),
])
def test_log_ticks_are_readable(lo, hi, expected):
    assert log_ticks(lo, hi) == pytest.approx(expected)


# ---- cross-size laws: refusal, backtest, under-trained sizes; tick labels -------------------------

def learning_curves(sizes: dict[str, float], fd_of_c, n: int = 4) -> pd.DataFrame:
    """Each size trains up to its budget (FLOPs), evaluated at n geometrically spaced points."""
    rows = [{"size": s, "train_flops": c, "fd": fd_of_c(c)}
            for s, budget in sizes.items() for c in np.geomspace(budget / 8, budget, n)]
    return pd.DataFrame(rows)


def test_law_from_two_sizes_is_refused_as_a_learning_curve():
    pts = learning_curves({"w16": 1e12, "w32": 4e12}, lambda c: 100 * (c / 1e12) ** -0.5)
    fit = fit_law(compute_frontier(pts), "power", n_boot=0)
    assert not fit.ok and fit.alpha is None
    assert fit.reason == ("no cross-size law: the compute frontier holds 2 size(s) (w16, w32); it "
                          "shows the learning curve of w16, w32, not a scaling law across sizes "
                          "(need at least 3 sizes on the frontier)")
    three = learning_curves({"w16": 1e12, "w32": 4e12, "w64": 1.6e13}, lambda c: 100 * (c / 1e12) ** -0.5)
    assert fit_law(compute_frontier(three), "power", n_boot=0).alpha.value == pytest.approx(0.5)


def test_backtest_error_on_a_constructed_example():
    law = lambda c: 100 * (c / 1e12) ** -0.5  # noqa: E731
    budgets = {"w16": 1e12, "w32": 4e12, "w64": 1.6e13, "w128": 6.4e13}
    pts = learning_curves(budgets, law)
    # the largest size reaches only 1.25 x the law's FD: the law promises 20% less than it got
    big = pts["size"] == "w128"
    pts.loc[big, "fd"] = pts.loc[big, "fd"] * 1.25
    bt = backtest_largest(pts, list(budgets), budgets, "power", n_boot=200)
    assert bt.ok and bt.held_out == "w128" and bt.compute == 6.4e13
    assert bt.predicted.value == pytest.approx(law(6.4e13), rel=1e-6)   # 12.5
    assert bt.observed == pytest.approx(1.25 * 12.5) and bt.error == pytest.approx(-0.2, abs=1e-6)
    assert bt.covered is False and "error -20%" in str(bt)
    # with 3 sizes the law without the largest rests on 2: no backtest, hence no prediction
    three = {k: budgets[k] for k in ("w16", "w32", "w64")}
    no = backtest_largest(learning_curves(three, law), list(three), three, "power", n_boot=0)
    assert not no.ok and "without the largest size (w64)" in no.reason and "2 size(s) (w16, w32)" in no.reason


def test_a_larger_size_worse_than_a_smaller_one_is_under_trained():
    best = pd.DataFrame({"size": ["w16", "w32", "w64", "w32-d8"], "g_width": [16, 32, 64, 32],
                         "g_depth": [4, 4, 4, 8], "final_fd": [900.0, 700.0, 800.0, 650.0]})
    assert under_trained_sizes(best) == {"w64": "w32"}
    best.loc[3, "final_fd"] = 950.0  # deeper w32 worse than both w16 and w32: named after the best
    assert under_trained_sizes(best) == {"w64": "w32", "w32-d8": "w32"}


def flat_transfer():
    """A rule whose best LR is the same at every width (the 'transfers' outcome)."""
    from analysis.transfer import fit_rule
    rows = [{"width": w, "base_lr": lr, "seed": s, "common_iter": 100,
             "score": 5.0 + 0.5 * np.log(lr / 8e-3) ** 2 + 0.01 * ((s + w + 7 * i) % 3 - 1)}
            for w in (16, 32, 64) for i, lr in enumerate((2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2))
            for s in range(3)]
    return {"gat": fit_rule(pd.DataFrame(rows), "gat", n_boot=100)}


def test_best_lr_panel_keeps_readable_tick_labels_when_every_width_has_the_same_best_lr():
    transfer = flat_transfer()
    assert transfer["gat"].transfers is True
    fig = lr_transfer_figure(transfer)
    declutter_ticks(fig)
    assert tick_label_problems(fig) == []
    panel = fig.axes[-1]
    labels = [t.get_text() for t in panel.get_yticklabels() if t.get_text()]
    lo, hi = panel.get_ylim()
    assert len(labels) >= 3 and lo <= 2e-3 and hi >= 3.2e-2   # the whole LR grid is shown
    # a degenerate range (all points equal) is widened so that ticks exist
    assert log_ticks(0.016 / np.sqrt(2), 0.016 * np.sqrt(2))


def test_dense_log_tick_labels_are_thinned_until_they_do_not_overlap():
    from matplotlib.figure import Figure
    fig = Figure(figsize=(2.0, 1.2))
    ax = fig.subplots()
    ax.plot([1e10, 1e19], [1, 2])
    ax.set_xscale("log")
    readable_log_axes(ax, y=False)
    assert tick_label_problems(fig)          # 5 labels such as 1e+12 do not fit in 2 inches
    declutter_ticks(fig)
    assert tick_label_problems(fig) == [] and len([t for t in ax.get_xticklabels() if t.get_text()]) >= 2


def test_fitted_line_spans_the_fitted_compute_only(tmp_path):
    pts = learning_curves({"w16": 1e12, "w32": 4e12, "w64": 1.6e13}, lambda c: 100 * (c / 1e12) ** -0.5)
    pts["fd"] *= np.exp(np.random.default_rng(0).normal(0, 0.02, len(pts)))
    front = compute_frontier(pts)
    fits = {"power": fit_law(front, "power", n_boot=100)}
    from analysis import figures
    from matplotlib.figure import Figure
    captured = {}
    original = Figure.savefig
    def grab(self, *a, **k):  # noqa: E306
        captured["fig"] = self
        return original(self, *a, **k)
    Figure.savefig = grab
    try:
        figures.fd_vs_compute(pts, front, fits, figures.size_colours(pd.DataFrame(
            {"size": ["w16", "w32", "w64"], "g_width": [16, 32, 64], "g_depth": [4, 4, 4]})),
            "eval/fd", tmp_path / "f.png")
    finally:
        Figure.savefig = original
    line = next(ln for ln in captured["fig"].axes[0].get_lines() if ln.get_label().startswith("A C^-alpha"))
    x = line.get_xdata()
    assert x.min() == pytest.approx(front["train_flops"].min()) and x.max() == pytest.approx(front["train_flops"].max())


def test_lr_panels_of_a_grid_under_a_decade_tick_at_1_2_5_with_readable_gaps():
    """The README's 4e-3..3.2e-2 grid once gave ticks 0.004 0.006 0.008 0.01 0.03 whose labels
    0.008 and 0.01 touched ('0.0080.01') without their boxes overlapping."""
    from analysis.transfer import fit_rule
    rows = [{"width": w, "base_lr": lr, "seed": 0, "common_iter": 100,
             "score": 7.5 + 0.3 * np.log(lr / 1e-2) ** 2 + 0.02 * ((w + 3 * i) % 3 - 1)}
            for w in (16, 32, 64) for i, lr in enumerate((4e-3, 8e-3, 1.6e-2, 3.2e-2))]
    fig = lr_transfer_figure({"gat": fit_rule(pd.DataFrame(rows), "gat", n_boot=50)})
    declutter_ticks(fig)
    assert tick_label_problems(fig) == []
    assert [t.get_text() for t in fig.axes[0].get_xticklabels() if t.get_text()] == ["0.005", "0.01", "0.02"]
    assert log_ticks(3.6e-3, 3.5e-2) == pytest.approx([5e-3, 1e-2, 2e-2])
