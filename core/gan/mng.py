"""MNG: multi-level noise-perturbed image guidance (Hyun et al. 2025, §3; docs/METHOD.md §3).

The generator's K output levels (earliest = coarsest first) are each mixed with Gaussian noise,
more for earlier levels, and concatenated on channels as the discriminator's input. The noises
of the K levels are nested like the steps of one forward diffusion chain, built from the cleanest
level down, so that marginally ``n_k ~ N(0, t_k^2 I)`` and consecutive levels share noise.

Shapes: K levels, N batch, c latent channels, H x W latent size.
"""

from __future__ import annotations

import torch
from torch import Tensor

MNG_MIN_INFO = 0.125
"""Information kept by the noisiest level before the offset (reference ``min_info``)."""
MNG_NOISE_OFFSET = 0.01
"""Added to every noise level, so even the last level is slightly perturbed (reference)."""


def noise_levels(levels: int = 4) -> Tensor:
    """Noise level t_k of each MNG level, earliest (noisiest) first.

    ``t_k = 1 - 0.125 ** (1 - (k-1)/(K-1)) + 0.01`` for k = 1..K (docs/METHOD.md §3; reference
    ``info_per_layer`` plus its 1e-2 offset). For K = 4: 0.885, 0.76, 0.51, 0.01.

    Returns: float64 tensor (K,). Raises ValueError if ``levels < 2`` (the schedule needs two
    end points).
    """
    if levels < 2:
        raise ValueError(f"MNG needs at least 2 noise levels, got levels={levels}")
    lam = torch.arange(levels, dtype=torch.float64) / (levels - 1)
    return 1.0 - MNG_MIN_INFO ** (1.0 - lam) + MNG_NOISE_OFFSET


def chain_coefficients(t: Tensor) -> tuple[Tensor, Tensor]:
    """Decay d_k and incremental noise std sqrt(v_k) of the nested noise chain.

    With t_{K+1} = 0: ``d_k = (1 - t_k) / (1 - t_{k+1})`` and ``v_k = t_k^2 - t_{k+1}^2 d_k^2``
    (docs/METHOD.md §3; reference ``apply_gaussian_list_cumulative``). For the default levels,
    (d, sqrt v) = (0.990, 0.0100), (0.4949, 0.5100), (0.4898, 0.7178), (0.4792, 0.8066) for
    k = 4..1.

    t: (K,) noise levels, earliest first. Returns (d, sqrt_v), each float64 (K,), same order.
    Raises ValueError unless every t_k is in [0, 1) and t is non-increasing (else v_k < 0).
    """
    t = t.detach().to(torch.float64).cpu()
    if t.ndim != 1 or not bool(((t >= 0) & (t < 1)).all()):
        raise ValueError(f"noise levels must be a 1-D tensor with values in [0, 1), got {t.tolist()}")
    if not bool((t[:-1] >= t[1:]).all()):
        raise ValueError(f"noise levels must not increase from level to level, got {t.tolist()}")
    t_next = torch.cat([t[1:], t.new_zeros(1)])  # t_{k+1}, with t_{K+1} = 0
    d = (1.0 - t) / (1.0 - t_next)
    v = t.square() - t_next.square() * d.square()
    return d, v.clamp_min(0.0).sqrt()  # clamp only removes rounding below zero when t_k = t_{k+1}


def nested_noise(
    shape: tuple[int, ...],
    t: Tensor,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Draw one nested noise chain n_1..n_K (docs/METHOD.md §3).

    From the cleanest level down, with n_{K+1} = 0: ``n_k = d_k n_{k+1} + sqrt(v_k) eps_k``,
    eps_k ~ N(0, I) independent. Then ``n_k ~ N(0, t_k^2 I)`` and
    ``cov(n_k, n_{k+1}) = d_k t_{k+1}^2`` per element.

    shape: (K, N, c, H, W) with K = len(t); t: (K,) noise levels (see :func:`noise_levels`).
    ``generator`` must live on ``device``. Returns a (K, N, c, H, W) tensor of ``dtype``.
    Raises ValueError if shape[0] != len(t) (and as :func:`chain_coefficients`).
    """
    if len(shape) < 1 or shape[0] != len(t):
        raise ValueError(f"noise shape {tuple(shape)} must start with K = len(t) = {len(t)} levels")
    d, sqrt_v = chain_coefficients(t)
    eps = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    noise = torch.empty_like(eps)
    previous = torch.zeros_like(eps[0])
    for k in reversed(range(len(t))):  # cleanest level first, as the reference draws them
        previous = d[k].item() * previous + sqrt_v[k].item() * eps[k]
        noise[k] = previous
    return noise


def perturb(levels: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """Mix each level with its noise and stack the levels on channels: the D input.

    ``x~_k = (1 - t_k) x_k + n_k`` (linear interpolation, docs/METHOD.md §3), concatenated in
    order k = 1..K, so level 1 (noisiest) fills channels [0:c] (reference ``forward_encoder``).
    Differentiable w.r.t. ``levels`` (and ``noise``).

    levels, noise: (K, N, c, H, W); t: (K,). Returns (N, K*c, H, W) in levels' dtype.
    Raises ValueError if the shapes disagree.
    """
    if levels.ndim != 5 or levels.shape != noise.shape or levels.shape[0] != len(t):
        raise ValueError(
            f"perturb needs levels and noise of equal shape (K, N, c, H, W) with K = len(t) = "
            f"{len(t)}; got levels {tuple(levels.shape)}, noise {tuple(noise.shape)}"
        )
    keep = (1.0 - t).to(device=levels.device, dtype=levels.dtype).view(-1, 1, 1, 1, 1)
    mixed = keep * levels + noise.to(levels.dtype)
    k, n, c, h, w = mixed.shape
    return mixed.transpose(0, 1).reshape(n, k * c, h, w)
