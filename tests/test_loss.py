"""RpGAN losses and the R1/R2 penalties: known values, analytic gradients of simple
discriminators, and finite-difference vs exact agreement, also for the real GAT discriminator
composed with the latent augmentation and MNG noise (docs/METHOD.md §4)."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from core.gan.augment import AugmentParams, apply_augment, sample_augment
from core.config import NetConfig, TrainConfig
from core.gan.loss import finite_difference_penalty, gradient_penalty, rpgan_d_loss, rpgan_g_loss
from core.gan.mng import nested_noise, noise_levels, perturb
from core.gan.model import Discriminator, build_discriminator

K = 4


def as_levels(x: torch.Tensor) -> torch.Tensor:
    """Real data (N, c, H, W) -> K equal levels; a fake stack passes through (as in training)."""
    return x.unsqueeze(0).expand(K, *x.shape) if x.ndim == 4 else x


def flat_input(x: torch.Tensor) -> torch.Tensor:
    """Clean data -> one row per sample, the levels side by side (N, K*c*H*W)."""
    return as_levels(x).transpose(0, 1).flatten(1)


# ---- RpGAN losses --------------------------------------------------------------------------
def test_rpgan_losses_on_known_values():
    d_real, d_fake = torch.tensor([2.0]), torch.tensor([-1.0])
    assert rpgan_d_loss(d_real, d_fake).item() == F.softplus(torch.tensor(-3.0)).item()
    assert rpgan_d_loss(d_real, d_fake).item() == pytest.approx(math.log1p(math.exp(-3.0)), rel=1e-6)
    assert rpgan_g_loss(d_fake, d_real).item() == pytest.approx(math.log1p(math.exp(3.0)), rel=1e-6)
    # Mean over the batch of the paired differences (pairs by position, not all pairs).
    loss = rpgan_d_loss(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.0]))
    assert loss.item() == pytest.approx((math.log(2.0) + math.log1p(math.exp(-1.0))) / 2, rel=1e-6)


def test_d_loss_gradients():
    d_real = torch.tensor([2.0, 0.5], requires_grad=True)
    d_fake = torch.tensor([-1.0, 0.5], requires_grad=True)
    rpgan_d_loss(d_real, d_fake).backward()
    expected = -torch.sigmoid(-(d_real - d_fake)).detach() / 2  # d/dr softplus(-(r - f)) / N
    torch.testing.assert_close(d_real.grad, expected)
    torch.testing.assert_close(d_fake.grad, -expected)


def test_g_loss_has_no_gradient_into_the_real_logits():
    d_real = torch.tensor([2.0, 0.0], requires_grad=True)
    d_fake = torch.tensor([-1.0, 1.0], requires_grad=True)
    rpgan_g_loss(d_fake, d_real).backward()
    assert d_real.grad is None
    torch.testing.assert_close(d_fake.grad, -torch.sigmoid(torch.tensor([3.0, -1.0])) / 2)


def fd_penalty(d_of_x, x, generator, fd_eps=0.01):
    """The finite-difference R1/R2 of one eps draw from ``generator``, as the D step forms it."""
    eps = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    return finite_difference_penalty(d_of_x(x), d_of_x(x + fd_eps * eps), fd_eps)


# ---- exact penalty: analytic cases ---------------------------------------------------------
def test_exact_penalty_of_a_linear_d_is_the_squared_weight_norm():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(K, 2, 3, 3, generator=gen, dtype=torch.float64)  # one weight per level

    def d_of_x(x):  # <w, levels> per sample
        return (as_levels(x) * w.unsqueeze(1)).sum(dim=(0, 2, 3, 4))

    fake = torch.randn(K, 5, 2, 3, 3, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(gradient_penalty(d_of_x, fake), w.square().sum().expand(5))
    # A real batch is repeated to K levels, so its gradient is the sum of the level weights.
    real = torch.randn(5, 2, 3, 3, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(gradient_penalty(d_of_x, real),
                               w.sum(0).square().sum().expand(5))


def test_exact_penalty_of_a_quadratic_d():
    gen = torch.Generator().manual_seed(1)
    a = torch.rand(2, 4, 4, generator=gen, dtype=torch.float64) + 0.5
    x = torch.randn(3, 2, 4, 4, generator=gen, dtype=torch.float64)

    def d_of_x(v):  # d(x) = 1/2 sum(a x^2) per sample: gradient a * x
        return 0.5 * (a * v.square()).sum(dim=(1, 2, 3))

    expected = (a * x).square().sum(dim=(1, 2, 3))
    torch.testing.assert_close(gradient_penalty(d_of_x, x), expected)
    # Reusing d_x computed from an x that requires grad gives the same value.
    leaf = x.clone().requires_grad_(True)
    torch.testing.assert_close(gradient_penalty(d_of_x, leaf, d_x=d_of_x(leaf)), expected)
    # A d_x without a graph to x is ignored and the forward recomputed.
    torch.testing.assert_close(gradient_penalty(d_of_x, x, d_x=d_of_x(x)), expected)


def test_finite_difference_of_a_linear_d_is_the_squared_directional_derivative():
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(2, 3, 3, generator=gen, dtype=torch.float64)
    x = torch.randn(4, 2, 3, 3, generator=gen, dtype=torch.float64)

    def d_of_x(v):
        return (v * w).sum(dim=(1, 2, 3))

    fd = fd_penalty(d_of_x, x, torch.Generator().manual_seed(9))
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    torch.testing.assert_close(fd, (eps * w).sum(dim=(1, 2, 3)).square(), rtol=1e-9, atol=0)


def test_penalty_gradients_reach_d_parameters_in_both_modes():
    w = torch.nn.Parameter(torch.tensor([[[[1.0, -2.0], [0.5, 3.0]]]], dtype=torch.float64))
    x = torch.randn(3, 1, 2, 2, dtype=torch.float64)

    def d_of_x(v):
        return (v * w).sum(dim=(1, 2, 3))

    gradient_penalty(d_of_x, x).mean().backward()  # mean ||w||^2 -> 2 w
    torch.testing.assert_close(w.grad, 2 * w.detach())
    w.grad = None
    fd_penalty(d_of_x, x, torch.Generator().manual_seed(4)).mean().backward()
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    directional = (eps * w.detach()).sum(dim=(1, 2, 3))  # mean (w . eps)^2 -> mean 2 (w . eps) eps
    torch.testing.assert_close(w.grad, (2 * directional.view(3, 1, 1, 1) * eps).mean(0, keepdim=True))


# ---- finite difference vs exact on smooth discriminators ----------------------------------
@pytest.mark.parametrize("fake", [False, True], ids=["real-4d", "fake-5d"])
def test_finite_difference_matches_exact_on_a_tanh_mlp(fake):
    gen = torch.Generator().manual_seed(3)
    c, size, n, draws = 2, 3, 3, 20_000
    mlp = torch.nn.Sequential(torch.nn.Linear(K * c * size * size, 32), torch.nn.Tanh(),
                              torch.nn.Linear(32, 1)).double()
    shape = (K, n, c, size, size) if fake else (n, c, size, size)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)

    def d_of_x(v):
        return mlp(flat_input(v)).squeeze(1)

    exact = gradient_penalty(d_of_x, x)
    # Many eps draws at once: each sample repeated `draws` times along the batch dim.
    batch_dim = x.ndim - 4
    fd = fd_penalty(d_of_x, x.repeat_interleave(draws, dim=batch_dim), torch.Generator().manual_seed(5))
    # Each draw is ||g||^2 chi^2_1-distributed (relative std sqrt 2): the mean of 20k has 1% error.
    torch.testing.assert_close(fd.view(n, draws).mean(1), exact, rtol=0.04, atol=0)


def tiny_discriminator() -> Discriminator:
    cfg = TrainConfig(d=NetConfig(width=32, depth=2, heads=2), latent_size=8, patch=2, d_proj_dim=16)
    torch.manual_seed(0)
    return build_discriminator(cfg)


def repeat_params(params: AugmentParams, repeats: int) -> AugmentParams:
    """Each sample's augmentation `repeats` times in a row."""
    values = {}
    for field in dataclasses.fields(params):
        value = getattr(params, field.name)
        values[field.name] = value if isinstance(value, int) else value.repeat_interleave(repeats, dim=0)
    return AugmentParams(**values)


