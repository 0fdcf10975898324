"""MNG noise schedule, nested noise chain and perturbation (docs/METHOD.md §3)."""

import pytest
import torch

from core.gan.mng import chain_coefficients, nested_noise, noise_levels, perturb


def test_noise_levels_match_the_paper_table():
    t = noise_levels()
    assert t.dtype == torch.float64
    torch.testing.assert_close(t, torch.tensor([0.885, 0.76, 0.51, 0.01], dtype=torch.float64),
                               rtol=0, atol=1e-12)


def test_noise_levels_needs_two_levels():
    with pytest.raises(ValueError, match="levels=1"):
        noise_levels(1)


def test_chain_coefficients_match_the_table():
    d, sqrt_v = chain_coefficients(noise_levels())
    # docs/METHOD.md §3 lists k = 4..1; tensors are ordered k = 1..4.
    table_d = torch.tensor([0.4792, 0.4898, 0.4949, 0.990], dtype=torch.float64)
    table_sqrt_v = torch.tensor([0.8066, 0.7178, 0.5100, 0.0100], dtype=torch.float64)
    torch.testing.assert_close(d, table_d, rtol=0, atol=5e-5)
    torch.testing.assert_close(sqrt_v, table_sqrt_v, rtol=0, atol=5e-5)
    # Exact values of the two cleanest levels.
    assert d[3].item() == pytest.approx(0.99, abs=1e-15)
    assert sqrt_v[3].item() == pytest.approx(0.01, abs=1e-15)
    assert d[2].item() == pytest.approx(0.49 / 0.99, abs=1e-15)


def test_chain_coefficients_reject_increasing_levels():
    with pytest.raises(ValueError, match="must not increase"):
        chain_coefficients(torch.tensor([0.1, 0.5]))
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        chain_coefficients(torch.tensor([1.0, 0.5]))


def test_nested_noise_marginals_and_correlations():
    t = noise_levels()
    n = nested_noise((4, 500_000, 2, 1, 1), t, generator=torch.Generator().manual_seed(0),
                     dtype=torch.float64)
    flat = n.reshape(4, -1)  # 1M draws per level
    # Marginal std t_k: the sample std of 1M normals has relative standard error 7e-4.
    torch.testing.assert_close(flat.std(dim=1), t, rtol=3e-3, atol=0)
    # cov(n_k, n_{k+1}) = d_k t_{k+1}^2 (a diffusion chain: n_k = d_k n_{k+1} + independent noise);
    # the sample covariance has standard error <= 1.5e-3 t_k t_{k+1}, the tolerance is 3.5 of those.
    d, _ = chain_coefficients(t)
    cov = (flat[:-1] * flat[1:]).mean(dim=1)
    assert ((cov - d[:-1] * t[1:].square()).abs() <= 5e-3 * t[:-1] * t[1:]).all()
    # Levels two apart: cov(n_k, n_{k+2}) = d_k d_{k+1} t_{k+2}^2.
    cov2 = (flat[:-2] * flat[2:]).mean(dim=1)
    assert ((cov2 - d[:-2] * d[1:-1] * t[2:].square()).abs() <= 5e-3 * t[:-2] * t[2:]).all()


def test_nested_noise_is_reproducible_and_follows_the_recursion():
    t = noise_levels()
    a = nested_noise((4, 3, 4, 8, 8), t, generator=torch.Generator().manual_seed(7))
    b = nested_noise((4, 3, 4, 8, 8), t, generator=torch.Generator().manual_seed(7))
    assert a.shape == (4, 3, 4, 8, 8) and a.dtype == torch.float32
    assert torch.equal(a, b)
    # Recover eps_k from the recursion; it must be exactly the generator's normals.
    eps = torch.randn((4, 3, 4, 8, 8), generator=torch.Generator().manual_seed(7))
    d, sqrt_v = chain_coefficients(t)
    torch.testing.assert_close(a[3], sqrt_v[3].item() * eps[3])
    for k in range(3):
        torch.testing.assert_close(a[k], d[k].item() * a[k + 1] + sqrt_v[k].item() * eps[k])


def test_nested_noise_rejects_wrong_level_count():
    with pytest.raises(ValueError, match="K = len"):
        nested_noise((3, 2, 4, 8, 8), noise_levels())


def test_perturb_mixes_and_stacks_levels_noisiest_first():
    t = noise_levels()
    levels = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1, 1).expand(4, 2, 3, 5, 5).clone()
    noise = torch.full_like(levels, 0.5)
    out = perturb(levels, noise, t)
    assert out.shape == (2, 12, 5, 5)
    for k in range(4):  # channels [3k : 3k+3] hold level k+1: (1 - t_k) * k + 0.5
        expected = (1 - t[k].item()) * k + 0.5
        torch.testing.assert_close(out[:, 3 * k:3 * k + 3], torch.full((2, 3, 5, 5), expected))


def test_perturb_keeps_samples_separate():
    levels = torch.randn(4, 3, 2, 4, 4)
    out = perturb(levels, torch.zeros_like(levels), noise_levels())
    torch.testing.assert_close(out[1, 2:4], (1 - 0.76) * levels[1, 1])


def test_perturb_is_differentiable_in_the_levels():
    t = noise_levels()
    levels = torch.randn(4, 2, 4, 8, 8, requires_grad=True)
    perturb(levels, torch.randn(4, 2, 4, 8, 8), t).sum().backward()
    expected = (1 - t.float()).view(4, 1, 1, 1, 1).expand_as(levels)
    torch.testing.assert_close(levels.grad, expected)


def test_perturb_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="equal shape"):
        perturb(torch.zeros(4, 2, 4, 8, 8), torch.zeros(4, 2, 4, 8, 4), noise_levels())
