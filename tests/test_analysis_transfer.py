"""LR-transfer analysis (analysis.transfer): the trial score, the valley model fitted to all
trainings of a rule, the bootstrap over seeds, the equivalence-test verdicts, the scoring of
trials from the tidy tables, and the simulation study of the verdicts' error rates
(analysis.simulation)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis.fit import Estimate
from analysis.simulation import (B_BOUNDARY, DEFAULT_DESIGN, UNTRAINED, WIDE_DESIGN, Design, Shape, simulate,
                                 synthetic_scores, truth)
from analysis.transfer import (MAX_SEEDS_REPORTED, TOLERANCE, _t_interval, analyse_transfer, decide, fit_rule,
                               rule_trainings, trial_score, trial_scores)

LRS = np.array([1e-4, 2e-4, 4e-4, 8e-4, 1.6e-3])


def test_trial_score_is_the_mean_log_fd_of_the_last_three_evaluations():
    # improved, then blew up: scored by its last evaluations, i.e. badly (not by its best, 49)
    blew_up = [70, 52, 49, 50, 57, 61, 480]
    assert math.exp(trial_score(blew_up, "finished")) == pytest.approx((57 * 61 * 480) ** (1 / 3))
    assert math.exp(trial_score(blew_up, "finished")) == pytest.approx(118.6, abs=0.1)
    assert trial_score([40, 10], "running") == pytest.approx(math.log(20))   # fewer than 3
    assert trial_score([70, 52, 49], "diverged") == math.inf
    assert trial_score([70, 52, float("nan")], "finished") == math.inf      # NaN FD: diverged
    with pytest.raises(ValueError, match="no evaluation"):
        trial_score([], "finished")


def exact_scores(b: float, seeds: int = 3, widths=(64, 128, 256), noise: float = 0.0,
                 seed: int = 0, curvatures=(0.4, 0.4, 0.4)) -> pd.DataFrame:
    """Scores exactly (noise 0) on the model: optimum 4e-4 at width 128, slope ``b``."""
    rng = np.random.default_rng(seed)
    rows = []
    for w, c in zip(widths, curvatures):
        m = math.log(4e-4) + b * math.log(w / 128)
        for lr in LRS:
            for s in range(seeds):
                rows.append({"width": w, "base_lr": lr, "seed": s, "common_iter": 300,
                             "score": 2.0 - 0.2 * math.log(w) + c * (math.log(lr) - m) ** 2
                             + rng.normal(0, noise)})
    return pd.DataFrame(rows)


def test_valley_fit_recovers_a_known_slope():
    res = fit_rule(exact_scores(-0.7, noise=0.0), "constant", n_boot=50)
    assert res.slope.value == pytest.approx(-0.7, abs=1e-9)
    assert res.valley.curvatures == pytest.approx((0.4, 0.4, 0.4), abs=1e-9)
    assert [o.best_lr.value for o in res.optima] == pytest.approx(
        [4e-4 * 2**0.7, 4e-4, 4e-4 * 2**-0.7], rel=1e-9)
    assert res.shift.value == pytest.approx(-0.7 * math.log(4))
    assert res.valley.offsets == pytest.approx([2.0 - 0.2 * math.log(w) for w in (64, 128, 256)])
    assert res.valley.log_fd(64, np.array([4e-4 * 2**0.7])) == pytest.approx([2.0 - 0.2 * math.log(64)])
    assert res.transfers is False and res.verdict.startswith("does not transfer (best LR falls with width)")
    # with noise: recovered within its interval, interval from the bootstrap over 4 seeds
    noisy = fit_rule(exact_scores(-0.7, seeds=4, noise=0.1), "constant", n_boot=200)
    assert noisy.slope.lo < -0.7 < noisy.slope.hi and abs(noisy.slope.value + 0.7) < 0.15
    assert noisy.noise_sd == pytest.approx(0.1, abs=0.03) and noisy.n_seeds == 4


def test_each_width_has_its_own_curvature():
    # valleys 2x more curved per width doubling (as measured: flat at 16, narrow at 64): each
    # width's optimum is recovered exactly, so the slope is (one shared curvature would bias it)
    res = fit_rule(exact_scores(-0.5, curvatures=(0.15, 0.3, 0.6)), "constant", n_boot=50)
    assert res.valley.curvatures == pytest.approx((0.15, 0.3, 0.6), abs=1e-9)
    assert res.slope.value == pytest.approx(-0.5, abs=1e-9)
    assert [o.best_lr.value for o in res.optima] == pytest.approx([4e-4 * 2**0.5, 4e-4, 4e-4 * 2**-0.5], rel=1e-9)


def test_flat_optimum_transfers_and_one_seed_is_inconclusive():
    res = fit_rule(exact_scores(0.0, seeds=3, noise=0.05), "gat", n_boot=200)
    assert res.transfers is True and res.verdict.startswith("transfers: shift of the best LR")
    assert "tolerance x2" in res.verdict and "paper: transfers" in res.expected
    one = fit_rule(exact_scores(0.0, seeds=1, noise=0.05), "gat", n_boot=200)
    assert one.transfers is None and one.shift.lo is None
    assert "one seed, no interval" in one.verdict and one.residual_sd == pytest.approx(0.05, abs=0.03)


def test_optimum_outside_the_lr_grid_is_not_trusted():
    # slope -2.5: the optimum is 2.3e-3 at width 64 and 7e-5 at 256, outside the LRs 1e-4..1.6e-3
    res = fit_rule(exact_scores(-2.5, seeds=3, noise=0.01), "constant", n_boot=100)
    edge = [o.width for o in res.optima if o.at_edge]
    assert edge == [64, 256] and res.transfers is None and not res.optima[1].at_edge
    assert res.verdict.startswith("inconclusive: shift")
    assert "outside the LRs tried at width 64, 256: not trusted" in res.verdict


def test_diverged_lrs_are_excluded_and_marked():
    scores = exact_scores(0.0, seeds=3, noise=0.02)
    scores.loc[(scores["width"] == 256) & (scores["base_lr"] == 1.6e-3), "score"] = math.inf
    res = fit_rule(scores, "gat", n_boot=100)
    w256 = res.optima[2]
    assert w256.diverged_lrs == (1.6e-3,) and w256.scores[-1] == math.inf
    assert w256.best_lr.value == pytest.approx(4e-4, rel=0.05) and res.transfers is True


@pytest.mark.parametrize("shift, lo, hi, outcome, transfers, words", [
    (0.1, -0.2, 0.4, "transfers", True, "transfers: "),
    (-1.4, -1.8, -1.0, "does not transfer", False, "does not transfer (best LR falls with width)"),
    (1.2, 0.8, 1.6, "does not transfer", False, "does not transfer (best LR grows with width)"),
    # the interval excludes x1 but reaches into the tolerance: it moves, by how much is undecided
    (-0.6, -1.0, -0.2, "moves", None, "moves (best LR falls with width; whether by more than x2 is undecided)"),
    (0.75, 0.3, 1.2, "moves", None, "moves (best LR grows with width;"),
    # overlaps both x1 and the tolerance
    (-0.3, -0.9, 0.3, "inconclusive", None, "inconclusive: shift"),
])
def test_equivalence_and_difference_verdicts(shift, lo, hi, outcome, transfers, words):
    span = math.log(4)
    got = decide(Estimate(shift, lo, hi), Estimate(shift / span, lo / span, hi / span),
                 [16, 32, 64], 4, "seed-to-seed SD of log FD 0.20", [])
    assert got.outcome == outcome and got.transfers is transfers and words in got.text
    assert got.text.startswith(outcome)
    if transfers is None:
        # half width must shrink below the gap to the tolerance: (-0.6 +- 0.4) -> 4 x (0.4 / 0.093)^2
        assert got.seeds_needed == math.ceil(4 * ((hi - lo) / 2 / abs(abs(shift) - TOLERANCE)) ** 2)
        assert "seed-to-seed SD of log FD 0.20, 4 seeds" in got.text
    if (shift, lo, hi) == (-0.6, -1.0, -0.2):
        assert got.seeds_needed == 74 and "about 74 seeds would decide against the tolerance" in got.text
    # a width whose optimum lies outside its LRs makes any verdict inconclusive
    edge = decide(Estimate(shift, lo, hi), Estimate(shift / span, lo / span, hi / span),
                  [16, 32, 64], 4, "noise", [64])
    assert edge.outcome == "inconclusive" and edge.transfers is None
    assert edge.text.startswith("inconclusive: shift") and "at width 64: not trusted" in edge.text


def test_a_shift_on_the_tolerance_points_to_a_wider_width_range():
    """The measured case (seeds 0-7 over 16-64): x0.502 [x0.367, x0.687], slope -0.50. No seed count
    decides it; widths spanning exp((log 2 + 0.314) / 0.497) = 7.6x would (16-121)."""
    shift = Estimate(-0.6892, -1.0034, -0.3750)
    got = decide(shift, Estimate(-0.4972, -0.7238, -0.2705), [16, 32, 64], 8, "noise", [])
    assert got.outcome == "moves" and got.seeds_needed > MAX_SEEDS_REPORTED
    assert "more than 100 seeds would be needed; a wider width range would: at slope -0.50, widths " \
           "spanning 7.6x or more (16-121) move the best LR" in got.text
    # a shift that seeds can decide gets no range advice
    clear = decide(Estimate(-1.2, -1.8, -0.6), Estimate(-0.87, -1.3, -0.43), [16, 32, 64], 3, "noise", [])
    assert "wider width range" not in clear.text
    # a slope near 0 would need an absurd range (exp overflowed here once): no advice, no error
    flat = decide(Estimate(1e-9, -0.9, 0.9), Estimate(7e-10, -0.65, 0.65), [16, 32, 64], 2, "noise", [])
    assert flat.outcome == "inconclusive" and "wider width range" not in flat.text


def test_a_nearly_flat_valley_gives_a_huge_but_printable_interval():
    # an optimum extrapolated from a nearly flat valley: thousands in log LR, beyond math.exp
    got = decide(Estimate(2.0, -900.0, 905.0), Estimate(1.4, -650.0, 653.0), [16, 32, 64], 4, "noise", [])
    assert got.outcome == "inconclusive" and "[x<1e-300, x>1e300]" in got.text


def test_seeds_needed_for_a_clear_case():
    # shift -1.2 [-1.8, -0.6]: half width 0.6 must shrink to 1.2 - log 2 = 0.507: 3 x 1.4 = 5 seeds
    got = decide(Estimate(-1.2, -1.8, -0.6), Estimate(-0.87, -1.3, -0.43), [16, 32, 64], 3, "noise", [])
    assert got.outcome == "moves" and got.seeds_needed == math.ceil(3 * (0.6 / (1.2 - TOLERANCE)) ** 2) == 5
    assert "about 5 seeds would decide" in got.text


def test_verdicts_from_the_tidy_tables():
    """Trials at 3 widths x 5 LRs x 2 rules x 3 seeds; diverged, running and failed trials."""
    rng = np.random.default_rng(1)
    trials, points = [], []
    for rule in ("constant", "gat"):
        for width in (64, 128, 256):
            best = 4e-4 * 128 / width if rule == "constant" else 4e-4
            for lr in LRS:
                for seed in range(3):
                    name = f"{rule}-{width}-{lr:g}-{seed}"
                    status, iters = "finished", [100, 200, 300, 400]
                    if (rule, width, lr, seed) == ("gat", 256, 1.6e-3, 0):
                        status = "diverged"
                    if (rule, width, lr, seed) == ("gat", 128, 1e-4, 1):
                        status, iters = "running", [100, 200, 300]  # the group is compared at 300
                    if (rule, width, lr, seed) == ("constant", 64, 1e-4, 2):
                        status, iters = "failed", []
                    trials.append({"trial": name, "run_id": name, "status": status, "lr_rule": rule,
                                   "g_width": width, "base_lr": lr, "lr_g": lr, "seed": seed})
                    for it in iters:
                        fd = 5 * np.exp(0.4 * math.log(lr / best) ** 2 + rng.normal(0, 0.03)) * 400 / it
                        points.append({"run_id": name, "iter": it, "fd": fd})
    result = analyse_transfer(pd.DataFrame(points), pd.DataFrame(trials), n_boot=200)
    const, gat = result["constant"], result["gat"]
    assert const.slope.value == pytest.approx(-1.0, abs=0.1) and const.transfers is False
    assert gat.slope.value == pytest.approx(0.0, abs=0.1) and gat.transfers is True
    by_width = {o.width: o for o in gat.optima}
    assert by_width[256].diverged_lrs == (1.6e-3,)
    assert by_width[128].common_iter == 300 and by_width[64].common_iter == 400
    assert const.n_seeds == 3 and "negative slope" in const.expected


def test_rules_share_the_trainings_of_one_actual_lr():
    """gat and constant at widths 16/32/64 (base width 32), FD a function of the actual LR only:
    each rule is fitted to all 6 actual LRs of a width, its own 5 plus the other rule's extra one,
    so the two slopes differ by exactly 1 and share one interval; a muP-style rule (other
    multipliers off the base width) borrows nothing there."""
    rng = np.random.default_rng(2)
    base_lrs = [2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2]
    actual_fd = {}
    trials, points = [], []
    for rule in ("constant", "gat", "mup"):
        for width in (16, 32, 64):
            for base in base_lrs:
                for seed in range(3):
                    lr = base * 32 / width if rule == "gat" else base
                    mults = "g.hidden=1" if rule != "mup" or width == 32 else f"g.hidden={32 / width:g}"
                    key = (width, round(math.log(lr), 9), mults, seed)
                    if key not in actual_fd:  # one training per actual LR setting and seed
                        best = 8e-3 * (width / 32) ** -0.5
                        actual_fd[key] = [1000 * math.exp(0.3 * math.log(lr / best) ** 2 + rng.normal(0, 0.05))
                                          * 300 / it for it in (100, 200, 300)]
                    name = f"{rule}-{width}-{base:g}-{seed}"
                    trials.append({"trial": name, "run_id": name, "status": "finished", "lr_rule": rule,
                                   "g_width": width, "size": f"w{width}", "base_lr": base, "lr_g": lr,
                                   "lr_d": lr, "lr_mults": mults, "seed": seed})
                    points += [{"run_id": name, "iter": it, "fd": fd}
                               for it, fd in zip((100, 200, 300), actual_fd[key])]
    result = analyse_transfer(pd.DataFrame(points), pd.DataFrame(trials), n_boot=200)
    const, gat, mup = result["constant"], result["gat"], result["mup"]
    # 2 widths x 1 extra LR x 3 seeds borrowed by each scalar rule (w32: identical trainings)
    assert const.n_pooled == gat.n_pooled == 6
    by_width = {o.width: o for o in gat.optima}
    assert by_width[16].lrs == (1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2)  # exactly: no float noise
    assert by_width[64].lrs == pytest.approx((2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2, 6.4e-2))
    assert gat.slope.value - const.slope.value == pytest.approx(1.0, abs=1e-9)
    assert gat.slope.hi - gat.slope.lo == pytest.approx(const.slope.hi - const.slope.lo, rel=1e-6)
    assert const.slope.value == pytest.approx(-0.5, abs=0.1)
    # muP's multipliers differ from the scalar rules' at widths 16 and 64: nothing to borrow there
    # (at width 32 every rule trains the same networks, and those trainings are its own)
    assert mup.n_pooled == 0 and {o.width: len(o.lrs) for o in mup.optima} == {16: 5, 32: 5, 64: 5}


def test_trainings_of_other_architectures_or_depths_never_merge():
    # the same width, LR and seed at patch 2 and 4, and at depth 4 and 8 without a size column
    trials = pd.DataFrame([{"trial": f"t{i}", "run_id": f"t{i}", "status": "finished", "lr_rule": "constant",
                            "g_width": 32, "g_depth": depth, "patch": patch, "base_lr": 1e-3, "lr_g": 1e-3,
                            "seed": 0} for i, (depth, patch) in enumerate([(4, 2), (4, 4), (8, 2)])])
    points = pd.DataFrame([{"run_id": f"t{i}", "iter": 100, "fd": 10.0 + i} for i in range(3)])
    scores = trial_scores(points, trials)
    assert sorted(scores["size"]) == ["w32-d4-p2", "w32-d4-p4", "w32-d8-p2"]
    assert len(rule_trainings(scores, "constant")) == 3


# ---- valleys with a cliff ---------------------------------------------------------------------

def cliff_scores(cliff_lr: float | None, seeds: int = 4, noise: float = 0.05, diverge: bool = False) -> pd.DataFrame:
    """Widths 64/128/256 on LRs 1e-4..1.6e-3 (x2 steps) plus 3.2e-3, optimum 4e-4 at every width,
    curvature 0.15 (flat, as measured); from ``cliff_lr`` up the untrained score (or divergence)."""
    rng = np.random.default_rng(1)
    rows = []
    for w in (64, 128, 256):
        for lr in [*LRS, 3.2e-3]:
            for s in range(seeds):
                score = 7.5 + 0.15 * (math.log(lr) - math.log(4e-4)) ** 2 + rng.normal(0, noise)
                if cliff_lr is not None and lr >= cliff_lr:
                    score = math.inf if diverge else UNTRAINED + rng.normal(0, noise)
                rows.append({"width": w, "base_lr": lr, "seed": s, "common_iter": 300, "score": score})
    return pd.DataFrame(rows)


def test_a_cliff_above_the_optimum_is_left_out_of_the_valley():
    """FD back at its untrained value from 1.6e-3 up (two LR steps above the optimum): those LRs
    leave the valley (they would pull a quadratic's vertex down) and bound the optimum from above."""
    res = fit_rule(cliff_scores(1.6e-3), "gat", n_boot=100)
    for o in res.optima:
        assert o.left_out_lrs == pytest.approx((1.6e-3, 3.2e-3)) and o.diverged_lrs == ()
        assert o.best_lr.value == pytest.approx(4e-4, rel=0.15) and not o.at_edge
    assert res.valley.cliffs == pytest.approx((1.6e-3,) * 3)
    assert res.transfers is True
    # the same data fitted with every LR in the quadratic: its vertex is pulled far from 4e-4
    whole = cliff_scores(1.6e-3)
    vertex = np.polyfit(np.log(whole["base_lr"]), whole["score"], 2)
    assert math.exp(-vertex[1] / (2 * vertex[0])) < 0.8 * 4e-4


def test_a_valley_without_a_cliff_keeps_every_lr_and_divergence_bounds_it():
    res = fit_rule(cliff_scores(None), "gat", n_boot=50)
    assert all(o.left_out_lrs == () for o in res.optima) and res.valley.cliffs == (math.inf,) * 3
    diverged = fit_rule(cliff_scores(1.6e-3, diverge=True), "gat", n_boot=50)
    for o in diverged.optima:
        assert o.diverged_lrs == pytest.approx((1.6e-3, 3.2e-3)) and o.left_out_lrs == ()
        assert o.best_lr.lo < 4e-4 < o.best_lr.hi
    assert diverged.valley.cliffs == pytest.approx((1.6e-3,) * 3)


def test_resamples_without_a_valley_widen_the_interval_instead_of_voiding_it():
    boot = np.concatenate([np.random.default_rng(0).normal(0.0, 1.0, 900), np.full(100, np.nan)])
    lo, hi = _t_interval(0.0, boot, 8)
    t = 2.3646  # t(0.975, 7)
    assert hi - lo > 2 * t * math.sqrt(8 / 7) * 1.0      # 10% without a valley: wider than the SD's
    assert hi - lo < 2 * t * math.sqrt(8 / 7) * 1.3
    assert _t_interval(0.0, np.concatenate([boot[:600], np.full(400, np.nan)]), 8) == (None, None)
    assert _t_interval(0.0, boot, 1) == (None, None)


# ---- simulation study: the verdicts' false rate (docs/ANALYSIS.md has the full table) ----------

def test_simulated_false_verdict_rate_is_at_most_5_percent():
    """A reduced grid of the study in docs/ANALYSIS.md (200 sweeps per cell there): widths 16-64
    and 16-128, b = 0 and -1, 4 seeds, noise 0.24, flat valleys (0.15) with a symmetric, steep,
    cliff or diverging upper side; both rules. 25 sweeps per cell cannot show 5% per cell, so the
    bound is on the pooled rate, and a cell may have at most 3 of 25."""
    results = [r for design in (DEFAULT_DESIGN, WIDE_DESIGN) for b in (0.0, -1.0)
               for shape in ("symmetric", "steep8", "cliff1.5", "diverge1.5")
               for r in simulate(b, noise_sd=0.24, n_seeds=4, n_rep=25, n_boot=100, shape=Shape.parse(shape),
                                 design=design, seed=3).values()]
    assert np.mean([r.false_rate for r in results]) <= 0.05
    assert max(r.false_rate for r in results) <= 3 / 25


@pytest.mark.parametrize("b", [0.0, -1.0])
def test_the_simulated_test_decides_curved_valleys(b):
    results = simulate(b, noise_sd=0.2, n_seeds=4, n_rep=30, n_boot=100, curvature=0.5, seed=5)
    assert all(r.power >= 0.8 and r.false_rate <= 0.05 for r in results.values()), results


def test_on_the_tolerance_boundary_eight_seeds_find_the_direction():
    """The measured sweeps' regime: best actual LR ~ width^-0.5 over 16-64, noise 0.24, flat
    valleys, 8 seeds: neither side of the tolerance can be shown, but the shift's direction is
    ("moves") in most sweeps, for both rules."""
    results = simulate(B_BOUNDARY, noise_sd=0.24, n_seeds=8, n_rep=30, n_boot=100, seed=4)
    for res in results.values():
        assert res.moves >= 0.8 and res.transfers <= 0.05 and res.false_rate <= 0.05, res


def test_synthetic_sweep_has_the_deciding_design_shape():
    s = synthetic_scores(0.0, 0.2, 3, np.random.default_rng(0))
    assert sorted(s["width"].unique()) == [16, 32, 64] and s["base_lr"].nunique() == 5
    assert len(s) == 2 * 3 * 5 * 3 and B_BOUNDARY == pytest.approx(-0.5)
    # one draw per training: where gat and constant train the same actual LR, the scores agree
    both = s.pivot_table(index=["width", "lr", "seed"], columns="lr_rule", values="score").dropna()
    assert len(both) == (4 + 5 + 4) * 3        # actual LRs both rules train at widths 16, 32, 64
    np.testing.assert_array_equal(both["constant"], both["gat"])


def test_synthetic_valley_shapes_above_the_optimum():
    """Noise 0, optimum 8e-3 at every width (b = 0, no jitter): 1.6e-2 is one step above it."""
    def at(shape: str, lr: float) -> float:
        s = synthetic_scores(0.0, 0.0, 1, np.random.default_rng(0), shape=Shape.parse(shape), jitter=0.0)
        row = s[(s["width"] == 32) & (s["lr_rule"] == "constant") & np.isclose(s["lr"], lr)]
        return float(row["score"].iloc[0]) - 7.7 + 0.4 * math.log(2)
    step = math.log(2) ** 2 * 0.15
    assert at("symmetric", 4e-3) == pytest.approx(step) and at("symmetric", 1.6e-2) == pytest.approx(step)
    assert at("steep4", 1.6e-2) == pytest.approx(4 * step) and at("steep4", 4e-3) == pytest.approx(step)
    assert at("cliff2", 1.6e-2) == pytest.approx(step)          # the cliff starts at 2x: not yet
    assert at("cliff1.5", 1.6e-2) == pytest.approx(UNTRAINED - 7.7 + 0.4 * math.log(2))
    assert at("diverge1.5", 1.6e-2) == math.inf
    with pytest.raises(ValueError, match="unknown valley shape"):
        Shape.parse("bumpy")


def test_a_wider_design_moves_the_boundary_and_anchors_the_optimum():
    """Widths 16-128: a factor 2 over 8x width is b = -1/3; the optimum follows the anchor (a
    measured best LR at width 16) along the true slope; at base width 64 gat's grid at 128 is base
    LR / 2."""
    wide = Design(widths=(16, 128), base_lrs=(1e-3, 2e-3, 4e-3, 8e-3), base_width=64, anchor=(1.07e-2, 16))
    assert wide.boundary() == pytest.approx(-1 / 3) and wide.w_ref == pytest.approx(math.sqrt(16 * 128))
    assert truth(-0.5 * wide.log_range) is False and truth(-0.3 * wide.log_range) is True
    assert truth(B_BOUNDARY * DEFAULT_DESIGN.log_range) is None
    assert math.exp(wide.log_centre(-0.5)) == pytest.approx(1.07e-2 * (wide.w_ref / 16) ** -0.5)
    s = synthetic_scores(-0.5, 0.0, 2, np.random.default_rng(0), curvature=0.5, design=wide, jitter=0.0)
    at_128 = s[(s["width"] == 128) & (s["lr_rule"] == "gat")]
    assert sorted(at_128["lr"].unique()) == pytest.approx([5e-4, 1e-3, 2e-3, 4e-3])
    best = s.loc[s[s["width"] == 16]["score"].idxmin()]   # noise 0: the grid point nearest 1.07e-2
    assert best["lr"] == pytest.approx(8e-3)
    with pytest.raises(ValueError, match="2 or more widths"):
        Design(widths=(32,), base_lrs=(1e-3, 2e-3, 4e-3))
    with pytest.raises(ValueError, match="3 or more distinct base LRs"):
        Design(base_lrs=(1e-3, 1e-3, 2e-3))


def test_a_sweep_without_evaluations_has_no_verdict_and_no_crash():
    """`gat-sweep plot` of a sweep that evaluates nothing (eval.every -1, as sweeps/smoke.yaml) or
    has not evaluated yet: every rule is 'insufficient data' (np.isfinite raised a TypeError on
    the empty score column)."""
    trials = pd.DataFrame({"trial": ["gat-w32-s0", "gat-w64-s0"], "run_id": ["a", "b"], "status": ["finished"] * 2,
                           "g_width": [32, 64], "g_depth": [4, 4], "lr_rule": ["gat"] * 2, "base_lr": [1e-3] * 2,
                           "lr_g": [1e-3, 5e-4], "seed": [0, 0]})
    points = pd.DataFrame(columns=["run_id", "iter", "fd"])
    result = analyse_transfer(points, trials, n_boot=10)
    assert result["gat"].outcome == "inconclusive" and result["gat"].verdict.startswith("insufficient data")