def gat_d_of_x(D, params, noise, y):
    """The training composition: augment (same draw on every level), MNG-perturb, D."""
    t = noise_levels()
    return lambda v: D(perturb(apply_augment(as_levels(v), params), noise, t), y)


@pytest.mark.parametrize("fake", [False, True], ids=["real-4d", "fake-5d"])
def test_finite_difference_matches_exact_on_the_gat_discriminator(fake):
    D = tiny_discriminator()
    gen = torch.Generator().manual_seed(6)
    n, draws = 2, 256
    x = torch.randn((K, n, 4, 8, 8) if fake else (n, 4, 8, 8), generator=gen)
    params = dataclasses.replace(sample_augment(n, 8, generator=gen), color=torch.ones(n, dtype=torch.bool))
    noise = nested_noise((K, n, 4, 8, 8), noise_levels(), generator=gen)
    y = torch.tensor([1, 7])
    d_of_x = gat_d_of_x(D, params, noise, y)
    exact = gradient_penalty(d_of_x, x)

    batch_dim = x.ndim - 4
    many = gat_d_of_x(D, repeat_params(params, draws), noise.repeat_interleave(draws, dim=1),
                      y.repeat_interleave(draws))
    x_many = x.repeat_interleave(draws, dim=batch_dim)
    fd = fd_penalty(many, x_many, torch.Generator().manual_seed(8)).detach()
    # Loose: the mean of 256 chi^2_1 draws has ~9% relative error.
    torch.testing.assert_close(fd.view(n, draws).mean(1), exact.detach(), rtol=0.3, atol=0)
    # Sharp, draw by draw: sqrt(FD) is |g . eps| up to the curvature term O(fd_eps).
    leaf = x_many.clone().requires_grad_(True)
    g = torch.autograd.grad(many(leaf).sum(), leaf)[0]
    eps = torch.randn(x_many.shape, generator=torch.Generator().manual_seed(8))
    other = [d for d in range(x.ndim) if d != batch_dim]
    directional = (g * eps).sum(dim=other).abs()
    scale = exact.detach().sqrt().repeat_interleave(draws)
    assert ((fd.sqrt() - directional).abs() <= 0.08 * scale).all()  # measured max: 0.03


