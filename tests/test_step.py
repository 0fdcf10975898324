"""GATStep tests: the batched D step equals separate D calls, EMA and optimiser settings."""

import pytest
import torch

from core.gan.augment import apply_augment, sample_augment
from core.config import LRMultipliers, NetConfig, TrainConfig
from core.gan.loss import rpgan_d_loss, rpgan_g_loss
from core.gan.mng import nested_noise, noise_levels, perturb
from core.gan.model import build_models
from core.gan.step import GATStep, make_optimizer, update_ema

NET = NetConfig(width=32, depth=4, heads=2)


def cfg(**kw) -> TrainConfig:
    return TrainConfig(dataset="random", g=NET, d=NET, d_proj_dim=32, batch=4, **kw)


def seeded_step(c: TrainConfig) -> tuple[GATStep, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A step on models initialised from seed 0 (rebuild them with the same seed to compare),
    and a batch x (4, 4, 8, 8), y (4,), z (4, 64)."""
    torch.manual_seed(0)
    G, D = build_models(c)
    return GATStep(c, G, D, torch.device("cpu")), torch.randn(4, 4, 8, 8), torch.tensor([0, 1, 2, 3]), torch.randn(4, 64)


def reference_fakes(c: TrainConfig, z: torch.Tensor, y: torch.Tensor):
    """The models of :func:`seeded_step` rebuilt, and their fakes drawn after seeding 7, as the
    tests draw the step's: (D, MNG noise levels, fakes (K, N, c, H, W))."""
    torch.manual_seed(0)
    G, D = build_models(c)
    torch.manual_seed(7)
    with torch.no_grad():
        return D, noise_levels(), G(z, y)


def test_batched_d_step_equals_separate_calls():
    c = cfg()
    step, x, y, z = seeded_step(c)

    torch.manual_seed(7)
    with torch.no_grad():
        fake = step.generate(z, y)
    stats = step.d_step(x, y, fake)

    # The same draws, in the same order, through separate D calls with the pre-step weights.
    D2, t, fake = reference_fakes(c, z, y)
    with torch.no_grad():
        clean = torch.cat([x.unsqueeze(0).expand_as(fake), fake], dim=1)
        aug = sample_augment(8, 8)
        noise = nested_noise(tuple(clean.shape), t)
        eps_real = torch.randn_like(x).unsqueeze(0).expand_as(fake)
        shifted = clean + 0.01 * torch.cat([eps_real, torch.randn_like(fake)], dim=1)
        d_clean = D2(perturb(apply_augment(clean, aug), noise, t), torch.cat([y, y]))
        # the perturbed branch keeps the clean input's colour means (the reference's detail)
        d_shift = D2(perturb(apply_augment(shifted, aug, color_reference=clean), noise, t), torch.cat([y, y]))
    d_real, d_fake = d_clean[:4], d_clean[4:]
    torch.testing.assert_close(stats["loss/D"], rpgan_d_loss(d_real, d_fake), rtol=1e-5, atol=1e-6)
    r1 = ((d_real - d_shift[:4]) / 0.01).square().mean()
    r2 = ((d_fake - d_shift[4:]) / 0.01).square().mean()
    torch.testing.assert_close(stats["reg/r1"], r1, rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(stats["reg/r2"], r2, rtol=1e-3, atol=1e-6)


def test_ema_update_and_buffers():
    G, _ = build_models(cfg())
    ema, _ = build_models(cfg())
    with torch.no_grad():
        for p in ema.parameters():
            p.fill_(1.0)
        for p in G.parameters():
            p.fill_(3.0)
        G.w_avg.fill_(5.0)
    update_ema(ema, G, 0.999)
    assert torch.allclose(ema.blocks[0].attn.qkv.weight, torch.tensor(1.002))  # 0.999*1 + 0.001*3
    assert torch.equal(ema.w_avg, G.w_avg)  # buffers copied, not averaged


def test_optimizer_groups_and_settings():
    G, _ = build_models(cfg())
    opt = make_optimizer(G, 1e-3, LRMultipliers(vector=1.0, hidden=0.5, output=0.25), cfg())
    lrs = {g["kind"]: g["lr"] for g in opt.param_groups}
    assert lrs == pytest.approx({"vector": 1e-3, "hidden": 5e-4, "output": 2.5e-4})
    g = opt.param_groups[0]
    assert g["betas"] == (0.0, 0.99) and g["eps"] == 1e-8 and g["weight_decay"] == 0.0
    assert opt.defaults["fused"]  # one kernel per step on CPU (benchmarks/train_step.py)


def test_g_step_equals_separate_calls():
    c = cfg()
    step, x, y, z = seeded_step(c)
    torch.manual_seed(7)
    stats = step.g_step(x, y, step.generate(z, y))

    # The same draws through plain D calls, each computing its own class projection.
    D2, t, fake = reference_fakes(c, z, y)
    with torch.no_grad():
        d_fake = D2(perturb(apply_augment(fake, sample_augment(4, 8)), nested_noise(tuple(fake.shape), t), t), y)
        real = x.unsqueeze(0).expand_as(fake)
        d_real = D2(perturb(apply_augment(real, sample_augment(4, 8)), nested_noise(tuple(fake.shape), t), t), y)
    torch.testing.assert_close(stats["loss/G"], rpgan_g_loss(d_fake, d_real), rtol=1e-5, atol=1e-6)


def test_g_step_leaves_d_untouched_and_generate_updates_w_avg():
    c = cfg()
    G, D = build_models(c)
    ema, _ = build_models(c)
    step = GATStep(c, G, D, torch.device("cpu"), G_ema=ema)
    y = torch.tensor([0, 0, 1, 1])
    fake = step.generate(torch.randn(4, 64), y)
    assert G.w_avg[0].abs().sum() > 0 and G.w_avg[2].abs().sum() == 0
    before = {k: v.clone() for k, v in D.state_dict().items()}
    flags = {name: p.requires_grad for name, p in D.named_parameters()}
    assert not flags["pos_embed"] and sum(flags.values()) == len(flags) - 1
    step.g_step(torch.randn(4, 4, 8, 8), y, fake)
    assert all(torch.equal(before[k], v) for k, v in D.state_dict().items())
    assert all(p.grad is None for p in D.parameters())
    assert {name: p.requires_grad for name, p in D.named_parameters()} == flags  # restored as they were
    assert all(p.grad is not None for p in G.parameters() if p.requires_grad)
    assert torch.equal(ema.w_avg, G.w_avg)


def test_ema_warmup_schedule():
    from core.gan.step import ema_decay_at
    c = cfg(ema_warmup=True)
    assert [ema_decay_at(c, t) for t in (0, 10, 990)] == pytest.approx([0.1, 11 / 20, 991 / 1000])
    assert ema_decay_at(c, 10_000) == 0.999  # capped at ema_decay
    assert ema_decay_at(cfg(), 0) == 0.999  # the paper's constant decay by default


def test_bf16_finite_difference_penalty_in_fp32_equals_fp32_and_autocast_does_not():
    # Under bf16 autocast the finite difference of two nearly equal logits is mostly rounding
    # (benchmarks/fd_precision.py: R1 1.3-26x the fp32 value); reg_fd_precision 'fp32' runs the
    # D step's forward in fp32 and gives the fp32 penalty on the same weights and draws.
    def r1_r2(c):
        step, x, y, z = seeded_step(c)
        torch.manual_seed(7)
        with torch.no_grad():
            fake = step.generate(z, y)
        torch.manual_seed(8)
        stats = step.d_step(x, y, fake)
        return torch.stack([stats["reg/r1"], stats["reg/r2"]])

    fp32 = r1_r2(cfg())
    fake_in_bf16 = dict(precision="bf16")
    safe = r1_r2(cfg(**fake_in_bf16, reg_fd_precision="fp32"))
    rounded = r1_r2(cfg(**fake_in_bf16, reg_fd_precision="autocast"))
    # G's forward is still bf16 in both, so the fakes differ slightly from fp32's
    torch.testing.assert_close(safe, fp32, rtol=0.05, atol=0)
    assert ((rounded - fp32).abs() / fp32).max() > 0.5
