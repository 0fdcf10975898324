"""Latent DiffAugment: exact ops on hand-made inputs, shared parameters across MNG levels,
reproducibility, parameter distribution and differentiability (docs/METHOD.md §4)."""

import dataclasses

import pytest
import torch

from core.gan.augment import AugmentParams, apply_augment, sample_augment


def forced(n: int = 1, *, color=False, brightness=0.0, saturation=1.0, contrast=1.0, shift=(0, 0),
           corner=(100, 100), cutout_size=4, flip=False) -> AugmentParams:
    """Parameters set by hand, the same for all n samples (defaults: identity)."""
    def vec(v, dtype=torch.float32):
        return torch.full((n,), v, dtype=dtype)
    return AugmentParams(
        color=vec(color, torch.bool), brightness=vec(brightness), saturation=vec(saturation),
        contrast=vec(contrast), shift=torch.tensor([shift] * n), cutout_corner=torch.tensor([corner] * n),
        cutout_size=cutout_size, flip=vec(flip, torch.bool),
    )


def image(h: int = 8, w: int = 8) -> torch.Tensor:
    """(1, 2, h, w): channel 0 = 1 + row * w + col, channel 1 = its negative."""
    base = torch.arange(h * w, dtype=torch.float32).view(h, w) + 1
    return torch.stack([base, -base]).unsqueeze(0)


def test_identity_parameters_leave_x_unchanged():
    x = torch.randn(4, 3, 4, 8, 8)
    assert torch.equal(apply_augment(x, forced(3)), x)


def test_translation_moves_content_with_zero_fill():
    x = image()
    out = apply_augment(x, forced(shift=(1, -2)))
    expected = torch.zeros_like(x)
    for i in range(8):
        for j in range(8):
            if 0 <= i - 1 < 8 and 0 <= j + 2 < 8:
                expected[..., i, j] = x[..., i - 1, j + 2]
    assert torch.equal(out, expected)
    assert out[0, 0, 0].abs().sum() == 0 and out[0, 0, :, 6:].abs().sum() == 0


def test_cutout_zeroes_one_clipped_square():
    x = image()
    out = apply_augment(x, forced(corner=(-1, 3), cutout_size=4))
    expected = x.clone()
    expected[..., 0:3, 3:7] = 0  # rows -1..2 clipped to 0..2, columns 3..6
    assert torch.equal(out, expected)


def test_flip_mirrors_columns():
    x = image()
    out = apply_augment(x, forced(flip=True))
    assert torch.equal(out, x.flip(-1))
    assert out[0, 0, 0, 0].item() == 8.0  # top-right pixel (1 + 7) moved to the top-left


def test_ops_apply_in_policy_order_translation_cutout_flip():
    x = image()
    out = apply_augment(x, forced(shift=(0, 1), corner=(0, 0), cutout_size=2, flip=True))
    shifted = torch.zeros_like(x)
    shifted[..., 1:] = x[..., :-1]
    shifted[..., 0:2, 0:2] = 0
    assert torch.equal(out, shifted.flip(-1))


def test_color_follows_the_reference_formula():
    # c = 2 channels, 1 x 1 pixel: x = (1, 3), channel mean 2, sample mean 2.
    x = torch.tensor([1.0, 3.0]).view(1, 2, 1, 1)
    params = forced(color=True, brightness=0.25, saturation=1.5, contrast=0.5)
    # a = x + 0.25 = (1.25, 3.25); a = (a - 2) * 1.5 + 2 = (0.875, 3.875); a = (a - 2) * 0.5 + 2.
    expected = torch.tensor([1.4375, 2.9375]).view(1, 2, 1, 1)
    assert torch.equal(apply_augment(x, params), expected)
    # Without the colour flag the sample is untouched even though the factors are not neutral.
    assert torch.equal(apply_augment(x, forced(brightness=0.25, saturation=1.5, contrast=0.5)), x)


def test_color_statistics_come_from_the_last_level():
    last = torch.randn(1, 4, 8, 8)
    stack = torch.stack([last + 1.0, last])  # level 1 = level 2 + 1
    out = apply_augment(stack, forced(color=True, saturation=0.0))
    # Saturation 0 replaces every level by the last level's channel mean.
    channel_mean = last.mean(dim=1, keepdim=True).expand_as(last)
    torch.testing.assert_close(out[0], channel_mean)
    torch.testing.assert_close(out[1], channel_mean)


