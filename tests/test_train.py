"""Training-loop tests on Gaussian latents (dataset 'random'): finite losses, bit-exact resume,
checkpoint schedule, divergence handling, reporter contract, FLOP accounting."""

import json

import pytest
import torch

from core.gan.checkpoint import load_checkpoint
from core.config import ConfigError, NetConfig, TrainConfig
from core.gan.flops import measure_iteration_flops, train_flops_per_iter
from core.data.latents import LatentData
from core.gan.train import train
from helpers import Recorder, assert_same_states, checkpoint_states, logged

SMALL = NetConfig(width=32, depth=4, heads=2)


def tiny(**kw) -> TrainConfig:
    base = dict(name="t", dataset="random", g=SMALL, d=SMALL, d_proj_dim=32, batch=8,
                iterations=6, ckpt_every=3, log_every=2, diag_every=2, eval_every=-1, seed=3)
    return TrainConfig(**{**base, **kw})


def test_run_is_finite_and_writes_run_dir(tmp_path):
    rec = Recorder()
    result = train(tiny(), tmp_path / "run", rec, progress=False)
    assert result.status == "finished" and result.iterations == 6 and result.kimg == pytest.approx(0.048)
    for key in ("loss/G", "loss/D", "reg/r1", "reg/r2", "diag/g_update_rel", "diag/early_skip_rel"):
        assert key in result.metrics and torch.isfinite(torch.tensor(result.metrics[key])), key
    run = tmp_path / "run"
    assert json.loads((run / "config.json").read_text()) == tiny().to_dict()
    lines = [json.loads(text) for text in (run / "stats.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [2, 3, 4, 6]  # logs every 2, checkpoint at 3
    flops = train_flops_per_iter(tiny())
    assert lines[-1]["compute/train_flops"] == 6 * flops
    assert json.loads((run / "result.json").read_text())["status"] == "finished"
    info, state = rec.started[0]
    assert state is None and int(info["compute.flops_per_iter"]) == flops
    assert rec.finished[0].status == "finished"
    assert [r.step for r in rec.reports if r.checkpoint] == [3, 6]


@pytest.mark.parametrize("grad_clip", [1.0, 1e-3])
def test_resume_equals_uninterrupted(tmp_path, grad_clip):
    # grad_clip 1e-3 makes clipping bind at every step: before the fix, D's fixed positional
    # embedding entered the clipped norm from the second iteration of a process on, so the first
    # iteration after a resume was clipped differently (G.w_avg differed).
    cfg = tiny(grad_clip=grad_clip)
    train(cfg, tmp_path / "straight", progress=False)
    crash = Recorder(fail_at=4)  # iteration 4 is logged but not checkpointed: resume from 3
    with pytest.raises(RuntimeError, match="injected"):
        train(cfg, tmp_path / "resumed", crash, progress=False)
    _, ckpt = checkpoint_states(tmp_path / "resumed")
    assert ckpt["iteration"] == 3 and ckpt["reporter"] == {"run_id": "run-1"}
    assert ckpt["window_iters"] == 1  # iteration 3 sits in the open logging window (log_every 2)
    again = Recorder(tag="run-1")
    train(cfg, tmp_path / "resumed", again, progress=False)
    assert again.started[0][1] == {"run_id": "run-1"}  # reporter state handed back on resume
    assert_same_states(checkpoint_states(tmp_path / "straight")[0], checkpoint_states(tmp_path / "resumed")[0])
    # the logged losses (a mean over the window 3-4) and every line of stats.jsonl, once each
    assert logged(tmp_path / "straight") == logged(tmp_path / "resumed")


def two_iterations(cfg: TrainConfig):
    """(G, D, GATStep) after two iterations on one fixed batch."""
    from core.gan.model import build_models
    from core.gan.step import GATStep

    torch.manual_seed(0)
    G, D = build_models(cfg)
    step = GATStep(cfg, G, D, torch.device("cpu"))
    x, y, z = torch.randn(8, 4, 8, 8), torch.randint(10, (8,)), torch.randn(8, cfg.z_dim)
    for _ in range(2):  # the bug was the first iteration switching the embedding on for the second
        step.iteration(x, y, z)
    return G, D, step


def test_fixed_positional_embeddings_stay_out_of_gradients_and_clipping(tmp_path):
    G, D, step = two_iterations(tiny())
    assert not D.pos_embed.requires_grad and D.pos_embed.grad is None
    assert not G.pos_embed.requires_grad
    optimised = {id(p) for group in step.opt_d.param_groups for p in group["params"]}
    assert id(D.pos_embed) not in optimised
    assert all(p.requires_grad for p in D.parameters() if id(p) in optimised)


def test_trained_positional_embeddings_are_optimised_like_the_reference(tmp_path):
    """train_pos_embed: G's and D's sin-cos embeddings get gradients, sit in their optimisers as
    'vector' parameters and move; the rest of the run is the same code path."""
    from core.gan.model import sincos_pos_embed_2d

    cfg = tiny(train_pos_embed=True)
    G, D, step = two_iterations(cfg)
    for net, opt in ((G, step.opt_g), (D, step.opt_d)):
        optimised = {id(p) for group in opt.param_groups for p in group["params"]}
        assert net.pos_embed.requires_grad and id(net.pos_embed) in optimised
        start = sincos_pos_embed_2d(net.pos_embed.shape[1], cfg.latent_size // cfg.patch)
        assert not torch.equal(net.pos_embed.detach(), start)
    # one switch, not a new architecture: FLOPs are measured once for both settings
    from core.gan.flops import _architecture

    assert _architecture(cfg) == _architecture(tiny())


def test_longer_budget_continues_a_finished_run(tmp_path):
    train(tiny(iterations=6), tmp_path / "full", progress=False)
    train(tiny(iterations=3), tmp_path / "grown", progress=False)
    result = train(tiny(iterations=6), tmp_path / "grown", progress=False)
    assert result.iterations == 6
    assert_same_states(checkpoint_states(tmp_path / "full")[0], checkpoint_states(tmp_path / "grown")[0])


def test_finished_run_returns_without_training(tmp_path):
    train(tiny(), tmp_path / "r", progress=False)
    rec = Recorder()
    result = train(tiny(), tmp_path / "r", rec, progress=False)
    assert result.status == "finished" and rec.reports == [] and rec.started == []


def test_final_checkpoint_at_last_iteration(tmp_path):
    train(tiny(iterations=5, ckpt_every=3, keep_checkpoints=5), tmp_path / "r", progress=False)
    ckpts = sorted(p.name for p in (tmp_path / "r" / "checkpoints").glob("*.pt"))
    assert ckpts == ["iter_0000003.pt", "iter_0000005.pt", "latest.pt"]
    assert load_checkpoint(tmp_path / "r" / "checkpoints" / "latest.pt")["iteration"] == 5


def test_old_checkpoints_pruned(tmp_path):
    train(tiny(iterations=8, ckpt_every=1, keep_checkpoints=2), tmp_path / "r", progress=False)
    names = sorted(p.name for p in (tmp_path / "r" / "checkpoints").glob("iter_*.pt"))
    assert names == ["iter_0000007.pt", "iter_0000008.pt"]


def test_non_finite_loss_ends_as_diverged(tmp_path, monkeypatch):
    real_sample = LatentData.sample
    calls = {"n": 0}

    def poisoned(self, batch, generator):  # NaN latents from the 4th batch on
        calls["n"] += 1
        x, y = real_sample(self, batch, generator)
        return (x * float("nan") if calls["n"] >= 4 else x), y

    monkeypatch.setattr(LatentData, "sample", poisoned)
    rec = Recorder()
    result = train(tiny(), tmp_path / "r", rec, progress=False)
    assert result.status == "diverged" and result.iterations == 4
    assert json.loads((tmp_path / "r" / "result.json").read_text())["status"] == "diverged"
    assert rec.finished[0].status == "diverged"


def test_loss_above_bound_ends_as_diverged_with_reason(tmp_path):
    # RpGAN losses start near log 2 = 0.69, so a bound of 0.5 is crossed at the first iteration.
    result = train(tiny(diverge_loss=0.5), tmp_path / "r", progress=False)
    saved = json.loads((tmp_path / "r" / "result.json").read_text())
    assert result.status == saved["status"] == "diverged" and result.iterations == 1
    assert "above diverge_loss = 0.5 at iteration 1" in saved["reason"] == result.reason


def test_blown_up_learning_rate_is_diverged_not_finished(tmp_path):
    result = train(tiny(lr_g=10.0, lr_d=10.0, iterations=20), tmp_path / "r", progress=False)
    assert result.status == "diverged", result.metrics
    assert "diverge_loss" in result.reason or "non-finite" in result.reason


def test_evaluation_far_above_its_best_ends_as_diverged(tmp_path, monkeypatch):
    import core.gan.train as train_module

    series = iter([70.0, 52.0, 49.0, 50.0, 57.0, 61.0, 480.0, 40.0])

    class FakeEvaluator:
        metric_key, provenance = "eval/fd_fake", {}

        def evaluate(self, generator):
            return {self.metric_key: next(series)}

    monkeypatch.setattr(train_module, "make_evaluator", lambda cfg, data, device, sampler: FakeEvaluator())
    result = train(tiny(iterations=8, eval_every=1, ckpt_every=100), tmp_path / "r", progress=False)
    assert result.status == "diverged" and result.iterations == 7
    assert result.reason == ("eval/fd_fake = 480 is more than diverge_fd_ratio = 3 times its best 49 "
                             "(iteration 3)")
    saved = json.loads((tmp_path / "r" / "result.json").read_text())
    assert saved["best"] == {"value": 49.0, "iteration": 3} and saved["metrics"]["eval/fd_fake"] == 480.0


def test_run_that_never_trained_restarts_with_a_corrected_config(tmp_path):
    # eval_metric 'fid' on random latents fails before the first iteration, after config.json
    with pytest.raises(ConfigError, match="random"):
        train(tiny(eval_metric="fid", eval_every=0), tmp_path / "r", progress=False)
    assert (tmp_path / "r" / "config.json").exists()
    assert train(tiny(), tmp_path / "r", progress=False).status == "finished"


def test_different_config_in_run_dir_is_refused(tmp_path):
    train(tiny(iterations=2), tmp_path / "r", progress=False)
    with pytest.raises(ConfigError, match="lr_g"):
        train(tiny(iterations=2, lr_g=1e-3), tmp_path / "r", progress=False)


def test_run_dir_of_an_older_version_continues(tmp_path):
    # written before TrainConfig had train_pos_embed: the missing field ran as its default
    train(tiny(iterations=2), tmp_path / "r", progress=False)
    config = tmp_path / "r" / "config.json"
    config.write_text(json.dumps({k: v for k, v in json.loads(config.read_text()).items() if k != "train_pos_embed"}))
    assert train(tiny(iterations=3), tmp_path / "r", progress=False).iterations == 3
    with pytest.raises(ConfigError, match="train_pos_embed"):  # a value other than the default is a change
        train(tiny(iterations=4, train_pos_embed=True), tmp_path / "r", progress=False)


def test_exact_regulariser_mode_trains(tmp_path):
    result = train(tiny(iterations=2, reg_mode="exact"), tmp_path / "r", progress=False)
    assert result.status == "finished" and result.metrics["reg/r1"] > 0


def test_flops_cpu_count_equals_meta_count():
    cfg = tiny(batch=4)
    assert measure_iteration_flops(cfg, "cpu") == measure_iteration_flops(cfg, "meta") > 0
    # 4 -> 16 images: every op scales by 4 except D's class projection, which at 4 * 16 rows
    # (reals, fakes, finite-difference twins) runs once on the 10-row class table.
    assert train_flops_per_iter(cfg.replace(batch=16)) < 4 * measure_iteration_flops(cfg, "meta")
    assert train_flops_per_iter(cfg.replace(batch=16)) > 3.5 * measure_iteration_flops(cfg, "meta")


def test_flop_count_is_shared_by_configs_of_one_architecture(monkeypatch):
    from core.gan import flops
    from core.config import LRMultipliers

    base = tiny(batch=12, d_proj_dim=24)  # an architecture no other test counts
    counted = []
    real_count = flops.count_architecture
    monkeypatch.setattr(flops, "count_architecture", lambda cfg: counted.append(cfg) or real_count(cfg))
    mup = base.replace(name="other", lr_g=3e-3, lr_d=1e-3, seed=9, lr_mult_g=LRMultipliers(1.0, 0.5, 0.25),
                       ema_decay=0.97, iterations=50, dataset="digits", grad_clip=2.0)
    assert train_flops_per_iter(base) == train_flops_per_iter(mup) == measure_iteration_flops(base, "cpu")
    assert len(counted) == 1  # LRs, seeds and cadence do not change the work: counted once
    assert train_flops_per_iter(base.replace(d_proj_dim=48)) != train_flops_per_iter(base)  # another architecture


def test_a_given_flop_count_is_logged(tmp_path):
    """A sweep's driver counts each architecture once and hands the count to train()."""
    rec = Recorder()
    train(tiny(iterations=4, log_every=2, ckpt_every=4), tmp_path / "r", rec, progress=False, flops_per_iter=123)
    assert rec.started[0][0]["compute.flops_per_iter"] == "123"
    assert [r.metrics["compute/train_flops"] for r in rec.reports] == [246.0, 492.0]


def test_seed_controls_initialisation(tmp_path):
    train(tiny(iterations=1), tmp_path / "a", progress=False)
    torch.rand(1000)  # whatever the global RNG did in between
    train(tiny(iterations=1), tmp_path / "b", progress=False)
    train(tiny(iterations=1, seed=4), tmp_path / "c", progress=False)
    a, b, c = (checkpoint_states(tmp_path / d)[0]["G"] for d in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["blocks.0.attn.qkv.weight"], c["blocks.0.attn.qkv.weight"])


def test_files_are_valid_json_without_evaluation(tmp_path):
    # No evaluation: the best FD stays infinite; result.json used to hold the literal Infinity.
    train(tiny(iterations=2), tmp_path / "r", progress=False)
    text = (tmp_path / "r" / "result.json").read_text()
    saved = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert saved["best"] == {"value": None, "iteration": -1}


def test_run_files_get_ordinary_permissions(tmp_path):
    # atomic writes went through mkstemp, which creates 0600 files other users could not read
    import os
    old = os.umask(0o022)
    try:
        train(tiny(iterations=2), tmp_path / "r", progress=False)
    finally:
        os.umask(old)
    for name in ("config.json", "result.json", "checkpoints/latest.pt"):
        assert (tmp_path / "r" / name).stat().st_mode & 0o777 == 0o644, name