@pytest.mark.parametrize("mode", ["exact", "finite_difference"])
def test_gat_discriminator_parameters_get_penalty_gradients(mode):
    D = tiny_discriminator()
    gen = torch.Generator().manual_seed(10)
    fake = torch.randn(K, 3, 4, 8, 8, generator=gen)
    noise = nested_noise((K, 3, 4, 8, 8), noise_levels(), generator=gen)
    d_of_x = gat_d_of_x(D, sample_augment(3, 8, generator=gen), noise, torch.tensor([0, 1, 2]))
    penalty = gradient_penalty(d_of_x, fake) if mode == "exact" else fd_penalty(d_of_x, fake, gen)
    penalty.mean().backward()
    trainable = {name: p for name, p in D.named_parameters() if p.requires_grad}
    # head.bias shifts the logit by a constant (sum(bias * cmap)), so neither grad_x d nor
    # d(x) - d(x + h eps) depends on it: no gradient when exact, a zero one with finite differences.
    head_bias = trainable.pop("head.bias").grad
    assert head_bias is None if mode == "exact" else head_bias.abs().max() < 1e-6
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable.values())
    for name in ("patch_embed.weight", "cls_token", "blocks.0.attn.qkv.weight", "blocks.1.ls2",
                 "head.weight", "class_map.0.weight"):
        assert trainable[name].grad.abs().sum() > 0, name


def test_penalty_input_errors():
    def d_of_x(v):
        return v.flatten(1).sum(1)

    x = torch.zeros(2, 1, 2, 2)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        gradient_penalty(lambda v: v.flatten(1), x)
    with pytest.raises(ValueError, match=r"\(K, N, c, H, W\)"):
        gradient_penalty(d_of_x, torch.zeros(2, 4))