def test_same_parameters_on_every_level():
    x = torch.randn(5, 4, 8, 8)
    params = sample_augment(5, 8, generator=torch.Generator().manual_seed(3))
    params = dataclasses.replace(params, color=torch.ones(5, dtype=torch.bool))
    out = apply_augment(x.unsqueeze(0).expand(4, -1, -1, -1, -1), params)
    single = apply_augment(x, params)
    for k in range(4):
        assert torch.equal(out[k], single)
    assert not torch.equal(single, x)


def test_samples_get_their_own_parameters():
    x = image().expand(2, -1, -1, -1)
    params = forced(2)
    params = dataclasses.replace(params, flip=torch.tensor([False, True]))
    out = apply_augment(x, params)
    assert torch.equal(out[0], x[0]) and torch.equal(out[1], x[1].flip(-1))


def test_fixed_generator_reproduces_the_output():
    x = torch.randn(4, 6, 4, 8, 8)
    a = apply_augment(x, sample_augment(6, 8, generator=torch.Generator().manual_seed(11)))
    b = apply_augment(x, sample_augment(6, 8, generator=torch.Generator().manual_seed(11)))
    c = apply_augment(x, sample_augment(6, 8, generator=torch.Generator().manual_seed(12)))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_sampled_parameter_ranges_and_rates():
    p = sample_augment(20_000, 32, generator=torch.Generator().manual_seed(0))
    assert p.cutout_size == 16
    assert p.shift.min().item() == -4 and p.shift.max().item() == 4  # round(32 / 8) = 4
    centre = p.cutout_corner + 16 // 2
    assert centre.min().item() == 0 and centre.max().item() == 32  # even side: centre in [0, 32]
    assert -0.5 <= p.brightness.min().item() and p.brightness.max().item() < 0.5
    assert 0.0 <= p.saturation.min().item() and p.saturation.max().item() < 2.0
    assert 0.5 <= p.contrast.min().item() and p.contrast.max().item() < 1.5
    # Rates: standard error sqrt(p(1-p)/20000) < 0.004.
    assert p.color.float().mean().item() == pytest.approx(0.5, abs=0.015)
    assert p.flip.float().mean().item() == pytest.approx(0.4, abs=0.015)
    small = sample_augment(1000, 8, generator=torch.Generator().manual_seed(0))
    assert small.cutout_size == 4 and set(small.shift.unique().tolist()) == {-1, 0, 1}
    odd = sample_augment(1000, 5, generator=torch.Generator().manual_seed(0))
    assert odd.cutout_size == 3 and (odd.cutout_corner + 1).max().item() == 4  # odd side: [0, 4]


def test_gradients_flow_through_every_op():
    x = torch.randn(2, 2, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    params = forced(2, color=True, brightness=0.1, saturation=1.3, contrast=0.7, shift=(1, -1),
                    corner=(2, 1), cutout_size=2, flip=True)
    assert torch.autograd.gradcheck(lambda v: apply_augment(v, params), (x,))
    # Double backward is needed by the exact R1/R2 penalty.
    assert torch.autograd.gradgradcheck(lambda v: apply_augment(v, params).square(), (x,))
    apply_augment(x, params).sum().backward()
    assert x.grad.abs().sum() > 0


def test_batch_mismatch_is_an_error():
    with pytest.raises(ValueError, match="batch 3"):
        apply_augment(torch.zeros(3, 4, 8, 8), forced(2))
    with pytest.raises(ValueError, match=r"\(K, N, c, H, W\)"):
        apply_augment(torch.zeros(4, 8, 8), forced(4))


def test_finite_difference_branch_keeps_the_clean_colour_means():
    # With the means taken from the clean input the colour op is affine in x with slope
    # saturation * contrast, so the finite difference of the augmentation is exactly s * c * delta
    # (the reference stores the means with the parameters). Recomputing them on x + delta, as we
    # did before, adds the means' own change: R1 2.4e-3 instead of 1.0e-3 on one batch.
    torch.manual_seed(0)
    x = torch.randn(4, 2, 3, 8, 8)
    delta = 0.01 * torch.randn_like(x)
    params = forced(2, color=True, brightness=0.3, saturation=1.5, contrast=0.6)
    clean = apply_augment(x, params)
    kept = apply_augment(x + delta, params, color_reference=x) - clean
    torch.testing.assert_close(kept, 1.5 * 0.6 * delta, rtol=0, atol=1e-6)
    recomputed = apply_augment(x + delta, params) - clean
    assert (recomputed - 1.5 * 0.6 * delta).abs().max() > 1e-3
