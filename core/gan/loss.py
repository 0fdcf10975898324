"""RpGAN losses and the R1/R2 gradient penalties (docs/METHOD.md §4).

Relativistic pairing GAN (Jolicoeur-Martineau 2019) as used by R3GAN (Huang et al., "The GAN is
dead; long live the GAN! A modern GAN baseline", NeurIPS 2024, its RpGAN objective): each real
logit is paired with the fake logit of the same position in the batch (same class label).
R1 penalises D's input gradient on real data, R2 on fake data; the caller adds
``gamma / 2 * penalty.mean()`` (gamma 0.1 each in GAT).

The penalty is taken w.r.t. the *clean* data x (the real latent or G's stack of levels), through
the augmentation and the MNG perturbation, as the GAT reference does: ``d_of_x`` closes over the
augmentation parameters, the MNG noise and the labels, so every evaluation sees the same ones.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel


def rpgan_d_loss(d_real: Tensor, d_fake: Tensor) -> Tensor:
    """Discriminator RpGAN loss ``mean(softplus(-(d_r - d_f)))`` (RpGAN objective, R3GAN).

    d_real, d_fake: (N,) logits of paired real and fake samples. Returns a scalar.
    """
    return F.softplus(-(d_real - d_fake)).mean()


def rpgan_g_loss(d_fake: Tensor, d_real: Tensor) -> Tensor:
    """Generator RpGAN loss ``mean(softplus(-(d_f - d_r)))`` with d_r detached (RpGAN
    objective, R3GAN; the reference computes the real logits under ``no_grad`` in the G step).

    d_fake, d_real: (N,) logits of paired fake and real samples. Returns a scalar; only d_fake
    carries gradient.
    """
    return F.softplus(-(d_fake - d_real.detach())).mean()


def gradient_penalty(d_of_x: Callable[[Tensor], Tensor], x: Tensor, d_x: Tensor | None = None) -> Tensor:
    """Per-sample ``||grad_x d_of_x(x)||^2`` by double backprop: the exact R1 (reals) / R2
    (fakes) of Mescheder et al. 2018, "Which training methods for GANs do actually converge?"
    (``reg_mode: exact``; create_graph, so D's parameters get gradients).

    If x requires grad and ``d_x`` is given, ``d_x`` is differentiated directly; it must then have
    been computed from x under the math attention kernel, since PyTorch's flash /
    memory-efficient attention have no double backward. Otherwise the forward is recomputed here
    from a detached copy of x, under the math kernel.

    d_of_x: maps clean data shaped like x to logits (N,), each sample's logit depending on that
    sample only (per-sample gradients come from one backward of the sum). x: real latents
    (N, c, H, W) or the fake stack (K, N, c, H, W) (batch on dim 0 resp. 1).
    Returns the penalty per sample, (N,). Raises ValueError for an x that is not 4-D/5-D or
    logits that are not (N,).
    """
    if x.ndim not in (4, 5):
        raise ValueError(
            f"gradient_penalty needs x of shape (N, c, H, W) or (K, N, c, H, W), got {tuple(x.shape)}"
        )
    batch_dim = x.ndim - 4
    n = x.shape[batch_dim]
    if d_x is None or not x.requires_grad:
        x = x.detach().requires_grad_(True)
        with sdpa_kernel(SDPBackend.MATH):
            d_x = d_of_x(x)
    (grad,) = torch.autograd.grad(_checked(d_x, n).sum(), x, create_graph=True)
    other_dims = [dim for dim in range(x.ndim) if dim != batch_dim]
    return grad.square().sum(dim=other_dims)


def finite_difference_penalty(d_x: Tensor, d_shifted: Tensor, fd_eps: float) -> Tensor:
    """``((D(x) - D(x + fd_eps * eps)) / fd_eps)^2`` per sample from the two logits (N,), with
    eps ~ N(0, I) shaped like x and both branches under the same augmentation and MNG noise: the
    GAT reference's R1/R2 estimator (``approximated_gradient_penalty``; ``reg_mode:
    finite_difference``). Since ``E[(g . eps)^2] = ||g||^2``, its mean over eps estimates
    :func:`gradient_penalty` up to O(fd_eps^2). The difference is taken in D's output dtype:
    under bf16 autocast it is mostly rounding (``reg_fd_precision``).
    """
    return ((d_x - d_shifted) / fd_eps).square()


def _checked(logits: Tensor, n: int) -> Tensor:
    """Raise ValueError unless ``logits`` has shape (n,)."""
    if logits.shape != (n,):
        raise ValueError(f"d_of_x must return logits of shape ({n},), got {tuple(logits.shape)}")
    return logits
